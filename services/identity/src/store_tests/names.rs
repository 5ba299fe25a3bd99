//! Names on both databases: a user's found only as itself, a group's and an app's held once
//! and apart from lookalikes, an email address one user's.

use super::*;

/// What reads as an id is only ever taken as one: a user named after another principal's id
/// (stored before names were checked) is found by that id neither in its place nor at all,
/// only by its own id; a name is still found in any case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_reads_as_an_id_never_stands_for_it() -> anyhow::Result<()> {
    on_both(|db| async move {
        let lee = user("lee");
        let group_id = uuid::Uuid::now_v7().to_string();
        let shadow = user(&group_id);
        let named_after_lee = user(&lee.id);
        for u in [&lee, &shadow, &named_after_lee] {
            store::insert_user(&db, u).await?;
        }
        assert!(
            store::find_user(&db, &group_id).await?.is_none(),
            "the group's id names no user"
        );
        let found = |key: String| {
            let db = db.clone();
            async move { anyhow::Ok(store::find_user(&db, &key).await?.map(|u| u.id)) }
        };
        assert_eq!(found(lee.id.clone()).await?, Some(lee.id.clone()));
        assert_eq!(found("LEE".into()).await?, Some(lee.id.clone()));
        assert_eq!(found(shadow.id.clone()).await?, Some(shadow.id.clone()));
        assert_eq!(found(named_after_lee.id.clone()).await?, Some(named_after_lee.id));
        Ok(())
    })
    .await
}

/// A group's and a service principal's name is held once, by the database: a second of a
/// name is refused (ALREADY_EXISTS above it), and names held twice before the rule are told
/// apart as it comes, each but the first by its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_and_service_principal_names_are_held_once() -> anyhow::Result<()> {
    use sea_orm_migration::MigratorTrait;
    let before = pim_runtime::testing::steps_before::<store::Migrator>("m0011_unique_names");
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("identity", Some(before), |db| async move {
        let group = |name: &str| group_named(name, NOW);
        let sp = |name: &str| service_principal_named(name, NOW);
        let (ops, ops_again) = (group("ops"), group("OPS"));
        let (bot, bot_again) = (sp("ci-bot"), sp("ci-bot"));
        for g in [&ops, &ops_again] {
            legacy_group(&db, g).await?;
        }
        for s in [&bot, &bot_again] {
            legacy_service_principal(&db, s).await?;
        }

        store::Migrator::up(&db, None).await?;
        let group_name = |id: String| {
            let db = db.clone();
            async move { anyhow::Ok(store::find_group(&db, &id).await?.map(|g| g.display_name)) }
        };
        assert_eq!(group_name(ops.id.clone()).await?.as_deref(), Some("ops"));
        assert_eq!(
            group_name(ops_again.id.clone()).await?,
            Some(format!("OPS ({})", ops_again.id))
        );
        let sp_name = |id: String| {
            let db = db.clone();
            async move { anyhow::Ok(store::find_service_principal(&db, &id).await?.map(|s| s.display_name)) }
        };
        assert_eq!(sp_name(bot.id.clone()).await?.as_deref(), Some("ci-bot"));
        assert_eq!(
            sp_name(bot_again.id.clone()).await?,
            Some(format!("ci-bot ({})", bot_again.id))
        );

        let refused = store::insert_group(&db, &group("Ops"), "admin")
            .await
            .expect_err("the name is taken, in any case");
        assert!(pim_runtime::db::is_unique_violation(&refused), "{refused}");
        let refused = store::update_group(&db, &ops_again.id, "ops", "")
            .await
            .expect_err("the name is taken");
        assert!(pim_runtime::db::is_unique_violation(&refused), "{refused}");
        let refused = store::insert_service_principal(&db, &sp("ci-bot"))
            .await
            .expect_err("the name is taken");
        assert!(pim_runtime::db::is_unique_violation(&refused), "{refused}");
        Ok(())
    })
    .await
}

/// A group as stored before names were held apart by how they read (m0015).
async fn legacy_group(db: &Db, g: &GroupRow) -> anyhow::Result<()> {
    let sql = "INSERT INTO groups (id, display_name, description, is_assignable_to_role, created_at, created_by) \
               VALUES ($1, $2, '', FALSE, $3, 'admin')";
    let values = vec![g.id.clone().into(), g.display_name.clone().into(), g.created_at.into()];
    pim_runtime::db::exec(db, sql, values).await?;
    Ok(())
}

/// A service principal as stored before m0015.
async fn legacy_service_principal(db: &Db, s: &store::ServicePrincipalRow) -> anyhow::Result<()> {
    let sql = "INSERT INTO service_principals (id, display_name, secret_hash, enabled, created_at) \
               VALUES ($1, $2, '', TRUE, $3)";
    let values = vec![s.id.clone().into(), s.display_name.clone().into(), s.created_at.into()];
    pim_runtime::db::exec(db, sql, values).await?;
    Ok(())
}

fn group_named(name: &str, created_at: i64) -> GroupRow {
    GroupRow {
        id: uuid::Uuid::now_v7().to_string(),
        display_name: name.into(),
        description: String::new(),
        is_assignable_to_role: false,
        created_at,
    }
}

