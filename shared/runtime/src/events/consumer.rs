//! Applying an event exactly once per consumer: the handler's changes and the inbox row that
//! records the event id commit in one transaction, so a redelivered event has no effect.

use std::sync::Arc;

use anyhow::Context;
use sea_orm::{DatabaseTransaction, TransactionTrait};

use super::Envelope;
use crate::db::{self, Db};

/// What a consuming service does with events of the streams it follows.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync {
    /// The consumer (group) name, e.g. `audit`.
    fn consumer(&self) -> &str;
    /// Base names of the streams it follows.
    fn streams(&self) -> Vec<&'static str>;
    /// Applies one event inside `txn`; an error rolls everything back and the event is retried.
    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()>;
    /// Runs after `handle`'s transaction committed (e.g. to update in-memory state that must
    /// never run ahead of the database). Not run for duplicates.
    async fn after_commit(&self, _envelope: &Envelope) {}
}

/// A handler bound to its service's database and inbox.
#[derive(Clone)]
pub struct Inbox {
    db: Db,
    handler: Arc<dyn EventHandler>,
}

impl Inbox {
    pub fn new(db: Db, handler: Arc<dyn EventHandler>) -> Self {
        Self { db, handler }
    }

    pub fn consumer(&self) -> &str {
        self.handler.consumer()
    }

    pub fn streams(&self) -> Vec<&'static str> {
        self.handler.streams()
    }

    /// Applies every envelope not applied before, in one transaction (all or none).
    pub async fn apply_all(&self, envelopes: &[Envelope]) -> anyhow::Result<()> {
        let txn = self.db.begin().await.context("beginning consumer transaction")?;
        let mut applied = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            if self.record(&txn, envelope).await? {
                self.handler.handle(&txn, envelope).await?;
                applied.push(envelope);
            }
        }
        txn.commit().await.context("committing consumer transaction")?;
        for envelope in applied {
            self.handler.after_commit(envelope).await;
        }
        Ok(())
    }

    /// Records the event id in the inbox; false when it was there already (a duplicate).
    async fn record(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<bool> {
        let inserted = db::exec(
            txn,
            "INSERT INTO inbox (consumer, event_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            vec![self.consumer().into(), envelope.id.clone().into(), db::now_ms().into()],
        )
        .await
        .context("recording the event in the inbox")?;
        Ok(inserted == 1)
    }

    /// Applies `envelope` unless this consumer already did; returns whether it was new.
    pub async fn apply(&self, envelope: &Envelope) -> anyhow::Result<bool> {
        let txn = self.db.begin().await.context("beginning consumer transaction")?;
        if !self.record(&txn, envelope).await? {
            txn.rollback().await.ok();
            return Ok(false);
        }
        self.handler.handle(&txn, envelope).await?;
        txn.commit().await.context("committing consumer transaction")?;
        self.handler.after_commit(envelope).await;
        Ok(true)
    }
}
