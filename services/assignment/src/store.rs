//! The assignment database: migrations (with the built-in role definitions), and queries.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, TransactionTrait, Value};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use pim_runtime::db::{self, Db, Dialect, col, placeholders};
use pim_runtime::events::{
    OUTBOX_INSERT, OutboxRows, SqlMigration, backbone_indexes_migration, backbone_migration, backbone_replay_migration,
};

use crate::domain::RequestStatus;
use crate::roles::{BUILT_IN_ROLES, GROUP_ACCESS_ROLES};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            backbone_migration(),
            SqlMigration::boxed("m0001_assignments", |_| {
                "CREATE TABLE role_definitions (
                    id TEXT PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    description TEXT NOT NULL,
                    permissions TEXT NOT NULL,
                    built_in BOOLEAN NOT NULL,
                    privileged BOOLEAN NOT NULL,
                    created_at BIGINT NOT NULL
                );
                CREATE TABLE requests (
                    id TEXT PRIMARY KEY,
                    action TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL REFERENCES role_definitions (id),
                    scope TEXT NOT NULL,
                    status TEXT NOT NULL,
                    start_at BIGINT NOT NULL,
                    end_at BIGINT,
                    justification TEXT NOT NULL,
                    ticket_system TEXT NOT NULL,
                    ticket_number TEXT NOT NULL,
                    requested_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    updated_at BIGINT NOT NULL,
                    assignment_id TEXT,
                    duration_ms BIGINT,
                    policy TEXT NOT NULL
                );
                CREATE INDEX requests_principal ON requests (principal_id, created_at);
                CREATE INDEX requests_status ON requests (status, created_at);
                                                CREATE TABLE group_memberships (
                    group_id TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    PRIMARY KEY (group_id, principal_id)
                );
                CREATE INDEX group_memberships_principal ON group_memberships (principal_id);
                CREATE TABLE observed_grants (
                    system TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    managed BOOLEAN NOT NULL,
                    first_seen BIGINT NOT NULL,
                                        last_seen BIGINT NOT NULL,
                    report_id TEXT NOT NULL,
                    PRIMARY KEY (system, principal_id, role_id, scope)
                );
                CREATE TABLE role_policies (
                    role_id TEXT NOT NULL REFERENCES role_definitions (id),
                    scope TEXT NOT NULL,
                    policy TEXT NOT NULL,
                    updated_at BIGINT NOT NULL,
                    updated_by TEXT NOT NULL,
                    PRIMARY KEY (role_id, scope)
                );
                CREATE TABLE assignments (
                    id TEXT PRIMARY KEY,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    principal_kind TEXT NOT NULL,
                    principal_name TEXT NOT NULL,
                    role_id TEXT NOT NULL REFERENCES role_definitions (id),
                    scope TEXT NOT NULL,
                    start_at BIGINT NOT NULL,
                    end_at BIGINT,
                    status TEXT NOT NULL,
                    origin TEXT NOT NULL,
                    announced BOOLEAN NOT NULL,
                    request_id TEXT NOT NULL,
                    created_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    ended_at BIGINT
                );
                CREATE INDEX assignments_principal ON assignments (principal_id, status);
                CREATE INDEX assignments_role ON assignments (role_id, status);
                CREATE INDEX assignments_ends ON assignments (status, end_at);
                CREATE INDEX assignments_starts ON assignments (status, announced, start_at)"
                    .to_owned()
            }),
            SqlMigration::boxed("m0002_built_in_roles", |_| {
                BUILT_IN_ROLES
                    .iter()
                    .map(|r| {
                        format!(
                            "INSERT INTO role_definitions (id, name, description, permissions, built_in, privileged, created_at) \
                             VALUES ('{}', '{}', '{}', '{}', TRUE, {}, 0)",
                            r.id,
                            r.name,
                            r.description.replace('\'', "''"),
                            r.permissions.join(" "),
                            if r.privileged { "TRUE" } else { "FALSE" },
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(";\n")
            }),
            SqlMigration::boxed("m0003_assignments_principal_role", |_| {
                // Activation looks up one principal's assignments of one role: an index on
                // both keeps that a point lookup even when thousands share the role.
                "CREATE INDEX assignments_principal_role ON assignments (principal_id, role_id, status);
                 DROP INDEX assignments_principal"
                    .to_owned()
            }),
            backbone_indexes_migration(),
            SqlMigration::boxed("m0004_assignment_versions", |_| {
                // Which of two states of an assignment is newer, for the access indexes that
                // learn them both from this replica's commits and from the stream.
                "ALTER TABLE assignments ADD COLUMN version BIGINT NOT NULL DEFAULT 1".to_owned()
            }),
            backbone_replay_migration(),
            SqlMigration::boxed("m0005_one_activation", |d| {
                // At most one live activation, and one activation waiting for approval, per
                // principal, role and scope: the database refuses the second, however the
                // requests race. Duplicates a race left before are ended first (the oldest
                // stays), so the indexes can be made.
                let now = sql_now_ms(d.backend());
                format!(
                    "UPDATE assignments SET status = 'deactivated', ended_at = {now}, end_at = {now}
                     WHERE status = 'active' AND origin = 'activation' AND id NOT IN
                       (SELECT MIN(id) FROM assignments WHERE status = 'active' AND origin = 'activation'
                        GROUP BY principal_id, role_id, scope);
                     UPDATE requests SET status = 'Canceled', updated_at = {now}
                     WHERE status = 'PendingApproval' AND action = 'selfActivate' AND id NOT IN
                       (SELECT MIN(id) FROM requests WHERE status = 'PendingApproval' AND action = 'selfActivate'
                        GROUP BY principal_id, role_id, scope);
                     CREATE UNIQUE INDEX assignments_one_activation ON assignments (principal_id, role_id, scope)
                       WHERE status = 'active' AND origin = 'activation';
                     CREATE UNIQUE INDEX requests_one_pending_activation ON requests (principal_id, role_id, scope)
                       WHERE status = 'PendingApproval' AND action = 'selfActivate'"
                )
            }),
            SqlMigration::boxed("m0006_one_admin_assignment", |d| {
                // At most one administrator's assignment of each kind (eligible, active) per
                // principal, role and scope in force or scheduled: the database refuses the
                // second, however the calls race. Duplicates made before are removed first;
                // the one kept is the one that grants most: in force before scheduled,
                // permanent before time-bound, the latest end first (so a permanent Global
                // Administrator is never the one removed). No events are written for the
                // removed ones (a migration cannot sign them): a known limit.
                let now = sql_now_ms(d.backend());
                format!(
                    "UPDATE assignments SET status = 'removed', ended_at = {now}, end_at = {now}
                     WHERE status = 'active' AND origin = 'admin' AND id NOT IN
                       (SELECT id FROM
                          (SELECT id, ROW_NUMBER() OVER (
                             PARTITION BY kind, principal_id, role_id, scope
                             ORDER BY CASE WHEN start_at <= {now} THEN 0 ELSE 1 END,
                                      CASE WHEN end_at IS NULL THEN 0 ELSE 1 END,
                                      end_at DESC, id) AS n
                           FROM assignments WHERE status = 'active' AND origin = 'admin') AS ranked
                        WHERE n = 1);
                     CREATE UNIQUE INDEX assignments_one_admin ON assignments (kind, principal_id, role_id, scope)
                       WHERE status = 'active' AND origin = 'admin'"
                )
            }),
            SqlMigration::boxed("m0007_one_pending_request", |d| {
                // One request waiting for approval per principal, role and scope, whatever it
                // asks (activate, extend, renew), as m0005 holds it for activations: later
                // duplicates are canceled first.
                let now = sql_now_ms(d.backend());
                format!(
                    "UPDATE requests SET status = 'Canceled', updated_at = {now}
                     WHERE status = 'PendingApproval' AND id NOT IN
                       (SELECT MIN(id) FROM requests WHERE status = 'PendingApproval'
                        GROUP BY principal_id, role_id, scope);
                     DROP INDEX requests_one_pending_activation;
                     CREATE UNIQUE INDEX requests_one_pending ON requests (principal_id, role_id, scope)
                       WHERE status = 'PendingApproval'"
                )
            }),
            SqlMigration::boxed("m0008_request_outcome_reason", |_| {
                // Why a request ended as it did, for its requester (an approver's words).
                "ALTER TABLE requests ADD COLUMN outcome_reason TEXT NOT NULL DEFAULT ''".to_owned()
            }),
            SqlMigration::boxed("m0009_custom_roles", |_| {
                // A deleted custom role is kept (requests and ended assignments name it) but
                // leaves the catalogue and frees its name; names are unique whatever their case.
                "ALTER TABLE role_definitions ADD COLUMN deleted_at BIGINT;
                 CREATE UNIQUE INDEX role_definitions_name_ci ON role_definitions (lower(name))"
                    .to_owned()
            }),
            SqlMigration::boxed("m0010_group_access_roles", |_| group_access_roles_sql()),
            // Again, for a database whose m0010 (as first written) left the roles out because a
            // custom role had taken one of the names.
            SqlMigration::boxed("m0011_group_access_roles_reclaimed", |_| group_access_roles_sql()),
        ]
    }
}

