//! Assignments and access decisions: who holds which role where, how administrators and
//! principals change that (requests), the policies that govern it, and the CheckAccess
//! answer every service relies on.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};
use tokio::sync::broadcast;
use tonic::transport::Channel;

use pim_proto::common::v1::{Actor, PrincipalKind, Ticket};
use pim_proto::events::v1 as ev;
use pim_proto::identity::v1::GetPrincipalRequest;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::access::{AccessCheck, Decision, Target, permissions};
use pim_runtime::auth::Caller;
use pim_runtime::clock::Clock;
use pim_runtime::db::{Db, is_unique_violation, to_timestamp};
use pim_runtime::events::{Outbox, OutboxRows, envelope, streams};
use pim_runtime::grpc::RuleViolation;

use crate::domain::{ActivationAsk, AdminAssignment, Kind, MfaState, Policy, Schedule, Scope};
use crate::error::{Error, Result};
use crate::groups::Memberships;
use crate::index::AccessIndex;
use crate::roles::{GLOBAL_ADMINISTRATOR, RoleCatalog};
use crate::scheduler::Timers;
use crate::store::{self, AssignmentRow, RequestRow};

const SOURCE: &str = "pim.assignment";

/// The principal the bootstrap administrator's assignment and timers act as.
pub const SYSTEM_ACTOR: &str = "system";

/// Request statuses after which nothing more happens to a request.
pub const FINAL_STATUSES: &[&str] = &["Provisioned", "Denied", "Canceled", "Failed", "Expired", "Revoked"];

pub fn system_actor() -> Actor {
    Actor {
        principal_id: SYSTEM_ACTOR.into(),
        kind: PrincipalKind::Unspecified as i32,
        display_name: "PIM".into(),
    }
}

#[derive(Clone)]
pub struct Assignments {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) roles: RoleCatalog,
    pub(crate) identity: DirectoryServiceClient<Channel>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Tells the scheduler about new starts and ends.
    pub(crate) timers: Arc<Timers>,
    /// Ids of requests whose status changed in this process (WatchRequest).
    pub(crate) changes: broadcast::Sender<String>,
    /// Active assignments in memory: the CheckAccess hot path.
    pub(crate) index: AccessIndex,
    /// Members of role-assignable groups, in memory.
    pub(crate) memberships: Memberships,
    /// How far the index has applied the streams it follows: what a consistency token waits for.
    pub(crate) freshness: Arc<pim_runtime::consistency::Freshness>,
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
    pub validate_only: bool,
}

/// A principal's request to activate an eligible role.
pub struct ActivateRequest {
    pub role: String,
    pub scope: String,
    pub ask: ActivationAsk,
    pub validate_only: bool,
}

/// A principal as the directory knows it.
struct PrincipalInfo {
    kind: PrincipalKind,
    name: String,
    is_assignable_to_role: bool,
}

fn principal_kind_str(kind: PrincipalKind) -> &'static str {
    pim_runtime::auth::kind_claim(kind)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Of the policies `set` at some of `scopes` (a scope and those above it, outermost first):
/// the deepest one, else Entra's defaults; with the scope it was set at.
fn nearest_policy(set: &[(String, String)], scopes: &[String]) -> Result<(Policy, String)> {
    for candidate in scopes.iter().rev() {
        if let Some((_, json)) = set.iter().find(|(s, _)| s == candidate) {
            let policy = serde_json::from_str(json)
                .map_err(|e| Error::Internal(anyhow::anyhow!("stored policy is unreadable: {e}")))?;
            return Ok((policy, candidate.clone()));
        }
    }
    Ok((Policy::default(), "/".to_owned()))
}

/// Why a removal was refused by the last-Global-Administrator protection.
pub const LAST_GLOBAL_ADMIN_KEPT: &str =
    "kept: the last permanent Global Administrator is never removed (last-Global-Administrator protection)";

