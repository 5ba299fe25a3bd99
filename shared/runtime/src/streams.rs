//! Server streams that end once their caller could no longer open them: a stream outlives the
//! call that opened it, so the token and the permission it was opened with are weighed again
//! before each item it sends and every [`RECHECK`] while it is quiet. A token that expired or
//! was revoked (signed out, disabled, a secret rotated) ends it UNAUTHENTICATED; a permission
//! taken away ends it with the service's refusal (PERMISSION_DENIED). A check that cannot be
//! made now (identity or assignment unreachable) ends it only once it has failed for
//! [`UNSURE_FOR`], so a moment's outage does not cut every watcher off. And a server that starts
//! to stop ends its streams UNAVAILABLE, so that their clients reconnect (to another replica,
//! or once it is back) instead of holding the shutdown back while they stay.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::{Request, Status};

use crate::auth::{Caller, Rechecks};
use crate::grpc::BoxStream;

/// How often a quiet stream weighs its caller again.
pub const RECHECK: Duration = Duration::from_secs(10);

/// The most streams one principal may have open in one process (counted by the auth layer).
pub use crate::auth::MAX_OPEN_STREAMS as MAX_OPEN;

/// What a stream's caller is weighed by again: taken from the request that opens it.
pub struct Guard {
    caller: Option<Arc<Caller>>,
    rechecks: Option<Rechecks>,
}

impl Guard {
    pub fn of<R>(request: &Request<R>) -> Self {
        Self {
            caller: request.extensions().get::<Arc<Caller>>().cloned(),
            rechecks: request.extensions().get::<Rechecks>().cloned(),
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
    let Guard { caller, rechecks } = guard;
    let opened = match (&caller, &rechecks) {
        (Some(caller), Some(rechecks)) => match rechecks.with.open.open(&caller.principal_id) {
            Some(opened) => Some(opened),
            None => {
                let refused = Status::resource_exhausted(format!(
                    "you have {MAX_OPEN} streams open here, the most one principal may: close one first"
                ));
                return Box::pin(tokio_stream::once(Err(refused)));
            }
        },
        _ => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        // Counted while the stream lasts.
        let _opened = opened;
        let mut stream = stream;
        let mut stopping = rechecks.as_ref().and_then(|r| r.with.stopping.clone());
        let stops = async move {
            match stopping.as_mut() {
                Some(stopping) => drop(stopping.wait_for(|stopped| *stopped).await),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stops);
        let stopped = || Err(Status::unavailable("the server is stopping: reconnect"));
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Since when the caller could not be weighed (identity or assignment unreachable).
        let mut unsure_since: Option<tokio::time::Instant> = None;
        loop {
            let item = tokio::select! {
                item = stream.next() => match item {
                    Some(item) => Some(item),
                    None => return,
                },
                _ = recheck.tick() => None,
                _ = tx.closed() => return,
                () = &mut stops => {
                    // The last word if there is room for it; a client that stopped reading
                    // gets the stream's end.
                    let _ = tx.try_send(stopped());
                    return;
                }
            };
            match weigh(caller.as_deref(), rechecks.as_ref(), &still_allowed).await {
                Ok(()) => unsure_since = None,
                Err(refused) if is_definite(&refused) => {
                    // A permission taken away is a refusal on record, as a refused call is.
                    if let (Some(rechecks), Some(caller)) = (&rechecks, &caller)
                        && let Some(refusals) = &rechecks.with.refusals
                        && refused.code() == tonic::Code::PermissionDenied
                    {
                        refusals.refused(&caller.actor(), &rechecks.method, &refused, "").await;
                    }
                    let _ = tx.try_send(Err(refused));
                    return;
                }
                // A check that cannot be made now ends the stream only once it has failed
                // for UNSURE_FOR: a moment's outage does not cut every watcher off.
                Err(unsure) => {
                    let since = *unsure_since.get_or_insert_with(tokio::time::Instant::now);
                    tracing::warn!(error = %unsure.message(), "a stream's caller could not be weighed again");
                    if since.elapsed() >= UNSURE_FOR {
                        let _ = tx.try_send(Err(unsure));
                        return;
                    }
                }
            }
            if let Some(item) = item {
                tokio::select! {
                    sent = tx.send(item) => if sent.is_err() { return },
                    () = &mut stops => {
                        let _ = tx.try_send(stopped());
                        return;
                    }
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// How long a stream goes on while its caller cannot be weighed again.
pub const UNSURE_FOR: Duration = Duration::from_secs(60);

/// A refusal that says no (rather than "cannot tell now").
fn is_definite(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
    )
}

async fn weigh<F, Fut>(caller: Option<&Caller>, rechecks: Option<&Rechecks>, still_allowed: &F) -> Result<(), Status>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    if let (Some(caller), Some(rechecks)) = (caller, rechecks) {
        rechecks
            .with
            .verifier
            .verify(caller.token())
            .await
            .map_err(Status::from)?;
    }
    still_allowed().await
}
