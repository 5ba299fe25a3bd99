//! The identity database: migrations and queries. Only this module writes SQL.

use sea_orm::{ConnectionTrait, DbErr, QueryResult};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use pim_runtime::db::{self, col};
use pim_runtime::events::{SqlMigration, backbone_indexes_migration, backbone_migration, backbone_replay_migration};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            backbone_migration(),
            SqlMigration::boxed("m0001_directory", |d| {
                format!(
                    "CREATE TABLE users (
                        id TEXT PRIMARY KEY,
                        user_name TEXT NOT NULL UNIQUE,
                        display_name TEXT NOT NULL,
                        email TEXT NOT NULL,
                        password_hash TEXT NOT NULL,
                        enabled BOOLEAN NOT NULL,
                        created_at BIGINT NOT NULL,
                        last_sign_in_at BIGINT
                    );
                    CREATE TABLE service_principals (
                        id TEXT PRIMARY KEY,
                        display_name TEXT NOT NULL,
                        secret_hash TEXT NOT NULL,
                        enabled BOOLEAN NOT NULL,
                        created_at BIGINT NOT NULL,
                        last_sign_in_at BIGINT
                    );
                    CREATE TABLE signing_keys (
                        kid TEXT PRIMARY KEY,
                        private_key {blob} NOT NULL,
                        public_key TEXT NOT NULL,
                        created_at BIGINT NOT NULL,
                                            retire_after BIGINT
                )",
                    blob = d.blob()
                )
            }),
            SqlMigration::boxed("m0002_mfa", |d| {
                format!(
                    "CREATE TABLE mfa_methods (
                        id TEXT PRIMARY KEY,
                        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                        kind TEXT NOT NULL,
                        secret {blob} NOT NULL,
                        confirmed BOOLEAN NOT NULL,
                        last_step BIGINT NOT NULL,
                        created_at BIGINT NOT NULL
                    );
                    CREATE INDEX mfa_methods_user ON mfa_methods (user_id);
                    CREATE TABLE recovery_codes (
                        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                        code_hash TEXT NOT NULL,
                        used_at BIGINT,
                        PRIMARY KEY (user_id, code_hash)
                    );
                                        CREATE TABLE groups (
                        id TEXT PRIMARY KEY,
                        display_name TEXT NOT NULL,
                        description TEXT NOT NULL,
                        is_assignable_to_role BOOLEAN NOT NULL,
                        created_at BIGINT NOT NULL,
                        created_by TEXT NOT NULL
                    );
                    CREATE TABLE group_members (
                        group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
                        principal_id TEXT NOT NULL,
                        added_at BIGINT NOT NULL,
                        PRIMARY KEY (group_id, principal_id)
                    );
                    CREATE INDEX group_members_principal ON group_members (principal_id);
                    CREATE TABLE group_owners (
                        group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
                        principal_id TEXT NOT NULL,
                        PRIMARY KEY (group_id, principal_id)
                    );
                                        CREATE TABLE sessions (
                        id TEXT PRIMARY KEY,
                        principal_id TEXT NOT NULL,
                        refresh_hash TEXT NOT NULL UNIQUE,
                        created_at BIGINT NOT NULL,
                        expires_at BIGINT NOT NULL,
                        revoked_at BIGINT
                    );
                    CREATE INDEX sessions_principal ON sessions (principal_id);
                    CREATE TABLE mfa_failures (
                        user_id TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
                        failures INTEGER NOT NULL,
                        window_start BIGINT NOT NULL,
                        locked_until BIGINT
                    )",
                    blob = d.blob()
                )
            }),
            backbone_indexes_migration(),
            // The MFA lifecycle: when a first method may be enrolled with the password alone,
            // and administrators' one-time enrolment passes (only their hashes).
            SqlMigration::boxed("m0003_mfa_lifecycle", |_| {
                "ALTER TABLE users ADD COLUMN mfa_enroll_until BIGINT;
                CREATE TABLE enrollment_passes (
                    id TEXT PRIMARY KEY,
                    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                    code_hash TEXT NOT NULL UNIQUE,
                    created_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    expires_at BIGINT NOT NULL,
                    uses_left INTEGER NOT NULL
                );
                CREATE INDEX enrollment_passes_user ON enrollment_passes (user_id)"
                    .to_owned()
            }),
            // Failed sign-ins per principal and per source, shared by replicas, kept across
            // restarts (they were counted in each replica's memory).
            SqlMigration::boxed("m0004_sign_in_failures", |_| {
                "CREATE TABLE sign_in_failures (
                    key TEXT PRIMARY KEY,
                    failures BIGINT NOT NULL,
                    window_start BIGINT NOT NULL
                )"
                .to_owned()
            }),
            SqlMigration::boxed("m0005_revoked_principals", |_| {
                "CREATE TABLE revoked_principals (
                    principal_id TEXT PRIMARY KEY,
                    revoked_at BIGINT NOT NULL
                );
                CREATE INDEX sessions_revoked ON sessions (revoked_at)"
                    .to_owned()
            }),
            backbone_replay_migration(),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct UserRow {
    pub id: String,
    pub user_name: String,
    pub display_name: String,
    pub email: String,
    pub password_hash: String,
    pub enabled: bool,
    pub created_at: i64,
    pub last_sign_in_at: Option<i64>,
}

