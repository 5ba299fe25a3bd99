//! Shared Signals receivers and their streams, as PIM manages them: a receiver cut off
//! (disabled, deleted, its receiver role ended) has its streams disabled in the records'
//! transaction, and every change to a stream is a record of its own. Above both the SET
//! format (`ssf`) and the delivery outbox (`webhooks`), which know nothing of it; receivers
//! manage their streams through `http`.

use serde_json::{Value, json};

use crate::chain::Record;
use crate::ssf::StreamStatus;
use crate::webhooks::{Subscription, shown_url, store};

/// Whether a record ends its target's standing as a receiver: the principal disabled or
/// deleted, or its Shared Signals Receiver role ended. Its streams are then disabled (a
/// receiver holding pim.ssf.receive another way enables them again at `/ssf/status`), so an
/// app an administrator cut off is sent nothing more.
pub fn ends_receiver(r: &Record) -> bool {
    let payload: Value = serde_json::from_str(&r.payload_json).unwrap_or_default();
    match r.action.rsplit('.').next().unwrap_or_default() {
        "UserDisabled" | "UserDeleted" => true,
        "SessionRevoked" => matches!(
            payload["reason"].as_str(),
            Some("user_disabled" | "user_deleted" | "service_principal_disabled")
        ),
        "RoleDeactivated" => r.role_id == pim_proto::catalogue::SHARED_SIGNALS_RECEIVER,
        _ => false,
    }
}

/// Disables the streams of every receiver these records cut off (see [`ends_receiver`]),
/// in the records' transaction; the record of each stream disabled, by PIM, naming why.
pub async fn end_receivers<C: sea_orm::ConnectionTrait>(
    c: &C,
    records: &[Record],
    now: i64,
) -> anyhow::Result<Vec<Record>> {
    let mut disabled = Vec::new();
    for r in records.iter().filter(|r| ends_receiver(r) && !r.target_id.is_empty()) {
        for mut s in store::streams_of(c, &r.target_id).await? {
            if s.stream.as_ref().is_some_and(|t| t.status == StreamStatus::Disabled) {
                continue;
            }
            store::set_stream_status(c, &s.id, StreamStatus::Disabled, now).await?;
            if let Some(stream) = s.stream.as_mut() {
                stream.status = StreamStatus::Disabled;
            }
            let why = format!(
                "the receiver was cut off ({})",
                r.action.rsplit('.').next().unwrap_or_default()
            );
            disabled.push(stream_record(
                ("system", "PIM"),
                "SsfStreamStatusChanged",
                &s,
                &why,
                now,
            ));
        }
    }
    Ok(disabled)
}

/// The audit record of a change to a stream: by whom (id, name), why.
pub fn stream_record(
    (actor_id, actor_name): (&str, &str),
    action: &str,
    s: &Subscription,
    reason: &str,
    now: i64,
) -> Record {
    let stream = s.stream.as_ref();
    Record {
        event_id: uuid::Uuid::now_v7().to_string(),
        time: now,
        source: "pim.audit".into(),
        action: format!("pim.audit.v1.{action}"),
        actor_id: actor_id.into(),
        actor_name: actor_name.into(),
        target_id: s.id.clone(),
        target_name: shown_url(&s.url),
        justification: reason.into(),
        outcome: "success".into(),
        payload_json: json!({
            "receiver": stream.map(|t| t.audience.clone()),
            "method": stream.map(|t| t.method.urn()),
            "endpoint": shown_url(&s.url),
            "events_requested": s.event_types,
            "status": stream.map(|t| t.status.as_str()),
            "format": stream.map(|t| t.subjects.as_str()),
        })
        .to_string(),
        ..Record::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_is_cut_off_when_disabled_deleted_or_its_receiver_role_ends() {
        let revoked = |reason: &str| Record {
            action: "pim.identity.v1.SessionRevoked".into(),
            payload_json: format!(r#"{{"reason":"{reason}"}}"#),
            ..Record::default()
        };
        assert!(ends_receiver(&revoked("service_principal_disabled")));
        assert!(ends_receiver(&revoked("user_deleted")));
        assert!(
            !ends_receiver(&revoked("signed_out")),
            "signing out is not being cut off"
        );
        let ended = |role: &str| Record {
            role_id: role.into(),
            action: "pim.assignment.v1.RoleDeactivated".into(),
            payload_json: r#"{"reason":"removed"}"#.into(),
            ..Record::default()
        };
        assert!(ends_receiver(&ended(pim_proto::catalogue::SHARED_SIGNALS_RECEIVER)));
        assert!(!ends_receiver(&ended("ga")));
    }
}
