//! Redis Streams transport. Entries carry the protobuf envelope in field `ce` (plus `id` and
//! `type` for people reading with redis-cli). Each consuming service has one consumer group
//! per stream and one consumer per replica; an entry is acknowledged only after the
//! consumer's transaction committed; entries a dead consumer left pending are taken over
//! with XAUTOCLAIM; an entry delivered `max_deliveries` times moves to `pim.deadletter`.

use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamPendingCountReply, StreamReadOptions, StreamReadReply};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Envelope, EventKeys, Inbox, Publisher, Rejected, Rejection, streams};
use crate::events::EventType;
use pim_proto::events::v1::DeadLettered;

/// Where Redis is and how to reach it: a URL (`redis://user:password@host:port` for an ACL
/// user, `rediss://` for TLS) and, for TLS, a private CA to trust and a client certificate to
/// present (Redis requires one unless `tls-auth-clients no`).
#[derive(Clone)]
pub struct RedisTarget {
    url: String,
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTarget {
    /// `url`, with PEM material for TLS: `ca` to trust instead of the system's roots, and
    /// the client certificate and key.
    pub fn new(url: impl Into<String>, ca: Option<Vec<u8>>, client: Option<(Vec<u8>, Vec<u8>)>) -> Self {
        Self {
            url: url.into(),
            ca,
            client,
        }
    }

    fn client(&self) -> anyhow::Result<redis::Client> {
        if self.ca.is_none() && self.client.is_none() {
            return redis::Client::open(self.url.as_str()).context("parsing the Redis URL");
        }
        if !self.url.starts_with("rediss://") {
            anyhow::bail!("a Redis CA or client certificate is set, but PIM_REDIS_URL is not rediss://");
        }
        let certificates = redis::TlsCertificates {
            client_tls: self
                .client
                .clone()
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: self.ca.clone(),
        };
        redis::Client::build_with_tls(self.url.as_str(), certificates).context("configuring TLS to Redis")
    }
}

impl std::fmt::Debug for RedisTarget {
    /// The URL may hold a password: only the host part is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.url.rsplit('@').next().unwrap_or_default();
        write!(f, "RedisTarget({host})")
    }
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        Self::new(url, None, None)
    }
}

impl From<String> for RedisTarget {
    fn from(url: String) -> Self {
        Self::new(url, None, None)
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> Self {
        Self::new(url.clone(), None, None)
    }
}

impl From<&RedisTarget> for RedisTarget {
    fn from(target: &RedisTarget) -> Self {
        target.clone()
    }
}

/// Connects a managed (reconnecting) connection; `block` is the longest command it will wait for.
pub async fn connect(target: &RedisTarget, block: Duration) -> anyhow::Result<ConnectionManager> {
    let client = target.client()?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    ConnectionManager::new_with_config(client, config)
        .await
        .context("connecting to Redis")
}

/// A managed connection that connects at its first command, not now: a process starting
/// while Redis is unreachable serves all the same (its events wait in the outbox, its
/// consumers and tails retry) and reaches Redis once it is back.
fn connect_lazily(target: &RedisTarget, block: Duration) -> anyhow::Result<ConnectionManager> {
    // A command waits for a connection only briefly: the relay and the consumers retry.
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    ConnectionManager::new_lazy_with_config(target.client()?, config).context("configuring the Redis connection")
}

/// Publishes envelopes with XADD.
#[derive(Clone)]
pub struct RedisPublisher {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisPublisher {
    pub async fn connect(target: impl Into<RedisTarget>, prefix: &str) -> anyhow::Result<Self> {
        Ok(Self {
            conn: connect_lazily(&target.into(), Duration::ZERO)?,
            prefix: prefix.to_owned(),
        })
    }
}

/// A stream entry: the event id and type, the whole envelope (`ce`), and — for JSON
/// payloads such as `pim.alerts`' OCSF findings — the payload itself as `data`, so outside
/// consumers need nothing but a Redis client and a JSON parser.
fn entry_fields(envelope: &Envelope) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![
        ("id", envelope.id.clone().into_bytes()),
        ("type", envelope.r#type.clone().into_bytes()),
        ("ce", envelope.encode_to_vec()),
    ];
    if envelope.datacontenttype == "application/json" {
        fields.push(("data", envelope.data.clone()));
    }
    fields
}

#[async_trait::async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, stream: &str, envelope: &Envelope, _attempt: u32) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let key = format!("{}{stream}", self.prefix);
        let _: String = conn
            .xadd(&key, "*", &entry_fields(envelope))
            .await
            .with_context(|| format!("XADD to {key}"))?;
        Ok(())
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn position(&self, stream: &str) -> anyhow::Result<Option<crate::consistency::Position>> {
        let newest = newest_entry(&mut self.conn.clone(), &format!("{}{stream}", self.prefix)).await?;
        Ok(Some(
            newest
                .and_then(|id| crate::consistency::Position::parse(&id))
                .unwrap_or_default(),
        ))
    }

