//! Assignments and access decisions: who holds which role where, how administrators change
//! that, and the CheckAccess answer every service relies on.

use std::time::Duration;

use sea_orm::TransactionTrait;
use tonic::transport::Channel;

use pim_proto::common::v1::{Actor, PrincipalKind, Ticket};
use pim_proto::events::v1 as ev;
use pim_proto::identity::v1::GetPrincipalRequest;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::access::{AccessCheck, Decision, Target, permissions};
use pim_runtime::auth::Caller;
use pim_runtime::db::{Db, now_ms, to_timestamp};
use pim_runtime::events::{Outbox, envelope, streams};

use crate::domain::{AdminAssignment, Kind, Policy, Scope};
use crate::error::{Error, Result};
use crate::roles::{GLOBAL_ADMINISTRATOR, RoleCatalog};
use crate::store::{self, AssignmentRow, RequestRow};

const SOURCE: &str = "pim.assignment";

/// The principal the bootstrap administrator's assignment is made by.
pub const SYSTEM_ACTOR: &str = "system";

#[derive(Clone)]
pub struct Assignments {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) roles: RoleCatalog,
    pub(crate) identity: DirectoryServiceClient<Channel>,
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

/// A principal as the directory knows it.
struct PrincipalInfo {
    kind: PrincipalKind,
    name: String,
}

fn principal_kind_str(kind: PrincipalKind) -> &'static str {
    pim_runtime::auth::kind_claim(kind)
}

