//! Embedded delivery for `pim up` without Redis: the relay of each service's outbox hands
//! events straight to the in-process consumers of that stream. The outbox row is marked sent
//! only after every consumer applied the event, so delivery is at-least-once and survives a
//! restart (pending rows are delivered again; inboxes drop the duplicates).
//!
//! With Redis, [`InProcessFirst`] does the same for what ends access (the consumers that
//! [`EventHandler::ends_access`](super::EventHandler::ends_access), the cache and the
//! revocations), before the event is published: a loss of access made in this process never
//! waits for Redis.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{Envelope, Inbox, Pending, Publisher};

/// Something told of each event of a stream after its consumers applied it (no database:
/// in-memory caches).
pub type Listener = Arc<dyn Fn(&Envelope) + Send + Sync>;

#[derive(Clone, Default)]
pub struct EmbeddedBus {
    subscribers: Arc<RwLock<HashMap<String, Vec<Inbox>>>>,
    listeners: Arc<RwLock<HashMap<String, Vec<Listener>>>>,
    max_deliveries: u32,
}

impl EmbeddedBus {
    pub fn new(max_deliveries: u32) -> Self {
        Self {
            subscribers: Arc::default(),
            listeners: Arc::default(),
            max_deliveries: max_deliveries.max(1),
        }
    }

    /// Registers a listener for one stream.
    pub fn listen(&self, stream: &str, listener: Listener) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(stream.to_owned())
            .or_default()
            .push(listener);
    }

    /// Registers a consumer for each stream it follows.
    pub fn subscribe(&self, inbox: Inbox) {
        let mut subscribers = self.subscribers.write().unwrap_or_else(|e| e.into_inner());
        for stream in inbox.streams() {
            subscribers.entry(stream.to_owned()).or_default().push(inbox.clone());
        }
    }
}

#[async_trait::async_trait]
impl Publisher for EmbeddedBus {
    async fn publish(&self, stream: &str, envelope: &Envelope, attempt: u32) -> anyhow::Result<()> {
        let inboxes = self
            .subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .cloned()
            .unwrap_or_default();
        for inbox in inboxes {
            if let Err(err) = inbox.apply(envelope).await {
                if attempt + 1 >= self.max_deliveries {
                    // Poison: give up on this consumer so the stream moves on.
                    tracing::error!(
                        consumer = inbox.consumer(), event_id = %envelope.id, event_type = %envelope.r#type,
                        deliveries = attempt + 1, error = %format!("{err:#}"), "event dead-lettered"
                    );
                    continue;
                }
                return Err(err.context(format!("consumer {} failed", inbox.consumer())));
            }
        }
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .cloned()
            .unwrap_or_default();
        for listener in listeners {
            listener(envelope);
        }
        Ok(())
    }
}

/// Publishes to Redis (or any `then`) what `first`, the in-process bus, has applied: each event
/// of a batch is delivered in this process, in order, before the batch goes on. An event whose
/// in-process delivery fails stops the batch there (it is retried in order, and dead-lettered
/// here after as many deliveries as embedded delivery allows, then left to Redis); one that
/// Redis refuses was still applied here, and is applied again (a duplicate, dropped by the
/// inbox) when the relay retries it. The consumers that also follow Redis find their inbox
/// already holds what they were given here.
pub struct InProcessFirst {
    first: EmbeddedBus,
    then: std::sync::Arc<dyn Publisher>,
}

impl InProcessFirst {
    pub fn new(first: EmbeddedBus, then: std::sync::Arc<dyn Publisher>) -> Self {
        Self { first, then }
    }
}

#[async_trait::async_trait]
impl Publisher for InProcessFirst {
    async fn publish_all(&self, batch: &[Pending]) -> (usize, Option<anyhow::Error>) {
        let mut here = batch.len();
        let mut failure = None;
        for (i, p) in batch.iter().enumerate() {
            if let Err(err) = self.first.publish(&p.stream, &p.envelope, p.attempts).await {
                (here, failure) = (i, Some(err));
                break;
            }
        }
        if here == 0 {
            return (0, failure);
        }
        let (sent, refused) = self.then.publish_all(&batch[..here]).await;
        match refused {
            Some(err) => (sent, Some(err)),
            None => (sent, failure),
        }
    }

    async fn publish(&self, stream: &str, envelope: &Envelope, attempt: u32) -> anyhow::Result<()> {
        self.first.publish(stream, envelope, attempt).await?;
        self.then.publish(stream, envelope, attempt).await
    }

    async fn position(&self, stream: &str) -> anyhow::Result<Option<crate::consistency::Position>> {
        self.then.position(stream).await
    }
}
