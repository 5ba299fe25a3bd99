//! The approval database: approvals with their stages, decisions (separation of duties is a
//! table constraint, not only code), the requesters' activation history, and access reviews.

use sea_orm::{ConnectionTrait, DbErr, QueryResult};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use pim_runtime::db::{self, Dialect, col};
use pim_runtime::events::{SqlMigration, backbone_indexes_migration, backbone_migration, backbone_replay_migration};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            backbone_migration(),
            SqlMigration::boxed("m0001_approvals", |_| {
                "CREATE TABLE approvals (
                    id TEXT PRIMARY KEY,
                    request_id TEXT NOT NULL UNIQUE,
                    requester_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    role_name TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    duration_ms BIGINT NOT NULL,
                    justification TEXT NOT NULL,
                    ticket_system TEXT NOT NULL,
                    ticket_number TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('Pending', 'Approved', 'Denied', 'Expired', 'Canceled')),
                    stages TEXT NOT NULL,
                    stage INTEGER NOT NULL,
                    stage_started_at BIGINT NOT NULL,
                    expires_at BIGINT NOT NULL,
                    escalated BOOLEAN NOT NULL,
                    created_at BIGINT NOT NULL,
                    completed_at BIGINT,
                    rev BIGINT NOT NULL UNIQUE
                );
                CREATE INDEX approvals_pending ON approvals (status, expires_at);
                CREATE INDEX approvals_requester ON approvals (requester_id, rev);
                CREATE TABLE approval_decisions (
                    approval_id TEXT NOT NULL REFERENCES approvals (id),
                    approver_id TEXT NOT NULL,
                    requester_id TEXT NOT NULL,
                    stage INTEGER NOT NULL,
                    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
                    justification TEXT NOT NULL,
                    decided_at BIGINT NOT NULL,
                    PRIMARY KEY (approval_id, approver_id),
                    CHECK (approver_id <> requester_id)
                );
                CREATE INDEX approval_decisions_approver ON approval_decisions (approver_id);
                CREATE TABLE approval_revision (
                    id INTEGER PRIMARY KEY,
                    rev BIGINT NOT NULL
                );
                INSERT INTO approval_revision (id, rev) VALUES (1, 0);
                CREATE TABLE activations (
                    assignment_id TEXT PRIMARY KEY,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    role_name TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    start_at BIGINT NOT NULL,
                    end_at BIGINT
                );
                CREATE INDEX activations_principal ON activations (principal_id, start_at)"
                    .to_owned()
            }),
            SqlMigration::boxed("m0003_approval_trace", |_| {
                "ALTER TABLE approvals ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''".to_owned()
            }),
            SqlMigration::boxed("m0002_access_reviews", |_| {
                "CREATE TABLE assignments_seen (
                    assignment_id TEXT PRIMARY KEY,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    start_at BIGINT NOT NULL,
                    end_at BIGINT
                );
                CREATE INDEX assignments_seen_role ON assignments_seen (role_id);
                CREATE TABLE access_reviews (
                    id TEXT PRIMARY KEY,
                    name TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    review_scope TEXT NOT NULL CHECK (review_scope IN ('eligible', 'active', 'both')),
                    reviewer_ids TEXT NOT NULL,
                    self_review BOOLEAN NOT NULL,
                    start_at BIGINT NOT NULL,
                    duration_ms BIGINT NOT NULL,
                    recurrence TEXT NOT NULL,
                    default_decision TEXT NOT NULL,
                    auto_apply BOOLEAN NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('NotStarted', 'InProgress', 'Completed', 'Stopped')),
                    instance INTEGER NOT NULL,
                    instance_start BIGINT,
                    instance_end BIGINT,
                    created_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL
                );
                CREATE INDEX access_reviews_status ON access_reviews (status);
                CREATE TABLE review_items (
                    id TEXT PRIMARY KEY,
                    review_id TEXT NOT NULL REFERENCES access_reviews (id),
                    instance INTEGER NOT NULL,
                    assignment_id TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    recommendation TEXT NOT NULL,
                    decision TEXT NOT NULL CHECK (decision IN ('', 'approve', 'deny')),
                    justification TEXT NOT NULL,
                    reviewer_id TEXT NOT NULL,
                    decided_at BIGINT,
                    outcome TEXT NOT NULL,
                    UNIQUE (review_id, instance, assignment_id)
                );
                CREATE INDEX review_items_review ON review_items (review_id, instance)"
                    .to_owned()
            }),
            backbone_indexes_migration(),
            backbone_replay_migration(),
        ]
    }
}

