//! Users and service principals: their rows, credentials' hashes, sign-in failures and
//! lockouts, and the revocations that end their tokens everywhere.

use super::*;

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

pub(super) const USER_COLUMNS: &str =
    "id, user_name, display_name, email, password_hash, enabled, created_at, last_sign_in_at";

pub async fn insert_user<C: ConnectionTrait>(c: &C, u: &UserRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO users (id, user_name, display_name, email, password_hash, enabled, created_at, email_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF(LOWER($4), ''))",
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

/// Claims a one-time announcement for this database (true once, whichever replica asks
/// first): one statement, so two replicas starting together cannot both claim it.
pub async fn claim_announcement<C: ConnectionTrait>(c: &C, name: &str, now: i64) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "INSERT INTO announcements (name, announced_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        vec![name.into(), now.into()],
    )
    .await?
        == 1)
}

/// Every user with an address.
pub async fn users_with_email<C: ConnectionTrait>(c: &C) -> Result<Vec<UserRow>, DbErr> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email <> '' ORDER BY id");
    db::rows(c, &sql, vec![], UserRow::from_row).await
}

pub async fn disabled_users<C: ConnectionTrait>(c: &C) -> Result<Vec<UserRow>, DbErr> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE NOT enabled ORDER BY id");
    db::rows(c, &sql, vec![], UserRow::from_row).await
}

/// A user by id, or by (lower-cased) user name. What reads as an id (a UUID) is only ever
/// taken as one: a user named after another principal's id never stands for it.
pub async fn find_user<C: ConnectionTrait>(c: &C, id_or_name: &str) -> Result<Option<UserRow>, DbErr> {
    let (sql, key) = if let Ok(id) = uuid::Uuid::parse_str(id_or_name) {
        // Ids are kept hyphenated and in lower case: any spelling of one finds it.
        (
            format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
            id.hyphenated().to_string(),
        )
    } else {
        (
            format!("SELECT {USER_COLUMNS} FROM users WHERE user_name = $1"),
            id_or_name.to_lowercase(),
        )
    };
    db::row(c, &sql, vec![key.into()], UserRow::from_row).await
}

/// A LIKE pattern (with `ESCAPE '\\'`) for values containing `filter`, compared with
/// `LOWER(…)`: ASCII letters only are folded, as SQLite's `LOWER` folds them, so both
/// databases answer alike.
pub(super) fn like_pattern(filter: &str) -> String {
    format!("%{}%", db::like_escaped(&filter.to_ascii_lowercase()))
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

/// Takes the user's row lock if `hash` is still their password (PostgreSQL: the row; SQLite:
/// the write lock): a reset waits for the transaction, or came first and this says false.
pub async fn hold_user_password<C: ConnectionTrait>(c: &C, user_id: &str, hash: &str) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE users SET password_hash = password_hash WHERE id = $1 AND password_hash = $2",
        vec![user_id.into(), hash.into()],
    )
    .await?
        == 1)
}

/// The same for a service principal's client secret: its current one, or (`kept`) the
/// previous one while it still works (`now` before its end). Held as it was matched: a current
/// secret a rotation made the kept one meanwhile is refused, so its token (issued after the
/// rotation's instant, without the kept secret's session) cannot outlive it.
pub async fn hold_service_principal_secret<C: ConnectionTrait>(
    c: &C,
    id: &str,
    hash: &str,
    kept: bool,
    now: i64,
) -> Result<bool, DbErr> {
    let (held, mut values) = match kept {
        true => (
            "previous_secret_hash = $2 AND previous_secret_until > $3",
            vec![now.into()],
        ),
        false => ("secret_hash = $2", vec![]),
    };
    values.splice(0..0, [id.into(), hash.into()]);
    let sql = format!("UPDATE service_principals SET secret_hash = secret_hash WHERE id = $1 AND {held}");
    Ok(db::exec(c, &sql, values).await? == 1)
}

pub async fn set_password<C: ConnectionTrait>(c: &C, user_id: &str, hash: &str) -> Result<u64, DbErr> {
    db::exec(
        c,
        "UPDATE users SET password_hash = $1 WHERE id = $2",
        vec![hash.into(), user_id.into()],
    )
    .await
}

/// Whether it changed anything (the user was not so already).
pub async fn set_user_enabled<C: ConnectionTrait>(c: &C, user_id: &str, enabled: bool) -> Result<bool, DbErr> {
    db::exec(
        c,
        "UPDATE users SET enabled = $1 WHERE id = $2 AND enabled <> $1",
        vec![enabled.into(), user_id.into()],
    )
    .await
    .map(|changed| changed > 0)
}

