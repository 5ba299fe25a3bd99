//! Groups and their links (members and owners).

use super::*;

pub async fn update_group<C: ConnectionTrait>(
    c: &C,
    id: &str,
    display_name: &str,
    description: &str,
) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE groups SET display_name = $1, description = $2, \
         lookalike_key = CASE WHEN display_name = $1 THEN lookalike_key ELSE $4 END, \
         lookalike_key_cased = CASE WHEN display_name = $1 THEN lookalike_key_cased ELSE $5 END WHERE id = $3",
        [
            vec![display_name.into(), description.into(), id.into()],
            db::name_key_values(display_name),
        ]
        .concat(),
    )
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

pub(super) const GROUP_COLUMNS: &str = "id, display_name, description, is_assignable_to_role, created_at";

pub(super) fn group_from_row(r: &QueryResult) -> Result<GroupRow, DbErr> {
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
        "INSERT INTO groups (id, display_name, description, is_assignable_to_role, created_at, created_by, lookalike_key, lookalike_key_cased) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            vec![g.id.clone().into(), g.display_name.clone().into(), g.description.clone().into(), g.is_assignable_to_role.into(), g.created_at.into(), by.into()],
            db::name_key_values(&g.display_name),
        ]
        .concat(),
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

/// The next version of a link that just changed: one more than its last, and never less than
/// `now_ms` in microseconds (so versions go on growing after identity's database is restored
/// from a backup that knew fewer changes). Taken in the transaction of the change, after it:
/// the row stays locked until it commits, so of two changes of one link the one that commits
/// later has the larger version.
pub async fn next_link_version<C: ConnectionTrait>(
    c: &C,
    table: Link,
    group_id: &str,
    principal_id: &str,
    now_ms: i64,
) -> Result<u64, DbErr> {
    let link = match table {
        Link::Member => "member",
        Link::Owner => "owner",
    };
    let row = db::query_one(
        c,
        "INSERT INTO link_versions (group_id, principal_id, link, version) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (group_id, principal_id, link) DO UPDATE SET version = \
           CASE WHEN link_versions.version + 1 > $4 THEN link_versions.version + 1 ELSE $4 END \
         RETURNING version",
        vec![
            group_id.into(),
            principal_id.into(),
            link.into(),
            now_ms.saturating_mul(1000).into(),
        ],
    )
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("link version".into()))?;
    Ok(col::<i64>(&row, "version")? as u64)
}

/// Deletes a group (its links must be gone, their versions go with it); whether it was there.
pub async fn delete_group<C: ConnectionTrait>(c: &C, group_id: &str) -> Result<bool, DbErr> {
    db::exec(
        c,
        "DELETE FROM link_versions WHERE group_id = $1",
        vec![group_id.into()],
    )
    .await?;
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
