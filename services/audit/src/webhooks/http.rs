//! The one HTTP call webhooks and pushed SSF streams make: a POST of a body, over TLS (the
//! system's roots) for https://, answering the receiver's status code; on a connection kept
//! open for the next one to the same origin ([`Sender`]).

use std::sync::{Arc, OnceLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// How much of an answer's body is read (and dropped) so its connection serves the next
/// request; a longer one closes the connection (a receiver cannot make PIM buffer it).
const BODY_LIMIT: usize = 64 * 1024;

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// POSTs one after another to one receiver, keeping the connection open between them (HTTP/1.1
/// keep-alive); a new one after any failure, or for another origin.
#[derive(Default)]
pub struct Sender {
    open: Option<(String, Connection, tokio::task::JoinHandle<()>)>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.close();
    }
}

impl Sender {
    /// POSTs `body` of `content_type` to `url` with `headers`; the receiver's HTTP status, or
    /// why none came.
    pub async fn post(
        &mut self,
        url: &str,
        reach: super::Reach,
        content_type: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<u16, String> {
        let (origin, request) = request(url, content_type, headers, body.clone())?;
        let reused = match &mut self.open {
            Some((open, connection, _)) if *open == origin => connection.ready().await.is_ok(),
            _ => false,
        };
        if reused {
            match self.send(request).await {
                Ok(status) => return Ok(status),
                // The receiver closed the kept connection before answering (it may not keep
                // connections open): once more, on a new one.
                Err(_) => self.close(),
            }
        }
        let (_, request) = self::request(url, content_type, headers, body)?;
        self.close();
        let (connection, task) = connect(url, reach).await?;
        self.open = Some((origin, connection, task));
        self.send(request).await
    }

    fn close(&mut self) {
        if let Some((_, _, task)) = self.open.take() {
            task.abort();
        }
    }

    /// Sends on the open connection: the answer's status. The connection is closed on any
    /// failure, or when the answer's body is too long to read.
    async fn send(&mut self, request: hyper::Request<Full<Bytes>>) -> Result<u16, String> {
        let Some((_, connection, _)) = self.open.as_mut() else {
            return Err("no connection".to_owned());
        };
        let response = match connection.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                self.close();
                return Err(format!("HTTP: {e}"));
            }
        };
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), BODY_LIMIT);
        if http_body_util::BodyExt::collect(body).await.is_err() {
            self.close();
        }
        Ok(status)
    }
}

/// The request for `url` and the origin it goes to.
fn request(
    url: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: String,
) -> Result<(String, hyper::Request<Full<Bytes>>), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
    let host = uri.host().ok_or("no host")?.to_owned();
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or_default(),
        uri.authority().map(|a| a.as_str()).unwrap_or(&host)
    );
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    let mut request = hyper::Request::post(path)
        .header(
            hyper::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(
            hyper::header::USER_AGENT,
            concat!("pim-webhooks/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
    Ok((origin, request))
}

/// A connection to `url`'s host: TCP to the first address its name resolves to that `reach`
/// allows (a name that resolves to a private address, even later, reaches nothing where only
/// public ones may), and TLS for https://.
async fn connect(url: &str, reach: super::Reach) -> Result<(Connection, tokio::task::JoinHandle<()>), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
    let host = uri
        .host()
        .ok_or("no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving: {e}"))?
        .collect();
    let allowed: Vec<std::net::SocketAddr> = addresses.iter().copied().filter(|a| reach.allows(a.ip())).collect();
    if allowed.is_empty() {
        return Err(if addresses.is_empty() {
            "resolving: no address".to_owned()
        } else {
            "refused: the address is not public (PIM_SSF_PRIVATE_RECEIVERS)".to_owned()
        });
    }
    let tcp = tokio::net::TcpStream::connect(&allowed[..])
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if https {
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| "not a TLS server name".to_owned())?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        handshake(tls).await
    } else {
        handshake(tcp).await
    }
}

async fn handshake<IO>(io: IO) -> Result<(Connection, tokio::task::JoinHandle<()>), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, task))
}

/// The TLS client settings: the system's trusted roots.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS settings: {e}"))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}
