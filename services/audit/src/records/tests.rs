//! How each event becomes an audit record.

use super::*;
use pim_runtime::events::{EventType, Source, envelope};

#[test]
fn an_assignment_event_names_actor_target_role_and_scope() {
    let e = ev::AssignmentChanged {
        actor: Some(Actor {
            principal_id: "admin-id".into(),
            kind: 1,
            display_name: "admin".into(),
            session_id: "session-7".into(),
        }),
        principal_id: "lee-id".into(),
        principal_name: "Lee".into(),
        role_id: "role-1".into(),
        role_name: "Exchange Administrator".into(),
        scope: "/".into(),
        justification: "mailbox migration".into(),
        ticket: Some(Ticket {
            system: "ServiceNow".into(),
            number: "INC1".into(),
        }),
        ..Default::default()
    };
    let env = envelope(Source::Assignment, EventType::ActiveAssignmentGranted, "lee-id", &e);
    let r = record(&env, &Correlator::new(None)).unwrap();
    assert_eq!(r.action, "pim.assignment.v1.ActiveAssignmentGranted");
    assert_eq!(
        (r.actor_id.as_str(), r.target_id.as_str(), r.role_name.as_str()),
        ("admin-id", "lee-id", "Exchange Administrator")
    );
    assert_eq!(r.ticket, "ServiceNow:INC1");
    assert_eq!(r.justification, "mailbox migration");
    assert_eq!(r.trace_id.len(), 32);
    // Which of the actor's sessions did it: what an incident response ends.
    let payload: serde_json::Value = serde_json::from_str(&r.payload_json).unwrap();
    assert_eq!(payload["actor_session_id"], "session-7");
    // An app is named as one, though no record here announced its name yet.
    let by_app = ev::AssignmentChanged {
        actor: Some(Actor {
            principal_id: "app-id".into(),
            kind: pim_proto::common::v1::PrincipalKind::ServicePrincipal as i32,
            display_name: "admin".into(),
            session_id: String::new(),
        }),
        ..e.clone()
    };
    let env = envelope(
        Source::Assignment,
        EventType::ActiveAssignmentGranted,
        "lee-id",
        &by_app,
    );
    assert_eq!(record(&env, &Correlator::new(None)).unwrap().actor_name, "admin (app)");
    // A request's change of status names whose request it is, for which role and where.
    let (principal_id, role_id, scope) = ("lee-id".to_owned(), "role-1".to_owned(), "/apps".to_owned());
    let changed = ev::RequestStatusChanged {
        principal_id,
        role_id,
        scope,
        ..Default::default()
    };
    let r = record(
        &envelope(Source::Assignment, EventType::RequestStatusChanged, "r-1", &changed),
        &Correlator::new(None),
    )
    .unwrap();
    assert_eq!(
        (r.target_id.as_str(), r.role_id.as_str(), r.scope.as_str()),
        ("lee-id", "role-1", "/apps")
    );
}

#[test]
fn an_approval_decision_names_the_approver_the_requester_and_why() {
    let e = ev::ApprovalDecisionRecorded {
        actor: Some(Actor {
            principal_id: "ann-id".into(),
            kind: 1,
            display_name: "ann".into(),
            session_id: String::new(),
        }),
        approval_id: "a-1".into(),
        request_id: "r-1".into(),
        decision: "approve".into(),
        justification: "checked the ticket".into(),
        requester_id: "lee-id".into(),
        role_id: "role-1".into(),
        scope: "/".into(),
        stage: 0,
        ..Default::default()
    };
    let r = record(
        &envelope(Source::Approval, EventType::ApprovalDecisionRecorded, "a-1", &e),
        &Correlator::new(None),
    )
    .unwrap();
    assert_eq!(
        (r.actor_id.as_str(), r.target_id.as_str(), r.role_id.as_str()),
        ("ann-id", "lee-id", "role-1")
    );
    assert_eq!(
        (r.justification.as_str(), r.outcome.as_str()),
        ("checked the ticket", "success")
    );
    let r = record(
        &envelope(Source::Approval, EventType::SelfApprovalAttempted, "a-1", &e),
        &Correlator::new(None),
    )
    .unwrap();
    assert_eq!(r.outcome, "refused");
}

