//! Serving and calling gRPC: one listener for the services a process hosts, with
//! `grpc.health.v1`, server reflection, optional TLS (rustls), the auth layer and graceful
//! shutdown; and client channels with the matching TLS settings.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::Status;
use tonic::service::Routes;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic_health::ServingStatus;
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthLayer;
use crate::config::TlsConfig;

/// INVALID_ARGUMENT with a field violation (AIP-193 `BadRequest`).
pub fn invalid_argument(field: &str, message: &str) -> Status {
    let details = ErrorDetails::with_bad_request_violation(field, message);
    Status::with_error_details(tonic::Code::InvalidArgument, format!("{field}: {message}"), details)
}

/// A time a client sent, as epoch milliseconds; INVALID_ARGUMENT naming `field` when it is
/// not a valid protobuf `Timestamp` (outside 0001-01-01…9999-12-31, or nanos out of range).
pub fn time_field(field: &str, t: &prost_types::Timestamp) -> Result<i64, Status> {
    crate::db::checked_timestamp(t).ok_or_else(|| invalid_argument(field, crate::db::TIMESTAMP_RULE))
}

/// The most characters a search or filter value may have.
pub const MAX_FILTER: usize = 256;

/// A search or filter value (a name to look for, an id or an action to match), or a page
/// token that names a position (the last name or id a page held), trimmed: at
/// most [`MAX_FILTER`] characters and on one line, else INVALID_ARGUMENT naming `field` (a
/// longer pattern only made the database give up, an INTERNAL).
pub fn filter_value<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    crate::text::one_line(value, MAX_FILTER).map_err(|why| invalid_argument(field, &why))
}

/// How many items a page holds (AIP-158): `default` when not given (0), at most `max` (a
/// larger size is taken as `max`); a negative one is INVALID_ARGUMENT.
pub fn page_size(requested: i32, default: u64, max: u64) -> Result<u64, Status> {
    match requested {
        n if n < 0 => Err(invalid_argument("page_size", "must not be negative")),
        0 => Ok(default),
        n => Ok((n as u64).min(max)),
    }
}

/// A page of at most `limit` items from `fetched`, which asked the store for one more than
/// that: with the token of the next page, made by `token` from the page's last item, when
/// that one more came (an empty token: this was the last page).
pub fn next_page<T>(mut fetched: Vec<T>, limit: u64, token: impl Fn(&T) -> String) -> (Vec<T>, String) {
    if fetched.len() as u64 > limit {
        fetched.truncate(limit as usize);
        let next = fetched.last().map(token).unwrap_or_default();
        (fetched, next)
    } else {
        (fetched, String::new())
    }
}

/// Every item of a paged listing, as its caller pages through it: `page` fetches the page
/// after a token (empty: the first) and answers its items and the next token (empty: the
/// last page). A token answered twice in a row ends it too: a faulty server cannot keep its
/// caller asking for ever.
pub async fn all_pages<T, E, F, Fut>(mut page: F) -> Result<Vec<T>, E>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), E>>,
{
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let (items, next) = page(token.clone()).await?;
        all.extend(items);
        if next.is_empty() || next == token {
            return Ok(all);
        }
        token = next;
    }
}

/// UNAVAILABLE with a `RetryInfo` detail: the same call may succeed after `retry_after`.
pub fn unavailable_retry(message: &str, retry_after: std::time::Duration) -> Status {
    let details = ErrorDetails::with_retry_info(Some(retry_after));
    Status::with_error_details(tonic::Code::Unavailable, message, details)
}

/// A stream cursor or page token this service issued (a non-negative number as text);
/// empty means "from the start".
pub fn cursor(raw: &str, field: &str) -> Result<Option<i64>, Status> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| invalid_argument(field, "not a cursor this service issued"))
}

/// An id field the caller must fill with one of this service's ids (a UUID, in the form this
/// service writes it: lower case, hyphenated): `what` names it in the refusal.
pub fn id_field<'a>(field: &str, raw: &'a str, what: &str) -> Result<&'a str, Status> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(invalid_argument(field, &format!("required ({what})")));
    }
    match uuid::Uuid::try_parse(id) {
        Ok(parsed) if parsed.hyphenated().to_string() == id => Ok(id),
        _ => Err(invalid_argument(
            field,
            &format!("not {what} (a UUID, lower case with hyphens)"),
        )),
    }
}

