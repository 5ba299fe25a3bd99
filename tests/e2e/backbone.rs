//! The event backbone on real PostgreSQL + Redis: nothing published for a rolled-back
//! transaction; a relay killed between XADD and marking the row republishes and the consumer
//! still applies the event once; a consumer that dies before XACK has its entries claimed by
//! another and applied once; a poison entry ends in the dead-letter stream; a consumer told to
//! stop finishes and acknowledges the entries it holds first.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prost::Message;
use redis::AsyncCommands;
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use tokio::sync::Notify;

use pim_e2e::eventually;
use pim_proto::events::v1::{DeadLettered, UserCreated};
use pim_runtime::db::{self, Db, col};
use pim_runtime::events::{
    ConsumerOptions, Envelope, EventHandler, EventKeys, Inbox, Outbox, Publisher, RedisConsumer, RedisPublisher, Relay,
    SqlMigration, backbone_migrations, envelope, pending, replay, short_type, streams,
};
use pim_runtime::events::{EventType, Source};
use pim_runtime::testing::{TestDatabase, redis_url, unique};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = backbone_migrations();
        migrations.push(SqlMigration::boxed("m0001_applied", |_| {
            "CREATE TABLE applied (event_id TEXT NOT NULL)".to_owned()
        }));
        migrations
    }
}

/// Records each event it applies (no uniqueness here: duplicates would show); fails on `Poison`
/// and panics on `Panicking` (a handler's bug).
struct Recorder;

#[async_trait::async_trait]
impl EventHandler for Recorder {
    fn consumer(&self) -> &str {
        "recorder"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![streams::IDENTITY]
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        match short_type(envelope) {
            "Poison" => anyhow::bail!("cannot apply a poison event"),
            "Panicking" => panic!("a bug in the handler"),
            _ => {}
        }
        db::exec(
            txn,
            "INSERT INTO applied (event_id) VALUES ($1)",
            vec![envelope.id.clone().into()],
        )
        .await?;
        Ok(())
    }
}

/// Records like [`Recorder`], but only once the test releases it; says when it has begun.
struct Gated {
    entered: Arc<Notify>,
    release: Arc<Notify>,
    /// Told when the handler is dropped before it was released: its entry was abandoned.
    abandoned: Arc<Notify>,
}