#[test]
fn a_denied_or_expired_approval_is_a_failure_with_its_reason() {
    let e = ev::ApprovalCompleted {
        approval_id: "a-1".into(),
        request_id: "r-1".into(),
        outcome: "Denied".into(),
        requester_id: "lee-id".into(),
        reason: "no ticket approval".into(),
        ..Default::default()
    };
    let correlator = Correlator::new(None);
    let denied = record(
        &envelope(Source::Approval, EventType::ApprovalDenied, "a-1", &e),
        &correlator,
    )
    .unwrap();
    assert_eq!(denied.outcome, "failure");
    let payload: serde_json::Value = serde_json::from_str(&denied.payload_json).unwrap();
    assert_eq!(payload["reason"], "no ticket approval");
    let expired = record(
        &envelope(Source::Approval, EventType::ApprovalExpired, "a-1", &e),
        &correlator,
    )
    .unwrap();
    assert_eq!(expired.outcome, "failure");
    let granted = record(
        &envelope(Source::Approval, EventType::ApprovalGranted, "a-1", &e),
        &correlator,
    )
    .unwrap();
    assert_eq!(granted.outcome, "success");
}

#[test]
fn a_failed_sign_in_is_a_failure_and_holds_no_password() {
    let e = ev::SignInFailed {
        user_name: "lee".into(),
        principal_id: "lee-id".into(),
        reason: "bad_password".into(),
        source_ip: "203.0.113.7".into(),
        user_agent: "pim/0.1".into(),
        more_refused: 0,
    };
    let keyed = Correlator::new(Some("audit key"));
    let r = record(
        &envelope(Source::Identity, EventType::SignInFailed, "lee-id", &e),
        &keyed,
    )
    .unwrap();
    assert_eq!(r.outcome, "failure");
    assert!(!r.payload_json.contains("password\":"));
    // The address is kept only as a keyed tag: the same for the same address, different
    // under another key, and never the address itself.
    assert!(!r.payload_json.contains("203.0.113.7") && !r.payload_json.contains("pim/0.1"));
    let again = record(
        &envelope(Source::Identity, EventType::SignInFailed, "lee-id", &e),
        &keyed,
    )
    .unwrap();
    let tag = |r: &Record| serde_json::from_str::<serde_json::Value>(&r.payload_json).unwrap()["source_hmac"].clone();
    assert_eq!(tag(&r), tag(&again));
    assert_eq!(tag(&r).as_str().map(str::len), Some(64));
    let other = record(
        &envelope(Source::Identity, EventType::SignInFailed, "lee-id", &e),
        &Correlator::new(Some("another key")),
    )
    .unwrap();
    assert_ne!(tag(&r), tag(&other));
    let unkeyed = record(
        &envelope(Source::Identity, EventType::SignInFailed, "lee-id", &e),
        &Correlator::new(None),
    )
    .unwrap();
    assert_eq!(tag(&unkeyed), "");
}

/// Every event type the services publish on the streams audit follows (all but audit's
/// own, which it records as it makes them) is decoded: no record keeps its payload as
/// undecoded bytes, and payload times read as RFC 3339.
#[test]
fn every_event_type_is_decoded_with_readable_times() {
    let published = EventType::ALL
        .iter()
        .flat_map(|t| t.sources().iter().map(move |s| (*s, *t)))
        .filter(|(source, _)| *source != Source::Audit);
    let undecoded: Vec<String> = published
        .filter(|(_, t)| t.is_recorded())
        .filter_map(|(source, event_type)| {
            let env = envelope(source, event_type, "subject", &ev::AlertEvent::default());
            let r = record(&env, &Correlator::new(None)).unwrap();
            r.payload_json.contains("data_base64").then_some(env.r#type)
        })
        .collect();
    assert_eq!(undecoded, Vec::<String>::new(), "kept as undecoded bytes");
    let e = ev::AssignmentChanged {
        end_time: Some(pim_runtime::db::to_timestamp(1_796_442_120_364)),
        ..Default::default()
    };
    let r = record(
        &envelope(Source::Assignment, EventType::EligibilityGranted, "lee-id", &e),
        &Correlator::new(None),
    )
    .unwrap();
    let payload: serde_json::Value = serde_json::from_str(&r.payload_json).unwrap();
    assert_eq!(payload["end_time"], "2026-12-05T03:42:00.364Z");
    let alert = ev::AlertEvent {
        alert_id: "alert-1".into(),
        rule_id: "policy_weakened".into(),
        severity: "medium".into(),
        principal_id: "admin-id".into(),
        role_id: "role-1".into(),
        ..Default::default()
    };
    let r = record(
        &envelope(Source::Alerting, EventType::AlertRaised, "alert-1", &alert),
        &Correlator::new(None),
    )
    .unwrap();
    assert_eq!(
        (r.target_id.as_str(), r.target_name.as_str(), r.role_id.as_str()),
        ("alert-1", "policy_weakened", "role-1")
    );
}
