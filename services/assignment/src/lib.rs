//! Assignment: role definitions, eligible and active assignments, requests, and the access
//! decisions (CheckAccess) every other service authorizes with.

mod assignments;
mod domain;
mod error;
mod grpc;
mod roles;
mod scheduler;
mod store;

use std::sync::Arc;

use pim_proto::events::v1::ApprovalCompleted;
use pim_runtime::events::{Envelope, EventHandler, decode, short_type, streams};
use sea_orm::DatabaseTransaction;

use sea_orm_migration::MigratorTrait;
use tonic::service::RoutesBuilder;

use pim_proto::assignment::v1::access_service_server::AccessServiceServer;
use pim_proto::assignment::v1::assignment_service_server::AssignmentServiceServer;
use pim_proto::assignment::v1::policy_service_server::PolicyServiceServer;
use pim_proto::assignment::v1::reconcile_service_server::{ReconcileService, ReconcileServiceServer};
use pim_proto::assignment::v1::role_service_server::RoleServiceServer;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::db::Db;
use pim_runtime::events::Outbox;
use pim_runtime::host::{Deps, Service};

pub use assignments::Assignments;
pub use roles::{BUILT_IN_ROLES, GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR};
pub use scheduler::Scheduler;

/// Drift detection arrives with a later issue; until then it answers UNIMPLEMENTED.
struct Reconcile;
impl ReconcileService for Reconcile {}

#[derive(Clone)]
pub struct Assignment {
    assignments: Assignments,
}

impl Assignment {
    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        store::Migrator::up(&deps.db, None).await?;
        let roles = roles::RoleCatalog::load(&deps.db).await?;
        let assignments = Assignments {
            db: deps.db,
            outbox: Outbox::default(),
            roles,
            identity: DirectoryServiceClient::new(deps.identity),
            clock: deps.clock,
            timers: Arc::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
        };
        Ok(Self { assignments })
    }

    pub fn assignments(&self) -> &Assignments {
        &self.assignments
    }

    /// The timer pass (tests run it after moving the clock).
    pub fn scheduler(&self) -> Scheduler {
        Scheduler::new(self.assignments.clone())
    }
}

/// Applies approval outcomes to pending activations.
struct ApprovalOutcomes(Assignments);

#[async_trait::async_trait]
impl EventHandler for ApprovalOutcomes {
    fn consumer(&self) -> &str {
        "assignment"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![streams::APPROVAL]
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        let outcome = match short_type(envelope) {
            "ApprovalGranted" => "Granted",
            "ApprovalDenied" => "Denied",
            "ApprovalExpired" => "Expired",
            _ => return Ok(()),
        };
        let event: ApprovalCompleted = decode(envelope)?;
        self.0
            .apply_approval(txn, &event.request_id, outcome, event.actor)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl Service for Assignment {
    fn name(&self) -> &'static str {
        "assignment"
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::ASSIGNMENT
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        let a = &self.assignments;
        routes
            .add_service(RoleServiceServer::new(a.clone()))
            .add_service(PolicyServiceServer::new(a.clone()))
            .add_service(AssignmentServiceServer::new(a.clone()))
            .add_service(AccessServiceServer::new(a.clone()))
            .add_service(ReconcileServiceServer::new(Reconcile));
    }

    fn db(&self) -> &Db {
        &self.assignments.db
    }

    fn outbox(&self) -> &Outbox {
        &self.assignments.outbox
    }

    fn handlers(&self) -> Vec<Arc<dyn EventHandler>> {
        vec![Arc::new(ApprovalOutcomes(self.assignments.clone()))]
    }

    fn background(&self, stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![self.scheduler().spawn(stop)]
    }
}
