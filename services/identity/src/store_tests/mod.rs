//! Identity's store on both databases: each test body runs against a migrated SQLite file and
//! a migrated PostgreSQL database; the concurrency case races real connections.

use std::future::Future;

use pim_runtime::db::Db;

use crate::store::{self, GroupRow, Link};

mod names;

const NOW: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;

async fn on_both<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("identity", None, test).await
}

/// Sign-in attempts are one upsert each: twenty at once are twenty, each told its own place
/// (so each is weighed against those before it), a window that passed starts again at one,
/// a success takes its attempt back, and clearing forgets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_count_every_failure_once_within_the_window() -> anyhow::Result<()> {
    on_both(|db| async move {
        let window_after = NOW - 15 * MINUTE;
        let racing = (0..20).map(|_| store::count_sign_in_attempt(&db, "user:lee", NOW, window_after));
        let mut places = Vec::new();
        for counted in futures::future::join_all(racing).await {
            places.push(counted?);
        }
        places.sort();
        assert_eq!(places, (1..=20).map(|n| (n, NOW)).collect::<Vec<_>>());
        store::count_sign_in_attempt(&db, "ip:10.0.0.1", NOW, window_after).await?;
        store::count_sign_in_attempt(&db, "ip:10.0.0.1", NOW, window_after).await?;
        store::uncount_sign_in_attempt(&db, "ip:10.0.0.1").await?;
        let mut seen = store::sign_in_failures(&db, &["user:lee", "ip:10.0.0.1", "user:kim"], window_after).await?;
        seen.sort();
        assert_eq!(
            seen,
            vec![("ip:10.0.0.1".to_owned(), 1, NOW), ("user:lee".to_owned(), 20, NOW)]
        );
        // Sixteen minutes later the old window is over: counting starts again.
        let later = NOW + 16 * MINUTE;
        store::count_sign_in_attempt(&db, "user:lee", later, later - 15 * MINUTE).await?;
        let seen = store::sign_in_failures(&db, &["user:lee"], later - 15 * MINUTE).await?;
        assert_eq!(seen, vec![("user:lee".to_owned(), 1, later)]);
        store::clear_sign_in_failures(&db, "user:lee").await?;
        assert!(store::sign_in_failures(&db, &["user:lee"], 0).await?.is_empty());
        Ok(())
    })
    .await
}

/// An attempt past the limit is refused unchecked and taken back: the account stays locked,
/// and a client retrying it adds nothing to its source's count (a whole office behind one
/// address is not locked out by one stale password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_refused_by_the_lockout_counts_against_nothing() -> anyhow::Result<()> {
    use crate::limiter::{self, Keys, PER_ACCOUNT};
    on_both(|db| async move {
        let keys = Keys::new(None, "dave", Some("10.0.0.9"));
        for _ in 0..PER_ACCOUNT {
            assert_eq!(limiter::attempt(&db, &keys, NOW).await?, None, "weighed");
        }
        for _ in 0..20 {
            assert!(limiter::attempt(&db, &keys, NOW).await?.is_some(), "refused unchecked");
        }
        let mut counts = store::sign_in_failures(&db, &["name:dave", "ip:10.0.0.9"], NOW - 15 * MINUTE).await?;
        counts.sort();
        assert_eq!(
            counts,
            vec![
                ("ip:10.0.0.9".to_owned(), PER_ACCOUNT, NOW),
                ("name:dave".to_owned(), PER_ACCOUNT, NOW)
            ]
        );
        // An attempt that could not be weighed (no hashing thread in time) counts as nothing.
        let app = Keys::of_app_source(Some("10.0.0.9"));
        assert_eq!(limiter::attempt(&db, &app, NOW).await?, None);
        limiter::abandoned(&db, &app).await?;
        let apps = store::sign_in_failures(&db, &["app-ip:10.0.0.9"], NOW - 15 * MINUTE).await?;
        assert!(apps.iter().all(|(_, n, _)| *n == 0), "{apps:?}");
        Ok(())
    })
    .await
}

