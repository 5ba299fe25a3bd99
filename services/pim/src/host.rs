//! Hosting services in one process: `pim serve <service>` hosts one (PostgreSQL + Redis),
//! `pim up` hosts all five on one address (SQLite files, Redis optional). The host binds the
//! listener, connects each service's database, wires events (Redis Streams or embedded
//! delivery), authentication and authorization, and serves until told to stop.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::RoutesBuilder;

use pim_alerting::Alerting;
use pim_approval::Approval;
use pim_assignment::Assignment;
use pim_audit::Audit;
use pim_identity::Identity;
use pim_proto::common::v1::Actor;
use pim_proto::events::v1::AccessDenied;
use pim_runtime::Config;
use pim_runtime::access::{AccessCheck, CachedAccess, RemoteAccess};
use pim_runtime::auth::{AuthLayer, KeySource, Refusals, RemoteKeys, TokenVerifier};
use pim_runtime::clock::{Clock, SystemClock};
use pim_runtime::events::EventType;
use pim_runtime::events::{
    ConsumerHandle, ConsumerOptions, EmbeddedBus, InProcessFirst, Inbox, Publisher, RedisConsumer, RedisPublisher,
    Relay, RelayHandle, streams, tail, tail_start,
};
use pim_runtime::host::{Deps, Service};
use pim_runtime::{db, grpc};

/// The five services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceName {
    Identity,
    Assignment,
    Approval,
    Alerting,
    Audit,
}

impl ServiceName {
    pub const ALL: [ServiceName; 5] = [
        Self::Identity,
        Self::Assignment,
        Self::Approval,
        Self::Alerting,
        Self::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Assignment => "assignment",
            Self::Approval => "approval",
            Self::Alerting => "alerting",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceName {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == s).with_context(|| {
            format!("unknown service {s:?}: expected identity, assignment, approval, alerting or audit")
        })
    }
}

/// What to host, and where each hosted service keeps its data.
pub struct SuiteOptions {
    pub config: Config,
    /// Database URL of each hosted service.
    pub databases: BTreeMap<ServiceName, String>,
    /// Consumer tuning (tests shorten the claim idle time).
    pub consumer: ConsumerOptions,
    /// How often relays look for outbox rows nobody woke them for.
    pub relay_poll: Duration,
    /// Where services read the time (tests move a manual clock).
    pub clock: Arc<dyn Clock>,
    /// A listener bound already (tests that must know every address before starting);
    /// otherwise `config.listen_addr` is bound.
    pub listener: Option<TcpListener>,
}