    /// One round trip for the whole batch. If it fails, none counts as published (some may
    /// be on the stream: they are published again, and consumers drop the duplicates).
    async fn publish_all(&self, batch: &[super::Pending]) -> super::Published {
        let mut pipe = redis::pipe();
        for p in batch {
            pipe.xadd(format!("{}{}", self.prefix, p.stream), "*", &entry_fields(&p.envelope));
        }
        let mut conn = self.conn.clone();
        match pipe.query_async::<Vec<String>>(&mut conn).await {
            Ok(ids) => {
                let mut reached = std::collections::BTreeMap::<String, crate::consistency::Position>::new();
                for (p, id) in batch.iter().zip(&ids) {
                    if let Some(position) = crate::consistency::Position::parse(id) {
                        let newest = reached.entry(p.stream.clone()).or_default();
                        *newest = (*newest).max(position);
                    }
                }
                super::Published {
                    count: batch.len(),
                    reached,
                    error: None,
                }
            }
            Err(err) => super::Published::stopped(0, anyhow::Error::new(err).context("XADD pipeline")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Deliveries before an entry is dead-lettered.
    pub max_deliveries: u32,
    /// Idle time after which a pending entry is taken over (and a failed one retried).
    pub claim_idle: Duration,
    /// How long one XREADGROUP waits for new entries.
    pub block: Duration,
    /// Whose signatures it accepts; an entry not signed by its stream's owner is refused.
    /// With no keys every entry is refused.
    pub keys: std::sync::Arc<EventKeys>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            claim_idle: Duration::from_secs(30),
            block: Duration::from_millis(1000),
            keys: std::sync::Arc::default(),
        }
    }
}

/// What a consumer makes of an entry: the envelope its stream's owner signed, or a refusal
/// (with the envelope it claimed to be, when it decoded).
enum Verdict {
    Accept(Envelope),
    Refuse(Option<Envelope>, Rejection),
}

/// One consumer (replica) of one consuming service.
pub struct RedisConsumer {
    conn: ConnectionManager,
    inbox: Inbox,
    prefix: String,
    name: String,
    options: ConsumerOptions,
    /// When it last looked for stale entries to take over.
    claimed_at: std::sync::Mutex<Option<Instant>>,
}

pub struct ConsumerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ConsumerHandle {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Ends the consumer at once, without acknowledging what it holds (a crash, for tests).
    pub fn abort(self) {
        self.task.abort();
    }
}

impl RedisConsumer {
    /// `name` identifies the replica within the group (e.g. host name plus a random suffix).
    pub async fn connect(
        target: impl Into<RedisTarget>,
        prefix: &str,
        inbox: Inbox,
        name: String,
        options: ConsumerOptions,
    ) -> anyhow::Result<Self> {
        let conn = connect_lazily(&target.into(), options.block)?;
        let consumer = Self {
            conn,
            inbox,
            prefix: prefix.to_owned(),
            name,
            options,
            claimed_at: std::sync::Mutex::new(None),
        };
        // Redis unreachable now: a read that finds no group makes it (see `spawn`).
        match tokio::time::timeout(Duration::from_secs(2), consumer.create_groups()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %format!("{err:#}"), consumer = %consumer.name, "consumer groups not made yet; retrying at each read");
            }
            Err(_) => {
                tracing::warn!(consumer = %consumer.name, "Redis does not answer; consumer groups are made at a later read")
            }
        }
        Ok(consumer)
    }

    fn key(&self, stream: &str) -> String {
        format!("{}{stream}", self.prefix)
    }

    fn group(&self) -> &str {
        self.inbox.consumer()
    }

