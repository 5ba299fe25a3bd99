//! Who hears of an assignment or an activation, worked out after it committed (off the
//! activation's hot path) from the role's notification rules: a `NotificationsDue` event that
//! audit turns into mail. Approvers hear of an activation, or a request to extend or renew
//! an assignment, waiting for them (a mail that asks for action; the activation's approver
//! rule applies to both); administrators and the assignee hear of eligible and active assignments and
//! of activations; escalation approvers hear of an activation escalated to them; the
//! approvers of a later stage hear of it when it starts, and every stage's approvers are
//! reminded half through it; the requester hears of a denial, and the holder of an active role that it
//! ends soon (`PIM_EXPIRY_NOTICE_SECS` before) and that it ended.

use sea_orm::DatabaseTransaction;

use pim_proto::assignment::v1 as pb;
use pim_proto::catalogue::{
    GLOBAL_ADMINISTRATOR, GROUP_MEMBER, GROUP_OWNER, PRIVILEGED_ROLE_ADMINISTRATOR, group_of_scope, group_scope,
    is_group_access,
};
use pim_proto::common::v1::{Actor, Ticket};
use pim_proto::events::v1 as ev;
use pim_proto::events::v1::Happening;
use pim_runtime::db::to_timestamp;
use pim_runtime::events::{Envelope, EventHandler, EventType, decode, event_type, streams};

use crate::assignments::Assignments;
use crate::domain::{Action, Kind, NotificationEvent, NotificationParty, Policy, Scope};
use crate::store::{self, RequestRow};

/// How old a change may be and still be told.
const STALE_AFTER_MS: i64 = 24 * 3600 * 1000;

/// Follows assignment's own stream and publishes who must hear of each change.
pub struct Notifier(pub Assignments);

/// What a change is, as a notification tells it.
struct Change {
    event: NotificationEvent,
    happening: Happening,
    request_id: String,
    assignment_id: String,
    principal_id: String,
    role_id: String,
    scope: String,
    end: Option<i64>,
    reason: String,
    actor: Option<Actor>,
    /// Which approvers are asked.
    asked: Asked,
}

/// The approvers a notice asks.
enum Asked {
    /// The first stage's (the policy's), as a request starts.
    FirstStage,
    /// A stage's named approvers (none: the default approvers) and those who joined it by
    /// escalation: a later stage starting, or a reminder.
    Stage {
        named: Vec<String>,
        escalation: Vec<String>,
    },
    /// These only: escalation approvers joining.
    Only(Vec<String>),
}

impl Change {
    /// A change of `happening` to a principal's role at a scope; the rest unknown until said.
    fn about(
        event: NotificationEvent,
        happening: Happening,
        principal_id: String,
        role_id: String,
        scope: String,
    ) -> Self {
        Self {
            event,
            happening,
            request_id: String::new(),
            assignment_id: String::new(),
            principal_id,
            role_id,
            scope,
            end: None,
            reason: String::new(),
            actor: None,
            asked: Asked::FirstStage,
        }
    }

    /// Who hears of it: approvers of what waits for them; administrators and the holder of
    /// what was granted; only the holder of what was denied or ended.
    fn parties(&self) -> &'static [NotificationParty] {
        match self.happening {
            Happening::AwaitingApproval | Happening::ApprovalReminder => &[NotificationParty::Approver],
            Happening::Granted => &[NotificationParty::Admin, NotificationParty::Assignee],
            _ => &[NotificationParty::Assignee],
        }
    }
}

