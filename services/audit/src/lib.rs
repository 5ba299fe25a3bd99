//! Audit: consumes every event stream and keeps one record per event, queryable by who may
//! read the audit log (and by anyone for what they did or what was done to them).

mod chain;
mod grpc;
mod http;
mod ingest;
mod mail;
mod ocsf;
mod queue;
mod receivers;
mod records;
mod ssf;
mod store;
#[cfg(test)]
mod store_tests;
mod webhooks;

use std::sync::Arc;

use sea_orm::DatabaseTransaction;
use sea_orm_migration::MigratorTrait;
use tonic::Status;
use tonic::service::RoutesBuilder;

use pim_proto::audit::v1::audit_service_server::AuditServiceServer;
use pim_proto::audit::v1::webhook_service_server::WebhookServiceServer;
use pim_runtime::access::{AccessCheck, Target, permissions};
use pim_runtime::db::{Db, now_ms};
use pim_runtime::events::{EventHandler, EventType, Outbox, Source, streams};
use pim_runtime::host::{Deps, Service};

use crate::ingest::Ingest;

const DEFAULT_PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

#[derive(Clone)]
pub struct Audit {
    db: Db,
    outbox: Outbox,
    access: Arc<dyn AccessCheck>,
    correlator: records::Correlator,
    retention: Option<std::time::Duration>,
    webhooks: webhooks::Dispatcher,
    /// Sends notification mail (PIM_SMTP_URL); none: no mail is queued.
    mail: Option<mail::Mailer>,
}

impl Audit {
    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        store::Migrator::up(&deps.db, None).await?;
        // The host refuses to start audit without one (`pim::host`).
        let key = deps.config.audit_hmac_key.as_ref().or(deps.config.secrets_key.as_ref());
        let outbox = Outbox::default();
        // Webhook secrets derive from the suite's secrets key (a key of their own, not the
        // correlator's), and from the keys it replaced while they are given.
        let webhook_key = deps.config.secrets_key.as_ref().or(deps.config.audit_hmac_key.as_ref());
        let replaced = match (&deps.config.secrets_key, &deps.config.secrets_key_previous) {
            (Some(current), Some(previous)) => {
                pim_runtime::sealing::keys_replaced_by(current.expose(), previous.expose())
            }
            _ => Vec::new(),
        };
        let audit = Self {
            webhooks: webhooks::Dispatcher {
                db: deps.db.clone(),
                outbox: outbox.clone(),
                keys: webhook_key.map(|k| webhooks::Keys::new(k.expose()).replacing(&replaced)),
                wake: Default::default(),
                ssf: match (&deps.config.ssf_issuer, webhook_key) {
                    (Some(issuer), Some(key)) => Some(
                        ssf::Transmitter::at_generation(issuer, key.expose(), deps.config.ssf_key_generation)?
                            .replacing(&replaced)?
                            .allowing_private_receivers(deps.config.ssf_private_receivers),
                    ),
                    (Some(_), None) => {
                        tracing::warn!(
                            "no PIM_SECRETS_KEY: the Shared Signals transmitter has no key to sign with and is not served"
                        );
                        None
                    }
                    (None, _) => None,
                },
            },
            mail: match &deps.config.smtp_url {
                Some(url) => Some(mail::Mailer::new(
                    deps.db.clone(),
                    url.expose(),
                    &deps.config.smtp_from,
                    deps.config.public_url.clone(),
                )?),
                None => None,
            },
            db: deps.db,
            outbox,
            access: deps.access,
            correlator: records::Correlator::new(key.map(|k| k.expose().as_str())),
            retention: deps.config.audit_retention,
        };
        audit.reseal_push_credentials().await?;
        Ok(audit)
    }

    /// Seals again, under the current key, each push stream's credentials a key it replaced
    /// sealed (`PIM_SECRETS_KEY_PREVIOUS`), so that the next start needs the current key alone.
    async fn reseal_push_credentials(&self) -> anyhow::Result<()> {
        let Some(transmitter) = &self.webhooks.ssf else {
            return Ok(());
        };
        let mut resealed = 0;
        for (stream_id, sealed) in webhooks::store::stream_authorizations(&self.db).await? {
            match transmitter.reseal_authorization(&stream_id, &sealed) {
                Ok(Some(again)) => {
                    webhooks::store::set_stream_authorization(&self.db, &stream_id, &again).await?;
                    resealed += 1;
                }
                Ok(None) => {}
                Err(_) => tracing::warn!(
                    stream_id,
                    "a push stream's authorization header opens under no key given (neither PIM_SECRETS_KEY nor PIM_SECRETS_KEY_PREVIOUS): its pushes fail until the receiver sets it again"
                ),
            }
        }
        if resealed > 0 {
            tracing::info!(
                resealed,
                "push streams' authorization headers sealed under an earlier PIM_SECRETS_KEY are sealed under the current one"
            );
        }
        Ok(())
    }
}