/// A page token that names the last id of the page before (empty: the first page); anything
/// but an id as the service writes them is INVALID_ARGUMENT, never read as a place to start.
pub fn id_token(raw: &str) -> Result<&str, Status> {
    if raw.is_empty() {
        return Ok("");
    }
    id_field("page_token", raw, "a page token this service gave")
}

/// NOT_FOUND naming what was asked for as the caller wrote it: control characters shown as
/// escapes and at most 200 characters of it, so an id of a megabyte or a terminal escape
/// sequence comes back as neither.
pub fn not_found(message: &str) -> Status {
    let mut shown = String::new();
    for c in message.chars().take(200) {
        if crate::text::is_unseen(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    if message.chars().nth(200).is_some() {
        shown.push('…');
    }
    Status::not_found(shown)
}

/// Where a stream resumes: after the `raw` [`cursor`] (from the start when empty), which must
/// be no further than the `latest` this service has issued: one ahead of it comes from another
/// installation (or a data directory restored from before it), and resuming from it would
/// skip every item up to it.
pub fn resume_after(raw: &str, latest: i64, field: &str) -> Result<i64, Status> {
    let cursor = cursor(raw, field)?.unwrap_or(0);
    if cursor > latest {
        return Err(invalid_argument(
            field,
            &format!(
                "{cursor} is ahead of the latest this service has issued ({latest}): not one it issued \
                 (another installation's, or from before a restore); resume with an empty cursor"
            ),
        ));
    }
    Ok(cursor)
}

/// The rule a protection's FAILED_PRECONDITION names when it refuses to leave no enabled
/// Global Administrator: a security decision, recorded as a refusal (see
/// [`crate::auth::Refusals`]).
pub const LAST_GLOBAL_ADMINISTRATOR_RULE: &str = "LastGlobalAdministratorRule";

/// Whether `status` refuses the caller on its merits: PERMISSION_DENIED, a protection's
/// FAILED_PRECONDITION ([`LAST_GLOBAL_ADMINISTRATOR_RULE`]), or a change refused for want of
/// a recent MFA (`MfaRule`: a disable, a reset, a secret rotated, tried from a session
/// without one; an activation's is recorded by assignment itself, with the request, as the
/// auth layer's `SELF_AUDITED_METHODS` say).
pub fn is_recorded_refusal(status: &Status) -> bool {
    status.code() == tonic::Code::PermissionDenied
        || (status.code() == tonic::Code::FailedPrecondition
            && violated_rules(status)
                .iter()
                .any(|r| r == LAST_GLOBAL_ADMINISTRATOR_RULE || r == "MfaRule"))
}

/// A rule that refused a request: `kind` is machine-readable (e.g. `MfaRule`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleViolation {
    pub kind: &'static str,
    pub message: String,
}

/// FAILED_PRECONDITION listing every failed rule (AIP-193 `PreconditionFailure`), so a
/// client can fix each (step up MFA, add a justification) and retry.
pub fn failed_precondition(subject: &str, violations: &[RuleViolation]) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.kind, v.message))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_precondition_failure_violation(v.kind, subject, &v.message);
    }
    Status::with_error_details(tonic::Code::FailedPrecondition, message, details)
}

/// The rule kinds of a FAILED_PRECONDITION status (empty for any other status).
pub fn violated_rules(status: &Status) -> Vec<String> {
    status
        .get_details_precondition_failure()
        .map(|p| p.violations.into_iter().map(|v| v.r#type).collect())
        .unwrap_or_default()
}

/// What a server-streaming RPC returns.
pub type BoxStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Logs an unexpected error with its chain and answers INTERNAL without details; the database
/// giving up a transaction that met another, wherever it is in the chain, is no fault but
/// ABORTED ([`crate::db::conflict`]), and text PostgreSQL cannot keep (a NUL character) is
/// the caller's INVALID_ARGUMENT ([`crate::db::nul_in`]).
pub fn internal(err: impl Into<anyhow::Error>) -> Status {
    let err = err.into();
    if let Some(message) = crate::db::conflict_in(&err) {
        tracing::warn!(error = %format!("{err:#}"), "transaction aborted by a concurrent one");
        return Status::aborted(message);
    }
    if crate::db::nul_in(&err) {
        return invalid_argument("request", crate::db::NUL_REFUSED);
    }
    if crate::db::busy_in(&err) {
        tracing::warn!(error = %format!("{err:#}"), "the database is busy or out of reach");
        return unavailable_retry(
            "the service cannot reach its database for now; try again shortly",
            Duration::from_secs(1),
        );
    }
    tracing::error!(error = %format!("{err:#}"), "internal error");
    Status::internal("internal error")
}

/// The header a proxy names the client it forwards for in (right-most entry: the latest hop).
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address: the peer's, unless the peer is a proxy in `trusted`; then the
/// right-most `x-forwarded-for` entry that is not itself a trusted proxy (the client as the
/// first proxy it reached saw it). Entries left of that are the client's own say, never used.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    forwarded_for: &[&str],
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    // An IPv4 peer of a dual-stack listener arrives as ::ffff:a.b.c.d: compared as IPv4.
    let mut ip = peer?.to_canonical();
    let hops = forwarded_for.iter().flat_map(|h| h.split(',')).collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        if !trusted.iter().any(|net| net.contains(&ip)) {
            break;
        }
        match hop_address(hop) {
            Some(forwarded) => ip = forwarded.to_canonical(),
            // Not an address: stop at the last proxy that could be believed.
            None => break,
        }
    }
    Some(ip)
}

