//! Approval: four-eyes decisions on activation requests, and access reviews. This is the
//! walking skeleton: the service is hosted, migrated and healthy, and every RPC answers
//! UNIMPLEMENTED until the approval issue lands.

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use tonic::service::RoutesBuilder;

use pim_proto::approval::v1::access_review_service_server::{AccessReviewService, AccessReviewServiceServer};
use pim_proto::approval::v1::approval_service_server::{ApprovalService, ApprovalServiceServer};
use pim_runtime::db::Db;
use pim_runtime::events::{Outbox, backbone_migration};
use pim_runtime::host::{Deps, Service};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![backbone_migration()]
    }
}

struct Approvals;
impl ApprovalService for Approvals {}

struct Reviews;
impl AccessReviewService for Reviews {}

#[derive(Clone)]
pub struct Approval {
    db: Db,
    outbox: Outbox,
}

impl Approval {
    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        Migrator::up(&deps.db, None).await?;
        Ok(Self {
            db: deps.db,
            outbox: Outbox::default(),
        })
    }
}

impl Service for Approval {
    fn name(&self) -> &'static str {
        "approval"
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::APPROVAL
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        routes
            .add_service(ApprovalServiceServer::new(Approvals))
            .add_service(AccessReviewServiceServer::new(Reviews));
    }

    fn db(&self) -> &Db {
        &self.db
    }

    fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}
