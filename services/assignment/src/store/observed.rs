//! Grants target systems report (reconciliation): which of them PIM did not make.

use super::*;

/// A grant a target system reported, and whether PIM made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedGrant {
    pub system: String,
    pub principal_id: String,
    pub role_id: String,
    pub scope: String,
    pub managed: bool,
}

/// Starts `system`'s report `report_id`: takes the system's row lock until the transaction
/// ends (PostgreSQL: the row; SQLite: the write lock), so a second report of the system waits
/// for this one and then replaces it whole.
pub async fn begin_report<C: ConnectionTrait>(c: &C, system: &str, report_id: &str, now: i64) -> Result<(), DbErr> {
    db::exec(
        c,
        "INSERT INTO observed_reports (system, report_id, reported_at) VALUES ($1, $2, $3) \
         ON CONFLICT (system) DO UPDATE SET report_id = excluded.report_id, reported_at = excluded.reported_at",
        vec![system.into(), report_id.into(), now.into()],
    )
    .await
    .map(drop)
}

/// Records a reported grant; returns whether it was already known as unmanaged.
pub async fn upsert_observed<C: ConnectionTrait>(
    c: &C,
    g: &ObservedGrant,
    report_id: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let known = db::query_one(
        c,
        "SELECT managed FROM observed_grants WHERE system = $1 AND principal_id = $2 AND role_id = $3 AND scope = $4",
        vec![
            g.system.clone().into(),
            g.principal_id.clone().into(),
            g.role_id.clone().into(),
            g.scope.clone().into(),
        ],
    )
    .await?
    .map(|r| col::<bool>(&r, "managed"))
    .transpose()?;
    db::exec(
        c,
                "INSERT INTO observed_grants (system, principal_id, role_id, scope, managed, first_seen, last_seen, report_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (system, principal_id, role_id, scope) DO UPDATE SET managed = excluded.managed, last_seen = excluded.last_seen, report_id = excluded.report_id",
        vec![
            g.system.clone().into(),
            g.principal_id.clone().into(),
            g.role_id.clone().into(),
            g.scope.clone().into(),
            g.managed.into(),
            now.into(),
            now.into(),
            report_id.into(),
        ],
    )
    .await?;
    Ok(known == Some(false))
}

/// Forgets a system's grants that its latest report (`report_id`) no longer lists; returns
/// those of them that were unmanaged.
pub async fn forget_unreported<C: ConnectionTrait>(
    c: &C,
    system: &str,
    report_id: &str,
) -> Result<Vec<ObservedGrant>, DbErr> {
    let forgotten = db::query(
        c,
        "DELETE FROM observed_grants WHERE system = $1 AND report_id <> $2 RETURNING system, principal_id, role_id, scope, managed",
        vec![system.into(), report_id.into()],
    )
    .await?
    .iter()
    .map(observed_from_row)
    .collect::<Result<Vec<_>, DbErr>>()?;
    Ok(forgotten.into_iter().filter(|g| !g.managed).collect())
}

pub async fn unmanaged_grants<C: ConnectionTrait>(c: &C) -> Result<Vec<ObservedGrant>, DbErr> {
    db::query(c, "SELECT system, principal_id, role_id, scope, managed FROM observed_grants WHERE managed = FALSE ORDER BY system, principal_id, role_id, scope", vec![])
        .await?
        .iter()
        .map(observed_from_row)
        .collect()
}

fn observed_from_row(r: &sea_orm::QueryResult) -> Result<ObservedGrant, DbErr> {
    Ok(ObservedGrant {
        system: col(r, "system")?,
        principal_id: col(r, "principal_id")?,
        role_id: col(r, "role_id")?,
        scope: col(r, "scope")?,
        managed: col(r, "managed")?,
    })
}
