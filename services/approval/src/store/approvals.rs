//! Approvals with their stages and decisions (separation of duties is a table constraint).

use super::*;
use crate::domain::{ApprovalStatus, Decision};
use pim_proto::assignment::v1::{AssignmentKind, RequestAction};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stage {
    pub approver_ids: Vec<String>,
    pub approvals_required: u32,
    pub timeout_ms: i64,
    pub escalation_approver_ids: Vec<String>,
    /// 0: no escalation.
    pub escalate_after_ms: i64,
    pub justification_required: bool,
    /// An approving decision needs the approver's MFA within this many ms (0: no such rule):
    /// the request would extend or renew an active assignment of a role whose policy
    /// requires MFA on active assignment, and the approver gives it.
    #[serde(default)]
    pub approver_mfa_within_ms: i64,
}

#[derive(Clone, Debug)]
pub struct ApprovalRow {
    pub id: String,
    pub request_id: String,
    pub requester_id: String,
    pub role_id: String,
    pub role_name: String,
    pub scope: String,
    pub duration_ms: i64,
    /// What the request asks for: an activation (`selfActivate`), or to keep an eligible or
    /// active assignment (`selfExtend`, `selfRenew`) until `end_at`.
    pub action: RequestAction,
    pub kind: AssignmentKind,
    pub end_at: Option<i64>,
    /// A later start the request asks for (a scheduled activation); none: from approval.
    pub start_at: Option<i64>,
    pub justification: String,
    pub ticket_system: String,
    pub ticket_number: String,
    pub status: ApprovalStatus,
    pub stages: Vec<Stage>,
    pub stage: usize,
    pub stage_started_at: i64,
    /// Who opened the current stage: the approver whose decision moved the approval to it
    /// (empty for the first stage). Their decision sent again is a retry, not a second one.
    pub stage_opened_by: String,
    pub expires_at: i64,
    pub escalated: bool,
    /// Whether the current stage's approvers were reminded.
    pub reminded: bool,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub rev: i64,
    /// The trace of the request that asked for approval; the outcome joins it.
    pub traceparent: String,
}

impl ApprovalRow {
    /// Separation of duties, the one rule every path asks: the requester never decides their
    /// own request (the decisions table's CHECK constraint holds it in the database too).
    pub fn is_own(&self, principal_id: &str) -> bool {
        self.requester_id == principal_id
    }

    pub fn current_stage(&self) -> &Stage {
        &self.stages[self.stage.min(self.stages.len() - 1)]
    }

    /// When the current stage's escalation approvers join, if it has any.
    pub fn escalates_at(&self) -> Option<i64> {
        let stage = self.current_stage();
        (stage.escalate_after_ms > 0 && !stage.escalation_approver_ids.is_empty())
            .then(|| self.stage_started_at + stage.escalate_after_ms)
    }

    /// When the current stage's approvers are reminded: half its time, for a stage of an hour
    /// or more (sooner, a reminder is noise).
    pub fn reminds_at(&self) -> Option<i64> {
        let timeout = self.current_stage().timeout_ms;
        (timeout >= REMINDER_MIN_STAGE_MS).then(|| self.stage_started_at + timeout / 2)
    }

    /// The next moment the timers have something to do for it: its expiry, or an escalation
    /// or reminder not yet done. Kept as a column, so the timers find what is due by index.
    pub fn timer_at(&self) -> i64 {
        let escalation = self.escalates_at().filter(|_| !self.escalated);
        let reminder = self.reminds_at().filter(|_| !self.reminded);
        [escalation, reminder]
            .into_iter()
            .flatten()
            .fold(self.expires_at, i64::min)
    }

    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        let stages: Vec<Stage> = serde_json::from_str(&col::<String>(r, "stages")?)
            .map_err(|e| DbErr::Custom(format!("approval stages: {e}")))?;
        if stages.is_empty() {
            return Err(DbErr::Custom("an approval without stages".into()));
        }
        Ok(Self {
            id: col(r, "id")?,
            request_id: col(r, "request_id")?,
            requester_id: col(r, "requester_id")?,
            role_id: col(r, "role_id")?,
            role_name: col(r, "role_name")?,
            scope: col(r, "scope")?,
            duration_ms: col(r, "duration_ms")?,
            action: RequestAction::from_text(&col::<String>(r, "action")?),
            kind: AssignmentKind::from_text(&col::<String>(r, "kind")?),
            end_at: col(r, "end_at")?,
            start_at: col(r, "start_at")?,
            justification: col(r, "justification")?,
            ticket_system: col(r, "ticket_system")?,
            ticket_number: col(r, "ticket_number")?,
            status: col_named(r, "status", ApprovalStatus::parse)?,
            stages,
            stage: col::<i32>(r, "stage")? as usize,
            stage_started_at: col(r, "stage_started_at")?,
            stage_opened_by: col(r, "stage_opened_by")?,
            expires_at: col(r, "expires_at")?,
            escalated: col(r, "escalated")?,
            reminded: col(r, "reminded")?,
            created_at: col(r, "created_at")?,
            completed_at: col(r, "completed_at")?,
            rev: col(r, "rev")?,
            traceparent: col(r, "traceparent")?,
        })
    }
}

