//! Signing keys and sessions (refresh tokens, rotation, revocation).

use super::*;

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

/// Seals a key stored before keys were sealed, unless another replica did first.
pub async fn seal_signing_key<C: ConnectionTrait>(c: &C, kid: &str, raw: &[u8], sealed: &[u8]) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE signing_keys SET private_key = $3 WHERE kid = $1 AND private_key = $2",
        vec![kid.into(), raw.to_vec().into(), sealed.to_vec().into()],
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
pub struct SessionRow {
    pub id: String,
    pub principal_id: String,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// The session the tokens a kept client secret gets share, made by the first and lasting as
/// long as the last (no refresh token: its placeholder matches no token's hash).
pub async fn keep_session<C: ConnectionTrait>(
    c: &C,
    id: &str,
    principal_id: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO sessions (id, principal_id, refresh_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET expires_at = CASE WHEN excluded.expires_at > sessions.expires_at \
         THEN excluded.expires_at ELSE sessions.expires_at END",
        vec![
            id.into(),
            principal_id.into(),
            format!("no refresh: {id}").into(),
            now.into(),
            expires_at.into(),
        ],
    )
    .await
    .map(drop)
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

/// Replaces a live session's refresh token (rotation) and keeps the old one as spent at `now`;
/// returns whether the old one was still current (nothing changes otherwise).
pub async fn rotate_refresh<C: ConnectionTrait>(
    c: &C,
    session_id: &str,
    old_hash: &str,
    new_hash: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let rotated = db::exec(
        c,
        "UPDATE sessions SET refresh_hash = $1 WHERE id = $2 AND refresh_hash = $3 AND revoked_at IS NULL",
        vec![new_hash.into(), session_id.into(), old_hash.into()],
    )
    .await?
        == 1;
    if rotated {
        db::exec(
            c,
            "INSERT INTO spent_refresh_tokens (refresh_hash, session_id, spent_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            vec![old_hash.into(), session_id.into(), now.into()],
        )
        .await?;
    }
    Ok(rotated)
}

/// A refresh token a session spent: which session, whose, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpentRefresh {
    pub session_id: String,
    pub principal_id: String,
    pub spent_at: i64,
}

/// The session that spent the refresh token `refresh_hash` names, if any.
pub async fn spent_refresh<C: ConnectionTrait>(c: &C, refresh_hash: &str) -> Result<Option<SpentRefresh>, DbErr> {
    let row = db::query_one(
        c,
        "SELECT s.id, s.principal_id, t.spent_at FROM spent_refresh_tokens t JOIN sessions s ON s.id = t.session_id \
         WHERE t.refresh_hash = $1",
        vec![refresh_hash.into()],
    )
    .await?;
    row.map(|r| {
        Ok(SpentRefresh {
            session_id: col(&r, "id")?,
            principal_id: col(&r, "principal_id")?,
            spent_at: col(&r, "spent_at")?,
        })
    })
    .transpose()
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

/// Ends a principal's oldest live sessions past their newest `keep`, counting only sessions
/// whose sign-in completed (one waiting for MFA lives `pending_ms` at most; completing it
/// makes it live longer); returns their ids.
pub async fn revoke_sessions_past<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    keep: u32,
    pending_ms: i64,
    now: i64,
) -> Result<Vec<String>, DbErr> {
    db::query(
        c,
        "UPDATE sessions SET revoked_at = $1 \
         WHERE principal_id = $2 AND revoked_at IS NULL AND expires_at > $1 AND expires_at - created_at > $4 \
           AND id NOT IN ( \
             SELECT id FROM sessions WHERE principal_id = $2 AND revoked_at IS NULL AND expires_at > $1 \
               AND expires_at - created_at > $4 \
             ORDER BY created_at DESC, id DESC LIMIT $3) \
         RETURNING id",
        vec![
            now.into(),
            principal_id.into(),
            i64::from(keep).into(),
            pending_ms.into(),
        ],
    )
    .await?
    .iter()
    .map(|r| col(r, "id"))
    .collect()
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
    lifetime_ms: i64,
) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE sessions SET refresh_hash = $1, expires_at = created_at + $3 WHERE id = $2 AND revoked_at IS NULL",
        vec![refresh_hash.into(), session_id.into(), lifetime_ms.into()],
    )
    .await?
        == 1)
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
        "DELETE FROM spent_refresh_tokens WHERE session_id NOT IN (SELECT id FROM sessions)",
        vec![],
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
