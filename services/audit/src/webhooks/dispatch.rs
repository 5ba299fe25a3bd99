//! The dispatcher: attempts due deliveries, all subscriptions at once and each one's in
//! order, and records every outcome.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::TransactionTrait;

use pim_proto::events::v1 as ev;
use pim_runtime::db::{Db, now_ms};
use pim_runtime::events::{Outbox, envelope, streams};

use super::store::{self, DEAD, DELIVERED, Delivery, PENDING};
use super::{GIVE_UP_AFTER_MS, Keys, http, next_attempt};

/// How long one attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed delivery is another replica's to leave alone.
const LEASE_MS: i64 = 60_000;
/// What one attempt sends: its content type, headers and body.
type Signed = (&'static str, Vec<(&'static str, String)>, String);

/// How many deliveries one round attempts at most.
const ROUND: u64 = 64;

/// What became of one attempt.
pub(crate) enum Attempted {
    /// Not made: another process holds it, or its subscription is gone or suspended.
    Skipped,
    Delivered,
    /// The receiver did not take it (or the outcome could not be written under the claim).
    Failed,
}

#[derive(Clone)]
pub(crate) struct Dispatcher {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    /// The signing secrets' source; without one nothing is sent (and nothing can be created).
    pub(crate) keys: Option<Keys>,
    /// Woken when deliveries are queued, so they leave at once.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Signs what Shared Signals streams push; without it they send nothing.
    pub(crate) ssf: Option<crate::ssf::Transmitter>,
}

