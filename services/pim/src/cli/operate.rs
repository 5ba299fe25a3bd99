//! Running the suite: `pim up` (all-in-one), `pim serve` (one service, or the gateway),
//! `pim event-keys`, `pim events replay` and `pim bootstrap`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, bail};

use pim_runtime::Config;
use pim_runtime::config::TlsConfig;
use pim_runtime::db::sqlite_url;
use pim_runtime::events::{EventKeys, PUBLISHERS};

use pim_portal::{Portal, PortalOptions, Upstreams};
use pim_runtime::grpc;

use crate::host::{ServiceName, Suite, SuiteOptions};

use super::{ClientArgs, Session, print_table, time};

pub(crate) fn load_config(default_pretty: bool) -> anyhow::Result<Config> {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    if default_pretty {
        env.entry("PIM_LOG_FORMAT".into()).or_insert_with(|| "pretty".into());
    }
    let config = Config::load(env)?;
    pim_runtime::telemetry::init(config.log_json);
    Ok(config)
}

/// The all-in-one: five services, one address, one SQLite file each.
pub(crate) async fn up() -> anyhow::Result<i32> {
    let mut config = load_config(true)?;
    grpc::listen_for_shutdown();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    // Only the owner may read what the suite keeps (password hashes, sealed seeds, audit).
    owner_only(&config.data_dir, 0o700)?;
    if config.secrets_key.is_none() {
        let key = data_dir_secret(&config.data_dir, "secrets.key", pim_identity::Sealer::new_key)?;
        config.secrets_key = Some(pim_runtime::config::Secret::new(key));
    }
    if config.event_signing_keys.is_none() {
        // The five services sign their events (checked when they cross Redis) with keys kept
        // beside the data, so events published before a restart still verify after it.
        let keys = data_dir_secret(&config.data_dir, "event-signing.keys", || {
            EventKeys::generate(&PUBLISHERS).signing_setting()
        })?;
        config.event_signing_keys = Some(pim_runtime::config::Secret::new(keys));
        config.event_keys()?;
    }
    // The portal runs here too: the services believe the browser's address it forwards
    // (sign-in limits and audit tell its browsers apart instead of counting them all as the
    // portal) because it holds this key, which nothing else on the host has. No address is
    // trusted for it: another local caller's x-forwarded-for counts for nothing.
    let key = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    config.forwarder_key = Some(pim_runtime::config::Secret::new(key));
    if config.portal_addr.is_none() {
        // The web portal: two ports after the gRPC one (any free port when that one is).
        let port = match config.listen_addr.port() {
            0 => 0,
            port => port
                .checked_add(2)
                .context("PIM_LISTEN_ADDR's port is too high to put the portal beside it: set PIM_PORTAL_ADDR")?,
        };
        config.portal_addr = Some(std::net::SocketAddr::new(config.listen_addr.ip(), port));
    }
    if config.ssf_addr.is_none() {
        // The Shared Signals transmitter: on the port after the gRPC one (any free port when
        // that one is).
        let port = match config.listen_addr.port() {
            0 => 0,
            port => port
                .checked_add(1)
                .context("PIM_LISTEN_ADDR's port is the last one: set PIM_SSF_ADDR")?,
        };
        config.ssf_addr = Some(std::net::SocketAddr::new(config.listen_addr.ip(), port));
    }
    // The portal is bound first: its address is where people (and passkeys) reach PIM.
    let portal_listener = bind_portal(&config).await?;
    if config.public_url.is_none() {
        let bound = portal_listener.local_addr()?;
        // A browser's secure context and a passkey's relying party need a name, not an
        // address: localhost for loopback.
        let host = match bound.ip() {
            ip if ip.is_loopback() || ip.is_unspecified() => format!("localhost:{}", bound.port()),
            _ => bound.to_string(),
        };
        config.public_url = Some(format!("http://{host}"));
    }
    let databases = ServiceName::ALL
        .into_iter()
        .map(|s| (s, sqlite_url(&config.data_dir.join(format!("{s}.db")))))
        .collect();
    let suite = Suite::start(SuiteOptions::new(config.clone(), databases)).await?;
    for entry in std::fs::read_dir(&config.data_dir)? {
        let path = entry?.path();
        if path.is_file() {
            owner_only(&path, 0o600)?;
        }
    }
    let portal = start_portal(
        &config,
        Upstreams::all_at(grpc::channel_to_self(suite.url(), &config.tls)?),
        portal_listener,
    )?;
    println!("PIM is up at {}", suite.url());
    println!("  Portal: {portal}/");
    if let Some(ssf) = suite.ssf_url() {
        println!("  Shared Signals (SSF) transmitter: {ssf}/.well-known/ssf-configuration");
    }
    println!(
        "  data: {}  events: {}",
        config.data_dir.display(),
        if config.redis_url.is_some() {
            "Redis"
        } else {
            "embedded"
        }
    );
    if config.redis_url.is_some() {
        // Public: what SOC consumers verify the entries of pim.alerts and pim.audit.events with.
        println!(
            "  event verifying keys: PIM_EVENT_VERIFYING_KEYS={}",
            config.event_keys()?.verifying_setting()
        );
    }
    if let Some((user, password)) = suite.bootstrap().await? {
        println!();
        println!("Break-glass Global Administrator created (shown once; store it safely):");
        println!("  user name: {user}");
        println!("  password:  {password}");
        println!("Sign in with: pim login --server {} --user {user}", suite.url());
    }
    std::io::stdout().flush().ok();
    suite.run_until(pim_runtime::grpc::shutdown_signal()).await?;
    Ok(0)
}