impl SuiteOptions {
    pub fn new(config: Config, databases: BTreeMap<ServiceName, String>) -> Self {
        let consumer = ConsumerOptions {
            max_deliveries: config.max_deliveries,
            claim_idle: config.claim_idle,
            ..ConsumerOptions::default()
        };
        Self {
            config,
            databases,
            consumer,
            relay_poll: Duration::from_millis(250),
            listener: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// A running set of services.
pub struct Suite {
    addr: SocketAddr,
    /// Where `/metrics` is served, if anywhere.
    admin_addr: Option<SocketAddr>,
    ssf_url: Option<String>,
    url: String,
    stop: watch::Sender<bool>,
    server: JoinHandle<anyhow::Result<()>>,
    relays: Vec<RelayHandle>,
    consumers: Vec<ConsumerHandle>,
    background: Vec<JoinHandle<()>>,
    identity: Option<Identity>,
    assignment: Option<Assignment>,
    audit: Option<Audit>,
    approval: Option<Approval>,
    alerting: Option<Alerting>,
    services: Vec<Arc<dyn Service>>,
}

/// Records each PERMISSION_DENIED answer with the hosted service that gave it.
struct Denials(HashMap<&'static str, Arc<dyn Service>>);

impl Denials {
    fn of(services: &[Arc<dyn Service>]) -> Self {
        Self(
            services
                .iter()
                .flat_map(|s| s.grpc_services().iter().map(move |name| (*name, s.clone())))
                .collect(),
        )
    }
}

/// The gRPC service a method's path names (`/pim.identity.v1.AuthService/SignIn`).
pub(crate) fn service_of(method: &str) -> &str {
    method.trim_start_matches('/').split('/').next().unwrap_or_default()
}

#[async_trait::async_trait]
impl Refusals for Denials {
    fn records(&self, method: &str) -> bool {
        self.0.contains_key(service_of(method))
    }

    async fn refused(&self, caller: &Actor, method: &str, status: &tonic::Status, target: &str) {
        // The layer passes UNAUTHENTICATED only for the refused tokens worth a record, and
        // RESOURCE_EXHAUSTED only for a caller's first call refused unheard in a minute.
        if !pim_runtime::grpc::is_recorded_refusal(status)
            && !matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
            )
        {
            return;
        }
        let Some(service) = self.0.get(service_of(method)) else {
            return;
        };
        let denied = AccessDenied {
            actor: Some(caller.clone()),
            method: method.to_owned(),
            reason: status.message().chars().take(500).collect(),
            code: format!("{:?}", status.code()),
            target: target.to_owned(),
        };
        if let Err(err) = service.access_denied(&denied).await {
            tracing::warn!(error = %format!("{err:#}"), method, "recording a refused call failed");
        }
    }
}

fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "pim".to_owned());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

const HOW: &str = "make keys with `pim event-keys` (README, \"Event signing keys\")";

/// Each hosted service needs its signing key to publish on Redis (checked before anything is
/// opened or migrated).
fn check_signing_keys(keys: &pim_runtime::events::EventKeys, hosted: &[ServiceName]) -> anyhow::Result<()> {
    for service in hosted {
        if !keys.signs_for(service.as_str()) {
            bail!("PIM_EVENT_SIGNING_KEYS has no key for {service}: its events on Redis must be signed; {HOW}");
        }
    }
    Ok(())
}

/// Every stream this process reads needs a verifying key of its owner (events on Redis
/// count only when their stream's owner signed them). Said before any consumer starts.
fn check_verifying_keys(keys: &pim_runtime::events::EventKeys, services: &[Arc<dyn Service>]) -> anyhow::Result<()> {
    let read = services
        .iter()
        .flat_map(|s| s.handlers())
        .flat_map(|h| h.streams())
        .chain([streams::ASSIGNMENT, streams::IDENTITY]);
    for stream in read {
        if let Some(owner) = pim_runtime::events::owner(stream)
            && !keys.verifies(owner)
        {
            bail!("PIM_EVENT_VERIFYING_KEYS has no key for {owner}, whose stream {stream} this process reads; {HOW}");
        }
    }
    Ok(())
}

impl Suite {
    /// Binds, migrates and starts everything; returns once the server accepts connections.
    pub async fn start(mut options: SuiteOptions) -> anyhow::Result<Self> {
        let mut config = options.config.clone();
        let hosted: Vec<ServiceName> = options.databases.keys().copied().collect();
        if hosted.is_empty() {
            bail!("no service to host");
        }
        // Audit keeps sign-in source addresses only under a keyed HMAC: without a key it would
        // keep no trace of them, so it does not start (`pim up` makes its own key).
        if hosted.contains(&ServiceName::Audit) && config.audit_hmac_key.is_none() && config.secrets_key.is_none() {
            bail!(
                "audit needs PIM_AUDIT_HMAC_KEY (32 random bytes, base64: head -c32 /dev/urandom | base64; PIM_SECRETS_KEY serves where set): \
                 it keys the HMACs under which sign-in source addresses are kept"
            );
        }
        // The server's certificate and key load before anything starts: a file missing or a
        // key not matching stops the start, naming the setting, rather than leave a process
        // up with no gRPC port.
        pim_runtime::listen::tls_acceptor(&config.tls).context(grpc::TLS_FILES)?;
        // Under mutual TLS this process calls its own services, and must present a certificate.
        if config.tls.client_ca.is_some() && config.tls.client_cert.is_none() {
            bail!(
                "PIM_TLS_CLIENT_CA requires client certificates, and this process calls its own services: \
                 set PIM_TLS_CLIENT_CERT and PIM_TLS_CLIENT_KEY (a certificate that CA signed)"
            );
        }
        // The Shared Signals transmitter (audit's, over HTTP): bound first, so its issuer is
        // known when audit is built.
        let ssf_listener = match config.ssf_addr.filter(|_| hosted.contains(&ServiceName::Audit)) {
            Some(ssf_addr) => {
                let listener = TcpListener::bind(ssf_addr)
                    .await
                    .with_context(|| format!("binding {ssf_addr} (PIM_SSF_ADDR)"))?;
                let bound = listener.local_addr()?;
                if config.ssf_issuer.is_none() {
                    let host = if bound.ip().is_unspecified() {
                        SocketAddr::new([127, 0, 0, 1].into(), bound.port())
                    } else {
                        bound
                    };
                    config.ssf_issuer = Some(format!("http://{host}"));
                }
                Some(listener)
            }
            None => None,
        };
        let listener = match options.listener.take() {
            Some(listener) => listener,
            None => TcpListener::bind(config.listen_addr)
                .await
                .with_context(|| format!("binding {} (PIM_LISTEN_ADDR)", config.listen_addr))?,
        };
        let addr = listener.local_addr()?;
        // Calls to ourselves go to loopback when listening on every interface.
        let self_host = if addr.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), addr.port())
        } else {
            addr
        };
        let url = format!("{}://{}", config.scheme(), self_host);
        let peer = |name: ServiceName, configured: &Option<String>| -> anyhow::Result<String> {
            if hosted.contains(&name) {
                return Ok(url.clone());
            }
            configured.clone().with_context(|| {
                format!(
                    "PIM_{}_URL is required when {name} is not hosted in this process",
                    name.as_str().to_uppercase()
                )
            })
        };
        // A service hosted here is called at this process's own address, which trusts the
        // certificate it serves.
        let channel_to =
            |name: ServiceName, configured: &Option<String>| -> anyhow::Result<tonic::transport::Channel> {
                let url = peer(name, configured)?;
                if hosted.contains(&name) {
                    grpc::channel_to_self(&url, &config.tls)
                } else {
                    grpc::channel(&url, &config.tls)
                }
            };
        let identity_channel = channel_to(ServiceName::Identity, &config.identity_url)?;
        let assignment_channel = channel_to(ServiceName::Assignment, &config.assignment_url)?;
        // Identity asks approval who is named to decide privileged access (credential protection).
        let approval_channel = if hosted.contains(&ServiceName::Identity) {
            Some(channel_to(ServiceName::Approval, &config.approval_url)?)
        } else {
            None
        };
        let cache = Arc::new(CachedAccess::new(
            Arc::new(RemoteAccess::new(assignment_channel.clone())),
            config.access_cache_ttl,
        ));
        let access: Arc<dyn AccessCheck> = cache.clone();
        let event_keys = Arc::new(config.event_keys()?);
        if config.redis_url.is_some() {
            check_signing_keys(&event_keys, &hosted)?;
        }

