//! Four-eyes approval of requests assignment holds as PendingApproval: created from its
//! events, decided stage by stage by the approvers the policy names (or the default approvers),
//! expired by a durable timer, and handed back to assignment as ApprovalGranted / Denied /
//! Expired events.

mod deciders;

pub use deciders::Asked;

use std::sync::Arc;

use sea_orm::{DatabaseTransaction, TransactionTrait};

use pim_proto::assignment::v1::RequestStatus;
use pim_proto::common::v1::{Actor, ApprovalStageSettings};
use pim_proto::events::v1 as ev;
use pim_runtime::access::AccessCheck;
use pim_runtime::auth::Caller;
use pim_runtime::clock::Clock;
use pim_runtime::db::{Db, from_timestamp};
use pim_runtime::events::{EventType, Outbox, Source, envelope, streams};

use crate::domain::{ApprovalStatus, Decision};
use crate::store::{self, ApprovalRow, DecisionRow, Stage};
use pim_runtime::error::{Error, Result};
use pim_runtime::text::{MAX_FREE_TEXT, free_text};

/// Entra's built-in role ids (the default approvers hold one of them).
pub use pim_proto::catalogue::{GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR};

const DEFAULT_TIMEOUT_MS: i64 = 24 * 3_600_000;

#[derive(Clone)]
pub struct Approvals {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) access: Arc<dyn AccessCheck>,
    pub(crate) services: crate::clients::Services,

    pub(crate) clock: Arc<dyn Clock>,
    /// Whether reviewers are told by mail (`PIM_NOTIFICATIONS`).
    pub(crate) notify: bool,
    /// Bumped after every committed change, so watchers look again at once.
    pub(crate) changed: Arc<tokio::sync::watch::Sender<u64>>,
}

/// The caller's earlier decision on an approval, if any: the same decision again (a retry
/// after a lost answer, or sent twice at once) is answered with the approval as it stands;
/// another is refused.
fn decided_before<'a>(
    caller: &Caller,
    decision: Decision,
    decisions: &'a [DecisionRow],
) -> Option<Result<&'a DecisionRow>> {
    let previous = decisions.iter().find(|d| d.approver_id == caller.principal_id)?;
    Some(if previous.decision == decision {
        Ok(previous)
    } else {
        Err(Error::FailedPrecondition(format!(
            "you already decided this approval ({})",
            previous.decision
        )))
    })
}

/// The system as the actor of what a timer does.
fn system_actor() -> Actor {
    pim_runtime::auth::system_actor("PIM approval")
}

fn stage_from_settings(s: &ApprovalStageSettings) -> Stage {
    let ms = |d: &Option<prost_types::Duration>| {
        d.as_ref()
            .map(|d| d.seconds.saturating_mul(1000) + i64::from(d.nanos) / 1_000_000)
            .filter(|ms| *ms > 0)
    };
    Stage {
        approver_ids: s.approver_ids.clone(),
        approvals_required: s.approvals_required.max(1) as u32,
        timeout_ms: ms(&s.timeout).unwrap_or(DEFAULT_TIMEOUT_MS),
        escalation_approver_ids: s.escalation_approver_ids.clone(),
        escalate_after_ms: ms(&s.escalate_after).unwrap_or(0),
        justification_required: s.justification_required,
        approver_mfa_within_ms: 0,
    }
}

impl Approvals {
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn emit(
        &self,
        txn: &DatabaseTransaction,
        event_type: EventType,
        subject: &str,
        data: &impl prost::Message,
    ) -> Result<()> {
        self.outbox
            .enqueue(
                txn,
                streams::APPROVAL,
                &envelope(Source::Approval, event_type, subject, data),
            )
            .await?;
        Ok(())
    }

    fn committed(&self) {
        self.outbox.wake();
        self.changed.send_modify(|n| *n += 1);
    }

