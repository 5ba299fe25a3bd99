//! What approvers see of a requester: their recent activations, and the assignments in
//! force that reviews snapshot.

use super::*;

#[derive(Clone, Debug)]
pub struct ActivationRow {
    pub assignment_id: String,
    pub principal_id: String,
    pub role_id: String,
    pub role_name: String,
    pub scope: String,
    pub start_at: i64,
    pub end_at: Option<i64>,
    /// The group whose eligibility it rested on; empty for the principal's own.
    pub via_group_id: String,
}

pub async fn record_activation<C: ConnectionTrait>(c: &C, a: &ActivationRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO activations (assignment_id, principal_id, role_id, role_name, scope, start_at, end_at, via_group_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (assignment_id) DO NOTHING",
        vec![
            a.assignment_id.clone().into(),
            a.principal_id.clone().into(),
            a.role_id.clone().into(),
            a.role_name.clone().into(),
            a.scope.clone().into(),
            a.start_at.into(),
            a.end_at.into(),
            a.via_group_id.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

/// An activation ended (deactivated, revoked, expired) or was shortened at `at`: its end moves
/// there, never later.
pub async fn activation_ended<C: ConnectionTrait>(c: &C, assignment_id: &str, at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE activations SET end_at = $2 WHERE assignment_id = $1 AND (end_at IS NULL OR end_at > $2)",
        vec![assignment_id.into(), at.into()],
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
            "SELECT assignment_id, principal_id, role_id, role_name, scope, start_at, end_at, via_group_id FROM activations \
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
            via_group_id: col(r, "via_group_id")?,
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

/// Assignments of `role_id` at `scope` or below it in force at `now`, or scheduled to start
/// later: a review sees what is coming too, or access planted to start after it would pass
/// every review.
pub async fn seen_in_scope<C: ConnectionTrait>(
    c: &C,
    role_id: &str,
    scope: &str,
    now: i64,
) -> Result<Vec<SeenAssignment>, DbErr> {
    let rows = db::query(
        c,
        "SELECT assignment_id, kind, principal_id, role_id, scope, start_at, end_at FROM assignments_seen \
         WHERE role_id = $1 AND (end_at IS NULL OR end_at > $2) ORDER BY principal_id, assignment_id",
        vec![role_id.into(), now.into()],
    )
    .await?;
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
        .filter(|a: &Result<SeenAssignment, DbErr>| a.as_ref().map(|a| covers(scope, &a.scope)).unwrap_or(true))
        .collect()
}

/// Whether a review at `review_scope` covers an assignment at `scope` (there or below).
pub fn covers(review_scope: &str, scope: &str) -> bool {
    review_scope == "/"
        || scope == review_scope
        || scope
            .strip_prefix(review_scope.trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/'))
}

/// When `principal_id` last activated `role_id` (any scope), if ever; for a group, when a
/// member last activated it through the group.
pub async fn last_activation<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    role_id: &str,
) -> Result<Option<i64>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT MAX(start_at) AS last FROM activations WHERE role_id = $2 \
         AND ((principal_id = $1 AND via_group_id = '') OR via_group_id = $1)",
        vec![principal_id.into(), role_id.into()],
    )
    .await?;
    Ok(match row {
        Some(r) => col::<Option<i64>>(&r, "last")?,
        None => None,
    })
}