        let mut services: Vec<Arc<dyn Service>> = Vec::new();
        let (mut identity, mut assignment, mut audit, mut approval, mut alerting) = (None, None, None, None, None);
        for (name, database_url) in &options.databases {
            let db = db::connect(database_url)
                .await
                .with_context(|| format!("opening the {name} database"))?;
            let deps = Deps {
                config: config.clone(),
                db,
                access: access.clone(),
                identity: identity_channel.clone(),
                assignment: assignment_channel.clone(),
                approval: approval_channel.clone(),
                clock: options.clock.clone(),
            };
            let service: Arc<dyn Service> = match name {
                ServiceName::Identity => {
                    let s = Identity::build(deps).await?;
                    identity = Some(s.clone());
                    Arc::new(s)
                }
                ServiceName::Assignment => {
                    let s = Assignment::build(deps).await?;
                    assignment = Some(s.clone());
                    Arc::new(s)
                }
                ServiceName::Approval => {
                    let s = Approval::build(deps).await?;
                    approval = Some(s.clone());
                    Arc::new(s)
                }
                ServiceName::Alerting => {
                    let s = Alerting::build(deps).await?;
                    alerting = Some(s.clone());
                    Arc::new(s)
                }
                ServiceName::Audit => {
                    let s = Audit::build(deps).await?;
                    audit = Some(s.clone());
                    Arc::new(s)
                }
            };
            services.push(service);
        }

        let keys: Arc<dyn KeySource> = match &identity {
            Some(identity) => Arc::new(identity.keystore()),
            None => Arc::new(RemoteKeys::new(identity_channel.clone())),
        };
        let verifier = Arc::new(TokenVerifier::new(keys));
        let revocations = verifier.revocations();