/// Narrows a path's permissions to its owner (`mode`: 0700 for a directory, 0600 for a file).
fn owner_only(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("restricting {} to its owner", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// One of the all-in-one's own secrets (the key for secrets at rest, the event signing keys):
/// file `name` in the data directory (mode 0600), made by `make` on first start.
fn data_dir_secret(dir: &std::path::Path, name: &str, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    let path = dir.join(name);
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_owned());
    }
    let key = make();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.as_bytes())?;
    Ok(key)
}

/// `pim event-keys`: new signing keys, and the public halves to add to every service.
pub(crate) fn event_keys(services: Vec<ServiceName>) -> i32 {
    let names: Vec<&str> = match services.is_empty() {
        true => PUBLISHERS.to_vec(),
        false => services.iter().map(|s| s.as_str()).collect(),
    };
    let keys = EventKeys::generate(&names);
    println!("# Each service's own signing key: secret, give it to that service only.");
    for entry in keys.signing_setting().split(',') {
        let service = entry.split(':').next().unwrap_or_default();
        println!("# {service}\nPIM_EVENT_SIGNING_KEYS={entry}");
    }
    println!();
    println!("# Public keys: every service that reads these services' streams (all of them).");
    println!("# When rotating, append them to the keys already there; remove the old ones");
    println!("# once the services sign with the new keys and their backlog is consumed.");
    println!("PIM_EVENT_VERIFYING_KEYS={}", keys.verifying_setting());
    0
}

/// `pim events replay`: marks the events written since `since` for publication again.
pub(crate) async fn replay(since: &str, databases: Vec<String>) -> anyhow::Result<i32> {
    let since_ms = super::parse_moment_or_ago(since).map_err(|why| anyhow::anyhow!("--since {why}"))?;
    let config = load_config(true)?;
    let databases: Vec<(String, String)> = match (databases.is_empty(), &config.database_url) {
        (false, _) => databases.into_iter().map(|d| (redacted(&d), d)).collect(),
        (true, Some(url)) => vec![(redacted(url.expose()), url.expose().clone())],
        (true, None) => ServiceName::ALL
            .into_iter()
            .map(|s| config.data_dir.join(format!("{s}.db")))
            .filter(|path| path.exists())
            .map(|path| (path.display().to_string(), sqlite_url(&path)))
            .collect(),
    };
    if databases.is_empty() {
        bail!(
            "no database to replay from: give --database, set PIM_DATABASE_URL, or point PIM_DATA_DIR at pim up's data ({})",
            config.data_dir.display()
        );
    }
    let since_text = time(Some(since_ms));
    for (name, url) in databases {
        let db = pim_runtime::db::connect(&url)
            .await
            .with_context(|| format!("opening {name}"))?;
        let marked = pim_runtime::events::replay(&db, since_ms)
            .await
            .with_context(|| format!("marking events in {name}"))?;
        println!("{name}: {marked} events written since {since_text} will be published again");
        db.close().await.ok();
    }
    Ok(0)
}

