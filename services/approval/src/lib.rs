//! Approval: four-eyes decisions on activation requests (stages, N-of-M, default approvers,
//! timeouts, escalation), streamed to people and bots; and access reviews.

mod approvals;
mod clients;
mod domain;
mod grpc;
mod listing;
mod reviews;
mod store;
#[cfg(test)]
mod store_tests;

use std::sync::Arc;

use sea_orm::DatabaseTransaction;
use sea_orm_migration::MigratorTrait;
use tonic::service::RoutesBuilder;

use pim_proto::approval::v1::access_review_service_server::AccessReviewServiceServer;
use pim_proto::approval::v1::approval_service_server::ApprovalServiceServer;
use pim_proto::assignment::v1::RequestStatus;
use pim_proto::events::v1 as ev;
use pim_runtime::db::{Db, from_timestamp};
use pim_runtime::events::{Envelope, EventHandler, EventType, Outbox, Source, decode, event_type, streams};
use pim_runtime::host::{Deps, Service};

pub use approvals::Approvals;

#[derive(Clone)]
pub struct Approval {
    approvals: Approvals,
}

impl Approval {
    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        store::Migrator::up(&deps.db, None).await?;
        Ok(Self {
            approvals: Approvals {
                db: deps.db,
                outbox: Outbox::default(),
                access: deps.access,
                services: clients::Services::new(deps.identity, deps.assignment),
                clock: deps.clock,
                notify: deps.config.notifications,
                changed: Arc::new(tokio::sync::watch::channel(0).0),
            },
        })
    }

    /// The approval logic (tests run its timer pass after moving the clock).
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// The service's database (tests reach past the API to prove its constraints).
    pub fn approvals_db(&self) -> &Db {
        &self.approvals.db
    }
}

/// Opens approvals from assignment's requests, cancels them when a request is withdrawn,
/// learns activation times (for approvers' context and access-review recommendations) and
/// the assignments in force (what access reviews snapshot).
struct AssignmentEvents(Approvals);

#[async_trait::async_trait]
impl EventHandler for AssignmentEvents {
    fn consumer(&self) -> &str {
        "approval"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![streams::ASSIGNMENT]
    }

