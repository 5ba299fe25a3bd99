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
    /// Whether its consumers also follow Redis ([`InProcessFirst`]), so an event one of them
    /// gives up on here still reaches it from there.
    redis_follows: bool,
}

impl EmbeddedBus {
    pub fn new(max_deliveries: u32) -> Self {
        Self {
            subscribers: Arc::default(),
            listeners: Arc::default(),
            max_deliveries: max_deliveries.max(1),
            redis_follows: false,
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
                    let (consumer, deliveries, error) = (inbox.consumer(), attempt + 1, format!("{err:#}"));
                    if self.redis_follows {
                        tracing::warn!(consumer, event_id = %envelope.id, event_type = %envelope.r#type, deliveries, error,
                            "event not applied in this process; its consumer gets it from Redis");
                    } else {
                        tracing::error!(consumer, event_id = %envelope.id, event_type = %envelope.r#type, deliveries, error,
                            "event dead-lettered");
                    }
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

/// Publishes to Redis (or any `then`) what `first`, the in-process bus, has applied: the relay
/// has each event of a batch delivered in this process, in order ([`Publisher::apply_here`]),
/// before the batch goes on. An event whose in-process delivery fails stops the batch there:
/// it is retried in order, and after as many deliveries as embedded delivery allows it is
/// left to Redis, where the same consumer gets it later; the events behind it may then be
/// applied first, so consumers that take access away must keep the last word whatever the
/// order (group memberships carry identity's version). One that Redis refuses stays applied
/// here (the relay marks it so), and the relay goes on applying the events behind it here
/// while Redis refuses them. The consumers that also follow Redis find their inbox already
/// holds what they were given here.
pub struct InProcessFirst {
    first: EmbeddedBus,
    then: std::sync::Arc<dyn Publisher>,
}

impl InProcessFirst {
    pub fn new(mut first: EmbeddedBus, then: std::sync::Arc<dyn Publisher>) -> Self {
        first.redis_follows = true;
        Self { first, then }
    }
}

#[async_trait::async_trait]
impl Publisher for InProcessFirst {
    fn applies_here_first(&self) -> bool {
        true
    }

    async fn apply_here(&self, batch: &[Pending]) -> (usize, Option<anyhow::Error>) {
        for (i, p) in batch.iter().enumerate().filter(|(_, p)| !p.applied_here) {
            if let Err(err) = self.first.publish(&p.stream, &p.envelope, p.attempts).await {
                return (i, Some(err));
            }
        }
        (batch.len(), None)
    }

    async fn publish_all(&self, batch: &[Pending]) -> super::Published {
        self.then.publish_all(batch).await
    }

    async fn publish(&self, stream: &str, envelope: &Envelope, attempt: u32) -> anyhow::Result<()> {
        self.then.publish(stream, envelope, attempt).await
    }

    async fn position(&self, stream: &str) -> anyhow::Result<Option<crate::consistency::Position>> {
        self.then.position(stream).await
    }

    fn prefix(&self) -> &str {
        self.then.prefix()
    }
}
