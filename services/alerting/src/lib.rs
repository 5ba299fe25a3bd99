//! Alerting: rules over domain events and periodic scans, alerts streamed to SOC tooling.
//! This is the walking skeleton: the service is hosted, migrated and healthy, and every RPC
//! answers UNIMPLEMENTED until the alerting issue lands.

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use tonic::service::RoutesBuilder;

use pim_proto::alerting::v1::alert_service_server::{AlertService, AlertServiceServer};
use pim_runtime::db::Db;
use pim_runtime::events::{Outbox, backbone_migration};
use pim_runtime::host::{Deps, Service};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![backbone_migration()]
    }
}

struct Alerts;
impl AlertService for Alerts {}

#[derive(Clone)]
pub struct Alerting {
    db: Db,
    outbox: Outbox,
}

impl Alerting {
    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        Migrator::up(&deps.db, None).await?;
        Ok(Self {
            db: deps.db,
            outbox: Outbox::default(),
        })
    }
}

impl Service for Alerting {
    fn name(&self) -> &'static str {
        "alerting"
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::ALERTING
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        routes.add_service(AlertServiceServer::new(Alerts));
    }

    fn db(&self) -> &Db {
        &self.db
    }

    fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}