/// Notifies when dropped, unless disarmed first.
struct OnDrop(Option<Arc<Notify>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.notify_one();
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for Gated {
    fn consumer(&self) -> &str {
        "recorder"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![streams::IDENTITY]
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        self.entered.notify_one();
        let mut guard = OnDrop(Some(self.abandoned.clone()));
        self.release.notified().await;
        guard.0 = None;
        Recorder.handle(txn, envelope).await
    }
}

struct Fixture {
    db: Db,
    /// PostgreSQL's, or None for a SQLite file in `sqlite_dir`.
    database: Option<TestDatabase>,
    sqlite_dir: Option<std::path::PathBuf>,
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
    outbox: Outbox,
}

impl Fixture {
    async fn new() -> anyhow::Result<Self> {
        let database = TestDatabase::create("backbone").await?;
        let db = db::connect(&database.url).await?;
        Self::on(db, Some(database), None).await
    }

    /// The same on a SQLite file (the all-in-one's database).
    async fn on_sqlite() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("backbone"));
        std::fs::create_dir_all(&dir)?;
        let db = db::connect(&db::sqlite_url(&dir.join("backbone.db"))).await?;
        Self::on(db, None, Some(dir)).await
    }

    async fn on(
        db: Db,
        database: Option<TestDatabase>,
        sqlite_dir: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Self> {
        Migrator::up(&db, None).await?;
        let redis = redis::Client::open(redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        Ok(Self {
            db,
            database,
            sqlite_dir,
            redis,
            prefix: format!("{}:", unique("bb")),
            outbox: Outbox::default(),
        })
    }

    fn key(&self, stream: &str) -> String {
        format!("{}{stream}", self.prefix)
    }

    async fn publisher(&self) -> anyhow::Result<Arc<RedisPublisher>> {
        Ok(Arc::new(RedisPublisher::connect(&redis_url(), &self.prefix).await?))
    }

    /// A relay of the fixture's outbox to Redis, signing as identity does.
    async fn relay(&self) -> anyhow::Result<Relay> {
        Ok(Relay::new(self.db.clone(), self.outbox.clone(), self.publisher().await?).signed_with(keys()))
    }

    async fn consumer(&self, options: ConsumerOptions) -> anyhow::Result<RedisConsumer> {
        let inbox = Inbox::new(self.db.clone(), Arc::new(Recorder));
        RedisConsumer::connect(&redis_url(), &self.prefix, inbox, unique("replica"), options).await
    }

    /// Commits one event to the outbox.
    async fn emit(&self, event_type: &str) -> anyhow::Result<Envelope> {
        let mut env = envelope(
            Source::Identity,
            EventType::UserCreated,
            "subject",
            &UserCreated::default(),
        );
        // Any type, the made-up `Poison` included: the recorder fails on that one.
        env.r#type = format!("pim.identity.v1.{event_type}");
        let txn = self.db.begin().await?;
        self.outbox.enqueue(&txn, streams::IDENTITY, &env).await?;
        txn.commit().await?;
        Ok(env)
    }

    async fn stream_len(&mut self, stream: &str) -> anyhow::Result<usize> {
        Ok(self.redis.xlen(self.key(stream)).await?)
    }

    async fn applied(&self, event_id: &str) -> anyhow::Result<i64> {
        applied(&self.db, event_id).await
    }

    /// Events the recorder applied, in all.
    async fn applied_in_all(&self) -> anyhow::Result<i64> {
        count(&self.db, "SELECT COUNT(*) AS n FROM applied", vec![]).await
    }

    /// A relay of the fixture's outbox that has `bus` apply each event before Redis gets it.
    async fn in_process_first(&self, bus: pim_runtime::events::EmbeddedBus) -> anyhow::Result<Relay> {
        let publisher = Arc::new(pim_runtime::events::InProcessFirst::new(bus, self.publisher().await?));
        Ok(Relay::new(self.db.clone(), self.outbox.clone(), publisher).signed_with(keys()))
    }

    async fn pending_entries(&mut self) -> anyhow::Result<usize> {
        let reply: redis::streams::StreamPendingReply =
            self.redis.xpending(self.key(streams::IDENTITY), "recorder").await?;
        Ok(reply.count())
    }

    async fn cleanup(mut self) -> anyhow::Result<()> {
        for stream in [streams::IDENTITY, streams::DEADLETTER] {
            let _: () = self.redis.del(self.key(stream)).await?;
        }
        self.db.close().await.ok();
        if let Some(dir) = &self.sqlite_dir {
            std::fs::remove_dir_all(dir).ok();
        }
        match self.database {
            Some(database) => database.drop_database().await,
            None => Ok(()),
        }
    }
}

/// What a `SELECT COUNT(*) AS n …` counts.
async fn count(db: &Db, sql: &str, values: Vec<sea_orm::Value>) -> anyhow::Result<i64> {
    let row = db::query_one(db, sql, values).await?;
    Ok(row.map(|r| col::<i64>(&r, "n")).transpose()?.unwrap_or_default())
}

/// How often the recorder applied the event `event_id`.
async fn applied(db: &Db, event_id: &str) -> anyhow::Result<i64> {
    count(
        db,
        "SELECT COUNT(*) AS n FROM applied WHERE event_id = $1",
        vec![event_id.into()],
    )
    .await
}

/// The test deployment's event keys (every service's).
fn keys() -> Arc<EventKeys> {
    Arc::new(EventKeys::parse(Some(&pim_runtime::testing::event_signing_keys()), None).expect("test keys parse"))
}

fn fast(max_deliveries: u32) -> ConsumerOptions {
    ConsumerOptions {
        max_deliveries,
        claim_idle: Duration::from_millis(100),
        block: Duration::from_millis(100),
        keys: keys(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_publishes_nothing() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let relay = f.relay().await?;

    let rolled_back = envelope(Source::Identity, EventType::UserCreated, "s", &UserCreated::default());
    let txn = f.db.begin().await?;
    f.outbox.enqueue(&txn, streams::IDENTITY, &rolled_back).await?;
    txn.rollback().await?;
    assert_eq!(relay.run_once().await?, 0);
    assert_eq!(f.stream_len(streams::IDENTITY).await?, 0);

    // The same path with a commit does publish, so the assertion above can fail.
    f.emit("UserCreated").await?;
    assert_eq!(relay.run_once().await?, 1);
    assert_eq!(f.stream_len(streams::IDENTITY).await?, 1);
    assert_eq!(pending(&f.db).await?, 0);
    f.cleanup().await
}

/// Publishes with XADD, then hangs forever: the relay is killed at that point.
struct HangsAfterPublish {
    inner: Arc<RedisPublisher>,
    published: Arc<Notify>,
}

#[async_trait::async_trait]
impl Publisher for HangsAfterPublish {
    async fn publish(&self, stream: &str, envelope: &Envelope, attempt: u32) -> anyhow::Result<()> {
        self.inner.publish(stream, envelope, attempt).await?;
        self.published.notify_one();
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_after_xadd_republishes_and_the_consumer_applies_once() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let event = f.emit("UserCreated").await?;

    let published = Arc::new(Notify::new());
    let crashing = Relay::new(
        f.db.clone(),
        f.outbox.clone(),
        Arc::new(HangsAfterPublish {
            inner: f.publisher().await?,
            published: published.clone(),
        }),
    )
    .signed_with(keys());
    let task = tokio::spawn(async move { crashing.run_once().await });
    tokio::time::timeout(Duration::from_secs(10), published.notified()).await?;
    task.abort();
    let ended = task.await.expect_err("the relay hangs until aborted");
    assert!(ended.is_cancelled(), "aborted, not panicked: {ended:?}");
    // Published, but the row was never marked: it is still pending.
    assert_eq!(f.stream_len(streams::IDENTITY).await?, 1);
    assert_eq!(pending(&f.db).await?, 1);

    let relay = f.relay().await?;
    // The aborted relay's transaction (and its row lock) goes away as its connection rolls
    // back, which may take a moment: until then SKIP LOCKED passes the row by.
    eventually(Duration::from_secs(10), "the row to be republished", || async {
        Ok((relay.run_once().await? == 1).then_some(()))
    })
    .await?;
    assert_eq!(
        f.stream_len(streams::IDENTITY).await?,
        2,
        "the event is on the stream twice"
    );
    assert_eq!(pending(&f.db).await?, 0);

    let consumer = f.consumer(fast(5)).await?;
    let mut handled = 0;
    while handled < 2 {
        handled += consumer.run_once().await?;
    }
    assert_eq!(f.applied(&event.id).await?, 1, "applied once despite two deliveries");
    assert_eq!(f.pending_entries().await?, 0, "both entries acknowledged");
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_dead_consumer_are_claimed_and_applied_once() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let relay = f.relay().await?;
    let unapplied = f.emit("UserCreated").await?;
    let applied_not_acked = f.emit("UserCreated").await?;
    assert_eq!(relay.run_once().await?, 2);

    // Replica A creates the group, reads both entries, applies the second, and dies before any XACK.
    let dead = f.consumer(fast(5)).await?;
    drop(dead);
    let options = redis::streams::StreamReadOptions::default()
        .group("recorder", "replica-a")
        .count(10);
    let read: redis::streams::StreamReadReply = f
        .redis
        .xread_options(&[f.key(streams::IDENTITY)], &[">"], &options)
        .await?;
    assert_eq!(read.keys[0].ids.len(), 2);
    let inbox = Inbox::new(f.db.clone(), Arc::new(Recorder));
    assert!(inbox.apply(&applied_not_acked).await?);
    assert_eq!(f.pending_entries().await?, 2);

    // Replica B takes over once the entries have been idle long enough.
    let b = f.consumer(fast(5)).await?;
    eventually(Duration::from_secs(10), "replica B to claim both entries", || async {
        b.run_once().await?;
        Ok((f.applied(&unapplied.id).await? == 1).then_some(()))
    })
    .await?;
    let redis = f.redis.clone();
    let key = f.key(streams::IDENTITY);
    eventually(Duration::from_secs(10), "no entry left pending", || {
        let mut redis = redis.clone();
        let key = key.clone();
        let b = &b;
        async move {
            b.run_once().await?;
            let reply: redis::streams::StreamPendingReply = redis.xpending(&key, "recorder").await?;
            Ok((reply.count() == 0).then_some(()))
        }
    })
    .await?;
    assert_eq!(f.applied(&unapplied.id).await?, 1);
    assert_eq!(
        f.applied(&applied_not_acked.id).await?,
        1,
        "the inbox kept the second from being applied twice"
    );
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_consumer_finishes_the_entries_it_holds() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let relay = f.relay().await?;
    let event = f.emit("UserCreated").await?;
    assert_eq!(relay.run_once().await?, 1);

    let (entered, release, abandoned) = (
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    );
    let handler = Gated {
        entered: entered.clone(),
        release: release.clone(),
        abandoned: abandoned.clone(),
    };
    // Production's claim time: nothing comes back by being claimed while the test runs.
    let options = ConsumerOptions {
        claim_idle: Duration::from_secs(30),
        ..fast(5)
    };
    let block = options.block;
    let inbox = Inbox::new(f.db.clone(), Arc::new(handler));
    let consumer = RedisConsumer::connect(&redis_url(), &f.prefix, inbox, unique("replica"), options).await?;
    let running = consumer.spawn();
    tokio::time::timeout(Duration::from_secs(10), entered.notified()).await?;

    // Told to stop while the handler is in the middle of the entry. A consumer that abandons
    // it drops the handler (its guard says so at once) and ends; one that finishes it waits
    // for the release. Within twice its own read block time it has seen the stop.
    let mut stopping = tokio::spawn(running.stop());
    tokio::select! {
        _ = abandoned.notified() => anyhow::bail!("a stop abandoned the entry in hand (its transaction rolled back halfway)"),
        _ = &mut stopping => anyhow::bail!("the consumer stopped with an entry still in hand"),
        _ = tokio::time::sleep(block * 2) => {}
    }
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), stopping).await??;
    assert_eq!(f.applied(&event.id).await?, 1, "applied before the consumer stopped");
    assert_eq!(f.pending_entries().await?, 0, "and acknowledged");
    f.cleanup().await
}

/// An event older than the inbox remembers (a replay the inbox could no longer recognise) is
/// acknowledged without being applied, even when validly signed; a fresh one is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_older_than_the_inbox_window_is_not_applied() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let mut old = envelope(
        Source::Identity,
        EventType::UserCreated,
        "subject",
        &UserCreated::default(),
    );
    old.time = Some(db::to_timestamp(
        db::now_ms() - pim_runtime::events::INBOX_KEPT.as_millis() as i64 - 60_000,
    ));
    let txn = f.db.begin().await?;
    f.outbox.enqueue(&txn, streams::IDENTITY, &old).await?;
    txn.commit().await?;
    let fresh = f.emit("UserCreated").await?;
    assert_eq!(f.relay().await?.run_once().await?, 2);
    let consumer = f.consumer(fast(5)).await?;
    let mut handled = 0;
    while handled < 2 {
        handled += consumer.run_once().await?;
    }
    assert_eq!(f.applied(&fresh.id).await?, 1);
    assert_eq!(f.applied(&old.id).await?, 0, "too old to tell from a replay");
    f.cleanup().await
}