/// A database URL without its password, to print.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Query parameters may carry a password too: leave them out.
    let rest = rest.split('?').next().unwrap_or_default();
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

/// What `pim serve` runs: one service, or the gateway in front of all five.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Served {
    Service(ServiceName),
    Gateway,
    Portal,
}

impl std::str::FromStr for Served {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "gateway" => Ok(Self::Gateway),
            "portal" => Ok(Self::Portal),
            _ => s.parse().map(Self::Service).map_err(|_| {
                anyhow::anyhow!(
                    "unknown service {s:?}: expected identity, assignment, approval, alerting, audit, gateway or portal"
                )
            }),
        }
    }
}

pub(crate) async fn serve(service: ServiceName) -> anyhow::Result<i32> {
    let config = load_config(false)?;
    grpc::listen_for_shutdown();
    let database = config
        .database_url
        .clone()
        .context("PIM_DATABASE_URL is required for pim serve (e.g. postgres://pim@db/pim_identity)")?;
    if config.redis_url.is_none() {
        bail!("PIM_REDIS_URL is required for pim serve: separate processes exchange events through Redis");
    }
    let databases = BTreeMap::from([(service, database.expose().clone())]);
    let suite = Suite::start(SuiteOptions::new(config, databases)).await?;
    suite.run_until(pim_runtime::grpc::shutdown_signal()).await?;
    Ok(0)
}

async fn bind_portal(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = config
        .portal_addr
        .context("PIM_PORTAL_ADDR is required to serve the portal")?;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (PIM_PORTAL_ADDR)"))
}

/// Serves the portal on `listener` in the background until the process ends; returns the URL
/// people reach it at (`PIM_PUBLIC_URL` when set).
fn start_portal(config: &Config, upstreams: Upstreams, listener: tokio::net::TcpListener) -> anyhow::Result<String> {
    let bound = listener.local_addr()?;
    let portal = Portal::new(
        upstreams,
        PortalOptions::from_config(config),
        std::sync::Arc::new(pim_runtime::clock::SystemClock),
    );
    tokio::spawn(async move {
        if let Err(err) = portal.serve(listener, grpc::shutdown_signal()).await {
            tracing::error!(error = %err, "the portal stopped");
        }
    });
    let host = if bound.ip().is_unspecified() {
        std::net::SocketAddr::new([127, 0, 0, 1].into(), bound.port())
    } else {
        bound
    };
    tracing::info!(address = %bound, "serving the portal");
    Ok(config.public_url.clone().unwrap_or_else(|| format!("http://{host}")))
}

/// `pim serve portal`: the portal alone, a client of the services at PIM_IDENTITY_URL,
/// PIM_ASSIGNMENT_URL, PIM_APPROVAL_URL, PIM_ALERTING_URL and PIM_AUDIT_URL (or one gateway's
/// address in each).
pub(crate) async fn serve_portal() -> anyhow::Result<i32> {
    let mut config = load_config(false)?;
    grpc::listen_for_shutdown();
    let url = |setting: &str, value: &Option<String>| -> anyhow::Result<tonic::transport::Channel> {
        let url = value
            .as_deref()
            .with_context(|| format!("the portal needs {setting}: where that service (or a gateway) listens"))?;
        grpc::channel(url, &config.tls).with_context(|| setting.to_owned())
    };
    let upstreams = Upstreams {
        identity: url("PIM_IDENTITY_URL", &config.identity_url)?,
        assignment: url("PIM_ASSIGNMENT_URL", &config.assignment_url)?,
        approval: url("PIM_APPROVAL_URL", &config.approval_url)?,
        alerting: url("PIM_ALERTING_URL", &config.alerting_url)?,
        audit: url("PIM_AUDIT_URL", &config.audit_url)?,
    };
    config.portal_addr.get_or_insert_with(|| ([127, 0, 0, 1], 8080).into());
    let listener = bind_portal(&config).await?;
    let url = start_portal(&config, upstreams, listener)?;
    println!("PIM portal at {url}/");
    grpc::shutdown_signal().await;
    Ok(0)
}

