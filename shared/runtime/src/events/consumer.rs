//! Applying an event exactly once per consumer: the handler's changes and the inbox row that
//! records the event id commit in one transaction, so a redelivered event has no effect.

use std::sync::Arc;

use anyhow::Context;
use sea_orm::{DatabaseTransaction, TransactionTrait};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::Envelope;
use crate::db::{self, Db};
use crate::events::EventType;

/// What a consuming service does with events of the streams it follows.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync {
    /// The consumer (group) name, e.g. `audit`.
    fn consumer(&self) -> &str;
    /// Base names of the streams it follows.
    fn streams(&self) -> Vec<&'static str>;
    /// Whether it acts on events of this short type; others are acknowledged without a
    /// transaction or an inbox row (handling them would change nothing).
    fn wants(&self, _event_type: Option<EventType>) -> bool {
        true
    }
    /// Whether its own writes already ignore an event applied before (e.g. a unique event
    /// id), so the inbox row can be skipped.
    fn deduplicates_itself(&self) -> bool {
        false
    }
    /// Applies one event inside `txn`; an error rolls everything back and the event is retried.
    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()>;
    /// Whether it takes access away (e.g. ends memberships). With Redis, a process that also
    /// hosts the event's producer applies every event this handler wants before publishing
    /// it, so a loss of access made there waits for no stream; the rest (events of other
    /// processes, retries) comes from Redis as usual, the duplicates dropped by the inbox.
    fn ends_access(&self) -> bool {
        false
    }
    /// Whether it records entries refused for want of a valid signature ([`Self::rejected`]).
    fn records_rejections(&self) -> bool {
        false
    }
    /// Records an entry of a followed stream that was refused (forged, altered, or signed by
    /// another service), inside `txn`; the entry is never handled. Called once per entry
    /// (the inbox deduplicates by [`Rejected::id`] unless the handler does). After it commits,
    /// `after_commit` runs with an envelope that holds only that id.
    async fn rejected(&self, _txn: &DatabaseTransaction, _rejected: &Rejected) -> anyhow::Result<()> {
        Ok(())
    }
    /// Runs after `handle`'s transaction committed (e.g. to update in-memory state that must
    /// never run ahead of the database). Not run for duplicates.
    async fn after_commit(&self, _envelope: &Envelope) {}
    /// Applies several new events in one transaction, in order. Handlers that can write many
    /// rows at once override it; by default each is handled in turn.
    async fn handle_all(&self, txn: &DatabaseTransaction, envelopes: &[&Envelope]) -> anyhow::Result<()> {
        for envelope in envelopes {
            handle_event(self.consumer(), envelope, self.handle(txn, envelope)).await?;
        }
        Ok(())
    }
}

/// A stream entry a consumer refused: what it claimed to be, and why it was not believed.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// Base stream name.
    pub stream: String,
    /// The Redis entry id.
    pub entry_id: String,
    /// The envelope it held, when it decoded (its fields are claims, not facts).
    pub envelope: Option<Envelope>,
    pub reason: super::Rejection,
    /// The consumer (group) that refused it.
    pub consumer: String,
    /// SHA-256 of the entry's envelope bytes.
    pub digest: [u8; 32],
}

impl Rejected {
    /// A stable id for this refusal, the same on every redelivery of the entry (a UUID made
    /// of the hash of stream, entry id and content).
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.stream.as_bytes());
        hash.update(b"\n");
        hash.update(self.entry_id.as_bytes());
        hash.update(b"\n");
        hash.update(self.digest);
        let bytes: [u8; 16] = hash.finalize()[..16].try_into().expect("16 of 32 bytes");
        uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
    }
}

