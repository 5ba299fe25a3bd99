//! The one HTTP call webhooks and pushed SSF streams make: a POST of a body, over TLS (the system's roots) for
//! https://, answering the receiver's status code.

use std::sync::{Arc, OnceLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// POSTs `body` of `content_type` to `url` with `headers`; the receiver's HTTP status, or
/// why none came.
pub async fn post(url: &str, content_type: &str, headers: &[(&str, String)], body: String) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
    let host = uri
        .host()
        .ok_or("no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
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
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    if https {
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| "not a TLS server name".to_owned())?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(tls, request).await
    } else {
        send(tcp, request).await
    }
}

async fn send<IO>(io: IO, request: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"));
    // Only the status matters: the body is never read (a receiver cannot make PIM buffer it),
    // and the connection is closed.
    let status = response.map(|r| r.status().as_u16());
    connection.abort();
    status
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