/// Redis loses events before anyone read them (restarted empty): the producer still has them
/// for the replay window, `replay` publishes them again, the consumer applies each once
/// however often they come, and the window's end prunes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_redis_lost_are_replayed_from_the_outbox_and_applied_once() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let relay = f.relay().await?.keeping(Duration::from_secs(3600));
    let started = db::now_ms();
    let mut emitted = Vec::new();
    for _ in 0..3 {
        emitted.push(f.emit("UserCreated").await?.id);
    }
    assert_eq!(relay.run_once().await?, 3);
    assert_eq!(pending(&f.db).await?, 0, "published");
    let kept = |f: &Fixture| {
        let db = f.db.clone();
        async move {
            let row = db::query_one(&db, "SELECT COUNT(*) AS n FROM outbox WHERE status = 'sent'", vec![]).await?;
            anyhow::Ok(row.map(|r| col::<i64>(&r, "n")).transpose()?.unwrap_or_default())
        }
    };
    assert_eq!(kept(&f).await?, 3, "kept for the replay window");

    // Redis forgets the stream before any consumer read it.
    let _: () = f.redis.del(f.key(streams::IDENTITY)).await?;
    let consumer = f.consumer(fast(5)).await?;
    assert_eq!(consumer.run_once().await?, 0, "nothing left to read");

    // Replayed: published again and applied, each once, also when replayed twice.
    assert_eq!(replay(&f.db, started).await?, 3);
    assert_eq!(relay.run_once().await?, 3);
    assert_eq!(replay(&f.db, started).await?, 3);
    assert_eq!(relay.run_once().await?, 3);
    let mut handled = 0;
    while handled < 6 {
        handled += consumer.run_once().await?;
    }
    for id in &emitted {
        assert_eq!(f.applied(id).await?, 1, "{id} applied once");
    }
    // Events written before `since` are not replayed.
    assert_eq!(replay(&f.db, db::now_ms() + 1).await?, 0);

    // Past the window, the kept rows go.
    db::exec(&f.db, "UPDATE outbox SET sent_at = sent_at - 7200000", vec![]).await?;
    relay.prune().await?;
    assert_eq!(kept(&f).await?, 0);
    f.cleanup().await
}