/// The envelope that stands for a refusal in the inbox and in `after_commit`: its id only.
fn refusal_marker(rejected: &Rejected) -> Envelope {
    Envelope {
        id: rejected.id(),
        ..Envelope::default()
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

    /// Whether its handler acts on events of this short type (others are acknowledged
    /// without being applied, so they need no signature check either).
    pub fn wants(&self, event_type: Option<EventType>) -> bool {
        self.handler.wants(event_type)
    }

    /// Whether its handler takes access away ([`EventHandler::ends_access`]).
    pub fn ends_access(&self) -> bool {
        self.handler.ends_access()
    }

    /// Whether this consumer acts on `envelope`: a type it wants, and not older than the
    /// inbox remembers (an event that old could be a replay the inbox no longer recognises;
    /// no genuine delivery is that late: producers keep events for replay at most as long).
    fn acts_on(&self, envelope: &Envelope) -> bool {
        if !self.handler.wants(super::event_type(envelope)) {
            return false;
        }
        let oldest = db::now_ms() - super::INBOX_KEPT.as_millis() as i64;
        let stale = envelope
            .time
            .as_ref()
            .map(db::from_timestamp)
            .is_some_and(|t| t < oldest);
        if stale && !self.handler.deduplicates_itself() {
            tracing::warn!(consumer = self.consumer(), event_id = %envelope.id, event_type = %envelope.r#type, "event older than the inbox window not applied");
            return false;
        }
        true
    }

    /// Applies every envelope not applied before, in one transaction (all or none); again at
    /// once where the database gave the transaction up for another ([`again_if_conflict`]).
    pub async fn apply_all(&self, envelopes: &[Envelope]) -> anyhow::Result<()> {
        again_if_conflict(self.consumer(), || self.apply_all_once(envelopes)).await
    }

    async fn apply_all_once(&self, envelopes: &[Envelope]) -> anyhow::Result<()> {
        let wanted: Vec<&Envelope> = envelopes.iter().filter(|e| self.acts_on(e)).collect();
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
        caught(self.handler.handle_all(&txn, &applied)).await?;
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

    /// Lets the handler record a refused entry, once.
    pub async fn reject(&self, rejected: &Rejected) -> anyhow::Result<()> {
        if !self.handler.records_rejections() {
            return Ok(());
        }
        let txn = self.db.begin().await.context("beginning consumer transaction")?;
        if !self.handler.deduplicates_itself() && !self.record(&txn, &refusal_marker(rejected)).await? {
            txn.rollback().await.ok();
            return Ok(());
        }
        self.handler.rejected(&txn, rejected).await?;
        txn.commit().await.context("committing a rejected entry")?;
        self.handler.after_commit(&refusal_marker(rejected)).await;
        Ok(())
    }

    /// Applies `envelope` unless this consumer already did; returns whether it was new. Again
    /// at once where the database gave the transaction up for another ([`again_if_conflict`]).
    pub async fn apply(&self, envelope: &Envelope) -> anyhow::Result<bool> {
        again_if_conflict(self.consumer(), || self.apply_once(envelope)).await
    }

    async fn apply_once(&self, envelope: &Envelope) -> anyhow::Result<bool> {
        if !self.acts_on(envelope) {
            return Ok(false);
        }
        let txn = self.db.begin().await.context("beginning consumer transaction")?;
        if !self.handler.deduplicates_itself() && !self.record(&txn, envelope).await? {
            txn.rollback().await.ok();
            return Ok(false);
        }
        handle_event(self.consumer(), envelope, caught(self.handler.handle(&txn, envelope))).await?;
        txn.commit().await.context("committing consumer transaction")?;
        self.handler.after_commit(envelope).await;
        Ok(true)
    }
}

/// How often an event whose transaction the database gave up (a deadlock, a serialization
/// failure) is applied again at once, before it is left to redelivery.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Runs `attempt` again, after a short pause, while it fails because the database gave its
/// transaction up for another one met at the same moment (nothing of it was applied): left to
/// redelivery, the event (a member's removal, say) would wait for the claim timeout (30 s),
/// and access it ends would last as long.
async fn again_if_conflict<T, F, Fut>(consumer: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(err) if tried < CONFLICT_ATTEMPTS && db::conflict_in(&err).is_some() => {
                tracing::info!(
                    consumer,
                    attempt = tried,
                    "an event's transaction met another; applying it again"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10 << tried)).await;
                tried += 1;
            }
            outcome => return outcome,
        }
    }
}