/// PIM for Groups: membership and ownership of a group, governed like roles, are the
/// built-in roles Group Member and Group Owner. A custom role that took one of their names
/// gives it up (renamed "… (custom)"; its id, assignments and policies stay). Idempotent.
fn group_access_roles_sql() -> String {
    GROUP_ACCESS_ROLES
        .iter()
        .map(|r| {
            format!(
                "UPDATE role_definitions SET name = name || ' (custom)' WHERE lower(name) = lower('{name}') AND id <> '{id}';
                 INSERT INTO role_definitions (id, name, description, permissions, built_in, privileged, created_at) \
                 SELECT '{id}', '{name}', '{description}', '', TRUE, FALSE, 0 \
                 WHERE NOT EXISTS (SELECT 1 FROM role_definitions WHERE id = '{id}')",
                id = r.id,
                name = r.name,
                description = r.description.replace('\'', "''"),
            )
        })
        .collect::<Vec<_>>()
        .join(";\n")
}

/// SQL for the current time in milliseconds since the epoch, for migrations.
fn sql_now_ms(backend: DbBackend) -> &'static str {
    if backend == DbBackend::Postgres {
        "CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)"
    } else {
        "CAST(strftime('%s', 'now') AS INTEGER) * 1000"
    }
}

#[derive(Clone, Debug)]
pub struct RoleRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub built_in: bool,
    pub privileged: bool,
}