impl Dispatcher {
    /// Delivers until `stop`. Each subscription with a due delivery gets a task of its own
    /// that sends its queue in order while the receiver takes it ([`Self::drain`]), so a
    /// receiver that hangs or fails holds back only its own queue. Looked over at once when
    /// woken (a record kept, a queue drained), else every half second, at most every 20 ms.
    pub(crate) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let draining: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        loop {
            match store::due(&self.db, now_ms(), ROUND).await {
                Ok(due) => {
                    for d in due {
                        let fresh = draining
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(d.subscription_id.clone());
                        if !fresh {
                            continue;
                        }
                        let (dispatcher, draining) = (self.clone(), draining.clone());
                        tokio::spawn(async move {
                            let subscription = d.subscription_id.clone();
                            dispatcher.drain(d).await;
                            draining.lock().unwrap_or_else(|e| e.into_inner()).remove(&subscription);
                            dispatcher.wake.notify_one();
                        });
                    }
                }
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "webhook deliveries failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends one subscription's queue in order, starting with its due head, while the receiver
    /// takes it: stops when the queue is empty, its head is not due, or an attempt failed (the
    /// retry waits for its time).
    async fn drain(&self, first: Delivery) {
        let mut next = Some(first);
        while let Some(d) = next.take() {
            let subscription = d.subscription_id.clone();
            let span = tracing::info_span!(
                "webhook delivery",
                delivery = %d.id,
                subscription = %d.subscription_id,
                event_type = %d.event_type,
            );
            let attempted = tracing::Instrument::instrument(self.attempt(d, now_ms()), span).await;
            match attempted {
                Ok(Attempted::Delivered) => match store::head(&self.db, &subscription, now_ms()).await {
                    Ok(head) => next = head,
                    Err(err) => tracing::warn!(error = %format!("{err:#}"), "reading a webhook queue failed"),
                },
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "a webhook delivery failed to be recorded"),
            }
        }
    }

    /// One round as of `now`, awaited: every due head attempted once, at once; how many were
    /// attempted (for a test to move time; `run` drains instead).
    pub(crate) async fn round(&self, now: i64) -> anyhow::Result<usize> {
        let due = store::due(&self.db, now, ROUND).await?;
        let attempts = futures::future::join_all(due.into_iter().map(|d| self.attempt(d, now))).await;
        let mut attempted = 0;
        for outcome in attempts {
            attempted += usize::from(!matches!(outcome?, Attempted::Skipped));
        }
        Ok(attempted)
    }

    /// What an attempt sends: a webhook's CloudEvent with its Standard Webhooks headers, or a
    /// stream's SET, signed now.
    fn signed(&self, subscription: &super::Subscription, d: &Delivery, now: i64) -> Result<Signed, String> {
        if let Some(stream) = &subscription.stream {
            let transmitter = self
                .ssf
                .as_ref()
                .ok_or("no SSF signing key (PIM_SECRETS_KEY) to sign with")?;
            let set = transmitter
                .sign(&d.body, &stream.audience, &d.id, now)
                .map_err(|e| format!("{e:#}"))?;
            return Ok((
                "application/secevent+jwt",
                vec![("accept", "application/json".into())],
                set,
            ));
        }
        let keys = self
            .keys
            .as_ref()
            .ok_or("no signing key (PIM_SECRETS_KEY) to sign with")?;
        let timestamp = now / 1000;
        let headers = vec![
            ("webhook-id", d.event_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                keys.signature(subscription, &d.event_id, timestamp, &d.body, now),
            ),
        ];
        Ok(("application/json", headers, d.body.clone()))
    }

    /// One attempt of a due delivery, unless another process took it.
    async fn attempt(&self, d: Delivery, now: i64) -> anyhow::Result<Attempted> {
        let lease = now + LEASE_MS;
        if !store::claim(&self.db, &d, now, lease).await? {
            return Ok(Attempted::Skipped);
        }
        let Some(subscription) = store::subscription(&self.db, &d.subscription_id).await? else {
            // Queued by an ingest that read the subscription just before it was deleted.
            store::forget_delivery(&self.db, &d.id).await?;
            return Ok(Attempted::Skipped);
        };
        if subscription.suspended_at.is_some() {
            // Queued by an ingest that read the subscription just before its suspension.
            let given_up = "given up with an earlier delivery (the subscription was suspended)";
            store::attempted(&self.db, &d.id, lease, DEAD, 0, given_up, now, now).await?;
            return Ok(Attempted::Skipped);
        }
        let started = std::time::Instant::now();
        let outcome = match self.signed(&subscription, &d, now) {
            Err(error) => Err(error),
            Ok((content_type, headers, body)) => tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                http::post(&subscription.url, content_type, &headers, body),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()))),
        };
        let after = now + started.elapsed().as_millis() as i64;
        let (code, error) = match outcome {
            Ok(code) if (200..300).contains(&code) => {
                if !store::attempted(&self.db, &d.id, lease, DELIVERED, code.into(), "", after, after).await? {
                    tracing::warn!(delivery = %d.id, "delivered after its claim ran out (another process may send it again)");
                    return Ok(Attempted::Failed);
                }
                let metrics = pim_runtime::metrics::metrics();
                metrics.webhook_attempts.with_label_values(&["delivered"]).inc();
                metrics
                    .webhook_delivery_seconds
                    .observe((after - d.created_at).max(0) as f64 / 1000.0);
                tracing::info!(delivery = %d.id, event_type = %d.event_type, attempts = d.attempts + 1, "webhook delivered");
                return Ok(Attempted::Delivered);
            }
            Ok(code) => (i32::from(code), format!("the receiver answered HTTP {code}")),
            Err(error) => (0, error),
        };
        let attempts = d.attempts + 1;
        // 24 hours from its first attempt: however long it waited behind others, each
        // delivery gets its full day of retries.
        let since = d.first_attempt_at.unwrap_or(now);
        if after - since < GIVE_UP_AFTER_MS {
            let next = next_attempt(after, attempts);
            if !store::attempted(&self.db, &d.id, lease, PENDING, code, &error, next, after).await? {
                return Ok(Attempted::Failed);
            }
            pim_runtime::metrics::metrics()
                .webhook_attempts
                .with_label_values(&["retry"])
                .inc();
            tracing::warn!(delivery = %d.id, attempts, %error, "webhook delivery failed; retrying");
            return Ok(Attempted::Failed);
        }
        // 24 hours of failures: given up, with what waited behind it, and the subscription
        // suspended until someone resumes it (so a dead receiver does not fill the queue, nor
        // feed alerts about itself back into it); alerting hears of it.
        let txn = self.db.begin().await?;
        if !store::attempted(&txn, &d.id, lease, DEAD, code, &error, after, after).await? {
            return Ok(Attempted::Failed);
        }
        let abandoned = store::suspend(&txn, &subscription.id, after).await?;
        let event = ev::WebhookDeadLettered {
            subscription_id: subscription.id.clone(),
            url: subscription.url_shown(),
            delivery_id: d.id.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            attempts,
            last_error: error.clone(),
            abandoned: i32::try_from(abandoned).unwrap_or(i32::MAX),
        };
        let dead = envelope("pim.audit", "WebhookDeadLettered", &subscription.id, &event);
        self.outbox.enqueue(&txn, streams::AUDIT, &dead).await?;
        txn.commit().await?;
        self.outbox.wake();
        pim_runtime::metrics::metrics()
            .webhook_attempts
            .with_label_values(&["dead"])
            .inc();
        tracing::error!(delivery = %d.id, attempts, abandoned, %error, "webhook delivery given up after 24 h; subscription suspended");
        Ok(Attempted::Failed)
    }
}
