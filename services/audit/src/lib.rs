//! Audit: consumes every event stream and keeps one record per event, queryable by who may
//! read the audit log (and by anyone for what they did or what was done to them).

mod chain;
mod ocsf;
mod records;
mod store;

use std::sync::Arc;

use sea_orm::DatabaseTransaction;
use sea_orm_migration::MigratorTrait;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

use pim_proto::audit::v1 as pb;
use pim_proto::audit::v1::audit_service_server::{AuditService, AuditServiceServer};
use pim_runtime::access::{AccessCheck, Target, permissions};
use pim_runtime::auth::caller;
use pim_runtime::db::{Db, from_timestamp, now_ms, to_timestamp};
use pim_runtime::events::{Envelope, EventHandler, Outbox, Rejected, streams};
use pim_runtime::host::{Deps, Service};

const DEFAULT_PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

#[derive(Clone)]
pub struct Audit {
    db: Db,
    outbox: Outbox,
    access: Arc<dyn AccessCheck>,
    correlator: records::Correlator,
    retention: Option<std::time::Duration>,
}

impl Audit {
    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        store::Migrator::up(&deps.db, None).await?;
        let key = deps.config.audit_hmac_key.as_ref().or(deps.config.secrets_key.as_ref());
        if key.is_none() {
            tracing::warn!("no PIM_AUDIT_HMAC_KEY (or PIM_SECRETS_KEY): audit keeps no trace of source addresses");
        }
        Ok(Self {
            db: deps.db,
            outbox: Outbox::default(),
            access: deps.access,
            correlator: records::Correlator::new(key.map(|k| k.expose().as_str())),
            retention: deps.config.audit_retention,
        })
    }
}

/// Stores each event of the followed streams once.
struct Ingest {
    correlator: records::Correlator,
    /// For the `EventRejected` events audit publishes (alerting raises forged_event on them).
    outbox: Outbox,
}

#[async_trait::async_trait]
impl EventHandler for Ingest {
    fn consumer(&self) -> &str {
        "audit"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![
            streams::IDENTITY,
            streams::ASSIGNMENT,
            streams::APPROVAL,
            streams::ALERTING,
        ]
    }

    /// A record's event id is unique, and `append_all` skips ids already stored.
    fn deduplicates_itself(&self) -> bool {
        true
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        self.handle_all(txn, &[envelope]).await
    }

    /// One lock of the chain head and one insert for the whole batch.
    async fn handle_all(&self, txn: &DatabaseTransaction, envelopes: &[&Envelope]) -> anyhow::Result<()> {
        let mut records = envelopes
            .iter()
            .map(|e| records::record(e, &self.correlator))
            .collect::<anyhow::Result<Vec<_>>>()?;
        store::append_all(txn, &mut records, now_ms()).await?;
        Ok(())
    }

    fn records_rejections(&self) -> bool {
        true
    }

    /// Every refused entry of a followed stream is a failure record (`EventRejected`), and an
    /// `EventRejected` event on audit's stream for alerting. The record's id is the refusal's,
    /// so a redelivery adds nothing.
    async fn rejected(&self, txn: &DatabaseTransaction, rejected: &Rejected) -> anyhow::Result<()> {
        let mut records = vec![records::rejected(rejected)];
        store::append_all(txn, &mut records, now_ms()).await?;
        if records.is_empty() {
            return Ok(());
        }
        let event = records::rejected_event(rejected);
        let envelope = pim_runtime::events::envelope("pim.audit", "EventRejected", &rejected.stream, &event);
        self.outbox.enqueue(txn, streams::AUDIT, &envelope).await?;
        Ok(())
    }

    /// After a refusal committed (its marker holds only an id), the relay sends its event.
    async fn after_commit(&self, envelope: &Envelope) {
        if envelope.r#type.is_empty() {
            self.outbox.wake();
        }
    }
}

