//! Turning domain events into audit records: who did what to whom, with which role, where,
//! why and with what outcome. Events carry no secrets, so the payload is kept as JSON;
//! values to correlate but not disclose (source addresses, user agents) are kept as HMACs.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use pim_proto::common::v1::{Actor, Ticket};
use pim_proto::events::v1 as ev;
use pim_runtime::db::from_timestamp;
use pim_runtime::events::{Envelope, EventType, Rejected, decode, event_type};

use crate::chain::Record;

/// HMAC-SHA256 tags for values audit correlates but does not disclose: the same address
/// gives the same tag, and the tag does not give the address back without the key.
#[derive(Clone)]
pub struct Correlator(Option<Hmac<Sha256>>);

impl Correlator {
    /// Without a key nothing is kept of such values.
    pub fn new(key: Option<&str>) -> Self {
        Self(key.map(|k| Hmac::<Sha256>::new_from_slice(k.as_bytes()).expect("HMAC takes a key of any length")))
    }

    /// The hex tag of `value` (of a `kind`, so equal strings of different kinds differ).
    pub fn tag(&self, kind: &str, value: &str) -> String {
        let Some(mac) = &self.0 else {
            return String::new();
        };
        if value.is_empty() {
            return String::new();
        }
        let mut mac = mac.clone();
        mac.update(kind.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn ticket_text(t: &Option<Ticket>) -> String {
    match t {
        Some(t) if !t.number.is_empty() => format!("{}:{}", t.system, t.number),
        _ => String::new(),
    }
}

/// The actor of a record, and the session they acted in (`session`), where the event says.
fn set_actor(r: &mut Record, session: &mut String, actor: &Option<Actor>) {
    if let Some(a) = actor {
        r.actor_id = a.principal_id.clone();
        r.actor_name = a.display_name.clone();
        // An app named before its name was announced here, as the table of names has it.
        if a.kind == pim_proto::common::v1::PrincipalKind::ServicePrincipal as i32 && !r.actor_name.is_empty() {
            r.actor_name += APP;
        }
        session.clone_from(&a.session_id);
    }
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(from_timestamp)
}

/// A time in a payload, as people and SIEMs read it: RFC 3339 in UTC, to the millisecond.
fn rfc3339(t: &Option<prost_types::Timestamp>) -> Option<String> {
    ts(t).map(pim_runtime::format::rfc3339_ms)
}

/// The audit record of one event. Unknown event types are still recorded (action, source,
/// subject and the raw data), never dropped.
pub fn record(envelope: &Envelope, correlator: &Correlator) -> anyhow::Result<Record> {
    let mut r = Record {
        event_id: envelope.id.clone(),
        time: ts(&envelope.time).unwrap_or_else(pim_runtime::db::now_ms),
        source: envelope.source.clone(),
        action: envelope.r#type.clone(),
        target_id: envelope.subject.clone(),
        outcome: "success".into(),
        trace_id: envelope.traceparent.split('-').nth(1).unwrap_or_default().to_owned(),
        ..Record::default()
    };
    let mut session = String::new();
    let mut payload = match event_type(envelope) {
        Some(EventType::UserCreated) => {
            let e: ev::UserCreated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.user_id.clone();
            r.target_name = e.user_name.clone();
            json!({"user_id": e.user_id, "user_name": e.user_name, "display_name": e.display_name, "email": e.email})
        }
        Some(EventType::UserUpdated | EventType::UserAddressAnnounced) => {
            let e: ev::UserUpdated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.user_id.clone();
            r.target_name = e.user_name.clone();
            json!({"user_id": e.user_id, "user_name": e.user_name, "display_name": e.display_name, "email": e.email})
        }
        Some(
            EventType::UserDisabled
            | EventType::UserDisabledAnnounced
            | EventType::UserEnabled
            | EventType::UserDeleted
            | EventType::UserDisablePrepared,
        ) => {
            let e: ev::UserDisabled = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.user_id.clone();
            r.target_name = e.user_name.clone();
            json!({"user_id": e.user_id, "user_name": e.user_name})
        }
        Some(EventType::GroupDeleted) => {
            let e: ev::GroupDeleted = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.group_id.clone();
            r.target_name = e.display_name.clone();
            r.scope = pim_proto::catalogue::group_scope(&e.group_id);
            json!({"group_id": e.group_id, "display_name": e.display_name, "is_assignable_to_role": e.is_assignable_to_role})
        }
        Some(EventType::GroupCreated | EventType::GroupUpdated) => {
            let e: ev::GroupCreated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.group_id.clone();
            r.target_name = e.display_name.clone();
            r.scope = pim_proto::catalogue::group_scope(&e.group_id);
            json!({"group_id": e.group_id, "display_name": e.display_name, "is_assignable_to_role": e.is_assignable_to_role})
        }
        Some(
            EventType::GroupMemberAdded
            | EventType::GroupMemberRemoved
            | EventType::GroupOwnerAdded
            | EventType::GroupOwnerRemoved,
        ) => {
            let e: ev::GroupMembershipChanged = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.principal_id.clone();
            // The group is the scope its access is held at (PIM for Groups' words too).
            r.scope = pim_proto::catalogue::group_scope(&e.group_id);
            json!({"group_id": e.group_id, "principal_id": e.principal_id, "is_assignable_to_role": e.is_assignable_to_role})
        }
        Some(EventType::ServicePrincipalCreated | EventType::ServicePrincipalDisabled) => {
            let e: ev::ServicePrincipalCreated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.service_principal_id.clone();
            r.target_name = e.display_name.clone();
            json!({"service_principal_id": e.service_principal_id, "display_name": e.display_name})
        }
        Some(EventType::SignInSucceeded | EventType::SignInMfaPending | EventType::SignInEnrollmentPending) => {
            let e: ev::SignInSucceeded = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = r.actor_id.clone();
            r.target_name = r.actor_name.clone();
            json!({
                "session_id": e.session_id, "amr": e.amr,
                "source_hmac": correlator.tag("ip", &e.source_ip),
                "user_agent_hmac": correlator.tag("user_agent", &e.user_agent),
            })
        }
        Some(EventType::SignInFailed) => {
            let e: ev::SignInFailed = decode(envelope)?;
            r.actor_id = e.principal_id.clone();
            r.actor_name = e.user_name.clone();
            r.target_id = e.principal_id.clone();
            r.target_name = e.user_name.clone();
            r.outcome = "failure".into();
            json!({
                "user_name": e.user_name, "reason": e.reason,
                "source_hmac": correlator.tag("ip", &e.source_ip),
                "user_agent_hmac": correlator.tag("user_agent", &e.user_agent),
                // Refusals like it since the last record, not recorded one by one.
                "more_refused": e.more_refused,
            })
        }
        Some(
            EventType::MfaEnrolled
            | EventType::MfaVerified
            | EventType::MfaFailed
            | EventType::MfaLockedOut
            | EventType::MfaMethodRemoved
            | EventType::MfaReset
            | EventType::RecoveryCodeUsed
            | EventType::RecoveryCodesGenerated,
        ) => {
            let e: ev::MfaEvent = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.user_id.clone();
            if matches!(
                event_type(envelope),
                Some(EventType::MfaFailed | EventType::MfaLockedOut)
            ) {
                r.outcome = "failure".into();
            }
            json!({
                "method": e.method, "method_id": e.method_id, "reason": e.reason,
                "session_id": e.session_id,
            })
        }
        Some(EventType::EnrollmentPassCreated | EventType::EnrollmentPassUsed) => {
            let e: ev::EnrollmentPassEvent = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.user_id.clone();
            json!({"pass_id": e.pass_id, "expires_at": rfc3339(&e.expires_at), "uses_left": e.uses_left})
        }
        Some(EventType::CredentialsReset | EventType::PasswordChanged) => {
            let e: ev::CredentialsReset = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.user_id.clone();
            json!({"what": e.what})
        }
        Some(EventType::SessionRevoked) => {
            let e: ev::SessionRevoked = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.principal_id.clone();
            // Of a principal's tokens stopped up to an instant (a kept secret's end): which.
            let up_to = e
                .issued_up_to
                .as_ref()
                .map(|t| pim_runtime::db::rfc3339(pim_runtime::db::from_timestamp(t)));
            json!({"session_id": e.session_id, "reason": e.reason, "issued_up_to": up_to})
        }
        Some(EventType::RequestCreated) => {
            let e: ev::RequestCreated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.role_name = e.role_name.clone();
            r.scope = e.scope.clone();
            r.justification = e.justification.clone();
            r.ticket = ticket_text(&e.ticket);
            json!({
                "request_id": e.request_id, "action": e.typed_action().text(), "kind": e.typed_kind().text(),
                "status": e.typed_status().text(),
                "start_time": rfc3339(&e.start_time), "end_time": rfc3339(&e.end_time),
            })
        }
        Some(
            EventType::EligibilityGranted
            | EventType::EligibilityRemoved
            | EventType::EligibilityUpdated
            | EventType::ActiveAssignmentGranted
            | EventType::ActiveAssignmentRemoved
            | EventType::ActiveAssignmentUpdated,
        ) => {
            let e: ev::AssignmentChanged = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.principal_id.clone();
            r.target_name = e.principal_name.clone();
            r.role_id = e.role_id.clone();
            r.role_name = e.role_name.clone();
            r.scope = e.scope.clone();
            r.justification = e.justification.clone();
            r.ticket = ticket_text(&e.ticket);
            json!({
                "assignment_id": e.assignment_id, "request_id": e.request_id, "kind": e.typed_kind().text(),
                "start_time": rfc3339(&e.start_time), "end_time": rfc3339(&e.end_time), "reason": e.reason,
            })
        }
        Some(EventType::RequestRefused) => {
            let e: ev::RequestRefused = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.role_name = e.role_name.clone();
            r.scope = e.scope.clone();
            r.outcome = "failure".into();
            json!({"action": e.typed_action().text(), "code": e.code, "rules": e.rules, "reason": e.message})
        }
        Some(EventType::AssignmentExpiring) => {
            let e: ev::AssignmentExpiring = decode(envelope)?;
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            json!({"assignment_id": e.assignment_id, "request_id": e.request_id, "end_time": rfc3339(&e.end_time)})
        }
        Some(EventType::NotificationsDue) => {
            let e: ev::NotificationsDue = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            // An access review's notice is about the review; the others, about a principal.
            (r.target_id, r.target_name) = if e.review_id.is_empty() {
                (e.principal_id.clone(), e.principal_name.clone())
            } else {
                (e.review_id.clone(), e.review_name.clone())
            };
            r.role_id = e.role_id.clone();
            r.role_name = e.role_name.clone();
            r.scope = e.scope.clone();
            r.justification = e.justification.clone();
            r.ticket = ticket_text(&e.ticket);
            let event = pim_proto::common::v1::NotificationEvent::try_from(e.event)
                .map(|v| v.as_str_name().trim_start_matches("NOTIFICATION_EVENT_").to_lowercase())
                .unwrap_or_default();
            let happening = ev::Happening::try_from(e.happening)
                .map(|v| v.as_str_name().trim_start_matches("HAPPENING_").to_lowercase())
                .unwrap_or_default();
            let notices: Vec<_> = e
                .notices
                .iter()
                .map(|n| {
                    let party = pim_proto::common::v1::NotificationParty::try_from(n.party)
                        .map(|v| v.as_str_name().trim_start_matches("NOTIFICATION_PARTY_").to_lowercase())
                        .unwrap_or_default();
                    json!({"party": party, "principal_ids": n.principal_ids, "emails": n.emails, "critical": n.critical, "owners_of": n.owners_of})
                })
                .collect();
            json!({
                "event": event, "request_id": e.request_id, "assignment_id": e.assignment_id,
                "end_time": rfc3339(&e.end_time), "happening": happening, "reason": e.reason, "notices": notices,
                "review_id": e.review_id, "review_name": e.review_name, "undecided_items": e.undecided_items,
                "request_action": e.request_action().text(), "assignment_kind": e.assignment_kind().text(),
            })
        }
        Some(EventType::RoleActivated) => {
            let e: ev::RoleActivated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.role_name = e.role_name.clone();
            r.scope = e.scope.clone();
            r.justification = e.justification.clone();
            json!({
                "assignment_id": e.assignment_id, "request_id": e.request_id,
                "start_time": rfc3339(&e.start_time), "end_time": rfc3339(&e.end_time),
            })
        }
        Some(EventType::RoleDeactivated) => {
            let e: ev::RoleDeactivated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            json!({"assignment_id": e.assignment_id, "reason": e.reason, "end_time": rfc3339(&e.end_time)})
        }
        Some(EventType::ActivationShortened) => {
            let e: ev::ActivationShortened = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.role_name = e.role_name.clone();
            r.scope = e.scope.clone();
            json!({
                "assignment_id": e.assignment_id, "end_time": rfc3339(&e.end_time),
                "previous_end_time": rfc3339(&e.previous_end_time), "reason": e.reason,
            })
        }
        Some(EventType::RequestStatusChanged) => {
            let e: ev::RequestStatusChanged = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            // Whose request and for what (empty in events from before they were told).
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            json!({
                "request_id": e.request_id, "status": e.typed_status().text(),
                "previous_status": e.typed_previous_status().text(),
            })
        }
        Some(EventType::PolicyUpdated) => {
            let e: ev::PolicyUpdated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.role_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            let changes: Vec<_> = e
                .changes
                .iter()
                .map(|c| json!({"setting": c.setting, "before": c.before, "after": c.after, "weakens": c.weakens}))
                .collect();
            json!({
                "activation_requires_mfa": e.activation_requires_mfa,
                "approval_required": e.approval_required,
                "changes": changes,
                "weakened": e.weakened,
            })
        }
        Some(EventType::ApprovalCreated) => {
            let e: ev::ApprovalCreated = decode(envelope)?;
            r.target_id = e.requester_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            json!({"approval_id": e.approval_id, "request_id": e.request_id})
        }
        Some(EventType::ApprovalDecisionRecorded | EventType::SelfApprovalAttempted) => {
            let e: ev::ApprovalDecisionRecorded = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.requester_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            r.justification = e.justification.clone();
            if event_type(envelope) == Some(EventType::SelfApprovalAttempted) {
                r.outcome = "refused".into();
            }
            json!({
                "approval_id": e.approval_id, "request_id": e.request_id,
                "decision": e.typed_decision().text(), "stage": e.stage,
            })
        }
        Some(EventType::ApprovalDecisionRefused) => {
            let e: ev::ApprovalDecisionRefused = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.requester_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            r.outcome = "failure".into();
            json!({
                "approval_id": e.approval_id, "request_id": e.request_id,
                "decision": e.typed_decision().text(), "code": e.code, "reason": e.reason,
            })
        }
        Some(EventType::AccessDenied) => {
            let e: ev::AccessDenied = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            // At whom the call was aimed, where it says; else the method refused.
            r.target_id = if e.target.is_empty() {
                e.method.clone()
            } else {
                e.target.clone()
            };
            r.outcome = "failure".into();
            let code = if e.code.is_empty() {
                "PermissionDenied"
            } else {
                e.code.as_str()
            };
            json!({"method": e.method, "code": code, "reason": e.reason})
        }
        Some(
            EventType::ApprovalGranted
            | EventType::ApprovalDenied
            | EventType::ApprovalExpired
            | EventType::ApprovalCanceled
            | EventType::ApprovalEscalated
            | EventType::ApprovalStageStarted
            | EventType::ApprovalReminder,
        ) => {
            let e: ev::ApprovalCompleted = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.requester_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            // A request denied, or left undecided until it expired, did not get what it asked.
            if matches!(
                event_type(envelope),
                Some(EventType::ApprovalDenied | EventType::ApprovalExpired)
            ) {
                r.outcome = "failure".into();
            }
            json!({
                "approval_id": e.approval_id, "request_id": e.request_id, "outcome": e.outcome,
                "reason": e.reason, "approver_ids": e.approver_ids,
                "escalation_approver_ids": e.escalation_approver_ids, "expires_at": rfc3339(&e.expires_at),
            })
        }
        Some(
            EventType::ReviewCreated
            | EventType::ReviewStarted
            | EventType::ReviewItemDecided
            | EventType::ReviewCompleted
            | EventType::ReviewRemovalRequested
            | EventType::ReviewRemovalApplied
            | EventType::ReviewRemovalRefused,
        ) => {
            let e: ev::ReviewEvent = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            if event_type(envelope) == Some(EventType::ReviewRemovalRefused) {
                r.outcome = "refused".into();
            }
            if !e.principal_id.is_empty() {
                r.target_id = e.principal_id.clone();
            }
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            r.justification = e.justification.clone();
            json!({
                "review_id": e.review_id, "item_id": e.item_id, "decision": e.decision,
                "kind": e.kind, "assignment_id": e.assignment_id,
            })
        }
        Some(EventType::UnmanagedGrantDetected) => {
            let e: ev::UnmanagedGrantDetected = decode(envelope)?;
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            r.outcome = "detected".into();
            json!({"system": e.system})
        }
        Some(EventType::UnmanagedGrantCleared) => {
            let e: ev::UnmanagedGrantCleared = decode(envelope)?;
            r.target_id = e.principal_id.clone();
            r.role_id = e.role_id.clone();
            r.scope = e.scope.clone();
            json!({"system": e.system, "reason": e.reason})
        }
        Some(EventType::RoleDefinitionCreated) => {
            let e: ev::RoleDefinitionCreated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            (r.target_id, r.target_name, r.role_id) = (e.role_id.clone(), e.name.clone(), e.role_id.clone());
            json!({"name": e.name, "description": e.description, "permissions": e.permissions, "privileged": e.privileged})
        }
        Some(EventType::RoleDefinitionUpdated) => {
            let e: ev::RoleDefinitionUpdated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            (r.target_id, r.target_name, r.role_id) = (e.role_id.clone(), e.name.clone(), e.role_id.clone());
            json!({
                "name": e.name, "permissions": e.permissions, "permissions_added": e.permissions_added,
                "permissions_removed": e.permissions_removed, "privileged": e.privileged,
                "was_privileged": e.was_privileged,
            })
        }
        Some(EventType::RoleDefinitionDeleted) => {
            let e: ev::RoleDefinitionDeleted = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            (r.target_id, r.target_name, r.role_id) = (e.role_id.clone(), e.name.clone(), e.role_id.clone());
            json!({"name": e.name})
        }
        Some(EventType::AlertRaised | EventType::AlertUpdated | EventType::AlertStatusChanged) => {
            let e: ev::AlertEvent = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            // What was acted on is the alert (named by its rule); whom it is about is in the
            // payload, and its role is the record's role.
            r.target_id = e.alert_id.clone();
            r.target_name = e.rule_id.clone();
            r.role_id = e.role_id.clone();
            json!({
                "alert_id": e.alert_id, "rule_id": e.rule_id, "severity": e.typed_severity().text(),
                "status": e.typed_status().text(), "principal_id": e.principal_id,
            })
        }
        Some(EventType::RuleSettingsUpdated) => {
            let e: ev::RuleSettingsUpdated = decode(envelope)?;
            set_actor(&mut r, &mut session, &e.actor);
            r.target_id = e.rule_id.clone();
            r.target_name = e.rule_id.clone();
            json!({"rule_id": e.rule_id, "enabled": e.enabled})
        }
        _ => json!({"data_base64": base64::engine::general_purpose::STANDARD.encode(&envelope.data)}),
    };
    // Which of the actor's sessions it came from: what an incident response ends, and ties
    // to the sign-in that opened it (whose record names the session too).
    if !session.is_empty()
        && let Some(fields) = payload.as_object_mut()
    {
        fields.insert("actor_session_id".into(), session.into());
    }
    r.payload_json = payload.to_string();
    Ok(r)
}

/// The actions whose record names its target as the directory or the role catalogue calls it.
pub const NAMING_ACTIONS: &[&str] = &[
    "pim.identity.v1.UserCreated",
    "pim.identity.v1.UserUpdated",
    "pim.identity.v1.GroupCreated",
    "pim.identity.v1.GroupUpdated",
    SERVICE_PRINCIPAL_CREATED,
    "pim.assignment.v1.RoleDefinitionCreated",
    "pim.assignment.v1.RoleDefinitionUpdated",
];

/// The name a record announces for its target, when its event is the one that names it: a
/// user's user name, a group's display name, a service principal's followed by ` (app)`
/// ([`APP`]), a custom role's name. An app acts as people do, and may be named as one
/// (`admin`): its records never read as theirs.
pub fn announced_name(r: &Record) -> Option<(String, String)> {
    let names_it = NAMING_ACTIONS.contains(&r.action.as_str());
    let name = match r.action.as_str() {
        SERVICE_PRINCIPAL_CREATED => format!("{}{APP}", r.target_name),
        _ => r.target_name.clone(),
    };
    (names_it && !r.target_id.is_empty() && !r.target_name.is_empty()).then(|| (r.target_id.clone(), name))
}

/// What follows a service principal's name in the records, as it follows it in the audit's
/// table of names (since m0011).
pub const APP: &str = " (app)";
const SERVICE_PRINCIPAL_CREATED: &str = "pim.identity.v1.ServicePrincipalCreated";

/// A refused entry's claim, as kept: an attacker's text, so without NUL (no database keeps
/// it as text) and bounded.
fn claim(s: &str) -> String {
    s.chars().filter(|c| *c != '\0').take(200).collect()
}

/// The `EventRejected` event audit publishes for a refused entry (alerting raises
/// forged_event on it), its claims kept as [`rejected`] keeps them.
pub fn rejected_event(r: &Rejected) -> ev::EventRejected {
    let claimed = |f: fn(&Envelope) -> &str| r.envelope.as_ref().map(f).map(claim).unwrap_or_default();
    ev::EventRejected {
        refusal_id: r.id(),
        stream: r.stream.clone(),
        entry_id: r.entry_id.clone(),
        reason: r.reason.code().to_owned(),
        claimed_id: claimed(|e| &e.id),
        claimed_type: claimed(|e| &e.r#type),
        claimed_source: claimed(|e| &e.source),
        claimed_subject: claimed(|e| &e.subject),
    }
}

/// The audit record of a stream entry a consumer refused (not signed by the stream's owner):
/// what it claimed to be and why it was not believed. Its claims are kept as claims (never
/// as actor, target or role of the record), and its data not at all.
pub fn rejected(r: &Rejected) -> Record {
    let claimed = r.envelope.as_ref().map(|e| {
        json!({
            "id": claim(&e.id), "type": claim(&e.r#type), "source": claim(&e.source),
            "subject": claim(&e.subject), "key_id": claim(&e.key_id), "signed": !e.signature.is_empty(),
        })
    });
    let payload = json!({
        "stream": r.stream, "entry_id": r.entry_id, "consumer": r.consumer,
        "reason": r.reason.code(), "detail": r.reason.to_string(), "claimed": claimed,
    });
    Record {
        event_id: r.id(),
        time: pim_runtime::db::now_ms(),
        source: "pim.audit".into(),
        action: "pim.audit.v1.EventRejected".into(),
        target_id: r.stream.clone(),
        target_name: r.envelope.as_ref().map(|e| claim(&e.r#type)).unwrap_or_default(),
        outcome: "failure".into(),
        trace_id: r
            .envelope
            .as_ref()
            .and_then(|e| e.traceparent.split('-').nth(1))
            .map(claim)
            .unwrap_or_default(),
        payload_json: payload.to_string(),
        ..Record::default()
    }
}

#[cfg(test)]
mod tests;