impl Audit {
    /// The Shared Signals transmitter's HTTP routes (configuration, keys, streams, polling),
    /// authenticating receivers with `verifier`; none without an issuer and a signing key.
    pub fn ssf_router(&self, verifier: Arc<pim_runtime::auth::TokenVerifier>) -> Option<axum::Router> {
        http::router(self, verifier)
    }

    async fn require_reader(&self, caller: &pim_runtime::auth::Caller) -> Result<(), Status> {
        pim_runtime::access::require(self.access.as_ref(), caller, permissions::AUDIT_READ, "/").await
    }

    /// Recomputes the chain over [from, to]; (ok, first broken sequence, records checked).
    async fn verify(&self, from: i64, to: i64) -> anyhow::Result<(bool, i64, i64)> {
        const PAGE: u64 = 1000;
        let (head_sequence, head_hash) = store::head(&self.db).await?;
        // Records up to the retention cut were pruned; the chain goes on from the cut's hash.
        let (cut_sequence, cut_hash) = store::cut(&self.db).await?;
        let from = from.max(cut_sequence + 1);
        let to = if to <= 0 { head_sequence } else { to.min(head_sequence) };
        if from > to {
            return Ok((true, 0, 0));
        }
        let mut prev = if from == cut_sequence + 1 {
            cut_hash
        } else {
            match store::hash_at(&self.db, from - 1).await? {
                Some(h) => h,
                None => return Ok((false, from - 1, 0)),
            }
        };
        let mut next = from;
        while next <= to {
            let page = store::range(&self.db, next, to, PAGE).await?;
            if page.is_empty() {
                // Rows missing at the end of the range.
                return Ok((false, next, next - from));
            }
            match chain::first_broken(prev, next, &page) {
                Ok(last) => prev = last,
                Err(broken) => return Ok((false, broken, broken - from)),
            }
            next += page.len() as i64;
        }
        // The head must be where the chain ends (a removed tail shows here).
        if to == head_sequence && prev != head_hash {
            return Ok((false, head_sequence, to - from + 1));
        }
        Ok((true, 0, to - from + 1))
    }

    /// Readers of the audit log see everything; anyone else sees what involves them.
    async fn involving(&self, caller: &pim_runtime::auth::Caller) -> Result<Option<String>, Status> {
        let reader = self
            .access
            .check(
                caller,
                &caller.principal_id,
                &Target::Permission(permissions::AUDIT_READ.into()),
                "/",
            )
            .await?;
        Ok((!reader.allowed).then(|| caller.principal_id.clone()))
    }
}

impl Audit {
    /// Puts the chain head on the audit stream (`ChainCheckpoint`), so it is kept outside
    /// this database too; nothing is emitted while the chain has not moved since the last one.
    pub async fn checkpoint(&self, last: &mut i64) -> anyhow::Result<bool> {
        let (sequence, hash) = store::head(&self.db).await?;
        if sequence == 0 || sequence == *last {
            return Ok(false);
        }
        let event = pim_proto::events::v1::ChainCheckpoint {
            sequence,
            hash,
            reason: "head".into(),
        };
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        self.enqueue_checkpoint(&txn, &event).await?;
        txn.commit().await?;
        self.outbox.wake();
        *last = sequence;
        Ok(true)
    }

    async fn enqueue_checkpoint(
        &self,
        txn: &DatabaseTransaction,
        event: &pim_proto::events::v1::ChainCheckpoint,
    ) -> anyhow::Result<()> {
        self.outbox
            .enqueue(
                txn,
                streams::AUDIT,
                &pim_runtime::events::envelope(
                    Source::Audit,
                    EventType::ChainCheckpoint,
                    &event.sequence.to_string(),
                    event,
                ),
            )
            .await?;
        Ok(())
    }