    /// Opens an approval for a request assignment holds as PendingApproval (from its
    /// RequestCreated event). Idempotent: one approval per request.
    pub async fn open(
        &self,
        txn: &DatabaseTransaction,
        e: &ev::RequestCreated,
        traceparent: &str,
    ) -> anyhow::Result<()> {
        if e.typed_status() != RequestStatus::PendingApproval {
            return Ok(());
        }
        let mut stages: Vec<Stage> = e.approval_stages.iter().map(stage_from_settings).collect();
        if stages.is_empty() {
            stages.push(stage_from_settings(&ApprovalStageSettings::default()));
        }
        if let Some(within) = &e.approver_mfa_freshness {
            for stage in &mut stages {
                stage.approver_mfa_within_ms = within.seconds.saturating_mul(1000).max(1);
            }
        }
        let now = self.now();
        let duration_ms = match (&e.duration, &e.start_time, &e.end_time) {
            (Some(d), _, _) => d.seconds.saturating_mul(1000),
            (None, Some(s), Some(end)) => from_timestamp(end) - from_timestamp(s),
            _ => 0,
        };
        let ticket = e.ticket.clone().unwrap_or_default();
        let approval = ApprovalRow {
            id: uuid::Uuid::now_v7().to_string(),
            request_id: e.request_id.clone(),
            requester_id: e.principal_id.clone(),
            role_id: e.role_id.clone(),
            role_name: e.role_name.clone(),
            scope: e.scope.clone(),
            duration_ms,
            action: e.typed_action(),
            kind: e.typed_kind(),
            end_at: e.end_time.as_ref().map(from_timestamp),
            // A start later than now is a scheduled one (an immediate request starts when made).
            start_at: e.start_time.as_ref().map(from_timestamp).filter(|start| *start > now),
            justification: e.justification.clone(),
            ticket_system: ticket.system,
            ticket_number: ticket.number,
            status: ApprovalStatus::Pending,
            stage: 0,
            stage_started_at: now,
            stage_opened_by: String::new(),
            expires_at: now + stages[0].timeout_ms,
            stages,
            escalated: false,
            reminded: false,
            created_at: now,
            completed_at: None,
            rev: store::next_rev(txn).await?,
            traceparent: traceparent.into(),
        };
        if !store::insert(txn, &approval).await? {
            return Ok(());
        }
        let created = ev::ApprovalCreated {
            approval_id: approval.id.clone(),
            request_id: approval.request_id.clone(),
            requester_id: approval.requester_id.clone(),
            role_id: approval.role_id.clone(),
            scope: approval.scope.clone(),
        };
        self.emit(txn, EventType::ApprovalCreated, &approval.id, &created)
            .await?;
        Ok(())
    }

    /// The request was canceled (assignment's RequestStatusChanged → Canceled): withdrawn by
    /// its requester, or by assignment when what it rested on ended (its eligibility, the
    /// group it was for); the reason says which, by who canceled it. An approval given while
    /// the cancel was on its way ends canceled too: a canceled request was never granted
    /// (assignment cancels only what still waits), so the approval never took effect.
    pub async fn cancel_for_request(
        &self,
        txn: &DatabaseTransaction,
        request_id: &str,
        actor: Option<Actor>,
    ) -> anyhow::Result<()> {
        let Some(mut approval) = store::by_request(txn, request_id).await? else {
            return Ok(());
        };
        let by_requester = actor.as_ref().is_some_and(|a| a.principal_id == approval.requester_id);
        let reason = match approval.status {
            ApprovalStatus::Pending if by_requester => "the requester withdrew the request",
            ApprovalStatus::Pending => "canceled: what the request rested on (its eligibility, or the group) ended",
            ApprovalStatus::Approved if by_requester => {
                "the requester withdrew the request before the approval reached it: it never took effect"
            }
            ApprovalStatus::Approved => {
                "canceled before the approval reached it (its eligibility, or the group, ended): it never took effect"
            }
            _ => return Ok(()),
        };
        self.complete(txn, &mut approval, ApprovalStatus::Canceled, actor, reason)
            .await?;
        Ok(())
    }