/// Approval status as stored (and on the wire, upper-cased by the API).
pub const PENDING: &str = "Pending";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stage {
    pub approver_ids: Vec<String>,
    pub approvals_required: u32,
    pub timeout_ms: i64,
    pub escalation_approver_ids: Vec<String>,
    /// 0: no escalation.
    pub escalate_after_ms: i64,
    pub justification_required: bool,
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
    pub justification: String,
    pub ticket_system: String,
    pub ticket_number: String,
    pub status: String,
    pub stages: Vec<Stage>,
    pub stage: usize,
    pub stage_started_at: i64,
    pub expires_at: i64,
    pub escalated: bool,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub rev: i64,
    /// The trace of the request that asked for approval; the outcome joins it.
    pub traceparent: String,
}

impl ApprovalRow {
    pub fn current_stage(&self) -> &Stage {
        &self.stages[self.stage.min(self.stages.len() - 1)]
    }

    /// When the current stage's escalation approvers join, if it has any.
    pub fn escalates_at(&self) -> Option<i64> {
        let stage = self.current_stage();
        (stage.escalate_after_ms > 0 && !stage.escalation_approver_ids.is_empty())
            .then(|| self.stage_started_at + stage.escalate_after_ms)
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
            justification: col(r, "justification")?,
            ticket_system: col(r, "ticket_system")?,
            ticket_number: col(r, "ticket_number")?,
            status: col(r, "status")?,
            stages,
            stage: col::<i32>(r, "stage")? as usize,
            stage_started_at: col(r, "stage_started_at")?,
            expires_at: col(r, "expires_at")?,
            escalated: col(r, "escalated")?,
            created_at: col(r, "created_at")?,
            completed_at: col(r, "completed_at")?,
            rev: col(r, "rev")?,
            traceparent: col(r, "traceparent")?,
        })
    }
}

const COLUMNS: &str = "id, request_id, requester_id, role_id, role_name, scope, duration_ms, justification, ticket_system, ticket_number, status, stages, stage, stage_started_at, expires_at, escalated, created_at, completed_at, rev, traceparent";

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

/// Inserts an approval unless one exists for its request; returns whether it did.
pub async fn insert<C: ConnectionTrait>(c: &C, a: &ApprovalRow) -> Result<bool, DbErr> {
    let stages = serde_json::to_string(&a.stages).map_err(|e| DbErr::Custom(e.to_string()))?;
    let n = db::exec(
        c,
        &format!(
            "INSERT INTO approvals ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
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
            a.status.clone().into(),
            stages.into(),
            (a.stage as i32).into(),
            a.stage_started_at.into(),
            a.expires_at.into(),
            a.escalated.into(),
            a.created_at.into(),
            a.completed_at.into(),
            a.rev.into(),
            a.traceparent.clone().into(),
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

/// Writes the moving parts of an approval (status, stage, deadlines) with a new revision.
pub async fn update<C: ConnectionTrait>(c: &C, a: &ApprovalRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE approvals SET status = $2, stage = $3, stage_started_at = $4, expires_at = $5, escalated = $6, completed_at = $7, rev = $8 WHERE id = $1",
        vec![
            a.id.clone().into(),
            a.status.clone().into(),
            (a.stage as i32).into(),
            a.stage_started_at.into(),
            a.expires_at.into(),
            a.escalated.into(),
            a.completed_at.into(),
            a.rev.into(),
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

/// Pending approvals whose stage expired or whose escalation is due (locked on PostgreSQL).
pub async fn due<C: ConnectionTrait>(c: &C, now: i64, limit: u64) -> Result<Vec<ApprovalRow>, DbErr> {
    // Escalation times live in the stages' JSON, so candidates are filtered in code.
    let sql = format!(
        "SELECT {COLUMNS} FROM approvals WHERE status = 'Pending' AND (expires_at <= $1 OR escalated = FALSE) ORDER BY expires_at LIMIT {limit}{}",
        c.skip_locked()
    );
    Ok(db::query(c, &sql, vec![now.into()])
        .await?
        .iter()
        .map(ApprovalRow::from_row)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|a| a.expires_at <= now || a.escalates_at().is_some_and(|at| !a.escalated && at <= now))
        .collect())
}

/// The next moment a timer is due: an expiry, or an escalation not yet done.
pub async fn next_deadline<C: ConnectionTrait>(c: &C) -> Result<Option<i64>, DbErr> {
    let rows = db::query(
        c,
        &format!("SELECT {COLUMNS} FROM approvals WHERE status = 'Pending' ORDER BY expires_at LIMIT 1000"),
        vec![],
    )
    .await?;
    let mut next: Option<i64> = None;
    for r in &rows {
        let a = ApprovalRow::from_row(r)?;
        let mut at = a.expires_at;
        if let Some(e) = a.escalates_at().filter(|_| !a.escalated) {
            at = at.min(e);
        }
        next = Some(next.map_or(at, |n| n.min(at)));
    }
    Ok(next)
}

pub struct ListFilter<'a> {
    pub status: Option<&'a str>,
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
        values.push(status.into());
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
    pub decision: String,
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
            d.decision.clone().into(),
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
            decision: col(r, "decision")?,
            justification: col(r, "justification")?,
            decided_at: col(r, "decided_at")?,
        })
    })
    .collect()
}

