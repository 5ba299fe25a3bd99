//! The transactional outbox and its relay. A service writes its event in the same
//! transaction as the state change ([`Outbox::enqueue`]); the relay picks pending rows by
//! status (never by a "last id seen" mark, since ids can commit out of order), publishes them,
//! and deletes them in the transaction that locked them. A relay that dies between
//! publishing and marking leaves the rows pending, so they are published again: consumers
//! deduplicate by event id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prost::Message;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::Envelope;
use crate::consistency::Position;
use crate::db::{self, Db, Dialect, col};

/// How long an inbox row is kept: far longer than any redelivery (a claimed or retried entry
/// comes back within minutes), so a duplicate is still recognised.
pub const INBOX_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Rows the relay deletes before it vacuums the outbox (at most once a second).
const VACUUM_AFTER: u64 = 1000;
/// How often the relay prunes the inbox.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Batches a relay pass applies in this process behind an event publication refused.
const APPLIED_AHEAD: usize = 10;
/// How often the relay looks whether its streams still hold what it published.
const LOSS_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How much earlier than a stream's newest surviving entry the relay publishes again from,
/// after it lost the rest: rows are marked sent by the database's clock, entry ids by Redis's.
const LOSS_MARGIN_MS: i64 = 60_000;

/// An outbox row on its way out.
pub struct Pending {
    pub id: String,
    pub stream: String,
    pub envelope: Envelope,
    /// Earlier failed publications of this row.
    pub attempts: u32,
    /// Already applied ahead of publication ([`Publisher::apply_here`]), by a relay of this
    /// outbox (in this process or a replica's).
    pub applied_here: bool,
}

/// What publishing a batch came to.
#[derive(Debug, Default)]
pub struct Published {
    /// How many of the batch (a prefix) were published.
    pub count: usize,
    /// Where each stream's last published event stands on it (transports with positions).
    pub reached: BTreeMap<String, Position>,
    /// What stopped the publication short of the whole batch.
    pub error: Option<anyhow::Error>,
}

impl Published {
    /// The first `count` events published, then `error`.
    pub fn stopped(count: usize, error: anyhow::Error) -> Self {
        Self {
            count,
            error: Some(error),
            ..Self::default()
        }
    }
}

/// Where a relay sends events: Redis Streams or the embedded in-process bus.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `batch` in order. Transports that can send many at once override this.
    async fn publish_all(&self, batch: &[Pending]) -> Published {
        for (i, p) in batch.iter().enumerate() {
            if let Err(err) = self.publish(&p.stream, &p.envelope, p.attempts).await {
                return Published::stopped(i, err);
            }
        }
        Published {
            count: batch.len(),
            ..Published::default()
        }
    }

    /// Publishes one event to `stream` (base name, before any prefix). Returns only when the
    /// transport has it durably (Redis) or every consumer applied it (embedded). `attempt`
    /// counts earlier failed publications of this row, for transports that dead-letter.
    async fn publish(&self, stream: &str, envelope: &Envelope, attempt: u32) -> anyhow::Result<()>;

    /// The position of the newest event on `stream`, for transports whose readers follow
    /// positions (Redis); `None` where delivery itself applies the event (embedded).
    async fn position(&self, _stream: &str) -> anyhow::Result<Option<Position>> {
        Ok(None)
    }

    /// What the transport puts before each stream's name (Redis's key prefix), so that where
    /// events reached is recorded per key: replicas sharing a database may publish under
    /// different prefixes (a test's, or a misconfiguration's) without taking each other's
    /// streams for ones that lost events.
    fn prefix(&self) -> &str {
        ""
    }

    /// Whether events are applied in this process before they are published
    /// ([`Self::apply_here`]; `InProcessFirst`).
    fn applies_here_first(&self) -> bool {
        false
    }

    /// Applies `batch` in this process, in order, ahead of its publication, passing over rows
    /// already applied here; returns how many (a prefix) are applied here now, and the error
    /// that stopped it. Only those are then published. By default nothing is applied here.
    async fn apply_here(&self, batch: &[Pending]) -> (usize, Option<anyhow::Error>) {
        (batch.len(), None)
    }
}