    fn wants(&self, event_type: Option<EventType>) -> bool {
        matches!(
            event_type,
            Some(
                EventType::RequestCreated
                    | EventType::RequestStatusChanged
                    | EventType::RoleActivated
                    | EventType::RoleDeactivated
                    | EventType::ActivationShortened
                    | EventType::EligibilityGranted
                    | EventType::EligibilityUpdated
                    | EventType::ActiveAssignmentGranted
                    | EventType::ActiveAssignmentUpdated
                    | EventType::EligibilityRemoved
                    | EventType::ActiveAssignmentRemoved
                    | EventType::ReviewRemovalApplied
                    | EventType::ReviewRemovalRefused
            )
        )
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        match event_type(envelope) {
            Some(EventType::RequestCreated) => self.0.open(txn, &decode(envelope)?, &envelope.traceparent).await,
            Some(EventType::RequestStatusChanged) => {
                let e: ev::RequestStatusChanged = decode(envelope)?;
                if e.typed_status() == RequestStatus::Canceled {
                    self.0.cancel_for_request(txn, &e.request_id, e.actor).await?;
                }
                Ok(())
            }
            Some(EventType::RoleActivated) => {
                let e: ev::RoleActivated = decode(envelope)?;
                store::record_activation(
                    txn,
                    &store::ActivationRow {
                        assignment_id: e.assignment_id,
                        principal_id: e.principal_id,
                        role_id: e.role_id,
                        role_name: e.role_name,
                        scope: e.scope,
                        start_at: e.start_time.as_ref().map(from_timestamp).unwrap_or_default(),
                        end_at: e.end_time.as_ref().map(from_timestamp),
                        via_group_id: e.via_group_id,
                    },
                )
                .await?;
                Ok(())
            }
            // What approvers see of the requester's history ends when the activation did.
            Some(EventType::RoleDeactivated) => {
                let e: ev::RoleDeactivated = decode(envelope)?;
                // When it ended (a late timer records it as of then); an event from before
                // it said so, when it was told.
                let at = e
                    .end_time
                    .as_ref()
                    .or(envelope.time.as_ref())
                    .map(from_timestamp)
                    .unwrap_or_else(pim_runtime::db::now_ms);
                store::activation_ended(txn, &e.assignment_id, at).await?;
                Ok(())
            }
            Some(EventType::ActivationShortened) => {
                let e: ev::ActivationShortened = decode(envelope)?;
                if let Some(end) = e.end_time.as_ref().map(from_timestamp) {
                    store::activation_ended(txn, &e.assignment_id, end).await?;
                }
                Ok(())
            }
            Some(
                EventType::EligibilityGranted
                | EventType::EligibilityUpdated
                | EventType::ActiveAssignmentGranted
                | EventType::ActiveAssignmentUpdated,
            ) => {
                let e: ev::AssignmentChanged = decode(envelope)?;
                // The typed kind (or an older publisher's text); an event naming neither is not
                // an assignment reviews can know.
                let kind = match e.typed_kind() {
                    pim_proto::assignment::v1::AssignmentKind::Unspecified => return Ok(()),
                    kind => kind.text().to_owned(),
                };
                let seen = store::SeenAssignment {
                    assignment_id: e.assignment_id,
                    kind,
                    principal_id: e.principal_id,
                    role_id: e.role_id,
                    scope: e.scope,
                    start_at: e.start_time.as_ref().map(from_timestamp).unwrap_or_default(),
                    end_at: e.end_time.as_ref().map(from_timestamp),
                };
                store::upsert_seen(txn, &seen).await?;
                self.0.arrived_late(txn, &seen).await?;
                Ok(())
            }
            Some(EventType::EligibilityRemoved | EventType::ActiveAssignmentRemoved) => {
                let e: ev::AssignmentChanged = decode(envelope)?;
                store::forget_seen(txn, &e.assignment_id).await?;
                Ok(())
            }
            // What assignment made of a review's removal: the item says it, refusals included.
            Some(EventType::ReviewRemovalApplied | EventType::ReviewRemovalRefused) => {
                let e: ev::ReviewEvent = decode(envelope)?;
                let outcome =
                    if event_type(envelope) == Some(EventType::ReviewRemovalApplied) && e.decision == "removed" {
                        "removed".to_owned()
                    } else {
                        e.justification.clone()
                    };
                store::set_item_outcome(txn, &e.item_id, &outcome).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Watchers in this process look again at once, when an approval opened or may have
    /// closed (most requests need none: their RequestCreated changed nothing here).
    async fn after_commit(&self, envelope: &Envelope) {
        let changed = match event_type(envelope) {
            Some(EventType::RequestCreated) => {
                decode::<ev::RequestCreated>(envelope).is_ok_and(|e| e.typed_status() == RequestStatus::PendingApproval)
            }
            Some(EventType::RequestStatusChanged) => true,
            _ => false,
        };
        if changed {
            self.0.changed.send_modify(|n| *n += 1);
            self.0.outbox.wake();
        }
    }
}

impl Service for Approval {
    fn name(&self) -> &'static str {
        "approval"
    }

    fn source(&self) -> Source {
        Source::Approval
    }

    fn stream(&self) -> &'static str {
        pim_runtime::events::streams::APPROVAL
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::APPROVAL
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        routes
            .add_service(ApprovalServiceServer::new(self.approvals.clone()))
            .add_service(AccessReviewServiceServer::new(self.approvals.clone()));
    }

    fn db(&self) -> &Db {
        &self.approvals.db
    }

    fn outbox(&self) -> &Outbox {
        &self.approvals.outbox
    }

    fn handlers(&self) -> Vec<Arc<dyn EventHandler>> {
        vec![Arc::new(AssignmentEvents(self.approvals.clone()))]
    }

    fn background(&self, stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![self.approvals.spawn_timers(stop)]
    }
}