#[derive(Clone, Debug)]
pub struct ActivationRow {
    pub assignment_id: String,
    pub principal_id: String,
    pub role_id: String,
    pub role_name: String,
    pub scope: String,
    pub start_at: i64,
    pub end_at: Option<i64>,
}

pub async fn record_activation<C: ConnectionTrait>(c: &C, a: &ActivationRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO activations (assignment_id, principal_id, role_id, role_name, scope, start_at, end_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (assignment_id) DO NOTHING",
        vec![
            a.assignment_id.clone().into(),
            a.principal_id.clone().into(),
            a.role_id.clone().into(),
            a.role_name.clone().into(),
            a.scope.clone().into(),
            a.start_at.into(),
            a.end_at.into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn recent_activations<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    limit: u64,
) -> Result<Vec<ActivationRow>, DbErr> {
    db::query(
        c,
        &format!(
            "SELECT assignment_id, principal_id, role_id, role_name, scope, start_at, end_at FROM activations \
             WHERE principal_id = $1 ORDER BY start_at DESC LIMIT {limit}"
        ),
        vec![principal_id.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(ActivationRow {
            assignment_id: col(r, "assignment_id")?,
            principal_id: col(r, "principal_id")?,
            role_id: col(r, "role_id")?,
            role_name: col(r, "role_name")?,
            scope: col(r, "scope")?,
            start_at: col(r, "start_at")?,
            end_at: col(r, "end_at")?,
        })
    })
    .collect()
}

/// An assignment as assignment's events describe it (access reviews snapshot these).
#[derive(Clone, Debug)]
pub struct SeenAssignment {
    pub assignment_id: String,
    pub kind: String,
    pub principal_id: String,
    pub role_id: String,
    pub scope: String,
    pub start_at: i64,
    pub end_at: Option<i64>,
}

pub async fn upsert_seen<C: ConnectionTrait>(c: &C, a: &SeenAssignment) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO assignments_seen (assignment_id, kind, principal_id, role_id, scope, start_at, end_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (assignment_id) DO UPDATE SET start_at = excluded.start_at, end_at = excluded.end_at",
        vec![
            a.assignment_id.clone().into(),
            a.kind.clone().into(),
            a.principal_id.clone().into(),
            a.role_id.clone().into(),
            a.scope.clone().into(),
            a.start_at.into(),
            a.end_at.into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn forget_seen<C: ConnectionTrait>(c: &C, assignment_id: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM assignments_seen WHERE assignment_id = $1",
        vec![assignment_id.into()],
    )
    .await?;
    Ok(())
}

/// Assignments of `role_id` in force at `now` at `scope` or below it.
pub async fn seen_in_scope<C: ConnectionTrait>(
    c: &C,
    role_id: &str,
    scope: &str,
    now: i64,
) -> Result<Vec<SeenAssignment>, DbErr> {
    let rows = db::query(
        c,
        "SELECT assignment_id, kind, principal_id, role_id, scope, start_at, end_at FROM assignments_seen \
         WHERE role_id = $1 AND start_at <= $2 AND (end_at IS NULL OR end_at > $2) ORDER BY principal_id, assignment_id",
        vec![role_id.into(), now.into()],
    )
    .await?;
    let below = format!("{}/", scope.trim_end_matches('/'));
    rows.iter()
        .map(|r| {
            Ok(SeenAssignment {
                assignment_id: col(r, "assignment_id")?,
                kind: col(r, "kind")?,
                principal_id: col(r, "principal_id")?,
                role_id: col(r, "role_id")?,
                scope: col(r, "scope")?,
                start_at: col(r, "start_at")?,
                end_at: col(r, "end_at")?,
            })
        })
        .filter(|a: &Result<SeenAssignment, DbErr>| {
            a.as_ref()
                .map(|a| scope == "/" || a.scope == scope || a.scope.starts_with(&below))
                .unwrap_or(true)
        })
        .collect()
}

/// When `principal_id` last activated `role_id` (any scope), if ever.
pub async fn last_activation<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    role_id: &str,
) -> Result<Option<i64>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT MAX(start_at) AS last FROM activations WHERE principal_id = $1 AND role_id = $2",
        vec![principal_id.into(), role_id.into()],
    )
    .await?;
    Ok(match row {
        Some(r) => col::<Option<i64>>(&r, "last")?,
        None => None,
    })
}

