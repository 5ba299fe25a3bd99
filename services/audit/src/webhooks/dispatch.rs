//! The dispatcher: attempts due deliveries, all subscriptions at once and each one's in
//! order, and records every outcome.

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
/// How many deliveries one round attempts at most.
const ROUND: u64 = 64;

#[derive(Clone)]
pub(crate) struct Dispatcher {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    /// The signing secrets' source; without one nothing is sent (and nothing can be created).
    pub(crate) keys: Option<Keys>,
    /// Woken when deliveries are queued, so they leave at once.
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

impl Dispatcher {
    /// Delivers until `stop`: at once when woken (a record kept, an attempt finished), else
    /// every half second. Each attempt runs on its own, so a receiver that hangs until the
    /// timeout holds back only its own queue.
    pub(crate) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match store::due(&self.db, now_ms(), ROUND).await {
                Ok(due) => {
                    for d in due {
                        let dispatcher = self.clone();
                        let span = tracing::info_span!(
                            "webhook delivery",
                            delivery = %d.id,
                            subscription = %d.subscription_id,
                            event_type = %d.event_type,
                        );
                        let attempt = async move {
                            if let Err(err) = dispatcher.attempt(d, now_ms()).await {
                                tracing::warn!(error = %format!("{err:#}"), "a webhook delivery failed to be recorded");
                            }
                            dispatcher.wake.notify_one();
                        };
                        tokio::spawn(tracing::Instrument::instrument(attempt, span));
                    }
                }
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "webhook deliveries failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One round as of `now`, awaited: every due delivery attempted at once; how many were
    /// (what `run` does without waiting, for a test to move time).
    pub(crate) async fn round(&self, now: i64) -> anyhow::Result<usize> {
        let due = store::due(&self.db, now, ROUND).await?;
        let attempts = futures::future::join_all(due.into_iter().map(|d| self.attempt(d, now))).await;
        let mut attempted = 0;
        for outcome in attempts {
            attempted += usize::from(outcome?);
        }
        Ok(attempted)
    }

    /// One attempt of a due delivery (unless another replica took it); whether one was made.
    async fn attempt(&self, d: Delivery, now: i64) -> anyhow::Result<bool> {
        let lease = now + LEASE_MS;
        if !store::claim(&self.db, &d, now, lease).await? {
            return Ok(false);
        }
        let Some(subscription) = store::subscription(&self.db, &d.subscription_id).await? else {
            // Queued by an ingest that read the subscription just before it was deleted.
            store::forget_delivery(&self.db, &d.id).await?;
            return Ok(false);
        };
        if subscription.suspended_at.is_some() {
            // Queued by an ingest that read the subscription just before its suspension.
            let given_up = "given up with an earlier delivery (the subscription was suspended)";
            store::attempted(&self.db, &d.id, lease, DEAD, 0, given_up, now, now).await?;
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let outcome = match &self.keys {
            None => Err("no signing key (PIM_SECRETS_KEY) to sign with".to_owned()),
            Some(keys) => {
                let timestamp = now / 1000;
                let headers = [
                    ("webhook-id", d.event_id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    (
                        "webhook-signature",
                        keys.signature(&subscription, &d.event_id, timestamp, &d.body, now),
                    ),
                ];
                tokio::time::timeout(ATTEMPT_TIMEOUT, http::post(&subscription.url, &headers, d.body.clone()))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())))
            }
        };
        let after = now + started.elapsed().as_millis() as i64;
        let (code, error) = match outcome {
            Ok(code) if (200..300).contains(&code) => {
                if !store::attempted(&self.db, &d.id, lease, DELIVERED, code.into(), "", after, after).await? {
                    tracing::warn!(delivery = %d.id, "delivered after its claim ran out (another process may send it again)");
                    return Ok(true);
                }
                let metrics = pim_runtime::metrics::metrics();
                metrics.webhook_attempts.with_label_values(&["delivered"]).inc();
                metrics
                    .webhook_delivery_seconds
                    .observe((after - d.created_at).max(0) as f64 / 1000.0);
                tracing::info!(delivery = %d.id, event_type = %d.event_type, attempts = d.attempts + 1, "webhook delivered");
                return Ok(true);
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
                return Ok(true);
            }
            pim_runtime::metrics::metrics()
                .webhook_attempts
                .with_label_values(&["retry"])
                .inc();
            tracing::warn!(delivery = %d.id, attempts, %error, "webhook delivery failed; retrying");
            return Ok(true);
        }
        // 24 hours of failures: given up, with what waited behind it, and the subscription
        // suspended until someone resumes it (so a dead receiver does not fill the queue, nor
        // feed alerts about itself back into it); alerting hears of it.
        let txn = self.db.begin().await?;
        if !store::attempted(&txn, &d.id, lease, DEAD, code, &error, after, after).await? {
            return Ok(true);
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
        Ok(true)
    }
}
