//! Assignments: eligible and active, an administrator's or an activation's; what CheckAccess,
//! activation, the timers and the protections read of them.

use super::*;

/// Assignment status: `active` while it holds or is scheduled to (CheckAccess also compares
/// times), then `expired`, `removed` (by an administrator) or `deactivated` (by its holder).
#[derive(Clone, Debug)]
pub struct AssignmentRow {
    pub id: String,
    pub kind: Kind,
    pub principal_id: String,
    pub principal_kind: String,
    pub principal_name: String,
    pub role_id: String,
    pub scope: String,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub status: String,
    /// `admin` (adminAssign) or `activation` (selfActivate).
    pub origin: String,
    pub request_id: String,
    pub created_by: String,
    /// 1 when made, one more at each change of its end.
    pub version: i64,
}

pub(super) const ASSIGNMENT_COLUMNS: &str = "id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, status, origin, request_id, created_by, version";

impl AssignmentRow {
    /// When it ended, expired by `now`: at its end, however late that is noticed (a timer
    /// after a restart, a replica down).
    pub fn expired_at(&self, now: i64) -> i64 {
        self.end_at.map_or(now, |end| end.min(now))
    }

    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            kind: col_named(r, "kind", Kind::parse)?,
            principal_id: col(r, "principal_id")?,
            principal_kind: col(r, "principal_kind")?,
            principal_name: col(r, "principal_name")?,
            role_id: col(r, "role_id")?,
            scope: col(r, "scope")?,
            start_at: col(r, "start_at")?,
            end_at: col(r, "end_at")?,
            status: col(r, "status")?,
            origin: col(r, "origin")?,
            request_id: col(r, "request_id")?,
            created_by: col(r, "created_by")?,
            version: col(r, "version")?,
        })
    }
}

/// Inserts an assignment; `announced` says whether its start was already told (RoleActivated).
pub(super) const ASSIGNMENT_INSERT: &str = "INSERT INTO assignments (id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, status, origin, announced, request_id, created_by, created_at, changed_at)";

/// An assignment's values in [`ASSIGNMENT_INSERT`]'s order ([`ASSIGNMENT_VALUES`] of them).
pub(super) fn assignment_values(a: &AssignmentRow, announced: bool, now: i64) -> Vec<Value> {
    vec![
        a.id.clone().into(),
        a.kind.as_str().into(),
        a.principal_id.clone().into(),
        a.principal_kind.clone().into(),
        a.principal_name.clone().into(),
        a.role_id.clone().into(),
        a.scope.clone().into(),
        a.start_at.into(),
        a.end_at.into(),
        a.status.clone().into(),
        a.origin.clone().into(),
        announced.into(),
        a.request_id.clone().into(),
        a.created_by.clone().into(),
        now.into(),
        now.into(),
    ]
}

/// How many values [`assignment_values`] gives.
pub(super) const ASSIGNMENT_VALUES: usize = 16;

pub async fn insert_assignment<C: ConnectionTrait>(
    c: &C,
    a: &AssignmentRow,
    announced: bool,
    now: i64,
) -> Result<(), DbErr> {
    let sql = format!("{ASSIGNMENT_INSERT} VALUES ({})", placeholders(1, ASSIGNMENT_VALUES));
    db::exec(c, &sql, assignment_values(a, announced, now)).await.map(drop)
}

/// Inserts `a` as versions before m0018 did (no `changed_at`): for upgrade tests, on a
/// database migrated up to an earlier step.
#[cfg(test)]
pub async fn insert_assignment_before_changes<C: ConnectionTrait>(
    c: &C,
    a: &AssignmentRow,
    now: i64,
) -> Result<(), DbErr> {
    let columns = ASSIGNMENT_INSERT.replace(", changed_at)", ")");
    let sql = format!("{columns} VALUES ({})", placeholders(1, ASSIGNMENT_VALUES - 1));
    let mut values = assignment_values(a, true, now);
    values.pop();
    db::exec(c, &sql, values).await.map(drop)
}