pub async fn roles<C: ConnectionTrait>(c: &C) -> Result<Vec<RoleRow>, DbErr> {
    roles_where(c, "deleted_at IS NULL", vec![]).await
}

fn role_from_row(r: &sea_orm::QueryResult) -> Result<RoleRow, DbErr> {
    Ok(RoleRow {
        id: col(r, "id")?,
        name: col(r, "name")?,
        description: col(r, "description")?,
        permissions: col::<String>(r, "permissions")?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        built_in: col(r, "built_in")?,
        privileged: col(r, "privileged")?,
    })
}

async fn roles_where<C: ConnectionTrait>(c: &C, condition: &str, values: Vec<Value>) -> Result<Vec<RoleRow>, DbErr> {
    db::rows(
        c,
        &format!(
            "SELECT id, name, description, permissions, built_in, privileged FROM role_definitions \
             WHERE {condition} ORDER BY name"
        ),
        values,
        role_from_row,
    )
    .await
}

/// Assignment status: `active` while it holds or is scheduled to (CheckAccess also compares
/// times), then `expired`, `removed` (by an administrator) or `deactivated` (by its holder).
#[derive(Clone, Debug)]
pub struct AssignmentRow {
    pub id: String,
    pub kind: String,
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

const ASSIGNMENT_COLUMNS: &str = "id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, status, origin, request_id, created_by, version";

impl AssignmentRow {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            kind: col(r, "kind")?,
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
const ASSIGNMENT_INSERT: &str = "INSERT INTO assignments (id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, status, origin, announced, request_id, created_by, created_at)";

/// An assignment's values in [`ASSIGNMENT_INSERT`]'s order (15 of them).
fn assignment_values(a: &AssignmentRow, announced: bool, now: i64) -> Vec<Value> {
    vec![
        a.id.clone().into(),
        a.kind.clone().into(),
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
    ]
}

pub async fn insert_assignment<C: ConnectionTrait>(
    c: &C,
    a: &AssignmentRow,
    announced: bool,
    now: i64,
) -> Result<(), DbErr> {
    let sql = format!("{ASSIGNMENT_INSERT} VALUES ({})", placeholders(1, 15));
    db::exec(c, &sql, assignment_values(a, announced, now)).await.map(drop)
}

/// Assignments in force at `now` (status active, started, not ended) matching the filters.
pub async fn current_assignments<C: ConnectionTrait>(
    c: &C,
    kind: &str,
    principal_id: Option<&str>,
    role_id: Option<&str>,
    now: i64,
) -> Result<Vec<AssignmentRow>, DbErr> {
    let mut sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND kind = $1 AND start_at <= $2 AND (end_at IS NULL OR end_at > $3)"
    );
    let mut values = vec![kind.into(), now.into(), now.into()];
    if let Some(p) = principal_id {
        values.push(p.into());
        sql.push_str(&format!(" AND principal_id = ${}", values.len()));
    }
    if let Some(r) = role_id {
        values.push(r.into());
        sql.push_str(&format!(" AND role_id = ${}", values.len()));
    }
    sql.push_str(" ORDER BY created_at");
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

/// One assignment by id.
pub async fn find_assignment<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<AssignmentRow>, DbErr> {
    let sql = format!("SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE id = $1");
    db::row(c, &sql, vec![id.into()], AssignmentRow::from_row).await
}

/// The assignments with these ids (those that exist).
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
    kind: &str,
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
            kind.into(),
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
/// assignments at `/`, so two removals cannot both think another one remains.
pub async fn lock_permanent_global_admins<C: ConnectionTrait>(
    c: &C,
    role_id: &str,
    now: i64,
) -> Result<Vec<AssignmentRow>, DbErr> {
    let lock = if c.backend() == sea_orm::DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'active' AND kind = 'active' AND role_id = $1 AND scope = '/' AND end_at IS NULL AND start_at <= $2 ORDER BY id{lock}"
    );
    db::rows(c, &sql, vec![role_id.into(), now.into()], AssignmentRow::from_row).await
}

/// Moves an active assignment's end if it is still at `version` (compare and set); returns its
/// new version, none if it ended or changed since it was read.
pub async fn set_assignment_end<C: ConnectionTrait>(
    c: &C,
    id: &str,
    version: i64,
    end_at: Option<i64>,
) -> Result<Option<i64>, DbErr> {
    db::query_one(
        c,
        "UPDATE assignments SET end_at = $1, version = version + 1 WHERE id = $2 AND version = $3 AND status = 'active' RETURNING version",
        vec![end_at.into(), id.into(), version.into()],
    )
    .await?
    .map(|r| col(&r, "version"))
    .transpose()
}

/// Ends an assignment that is still active; returns whether it did (false: someone else ended it first).
pub async fn end_assignment<C: ConnectionTrait>(c: &C, id: &str, status: &str, at: i64) -> Result<bool, DbErr> {
    let n = db::exec(
        c,
        "UPDATE assignments SET status = $1, ended_at = $2, end_at = CASE WHEN end_at IS NULL OR end_at > $3 THEN $4 ELSE end_at END WHERE id = $5 AND status = 'active'",
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

#[derive(Clone, Debug)]
pub struct RequestRow {
    pub id: String,
    pub action: String,
    pub kind: String,
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

const REQUEST_COLUMNS: &str = "id, action, kind, principal_id, role_id, scope, status, start_at, end_at, justification, ticket_system, ticket_number, requested_by, created_at, assignment_id, duration_ms, policy, outcome_reason";

impl RequestRow {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            action: col(r, "action")?,
            kind: col(r, "kind")?,
            principal_id: col(r, "principal_id")?,
            role_id: col(r, "role_id")?,
            scope: col(r, "scope")?,
            status: {
                let status: String = col(r, "status")?;
                RequestStatus::parse(&status)
                    .ok_or_else(|| DbErr::Type(format!("unknown request status {status:?}")))?
            },
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

/// The selfActivate request of `role_id` at `scope` by `principal_id` waiting for approval, if any.
pub async fn pending_request<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    role_id: &str,
    scope: &str,
) -> Result<Option<RequestRow>, DbErr> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE status = 'PendingApproval' \
         AND principal_id = $1 AND role_id = $2 AND scope = $3"
    );
    db::row(
        c,
        &sql,
        vec![principal_id.into(), role_id.into(), scope.into()],
        RequestRow::from_row,
    )
    .await
}

/// The principal's most recently expired assignment an administrator made (not one that was
/// removed: a removal is not undone by asking).
pub async fn last_expired_assignment<C: ConnectionTrait>(
    c: &C,
    kind: &str,
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
            kind.into(),
            principal_id.into(),
            role_id.into(),
            scope.into(),
            now.into(),
        ],
        AssignmentRow::from_row,
    )
    .await
}

