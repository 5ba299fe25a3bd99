//! Alerting's store on both databases: each test body runs against a migrated SQLite file and
//! a migrated PostgreSQL database.

use std::future::Future;

use pim_proto::catalogue::{GLOBAL_ADMINISTRATOR, GROUP_MEMBER, GROUP_OWNER};
use pim_runtime::db::Db;

use crate::store::{self, Privileged};

const NOW: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

async fn on_both<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("alerting", None, test).await
}

/// Records a privileged assignment in force (`end` none: permanent). Groups are named `tier…`.
async fn held(
    db: &Db,
    id: &str,
    kind: &str,
    principal: &str,
    role: &str,
    scope: &str,
    end: Option<i64>,
) -> anyhow::Result<()> {
    store::upsert_privileged(
        db,
        &Privileged {
            assignment_id: id,
            kind,
            principal_id: principal,
            is_group: principal.starts_with("tier"),
            role_id: role,
            scope,
            end_at: end,
            since: NOW - HOUR,
        },
    )
    .await?;
    Ok(())
}

/// The Global Administrators the rule counts: the users and apps assigned the role, eligible
/// or active, and those with access (eligible or active, member or owner) to a group assigned
/// it; each once, never the group itself, not the ended, not access to a group holding
/// nothing of the kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_administrators_count_those_with_access_to_a_group_holding_the_role() -> anyhow::Result<()> {
    on_both(|db| async move {
        held(&db, "a1", "active", "admin", GLOBAL_ADMINISTRATOR, "/", None).await?;
        held(
            &db,
            "a2",
            "active",
            "tier0",
            GLOBAL_ADMINISTRATOR,
            "/",
            Some(NOW + HOUR),
        )
        .await?;
        held(&db, "a3", "eligible", "lee", GROUP_MEMBER, "/groups/tier0", None).await?;
        held(
            &db,
            "a4",
            "activation",
            "kim",
            GROUP_OWNER,
            "/groups/tier0",
            Some(NOW + HOUR),
        )
        .await?;
        // Counted once however many ways they hold it.
        held(&db, "a5", "active", "lee", GLOBAL_ADMINISTRATOR, "/", Some(NOW + HOUR)).await?;
        // Eligible for the role, or for access to a group eligible for it: counted too.
        held(&db, "a6", "eligible", "ann", GLOBAL_ADMINISTRATOR, "/", None).await?;
        held(&db, "a7", "eligible", "tier1", GLOBAL_ADMINISTRATOR, "/", None).await?;
        held(&db, "a8", "eligible", "uma", GROUP_MEMBER, "/groups/tier1", None).await?;
        // A group assigned it with nobody given access through PIM counts once itself.
        held(&db, "a9", "active", "tier2", GLOBAL_ADMINISTRATOR, "/", None).await?;
        // Not counted: ended, or access to a group holding nothing of the kind.
        held(&db, "n1", "active", "bob", GLOBAL_ADMINISTRATOR, "/", Some(NOW - 1)).await?;
        held(&db, "n2", "eligible", "ola", GROUP_MEMBER, "/groups/tier0x", None).await?;
        let (admins, total) = store::holder_counts(&db, GLOBAL_ADMINISTRATOR, NOW).await?;
        assert_eq!(admins, 6, "admin, lee, kim, ann, uma and tier2; not tier0 nor tier1");
        assert_eq!(
            total, 9,
            "the assignments in force, not the activation a4: a1–a3, a5–a9, n2"
        );
        // Once a group's assignment ends, its members no longer count through it.
        let (admins, _) = store::holder_counts(&db, GLOBAL_ADMINISTRATOR, NOW + HOUR).await?;
        assert_eq!(admins, 4, "the admin, ann, uma and tier2");
        Ok(())
    })
    .await
}

/// Members a group holding the role has in the directory count as holders (owners do not),
/// each once; the group counts itself only while nobody is known to be in it; a link's
/// change older than the one kept is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_administrators_count_the_directory_members_of_a_group_holding_the_role() -> anyhow::Result<()> {
    on_both(|db| async move {
        held(&db, "a1", "active", "tier0", GLOBAL_ADMINISTRATOR, "/", None).await?;
        held(&db, "a2", "active", "lee", GLOBAL_ADMINISTRATOR, "/", None).await?;
        assert_eq!(
            store::holder_counts(&db, GLOBAL_ADMINISTRATOR, NOW).await?.0,
            2,
            "lee and tier0 itself"
        );
        store::set_group_link(&db, "tier0", "kim", false, true, 3).await?;
        store::set_group_link(&db, "tier0", "lee", false, true, 4).await?;
        store::set_group_link(&db, "tier0", "ola", true, true, 5).await?;
        store::set_group_link(&db, "other", "uma", false, true, 6).await?;
        assert_eq!(
            store::holder_counts(&db, GLOBAL_ADMINISTRATOR, NOW).await?.0,
            2,
            "lee and kim: not the group, not its owner, not another group's member"
        );
        // Removed, then an older add arriving late: kim stays out.
        assert!(store::set_group_link(&db, "tier0", "kim", false, false, 7).await?);
        assert!(
            !store::set_group_link(&db, "tier0", "kim", false, true, 3).await?,
            "an older change does not apply, and says so"
        );
        assert_eq!(
            store::group_links(&db, "tier0").await?,
            [("lee".to_owned(), false), ("ola".to_owned(), true)]
        );
        store::set_group_link(&db, "tier0", "lee", false, false, 8).await?;
        assert_eq!(
            store::holder_counts(&db, GLOBAL_ADMINISTRATOR, NOW).await?.0,
            2,
            "lee, and the group again, nobody known in it"
        );
        Ok(())
    })
    .await
}

/// Frequent activation's count: one statement on PostgreSQL, two on SQLite, the same answer;
/// a redelivered activation counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activations_are_counted_once_each_on_both_databases() -> anyhow::Result<()> {
    on_both(|db| async move {
        let role = GLOBAL_ADMINISTRATOR;
        let first = store::activations_since(&db, "x1", "lee", role, NOW - 2 * HOUR, "e1", NOW - 3 * HOUR).await?;
        assert_eq!(first, vec!["e1"]);
        let second = store::activations_since(&db, "x2", "lee", role, NOW, "e2", NOW - 3 * HOUR).await?;
        assert_eq!(second, vec!["e1", "e2"]);
        let again = store::activations_since(&db, "x2", "lee", role, NOW, "e2", NOW - 3 * HOUR).await?;
        assert_eq!(again, vec!["e1", "e2"], "redelivered: counted once");
        let recent = store::activations_since(&db, "x3", "lee", role, NOW + 1, "e3", NOW - HOUR).await?;
        assert_eq!(recent, vec!["e2", "e3"], "only within the window");
        let other = store::activations_since(&db, "x4", "kim", role, NOW, "e4", NOW - 3 * HOUR).await?;
        assert_eq!(other, vec!["e4"], "per principal");
        Ok(())
    })
    .await
}