/// One `x-forwarded-for` entry's address: `203.0.113.7`, `2001:db8::1`, or with a port as
/// some proxies write them (`203.0.113.7:51234`, `[2001:db8::1]:443`).
fn hop_address(hop: &str) -> Option<std::net::IpAddr> {
    let hop = hop.trim();
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The header a forwarder the suite runs itself (`pim up`'s portal, in the same process)
/// proves itself with: it holds the process's [`crate::Config::forwarder_key`], and makes the
/// caller a trusted proxy whatever its address. Nothing else on the host is believed for
/// sharing it.
pub const FORWARDER_KEY: &str = "x-pim-forwarder";

/// Who may name the client they forward for: proxies by address (`PIM_TRUSTED_PROXIES`), and
/// the portal `pim up` runs in its own process by its key.
#[derive(Clone, Default)]
pub struct Forwarders {
    pub trusted: std::sync::Arc<[ipnet::IpNet]>,
    pub key: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for Forwarders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarders")
            .field("trusted", &self.trusted)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Forwarders {
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            trusted: config.trusted_proxies.clone().into(),
            key: config.forwarder_key.as_ref().map(|k| k.expose().as_str().into()),
        }
    }

    /// [`client_ip`] of a request: its peer is a proxy when trusted by address, or when it
    /// holds the key in [`FORWARDER_KEY`].
    pub fn client_ip<T>(&self, request: &tonic::Request<T>) -> Option<std::net::IpAddr> {
        let forwarded: Vec<&str> = request
            .metadata()
            .get_all(FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let peer = request.remote_addr().map(|a| a.ip());
        // Digests compared, so the time taken tells nothing of the key.
        let digest = |text: &[u8]| <sha2::Sha256 as sha2::Digest>::digest(text);
        let vouched = self.key.as_deref().is_some_and(|key| {
            request
                .metadata()
                .get(FORWARDER_KEY)
                .is_some_and(|held| digest(held.as_bytes()) == digest(key.as_bytes()))
        });
        match peer {
            Some(peer) if vouched => {
                let mut with_peer = self.trusted.to_vec();
                with_peer.push(ipnet::IpNet::from(peer));
                client_ip(Some(peer), &forwarded, &with_peer)
            }
            _ => client_ip(peer, &forwarded, &self.trusted),
        }
    }
}

/// A gRPC server whose connections are closed when their peer stops answering HTTP/2
/// pings. TLS, when configured, is [`incoming`]'s.
pub fn server_builder() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// `routes` and server reflection (v1 and v1alpha) describing every PIM service and health.
pub fn with_reflection(routes: Routes) -> anyhow::Result<Routes> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    Ok(routes.add_service(reflection_v1).add_service(reflection_v1alpha))
}

/// The connections a gRPC server takes, each to send its first bytes in time: over TLS when
/// a certificate is configured (and mutual TLS when a client CA is: the handshake fails for a
/// client without a certificate that CA signed), each handshake done within the same time
/// ([`crate::listen::accepting_tls`]); plaintext otherwise ([`crate::listen::accepting`]).
pub fn incoming(listener: TcpListener, tls: &TlsConfig) -> anyhow::Result<crate::listen::Accepted> {
    let within = crate::listen::FIRST_BYTES_WITHIN;
    Ok(match crate::listen::tls_acceptor(tls).context(TLS_FILES)? {
        Some(acceptor) => crate::listen::accepting_tls(listener, acceptor, within),
        None => crate::listen::accepting(listener, within),
    })
}

/// What a server's TLS file that does not load is about.
pub const TLS_FILES: &str = "PIM_TLS_CERT, PIM_TLS_KEY or PIM_TLS_CLIENT_CA does not load";

pub use crate::listen::SHUTDOWN_GRACE;

/// `shutdown` as a server takes it, and what completes [`SHUTDOWN_GRACE`] after it did: a
/// server raced against the second lets open calls finish (streams end themselves, see
/// `streams::Guard`) for that long at most, so a client that stopped reading, or a stream
/// forwarded from elsewhere, does not hold the process.
pub fn with_grace(
    shutdown: impl Future<Output = ()> + Send,
) -> (impl Future<Output = ()> + Send, impl Future<Output = ()> + Send) {
    let (told, stopping) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = told.send(());
    };
    let grace = async move {
        if stopping.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    (shutdown, grace)
}

/// How often health asks each service's database whether it answers.
const HEALTH_PROBE: Duration = Duration::from_secs(5);

/// The fully-qualified gRPC names of one service, and the database it cannot answer without.
pub type Served = (&'static [&'static str], crate::db::Db);

