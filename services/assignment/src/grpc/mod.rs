//! The assignment service's gRPC surface; the only module here that knows tonic and prost.

use std::time::Duration;

use tonic::{Request, Response, Status};

use pim_proto::assignment::v1 as pb;
use pim_proto::assignment::v1::access_service_server::AccessService;
use pim_proto::assignment::v1::assignment_service_server::AssignmentService;
use pim_proto::assignment::v1::policy_service_server::PolicyService;
use pim_proto::assignment::v1::reconcile_service_server::ReconcileService;
use pim_proto::assignment::v1::role_service_server::RoleService;
use pim_proto::events::v1 as ev;
use pim_runtime::access::{Target, permissions};
use pim_runtime::auth::{Caller, caller};
use pim_runtime::consistency::{self, ConsistencyToken};
use pim_runtime::db::to_timestamp;
use pim_runtime::events::{EventType, streams};
use pim_runtime::grpc::BoxStream;

use crate::assignments::{
    ActivateRequest, AdminAssignRequest, Assignments, EndRequest, Listing, NewRole, PolicyUpdate, RoleChange,
};
use crate::domain::{Action, Kind, RequestStatus, Scope};
use crate::error::Error;
use crate::policy_edits::Setting;
use crate::store::RequestRow;

mod definitions;
mod wire;

pub use definitions::check_new_policy;
use wire::*;

const MAX_BATCH: usize = 1000;
/// Assignments a listing's page holds, when not asked for fewer: well under a message's
/// 4 MB with the longest scopes.
const ASSIGNMENTS_PAGE: u64 = 1000;
/// How long a write that changes access waits for its events to leave before it answers.
const SETTLE_WITHIN: Duration = Duration::from_secs(2);

impl Assignments {
    /// One access question, checked and answered from the access index.
    async fn check_one(
        &self,
        caller: &pim_runtime::auth::Caller,
        r: pb::CheckAccessRequest,
    ) -> Result<pb::CheckAccessResponse, Error> {
        let principal = filter(&r.principal_id).ok_or_else(|| Error::invalid("principal_id", "required"))?;
        if uuid::Uuid::parse_str(principal).is_err() {
            // A name would simply hold nothing: say so rather than answer "not allowed".
            return Err(Error::invalid(
                "principal_id",
                "must be a principal's id (a UUID); look a name up with identity's GetPrincipal or ListUsers",
            ));
        }
        let target = match r.target {
            Some(pb::check_access_request::Target::RoleId(role)) => {
                let role = filter(&role).ok_or_else(|| Error::invalid("role_id", "required"))?;
                Target::Role(
                    self.roles
                        .find_id(role)
                        .ok_or_else(|| Error::NotFound(format!("role {role}")))?,
                )
            }
            Some(pb::check_access_request::Target::Permission(p)) => {
                let p = filter(&p).ok_or_else(|| Error::invalid("permission", "required"))?;
                crate::roles::check_permission(p, true).map_err(|e| Error::invalid("permission", e))?;
                Target::Permission(p.to_owned())
            }
            None => return Err(Error::invalid("target", "role_id or permission is required")),
        };
        let scope = Scope::parse(&r.scope)?;
        // Anyone may ask about their own access; asking about others is for readers of assignments.
        if principal != caller.principal_id {
            self.authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
                .await?;
        }
        let (decision, used) = self.decide(principal, &target, &scope).await?;
        Ok(pb::CheckAccessResponse {
            allowed: decision.allowed,
            expires_at: decision.expires_at.map(to_timestamp),
            assignment_ids: used.iter().map(|g| g.assignment_id.clone()).collect(),
            grants: used
                .into_iter()
                .map(|g| pb::AccessGrant {
                    role_name: self.role_name(&g.role_id),
                    assignment_id: g.assignment_id,
                    role_id: g.role_id,
                    scope: g.scope,
                    end_time: g.end.map(to_timestamp),
                    via_group_id: g.via_group.unwrap_or_default(),
                })
                .collect(),
        })
    }

    fn role_name(&self, id: &str) -> String {
        self.roles.name(id).unwrap_or_default()
    }

