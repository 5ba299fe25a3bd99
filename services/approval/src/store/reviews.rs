//! Access reviews and their items.

use super::*;
use crate::domain::{Decision, ReviewStatus};

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
    pub status: ReviewStatus,
    pub instance: i32,
    pub instance_start: Option<i64>,
    pub instance_end: Option<i64>,
    /// When the current instance's reviewers are reminded (none: not due, or done).
    pub remind_at: Option<i64>,
    /// The review's own switches: no mail when an instance starts, no reminders.
    pub mail_off: bool,
    pub reminders_off: bool,
    pub created_by: String,
    pub created_at: i64,
}

pub(super) const REVIEW_COLUMNS: &str = "id, name, role_id, scope, review_scope, reviewer_ids, self_review, start_at, duration_ms, recurrence, default_decision, auto_apply, status, instance, instance_start, instance_end, created_by, created_at, remind_at, mail_off, reminders_off";

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
            status: col_named(r, "status", ReviewStatus::parse)?,
            instance: col(r, "instance")?,
            instance_start: col(r, "instance_start")?,
            instance_end: col(r, "instance_end")?,
            created_by: col(r, "created_by")?,
            created_at: col(r, "created_at")?,
            mail_off: col(r, "mail_off")?,
            reminders_off: col(r, "reminders_off")?,
            remind_at: col(r, "remind_at")?,
        })
    }
}

pub async fn insert_review<C: ConnectionTrait>(c: &C, r: &ReviewRow) -> Result<(), DbErr> {
    db::exec(
        c,
        &format!(
            "INSERT INTO access_reviews ({REVIEW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
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
            r.status.as_str().into(),
            r.instance.into(),
            r.instance_start.into(),
            r.instance_end.into(),
            r.created_by.clone().into(),
            r.created_at.into(),
            r.remind_at.into(),
            r.mail_off.into(),
            r.reminders_off.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Writes a review's lifecycle columns.
pub async fn update_review<C: ConnectionTrait>(c: &C, r: &ReviewRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE access_reviews SET status = $2, instance = $3, instance_start = $4, instance_end = $5, start_at = $6, remind_at = $7 WHERE id = $1",
        vec![
            r.id.clone().into(),
            r.status.as_str().into(),
            r.instance.into(),
            r.instance_start.into(),
            r.instance_end.into(),
            r.start_at.into(),
            r.remind_at.into(),
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

/// The reviews of `role_id` with an instance in progress, locked (PostgreSQL) until the
/// caller's transaction ends: an instance completing meanwhile is either waited for (and then
/// no longer in progress) or waits for what the caller adds to it.
pub async fn reviews_in_progress_of<C: ConnectionTrait>(c: &C, role_id: &str) -> Result<Vec<ReviewRow>, DbErr> {
    db::rows(
        c,
        &format!(
            "SELECT {REVIEW_COLUMNS} FROM access_reviews WHERE status = 'InProgress' AND role_id = $1 ORDER BY id{}",
            c.for_update()
        ),
        vec![role_id.into()],
        ReviewRow::from_row,
    )
    .await
}

/// Reviews due to start, to remind their reviewers, or to end (locked with SKIP LOCKED on
/// PostgreSQL).
pub async fn due_reviews<C: ConnectionTrait>(c: &C, now: i64, limit: u64) -> Result<Vec<ReviewRow>, DbErr> {
    let sql = format!(
        "SELECT {REVIEW_COLUMNS} FROM access_reviews WHERE (status = 'NotStarted' AND start_at <= $1) \
         OR (status = 'InProgress' AND (instance_end <= $1 OR remind_at <= $1)) ORDER BY id LIMIT {limit}{}",
        c.skip_locked()
    );
    db::rows(c, &sql, vec![now.into()], ReviewRow::from_row).await
}

pub async fn next_review_deadline<C: ConnectionTrait>(c: &C) -> Result<Option<i64>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT MIN(CASE WHEN status = 'NotStarted' THEN start_at \
         WHEN remind_at IS NOT NULL AND remind_at < instance_end THEN remind_at ELSE instance_end END) AS next \
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
    /// None until a reviewer (or the review's default) decides.
    pub decision: Option<Decision>,
    pub justification: String,
    pub reviewer_id: String,
    pub decided_at: Option<i64>,
    pub outcome: String,
}

pub(super) const ITEM_COLUMNS: &str = "id, review_id, instance, assignment_id, kind, principal_id, role_id, scope, recommendation, decision, justification, reviewer_id, decided_at, outcome";

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
            decision: match col::<String>(r, "decision")?.as_str() {
                "" => None,
                text => Some(Decision::parse(text).ok_or_else(|| DbErr::Type(format!("decision {text:?}")))?),
            },
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
            i.decision.map_or("", Decision::as_str).into(),
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
            i.decision.map_or("", Decision::as_str).into(),
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

/// An instance's items, by principal then id.
pub async fn items<C: ConnectionTrait>(c: &C, review_id: &str, instance: i32) -> Result<Vec<ItemRow>, DbErr> {
    items_page(c, review_id, instance, ItemsPage::default()).await
}

/// Which of an instance's items a page holds: those listed after the item `after` names (by
/// its principal's id and its own), at most `limit` (all when none).
#[derive(Clone, Copy, Debug, Default)]
pub struct ItemsPage<'a> {
    pub after: Option<(&'a str, &'a str)>,
    pub limit: Option<u64>,
}

/// A page of an instance's items, in the order [`items`] lists them.
pub async fn items_page<C: ConnectionTrait>(
    c: &C,
    review_id: &str,
    instance: i32,
    page: ItemsPage<'_>,
) -> Result<Vec<ItemRow>, DbErr> {
    let mut sql = format!("SELECT {ITEM_COLUMNS} FROM review_items WHERE review_id = $1 AND instance = $2");
    let mut values: Vec<sea_orm::Value> = vec![review_id.into(), instance.into()];
    if let Some((principal, id)) = page.after {
        sql.push_str(" AND (principal_id > $3 OR (principal_id = $3 AND id > $4))");
        values.extend([principal.into(), id.into()]);
    }
    sql.push_str(" ORDER BY principal_id, id");
    if let Some(limit) = page.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    db::rows(c, &sql, values, ItemRow::from_row).await
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
