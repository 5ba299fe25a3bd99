//! The assignment database: migrations (with the built-in role definitions), and queries.

use sea_orm::{ConnectionTrait, DbErr, QueryResult};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use pim_runtime::db::{self, col};
use pim_runtime::events::{SqlMigration, backbone_migration};

use crate::roles::BUILT_IN_ROLES;

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
                    assignment_id TEXT
                );
                CREATE INDEX requests_principal ON requests (principal_id, created_at);
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
                    request_id TEXT NOT NULL,
                    created_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    removed_at BIGINT
                );
                CREATE INDEX assignments_principal ON assignments (principal_id, status);
                CREATE INDEX assignments_role ON assignments (role_id, status)"
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
        ]
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
    db::query(
        c,
        "SELECT id, name, description, permissions, built_in, privileged FROM role_definitions ORDER BY name",
        vec![],
    )
    .await?
    .iter()
    .map(|r| {
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
    })
    .collect()
}

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
    pub request_id: String,
    pub created_by: String,
}

const ASSIGNMENT_COLUMNS: &str =
    "id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, request_id, created_by";

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
            request_id: col(r, "request_id")?,
            created_by: col(r, "created_by")?,
        })
    }
}

pub async fn insert_assignment<C: ConnectionTrait>(c: &C, a: &AssignmentRow, now: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO assignments (id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, status, request_id, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10, $11, $12)",
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
            a.request_id.clone().into(),
            a.created_by.clone().into(),
            now.into(),
        ],
    )
    .await
    .map(drop)
}

/// Assignments in force at `now` (not removed, started, not ended) matching the filters.
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
    db::query(c, &sql, values)
        .await?
        .iter()
        .map(AssignmentRow::from_row)
        .collect()
}

#[derive(Clone, Debug)]
pub struct RequestRow {
    pub id: String,
    pub action: String,
    pub kind: String,
    pub principal_id: String,
    pub role_id: String,
    pub scope: String,
    pub status: String,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub justification: String,
    pub ticket_system: String,
    pub ticket_number: String,
    pub requested_by: String,
    pub created_at: i64,
    pub assignment_id: Option<String>,
}

pub async fn insert_request<C: ConnectionTrait>(c: &C, r: &RequestRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO requests (id, action, kind, principal_id, role_id, scope, status, start_at, end_at, justification, ticket_system, ticket_number, requested_by, created_at, assignment_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        vec![
            r.id.clone().into(),
            r.action.clone().into(),
            r.kind.clone().into(),
            r.principal_id.clone().into(),
            r.role_id.clone().into(),
            r.scope.clone().into(),
            r.status.clone().into(),
            r.start_at.into(),
            r.end_at.into(),
            r.justification.clone().into(),
            r.ticket_system.clone().into(),
            r.ticket_number.clone().into(),
            r.requested_by.clone().into(),
            r.created_at.into(),
            r.assignment_id.clone().into(),
        ],
    )
    .await
    .map(drop)
}

pub async fn find_request<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<RequestRow>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT id, action, kind, principal_id, role_id, scope, status, start_at, end_at, justification, ticket_system, ticket_number, requested_by, created_at, assignment_id FROM requests WHERE id = $1",
        vec![id.into()],
    )
    .await?;
    row.map(|r| {
        Ok(RequestRow {
            id: col(&r, "id")?,
            action: col(&r, "action")?,
            kind: col(&r, "kind")?,
            principal_id: col(&r, "principal_id")?,
            role_id: col(&r, "role_id")?,
            scope: col(&r, "scope")?,
            status: col(&r, "status")?,
            start_at: col(&r, "start_at")?,
            end_at: col(&r, "end_at")?,
            justification: col(&r, "justification")?,
            ticket_system: col(&r, "ticket_system")?,
            ticket_number: col(&r, "ticket_number")?,
            requested_by: col(&r, "requested_by")?,
            created_at: col(&r, "created_at")?,
            assignment_id: col(&r, "assignment_id")?,
        })
    })
    .transpose()
}
