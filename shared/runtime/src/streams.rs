//! Server streams that end once their caller could no longer open them: a stream outlives the
//! call that opened it, so the token and the permission it was opened with are weighed again
//! before each item it sends and every [`RECHECK`] while it is quiet. A token that expired or
//! was revoked (signed out, disabled, a secret rotated) ends it UNAUTHENTICATED; a permission
//! taken away ends it with the service's refusal (PERMISSION_DENIED). And a server that starts
//! to stop ends its streams UNAVAILABLE, so that their clients reconnect (to another replica,
//! or once it is back) instead of holding the shutdown back while they stay.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::{Request, Status};

use crate::auth::{Caller, Stopping, VerifiedBy};
use crate::grpc::BoxStream;

/// How often a quiet stream weighs its caller again.
pub const RECHECK: Duration = Duration::from_secs(10);

/// What a stream's caller is weighed by again: taken from the request that opens it.
pub struct Guard {
    caller: Option<Arc<Caller>>,
    verifier: Option<VerifiedBy>,
    stopping: Option<Stopping>,
}

impl Guard {
    pub fn of<R>(request: &Request<R>) -> Self {
        Self {
            caller: request.extensions().get::<Arc<Caller>>().cloned(),
            verifier: request.extensions().get::<VerifiedBy>().cloned(),
            stopping: request.extensions().get::<Stopping>().cloned(),
        }
    }

    /// `stream`, ended as soon as the caller's token no longer verifies or `still_allowed`
    /// (the service's own permission check, made again) refuses; the refusal is its last item.
    pub fn wrap<T, F, Fut>(self, stream: BoxStream<T>, still_allowed: F) -> BoxStream<T>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send,
    {
        guarded(self, stream, still_allowed)
    }
}

fn guarded<T, F, Fut>(guard: Guard, stream: BoxStream<T>, still_allowed: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let Guard {
        caller,
        verifier,
        stopping,
    } = guard;
    tokio::spawn(async move {
        let mut stream = stream;
        let mut stopping = stopping.map(|Stopping(stopping)| stopping);
        let stops = async move {
            match stopping.as_mut() {
                Some(stopping) => drop(stopping.wait_for(|stopped| *stopped).await),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stops);
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        loop {
            let item = tokio::select! {
                item = stream.next() => match item {
                    Some(item) => Some(item),
                    None => return,
                },
                _ = recheck.tick() => None,
                _ = tx.closed() => return,
                () = &mut stops => {
                    let _ = tx.send(Err(Status::unavailable("the server is stopping: reconnect"))).await;
                    return;
                }
            };
            if let Err(refused) = weigh(caller.as_deref(), verifier.as_ref(), &still_allowed).await {
                let _ = tx.send(Err(refused)).await;
                return;
            }
            if let Some(item) = item
                && tx.send(item).await.is_err()
            {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn weigh<F, Fut>(caller: Option<&Caller>, verifier: Option<&VerifiedBy>, still_allowed: &F) -> Result<(), Status>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    if let (Some(caller), Some(VerifiedBy(verifier))) = (caller, verifier) {
        verifier.verify(caller.token()).await.map_err(Status::from)?;
    }
    still_allowed().await
}
