//! Identity's store on both databases: each test body runs against a migrated SQLite file and
//! a migrated PostgreSQL database; the concurrency case races real connections.

use std::future::Future;

use pim_runtime::db::Db;

use crate::store::{self, GroupRow, Link};

const NOW: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;

async fn on_both<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("identity", None, test).await
}

/// Sign-in failures are one upsert each: twenty at once are twenty, a window that passed
/// starts again at one, and clearing forgets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_count_every_failure_once_within_the_window() -> anyhow::Result<()> {
    on_both(|db| async move {
        let window_after = NOW - 15 * MINUTE;
        let racing = (0..20).map(|_| store::count_sign_in_failure(&db, "user:lee", NOW, window_after));
        for counted in futures::future::join_all(racing).await {
            counted?;
        }
        store::count_sign_in_failure(&db, "ip:10.0.0.1", NOW, window_after).await?;
        let mut seen = store::sign_in_failures(&db, &["user:lee", "ip:10.0.0.1", "user:kim"], window_after).await?;
        seen.sort();
        assert_eq!(
            seen,
            vec![("ip:10.0.0.1".to_owned(), 1, NOW), ("user:lee".to_owned(), 20, NOW)]
        );
        // Sixteen minutes later the old window is over: counting starts again.
        let later = NOW + 16 * MINUTE;
        store::count_sign_in_failure(&db, "user:lee", later, later - 15 * MINUTE).await?;
        let seen = store::sign_in_failures(&db, &["user:lee"], later - 15 * MINUTE).await?;
        assert_eq!(seen, vec![("user:lee".to_owned(), 1, later)]);
        store::clear_sign_in_failures(&db, "user:lee").await?;
        assert!(store::sign_in_failures(&db, &["user:lee"], 0).await?.is_empty());
        Ok(())
    })
    .await
}

/// A group's links: adding twice adds once, removing says whether there was one, and a
/// member's groups are read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_links_are_added_once_and_removed_once() -> anyhow::Result<()> {
    on_both(|db| async move {
        let group = GroupRow {
            id: uuid::Uuid::now_v7().to_string(),
            display_name: "Exchange Admins".into(),
            description: String::new(),
            is_assignable_to_role: true,
            created_at: NOW,
        };
        store::insert_group(&db, &group, "admin").await?;
        assert!(store::add_link(&db, Link::Member, &group.id, "lee", NOW).await?);
        assert!(
            !store::add_link(&db, Link::Member, &group.id, "lee", NOW).await?,
            "once"
        );
        assert!(store::add_link(&db, Link::Member, &group.id, "kim", NOW).await?);
        assert!(store::add_link(&db, Link::Owner, &group.id, "ola", NOW).await?);
        assert_eq!(store::linked(&db, Link::Member, &group.id).await?, vec!["kim", "lee"]);
        assert_eq!(store::linked(&db, Link::Owner, &group.id).await?, vec!["ola"]);
        assert!(store::is_owner(&db, &group.id, "ola").await?);
        assert!(!store::is_owner(&db, &group.id, "lee").await?);
        let of_lee: Vec<String> = store::groups_of(&db, "lee").await?.into_iter().map(|g| g.id).collect();
        assert_eq!(of_lee, vec![group.id.clone()]);
        assert!(store::remove_link(&db, Link::Member, &group.id, "lee").await?);
        assert!(
            !store::remove_link(&db, Link::Member, &group.id, "lee").await?,
            "gone already"
        );
        assert!(store::groups_of(&db, "lee").await?.is_empty());
        Ok(())
    })
    .await
}

/// Users' addresses are announced once per database, whichever of two replicas racing claims
/// it, and only users with an address are announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_is_claimed_once_and_names_users_with_an_address() -> anyhow::Result<()> {
    on_both(|db| async move {
        for (name, email) in [("lee", "lee@example.com"), ("kim", "")] {
            store::insert_user(
                &db,
                &store::UserRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    user_name: name.into(),
                    display_name: name.into(),
                    email: email.into(),
                    password_hash: String::new(),
                    enabled: true,
                    created_at: NOW,
                    last_sign_in_at: None,
                },
            )
            .await?;
        }
        let racing = (0..2).map(|_| store::claim_announcement(&db, "user_addresses", NOW));
        let claimed: Vec<bool> = futures::future::try_join_all(racing).await?;
        assert_eq!(claimed.iter().filter(|c| **c).count(), 1, "{claimed:?}");
        assert!(!store::claim_announcement(&db, "user_addresses", NOW + MINUTE).await?);
        let named: Vec<String> = store::users_with_email(&db)
            .await?
            .into_iter()
            .map(|u| u.user_name)
            .collect();
        assert_eq!(named, ["lee"]);
        Ok(())
    })
    .await
}