/// A service's outbox: how handlers record events, and how they wake the relay after commit.
#[derive(Clone)]
pub struct Outbox {
    /// This process's name for itself in `applied_by`: a fresh UUID each start.
    instance: Arc<str>,
    wake: Arc<Notify>,
    /// Told after each relay pass that sent something.
    passed: Arc<Notify>,
    /// Whether a sent row means every consumer applied it (embedded delivery), so that
    /// [`Outbox::settled`] means applied here.
    read_your_writes: Arc<std::sync::atomic::AtomicBool>,
    /// Where published events go, so a write can learn the position its events reached.
    publisher: Arc<std::sync::OnceLock<Arc<dyn Publisher>>>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            instance: Arc::from(uuid::Uuid::new_v4().to_string()),
            wake: Arc::default(),
            passed: Arc::default(),
            read_your_writes: Arc::default(),
            publisher: Arc::default(),
        }
    }
}

impl Outbox {
    /// Records `envelope` for `stream` inside the caller's transaction.
    pub async fn enqueue<C: ConnectionTrait>(&self, txn: &C, stream: &str, envelope: &Envelope) -> Result<(), DbErr> {
        self.enqueue_all(txn, stream, std::slice::from_ref(envelope)).await
    }

    /// Records several events for `stream` with one statement. They share a time, so the
    /// relay orders them by id: envelopes made earlier in this process have smaller ids
    /// (UUIDv7), so they leave in the order they were made.
    pub async fn enqueue_all<C: ConnectionTrait>(
        &self,
        txn: &C,
        stream: &str,
        envelopes: &[Envelope],
    ) -> Result<(), DbErr> {
        if envelopes.is_empty() {
            return Ok(());
        }
        OutboxRows::new(stream, envelopes).insert(txn).await
    }

    /// Tells the relay there is work, so an event leaves without waiting for the next poll.
    /// Call after the transaction committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Embedded delivery: a row leaves the outbox only once every consumer in the process
    /// applied it, so [`Outbox::settled`] gives read-your-writes.
    pub fn deliver_before_answering(&self) {
        self.read_your_writes.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether every consumer in the process applies an event before it leaves the outbox
    /// (embedded delivery).
    pub fn applies_before_answering(&self) -> bool {
        self.read_your_writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (at most `within`) until every event this service wrote up to `written_by`
    /// (epoch ms, taken after the write committed) has left the outbox, and answers the
    /// consistency token a reader needs to see the write:
    /// - embedded delivery: every consumer in the process applied the events, so the next
    ///   `CheckAccess` here already gives the new answer; the token asks for nothing more;
    /// - Redis: the token names the position of `stream`'s newest entry, at or after the
    ///   write's own, so a replica that applied it has applied the write.
    ///
    /// `None` when the events did not leave in time (Redis down), or the outbox could not be
    /// read to tell: the write stands, but no reader can be told to wait for it.
    pub async fn settled(
        &self,
        db: &Db,
        written_by: i64,
        stream: &str,
        within: Duration,
    ) -> Option<crate::consistency::ConsistencyToken> {
        use crate::consistency::ConsistencyToken;
        self.wake();
        let deadline = tokio::time::Instant::now() + within;
        let mut unreadable = false;
        loop {
            let passed = self.passed.notified();
            let read = db::query_one(
                db,
                "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN applied_by = $2 THEN 0 ELSE 1 END), 0) AS m \
                 FROM outbox WHERE status = 'pending' AND created_at <= $1",
                vec![written_by.into(), self.instance.to_string().into()],
            )
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| {
                let r = r.ok_or_else(|| anyhow::anyhow!("no row"))?;
                Ok((col::<i64>(&r, "n")?, col::<i64>(&r, "m")?))
            });
            // An outbox that cannot be read is not an outbox with nothing waiting: the write's
            // events are taken for unapplied, so the answer carries no token that says otherwise.
            let (waiting, not_applied_here) = read.unwrap_or_else(|err| {
                if !unreadable {
                    tracing::warn!(error = %format!("{err:#}"), "reading the outbox for a write's events failed");
                    unreadable = true;
                }
                (1, 1)
            });
            if waiting == 0 {
                break;
            }
            if not_applied_here == 0 {
                // Applied in this process (by its own relay, not a replica's), refused by
                // Redis: what this process answers is already true; no reader elsewhere can be
                // told to wait for it.
                tracing::warn!(waiting, "events applied here but not yet published when answering");
                return None;
            }
            tokio::select! {
                _ = passed => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(waiting, "events not yet published when answering");
                    return None;
                }
            }
        }
        if self.applies_before_answering() {
            return Some(ConsistencyToken::applied());
        }
        let publisher = self.publisher.get()?;
        match publisher.position(stream).await {
            Ok(Some(position)) => Some(ConsistencyToken::at(stream, position)),
            Ok(None) => Some(ConsistencyToken::applied()),
            Err(err) => {
                tracing::warn!(stream, error = %format!("{err:#}"), "reading the stream position for a consistency token failed");
                None
            }
        }
    }
}