/// A user's sessions past the newest few end, oldest first; ended, expired and other users'
/// sessions neither count nor change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_newest_few_end_oldest_first() -> anyhow::Result<()> {
    on_both(|db| async move {
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let at = NOW + i as i64;
            store::insert_session(&db, id, "lee", &format!("h{id}"), at, at + 60 * MINUTE).await?;
        }
        store::insert_session(&db, "gone", "lee", "hgone", NOW - 2 * MINUTE, NOW - MINUTE).await?;
        // Waiting for MFA (five minutes to live): neither counted nor ended.
        store::insert_session(&db, "pending", "lee", "hpending", NOW + 7, NOW + 7 + 5 * MINUTE).await?;
        store::insert_session(&db, "kim1", "kim", "hkim", NOW - MINUTE, NOW + 60 * MINUTE).await?;
        store::revoke_session(&db, "d", NOW + 5).await?;
        let ended = store::revoke_sessions_past(&db, "lee", 2, 5 * MINUTE, NOW + 10).await?;
        assert_eq!(ended, ["a"], "b and c are the newest two complete and live: a ends");
        assert!(
            store::session_by_refresh(&db, "hpending")
                .await?
                .is_some_and(|s| s.revoked_at.is_none())
        );
        assert!(
            store::session_by_refresh(&db, "ha")
                .await?
                .is_some_and(|s| s.revoked_at == Some(NOW + 10))
        );
        assert!(
            store::session_by_refresh(&db, "hb")
                .await?
                .is_some_and(|s| s.revoked_at.is_none())
        );
        assert!(
            store::session_by_refresh(&db, "hkim")
                .await?
                .is_some_and(|s| s.revoked_at.is_none())
        );
        assert!(
            store::revoke_sessions_past(&db, "lee", 2, 5 * MINUTE, NOW + 11)
                .await?
                .is_empty(),
            "two are left"
        );
        Ok(())
    })
    .await
}