    /// Ends an approval with `outcome` and tells assignment.
    async fn complete(
        &self,
        txn: &DatabaseTransaction,
        approval: &mut ApprovalRow,
        outcome: ApprovalStatus,
        actor: Option<Actor>,
        reason: &str,
    ) -> Result<()> {
        let Some(event_type) = outcome.completion_event() else {
            return Err(Error::Internal(anyhow::anyhow!(
                "approval {} cannot end as {outcome}",
                approval.id
            )));
        };
        approval.status = outcome;
        approval.completed_at = Some(self.now());
        approval.rev = store::next_rev(txn).await?;
        store::update(txn, approval).await?;
        // The outcome continues the trace of the request that asked for approval.
        let span =
            tracing::info_span!("approval outcome", pim.approval_id = %approval.id, pim.outcome = outcome.as_str());
        if !approval.traceparent.is_empty() {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let _ = span.set_parent(pim_runtime::telemetry::context_from_traceparent(&approval.traceparent));
        }
        let mut event = self.completed_event(approval, outcome.as_str(), actor);
        event.reason = reason.chars().take(1000).collect();
        tracing::Instrument::instrument(self.emit(txn, event_type, &approval.id, &event), span).await
    }

    fn completed_event(&self, a: &ApprovalRow, outcome: &str, actor: Option<Actor>) -> ev::ApprovalCompleted {
        ev::ApprovalCompleted {
            actor,
            approval_id: a.id.clone(),
            request_id: a.request_id.clone(),
            outcome: outcome.into(),
            approval_status: a.status.to_pb() as i32,
            requester_id: a.requester_id.clone(),
            role_id: a.role_id.clone(),
            scope: a.scope.clone(),
            reason: String::new(),
            escalation_approver_ids: Vec::new(),
            approver_ids: Vec::new(),
            expires_at: None,
        }
    }

    /// An event that asks the current stage's approvers (ApprovalStageStarted,
    /// ApprovalReminder): who they are, with those escalation brought in, and until when.
    fn asking_event(&self, a: &ApprovalRow, outcome: &str) -> ev::ApprovalCompleted {
        let stage = a.current_stage();
        ev::ApprovalCompleted {
            approver_ids: stage.approver_ids.clone(),
            escalation_approver_ids: if a.escalated {
                stage.escalation_approver_ids.clone()
            } else {
                Vec::new()
            },
            expires_at: Some(pim_runtime::db::to_timestamp(a.expires_at)),
            ..self.completed_event(a, outcome, Some(system_actor()))
        }
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<(ApprovalRow, Vec<DecisionRow>)> {
        let approval = store::get(&self.db, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("approval {id}")))?;
        let decisions = store::decisions(&self.db, id).await?;
        if !self.may_read(caller, &approval, &decisions).await? {
            return Err(Error::PermissionDenied(
                "only the requester, its approvers and approval managers see an approval".into(),
            ));
        }
        Ok((approval, decisions))
    }

    /// Records a decision. A deny ends the approval; enough approvals pass the stage, and
    /// the last stage passing grants it. Concurrent decisions serialize on the approval row,
    /// so approve and deny racing end in exactly one final state. A refused decision is
    /// recorded (an `ApprovalDecisionRefused` event, or `SelfApprovalAttempted`).
    pub async fn decide(
        &self,
        caller: &Caller,
        id: &str,
        approve: bool,
        justification: &str,
    ) -> Result<(ApprovalRow, Vec<DecisionRow>)> {
        let decided = self.try_decide(caller, id, approve, justification).await;
        if let Err(refusal) = &decided {
            self.refused(caller, id, approve, refusal).await;
        }
        decided
    }