impl UserRow {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            user_name: col(r, "user_name")?,
            display_name: col(r, "display_name")?,
            email: col(r, "email")?,
            password_hash: col(r, "password_hash")?,
            enabled: col(r, "enabled")?,
            created_at: col(r, "created_at")?,
            last_sign_in_at: col(r, "last_sign_in_at")?,
        })
    }
}

const USER_COLUMNS: &str = "id, user_name, display_name, email, password_hash, enabled, created_at, last_sign_in_at";

pub async fn insert_user<C: ConnectionTrait>(c: &C, u: &UserRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO users (id, user_name, display_name, email, password_hash, enabled, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            u.id.clone().into(),
            u.user_name.clone().into(),
            u.display_name.clone().into(),
            u.email.clone().into(),
            u.password_hash.clone().into(),
            u.enabled.into(),
            u.created_at.into(),
        ],
    )
    .await
    .map(drop)
}

/// A user by id or by (lower-cased) user name.
pub async fn find_user<C: ConnectionTrait>(c: &C, id_or_name: &str) -> Result<Option<UserRow>, DbErr> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 OR user_name = $2");
    db::row(
        c,
        &sql,
        vec![id_or_name.into(), id_or_name.to_lowercase().into()],
        UserRow::from_row,
    )
    .await
}

/// A LIKE pattern (with `ESCAPE '\\'`) for values containing `filter`, compared with
/// `LOWER(…)`: ASCII letters only are folded, as SQLite's `LOWER` folds them, so both
/// databases answer alike.
fn like_pattern(filter: &str) -> String {
    let escaped = filter
        .to_ascii_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Users after `after` (by user name), matching `filter`, at most `limit`.
pub async fn list_users<C: ConnectionTrait>(
    c: &C,
    filter: &str,
    after: &str,
    limit: u64,
) -> Result<Vec<UserRow>, DbErr> {
    let pattern = like_pattern(filter);
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE user_name > $1 AND (LOWER(user_name) LIKE $2 ESCAPE '\\' OR LOWER(display_name) LIKE $3 ESCAPE '\\') ORDER BY user_name LIMIT {limit}"
    );
    db::rows(
        c,
        &sql,
        vec![after.into(), pattern.clone().into(), pattern.into()],
        UserRow::from_row,
    )
    .await
}

pub async fn set_password<C: ConnectionTrait>(c: &C, user_id: &str, hash: &str) -> Result<u64, DbErr> {
    db::exec(
        c,
        "UPDATE users SET password_hash = $1 WHERE id = $2",
        vec![hash.into(), user_id.into()],
    )
    .await
}

pub async fn set_user_enabled<C: ConnectionTrait>(c: &C, user_id: &str, enabled: bool) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE users SET enabled = $1 WHERE id = $2",
        vec![enabled.into(), user_id.into()],
    )
    .await
    .map(drop)
}

pub async fn record_user_sign_in<C: ConnectionTrait>(c: &C, user_id: &str, at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE users SET last_sign_in_at = $1 WHERE id = $2",
        vec![at.into(), user_id.into()],
    )
    .await
    .map(drop)
}

#[derive(Clone, Debug)]
pub struct ServicePrincipalRow {
    pub id: String,
    pub display_name: String,
    pub secret_hash: String,
    pub enabled: bool,
    pub created_at: i64,
}

pub async fn insert_service_principal<C: ConnectionTrait>(c: &C, sp: &ServicePrincipalRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO service_principals (id, display_name, secret_hash, enabled, created_at) VALUES ($1, $2, $3, $4, $5)",
        vec![
            sp.id.clone().into(),
            sp.display_name.clone().into(),
            sp.secret_hash.clone().into(),
            sp.enabled.into(),
            sp.created_at.into(),
        ],
    )
    .await
    .map(drop)
}