/// Serves `routes` plus health and reflection on the connections `incoming` takes (see
/// [`incoming`]: made before, so that a TLS file that does not load stops the start) until
/// `shutdown` completes. Health reports each of `services`' names SERVING while its database
/// answers, NOT_SERVING while it does not (asked every [`HEALTH_PROBE`]), so a probe takes the
/// process out of rotation during a database outage.
pub async fn serve(
    incoming: crate::listen::Accepted,
    routes: Routes,
    services: Vec<Served>,
    auth: AuthLayer,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for (names, _) in &services {
        for name in *names {
            reporter.set_service_status(*name, ServingStatus::Serving).await;
        }
    }
    let probing = {
        let (reporter, services) = (reporter.clone(), services.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_PROBE).await;
                for (names, db) in &services {
                    let status = match db.ping().await {
                        Ok(()) => ServingStatus::Serving,
                        Err(err) => {
                            tracing::warn!(services = ?names, error = %err, "the database does not answer: health reports NOT_SERVING");
                            ServingStatus::NotServing
                        }
                    };
                    for name in *names {
                        reporter.set_service_status(*name, status).await;
                    }
                }
            }
        })
    };
    let routes = with_reflection(routes.add_service(health))?;
    let (shutdown, grace) = with_grace(shutdown);
    let serving = server_builder()
        // Bounded handler time: a stuck dependency must not pin connections forever.
        .timeout(Duration::from_secs(30))
        // Authentication wraps every route, so no handler can forget it.
        .layer(auth)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::select! {
        served = serving => served.context("serving gRPC")?,
        () = grace => tracing::warn!("calls still open {SHUTDOWN_GRACE:?} after the server was told to stop: closed"),
    }
    // The health reporter goes with the server: report NOT_SERVING to anyone still asking.
    probing.abort();
    for (names, _) in services {
        for name in names {
            reporter.set_service_status(*name, ServingStatus::NotServing).await;
        }
    }
    Ok(())
}

/// A lazily-connecting channel to `url` (http:// or https://), trusting `tls.ca` when given
/// and the system's roots otherwise, presenting `tls.client_cert` when given (mutual TLS).
pub fn channel(url: &str, tls: &TlsConfig) -> anyhow::Result<Channel> {
    connect(url, tls, None)
}

/// A channel to this process's own address. As [`channel`], but without `PIM_TLS_CA` it also
/// trusts the certificate it serves (`PIM_TLS_CERT`: one self-signed, or the chain in its
/// file), so that a process serving TLS reaches itself with no CA set.
pub fn channel_to_self(url: &str, tls: &TlsConfig) -> anyhow::Result<Channel> {
    let own = tls.cert.as_deref().filter(|_| tls.ca.is_none());
    connect(url, tls, own)
}