/// Redis that loses what it held (restarted from an older snapshot, or empty, or the stream
/// deleted) is noticed by the relay itself: the events the stream lost are published again
/// from the outbox, without an operator's replay, and each is applied once. What the stream
/// kept stays noticed as kept: nothing is published again while nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_redis_lost_are_published_again_by_the_relay_itself() -> anyhow::Result<()> {
    republished_by_the_relay(Fixture::on_sqlite().await?)
        .await
        .context("on SQLite")?;
    republished_by_the_relay(Fixture::new().await?)
        .await
        .context("on PostgreSQL")
}

async fn republished_by_the_relay(mut f: Fixture) -> anyhow::Result<()> {
    let relay = f.relay().await?.keeping(Duration::from_secs(3600));
    let mut emitted = Vec::new();
    for _ in 0..3 {
        emitted.push(f.emit("UserCreated").await?.id);
    }
    assert_eq!(relay.run_once().await?, 3);
    assert_eq!(relay.republish_if_lost().await?, 0, "nothing lost");
    let consumer = f.consumer(fast(5)).await?;
    each_applied_once(&f, &consumer, &emitted).await?;

    // Redis comes back from a snapshot older than the last two entries.
    let entries: redis::streams::StreamRangeReply = f.redis.xrange_all(f.key(streams::IDENTITY)).await?;
    for entry in &entries.ids[1..] {
        let _: i64 = f.redis.xdel(f.key(streams::IDENTITY), &[&entry.id]).await?;
    }
    emitted.push(f.emit("UserCreated").await?.id);
    assert!(
        relay.republish_if_lost().await? >= 2,
        "the lost entries are pending again"
    );
    assert_eq!(relay.republish_if_lost().await?, 0, "a loss is mended once");
    while relay.run_once().await? > 0 {}
    assert_eq!(relay.republish_if_lost().await?, 0, "nothing lost since");
    each_applied_once(&f, &consumer, &emitted).await?;

    // Redis comes back empty: the stream (and its groups) are gone.
    let _: () = f.redis.del(f.key(streams::IDENTITY)).await?;
    assert_eq!(relay.republish_if_lost().await?, 4, "all kept is published again");
    while relay.run_once().await? > 0 {}
    assert_eq!(f.stream_len(streams::IDENTITY).await?, 4);
    let consumer = f.consumer(fast(5)).await?;
    each_applied_once(&f, &consumer, &emitted).await?;
    f.cleanup().await
}

