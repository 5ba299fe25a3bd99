//! ApprovalService over gRPC: input checked at the edge, rows turned into messages.

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use pim_proto::approval::v1 as pb;
use pim_proto::approval::v1::approval_service_server::ApprovalService;
use pim_proto::common::v1::Ticket;
use pim_runtime::auth::caller;
use pim_runtime::db::to_timestamp;
use pim_runtime::grpc::invalid_argument;

use crate::approvals::{Approvals, db_err};
use crate::store::{self, ActivationRow, ApprovalRow, DecisionRow};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
const HISTORY: u64 = 10;

fn duration_pb(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn status_pb(status: &str) -> pb::ApprovalStatus {
    use pb::ApprovalStatus as S;
    match status {
        "Pending" => S::Pending,
        "Approved" => S::Approved,
        "Denied" => S::Denied,
        "Expired" => S::Expired,
        "Canceled" => S::Canceled,
        _ => S::Unspecified,
    }
}

fn status_from_pb(status: i32) -> Result<Option<&'static str>, Status> {
    use pb::ApprovalStatus as S;
    Ok(match S::try_from(status) {
        Ok(S::Unspecified) => None,
        Ok(S::Pending) => Some("Pending"),
        Ok(S::Approved) => Some("Approved"),
        Ok(S::Denied) => Some("Denied"),
        Ok(S::Expired) => Some("Expired"),
        Ok(S::Canceled) => Some("Canceled"),
        Err(_) => return Err(invalid_argument("status", "unknown approval status")),
    })
}

pub(crate) fn approval_pb(a: ApprovalRow, decisions: Vec<DecisionRow>, history: Vec<ActivationRow>) -> pb::Approval {
    let stages = a
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| pb::ApprovalStage {
            index: i as i32,
            approver_ids: s.approver_ids.clone(),
            approvals_required: s.approvals_required as i32,
            timeout: Some(duration_pb(s.timeout_ms)),
            escalation_approver_ids: s.escalation_approver_ids.clone(),
            escalate_after: (s.escalate_after_ms > 0).then(|| duration_pb(s.escalate_after_ms)),
            status: if i < a.stage || (i == a.stage && a.status == "Approved") {
                pb::ApprovalStatus::Approved
            } else if i == a.stage {
                status_pb(&a.status)
            } else {
                pb::ApprovalStatus::Unspecified
            } as i32,
        })
        .collect();
    pb::Approval {
        id: a.id,
        request_id: a.request_id,
        requester_id: a.requester_id,
        role_id: a.role_id,
        scope: a.scope,
        duration: Some(duration_pb(a.duration_ms)),
        justification: a.justification,
        ticket: Some(Ticket {
            system: a.ticket_system,
            number: a.ticket_number,
        }),
        status: status_pb(&a.status) as i32,
        stages,
        decisions: decisions
            .into_iter()
            .map(|d| pb::ApprovalDecision {
                approver_id: d.approver_id,
                decision: if d.decision == "approve" {
                    pb::Decision::Approve
                } else {
                    pb::Decision::Deny
                } as i32,
                justification: d.justification,
                decided_at: Some(to_timestamp(d.decided_at)),
                stage: d.stage as i32,
            })
            .collect(),
        created_at: Some(to_timestamp(a.created_at)),
        expires_at: Some(to_timestamp(a.expires_at)),
        cursor: a.rev.to_string(),
        role_name: a.role_name,
        current_stage: a.stage as i32,
        requester_history: history
            .into_iter()
            .map(|h| pb::Activation {
                role_id: h.role_id,
                role_name: h.role_name,
                scope: h.scope,
                start_time: Some(to_timestamp(h.start_at)),
                end_time: h.end_at.map(to_timestamp),
            })
            .collect(),
    }
}

fn approval_id(raw: &str) -> Result<&str, Status> {
    let id = raw.trim();
    if id.is_empty() || id.len() > 64 {
        return Err(invalid_argument("approval_id", "required (an approval id)"));
    }
    Ok(id)
}

fn cursor(raw: &str, field: &str) -> Result<Option<i64>, Status> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| invalid_argument(field, "not a cursor this service issued"))
}

#[tonic::async_trait]
impl ApprovalService for Approvals {
    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let status = status_from_pb(r.status)?;
        let page_size = match r.page_size {
            n if n < 0 => return Err(invalid_argument("page_size", "must not be negative")),
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let before = cursor(&r.page_token, "page_token")?;
        let (rows, next) = self.list(&caller, status, r.all, before, page_size).await?;
        let mut approvals = Vec::with_capacity(rows.len());
        for row in rows {
            let decisions = store::decisions(&self.db, &row.id).await.map_err(db_err)?;
            approvals.push(approval_pb(row, decisions, Vec::new()));
        }
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_approval(&self, request: Request<pb::GetApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        let caller = caller(&request)?.clone();
        let id = approval_id(&request.get_ref().approval_id)?;
        let (approval, decisions) = self.get(&caller, id).await?;
        let history = store::recent_activations(&self.db, &approval.requester_id, HISTORY)
            .await
            .map_err(db_err)?;
        Ok(Response::new(approval_pb(approval, decisions, history)))
    }

    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::Approval>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let id = approval_id(&r.approval_id)?;
        let approve = match pb::Decision::try_from(r.decision) {
            Ok(pb::Decision::Approve) => true,
            Ok(pb::Decision::Deny) => false,
            _ => return Err(invalid_argument("decision", "approve or deny")),
        };
        let (approval, decisions) = Approvals::decide(self, &caller, id, approve, &r.justification).await?;
        Ok(Response::new(approval_pb(approval, decisions, Vec::new())))
    }

    /// Pending approvals the caller may decide: first those after the cursor, then each new
    /// one (or one reaching a stage the caller decides) as it happens. Changes made by this
    /// process arrive at once; those of other replicas within a second.
    async fn watch_approvals(
        &self,
        request: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<BoxStream<pb::Approval>>, Status> {
        let caller = caller(&request)?.clone();
        let mut after = cursor(&request.get_ref().cursor, "cursor")?.unwrap_or(0);
        let mut changed = self.changed.subscribe();
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut groups = None;
            let mut refreshed = tokio::time::Instant::now();
            loop {
                // Group membership can change while a bot watches for hours.
                if refreshed.elapsed() > Duration::from_secs(60) {
                    groups = None;
                    refreshed = tokio::time::Instant::now();
                }
                let high = match this.decidable_after(&caller, after, &mut groups).await {
                    Ok((rows, high)) => {
                        for row in rows {
                            if tx.send(Ok(approval_pb(row, Vec::new(), Vec::new()))).await.is_err() {
                                return;
                            }
                        }
                        high
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                };
                if let Some(high) = high {
                    after = after.max(high);
                    continue;
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