const REQUEST_INSERT: &str = "INSERT INTO requests (id, action, kind, principal_id, role_id, scope, status, start_at, end_at, justification, ticket_system, ticket_number, requested_by, created_at, updated_at, assignment_id, duration_ms, policy)";

/// A request's values in [`REQUEST_INSERT`]'s order ($1 to $18).
fn request_values(r: &RequestRow) -> Vec<Value> {
    vec![
        r.id.clone().into(),
        r.action.clone().into(),
        r.kind.clone().into(),
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

/// Inserts a selfActivate request unless the principal already has one waiting for approval
/// for the same role and scope (checked in the same statement): `$1`–`$21`.
fn request_unless_pending(r: &RequestRow) -> (String, Vec<Value>) {
    let mut values = request_values(r);
    values.extend([
        r.principal_id.clone().into(),
        r.role_id.clone().into(),
        r.scope.clone().into(),
    ]);
    let sql = format!(
        "{REQUEST_INSERT} SELECT {} WHERE NOT EXISTS \
         (SELECT 1 FROM requests WHERE principal_id = $19 AND role_id = $20 AND scope = $21 AND status = 'PendingApproval')",
        placeholders(1, 18)
    );
    (sql, values)
}

/// Stores a selfActivate request, with its assignment (`announced` when it starts now) when
/// it needs no approval, and its events, unless the principal already has one waiting for
/// approval for the same role and scope; returns whether it did. All or nothing: on
/// PostgreSQL one statement (data-modifying CTEs), which spares the service's hottest path
/// the BEGIN and COMMIT round trips; on SQLite, whose CTEs cannot write, one transaction.
pub async fn insert_activation(
    db: &Db,
    r: &RequestRow,
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
    insert_activation_once(db, r, assignment, events, now)
        .await
        .or_else(refused)
}

/// [`insert_activation`]'s statement; the unique indexes of migration m0005 refuse a second
/// live or waiting activation (a unique violation, which the caller reads as "refused").
async fn insert_activation_once(
    db: &Db,
    r: &RequestRow,
    assignment: Option<(&AssignmentRow, bool)>,
    events: OutboxRows,
    now: i64,
) -> Result<bool, DbErr> {
    let (request_sql, mut values) = request_unless_pending(r);
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
        sql += &format!(", a AS ({ASSIGNMENT_INSERT} SELECT {} FROM r)", placeholders(first, 15));
        values.extend(assignment_values(a, announced, now));
    }
    sql += &format!(
        ", o AS ({OUTBOX_INSERT} SELECT * FROM (VALUES {}) AS v WHERE EXISTS (SELECT 1 FROM r)) SELECT id FROM r",
        events.placeholders(values.len() + 1)
    );
    values.extend(events.values);
    Ok(!db::query(db, &sql, values).await?.is_empty())
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

/// Sets the status of the request that created assignment `assignment_id`, if it is `from`.
pub async fn set_request_status_for_assignment<C: ConnectionTrait>(
    c: &C,
    assignment_id: &str,
    from: RequestStatus,
    to: RequestStatus,
    now: i64,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE requests SET status = $1, updated_at = $2 WHERE assignment_id = $3 AND status = $4",
        vec![
            to.as_str().into(),
            now.into(),
            assignment_id.into(),
            from.as_str().into(),
        ],
    )
    .await
    .map(drop)
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

/// Stores a new custom role; false when its name (in any case) is taken.
pub async fn insert_role<C: ConnectionTrait>(c: &C, r: &RoleRow, now: i64) -> Result<bool, DbErr> {
    db::exec(
        c,
        "INSERT INTO role_definitions (id, name, description, permissions, built_in, privileged, created_at) \
         VALUES ($1, $2, $3, $4, FALSE, $5, $6) ON CONFLICT DO NOTHING",
        vec![
            r.id.clone().into(),
            r.name.clone().into(),
            r.description.clone().into(),
            r.permissions.join(" ").into(),
            r.privileged.into(),
            now.into(),
        ],
    )
    .await
    .map(|n| n == 1)
}

/// Changes a custom role (never a built-in or deleted one) only if it is still as `read`:
/// a concurrent change is never overwritten unseen. Whether it was changed.
pub async fn update_role<C: ConnectionTrait>(c: &C, read: &RoleRow, r: &RoleRow) -> Result<bool, DbErr> {
    db::exec(
        c,
        "UPDATE role_definitions SET description = $2, permissions = $3, privileged = $4 \
         WHERE id = $1 AND built_in = FALSE AND deleted_at IS NULL \
           AND description = $5 AND permissions = $6 AND privileged = $7",
        vec![
            r.id.clone().into(),
            r.description.clone().into(),
            r.permissions.join(" ").into(),
            r.privileged.into(),
            read.description.clone().into(),
            read.permissions.join(" ").into(),
            read.privileged.into(),
        ],
    )
    .await
    .map(|n| n == 1)
}

/// A role as stored now, unless deleted.
pub async fn role<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<RoleRow>, DbErr> {
    Ok(roles_where(c, "id = $1 AND deleted_at IS NULL", vec![id.into()])
        .await?
        .pop())
}

/// Deletes a custom role that no assignment in force or scheduled, and no request waiting
/// for approval, names (one statement: the count and the delete see the same rows). The row
/// stays for history, renamed to free the name. Whether it went.
pub async fn delete_role<C: ConnectionTrait>(c: &C, id: &str, now: i64) -> Result<bool, DbErr> {
    db::exec(
        c,
        "UPDATE role_definitions SET deleted_at = $2, name = name || ' (deleted ' || id || ')' \
         WHERE id = $1 AND built_in = FALSE AND deleted_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM assignments WHERE role_id = $1 AND status = 'active') \
           AND NOT EXISTS (SELECT 1 FROM requests WHERE role_id = $1 AND status = 'PendingApproval')",
        vec![id.into(), now.into()],
    )
    .await
    .map(|n| n == 1)
}

/// How many assignments in force or scheduled, and requests waiting, name the role.
pub async fn role_uses<C: ConnectionTrait>(c: &C, id: &str) -> Result<(i64, i64), DbErr> {
    let row = db::query_one(
        c,
        "SELECT (SELECT COUNT(*) FROM assignments WHERE role_id = $1 AND status = 'active') AS assigned, \
                (SELECT COUNT(*) FROM requests WHERE role_id = $1 AND status = 'PendingApproval') AS waiting",
        vec![id.into()],
    )
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("counts".into()))?;
    Ok((col(&row, "assigned")?, col(&row, "waiting")?))
}

/// The role's policies set at any of `scopes`: (scope, policy JSON).
pub async fn policies_at<C: ConnectionTrait>(
    c: &C,
    role_id: &str,
    scopes: &[String],
) -> Result<Vec<(String, String)>, DbErr> {
    let mut values: Vec<Value> = vec![role_id.into()];
    values.extend(scopes.iter().map(|s| s.clone().into()));
    db::query(
        c,
        &format!(
            "SELECT scope, policy FROM role_policies WHERE role_id = $1 AND scope IN ({})",
            placeholders(2, scopes.len())
        ),
        values,
    )
    .await?
    .iter()
    .map(|r| Ok((col(r, "scope")?, col(r, "policy")?)))
    .collect()
}

/// Every stored policy of a role: (scope, policy JSON).
pub async fn policies<C: ConnectionTrait>(c: &C, role_id: &str) -> Result<Vec<(String, String)>, DbErr> {
    db::query(
        c,
        "SELECT scope, policy FROM role_policies WHERE role_id = $1 ORDER BY scope",
        vec![role_id.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((col(r, "scope")?, col(r, "policy")?)))
    .collect()
}

/// Stores `policy` at (role, scope) only if what is stored there is still `read` (None: no
/// policy set at that scope): one conditional statement, so a concurrent update is never
/// overwritten unseen. Whether it was stored.
pub async fn replace_policy<C: ConnectionTrait>(
    c: &C,
    role_id: &str,
    scope: &str,
    read: Option<&str>,
    policy: &str,
    by: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let written = match read {
        Some(read) => {
            db::exec(
                c,
                "UPDATE role_policies SET policy = $4, updated_at = $5, updated_by = $6 \
                 WHERE role_id = $1 AND scope = $2 AND policy = $3",
                vec![
                    role_id.into(),
                    scope.into(),
                    read.into(),
                    policy.into(),
                    now.into(),
                    by.into(),
                ],
            )
            .await?
        }
        None => db::exec(
            c,
            "INSERT INTO role_policies (role_id, scope, policy, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (role_id, scope) DO NOTHING",
            vec![role_id.into(), scope.into(), policy.into(), now.into(), by.into()],
        )
        .await?,
    };
    Ok(written == 1)
}

/// A grant a target system reported, and whether PIM made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedGrant {
    pub system: String,
    pub principal_id: String,
    pub role_id: String,
    pub scope: String,
    pub managed: bool,
}

/// Records a reported grant; returns whether it was already known as unmanaged.
pub async fn upsert_observed<C: ConnectionTrait>(
    c: &C,
    g: &ObservedGrant,
    report_id: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let known = db::query_one(
        c,
        "SELECT managed FROM observed_grants WHERE system = $1 AND principal_id = $2 AND role_id = $3 AND scope = $4",
        vec![
            g.system.clone().into(),
            g.principal_id.clone().into(),
            g.role_id.clone().into(),
            g.scope.clone().into(),
        ],
    )
    .await?
    .map(|r| col::<bool>(&r, "managed"))
    .transpose()?;
    db::exec(
        c,
                "INSERT INTO observed_grants (system, principal_id, role_id, scope, managed, first_seen, last_seen, report_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (system, principal_id, role_id, scope) DO UPDATE SET managed = excluded.managed, last_seen = excluded.last_seen, report_id = excluded.report_id",
        vec![
            g.system.clone().into(),
            g.principal_id.clone().into(),
            g.role_id.clone().into(),
            g.scope.clone().into(),
            g.managed.into(),
            now.into(),
            now.into(),
            report_id.into(),
        ],
    )
    .await?;
    Ok(known == Some(false))
}

/// Forgets a system's grants that its latest report (`report_id`) no longer lists.
pub async fn forget_unreported<C: ConnectionTrait>(c: &C, system: &str, report_id: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM observed_grants WHERE system = $1 AND report_id <> $2",
        vec![system.into(), report_id.into()],
    )
    .await
    .map(drop)
}

