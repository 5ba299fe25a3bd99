//! The alerting database: rule settings, alerts (one live alert per dedup key, enforced by a
//! partial unique index), a revision counter for resumable streams, and the projections the
//! rules read (privileged assignments, activations, approvals, MFA failures, sign-ins).

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use crate::domain::{AlertStatus, Severity};
use pim_runtime::db::{self, Dialect, col, col_named};
use pim_runtime::events::{SqlMigration, backbone_migrations};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = backbone_migrations();
        migrations.extend(vec![
            SqlMigration::boxed("m0001_alerts", |_| {
                "CREATE TABLE rule_settings (
                    rule_id TEXT PRIMARY KEY,
                    enabled BOOLEAN NOT NULL,
                    severity TEXT NOT NULL,
                    settings TEXT NOT NULL,
                    updated_by TEXT NOT NULL,
                    updated_at BIGINT NOT NULL
                );
                CREATE TABLE alerts (
                    id TEXT PRIMARY KEY,
                    rule_id TEXT NOT NULL,
                    severity TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    dedup_key TEXT NOT NULL,
                    evidence TEXT NOT NULL,
                    figures TEXT NOT NULL,
                    first_seen BIGINT NOT NULL,
                    last_seen BIGINT NOT NULL,
                    count BIGINT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'dismissed', 'resolved')),
                    status_changed_by TEXT NOT NULL,
                    status_reason TEXT NOT NULL,
                    rev BIGINT NOT NULL UNIQUE
                );
                CREATE UNIQUE INDEX alerts_live ON alerts (dedup_key) WHERE status IN ('open', 'acknowledged');
                CREATE INDEX alerts_status ON alerts (status, rev);
                CREATE TABLE alert_revision (
                    id INTEGER PRIMARY KEY,
                    rev BIGINT NOT NULL
                );
                INSERT INTO alert_revision (id, rev) VALUES (1, 0);
                                CREATE TABLE privileged_assignments (
                    assignment_id TEXT PRIMARY KEY,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    end_at BIGINT,
                    since BIGINT NOT NULL
                );
                CREATE TABLE break_glass (
                    principal_id TEXT PRIMARY KEY
                );
                CREATE TABLE sign_ins (
                    principal_id TEXT PRIMARY KEY,
                    last_at BIGINT NOT NULL
                );
                CREATE INDEX privileged_assignments_role ON privileged_assignments (role_id);
                CREATE TABLE activations (
                    assignment_id TEXT PRIMARY KEY,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    at BIGINT NOT NULL,
                    event_id TEXT NOT NULL
                );
                CREATE INDEX activations_principal ON activations (principal_id, role_id, at);
                CREATE TABLE approvals_seen (
                    approval_id TEXT PRIMARY KEY,
                    created_at BIGINT NOT NULL
                );
                CREATE TABLE mfa_failures (
                    event_id TEXT PRIMARY KEY,
                    principal_id TEXT NOT NULL,
                    at BIGINT NOT NULL
                );
                CREATE INDEX mfa_failures_principal ON mfa_failures (principal_id, at)"
                    .to_owned()
            }),
            // Dead-letter entries already alerted on: every replica tails the stream.
            SqlMigration::boxed("m0002_dead_letters_seen", |_| {
                "CREATE TABLE dead_letters_seen (
                    entry_id TEXT PRIMARY KEY,
                    at BIGINT NOT NULL
                )"
                .to_owned()
            }),
            // Custom roles, as assignment announces them: which are privileged.
            SqlMigration::boxed("m0003_custom_roles", |_| {
                "CREATE TABLE custom_roles (
                    role_id TEXT PRIMARY KEY,
                    privileged BOOLEAN NOT NULL
                )"
                .to_owned()
            }),
            // The alert closed last for a dedup key (nothing new raises it again).
            SqlMigration::boxed("m0004_alerts_by_key", |_| {
                "CREATE INDEX alerts_by_key ON alerts (dedup_key, rev)".to_owned()
            }),
            // Whether a holder is a group (no administrator itself: its members are). Rows
            // from before are marked where PIM gives access to the group.
            SqlMigration::boxed("m0005_privileged_groups", |_| {
                "ALTER TABLE privileged_assignments ADD COLUMN is_group BOOLEAN NOT NULL DEFAULT FALSE;
                UPDATE privileged_assignments SET is_group = TRUE
                 WHERE '/groups/' || principal_id IN (SELECT scope FROM privileged_assignments)"
                    .to_owned()
            }),
            // Members and owners of role-assignable groups as the directory has them (added
            // there, not through PIM), each link at its latest version.
            SqlMigration::boxed("m0006_group_links", |_| {
                "CREATE TABLE group_links (
                    group_id TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    owner BOOLEAN NOT NULL,
                    present BOOLEAN NOT NULL,
                    version BIGINT NOT NULL,
                    PRIMARY KEY (group_id, principal_id, owner)
                )"
                .to_owned()
            }),
        ]);
        migrations
    }
}

