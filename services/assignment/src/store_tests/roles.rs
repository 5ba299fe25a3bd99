//! Roles on both databases: the upgrades that name them, custom role names held apart from
//! lookalikes, and policies and custom roles changed only from what was read.

use super::*;

/// Upgrading a database where a custom role took the name Group Member before PIM for Groups
/// came: the built-in role is added under its name all the same, and the custom role keeps
/// its id under a new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_to_group_access_reclaims_its_role_names() -> anyhow::Result<()> {
    use pim_proto::catalogue::{GROUP_MEMBER, GROUP_OWNER};
    let before_group_access = steps_before::<store::Migrator>("m0010_group_access_roles");
    migrated_then(Some(before_group_access), |db| async move {
        assert!(store::role(&db, GROUP_MEMBER).await?.is_none(), "not there yet");
        let custom = store::RoleRow {
            id: id(),
            name: "group member".into(),
            description: "members of the book club".into(),
            permissions: vec!["app.books/loans/read".into()],
            built_in: false,
            privileged: false,
        };
        legacy_role(&db, &custom, NOW).await?;
        // And one that took the name a renamed role would get.
        let taken = store::RoleRow {
            id: id(),
            name: "Group Owner (custom)".into(),
            ..custom.clone()
        };
        let owners = store::RoleRow {
            id: id(),
            name: "Group Owner".into(),
            ..custom.clone()
        };
        legacy_role(&db, &taken, NOW).await?;
        legacy_role(&db, &owners, NOW).await?;
        store::Migrator::up(&db, None).await?;
        let name = |id: &'static str| {
            let db = db.clone();
            async move { anyhow::Ok(store::role(&db, id).await?.map(|r| r.name)) }
        };
        assert_eq!(name(GROUP_MEMBER).await?.as_deref(), Some("Group Member"));
        assert_eq!(name(GROUP_OWNER).await?.as_deref(), Some("Group Owner"));
        let kept = store::role(&db, &custom.id).await?.expect("the custom role stays");
        assert_eq!(kept.name, "group member (custom)");
        assert_eq!(kept.permissions, custom.permissions);
        let renamed = store::role(&db, &owners.id).await?.expect("kept too");
        assert_eq!(renamed.name, format!("Group Owner (custom {})", owners.id));
        Ok(())
    })
    .await
}

/// A custom role as stored before names were held apart by how they read (m0019).
async fn legacy_role(db: &Db, r: &store::RoleRow, created_at: i64) -> anyhow::Result<()> {
    let sql = "INSERT INTO role_definitions (id, name, description, permissions, built_in, privileged, created_at) \
               VALUES ($1, $2, $3, $4, FALSE, $5, $6)";
    let permissions = r.permissions.join(" ");
    let values = vec![
        r.id.clone().into(),
        r.name.clone().into(),
        r.description.clone().into(),
        permissions.into(),
        r.privileged.into(),
        created_at.into(),
    ];
    pim_runtime::db::exec(db, sql, values).await?;
    Ok(())
}