/// A query's filter; the page token is the last sequence the previous page held.
fn filter_from(r: pb::QueryEventsRequest, involving: Option<String>) -> Result<store::Filter, Status> {
    let after_sequence = if r.page_token.is_empty() {
        0
    } else {
        r.page_token
            .parse()
            .map_err(|_| pim_runtime::grpc::invalid_argument("page_token", "is not a token this service gave"))?
    };
    Ok(store::Filter {
        actor_id: r.actor_id,
        target_id: r.target_id,
        role_id: r.role_id,
        scope: r.scope,
        action: r.action,
        outcome: r.outcome,
        since: r.since.as_ref().map(from_timestamp),
        until: r.until.as_ref().map(from_timestamp),
        trace_id: r.correlation_id,
        involving,
        after_sequence,
        newest_first: r.newest_first,
    })
}

/// One record as a JSON line (the export format; hashes in hex so the chain can be checked).
fn record_json(r: &store::Record) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    serde_json::json!({
        "sequence": r.sequence, "event_id": r.event_id, "time_ms": r.time, "source": r.source, "action": r.action,
        "actor_id": r.actor_id, "actor_name": r.actor_name, "target_id": r.target_id, "target_name": r.target_name,
        "role_id": r.role_id, "role_name": r.role_name, "scope": r.scope, "justification": r.justification,
        "ticket": r.ticket, "outcome": r.outcome, "trace_id": r.trace_id,
        "payload": serde_json::from_str::<serde_json::Value>(&r.payload_json).unwrap_or_default(),
        "prev_hash": hex(&r.prev_hash), "hash": hex(&r.hash),
    })
    .to_string()
}