/// A refresh token rotates once: the one it replaced is remembered as spent (so it can be
/// told from a token never issued) until its session is pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_remembered_as_spent_until_its_session_goes() -> anyhow::Result<()> {
    on_both(|db| async move {
        store::insert_session(&db, "s1", "lee", "h1", NOW, NOW + 60 * MINUTE).await?;
        assert!(store::spent_refresh(&db, "h1").await?.is_none(), "not spent yet");
        let racing = [
            store::rotate_refresh(&db, "s1", "h1", "h2", NOW + MINUTE),
            store::rotate_refresh(&db, "s1", "h1", "h3", NOW + MINUTE),
        ];
        let rotated = futures::future::join_all(racing).await;
        assert_eq!(
            rotated.iter().filter(|r| matches!(r, Ok(true))).count(),
            1,
            "one rotation of a token: {rotated:?}"
        );
        assert_eq!(
            store::spent_refresh(&db, "h1").await?,
            Some(store::SpentRefresh {
                session_id: "s1".into(),
                principal_id: "lee".into(),
                spent_at: NOW + MINUTE
            })
        );
        assert!(store::session_by_refresh(&db, "h1").await?.is_none());
        store::prune_sessions(&db, NOW + 61 * MINUTE).await?;
        assert!(
            store::spent_refresh(&db, "h1").await?.is_none(),
            "gone with its session"
        );
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

/// Each change of a link takes a larger version than the one before, one link's apart from
/// another's, each version once however the changes race, and never less than the time (in
/// microseconds), so a database restored from an older backup still goes on past the versions
/// consumers saw. (That of two changes of one link the one that commits later has the larger
/// version follows from the upsert: it holds the link's row until its transaction ends.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_of_a_link_has_a_larger_version_than_the_one_before() -> anyhow::Result<()> {
    on_both(|db| async move {
        let next = |link: Link, principal: &'static str, now: i64| {
            let db = db.clone();
            async move { store::next_link_version(&db, link, "g1", principal, now).await }
        };
        let at = |ms: i64| (ms * 1000) as u64;
        assert_eq!(next(Link::Member, "lee", NOW).await?, at(NOW));
        assert_eq!(
            next(Link::Member, "lee", NOW).await?,
            at(NOW) + 1,
            "within the same millisecond"
        );
        assert_eq!(
            next(Link::Owner, "lee", NOW).await?,
            at(NOW),
            "ownership is another link"
        );
        assert_eq!(next(Link::Member, "kim", NOW).await?, at(NOW));
        let racing = (0..10).map(|_| next(Link::Member, "lee", NOW));
        let mut taken: Vec<u64> = futures::future::try_join_all(racing).await?;
        taken.sort();
        assert_eq!(taken, (at(NOW) + 2..=at(NOW) + 11).collect::<Vec<_>>(), "each once");
        assert_eq!(next(Link::Member, "lee", NOW + 1).await?, at(NOW + 1), "time moved on");
        assert_eq!(
            next(Link::Member, "lee", NOW - MINUTE).await?,
            at(NOW + 1) + 1,
            "a clock behind never takes a version back"
        );
        store::delete_group(&db, "g1").await?;
        assert_eq!(
            next(Link::Member, "lee", NOW).await?,
            at(NOW),
            "a deleted group's link versions go with it"
        );
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
            let with_email = store::UserRow {
                email: email.into(),
                ..user(name)
            };
            store::insert_user(&db, &with_email).await?;
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

fn user(name: &str) -> store::UserRow {
    store::UserRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_name: name.into(),
        display_name: name.into(),
        email: String::new(),
        password_hash: String::new(),
        enabled: true,
        created_at: NOW,
        last_sign_in_at: None,
    }
}

/// A passkey ceremony's state is handed out once: to its own user, for its own kind, before
/// it expires; of two Finishes racing with one ceremony, one has it. A passkey's stored
/// credential moves only from the value it was read at (its counter never goes back by a
/// lost race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_ceremony_is_taken_once_by_its_user_before_it_expires() -> anyhow::Result<()> {
    on_both(|db| async move {
        let (lee, kim) = (user("lee"), user("kim"));
        store::insert_user(&db, &lee).await?;
        store::insert_user(&db, &kim).await?;
        let expires = NOW + 5 * MINUTE;
        store::insert_ceremony(&db, "c1", &lee.id, "authentication", "state-1", NOW, expires).await?;
        assert_eq!(
            store::take_ceremony(&db, "c1", &kim.id, "authentication", NOW).await?,
            None
        );
        assert_eq!(
            store::take_ceremony(&db, "c1", &lee.id, "registration", NOW).await?,
            None
        );
        let racing = (0..8).map(|_| store::take_ceremony(&db, "c1", &lee.id, "authentication", NOW));
        let taken: Vec<_> = futures::future::join_all(racing)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(taken, vec!["state-1".to_owned()]);

        store::insert_ceremony(&db, "c2", &lee.id, "registration", "state-2", NOW, expires).await?;
        assert_eq!(
            store::take_ceremony(&db, "c2", &lee.id, "registration", expires).await?,
            None,
            "expired"
        );
        // Starting a ceremony drops the expired ones.
        store::insert_ceremony(
            &db,
            "c3",
            &lee.id,
            "registration",
            "state-3",
            expires + 1,
            expires + MINUTE,
        )
        .await?;
        let left = pim_runtime::db::query(&db, "SELECT id FROM webauthn_ceremonies", vec![]).await?;
        assert_eq!(left.len(), 1);

        let method = store::MfaMethodRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: lee.id.clone(),
            kind: crate::factor::Factor::Passkey,
            secret: b"counter 1".to_vec(),
            confirmed: true,
            last_step: 0,
            created_at: NOW,
            name: "key".into(),
        };
        store::insert_mfa_method(&db, &method).await?;
        assert!(store::update_passkey(&db, &method.id, b"counter 1", b"counter 2").await?);
        assert!(!store::update_passkey(&db, &method.id, b"counter 1", b"counter 3").await?);
        let stored = store::mfa_methods(&db, &lee.id).await?;
        assert_eq!(
            (stored[0].secret.as_slice(), stored[0].name.as_str()),
            (&b"counter 2"[..], "key")
        );
        Ok(())
    })
    .await
}

