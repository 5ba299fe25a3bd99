//! MFA methods, recovery codes, enrollment windows and passes, and MFA attempts.

use super::*;
use crate::factor::Factor;

#[derive(Clone, Debug)]
pub struct MfaMethodRow {
    pub id: String,
    pub user_id: String,
    pub kind: Factor,
    pub secret: Vec<u8>,
    pub confirmed: bool,
    pub last_step: i64,
    pub created_at: i64,
    /// A passkey's name (empty for TOTP).
    pub name: String,
}

pub async fn mfa_methods<C: ConnectionTrait>(c: &C, user_id: &str) -> Result<Vec<MfaMethodRow>, DbErr> {
    db::query(
        c,
        "SELECT id, user_id, kind, secret, confirmed, last_step, created_at, name FROM mfa_methods WHERE user_id = $1 ORDER BY created_at",
        vec![user_id.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(MfaMethodRow {
            id: col(r, "id")?,
            user_id: col(r, "user_id")?,
            kind: col_named(r, "kind", Factor::parse)?,
            secret: col(r, "secret")?,
            confirmed: col(r, "confirmed")?,
            last_step: col(r, "last_step")?,
            created_at: col(r, "created_at")?,
            name: col(r, "name")?,
        })
    })
    .collect()
}

pub async fn insert_mfa_method<C: ConnectionTrait>(c: &C, m: &MfaMethodRow) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO mfa_methods (id, user_id, kind, secret, confirmed, last_step, created_at, name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        vec![
            m.id.clone().into(),
            m.user_id.clone().into(),
            m.kind.as_str().into(),
            m.secret.clone().into(),
            m.confirmed.into(),
            m.last_step.into(),
            m.created_at.into(),
            m.name.clone().into(),
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

/// Keeps a WebAuthn ceremony's state until `expires_at` (and drops expired ones).
pub async fn insert_ceremony<C: ConnectionTrait>(
    c: &C,
    id: &str,
    user_id: &str,
    kind: &str,
    state: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "DELETE FROM webauthn_ceremonies WHERE expires_at <= $1",
        vec![now.into()],
    )
    .await?;
    db::exec(
        c,
        "INSERT INTO webauthn_ceremonies (id, user_id, kind, state, expires_at) VALUES ($1, $2, $3, $4, $5)",
        vec![id.into(), user_id.into(), kind.into(), state.into(), expires_at.into()],
    )
    .await
    .map(drop)
}

/// Takes a ceremony's state: once, by its user, of its kind, before it expires. One statement,
/// so two Finishes racing with the same ceremony cannot both have it.
pub async fn take_ceremony<C: ConnectionTrait>(
    c: &C,
    id: &str,
    user_id: &str,
    kind: &str,
    now: i64,
) -> Result<Option<String>, DbErr> {
    let rows = db::query(
        c,
        "DELETE FROM webauthn_ceremonies WHERE id = $1 AND user_id = $2 AND kind = $3 AND expires_at > $4 RETURNING state",
        vec![id.into(), user_id.into(), kind.into(), now.into()],
    )
    .await?;
    rows.first().map(|r| col(r, "state")).transpose()
}

/// Replaces a passkey's stored credential (its counter moved) if it is still `old`.
pub async fn update_passkey<C: ConnectionTrait>(c: &C, method_id: &str, old: &[u8], new: &[u8]) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE mfa_methods SET secret = $1 WHERE id = $2 AND secret = $3",
        vec![new.to_vec().into(), method_id.into(), old.to_vec().into()],
    )
    .await?
        == 1)
}

/// TOTP methods' sealed seeds after method `after`, in the order of ids (at most `limit`).
pub async fn totp_seeds_after<C: ConnectionTrait>(
    c: &C,
    after: &str,
    limit: u64,
) -> Result<Vec<(String, Vec<u8>)>, DbErr> {
    db::query(
        c,
        &format!("SELECT id, secret FROM mfa_methods WHERE kind = 'totp' AND id > $1 ORDER BY id LIMIT {limit}"),
        vec![after.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((col(r, "id")?, col(r, "secret")?)))
    .collect()
}

/// Replaces a TOTP method's sealed seed, if it is still `old`; whether it did.
pub async fn reseal_seed<C: ConnectionTrait>(c: &C, method_id: &str, old: &[u8], new: &[u8]) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE mfa_methods SET secret = $3 WHERE id = $1 AND secret = $2",
        vec![method_id.into(), old.to_vec().into(), new.to_vec().into()],
    )
    .await?
        == 1)
}
