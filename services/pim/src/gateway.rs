//! `pim serve gateway`: one address for the distributed shape, as `pim up` gives locally. It
//! forwards each call, by its gRPC service path, to the service that serves it, untouched
//! (the bearer token included: each service still authenticates and authorizes every call),
//! answers `grpc.health.v1` by asking the service that owns the named service (the empty
//! name is the gateway itself, SERVING while it serves), and serves reflection for all of
//! them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::Service;

use pim_runtime::Config;
use pim_runtime::grpc;

use crate::host::ServiceName;

/// The service each gRPC service name belongs to, and a channel to it.
#[derive(Clone)]
struct Upstreams {
    by_name: Arc<HashMap<&'static str, (ServiceName, Channel)>>,
}

impl Upstreams {
    fn new(config: &Config) -> anyhow::Result<Self> {
        use pim_proto::service_names as names;
        let mut by_name = HashMap::new();
        for (service, url, served) in [
            (ServiceName::Identity, &config.identity_url, names::IDENTITY),
            (ServiceName::Assignment, &config.assignment_url, names::ASSIGNMENT),
            (ServiceName::Approval, &config.approval_url, names::APPROVAL),
            (ServiceName::Alerting, &config.alerting_url, names::ALERTING),
            (ServiceName::Audit, &config.audit_url, names::AUDIT),
        ] {
            let setting = format!("PIM_{}_URL", service.as_str().to_uppercase());
            let url = url
                .as_deref()
                .with_context(|| format!("the gateway needs {setting}: where the {service} service listens"))?;
            let channel = grpc::channel(url, &config.tls).with_context(|| setting.clone())?;
            for name in served {
                by_name.insert(*name, (service, channel.clone()));
            }
        }
        Ok(Self {
            by_name: Arc::new(by_name),
        })
    }

    /// The upstream of a call's path (`/pim.identity.v1.AuthService/SignIn`).
    fn of_path(&self, path: &str) -> Option<&(ServiceName, Channel)> {
        self.by_name.get(crate::host::service_of(path))
    }
}

/// Forwards every call the gateway does not answer itself to its service.
#[derive(Clone)]
struct Forward(Upstreams);

type Reply = http::Response<axum::body::Body>;

impl Service<http::Request<axum::body::Body>> for Forward {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        let Some((service, channel)) = self.0.of_path(request.uri().path()).cloned() else {
            let path = request.uri().path().to_owned();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no PIM service serves {path}")).into_http::<axum::body::Body>())
            });
        };
        let mut channel = channel;
        let mut request = request;
        forwarded_for(&mut request);
        let (path, started) = (request.uri().path().to_owned(), std::time::Instant::now());
        Box::pin(async move {
            let request = request.map(tonic::body::Body::new);
            let answer = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(e) => Err(e),
            };
            let answer = match answer {
                Ok(response) => response.map(axum::body::Body::new),
                Err(e) => {
                    tracing::warn!(%service, error = %e, "gateway: service unreachable");
                    // It may have gone while the call was on its way: what it changed, if it
                    // did, stays changed.
                    Status::unavailable(format!(
                        "the {service} service is unreachable; try again (if it went during the call, \
                         a change asked for may have been made: look before asking again)"
                    ))
                    .into_http::<axum::body::Body>()
                }
            };
            // Counted as the services count theirs (`pim_rpc_requests_total`), from the gateway.
            pim_runtime::metrics::record_rpc(&path, pim_runtime::metrics::answered_code(&answer), started.elapsed());
            Ok(answer)
        })
    }
}

/// Adds the peer the gateway took the call from to `x-forwarded-for` (after what earlier
/// proxies put there), so a service that trusts the gateway (PIM_TRUSTED_PROXIES) counts
/// sign-in limits and audits by the client's address, not by the gateway's.
fn forwarded_for<B>(request: &mut http::Request<B>) {
    // Over TLS too (this process ends it: `listen::Wire`).
    use tonic::transport::server::TcpConnectInfo;
    let peer = request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr());
    let headers = request.headers_mut();
    // Without the caller's address, pass no claim on: a client's own header would otherwise
    // reach the services as if the gateway had vouched for it.
    let Some(peer) = peer else {
        headers.remove(grpc::FORWARDED_FOR);
        return;
    };
    let earlier: Vec<String> = headers
        .get_all(grpc::FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let mut hops = earlier.join(", ");
    if !hops.is_empty() {
        hops.push_str(", ");
    }
    hops.push_str(&peer.ip().to_canonical().to_string());
    match http::HeaderValue::from_str(&hops) {
        Ok(value) => {
            headers.insert(grpc::FORWARDED_FOR, value);
        }
        Err(_) => {
            headers.remove(grpc::FORWARDED_FOR);
        }
    }
}