fn connect(url: &str, tls: &TlsConfig, own: Option<&std::path::Path>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid service URL {url}"))?
        .connect_timeout(Duration::from_secs(5))
        // A peer that took the connection and answers nothing (a frozen process: its kernel
        // still accepts) is found out by HTTP/2 pings, and its calls fail UNAVAILABLE within
        // seconds rather than waiting as long as it stays frozen.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut config = match &tls.ca {
            Some(ca) => {
                let pem = read_pem(ca, "the CA certificate (PIM_TLS_CA, --ca)")?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => match own {
                Some(own) => {
                    let pem = std::fs::read(own).with_context(|| format!("reading certificate {}", own.display()))?;
                    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
                    // The system's roots too, where it has any (a public certificate's file may
                    // hold it alone), without failing where it has none.
                    if rustls_native_certs::load_native_certs().certs.is_empty() {
                        config
                    } else {
                        config.with_native_roots()
                    }
                }
                None => ClientTlsConfig::new().with_native_roots(),
            },
        };
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            let cert = read_pem(cert, "the client certificate (PIM_TLS_CLIENT_CERT, --client-cert)")?;
            let key = read_pem(key, "the client key (PIM_TLS_CLIENT_KEY, --client-key)")?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(config)
            .context("configuring client TLS (PIM_TLS_CA, PIM_TLS_CLIENT_CERT, PIM_TLS_CLIENT_KEY)")?;
    }
    Ok(endpoint.connect_lazy())
}

/// A PEM file a client's TLS needs, refused unless it holds PEM (a CA file of anything else
/// would trust nothing, and the failure would read as an unknown issuer).
fn read_pem(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    anyhow::ensure!(
        pem.windows(11).any(|w| w == b"-----BEGIN "),
        "{what} {} holds no PEM",
        path.display()
    );
    Ok(pem)
}

/// Whether the process was told to stop (SIGTERM or ctrl-c), heard by one listener for the
/// whole process (see [`listen_for_shutdown`]).
static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> = std::sync::OnceLock::new();

/// Starts hearing SIGTERM and ctrl-c for the whole process, now: call it first thing (in the
/// runtime), before anything that takes time. A signal is heard only by listeners that exist
/// when it comes; once one exists, the signal no longer ends the process by itself, so a
/// signal arriving while a later listener was not yet made would be lost for it (a `pim up`
/// told to stop as it starts ran on).
pub fn listen_for_shutdown() -> tokio::sync::watch::Receiver<bool> {
    SHUTDOWN
        .get_or_init(|| {
            let (told, heard) = tokio::sync::watch::channel(false);
            #[cfg(unix)]
            let (terminate, interrupt) = {
                use tokio::signal::unix::{SignalKind, signal};
                (
                    signal(SignalKind::terminate()).ok(),
                    signal(SignalKind::interrupt()).ok(),
                )
            };
            tokio::spawn(async move {
                #[cfg(unix)]
                {
                    let next = |s: Option<tokio::signal::unix::Signal>| async move {
                        match s {
                            Some(mut s) => s.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = next(terminate) => {}
                        _ = next(interrupt) => {}
                    }
                }
                #[cfg(not(unix))]
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
                told.send_replace(true);
            });
            heard
        })
        .clone()
}

/// Completes once the process is told to stop (SIGTERM or ctrl-c), or at once if it was.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let mut heard = listen_for_shutdown();
    async move {
        let _ = heard.wait_for(|told| *told).await;
    }
}