    async fn list_pb(
        &self,
        request: Request<pb::ListAssignmentsRequest>,
        kind: Kind,
    ) -> Result<Response<pb::ListAssignmentsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let principal = if r.mine {
            Some(caller.principal_id.as_str())
        } else {
            filter(&r.principal_id)
        };
        let role = match filter(&r.role_id) {
            Some(role) => Some(
                self.roles
                    .find(role)
                    .ok_or_else(|| Error::NotFound(format!("role {role}")))?
                    .id,
            ),
            None => None,
        };
        let scope = filter(&r.scope).map(Scope::parse).transpose()?;
        let started = if r.include_scheduled {
            crate::store::Started::OrScheduled
        } else {
            crate::store::Started::Only
        };
        let limit = pim_runtime::grpc::page_size(r.page_size, ASSIGNMENTS_PAGE, ASSIGNMENTS_PAGE)?;
        let after = pim_runtime::grpc::id_token(&r.page_token)?;
        let asked = Listing {
            kind,
            principal,
            role: role.as_deref(),
            scope: scope.as_ref(),
            started,
            after,
            limit: Some(limit + 1),
        };
        let rows = self.list(&caller, &asked).await?;
        let (rows, next_page_token) = pim_runtime::grpc::next_page(rows, limit, |(a, _)| a.id.clone());
        Ok(Response::new(pb::ListAssignmentsResponse {
            assignments: rows
                .into_iter()
                .map(|(a, via)| {
                    let name = self.role_name(&a.role_id);
                    assignment_to_pb(a, name, principal.filter(|_| via.is_some()), via)
                })
                .collect(),
            next_page_token,
        }))
    }
}

impl Assignments {
    /// A write's answer with its consistency token (field and header). This replica's index
    /// took the write before answering; other replicas' indexes wait for the token. The
    /// token names the assignment stream once the write's events are on it (Redis).
    async fn answer_write(&self, mut request: pb::AssignmentRequest) -> Response<pb::AssignmentRequest> {
        let token = if self.outbox.applies_before_answering() {
            Some(ConsistencyToken::applied())
        } else {
            self.outbox
                .settled(&self.db, pim_runtime::db::now_ms(), streams::ASSIGNMENT, SETTLE_WITHIN)
                .await
        };
        request.consistency_token = consistency::field(token.as_ref());
        consistency::answer(request, token.as_ref())
    }
}

type RequestStream = BoxStream<pb::AssignmentRequest>;