impl Assignments {
    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) async fn emit<C: ConnectionTrait>(
        &self,
        txn: &C,
        event_type: &str,
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

    /// Whether `principal` holds `target` at `scope` (directly, at that scope or above) now.
    pub async fn decide(&self, principal: &str, target: &Target, scope: &Scope) -> Result<(Decision, Vec<String>)> {
        let now = self.now();
        let scopes = scope.with_ancestors();
        let mut ids = Vec::new();
        let (mut permanent, mut latest_end) = (false, None::<i64>);
        let mut weigh = |id: &str, grant: &crate::index::Grant| {
            let grants = match target {
                Target::Role(role) => grant.role_id == *role,
                Target::Permission(p) => self.roles.grants(&grant.role_id, p),
            };
            if grants && scopes.contains(&grant.scope) {
                ids.push(id.to_owned());
                match grant.end {
                    None => permanent = true,
                    Some(end) => latest_end = Some(latest_end.map_or(end, |l| l.max(end))),
                }
            }
        };
        // The principal's own grants, and those of the role-assignable groups they are in.
        self.index.visit(principal, now, &mut weigh);
        for group in self.memberships.groups_of(principal) {
            self.index.visit(&group, now, &mut weigh);
        }
        let allowed = !ids.is_empty();
        // The access lasts as long as the longest grant; a permanent grant never ends.
        let expires_at = if permanent { None } else { latest_end };
        Ok((Decision { allowed, expires_at }, ids))
    }

    /// Refuses unless the caller holds `permission` at `scope`.
    pub async fn authorize(&self, caller: &Caller, permission: &str, scope: &Scope) -> Result<()> {
        let (decision, _) = self
            .decide(&caller.principal_id, &Target::Permission(permission.to_owned()), scope)
            .await?;
        if decision.allowed {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "requires permission {permission} at scope {}",
                scope.as_str()
            ))
            .into())
        }
    }

    async fn principal(&self, caller: &Caller, id: &str) -> Result<PrincipalInfo> {
        let mut request = tonic::Request::new(GetPrincipalRequest {
            principal_id: id.to_owned(),
        });
        pim_runtime::telemetry::inject(&mut request);
        let bearer = format!("Bearer {}", caller.token())
            .parse()
            .map_err(|_| Error::invalid("authorization", "malformed token"))?;
        request.metadata_mut().insert("authorization", bearer);
        request.set_timeout(Duration::from_secs(3));
        match self.identity.clone().get_principal(request).await {
            Ok(p) => {
                let p = p.into_inner();
                if !p.enabled {
                    return Err(Error::FailedPrecondition(format!("principal {id} is disabled")));
                }
                Ok(PrincipalInfo {
                    kind: PrincipalKind::try_from(p.kind).unwrap_or(PrincipalKind::User),
                    name: p.display_name,
                    is_assignable_to_role: p.is_assignable_to_role,
                })
            }
            Err(s) if s.code() == tonic::Code::NotFound => Err(Error::NotFound(format!("principal {id}"))),
            Err(s) => {
                tracing::warn!(code = ?s.code(), "identity lookup failed");
                Err(tonic::Status::unavailable("the identity service is unavailable; try again").into())
            }
        }
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

    // ---- policies ----

    /// The policy in force for (role, scope): the one set at the nearest scope at or above,
    /// else Entra's defaults (see [`nearest_policy`]).
    pub async fn effective_policy<C: ConnectionTrait>(
        &self,
        conn: &C,
        role_id: &str,
        scope: &Scope,
    ) -> Result<(Policy, String)> {
        // One read for the scope and all above it.
        let scopes = scope.with_ancestors();
        let set = store::policies_at(conn, role_id, &scopes).await?;
        nearest_policy(&set, &scopes)
    }

    pub async fn get_policy(&self, role: &str, scope: &str) -> Result<(String, Scope, Policy)> {
        let role = self.role(role)?;
        let scope = Scope::parse(scope)?;
        let (policy, _) = self.effective_policy(&self.db, &role.id, &scope).await?;
        Ok((role.id, scope, policy))
    }

    pub async fn update_policy(
        &self,
        caller: &Caller,
        role: &str,
        scope: &str,
        policy: Policy,
    ) -> Result<(String, Scope, Policy)> {
        let role = self.role(role)?;
        let scope = Scope::parse(scope)?;
        self.authorize(caller, permissions::POLICIES_MANAGE, &scope).await?;
        policy.validate()?;
        let json = serde_json::to_string(&policy).map_err(|e| Error::Internal(e.into()))?;
        let event = ev::PolicyUpdated {
            actor: Some(caller.actor()),
            role_id: role.id.clone(),
            scope: scope.as_str().into(),
            activation_requires_mfa: policy.activation_requires_mfa,
            approval_required: policy.approval_required,
        };
        let txn = self.db.begin().await?;
        store::upsert_policy(&txn, &role.id, scope.as_str(), &json, &caller.principal_id, self.now()).await?;
        self.emit(&txn, "PolicyUpdated", &role.id, &event).await?;
        txn.commit().await?;
        self.committed(&[]);
        Ok((role.id, scope, policy))
    }

    // ---- admin requests ----

    /// adminAssign: an administrator makes a principal eligible for, or active in, a role.
    /// adminAssign, or adminRenew: the same for an assignment that expired (only then).
    pub async fn admin_assign(&self, caller: &Caller, r: AdminAssignRequest, action: &str) -> Result<RequestRow> {
        let scope = Scope::parse(&r.scope)?;
        let role = self.role(&r.role)?;
        let principal_id = r.principal_id.trim();
        if principal_id.is_empty() {
            return Err(Error::invalid("principal_id", "required"));
        }
        self.authorize(caller, permissions::ASSIGNMENTS_MANAGE, &scope).await?;
        let principal = self.principal(caller, principal_id).await?;
        if principal.kind == PrincipalKind::Group && !principal.is_assignable_to_role {
            return Err(Error::FailedPrecondition(format!(
                "{principal_id} is not a role-assignable group; only those can hold roles"
            )));
        }
        if principal.kind == PrincipalKind::ServicePrincipal && r.assignment.kind == Kind::Eligible {
            return Err(Error::PolicyViolation(vec![RuleViolation {
                kind: "EligibilityRule",
                message: "service principals get active assignments only, never eligible".into(),
            }]));
        }
        let now = self.now();
        let (policy, _) = self.effective_policy(&self.db, &role.id, &scope).await?;
        let schedule = policy
            .check_admin_assignment(&r.assignment, now)
            .map_err(Error::PolicyViolation)?;
        let existing = store::open_assignments(
            &self.db,
            r.assignment.kind.as_str(),
            principal_id,
            &role.id,
            scope.as_str(),
            now,
        )
        .await?;
        if action == "adminRenew" {
            if existing.iter().any(|a| a.origin == "admin") {
                return Err(Error::FailedPrecondition(
                    "this assignment is still in force; extend it instead".into(),
                ));
            }
            let kind = r.assignment.kind.as_str();
            if store::last_expired_assignment(&self.db, kind, principal_id, &role.id, scope.as_str(), now)
                .await?
                .is_none()
            {
                return Err(Error::NotFound(format!(
                    "an expired {kind} assignment of {} for {principal_id} at {}",
                    role.name,
                    scope.as_str()
                )));
            }
        }
        if let Some(live) = existing.iter().find(|a| a.origin == "admin") {
            return Err(already_assigned(&role.name, live));
        }
        let ticket = r.ticket.unwrap_or_default();
        let request = RequestRow {
            id: if r.validate_only { String::new() } else { new_id() },
            action: action.into(),
            kind: r.assignment.kind.as_str().into(),
            principal_id: principal_id.into(),
            role_id: role.id.clone(),
            scope: scope.as_str().into(),
            status: if schedule.start > now {
                "ScheduleCreated"
            } else {
                "Provisioned"
            }
            .into(),
            start_at: schedule.start,
            end_at: schedule.end,
            justification: r.assignment.justification.trim().into(),
            ticket_system: ticket.system.trim().into(),
            ticket_number: ticket.number.trim().into(),
            requested_by: caller.principal_id.clone(),
            created_at: now,
            assignment_id: None,
            duration_ms: None,
            policy: String::new(),
        };
        if r.validate_only {
            return Ok(request);
        }
        let grant = || self.grant(Some(caller.actor()), request.clone(), &principal, &role.name);
        match grant().await {
            Err(err) if is_duplicate(&err) => {}
            granted => return granted,
        }
        // Refused by the database: another administrator's assignment of the role at the
        // scope is held (perhaps from a concurrent call). One whose end passed before the
        // timer ended it is ended now, and the grant tried once more.
        let kind = r.assignment.kind.as_str();
        let live = store::live_admin_assignment(&self.db, kind, principal_id, &role.id, scope.as_str()).await?;
        match live {
            Some(lapsed) if lapsed.end_at.is_some_and(|end| end <= now) => {
                let txn = self.db.begin().await?;
                self.end(&txn, &lapsed, "expired", Some(system_actor()), &role.name, now)
                    .await?;
                txn.commit().await?;
                self.index.remove(&lapsed.principal_id, &lapsed.id);
                match grant().await {
                    Err(err) if is_duplicate(&err) => {}
                    granted => return granted,
                }
                let live = store::live_admin_assignment(&self.db, kind, principal_id, &role.id, scope.as_str()).await?;
                Err(live.map_or_else(
                    || err_same_moment(&role.name, &scope),
                    |l| already_assigned(&role.name, &l),
                ))
            }
            Some(live) => Err(already_assigned(&role.name, &live)),
            None => Err(err_same_moment(&role.name, &scope)),
        }
    }

    /// Records a request that grants an assignment, the assignment, and their events, in one transaction.
    async fn grant(
        &self,
        actor: Option<Actor>,
        mut request: RequestRow,
        principal: &PrincipalInfo,
        role_name: &str,
    ) -> Result<RequestRow> {
        let txn = self.db.begin().await?;
        request.assignment_id = Some(new_id());
        self.record_request(&txn, actor.clone(), &request, role_name).await?;
        let assignment = self
            .grant_in(&txn, actor, &request, principal.kind, &principal.name, role_name)
            .await?;
        txn.commit().await?;
        self.index.upsert_row(&assignment);
        self.committed(&[&request.id]);
        Ok(request)
    }

    /// Inserts the assignment `request` grants (an administrator's, with the id the request
    /// names) and its event.
    async fn grant_in(
        &self,
        txn: &DatabaseTransaction,
        actor: Option<Actor>,
        request: &RequestRow,
        principal_kind: PrincipalKind,
        principal_name: &str,
        role_name: &str,
    ) -> Result<AssignmentRow> {
        let assignment = AssignmentRow {
            id: request.assignment_id.clone().unwrap_or_else(new_id),
            kind: request.kind.clone(),
            principal_id: request.principal_id.clone(),
            principal_kind: principal_kind_str(principal_kind).into(),
            principal_name: principal_name.into(),
            role_id: request.role_id.clone(),
            scope: request.scope.clone(),
            start_at: request.start_at,
            end_at: request.end_at,
            status: "active".into(),
            origin: "admin".into(),
            request_id: request.id.clone(),
            created_by: request.requested_by.clone(),
            version: 1,
        };

        let ticket = Ticket {
            system: request.ticket_system.clone(),
            number: request.ticket_number.clone(),
        };
        let granted = ev::AssignmentChanged {
            actor: actor.clone(),
            assignment_id: assignment.id.clone(),
            request_id: request.id.clone(),
            kind: assignment.kind.clone(),
            principal_id: assignment.principal_id.clone(),
            principal_kind: principal_kind as i32,
            principal_name: principal_name.into(),
            role_id: assignment.role_id.clone(),
            role_name: role_name.into(),
            scope: assignment.scope.clone(),
            start_time: Some(to_timestamp(assignment.start_at)),
            end_time: assignment.end_at.map(to_timestamp),
            justification: request.justification.clone(),
            ticket: Some(ticket),
            reason: String::new(),
            version: assignment.version,
        };
        let granted_type = if assignment.kind == Kind::Eligible.as_str() {
            "EligibilityGranted"
        } else {
            "ActiveAssignmentGranted"
        };
        store::insert_assignment(txn, &assignment, true, request.created_at).await?;
        if let Some(end) = assignment.end_at {
            self.timers.deadline(end);
        }
        self.emit(txn, granted_type, &assignment.principal_id, &granted).await?;
        Ok(assignment)
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
            "RequestCreated",
            &request.id,
            &self.request_created(actor, request, role_name),
        )
        .await
    }

    /// A request that ends an assignment now (adminRemove, selfDeactivate): status Revoked.
    #[allow(clippy::too_many_arguments)]
    fn ending_request(
        action: &str,
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
            action: action.into(),
            kind: kind.as_str().into(),
            principal_id: principal_id.into(),
            role_id: role_id.into(),
            scope: scope.as_str().into(),
            status: "Revoked".into(),
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
        }
    }

    fn request_created(&self, actor: Option<Actor>, request: &RequestRow, role_name: &str) -> ev::RequestCreated {
        ev::RequestCreated {
            actor,
            request_id: request.id.clone(),
            action: request.action.clone(),
            kind: request.kind.clone(),
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
            status: request.status.clone(),
            approval_stages: if request.status == "PendingApproval" {
                serde_json::from_str::<Policy>(&request.policy)
                    .unwrap_or_default()
                    .effective_stages()
                    .iter()
                    .map(crate::grpc::stage_to_pb)
                    .collect()
            } else {
                Vec::new()
            },
            duration: request
                .duration_ms
                .map(|ms| crate::grpc::duration_to_pb(Duration::from_millis(ms.max(0) as u64))),
        }
    }

    /// adminRemove: ends an eligible or active assignment an administrator made. The last
    /// permanent, active Global Administrator at `/` is never removed.
    pub async fn admin_remove(&self, caller: &Caller, r: EndRequest) -> Result<RequestRow> {
        let scope = Scope::parse(&r.scope)?;
        let role = self.role(&r.role)?;
        let principal_id = r.principal_id.trim().to_owned();
        if principal_id.is_empty() {
            return Err(Error::invalid("principal_id", "required"));
        }
        self.authorize(caller, permissions::ASSIGNMENTS_MANAGE, &scope).await?;
        let now = self.now();
        let txn = self.db.begin().await?;
        let open = store::open_assignments(&txn, r.kind.as_str(), &principal_id, &role.id, scope.as_str(), now).await?;
        if open.is_empty() {
            return Err(Error::NotFound(format!(
                "{} assignment of {} for {principal_id} at {}",
                r.kind.as_str(),
                role.name,
                scope.as_str()
            )));
        }
        if role.id == GLOBAL_ADMINISTRATOR && r.kind == Kind::Active {
            let permanent = store::lock_permanent_global_admins(&txn, GLOBAL_ADMINISTRATOR, now).await?;
            let removing: Vec<&str> = open.iter().map(|a| a.id.as_str()).collect();
            let remaining = permanent.iter().filter(|a| !removing.contains(&a.id.as_str())).count();
            if remaining == 0 && permanent.iter().any(|a| removing.contains(&a.id.as_str())) {
                return Err(Error::FailedPrecondition(
                    "refused: this is the last permanent active Global Administrator; assign another one first".into(),
                ));
            }
        }
        let request = Self::ending_request(
            "adminRemove",
            r.kind,
            &principal_id,
            &role.id,
            &scope,
            &r.justification,
            &caller.principal_id,
            open.first().map(|a| a.id.clone()),
            now,
            r.validate_only,
        );
        if r.validate_only {
            return Ok(request);
        }
        self.record_request(&txn, Some(caller.actor()), &request, &role.name)
            .await?;
        let mut removed = 0;
        for a in &open {
            removed += usize::from(
                self.end(&txn, a, "removed", Some(caller.actor()), &role.name, now)
                    .await?,
            );
        }
        if removed == 0 {
            // A concurrent removal or expiry ended them first: one outcome, theirs.
            return Err(Error::NotFound(format!(
                "{} assignment of {} for {principal_id} at {} (it ended meanwhile)",
                r.kind.as_str(),
                role.name,
                scope.as_str()
            )));
        }
        txn.commit().await?;
        for a in &open {
            self.index.remove(&a.principal_id, &a.id);
        }
        self.committed(&[&request.id]);
        Ok(request)
    }

    /// Applies an access review's removal (an adminRemove) and says what became of it on the
    /// assignment stream: `ReviewRemovalApplied`, or `ReviewRemovalRefused` when a protection
    /// kept the assignment (the last permanent Global Administrator), so the review item and
    /// the audit log show it. The access index follows the database after the commit
    /// ([`Self::index_assignment`]), never the request.
    pub async fn remove_for_review(&self, txn: &DatabaseTransaction, asked: &ev::ReviewEvent) -> Result<()> {
        let now = self.now();
        let assignment_id = asked.assignment_id.as_str();
        let actor = asked.actor.clone();
        let mut answer = asked.clone();
        answer.actor = Some(Actor {
            principal_id: "system".into(),
            kind: 0,
            display_name: "assignment service".into(),
        });
        let a = match store::find_assignment(txn, assignment_id).await? {
            Some(a) if a.status == "active" && a.end_at.is_none_or(|e| e > now) => a,
            found => {
                if found.is_none() {
                    tracing::warn!(assignment_id, "review removal of an unknown assignment");
                }
                answer.decision = "already_ended".into();
                answer.justification = match found {
                    Some(_) => "nothing to remove: the assignment had ended already",
                    None => "nothing to remove: no such assignment",
                }
                .into();
                return self
                    .emit(txn, "ReviewRemovalApplied", &asked.principal_id, &answer)
                    .await;
            }
        };
        if a.role_id == GLOBAL_ADMINISTRATOR && a.kind == Kind::Active.as_str() {
            let permanent = store::lock_permanent_global_admins(txn, GLOBAL_ADMINISTRATOR, now).await?;
            if permanent.iter().all(|p| p.id == a.id) && permanent.iter().any(|p| p.id == a.id) {
                tracing::warn!(
                    assignment_id,
                    "review would remove the last permanent Global Administrator; kept"
                );
                answer.decision = "refused".into();
                answer.justification = LAST_GLOBAL_ADMIN_KEPT.into();
                return self.emit(txn, "ReviewRemovalRefused", &a.principal_id, &answer).await;
            }
        }
        let role_name = self.roles.get(&a.role_id).map(|r| r.name).unwrap_or_default();
        let kind = if a.kind == Kind::Eligible.as_str() {
            Kind::Eligible
        } else {
            Kind::Active
        };
        let request = Self::ending_request(
            "adminRemove",
            kind,
            &a.principal_id,
            &a.role_id,
            &Scope::parse(&a.scope)?,
            &asked.justification,
            &actor.as_ref().map(|a| a.principal_id.clone()).unwrap_or_default(),
            Some(a.id.clone()),
            now,
            false,
        );
        self.record_request(txn, actor.clone(), &request, &role_name).await?;
        self.end(txn, &a, "removed", actor, &role_name, now).await?;
        answer.decision = "removed".into();
        self.emit(txn, "ReviewRemovalApplied", &a.principal_id, &answer).await
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
            if a.status == "active" {
                self.index.upsert_row(&a);
            } else {
                self.index.remove(&a.principal_id, &a.id);
            }
        }
        Ok(())
    }

    /// Ends one assignment with `reason` (expired, removed, deactivated) and tells the others.
    pub(crate) async fn end(
        &self,
        txn: &DatabaseTransaction,
        a: &AssignmentRow,
        reason: &str,
        actor: Option<Actor>,
        role_name: &str,
        now: i64,
    ) -> Result<bool> {
        if !store::end_assignment(txn, &a.id, reason, now).await? {
            return Ok(false);
        }
        if a.kind == Kind::Active.as_str() {
            let event = ev::RoleDeactivated {
                actor: actor.clone(),
                assignment_id: a.id.clone(),
                principal_id: a.principal_id.clone(),
                role_id: a.role_id.clone(),
                scope: a.scope.clone(),
                reason: reason.into(),
            };
            self.emit(txn, "RoleDeactivated", &a.principal_id, &event).await?;
        }
        if a.origin == "admin" {
            let event = ev::AssignmentChanged {
                actor,
                assignment_id: a.id.clone(),
                request_id: a.request_id.clone(),
                kind: a.kind.clone(),
                principal_id: a.principal_id.clone(),
                principal_kind: 0,
                principal_name: a.principal_name.clone(),
                role_id: a.role_id.clone(),
                role_name: role_name.into(),
                scope: a.scope.clone(),
                start_time: Some(to_timestamp(a.start_at)),
                end_time: Some(to_timestamp(now)),
                justification: String::new(),
                ticket: None,
                reason: reason.into(),
                version: a.version,
            };
            let event_type = if a.kind == Kind::Eligible.as_str() {
                "EligibilityRemoved"
            } else {
                "ActiveAssignmentRemoved"
            };
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
        let Some(version) = store::set_assignment_end(txn, &assignment.id, assignment.version, end).await? else {
            return Ok(false);
        };
        assignment.version = version;
        if let Some(end) = end {
            self.timers.deadline(end);
        }
        assignment.end_at = end;
        let event = ev::AssignmentChanged {
            actor,
            assignment_id: assignment.id.clone(),
            request_id: request.id.clone(),
            kind: assignment.kind.clone(),
            principal_id: assignment.principal_id.clone(),
            principal_kind: 0,
            principal_name: assignment.principal_name.clone(),
            role_id: assignment.role_id.clone(),
            role_name: role_name.into(),
            scope: assignment.scope.clone(),
            start_time: Some(to_timestamp(assignment.start_at)),
            end_time: end.map(to_timestamp),
            justification: request.justification.clone(),
            ticket: None,
            reason: request.action.clone(),
            version: assignment.version,
        };
        let event_type = if assignment.kind == Kind::Eligible.as_str() {
            "EligibilityUpdated"
        } else {
            "ActiveAssignmentUpdated"
        };
        self.emit(txn, event_type, &assignment.principal_id, &event).await?;
        Ok(true)
    }

    /// selfExtend / selfRenew: a principal asks to keep an assignment an administrator made —
    /// extend one still in force to a later end, or renew one that expired. Either waits for
    /// approval (the role's approvers, or the default approvers), like Entra's.
    pub async fn self_keep(
        &self,
        caller: &Caller,
        action: &str,
        r: EndRequest,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<RequestRow> {
        let scope = Scope::parse(&r.scope)?;
        let role = self.role(&r.role)?;
        let now = self.now();
        if r.justification.trim().is_empty() {
            return Err(Error::PolicyViolation(vec![RuleViolation {
                kind: "JustificationRule",
                message: "say why you still need the role".into(),
            }]));
        }
        let open = store::open_assignments(
            &self.db,
            r.kind.as_str(),
            &caller.principal_id,
            &role.id,
            scope.as_str(),
            now,
        )
        .await?
        .into_iter()
        .find(|a| a.origin == "admin");
        let (policy, _) = self.effective_policy(&self.db, &role.id, &scope).await?;
        let (assignment_id, start) = if action == "selfExtend" {
            let Some(a) = open else {
                return Err(Error::NotFound(format!(
                    "your {} assignment of {} at {}",
                    r.kind.as_str(),
                    role.name,
                    scope.as_str()
                )));
            };
            let Some(current) = a.end_at else {
                return Err(Error::FailedPrecondition(
                    "this assignment is permanent; nothing to extend".into(),
                ));
            };
            if end.is_none_or(|e| e <= current) {
                return Err(Error::PolicyViolation(vec![RuleViolation {
                    kind: "ExpirationRule",
                    message: "an extension must end later than the assignment does now".into(),
                }]));
            }
            (Some(a.id), a.start_at)
        } else {
            if open.is_some() {
                return Err(Error::FailedPrecondition(
                    "this assignment is still in force; ask to extend it instead".into(),
                ));
            }
            if store::last_expired_assignment(
                &self.db,
                r.kind.as_str(),
                &caller.principal_id,
                &role.id,
                scope.as_str(),
                now,
            )
            .await?
            .is_none()
            {
                return Err(Error::NotFound(format!(
                    "an expired {} assignment of {} at {} of yours",
                    r.kind.as_str(),
                    role.name,
                    scope.as_str()
                )));
            }
            (None, start.unwrap_or(now).max(now))
        };
        policy
            .check_new_end(r.kind, start, end, now)
            .map_err(Error::PolicyViolation)?;
        if let Some(waiting) = store::pending_request(&self.db, &caller.principal_id, &role.id, scope.as_str()).await? {
            return Err(already_waiting(&role.name, &waiting));
        }
        let request = RequestRow {
            id: if r.validate_only { String::new() } else { new_id() },
            action: action.into(),
            kind: r.kind.as_str().into(),
            principal_id: caller.principal_id.clone(),
            role_id: role.id.clone(),
            scope: scope.as_str().into(),
            status: "PendingApproval".into(),
            start_at: start,
            end_at: end,
            justification: r.justification.trim().into(),
            ticket_system: String::new(),
            ticket_number: String::new(),
            requested_by: caller.principal_id.clone(),
            created_at: now,
            assignment_id,
            duration_ms: end.map(|e| e - start),
            policy: serde_json::to_string(&policy).map_err(|e| Error::Internal(e.into()))?,
        };
        if r.validate_only {
            return Ok(request);
        }
        let txn = self.db.begin().await?;
        match self
            .record_request(&txn, Some(caller.actor()), &request, &role.name)
            .await
        {
            // The database holds one waiting request per role and scope: a concurrent one won.
            Err(err) if is_duplicate(&err) => {
                txn.rollback().await?;
                let waiting = store::pending_request(&self.db, &caller.principal_id, &role.id, scope.as_str()).await?;
                return Err(waiting.map_or_else(
                    || err_same_moment(&role.name, &scope),
                    |w| already_waiting(&role.name, &w),
                ));
            }
            recorded => recorded?,
        }
        txn.commit().await?;
        self.committed(&[&request.id]);
        Ok(request)
    }

    /// An approved selfExtend or selfRenew: the assignment gets its new end, or comes back.
    /// When it no longer can (removed meanwhile, or renewed another way) the request fails.
    async fn apply_keep(
        &self,
        txn: &DatabaseTransaction,
        request: &mut RequestRow,
        actor: Option<Actor>,
        now: i64,
    ) -> Result<()> {
        let role_name = self.roles.get(&request.role_id).map(|r| r.name).unwrap_or_default();
        let open = store::open_assignments(
            txn,
            &request.kind,
            &request.principal_id,
            &request.role_id,
            &request.scope,
            now,
        )
        .await?
        .into_iter()
        .find(|a| a.origin == "admin");
        let kept = if request.action == "selfExtend" {
            match open.filter(|a| Some(&a.id) == request.assignment_id.as_ref()) {
                Some(mut a) => {
                    self.change_end(txn, actor, &mut a, request.end_at, &role_name, request)
                        .await?
                }
                None => false,
            }
        } else {
            let last = store::last_expired_assignment(
                txn,
                &request.kind,
                &request.principal_id,
                &request.role_id,
                &request.scope,
                now,
            )
            .await?;
            match (open, last) {
                (None, Some(last)) => {
                    if last.status == "active" {
                        // Past its end, not yet ended by the timer: it gives way (one live
                        // administrator's assignment at a time, held by the database).
                        self.end(txn, &last, "expired", Some(system_actor()), &role_name, now)
                            .await?;
                        self.index.remove(&last.principal_id, &last.id);
                    }
                    request.start_at = request.start_at.max(now);
                    if let Some(length) = request.duration_ms {
                        request.end_at = Some(request.start_at + length);
                    }
                    request.assignment_id = Some(new_id());
                    let kind = pim_runtime::auth::kind_from_claim(&last.principal_kind);
                    self.grant_in(txn, actor, request, kind, &last.principal_name, &role_name)
                        .await?;
                    true
                }
                _ => false,
            }
        };
        request.status = if kept { "Provisioned" } else { "Failed" }.into();
        self.transition(txn, request, "Granted", None, now).await?;
        Ok(())
    }

    /// adminExtend / adminUpdate: an administrator moves the end of an assignment they made
    /// (extend: only later). Shortening the last permanent Global Administrator is refused.
    pub async fn admin_change_end(
        &self,
        caller: &Caller,
        action: &str,
        r: EndRequest,
        end: Option<i64>,
    ) -> Result<RequestRow> {
        let scope = Scope::parse(&r.scope)?;
        let role = self.role(&r.role)?;
        let principal_id = r.principal_id.trim().to_owned();
        if principal_id.is_empty() {
            return Err(Error::invalid("principal_id", "required"));
        }
        self.authorize(caller, permissions::ASSIGNMENTS_MANAGE, &scope).await?;
        let now = self.now();
        let txn = self.db.begin().await?;
        let open = store::open_assignments(&txn, r.kind.as_str(), &principal_id, &role.id, scope.as_str(), now).await?;
        let Some(mut assignment) = open.into_iter().find(|a| a.origin == "admin") else {
            return Err(Error::NotFound(format!(
                "{} assignment of {} for {principal_id} at {}",
                r.kind.as_str(),
                role.name,
                scope.as_str()
            )));
        };
        if action == "adminExtend" && end.is_some_and(|e| assignment.end_at.is_none_or(|current| e <= current)) {
            return Err(Error::PolicyViolation(vec![pim_runtime::grpc::RuleViolation {
                kind: "ExpirationRule",
                message: "an extension must end later than the assignment does now".into(),
            }]));
        }
        let (policy, _) = self.effective_policy(&txn, &role.id, &scope).await?;
        policy
            .check_new_end(r.kind, assignment.start_at, end, now)
            .map_err(Error::PolicyViolation)?;
        if role.id == GLOBAL_ADMINISTRATOR && r.kind == Kind::Active && assignment.end_at.is_none() && end.is_some() {
            let permanent = store::lock_permanent_global_admins(&txn, GLOBAL_ADMINISTRATOR, now).await?;
            if permanent.iter().all(|a| a.id == assignment.id) {
                return Err(Error::FailedPrecondition(
                    "refused: this is the last permanent active Global Administrator; assign another one first".into(),
                ));
            }
        }
        let mut request = Self::ending_request(
            action,
            r.kind,
            &principal_id,
            &role.id,
            &scope,
            &r.justification,
            &caller.principal_id,
            Some(assignment.id.clone()),
            now,
            r.validate_only,
        );
        request.status = "Provisioned".into();
        request.start_at = assignment.start_at;
        request.end_at = end;
        if r.validate_only {
            return Ok(request);
        }
        self.record_request(&txn, Some(caller.actor()), &request, &role.name)
            .await?;
        if !self
            .change_end(&txn, Some(caller.actor()), &mut assignment, end, &role.name, &request)
            .await?
        {
            // Another change or removal committed since the read: this one is not applied.
            return Err(Error::Aborted(format!(
                "the {} assignment {} changed or ended meanwhile; look again",
                r.kind.as_str(),
                assignment.id
            )));
        }
        txn.commit().await?;
        self.index.upsert_row(&assignment);
        self.committed(&[&request.id]);
        Ok(request)
    }

    // ---- self requests ----

    /// selfActivate: the caller turns an eligibility into an active role, after the policy's checks.
    pub async fn self_activate(&self, caller: &Caller, r: ActivateRequest) -> Result<RequestRow> {
        let scope = Scope::parse(&r.scope)?;
        let role = self.role(&r.role)?;
        let now = self.now();
        let mut violations = Vec::new();
        // One read for everything below: the caller's and their groups' unended assignments
        // of the role (eligible directly, or through a role-assignable group), and the
        // role's policies at the scope and above.
        let mut holders = vec![caller.principal_id.clone()];
        holders.extend(self.memberships.groups_of(&caller.principal_id));
        let scopes = scope.with_ancestors();
        let (held, policies) = store::activation_inputs(&self.db, &holders, &role.id, &scopes, now).await?;
        let eligibility = held
            .iter()
            .filter(|a| a.kind == Kind::Eligible.as_str() && a.start_at <= now)
            .filter(|e| scopes.contains(&e.scope))
            // The eligibility that lasts longest.
            .max_by_key(|e| e.end_at.unwrap_or(i64::MAX));
        if eligibility.is_none() {
            violations.push(RuleViolation {
                kind: "EligibilityRule",
                message: format!("you are not eligible for {} at {}", role.name, scope.as_str()),
            });
        }
        let (policy, _) = nearest_policy(&policies, &scopes)?;
        let mfa = MfaState {
            has_otp: caller.amr.iter().any(|m| m == "otp" || m == "mfa"),
            mfa_at: caller.mfa_at.map(|s| s.saturating_mul(1000)),
        };
        let eligible_until = eligibility.and_then(|e| e.end_at);
        let schedule = match policy.check_activation(&r.ask, mfa, eligible_until, now) {
            Ok(s) if violations.is_empty() => s,
            Ok(_) => return Err(Error::PolicyViolation(violations)),
            Err(v) => {
                violations.extend(v);
                return Err(Error::PolicyViolation(violations));
            }
        };
        // The caller's own activation of the role at this very scope, started or not. (A
        // quick answer; what guarantees one at a time is the database, at the insert below.)
        if let Some(a) = held.iter().find(|a| {
            a.kind == Kind::Active.as_str()
                && a.origin == "activation"
                && a.principal_id == caller.principal_id
                && a.scope == scope.as_str()
        }) {
            return Err(already_active(&role.name, a));
        }
        let length = schedule.end.map(|e| e - schedule.start).unwrap_or_default();
        let mut request = RequestRow {
            id: if r.validate_only { String::new() } else { new_id() },
            action: "selfActivate".into(),
            kind: Kind::Active.as_str().into(),
            principal_id: caller.principal_id.clone(),
            role_id: role.id.clone(),
            scope: scope.as_str().into(),
            status: if policy.approval_required {
                "PendingApproval"
            } else if schedule.start > now {
                "ScheduleCreated"
            } else {
                "Provisioned"
            }
            .into(),
            start_at: schedule.start,
            end_at: schedule.end,
            justification: r.ask.justification.trim().into(),
            ticket_system: r.ask.ticket_system.trim().into(),
            ticket_number: r.ask.ticket_number.trim().into(),
            requested_by: caller.principal_id.clone(),
            created_at: now,
            assignment_id: None,
            duration_ms: Some(length),
            policy: serde_json::to_string(&policy).map_err(|e| Error::Internal(e.into()))?,
        };
        if r.validate_only {
            if let Some(waiting) =
                store::pending_request(&self.db, &caller.principal_id, &role.id, scope.as_str()).await?
            {
                return Err(already_waiting(&role.name, &waiting));
            }
            return Ok(request);
        }
        // The hot path of the service, so as few round trips as it can be: the request (unless
        // one is waiting for approval), the assignment when no approval is needed, and their
        // events, in one statement.
        let assignment =
            (!policy.approval_required).then(|| self.activation_assignment(&request, &caller.name, schedule));
        request.assignment_id = assignment.as_ref().map(|a| a.id.clone());
        let mut events = vec![envelope(
            SOURCE,
            "RequestCreated",
            &request.id,
            &self.request_created(Some(caller.actor()), &request, &role.name),
        )];
        let starts_now = assignment.as_ref().is_some_and(|a| a.start_at <= now);
        if let Some(a) = assignment.as_ref().filter(|_| starts_now) {
            let activated = self.role_activated(Some(caller.actor()), a, &role.name, &request.justification);
            events.push(envelope(SOURCE, "RoleActivated", &a.principal_id, &activated));
        }
        let insert = || {
            store::insert_activation(
                &self.db,
                &request,
                assignment.as_ref().map(|a| (a, starts_now)),
                OutboxRows::new(streams::ASSIGNMENT, &events),
                now,
            )
        };
        if !insert().await? {
            // Refused by the database: another activation of the role at the scope is live or
            // waiting (perhaps from a concurrent call). One whose end passed before the timer
            // ended it is ended now, and the activation tried once more.
            let (principal, scope) = (&caller.principal_id, scope.as_str());
            let lapsed = store::live_activation(&self.db, principal, &role.id, scope)
                .await?
                .filter(|live| live.end_at.is_some_and(|end| end <= now));
            let Some(lapsed) = lapsed else {
                return Err(self.refusal(principal, &role.name, &role.id, scope).await?);
            };
            let txn = self.db.begin().await?;
            self.end(&txn, &lapsed, "expired", Some(system_actor()), &role.name, now)
                .await?;
            txn.commit().await?;
            self.index.remove(&lapsed.principal_id, &lapsed.id);
            if !insert().await? {
                return Err(self.refusal(principal, &role.name, &role.id, scope).await?);
            }
        }
        if let Some(a) = &assignment {
            self.announce_deadlines(a, starts_now);
        }
        if let Some(a) = &assignment {
            self.index.upsert_row(a);
        }
        self.committed(&[&request.id]);
        Ok(request)
    }

    /// Why the database refused an activation: the live or waiting one it collided with.
    async fn refusal(&self, principal: &str, role_name: &str, role_id: &str, scope: &str) -> Result<Error> {
        if let Some(live) = store::live_activation(&self.db, principal, role_id, scope).await? {
            return Ok(already_active(role_name, &live));
        }
        if let Some(waiting) = store::pending_request(&self.db, principal, role_id, scope).await? {
            return Ok(already_waiting(role_name, &waiting));
        }
        Ok(Error::AlreadyExists(format!(
            "another activation of {role_name} at {scope} was being made at the same moment; look at your requests"
        )))
    }

    fn activation_assignment(&self, request: &RequestRow, principal_name: &str, schedule: Schedule) -> AssignmentRow {
        AssignmentRow {
            id: new_id(),
            kind: Kind::Active.as_str().into(),
            principal_id: request.principal_id.clone(),
            principal_kind: "user".into(),
            principal_name: principal_name.into(),
            role_id: request.role_id.clone(),
            scope: request.scope.clone(),
            start_at: schedule.start,
            end_at: schedule.end,
            status: "active".into(),
            origin: "activation".into(),
            request_id: request.id.clone(),
            created_by: request.principal_id.clone(),
            version: 1,
        }
    }

    /// Stores an activation's assignment; if it starts now, it is active at once and announced.
    async fn provision(
        &self,
        txn: &DatabaseTransaction,
        a: &AssignmentRow,
        actor: Option<Actor>,
        role_name: &str,
        justification: &str,
        now: i64,
    ) -> Result<()> {
        let starts_now = a.start_at <= now;
        store::insert_assignment(txn, a, starts_now, now).await?;
        self.announce_deadlines(a, starts_now);
        if starts_now {
            self.emit(
                txn,
                "RoleActivated",
                &a.principal_id,
                &self.role_activated(actor, a, role_name, justification),
            )
            .await?;
        }
        Ok(())
    }

    /// Tells the scheduler when a new activation starts (unless it already has) and ends.
    fn announce_deadlines(&self, a: &AssignmentRow, started: bool) {
        if !started {
            self.timers.deadline(a.start_at);
        }
        if let Some(end) = a.end_at {
            self.timers.deadline(end);
        }
    }

    pub(crate) fn role_activated(
        &self,
        actor: Option<Actor>,
        a: &AssignmentRow,
        role_name: &str,
        justification: &str,
    ) -> ev::RoleActivated {
        ev::RoleActivated {
            actor,
            assignment_id: a.id.clone(),
            request_id: a.request_id.clone(),
            principal_id: a.principal_id.clone(),
            role_id: a.role_id.clone(),
            role_name: role_name.into(),
            scope: a.scope.clone(),
            start_time: Some(to_timestamp(a.start_at)),
            end_time: a.end_at.map(to_timestamp),
            justification: justification.into(),
            version: a.version,
        }
    }

    /// selfDeactivate: the caller ends their own activation now.
    pub async fn self_deactivate(&self, caller: &Caller, r: EndRequest) -> Result<RequestRow> {
        let scope = Scope::parse(&r.scope)?;
        let role = self.role(&r.role)?;
        let now = self.now();
        let txn = self.db.begin().await?;
        let open = store::open_assignments(
            &txn,
            Kind::Active.as_str(),
            &caller.principal_id,
            &role.id,
            scope.as_str(),
            now,
        )
        .await?;
        let Some(activation) = open.into_iter().find(|a| a.origin == "activation") else {
            return Err(Error::NotFound(format!(
                "an activation of {} at {}",
                role.name,
                scope.as_str()
            )));
        };
        let (policy, _) = self.effective_policy(&txn, &role.id, &scope).await?;
        let min = policy.min_activation_before_deactivate.as_millis() as i64;
        if activation.start_at <= now && now - activation.start_at < min {
            return Err(Error::PolicyViolation(vec![RuleViolation {
                kind: "ExpirationRule",
                message: format!("an activation can be ended only after {} minutes", min / 60_000),
            }]));
        }
        let request = Self::ending_request(
            "selfDeactivate",
            Kind::Active,
            &caller.principal_id,
            &role.id,
            &scope,
            &r.justification,
            &caller.principal_id,
            Some(activation.id.clone()),
            now,
            r.validate_only,
        );
        if r.validate_only {
            return Ok(request);
        }
        self.record_request(&txn, Some(caller.actor()), &request, &role.name)
            .await?;
        if !self
            .end(&txn, &activation, "deactivated", Some(caller.actor()), &role.name, now)
            .await?
        {
            // A concurrent deactivation or the timer ended it first: one outcome, theirs.
            return Err(Error::NotFound(format!(
                "an activation of {} at {} (it ended meanwhile)",
                role.name,
                scope.as_str()
            )));
        }
        txn.commit().await?;
        self.index.remove(&activation.principal_id, &activation.id);
        self.committed(&[&request.id]);
        Ok(request)
    }

    // ---- request lifecycle ----

    async fn transition(
        &self,
        txn: &DatabaseTransaction,
        request: &RequestRow,
        from: &str,
        actor: Option<Actor>,
        now: i64,
    ) -> Result<bool> {
        if !store::transition_request(txn, request, from, now).await? {
            return Ok(false);
        }
        let event = ev::RequestStatusChanged {
            actor,
            request_id: request.id.clone(),
            status: request.status.clone(),
            previous_status: from.into(),
        };
        self.emit(txn, "RequestStatusChanged", &request.id, &event).await?;
        Ok(true)
    }

    /// Applies an approval's outcome to a pending activation (from the approval stream).
    /// Approved: active from now (or its scheduled start) for the whole duration asked —
    /// time spent waiting for approval does not eat the window.
    pub async fn apply_approval(
        &self,
        txn: &DatabaseTransaction,
        request_id: &str,
        outcome: &str,
        actor: Option<Actor>,
    ) -> Result<()> {
        let Some(mut request) = store::find_request(txn, request_id).await? else {
            tracing::warn!(request_id, "approval outcome for an unknown request");
            return Ok(());
        };
        if request.status != "PendingApproval" {
            return Ok(());
        }
        let now = self.now();
        match outcome {
            "Granted" | "Approved" => {
                request.status = "Granted".into();
                self.transition(txn, &request, "PendingApproval", actor.clone(), now)
                    .await?;
                if request.action != "selfActivate" {
                    return self.apply_keep(txn, &mut request, actor, now).await;
                }
                let start = request.start_at.max(now);
                let length = request.duration_ms.unwrap_or_default();
                let eligible_until = store::current_assignments(
                    txn,
                    Kind::Eligible.as_str(),
                    Some(&request.principal_id),
                    Some(&request.role_id),
                    now,
                )
                .await?
                .iter()
                .filter(|e| {
                    Scope::parse(&request.scope)
                        .map(|s| s.with_ancestors().contains(&e.scope))
                        .unwrap_or(false)
                })
                .map(|e| e.end_at.unwrap_or(i64::MAX))
                .max();
                let Some(eligible_until) = eligible_until.filter(|until| *until > start) else {
                    request.status = "Failed".into();
                    self.transition(txn, &request, "Granted", None, now).await?;
                    return Ok(());
                };
                let schedule = Schedule {
                    start,
                    end: Some((start + length).min(eligible_until)),
                };
                let role_name = self.roles.get(&request.role_id).map(|r| r.name).unwrap_or_default();
                // One live activation per principal, role and scope (a unique index): one whose
                // end passed is ended now; one still in force makes this request fail (had
                // they raced, the index refuses this insert and the redelivery lands here).
                if let Some(live) =
                    store::live_activation(txn, &request.principal_id, &request.role_id, &request.scope).await?
                {
                    if live.end_at.is_some_and(|end| end <= now) {
                        self.end(txn, &live, "expired", Some(system_actor()), &role_name, now)
                            .await?;
                    } else {
                        request.status = "Failed".into();
                        self.transition(txn, &request, "Granted", None, now).await?;
                        return Ok(());
                    }
                }
                let assignment = self.activation_assignment(&request, "", schedule);
                request.assignment_id = Some(assignment.id.clone());
                request.start_at = schedule.start;
                request.end_at = schedule.end;
                request.status = if schedule.start > now {
                    "ScheduleCreated"
                } else {
                    "Provisioned"
                }
                .into();
                self.transition(txn, &request, "Granted", None, now).await?;
                let justification = request.justification.clone();
                self.provision(txn, &assignment, actor, &role_name, &justification, now)
                    .await?;
            }
            "Denied" | "Expired" => {
                request.status = outcome.into();
                self.transition(txn, &request, "PendingApproval", actor, now).await?;
            }
            other => tracing::warn!(request_id, outcome = other, "unknown approval outcome"),
        }
        Ok(())
    }

    /// CancelRequest: the requester withdraws a request still waiting for approval.
    pub async fn cancel_request(&self, caller: &Caller, id: &str) -> Result<RequestRow> {
        let mut request = self.get_request(caller, id).await?;
        if request.requested_by != caller.principal_id {
            return Err(tonic::Status::permission_denied("only the requester can cancel a request").into());
        }
        if request.status != "PendingApproval" {
            return Err(Error::FailedPrecondition(format!(
                "request is {}; only a pending request can be canceled",
                request.status
            )));
        }
        request.status = "Canceled".into();
        let txn = self.db.begin().await?;
        if !self
            .transition(&txn, &request, "PendingApproval", Some(caller.actor()), self.now())
            .await?
        {
            return Err(Error::FailedPrecondition(
                "request changed meanwhile; fetch it again".into(),
            ));
        }
        txn.commit().await?;
        self.committed(&[id]);
        Ok(request)
    }

    /// Assignments in force now; the caller's own, or anyone's for readers of assignments.
    pub async fn list(
        &self,
        caller: &Caller,
        kind: Kind,
        principal: Option<&str>,
        role: Option<&str>,
        scope: Option<&Scope>,
    ) -> Result<Vec<(AssignmentRow, Option<String>)>> {
        if principal != Some(caller.principal_id.as_str()) {
            self.authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
                .await?;
        }
        let now = self.now();
        let mut rows: Vec<(AssignmentRow, Option<String>)> =
            store::current_assignments(&self.db, kind.as_str(), principal, role, now)
                .await?
                .into_iter()
                .map(|a| (a, None))
                .collect();
        // A principal's roles include those of their role-assignable groups (Entra hides these).
        if let Some(principal) = principal {
            for group in self.memberships.groups_of(principal) {
                let inherited = store::current_assignments(&self.db, kind.as_str(), Some(&group), role, now).await?;
                rows.extend(inherited.into_iter().map(|a| (a, Some(group.clone()))));
            }
        }
        Ok(match scope {
            // At that scope, or above it (what applies there).
            Some(scope) => {
                let scopes = scope.with_ancestors();
                rows.into_iter().filter(|(a, _)| scopes.contains(&a.scope)).collect()
            }
            None => rows,
        })
    }

    pub async fn get_request(&self, caller: &Caller, id: &str) -> Result<RequestRow> {
        let request = store::find_request(&self.db, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("request {id}")))?;
        if request.principal_id != caller.principal_id && request.requested_by != caller.principal_id {
            self.authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
                .await?;
        }
        Ok(request)
    }

    /// Requests: the caller's own, or anyone's for readers of assignments.
    pub async fn list_requests(
        &self,
        caller: &Caller,
        principal: Option<&str>,
        role: Option<&str>,
        status: Option<&str>,
        after: &str,
        limit: u64,
    ) -> Result<Vec<RequestRow>> {
        if principal != Some(caller.principal_id.as_str()) {
            self.authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
                .await?;
        }
        Ok(store::list_requests(&self.db, principal, role, status, after, limit).await?)
    }

    /// Puts the assignment a request provisioned into the access index (after the commit
    /// that made it, e.g. by an approval event).
    pub async fn index_request(&self, request_id: &str) -> Result<()> {
        if let Some(request) = store::find_request(&self.db, request_id).await?
            && let Some(id) = request.assignment_id
            && let Some(a) = store::find_assignment(&self.db, &id).await?
        {
            self.index.upsert_row(&a);
        }
        // Watchers learn of the new status once CheckAccess here agrees with it.
        let _ = self.changes.send(request_id.to_owned());
        Ok(())
    }

    pub async fn has_active_global_admin(&self) -> Result<bool> {
        Ok(
            !store::lock_permanent_global_admins(&self.db, GLOBAL_ADMINISTRATOR, self.now())
                .await?
                .is_empty(),
        )
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
            action: "adminAssign".into(),
            kind: Kind::Active.as_str().into(),
            principal_id: user_id.into(),
            role_id: GLOBAL_ADMINISTRATOR.into(),
            scope: "/".into(),
            status: "Provisioned".into(),
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
        };
        let principal = PrincipalInfo {
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

/// The assignment service authorizes its own callers without a network hop.
#[async_trait::async_trait]
impl AccessCheck for Assignments {
    async fn check(
        &self,
        _caller: &Caller,
        principal: &str,
        target: &Target,
        scope: &str,
    ) -> std::result::Result<Decision, tonic::Status> {
        let scope = Scope::parse(scope)?;
        Ok(self.decide(principal, target, &scope).await?.0)
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
fn already_active(role_name: &str, live: &AssignmentRow) -> Error {
    let until = live
        .end_at
        .map(|end| format!("until {}", pim_runtime::db::rfc3339(end)))
        .unwrap_or_else(|| "with no end".into());
    Error::AlreadyExists(format!(
        "{role_name} is already active at {} (assignment {}, {until}); extend it instead",
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
