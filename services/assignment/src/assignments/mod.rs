//! Assignments and access decisions: who holds which role where, how administrators and
//! principals change that (requests), the policies that govern it, and the CheckAccess
//! answer every service relies on.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};
use tokio::sync::broadcast;

use pim_proto::common::v1::{Actor, PrincipalKind, Ticket};
use pim_proto::events::v1 as ev;
use pim_runtime::access::{Decision, Target, permissions};
use pim_runtime::auth::Caller;
use pim_runtime::clock::Clock;
use pim_runtime::db::{Db, is_unique_violation, to_timestamp};
use pim_runtime::events::{EventType, Outbox, OutboxRows, Source, envelope, streams};
use pim_runtime::grpc::RuleViolation;

use crate::clients::{Directory, Principal};
use crate::domain::{Action, ActivationAsk, AdminAssignment, Kind, MfaState, Policy, RequestStatus, Schedule, Scope};
use crate::error::{Error, Result};
use crate::groups::Memberships;
use crate::index::AccessIndex;
use crate::policy_edits::{self, Setting};
use crate::roles::{GLOBAL_ADMINISTRATOR, RoleCatalog};
use crate::store::{self, AssignmentRow, RequestRow, Waiting};
use crate::timers::Timers;

mod activation;
mod administration;
mod definitions;
mod disables;
mod group_access;
mod policies;
mod protections;
mod requests;

pub use definitions::{NewRole, RoleChange};
use policies::nearest_policy;
pub use policies::{PolicyAt, PolicyUpdate};
pub use protections::LAST_GLOBAL_ADMIN_KEPT;
use protections::last_global_admin_refused;
pub use requests::Listing;

const SOURCE: Source = Source::Assignment;

/// The principal the bootstrap administrator's assignment and timers act as.
pub const SYSTEM_ACTOR: &str = pim_runtime::auth::SYSTEM_PRINCIPAL;

/// What the caller's token says of their second factor, for the policy's MFA rules.
fn mfa_of(caller: &Caller) -> MfaState {
    MfaState {
        has_otp: pim_runtime::auth::has_mfa(&caller.amr),
        mfa_at: caller.mfa_at.map(|s| s.saturating_mul(1000)),
        phishing_resistant: pim_runtime::auth::has_phishing_resistant_mfa(&caller.amr),
    }
}

pub fn system_actor() -> Actor {
    pim_runtime::auth::system_actor("PIM")
}

#[derive(Clone)]
pub struct Assignments {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) roles: RoleCatalog,
    pub(crate) identity: Directory,
    pub(crate) clock: Arc<dyn Clock>,
    /// Tells the scheduler about new starts and ends.
    pub(crate) timers: Arc<Timers>,
    /// How long before an active assignment ends its holder is told (0: never).
    pub(crate) expiry_notice_ms: i64,
    /// Ids of requests whose status changed in this process (WatchRequest).
    pub(crate) changes: broadcast::Sender<String>,
    /// Active assignments in memory: the CheckAccess hot path.
    pub(crate) index: AccessIndex,
    /// Members of role-assignable groups, in memory.
    pub(crate) memberships: Memberships,
    /// How far the index has applied the streams it follows: what a consistency token waits for.
    pub(crate) freshness: Arc<pim_runtime::consistency::Freshness>,
    /// Whose signatures an event given directly must bear (`ApplyDirectoryEvent`).
    pub(crate) event_keys: Arc<pim_runtime::events::EventKeys>,
}

/// An administrator's request to assign a role, as received.
pub struct AdminAssignRequest {
    pub principal_id: String,
    pub role: String,
    pub scope: String,
    pub assignment: AdminAssignment,
    pub ticket: Option<Ticket>,
    pub validate_only: bool,
}

/// A request that names an existing assignment: adminRemove, selfDeactivate.
pub struct EndRequest {
    pub kind: Kind,
    pub principal_id: String,
    pub role: String,
    pub scope: String,
    pub justification: String,
    /// The ticket the change names (system, number), kept on its request as an
    /// activation's is: approvers, bots and the audit log read it.
    pub ticket: (String, String),
    pub validate_only: bool,
}