/// Which assignments a listing shows: those in force now, or those scheduled to start later too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    Only,
    OrScheduled,
}

/// Which part of a listing to read: assignments at one of `scopes` (any scope when empty)
/// whose ids come after `after` (from the first when empty), at most `limit` of them (all
/// when none). [`Slice::default`] reads them all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slice<'a> {
    pub scopes: &'a [String],
    pub after: &'a str,
    pub limit: Option<u64>,
}

/// Assignments in force at `now` (status active, started, not ended) matching the filters,
/// in the order of their ids; with [`Started::OrScheduled`], those not started yet too.
pub async fn current_assignments<C: ConnectionTrait>(
    c: &C,
    kind: Kind,
    principal_id: Option<&str>,
    role_id: Option<&str>,
    now: i64,
    started: Started,
    slice: Slice<'_>,
) -> Result<Vec<AssignmentRow>, DbErr> {
    let mut sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND kind = $1 AND (end_at IS NULL OR end_at > $2)"
    );
    let mut values = vec![kind.as_str().into(), now.into()];
    if started == Started::Only {
        values.push(now.into());
        sql.push_str(&format!(" AND start_at <= ${}", values.len()));
    }
    if let Some(p) = principal_id {
        values.push(p.into());
        sql.push_str(&format!(" AND principal_id = ${}", values.len()));
    }
    if let Some(r) = role_id {
        values.push(r.into());
        sql.push_str(&format!(" AND role_id = ${}", values.len()));
    }
    if !slice.scopes.is_empty() {
        let list = placeholders(values.len() + 1, slice.scopes.len());
        values.extend(slice.scopes.iter().map(|s| s.clone().into()));
        sql.push_str(&format!(" AND scope IN ({list})"));
    }
    if !slice.after.is_empty() {
        values.push(slice.after.into());
        sql.push_str(&format!(" AND id > ${}", values.len()));
    }
    sql.push_str(" ORDER BY id");
    if let Some(limit) = slice.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    db::rows(c, &sql, values, AssignmentRow::from_row).await
}

/// What a selfActivate checks, in one round trip: the assignments of `role_id` that any of
/// `principal_ids` holds and that have not ended by `now` (eligible or active, started or
/// not), and the role's policies set at any of `scopes` (as [`policies_at`]).
pub async fn activation_inputs<C: ConnectionTrait>(
    c: &C,
    principal_ids: &[String],
    role_id: &str,
    scopes: &[String],
    now: i64,
) -> Result<(Vec<AssignmentRow>, Vec<(String, String)>), DbErr> {
    let principals = placeholders(3, principal_ids.len());
    let scope_list = placeholders(3 + principal_ids.len(), scopes.len());
    // The policies' rows fill the assignment columns with NULLs; `part` tells them apart.
    let sql = format!(
        "SELECT 0 AS part, {ASSIGNMENT_COLUMNS}, created_at, NULL AS policy FROM assignments \
         WHERE status = 'active' AND role_id = $1 AND (end_at IS NULL OR end_at > $2) AND principal_id IN ({principals}) \
         UNION ALL \
         SELECT 1, NULL, NULL, NULL, NULL, NULL, role_id, scope, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, policy \
         FROM role_policies WHERE role_id = $1 AND scope IN ({scope_list}) \
         ORDER BY part, created_at"
    );
    let mut values = vec![role_id.into(), now.into()];
    values.extend(principal_ids.iter().map(|p| p.clone().into()));
    values.extend(scopes.iter().map(|s| s.clone().into()));
    let (mut held, mut policies) = (Vec::new(), Vec::new());
    for row in db::query(c, &sql, values).await? {
        if col::<i32>(&row, "part")? == 0 {
            held.push(AssignmentRow::from_row(&row)?);
        } else {
            policies.push((col(&row, "scope")?, col(&row, "policy")?));
        }
    }
    Ok((held, policies))
}

/// Every active-kind assignment that has not ended by `now` (started or not): the access index.
pub async fn unended_active_assignments<C: ConnectionTrait>(c: &C, now: i64) -> Result<Vec<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND kind = 'active' AND (end_at IS NULL OR end_at > $1)"
    );
    db::rows(c, &sql, vec![now.into()], AssignmentRow::from_row).await
}