/// Of `ids`, the users that are enabled, each row locked (PostgreSQL, in id order, so two
/// transactions asking take turns; a key-sharing lock, so rows referring to the user are still
/// written meanwhile) until `c`'s transaction ends; SQLite has one writer.
pub async fn lock_enabled_users<C: ConnectionTrait>(c: &C, ids: &[String]) -> Result<Vec<String>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let lock = if c.for_update().is_empty() {
        ""
    } else {
        " FOR NO KEY UPDATE"
    };
    let sql = format!(
        "SELECT id FROM users WHERE id IN ({}) AND enabled ORDER BY id{lock}",
        db::placeholders(1, ids.len()),
    );
    let values = ids.iter().map(|id| id.clone().into()).collect();
    db::query(c, &sql, values)
        .await?
        .iter()
        .map(|r| col::<String>(r, "id"))
        .collect()
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
    /// The secret before the last rotation, while a rotation keeps it working for a while.
    pub previous_secret: Option<KeptSecret>,
}

/// A client secret kept working beside the new one after a rotation.
#[derive(Clone, Debug, PartialEq)]
pub struct KeptSecret {
    pub hash: String,
    /// When it was rotated (ms): the tokens issued up to then stop when it does.
    pub since: i64,
    /// When it stops working (ms).
    pub until: i64,
}

pub async fn insert_service_principal<C: ConnectionTrait>(c: &C, sp: &ServicePrincipalRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO service_principals (id, display_name, secret_hash, enabled, created_at, lookalike_key, lookalike_key_cased) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            vec![
                sp.id.clone().into(),
                sp.display_name.clone().into(),
                sp.secret_hash.clone().into(),
                sp.enabled.into(),
                sp.created_at.into(),
            ],
            db::name_key_values(&sp.display_name),
        ]
        .concat(),
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
            previous_secret: match (
                col::<Option<String>>(r, "previous_secret_hash")?,
                col::<Option<i64>>(r, "previous_secret_since")?,
                col::<Option<i64>>(r, "previous_secret_until")?,
            ) {
                (Some(hash), Some(since), Some(until)) => Some(KeptSecret { hash, since, until }),
                _ => None,
            },
        })
    }
}

pub(super) const SP_COLUMNS: &str = "id, display_name, secret_hash, enabled, created_at, previous_secret_hash, previous_secret_since, previous_secret_until";

/// The service principals disabled.
pub async fn disabled_service_principals<C: ConnectionTrait>(c: &C) -> Result<Vec<ServicePrincipalRow>, DbErr> {
    let sql = format!("SELECT {SP_COLUMNS} FROM service_principals WHERE NOT enabled ORDER BY id");
    db::rows(c, &sql, vec![], ServicePrincipalRow::from_row).await
}

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