impl ServicePrincipalRow {
    fn from_row(r: &sea_orm::QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            display_name: col(r, "display_name")?,
            secret_hash: col(r, "secret_hash")?,
            enabled: col(r, "enabled")?,
            created_at: col(r, "created_at")?,
        })
    }
}

const SP_COLUMNS: &str = "id, display_name, secret_hash, enabled, created_at";

pub async fn find_service_principal<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<ServicePrincipalRow>, DbErr> {
    let rows = db::rows(
        c,
        &format!("SELECT {SP_COLUMNS} FROM service_principals WHERE id = $1"),
        vec![id.into()],
        ServicePrincipalRow::from_row,
    )
    .await?;
    Ok(rows.into_iter().next())
}

/// Service principals after `after` (by display name, then id), whose display names contain
/// `filter`, at most `limit`.
pub async fn list_service_principals<C: ConnectionTrait>(
    c: &C,
    filter: &str,
    after: (&str, &str),
    limit: u64,
) -> Result<Vec<ServicePrincipalRow>, DbErr> {
    let pattern = like_pattern(filter);
    db::rows(
        c,
        &format!(
            "SELECT {SP_COLUMNS} FROM service_principals \
             WHERE (display_name > $1 OR (display_name = $1 AND id > $2)) AND LOWER(display_name) LIKE $3 ESCAPE '\\' \
             ORDER BY display_name, id LIMIT {limit}"
        ),
        vec![after.0.into(), after.1.into(), pattern.into()],
        ServicePrincipalRow::from_row,
    )
    .await
}

pub async fn record_sp_sign_in<C: ConnectionTrait>(c: &C, id: &str, at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE service_principals SET last_sign_in_at = $1 WHERE id = $2",
        vec![at.into(), id.into()],
    )
    .await
    .map(drop)
}

#[derive(Clone, Debug)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_key: Vec<u8>,
    pub public_key: String,
    pub created_at: i64,
    pub retire_after: Option<i64>,
}

pub async fn signing_keys<C: ConnectionTrait>(c: &C) -> Result<Vec<SigningKeyRow>, DbErr> {
    db::query(
        c,
        "SELECT kid, private_key, public_key, created_at, retire_after FROM signing_keys ORDER BY created_at DESC",
        vec![],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(SigningKeyRow {
            kid: col(r, "kid")?,
            private_key: col(r, "private_key")?,
            public_key: col(r, "public_key")?,
            created_at: col(r, "created_at")?,
            retire_after: col(r, "retire_after")?,
        })
    })
    .collect()
}

/// Marks every active key to retire at `at` (it keeps verifying until then).
pub async fn retire_active_keys<C: ConnectionTrait>(c: &C, at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE signing_keys SET retire_after = $1 WHERE retire_after IS NULL",
        vec![at.into()],
    )
    .await
    .map(drop)
}

/// Forgets keys retired before `before`.
pub async fn delete_retired_keys<C: ConnectionTrait>(c: &C, before: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM signing_keys WHERE retire_after IS NOT NULL AND retire_after < $1",
        vec![before.into()],
    )
    .await
    .map(drop)
}

pub async fn insert_signing_key<C: ConnectionTrait>(c: &C, k: &SigningKeyRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO signing_keys (kid, private_key, public_key, created_at) VALUES ($1, $2, $3, $4)",
        vec![
            k.kid.clone().into(),
            k.private_key.clone().into(),
            k.public_key.clone().into(),
            k.created_at.into(),
        ],
    )
    .await
    .map(drop)
}

#[derive(Clone, Debug)]
pub struct MfaMethodRow {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    pub secret: Vec<u8>,
    pub confirmed: bool,
    pub last_step: i64,
    pub created_at: i64,
}

pub async fn mfa_methods<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<Vec<MfaMethodRow>, DbErr> {
    db::query(
        c,
        "SELECT id, user_id, kind, secret, confirmed, last_step, created_at FROM mfa_methods WHERE user_id = $1 ORDER BY created_at",
        vec![user_id.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(MfaMethodRow {
            id: col(r, "id")?,
            user_id: col(r, "user_id")?,
            kind: col(r, "kind")?,
            secret: col(r, "secret")?,
            confirmed: col(r, "confirmed")?,
            last_step: col(r, "last_step")?,
            created_at: col(r, "created_at")?,
        })
    })
    .collect()
}

