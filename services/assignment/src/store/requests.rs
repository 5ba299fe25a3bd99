//! Requests: what was asked (assign, activate, extend, renew, remove, deactivate), their
//! lifecycle, and the one-statement activation.

use super::*;

#[derive(Clone, Debug)]
pub struct RequestRow {
    pub id: String,
    pub action: Action,
    pub kind: Kind,
    pub principal_id: String,
    pub role_id: String,
    pub scope: String,
    pub status: RequestStatus,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub justification: String,
    pub ticket_system: String,
    pub ticket_number: String,
    pub requested_by: String,
    pub created_at: i64,
    pub assignment_id: Option<String>,
    /// For activations: the length asked for (counted from when it becomes active).
    pub duration_ms: Option<i64>,
    /// The policy in force when the request was made (JSON), or empty.
    pub policy: String,
    /// Why it ended as it did, in an approver's words (a denial's justification), or empty.
    pub outcome_reason: String,
}

pub(super) const REQUEST_COLUMNS: &str = "id, action, kind, principal_id, role_id, scope, status, start_at, end_at, justification, ticket_system, ticket_number, requested_by, created_at, assignment_id, duration_ms, policy, outcome_reason";

impl RequestRow {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            action: col_named(r, "action", Action::parse)?,
            kind: col_named(r, "kind", Kind::parse)?,
            principal_id: col(r, "principal_id")?,
            role_id: col(r, "role_id")?,
            scope: col(r, "scope")?,
            status: col_named(r, "status", RequestStatus::parse)?,
            start_at: col(r, "start_at")?,
            end_at: col(r, "end_at")?,
            justification: col(r, "justification")?,
            ticket_system: col(r, "ticket_system")?,
            ticket_number: col(r, "ticket_number")?,
            requested_by: col(r, "requested_by")?,
            created_at: col(r, "created_at")?,
            assignment_id: col(r, "assignment_id")?,
            duration_ms: col(r, "duration_ms")?,
            policy: col(r, "policy")?,
            outcome_reason: col(r, "outcome_reason")?,
        })
    }
}

/// What a request waiting for approval asks: one of each may wait per principal, role and
/// scope (the `requests_one_pending` index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A selfActivate.
    Activation,
    /// A selfExtend or selfRenew.
    Keep,
}

/// The request of `role_id` at `scope` by `principal_id` of that sort waiting for approval, if any.
pub async fn pending_request<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    role_id: &str,
    scope: &str,
    sort: Waiting,
) -> Result<Option<RequestRow>, DbErr> {
    let action = match sort {
        Waiting::Activation => "action = 'selfActivate'",
        Waiting::Keep => "action <> 'selfActivate'",
    };
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE status = 'PendingApproval' \
         AND principal_id = $1 AND role_id = $2 AND scope = $3 AND {action}"
    );
    db::row(
        c,
        &sql,
        vec![principal_id.into(), role_id.into(), scope.into()],
        RequestRow::from_row,
    )
    .await
}

pub(super) const REQUEST_INSERT: &str = "INSERT INTO requests (id, action, kind, principal_id, role_id, scope, status, start_at, end_at, justification, ticket_system, ticket_number, requested_by, created_at, updated_at, assignment_id, duration_ms, policy)";

/// A request's values in [`REQUEST_INSERT`]'s order ($1 to $18).
pub(super) fn request_values(r: &RequestRow) -> Vec<Value> {
    vec![
        r.id.clone().into(),
        r.action.as_str().into(),
        r.kind.as_str().into(),
        r.principal_id.clone().into(),
        r.role_id.clone().into(),
        r.scope.clone().into(),
        r.status.as_str().into(),
        r.start_at.into(),
        r.end_at.into(),
        r.justification.clone().into(),
        r.ticket_system.clone().into(),
        r.ticket_number.clone().into(),
        r.requested_by.clone().into(),
        r.created_at.into(),
        r.created_at.into(),
        r.assignment_id.clone().into(),
        r.duration_ms.into(),
        r.policy.clone().into(),
    ]
}

pub async fn insert_request<C: ConnectionTrait>(c: &C, r: &RequestRow) -> Result<(), DbErr> {
    db::exec(
        c,
        &format!(
            "{REQUEST_INSERT} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        ),
        request_values(r),
    )
    .await
    .map(drop)
}

/// What an activation rests on: the eligibility, and for one a group holds, the principal's
/// membership of that group (identity's, or an active Group Member assignment). The
/// statement that stores the activation checks both are still in force (until `until`, when
/// given) and, on PostgreSQL, locks them `FOR SHARE` until it commits: a removal, or an end
/// moved earlier, either waits for the activation (and then sees it, and ends or shortens
/// it) or wins (and the activation is not stored).
#[derive(Clone, Copy, Debug)]
pub struct RestsOn<'a> {
    pub eligibility_id: &'a str,
    pub via_group: Option<&'a str>,
    /// The activation's end, which they must last until (`None`: they need only hold now).
    pub until: Option<i64>,
}