/// The outbox insert's head; [`OutboxRows`] supply its values.
pub const OUTBOX_INSERT: &str = "INSERT INTO outbox (id, stream, event_type, envelope, created_at)";

/// Outbox rows for a statement that writes them together with other changes (e.g. in a
/// data-modifying CTE): `placeholders` goes after [`OUTBOX_INSERT`]'s `VALUES`, `values`
/// are the parameters it numbers.
pub struct OutboxRows {
    pub values: Vec<sea_orm::Value>,
    count: usize,
}

impl OutboxRows {
    /// Events for `stream`, sharing the current time (see [`Outbox::enqueue_all`] for their order).
    pub fn new(stream: &str, envelopes: &[Envelope]) -> Self {
        let now = db::now_ms();
        let mut values = Vec::with_capacity(envelopes.len() * 5);
        for envelope in envelopes {
            values.extend([
                envelope.id.clone().into(),
                stream.into(),
                envelope.r#type.clone().into(),
                envelope.encode_to_vec().into(),
                now.into(),
            ]);
        }
        Self {
            values,
            count: envelopes.len(),
        }
    }

    /// Inserts them on their own.
    pub async fn insert<C: ConnectionTrait>(self, c: &C) -> Result<(), DbErr> {
        let sql = format!("{OUTBOX_INSERT} VALUES {}", self.placeholders(1));
        db::exec(c, &sql, self.values).await.map(drop)
    }