pub async fn unmanaged_grants<C: ConnectionTrait>(c: &C) -> Result<Vec<ObservedGrant>, DbErr> {
    db::query(c, "SELECT system, principal_id, role_id, scope, managed FROM observed_grants WHERE managed = FALSE ORDER BY system, principal_id, role_id, scope", vec![])
        .await?
        .iter()
        .map(|r| {
            Ok(ObservedGrant {
                system: col(r, "system")?,
                principal_id: col(r, "principal_id")?,
                role_id: col(r, "role_id")?,
                scope: col(r, "scope")?,
                managed: col(r, "managed")?,
            })
        })
        .collect()
}

/// The groups `principal_id` is a member of at `now` as this database holds it: the
/// role-assignable groups identity has them in (end `None`), and the groups of their active
/// `group_member_role` assignments (ending with them). A group may come twice.
pub async fn memberships_of<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    group_member_role: &str,
    now: i64,
) -> Result<Vec<(String, Option<i64>)>, DbErr> {
    db::query(
        c,
        "SELECT group_id, CAST(NULL AS BIGINT) AS member_until FROM group_memberships WHERE principal_id = $1 \
         UNION ALL \
         SELECT substr(scope, 9), end_at FROM assignments WHERE principal_id = $2 AND role_id = $3 \
         AND kind = 'active' AND status = 'active' AND scope LIKE '/groups/%' AND start_at <= $4 \
         AND (end_at IS NULL OR end_at > $5)",
        vec![
            principal_id.into(),
            principal_id.into(),
            group_member_role.into(),
            now.into(),
            now.into(),
        ],
    )
    .await?
    .iter()
    .map(|r| Ok((col(r, "group_id")?, col(r, "member_until")?)))
    .collect()
}