impl EndRequest {
    /// `request` naming this change's ticket.
    fn ticketed(&self, request: RequestRow) -> RequestRow {
        RequestRow {
            ticket_system: self.ticket.0.trim().into(),
            ticket_number: self.ticket.1.trim().into(),
            ..request
        }
    }
}

/// A principal's request to activate an eligible role.
pub struct ActivateRequest {
    pub role: String,
    pub scope: String,
    pub ask: ActivationAsk,
    pub validate_only: bool,
}

fn principal_kind_str(kind: PrincipalKind) -> &'static str {
    pim_runtime::auth::kind_claim(kind)
}

/// How an administrator's assignment changed, for the event that tells it.
#[derive(Clone, Copy)]
enum Change {
    Granted,
    Updated,
    Removed,
}

/// The event that tells an administrator's assignment changed, in one place: its type
/// (EligibilityGranted, ActiveAssignmentRemoved, …) and the assignment as it now stands; the
/// caller adds the request's words (justification, ticket, reason) and, for a removal, the end.
fn assignment_changed(
    a: &AssignmentRow,
    change: Change,
    role_name: &str,
    actor: Option<Actor>,
) -> (EventType, ev::AssignmentChanged) {
    let event_type = match (a.kind, change) {
        (Kind::Eligible, Change::Granted) => EventType::EligibilityGranted,
        (Kind::Eligible, Change::Updated) => EventType::EligibilityUpdated,
        (Kind::Eligible, Change::Removed) => EventType::EligibilityRemoved,
        (Kind::Active, Change::Granted) => EventType::ActiveAssignmentGranted,
        (Kind::Active, Change::Updated) => EventType::ActiveAssignmentUpdated,
        (Kind::Active, Change::Removed) => EventType::ActiveAssignmentRemoved,
    };
    let event = ev::AssignmentChanged {
        actor,
        assignment_id: a.id.clone(),
        request_id: a.request_id.clone(),
        kind: a.kind.as_str().into(),
        assignment_kind: a.kind.to_pb() as i32,
        principal_id: a.principal_id.clone(),
        principal_kind: pim_runtime::auth::kind_from_claim(&a.principal_kind) as i32,
        principal_name: a.principal_name.clone(),
        role_id: a.role_id.clone(),
        role_name: role_name.into(),
        scope: a.scope.clone(),
        start_time: Some(to_timestamp(a.start_at)),
        end_time: a.end_at.map(to_timestamp),
        version: a.version,
        ..Default::default()
    };
    (event_type, event)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A grant that allowed a check: which assignment, of which role, where, until when, and the
/// group it came through (when held by a role-assignable group the principal is in).
#[derive(Clone, Debug)]
pub struct GrantUsed {
    pub assignment_id: String,
    pub role_id: String,
    pub scope: String,
    pub end: Option<i64>,
    pub via_group: Option<String>,
}

impl Assignments {
    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) async fn emit<C: ConnectionTrait>(
        &self,
        txn: &C,
        event_type: EventType,
        subject: &str,
        event: &impl Message,
    ) -> Result<()> {
        self.outbox
            .enqueue(txn, streams::ASSIGNMENT, &envelope(SOURCE, event_type, subject, event))
            .await?;
        Ok(())
    }

    /// After a commit: let the relay and request watchers know.
    fn committed(&self, request_ids: &[&str]) {
        self.outbox.wake();
        for id in request_ids {
            let _ = self.changes.send((*id).to_owned());
        }
    }

    /// Whether `principal` holds `target` at `scope` (directly, at that scope or above) now,
    /// and the grants that say so.
    pub async fn decide(&self, principal: &str, target: &Target, scope: &Scope) -> Result<(Decision, Vec<GrantUsed>)> {
        let now = self.now();
        // A user identity disabled holds nothing, whatever their assignments, until enabled.
        if self.memberships.is_disabled(principal) {
            return Ok((
                Decision {
                    allowed: false,
                    expires_at: None,
                },
                Vec::new(),
            ));
        }
        let mut used = Vec::new();
        let (mut permanent, mut latest_end) = (false, None::<i64>);
        // By permission: the roles that grant it, looked up once for every grant to meet.
        let granting = match target {
            Target::Role(_) => Vec::new(),
            Target::Permission(p) => self.roles.roles_granting(p),
        };
        // A grant through a group lasts while both it and the membership do.
        let mut weigh = |id: &str, grant: &crate::index::Grant, via_group: Option<(&str, Option<i64>)>| {
            let grants = match target {
                Target::Role(role) => grant.role_id == *role,
                Target::Permission(_) => granting.iter().any(|r| **r == *grant.role_id),
            };
            if grants && scope.is_within(&grant.scope) {
                let end = match via_group {
                    Some((_, member_until)) => group_access::earlier(grant.end, member_until),
                    None => grant.end,
                };
                used.push(GrantUsed {
                    assignment_id: id.to_owned(),
                    role_id: grant.role_id.clone(),
                    scope: grant.scope.clone(),
                    end,
                    via_group: via_group.map(|(g, _)| g.to_owned()),
                });
                match end {
                    None => permanent = true,
                    Some(end) => latest_end = Some(latest_end.map_or(end, |l| l.max(end))),
                }
            }
        };
        // The principal's own grants, and those of the role-assignable groups they are in
        // (permanently, or through an active membership).
        // One visit of the principal's grants: each weighed, and memberships noted.
        let mut activated = Vec::new();
        self.index.visit(principal, now, |id, grant| {
            weigh(id, grant, None);
            activated.extend(group_access::membership(grant));
        });
        for (group, until) in self.groups_with(principal, activated) {
            self.index
                .visit(&group, now, |id, grant| weigh(id, grant, Some((&group, until))));
        }
        let allowed = !used.is_empty();
        // The access lasts as long as the longest grant; a permanent grant never ends.
        let expires_at = if permanent { None } else { latest_end };
        Ok((Decision { allowed, expires_at }, used))
    }

    /// Refuses unless the caller holds `permission` at `scope`.
    pub async fn authorize(&self, caller: &Caller, permission: &str, scope: &Scope) -> Result<()> {
        let (decision, _) = self
            .decide(&caller.principal_id, &Target::Permission(permission.to_owned()), scope)
            .await?;
        if decision.allowed {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "requires permission {permission} at scope {}",
                scope.as_str()
            )))
        }
    }

    async fn principal(&self, caller: &Caller, id: &str) -> Result<Principal> {
        self.identity.principal(caller, id).await
    }

    fn role(&self, role: &str) -> Result<store::RoleRow> {
        let role = role.trim();
        if role.is_empty() {
            return Err(Error::invalid("role_id", "required"));
        }
        self.roles
            .find(role)
            .ok_or_else(|| Error::NotFound(format!("role {role}")))
    }

    /// Stores a request and its RequestCreated event (inside the caller's transaction).
    async fn record_request(
        &self,
        txn: &DatabaseTransaction,
        actor: Option<Actor>,
        request: &RequestRow,
        role_name: &str,
    ) -> Result<()> {
        store::insert_request(txn, request).await?;
        self.emit(
            txn,
            EventType::RequestCreated,
            &request.id,
            &self.request_created(actor, request, role_name),
        )
        .await
    }

    /// A request that ends an assignment now (adminRemove, selfDeactivate): status Revoked.
    #[allow(clippy::too_many_arguments)]
    fn ending_request(
        action: Action,
        kind: Kind,
        principal_id: &str,
        role_id: &str,
        scope: &Scope,
        justification: &str,
        requested_by: &str,
        assignment_id: Option<String>,
        now: i64,
        validate_only: bool,
    ) -> RequestRow {
        RequestRow {
            id: if validate_only { String::new() } else { new_id() },
            action,
            kind,
            principal_id: principal_id.into(),
            role_id: role_id.into(),
            scope: scope.as_str().into(),
            status: RequestStatus::Revoked,
            start_at: now,
            end_at: Some(now),
            justification: justification.trim().into(),
            ticket_system: String::new(),
            ticket_number: String::new(),
            requested_by: requested_by.into(),
            created_at: now,
            assignment_id,
            duration_ms: None,
            policy: String::new(),
            outcome_reason: String::new(),
        }
    }

    fn request_created(&self, actor: Option<Actor>, request: &RequestRow, role_name: &str) -> ev::RequestCreated {
        // The policy the request waits under, for the approval's rules.
        let waiting = (request.status == RequestStatus::PendingApproval)
            .then(|| serde_json::from_str::<Policy>(&request.policy).unwrap_or_default());
        ev::RequestCreated {
            actor,
            request_id: request.id.clone(),
            action: request.action.as_str().into(),
            kind: request.kind.as_str().into(),
            request_action: request.action.to_pb() as i32,
            assignment_kind: request.kind.to_pb() as i32,
            request_status: request.status.to_pb() as i32,
            principal_id: request.principal_id.clone(),
            role_id: request.role_id.clone(),
            role_name: role_name.into(),
            scope: request.scope.clone(),
            justification: request.justification.clone(),
            ticket: Some(Ticket {
                system: request.ticket_system.clone(),
                number: request.ticket_number.clone(),
            }),
            start_time: Some(to_timestamp(request.start_at)),
            end_time: request.end_at.map(to_timestamp),
            status: request.status.to_string(),
            approval_stages: waiting
                .as_ref()
                .map(|p| {
                    p.effective_stages()
                        .iter()
                        .map(crate::domain::ApprovalStage::to_pb)
                        .collect()
                })
                .unwrap_or_default(),
            // The approver gives the active assignment: "require MFA on active assignment"
            // asks it of them, as of an administrator extending it directly.
            approver_mfa_freshness: waiting
                .filter(|p| request.action.is_self_keep() && p.wants_administrator_mfa(request.kind))
                .map(|p| crate::domain::duration_to_pb(p.mfa_freshness)),
            duration: request
                .duration_ms
                .map(|ms| crate::domain::duration_to_pb(Duration::from_millis(ms.max(0) as u64))),
        }
    }

    /// The last entry of the assignment stream the access index has caught up with (Redis;
    /// empty before the first): tests wait on it to know an event was judged.
    pub fn index_position(&self) -> String {
        self.freshness
            .applied(streams::ASSIGNMENT)
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    /// Waits until the index has applied what `token` (a client's `at_least_as_fresh`) names,
    /// at most `within`; an empty token asks for nothing.
    pub async fn fresh_enough(&self, token: &str, within: std::time::Duration) -> Result<()> {
        if token.is_empty() {
            return Ok(());
        }
        let token = pim_runtime::consistency::ConsistencyToken::parse(token)
            .map_err(|why| Error::invalid("at_least_as_fresh", why))?;
        self.freshness.wait(&token, within).await.map_err(Error::Stale)
    }

    /// Makes the access index agree with the database about one assignment, after a commit
    /// that may have changed it: in force, it is (re)indexed; ended, it is forgotten.
    pub async fn index_assignment(&self, assignment_id: &str) -> Result<()> {
        self.index_assignments(&[assignment_id.to_owned()]).await
    }

    /// The same for assignments the stream says changed (any replica's writes): what each is
    /// now comes from the database, so an event naming an assignment that does not exist, or
    /// ending one that has not ended, changes nothing.
    pub async fn index_assignments(&self, ids: &[String]) -> Result<()> {
        for a in store::find_assignments(&self.db, ids).await? {
            self.index_row(&a);
        }
        Ok(())
    }

    /// The same for every active assignment made, moved or ended at or after `since`, by any
    /// replica: a change whose event never reached this one (Redis lost it) still does.
    pub async fn index_changed_since(&self, since: i64) -> Result<()> {
        for a in store::assignments_changed_since(&self.db, since).await? {
            self.index_row(&a);
        }
        Ok(())
    }

    fn index_row(&self, a: &AssignmentRow) {
        if a.status == "active" {
            self.index.upsert_row(a);
        } else {
            self.index.remove(&a.principal_id, &a.id);
        }
    }

    /// Ends `held` when its end passed before the timer ended it: it grants nothing any more,
    /// but the database's one-holder rules still count it. Returns whether it did.
    pub(crate) async fn end_if_lapsed(&self, held: &AssignmentRow, role_name: &str, now: i64) -> Result<bool> {
        if held.end_at.is_none_or(|end| end > now) {
            return Ok(false);
        }
        let txn = self.db.begin().await?;
        self.end(
            &txn,
            held,
            "expired",
            Some(system_actor()),
            role_name,
            held.expired_at(now),
        )
        .await?;
        // As the timer would have: what rested on it and is no longer allowed ends with it.
        let resting = self.resting_on(&txn, std::slice::from_ref(held), now).await?;
        let fallout = self
            .bound_to_eligibility(&txn, resting, Some(system_actor()), now)
            .await?;
        txn.commit().await?;
        self.index.remove(&held.principal_id, &held.id);
        self.settle(&fallout);
        Ok(true)
    }

    /// Ends one assignment with `reason` (expired, removed, deactivated) and tells the others.
    pub(crate) async fn end(
        &self,
        txn: &DatabaseTransaction,
        a: &AssignmentRow,
        reason: &str,
        actor: Option<Actor>,
        role_name: &str,
        at: i64,
    ) -> Result<bool> {
        if !store::end_assignment(txn, &a.id, reason, at).await? {
            return Ok(false);
        }
        if a.start_at > at {
            let why = format!("ended before it started ({reason})");
            self.settle_scheduled(txn, a, RequestStatus::Canceled, &why, actor.clone(), at)
                .await?;
        }
        if a.kind == Kind::Active {
            let event = ev::RoleDeactivated {
                actor: actor.clone(),
                assignment_id: a.id.clone(),
                principal_id: a.principal_id.clone(),
                role_id: a.role_id.clone(),
                scope: a.scope.clone(),
                reason: reason.into(),
                end_time: Some(to_timestamp(at)),
            };
            self.emit(txn, EventType::RoleDeactivated, &a.principal_id, &event)
                .await?;
        }
        if a.origin == "admin" {
            let (event_type, mut event) = assignment_changed(a, Change::Removed, role_name, actor);
            event.end_time = Some(to_timestamp(at));
            event.reason = reason.into();
            self.emit(txn, event_type, &a.principal_id, &event).await?;
        }
        Ok(true)
    }

    /// Moves an assignment's end and tells the others (EligibilityUpdated /
    /// ActiveAssignmentUpdated, with the request's action as the reason).
    async fn change_end(
        &self,
        txn: &DatabaseTransaction,
        actor: Option<Actor>,
        assignment: &mut AssignmentRow,
        end: Option<i64>,
        role_name: &str,
        request: &RequestRow,
    ) -> Result<bool> {
        let Some(version) =
            store::set_assignment_end(txn, &assignment.id, assignment.version, end, self.clock.now_ms()).await?
        else {
            return Ok(false);
        };
        assignment.version = version;
        if let Some(end) = end {
            self.timers.deadline(end);
        }
        assignment.end_at = end;
        let (event_type, mut event) = assignment_changed(assignment, Change::Updated, role_name, actor);
        event.request_id = request.id.clone();
        event.justification = request.justification.clone();
        event.reason = request.action.as_str().into();
        self.emit(txn, event_type, &assignment.principal_id, &event).await?;
        Ok(true)
    }

    pub async fn has_active_global_admin(&self) -> Result<bool> {
        Ok(
            !store::lock_permanent_global_admins(&self.db, GLOBAL_ADMINISTRATOR, self.now())
                .await?
                .is_empty(),
        )
    }

    /// The users holding a permanent active Global Administrator assignment at `/`, disabled
    /// or not (the directory tells which are).
    pub async fn permanent_global_admin_holders(&self) -> Result<Vec<String>> {
        Ok(store::permanent_holders(&self.db, GLOBAL_ADMINISTRATOR, self.now()).await?)
    }

    /// Makes `user_id` a permanent, active Global Administrator at `/` — the break-glass
    /// account — unless a permanent Global Administrator exists already. Returns whether it did.
    pub async fn bootstrap_global_admin(&self, user_id: &str, user_name: &str) -> Result<bool> {
        if self.has_active_global_admin().await? {
            return Ok(false);
        }
        let now = self.now();
        let request = RequestRow {
            id: new_id(),
            action: Action::AdminAssign,
            kind: Kind::Active,
            principal_id: user_id.into(),
            role_id: GLOBAL_ADMINISTRATOR.into(),
            scope: "/".into(),
            status: RequestStatus::Provisioned,
            start_at: now,
            end_at: None,
            justification: "bootstrap: first Global Administrator (break-glass)".into(),
            ticket_system: String::new(),
            ticket_number: String::new(),
            requested_by: SYSTEM_ACTOR.into(),
            created_at: now,
            assignment_id: None,
            duration_ms: None,
            policy: String::new(),
            outcome_reason: String::new(),
        };
        let principal = Principal {
            id: user_id.into(),
            kind: PrincipalKind::User,
            name: user_name.into(),
            is_assignable_to_role: false,
        };
        match self
            .grant(Some(system_actor()), request, &principal, "Global Administrator")
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::Internal(e)) if e.downcast_ref::<sea_orm::DbErr>().is_some_and(is_unique_violation) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether the database refused a write for a unique index (a second live assignment or
/// waiting request where one may be).
fn is_duplicate(err: &Error) -> bool {
    matches!(err, Error::Internal(e) if e.downcast_ref::<sea_orm::DbErr>().is_some_and(pim_runtime::db::is_unique_violation))
}

/// ALREADY_EXISTS for a second administrator's assignment while `live` is held.
fn already_assigned(role_name: &str, live: &AssignmentRow) -> Error {
    let until = live
        .end_at
        .map(|end| format!("until {}", pim_runtime::db::rfc3339(end)))
        .unwrap_or_else(|| "permanent".into());
    Error::AlreadyExists(format!(
        "{} already has an {} assignment of {role_name} at {} (assignment {}, {until}); extend or update it instead",
        live.principal_id, live.kind, live.scope, live.id
    ))
}

/// ALREADY_EXISTS when the one that collided ended before it could be named.
fn err_same_moment(role_name: &str, scope: &Scope) -> Error {
    Error::AlreadyExists(format!(
        "another assignment of {role_name} at {} was being made at the same moment; look at the assignments",
        scope.as_str()
    ))
}

/// ALREADY_EXISTS for a second activation while `live` is in force (or scheduled).
fn already_active(role_name: &str, live: &AssignmentRow, now: i64) -> Error {
    let until = live
        .end_at
        .map(|end| format!("until {}", pim_runtime::db::rfc3339(end)))
        .unwrap_or_else(|| "with no end".into());
    if live.start_at > now {
        return Error::AlreadyExists(format!(
            "{role_name} is already scheduled at {} from {} (assignment {}, {until}, request {}); to ask for another, cancel that request first (pim cancel)",
            live.scope,
            pim_runtime::db::rfc3339(live.start_at),
            live.id,
            live.request_id
        ));
    }
    Error::AlreadyExists(format!(
        "{role_name} is already active at {} (assignment {}, {until}); an activation is not extended: to hold the role longer, deactivate it and activate it again",
        live.scope, live.id
    ))
}

/// ALREADY_EXISTS for a second request while `waiting` awaits approval.
fn already_waiting(role_name: &str, waiting: &RequestRow) -> Error {
    Error::AlreadyExists(format!(
        "a request ({}) of {role_name} at {} is already waiting for approval (request {}, since {}); cancel it or wait for the decision",
        waiting.action,
        waiting.scope,
        waiting.id,
        pim_runtime::db::rfc3339(waiting.created_at)
    ))
}
