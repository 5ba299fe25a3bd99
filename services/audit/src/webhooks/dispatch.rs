//! The dispatcher: attempts due deliveries, all subscriptions at once and each one's in
//! order, and records every outcome.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::TransactionTrait;

use pim_proto::events::v1 as ev;
use pim_runtime::db::{Db, now_ms};
use pim_runtime::events::{EventType, Outbox, Source, envelope, streams};

use super::store::{self, DEAD, Delivery, PENDING};
use super::{Keys, http};
use crate::queue::{GIVE_UP_AFTER_MS, next_attempt};

/// How long one attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed delivery is another replica's to leave alone.
const LEASE_MS: i64 = 60_000;
/// What one attempt sends: its content type, headers and body.
type Signed = (&'static str, Vec<(&'static str, String)>, String);

/// How many of a subscription's deliveries one run claims and sends at most.
const RUN: u64 = 64;

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
    /// takes it, in runs of up to [`RUN`] claimed at once and sent on one kept-open connection;
    /// the delivered ones of a run are recorded together. Stops when the queue is empty, its
    /// head is not due, or an attempt failed (the retry waits for its time; what was claimed
    /// behind it is released).
    async fn drain(&self, first: Delivery) {
        let subscription_id = first.subscription_id;
        let mut sender = http::Sender::default();
        loop {
            let now = now_ms();
            let lease = now + LEASE_MS;
            match self.send_run(&mut sender, &subscription_id, now, lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "a webhook delivery failed to be recorded");
                    return;
                }
            }
        }
    }

    /// One run of a subscription's queue; whether to go on with the next.
    async fn send_run(
        &self,
        sender: &mut http::Sender,
        subscription_id: &str,
        now: i64,
        lease: i64,
    ) -> anyhow::Result<bool> {
        let run = store::claim_run(&self.db, subscription_id, now, lease, RUN).await?;
        if run.is_empty() {
            return Ok(false);
        }
        let Some(subscription) = self.usable(&run, lease, now).await? else {
            return Ok(false);
        };
        let mut delivered: Vec<Delivery> = Vec::new();
        let mut code = 0;
        for (i, d) in run.iter().enumerate() {
            // Within the claim: what could not be answered before it runs out is given back
            // for the next run (another replica would take it then, and send it twice).
            if now_ms() + ATTEMPT_TIMEOUT.as_millis() as i64 >= lease {
                self.record_delivered(&delivered, code, lease, now_ms()).await?;
                store::release(&self.db, &run[i..], lease, now_ms()).await?;
                return Ok(true);
            }
            let span = tracing::info_span!(
                "webhook delivery",
                delivery = %d.id,
                subscription = %d.subscription_id,
                event_type = %d.event_type,
            );
            let (outcome, after) =
                tracing::Instrument::instrument(self.send(sender, &subscription, d, now_ms()), span).await;
            match outcome {
                Ok(answer) if (200..300).contains(&answer) => {
                    // One statement records the taken ones of a run (of one answer code).
                    let answer = i32::from(answer);
                    if !delivered.is_empty() && answer != code {
                        self.record_delivered(&delivered, code, lease, after).await?;
                        delivered.clear();
                    }
                    code = answer;
                    delivered.push(d.clone());
                }
                // A receiver of SETs that answers 400 refuses that one (RFC 8935): it is given
                // up alone, and the stream goes on.
                Ok(400) if subscription.stream.is_some() => {
                    let refused = "the receiver refused the SET (HTTP 400)";
                    store::attempted(&self.db, &d.id, lease, DEAD, 400, refused, after, after).await?;
                    pim_runtime::metrics::metrics()
                        .webhook_attempts
                        .with_label_values(&["dead"])
                        .inc();
                    tracing::warn!(delivery = %d.id, "a SET refused by its receiver (HTTP 400)");
                }
                outcome => {
                    self.record_delivered(&delivered, code, lease, after).await?;
                    self.settle(&subscription, d, lease, outcome, after).await?;
                    store::release(&self.db, &run[i + 1..], lease, after).await?;
                    return Ok(false);
                }
            }
        }
        self.record_delivered(&delivered, code, lease, now_ms()).await?;
        Ok(true)
    }

    /// Records deliveries the receiver took, counted and timed; how many were still held
    /// under the claim.
    async fn record_delivered(&self, delivered: &[Delivery], code: i32, lease: i64, after: i64) -> anyhow::Result<u64> {
        if delivered.is_empty() {
            return Ok(0);
        }
        let held = store::delivered_run(&self.db, delivered, code, lease, after).await?;
        if held < delivered.len() as u64 {
            tracing::warn!(
                subscription = %delivered[0].subscription_id,
                "delivered after their claim ran out (another process may send some again)"
            );
        }
        let metrics = pim_runtime::metrics::metrics();
        metrics
            .webhook_attempts
            .with_label_values(&["delivered"])
            .inc_by(delivered.len() as u64);
        for d in delivered {
            metrics
                .webhook_delivery_seconds
                .observe((after - d.created_at).max(0) as f64 / 1000.0);
        }
        tracing::info!(subscription = %delivered[0].subscription_id, delivered = delivered.len(), "webhooks delivered");
        Ok(held)
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
            let mut headers = vec![("accept", "application/json".to_owned())];
            if let Some(sealed) = &stream.authorization {
                // Opened only to send; a failure is said without the header's value.
                let header = transmitter.open_authorization(&subscription.id, sealed).map_err(|_| {
                    "the stream's authorization header does not open (PIM_SECRETS_KEY changed?)".to_owned()
                })?;
                headers.push(("authorization", header));
            }
            return Ok(("application/secevent+jwt", headers, set));
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

    /// The subscription claimed deliveries go to, if they are to be sent: deliveries of a
    /// deleted subscription are forgotten, those of a suspended one given up.
    async fn usable(&self, run: &[Delivery], lease: i64, now: i64) -> anyhow::Result<Option<super::Subscription>> {
        let subscription_id = run.first().map(|d| d.subscription_id.as_str()).unwrap_or_default();
        let Some(subscription) = store::subscription(&self.db, subscription_id).await? else {
            // Queued by an ingest that read the subscription just before it was deleted.
            for d in run {
                store::forget_delivery(&self.db, &d.id).await?;
            }
            return Ok(None);
        };
        if subscription.suspended_at.is_some() {
            // Queued by an ingest that read the subscription just before its suspension.
            let given_up = "given up with an earlier delivery (the subscription was suspended)";
            for d in run {
                store::attempted(&self.db, &d.id, lease, DEAD, 0, given_up, now, now).await?;
            }
            return Ok(None);
        }
        Ok(Some(subscription))
    }

    /// Where `subscription` may deliver: a receiver's stream only where the transmitter lets
    /// it reach; an administrator's webhook anywhere.
    fn reach(&self, subscription: &super::Subscription) -> super::Reach {
        match (&subscription.stream, &self.ssf) {
            (Some(_), Some(transmitter)) => super::Reach::of_receivers(transmitter.private_receivers),
            (Some(_), None) => super::Reach::Public,
            (None, _) => super::Reach::Any,
        }
    }

    /// Sends one delivery: the receiver's answer, or why none came, and when it ended.
    async fn send(
        &self,
        sender: &mut http::Sender,
        subscription: &super::Subscription,
        d: &Delivery,
        now: i64,
    ) -> (Result<u16, String>, i64) {
        let started = std::time::Instant::now();
        let outcome = match self.signed(subscription, d, now) {
            Err(error) => Err(error),
            Ok((content_type, headers, body)) => tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                sender.post(
                    &subscription.url,
                    self.reach(subscription),
                    content_type,
                    &headers,
                    body,
                ),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()))),
        };
        (outcome, now + started.elapsed().as_millis() as i64)
    }

    /// One attempt of a due delivery, unless another process took it.
    async fn attempt(&self, d: Delivery, now: i64) -> anyhow::Result<Attempted> {
        let lease = now + LEASE_MS;
        if !store::claim(&self.db, &d, now, lease).await? {
            return Ok(Attempted::Skipped);
        }
        let Some(subscription) = self.usable(std::slice::from_ref(&d), lease, now).await? else {
            return Ok(Attempted::Skipped);
        };
        let (outcome, after) = self.send(&mut http::Sender::default(), &subscription, &d, now).await;
        if let Ok(code) = outcome
            && (200..300).contains(&code)
        {
            let held = self
                .record_delivered(std::slice::from_ref(&d), code.into(), lease, after)
                .await?;
            return Ok(if held == 0 {
                Attempted::Failed
            } else {
                Attempted::Delivered
            });
        }
        self.settle(&subscription, &d, lease, outcome, after).await
    }

    /// Records a failed attempt: retried with backoff, or after 24 hours given up with what
    /// waited behind it, the subscription suspended and alerting told.
    async fn settle(
        &self,
        subscription: &super::Subscription,
        d: &Delivery,
        lease: i64,
        outcome: Result<u16, String>,
        after: i64,
    ) -> anyhow::Result<Attempted> {
        let now = after;
        let (code, error) = match outcome {
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
        let dead = envelope(Source::Audit, EventType::WebhookDeadLettered, &subscription.id, &event);
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