/// The active assignments (not eligibility) made, moved or ended at or after `since`.
pub async fn assignments_changed_since<C: ConnectionTrait>(c: &C, since: i64) -> Result<Vec<AssignmentRow>, DbErr> {
    let sql = format!("SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE changed_at >= $1 AND kind = 'active'");
    db::rows(c, &sql, vec![since.into()], AssignmentRow::from_row).await
}

/// One assignment by id.
pub async fn find_assignment<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<AssignmentRow>, DbErr> {
    let sql = format!("SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE id = $1");
    db::row(c, &sql, vec![id.into()], AssignmentRow::from_row).await
}

/// A group's assignments: those it holds and those of access to it (at its scope), still in
/// force (`live`) or whatever their status.
pub async fn group_assignments<C: ConnectionTrait>(
    c: &C,
    group_id: &str,
    scope: &str,
    live: bool,
) -> Result<Vec<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE (principal_id = $1 OR scope = $2){}",
        if live { " AND status = 'active'" } else { "" }
    );
    db::rows(c, &sql, vec![group_id.into(), scope.into()], AssignmentRow::from_row).await
}

/// The assignments with these ids (those that exist).
pub async fn find_assignments<C: ConnectionTrait>(c: &C, ids: &[String]) -> Result<Vec<AssignmentRow>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE id IN ({})",
        db::placeholders(1, ids.len())
    );
    db::rows(
        c,
        &sql,
        ids.iter().map(|id| id.clone().into()).collect(),
        AssignmentRow::from_row,
    )
    .await
}

/// Active assignments of a principal, role and kind at exactly `scope` that have not ended
/// (including ones scheduled to start later).
pub async fn open_assignments<C: ConnectionTrait>(
    c: &C,
    kind: Kind,
    principal_id: &str,
    role_id: &str,
    scope: &str,
    now: i64,
) -> Result<Vec<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND kind = $1 AND principal_id = $2 AND role_id = $3 AND scope = $4 AND (end_at IS NULL OR end_at > $5) ORDER BY created_at"
    );
    db::rows(
        c,
        &sql,
        vec![
            kind.as_str().into(),
            principal_id.into(),
            role_id.into(),
            scope.into(),
            now.into(),
        ],
        AssignmentRow::from_row,
    )
    .await
}

/// Locks (PostgreSQL) and returns the current permanent active Global Administrator
/// assignments of users at `/`, so two removals cannot both think another one remains. A
/// group's does not count: it may be emptied or deleted in the directory, where this service
/// has no say; nor a service principal's: no person signs in with it; nor a disabled user's
/// (as identity last told, [`set_user_enabled`]): they cannot sign in to use it.
pub async fn lock_permanent_global_admins<C: ConnectionTrait>(
    c: &C,
    role_id: &str,
    now: i64,
) -> Result<Vec<AssignmentRow>, DbErr> {
    let values = || vec![role_id.into(), now.into()];
    if c.backend() == sea_orm::DbBackend::Postgres {
        // Locked first, then read in a statement of its own: a statement that waited for a lock
        // sees other tables as they were when it began, and a disable the change it waited for
        // recorded ([`set_user_enabled`]) must count.
        let sql = format!("SELECT id FROM assignments WHERE {PERMANENT_AT_ROOT} ORDER BY id FOR UPDATE");
        db::query(c, &sql, values()).await?;
    }
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE {PERMANENT_AT_ROOT} \
         AND NOT EXISTS (SELECT 1 FROM user_states u WHERE u.principal_id = assignments.principal_id AND NOT u.enabled) \
         ORDER BY id"
    );
    db::rows(c, &sql, values(), AssignmentRow::from_row).await
}

/// Users' permanent active assignments of role `$1` at `/` in force at `$2`.
const PERMANENT_AT_ROOT: &str = "status = 'active' AND kind = 'active' AND role_id = $1 AND scope = '/' \
     AND end_at IS NULL AND start_at <= $2 AND principal_kind = 'user'";

