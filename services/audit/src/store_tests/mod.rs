//! Audit's store on both databases: each test body runs against a migrated SQLite file and a
//! migrated PostgreSQL database. The chain and names here; webhook and mail deliveries in
//! `deliveries`, Shared Signals streams in `ssf`.

use pim_runtime::db::Db;
use sea_orm::TransactionTrait;

use crate::store::{self, Filter, Record};

mod deliveries;
mod ssf;

const NOW: i64 = 1_800_000_000_000;

fn record(event_id: &str) -> Record {
    Record {
        event_id: event_id.into(),
        time: NOW,
        source: "pim.assignment".into(),
        action: "RoleActivated".into(),
        actor_id: "lee".into(),
        target_id: "lee".into(),
        outcome: "success".into(),
        payload_json: "{}".into(),
        ..Record::default()
    }
}

/// A polled Shared Signals stream of every CAEP event, naming subjects as `subjects` says.
fn polled_stream(id: &str, subjects: crate::ssf::SubjectFormat) -> crate::webhooks::Subscription {
    use crate::ssf::{EVENTS_SUPPORTED, Method, Stream, StreamStatus};
    crate::webhooks::Subscription {
        id: id.into(),
        event_types: EVENTS_SUPPORTED.iter().map(|e| (*e).to_owned()).collect(),
        generation: 1,
        stream: Some(Stream {
            audience: "app".into(),
            method: Method::Poll,
            status: StreamStatus::Enabled,
            subjects,
            authorization: None,
        }),
        ..Default::default()
    }
}

/// Keeps records as ingest does, in a transaction of their own.
async fn keep(db: &Db, mut records: Vec<Record>) -> anyhow::Result<()> {
    let txn = db.begin().await?;
    crate::ingest::keep(&txn, &mut records).await?;
    txn.commit().await?;
    Ok(())
}

async fn append(db: &Db, ids: &[&str]) -> anyhow::Result<Vec<Record>> {
    let mut records: Vec<Record> = ids.iter().map(|id| record(id)).collect();
    let txn = db.begin().await?;
    store::append_all(&txn, &mut records, NOW).await?;
    txn.commit().await?;
    Ok(records)
}

/// The chain grows by one link per new event, each record hashed over the one before; an
/// event seen before (in the same batch or an earlier one) is left out; pages run newest
/// first from the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_links_each_new_event_once_and_pages_newest_first() -> anyhow::Result<()> {
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        append(&db, &["e1", "e2", "e3"]).await?;
        let added = append(&db, &["e3", "e4", "e4"]).await?;
        assert_eq!(
            added
                .iter()
                .map(|r| (r.event_id.as_str(), r.sequence))
                .collect::<Vec<_>>(),
            vec![("e4", 4)],
            "e3 was stored already, e4 came twice"
        );
        let stored = store::range(&db, 1, 4, 10).await?;
        assert_eq!(stored.iter().map(|r| r.sequence).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        for pair in stored.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "each links to the one before");
            assert_eq!(pair[1].hash, crate::chain::hash(&pair[1].prev_hash, &pair[1]));
        }
        assert_eq!(store::head(&db).await?, (4, stored[3].hash.clone()));
        let page = |after_sequence| Filter {
            newest_first: true,
            after_sequence,
            ..Filter::default()
        };
        let newest: Vec<i64> = store::query(&db, &page(0), 2)
            .await?
            .iter()
            .map(|r| r.sequence)
            .collect();
        assert_eq!(newest, vec![4, 3]);
        let next: Vec<i64> = store::query(&db, &page(3), 2)
            .await?
            .iter()
            .map(|r| r.sequence)
            .collect();
        assert_eq!(next, vec![2, 1]);
        Ok(())
    })
    .await
}