/// Marks a dead-letter entry as alerted on; false when a replica did already. Marks older
/// than a day go (a replica's tail starts at the stream's end, so none reads that far back).
pub async fn first_sight_of_dead_letter<C: ConnectionTrait>(c: &C, entry_id: &str, now: i64) -> Result<bool, DbErr> {
    db::exec(
        c,
        "DELETE FROM dead_letters_seen WHERE at < $1",
        vec![(now - 86_400_000).into()],
    )
    .await?;
    let inserted = db::exec(
        c,
        "INSERT INTO dead_letters_seen (entry_id, at) VALUES ($1, $2) ON CONFLICT (entry_id) DO NOTHING",
        vec![entry_id.into(), now.into()],
    )
    .await?;
    Ok(inserted == 1)
}

#[derive(Clone, Debug)]
pub struct AlertRow {
    pub id: String,
    pub rule_id: String,
    pub severity: Severity,
    pub principal_id: String,
    pub role_id: String,
    pub scope: String,
    pub dedup_key: String,
    pub evidence: Vec<String>,
    pub figures: std::collections::BTreeMap<String, String>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: i64,
    pub status: AlertStatus,
    pub status_changed_by: String,
    pub status_reason: String,
    pub rev: i64,
}

const COLUMNS: &str = "id, rule_id, severity, principal_id, role_id, scope, dedup_key, evidence, figures, first_seen, last_seen, count, status, status_changed_by, status_reason, rev";

impl AlertRow {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        let json = |name: &str| -> Result<String, DbErr> { col(r, name) };
        Ok(Self {
            id: col(r, "id")?,
            rule_id: col(r, "rule_id")?,
            severity: col_named(r, "severity", Severity::parse)?,
            principal_id: col(r, "principal_id")?,
            role_id: col(r, "role_id")?,
            scope: col(r, "scope")?,
            dedup_key: col(r, "dedup_key")?,
            evidence: serde_json::from_str(&json("evidence")?).map_err(|e| DbErr::Custom(e.to_string()))?,
            figures: serde_json::from_str(&json("figures")?).map_err(|e| DbErr::Custom(e.to_string()))?,
            first_seen: col(r, "first_seen")?,
            last_seen: col(r, "last_seen")?,
            count: col(r, "count")?,
            status: col_named(r, "status", AlertStatus::parse)?,
            status_changed_by: col(r, "status_changed_by")?,
            status_reason: col(r, "status_reason")?,
            rev: col(r, "rev")?,
        })
    }
}

/// The next revision; the counter row stays locked until commit, so revisions become
/// visible in order and a stream resuming after one misses nothing.
pub async fn next_rev<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let row = db::query_one(
        c,
        "UPDATE alert_revision SET rev = rev + 1 WHERE id = 1 RETURNING rev",
        vec![],
    )
    .await?
    .ok_or_else(|| DbErr::Custom("alert revision counter missing".into()))?;
    col(&row, "rev")
}

/// The latest revision given out (committed).
pub async fn latest_rev<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let row = db::query_one(c, "SELECT rev FROM alert_revision WHERE id = 1", vec![])
        .await?
        .ok_or_else(|| DbErr::Custom("alert revision counter missing".into()))?;
    col(&row, "rev")
}

/// The live (open or acknowledged) alert with this dedup key, locked.
pub async fn live<C: ConnectionTrait>(c: &C, dedup_key: &str) -> Result<Option<AlertRow>, DbErr> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alerts WHERE dedup_key = $1 AND status IN ('open', 'acknowledged'){}",
        c.for_update()
    );
    db::row(c, &sql, vec![dedup_key.into()], AlertRow::from_row).await
}