/// The users holding a permanent active assignment of `role_id` at `/`, whether or not this
/// service was told they are disabled (the directory has the last word on that).
pub async fn permanent_holders<C: ConnectionTrait>(c: &C, role_id: &str, now: i64) -> Result<Vec<String>, DbErr> {
    let sql = format!("SELECT DISTINCT principal_id FROM assignments WHERE {PERMANENT_AT_ROOT} ORDER BY principal_id");
    db::query(c, &sql, vec![role_id.into(), now.into()])
        .await?
        .iter()
        .map(|r| col::<String>(r, "principal_id"))
        .collect()
}

/// Moves an active assignment's end if it is still at `version` (compare and set), at `now`;
/// returns its new version, none if it ended or changed since it was read.
pub async fn set_assignment_end<C: ConnectionTrait>(
    c: &C,
    id: &str,
    version: i64,
    end_at: Option<i64>,
    now: i64,
) -> Result<Option<i64>, DbErr> {
    db::query_one(
        c,
        "UPDATE assignments SET end_at = $1, version = version + 1, expiry_noticed = FALSE, changed_at = $4 WHERE id = $2 AND version = $3 AND status = 'active' RETURNING version",
        vec![end_at.into(), id.into(), version.into(), now.into()],
    )
    .await?
    .map(|r| col(&r, "version"))
    .transpose()
}

/// Ends an assignment that is still active; returns whether it did (false: someone else ended it first).
pub async fn end_assignment<C: ConnectionTrait>(c: &C, id: &str, status: &str, at: i64) -> Result<bool, DbErr> {
    let n = db::exec(
        c,
        "UPDATE assignments SET status = $1, ended_at = $2, changed_at = $2, end_at = CASE WHEN end_at IS NULL OR end_at > $3 THEN $4 ELSE end_at END WHERE id = $5 AND status = 'active'",
        vec![status.into(), at.into(), at.into(), at.into(), id.into()],
    )
    .await?;
    Ok(n == 1)
}

/// Active assignments whose start is due and not yet announced (locked on PostgreSQL).
pub async fn due_starts<C: ConnectionTrait>(c: &C, now: i64, limit: u64) -> Result<Vec<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND announced = FALSE AND start_at <= $1 ORDER BY start_at LIMIT {limit}{}",
        c.skip_locked()
    );
    db::rows(c, &sql, vec![now.into()], AssignmentRow::from_row).await
}

/// Active assignments whose end is due (locked on PostgreSQL).
pub async fn due_ends<C: ConnectionTrait>(c: &C, now: i64, limit: u64) -> Result<Vec<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND end_at IS NOT NULL AND end_at <= $1 ORDER BY end_at LIMIT {limit}{}",
        c.skip_locked()
    );
    db::rows(c, &sql, vec![now.into()], AssignmentRow::from_row).await
}

/// Active assignments whose holder is to be told they end soon: ending within `lead_ms` of
/// `now` (not yet ended), lasting longer than that, not told yet. Locked on PostgreSQL
/// (`SKIP LOCKED`), so replicas tell each holder once.
pub async fn due_expiry_notices<C: ConnectionTrait>(
    c: &C,
    now: i64,
    lead_ms: i64,
    limit: u64,
) -> Result<Vec<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments
         WHERE status = 'active' AND kind = 'active' AND expiry_noticed = FALSE AND end_at IS NOT NULL
           AND end_at > $1 AND end_at <= $2 AND end_at - start_at > $3
         ORDER BY end_at LIMIT {limit}{}",
        c.skip_locked()
    );
    db::rows(
        c,
        &sql,
        vec![now.into(), (now + lead_ms).into(), lead_ms.into()],
        AssignmentRow::from_row,
    )
    .await
}

/// Marks an assignment's holder as told it ends soon; whether this call did it.
pub async fn mark_expiry_noticed<C: ConnectionTrait>(c: &C, id: &str) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE assignments SET expiry_noticed = TRUE WHERE id = $1 AND expiry_noticed = FALSE",
        vec![id.into()],
    )
    .await?
        == 1)
}