    /// Records a refused decision: not an approver, already decided, expired, no such
    /// approval. Malformed input, races to look again at (ABORTED) and internal errors are not
    /// decisions; self-approval is recorded where it is caught. Best effort: the answer goes
    /// back to the caller whether or not this is stored.
    async fn refused(&self, caller: &Caller, id: &str, approve: bool, refusal: &Error) {
        if !refusal.is_refusal() {
            return;
        }
        let approval = match store::get(&self.db, id).await {
            Ok(approval) => approval,
            Err(e) => {
                tracing::warn!(error = %e, "recording a refused decision failed");
                return;
            }
        };
        if approval.as_ref().is_some_and(|a| a.is_own(&caller.principal_id)) {
            return;
        }
        let field = |f: fn(&ApprovalRow) -> &String| approval.as_ref().map(f).cloned().unwrap_or_default();
        let event = ev::ApprovalDecisionRefused {
            actor: Some(caller.actor()),
            approval_id: field(|a| &a.id),
            request_id: field(|a| &a.request_id),
            decision: Decision::of(approve).as_str().into(),
            approval_decision: Decision::of(approve).to_pb() as i32,
            requester_id: field(|a| &a.requester_id),
            role_id: field(|a| &a.role_id),
            scope: field(|a| &a.scope),
            code: format!("{:?}", refusal.code()),
            reason: refusal.message().chars().take(500).collect(),
        };
        // An unknown id is the subject as asked: the record says what was tried.
        let subject = approval.map(|a| a.id).unwrap_or_else(|| id.to_owned());
        let recorded = async {
            let txn = self.db.begin().await?;
            self.emit(&txn, EventType::ApprovalDecisionRefused, &subject, &event)
                .await?;
            txn.commit().await?;
            Ok::<_, Error>(())
        };
        match recorded.await {
            Ok(()) => self.outbox.wake(),
            Err(e) => tracing::warn!(code = ?e.code(), "recording a refused decision failed"),
        }
    }

    async fn try_decide(
        &self,
        caller: &Caller,
        id: &str,
        approve: bool,
        justification: &str,
    ) -> Result<(ApprovalRow, Vec<DecisionRow>)> {
        let justification =
            free_text(justification, MAX_FREE_TEXT).map_err(|why| Error::invalid("justification", why))?;
        let decision = Decision::of(approve);
        let approval = store::get(&self.db, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("approval {id}")))?;
        if approval.is_own(&caller.principal_id) {
            self.record_self_approval_attempt(caller, &approval, decision).await?;
            return Err(Error::PermissionDenied(
                "the requester cannot decide their own request".into(),
            ));
        }
        let decisions = store::decisions(&self.db, id).await?;
        if let Some(answer) = decided_before(caller, decision, &decisions) {
            let previous = answer?;
            // One person's decision counts once: an approver of this stage who decided an
            // earlier one is told so, not answered as if this one counted. A decision that
            // itself moved the approval to this stage (the stage started when it was made)
            // sent again is a retry after a lost answer: answered, as is one from someone
            // who approves only the earlier stage.
            let moved_it = previous.stage + 1 == approval.stage && approval.stage_opened_by == caller.principal_id;
            if previous.stage != approval.stage
                && !moved_it
                && self.may_decide(caller, &approval, &mut Asked::default()).await?
            {
                return Err(Error::FailedPrecondition(format!(
                    "you decided stage {} of this approval ({}); one person's decision counts once, so another approver decides stage {}",
                    previous.stage + 1,
                    previous.decision,
                    approval.stage + 1
                )));
            }
            // The approval as that decision left it, read after it.
            let now = store::get(&self.db, id).await?.unwrap_or(approval);
            return Ok((now, decisions));
        }
        if approval.status != ApprovalStatus::Pending {
            return Err(Error::FailedPrecondition(format!(
                "approval is already {}",
                approval.status.as_str().to_lowercase()
            )));
        }
        if !self.may_decide(caller, &approval, &mut Asked::default()).await? {
            return Err(Error::PermissionDenied(format!(
                "you are not an approver of stage {} of this approval",
                approval.stage + 1
            )));
        }
        if approval.current_stage().justification_required && justification.is_empty() {
            return Err(Error::invalid(
                "justification",
                "this role's policy requires a justification for decisions",
            ));
        }
        if decision == Decision::Deny && justification.is_empty() {
            return Err(Error::invalid(
                "justification",
                "a denial says why: the requester reads it",
            ));
        }
        let within = approval.current_stage().approver_mfa_within_ms;
        let fresh = pim_runtime::auth::mfa_is_fresh(
            pim_runtime::auth::has_mfa(&caller.amr),
            caller.mfa_at.map(|s| s.saturating_mul(1000)),
            self.now(),
            within,
        );
        if decision == Decision::Approve && within > 0 && !fresh {
            return Err(Error::RuleViolated {
                subject: "approval",
                violations: vec![pim_runtime::grpc::RuleViolation {
                    kind: "MfaRule",
                    message: format!(
                        "approving this request gives an active assignment of a role that requires MFA on active assignment: \
                         verify a code within the last {} s and retry",
                        within / 1000
                    ),
                }],
            });
        }