/// The SQL condition that `rests` still holds for `principal` at `now`, with its values
/// numbered from `first`.
fn still_resting(
    backend: DbBackend,
    rests: RestsOn<'_>,
    principal: &str,
    now: i64,
    first: usize,
) -> (String, Vec<Value>) {
    let lock = if backend == DbBackend::Postgres {
        " FOR SHARE"
    } else {
        ""
    };
    // In force now, and until the activation's end (`$u`: an end at or after it).
    let (e, t, u) = (first, first + 1, first + 2);
    let mut sql = format!(
        "EXISTS (SELECT 1 FROM assignments WHERE id = ${e} AND kind = 'eligible' AND status = 'active' \
         AND start_at <= ${t} AND (end_at IS NULL OR end_at >= ${u}){lock})"
    );
    let lasts_until = rests.until.unwrap_or(now).max(now + 1);
    let mut values: Vec<Value> = vec![rests.eligibility_id.into(), now.into(), lasts_until.into()];
    if let Some(group) = rests.via_group {
        let (p, g, role, scope) = (first + 3, first + 4, first + 5, first + 6);
        sql += &format!(
            " AND (EXISTS (SELECT 1 FROM group_memberships WHERE group_id = ${g} AND principal_id = ${p}{lock}) \
             OR EXISTS (SELECT 1 FROM assignments WHERE principal_id = ${p} AND role_id = ${role} AND scope = ${scope} \
             AND kind = 'active' AND status = 'active' AND start_at <= ${t} AND (end_at IS NULL OR end_at >= ${u}){lock}))"
        );
        values.extend([
            principal.into(),
            group.into(),
            pim_proto::catalogue::GROUP_MEMBER.into(),
            pim_proto::catalogue::group_scope(group).into(),
        ]);
    }
    (sql, values)
}

/// Locks (PostgreSQL, until `c`'s transaction ends) what an activation rests on, if it is
/// still in force; whether it is.
pub async fn lock_resting<C: ConnectionTrait>(
    c: &C,
    rests: RestsOn<'_>,
    principal: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let (condition, values) = still_resting(c.backend(), rests, principal, now, 1);
    Ok(db::query_one(c, &format!("SELECT 1 AS one WHERE {condition}"), values)
        .await?
        .is_some())
}

/// Inserts a selfActivate request unless the principal already has one waiting for approval
/// for the same role and scope, and only while what it rests on holds (checked in the same
/// statement): `$1`–`$21`, then the condition's.
pub(super) fn request_unless_pending(
    backend: DbBackend,
    r: &RequestRow,
    rests: RestsOn<'_>,
    now: i64,
) -> (String, Vec<Value>) {
    let mut values = request_values(r);
    values.extend([
        r.principal_id.clone().into(),
        r.role_id.clone().into(),
        r.scope.clone().into(),
    ]);
    let (resting, resting_values) = still_resting(backend, rests, &r.principal_id, now, values.len() + 1);
    values.extend(resting_values);
    let sql = format!(
        "{REQUEST_INSERT} SELECT {} WHERE NOT EXISTS \
         (SELECT 1 FROM requests WHERE principal_id = $19 AND role_id = $20 AND scope = $21 AND status = 'PendingApproval' \
          AND action = 'selfActivate') \
         AND {resting}",
        placeholders(1, 18)
    );
    (sql, values)
}

/// Stores a selfActivate request, with its assignment (`announced` when it starts now) when
/// it needs no approval, and its events, unless the principal already has an activation waiting
/// for approval for the same role and scope (a request to extend may wait beside it), and only while what it `rests` on holds; returns
/// whether it did. All or nothing: on
/// PostgreSQL one statement (data-modifying CTEs), which spares the service's hottest path
/// the BEGIN and COMMIT round trips; on SQLite, whose CTEs cannot write, one transaction.
pub async fn insert_activation(
    db: &Db,
    r: &RequestRow,
    rests: RestsOn<'_>,
    assignment: Option<(&AssignmentRow, bool)>,
    events: OutboxRows,
    now: i64,
) -> Result<bool, DbErr> {
    let refused = |err: DbErr| {
        if db::is_unique_violation(&err) {
            Ok(false)
        } else {
            Err(err)
        }
    };
    insert_activation_once(db, r, rests, assignment, events, now)
        .await
        .or_else(refused)
}