/// Marks an assignment's start as announced; returns whether this call did it.
pub async fn mark_announced<C: ConnectionTrait>(c: &C, id: &str) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE assignments SET announced = TRUE WHERE id = $1 AND announced = FALSE",
        vec![id.into()],
    )
    .await?
        == 1)
}

/// The earliest future start or end the scheduler must act on.
pub async fn next_deadline<C: ConnectionTrait>(c: &C) -> Result<Option<i64>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT MIN(t) AS t FROM (SELECT MIN(start_at) AS t FROM assignments WHERE status = 'active' AND announced = FALSE \
         UNION ALL SELECT MIN(end_at) AS t FROM assignments WHERE status = 'active' AND end_at IS NOT NULL) AS deadlines",
        vec![],
    )
    .await?;
    Ok(row.map(|r| col::<Option<i64>>(&r, "t")).transpose()?.flatten())
}

/// The live activation of `role_id` at `scope` by `principal_id` (started or scheduled, ended
/// or not by the timer yet), if any.
pub async fn live_activation<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    role_id: &str,
    scope: &str,
) -> Result<Option<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND origin = 'activation' \
         AND principal_id = $1 AND role_id = $2 AND scope = $3"
    );
    db::row(
        c,
        &sql,
        vec![principal_id.into(), role_id.into(), scope.into()],
        AssignmentRow::from_row,
    )
    .await
}

/// The administrator's `kind` assignment of `role_id` at `scope` to `principal_id` the
/// database still holds active (in force, scheduled, or past its end before the timer ran).
pub async fn live_admin_assignment<C: ConnectionTrait>(
    c: &C,
    kind: &str,
    principal_id: &str,
    role_id: &str,
    scope: &str,
) -> Result<Option<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND origin = 'admin' \
         AND kind = $1 AND principal_id = $2 AND role_id = $3 AND scope = $4"
    );
    db::row(
        c,
        &sql,
        vec![kind.into(), principal_id.into(), role_id.into(), scope.into()],
        AssignmentRow::from_row,
    )
    .await
}

/// The principal's most recently expired assignment an administrator made (not one that was
/// removed: a removal is not undone by asking).
pub async fn last_expired_assignment<C: ConnectionTrait>(
    c: &C,
    kind: Kind,
    principal_id: &str,
    role_id: &str,
    scope: &str,
    now: i64,
) -> Result<Option<AssignmentRow>, DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE kind = $1 AND principal_id = $2 AND role_id = $3 AND scope = $4 \
         AND origin = 'admin' AND (status = 'expired' OR (status = 'active' AND end_at IS NOT NULL AND end_at <= $5)) \
         ORDER BY end_at DESC LIMIT 1"
    );
    db::row(
        c,
        &sql,
        vec![
            kind.as_str().into(),
            principal_id.into(),
            role_id.into(),
            scope.into(),
            now.into(),
        ],
        AssignmentRow::from_row,
    )
    .await
}

/// What a principal's activations rest on and what rests on them, in one round trip: the
/// eligibilities `holders` (the principal and their groups) hold in force at `now`, and the
/// principal's own activations not ended (started or scheduled).
pub async fn eligibilities_and_activations<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    holders: &[String],
    now: i64,
) -> Result<(Vec<AssignmentRow>, Vec<AssignmentRow>), DbErr> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND (end_at IS NULL OR end_at > $1) \
         AND ((kind = 'eligible' AND start_at <= $2 AND principal_id IN ({})) \
           OR (kind = 'active' AND origin = 'activation' AND principal_id = $3)) ORDER BY id",
        placeholders(4, holders.len())
    );
    let mut values = vec![now.into(), now.into(), principal_id.into()];
    values.extend(holders.iter().map(|h| h.clone().into()));
    let rows = db::rows(c, &sql, values, AssignmentRow::from_row).await?;
    Ok(rows.into_iter().partition(|a| a.kind == Kind::Eligible))
}
