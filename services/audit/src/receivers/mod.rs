//! Shared Signals receivers and their streams, as PIM manages them: a receiver cut off
//! (disabled, deleted, its receiver role ended) has its streams disabled in the records'
//! transaction; one that may have lost pim.ssf.receive another way (a custom role ended, a
//! group left or its role ended, the permission taken from a role) has its push streams
//! paused until it shows it still holds it; every change to a stream is a record of its own. Above both the SET
//! format (`ssf`) and the delivery outbox (`webhooks`), which know nothing of it; receivers
//! manage their streams through `http`.

use serde_json::{Value, json};

use pim_runtime::access::permissions;

use crate::chain::Record;
use crate::ssf::{Method, StreamStatus};
use crate::webhooks::{Subscription, shown_url, store};
use pim_runtime::events::{EventType, Source};

/// Whether a record ends its target's standing as a receiver: the principal disabled or
/// deleted, or its Shared Signals Receiver role ended. Its streams are then disabled (a
/// receiver holding pim.ssf.receive another way enables them again at `/ssf/status`), so an
/// app an administrator cut off is sent nothing more.
pub fn ends_receiver(r: &Record) -> bool {
    let payload: Value = serde_json::from_str(&r.payload_json).unwrap_or_default();
    match r.event_type() {
        // A receiver is a service principal: disabled, it is cut off even with no session.
        Some(EventType::UserDisabled | EventType::UserDeleted | EventType::ServicePrincipalDisabled) => true,
        Some(EventType::SessionRevoked) => matches!(
            payload["reason"].as_str(),
            Some("user_disabled" | "user_deleted" | "service_principal_disabled")
        ),
        Some(EventType::RoleDeactivated) => r.role_id == pim_proto::catalogue::SHARED_SIGNALS_RECEIVER,
        _ => false,
    }
}

/// Who a record may have taken pim.ssf.receive from, short of cutting them off: their
/// active role ended (a custom role may have granted it), they left a group (which may have
/// held it), or a group they are in lost an active role; `None`: anyone (a role definition
/// lost the permission, and audit does not know who holds the role).
fn may_have_lost_receive(r: &Record) -> Option<Vec<String>> {
    let payload: Value = serde_json::from_str(&r.payload_json).unwrap_or_default();
    let named = |field: &str| {
        payload[field]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p == permissions::SSF_RECEIVE)
    };
    match r.event_type() {
        Some(EventType::RoleDeactivated) if r.role_id != pim_proto::catalogue::SHARED_SIGNALS_RECEIVER => {
            Some(vec![r.target_id.clone()])
        }
        Some(EventType::GroupMemberRemoved) => Some(vec![r.target_id.clone()]),
        Some(EventType::RoleDefinitionUpdated) if named("permissions_removed") => None,
        _ => Some(Vec::new()),
    }
}

/// In the records' transaction, before it learns the batch's memberships: disables the
/// streams of every receiver these records cut off (see [`ends_receiver`]), and pauses the
/// push streams of every receiver they may have taken pim.ssf.receive from (see
/// [`may_have_lost_receive`]): those hold their events until the receiver, at `/ssf/status`
/// with its own token (the permission checked), enables them again. Polled streams need no
/// pause: every poll checks the permission. The record of each change, by PIM, naming why.
pub async fn end_receivers<C: sea_orm::ConnectionTrait>(
    c: &C,
    records: &[Record],
    now: i64,
) -> anyhow::Result<Vec<Record>> {
    let mut changed = Vec::new();
    // Most batches end no access, and most suites have no push stream: asked once, lazily.
    let mut any_pushed: Option<bool> = None;
    for r in records
        .iter()
        .filter(|r| !r.target_id.is_empty() || r.action.contains("RoleDefinition"))
    {
        let event = r.action.rsplit('.').next().unwrap_or_default();
        let (to, why, streams) = if ends_receiver(r) {
            let why = format!("the receiver was cut off ({event})");
            (StreamStatus::Disabled, why, store::streams_of(c, &r.target_id).await?)
        } else {
            let doubtful = may_have_lost_receive(r);
            if doubtful.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            let pushed_somewhere = match any_pushed {
                Some(known) => known,
                None => *any_pushed.insert(store::has_push_streams(c).await?),
            };
            if !pushed_somewhere {
                continue;
            }
            let streams = match doubtful {
                Some(mut principals) => {
                    // A group's role or membership: its members may have held it through it.
                    let groups: Vec<&str> = principals.iter().map(String::as_str).collect();
                    let members = crate::mail::store::members_of(c, &groups).await?;
                    principals.extend(members.into_values().flatten());
                    let mut streams = Vec::new();
                    for principal in principals {
                        streams.extend(store::streams_of(c, &principal).await?);
                    }
                    streams
                }
                None => store::subscriptions(c).await?,
            };
            let why = format!(
                "the receiver may no longer hold pim.ssf.receive ({event}): enable the stream at /ssf/status to go on"
            );
            let pushed = |s: &Subscription| s.stream.as_ref().is_some_and(|t| t.method == Method::Push);
            let streams = streams.into_iter().filter(|s| pushed(s)).collect();
            (StreamStatus::Paused, why, streams)
        };
        for mut s in streams {
            // Only a stream still flowing changes: a disabled one stays so, a paused one held.
            let current = s.stream.as_ref().map(|t| t.status);
            if current == Some(StreamStatus::Disabled)
                || (to == StreamStatus::Paused && current != Some(StreamStatus::Enabled))
            {
                continue;
            }
            store::set_stream_status(c, &s.id, to, now).await?;
            if let Some(stream) = s.stream.as_mut() {
                stream.status = to;
            }
            changed.push(stream_record(
                ("system", "PIM"),
                EventType::SsfStreamStatusChanged,
                &s,
                &why,
                now,
            ));
        }
    }
    Ok(changed)
}

/// The audit record of a change to a stream: by whom (id, name), why.
pub fn stream_record(
    (actor_id, actor_name): (&str, &str),
    action: EventType,
    s: &Subscription,
    reason: &str,
    now: i64,
) -> Record {
    let stream = s.stream.as_ref();
    Record {
        event_id: uuid::Uuid::now_v7().to_string(),
        time: now,
        source: Source::Audit.name().into(),
        action: action.full_name(Source::Audit),
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
        // Disabled without a session to revoke: cut off all the same.
        let disabled = Record {
            action: "pim.identity.v1.ServicePrincipalDisabled".into(),
            ..Record::default()
        };
        assert!(ends_receiver(&disabled));
    }
}