/// Disabling a Global Administrator decides on the holders' rows, locked: a second disable
/// waits for the first and sees it, so two at once cannot disable the last two holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_disable_waits_for_the_first_and_sees_it() -> anyhow::Result<()> {
    use sea_orm::TransactionTrait;
    on_both(|db| async move {
        let (x, y) = (user("x"), user("y"));
        store::insert_user(&db, &x).await?;
        store::insert_user(&db, &y).await?;
        let holders = vec![x.id.clone(), y.id.clone()];
        let first = db.begin().await?;
        assert_eq!(store::lock_enabled_users(&first, &holders).await?.len(), 2);
        let second = tokio::spawn({
            let (db, holders) = (db.clone(), holders.clone());
            async move {
                let txn = db.begin().await?;
                let enabled = store::lock_enabled_users(&txn, &holders).await?;
                txn.commit().await?;
                anyhow::Ok(enabled)
            }
        });
        // The second is waiting on the rows the first holds (SQLite: on its one connection).
        pim_runtime::testing::a_transaction_waits_for_a_lock(&db).await?;
        store::set_user_enabled(&first, &x.id, false).await?;
        first.commit().await?;
        assert_eq!(second.await??, vec![y.id.clone()], "the second saw the first's disable");
        Ok(())
    })
    .await
}

/// A sign-in holds the password it checked until its session is in: a reset that comes while
/// it holds it waits for it (and then ends what it got), and a sign-in that checked the old
/// password after a reset committed holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_holds_the_password_it_checked_and_a_reset_meanwhile_waits_or_wins() -> anyhow::Result<()> {
    use sea_orm::TransactionTrait;
    on_both(|db| async move {
        let lee = store::UserRow {
            password_hash: "old".into(),
            ..user("lee")
        };
        store::insert_user(&db, &lee).await?;
        let signing_in = db.begin().await?;
        assert!(store::hold_user_password(&signing_in, &lee.id, "old").await?);
        let reset = tokio::spawn({
            let (db, id) = (db.clone(), lee.id.clone());
            async move {
                let txn = db.begin().await?;
                store::set_password(&txn, &id, "new").await?;
                txn.commit().await?;
                anyhow::Ok(())
            }
        });
        // The reset waits on the row the sign-in holds (SQLite: on its one connection).
        pim_runtime::testing::a_transaction_waits_for_a_lock(&db).await?;
        assert!(!reset.is_finished(), "the reset waits for the sign-in");
        signing_in.commit().await?;
        reset.await??;
        // A sign-in that checked the old password while the reset committed holds nothing.
        let late = db.begin().await?;
        assert!(!store::hold_user_password(&late, &lee.id, "old").await?);
        assert!(store::hold_user_password(&late, &lee.id, "new").await?);
        late.commit().await?;
        Ok(())
    })
    .await
}

/// Signing keys are sealed at rest with PIM_SECRETS_KEY: what the table holds signs nothing
/// (a copy of the database mints no token), a key stored open before is sealed as it is
/// loaded, and a keystore opened with another PIM_SECRETS_KEY refuses to start, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_are_sealed_at_rest() -> anyhow::Result<()> {
    use base64::Engine;
    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    use pim_runtime::sealing::Sealer;

    use crate::tokens::{Keystore, TokenSubject};

    let secrets = |byte: u8| Sealer::from_base64(&base64::engine::general_purpose::STANDARD.encode([byte; 32]));
    on_both(|db| async move {
        let keys = Keystore::open(db.clone(), secrets(7)?).await?;
        let stored = store::signing_keys(&db).await?;
        assert_eq!(stored.len(), 1);
        assert!(
            SigningKey::from_pkcs8_der(&stored[0].private_key).is_err(),
            "stored sealed"
        );
        let subject = TokenSubject {
            principal_id: "lee".into(),
            kind: pim_proto::common::v1::PrincipalKind::User,
            name: "lee".into(),
            amr: vec!["pwd".into()],
            session_id: "s1".into(),
            mfa_at: None,
            pending: None,
        };
        keys.issue(&subject, std::time::Duration::from_secs(60))?;

        let open = SigningKey::from_bytes(&[9; 32]).to_pkcs8_der()?.as_bytes().to_vec();
        store::insert_signing_key(
            &db,
            &store::SigningKeyRow {
                kid: "stored-open".into(),
                private_key: open.clone(),
                public_key: String::new(),
                created_at: NOW,
                retire_after: Some(NOW),
            },
        )
        .await?;
        Keystore::open(db.clone(), secrets(7)?).await?;
        let stored = store::signing_keys(&db).await?;
        let was_open = stored.iter().find(|k| k.kid == "stored-open").expect("kept");
        assert_ne!(was_open.private_key, open, "sealed as it was loaded");

        let refused = Keystore::open(db.clone(), secrets(8)?)
            .await
            .err()
            .expect("another key");
        assert!(format!("{refused:#}").contains("PIM_SECRETS_KEY"), "{refused:#}");
        Ok(())
    })
    .await
}