#[derive(Clone, Debug)]
pub struct ReviewRow {
    pub id: String,
    pub name: String,
    pub role_id: String,
    pub scope: String,
    pub review_scope: String,
    pub reviewer_ids: Vec<String>,
    pub self_review: bool,
    pub start_at: i64,
    pub duration_ms: i64,
    pub recurrence: String,
    pub default_decision: String,
    pub auto_apply: bool,
    pub status: String,
    pub instance: i32,
    pub instance_start: Option<i64>,
    pub instance_end: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
}

const REVIEW_COLUMNS: &str = "id, name, role_id, scope, review_scope, reviewer_ids, self_review, start_at, duration_ms, recurrence, default_decision, auto_apply, status, instance, instance_start, instance_end, created_by, created_at";

impl ReviewRow {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            name: col(r, "name")?,
            role_id: col(r, "role_id")?,
            scope: col(r, "scope")?,
            review_scope: col(r, "review_scope")?,
            reviewer_ids: col::<String>(r, "reviewer_ids")?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            self_review: col(r, "self_review")?,
            start_at: col(r, "start_at")?,
            duration_ms: col(r, "duration_ms")?,
            recurrence: col(r, "recurrence")?,
            default_decision: col(r, "default_decision")?,
            auto_apply: col(r, "auto_apply")?,
            status: col(r, "status")?,
            instance: col(r, "instance")?,
            instance_start: col(r, "instance_start")?,
            instance_end: col(r, "instance_end")?,
            created_by: col(r, "created_by")?,
            created_at: col(r, "created_at")?,
        })
    }
}