/// Records name a principal and a role the same way whatever their events said: the user
/// name a user was created with (not a display name an assignment event carried), a custom
/// role's and a built-in role's name; a rename is seen by the records after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_names_principals_and_roles_the_same_way() -> anyhow::Result<()> {
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        let created = |event_id: &str, action: &str, id: &str, name: &str| Record {
            action: format!("pim.identity.v1.{action}"),
            target_id: id.into(),
            target_name: name.into(),
            ..record(event_id)
        };
        let granted = Record {
            action: "pim.assignment.v1.EligibilityGranted".into(),
            actor_id: "admin-id".into(),
            target_id: "lee-id".into(),
            target_name: "Lee Gu".into(),
            role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.into(),
            ..record("e3")
        };
        let policy = Record {
            action: "pim.assignment.v1.PolicyUpdated".into(),
            actor_id: "admin-id".into(),
            target_id: "role-9".into(),
            role_id: "role-9".into(),
            ..record("e4")
        };
        let mut batch = vec![
            created("e1", "UserCreated", "lee-id", "lee"),
            created("e2", "UserCreated", "admin-id", "admin"),
            granted,
            Record {
                action: "pim.assignment.v1.RoleDefinitionCreated".into(),
                ..created("e0", "", "role-9", "Payments Refunder")
            },
            policy,
        ];
        let txn = db.begin().await?;
        store::name_all(&txn, &mut batch).await?;
        store::append_all(&txn, &mut batch, NOW).await?;
        txn.commit().await?;
        let named = |r: &Record| (r.actor_name.clone(), r.target_name.clone(), r.role_name.clone());
        assert_eq!(
            named(&batch[2]),
            ("admin".into(), "lee".into(), "Global Administrator".into()),
            "the user name, not the display name the event carried"
        );
        assert_eq!(
            named(&batch[4]),
            ("admin".into(), "Payments Refunder".into(), "Payments Refunder".into())
        );
        let mut later = vec![
            created("e5", "UserUpdated", "lee-id", "lee.gu"),
            Record {
                actor_id: "lee-id".into(),
                target_id: "unknown-id".into(),
                target_name: "as the event said".into(),
                ..record("e6")
            },
        ];
        let txn = db.begin().await?;
        store::append_all(&txn, &mut later, NOW).await?;
        txn.commit().await?;
        assert_eq!(named(&later[1]).0, "lee.gu", "renamed");
        assert_eq!(named(&later[1]).1, "as the event said", "never announced: kept");
        // The old creation delivered again teaches nothing: it is not a new record.
        let mut redelivered = vec![
            created("e1", "UserCreated", "lee-id", "lee"),
            Record {
                target_id: "lee-id".into(),
                ..record("e7")
            },
        ];
        let txn = db.begin().await?;
        store::append_all(&txn, &mut redelivered, NOW).await?;
        txn.commit().await?;
        assert_eq!(redelivered.len(), 1, "e1 was kept already");
        assert_eq!(named(&redelivered[0]).1, "lee.gu", "not renamed back");
        // Access to a group says which group, by its name.
        let mut group_access = vec![
            created("e8", "GroupCreated", "g1", "mail team"),
            Record {
                action: "pim.assignment.v1.RequestCreated".into(),
                role_id: pim_proto::catalogue::GROUP_MEMBER.into(),
                scope: pim_proto::catalogue::group_scope("g1"),
                ..record("e9")
            },
        ];
        let txn = db.begin().await?;
        store::append_all(&txn, &mut group_access, NOW).await?;
        txn.commit().await?;
        assert_eq!(named(&group_access[1]).2, "Group Member of mail team");
        // An app acts as people do; named as one, it still reads as an app.
        let mut by_app = vec![
            created("e10", "ServicePrincipalCreated", "app-id", "admin"),
            Record {
                actor_id: "app-id".into(),
                target_id: "lee-id".into(),
                ..record("e11")
            },
        ];
        let txn = db.begin().await?;
        store::append_all(&txn, &mut by_app, NOW).await?;
        txn.commit().await?;
        assert_eq!(named(&by_app[0]).1, "admin (app)");
        assert_eq!(named(&by_app[1]).0, "admin (app)");
        Ok(())
    })
    .await
}

/// An upgraded audit database learns the names its records already announced (the latest
/// one for each id), so records written after the upgrade name earlier principals too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_learns_the_names_already_recorded() -> anyhow::Result<()> {
    let before_names = pim_runtime::testing::steps_before::<store::Migrator>("m0003_names");
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", Some(before_names), |db| async move {
        let announced = |event_id: &str, action: &str, id: &str, name: &str| Record {
            action: format!("pim.identity.v1.{action}"),
            target_id: id.into(),
            target_name: name.into(),
            ..record(event_id)
        };
        let mut earlier = vec![
            announced("e1", "UserCreated", "lee-id", "lee"),
            announced("e2", "UserUpdated", "lee-id", "lee.gu"),
            announced("e3", "GroupCreated", "ops-id", "ops"),
            announced("e4", "SignInFailed", "eve-id", "claimed name"),
            announced("e0", "ServicePrincipalCreated", "bot-id", "admin"),
        ];
        let txn = db.begin().await?;
        store::append_unnamed(&txn, &mut earlier, NOW).await?;
        txn.commit().await?;
        <store::Migrator as sea_orm_migration::MigratorTrait>::up(&db, None).await?;
        let mut later = vec![
            Record {
                actor_id: "ops-id".into(),
                target_id: "lee-id".into(),
                role_id: "eve-id".into(),
                ..record("e5")
            },
            Record {
                actor_id: "bot-id".into(),
                ..record("e6")
            },
        ];
        let txn = db.begin().await?;
        store::name_all(&txn, &mut later).await?;
        txn.commit().await?;
        assert_eq!(
            (
                later[0].actor_name.as_str(),
                later[0].target_name.as_str(),
                later[0].role_name.as_str()
            ),
            ("ops", "lee.gu", ""),
            "the latest name; a failed sign-in's claim names nobody"
        );
        assert_eq!(
            later[1].actor_name, "admin (app)",
            "an app named as a person reads as an app"
        );
        Ok(())
    })
    .await
}
