//! ApprovalService and AccessReviewService over gRPC: input checked at the edge, rows turned into messages.

use std::time::Duration;

use tonic::{Request, Response, Status};

use pim_proto::approval::v1 as pb;
use pim_proto::approval::v1::access_review_service_server::AccessReviewService;
use pim_proto::approval::v1::approval_service_server::ApprovalService;
use pim_proto::common::v1::Ticket;
use pim_runtime::auth::caller;
use pim_runtime::db::to_timestamp;
use pim_runtime::grpc::{BoxStream, cursor, internal, invalid_argument};

use crate::approvals::Approvals;
use crate::domain::{ApprovalStatus, Decision};
use crate::reviews::NewReview;
use crate::store::{self, ActivationRow, ApprovalRow, DecisionRow, ItemRow, ItemsPage, ReviewRow};

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
const HISTORY: u64 = 10;

fn duration_pb(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// The status a list asks for; none for Unspecified.
fn status_from_pb(status: i32) -> Result<Option<ApprovalStatus>, Status> {
    pb::ApprovalStatus::try_from(status)
        .map(ApprovalStatus::from_pb)
        .map_err(|_| invalid_argument("status", "unknown approval status"))
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
            status: if i < a.stage || (i == a.stage && a.status == ApprovalStatus::Approved) {
                pb::ApprovalStatus::Approved
            } else if i == a.stage {
                a.status.to_pb()
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
        status: a.status.to_pb() as i32,
        stages,
        decisions: decisions
            .into_iter()
            .map(|d| pb::ApprovalDecision {
                approver_id: d.approver_id,
                decision: d.decision.to_pb() as i32,
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
        action: a.action as i32,
        kind: a.kind as i32,
        end_time: a.end_at.map(to_timestamp),
        start_time: a.start_at.map(to_timestamp),
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
    pim_runtime::grpc::id_field("approval_id", raw, "an approval id")
}

impl Approvals {
    /// The approval `id` names: its own id, or the id of the request it is for (what mails
    /// and the requester name), so either decides it.
    async fn either_id(&self, id: &str) -> Result<String, Status> {
        if store::get(&self.db, id).await.map_err(internal)?.is_some() {
            return Ok(id.to_owned());
        }
        let by_request = store::by_request(&self.db, id).await.map_err(internal)?;
        Ok(by_request.map_or_else(|| id.to_owned(), |a| a.id))
    }
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
        let page_size = pim_runtime::grpc::page_size(r.page_size, DEFAULT_PAGE as u64, MAX_PAGE as u64)? as usize;
        let before = cursor(&r.page_token, "page_token")?;
        let (rows, next) = self.list(&caller, status, r.all, before, page_size).await?;
        let mut approvals = Vec::with_capacity(rows.len());
        for row in rows {
            let decisions = store::decisions(&self.db, &row.id).await.map_err(internal)?;
            approvals.push(approval_pb(row, decisions, Vec::new()));
        }
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_approval(&self, request: Request<pb::GetApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        let caller = caller(&request)?.clone();
        let id = self.either_id(approval_id(&request.get_ref().approval_id)?).await?;
        let (approval, decisions) = self.get(&caller, &id).await?;
        let history = store::recent_activations(&self.db, &approval.requester_id, HISTORY)
            .await
            .map_err(internal)?;
        Ok(Response::new(approval_pb(approval, decisions, history)))
    }

    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::Approval>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let id = self.either_id(approval_id(&r.approval_id)?).await?;
        let approve = match pb::Decision::try_from(r.decision) {
            Ok(pb::Decision::Approve) => true,
            Ok(pb::Decision::Deny) => false,
            _ => return Err(invalid_argument("decision", "approve or deny")),
        };
        let (approval, decisions) = Approvals::decide(self, &caller, &id, approve, &r.justification).await?;
        pim_runtime::telemetry::record_request(&approval.request_id, &approval.role_id);
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
        let guard = pim_runtime::streams::Guard::of(&request);
        let latest = crate::store::latest_rev(&self.db).await.map_err(internal)?;
        let mut after = pim_runtime::grpc::resume_after(&request.get_ref().cursor, latest, "cursor")?;
        let mut changed = self.changed.subscribe();
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut asked = crate::approvals::Asked::default();
            let mut refreshed = tokio::time::Instant::now();
            loop {
                // Group membership and roles can change while a bot watches for hours.
                if refreshed.elapsed() > Duration::from_secs(60) {
                    asked = crate::approvals::Asked::default();
                    refreshed = tokio::time::Instant::now();
                }
                let high = match this.decidable_after(&caller, after, &mut asked).await {
                    Ok((rows, high)) => {
                        for row in rows {
                            if tx.send(Ok(approval_pb(row, Vec::new(), Vec::new()))).await.is_err() {
                                return;
                            }
                        }
                        high
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err.into())).await;
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
        // Which approvals the caller decides is weighed for each one sent; the token with it.
        let stream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(guard.wrap(stream, || async { Ok(()) })))
    }
}

fn review_scope_name(v: i32) -> Result<&'static str, Status> {
    Ok(match pb::ReviewScope::try_from(v) {
        Ok(pb::ReviewScope::Unspecified | pb::ReviewScope::Both) => "both",
        Ok(pb::ReviewScope::Eligible) => "eligible",
        Ok(pb::ReviewScope::Active) => "active",
        Err(_) => return Err(invalid_argument("review.review_scope", "eligible, active or both")),
    })
}

fn default_decision_name(v: i32) -> Result<&'static str, Status> {
    Ok(match pb::DefaultDecision::try_from(v) {
        Ok(pb::DefaultDecision::Unspecified | pb::DefaultDecision::NoChange) => "no_change",
        Ok(pb::DefaultDecision::Remove) => "remove",
        Ok(pb::DefaultDecision::Approve) => "approve",
        Ok(pb::DefaultDecision::Recommendation) => "recommendation",
        Err(_) => {
            return Err(invalid_argument(
                "review.default_decision",
                "no_change, remove, approve or recommendation",
            ));
        }
    })
}

fn review_pb(r: ReviewRow) -> pb::AccessReview {
    pb::AccessReview {
        id: r.id,
        name: r.name,
        role_id: r.role_id,
        scope: r.scope,
        review_scope: match r.review_scope.as_str() {
            "eligible" => pb::ReviewScope::Eligible,
            "active" => pb::ReviewScope::Active,
            _ => pb::ReviewScope::Both,
        } as i32,
        reviewer_ids: r.reviewer_ids,
        self_review: r.self_review,
        start_time: Some(to_timestamp(r.start_at)),
        duration: Some(duration_pb(r.duration_ms)),
        recurrence: r.recurrence,
        default_decision: match r.default_decision.as_str() {
            "remove" => pb::DefaultDecision::Remove,
            "approve" => pb::DefaultDecision::Approve,
            "recommendation" => pb::DefaultDecision::Recommendation,
            _ => pb::DefaultDecision::NoChange,
        } as i32,
        auto_apply: r.auto_apply,
        status: r.status.as_str().into(),
        instance: r.instance,
        instance_start: r.instance_start.map(to_timestamp),
        instance_end: r.instance_end.map(to_timestamp),
        mail_notifications_disabled: r.mail_off,
        reminders_disabled: r.reminders_off,
    }
}

fn item_pb(i: ItemRow) -> pb::ReviewItem {
    pb::ReviewItem {
        id: i.id,
        review_id: i.review_id,
        assignment_id: i.assignment_id,
        principal_id: i.principal_id,
        role_id: i.role_id,
        scope: i.scope,
        recommendation: i.recommendation,
        decision: i.decision.map_or(pb::Decision::Unspecified, Decision::to_pb) as i32,
        justification: i.justification,
        reviewer_id: i.reviewer_id,
        kind: i.kind,
        instance: i.instance,
        outcome: i.outcome,
    }
}

/// Review items a page holds, when not asked for fewer: a message's 4 MB is far off.
const ITEMS_PAGE: u64 = 1000;

/// A page of items from `fetched` (one more than `limit` asked for), with the next page's
/// token: the last item's principal and id.
fn items_page(fetched: Vec<ItemRow>, limit: u64) -> pb::ListMyReviewItemsResponse {
    let (items, next_page_token) =
        pim_runtime::grpc::next_page(fetched, limit, |i| format!("{} {}", i.principal_id, i.id));
    pb::ListMyReviewItemsResponse {
        items: items.into_iter().map(item_pb).collect(),
        next_page_token,
    }
}

/// The item a page token names (its principal's id and its own); none for the first page.
fn item_after(token: &str) -> Result<Option<(&str, &str)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let given = || invalid_argument("page_token", "not a page token this service gave");
    let (principal, item) = token.split_once(' ').ok_or_else(given)?;
    let id = |raw| pim_runtime::grpc::id_field("page_token", raw, "").map_err(|_| given());
    Ok(Some((id(principal)?, id(item)?)))
}

