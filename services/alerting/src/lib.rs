//! Alerting: rules over every service's events that detect risky privileged activity, and
//! the alerts they raise, streamed to SOC tooling (`AlertService.StreamAlerts`, and the Redis
//! stream `pim.alerts` as OCSF Detection Findings in JSON).

mod alerts;
mod domain;
mod grpc;
mod rules;
mod store;
#[cfg(test)]
mod store_tests;

use std::collections::HashSet;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use sea_orm::DatabaseTransaction;
use sea_orm_migration::MigratorTrait;
use tonic::service::RoutesBuilder;

use pim_proto::alerting::v1::alert_service_server::AlertServiceServer;
use pim_runtime::db::Db;
use pim_runtime::events::{Envelope, EventHandler, EventType, Outbox, Source, streams};
use pim_runtime::host::{Deps, Service};

pub use alerts::{Alerts, detection_finding};

#[derive(Clone)]
pub struct Alerting {
    alerts: Alerts,
    /// Redis, stream prefix, and where the dead-letter tail starts (Redis only).
    dead_letters: Option<(pim_runtime::events::RedisTarget, String, String)>,
}

impl Alerting {
    /// The rules' logic (tests run its time-triggered scan after moving the clock).
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The service's database (tests wait on its projections).
    pub fn alerting_db(&self) -> &Db {
        &self.alerts.db
    }

    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        store::Migrator::up(&deps.db, None).await?;
        let dead_letters = match deps.config.redis()? {
            Some(redis) => {
                let prefix = deps.config.stream_prefix.clone();
                // Unknown (Redis unreachable at start): what comes next, not the stream's history,
                // whose alerts were raised before.
                let from = pim_runtime::events::tail_start(&redis, &prefix, streams::DEADLETTER)
                    .await
                    .unwrap_or_else(|| "$".to_owned());
                Some((redis, prefix, from))
            }
            None => None,
        };
        Ok(Self {
            dead_letters,
            alerts: Alerts {
                db: deps.db,
                outbox: Outbox::default(),
                access: deps.access,
                clock: deps.clock,
                changed: Arc::new(tokio::sync::watch::channel(0).0),
                settings: Arc::default(),
                published: Arc::default(),
            },
        })
    }
}

/// Runs the rules on the events of identity, assignment and approval.
struct Detect {
    alerts: Alerts,
    /// Events whose handling changed an alert: after they commit, the relay and the alert
    /// streams look again. Most events change none, and waking the relay for them would cost
    /// it an empty pass each.
    changed: Mutex<HashSet<String>>,
}

impl Detect {
    fn changed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.changed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl EventHandler for Detect {
    fn consumer(&self) -> &str {
        "alerting"
    }

    fn streams(&self) -> Vec<&'static str> {
        // And audit's, for the entries consumers refused (forged_event).
        vec![
            streams::IDENTITY,
            streams::ASSIGNMENT,
            streams::APPROVAL,
            streams::AUDIT,
        ]
    }

    fn wants(&self, event_type: Option<EventType>) -> bool {
        matches!(
            event_type,
            Some(
                EventType::SignInSucceeded
                    | EventType::SignInFailed
                    | EventType::SignInMfaPending
                    | EventType::SignInEnrollmentPending
                    | EventType::MfaFailed
                    | EventType::MfaLockedOut
                    | EventType::RecoveryCodeUsed
                    | EventType::MfaMethodRemoved
                    | EventType::MfaReset
                    | EventType::EligibilityGranted
                    | EventType::EligibilityUpdated
                    | EventType::ActiveAssignmentGranted
                    | EventType::ActiveAssignmentUpdated
                    | EventType::EligibilityRemoved
                    | EventType::ActiveAssignmentRemoved
                    | EventType::RoleActivated
                    | EventType::RoleDeactivated
                    | EventType::UnmanagedGrantDetected
                    | EventType::UnmanagedGrantCleared
                    | EventType::GroupMemberAdded
                    | EventType::GroupMemberRemoved
                    | EventType::GroupOwnerAdded
                    | EventType::GroupOwnerRemoved
                    | EventType::PolicyUpdated
                    | EventType::RoleDefinitionCreated
                    | EventType::RoleDefinitionUpdated
                    | EventType::RoleDefinitionDeleted
                    | EventType::ApprovalCreated
                    | EventType::ApprovalDecisionRecorded
                    | EventType::SelfApprovalAttempted
                    | EventType::EventRejected
                    | EventType::WebhookDeadLettered
                    | EventType::WebhookSubscriptionCreated
            )
        )
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        let before = self.alerts.published.load(SeqCst);
        self.alerts.evaluate(txn, envelope).await?;
        if self.alerts.published.load(SeqCst) != before {
            self.changed().insert(envelope.id.clone());
        }
        Ok(())
    }

    /// The relay and the streams in this process look again at once.
    async fn after_commit(&self, envelope: &Envelope) {
        if self.changed().remove(&envelope.id) {
            self.alerts.committed();
        }
    }
}

impl Service for Alerting {
    fn name(&self) -> &'static str {
        "alerting"
    }

    fn source(&self) -> Source {
        Source::Alerting
    }

    fn stream(&self) -> &'static str {
        pim_runtime::events::streams::ALERTING
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::ALERTING
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        routes.add_service(AlertServiceServer::new(self.alerts.clone()));
    }

    fn db(&self) -> &Db {
        &self.alerts.db
    }

    fn outbox(&self) -> &Outbox {
        &self.alerts.outbox
    }

    fn handlers(&self) -> Vec<Arc<dyn EventHandler>> {
        vec![Arc::new(Detect {
            alerts: self.alerts.clone(),
            changed: Mutex::default(),
        })]
    }

    fn background(&self, stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![self.alerts.spawn_scans(stop.clone())];
        if let Some((redis, prefix, from)) = &self.dead_letters {
            let alerts = self.alerts.clone();
            tasks.push(pim_runtime::events::tail(
                redis.clone(),
                prefix.clone(),
                streams::DEADLETTER,
                from.clone(),
                // No service owns the dead-letter stream: its entries are consumers' reports.
                Arc::default(),
                stop,
                |_| true,
                move |entry_id, envelope| {
                    let (alerts, entry_id, envelope) = (alerts.clone(), entry_id.to_owned(), envelope.clone());
                    tokio::spawn(async move {
                        if let Err(err) = alerts.dead_lettered(&entry_id, &envelope).await {
                            tracing::warn!(error = %err.message(), "dead-letter alert failed");
                        }
                    });
                },
            ));
        }
        tasks
    }
}