/// Waits until `consumer` applied each of `emitted` once, none twice.
async fn each_applied_once(f: &Fixture, consumer: &RedisConsumer, emitted: &[String]) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), "every event applied", || async {
        consumer.run_once().await?;
        let mut counts = Vec::new();
        for id in emitted {
            counts.push(f.applied(id).await?);
        }
        anyhow::ensure!(counts.iter().all(|&n| n <= 1), "applied more than once: {counts:?}");
        Ok(counts.iter().all(|&n| n == 1).then_some(()))
    })
    .await
}

/// Whoever can write to Redis can move a consumer group past its stream's end (`XGROUP SETID`
/// to an id far ahead): nothing written later would be delivered to it, and events replayed
/// from the outbox would land behind it too. The consumer finds its group past the end, sets
/// it back to the start, and every event is applied, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_moved_past_its_streams_end_reads_it_again_from_the_start() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let relay = f.relay().await?;
    let consumer = f.consumer(fast(5)).await?;
    let before = f.emit("UserCreated").await?.id;
    relay.run_once().await?;
    eventually(Duration::from_secs(10), "the first event applied", || async {
        consumer.run_once().await?;
        Ok((f.applied(&before).await? == 1).then_some(()))
    })
    .await?;
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(f.key(streams::IDENTITY))
        .arg("recorder")
        .arg("99999999999999-0")
        .query_async(&mut f.redis)
        .await?;
    let after = f.emit("UserCreated").await?.id;
    relay.run_once().await?;
    eventually(
        Duration::from_secs(10),
        "the event written after the move applied",
        || async {
            consumer.run_once().await?;
            Ok((f.applied(&after).await? == 1).then_some(()))
        },
    )
    .await?;
    assert_eq!(f.applied(&before).await?, 1, "read again, applied once");
    assert!(
        pim_runtime::metrics::render().contains("pim_consumer_groups_rewound_total"),
        "the operator sees it"
    );
    f.cleanup().await
}

/// Whoever can write to Redis can give an entry an id far ahead of the clock. A stream tail
/// (the access index's, the revocations', the access cache's) that read past one still
/// follows the stream when Redis loses it: a stream that comes back shorter than the tail's
/// position is read again from its start, instead of every later entry passing unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_past_an_id_far_ahead_follows_the_stream_after_redis_loses_it() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let relay = f.relay().await?;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let tail = pim_runtime::events::tail(
        redis_url().into(),
        f.prefix.clone(),
        streams::IDENTITY,
        "0-0".into(),
        keys(),
        stop,
        |_| true,
        move |_, e| {
            let _ = seen_tx.send(e.id.clone());
        },
    );
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .ok()
            .flatten()
    };
    let first = f.emit("UserCreated").await?.id;
    relay.run_once().await?;
    assert_eq!(next().await.as_ref(), Some(&first));
    let _: String = f
        .redis
        .clone()
        .xadd(f.key(streams::IDENTITY), "9999999999999-0", &[("ce", "made up")])
        .await?;
    // Genuine entries after it take ids past it; the tail reads them, so it is past it too.
    let second = f.emit("UserCreated").await?.id;
    relay.run_once().await?;
    assert_eq!(next().await.as_ref(), Some(&second));

    // Redis loses the stream; what is written from now on takes ids of today again.
    let _: () = f.redis.clone().del(f.key(streams::IDENTITY)).await?;
    let third = f.emit("UserCreated").await?.id;
    relay.run_once().await?;
    assert_eq!(next().await.as_ref(), Some(&third), "read after Redis came back");
    stop_tx.send(true)?;
    tail.await?;
    f.cleanup().await
}