/// The alert with this dedup key closed last (dismissed or resolved), if any.
pub async fn last_closed<C: ConnectionTrait>(c: &C, dedup_key: &str) -> Result<Option<AlertRow>, DbErr> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alerts WHERE dedup_key = $1 AND status IN ('dismissed', 'resolved') ORDER BY rev DESC LIMIT 1"
    );
    db::row(c, &sql, vec![dedup_key.into()], AlertRow::from_row).await
}

pub async fn get<C: ConnectionTrait>(c: &C, id: &str, lock: bool) -> Result<Option<AlertRow>, DbErr> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alerts WHERE id = $1{}",
        if lock { c.for_update() } else { "" }
    );
    db::row(c, &sql, vec![id.into()], AlertRow::from_row).await
}

/// Inserts or rewrites an alert (by id).
pub async fn save<C: ConnectionTrait>(c: &C, a: &AlertRow, insert: bool) -> Result<(), DbErr> {
    let evidence = serde_json::to_string(&a.evidence).map_err(|e| DbErr::Custom(e.to_string()))?;
    let figures = serde_json::to_string(&a.figures).map_err(|e| DbErr::Custom(e.to_string()))?;
    let sql = if insert {
        format!(
            "INSERT INTO alerts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        )
    } else {
        "UPDATE alerts SET rule_id = $2, severity = $3, principal_id = $4, role_id = $5, scope = $6, dedup_key = $7, \
         evidence = $8, figures = $9, first_seen = $10, last_seen = $11, count = $12, status = $13, \
         status_changed_by = $14, status_reason = $15, rev = $16 WHERE id = $1"
            .to_owned()
    };
    db::exec(
        c,
        &sql,
        vec![
            a.id.clone().into(),
            a.rule_id.clone().into(),
            a.severity.as_str().into(),
            a.principal_id.clone().into(),
            a.role_id.clone().into(),
            a.scope.clone().into(),
            a.dedup_key.clone().into(),
            evidence.into(),
            figures.into(),
            a.first_seen.into(),
            a.last_seen.into(),
            a.count.into(),
            a.status.as_str().into(),
            a.status_changed_by.clone().into(),
            a.status_reason.clone().into(),
            a.rev.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Alerts changed after revision `after`, oldest change first.
pub async fn changed_after<C: ConnectionTrait>(c: &C, after: i64, limit: u64) -> Result<Vec<AlertRow>, DbErr> {
    db::rows(
        c,
        &format!("SELECT {COLUMNS} FROM alerts WHERE rev > $1 ORDER BY rev LIMIT {limit}"),
        vec![after.into()],
        AlertRow::from_row,
    )
    .await
}

/// Alerts newest first, optionally of one status, below revision `before`.
pub async fn list<C: ConnectionTrait>(
    c: &C,
    status: Option<AlertStatus>,
    before: Option<i64>,
    limit: u64,
) -> Result<Vec<AlertRow>, DbErr> {
    let mut values: Vec<sea_orm::Value> = vec![before.unwrap_or(i64::MAX).into()];
    let mut sql = format!("SELECT {COLUMNS} FROM alerts WHERE rev < $1");
    if let Some(status) = status {
        values.push(status.as_str().into());
        sql.push_str(" AND status = $2");
    }
    sql.push_str(&format!(" ORDER BY rev DESC LIMIT {limit}"));
    db::rows(c, &sql, values, AlertRow::from_row).await
}

/// A rule's stored settings: (enabled, severity, settings JSON).
pub async fn rule_settings<C: ConnectionTrait>(
    c: &C,
    rule_id: &str,
) -> Result<Option<(bool, Severity, String)>, DbErr> {
    db::query_one(
        c,
        "SELECT enabled, severity, settings FROM rule_settings WHERE rule_id = $1",
        vec![rule_id.into()],
    )
    .await?
    .map(|r| -> Result<_, DbErr> {
        Ok((
            col(&r, "enabled")?,
            col_named(&r, "severity", Severity::parse)?,
            col(&r, "settings")?,
        ))
    })
    .transpose()
}

pub async fn save_rule_settings<C: ConnectionTrait>(
    c: &C,
    rule_id: &str,
    enabled: bool,
    severity: Severity,
    settings: &str,
    by: &str,
    now: i64,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO rule_settings (rule_id, enabled, severity, settings, updated_by, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (rule_id) DO UPDATE SET enabled = excluded.enabled, severity = excluded.severity, \
         settings = excluded.settings, updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        vec![
            rule_id.into(),
            enabled.into(),
            severity.as_str().into(),
            settings.into(),
            by.into(),
            now.into(),
        ],
    )
    .await?;
    Ok(())
}

/// A privileged assignment in force, as the rules see it.
pub struct Privileged<'a> {
    pub assignment_id: &'a str,
    pub kind: &'a str,
    pub principal_id: &'a str,
    /// The holder is a group: its members hold the role, the group is no one.
    pub is_group: bool,
    pub role_id: &'a str,
    pub scope: &'a str,
    pub end_at: Option<i64>,
    /// When it began (or was first seen).
    pub since: i64,
}

pub async fn upsert_privileged<C: ConnectionTrait>(c: &C, p: &Privileged<'_>) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO privileged_assignments (assignment_id, kind, principal_id, is_group, role_id, scope, end_at, since) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (assignment_id) DO UPDATE SET end_at = excluded.end_at, is_group = excluded.is_group",
        vec![
            p.assignment_id.into(),
            p.kind.into(),
            p.principal_id.into(),
            p.is_group.into(),
            p.role_id.into(),
            p.scope.into(),
            p.end_at.into(),
            p.since.into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn add_break_glass<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO break_glass (principal_id) VALUES ($1) ON CONFLICT (principal_id) DO NOTHING",
        vec![principal_id.into()],
    )
    .await?;
    Ok(())
}

pub async fn is_break_glass<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<bool, DbErr> {
    Ok(db::query_one(
        c,
        "SELECT principal_id FROM break_glass WHERE principal_id = $1",
        vec![principal_id.into()],
    )
    .await?
    .is_some())
}

pub async fn signed_in<C: ConnectionTrait>(c: &C, principal_id: &str, at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO sign_ins (principal_id, last_at) VALUES ($1, $2) \
         ON CONFLICT (principal_id) DO UPDATE SET last_at = CASE WHEN excluded.last_at > sign_ins.last_at THEN excluded.last_at ELSE sign_ins.last_at END",
        vec![principal_id.into(), at.into()],
    )
    .await?;
    Ok(())
}

pub async fn last_sign_in<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<Option<i64>, DbErr> {
    db::query_one(
        c,
        "SELECT last_at FROM sign_ins WHERE principal_id = $1",
        vec![principal_id.into()],
    )
    .await?
    .map(|r| col(&r, "last_at"))
    .transpose()
}

/// Per privileged holder: when they last signed in (or were first privileged, if later or
/// never signed in).
pub async fn privileged_holders_quiet_since<C: ConnectionTrait>(c: &C, now: i64) -> Result<Vec<(String, i64)>, DbErr> {
    db::query(
        c,
        "SELECT p.principal_id, MIN(p.since) AS since, MAX(s.last_at) AS last_at FROM privileged_assignments p \
         LEFT JOIN sign_ins s ON s.principal_id = p.principal_id \
         WHERE p.kind <> 'activation' AND (p.end_at IS NULL OR p.end_at > $1) GROUP BY p.principal_id",
        vec![now.into()],
    )
    .await?
    .iter()
    .map(|r| {
        let since: i64 = col(r, "since")?;
        let last: Option<i64> = col(r, "last_at")?;
        Ok((col(r, "principal_id")?, last.unwrap_or(since).max(since)))
    })
    .collect()
}

/// Per privileged eligibility (principal, role): when the role was last activated by them
/// (or the eligibility began, if later or never activated).
pub async fn eligibilities_unused_since<C: ConnectionTrait>(
    c: &C,
    now: i64,
) -> Result<Vec<(String, String, i64)>, DbErr> {
    db::query(
        c,
        "SELECT p.principal_id, p.role_id, MIN(p.since) AS since, MAX(a.at) AS last_at FROM privileged_assignments p \
         LEFT JOIN activations a ON a.principal_id = p.principal_id AND a.role_id = p.role_id \
         WHERE p.kind = 'eligible' AND (p.end_at IS NULL OR p.end_at > $1) GROUP BY p.principal_id, p.role_id",
        vec![now.into()],
    )
    .await?
    .iter()
    .map(|r| {
        let since: i64 = col(r, "since")?;
        let last: Option<i64> = col(r, "last_at")?;
        Ok((
            col(r, "principal_id")?,
            col(r, "role_id")?,
            last.unwrap_or(since).max(since),
        ))
    })
    .collect()
}

/// Records a custom role (created or changed) and whether it is privileged.
pub async fn upsert_custom_role<C: ConnectionTrait>(c: &C, role_id: &str, privileged: bool) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO custom_roles (role_id, privileged) VALUES ($1, $2) \
         ON CONFLICT (role_id) DO UPDATE SET privileged = excluded.privileged",
        vec![role_id.into(), privileged.into()],
    )
    .await?;
    Ok(())
}