impl Assignments {
    /// Whether `principal` holds `target` at `scope` (directly, at that scope or above) now.
    pub async fn decide(&self, principal: &str, target: &Target, scope: &Scope) -> Result<(Decision, Vec<String>)> {
        let now = now_ms();
        let role_filter = match target {
            Target::Role(role) => Some(role.as_str()),
            Target::Permission(_) => None,
        };
        let held =
            store::current_assignments(&self.db, Kind::Active.as_str(), Some(principal), role_filter, now).await?;
        let scopes = scope.with_ancestors();
        let mut ids = Vec::new();
        let (mut permanent, mut latest_end) = (false, None::<i64>);
        for a in held {
            let grants = match target {
                Target::Role(_) => true,
                Target::Permission(p) => self.roles.grants(&a.role_id, p),
            };
            if grants && scopes.contains(&a.scope) {
                ids.push(a.id);
                match a.end_at {
                    None => permanent = true,
                    Some(end) => latest_end = Some(latest_end.map_or(end, |l| l.max(end))),
                }
            }
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
                })
            }
            Err(s) if s.code() == tonic::Code::NotFound => Err(Error::NotFound(format!("principal {id}"))),
            Err(s) => {
                tracing::warn!(code = ?s.code(), "identity lookup failed");
                Err(tonic::Status::unavailable("the identity service is unavailable; try again").into())
            }
        }
    }

    /// adminAssign: an administrator makes a principal eligible for, or active in, a role.
    pub async fn admin_assign(&self, caller: &Caller, r: AdminAssignRequest) -> Result<RequestRow> {
        let scope = Scope::parse(&r.scope)?;
        let role = self
            .roles
            .find(r.role.trim())
            .ok_or_else(|| Error::NotFound(format!("role {}", r.role.trim())))?;
        let principal_id = r.principal_id.trim();
        if principal_id.is_empty() {
            return Err(Error::invalid("principal_id", "required"));
        }
        self.authorize(caller, permissions::ASSIGNMENTS_MANAGE, &scope).await?;
        let principal = self.principal(caller, principal_id).await?;
        if principal.kind == PrincipalKind::ServicePrincipal && r.assignment.kind == Kind::Eligible {
            return Err(Error::PolicyViolation(vec![pim_runtime::grpc::RuleViolation {
                kind: "EligibilityRule",
                message: "service principals get active assignments only, never eligible".into(),
            }]));
        }
        let now = now_ms();
        let schedule = Policy::default()
            .check_admin_assignment(&r.assignment, now)
            .map_err(Error::PolicyViolation)?;
        let ticket = r.ticket.unwrap_or_default();
        let request = RequestRow {
            id: if r.validate_only {
                String::new()
            } else {
                uuid::Uuid::now_v7().to_string()
            },
            action: "adminAssign".into(),
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
        };
        if r.validate_only {
            return Ok(request);
        }
        self.grant(Some(caller.actor()), request, &principal, &role.name).await
    }

    /// Records a request that grants an assignment, the assignment, and their events, in one transaction.
    async fn grant(
        &self,
        actor: Option<Actor>,
        mut request: RequestRow,
        principal: &PrincipalInfo,
        role_name: &str,
    ) -> Result<RequestRow> {
        let assignment = AssignmentRow {
            id: uuid::Uuid::now_v7().to_string(),
            kind: request.kind.clone(),
            principal_id: request.principal_id.clone(),
            principal_kind: principal_kind_str(principal.kind).into(),
            principal_name: principal.name.clone(),
            role_id: request.role_id.clone(),
            scope: request.scope.clone(),
            start_at: request.start_at,
            end_at: request.end_at,
            request_id: request.id.clone(),
            created_by: request.requested_by.clone(),
        };
        request.assignment_id = Some(assignment.id.clone());
        let ticket = Ticket {
            system: request.ticket_system.clone(),
            number: request.ticket_number.clone(),
        };
        let created = ev::RequestCreated {
            actor: actor.clone(),
            request_id: request.id.clone(),
            action: request.action.clone(),
            kind: request.kind.clone(),
            principal_id: request.principal_id.clone(),
            role_id: request.role_id.clone(),
            role_name: role_name.into(),
            scope: request.scope.clone(),
            justification: request.justification.clone(),
            ticket: Some(ticket.clone()),
            start_time: Some(to_timestamp(request.start_at)),
            end_time: request.end_at.map(to_timestamp),
            status: request.status.clone(),
        };
        let granted = ev::AssignmentChanged {
            actor,
            assignment_id: assignment.id.clone(),
            request_id: request.id.clone(),
            kind: assignment.kind.clone(),
            principal_id: assignment.principal_id.clone(),
            principal_kind: principal.kind as i32,
            principal_name: principal.name.clone(),
            role_id: assignment.role_id.clone(),
            role_name: role_name.into(),
            scope: assignment.scope.clone(),
            start_time: Some(to_timestamp(assignment.start_at)),
            end_time: assignment.end_at.map(to_timestamp),
            justification: request.justification.clone(),
            ticket: Some(ticket),
            reason: String::new(),
        };
        let granted_type = if assignment.kind == Kind::Eligible.as_str() {
            "EligibilityGranted"
        } else {
            "ActiveAssignmentGranted"
        };
        let txn = self.db.begin().await?;
        store::insert_request(&txn, &request).await?;
        store::insert_assignment(&txn, &assignment, request.created_at).await?;
        self.outbox
            .enqueue(
                &txn,
                streams::ASSIGNMENT,
                &envelope(SOURCE, "RequestCreated", &request.id, &created),
            )
            .await?;
        self.outbox
            .enqueue(
                &txn,
                streams::ASSIGNMENT,
                &envelope(SOURCE, granted_type, &assignment.principal_id, &granted),
            )
            .await?;
        txn.commit().await?;
        self.outbox.wake();
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
    ) -> Result<Vec<AssignmentRow>> {
        if principal != Some(caller.principal_id.as_str()) {
            self.authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
                .await?;
        }
        let rows = store::current_assignments(&self.db, kind.as_str(), principal, role, now_ms()).await?;
        Ok(match scope {
            // At that scope, or above it (what applies there).
            Some(scope) => {
                let scopes = scope.with_ancestors();
                rows.into_iter().filter(|a| scopes.contains(&a.scope)).collect()
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

    pub async fn has_active_global_admin(&self) -> Result<bool> {
        let held = store::current_assignments(
            &self.db,
            Kind::Active.as_str(),
            None,
            Some(GLOBAL_ADMINISTRATOR),
            now_ms(),
        )
        .await?;
        Ok(held.iter().any(|a| a.scope == "/" && a.end_at.is_none()))
    }

    /// Makes `user_id` a permanent, active Global Administrator at `/` — the break-glass
    /// account — unless a permanent Global Administrator exists already. Returns whether it did.
    pub async fn bootstrap_global_admin(&self, user_id: &str, user_name: &str) -> Result<bool> {
        if self.has_active_global_admin().await? {
            return Ok(false);
        }
        let now = now_ms();
        let request = RequestRow {
            id: uuid::Uuid::now_v7().to_string(),
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
        };
        let actor = Actor {
            principal_id: SYSTEM_ACTOR.into(),
            kind: PrincipalKind::Unspecified as i32,
            display_name: "PIM bootstrap".into(),
        };
        let principal = PrincipalInfo {
            kind: PrincipalKind::User,
            name: user_name.into(),
        };
        self.grant(Some(actor), request, &principal, "Global Administrator")
            .await?;
        Ok(true)
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