/// A process that starts while Redis is unreachable serves all the same: its publisher and
/// consumers connect at their first command, and a tail starts from the stream's start. Once
/// Redis is up (a real `redis-server`, started late), what was written meanwhile is published,
/// consumed once and followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_while_redis_is_down_catches_up_once_it_is_up() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("redis://127.0.0.1:{port}");
    let f = Fixture::new().await?;
    let publisher = Arc::new(RedisPublisher::connect(&url, &f.prefix).await?);
    let relay = Relay::new(f.db.clone(), f.outbox.clone(), publisher).signed_with(keys());
    let inbox = Inbox::new(f.db.clone(), Arc::new(Recorder));
    let consumer = RedisConsumer::connect(&url, &f.prefix, inbox, unique("replica"), fast(5))
        .await?
        .spawn();
    let start = pim_runtime::events::tail_start(&url.as_str().into(), &f.prefix, streams::IDENTITY).await;
    assert_eq!(start, None, "no position to take");
    let start = "0-0".to_owned();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let tail = pim_runtime::events::tail(
        url.as_str().into(),
        f.prefix.clone(),
        streams::IDENTITY,
        start,
        keys(),
        stop,
        |_| true,
        move |_, e| {
            let _ = seen_tx.send(e.id.clone());
        },
    );
    let emitted = f.emit("UserCreated").await?.id;
    assert_eq!(relay.run_once().await.unwrap_or(0), 0, "nothing to publish to yet");
    assert_eq!(pending(&f.db).await?, 1, "the event waits in the outbox");

    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let caught_up = async {
        eventually(Duration::from_secs(15), "the relay to publish", || async {
            Ok(relay.run_once().await.ok().filter(|n| *n == 1))
        })
        .await?;
        eventually(Duration::from_secs(10), "the consumer to apply it", || async {
            Ok((f.applied(&emitted).await? == 1).then_some(()))
        })
        .await?;
        let followed = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .ok()
            .flatten();
        assert_eq!(followed, Some(emitted.clone()), "the tail follows it");
        anyhow::Ok(())
    }
    .await;
    redis.kill()?;
    redis.wait()?;
    caught_up?;
    consumer.stop().await;
    stop_tx.send(true)?;
    tail.await?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_ends_in_the_dead_letter_stream() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let relay = f.relay().await?;
    let poison = f.emit("Poison").await?;
    // A handler that panics on an entry fails on it, as one that says so does.
    let panicking = f.emit("Panicking").await?;
    let fine = f.emit("UserCreated").await?;
    assert_eq!(relay.run_once().await?, 3);

    let consumer = f.consumer(fast(3)).await?;
    let mut redis = f.redis.clone();
    let dead_key = f.key(streams::DEADLETTER);
    // The dead-letter key made something other than a stream (by hand): the poison entry
    // cannot move there, and stays pending rather than acknowledged with no copy kept.
    let _: () = redis.set(&dead_key, "not a stream").await?;
    eventually(
        Duration::from_secs(15),
        "a move to the dead-letter key to fail",
        || async {
            Ok(consumer
                .run_once()
                .await
                .err()
                .filter(|e| format!("{e:#}").contains("dead-letter")))
        },
    )
    .await?;
    assert!(f.pending_entries().await? >= 1, "the poison entry is still pending");
    let _: () = redis.del(&dead_key).await?;
    eventually(Duration::from_secs(15), "the poison entry to be dead-lettered", || {
        let mut redis = redis.clone();
        let dead_key = dead_key.clone();
        let consumer = &consumer;
        async move {
            consumer.run_once().await?;
            let n: usize = redis.xlen(&dead_key).await?;
            Ok((n == 2).then_some(()))
        }
    })
    .await?;
    let entries: redis::streams::StreamRangeReply = redis.xrange_all(&dead_key).await?;
    for (entry, event) in entries.ids.iter().zip([&poison, &panicking]) {
        assert_eq!(entry.get::<String>("event_id").as_deref(), Some(event.id.as_str()));
        let record = DeadLettered::decode(entry.get::<Vec<u8>>("data").unwrap_or_default().as_slice())?;
        // Three, and one more for a move that failed while the key was not a stream.
        assert!((3..=4).contains(&record.deliveries), "{record:?}");
        assert_eq!(record.group, "recorder");
        assert_eq!(f.applied(&event.id).await?, 0);
    }
    assert_eq!(
        f.applied(&fine.id).await?,
        1,
        "the stream moved on past the poison entry"
    );
    assert_eq!(f.pending_entries().await?, 0);
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_relaying_one_outbox_publish_each_event_once() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let mut emitted = Vec::new();
    for _ in 0..300 {
        emitted.push(f.emit("UserCreated").await?.id);
    }
    let (a, b) = (f.relay().await?, f.relay().await?);
    let drain = |relay: Relay| async move {
        let mut sent = 0;
        loop {
            let n = relay.run_once().await?;
            if n == 0 {
                return anyhow::Ok(sent);
            }
            sent += n;
        }
    };
    let (sent_a, sent_b) = tokio::try_join!(drain(a), drain(b))?;
    assert_eq!(sent_a + sent_b, 300, "every row published by exactly one replica");
    assert_eq!(f.stream_len(streams::IDENTITY).await?, 300);
    let entries: redis::streams::StreamRangeReply = f.redis.xrange_all(f.key(streams::IDENTITY)).await?;
    let mut ids: Vec<String> = entries.ids.iter().filter_map(|e| e.get::<String>("id")).collect();
    ids.sort();
    emitted.sort();
    assert_eq!(ids, emitted);
    let left = db::query_one(&f.db, "SELECT COUNT(*) AS n FROM outbox", vec![]).await?;
    assert_eq!(
        left.map(|r| col::<i64>(&r, "n")).transpose()?,
        Some(0),
        "published rows are deleted"
    );
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_prunes_inbox_rows_past_the_redelivery_window() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let now = db::now_ms();
    let old = now - pim_runtime::events::INBOX_KEPT.as_millis() as i64 - 1;
    for (id, at) in [("old", old), ("recent", now - 1000)] {
        db::exec(
            &f.db,
            "INSERT INTO inbox (consumer, event_id, processed_at) VALUES ('recorder', $1, $2)",
            vec![id.into(), at.into()],
        )
        .await?;
    }
    let relay = f.relay().await?;
    assert_eq!(relay.prune().await?, 1);
    let kept = db::query(&f.db, "SELECT event_id FROM inbox", vec![]).await?;
    let kept: Vec<String> = kept.iter().map(|r| col(r, "event_id")).collect::<Result<_, _>>()?;
    assert_eq!(kept, ["recent"]);
    f.cleanup().await
}