#[tonic::async_trait]
impl AssignmentService for Assignments {
    async fn create_request(
        &self,
        request: Request<pb::CreateRequestRequest>,
    ) -> Result<Response<pb::AssignmentRequest>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let asked = Asked {
            action: pb::RequestAction::try_from(r.action)
                .map(pb::RequestAction::text)
                .unwrap_or_default(),
            principal_id: filter(&r.principal_id).unwrap_or(&caller.principal_id).to_owned(),
            role_id: r.role_id.clone(),
            scope: r.scope.clone(),
        };
        match self.create_request_as(&caller, r).await {
            Ok(created) => {
                pim_runtime::telemetry::record_request(&created.id, &created.role_id);
                Ok(self.answer_write(request_to_pb(created)).await)
            }
            Err(err) => {
                let status = Status::from(err);
                // Every refusal is a security decision: it is audited as such.
                self.refused(&caller, asked, &status).await;
                Err(status)
            }
        }
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::AssignmentRequest>, Status> {
        let caller = caller(&request)?.clone();
        let id = request_id(&request.get_ref().request_id)?;
        Ok(Response::new(request_to_pb(
            Assignments::get_request(self, &caller, id).await?,
        )))
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let limit = pim_runtime::grpc::page_size(r.page_size, 50, 500)?;
        let role = match filter(&r.role_id) {
            Some(role) => Some(
                self.roles
                    .find(role)
                    .ok_or_else(|| Error::NotFound(format!("role {role}")))?
                    .id,
            ),
            None => None,
        };
        // Unspecified: any status; a number no status has is a mistake to point out.
        let status = pb::RequestStatus::try_from(r.status)
            .map(RequestStatus::from_pb)
            .map_err(|_| Error::invalid("status", "not a request status"))?;
        let after = pim_runtime::grpc::id_token(&r.page_token)?;
        let rows = self
            .list_requests(
                &caller,
                filter(&r.principal_id),
                role.as_deref(),
                status,
                after,
                limit + 1,
            )
            .await?;
        let (rows, next_page_token) = pim_runtime::grpc::next_page(rows, limit, |r| r.id.clone());
        Ok(Response::new(pb::ListRequestsResponse {
            requests: rows.into_iter().map(request_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn cancel_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::AssignmentRequest>, Status> {
        let caller = caller(&request)?.clone();
        let id = request_id(&request.get_ref().request_id)?.to_owned();
        let cancelled = request_to_pb(Assignments::cancel_request(self, &caller, &id).await?);
        Ok(self.answer_write(cancelled).await)
    }

    /// The request now, then each time its status changes, until a final status.
    async fn watch_request(&self, request: Request<pb::GetRequestRequest>) -> Result<Response<RequestStream>, Status> {
        let caller = caller(&request)?.clone();
        let id = request_id(&request.get_ref().request_id)?.to_owned();
        let first = Assignments::get_request(self, &caller, &id).await?;
        let guard = pim_runtime::streams::Guard::of(&request);
        let mut changes = self.changes.subscribe();
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut last = first.status;
            let done = last.is_final();
            if tx.send(Ok(request_to_pb(first))).await.is_err() || done {
                return;
            }
            loop {
                // A change made here arrives at once; one made by another replica within a second.
                tokio::select! {
                    changed = changes.recv() => match changed {
                        Ok(changed) if changed != id => continue,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
                let current = match Assignments::get_request(&this, &caller, &id).await {
                    Ok(r) => r,
                    Err(err) => {
                        let _ = tx.send(Err(err.into())).await;
                        return;
                    }
                };
                if current.status != last {
                    last = current.status;
                    let done = last.is_final();
                    if tx.send(Ok(request_to_pb(current))).await.is_err() || done {
                        return;
                    }
                }
            }
        });
        // Whether the caller may see the request is weighed at each change; the token with it.
        let stream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(guard.wrap(stream, || async { Ok(()) })))
    }

    async fn list_eligible_assignments(
        &self,
        request: Request<pb::ListAssignmentsRequest>,
    ) -> Result<Response<pb::ListAssignmentsResponse>, Status> {
        self.list_pb(request, Kind::Eligible).await
    }

    async fn list_active_assignments(
        &self,
        request: Request<pb::ListAssignmentsRequest>,
    ) -> Result<Response<pb::ListAssignmentsResponse>, Status> {
        self.list_pb(request, Kind::Active).await
    }

    async fn prepare_user_disable(
        &self,
        request: Request<pb::PrepareUserDisableRequest>,
    ) -> Result<Response<pb::PrepareUserDisableResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let user_id = filter(&r.user_id).ok_or_else(|| Error::invalid("user_id", "required"))?;
        let as_of = r.as_of.as_ref().map(pim_runtime::db::from_timestamp);
        Assignments::prepare_user_disable(self, &caller, user_id, as_of).await?;
        Ok(Response::new(pb::PrepareUserDisableResponse {}))
    }

    async fn apply_principal_disabled(
        &self,
        request: Request<pb::ApplyPrincipalDisabledRequest>,
    ) -> Result<Response<pb::ApplyPrincipalDisabledResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let id = filter(&r.principal_id).ok_or_else(|| Error::invalid("principal_id", "required"))?;
        let as_of = r.as_of.as_ref().map(pim_runtime::db::from_timestamp);
        Assignments::apply_principal_disabled(self, &caller, id, as_of).await?;
        Ok(Response::new(pb::ApplyPrincipalDisabledResponse {}))
    }

    async fn apply_directory_event(
        &self,
        request: Request<pb::ApplyDirectoryEventRequest>,
    ) -> Result<Response<pb::ApplyDirectoryEventResponse>, Status> {
        caller(&request)?;
        let envelope = <pim_runtime::events::Envelope as prost::Message>::decode(request.get_ref().envelope.as_slice())
            .map_err(|_| Error::invalid("envelope", "not an encoded pim.events.v1.Envelope"))?;
        let applied = Assignments::apply_directory_event(self, envelope).await?;
        Ok(Response::new(pb::ApplyDirectoryEventResponse { applied }))
    }
}

#[tonic::async_trait]
impl AccessService for Assignments {
    async fn check_access(
        &self,
        request: Request<pb::CheckAccessRequest>,
    ) -> Result<Response<pb::CheckAccessResponse>, Status> {
        let (metadata, mut extensions, message) = request.into_parts();
        let caller = extensions
            .remove::<std::sync::Arc<pim_runtime::auth::Caller>>()
            .ok_or_else(|| Status::unauthenticated("sign in first: no access token"))?;
        self.fresh_enough(&message.at_least_as_fresh, freshness_wait(&metadata))
            .await?;
        Ok(Response::new(self.check_one(&caller, message).await?))
    }

    async fn batch_check_access(
        &self,
        request: Request<pb::BatchCheckAccessRequest>,
    ) -> Result<Response<pb::BatchCheckAccessResponse>, Status> {
        let caller = caller(&request)?.clone();
        let within = freshness_wait(request.metadata());
        let batch = request.into_inner();
        let checks = batch.checks;
        if checks.len() > MAX_BATCH {
            return Err(Error::invalid("checks", format!("at most {MAX_BATCH} checks per call")).into());
        }
        // The batch's token and each check's: the answer is at least as fresh as all of them.
        self.fresh_enough(&batch.at_least_as_fresh, within).await?;
        for check in &checks {
            self.fresh_enough(&check.at_least_as_fresh, within).await?;
        }
        let mut results = Vec::with_capacity(checks.len());
        for check in checks {
            results.push(self.check_one(&caller, check).await?);
        }
        Ok(Response::new(pb::BatchCheckAccessResponse { results }))
    }

    /// Grants as they take effect in this replica's access index and as they end.
    async fn watch_access_changes(
        &self,
        request: Request<pb::WatchAccessChangesRequest>,
    ) -> Result<Response<BoxStream<pb::AccessChange>>, Status> {
        let caller = caller(&request)?.clone();
        self.authorize(&caller, permissions::ASSIGNMENTS_READ, &Scope::root())
            .await?;
        let guard = pim_runtime::streams::Guard::of(&request);
        let mut changes = self.index.subscribe();
        // Subscribed first, so nothing applied while waiting is missed.
        self.fresh_enough(&request.get_ref().at_least_as_fresh, freshness_wait(request.metadata()))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let memberships = self.memberships.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    c = changes.recv() => c,
                    _ = tx.closed() => return,
                };
                let item = match change {
                    // A disabled user holds nothing: what they are granted meanwhile is
                    // announced when they are enabled again.
                    Ok(c) if c.active && memberships.is_disabled(&c.principal_id) => continue,
                    Ok(c) => Ok(pb::AccessChange {
                        principal_id: c.principal_id,
                        role_id: c.grant.role_id,
                        scope: c.grant.scope,
                        active: c.active,
                        assignment_id: c.assignment_id,
                        // Identity's memberships have no start PIM knows of.
                        start_time: (c.grant.start > 0).then(|| to_timestamp(c.grant.start)),
                        end_time: c.grant.end.map(to_timestamp),
                        redefined: c.redefined,
                    }),
                    // A watcher too slow to keep up must resynchronise rather than miss changes silently.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "{n} access changes were dropped; reconnect and re-read"
                    ))),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        let stream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        let this = self.clone();
        Ok(Response::new(guard.wrap(stream, move || {
            let (this, caller) = (this.clone(), caller.clone());
            async move {
                this.authorize(&caller, permissions::ASSIGNMENTS_READ, &Scope::root())
                    .await
                    .map(drop)
                    .map_err(Status::from)
            }
        })))
    }

    async fn list_active_roles(
        &self,
        request: Request<pb::ListActiveRolesRequest>,
    ) -> Result<Response<pb::ListActiveRolesResponse>, Status> {
        let caller = caller(&request)?.clone();
        let principal = filter(&request.get_ref().principal_id)
            .unwrap_or(&caller.principal_id)
            .to_owned();
        self.fresh_enough(&request.get_ref().at_least_as_fresh, freshness_wait(request.metadata()))
            .await?;
        let rows = self
            .list(
                &caller,
                &Listing {
                    kind: Kind::Active,
                    principal: Some(&principal),
                    role: None,
                    scope: None,
                    started: crate::store::Started::Only,
                    after: "",
                    limit: None,
                },
            )
            .await?;
        Ok(Response::new(pb::ListActiveRolesResponse {
            assignments: rows
                .into_iter()
                .map(|(a, via)| {
                    let name = self.role_name(&a.role_id);
                    let member = via.as_ref().map(|_| principal.as_str());
                    assignment_to_pb(a, name, member, via)
                })
                .collect(),
        }))
    }
}