/// `grpc.health.v1` for the whole suite: each PIM service name is asked of its service.
struct SuiteHealth(Upstreams);

impl SuiteHealth {
    async fn status_of(channel: &Channel, service: &str) -> ServingStatus {
        let mut request = Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        request.set_timeout(std::time::Duration::from_secs(5));
        match HealthClient::new(channel.clone()).check(request).await {
            Ok(answer) => answer.into_inner().status(),
            Err(_) => ServingStatus::NotServing,
        }
    }
}

#[tonic::async_trait]
impl Health for SuiteHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        let status = if service.is_empty() {
            ServingStatus::Serving
        } else {
            let (_, channel) = self
                .0
                .by_name
                .get(service.as_str())
                .ok_or_else(|| Status::not_found(format!("no PIM service is named {service:?}")))?;
            Self::status_of(channel, &service).await
        };
        Ok(Response::new(HealthCheckResponse { status: status as i32 }))
    }

    type WatchStream = grpc::BoxStream<HealthCheckResponse>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.get_ref().service.clone();
        if service.is_empty() {
            // The gateway itself: serving while it answers.
            let serving = HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            };
            return Ok(Response::new(Box::pin(tokio_stream::iter([Ok(serving)]))));
        }
        let (_, channel) = self
            .0
            .by_name
            .get(service.as_str())
            .ok_or_else(|| Status::not_found(format!("watch a PIM service by name, not {service:?}")))?;
        let stream = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest { service })
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let upstreams = Upstreams::new(config)?;
    let router = axum::Router::new().fallback_service(Forward(upstreams.clone()));
    let routes = tonic::service::Routes::from(router).add_service(HealthServer::new(SuiteHealth(upstreams)));
    let routes = grpc::with_reflection(routes)?;
    // Calls forwarded to the services (streams among them) get the services' grace to end.
    let (shutdown, grace) = grpc::with_grace(shutdown);
    let incoming = grpc::incoming(listener, &config.tls)?;
    let serving = grpc::server_builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::select! {
        served = serving => served.context("serving the gateway"),
        () = grace => {
            tracing::warn!("calls still open {:?} after the gateway was told to stop: closed", grpc::SHUTDOWN_GRACE);
            Ok(())
        }
    }
}

/// `pim serve gateway`: binds `PIM_LISTEN_ADDR` and serves until ctrl-c or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    grpc::listen_for_shutdown();
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(address = %addr, "gateway serving");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(admin) = config.admin_addr {
        let (bound, _) = pim_runtime::metrics::serve_admin(admin, stopped).await?;
        tracing::info!(address = %bound, "serving metrics at /metrics");
    }
    serve(&config, listener, async move {
        grpc::shutdown_signal().await;
        let _ = stop.send(true);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that took the connection and answers nothing (a frozen process: the kernel
    /// still accepts) is found out: a call forwarded to it is answered UNAVAILABLE within
    /// seconds, instead of waiting for as long as it stays frozen.
    #[tokio::test]
    async fn a_service_that_answers_nothing_is_unavailable_within_seconds() {
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        tokio::spawn(async move {
            // Holds every connection, reads nothing, writes nothing.
            let mut held = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                held.push(connection);
            }
        });
        let config = Config::load(
            ["IDENTITY", "ASSIGNMENT", "APPROVAL", "ALERTING", "AUDIT"].map(|s| (format!("PIM_{s}_URL"), url.clone())),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { serve(&config, listener, std::future::pending()).await });
        let mut client = pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient::new(
            Channel::from_shared(gateway).unwrap().connect_lazy(),
        );
        // Only a guard against hanging for ever: the answer comes within about ten seconds.
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            client.list_requests(Request::new(Default::default())),
        )
        .await
        .expect("answered, not left waiting");
        let refused = answer.expect_err("nothing answered");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("assignment service is unreachable"),
            "{refused:?}"
        );
        assert!(
            pim_runtime::metrics::render().contains(
                r#"pim_rpc_requests_total{code="Unavailable",method="ListRequests",service="pim.assignment.v1.AssignmentService"} 1"#
            ),
            "the gateway counts what it answered"
        );
    }

    #[test]
    fn a_call_whose_caller_is_unknown_passes_no_forwarded_claim_on() {
        let mut request = http::Request::builder()
            .header("x-forwarded-for", "203.0.113.7")
            .body(())
            .unwrap();
        forwarded_for(&mut request);
        assert!(request.headers().get("x-forwarded-for").is_none());
    }
}