pub async fn insert_mfa_method<C: ConnectionTrait>(c: &C, m: &MfaMethodRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO mfa_methods (id, user_id, kind, secret, confirmed, last_step, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            m.id.clone().into(),
            m.user_id.clone().into(),
            m.kind.clone().into(),
            m.secret.clone().into(),
            m.confirmed.into(),
            m.last_step.into(),
            m.created_at.into(),
        ],
    )
    .await
    .map(drop)
}

pub async fn delete_method<C: ConnectionTrait>(c: &C, user_id: &str, method_id: &str) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "DELETE FROM mfa_methods WHERE user_id = $1 AND id = $2",
        vec![user_id.into(), method_id.into()],
    )
    .await?
        == 1)
}

pub async fn update_group<C: ConnectionTrait>(
    c: &C,
    id: &str,
    display_name: &str,
    description: &str,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE groups SET display_name = $1, description = $2 WHERE id = $3",
        vec![display_name.into(), description.into(), id.into()],
    )
    .await
    .map(drop)
}

pub async fn delete_unconfirmed_methods<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM mfa_methods WHERE user_id = $1 AND confirmed = FALSE",
        vec![user_id.into()],
    )
    .await
    .map(drop)
}

/// Records a used TOTP step; returns false when that step (or a later one) was used already:
/// a code is accepted once, even by concurrent requests.
pub async fn use_step<C: ConnectionTrait>(c: &C, method_id: &str, step: i64, confirm: bool) -> Result<bool, DbErr> {
    let n = db::exec(
        c,
        "UPDATE mfa_methods SET last_step = $1, confirmed = (confirmed OR $2) WHERE id = $3 AND last_step < $4",
        vec![step.into(), confirm.into(), method_id.into(), step.into()],
    )
    .await?;
    Ok(n == 1)
}

pub async fn reset_mfa<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<(), DbErr> {
    db::exec(c, "DELETE FROM mfa_methods WHERE user_id = $1", vec![user_id.into()]).await?;
    db::exec(c, "DELETE FROM recovery_codes WHERE user_id = $1", vec![user_id.into()]).await?;
    db::exec(c, "DELETE FROM mfa_failures WHERE user_id = $1", vec![user_id.into()])
        .await
        .map(drop)
}

pub async fn replace_recovery_codes<C: ConnectionTrait>(c: &C, user_id: &str, hashes: &[String]) -> Result<(), DbErr> {
    db::exec(c, "DELETE FROM recovery_codes WHERE user_id = $1", vec![user_id.into()]).await?;
    for h in hashes {
        db::exec(
            c,
            "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)",
            vec![user_id.into(), h.clone().into()],
        )
        .await?;
    }
    Ok(())
}

/// Marks an unused recovery code used; returns whether there was one.
pub async fn use_recovery_code<C: ConnectionTrait>(c: &C, user_id: &str, hash: &str, now: i64) -> Result<bool, DbErr> {
    let n = db::exec(
        c,
        "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        vec![now.into(), user_id.into(), hash.into()],
    )
    .await?;
    Ok(n == 1)
}

/// The user's lockout state: (failures in the window, window start, locked until).
pub async fn mfa_failures<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<Option<(i32, i64, Option<i64>)>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT failures, window_start, locked_until FROM mfa_failures WHERE user_id = $1",
        vec![user_id.into()],
    )
    .await?;
    row.map(|r| Ok((col(&r, "failures")?, col(&r, "window_start")?, col(&r, "locked_until")?)))
        .transpose()
}

pub async fn clear_mfa_failures<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<(), DbErr> {
    db::exec(c, "DELETE FROM mfa_failures WHERE user_id = $1", vec![user_id.into()])
        .await
        .map(drop)
}

#[derive(Clone, Debug)]
pub struct GroupRow {
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub is_assignable_to_role: bool,
    pub created_at: i64,
}

const GROUP_COLUMNS: &str = "id, display_name, description, is_assignable_to_role, created_at";

fn group_from_row(r: &QueryResult) -> Result<GroupRow, DbErr> {
    Ok(GroupRow {
        id: col(r, "id")?,
        display_name: col(r, "display_name")?,
        description: col(r, "description")?,
        is_assignable_to_role: col(r, "is_assignable_to_role")?,
        created_at: col(r, "created_at")?,
    })
}

pub async fn insert_group<C: ConnectionTrait>(c: &C, g: &GroupRow, by: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO groups (id, display_name, description, is_assignable_to_role, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
        vec![g.id.clone().into(), g.display_name.clone().into(), g.description.clone().into(), g.is_assignable_to_role.into(), g.created_at.into(), by.into()],
    )
    .await
    .map(drop)
}