pub async fn insert_review<C: ConnectionTrait>(c: &C, r: &ReviewRow) -> Result<(), DbErr> {
    db::exec(
        c,
        &format!(
            "INSERT INTO access_reviews ({REVIEW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        ),
        vec![
            r.id.clone().into(),
            r.name.clone().into(),
            r.role_id.clone().into(),
            r.scope.clone().into(),
            r.review_scope.clone().into(),
            r.reviewer_ids.join(" ").into(),
            r.self_review.into(),
            r.start_at.into(),
            r.duration_ms.into(),
            r.recurrence.clone().into(),
            r.default_decision.clone().into(),
            r.auto_apply.into(),
            r.status.clone().into(),
            r.instance.into(),
            r.instance_start.into(),
            r.instance_end.into(),
            r.created_by.clone().into(),
            r.created_at.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Writes a review's lifecycle columns.
pub async fn update_review<C: ConnectionTrait>(c: &C, r: &ReviewRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE access_reviews SET status = $2, instance = $3, instance_start = $4, instance_end = $5, start_at = $6 WHERE id = $1",
        vec![
            r.id.clone().into(),
            r.status.clone().into(),
            r.instance.into(),
            r.instance_start.into(),
            r.instance_end.into(),
            r.start_at.into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn review<C: ConnectionTrait>(c: &C, id: &str, lock: bool) -> Result<Option<ReviewRow>, DbErr> {
    let sql = format!(
        "SELECT {REVIEW_COLUMNS} FROM access_reviews WHERE id = $1{}",
        if lock { c.for_update() } else { "" }
    );
    db::row(c, &sql, vec![id.into()], ReviewRow::from_row).await
}

pub async fn reviews<C: ConnectionTrait>(c: &C, after_id: &str, limit: u64) -> Result<Vec<ReviewRow>, DbErr> {
    db::rows(
        c,
        &format!("SELECT {REVIEW_COLUMNS} FROM access_reviews WHERE id > $1 ORDER BY id LIMIT {limit}"),
        vec![after_id.into()],
        ReviewRow::from_row,
    )
    .await
}

/// Reviews due to start or end (locked with SKIP LOCKED on PostgreSQL).
pub async fn due_reviews<C: ConnectionTrait>(c: &C, now: i64, limit: u64) -> Result<Vec<ReviewRow>, DbErr> {
    let sql = format!(
        "SELECT {REVIEW_COLUMNS} FROM access_reviews WHERE (status = 'NotStarted' AND start_at <= $1) \
         OR (status = 'InProgress' AND instance_end <= $1) ORDER BY id LIMIT {limit}{}",
        c.skip_locked()
    );
    db::rows(c, &sql, vec![now.into()], ReviewRow::from_row).await
}

pub async fn next_review_deadline<C: ConnectionTrait>(c: &C) -> Result<Option<i64>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT MIN(CASE WHEN status = 'NotStarted' THEN start_at ELSE instance_end END) AS next \
         FROM access_reviews WHERE status IN ('NotStarted', 'InProgress')",
        vec![],
    )
    .await?;
    Ok(match row {
        Some(r) => col::<Option<i64>>(&r, "next")?,
        None => None,
    })
}

#[derive(Clone, Debug)]
pub struct ItemRow {
    pub id: String,
    pub review_id: String,
    pub instance: i32,
    pub assignment_id: String,
    pub kind: String,
    pub principal_id: String,
    pub role_id: String,
    pub scope: String,
    pub recommendation: String,
    pub decision: String,
    pub justification: String,
    pub reviewer_id: String,
    pub decided_at: Option<i64>,
    pub outcome: String,
}

const ITEM_COLUMNS: &str = "id, review_id, instance, assignment_id, kind, principal_id, role_id, scope, recommendation, decision, justification, reviewer_id, decided_at, outcome";

impl ItemRow {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            review_id: col(r, "review_id")?,
            instance: col(r, "instance")?,
            assignment_id: col(r, "assignment_id")?,
            kind: col(r, "kind")?,
            principal_id: col(r, "principal_id")?,
            role_id: col(r, "role_id")?,
            scope: col(r, "scope")?,
            recommendation: col(r, "recommendation")?,
            decision: col(r, "decision")?,
            justification: col(r, "justification")?,
            reviewer_id: col(r, "reviewer_id")?,
            decided_at: col(r, "decided_at")?,
            outcome: col(r, "outcome")?,
        })
    }
}

pub async fn insert_item<C: ConnectionTrait>(c: &C, i: &ItemRow) -> Result<(), DbErr> {
    db::exec(
        c,
        &format!(
            "INSERT INTO review_items ({ITEM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (review_id, instance, assignment_id) DO NOTHING"
        ),
        vec![
            i.id.clone().into(),
            i.review_id.clone().into(),
            i.instance.into(),
            i.assignment_id.clone().into(),
            i.kind.clone().into(),
            i.principal_id.clone().into(),
            i.role_id.clone().into(),
            i.scope.clone().into(),
            i.recommendation.clone().into(),
            i.decision.clone().into(),
            i.justification.clone().into(),
            i.reviewer_id.clone().into(),
            i.decided_at.into(),
            i.outcome.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn update_item<C: ConnectionTrait>(c: &C, i: &ItemRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE review_items SET decision = $2, justification = $3, reviewer_id = $4, decided_at = $5, outcome = $6 WHERE id = $1",
        vec![
            i.id.clone().into(),
            i.decision.clone().into(),
            i.justification.clone().into(),
            i.reviewer_id.clone().into(),
            i.decided_at.into(),
            i.outcome.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn item<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<ItemRow>, DbErr> {
    db::row(
        c,
        &format!("SELECT {ITEM_COLUMNS} FROM review_items WHERE id = $1"),
        vec![id.into()],
        ItemRow::from_row,
    )
    .await
}

pub async fn items<C: ConnectionTrait>(c: &C, review_id: &str, instance: i32) -> Result<Vec<ItemRow>, DbErr> {
    db::rows(
        c,
        &format!(
            "SELECT {ITEM_COLUMNS} FROM review_items WHERE review_id = $1 AND instance = $2 ORDER BY principal_id, id"
        ),
        vec![review_id.into(), instance.into()],
        ItemRow::from_row,
    )
    .await
}

/// What became of a review item's removal, as assignment reported it.
pub async fn set_item_outcome<C: ConnectionTrait>(c: &C, item_id: &str, outcome: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE review_items SET outcome = $1 WHERE id = $2",
        vec![outcome.into(), item_id.into()],
    )
    .await
    .map(drop)
}
