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
    /// Whether it acts on events of this short type; others are acknowledged without a
    /// transaction or an inbox row (handling them would change nothing).
    fn wants(&self, _event_type: &str) -> bool {
        true
    }
    /// Whether its own writes already ignore an event applied before (e.g. a unique event
    /// id), so the inbox row can be skipped.
    fn deduplicates_itself(&self) -> bool {
        false
    }
    /// Applies one event inside `txn`; an error rolls everything back and the event is retried.
    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()>;
    /// Runs after `handle`'s transaction committed (e.g. to update in-memory state that must
    /// never run ahead of the database). Not run for duplicates.
    async fn after_commit(&self, _envelope: &Envelope) {}
    /// Applies several new events in one transaction, in order. Handlers that can write many
    /// rows at once override it; by default each is handled in turn.
    async fn handle_all(&self, txn: &DatabaseTransaction, envelopes: &[&Envelope]) -> anyhow::Result<()> {
        for envelope in envelopes {
            crate::telemetry::handle_event(self.consumer(), envelope, self.handle(txn, envelope)).await?;
        }
        Ok(())
    }
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
        let wanted: Vec<&Envelope> = envelopes
            .iter()
            .filter(|e| self.handler.wants(super::short_type(e)))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await.context("beginning consumer transaction")?;
        let applied: Vec<&Envelope> = if self.handler.deduplicates_itself() {
            let mut seen = std::collections::HashSet::new();
            wanted.into_iter().filter(|e| seen.insert(e.id.as_str())).collect()
        } else {
            let mut fresh = self.record_all(&txn, &wanted).await?;
            // New ones, each once (the same event can be in a batch twice).
            wanted.into_iter().filter(|e| fresh.remove(&e.id)).collect()
        };
        self.handler.handle_all(&txn, &applied).await?;
        txn.commit().await.context("committing consumer transaction")?;
        for envelope in applied {
            self.handler.after_commit(envelope).await;
        }
        Ok(())
    }

    /// Records the event ids in the inbox with one statement; returns the ids that were new.
    async fn record_all(
        &self,
        txn: &DatabaseTransaction,
        envelopes: &[&Envelope],
    ) -> anyhow::Result<std::collections::HashSet<String>> {
        let now = db::now_ms();
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(envelopes.len() * 3);
        let mut rows = Vec::with_capacity(envelopes.len());
        for (i, envelope) in envelopes.iter().enumerate() {
            rows.push(format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
            values.push(self.consumer().into());
            values.push(envelope.id.clone().into());
            values.push(now.into());
        }
        let sql = format!(
            "INSERT INTO inbox (consumer, event_id, processed_at) VALUES {} ON CONFLICT DO NOTHING RETURNING event_id",
            rows.join(", ")
        );
        let inserted = db::query(txn, &sql, values)
            .await
            .context("recording events in the inbox")?;
        inserted
            .iter()
            .map(|r| db::col::<String>(r, "event_id").map_err(Into::into))
            .collect()
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
        if !self.handler.wants(super::short_type(envelope)) {
            return Ok(false);
        }
        let txn = self.db.begin().await.context("beginning consumer transaction")?;
        if !self.handler.deduplicates_itself() && !self.record(&txn, envelope).await? {
            txn.rollback().await.ok();
            return Ok(false);
        }
        crate::telemetry::handle_event(self.consumer(), envelope, self.handler.handle(&txn, envelope)).await?;
        txn.commit().await.context("committing consumer transaction")?;
        self.handler.after_commit(envelope).await;
        Ok(true)
    }
}