/// The members of `group_id` at `now`: identity's, and the holders of an active
/// `group_member_role` assignment at its `scope`.
pub async fn members_of<C: ConnectionTrait>(
    c: &C,
    group_id: &str,
    scope: &str,
    group_member_role: &str,
    now: i64,
) -> Result<Vec<String>, DbErr> {
    db::query(
        c,
        "SELECT principal_id FROM group_memberships WHERE group_id = $1 \
         UNION \
         SELECT principal_id FROM assignments WHERE scope = $2 AND role_id = $3 AND kind = 'active' \
         AND status = 'active' AND start_at <= $4 AND (end_at IS NULL OR end_at > $5)",
        vec![
            group_id.into(),
            scope.into(),
            group_member_role.into(),
            now.into(),
            now.into(),
        ],
    )
    .await?
    .iter()
    .map(|r| col(r, "principal_id"))
    .collect()
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
           OR (kind = 'active' AND origin = 'activation' AND principal_id = $3))",
        placeholders(4, holders.len())
    );
    let mut values = vec![now.into(), now.into(), principal_id.into()];
    values.extend(holders.iter().map(|h| h.clone().into()));
    let rows = db::rows(c, &sql, values, AssignmentRow::from_row).await?;
    Ok(rows.into_iter().partition(|a| a.kind == "eligible"))
}

