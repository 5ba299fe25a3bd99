//! Audit's store on both databases: each test body runs against a migrated SQLite file and a
//! migrated PostgreSQL database.

use pim_runtime::db::Db;
use sea_orm::TransactionTrait;

use crate::store::{self, Filter, Record};

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
