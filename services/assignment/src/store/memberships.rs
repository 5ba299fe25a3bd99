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

/// Every membership of role-assignable groups identity's events told of, current or ended,
/// with its version (0 where none was told): (group, member, is a member, version).
pub async fn group_memberships<C: ConnectionTrait>(c: &C) -> Result<Vec<MembershipState>, DbErr> {
    db::query(
        c,
        "SELECT m.group_id, m.principal_id, TRUE AS member, COALESCE(v.version, 0) AS version \
         FROM group_memberships m LEFT JOIN group_membership_versions v \
           ON v.group_id = m.group_id AND v.principal_id = m.principal_id \
         UNION ALL \
         SELECT v.group_id, v.principal_id, FALSE AS member, v.version FROM group_membership_versions v \
         WHERE NOT EXISTS (SELECT 1 FROM group_memberships m \
                           WHERE m.group_id = v.group_id AND m.principal_id = v.principal_id)",
        vec![],
    )
    .await?
    .iter()
    .map(MembershipState::from_row)
    .collect()
}

/// A membership as the projection holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipState {
    pub group_id: String,
    pub principal_id: String,
    pub member: bool,
    /// The version of identity's change it reflects; 0 where none was told.
    pub version: u64,
}

impl MembershipState {
    fn from_row(r: &sea_orm::QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            group_id: col(r, "group_id")?,
            principal_id: col(r, "principal_id")?,
            member: col(r, "member")?,
            version: col::<i64>(r, "version")? as u64,
        })
    }
}

/// Whether the projection holds `principal_id` as a member of `group_id`, and the version of
/// the change it reflects (0 where none was told).
pub async fn group_membership<C: ConnectionTrait>(
    c: &C,
    group_id: &str,
    principal_id: &str,
) -> Result<MembershipState, DbErr> {
    let row = db::query_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM group_memberships WHERE group_id = $1 AND principal_id = $2) AS member, \
         COALESCE((SELECT version FROM group_membership_versions WHERE group_id = $1 AND principal_id = $2), 0) \
         AS version",
        vec![group_id.into(), principal_id.into()],
    )
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("membership".into()))?;
    Ok(MembershipState {
        group_id: group_id.to_owned(),
        principal_id: principal_id.to_owned(),
        member: col(&row, "member")?,
        version: col::<i64>(&row, "version")? as u64,
    })
}

/// Applies identity's word that `principal_id` is (or is no longer) a member of `group_id`,
/// as of `version`, unless the projection already reflects that version or a later one (the
/// change came late, after a later one); returns whether it applied. Version 0 (an event from
/// before versions were kept, older than every versioned one) applies only to a membership
/// no versioned change was applied to. One upsert decides, holding the membership's version
/// row until the transaction ends, so two changes of one membership take turns.
pub async fn set_group_membership<C: ConnectionTrait>(
    c: &C,
    group_id: &str,
    principal_id: &str,
    member: bool,
    version: u64,
) -> Result<bool, DbErr> {
    let newer = db::query_one(
        c,
        "INSERT INTO group_membership_versions (group_id, principal_id, version) VALUES ($1, $2, $3) \
         ON CONFLICT (group_id, principal_id) DO UPDATE SET version = excluded.version \
         WHERE group_membership_versions.version < excluded.version \
            OR (excluded.version = 0 AND group_membership_versions.version = 0) \
         RETURNING version",
        vec![group_id.into(), principal_id.into(), (version as i64).into()],
    )
    .await?;
    if newer.is_none() {
        return Ok(false);
    }
    let sql = if member {
        "INSERT INTO group_memberships (group_id, principal_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM group_memberships WHERE group_id = $1 AND principal_id = $2"
    };
    db::exec(c, sql, vec![group_id.into(), principal_id.into()]).await?;
    Ok(true)
}

/// Records whether a user may sign in, as identity told at `as_of` (its event's time): a
/// state older than the one recorded (told late, out of order) changes nothing. True when
/// recorded.
pub async fn set_user_enabled<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    enabled: bool,
    as_of: i64,
) -> Result<bool, DbErr> {
    record_user_state(c, principal_id, enabled, true, as_of).await
}

/// Counts a user out as disabled before identity says so (`PrepareUserDisable`), as of
/// `as_of`: the last-Global-Administrator protection weighs it, but the user holds their
/// access until identity tells the disable. False when a later state was recorded.
pub async fn count_out_user<C: ConnectionTrait>(c: &C, principal_id: &str, as_of: i64) -> Result<bool, DbErr> {
    record_user_state(c, principal_id, false, false, as_of).await
}

async fn record_user_state<C: ConnectionTrait>(
    c: &C,
    principal_id: &str,
    enabled: bool,
    told: bool,
    as_of: i64,
) -> Result<bool, DbErr> {
    Ok(db::query_one(
        c,
        "INSERT INTO user_states (principal_id, enabled, told, as_of) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (principal_id) DO UPDATE SET enabled = excluded.enabled, told = excluded.told, \
           as_of = excluded.as_of \
         WHERE user_states.as_of <= excluded.as_of \
         RETURNING as_of",
        vec![principal_id.into(), enabled.into(), told.into(), as_of.into()],
    )
    .await?
    .is_some())
}

/// The users identity last told are disabled (or deleted).
pub async fn disabled_users<C: ConnectionTrait>(c: &C) -> Result<Vec<String>, DbErr> {
    db::query(
        c,
        "SELECT principal_id FROM user_states WHERE NOT enabled AND told",
        vec![],
    )
    .await?
    .iter()
    .map(|r| col(r, "principal_id"))
    .collect()
}

/// Whether `principal_id` may sign in as identity last told (a user only counted out by
/// `PrepareUserDisable` still may), and as of when; None when nothing was recorded.
pub async fn user_state<C: ConnectionTrait>(c: &C, principal_id: &str) -> Result<Option<(bool, i64)>, DbErr> {
    db::query_one(
        c,
        "SELECT (enabled OR NOT told) AS enabled, as_of FROM user_states WHERE principal_id = $1",
        vec![principal_id.into()],
    )
    .await?
    .map(|r| Ok((col(&r, "enabled")?, col(&r, "as_of")?)))
    .transpose()
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
