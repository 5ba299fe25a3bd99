//! The audit service's gRPC surface: queries, exports, chain checks.

mod webhooks;

use tonic::{Request, Response, Status};

use pim_proto::audit::v1 as pb;
use pim_proto::audit::v1::audit_service_server::AuditService;
use pim_runtime::auth::caller;
use pim_runtime::db::to_timestamp;
use pim_runtime::grpc::{filter_value, invalid_argument, time_field};

use crate::{Audit, DEFAULT_PAGE, MAX_PAGE, ocsf, store};

/// How many exports read the database at once in this process (a page each); the others wait.
static EXPORT_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A query's filter; the page token is the last sequence the previous page held.
fn filter_from(r: pb::QueryEventsRequest, involving: Option<String>) -> Result<store::Filter, Status> {
    let after_sequence = if r.page_token.is_empty() {
        0
    } else {
        r.page_token
            .parse()
            .map_err(|_| pim_runtime::grpc::invalid_argument("page_token", "is not a token this service gave"))?
    };
    let value = |field: &str, value: &str| filter_value(field, value).map(str::to_owned);
    let outcome = value("outcome", &r.outcome)?;
    if !["", "success", "failure", "refused", "detected"].contains(&outcome.as_str()) {
        return Err(invalid_argument(
            "outcome",
            "must be success, failure, refused or detected (or empty: any)",
        ));
    }
    Ok(store::Filter {
        actor_id: value("actor_id", &r.actor_id)?,
        target_id: value("target_id", &r.target_id)?,
        role_id: value("role_id", &r.role_id)?,
        // A scope may be as long as assignment takes one.
        scope: pim_runtime::text::one_line(&r.scope, 1024)
            .map_err(|why| invalid_argument("scope", &why))?
            .to_owned(),
        action: value("action", &r.action)?,
        outcome,
        since: r.since.as_ref().map(|t| time_field("since", t)).transpose()?,
        until: r.until.as_ref().map(|t| time_field("until", t)).transpose()?,
        trace_id: value("correlation_id", &r.correlation_id)?,
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

/// A mail as operators see it: no body.
fn mail_to_pb(m: crate::mail::store::Mail) -> pb::Mail {
    let status = match m.status.as_str() {
        "sent" => pb::DeliveryStatus::Delivered,
        "dead" => pb::DeliveryStatus::Dead,
        _ => pb::DeliveryStatus::Pending,
    };
    pb::Mail {
        next_attempt_at: (status == pb::DeliveryStatus::Pending).then(|| to_timestamp(m.next_attempt_at)),
        id: m.id,
        event_id: m.event_id,
        party: m.party,
        recipient: m.recipient,
        subject: m.subject,
        status: status as i32,
        attempts: m.attempts,
        last_error: m.last_error,
        created_at: Some(to_timestamp(m.created_at)),
        sent_at: m.sent_at.map(to_timestamp),
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
        let limit = pim_runtime::grpc::page_size(r.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let filter = filter_from(r, self.involving(&caller).await?)?;
        let records = store::query(&self.db, &filter, limit + 1)
            .await
            .map_err(pim_runtime::grpc::internal)?;
        let (records, next_page_token) = pim_runtime::grpc::next_page(records, limit, |r| r.sequence.to_string());
        Ok(Response::new(pb::QueryEventsResponse {
            records: records.into_iter().map(record_to_pb).collect(),
            next_page_token,
        }))
    }

    /// The matching records as JSON lines, in chunks of up to 500 records.
    async fn export_events(
        &self,
        request: Request<pb::ExportEventsRequest>,
    ) -> Result<Response<pim_runtime::grpc::BoxStream<pb::ExportChunk>>, Status> {
        let caller = caller(&request)?.clone();
        // An export is a stream like a watch: counted among the caller's open streams, and
        // ended once their token no longer verifies.
        let guard = pim_runtime::streams::Guard::of(&request);
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
                // Exports take turns at the database, so a crowd of them leaves it to the rest.
                let turn = EXPORT_READS.acquire().await;
                let page = store::query(&db, &filter, 500).await;
                drop(turn);
                let page = match page {
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
        let export = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(guard.wrap(export, || async { Ok(()) })))
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
        // A range that ends before it starts checks nothing: "intact" would say nothing true.
        if r.to_sequence != 0 && r.from_sequence > r.to_sequence {
            return Err(pim_runtime::grpc::invalid_argument(
                "to_sequence",
                "must not come before from_sequence (0: to the end)",
            ));
        }
        let (ok, first_broken_sequence, checked) = self
            .verify(r.from_sequence, r.to_sequence)
            .await
            .map_err(pim_runtime::grpc::internal)?;
        // A range past the chain's end checks nothing: "intact" would say nothing true (a
        // chain that lost its tail, checked from where it last was).
        if checked == 0 && r.from_sequence > 0 {
            return Err(pim_runtime::grpc::invalid_argument(
                "from_sequence",
                "no record from there: the chain does not reach it (is its tail gone?)",
            ));
        }
        Ok(Response::new(pb::VerifyChainResponse {
            ok,
            first_broken_sequence,
            checked,
        }))
    }

    async fn list_mails(
        &self,
        request: Request<pb::ListMailsRequest>,
    ) -> Result<Response<pb::ListMailsResponse>, Status> {
        let caller = caller(&request)?.clone();
        self.require_reader(&caller).await?;
        let r = request.into_inner();
        let limit = pim_runtime::grpc::page_size(r.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let recipient = Some(r.recipient.trim()).filter(|t| !t.is_empty());
        let mails = crate::mail::store::history(&self.db, recipient, limit)
            .await
            .map_err(pim_runtime::grpc::internal)?;
        Ok(Response::new(pb::ListMailsResponse {
            mails: mails.into_iter().map(mail_to_pb).collect(),
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
            _ => Err(pim_runtime::grpc::not_found(&format!("audit event {id} not found"))),
        }
    }
}