    /// One round of webhook deliveries as of `now` (the dispatcher runs them by itself; this
    /// lets a test move time); how many were attempted.
    pub async fn deliver_webhooks(&self, now: i64) -> anyhow::Result<usize> {
        self.webhooks.round(now).await
    }

    /// Applies the retention setting as of `now`: prunes the records older than it and
    /// puts the cut (its sequence and hash) on the audit stream, so the kept chain still
    /// verifies and the cut can be checked against what was anchored before. Returns the
    /// cut when records were pruned.
    pub async fn prune(&self, now: i64) -> anyhow::Result<Option<i64>> {
        let Some(retention) = self.retention else {
            return Ok(None);
        };
        let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        let Some((sequence, hash)) = store::prune(&txn, cutoff, now).await? else {
            return Ok(None);
        };
        let event = pim_proto::events::v1::ChainCheckpoint {
            sequence,
            hash,
            reason: "retention".into(),
        };
        self.enqueue_checkpoint(&txn, &event).await?;
        txn.commit().await?;
        self.outbox.wake();
        tracing::info!(through_sequence = sequence, "audit records past retention pruned");
        Ok(Some(sequence))
    }
}

#[async_trait::async_trait]
impl Service for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn source(&self) -> Source {
        Source::Audit
    }

    fn stream(&self) -> &'static str {
        pim_runtime::events::streams::AUDIT
    }

    /// Audit does not read its own stream: a refused query or export is a record at once.
    async fn access_denied(&self, denied: &pim_proto::events::v1::AccessDenied) -> anyhow::Result<()> {
        let subject = denied
            .actor
            .as_ref()
            .map(|a| a.principal_id.as_str())
            .unwrap_or_default();
        let event = pim_runtime::events::envelope(Source::Audit, EventType::AccessDenied, subject, denied);
        let mut records = vec![records::record(&event, &self.correlator)?];
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        ingest::keep(&txn, &mut records).await?;
        txn.commit().await?;
        self.webhooks.wake.notify_one();
        Ok(())
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::AUDIT
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        routes.add_service(AuditServiceServer::new(self.clone()));
        routes.add_service(WebhookServiceServer::new(self.clone()));
    }

    fn db(&self) -> &Db {
        &self.db
    }

    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn handlers(&self) -> Vec<Arc<dyn EventHandler>> {
        vec![Arc::new(Ingest {
            correlator: self.correlator.clone(),
            outbox: self.outbox.clone(),
            webhooks: self.webhooks.wake.clone(),
            mail: self.mail.clone(),
        })]
    }

    /// A checkpoint of the chain head every five minutes, and retention applied with it;
    /// webhook deliveries.
    fn background(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let audit = self.clone();
        let deliveries = tokio::spawn(self.webhooks.clone().run(stop.clone()));
        let mut tasks = Vec::new();
        if let Some(mailer) = self.mail.clone() {
            tasks.push(tokio::spawn(mailer.run(stop.clone())));
        }
        tasks.extend([
            deliveries,
            tokio::spawn(async move {
                let mut last = 0;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(300)) => {
                            if let Err(err) = audit.prune(now_ms()).await {
                                tracing::warn!(error = %format!("{err:#}"), "audit retention failed");
                            }
                            // Delivered and dead webhook deliveries are history for a week.
                            let settled_before = now_ms() - webhooks::KEPT_FOR_MS;
                            if let Err(err) = webhooks::store::forget_settled(&audit.db, settled_before).await {
                                tracing::warn!(error = %format!("{err:#}"), "forgetting old webhook deliveries failed");
                            }
                            if let Err(err) = mail::store::forget_settled(&audit.db, settled_before).await {
                                tracing::warn!(error = %format!("{err:#}"), "forgetting old notification mail failed");
                            }
                            if let Err(err) = audit.checkpoint(&mut last).await {
                                tracing::warn!(error = %format!("{err:#}"), "audit checkpoint failed");
                            }
                        }
                        _ = stop.changed() => return,
                    }
                }
            }),
        ]);
        tasks
    }
}