    /// Creates the group on each stream (from the beginning, so nothing published before the
    /// first start is missed); an existing group is fine.
    async fn create_groups(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        for stream in self.inbox.streams() {
            let key = self.key(stream);
            let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&key, self.group(), "0").await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e).with_context(|| format!("creating consumer group on {key}")),
            }
        }
        Ok(())
    }

    /// Runs until stopped.
    pub fn spawn(self) -> ConsumerHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                if *stopped.borrow() {
                    break;
                }
                let started = tokio::time::Instant::now();
                let pass = match self.pass(&mut stopped).await {
                    Ok(None) => break,
                    Ok(Some(handled)) => Ok(handled),
                    Err(err) => Err(err),
                };
                crate::metrics::metrics()
                    .consumer_up
                    .with_label_values(&[self.group()])
                    .set(i64::from(pass.is_ok()));
                if let Ok(handled) = pass
                    && handled > 0
                    && super::linger(started, &mut stopped).await
                {
                    break;
                }
                if let Err(err) = pass {
                    // Redis came back empty (a failover without persistence, a flush): the
                    // groups are gone. Make them again from the start of each stream, so
                    // every event published since is read, and carry on without a restart.
                    if err.downcast_ref::<redis::RedisError>().and_then(|e| e.code()) == Some("NOGROUP") {
                        tracing::warn!(consumer = %self.name, group = self.group(), "consumer group missing (Redis lost its data?); creating it again");
                        match self.create_groups().await {
                            Ok(()) => continue,
                            Err(err) => {
                                tracing::warn!(error = %format!("{err:#}"), "recreating consumer groups failed")
                            }
                        }
                    }
                    tracing::warn!(consumer = %self.name, group = self.group(), error = %format!("{err:#}"), "consumer pass failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stopped.changed() => break,
                    }
                }
            }
        });
        ConsumerHandle { stop, task }
    }

    /// One pass: take over stale pending entries (when it is time to look), then read new
    /// ones. Returns how many entries were handled.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        // Held for the pass, so the pass is never told to stop.
        let (_running, mut stopped) = watch::channel(false);
        Ok(self.pass(&mut stopped).await?.unwrap_or(0))
    }

    /// A pass that `stopped` can end only while it waits for new entries (None): entries it
    /// took are applied and acknowledged before it returns, so a stop does not abandon a
    /// transaction halfway (the entries would come back, but after the claim time).
    async fn pass(&self, stopped: &mut watch::Receiver<bool>) -> anyhow::Result<Option<usize>> {
        let mut handled = 0;
        if self.claim_due() {
            for stream in self.inbox.streams() {
                self.rewind_if_past_the_end(stream).await;
                handled += self.claim_stale(stream).await?;
            }
        }
        let keys: Vec<String> = self.inbox.streams().iter().map(|s| self.key(s)).collect();
        let ids: Vec<&str> = keys.iter().map(|_| ">").collect();
        let options = StreamReadOptions::default()
            .group(self.group(), &self.name)
            .count(500)
            .block(self.options.block.as_millis() as usize);
        let mut conn = self.conn.clone();
        let reply: Option<StreamReadReply> = tokio::select! {
            r = conn.xread_options(&keys, &ids, &options) => r.context("XREADGROUP")?,
            _ = stopped.changed() => return Ok(None),
        };
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            handled += key.ids.len();
            self.process_batch(&key.key, key.ids).await?;
        }
        Ok(Some(handled))
    }

    /// Whether to look for stale entries now. An entry is stale only once idle for
    /// `claim_idle`, so looking every quarter of that is enough; looking on every pass would
    /// cost a busy consumer one XAUTOCLAIM per stream per read.
    fn claim_due(&self) -> bool {
        let mut claimed_at = self.claimed_at.lock().unwrap_or_else(|e| e.into_inner());
        let due = claimed_at.is_none_or(|at| at.elapsed() >= self.options.claim_idle / 4);
        if due {
            *claimed_at = Some(Instant::now());
        }
        due
    }

    /// Sets the group back to the start of `stream` when its position is past the stream's
    /// newest entry. Nothing written from then on would be delivered to it: whoever can write
    /// to Redis can move a group there (`XGROUP SETID … <an id far ahead>`) and blind the
    /// consumer, and events replayed from the outbox would land behind it too. Read again
    /// from the start, what was applied is skipped (the inbox remembers it).
    async fn rewind_if_past_the_end(&self, stream: &str) {
        let key = self.key(stream);
        let mut conn = self.conn.clone();
        let position = async {
            let groups: redis::streams::StreamInfoGroupsReply =
                conn.xinfo_groups(&key).await.context("XINFO GROUPS")?;
            let newest = newest_entry(&mut conn, &key).await?;
            anyhow::Ok(
                groups
                    .groups
                    .into_iter()
                    .find(|g| g.name == self.group())
                    .map(|g| (g.last_delivered_id, newest)),
            )
        };
        // A group or stream that is not there yet is made by the read that follows.
        let Ok(Some((position, newest))) = position.await else {
            return;
        };
        if entry_position(&position) <= newest.as_deref().map_or((0, 0), entry_position) {
            return;
        }
        tracing::error!(group = self.group(), stream = key, %position, ?newest, "consumer group moved past the stream's end (by hand, in Redis?): reading the stream again from its start");
        let rewound: redis::RedisResult<()> = conn.xgroup_setid(&key, self.group(), "0").await;
        match rewound {
            Ok(()) => crate::metrics::metrics()
                .groups_rewound
                .with_label_values(&[key.as_str(), self.group()])
                .inc(),
            Err(err) => {
                tracing::warn!(group = self.group(), stream = key, error = %err, "setting the consumer group back failed; trying again")
            }
        }
    }

    async fn claim_stale(&self, stream: &str) -> anyhow::Result<usize> {
        let key = self.key(stream);
        let mut conn = self.conn.clone();
        let idle = self.options.claim_idle.as_millis() as u64;
        let mut start = "0-0".to_owned();
        let mut handled = 0;
        loop {
            let reply: redis::streams::StreamAutoClaimReply = conn
                .xautoclaim_options(
                    &key,
                    self.group(),
                    &self.name,
                    idle,
                    &start,
                    StreamAutoClaimOptions::default().count(100),
                )
                .await
                .with_context(|| format!("XAUTOCLAIM on {key}"))?;
            for entry in reply.claimed {
                self.process(&key, entry).await?;
                handled += 1;
            }
            if reply.next_stream_id == "0-0" {
                return Ok(handled);
            }
            start = reply.next_stream_id;
        }
    }

    /// The base name of a stream key (without the prefix).
    fn base<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }

    /// The entry's envelope, if its stream's owner signed it for that stream. An event of a
    /// type the handler does not act on is acknowledged without being applied, so its
    /// signature is not checked (that costs more than anything else a consumer does per
    /// event); audit acts on every type, so every entry is checked by someone.
    fn accept(&self, key: &str, entry: &StreamId) -> Verdict {
        let Some(envelope) = entry
            .get::<Vec<u8>>("ce")
            .and_then(|b| Envelope::decode(b.as_slice()).ok())
        else {
            return Verdict::Refuse(None, Rejection::Undecodable);
        };
        if !self.inbox.wants(super::event_type(&envelope)) {
            return Verdict::Accept(envelope);
        }
        match self.options.keys.verify(self.base(key), &envelope) {
            Ok(()) => Verdict::Accept(envelope),
            Err(rejection) => Verdict::Refuse(Some(envelope), rejection),
        }
    }

    /// New entries are applied in one transaction and acknowledged together; if any fails,
    /// each is handled on its own (so one poison entry does not hold back the others).
    /// Entries the stream's owner did not sign are refused first, never applied.
    async fn process_batch(&self, key: &str, entries: Vec<StreamId>) -> anyhow::Result<()> {
        let mut accepted = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.accept(key, &entry) {
                Verdict::Accept(envelope) => accepted.push((entry, envelope)),
                Verdict::Refuse(envelope, rejection) => self.reject(key, &entry, envelope, rejection).await?,
            }
        }
        if accepted.len() > 1 {
            let envelopes: Vec<Envelope> = accepted.iter().map(|(_, e)| e.clone()).collect();
            match self.inbox.apply_all(&envelopes).await {
                Ok(()) => {
                    let ids: Vec<&str> = accepted.iter().map(|(e, _)| e.id.as_str()).collect();
                    let mut conn = self.conn.clone();
                    let _: i64 = conn.xack(key, self.group(), &ids).await.context("XACK")?;
                    self.applied(key, &envelopes);
                    return Ok(());
                }
                Err(err) => tracing::debug!(error = %format!("{err:#}"), "batch failed; handling entries one by one"),
            }
        }
        for (entry, envelope) in accepted {
            self.apply(key, &entry, envelope).await?;
        }
        Ok(())
    }

    async fn process(&self, key: &str, entry: StreamId) -> anyhow::Result<()> {
        match self.accept(key, &entry) {
            Verdict::Accept(envelope) => self.apply(key, &entry, envelope).await,
            Verdict::Refuse(envelope, rejection) => self.reject(key, &entry, envelope, rejection).await,
        }
    }

    async fn apply(&self, key: &str, entry: &StreamId, envelope: Envelope) -> anyhow::Result<()> {
        match self.inbox.apply(&envelope).await {
            Ok(_) => {
                let mut conn = self.conn.clone();
                let _: i64 = conn.xack(key, self.group(), &[&entry.id]).await.context("XACK")?;
                self.applied(key, std::slice::from_ref(&envelope));
            }
            Err(err) => {
                let deliveries = self.deliveries(key, &entry.id).await?;
                crate::metrics::metrics()
                    .events_retried
                    .with_label_values(&[key, self.group()])
                    .inc();
                let poison = deliveries >= i64::from(self.options.max_deliveries);
                tracing::warn!(
                    group = self.group(), stream = key, entry = %entry.id, deliveries, poison,
                    error = %format!("{err:#}"), "handling an event failed"
                );
                if poison {
                    self.dead_letter(key, &entry.id, Some(&envelope), deliveries, &err, None)
                        .await?;
                }
                // Otherwise it stays pending and is retried once it has been idle for claim_idle.
            }
        }
        Ok(())
    }

    /// An entry its stream's owner did not sign: the handler records it (audit, alerting),
    /// then it moves to the dead-letter stream without its envelope in `ce` (nothing that
    /// reads dead letters as events sees it) and is acknowledged. If recording fails the
    /// entry stays pending and is refused again later.
    async fn reject(
        &self,
        key: &str,
        entry: &StreamId,
        envelope: Option<Envelope>,
        reason: Rejection,
    ) -> anyhow::Result<()> {
        let raw = entry.get::<Vec<u8>>("ce").unwrap_or_default();
        let rejected = Rejected {
            stream: self.base(key).to_owned(),
            entry_id: entry.id.clone(),
            envelope,
            reason,
            consumer: self.group().to_owned(),
            digest: <sha2::Sha256 as sha2::Digest>::digest(&raw).into(),
        };
        crate::metrics::metrics()
            .events_rejected
            .with_label_values(&[key, rejected.reason.code()])
            .inc();
        tracing::error!(
            group = self.group(), stream = key, entry = %entry.id, reason = %rejected.reason,
            claimed_type = rejected.envelope.as_ref().map(|e| e.r#type.as_str()).unwrap_or_default(),
            "refused a stream entry its owner did not sign"
        );
        if let Err(err) = self.inbox.reject(&rejected).await {
            // Recording failed: the entry stays pending and is refused again after
            // claim_idle; after max_deliveries it is dead-lettered all the same, so a refusal
            // that cannot be recorded never holds the stream up.
            let deliveries = self.deliveries(key, &entry.id).await?;
            if deliveries < i64::from(self.options.max_deliveries) {
                tracing::warn!(group = self.group(), stream = key, entry = %entry.id, deliveries, error = %format!("{err:#}"), "recording a refused entry failed; it stays pending");
                return Ok(());
            }
            tracing::error!(group = self.group(), stream = key, entry = %entry.id, deliveries, error = %format!("{err:#}"), "recording a refused entry kept failing; dead-lettered unrecorded");
        }
        let err = anyhow::anyhow!("rejected: {}", rejected.reason);
        self.dead_letter(key, &entry.id, rejected.envelope.as_ref(), 1, &err, Some(raw))
            .await
    }

    /// Counts applied events and how old the newest was.
    fn applied(&self, key: &str, envelopes: &[Envelope]) {
        let m = crate::metrics::metrics();
        m.events_consumed
            .with_label_values(&[key, self.group()])
            .inc_by(envelopes.len() as u64);
        if let Some(newest) = envelopes
            .iter()
            .filter_map(|e| e.time.as_ref())
            .map(crate::db::from_timestamp)
            .max()
        {
            m.consumer_lag_ms
                .with_label_values(&[key, self.group()])
                .set((crate::db::now_ms() - newest).max(0));
        }
    }

    async fn deliveries(&self, key: &str, id: &str) -> anyhow::Result<i64> {
        let mut conn = self.conn.clone();
        let reply: StreamPendingCountReply = conn
            .xpending_count(key, self.group(), id, id, 1)
            .await
            .context("XPENDING")?;
        Ok(reply.ids.first().map(|p| p.times_delivered as i64).unwrap_or(1))
    }

    async fn dead_letter(
        &self,
        key: &str,
        id: &str,
        envelope: Option<&Envelope>,
        deliveries: i64,
        err: &anyhow::Error,
        refused: Option<Vec<u8>>,
    ) -> anyhow::Result<()> {
        let record = DeadLettered {
            stream: key.to_owned(),
            group: self.group().to_owned(),
            entry_id: id.to_owned(),
            event_id: envelope.map(|e| e.id.clone()).unwrap_or_default(),
            event_type: envelope.map(|e| e.r#type.clone()).unwrap_or_default(),
            deliveries,
            // The handler's error summary: handlers never put secrets in their errors.
            error: format!("{err:#}").chars().take(500).collect(),
        };
        let mut conn = self.conn.clone();
        let fields: Vec<(&str, Vec<u8>)> = vec![
            ("stream", record.stream.clone().into_bytes()),
            ("group", record.group.clone().into_bytes()),
            ("entry", record.entry_id.clone().into_bytes()),
            ("event_id", record.event_id.clone().into_bytes()),
            ("data", record.encode_to_vec()),
            match refused {
                // Kept for investigation, under a name no event reader looks at.
                Some(raw) => ("refused", raw),
                None => ("ce", envelope.map(|e| e.encode_to_vec()).unwrap_or_default()),
            },
        ];
        let dl = self.key(streams::DEADLETTER);
        // Acknowledged only once the dead-letter stream holds it: a MULTI does not undo the
        // acknowledgement when the XADD fails (a dead-letter key made something else by hand),
        // and the entry would be gone with no copy.
        let _: String = conn
            .xadd(&dl, "*", &fields)
            .await
            .context("moving an entry to the dead-letter stream")?;
        let _: i64 = conn
            .xack(key, self.group(), &[id])
            .await
            .context("acknowledging a dead-lettered entry")?;
        crate::metrics::metrics()
            .events_dead_lettered
            .with_label_values(&[key, self.group()])
            .inc();
        tracing::error!(
            group = self.group(),
            stream = key,
            entry = id,
            deliveries,
            "event dead-lettered"
        );
        Ok(())
    }
}

/// The id of the newest entry of `stream` (base name), or `0-0` when it is empty: where a
/// tail that must not miss anything after a snapshot starts.
pub async fn last_entry_id(target: impl Into<RedisTarget>, prefix: &str, stream: &str) -> anyhow::Result<String> {
    let mut conn = connect(&target.into(), Duration::ZERO).await?;
    Ok(newest_entry(&mut conn, &format!("{prefix}{stream}"))
        .await?
        .unwrap_or_else(|| "0-0".to_owned()))
}

/// Where a tail starting now begins: after the newest entry of `stream` (`0-0` for none);
/// None when Redis does not answer within two seconds (unreachable at start), for the caller
/// to choose: the stream's start where reading it again changes nothing, or what comes next.
pub async fn tail_start(target: &RedisTarget, prefix: &str, stream: &str) -> Option<String> {
    let newest = async {
        let mut conn = connect_lazily(target, Duration::ZERO)?;
        newest_entry(&mut conn, &format!("{prefix}{stream}")).await
    };
    match tokio::time::timeout(Duration::from_secs(2), newest).await {
        Ok(Ok(id)) => Some(id.unwrap_or_else(|| "0-0".to_owned())),
        Ok(Err(err)) => {
            tracing::warn!(stream, error = %format!("{err:#}"), "Redis unreachable at start");
            None
        }
        Err(_) => {
            tracing::warn!(stream, "Redis does not answer at start");
            None
        }
    }
}

/// The id of the newest entry of stream `key`, if it has any.
async fn newest_entry(conn: &mut ConnectionManager, key: &str) -> anyhow::Result<Option<String>> {
    let reply: redis::streams::StreamRangeReply = conn.xrevrange_count(key, "+", "-", 1).await.context("XREVRANGE")?;
    Ok(reply.ids.into_iter().next().map(|e| e.id))
}

/// An entry id (`1733471234567-3`) as numbers, to compare; (0, 0) for one that is not an id.
fn entry_position(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Follows every entry of `stream` after `from` (no consumer group: every replica sees all),
/// handing the id and envelope of each entry whose short type `wants` accepts to `apply`,
/// until `stop` turns true. On a stream a service owns, only entries that service signed are
/// handed on; others are logged, counted and skipped (audit records them). A stream that
/// comes back shorter than the position reached is followed again from its start.
#[allow(clippy::too_many_arguments)]
pub fn tail(
    target: RedisTarget,
    prefix: String,
    stream: &'static str,
    from: String,
    keys: std::sync::Arc<EventKeys>,
    mut stop: watch::Receiver<bool>,
    wants: impl Fn(Option<EventType>) -> bool + Send + 'static,
    apply: impl Fn(&str, &Envelope) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let key = format!("{prefix}{stream}");
        let block = Duration::from_millis(1000);
        let mut last = from;
        let mut conn = None;
        let mut failing = false;
        loop {
            if *stop.borrow() {
                return;
            }
            let c = match &mut conn {
                Some(c) => c,
                None => match connect(&target, block).await {
                    Ok(c) => conn.insert(c),
                    Err(err) => {
                        tracing::warn!(stream = %key, error = %format!("{err:#}"), "stream tail cannot connect");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                            _ = stop.changed() => return,
                        }
                    }
                },
            };
            let options = StreamReadOptions::default()
                .count(500)
                .block(block.as_millis() as usize);
            let (stream_keys, ids) = ([key.as_str()], [last.as_str()]);
            let read: redis::RedisResult<Option<StreamReadReply>> = tokio::select! {
                r = c.xread_options(&stream_keys, &ids, &options) => r,
                _ = stop.changed() => return,
            };
            match read {
                Ok(reply) if reply.as_ref().is_none_or(|r| r.keys.iter().all(|k| k.ids.is_empty())) => {
                    // Nothing new. If the stream now ends before this position (Redis came
                    // back empty, or the stream was deleted, after an entry with an id far
                    // ahead was read: one written by hand can claim any id), nothing written
                    // from now on would be read: follow it again from its start.
                    if let Ok(newest) = newest_entry(c, &key).await
                        && newest.as_deref().map_or((0, 0), entry_position) < entry_position(&last)
                    {
                        tracing::warn!(stream = %key, position = %last, newest = ?newest, "stream ends before this tail's position: reading it again from its start");
                        last = "0-0".to_owned();
                    }
                }
                Ok(reply) => {
                    for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                        let envelope = entry
                            .get::<Vec<u8>>("ce")
                            .and_then(|b| Envelope::decode(b.as_slice()).ok())
                            .filter(|e| wants(super::event_type(e)));
                        match envelope.map(|e| match super::owner(stream) {
                            Some(_) => keys.verify(stream, &e).map(|()| e),
                            None => Ok(e),
                        }) {
                            Some(Ok(envelope)) => apply(&entry.id, &envelope),
                            Some(Err(rejection)) => {
                                crate::metrics::metrics()
                                    .events_rejected
                                    .with_label_values(&[key.as_str(), rejection.code()])
                                    .inc();
                                tracing::warn!(stream = %key, entry = %entry.id, reason = %rejection, "stream tail skipped an entry its owner did not sign");
                            }
                            None => {}
                        }
                        last = entry.id;
                    }
                }
                Err(err) => {
                    // Said once while reads keep failing (the key made something else by
                    // hand fails every read), and again when they work.
                    if !failing {
                        tracing::warn!(stream = %key, error = %err, "stream tail read failed; retrying");
                        failing = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = stop.changed() => return,
                    }
                    continue;
                }
            }
            if std::mem::take(&mut failing) {
                tracing::info!(stream = %key, "stream tail reads again");
            }
        }
    })
}