fn review_id(raw: &str) -> Result<&str, Status> {
    pim_runtime::grpc::id_field("review_id", raw, "a review id")
}

#[tonic::async_trait]
impl AccessReviewService for Approvals {
    async fn create_review(
        &self,
        request: Request<pb::CreateReviewRequest>,
    ) -> Result<Response<pb::AccessReview>, Status> {
        let caller = caller(&request)?.clone();
        let r = request
            .into_inner()
            .review
            .ok_or_else(|| invalid_argument("review", "required"))?;
        let duration = match &r.duration {
            Some(d) => {
                Some(pim_runtime::db::checked_duration(d).map_err(|why| invalid_argument("review.duration", why))?)
            }
            None => None,
        };
        let new = NewReview {
            name: r.name,
            role_id: r.role_id,
            scope: r.scope,
            review_scope: review_scope_name(r.review_scope)?.into(),
            reviewer_ids: r.reviewer_ids,
            self_review: r.self_review,
            start_at: r
                .start_time
                .as_ref()
                .map(|t| pim_runtime::grpc::time_field("review.start_time", t))
                .transpose()?,
            duration,
            recurrence: r.recurrence.to_lowercase(),
            default_decision: default_decision_name(r.default_decision)?.into(),
            auto_apply: r.auto_apply,
            mail_off: r.mail_notifications_disabled,
            reminders_off: r.reminders_disabled,
        };
        Ok(Response::new(review_pb(self.create_review(&caller, new).await?)))
    }

