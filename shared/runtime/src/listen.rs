//! Accepting connections an outsider cannot hold open for nothing. A client speaks first
//! (TLS's hello, HTTP/2's preface, an HTTP request line): a connection that has sent nothing
//! [`FIRST_BYTES_WITHIN`] after it was accepted is closed. Each accepted connection waits on
//! its own task, so a flood of silent ones never holds up the next client.

use std::io;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

/// How long a stopping server lets open calls finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long an accepted connection may stay silent before it is closed.
pub const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

/// The connections `listener` accepts that spoke within `within`, sending at once (no Nagle
/// delay on small answers) and with TCP keepalive (a peer that vanished is noticed). The
/// listener closes when the stream is dropped.
pub fn spoken_within(listener: TcpListener, within: Duration) -> ReceiverStream<io::Result<TcpStream>> {
    let (ready, stream) = tokio::sync::mpsc::channel(64);
    let mut accepted = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    tokio::spawn(async move {
        loop {
            let connection = tokio::select! {
                next = accepted.next() => next,
                // The server stopped taking connections: the listener closes with this task.
                () = ready.closed() => None,
            };
            match connection {
                Some(Ok(connection)) => {
                    let ready = ready.clone();
                    tokio::spawn(async move {
                        let mut first = [0u8; 1];
                        match tokio::time::timeout(within, connection.peek(&mut first)).await {
                            Ok(Ok(n)) if n > 0 => drop(ready.send(Ok(connection)).await),
                            // Closed, failed, or silent for too long: dropped, so closed.
                            _ => tracing::debug!("a connection sent nothing in time: closed"),
                        }
                    });
                }
                // An accept that failed (out of file descriptors, say): the server logs it
                // and goes on accepting.
                Some(Err(err)) => {
                    if ready.send(Err(err)).await.is_err() {
                        return;
                    }
                }
                None => return,
            }
        }
    });
    ReceiverStream::new(stream)
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

    let mut accepted = spoken_within(listener, within);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(within);
    let open = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let connection = tokio::select! {
            next = accepted.next() => next,
            () = &mut shutdown => break,
        };
        let connection = match connection {
            Some(Ok(connection)) => connection,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                continue;
            }
            None => break,
        };
        let Ok(peer) = connection.peer_addr() else { continue };
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

    /// A silent connection is closed after the wait, and a client that speaks is served
    /// meanwhile, though it came after.
    #[tokio::test]
    async fn a_silent_connection_is_closed_and_holds_up_no_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = super::spoken_within(listener, Duration::from_millis(300));
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut speaking = TcpStream::connect(addr).await.unwrap();
        speaking.write_all(b"PRI").await.unwrap();
        let served = tokio::time::timeout(Duration::from_millis(200), accepted.next())
            .await
            .expect("the speaking client is handed on before the silent one's wait ends")
            .unwrap()
            .unwrap();
        assert_eq!(served.peer_addr().unwrap(), speaking.local_addr().unwrap());
        // The silent one is closed by the server (end of stream), never handed on.
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 8]))
            .await
            .expect("closed after the wait");
        assert_eq!(read.unwrap(), 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), accepted.next())
                .await
                .is_err(),
            "nothing else was handed on"
        );
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