    /// `($first, …, $first+4), …`: one tuple per event.
    pub fn placeholders(&self, first: usize) -> String {
        (0..self.count)
            .map(|i| {
                let n = first + i * 5;
                format!("(${n}, ${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Publishes a database's outbox rows.
#[derive(Clone)]
pub struct Relay {
    db: Db,
    publisher: Arc<dyn Publisher>,
    outbox: Outbox,
    batch: u64,
    /// The service it relays for (the backlog metric's label).
    service: &'static str,
    /// Signs each event as it leaves (events crossing Redis must be signed).
    keys: Option<Arc<super::EventKeys>>,
    /// How long published rows stay (marked sent) so an operator can replay them after Redis
    /// lost what it held ([`replay`]); zero deletes them once published.
    keep: Duration,
}

/// The running relay: stop it, or wait for it.
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Ends the relay at once, wherever it is (a crash, for tests).
    pub fn abort(self) {
        self.task.abort();
    }
}

impl Relay {
    pub fn new(db: Db, outbox: Outbox, publisher: Arc<dyn Publisher>) -> Self {
        let _ = outbox.publisher.set(publisher.clone());
        Self {
            db,
            publisher,
            outbox,
            batch: 100,
            service: "",
            keys: None,
            keep: Duration::ZERO,
        }
    }

    /// Keeps published rows for `window` (marked sent), so [`replay`] can publish them again.
    pub fn keeping(mut self, window: Duration) -> Self {
        self.keep = window;
        self
    }

    /// Signs every event it publishes with the key of its stream's owner. Signing happens as
    /// the row leaves, so rows written before a key rotation leave under the new key.
    pub fn signed_with(mut self, keys: Arc<super::EventKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Names the service whose outbox this is (for metrics).
    pub fn named(mut self, service: &'static str) -> Self {
        self.service = service;
        self
    }

    /// Publishes one batch of pending rows; returns how many were sent.
    ///
    /// On PostgreSQL the rows stay locked (`FOR UPDATE SKIP LOCKED`) from selection to marking,
    /// so replicas share the outbox without publishing a row twice. SQLite (the single-process
    /// all-in-one) has no row locks and one writer per file: there the relay holds no
    /// transaction while it publishes, so an in-process consumer writing to the same file is
    /// never blocked behind it.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        if self.db.get_database_backend() == DbBackend::Postgres {
            let txn = self.db.begin().await.context("beginning relay transaction")?;
            let sent = self.publish_batch(&txn).await?;
            txn.commit().await.context("committing relay progress")?;
            Ok(sent)
        } else {
            self.publish_batch(&self.db).await
        }
    }

    /// Up to a batch of pending rows, oldest first; with `not_applied_here`, only those not
    /// applied in this process yet.
    async fn pending_rows<C: ConnectionTrait>(&self, conn: &C, not_applied_here: bool) -> anyhow::Result<Vec<Pending>> {
        let sql = format!(
            "SELECT id, stream, envelope, attempts, applied_by FROM outbox WHERE status = 'pending'{} \
             ORDER BY created_at, id LIMIT {}{}",
            if not_applied_here {
                " AND applied_by IS NULL"
            } else {
                ""
            },
            self.batch,
            conn.skip_locked()
        );
        let rows = db::query(conn, &sql, vec![])
            .await
            .context("reading pending outbox rows")?;
        let mut batch = Vec::with_capacity(rows.len());
        for row in rows {
            let bytes: Vec<u8> = col(&row, "envelope")?;
            let stream: String = col(&row, "stream")?;
            let mut envelope = Envelope::decode(bytes.as_slice()).context("decoding an outbox row")?;
            if let Some(keys) = &self.keys {
                keys.sign(&stream, &mut envelope)?;
            }
            batch.push(Pending {
                id: col(&row, "id")?,
                stream,
                envelope,
                attempts: col::<i32>(&row, "attempts")? as u32,
                applied_here: col::<Option<String>>(&row, "applied_by")?.is_some(),
            });
        }
        Ok(batch)
    }

    /// Marks `rows` applied in this process, so no later pass applies them again and a write
    /// of this process waiting for them need not wait for their publication.
    async fn mark_applied_here<C: ConnectionTrait>(&self, conn: &C, rows: &[Pending]) -> anyhow::Result<()> {
        let mut values: Vec<sea_orm::Value> = vec![self.outbox.instance.to_string().into()];
        values.extend(rows.iter().filter(|p| !p.applied_here).map(|p| p.id.clone().into()));
        if values.len() > 1 {
            let sql = format!(
                "UPDATE outbox SET applied_by = $1 WHERE id IN ({})",
                db::placeholders(2, values.len() - 1)
            );
            db::exec(conn, &sql, values)
                .await
                .context("marking events applied here")?;
        }
        Ok(())
    }

    /// Counts a failed delivery of `failed` (its publication, or its application here),
    /// keeping the error for the operator: after `PIM_MAX_DELIVERIES` the in-process bus
    /// gives it up.
    async fn record_failure<C: ConnectionTrait>(conn: &C, failed: &Pending, err: &anyhow::Error) -> anyhow::Result<()> {
        let attempts = failed.attempts + 1;
        tracing::warn!(event_id = %failed.id, stream = %failed.stream, attempts, error = %format!("{err:#}"), "delivering an event failed");
        db::exec(
            conn,
            "UPDATE outbox SET attempts = $1, last_error = $2 WHERE id = $3",
            vec![
                (attempts as i32).into(),
                format!("{err:#}").into(),
                failed.id.clone().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// While publication fails, the rows behind the one that failed are still applied here,
    /// in order, a batch at a time (at most [`APPLIED_AHEAD`] batches a pass): a loss of access
    /// made in this process waits for no stream, however long the backlog.
    async fn apply_ahead<C: ConnectionTrait>(&self, conn: &C) -> anyhow::Result<()> {
        for _ in 0..APPLIED_AHEAD {
            let batch = self.pending_rows(conn, true).await?;
            let (here, failure) = self.publisher.apply_here(&batch).await;
            self.mark_applied_here(conn, &batch[..here]).await?;
            if let (Some(err), Some(failed)) = (failure, batch.get(here)) {
                Self::record_failure(conn, failed, &err).await?;
                break;
            }
            if (batch.len() as u64) < self.batch {
                break;
            }
        }
        Ok(())
    }

    async fn publish_batch<C: ConnectionTrait>(&self, conn: &C) -> anyhow::Result<usize> {
        let batch = self.pending_rows(conn, false).await?;
        if batch.is_empty() {
            crate::metrics::metrics()
                .relay_up
                .with_label_values(&[self.service])
                .set(1);
            return Ok(0);
        }
        // Applied in this process first (where the publisher does), then published: only
        // what was applied here goes on, so nothing overtakes an event that failed here.
        let (here, failed_here) = self.publisher.apply_here(&batch).await;
        let Published {
            count: sent,
            reached,
            error: refused_by,
        } = match here {
            0 => Published::default(),
            _ => self.publisher.publish_all(&batch[..here]).await,
        };
        for published in &batch[..sent] {
            crate::metrics::metrics()
                .events_published
                .with_label_values(&[published.stream.as_str()])
                .inc();
        }
        if sent > 0 {
            // One statement settles the whole published prefix (Redis, audit and the
            // consumers have the events now): deleted, or kept as sent for the replay window.
            let mut values: Vec<sea_orm::Value> = batch[..sent].iter().map(|p| p.id.clone().into()).collect();
            let sql = if self.keep.is_zero() {
                format!("DELETE FROM outbox WHERE id IN ({})", db::placeholders(1, sent))
            } else {
                values.push(db::now_ms().into());
                format!(
                    "UPDATE outbox SET status = 'sent', sent_at = ${} WHERE id IN ({})",
                    sent + 1,
                    db::placeholders(1, sent)
                )
            };
            db::exec(conn, &sql, values).await?;
            self.record_reached(conn, &reached).await?;
        }
        // Applied here, refused by Redis: remembered, and the rows behind them applied here too.
        let refused = self.publisher.applies_here_first() && sent < here;
        if refused {
            self.mark_applied_here(conn, &batch[sent..here]).await?;
        }
        // A row that failed stays pending (an outage must never lose events) and later rows
        // wait behind it, so a stream keeps its order; the next pass retries it. Two may have
        // failed: the publication of the row at `sent`, and the application here of the row at
        // `here` (behind it, when Redis refused what was applied here).
        crate::metrics::metrics()
            .relay_up
            .with_label_values(&[self.service])
            .set(i64::from(refused_by.is_none()));
        if let (Some(err), Some(failed)) = (refused_by, batch.get(sent)) {
            Self::record_failure(conn, failed, &err).await?;
        }
        if let (Some(err), Some(failed)) = (failed_here, batch.get(here)) {
            Self::record_failure(conn, failed, &err).await?;
        }
        if refused && here == batch.len() {
            self.apply_ahead(conn).await?;
        }
        Ok(sent)
    }

    /// Remembers, for each stream, the newest position the relay's events took on it (never
    /// moving back: replicas' relays record theirs in any order).
    async fn record_reached<C: ConnectionTrait>(
        &self,
        conn: &C,
        reached: &BTreeMap<String, Position>,
    ) -> anyhow::Result<()> {
        for (stream, position) in reached {
            let (ms, seq) = position.parts();
            let key = format!("{}{stream}", self.publisher.prefix());
            db::exec(
                conn,
                "INSERT INTO outbox_reached (stream, entry_ms, entry_seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (stream) DO UPDATE SET entry_ms = excluded.entry_ms, entry_seq = excluded.entry_seq \
                 WHERE excluded.entry_ms > outbox_reached.entry_ms \
                 OR (excluded.entry_ms = outbox_reached.entry_ms AND excluded.entry_seq > outbox_reached.entry_seq)",
                vec![key.into(), (ms as i64).into(), (seq as i64).into()],
            )
            .await
            .context("recording where the relay's events reached")?;
        }
        Ok(())
    }

    /// Publishes again what a stream lost of the relay's events: Redis restarted empty or from
    /// an older snapshot, a failover without persistence, the stream deleted by hand. A
    /// stream whose newest entry comes before the newest one this outbox put there lost
    /// everything after that entry; the rows marked sent since then (less
    /// [`LOSS_MARGIN_MS`]; all those kept, if the stream is gone) are marked pending again,
    /// as `pim events replay` marks them, and published anew in order. Consumers drop what
    /// they applied before; until then the events they had not read were lost to them. Does
    /// nothing on a transport without positions (the embedded bus). Returns the rows marked.
    pub async fn republish_if_lost(&self) -> anyhow::Result<u64> {
        let reached = db::query(
            &self.db,
            "SELECT stream, entry_ms, entry_seq FROM outbox_reached",
            vec![],
        )
        .await
        .context("reading where the relay's events reached")?;
        let mut marked = 0;
        // The database first, then Redis: a position recorded meanwhile is on the stream.
        for row in reached {
            let key: String = col(&row, "stream")?;
            let Some(stream) = key.strip_prefix(self.publisher.prefix()) else {
                continue;
            };
            let (ms, seq): (i64, i64) = (col(&row, "entry_ms")?, col(&row, "entry_seq")?);
            let recorded = Position::new(ms as u64, seq as u64);
            let Some(newest) = self.publisher.position(stream).await? else {
                return Ok(marked);
            };
            if newest >= recorded {
                continue;
            }
            let since = match newest.parts() {
                (0, 0) => 0,
                (newest_ms, _) => (newest_ms as i64).saturating_sub(LOSS_MARGIN_MS),
            };
            let txn = self.db.begin().await.context("beginning the republication")?;
            let again = db::exec(
                &txn,
                "UPDATE outbox SET status = 'pending', attempts = 0, last_error = NULL \
                 WHERE status = 'sent' AND stream = $1 AND sent_at >= $2",
                vec![stream.into(), since.into()],
            )
            .await?;
            // Forgotten until the events published again reach the stream: this loss is
            // mended once, by whichever replica saw it first (another may mend it too; the
            // consumers drop what comes twice).
            db::exec(
                &txn,
                "DELETE FROM outbox_reached WHERE stream = $1 AND entry_ms = $2 AND entry_seq = $3",
                vec![key.clone().into(), ms.into(), seq.into()],
            )
            .await?;
            txn.commit().await.context("committing the republication")?;
            crate::metrics::metrics()
                .streams_republished
                .with_label_values(&[stream])
                .inc();
            tracing::error!(
                service = self.service, stream, lost_after = %newest, published_up_to = %recorded, republished = again,
                kept_hours = self.keep.as_secs() / 3600,
                "the stream lost events this service published (Redis restarted empty or from an older snapshot, or the stream was deleted); publishing again those kept"
            );
            marked += again;
        }
        if marked > 0 {
            self.outbox.wake.notify_one();
        }
        Ok(marked)
    }

    /// Deletes inbox rows older than [`INBOX_KEPT`], so the table does not grow without
    /// bound. Returns the rows deleted.
    pub async fn prune(&self) -> Result<u64, DbErr> {
        let inbox = db::exec(
            &self.db,
            "DELETE FROM inbox WHERE processed_at < $1",
            vec![(db::now_ms() - INBOX_KEPT.as_millis() as i64).into()],
        )
        .await?;
        // Published rows past the replay window.
        let sent = db::exec(
            &self.db,
            "DELETE FROM outbox WHERE status = 'sent' AND sent_at < $1",
            vec![(db::now_ms() - self.keep.as_millis() as i64).into()],
        )
        .await?;
        Ok(inbox + sent)
    }

    /// Clears the dead rows the relay's deletes leave (PostgreSQL). The outbox is a queue:
    /// every row is deleted moments after it is written, and until dead rows are vacuumed each
    /// relay pass reads past them. Autovacuum looks at a database at most once a minute (by
    /// default), by which time a busy service has left tens of thousands, so the relay does it.
    /// Without truncation: giving the empty tail pages back takes an exclusive lock, which
    /// would hold up every transaction writing an event.
    async fn vacuum(&self) {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return;
        }
        if let Err(err) = self
            .db
            .execute_unprepared("VACUUM (SKIP_LOCKED, TRUNCATE FALSE) outbox")
            .await
        {
            tracing::warn!(error = %err, "vacuuming the outbox failed");
        }
    }

    /// Runs until stopped: after each wake-up, and at least every `poll`.
    pub fn spawn(self, poll: Duration) -> RelayHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            // The backlog gauge is refreshed at most once a second (it costs a COUNT).
            let mut measured = tokio::time::Instant::now() - Duration::from_secs(2);
            let mut pruned = tokio::time::Instant::now();
            let (mut deleted, mut vacuumed) = (0, tokio::time::Instant::now());
            // Looked at first as the relay starts: Redis may have lost events while it was down.
            let mut checked: Option<tokio::time::Instant> = None;
            loop {
                if checked.is_none_or(|at| at.elapsed() >= LOSS_CHECK_EVERY) {
                    checked = Some(tokio::time::Instant::now());
                    if let Err(err) = self.republish_if_lost().await {
                        tracing::debug!(error = %format!("{err:#}"), "looking for events Redis lost failed");
                    }
                }
                if deleted >= VACUUM_AFTER && vacuumed.elapsed() >= Duration::from_secs(1) {
                    (deleted, vacuumed) = (0, tokio::time::Instant::now());
                    self.vacuum().await;
                }
                let started = tokio::time::Instant::now();
                let mut sent = 0;
                let passed = self.run_once().await;
                if passed.is_err() {
                    crate::metrics::metrics()
                        .relay_up
                        .with_label_values(&[self.service])
                        .set(0);
                }
                match passed {
                    Ok(n) => {
                        (deleted, sent) = (deleted + n as u64, n);
                        if n > 0 {
                            self.outbox.passed.notify_waiters();
                        }
                        if n as u64 == self.batch {
                            continue;
                        }
                    }
                    Err(err) => tracing::warn!(error = %format!("{err:#}"), "relay pass failed"),
                }
                if measured.elapsed() >= Duration::from_secs(1) {
                    measured = tokio::time::Instant::now();
                    if let Ok(backlog) = pending(&self.db).await {
                        crate::metrics::metrics()
                            .outbox_backlog
                            .with_label_values(&[self.service])
                            .set(backlog);
                    }
                }
                if pruned.elapsed() >= PRUNE_EVERY {
                    pruned = tokio::time::Instant::now();
                    if let Err(err) = self.prune().await {
                        tracing::warn!(error = %err, "pruning the inbox failed");
                    }
                }
                tokio::select! {
                    _ = self.outbox.wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = stopped.changed() => break,
                }
                if sent > 0 && super::linger(started, &mut stopped).await {
                    break;
                }
            }
        });
        RelayHandle { stop, task }
    }
}

/// Marks the rows published since `since_ms` (epoch milliseconds, by when they were written)
/// pending again, so the relay publishes them once more — after Redis lost events it had not
/// delivered yet. Consumers drop what they applied before (inbox, event ids). Returns how
/// many rows will go out again; only rows still in the replay window exist.
pub async fn replay<C: ConnectionTrait>(c: &C, since_ms: i64) -> Result<u64, DbErr> {
    db::exec(
        c,
        "UPDATE outbox SET status = 'pending', attempts = 0, last_error = NULL WHERE status = 'sent' AND created_at >= $1",
        vec![since_ms.into()],
    )
    .await
}

/// Pending rows of an outbox (for tests and the backlog metric).
pub async fn pending(db: &Db) -> Result<i64, DbErr> {
    let row = db::query_one(db, "SELECT COUNT(*) AS n FROM outbox WHERE status = 'pending'", vec![]).await?;
    row.map(|r| col::<i64>(&r, "n"))
        .transpose()
        .map(Option::unwrap_or_default)
}