pub(super) const COLUMNS: &str = "id, request_id, requester_id, role_id, role_name, scope, duration_ms, justification, ticket_system, ticket_number, status, stages, stage, stage_started_at, expires_at, escalated, created_at, completed_at, rev, traceparent, reminded, timer_at, action, kind, end_at, stage_opened_by, start_at";

/// The shortest stage whose approvers are reminded.
pub const REMINDER_MIN_STAGE_MS: i64 = 3_600_000;

/// The next revision. The counter row stays locked until the transaction commits, so
/// revisions become visible in order and a watcher resuming after one misses nothing.
pub async fn next_rev<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let row = db::query_one(
        c,
        "UPDATE approval_revision SET rev = rev + 1 WHERE id = 1 RETURNING rev",
        vec![],
    )
    .await?
    .ok_or_else(|| DbErr::Custom("approval revision counter missing".into()))?;
    col(&row, "rev")
}

/// The latest revision given out (committed).
pub async fn latest_rev<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let row = db::query_one(c, "SELECT rev FROM approval_revision WHERE id = 1", vec![])
        .await?
        .ok_or_else(|| DbErr::Custom("approval revision counter missing".into()))?;
    col(&row, "rev")
}

/// Inserts an approval unless one exists for its request; returns whether it did.
pub async fn insert<C: ConnectionTrait>(c: &C, a: &ApprovalRow) -> Result<bool, DbErr> {
    let stages = serde_json::to_string(&a.stages).map_err(|e| DbErr::Custom(e.to_string()))?;
    let n = db::exec(
        c,
        &format!(
            "INSERT INTO approvals ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27) \
             ON CONFLICT (request_id) DO NOTHING"
        ),
        vec![
            a.id.clone().into(),
            a.request_id.clone().into(),
            a.requester_id.clone().into(),
            a.role_id.clone().into(),
            a.role_name.clone().into(),
            a.scope.clone().into(),
            a.duration_ms.into(),
            a.justification.clone().into(),
            a.ticket_system.clone().into(),
            a.ticket_number.clone().into(),
            a.status.as_str().into(),
            stages.into(),
            (a.stage as i32).into(),
            a.stage_started_at.into(),
            a.expires_at.into(),
            a.escalated.into(),
            a.created_at.into(),
            a.completed_at.into(),
            a.rev.into(),
            a.traceparent.clone().into(),
            a.reminded.into(),
            a.timer_at().into(),
            a.action.text().into(),
            a.kind.text().into(),
            a.end_at.into(),
            a.stage_opened_by.clone().into(),
            a.start_at.into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

pub async fn get<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<ApprovalRow>, DbErr> {
    db::row(
        c,
        &format!("SELECT {COLUMNS} FROM approvals WHERE id = $1"),
        vec![id.into()],
        ApprovalRow::from_row,
    )
    .await
}

/// Reads an approval and holds its row until the transaction ends (PostgreSQL).
pub async fn lock<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<ApprovalRow>, DbErr> {
    let sql = format!("SELECT {COLUMNS} FROM approvals WHERE id = $1{}", c.for_update());
    db::row(c, &sql, vec![id.into()], ApprovalRow::from_row).await
}

pub async fn by_request<C: ConnectionTrait>(c: &C, request_id: &str) -> Result<Option<ApprovalRow>, DbErr> {
    let sql = format!(
        "SELECT {COLUMNS} FROM approvals WHERE request_id = $1{}",
        c.for_update()
    );
    db::row(c, &sql, vec![request_id.into()], ApprovalRow::from_row).await
}

/// Writes the moving parts of an approval (status, stage, deadlines, timers) with a new revision.
pub async fn update<C: ConnectionTrait>(c: &C, a: &ApprovalRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE approvals SET status = $2, stage = $3, stage_started_at = $4, expires_at = $5, escalated = $6, completed_at = $7, rev = $8, reminded = $9, timer_at = $10, stage_opened_by = $11 WHERE id = $1",
        vec![
            a.id.clone().into(),
            a.status.as_str().into(),
            (a.stage as i32).into(),
            a.stage_started_at.into(),
            a.expires_at.into(),
            a.escalated.into(),
            a.completed_at.into(),
            a.rev.into(),
            a.reminded.into(),
            a.timer_at().into(),
            a.stage_opened_by.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Pending approvals with a revision after `after`, oldest first.
pub async fn pending_after<C: ConnectionTrait>(c: &C, after: i64, limit: u64) -> Result<Vec<ApprovalRow>, DbErr> {
    db::rows(
        c,
        &format!("SELECT {COLUMNS} FROM approvals WHERE status = 'Pending' AND rev > $1 ORDER BY rev LIMIT {limit}"),
        vec![after.into()],
        ApprovalRow::from_row,
    )
    .await
}

/// Pending approvals with something due by `now`: an expiry, an escalation or a reminder
/// (locked on PostgreSQL, skipping rows another replica holds).
pub async fn due<C: ConnectionTrait>(c: &C, now: i64, limit: u64) -> Result<Vec<ApprovalRow>, DbErr> {
    let sql = format!(
        "SELECT {COLUMNS} FROM approvals WHERE status = 'Pending' AND timer_at <= $1 ORDER BY timer_at LIMIT {limit}{}",
        c.skip_locked()
    );
    db::rows(c, &sql, vec![now.into()], ApprovalRow::from_row).await
}

/// The next moment a timer is due: an expiry, or an escalation or reminder not yet done.
pub async fn next_deadline<C: ConnectionTrait>(c: &C) -> Result<Option<i64>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT MIN(timer_at) AS at FROM approvals WHERE status = 'Pending'",
        vec![],
    )
    .await?;
    match row {
        Some(r) => col(&r, "at"),
        None => Ok(None),
    }
}

pub struct ListFilter<'a> {
    pub status: Option<ApprovalStatus>,
    /// Only approvals this principal requested, decided, or that are pending (the caller
    /// filters those down to the ones it may decide).
    pub involving: Option<&'a str>,
    /// Revisions below this (paging newest first).
    pub before_rev: Option<i64>,
    pub limit: u64,
}

pub async fn list<C: ConnectionTrait>(c: &C, f: &ListFilter<'_>) -> Result<Vec<ApprovalRow>, DbErr> {
    let mut clauses = Vec::new();
    let mut values: Vec<sea_orm::Value> = Vec::new();
    if let Some(status) = f.status {
        values.push(status.as_str().into());
        clauses.push(format!("status = ${}", values.len()));
    }
    if let Some(who) = f.involving {
        values.push(who.into());
        let n = values.len();
        clauses.push(format!(
            "(status = 'Pending' OR requester_id = ${n} OR id IN (SELECT approval_id FROM approval_decisions WHERE approver_id = ${n}))"
        ));
    }
    if let Some(before) = f.before_rev {
        values.push(before.into());
        clauses.push(format!("rev < ${}", values.len()));
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    db::rows(
        c,
        &format!(
            "SELECT {COLUMNS} FROM approvals{filter} ORDER BY rev DESC LIMIT {}",
            f.limit
        ),
        values,
        ApprovalRow::from_row,
    )
    .await
}

#[derive(Clone, Debug)]
pub struct DecisionRow {
    pub approval_id: String,
    pub approver_id: String,
    pub requester_id: String,
    pub stage: usize,
    pub decision: Decision,
    pub justification: String,
    pub decided_at: i64,
}

/// Records a decision; `false` when this approver already decided this approval (the
/// primary key), so one approver counts once.
pub async fn insert_decision<C: ConnectionTrait>(c: &C, d: &DecisionRow) -> Result<bool, DbErr> {
    let n = db::exec(
        c,
        "INSERT INTO approval_decisions (approval_id, approver_id, requester_id, stage, decision, justification, decided_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (approval_id, approver_id) DO NOTHING",
        vec![
            d.approval_id.clone().into(),
            d.approver_id.clone().into(),
            d.requester_id.clone().into(),
            (d.stage as i32).into(),
            d.decision.as_str().into(),
            d.justification.clone().into(),
            d.decided_at.into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

pub async fn decisions<C: ConnectionTrait>(c: &C, approval_id: &str) -> Result<Vec<DecisionRow>, DbErr> {
    db::query(
        c,
        "SELECT approval_id, approver_id, requester_id, stage, decision, justification, decided_at \
         FROM approval_decisions WHERE approval_id = $1 ORDER BY decided_at, approver_id",
        vec![approval_id.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(DecisionRow {
            approval_id: col(r, "approval_id")?,
            approver_id: col(r, "approver_id")?,
            requester_id: col(r, "requester_id")?,
            stage: col::<i32>(r, "stage")? as usize,
            decision: col_named(r, "decision", Decision::parse)?,
            justification: col(r, "justification")?,
            decided_at: col(r, "decided_at")?,
        })
    })
    .collect()
}