    async fn get_review(&self, request: Request<pb::GetReviewRequest>) -> Result<Response<pb::AccessReview>, Status> {
        let caller = caller(&request)?.clone();
        let id = review_id(&request.get_ref().review_id)?;
        Ok(Response::new(review_pb(self.review_for(&caller, id).await?)))
    }

    async fn list_reviews(
        &self,
        request: Request<pb::ListReviewsRequest>,
    ) -> Result<Response<pb::ListReviewsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let page_size = pim_runtime::grpc::page_size(r.page_size, DEFAULT_PAGE as u64, MAX_PAGE as u64)? as usize;
        if r.page_token.len() > 64 {
            return Err(invalid_argument("page_token", "not a token this service issued"));
        }
        let rows = Approvals::list_reviews(self, &caller, r.page_token.trim(), page_size).await?;
        let next = if rows.len() == page_size {
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListReviewsResponse {
            reviews: rows.into_iter().map(review_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn list_privileged_decisions_of(
        &self,
        request: Request<pb::ListPrivilegedDecisionsOfRequest>,
    ) -> Result<Response<pb::ListPrivilegedDecisionsOfResponse>, Status> {
        let caller = caller(&request)?.clone();
        let principal = request.get_ref().principal_id.trim();
        if uuid::Uuid::parse_str(principal).is_err() {
            return Err(invalid_argument("principal_id", "a user's id (UUID)"));
        }
        let decisions = self.privileged_decisions_of(&caller, principal).await?;
        Ok(Response::new(pb::ListPrivilegedDecisionsOfResponse { decisions }))
    }

    async fn list_my_review_items(
        &self,
        request: Request<pb::ListMyReviewItemsRequest>,
    ) -> Result<Response<pb::ListMyReviewItemsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let id = r.review_id.trim();
        let review = if id.is_empty() { None } else { Some(review_id(id)?) };
        let limit = pim_runtime::grpc::page_size(r.page_size, ITEMS_PAGE, ITEMS_PAGE)?;
        let items = self.my_items(&caller, review, item_after(&r.page_token)?).await?;
        Ok(Response::new(items_page(items, limit)))
    }

    async fn list_review_items(
        &self,
        request: Request<pb::ListReviewItemsRequest>,
    ) -> Result<Response<pb::ListMyReviewItemsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let id = review_id(r.review_id.trim())?;
        if r.instance < 0 {
            return Err(pim_runtime::grpc::invalid_argument(
                "instance",
                "must be 0 (the latest) or more",
            ));
        }
        let limit = pim_runtime::grpc::page_size(r.page_size, ITEMS_PAGE, ITEMS_PAGE)?;
        let page = ItemsPage {
            after: item_after(&r.page_token)?,
            limit: Some(limit + 1),
        };
        let items = self.all_items(&caller, id, r.instance, page).await?;
        Ok(Response::new(items_page(items, limit)))
    }

    async fn record_decision(
        &self,
        request: Request<pb::RecordDecisionRequest>,
    ) -> Result<Response<pb::ReviewItem>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let item = pim_runtime::grpc::id_field("item_id", &r.item_id, "a review item id")?;
        let approve = match pb::Decision::try_from(r.decision) {
            Ok(pb::Decision::Approve) => true,
            Ok(pb::Decision::Deny) => false,
            _ => return Err(invalid_argument("decision", "approve or deny")),
        };
        let item = self
            .record_review_decision(&caller, item, approve, &r.justification)
            .await?;
        Ok(Response::new(item_pb(item)))
    }

    async fn stop_review(&self, request: Request<pb::GetReviewRequest>) -> Result<Response<pb::AccessReview>, Status> {
        let caller = caller(&request)?.clone();
        let id = review_id(&request.get_ref().review_id)?;
        Ok(Response::new(review_pb(
            Approvals::stop_review(self, &caller, id).await?,
        )))
    }
}