pub async fn find_group<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<GroupRow>, DbErr> {
    let sql = format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id = $1");
    db::query_one(c, &sql, vec![id.into()])
        .await?
        .map(|r| group_from_row(&r))
        .transpose()
}

pub async fn list_groups<C: ConnectionTrait>(c: &C, after: &str, limit: u64) -> Result<Vec<GroupRow>, DbErr> {
    let sql = format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id > $1 ORDER BY id LIMIT {limit}");
    db::query(c, &sql, vec![after.into()])
        .await?
        .iter()
        .map(group_from_row)
        .collect()
}

pub async fn count_role_assignable_groups<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let row = db::query_one(
        c,
        "SELECT COUNT(*) AS n FROM groups WHERE is_assignable_to_role = TRUE",
        vec![],
    )
    .await?;
    row.map(|r| col::<i64>(&r, "n"))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Adds to `group_members` or `group_owners`; returns whether it was new.
pub async fn add_link<C: ConnectionTrait>(
    c: &C,
    table: Link,
    group_id: &str,
    principal_id: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let sql = match table {
        Link::Member => {
            "INSERT INTO group_members (group_id, principal_id, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        }
        Link::Owner => "INSERT INTO group_owners (group_id, principal_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    };
    let mut values: Vec<sea_orm::Value> = vec![group_id.into(), principal_id.into()];
    if table == Link::Member {
        values.push(now.into());
    }
    Ok(db::exec(c, sql, values).await? == 1)
}

/// Removes from `group_members` or `group_owners`; returns whether it was there.
pub async fn remove_link<C: ConnectionTrait>(
    c: &C,
    table: Link,
    group_id: &str,
    principal_id: &str,
) -> Result<bool, DbErr> {
    let sql = match table {
        Link::Member => "DELETE FROM group_members WHERE group_id = $1 AND principal_id = $2",
        Link::Owner => "DELETE FROM group_owners WHERE group_id = $1 AND principal_id = $2",
    };
    Ok(db::exec(c, sql, vec![group_id.into(), principal_id.into()]).await? == 1)
}

/// Deletes a group (its links must be gone); whether it was there.
pub async fn delete_group<C: ConnectionTrait>(c: &C, group_id: &str) -> Result<bool, DbErr> {
    Ok(db::exec(c, "DELETE FROM groups WHERE id = $1", vec![group_id.into()]).await? > 0)
}

pub async fn linked<C: ConnectionTrait>(c: &C, table: Link, group_id: &str) -> Result<Vec<String>, DbErr> {
    let sql = match table {
        Link::Member => "SELECT principal_id FROM group_members WHERE group_id = $1 ORDER BY principal_id",
        Link::Owner => "SELECT principal_id FROM group_owners WHERE group_id = $1 ORDER BY principal_id",
    };
    db::query(c, sql, vec![group_id.into()])
        .await?
        .iter()
        .map(|r| col(r, "principal_id"))
        .collect()
}

pub async fn is_owner<C: ConnectionTrait>(c: &C, group_id: &str, principal_id: &str) -> Result<bool, DbErr> {
    Ok(db::query_one(
        c,
        "SELECT 1 AS one FROM group_owners WHERE group_id = $1 AND principal_id = $2",
        vec![group_id.into(), principal_id.into()],
    )
    .await?
    .is_some())
}

pub async fn groups_of<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<Vec<GroupRow>, DbErr> {
    let sql = format!(
        "SELECT {GROUP_COLUMNS} FROM groups WHERE id IN (SELECT group_id FROM group_members WHERE principal_id = $1) ORDER BY id"
    );
    db::query(c, &sql, vec![principal_id.into()])
        .await?
        .iter()
        .map(group_from_row)
        .collect()
}

/// Which of a group's link tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Member,
    Owner,
}

#[derive(Clone, Debug)]
pub struct SessionRow {
    pub id: String,
    pub principal_id: String,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

pub async fn insert_session<C: ConnectionTrait>(
    c: &C,
    id: &str,
    principal_id: &str,
    refresh_hash: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO sessions (id, principal_id, refresh_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        vec![
            id.into(),
            principal_id.into(),
            refresh_hash.into(),
            now.into(),
            expires_at.into(),
        ],
    )
    .await
    .map(drop)
}

pub async fn session_by_refresh<C: ConnectionTrait>(c: &C, refresh_hash: &str) -> Result<Option<SessionRow>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT id, principal_id, expires_at, revoked_at FROM sessions WHERE refresh_hash = $1",
        vec![refresh_hash.into()],
    )
    .await?;
    row.map(|r| {
        Ok(SessionRow {
            id: col(&r, "id")?,
            principal_id: col(&r, "principal_id")?,
            expires_at: col(&r, "expires_at")?,
            revoked_at: col(&r, "revoked_at")?,
        })
    })
    .transpose()
}

