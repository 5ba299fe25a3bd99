//! Group membership as this service sees it: identity's members of role-assignable groups
//! (projected from its events) and just-in-time members (active Group Member assignments).

use super::*;

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

/// Serialises, until `c`'s transaction ends, the changes that weigh what `principal_id`'s
/// activations rest on (PostgreSQL: an advisory lock on the id; SQLite has one writer
/// anyway): two removals of the two eligibilities an activation rests on then cannot each
/// see the other's still in force.
pub async fn lock_principal<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<(), DbErr> {
    if c.backend() != sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    db::query(
        c,
        "SELECT pg_advisory_xact_lock(hashtext($1)) IS NULL AS locked",
        vec![principal_id.into()],
    )
    .await
    .map(drop)
}