#[cfg(test)]
mod client_ip_tests {
    use super::client_ip;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `pim up` trusts no address: a caller on the same host names a client only with the
    /// key its portal holds, not by being local.
    #[test]
    fn the_portal_the_process_runs_is_believed_by_its_key_not_its_address() {
        let forwarders = super::Forwarders {
            trusted: Vec::new().into(),
            key: Some("the-key".into()),
        };
        let from_localhost = |key: Option<&str>| {
            let mut request = tonic::Request::new(());
            request
                .extensions_mut()
                .insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: Some("127.0.0.1:40000".parse().unwrap()),
                });
            let metadata = request.metadata_mut();
            metadata.insert(super::FORWARDED_FOR, "203.0.113.7".parse().unwrap());
            if let Some(key) = key {
                metadata.insert(super::FORWARDER_KEY, key.parse().unwrap());
            }
            forwarders.client_ip(&request)
        };
        assert_eq!(from_localhost(Some("the-key")), Some(ip("203.0.113.7")));
        assert_eq!(from_localhost(None), Some(ip("127.0.0.1")), "local is not enough");
        assert_eq!(from_localhost(Some("a-guess")), Some(ip("127.0.0.1")));
        assert!(
            !format!("{forwarders:?}").contains("the-key"),
            "the key is never printed"
        );
    }

    #[test]
    fn a_forwarded_address_counts_only_through_a_trusted_proxy() {
        let gateway = ip("10.0.0.5");
        let trusted: Vec<ipnet::IpNet> = vec![gateway.into(), "10.0.0.8/31".parse().unwrap()];
        // Straight from a client: its own claims are ignored.
        assert_eq!(
            client_ip(Some(ip("198.51.100.1")), &["203.0.113.7"], &trusted),
            Some(ip("198.51.100.1"))
        );
        // Through the gateway: the address the gateway saw.
        assert_eq!(
            client_ip(Some(gateway), &["203.0.113.7"], &trusted),
            Some(ip("203.0.113.7"))
        );
        // A client claiming an address before the gateway's entry gains nothing.
        assert_eq!(
            client_ip(Some(gateway), &["192.0.2.66, 203.0.113.7"], &trusted),
            Some(ip("203.0.113.7"))
        );
        // Through two trusted proxies (an ingress, then the gateway), in several headers.
        assert_eq!(
            client_ip(Some(gateway), &["203.0.113.7", "10.0.0.9"], &trusted),
            Some(ip("203.0.113.7"))
        );
        // Nothing forwarded, or garbage: the proxy itself.
        assert_eq!(client_ip(Some(gateway), &[], &trusted), Some(gateway));
        assert_eq!(client_ip(Some(gateway), &["not an address"], &trusted), Some(gateway));
        // A network: both addresses of 10.0.0.8/31 are trusted, 10.0.0.10 is not.
        assert_eq!(
            client_ip(Some(ip("10.0.0.8")), &["203.0.113.7"], &trusted),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.10")), &["203.0.113.7"], &trusted),
            Some(ip("10.0.0.10"))
        );
        // Entries with ports, and an IPv4 peer seen through a dual-stack listener.
        assert_eq!(
            client_ip(Some(gateway), &["203.0.113.7:51234"], &trusted),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_ip(Some(gateway), &["[2001:db8::1]:443"], &trusted),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            client_ip(Some(ip("::ffff:10.0.0.5")), &["203.0.113.7"], &trusted),
            Some(ip("203.0.113.7"))
        );
        // Nobody trusted: always the peer.
        assert_eq!(client_ip(Some(gateway), &["203.0.113.7"], &[]), Some(gateway));
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::{LAST_GLOBAL_ADMINISTRATOR_RULE, RuleViolation, failed_precondition, is_recorded_refusal};
    use tonic::Status;

    /// A refused permission and a protection's refusal are recorded as refusals; a failed
    /// precondition that asks the caller for a step (a recent MFA) is not one.
    #[test]
    fn only_refusals_on_the_merits_are_recorded_as_refusals() {
        assert!(is_recorded_refusal(&Status::permission_denied("requires permission x")));
        let rule = |kind| {
            failed_precondition(
                "user",
                &[RuleViolation {
                    kind,
                    message: "no".into(),
                }],
            )
        };
        assert!(is_recorded_refusal(&rule(LAST_GLOBAL_ADMINISTRATOR_RULE)));
        assert!(is_recorded_refusal(&rule("MfaRule")), "a step-up refused is a decision");
        assert!(!is_recorded_refusal(&Status::failed_precondition(
            "you cannot disable yourself"
        )));
        assert!(!is_recorded_refusal(&Status::invalid_argument(
            "justification: too long"
        )));
    }
}

#[cfg(test)]
mod page_tests {
    use super::{filter_value, page_size};

    #[test]
    fn a_page_is_the_default_when_not_given_at_most_the_maximum_and_never_negative() {
        assert_eq!(page_size(0, 100, 1000).unwrap(), 100);
        assert_eq!(page_size(7, 100, 1000).unwrap(), 7);
        assert_eq!(page_size(i32::MAX, 100, 1000).unwrap(), 1000, "taken as the maximum");
        for negative in [-1, i32::MIN] {
            let refused = page_size(negative, 100, 1000).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(refused.message().starts_with("page_size"), "{}", refused.message());
        }
    }