/// The all-in-one's delivery: events left in a SQLite outbox by a process that stopped are
/// delivered by the next one, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_delivery_survives_a_restart() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("embedded"));
    std::fs::create_dir_all(&dir)?;
    let url = db::sqlite_url(&dir.join("svc.db"));
    let outbox = Outbox::default();
    let event = {
        // First run: the change commits, then the process stops before its relay ran.
        let db = db::connect(&url).await?;
        Migrator::up(&db, None).await?;
        let env = envelope(Source::Identity, EventType::UserCreated, "s", &UserCreated::default());
        let txn = db.begin().await?;
        outbox.enqueue(&txn, streams::IDENTITY, &env).await?;
        txn.commit().await?;
        db.close().await?;
        env
    };
    // Second run: a new bus and relay deliver it.
    let db = db::connect(&url).await?;
    let bus = pim_runtime::events::EmbeddedBus::new(5);
    bus.subscribe(Inbox::new(db.clone(), Arc::new(Recorder)));
    let relay = Relay::new(db.clone(), outbox, Arc::new(bus));
    assert_eq!(relay.run_once().await?, 1);
    assert_eq!(relay.run_once().await?, 0, "sent once");
    assert_eq!(applied(&db, &event.id).await?, 1);
    db.close().await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// With Redis, what ends access is applied in the process before it is published: while Redis