pub(crate) async fn bootstrap(identity_database: String, assignment_database: String) -> anyhow::Result<i32> {
    let config = load_config(true)?;
    let channel = pim_runtime::grpc::channel("http://127.0.0.1:1", &TlsConfig::default())?;
    let access: std::sync::Arc<dyn pim_runtime::access::AccessCheck> =
        std::sync::Arc::new(pim_runtime::access::RemoteAccess::new(channel.clone()));
    let deps = |db| pim_runtime::host::Deps {
        config: config.clone(),
        db,
        access: access.clone(),
        identity: channel.clone(),
        assignment: channel.clone(),
        approval: Some(channel.clone()),
        clock: std::sync::Arc::new(pim_runtime::clock::SystemClock),
    };
    let identity = pim_identity::Identity::build(deps(pim_runtime::db::connect(&identity_database).await?)).await?;
    let assignment =
        pim_assignment::Assignment::build(deps(pim_runtime::db::connect(&assignment_database).await?)).await?;
    match crate::bootstrap::run(&identity, &assignment).await? {
        Some((user, password)) => {
            println!("Break-glass Global Administrator created (shown once; store it safely):");
            println!("  user name: {user}");
            println!("  password:  {password}");
        }
        None => println!("A permanent Global Administrator exists already; nothing to do."),
    }
    Ok(0)
}

/// `pim health`: each service's `grpc.health.v1` status through the one address.
pub(crate) async fn health(only: Option<Served>, client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, false)?;
    let health = tonic_health::pb::health_client::HealthClient::new(session.channel.clone());
    let (mut all_serving, mut any_answered) = (true, false);
    let mut unreached = None;
    let names = [
        pim_proto::service_names::IDENTITY,
        pim_proto::service_names::ASSIGNMENT,
        pim_proto::service_names::APPROVAL,
        pim_proto::service_names::ALERTING,
        pim_proto::service_names::AUDIT,
    ];
    let mut rows = Vec::new();
    let asked: Vec<&str> = match only {
        // The server itself (grpc.health.v1's empty name): the gateway answers for itself.
        Some(Served::Gateway) => vec![""],
        Some(Served::Portal) => {
            bail!("the portal is a web server, not a gRPC one: check it with GET /healthz on PIM_PORTAL_ADDR")
        }
        Some(Served::Service(s)) => {
            let package = format!("pim.{s}.");
            names.concat().into_iter().filter(|n| n.starts_with(&package)).collect()
        }
        None => names.concat(),
    };
    // Asked all at once: a service that does not answer holds up only its own rows.
    let mut asking = tokio::task::JoinSet::new();
    for (n, name) in asked.iter().enumerate() {
        let (mut health, request) = (
            health.clone(),
            session.request(tonic_health::pb::HealthCheckRequest {
                service: (*name).to_owned(),
            })?,
        );
        asking.spawn(async move { (n, health.check(request).await) });
    }
    let mut answers: Vec<_> = asking.join_all().await;
    answers.sort_by_key(|(n, _)| *n);
    for ((_, answer), name) in answers.into_iter().zip(asked) {
        let status = match answer {
            Ok(r) => {
                any_answered = true;
                format!("{:?}", r.into_inner().status())
            }
            Err(s) => {
                // A connection that failed (TLS on one side only, a certificate refused) is
                // no answer either, whatever code tonic gives it.
                any_answered |= s.code() != tonic::Code::Unavailable && super::connection_cause(&s).is_none();
                let code = format!("{:?}", s.code());
                unreached.get_or_insert(s);
                code
            }
        };
        all_serving &= status == "Serving";
        rows.push(vec![
            if name.is_empty() { "(the server)" } else { name }.to_owned(),
            status,
        ]);
    }
    print_table(&["SERVICE", "STATUS"], rows);
    if !any_answered && let Some(status) = unreached {
        eprintln!("{}", super::explain(status));
    }
    // Nothing answered at all: PIM is unreachable (exit 3), not a service down (1).
    Ok(match (all_serving, any_answered) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => 3,
    })
}
