//! Role definitions (built-in and custom) and the policies set on roles at scopes.

use super::*;

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

pub(super) fn role_from_row(r: &sea_orm::QueryResult) -> Result<RoleRow, DbErr> {
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

pub(super) async fn roles_where<C: ConnectionTrait>(
    c: &C,
    condition: &str,
    values: Vec<Value>,
) -> Result<Vec<RoleRow>, DbErr> {
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

/// Stores a new custom role; false when its name (in any case) is taken, or one that reads
/// as it ([`pim_runtime::text::name_keys`]).
pub async fn insert_role<C: ConnectionTrait>(c: &C, r: &RoleRow, now: i64) -> Result<bool, DbErr> {
    db::exec(
        c,
        "INSERT INTO role_definitions (id, name, description, permissions, built_in, privileged, created_at, lookalike_key, lookalike_key_cased) \
         VALUES ($1, $2, $3, $4, FALSE, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        [
            vec![
                r.id.clone().into(),
                r.name.clone().into(),
                r.description.clone().into(),
                r.permissions.join(" ").into(),
                r.privileged.into(),
                now.into(),
            ],
            db::name_key_values(&r.name),
        ]
        .concat(),
    )
    .await
    .map(|n| n == 1)
}

/// The custom role whose name `name` reads as, if one does (see [`insert_role`]).
pub async fn role_named_like<C: ConnectionTrait>(c: &C, name: &str) -> Result<Option<String>, DbErr> {
    db::name_read_as(c, "role_definitions", "name", name).await
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
        "UPDATE role_definitions SET deleted_at = $2, name = name || ' (deleted ' || id || ')', \
           lookalike_key = NULL, lookalike_key_cased = NULL \
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

/// Every stored policy: (role id, scope, policy JSON).
pub async fn every_policy<C: ConnectionTrait>(c: &C) -> Result<Vec<(String, String, String)>, DbErr> {
    db::query(
        c,
        "SELECT role_id, scope, policy FROM role_policies ORDER BY role_id, scope",
        vec![],
    )
    .await?
    .iter()
    .map(|r| Ok((col(r, "role_id")?, col(r, "scope")?, col(r, "policy")?)))
    .collect()
}

/// Removes every policy set at `scope` (a deleted group's): how many.
pub async fn delete_policies_at<C: ConnectionTrait>(c: &C, scope: &str) -> Result<u64, DbErr> {
    db::exec(c, "DELETE FROM role_policies WHERE scope = $1", vec![scope.into()]).await
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