/// [`insert_activation`]'s statement; the unique indexes of migration m0005 refuse a second
/// live or waiting activation (a unique violation, which the caller reads as "refused").
pub(super) async fn insert_activation_once(
    db: &Db,
    r: &RequestRow,
    rests: RestsOn<'_>,
    assignment: Option<(&AssignmentRow, bool)>,
    events: OutboxRows,
    now: i64,
) -> Result<bool, DbErr> {
    let (request_sql, mut values) = request_unless_pending(db.get_database_backend(), r, rests, now);
    if db.get_database_backend() != DbBackend::Postgres {
        let txn = db.begin().await?;
        if db::exec(&txn, &request_sql, values).await? != 1 {
            return Ok(false);
        }
        if let Some((a, announced)) = assignment {
            insert_assignment(&txn, a, announced, now).await?;
        }
        events.insert(&txn).await?;
        txn.commit().await?;
        return Ok(true);
    }
    let mut sql = format!("WITH r AS ({request_sql} RETURNING id)");
    if let Some((a, announced)) = assignment {
        let first = values.len() + 1;
        sql += &format!(
            ", a AS ({ASSIGNMENT_INSERT} SELECT {} FROM r)",
            placeholders(first, ASSIGNMENT_VALUES)
        );
        values.extend(assignment_values(a, announced, now));
    }
    sql += &format!(
        ", o AS ({OUTBOX_INSERT} SELECT * FROM (VALUES {}) AS v WHERE EXISTS (SELECT 1 FROM r)) SELECT id FROM r",
        events.placeholders(values.len() + 1)
    );
    values.extend(events.values);
    Ok(!db::query(db, &sql, values).await?.is_empty())
}

/// Moves the end request `request_id` shows to `end_at`, when that is earlier (what the
/// requester of a shortened activation reads matches what CheckAccess answers).
pub async fn shorten_request<C: ConnectionTrait>(c: &C, request_id: &str, end_at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE requests SET end_at = $1 WHERE id = $2 AND (end_at IS NULL OR end_at > $3)",
        vec![end_at.into(), request_id.into(), end_at.into()],
    )
    .await
    .map(drop)
}

pub async fn find_request<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<RequestRow>, DbErr> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1");
    db::row(c, &sql, vec![id.into()], RequestRow::from_row).await
}

/// Moves a request from `from` to `to` (with its schedule and assignment once known);
/// returns whether it was still in `from`.
pub async fn transition_request<C: ConnectionTrait>(
    c: &C,
    r: &RequestRow,
    from: RequestStatus,
    now: i64,
) -> Result<bool, DbErr> {
    let n = db::exec(
        c,
        "UPDATE requests SET status = $1, start_at = $2, end_at = $3, assignment_id = $4, updated_at = $5, outcome_reason = $8 WHERE id = $6 AND status = $7",
        vec![
            r.status.as_str().into(),
            r.start_at.into(),
            r.end_at.into(),
            r.assignment_id.clone().into(),
            now.into(),
            r.id.clone().into(),
            from.as_str().into(),
            r.outcome_reason.clone().into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// Requests matching the filters, newest last, after `after_id` (ids are time-ordered).
pub async fn list_requests<C: ConnectionTrait>(
    c: &C,
    principal_id: Option<&str>,
    role_id: Option<&str>,
    status: Option<RequestStatus>,
    after_id: &str,
    limit: u64,
) -> Result<Vec<RequestRow>, DbErr> {
    let mut sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id > $1");
    let mut values: Vec<sea_orm::Value> = vec![after_id.into()];
    let status = status.map(RequestStatus::as_str);
    for (column, value) in [("principal_id", principal_id), ("role_id", role_id), ("status", status)] {
        if let Some(v) = value {
            values.push(v.into());
            sql.push_str(&format!(" AND {column} = ${}", values.len()));
        }
    }
    sql.push_str(&format!(" ORDER BY id LIMIT {limit}"));
    db::rows(c, &sql, values, RequestRow::from_row).await
}

/// The principal's activation requests waiting for approval.
pub async fn pending_activations<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<Vec<RequestRow>, DbErr> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE status = 'PendingApproval' AND action = 'selfActivate' \
         AND principal_id = $1 ORDER BY id"
    );
    db::rows(c, &sql, vec![principal_id.into()], RequestRow::from_row).await
}

/// Every request of `principal_id` waiting for approval, whatever it asks.
pub async fn pending_requests_of<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<Vec<RequestRow>, DbErr> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE status = 'PendingApproval' AND principal_id = $1 ORDER BY id"
    );
    db::rows(c, &sql, vec![principal_id.into()], RequestRow::from_row).await
}

/// The requests to extend assignment `assignment_id` waiting for approval.
pub async fn pending_extensions_of<C: ConnectionTrait>(c: &C, assignment_id: &str) -> Result<Vec<RequestRow>, DbErr> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE status = 'PendingApproval' AND action <> 'selfActivate' \
         AND assignment_id = $1 ORDER BY id"
    );
    db::rows(c, &sql, vec![assignment_id.into()], RequestRow::from_row).await
}

/// The requests waiting for approval at exactly `scope` (a deleted group's).
pub async fn pending_requests_at<C: ConnectionTrait>(c: &C, scope: &str) -> Result<Vec<RequestRow>, DbErr> {
    let sql =
        format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE status = 'PendingApproval' AND scope = $1 ORDER BY id");
    db::rows(c, &sql, vec![scope.into()], RequestRow::from_row).await
}