impl Change {
    /// The change an event announces, if it is one a notification tells of. Some need their
    /// request to know whose and which role (`request`).
    fn of(envelope: &Envelope, request: impl Fn(&str) -> Option<RequestRow>) -> anyhow::Result<Option<Self>> {
        let change = match event_type(envelope) {
            Some(EventType::RequestCreated) => {
                let e: ev::RequestCreated = decode(envelope)?;
                // An activation, or a request to keep an assignment, waiting for approvers.
                let asks = matches!(
                    e.typed_action(),
                    pb::RequestAction::SelfActivate | pb::RequestAction::SelfExtend | pb::RequestAction::SelfRenew
                );
                if e.typed_status() != pb::RequestStatus::PendingApproval || !asks {
                    return Ok(None);
                }
                Change {
                    request_id: e.request_id,
                    end: e.end_time.as_ref().map(pim_runtime::db::from_timestamp),
                    actor: e.actor,
                    ..Change::about(
                        NotificationEvent::Activation,
                        Happening::AwaitingApproval,
                        e.principal_id,
                        e.role_id,
                        e.scope,
                    )
                }
            }
            Some(EventType::RoleActivated) => {
                let e: ev::RoleActivated = decode(envelope)?;
                Change {
                    request_id: e.request_id,
                    assignment_id: e.assignment_id,
                    end: e.end_time.as_ref().map(pim_runtime::db::from_timestamp),
                    actor: e.actor,
                    ..Change::about(
                        NotificationEvent::Activation,
                        Happening::Granted,
                        e.principal_id,
                        e.role_id,
                        e.scope,
                    )
                }
            }
            Some(event_type @ (EventType::EligibilityGranted | EventType::ActiveAssignmentGranted)) => {
                let e: ev::AssignmentChanged = decode(envelope)?;
                Change {
                    request_id: e.request_id,
                    assignment_id: e.assignment_id,
                    end: e.end_time.as_ref().map(pim_runtime::db::from_timestamp),
                    actor: e.actor,
                    ..Change::about(
                        if event_type == EventType::EligibilityGranted {
                            NotificationEvent::EligibleAssignment
                        } else {
                            NotificationEvent::ActiveAssignment
                        },
                        Happening::Granted,
                        e.principal_id,
                        e.role_id,
                        e.scope,
                    )
                }
            }
            Some(EventType::RequestStatusChanged) => {
                let e: ev::RequestStatusChanged = decode(envelope)?;
                let decided = e.typed_previous_status() == pb::RequestStatus::PendingApproval
                    && matches!(e.typed_status(), pb::RequestStatus::Denied | pb::RequestStatus::Expired);
                let asked = |r: &RequestRow| r.action == Action::SelfActivate || r.action.is_self_keep();
                let Some(r) = request(&e.request_id).filter(|r| decided && asked(r)) else {
                    return Ok(None);
                };
                let reason = match (e.typed_status(), r.outcome_reason.as_str()) {
                    (_, said) if !said.is_empty() => said.to_owned(),
                    (pb::RequestStatus::Expired, _) => "no decision in time".to_owned(),
                    _ => "denied".to_owned(),
                };
                Change {
                    request_id: r.id,
                    reason,
                    actor: e.actor,
                    ..Change::about(
                        NotificationEvent::Activation,
                        Happening::Denied,
                        r.principal_id,
                        r.role_id,
                        r.scope,
                    )
                }
            }
            Some(EventType::ApprovalEscalated) => {
                let e: ev::ApprovalCompleted = decode(envelope)?;
                if e.escalation_approver_ids.is_empty() {
                    return Ok(None);
                }
                Change {
                    request_id: e.request_id,
                    reason: "escalated: no decision yet".into(),
                    actor: e.actor,
                    asked: Asked::Only(e.escalation_approver_ids),
                    ..Change::about(
                        NotificationEvent::Activation,
                        Happening::AwaitingApproval,
                        e.requester_id,
                        e.role_id,
                        e.scope,
                    )
                }
            }
            Some(event_type @ (EventType::ApprovalStageStarted | EventType::ApprovalReminder)) => {
                let e: ev::ApprovalCompleted = decode(envelope)?;
                let (happening, note) = if event_type == EventType::ApprovalReminder {
                    (Happening::ApprovalReminder, "reminder: still no decision; it times out")
                } else {
                    (
                        Happening::AwaitingApproval,
                        "the previous stage approved; your stage times out",
                    )
                };
                let until = e
                    .expires_at
                    .as_ref()
                    .map(|t| pim_runtime::format::rfc3339_ms(pim_runtime::db::from_timestamp(t)))
                    .unwrap_or_default();
                Change {
                    request_id: e.request_id,
                    reason: format!("{note} at {until}"),
                    actor: e.actor,
                    asked: Asked::Stage {
                        named: e.approver_ids,
                        escalation: e.escalation_approver_ids,
                    },
                    ..Change::about(
                        NotificationEvent::Activation,
                        happening,
                        e.requester_id,
                        e.role_id,
                        e.scope,
                    )
                }
            }
            Some(EventType::AssignmentExpiring) => {
                let e: ev::AssignmentExpiring = decode(envelope)?;
                Change {
                    request_id: e.request_id,
                    assignment_id: e.assignment_id,
                    end: e.end_time.as_ref().map(pim_runtime::db::from_timestamp),
                    ..Change::about(
                        NotificationEvent::Activation,
                        Happening::Expiring,
                        e.principal_id,
                        e.role_id,
                        e.scope,
                    )
                }
            }
            Some(EventType::RoleDeactivated) => {
                let e: ev::RoleDeactivated = decode(envelope)?;
                Change {
                    assignment_id: e.assignment_id,
                    reason: e.reason,
                    actor: e.actor,
                    ..Change::about(
                        NotificationEvent::Activation,
                        Happening::Ended,
                        e.principal_id,
                        e.role_id,
                        e.scope,
                    )
                }
            }
            Some(EventType::ActivationShortened) => {
                let e: ev::ActivationShortened = decode(envelope)?;
                Change {
                    assignment_id: e.assignment_id,
                    end: e.end_time.as_ref().map(pim_runtime::db::from_timestamp),
                    reason: e.reason,
                    actor: e.actor,
                    ..Change::about(
                        NotificationEvent::Activation,
                        Happening::Shortened,
                        e.principal_id,
                        e.role_id,
                        e.scope,
                    )
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(change))
    }
}

impl Notifier {
    /// The policy the change was made under: the one its request recorded, else the one in
    /// force now.
    async fn policy(
        &self,
        txn: &DatabaseTransaction,
        request: Option<&RequestRow>,
        change: &Change,
    ) -> anyhow::Result<Policy> {
        if let Some(policy) = request.and_then(|r| serde_json::from_str::<Policy>(&r.policy).ok()) {
            return Ok(policy);
        }
        let scope = Scope::parse(&change.scope).map_err(crate::error::Error::into_anyhow)?;
        let (policy, _) = self
            .0
            .effective_policy(txn, &change.role_id, &scope)
            .await
            .map_err(crate::error::Error::into_anyhow)?;
        Ok(policy)
    }

    /// Principals and the members of those that are groups (a group has no mailbox).
    async fn with_members(&self, txn: &DatabaseTransaction, ids: &[String], now: i64) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for id in ids {
            out.push(id.clone());
            out.extend(store::members_of(txn, id, &group_scope(id), GROUP_MEMBER, now).await?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Whoever is active Global Administrator or Privileged Role Administrator at `/`.
    async fn administrators(&self, txn: &DatabaseTransaction, now: i64) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        let root = store::Slice {
            scopes: &["/".to_owned()],
            ..Default::default()
        };
        for role in [GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR] {
            let held = store::current_assignments(txn, Kind::Active, None, Some(role), now, store::Started::Only, root);
            ids.extend(held.await?.into_iter().map(|a| a.principal_id));
        }
        self.with_members(txn, &ids, now).await
    }

    /// Whoever owns `group` through PIM now (an activated or active ownership); its owners in
    /// the directory audit reaches itself (`Notice.owners_of`).
    async fn owners(&self, txn: &DatabaseTransaction, group: &str, now: i64) -> anyhow::Result<Vec<String>> {
        let scope = [group_scope(group)];
        let at_group = store::Slice {
            scopes: &scope,
            ..Default::default()
        };
        let held = store::current_assignments(
            txn,
            Kind::Active,
            None,
            Some(GROUP_OWNER),
            now,
            store::Started::Only,
            at_group,
        );
        Ok(held.await?.into_iter().map(|a| a.principal_id).collect())
    }

    /// The notices a change calls for, party by party, as the policy's rules say.
    async fn notices(
        &self,
        txn: &DatabaseTransaction,
        policy: &Policy,
        change: &Change,
    ) -> anyhow::Result<Vec<ev::Notice>> {
        let now = self.0.now();
        let mut notices = Vec::new();
        // Access to a group: its owners are default approvers first (as approval decides).
        let group = group_of_scope(&change.scope).filter(|_| is_group_access(&change.role_id));
        for party in change.parties() {
            let mut owners_of = Vec::new();
            let rule = policy.notification_rule(change.event, *party);
            let critical = matches!(
                change.happening,
                Happening::AwaitingApproval | Happening::ApprovalReminder
            );
            if !rule.sends(critical) {
                continue;
            }
            let mut principal_ids = Vec::new();
            if rule.default_recipients {
                principal_ids = match party {
                    NotificationParty::Admin => self.administrators(txn, now).await?,
                    NotificationParty::Assignee => {
                        self.with_members(txn, std::slice::from_ref(&change.principal_id), now)
                            .await?
                    }
                    NotificationParty::Approver => {
                        let (named, escalation) = match &change.asked {
                            Asked::FirstStage => {
                                let first = policy.effective_stages().into_iter().next().unwrap_or_default();
                                (Some(first.approver_ids), Vec::new())
                            }
                            Asked::Stage { named, escalation } => (Some(named.clone()), escalation.clone()),
                            Asked::Only(ids) => (None, ids.clone()),
                        };
                        let mut named = match named {
                            Some(ids) if ids.is_empty() => {
                                let mut ids = self.administrators(txn, now).await?;
                                if let Some(group) = group {
                                    ids.extend(self.owners(txn, group, now).await?);
                                    owners_of.push(group.to_owned());
                                }
                                ids
                            }
                            Some(ids) => self.with_members(txn, &ids, now).await?,
                            None => Vec::new(),
                        };
                        named.extend(self.with_members(txn, &escalation, now).await?);
                        named.sort();
                        named.dedup();
                        // Nobody approves their own request.
                        named.into_iter().filter(|id| *id != change.principal_id).collect()
                    }
                };
            }
            notices.push(ev::Notice {
                party: party.to_pb() as i32,
                principal_ids,
                emails: rule.additional_recipients.clone(),
                critical,
                owners_of,
            });
        }
        Ok(notices)
    }
}

#[async_trait::async_trait]
impl EventHandler for Notifier {
    fn consumer(&self) -> &str {
        "assignment-notifications"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![streams::ASSIGNMENT, streams::APPROVAL]
    }

    fn wants(&self, event_type: Option<EventType>) -> bool {
        matches!(
            event_type,
            Some(
                EventType::RequestCreated
                    | EventType::RoleActivated
                    | EventType::EligibilityGranted
                    | EventType::ActiveAssignmentGranted
                    | EventType::RequestStatusChanged
                    | EventType::RoleDeactivated
                    | EventType::ActivationShortened
                    | EventType::AssignmentExpiring
                    | EventType::ApprovalEscalated
                    | EventType::ApprovalStageStarted
                    | EventType::ApprovalReminder
            )
        )
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        // News a day old is not news: notifications switched on later do not mail what the
        // stream still holds from before, nor does a long outage flood inboxes afterwards.
        let at = envelope
            .time
            .as_ref()
            .map(pim_runtime::db::from_timestamp)
            .unwrap_or_default();
        if self.0.now() - at > STALE_AFTER_MS {
            tracing::debug!(event_id = %envelope.id, "too old to notify of");
            return Ok(());
        }
        // A status change names only its request: read it first.
        let status_of = match event_type(envelope) {
            Some(EventType::RequestStatusChanged) => {
                let e: ev::RequestStatusChanged = decode(envelope)?;
                store::find_request(txn, &e.request_id).await?
            }
            _ => None,
        };
        let Some(mut change) = Change::of(envelope, |_| status_of.clone())? else {
            return Ok(());
        };
        // An end names its assignment: its request says whether it was an activation or an
        // administrator's active assignment (whose rules apply).
        if matches!(
            change.happening,
            Happening::Ended | Happening::Expiring | Happening::Shortened
        ) && let Some(a) = store::find_assignment(txn, &change.assignment_id).await?
        {
            change.request_id = a.request_id.clone();
            change.end = a.end_at;
            if a.origin == "admin" {
                change.event = NotificationEvent::ActiveAssignment;
            }
        }
        let request = match change.request_id.as_str() {
            "" => None,
            id => store::find_request(txn, id).await?,
        };
        let policy = self.policy(txn, request.as_ref(), &change).await?;
        let notices = self.notices(txn, &policy, &change).await?;
        if notices.is_empty() {
            return Ok(());
        }
        let role_name = self.0.roles.get(&change.role_id).map(|r| r.name).unwrap_or_default();
        let event = ev::NotificationsDue {
            event: change.event.to_pb() as i32,
            request_id: change.request_id,
            assignment_id: change.assignment_id,
            principal_id: change.principal_id.clone(),
            // Audit names principals the one way it names them everywhere.
            principal_name: String::new(),
            role_id: change.role_id,
            role_name,
            scope: change.scope,
            justification: request.as_ref().map(|r| r.justification.clone()).unwrap_or_default(),
            ticket: request
                .as_ref()
                .filter(|r| !r.ticket_number.is_empty())
                .map(|r| Ticket {
                    system: r.ticket_system.clone(),
                    number: r.ticket_number.clone(),
                }),
            end_time: change.end.map(to_timestamp),
            happening: change.happening as i32,
            reason: change.reason,
            notices,
            actor: change.actor,
            request_action: request.as_ref().map_or(0, |r| r.action.to_pb() as i32),
            assignment_kind: request.as_ref().map_or(0, |r| r.kind.to_pb() as i32),
            ..Default::default()
        };
        self.0
            .emit(txn, EventType::NotificationsDue, &change.principal_id, &event)
            .await
            .map_err(crate::error::Error::into_anyhow)
    }

    async fn after_commit(&self, _envelope: &Envelope) {
        self.0.outbox.wake();
    }
}