/// The principal's activation requests waiting for approval.
pub async fn pending_activations<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<Vec<RequestRow>, DbErr> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE status = 'PendingApproval' AND action = 'selfActivate' \
         AND principal_id = $1"
    );
    db::rows(c, &sql, vec![principal_id.into()], RequestRow::from_row).await
}

/// The requests waiting for approval at exactly `scope` (a deleted group's).
pub async fn pending_requests_at<C: ConnectionTrait>(c: &C, scope: &str) -> Result<Vec<RequestRow>, DbErr> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE status = 'PendingApproval' AND scope = $1");
    db::rows(c, &sql, vec![scope.into()], RequestRow::from_row).await
}

/// Every (group, member) pair of role-assignable groups, as identity's events told it.
pub async fn group_memberships<C: ConnectionTrait>(c: &C) -> Result<Vec<(String, String)>, DbErr> {
    db::query(c, "SELECT group_id, principal_id FROM group_memberships", vec![])
        .await?
        .iter()
        .map(|r| Ok((col(r, "group_id")?, col(r, "principal_id")?)))
        .collect()
}

/// Whether the projection holds `principal_id` as a member of `group_id`.
pub async fn is_group_member<C: ConnectionTrait>(c: &C, group_id: &str, principal_id: &str) -> Result<bool, DbErr> {
    Ok(db::query_one(
        c,
        "SELECT 1 AS one FROM group_memberships WHERE group_id = $1 AND principal_id = $2",
        vec![group_id.into(), principal_id.into()],
    )
    .await?
    .is_some())
}

pub async fn set_group_membership<C: ConnectionTrait>(
    c: &C,
    group_id: &str,
    principal_id: &str,
    member: bool,
) -> Result<(), DbErr> {
    let sql = if member {
        "INSERT INTO group_memberships (group_id, principal_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM group_memberships WHERE group_id = $1 AND principal_id = $2"
    };
    db::exec(c, sql, vec![group_id.into(), principal_id.into()])
        .await
        .map(drop)
}