fn service_principal_named(name: &str, created_at: i64) -> store::ServicePrincipalRow {
    store::ServicePrincipalRow {
        id: uuid::Uuid::now_v7().to_string(),
        display_name: name.into(),
        secret_hash: String::new(),
        enabled: true,
        created_at,
        previous_secret: None,
    }
}

/// A group's or app's name that reads as another's (`орѕ`, Cyrillic, beside `ops`; `0ps`) is
/// refused by the database, two written at once included; lookalikes made before the rule
/// are kept as they were, the oldest holding the name, and go on changing otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_read_alike_are_held_apart() -> anyhow::Result<()> {
    use pim_runtime::db::{is_lookalike_violation, name_read_as};
    use sea_orm_migration::MigratorTrait;
    let before = pim_runtime::testing::steps_before::<store::Migrator>("m0015_lookalike_names");
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("identity", Some(before), |db| async move {
        let (ops, ops_cyrillic) = (group_named("ops", NOW), group_named("\u{43E}\u{440}\u{455}", NOW + 1));
        let (bot, bot_cyrillic) = (
            service_principal_named("ci-bot", NOW),
            service_principal_named("c\u{456}-bot", NOW + 1),
        );
        legacy_group(&db, &ops_cyrillic).await?;
        legacy_group(&db, &ops).await?;
        legacy_service_principal(&db, &bot).await?;
        legacy_service_principal(&db, &bot_cyrillic).await?;
        store::Migrator::up(&db, None).await?;

        for like in ["0ps", "OPS", "\u{41E}PS"] {
            let refused = store::insert_group(&db, &group_named(like, NOW), "admin").await;
            let refused = refused.expect_err(like);
            assert!(is_lookalike_violation(&refused) || like == "OPS", "{like}: {refused}");
            assert_eq!(
                name_read_as(&db, "groups", "display_name", like).await?.as_deref(),
                Some("ops")
            );
        }
        let refused = store::insert_service_principal(&db, &service_principal_named("ci-b0t", NOW)).await;
        assert!(is_lookalike_violation(&refused.expect_err("reads as ci-bot")));
        // The lookalike from before keeps its name and changes otherwise; a new name is weighed.
        store::update_group(&db, &ops_cyrillic.id, &ops_cyrillic.display_name, "kept").await?;
        let renamed = store::update_group(&db, &ops_cyrillic.id, "0PS", "").await;
        assert!(is_lookalike_violation(&renamed.expect_err("reads as ops")));
        store::update_group(&db, &ops_cyrillic.id, "Payments", "").await?;
        let refused = store::insert_group(&db, &group_named("Payrnents", NOW), "admin").await;
        assert!(is_lookalike_violation(&refused.expect_err("reads as Payments")));
        store::update_group(&db, &ops.id, "ops", "the same name, kept").await?;

        // Two lookalikes written at once: one is stored.
        let (one, other) = (group_named("Tier 0 Admins", NOW), group_named("Tier O Admins", NOW));
        let (a, b) = tokio::join!(
            store::insert_group(&db, &one, "admin"),
            store::insert_group(&db, &other, "admin")
        );
        assert!(a.is_ok() != b.is_ok(), "one of the two: {a:?} {b:?}");
        let refused = a.err().or(b.err()).expect("one refused");
        assert!(is_lookalike_violation(&refused), "{refused}");
        Ok(())
    })
    .await
}

/// An email address is one user's, whatever its case; many users may have none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_address_is_held_by_one_user() -> anyhow::Result<()> {
    on_both(|db| async move {
        let user = |name: &str, email: &str| store::UserRow {
            email: email.into(),
            ..user(name)
        };
        let (alice, lee, kim, dee) = (
            user("alice", "alice@example.com"),
            user("lee", ""),
            user("kim", "kim@example.com"),
            user("dee", ""),
        );
        for u in [&alice, &lee, &kim, &dee] {
            store::insert_user(&db, u).await?;
        }
        let copied = store::update_user(&db, &lee.id, "lee", "Alice@Example.com").await;
        let refused = copied.expect_err("alice's address");
        assert!(pim_runtime::db::is_unique_violation(&refused), "{refused}");
        assert!(refused.to_string().contains("email"), "{refused}");
        let taken = store::insert_user(&db, &user("eve", "kim@example.com")).await;
        assert!(pim_runtime::db::is_unique_violation(&taken.expect_err("kim's")));
        store::update_user(&db, &alice.id, "Alice", "alice@example.com").await?;
        // Shared before the rule (as the migration finds it): kept, and the user's other
        // details still change; no one else takes it.
        let shared = "UPDATE users SET email = 'alice@example.com' WHERE id = $1";
        pim_runtime::db::exec(&db, shared, vec![dee.id.clone().into()]).await?;
        store::update_user(&db, &dee.id, "Dee", "Alice@example.com").await?;
        let again = store::update_user(&db, &lee.id, "lee", "alice@example.com").await;
        assert!(pim_runtime::db::is_unique_violation(&again.expect_err("alice's")));
        Ok(())
    })
    .await
}