/// A principal's own action names no one else: asked for another principal, it is refused as
/// an attempt to act as them (and audited as such, naming whom), never done for the caller.
fn for_the_caller(caller: &Caller, r: &pb::CreateRequestRequest, action: Action) -> Result<(), Error> {
    match filter(&r.principal_id) {
        Some(p) if p != caller.principal_id => Err(Error::PermissionDenied(format!(
            "{} is the caller's own: it cannot be asked for another principal (leave principal_id empty; administrators act for others with admin actions)",
            action.to_pb().text()
        ))),
        _ => Ok(()),
    }
}

/// A request's id as asked for: a UUID, or INVALID_ARGUMENT saying so.
fn request_id(raw: &str) -> Result<&str, Status> {
    pim_runtime::grpc::id_field("request_id", raw, "a request id")
}

fn observed_to_pb(g: crate::store::ObservedGrant) -> pb::ObservedGrant {
    pb::ObservedGrant {
        principal_id: g.principal_id,
        role_id: g.role_id,
        scope: g.scope,
        system: g.system,
    }
}

#[tonic::async_trait]
impl ReconcileService for Assignments {
    async fn report_observed_grants(
        &self,
        request: Request<pb::ReportObservedGrantsRequest>,
    ) -> Result<Response<pb::ReportObservedGrantsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let grants = r
            .grants
            .into_iter()
            .map(|g| crate::drift::Reported {
                principal_id: g.principal_id,
                role: g.role_id,
                scope: g.scope,
            })
            .collect();
        let unmanaged = self.report_observed(&caller, &r.system, grants).await?;
        Ok(Response::new(pb::ReportObservedGrantsResponse {
            unmanaged: unmanaged.into_iter().map(observed_to_pb).collect(),
        }))
    }

    async fn list_unmanaged_grants(
        &self,
        request: Request<pb::ListUnmanagedGrantsRequest>,
    ) -> Result<Response<pb::ListUnmanagedGrantsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let grants = self.unmanaged(&caller).await?;
        Ok(Response::new(pb::ListUnmanagedGrantsResponse {
            grants: grants.into_iter().map(observed_to_pb).collect(),
        }))
    }
}