/// refuses the stream, the events are applied here all the same, the backlog behind the refused
/// one too (more than a relay batch), each once however often the relay retries, and a write
/// waiting for its events answers without waiting for Redis; once published, the consumer
/// following Redis finds them applied; an event whose delivery here fails holds back the
/// events after it, here and on Redis, so none overtakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_delivery_comes_first_keeps_order_and_applies_once() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let bus = pim_runtime::events::EmbeddedBus::new(5);
    bus.subscribe(Inbox::new(f.db.clone(), Arc::new(Recorder)));
    // In-memory listeners (the cache, revocations) hear each event once.
    let heard = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    bus.listen(streams::IDENTITY, {
        let heard = heard.clone();
        Arc::new(move |_| {
            heard.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    });
    let relay = f.in_process_first(bus).await?;

    // Redis refuses the stream: the key holds a string.
    let key = f.key(streams::IDENTITY);
    let _: () = f.redis.set(&key, "refused").await?;
    let first = f.emit("UserCreated").await?;
    for _ in 0..150 {
        f.emit("UserCreated").await?;
    }
    for _ in 0..3 {
        assert_eq!(relay.run_once().await?, 0, "Redis refuses them");
    }
    assert_eq!(f.applied(&first.id).await?, 1, "applied here, once");
    assert_eq!(
        f.applied_in_all().await?,
        151,
        "the backlog behind it applied here too, each once"
    );
    assert_eq!(pending(&f.db).await?, 151, "still to be published");
    assert_eq!(
        heard.load(std::sync::atomic::Ordering::SeqCst),
        151,
        "each heard once, however often the relay retried"
    );
    // A write waiting for its events learns they are applied here, and waits for no Redis
    // (its deadline is an hour away).
    let waiting = f
        .outbox
        .settled(&f.db, db::now_ms(), streams::IDENTITY, Duration::from_secs(3600));
    let token = tokio::time::timeout(Duration::from_secs(30), waiting).await?;
    assert!(token.is_none(), "not published: no position to wait for");

    // Redis takes it; the consumer following Redis finds it applied already.
    let _: () = f.redis.del(&key).await?;
    let consumer = f.consumer(fast(5)).await?;
    eventually(Duration::from_secs(10), "the backlog to be published", || async {
        relay.run_once().await?;
        Ok((pending(&f.db).await? == 0).then_some(()))
    })
    .await?;
    assert_eq!(f.stream_len(streams::IDENTITY).await?, 151);
    let read = std::sync::atomic::AtomicUsize::new(0);
    eventually(Duration::from_secs(10), "the consumer to read every entry", || async {
        let n = consumer.run_once().await?;
        let total = read.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        Ok((total >= 151).then_some(()))
    })
    .await?;
    assert_eq!(f.pending_entries().await?, 0, "acknowledged");
    assert_eq!(f.applied_in_all().await?, 151, "none applied again from Redis");

    // An event that fails here holds back the one after it.
    f.emit("Poison").await?;
    let after = f.emit("UserCreated").await?;
    assert_eq!(relay.run_once().await?, 0);
    assert_eq!(
        f.stream_len(streams::IDENTITY).await?,
        151,
        "nothing overtakes the failed event"
    );
    assert_eq!(f.applied(&after.id).await?, 0, "not even here");
    f.cleanup().await
}

/// Fails the first event it is given, then records like [`Recorder`].
struct FailsOnce(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl EventHandler for FailsOnce {
    fn consumer(&self) -> &str {
        "recorder"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![streams::IDENTITY]
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("not this time");
        }
        Recorder.handle(txn, envelope).await
    }
}

/// Embedded delivery: an event a consumer failed once is delivered again, and a write waiting
/// for it answers once it is applied (read-your-writes), not as if it had been applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_write_waits_for_a_consumer_that_failed_once() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("embedded"));
    std::fs::create_dir_all(&dir)?;
    let db = db::connect(&db::sqlite_url(&dir.join("svc.db"))).await?;
    Migrator::up(&db, None).await?;
    let outbox = Outbox::default();
    outbox.deliver_before_answering();
    let bus = pim_runtime::events::EmbeddedBus::new(5);
    bus.subscribe(Inbox::new(db.clone(), Arc::new(FailsOnce(Default::default()))));
    let relay = Relay::new(db.clone(), outbox.clone(), Arc::new(bus));
    let env = envelope(Source::Identity, EventType::UserCreated, "s", &UserCreated::default());
    let txn = db.begin().await?;
    outbox.enqueue(&txn, streams::IDENTITY, &env).await?;
    txn.commit().await?;
    assert_eq!(relay.run_once().await?, 0, "the consumer failed");
    let marked = count(
        &db,
        "SELECT COUNT(*) AS n FROM outbox WHERE applied_by IS NOT NULL",
        vec![],
    )
    .await?;
    assert_eq!(marked, 0, "nothing taken for applied");

    let running = relay.spawn(Duration::from_millis(20));
    let token = outbox
        .settled(&db, db::now_ms(), streams::IDENTITY, Duration::from_secs(10))
        .await;
    running.stop().await;
    assert!(token.is_some(), "answered once applied, with a token");
    assert_eq!(applied(&db, &env.id).await?, 1);

    // An outbox that cannot be read tells nothing: no token says the write was applied.
    db.execute_unprepared("ALTER TABLE outbox RENAME TO outbox_aside")
        .await?;
    let token = outbox
        .settled(&db, db::now_ms(), streams::IDENTITY, Duration::from_millis(200))
        .await;
    assert!(token.is_none(), "an unreadable outbox gives no token: {token:?}");
    db.execute_unprepared("ALTER TABLE outbox_aside RENAME TO outbox")
        .await?;
    db.close().await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// While Redis refuses, an event that keeps failing here, behind ones applied here (in the
/// batch Redis refused, or further back), counts its deliveries and is given up here after
/// `PIM_MAX_DELIVERIES` (5), so the events behind it are applied here all the same (the event
/// itself goes on to Redis, for its consumer there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_refuses_an_event_failing_here_is_given_up_after_its_deliveries() -> anyhow::Result<()> {
    let mut f = Fixture::new().await?;
    let bus = pim_runtime::events::EmbeddedBus::new(5);
    bus.subscribe(Inbox::new(f.db.clone(), Arc::new(Recorder)));
    let relay = f.in_process_first(bus).await?;
    let _: () = f.redis.set(f.key(streams::IDENTITY), "refused").await?;
    for ahead in [1, 101] {
        let first = f.emit("UserCreated").await?;
        for _ in 1..ahead {
            f.emit("UserCreated").await?;
        }
        f.emit("Poison").await?;
        let behind = f.emit("UserCreated").await?;
        for _ in 0..6 {
            assert_eq!(relay.run_once().await?, 0, "Redis refuses them");
        }
        assert_eq!(f.applied(&first.id).await?, 1);
        assert_eq!(
            f.applied(&behind.id).await?,
            1,
            "{ahead} ahead: the failing event no longer holds it back"
        );
    }
    f.cleanup().await
}
