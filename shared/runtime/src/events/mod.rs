//! The event backbone: a CloudEvents envelope around protobuf data, a transactional outbox
//! (the state change and its event commit together), a relay that publishes outbox rows, and
//! consumers that apply each event once (inbox) before acknowledging it.
//!
//! Two transports share this: Redis Streams (production, and `pim up` when `PIM_REDIS_URL` is
//! set) and embedded delivery straight from the outboxes to in-process consumers (`pim up`
//! without Redis). Both are at-least-once and survive a restart, because an outbox row stays
//! pending until every consumer has it.

mod consumer;
mod embedded;
mod migration;
mod outbox;
mod redis;
mod signing;

use prost::Message;
use uuid::Uuid;

pub use consumer::{EventHandler, Inbox, Rejected};
pub use embedded::{EmbeddedBus, InProcessFirst, Listener};
pub use migration::{NameKeysMigration, NamedRows, SqlMigration, backbone_migrations};
pub use outbox::{
    INBOX_KEPT, OUTBOX_INSERT, Outbox, OutboxRows, Pending, Published, Publisher, Relay, RelayHandle, pending, replay,
};
pub use redis::{
    ConsumerHandle, ConsumerOptions, RedisConsumer, RedisPublisher, RedisTarget, last_entry_id, tail, tail_start,
};
pub use signing::{EventKeys, PUBLISHERS, Rejection, key_id, owner};

pub use pim_proto::event_types::{EventType, Source};
pub use pim_proto::events::v1::Envelope;

/// The shortest time between two passes of a relay, or two reads of a consumer, that found
/// work. Under load one pass then carries the events of many transactions, instead of each
/// commit costing every relay and consumer a pass of its own (a transaction, a Redis round
/// trip or two); when quiet, an event still leaves and is read at once.
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Waits until `LINGER` has passed since `started` (a pass that found work); returns true
/// if told to stop meanwhile (or before).
pub(crate) async fn linger(started: tokio::time::Instant, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(started + LINGER) => {}
        _ = stop.changed() => {}
    }
    *stop.borrow()
}

/// Stream names (before the configured prefix).
pub mod streams {
    pub const IDENTITY: &str = "pim.identity.events";
    pub const ASSIGNMENT: &str = "pim.assignment.events";
    pub const APPROVAL: &str = "pim.approval.events";
    pub const ALERTING: &str = "pim.alerting.events";
    pub const AUDIT: &str = "pim.audit.events";
    pub const ALERTS: &str = "pim.alerts";
    pub const DEADLETTER: &str = "pim.deadletter";
}

/// Builds an envelope for `data`: `source` (`Source::Identity`) publishes `event_type`
/// (`EventType::UserCreated`), whose type is then `pim.identity.v1.UserCreated`.
pub fn envelope(source: Source, event_type: EventType, subject: &str, data: &impl Message) -> Envelope {
    debug_assert!(
        event_type.is_from(source),
        "{} is not in the catalogue as {}'s",
        event_type.name(),
        source.name()
    );
    Envelope {
        id: Uuid::now_v7().to_string(),
        source: source.name().to_owned(),
        r#type: event_type.full_name(source),
        time: Some(crate::db::to_timestamp(crate::db::now_ms())),
        subject: subject.to_owned(),
        // The emitting operation's trace, so what the event causes joins it.
        traceparent: crate::telemetry::current_traceparent().unwrap_or_else(crate::telemetry::new_traceparent),
        data: data.encode_to_vec(),
        specversion: "1.0".to_owned(),
        datacontenttype: "application/protobuf".to_owned(),
        key_id: String::new(),
        signature: Vec::new(),
    }
}

/// The short type name of an envelope: `pim.identity.v1.UserCreated` → `UserCreated`.
pub fn short_type(envelope: &Envelope) -> &str {
    envelope.r#type.rsplit('.').next().unwrap_or_default()
}

/// The envelope's type in the catalogue, by its short name: None for a type no service
/// publishes (made up, or from a newer version).
pub fn event_type(envelope: &Envelope) -> Option<EventType> {
    EventType::parse(short_type(envelope))
}

/// Decodes the envelope's data as `M`.
pub fn decode<M: Message + Default>(envelope: &Envelope) -> anyhow::Result<M> {
    M::decode(envelope.data.as_slice()).map_err(|e| anyhow::anyhow!("decoding {}: {e}", envelope.r#type))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event emitted while an operation runs carries that operation's trace.
    #[tokio::test(flavor = "current_thread")]
    async fn an_event_carries_the_trace_of_the_operation_that_emits_it() {
        const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::info_span!("rpc", trace_id = tracing::field::Empty);
        let event = crate::telemetry::traced(span, Some(CALLER), async {
            envelope(Source::Audit, EventType::ChainCheckpoint, "s", &Envelope::default())
        })
        .await;
        assert_eq!(event.traceparent, CALLER);
    }
}