/// A handler that panics on an event fails on it as one that returns an error does: the
/// transaction is dropped, the entry retried, then dead-lettered, and the consumer goes on
/// with the rest (a panic would otherwise end its task, holding every later event back).
async fn caught<T>(handling: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(handling)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(anyhow::anyhow!("the handler panicked: {why}"))
        })
}

/// Handles one event in a span of its own, a child of the span that emitted it.
pub(crate) fn handle_event<F: std::future::Future>(
    consumer: &str,
    envelope: &Envelope,
    handling: F,
) -> impl std::future::Future<Output = F::Output> + use<F> {
    let span = tracing::info_span!(
        "event",
        otel.name = %format!("{consumer} {}", super::short_type(envelope)),
        pim.service = consumer,
        pim.event_id = %envelope.id,
        pim.subject = %envelope.subject,
        trace_id = tracing::field::Empty,
    );
    let _ = span.set_parent(crate::telemetry::context_from_traceparent(&envelope.traceparent));
    crate::telemetry::traced(span, Some(&envelope.traceparent), handling)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use sea_orm::ConnectionTrait;

    use super::*;
    use crate::events::{Source, envelope};

    /// Fails its first `conflicts` attempts as PostgreSQL does when it gives a transaction up
    /// for another (or with another fault), then applies.
    struct Flaky {
        calls: AtomicU32,
        conflicts: u32,
        sql_state: &'static str,
    }

    #[async_trait::async_trait]
    impl EventHandler for Flaky {
        fn consumer(&self) -> &str {
            "flaky"
        }
        fn streams(&self) -> Vec<&'static str> {
            vec![]
        }
        async fn handle(&self, txn: &DatabaseTransaction, _envelope: &Envelope) -> anyhow::Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.conflicts {
                let raise = format!(
                    "DO $$ BEGIN RAISE EXCEPTION 'given up' USING ERRCODE = '{}'; END $$",
                    self.sql_state
                );
                txn.execute_unprepared(&raise).await.context("applying the event")?;
            }
            Ok(())
        }
    }

    /// An event whose transaction PostgreSQL gave up for another (a deadlock, a serialization
    /// failure) is applied again at once, once; any other fault is left to redelivery.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_given_up_for_another_is_applied_again_at_once() -> anyhow::Result<()> {
        let database = crate::testing::TestDatabase::create("conflicted_events").await?;
        let db = db::connect(&database.url).await?;
        let outcome = async {
            db.execute_unprepared(
                "CREATE TABLE inbox (consumer TEXT NOT NULL, event_id TEXT NOT NULL, processed_at BIGINT NOT NULL, PRIMARY KEY (consumer, event_id))",
            )
            .await?;
            let event = || envelope(Source::Identity, EventType::GroupMemberRemoved, "g", &());
            let flaky = |sql_state| {
                Arc::new(Flaky {
                    calls: AtomicU32::new(0),
                    conflicts: 2,
                    sql_state,
                })
            };
            for sql_state in ["40P01", "40001"] {
                let (one, batch) = (flaky(sql_state), flaky(sql_state));
                assert!(
                    Inbox::new(db.clone(), one.clone()).apply(&event()).await?,
                    "applied on its third attempt ({sql_state})"
                );
                Inbox::new(db.clone(), batch.clone()).apply_all(&[event()]).await?;
                for handler in [one, batch] {
                    assert_eq!(handler.calls.load(Ordering::SeqCst), 3, "{sql_state}");
                }
            }
            let faulty = Arc::new(Flaky {
                calls: AtomicU32::new(0),
                conflicts: 1,
                sql_state: "P0001",
            });
            let failed = Inbox::new(db.clone(), faulty.clone()).apply(&event()).await;
            assert!(failed.is_err());
            assert_eq!(faulty.calls.load(Ordering::SeqCst), 1, "a fault is not a conflict");
            let row = db::query_one(&db, "SELECT COUNT(*) AS n FROM inbox", vec![]).await?.expect("a count");
            assert_eq!(db::col::<i64>(&row, "n")?, 4, "each applied event recorded once");
            anyhow::Ok(())
        }
        .await;
        db.close().await?;
        database.drop_database().await?;
        outcome
    }
}