        // Events: Redis Streams when configured, otherwise straight from the outboxes. Either
        // way, what ends access is applied in this process before its event leaves it.
        let mut consumers = Vec::new();
        let redis = config.redis()?;
        let bus = EmbeddedBus::new(config.max_deliveries);
        for stream in [streams::ASSIGNMENT, streams::IDENTITY] {
            let cache = cache.clone();
            bus.listen(stream, Arc::new(move |envelope| cache.invalidate_on(envelope)));
        }
        {
            let revocations = revocations.clone();
            bus.listen(streams::IDENTITY, Arc::new(move |envelope| revocations.apply(envelope)));
        }
        let publisher: Arc<dyn Publisher> = match &redis {
            Some(redis) => {
                check_verifying_keys(&event_keys, &services)?;
                options.consumer.keys = event_keys.clone();
                for service in &services {
                    for handler in service.handlers() {
                        let inbox = Inbox::new(service.db().clone(), handler);
                        if inbox.ends_access() {
                            bus.subscribe(inbox.clone());
                        }
                        let consumer = RedisConsumer::connect(
                            redis,
                            &config.stream_prefix,
                            inbox,
                            consumer_name(),
                            options.consumer.clone(),
                        )
                        .await?;
                        consumers.push(consumer.spawn());
                    }
                }
                let redis = Arc::new(RedisPublisher::connect(redis, &config.stream_prefix).await?);
                Arc::new(InProcessFirst::new(bus, redis))
            }
            None => {
                for service in &services {
                    service.outbox().deliver_before_answering();
                    for handler in service.handlers() {
                        bus.subscribe(Inbox::new(service.db().clone(), handler));
                    }
                }
                Arc::new(bus)
            }
        };
        let (stop, stopped) = watch::channel(false);
        let mut background: Vec<JoinHandle<()>> = services.iter().flat_map(|s| s.background(stopped.clone())).collect();
        if let Some(redis) = &redis {
            // Lost access reaches the cached answers of this process at once, not after the TTL.
            for stream in [streams::ASSIGNMENT, streams::IDENTITY] {
                // Unknown (Redis unreachable at start): from the start; an answer dropped
                // again or a revocation applied again changes nothing.
                let from = tail_start(redis, &config.stream_prefix, stream)
                    .await
                    .unwrap_or_else(|| "0-0".to_owned());
                let (cache, revocations) = (cache.clone(), revocations.clone());
                background.push(tail(
                    redis.clone(),
                    config.stream_prefix.clone(),
                    stream,
                    from,
                    event_keys.clone(),
                    stopped.clone(),
                    |event_type| {
                        CachedAccess::invalidated_by(event_type) || event_type == Some(EventType::SessionRevoked)
                    },
                    move |_, envelope| {
                        cache.invalidate_on(envelope);
                        revocations.apply(envelope);
                    },
                ));
            }
        }
        // Revocations identity keeps (sign-outs, disabled users) are loaded before this process
        // serves: events seen before a restart are not seen again. Until they are, every
        // token is refused (UNAVAILABLE), never accepted; the stream tails above started from
        // positions read before the load, so nothing between the two is missed.
        if verifier.load_revocations().await.is_err() {
            let (verifier, stopped) = (verifier.clone(), stopped.clone());
            background.push(tokio::spawn(async move {
                verifier.load_revocations_until_known(stopped).await
            }));
        }
        // A process that asks identity over gRPC also asks it for new revocations every few
        // seconds, as well as following its stream: a sign-out or a disable reaches it while
        // Redis is down, not only once Redis is back.
        if identity.is_none() {
            let (verifier, stopped) = (verifier.clone(), stopped.clone());
            background.push(tokio::spawn(follow_revocations(verifier, stopped)));
        }
        let relays = services
            .iter()
            .map(|s| {
                let relay = Relay::new(s.db().clone(), s.outbox().clone(), publisher.clone()).named(s.name());
                // What crosses Redis is signed; embedded delivery never leaves the process.
                match config.redis_url {
                    Some(_) => relay
                        .signed_with(event_keys.clone())
                        .keeping(config.event_replay_window),
                    None => relay,
                }
                .spawn(options.relay_poll)
            })
            .collect();