    #[test]
    fn a_filter_is_one_short_line() {
        assert_eq!(filter_value("filter", "  lee ").unwrap(), "lee");
        assert!(filter_value("filter", &"x".repeat(256)).is_ok());
        for bad in ["x".repeat(257), "lee\nkim".into(), "lee\u{1b}[2J".into()] {
            let refused = filter_value("filter", &bad).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(refused.message().starts_with("filter"), "{}", refused.message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_page;

    /// An id is one of the service's, written as it writes them; anything else is bad input
    /// (never a NOT_FOUND that reads as "no such thing").
    #[test]
    fn an_id_field_takes_ids_as_the_service_writes_them() {
        let id = "0192f3a4-b5c6-7d8e-9f0a-1b2c3d4e5f6a";
        assert_eq!(
            super::id_field("alert_id", &format!(" {id} "), "an alert id").ok(),
            Some(id)
        );
        for bad in [
            "",
            "garbage",
            "0192F3A4-B5C6-7D8E-9F0A-1B2C3D4E5F6A",
            "0192f3a4b5c67d8e9f0a1b2c3d4e5f6a",
        ] {
            let refused = super::id_field("alert_id", bad, "an alert id").expect_err(bad);
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    /// What the caller asked for comes back as text a terminal shows as it is, and short.
    #[test]
    fn not_found_shows_what_was_asked_for_escaped_and_short() {
        let status = super::not_found("user a\u{1b}]0;pwned\u{7} not found");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            !status.message().chars().any(char::is_control),
            "{:?}",
            status.message()
        );
        assert!(status.message().contains(r"\u{1b}"), "{:?}", status.message());
        let long = super::not_found(&"x".repeat(1_000_000));
        assert_eq!(long.message().chars().count(), 201);
        assert!(long.message().ends_with('…'));
    }

    #[test]
    fn a_page_has_a_next_token_only_when_one_more_was_fetched() {
        let token = |n: &u32| n.to_string();
        assert_eq!(next_page(vec![1, 2, 3], 2, token), (vec![1, 2], "2".to_owned()));
        assert_eq!(next_page(vec![1, 2], 2, token), (vec![1, 2], String::new()));
        assert_eq!(next_page(Vec::new(), 2, token), (Vec::new(), String::new()));
    }

    /// A CA file of anything but PEM would trust nothing: refused, naming the setting.
    #[test]
    fn a_client_ca_file_that_holds_no_pem_is_refused() {
        let junk = std::env::temp_dir().join(format!("pim-junk-ca-{}", std::process::id()));
        std::fs::write(&junk, "not a certificate").unwrap();
        let tls = crate::config::TlsConfig {
            ca: Some(junk.clone()),
            ..Default::default()
        };
        let refused = format!(
            "{:#}",
            super::channel("https://127.0.0.1:1", &tls).expect_err("refused")
        );
        std::fs::remove_file(&junk).ok();
        assert!(
            refused.contains("(PIM_TLS_CA, --ca)") && refused.contains("holds no PEM"),
            "{refused}"
        );
    }

    /// No database connection free in time is a busy service (UNAVAILABLE, try again after a
    /// moment), however deep in the error; any other database fault stays INTERNAL.
    #[test]
    fn a_database_too_busy_to_lend_a_connection_is_unavailable() {
        use sea_orm::{ConnAcquireErr, DbErr};
        let busy = anyhow::Error::from(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)).context("listing approvals");
        let status = super::internal(busy);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("try again"), "{status:?}");
        let broken = super::internal(DbErr::Custom("a broken row".into()));
        assert_eq!(broken.code(), tonic::Code::Internal);
        assert_eq!(broken.message(), "internal error", "nothing of it echoed");
    }

    /// A caller pages to the last page, and stops when a server answers the same token again.
    #[tokio::test]
    async fn every_page_is_read_until_the_last_and_a_repeated_token_ends_it() {
        // Given up (failing the test) after a second: a caller that kept asking would hang.
        let pages = |tokens: &'static [&'static str]| async move {
            let all = super::all_pages(move |token: String| async move {
                // A page is awaited, as over the network (so the timeout below can fire).
                tokio::task::yield_now().await;
                let at = tokens
                    .iter()
                    .position(|t| *t == token)
                    .expect("a token the server gave");
                Ok::<_, ()>((vec![at], tokens.get(at + 1).copied().unwrap_or_default().to_owned()))
            });
            tokio::time::timeout(std::time::Duration::from_secs(1), all)
                .await
                .expect("stopped asking")
        };
        assert_eq!(pages(&["", "a", "b"]).await, Ok(vec![0, 1, 2]));
        assert_eq!(pages(&["", "a", "a"]).await, Ok(vec![0, 1]));
    }
}