fn record_to_pb(r: store::Record) -> pb::AuditRecord {
    pb::AuditRecord {
        sequence: r.sequence,
        event_id: r.event_id,
        time: Some(to_timestamp(r.time)),
        source: r.source,
        action: r.action,
        actor_id: r.actor_id,
        actor_name: r.actor_name,
        target_id: r.target_id,
        target_name: r.target_name,
        role_id: r.role_id,
        role_name: r.role_name,
        scope: r.scope,
        justification: r.justification,
        ticket: r.ticket,
        outcome: r.outcome,
        trace_id: r.trace_id,
        payload_json: r.payload_json,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

impl Audit {
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

#[tonic::async_trait]
impl AuditService for Audit {
    async fn query_events(
        &self,
        request: Request<pb::QueryEventsRequest>,
    ) -> Result<Response<pb::QueryEventsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let limit = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n > 0 && (n as u64) <= MAX_PAGE => n as u64,
            _ => {
                return Err(pim_runtime::grpc::invalid_argument(
                    "page_size",
                    &format!("must be between 1 and {MAX_PAGE}"),
                ));
            }
        };
        let filter = filter_from(r, self.involving(&caller).await?)?;
        let mut records = store::query(&self.db, &filter, limit + 1)
            .await
            .map_err(pim_runtime::grpc::internal)?;
        let next_page_token = if records.len() as u64 > limit {
            records.truncate(limit as usize);
            records.last().map(|r| r.sequence.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::QueryEventsResponse {
            records: records.into_iter().map(record_to_pb).collect(),
            next_page_token,
        }))
    }

    /// The matching records as JSON lines, in chunks of up to 500 records.
    async fn export_events(
        &self,
        request: Request<pb::ExportEventsRequest>,
    ) -> Result<
        Response<std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExportChunk, Status>> + Send>>>,
        Status,
    > {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let as_ocsf = match r.format.as_str() {
            "" | "jsonl" => false,
            "ocsf" => true,
            other => {
                return Err(pim_runtime::grpc::invalid_argument(
                    "format",
                    &format!("jsonl or ocsf, not {other:?}"),
                ));
            }
        };
        let mut filter = filter_from(r.filter.unwrap_or_default(), self.involving(&caller).await?)?;
        // Exports run oldest first, page after page, so a chain can be checked as it comes.
        filter.newest_first = false;
        let db = self.db.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let page = match store::query(&db, &filter, 500).await {
                    Ok(page) => page,
                    Err(err) => {
                        let _ = tx.send(Err(pim_runtime::grpc::internal(err))).await;
                        return;
                    }
                };
                let Some(last) = page.last().map(|r| r.sequence) else {
                    return;
                };
                let mut data = String::new();
                for record in &page {
                    if as_ocsf {
                        data.push_str(&ocsf::event(record).to_string());
                    } else {
                        data.push_str(&record_json(record));
                    }
                    data.push('\n');
                }
                if tx
                    .send(Ok(pb::ExportChunk {
                        data: data.into_bytes(),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                filter.after_sequence = last;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn verify_chain(
        &self,
        request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let caller = caller(&request)?.clone();
        self.require_reader(&caller).await?;
        let r = request.into_inner();
        if r.from_sequence < 0 || r.to_sequence < 0 {
            return Err(pim_runtime::grpc::invalid_argument(
                "from_sequence",
                "sequences are positive",
            ));
        }
        let (ok, first_broken_sequence, checked) = self
            .verify(r.from_sequence, r.to_sequence)
            .await
            .map_err(pim_runtime::grpc::internal)?;
        Ok(Response::new(pb::VerifyChainResponse {
            ok,
            first_broken_sequence,
            checked,
        }))
    }

    async fn get_chain_head(
        &self,
        request: Request<pb::GetChainHeadRequest>,
    ) -> Result<Response<pb::ChainHead>, Status> {
        let caller = caller(&request)?.clone();
        self.require_reader(&caller).await?;
        let (sequence, hash) = store::head(&self.db).await.map_err(pim_runtime::grpc::internal)?;
        Ok(Response::new(pb::ChainHead { sequence, hash }))
    }

    async fn get_event(&self, request: Request<pb::GetEventRequest>) -> Result<Response<pb::AuditRecord>, Status> {
        let caller = caller(&request)?.clone();
        let id = request.get_ref().event_id.trim();
        if id.is_empty() {
            return Err(pim_runtime::grpc::invalid_argument("event_id", "required"));
        }
        let record = store::get(&self.db, id).await.map_err(pim_runtime::grpc::internal)?;
        let involving = self.involving(&caller).await?;
        match record {
            Some(r) if involving.as_ref().is_none_or(|p| &r.actor_id == p || &r.target_id == p) => {
                Ok(Response::new(record_to_pb(r)))
            }
            _ => Err(Status::not_found(format!("audit event {id} not found"))),
        }
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
                &pim_runtime::events::envelope("pim.audit", "ChainCheckpoint", &event.sequence.to_string(), event),
            )
            .await?;
        Ok(())
    }

    /// Applies the retention setting as of `now`: prunes the records older than it and
    /// puts the cut (its sequence and hash) on the audit stream, so the kept chain still
    /// verifies and the cut can be checked against what was anchored before. Returns the
    /// cut when records were pruned.
    pub async fn prune(&self, now: i64) -> anyhow::Result<Option<i64>> {
        let Some(retention) = self.retention else {
            return Ok(None);
        };
        let cutoff = now - retention.as_millis() as i64;
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
        let event = pim_runtime::events::envelope("pim.audit", "AccessDenied", subject, denied);
        let mut records = vec![records::record(&event, &self.correlator)?];
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        store::append_all(&txn, &mut records, now_ms()).await?;
        txn.commit().await?;
        Ok(())
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::AUDIT
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        routes.add_service(AuditServiceServer::new(self.clone()));
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
        })]
    }

    /// A checkpoint of the chain head every five minutes, and retention applied with it.
    fn background(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let audit = self.clone();
        vec![tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(300)) => {
                        if let Err(err) = audit.prune(now_ms()).await {
                            tracing::warn!(error = %format!("{err:#}"), "audit retention failed");
                        }
                        if let Err(err) = audit.checkpoint(&mut last).await {
                            tracing::warn!(error = %format!("{err:#}"), "audit checkpoint failed");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        })]
    }
}