        let ssf_router = audit.as_ref().and_then(|audit| audit.ssf_router(verifier.clone()));
        let ssf_url = match (ssf_listener, ssf_router) {
            (Some(listener), Some(router)) => {
                let mut stopped = stop.subscribe();
                background.push(tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    };
                    if let Err(err) = pim_runtime::listen::serve_http(listener, router, shutdown).await {
                        tracing::error!(error = %err, "the Shared Signals transmitter stopped");
                    }
                }));
                config.ssf_issuer.clone()
            }
            _ => None,
        };
        if let Some(issuer) = &ssf_url {
            tracing::info!(issuer = %issuer, "serving the Shared Signals transmitter");
        }
        let auth = AuthLayer::new(verifier)
            .recording_refusals(Arc::new(Denials::of(&services)))
            .stopping_with(stop.subscribe());
        let mut routes = RoutesBuilder::default();
        let mut served = Vec::new();
        for service in &services {
            service.add_routes(&mut routes);
            served.push((service.grpc_services(), service.db().clone()));
        }
        let mut stopped = stopped;
        let incoming = grpc::incoming(listener, &config.tls)?;
        let server = tokio::spawn(async move {
            grpc::serve(incoming, routes.routes(), served, auth, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        });
        tracing::info!(address = %addr, services = ?hosted.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "serving");
        let admin_addr = match config.admin_addr {
            Some(admin) => {
                let (bound, task) = pim_runtime::metrics::serve_admin(admin, stop.subscribe()).await?;
                tracing::info!(address = %bound, "serving metrics at /metrics");
                background.push(task);
                Some(bound)
            }
            None => None,
        };
        Ok(Self {
            addr,
            admin_addr,
            ssf_url,
            url,
            stop,
            server,
            relays,
            consumers,
            background,
            identity,
            assignment,
            audit,
            approval,
            alerting,
            services,
        })
    }

    /// The Shared Signals transmitter's issuer URL, when it is served (PIM_SSF_ADDR).
    pub fn ssf_url(&self) -> Option<&str> {
        self.ssf_url.as_deref()
    }

    /// The admin address serving `/metrics` (PIM_ADMIN_ADDR), if set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients use (one address for every hosted service).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }

    pub fn audit(&self) -> Option<&Audit> {
        self.audit.as_ref()
    }

    pub fn approval(&self) -> Option<&Approval> {
        self.approval.as_ref()
    }

    pub fn alerting(&self) -> Option<&Alerting> {
        self.alerting.as_ref()
    }

    pub fn services(&self) -> &[Arc<dyn Service>] {
        &self.services
    }

    /// Creates the break-glass Global Administrator when there is none; returns its user
    /// name and password (shown once) when it did.
    pub async fn bootstrap(&self) -> anyhow::Result<Option<(String, String)>> {
        let (Some(identity), Some(assignment)) = (&self.identity, &self.assignment) else {
            bail!("bootstrap needs identity and assignment in this process");
        };
        crate::bootstrap::run(identity, assignment).await
    }

    /// Stops serving, then the relays and consumers (each finishes what it holds); last, each
    /// SQLite file takes in its write-ahead log, so the `.db` files alone are whole.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let served = self.server.await.context("server task")?;
        for relay in self.relays {
            relay.stop().await;
        }
        for consumer in self.consumers {
            consumer.stop().await;
        }
        for task in self.background {
            let _ = task.await;
        }
        for service in &self.services {
            if let Err(err) = pim_runtime::db::checkpoint(service.db()).await {
                tracing::warn!(service = service.name(), error = %err, "folding the write-ahead log into the database file failed");
            }
        }
        served
    }

    /// Serves until `signal` completes, then stops gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        self.stop().await
    }
}

/// How often a process asks identity for revocations made since it last asked.
const REVOCATIONS_POLL: Duration = Duration::from_secs(2);

/// Asks identity for the revocations made since the last answer (with ten minutes' margin for
/// the clocks' difference: identity stamps them by its own) every [`REVOCATIONS_POLL`], until
/// the host stops.
async fn follow_revocations(verifier: Arc<TokenVerifier>, mut stopped: watch::Receiver<bool>) {
    let mut since = pim_runtime::db::now_ms();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REVOCATIONS_POLL) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let asked_at = pim_runtime::db::now_ms();
        match verifier.refresh_revocations(since - 600_000).await {
            Ok(()) => (since, failing) = (asked_at, false),
            Err(err) if !failing => {
                tracing::warn!(error = %format!("{err:#}"), "asking identity for revocations failed; its stream still tells them");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