/// What a CreateRequest asked for, kept to say so if it is refused.
struct Asked {
    action: &'static str,
    principal_id: String,
    role_id: String,
    scope: String,
}

impl Assignments {
    /// CreateRequest's work: the request made, or why not.
    async fn create_request_as(&self, caller: &Caller, r: pb::CreateRequestRequest) -> Result<RequestRow, Error> {
        let caller = caller.clone();
        let Some(action) = pb::RequestAction::try_from(r.action).ok().and_then(Action::from_pb) else {
            return Err(Error::invalid("action", "required (e.g. adminAssign, selfActivate)"));
        };
        // An attempt to act as someone else is told (and recorded) as such, whatever else
        // is wrong with it.
        if matches!(
            action,
            Action::SelfActivate | Action::SelfDeactivate | Action::SelfExtend | Action::SelfRenew
        ) {
            for_the_caller(&caller, &r, action)?;
        }
        if let Some(start) = r.schedule.as_ref().and_then(|s| s.start_time.as_ref()) {
            let start = input_time("schedule.start_time", start)?;
            if start < self.now() - START_SKEW_MS {
                return Err(Error::invalid(
                    "schedule.start_time",
                    format!(
                        "{} lies more than {} minutes in the past: leave it empty to start now",
                        pim_runtime::db::rfc3339(start),
                        START_SKEW_MS / 60_000
                    ),
                ));
            }
        }
        let created = match action {
            Action::AdminAssign | Action::AdminRenew => {
                self.admin_assign(&caller, AdminAssignRequest::try_from(r)?, action)
                    .await?
            }
            Action::AdminRemove => self.admin_remove(&caller, EndRequest::try_from(r)?).await?,
            Action::AdminExtend | Action::AdminUpdate => {
                let now = self.now();
                use pb::schedule::Expiration as E;
                let end = match r.schedule.as_ref().and_then(|s| s.expiration.as_ref()) {
                    Some(E::EndTime(t)) => Some(input_time("schedule.end_time", t)?),
                    Some(E::Duration(d)) => Some(now + duration_from_pb("schedule.duration", d)?.as_millis() as i64),
                    Some(E::Permanent(true)) => None,
                    _ => {
                        return Err(Error::invalid(
                            "schedule",
                            "give the new end: end_time, duration (from now) or permanent",
                        ));
                    }
                };
                self.admin_change_end(&caller, action, EndRequest::try_from(r)?, end)
                    .await?
            }
            Action::SelfActivate => self.self_activate(&caller, ActivateRequest::try_from(r)?).await?,
            Action::SelfDeactivate => {
                let mut end = EndRequest::try_from(pb::CreateRequestRequest {
                    kind: pb::AssignmentKind::Active as i32,
                    ..r
                })?;
                end.principal_id = caller.principal_id.clone();
                self.self_deactivate(&caller, end).await?
            }
            Action::SelfExtend | Action::SelfRenew => {
                let now = self.now();
                let start = r
                    .schedule
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| input_time("schedule.start_time", t))
                    .transpose()?;
                use pb::schedule::Expiration as E;
                let end = match r.schedule.as_ref().and_then(|s| s.expiration.as_ref()) {
                    Some(E::EndTime(t)) => Some(input_time("schedule.end_time", t)?),
                    Some(E::Duration(d)) => Some(
                        start.unwrap_or(now).max(now) + duration_from_pb("schedule.duration", d)?.as_millis() as i64,
                    ),
                    Some(E::Permanent(true)) => None,
                    _ => {
                        return Err(Error::invalid(
                            "schedule",
                            "give the end you ask for: end_time, duration or permanent",
                        ));
                    }
                };
                let mut keep = EndRequest::try_from(r)?;
                keep.principal_id = caller.principal_id.clone();
                self.self_keep(&caller, action, keep, start, end).await?
            }
        };
        Ok(created)
    }

    /// Records a refused CreateRequest (a `RequestRefused` event, which audit keeps as a
    /// failure): a policy or state rule, a duplicate, a missing permission or a missing
    /// target. Malformed input and internal errors are not decisions and are not recorded.
    /// Best effort: the answer goes back to the caller whether or not this is stored.
    async fn refused(&self, caller: &Caller, asked: Asked, status: &Status) {
        use tonic::Code;
        if !matches!(
            status.code(),
            Code::FailedPrecondition | Code::AlreadyExists | Code::NotFound | Code::PermissionDenied
        ) {
            return;
        }
        let role = self.roles.find(&asked.role_id);
        let event = ev::RequestRefused {
            actor: Some(caller.actor()),
            action: asked.action.to_owned(),
            request_action: pb::RequestAction::from_text(asked.action) as i32,
            principal_id: bounded(&asked.principal_id),
            role_id: role
                .as_ref()
                .map(|r| r.id.clone())
                .unwrap_or_else(|| bounded(&asked.role_id)),
            role_name: role.map(|r| r.name).unwrap_or_default(),
            // As a grant would keep it, so a search by scope finds the refusals too.
            scope: crate::domain::Scope::parse(&asked.scope)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| bounded(&asked.scope)),
            code: format!("{:?}", status.code()),
            rules: pim_runtime::grpc::violated_rules(status),
            message: status.message().chars().take(500).collect(),
        };
        match self
            .emit(&self.db, EventType::RequestRefused, &event.principal_id, &event)
            .await
        {
            Ok(()) => self.outbox.wake(),
            Err(e) => tracing::warn!(error = %e, "recording a refused request failed"),
        }
    }
}

/// What a refusal's record keeps of a field the caller sent: trimmed, at most 256 characters
/// (the audit log indexes them).
fn bounded(text: &str) -> String {
    text.trim().chars().take(256).collect()
}

/// The assignment service authorizes its own callers without a network hop.
#[async_trait::async_trait]
impl pim_runtime::access::AccessCheck for Assignments {
    async fn check(
        &self,
        _caller: &Caller,
        principal: &str,
        target: &Target,
        scope: &str,
    ) -> Result<pim_runtime::access::Decision, Status> {
        let scope = Scope::parse(scope)?;
        Ok(self.decide(principal, target, &scope).await?.0)
    }
}