pub async fn forget_custom_role<C: ConnectionTrait>(c: &C, role_id: &str) -> Result<(), DbErr> {
    db::exec(c, "DELETE FROM custom_roles WHERE role_id = $1", vec![role_id.into()]).await?;
    Ok(())
}

/// Whether a custom role is known and privileged.
pub async fn custom_role_privileged<C: ConnectionTrait>(c: &C, role_id: &str) -> Result<bool, DbErr> {
    Ok(db::query_one(
        c,
        "SELECT privileged FROM custom_roles WHERE role_id = $1",
        vec![role_id.into()],
    )
    .await?
    .map(|r| col::<bool>(&r, "privileged"))
    .transpose()?
    .unwrap_or(false))
}

pub async fn forget_privileged<C: ConnectionTrait>(c: &C, assignment_id: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM privileged_assignments WHERE assignment_id = $1",
        vec![assignment_id.into()],
    )
    .await?;
    Ok(())
}

/// A member or owner of a role-assignable group added (`present`) or removed in the
/// directory, at the link's `version`: a change older than the one kept is ignored (0, from
/// before versions, always applies). Whether it applied.
pub async fn set_group_link<C: ConnectionTrait>(
    c: &C,
    group_id: &str,
    principal_id: &str,
    owner: bool,
    present: bool,
    version: i64,
) -> Result<bool, DbErr> {
    db::exec(
        c,
        "INSERT INTO group_links (group_id, principal_id, owner, present, version) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (group_id, principal_id, owner) DO UPDATE SET present = excluded.present, version = excluded.version \
         WHERE excluded.version = 0 OR group_links.version < excluded.version",
        vec![group_id.into(), principal_id.into(), owner.into(), present.into(), version.into()],
    )
    .await
    .map(|changed| changed == 1)
}