/// A source a user signed in from is familiar for as long as asked, to that user only, and
/// forgotten once pruned; signing in from it again keeps it familiar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn familiar_sources_are_kept_per_user_and_pruned() -> anyhow::Result<()> {
    on_both(|db| async move {
        store::remember_source(&db, "lee", "d1", NOW).await?;
        store::remember_source(&db, "lee", "d1", NOW + MINUTE).await?;
        assert!(
            store::is_familiar(&db, "lee", "d1", NOW).await?,
            "since the later sign-in"
        );
        assert!(!store::is_familiar(&db, "lee", "d1", NOW + MINUTE).await?);
        assert!(
            !store::is_familiar(&db, "kim", "d1", NOW - MINUTE).await?,
            "Lee's, not Kim's"
        );
        assert!(!store::is_familiar(&db, "lee", "d2", NOW - MINUTE).await?);
        store::prune_familiar_sources(&db, NOW + 2 * MINUTE).await?;
        assert!(!store::is_familiar(&db, "lee", "d1", NOW - MINUTE).await?, "pruned");
        Ok(())
    })
    .await
}

/// At an address shared with strangers (a NAT), the users it is familiar to count their
/// failures apart: made-up names filling the address's limit refuse strangers only. Guesses
/// at those users are capped together all the same (the address's limit, on a count of
/// theirs), so spraying them cannot outrun it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn familiar_users_count_apart_from_strangers_at_an_address_and_are_capped_together() -> anyhow::Result<()> {
    use crate::limiter::{self, Keys, PER_ACCOUNT, PER_SOURCE};
    on_both(|db| async move {
        let from = Some("192.0.2.7");
        let users: Vec<_> = (0..11).map(|i| user(&format!("u{i}"))).collect();
        for u in &users {
            let keys = Keys::of_sign_in(&db, Some(u), &u.user_name, from, NOW).await?;
            limiter::succeeded(&db, &keys, NOW).await?;
        }
        for i in 0..PER_SOURCE {
            let stranger = Keys::of_sign_in(&db, None, &format!("nobody {i}"), from, NOW).await?;
            assert_eq!(limiter::attempt(&db, &stranger, NOW).await?, None, "failure {i}");
        }
        // Refused by the address's limit, which its record is keyed by (not the name tried).
        let stranger = Keys::of_sign_in(&db, None, "nobody else", from, NOW).await?;
        let refused = limiter::weigh(&db, &stranger, NOW).await?;
        assert!(refused.refused.is_some(), "the address's limit");
        assert_eq!(refused.refused_by.as_deref(), Some("ip:192.0.2.7"));
        // Ten guesses at each of ten familiar users: the familiar users' count is full.
        for u in &users[..10] {
            let keys = Keys::of_sign_in(&db, Some(u), &u.user_name, from, NOW).await?;
            for _ in 0..PER_ACCOUNT {
                assert_eq!(limiter::attempt(&db, &keys, NOW).await?, None, "{}", u.id);
            }
        }
        let last = Keys::of_sign_in(&db, Some(&users[10]), "u10", from, NOW).await?;
        let refused = limiter::weigh(&db, &last, NOW).await?;
        assert!(
            refused.refused.is_some(),
            "a hundred guesses at familiar users from one address"
        );
        assert!(refused.refused_by.is_some_and(|by| by.starts_with("familiar-ip:")));
        // A locked account is refused by its own limit first.
        let locked = Keys::of_sign_in(&db, Some(&users[0]), "u0", from, NOW).await?;
        let by = limiter::weigh(&db, &locked, NOW).await?.refused_by.unwrap_or_default();
        assert!(by.starts_with(&format!("user:{}@", users[0].id)), "{by}");
        Ok(())
    })
    .await
}