/// Replaces a live session's refresh token (rotation); returns whether the old one was still current.
pub async fn rotate_refresh<C: ConnectionTrait>(
    c: &C,
    session_id: &str,
    old_hash: &str,
    new_hash: &str,
) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE sessions SET refresh_hash = $1 WHERE id = $2 AND refresh_hash = $3 AND revoked_at IS NULL",
        vec![new_hash.into(), session_id.into(), old_hash.into()],
    )
    .await?
        == 1)
}

pub async fn revoke_session<C: ConnectionTrait>(c: &C, session_id: &str, now: i64) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        vec![now.into(), session_id.into()],
    )
    .await?
        == 1)
}

pub async fn revoke_sessions_of<C: ConnectionTrait>(c: &C, principal_id: &str, now: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE sessions SET revoked_at = $1 WHERE principal_id = $2 AND revoked_at IS NULL",
        vec![now.into(), principal_id.into()],
    )
    .await
    .map(drop)
}

pub async fn update_user<C: ConnectionTrait>(
    c: &C,
    user_id: &str,
    display_name: &str,
    email: &str,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE users SET display_name = $1, email = $2 WHERE id = $3",
        vec![display_name.into(), email.into(), user_id.into()],
    )
    .await
    .map(drop)
}

/// Deletes a user with their memberships, ownerships and sessions (MFA goes by cascade).
pub async fn delete_user<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM group_members WHERE principal_id = $1",
        vec![user_id.into()],
    )
    .await?;
    db::exec(
        c,
        "DELETE FROM group_owners WHERE principal_id = $1",
        vec![user_id.into()],
    )
    .await?;
    // Sessions stay (revoked) until they expire: their tokens must stay refused.
    db::exec(c, "DELETE FROM users WHERE id = $1", vec![user_id.into()])
        .await
        .map(drop)
}

pub async fn set_service_principal_secret<C: ConnectionTrait>(c: &C, id: &str, secret_hash: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE service_principals SET secret_hash = $1 WHERE id = $2",
        vec![secret_hash.into(), id.into()],
    )
    .await
    .map(drop)
}

pub async fn set_service_principal_enabled<C: ConnectionTrait>(c: &C, id: &str, enabled: bool) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE service_principals SET enabled = $1 WHERE id = $2",
        vec![enabled.into(), id.into()],
    )
    .await
    .map(drop)
}

/// Lets the user enrol a first MFA method with the password alone until `until` (ms).
pub async fn open_enrollment_window<C: ConnectionTrait>(c: &C, user_id: &str, until: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE users SET mfa_enroll_until = $1 WHERE id = $2",
        vec![until.into(), user_id.into()],
    )
    .await
    .map(drop)
}

/// Until when the user may enrol a first method with the password alone.
pub async fn enrollment_window<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<Option<i64>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT mfa_enroll_until FROM users WHERE id = $1",
        vec![user_id.into()],
    )
    .await?;
    Ok(match row {
        Some(r) => col(&r, "mfa_enroll_until")?,
        None => None,
    })
}

#[derive(Clone, Debug)]
pub struct EnrollmentPassRow {
    pub id: String,
    pub user_id: String,
    pub code_hash: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: i32,
}

pub async fn insert_enrollment_pass<C: ConnectionTrait>(c: &C, p: &EnrollmentPassRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO enrollment_passes (id, user_id, code_hash, created_by, created_at, expires_at, uses_left) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            p.id.clone().into(),
            p.user_id.clone().into(),
            p.code_hash.clone().into(),
            p.created_by.clone().into(),
            p.created_at.into(),
            p.expires_at.into(),
            p.uses_left.into(),
        ],
    )
    .await
    .map(drop)
}

/// Takes one use of the user's pass with this hash, if it is unexpired and has uses left:
/// one statement, so two enrolments racing for a single-use pass cannot both have it.
/// Returns the pass's id, expiry and uses left after this one.
pub async fn use_enrollment_pass<C: ConnectionTrait>(
    c: &C,
    user_id: &str,
    code_hash: &str,
    now: i64,
) -> Result<Option<(String, i64, i32)>, DbErr> {
    let row = db::query_one(
        c,
        "UPDATE enrollment_passes SET uses_left = uses_left - 1 \
         WHERE user_id = $1 AND code_hash = $2 AND uses_left > 0 AND expires_at > $3 \
         RETURNING id, expires_at, uses_left",
        vec![user_id.into(), code_hash.into(), now.into()],
    )
    .await?;
    row.map(|r| Ok((col(&r, "id")?, col(&r, "expires_at")?, col(&r, "uses_left")?)))
        .transpose()
}