/// A custom role's name that reads as another's (`Payrnents Approver`, `PAYMENTS APPR0VER`)
/// is refused; lookalikes made before the rule stay, the oldest holding the name; a deleted
/// role frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_role_names_that_read_alike_are_held_apart() -> anyhow::Result<()> {
    let before = steps_before::<store::Migrator>("m0019_lookalike_role_names");
    migrated_then(Some(before), |db| async move {
        let role = |name: &str| store::RoleRow {
            id: id(),
            name: name.into(),
            description: String::new(),
            permissions: vec!["app.payments/payments/approve".into()],
            built_in: false,
            privileged: false,
        };
        let (payments, lookalike) = (role("Payments Approver"), role("Payrnents Approver"));
        legacy_role(&db, &lookalike, NOW + 1).await?;
        legacy_role(&db, &payments, NOW).await?;
        store::Migrator::up(&db, None).await?;

        for like in ["PAYMENTS APPR0VER", "Payrnents Approver", "Payments-Approver"] {
            assert!(
                !store::insert_role(&db, &role(like), NOW).await?,
                "{like} reads as Payments Approver"
            );
            // The role of that very name first (the lookalike kept from before, here), else
            // the one it reads as.
            let held = if like == lookalike.name {
                "Payrnents Approver"
            } else {
                "Payments Approver"
            };
            assert_eq!(store::role_named_like(&db, like).await?.as_deref(), Some(held));
        }
        assert!(store::role(&db, &lookalike.id).await?.is_some(), "kept as it was");
        assert!(store::insert_role(&db, &role("Payroll Approver"), NOW).await?);
        assert!(store::delete_role(&db, &payments.id, NOW).await?);
        assert_eq!(store::role_named_like(&db, "Payments Approver").await?, None);
        assert!(store::insert_role(&db, &role("Payments Approver"), NOW).await?, "freed");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_custom_roles_change_only_from_what_was_read() -> anyhow::Result<()> {
    on_both(|db| async move {
        // A policy is stored where none was, then replaced only from the text read.
        assert!(store::replace_policy(&db, EXCHANGE_ADMINISTRATOR, "/", None, "{\"a\":1}", "admin", NOW).await?);
        assert!(
            !store::replace_policy(&db, EXCHANGE_ADMINISTRATOR, "/", None, "{\"a\":2}", "admin", NOW).await?,
            "one is stored there now"
        );
        assert!(
            !store::replace_policy(
                &db,
                EXCHANGE_ADMINISTRATOR,
                "/",
                Some("{\"a\":0}"),
                "{\"a\":2}",
                "admin",
                NOW
            )
            .await?,
            "stale"
        );
        assert!(
            store::replace_policy(
                &db,
                EXCHANGE_ADMINISTRATOR,
                "/",
                Some("{\"a\":1}"),
                "{\"a\":2}",
                "admin",
                NOW
            )
            .await?
        );

        // A custom role: names unique in any case, changed only from what was read, deleted
        // only while nothing holds it, and then out of the catalogue with its name free.
        let role = store::RoleRow {
            id: id(),
            name: "Payments Refunder".into(),
            description: String::new(),
            permissions: vec!["app.payments/refunds/approve".into()],
            built_in: false,
            privileged: false,
        };
        assert!(store::insert_role(&db, &role, NOW).await?);
        let same_name = store::RoleRow {
            id: id(),
            name: "PAYMENTS REFUNDER".into(),
            ..role.clone()
        };
        assert!(!store::insert_role(&db, &same_name, NOW).await?, "name taken");
        let wider = store::RoleRow {
            permissions: vec!["*".into()],
            ..role.clone()
        };
        assert!(!store::update_role(&db, &wider, &wider).await?, "read is stale");
        let narrower = store::RoleRow {
            permissions: vec!["app.payments/reports/*".into()],
            ..role.clone()
        };
        assert!(store::update_role(&db, &role, &narrower).await?);
        let built_in = store::role(&db, EXCHANGE_ADMINISTRATOR).await?.expect("seeded");
        assert!(
            !store::update_role(&db, &built_in, &built_in).await?,
            "built-ins are read-only"
        );
        assert!(!store::delete_role(&db, EXCHANGE_ADMINISTRATOR, NOW).await?);

        let held = AssignmentRow {
            role_id: role.id.clone(),
            ..assignment("admin", Kind::Eligible, None)
        };
        store::insert_assignment(&db, &held, true, NOW).await?;
        assert!(!store::delete_role(&db, &role.id, NOW).await?, "held");
        assert_eq!(store::role_uses(&db, &role.id).await?, (1, 0));
        assert!(store::end_assignment(&db, &held.id, "removed", NOW).await?);
        assert!(store::delete_role(&db, &role.id, NOW).await?);
        assert!(store::role(&db, &role.id).await?.is_none());
        assert!(!store::roles(&db).await?.iter().any(|r| r.id == role.id));
        assert!(
            store::insert_role(&db, &same_name, NOW).await?,
            "the name is free again"
        );
        Ok(())
    })
    .await
}
