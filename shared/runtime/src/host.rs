//! The seam between a service library and the process that hosts it (`pim serve <service>`
//! hosts one, `pim up` all five): what a service needs, and what the host needs from it.

use std::sync::Arc;

use tonic::service::RoutesBuilder;
use tonic::transport::Channel;

use crate::access::AccessCheck;
use crate::clock::Clock;
use crate::config::Config;
use crate::db::Db;
use crate::events::{EventHandler, EventType, Outbox, Source, envelope};
use pim_proto::events::v1::AccessDenied;

/// What the host gives a service.
#[derive(Clone)]
pub struct Deps {
    pub config: Config,
    /// The service's own database, migrated by the service.
    pub db: Db,
    /// The cached CheckAccess client every service authorizes through.
    pub access: Arc<dyn AccessCheck>,
    /// Channels to the identity and assignment services (in `pim up`, the process itself).
    pub identity: Channel,
    pub assignment: Channel,
    /// The channel to the approval service, for a service that asks it (identity: who reviews
    /// privileged access); `None` in a process that hosts no such service.
    pub approval: Option<Channel>,
    /// Where the service reads the time (a manual clock in tests).
    pub clock: Arc<dyn Clock>,
}

/// What the host needs from a service.
#[async_trait::async_trait]
pub trait Service: Send + Sync {
    /// Short name: identity, assignment, approval, alerting, audit.
    fn name(&self) -> &'static str;
    /// What its events name as their source.
    fn source(&self) -> Source;
    /// The stream this service alone publishes its events to.
    fn stream(&self) -> &'static str;
    /// Records a call this service answered PERMISSION_DENIED: an `AccessDenied` event on its
    /// stream, which audit keeps as a failure.
    async fn access_denied(&self, denied: &AccessDenied) -> anyhow::Result<()> {
        let subject = denied
            .actor
            .as_ref()
            .map(|a| a.principal_id.as_str())
            .unwrap_or_default();
        let event = envelope(self.source(), EventType::AccessDenied, subject, denied);
        self.outbox().enqueue(self.db(), self.stream(), &event).await?;
        self.outbox().wake();
        Ok(())
    }
    /// Fully-qualified gRPC service names, for health.
    fn grpc_services(&self) -> &'static [&'static str];
    fn add_routes(&self, routes: &mut RoutesBuilder);
    fn db(&self) -> &Db;
    fn outbox(&self) -> &Outbox;
    /// Consumers of other services' events.
    fn handlers(&self) -> Vec<Arc<dyn EventHandler>> {
        Vec::new()
    }
    /// Background tasks (timers, scans); each ends when `stop` turns true.
    fn background(&self, _stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        Vec::new()
    }
}