/// The user's passes that still work at `now`.
pub async fn enrollment_passes<C: ConnectionTrait>(
    c: &C,
    user_id: &str,
    now: i64,
) -> Result<Vec<EnrollmentPassRow>, DbErr> {
    db::query(
        c,
        "SELECT id, user_id, code_hash, created_by, created_at, expires_at, uses_left FROM enrollment_passes \
         WHERE user_id = $1 AND uses_left > 0 AND expires_at > $2 ORDER BY created_at",
        vec![user_id.into(), now.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(EnrollmentPassRow {
            id: col(r, "id")?,
            user_id: col(r, "user_id")?,
            code_hash: col(r, "code_hash")?,
            created_by: col(r, "created_by")?,
            created_at: col(r, "created_at")?,
            expires_at: col(r, "expires_at")?,
            uses_left: col(r, "uses_left")?,
        })
    })
    .collect()
}

/// Unused recovery codes, and when one was last used.
pub async fn recovery_codes_state<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<(i64, Option<i64>), DbErr> {
    let row = db::query_one(
        c,
        "SELECT COALESCE(SUM(CASE WHEN used_at IS NULL THEN 1 ELSE 0 END), 0) AS unused, MAX(used_at) AS last_used \
         FROM recovery_codes WHERE user_id = $1",
        vec![user_id.into()],
    )
    .await?;
    match row {
        Some(r) => Ok((col(&r, "unused")?, col(&r, "last_used")?)),
        None => Ok((0, None)),
    }
}

/// Ends every live session of a principal but `keep`; returns the ended sessions' ids.
pub async fn revoke_other_sessions<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    keep: &str,
    now: i64,
) -> Result<Vec<String>, DbErr> {
    db::query(
        c,
        "UPDATE sessions SET revoked_at = $1 WHERE principal_id = $2 AND id <> $3 AND revoked_at IS NULL AND expires_at > $4 \
         RETURNING id",
        vec![now.into(), principal_id.into(), keep.into(), now.into()],
    )
    .await?
    .iter()
    .map(|r| col(r, "id"))
    .collect()
}

/// Gives a live session a refresh token (a sign-in completed by MFA); false when it ended.
pub async fn set_session_refresh<C: ConnectionTrait>(
    c: &C,
    session_id: &str,
    refresh_hash: &str,
) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE sessions SET refresh_hash = $1 WHERE id = $2 AND revoked_at IS NULL",
        vec![refresh_hash.into(), session_id.into()],
    )
    .await?
        == 1)
}

/// The role-assignable groups a principal is a member or owner of: (group name, owner?).
pub async fn role_assignable_links<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
) -> Result<Vec<(String, bool)>, DbErr> {
    db::query(
        c,
        "SELECT g.display_name AS name, FALSE AS owner FROM group_members m JOIN groups g ON g.id = m.group_id \
         WHERE m.principal_id = $1 AND g.is_assignable_to_role = TRUE \
         UNION ALL \
         SELECT g.display_name AS name, TRUE AS owner FROM group_owners o JOIN groups g ON g.id = o.group_id \
         WHERE o.principal_id = $2 AND g.is_assignable_to_role = TRUE",
        vec![principal_id.into(), principal_id.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((col(r, "name")?, col(r, "owner")?)))
    .collect()
}

/// The failures counted in the current window (started after `window_after`) for `keys`:
/// (key, failures, window start).
pub async fn sign_in_failures<C: ConnectionTrait>(
    c: &C,
    keys: &[&str],
    window_after: i64,
) -> Result<Vec<(String, i64, i64)>, DbErr> {
    let sql = format!(
        "SELECT key, failures, window_start FROM sign_in_failures WHERE key IN ({}) AND window_start > ${}",
        db::placeholders(1, keys.len()),
        keys.len() + 1
    );
    let mut values: Vec<sea_orm::Value> = keys.iter().map(|k| (*k).into()).collect();
    values.push(window_after.into());
    db::query(c, &sql, values)
        .await?
        .iter()
        .map(|r| Ok((col(r, "key")?, col(r, "failures")?, col(r, "window_start")?)))
        .collect()
}

/// Counts a failure against `key` in one statement: a window that ended before
/// `window_after` starts again at `now`.
pub async fn count_sign_in_failure<C: ConnectionTrait>(
    c: &C,
    key: &str,
    now: i64,
    window_after: i64,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO sign_in_failures (key, failures, window_start) VALUES ($1, 1, $2) \
         ON CONFLICT (key) DO UPDATE SET \
         failures = CASE WHEN sign_in_failures.window_start > $3 THEN sign_in_failures.failures + 1 ELSE 1 END, \
         window_start = CASE WHEN sign_in_failures.window_start > $4 THEN sign_in_failures.window_start ELSE excluded.window_start END",
        vec![key.into(), now.into(), window_after.into(), window_after.into()],
    )
    .await
    .map(drop)
}