/// A client secret kept past a rotation is forgotten once its time is over, each once, with
/// the instant it was rotated (whose earlier tokens stop then); a revocation up to an earlier
/// instant never lowers a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_client_secret_ends_once_when_its_time_is_over() -> anyhow::Result<()> {
    on_both(|db| async move {
        let sp = |name: &str| store::ServicePrincipalRow {
            id: uuid::Uuid::now_v7().to_string(),
            display_name: name.into(),
            secret_hash: "old".into(),
            enabled: true,
            created_at: NOW,
            previous_secret: None,
        };
        let (ending, later) = (sp("ci-bot"), sp("sync-bot"));
        for (row, until) in [(&ending, NOW + MINUTE), (&later, NOW + 10 * MINUTE)] {
            store::insert_service_principal(&db, row).await?;
            let kept = store::KeptSecret {
                hash: "old".into(),
                since: NOW,
                until,
            };
            store::set_service_principal_secret(&db, &row.id, "new", Some(&kept)).await?;
        }
        let found = store::find_service_principal(&db, &ending.id).await?.expect("stored");
        assert_eq!(
            found.previous_secret.map(|k| (k.since, k.until)),
            Some((NOW, NOW + MINUTE))
        );
        assert!(store::end_secret_overlaps(&db, NOW + MINUTE - 1).await?.is_empty());
        assert!(!store::secret_overlap_ended(&db, NOW + MINUTE - 1).await?);
        assert!(store::secret_overlap_ended(&db, NOW + MINUTE).await?);
        let ended = store::end_secret_overlaps(&db, NOW + MINUTE).await?;
        assert_eq!(ended, vec![(ending.id.clone(), NOW)]);
        assert!(store::end_secret_overlaps(&db, NOW + MINUTE).await?.is_empty(), "once");
        assert!(!store::secret_overlap_ended(&db, NOW + MINUTE).await?);
        let found = store::find_service_principal(&db, &ending.id).await?.expect("stored");
        assert_eq!(found.previous_secret, None);
        assert!(!store::hold_service_principal_secret(&db, &ending.id, "old", true, NOW).await?);
        assert!(store::hold_service_principal_secret(&db, &later.id, "old", true, NOW).await?);
        // Held as matched: the secret that was current, now the kept one, is not held as current.
        assert!(!store::hold_service_principal_secret(&db, &later.id, "old", false, NOW).await?);
        assert!(store::hold_service_principal_secret(&db, &later.id, "new", false, NOW).await?);

        // The tokens a kept secret gets share one session, lasting as long as the last; ending
        // it ends it once.
        let kept_session = format!("{}-kept-{NOW}", later.id);
        store::keep_session(&db, &kept_session, &later.id, NOW, NOW + 2 * MINUTE).await?;
        store::keep_session(&db, &kept_session, &later.id, NOW + MINUTE, NOW + 5 * MINUTE).await?;
        store::keep_session(&db, &kept_session, &later.id, NOW + MINUTE, NOW + 3 * MINUTE).await?;
        let ended = store::revoke_other_sessions(&db, &later.id, "", NOW + 4 * MINUTE).await?;
        assert_eq!(
            ended,
            vec![kept_session.clone()],
            "one session, live until the last token"
        );
        assert!(
            store::revoke_other_sessions(&db, &later.id, "", NOW + 4 * MINUTE)
                .await?
                .is_empty()
        );

        store::revoke_principal(&db, &ending.id, NOW + 5 * MINUTE).await?;
        store::revoke_principal(&db, &ending.id, NOW).await?;
        assert_eq!(
            store::principal_revoked_at(&db, &ending.id).await?,
            Some(NOW + 5 * MINUTE),
            "an earlier instant never lowers the mark"
        );
        Ok(())
    })
    .await
}