/// The directory's members and owners of a group: (principal, whether an owner).
pub async fn group_links<C: ConnectionTrait>(c: &C, group_id: &str) -> Result<Vec<(String, bool)>, DbErr> {
    db::query(
        c,
        "SELECT principal_id, owner FROM group_links WHERE group_id = $1 AND present ORDER BY principal_id, owner",
        vec![group_id.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((col(r, "principal_id")?, col(r, "owner")?)))
    .collect()
}

/// (holders of `role_id`, privileged assignments in force): the users and apps assigned the
/// role, eligible or active, with those who have access to a group assigned it (PIM for
/// Groups: eligible or active members and owners) and its members in the directory, each
/// once; a group assigned it counts once itself where nobody is known to be in it; and the
/// privileged assignments of every role, eligible and active (an activation is no new
/// assignment).
pub async fn holder_counts<C: ConnectionTrait>(c: &C, role_id: &str, now: i64) -> Result<(i64, i64), DbErr> {
    let in_force = "(end_at IS NULL OR end_at > $1)";
    let holding = format!("SELECT principal_id FROM privileged_assignments WHERE role_id = $2 AND {in_force}");
    let groups =
        format!("SELECT principal_id FROM privileged_assignments WHERE role_id = $2 AND is_group AND {in_force}");
    let through = "SELECT 1 FROM privileged_assignments m WHERE m.role_id IN ($3, $4) AND m.scope = '/groups/' || g.principal_id \
         AND (m.end_at IS NULL OR m.end_at > $1)";
    let members = "SELECT 1 FROM group_links l WHERE l.group_id = g.principal_id AND l.present AND NOT l.owner";
    let row = db::query_one(
        c,
        &format!(
            "SELECT (SELECT COUNT(DISTINCT principal_id) FROM ( \
                 SELECT principal_id FROM privileged_assignments WHERE {in_force} AND NOT is_group \
                   AND (role_id = $2 \
                     OR (role_id IN ($3, $4) AND scope IN (SELECT '/groups/' || principal_id FROM ({holding}) AS g))) \
                 UNION SELECT principal_id FROM group_links WHERE present AND NOT owner AND group_id IN ({groups})) AS h) \
             + (SELECT COUNT(DISTINCT g.principal_id) FROM privileged_assignments g WHERE g.role_id = $2 AND g.is_group \
                 AND (g.end_at IS NULL OR g.end_at > $1) AND NOT EXISTS ({through}) AND NOT EXISTS ({members})) AS role_count, \
             (SELECT COUNT(*) FROM privileged_assignments WHERE kind <> 'activation' AND {in_force}) AS total"
        ),
        vec![
            now.into(),
            role_id.into(),
            pim_proto::catalogue::GROUP_MEMBER.into(),
            pim_proto::catalogue::GROUP_OWNER.into(),
        ],
    )
    .await?
    .ok_or_else(|| DbErr::Custom("count".into()))?;
    Ok((col(&row, "role_count")?, col(&row, "total")?))
}

/// Whether the principal holds any privileged assignment (eligible or active) now.
pub async fn is_privileged<C: ConnectionTrait>(c: &C, principal_id: &str, now: i64) -> Result<bool, DbErr> {
    Ok(db::query_one(
        c,
        "SELECT assignment_id FROM privileged_assignments WHERE principal_id = $1 AND (end_at IS NULL OR end_at > $2) LIMIT 1",
        vec![principal_id.into(), now.into()],
    )
    .await?
    .is_some())
}

/// Records an activation; returns the event ids of the principal's activations of the role
/// since `since` (this one included). On PostgreSQL in one statement (its select cannot see
/// the row its CTE inserts, so it adds it); SQLite's CTEs cannot write, so there it is two.
pub async fn activations_since<C: ConnectionTrait>(
    c: &C,
    assignment_id: &str,
    principal_id: &str,
    role_id: &str,
    at: i64,
    event_id: &str,
    since: i64,
) -> Result<Vec<String>, DbErr> {
    let insert = "INSERT INTO activations (assignment_id, principal_id, role_id, at, event_id) \
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (assignment_id) DO NOTHING";
    let recorded: Vec<sea_orm::Value> = vec![
        assignment_id.into(),
        principal_id.into(),
        role_id.into(),
        at.into(),
        event_id.into(),
    ];
    let rows = if c.backend() == DbBackend::Postgres {
        let sql = format!(
            "WITH new AS ({insert} RETURNING event_id, at) \
             SELECT event_id, at FROM activations WHERE principal_id = $2 AND role_id = $3 AND at >= $6 \
             UNION ALL SELECT event_id, at FROM new WHERE at >= $6 ORDER BY at"
        );
        db::query(c, &sql, [recorded, vec![since.into()]].concat()).await?
    } else {
        db::exec(c, insert, recorded).await?;
        db::query(
            c,
            "SELECT event_id FROM activations WHERE principal_id = $1 AND role_id = $2 AND at >= $3 ORDER BY at",
            vec![principal_id.into(), role_id.into(), since.into()],
        )
        .await?
    };
    rows.iter().map(|r| col(r, "event_id")).collect()
}

pub async fn approval_created<C: ConnectionTrait>(c: &C, approval_id: &str, at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO approvals_seen (approval_id, created_at) VALUES ($1, $2) ON CONFLICT (approval_id) DO NOTHING",
        vec![approval_id.into(), at.into()],
    )
    .await?;
    Ok(())
}

pub async fn approval_created_at<C: ConnectionTrait>(c: &C, approval_id: &str) -> Result<Option<i64>, DbErr> {
    db::query_one(
        c,
        "SELECT created_at FROM approvals_seen WHERE approval_id = $1",
        vec![approval_id.into()],
    )
    .await?
    .map(|r| col(&r, "created_at"))
    .transpose()
}

pub async fn record_mfa_failure<C: ConnectionTrait>(
    c: &C,
    event_id: &str,
    principal_id: &str,
    at: i64,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO mfa_failures (event_id, principal_id, at) VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING",
        vec![event_id.into(), principal_id.into(), at.into()],
    )
    .await?;
    Ok(())
}

/// The event ids of the principal's MFA failures since `since`.
pub async fn mfa_failures_since<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    since: i64,
) -> Result<Vec<String>, DbErr> {
    db::query(
        c,
        "SELECT event_id FROM mfa_failures WHERE principal_id = $1 AND at >= $2 ORDER BY at",
        vec![principal_id.into(), since.into()],
    )
    .await?
    .iter()
    .map(|r| col(r, "event_id"))
    .collect()
}