pub async fn clear_sign_in_failures<C: ConnectionTrait>(c: &C, key: &str) -> Result<(), DbErr> {
    db::exec(c, "DELETE FROM sign_in_failures WHERE key = $1", vec![key.into()])
        .await
        .map(drop)
}

/// Forgets counts whose window ended before `before`.
pub async fn prune_sign_in_failures<C: ConnectionTrait>(c: &C, before: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM sign_in_failures WHERE window_start < $1",
        vec![before.into()],
    )
    .await
    .map(drop)
}

/// Records that every token of a principal issued up to `at` is refused (disabled, deleted).
pub async fn revoke_principal<C: ConnectionTrait>(c: &C, principal_id: &str, at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO revoked_principals (principal_id, revoked_at) VALUES ($1, $2) \
         ON CONFLICT (principal_id) DO UPDATE SET revoked_at = excluded.revoked_at",
        vec![principal_id.into(), at.into()],
    )
    .await
    .map(drop)
}

/// Sessions revoked after `since`, and principals whose tokens up to a time are refused (those
/// revoked after `since`).
pub async fn revocations_since<C: ConnectionTrait>(
    c: &C,
    since: i64,
) -> Result<(Vec<String>, Vec<(String, i64)>), DbErr> {
    let sessions = db::query(
        c,
        "SELECT id FROM sessions WHERE revoked_at IS NOT NULL AND revoked_at > $1",
        vec![since.into()],
    )
    .await?
    .iter()
    .map(|r| col(r, "id"))
    .collect::<Result<_, _>>()?;
    let principals = db::query(
        c,
        "SELECT principal_id, revoked_at FROM revoked_principals WHERE revoked_at > $1",
        vec![since.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((col(r, "principal_id")?, col(r, "revoked_at")?)))
    .collect::<Result<_, DbErr>>()?;
    Ok((sessions, principals))
}

/// Counts an MFA attempt before its code is checked, in one statement: a window that ended
/// before `window_after` starts again. Returns the attempts in the window and the lockout end.
pub async fn count_mfa_attempt<C: ConnectionTrait>(
    c: &C,
    user_id: &str,
    now: i64,
    window_after: i64,
) -> Result<(i32, Option<i64>), DbErr> {
    let row = db::query_one(
        c,
        "INSERT INTO mfa_failures (user_id, failures, window_start, locked_until) VALUES ($1, 1, $2, NULL) \
         ON CONFLICT (user_id) DO UPDATE SET \
         failures = CASE WHEN mfa_failures.window_start > $3 THEN mfa_failures.failures + 1 ELSE 1 END, \
         window_start = CASE WHEN mfa_failures.window_start > $4 THEN mfa_failures.window_start ELSE excluded.window_start END \
         RETURNING failures, locked_until",
        vec![user_id.into(), now.into(), window_after.into(), window_after.into()],
    )
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("mfa_failures".into()))?;
    Ok((col(&row, "failures")?, col(&row, "locked_until")?))
}

/// Locks a user's MFA until `until`.
pub async fn lock_mfa<C: ConnectionTrait>(c: &C, user_id: &str, until: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE mfa_failures SET locked_until = $1 WHERE user_id = $2",
        vec![until.into(), user_id.into()],
    )
    .await
    .map(drop)
}

/// Takes the user's row lock for the transaction (PostgreSQL: the row; SQLite: the write
/// lock), so changes to one user's MFA methods take turns.
pub async fn lock_user<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE users SET mfa_enroll_until = mfa_enroll_until WHERE id = $1",
        vec![user_id.into()],
    )
    .await
    .map(drop)
}

/// Forgets sessions that ended (expired or revoked) before `before`: no token of theirs lives.
pub async fn prune_sessions<C: ConnectionTrait>(c: &C, before: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $2",
        vec![before.into(), before.into()],
    )
    .await?;
    db::exec(
        c,
        "DELETE FROM revoked_principals WHERE revoked_at < $1",
        vec![before.into()],
    )
    .await
    .map(drop)
}