        let now = self.now();
        let txn = self.db.begin().await?;
        let mut current = store::lock(&txn, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("approval {id}")))?;
        // The same decision may have been sent at once and committed meanwhile.
        let decided = store::decisions(&txn, id).await?;
        if let Some(answer) = decided_before(caller, decision, &decided) {
            answer?;
            return Ok((current, decided));
        }
        if current.status != ApprovalStatus::Pending {
            return Err(Error::FailedPrecondition(format!(
                "approval is already {}",
                current.status.as_str().to_lowercase()
            )));
        }
        if current.expires_at <= now {
            return Err(Error::FailedPrecondition("approval has expired".into()));
        }
        if current.stage != approval.stage {
            return Err(Error::Aborted("the approval moved to another stage; look again".into()));
        }
        let row = DecisionRow {
            approval_id: current.id.clone(),
            approver_id: caller.principal_id.clone(),
            requester_id: current.requester_id.clone(),
            stage: current.stage,
            decision,
            justification: justification.into(),
            decided_at: now,
        };
        if !store::insert_decision(&txn, &row).await? {
            return Err(Error::Aborted(
                "you decided this approval concurrently; look again".into(),
            ));
        }
        let recorded = ev::ApprovalDecisionRecorded {
            actor: Some(caller.actor()),
            approval_id: current.id.clone(),
            request_id: current.request_id.clone(),
            decision: decision.as_str().into(),
            approval_decision: decision.to_pb() as i32,
            justification: justification.into(),
            requester_id: current.requester_id.clone(),
            role_id: current.role_id.clone(),
            scope: current.scope.clone(),
            stage: current.stage as i32,
        };
        self.emit(&txn, EventType::ApprovalDecisionRecorded, &current.id, &recorded)
            .await?;
        if !approve {
            self.complete(
                &txn,
                &mut current,
                ApprovalStatus::Denied,
                Some(caller.actor()),
                justification,
            )
            .await?;
        } else {
            let approvals = store::decisions(&txn, id)
                .await?
                .iter()
                .filter(|d| d.stage == current.stage && d.decision == Decision::Approve)
                .count();
            if approvals as u32 >= current.current_stage().approvals_required {
                if current.stage + 1 < current.stages.len() {
                    current.stage += 1;
                    current.stage_started_at = now;
                    current.stage_opened_by = caller.principal_id.clone();
                    current.expires_at = now + current.current_stage().timeout_ms;
                    current.escalated = false;
                    current.reminded = false;
                    current.rev = store::next_rev(&txn).await?;
                    store::update(&txn, &current).await?;
                    let started = self.asking_event(&current, "StageStarted");
                    self.emit(&txn, EventType::ApprovalStageStarted, &current.id, &started)
                        .await?;
                } else {
                    self.complete(
                        &txn,
                        &mut current,
                        ApprovalStatus::Approved,
                        Some(caller.actor()),
                        justification,
                    )
                    .await?;
                }
            }
        }
        txn.commit().await?;
        self.committed();
        let decisions = store::decisions(&self.db, id).await?;
        Ok((current, decisions))
    }

    /// A requester tried to decide their own request: refused, and told (alerting watches
    /// for it) in a transaction of its own, since the call itself fails.
    async fn record_self_approval_attempt(
        &self,
        caller: &Caller,
        approval: &ApprovalRow,
        decision: Decision,
    ) -> Result<()> {
        let txn = self.db.begin().await?;
        let attempt = ev::ApprovalDecisionRecorded {
            actor: Some(caller.actor()),
            approval_id: approval.id.clone(),
            request_id: approval.request_id.clone(),
            decision: decision.as_str().into(),
            approval_decision: decision.to_pb() as i32,
            justification: String::new(),
            requester_id: approval.requester_id.clone(),
            role_id: approval.role_id.clone(),
            scope: approval.scope.clone(),
            stage: approval.stage as i32,
        };
        self.emit(&txn, EventType::SelfApprovalAttempted, &approval.id, &attempt)
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// When the next timer is due (ms: a stage's timeout, escalation or reminder, a review's
    /// start, reminder or end), if any is planned.
    pub async fn next_deadline(&self) -> Result<Option<i64>> {
        let stages = store::next_deadline(&self.db).await?;
        let reviews = store::next_review_deadline(&self.db).await?;
        Ok(stages.into_iter().chain(reviews).min())
    }

    /// One timer pass: expires stages past their timeout, escalates those due and reminds
    /// the approvers of those half through a stage. Rows are locked with SKIP LOCKED, so
    /// replicas share the work without doubling an event.
    pub async fn run_timers_once(&self) -> Result<usize> {
        let now = self.now();
        let txn = self.db.begin().await?;
        let due = store::due(&txn, now, 500).await?;
        let mut fired = 0;
        for mut approval in due {
            if approval.expires_at <= now {
                self.complete(
                    &txn,
                    &mut approval,
                    ApprovalStatus::Expired,
                    Some(system_actor()),
                    "no approver decided in time",
                )
                .await?;
                fired += 1;
                continue;
            }
            let escalate = !approval.escalated && approval.escalates_at().is_some_and(|at| at <= now);
            let remind = !approval.reminded && approval.reminds_at().is_some_and(|at| at <= now);
            approval.escalated |= escalate;
            approval.reminded |= remind;
            approval.rev = store::next_rev(&txn).await?;
            store::update(&txn, &approval).await?;
            if escalate {
                let mut event = self.completed_event(&approval, "Escalated", Some(system_actor()));
                event.escalation_approver_ids = approval.current_stage().escalation_approver_ids.clone();
                self.emit(&txn, EventType::ApprovalEscalated, &approval.id, &event)
                    .await?;
            }
            if remind {
                let event = self.asking_event(&approval, "Reminder");
                self.emit(&txn, EventType::ApprovalReminder, &approval.id, &event)
                    .await?;
            }
            fired += usize::from(escalate || remind);
        }
        txn.commit().await?;
        if fired > 0 {
            self.committed();
        }
        Ok(fired)
    }

    /// Runs the approval and access-review timers until `stop`, sleeping until the next deadline (at most half a second,
    /// so deadlines other replicas create are found soon).
    pub fn spawn_timers(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let max = std::time::Duration::from_millis(500);
            loop {
                if let Err(err) = this.run_timers_once().await {
                    tracing::warn!(error = %err.message(), "approval timer pass failed");
                }
                if let Err(err) = this.run_review_timers_once().await {
                    tracing::warn!(error = %err.message(), "access review timer pass failed");
                }
                let sleep = match this.next_deadline().await.ok().flatten() {
                    Some(at) => std::time::Duration::from_millis(u64::try_from(at - this.now()).unwrap_or(0)).min(max),
                    None => max,
                };
                tokio::select! {
                    _ = tokio::time::sleep(sleep.max(std::time::Duration::from_millis(10))) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    }
}