pub async fn update_user<C: ConnectionTrait>(
    c: &C,
    user_id: &str,
    display_name: &str,
    email: &str,
) -> Result<(), DbErr> {
    db::exec(
        c,
        // The address's key follows a change of address only (one kept from before the key
        // was held once keeps working).
        "UPDATE users SET display_name = $1, email = $2, email_key = CASE WHEN LOWER(email) = LOWER($2) \
         THEN email_key ELSE NULLIF(LOWER($2), '') END WHERE id = $3",
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

/// A new client secret; `previous`, the old one kept working for a while (none: it stops now).
pub async fn set_service_principal_secret<C: ConnectionTrait>(
    c: &C,
    id: &str,
    secret_hash: &str,
    previous: Option<&KeptSecret>,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE service_principals SET secret_hash = $1, previous_secret_hash = $3, \
         previous_secret_since = $4, previous_secret_until = $5 WHERE id = $2",
        vec![
            secret_hash.into(),
            id.into(),
            previous.map(|p| p.hash.clone()).into(),
            previous.map(|p| p.since).into(),
            previous.map(|p| p.until).into(),
        ],
    )
    .await
    .map(drop)
}

/// A service principal, its row held until the transaction ends (a sign-in holding its secret
/// waits, or is waited for).
pub async fn lock_service_principal<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<ServicePrincipalRow>, DbErr> {
    db::exec(
        c,
        "UPDATE service_principals SET secret_hash = secret_hash WHERE id = $1",
        vec![id.into()],
    )
    .await?;
    find_service_principal(c, id).await
}

/// Whether a kept secret's time is over (by `now`), still on record.
pub async fn secret_overlap_ended<C: ConnectionTrait>(c: &C, now: i64) -> Result<bool, DbErr> {
    let found = db::query(
        c,
        "SELECT id FROM service_principals WHERE previous_secret_until <= $1 LIMIT 1",
        vec![now.into()],
    )
    .await?;
    Ok(!found.is_empty())
}

/// Forgets the kept secrets whose time is over (by `now`), in one statement: each principal
/// with the instant its secret was rotated, whose earlier tokens stop now. Replicas sweeping
/// together end each overlap once. (The instant stays, read back here: RETURNING gives the
/// row as updated; without the hash it keeps nothing working.)
pub async fn end_secret_overlaps<C: ConnectionTrait>(c: &C, now: i64) -> Result<Vec<(String, i64)>, DbErr> {
    db::rows(
        c,
        "UPDATE service_principals SET previous_secret_hash = NULL, previous_secret_until = NULL \
         WHERE previous_secret_until <= $1 RETURNING id, previous_secret_since",
        vec![now.into()],
        |r| {
            Ok((
                col(r, "id")?,
                col::<Option<i64>>(r, "previous_secret_since")?.unwrap_or(0),
            ))
        },
    )
    .await
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

/// The failures counted in the current window (started after `window_after`) for `keys`:
/// (key, failures, window start). (Sign-in learns them as it counts: the store tests read.)
#[cfg(test)]
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

/// Counts an attempt against `key` in one statement: a window that ended before
/// `window_after` starts again at `now`. Returns the count with this one, and when its window
/// started.
pub async fn count_sign_in_attempt<C: ConnectionTrait>(
    c: &C,
    key: &str,
    now: i64,
    window_after: i64,
) -> Result<(i64, i64), DbErr> {
    let row = db::query_one(
        c,
        "INSERT INTO sign_in_failures (key, failures, window_start) VALUES ($1, 1, $2) \
         ON CONFLICT (key) DO UPDATE SET \
         failures = CASE WHEN sign_in_failures.window_start > $3 THEN sign_in_failures.failures + 1 ELSE 1 END, \
         window_start = CASE WHEN sign_in_failures.window_start > $4 THEN sign_in_failures.window_start ELSE excluded.window_start END \
         RETURNING failures, window_start",
        vec![key.into(), now.into(), window_after.into(), window_after.into()],
    )
    .await?
    .ok_or_else(|| DbErr::RecordNotFound(format!("the count of {key}")))?;
    Ok((col(&row, "failures")?, col(&row, "window_start")?))
}

/// Records that `user_id` signed in from `source` (a digest) at `now`.
pub async fn remember_source<C: ConnectionTrait>(c: &C, user_id: &str, source: &str, now: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO familiar_sources (user_id, source, last_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, source) DO UPDATE SET last_at = excluded.last_at",
        vec![user_id.into(), source.into(), now.into()],
    )
    .await
    .map(drop)
}

/// Whether `user_id` signed in from `source` (a digest) after `since`.
pub async fn is_familiar<C: ConnectionTrait>(c: &C, user_id: &str, source: &str, since: i64) -> Result<bool, DbErr> {
    Ok(db::query_one(
        c,
        "SELECT 1 AS found FROM familiar_sources WHERE user_id = $1 AND source = $2 AND last_at > $3",
        vec![user_id.into(), source.into(), since.into()],
    )
    .await?
    .is_some())
}

/// Takes back one attempt counted against `key` (it succeeded: only failures count).
pub async fn uncount_sign_in_attempt<C: ConnectionTrait>(c: &C, key: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE sign_in_failures SET failures = failures - 1 WHERE key = $1 AND failures > 0",
        vec![key.into()],
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

/// Forgets sources last signed in from before `before` (no longer familiar).
pub async fn prune_familiar_sources<C: ConnectionTrait>(c: &C, before: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM familiar_sources WHERE last_at < $1",
        vec![before.into()],
    )
    .await
    .map(drop)
}

/// Records that every token of a principal issued up to `at` is refused (disabled, deleted);
/// an earlier instant never lowers the mark.
pub async fn revoke_principal<C: ConnectionTrait>(c: &C, principal_id: &str, at: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO revoked_principals (principal_id, revoked_at) VALUES ($1, $2) \
         ON CONFLICT (principal_id) DO UPDATE SET revoked_at = CASE \
         WHEN excluded.revoked_at > revoked_principals.revoked_at THEN excluded.revoked_at \
         ELSE revoked_principals.revoked_at END",
        vec![principal_id.into(), at.into()],
    )
    .await
    .map(drop)
}

/// Up to when (ms) a principal's tokens are refused, if they were ever revoked whole.
pub async fn principal_revoked_at<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<Option<i64>, DbErr> {
    db::query(
        c,
        "SELECT revoked_at FROM revoked_principals WHERE principal_id = $1",
        vec![principal_id.into()],
    )
    .await?
    .first()
    .map(|r| col(r, "revoked_at"))
    .transpose()
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
