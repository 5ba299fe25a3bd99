//! Accepting connections an outsider cannot hold open for nothing. A client speaks first
//! (TLS's hello, HTTP/2's 24-byte preface, an HTTP request line and its headers): a
//! connection that has not sent its first [`FIRST_BYTES`] bytes [`FIRST_BYTES_WITHIN`] after it
//! was accepted is closed, however they trickle in ([`Prompt`]). Accepting never waits on a
//! client, and an accept that fails (out of file descriptors) waits a moment before the next.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use crate::config::TlsConfig;

/// How long a stopping server lets open calls finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long an accepted connection has to send its first [`FIRST_BYTES`].
pub const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

/// What every client sends at once: HTTP/2's preface is 24 bytes, a TLS hello and an HTTP/1.1
/// request (with its Host header) are longer.
pub const FIRST_BYTES: usize = 24;

/// How long accepting waits after an accept failed, so that running out of file descriptors
/// does not spin a core (nor write a log line a microsecond).
const AFTER_A_FAILED_ACCEPT: Duration = Duration::from_millis(100);

/// Accepted connections, as a server takes them.
pub type Accepted = Pin<Box<dyn Stream<Item = io::Result<Prompt<Wire>>> + Send>>;

/// What `listener` accepts, sending at once (no Nagle delay on small answers) and with TCP
/// keepalive (a peer that vanished is noticed).
fn tcp(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// The connections `listener` accepts, each to send its first [`FIRST_BYTES`] within
/// `within`. The listener closes when the stream is dropped.
pub fn accepting(listener: TcpListener, within: Duration) -> Accepted {
    Box::pin(tcp(listener).then(move |accepted| async move {
        match accepted {
            Ok(connection) => Ok(Prompt::new(Wire::Plain(connection), FIRST_BYTES, within)),
            Err(err) => {
                tokio::time::sleep(AFTER_A_FAILED_ACCEPT).await;
                Err(err)
            }
        }
    }))
}

/// The TLS connections `listener` accepts: each handshake done within `within` on a task of
/// its own (so a slow one holds up no one), then the first [`FIRST_BYTES`] of what the client
/// says inside TLS due within `within` again. This process ends TLS itself so that a client
/// that finishes its handshake and then says too little is given up too.
pub fn accepting_tls(listener: TcpListener, acceptor: TlsAcceptor, within: Duration) -> Accepted {
    let (ready, taken) = tokio::sync::mpsc::channel(64);
    let mut accepted = tcp(listener);
    tokio::spawn(async move {
        loop {
            let connection = tokio::select! {
                next = accepted.next() => next,
                // The server stopped taking connections: the listener closes with this task.
                () = ready.closed() => return,
            };
            match connection {
                Some(Ok(connection)) => {
                    let (ready, acceptor) = (ready.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(within, acceptor.accept(connection)).await {
                            Ok(Ok(tls)) => {
                                let tls = Prompt::new(Wire::Tls(Box::new(tls)), FIRST_BYTES, within);
                                drop(ready.send(Ok(tls)).await);
                            }
                            Ok(Err(err)) => tracing::debug!(error = %err, "a TLS handshake failed"),
                            Err(_) => tracing::debug!("a TLS handshake took too long: closed"),
                        }
                    });
                }
                Some(Err(err)) => {
                    tokio::time::sleep(AFTER_A_FAILED_ACCEPT).await;
                    if ready.send(Err(err)).await.is_err() {
                        return;
                    }
                }
                None => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(taken))
}

/// Ends TLS with the configured certificate and key (none configured: plaintext), asking
/// clients for a certificate `client_ca` signed when one is configured; HTTP/2 only.
pub fn tls_acceptor(tls: &TlsConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let certs = |path: &std::path::Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .with_context(|| format!("reading TLS certificate {}", path.display()))
    };
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?;
    let builder = match &tls.client_ca {
        // The bearer token is still required and checked on every call.
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for root in certs(ca).with_context(|| format!("reading client CA certificate {}", ca.display()))? {
                roots.add(root).context("adding the client CA certificate")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("configuring client certificates")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).context("configuring TLS")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// An accepted connection: plaintext, or TLS this process ended.
pub enum Wire {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Wire {
    fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(tcp) => tcp,
            Wire::Tls(tls) => tls.get_ref().0,
        }
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr()
    }
}

impl AsyncRead for Wire {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Wire::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Wire::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Wire::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Wire::Plain(tcp) => tcp.is_write_vectored(),
            Wire::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Wire::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Wire::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A gRPC handler sees the client's address, as over plain TCP.
impl Connected for Wire {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

/// A connection that must send its first bytes in time: a read still short of them once the
/// time is up fails (TimedOut), which ends the connection.
pub struct Prompt<T> {
    inner: T,
    /// How many of the first bytes are still to come.
    owed: usize,
    /// Until when they may come; none once they came.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Prompt<T> {
    pub fn new(inner: T, first_bytes: usize, within: Duration) -> Self {
        Self {
            inner,
            owed: first_bytes,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prompt<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.owed = this.owed.saturating_sub(buf.filled().len() - before);
                if this.owed == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let late = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if !late {
                    return Poll::Pending;
                }
                tracing::debug!("a connection sent too little in time: closed");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent too little in time",
                )))
            }
            failed => failed,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prompt<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The peer a gRPC handler sees is the connection's.
impl<T: Connected> Connected for Prompt<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Serves `router` over HTTP/1.1 on `listener` until `shutdown` completes, then
/// lets open requests finish for [`SHUTDOWN_GRACE`] at most. Besides the
/// first bytes' wait, a request's head must arrive within [`FIRST_BYTES_WITHIN`] (hyper's
/// header read timeout, which `axum::serve` leaves off: a client sending its headers a byte at
/// a time held a connection for ever). Handlers see the peer's address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_http_within(listener, router, shutdown, FIRST_BYTES_WITHIN).await
}

async fn serve_http_within(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send,
    within: Duration,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut accepted = accepting(listener, within);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(within);
    let open = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let connection = tokio::select! {
            next = accepted.next() => next,
            () = &mut shutdown => break,
        };
        let connection = match connection {
            Some(Ok(connection)) => connection,
            // Said once a minute at most: out of file descriptors, it fails again and again.
            Some(Err(err)) => {
                if last_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    last_warned = Some(tokio::time::Instant::now());
                }
                continue;
            }
            None => break,
        };
        let Ok(peer) = connection.get_ref().peer_addr() else {
            continue;
        };
        let service = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)))
            .map_request(|request: axum::http::Request<hyper::body::Incoming>| request.map(axum::body::Body::new));
        let service = hyper_util::service::TowerToHyperService::new(service);
        let served = open.watch(builder.serve_connection(TokioIo::new(connection), service));
        tokio::spawn(async move {
            if let Err(err) = served.await {
                tracing::debug!(error = %err, "an HTTP connection ended with an error");
            }
        });
    }
    drop(accepted);
    if tokio::time::timeout(SHUTDOWN_GRACE, open.shutdown()).await.is_err() {
        tracing::warn!(
            "HTTP requests still open {:?} after the server was told to stop: closed",
            SHUTDOWN_GRACE
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    type Read = Result<Vec<u8>, (std::io::ErrorKind, Vec<u8>)>;

    /// Reads as a server reads: all there is, until it fails or ends.
    async fn read_all(mut connection: super::Prompt<super::Wire>) -> Read {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match connection.read(&mut buf).await {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(err) => return Err((err.kind(), got)),
            }
        }
    }

    /// [`read_all`], given up (and failing the test) after 5 s.
    async fn in_time(connection: super::Prompt<super::Wire>) -> Result<Read, tokio::time::error::Elapsed> {
        tokio::time::timeout(Duration::from_secs(5), read_all(connection)).await
    }

    /// A TLS client that finishes its handshake and then says too little is given up as a
    /// plaintext one is, and one that never starts its handshake is never handed on.
    #[tokio::test]
    async fn a_tls_client_that_says_too_little_after_its_handshake_is_given_up() {
        use std::sync::Arc;
        let dir = std::env::temp_dir().join(crate::testing::unique("listen_tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let tls = crate::config::TlsConfig {
            cert: Some(cert),
            key: Some(key),
            ..Default::default()
        };
        let acceptor = super::tls_acceptor(&tls).unwrap().expect("a certificate is configured");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = super::accepting_tls(listener, acceptor, Duration::from_millis(300));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut client = connector.connect(name, tcp).await.unwrap();
        client.write_all(b"P").await.unwrap();
        client.flush().await.unwrap();
        let served = tokio::time::timeout(Duration::from_secs(2), accepted.next())
            .await
            .expect("handed on once its handshake is done")
            .unwrap()
            .unwrap();
        let (kind, got) = in_time(served).await.expect("given up").expect_err("too little came");
        assert_eq!((kind, got), (std::io::ErrorKind::TimedOut, b"P".to_vec()));
        assert!(
            tokio::time::timeout(Duration::from_millis(500), accepted.next())
                .await
                .is_err(),
            "the one that never started its handshake is never handed on"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A connection that sends less than its first bytes in time, silent or a byte at a
    /// time, fails to be read once the time is up; one that sent them is read as long as it
    /// lasts. Accepting waits for neither.
    #[tokio::test]
    async fn a_connection_that_sends_too_little_in_time_is_given_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = super::accepting(listener, Duration::from_millis(300));
        let mut next = async || {
            let connection = tokio::time::timeout(Duration::from_millis(200), accepted.next());
            connection.await.expect("accepted at once").unwrap().unwrap()
        };
        let _silent = TcpStream::connect(addr).await.unwrap();
        let silent = next().await;
        let mut trickling = TcpStream::connect(addr).await.unwrap();
        trickling.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let trickled = next().await;
        let mut speaking = TcpStream::connect(addr).await.unwrap();
        speaking.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let spoke = next().await;

        let (kind, _) = in_time(silent)
            .await
            .expect("given up")
            .expect_err("nothing came in time");
        assert_eq!(kind, std::io::ErrorKind::TimedOut);
        let (kind, got) = in_time(trickled)
            .await
            .expect("given up")
            .expect_err("too little came in time");
        assert_eq!((kind, got.len()), (std::io::ErrorKind::TimedOut, 14));
        // The preface came: the connection is read past the time, until its client ends it.
        let reading = tokio::spawn(read_all(spoke));
        tokio::time::sleep(Duration::from_millis(500)).await;
        speaking.write_all(b"more").await.unwrap();
        drop(speaking);
        assert_eq!(reading.await.unwrap().unwrap().len(), 28);
    }

    /// A request whose head trickles in is cut off after the wait; a whole one is answered,
    /// its handler seeing the peer's address.
    #[tokio::test]
    async fn a_request_head_sent_too_slowly_is_cut_off() {
        use axum::extract::ConnectInfo;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| async move { peer.to_string() };
        let router = axum::Router::new().route("/", axum::routing::get(peer));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve_http_within(
            listener,
            router,
            async move { drop(stopped.await) },
            Duration::from_millis(300),
        ));

        let mut whole = TcpStream::connect(addr).await.unwrap();
        let request = "GET / HTTP/1.1\r\nhost: pim\r\nconnection: close\r\n\r\n";
        whole.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        whole.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&whole.local_addr().unwrap().to_string()), "{answer}");

        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: p").await.unwrap();
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(5), async {
            // A byte every 100 ms keeps it busy but never finishes the head.
            loop {
                tokio::select! {
                    read = slow.read_to_end(&mut rest) => return read.map(drop),
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if slow.write_all(b"i").await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        })
        .await;
        assert!(cut.is_ok(), "the server closed the connection");
        assert!(!String::from_utf8_lossy(&rest).contains(" 200 "), "{rest:?}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
