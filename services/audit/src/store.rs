//! The audit database: one row per domain event, unique by event id.

use sea_orm::{ConnectionTrait, DbErr, QueryResult, Value};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use pim_runtime::db::{self, col};
use pim_runtime::events::{SqlMigration, backbone_migrations};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = backbone_migrations();
        migrations.extend(vec![
            SqlMigration::boxed("m0001_audit_records", |d| {
                format!(
                    "CREATE TABLE audit_records (
                        sequence BIGINT PRIMARY KEY,
                        event_id TEXT NOT NULL UNIQUE,
                        time BIGINT NOT NULL,
                        source TEXT NOT NULL,
                        action TEXT NOT NULL,
                        actor_id TEXT NOT NULL,
                        actor_name TEXT NOT NULL,
                        target_id TEXT NOT NULL,
                        target_name TEXT NOT NULL,
                        role_id TEXT NOT NULL,
                        role_name TEXT NOT NULL,
                        scope TEXT NOT NULL,
                        justification TEXT NOT NULL,
                        ticket TEXT NOT NULL,
                        outcome TEXT NOT NULL,
                        trace_id TEXT NOT NULL,
                                                payload_json TEXT NOT NULL,
                        ingested_at BIGINT NOT NULL,
                        prev_hash {blob} NOT NULL,
                        hash {blob} NOT NULL
                    );
                    CREATE TABLE chain_head (
                        id INTEGER PRIMARY KEY,
                        sequence BIGINT NOT NULL,
                        hash {blob} NOT NULL
                    );
                    INSERT INTO chain_head (id, sequence, hash) VALUES (1, 0, {zero});
                    CREATE INDEX audit_actor ON audit_records (actor_id, sequence);
                    CREATE INDEX audit_target ON audit_records (target_id, sequence);
                    CREATE INDEX audit_time ON audit_records (time)",
                    blob = d.blob(),
                    zero = zero_hash(d),
                )
            }),
            SqlMigration::boxed("m0002_chain_cut", |d| {
                format!(
                    "CREATE TABLE chain_cut (
                        id INTEGER PRIMARY KEY,
                        sequence BIGINT NOT NULL,
                        hash {blob} NOT NULL,
                        cut_at BIGINT NOT NULL
                    );
                    INSERT INTO chain_cut (id, sequence, hash, cut_at) VALUES (1, 0, {zero}, 0)",
                    blob = d.blob(),
                    zero = zero_hash(d),
                )
            }),
            // The names of the principals and roles records name, as the directory and the
            // role catalogue announced them, so every record names them the same way.
            // Records already kept teach it the names they announced (the latest wins).
            SqlMigration::boxed("m0003_names", |_| {
                let naming = crate::records::NAMING_ACTIONS
                    .iter()
                    .map(|a| format!("'{a}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "CREATE TABLE audit_names (id TEXT PRIMARY KEY, name TEXT NOT NULL);
                    INSERT INTO audit_names (id, name)
                    SELECT r.target_id, r.target_name FROM audit_records r
                    WHERE r.action IN ({naming}) AND r.target_id <> '' AND r.target_name <> ''
                      AND r.sequence = (SELECT MAX(n.sequence) FROM audit_records n
                                        WHERE n.target_id = r.target_id AND n.action IN ({naming})
                                          AND n.target_name <> '')"
                )
            }),
            SqlMigration::boxed("m0004_webhooks", |_| crate::webhooks::store::MIGRATION.to_owned()),
            SqlMigration::boxed("m0005_ssf_streams", |_| {
                crate::webhooks::store::SSF_MIGRATION.to_owned()
            }),
            SqlMigration::boxed("m0006_mail", |_| crate::mail::store::MIGRATION.to_owned()),
            // Subjects a receiver removed from its stream (SSF add/remove subject).
            SqlMigration::boxed("m0007_ssf_subjects", |_| {
                "CREATE TABLE ssf_excluded_subjects (
                    stream_id TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    excluded_at BIGINT NOT NULL,
                    PRIMARY KEY (stream_id, principal_id)
                )"
                .to_owned()
            }),
            // How many streams each receiver has, so the limit is one statement's to hold.
            SqlMigration::boxed("m0008_ssf_receivers", |_| {
                "CREATE TABLE ssf_receivers (
                    audience TEXT PRIMARY KEY,
                    streams INTEGER NOT NULL CHECK (streams >= 0)
                );
                INSERT INTO ssf_receivers (audience, streams)
                    SELECT ssf_audience, COUNT(*) FROM webhook_subscriptions
                    WHERE ssf_audience IS NOT NULL GROUP BY ssf_audience"
                    .to_owned()
            }),
            // The Authorization header a push stream's receiver asked for, sealed.
            SqlMigration::boxed("m0009_ssf_push_authorization", |_| {
                "ALTER TABLE webhook_subscriptions ADD COLUMN ssf_authorization TEXT".to_owned()
            }),
            // Groups' owners, reached as the default approvers of access to their group.
            SqlMigration::boxed("m0010_mail_group_owners", |_| {
                crate::mail::store::OWNERS_MIGRATION.to_owned()
            }),
            // A service principal is named as one (`admin (app)`), so an app named as a person
            // never reads as them in the records (those kept already keep their names).
            SqlMigration::boxed("m0011_apps_named_as_apps", |_| {
                format!(
                    "UPDATE audit_names SET name = name || '{}' WHERE id IN
                        (SELECT target_id FROM audit_records WHERE action = 'pim.identity.v1.ServicePrincipalCreated')",
                    crate::records::APP
                )
            }),
        ]);
        migrations
    }
}

/// The chain's genesis hash as an SQL literal.
fn zero_hash(d: &dyn pim_runtime::db::Dialect) -> String {
    let hex: String = crate::chain::GENESIS.iter().map(|b| format!("{b:02x}")).collect();
    if d.backend() == sea_orm::DbBackend::Postgres {
        format!("'\\x{hex}'::bytea")
    } else {
        format!("X'{hex}'")
    }
}

pub use crate::chain::Record;

const COLUMNS: &str = "sequence, event_id, time, source, action, actor_id, actor_name, target_id, target_name, role_id, role_name, scope, justification, ticket, outcome, trace_id, payload_json, prev_hash, hash";

impl Record {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            sequence: col(r, "sequence")?,
            event_id: col(r, "event_id")?,
            time: col(r, "time")?,
            source: col(r, "source")?,
            action: col(r, "action")?,
            actor_id: col(r, "actor_id")?,
            actor_name: col(r, "actor_name")?,
            target_id: col(r, "target_id")?,
            target_name: col(r, "target_name")?,
            role_id: col(r, "role_id")?,
            role_name: col(r, "role_name")?,
            scope: col(r, "scope")?,
            justification: col(r, "justification")?,
            ticket: col(r, "ticket")?,
            outcome: col(r, "outcome")?,
            trace_id: col(r, "trace_id")?,
            payload_json: col(r, "payload_json")?,
            prev_hash: col(r, "prev_hash")?,
            hash: col(r, "hash")?,
        })
    }
}

/// Names every record's actor, target and role the same way: a user by user name, a group or
/// service principal by display name, a role by name, as their own events announced them
/// (the names these records announce are learned first). An id never announced keeps the
/// name its event gave, if any.
pub async fn name_all<C: ConnectionTrait>(c: &C, records: &mut [Record]) -> Result<(), DbErr> {
    for (id, name) in records.iter().filter_map(crate::records::announced_name) {
        db::exec(
            c,
            "INSERT INTO audit_names (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
            vec![id.into(), name.into()],
        )
        .await?;
    }
    // Access to a group is named with the group's name ("Group Member of ops").
    let group_of = |r: &Record| {
        pim_proto::catalogue::group_of_scope(&r.scope)
            .filter(|_| pim_proto::catalogue::is_group_access(&r.role_id))
            .map(str::to_owned)
    };
    let ids: std::collections::BTreeSet<String> = records
        .iter()
        .flat_map(|r| {
            [r.actor_id.clone(), r.target_id.clone(), r.role_id.clone()]
                .into_iter()
                .chain(group_of(r))
        })
        .filter(|id| !id.is_empty())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let mut names: std::collections::HashMap<String, String> = db::query(
        c,
        &format!(
            "SELECT id, name FROM audit_names WHERE id IN ({})",
            placeholders.join(", ")
        ),
        ids.into_iter().map(Into::into).collect(),
    )
    .await?
    .iter()
    .map(|r| Ok((col::<String>(r, "id")?, col::<String>(r, "name")?)))
    .collect::<Result<_, DbErr>>()?;
    for role in pim_proto::catalogue::BUILT_IN_ROLES
        .iter()
        .chain(pim_proto::catalogue::GROUP_ACCESS_ROLES)
    {
        names.insert(role.id.to_owned(), role.name.to_owned());
    }
    for r in records.iter_mut() {
        if let Some(name) = names.get(&r.actor_id) {
            r.actor_name = name.clone();
        }
        if let Some(name) = names.get(&r.target_id) {
            r.target_name = name.clone();
        }
        if let Some(name) = names.get(&r.role_id) {
            r.role_name = name.clone();
        }
        if let Some(group) = group_of(r).and_then(|g| names.get(&g)) {
            r.role_name = format!("{} of {group}", r.role_name);
        }
    }
    Ok(())
}

/// Appends records to the chain in order: one lock of the chain head (so concurrent ingest
/// from several replicas keeps one gap-free chain), the next sequences, each linked to the
/// one before, one insert. Records whose event id is stored already are left out, and only
/// the new ones teach names ([`name_all`], under the lock), so a redelivered old rename
/// cannot overwrite a newer name.
pub async fn append_all<C: ConnectionTrait>(c: &C, records: &mut Vec<Record>, now: i64) -> Result<(), DbErr> {
    append(c, records, now, true).await
}

/// Appends records as they are, naming nothing (as versions before m0003_names did).
#[cfg(test)]
pub async fn append_unnamed<C: ConnectionTrait>(c: &C, records: &mut Vec<Record>, now: i64) -> Result<(), DbErr> {
    append(c, records, now, false).await
}

async fn append<C: ConnectionTrait>(c: &C, records: &mut Vec<Record>, now: i64, naming: bool) -> Result<(), DbErr> {
    if records.is_empty() {
        return Ok(());
    }
    let lock = if c.get_database_backend() == sea_orm::DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let head = db::query_one(
        c,
        &format!("SELECT sequence, hash FROM chain_head WHERE id = 1{lock}"),
        vec![],
    )
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("chain head".into()))?;
    let placeholders: Vec<String> = (1..=records.len()).map(|i| format!("${i}")).collect();
    let known: std::collections::HashSet<String> = db::query(
        c,
        &format!(
            "SELECT event_id FROM audit_records WHERE event_id IN ({})",
            placeholders.join(", ")
        ),
        records.iter().map(|r| r.event_id.clone().into()).collect(),
    )
    .await?
    .iter()
    .map(|r| col::<String>(r, "event_id"))
    .collect::<Result<_, _>>()?;
    let mut seen = std::collections::HashSet::new();
    records.retain(|r| !known.contains(&r.event_id) && seen.insert(r.event_id.clone()));
    if naming {
        name_all(c, records).await?;
    }
    let mut sequence: i64 = col(&head, "sequence")?;
    let mut prev: Vec<u8> = col(&head, "hash")?;
    for r in records.iter_mut() {
        sequence += 1;
        r.sequence = sequence;
        r.prev_hash = prev;
        r.hash = crate::chain::hash(&r.prev_hash, r);
        prev = r.hash.clone();
    }
    // Many rows per statement, within the databases' parameter limits.
    for chunk in records.chunks(1000) {
        let mut rows = Vec::with_capacity(chunk.len());
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 20);
        for r in chunk {
            let base = values.len();
            rows.push(format!(
                "({})",
                (1..=20)
                    .map(|i| format!("${}", base + i))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            values.extend([
                r.sequence.into(),
                r.event_id.clone().into(),
                r.time.into(),
                r.source.clone().into(),
                r.action.clone().into(),
                r.actor_id.clone().into(),
                r.actor_name.clone().into(),
                r.target_id.clone().into(),
                r.target_name.clone().into(),
                r.role_id.clone().into(),
                r.role_name.clone().into(),
                r.scope.clone().into(),
                r.justification.clone().into(),
                r.ticket.clone().into(),
                r.outcome.clone().into(),
                r.trace_id.clone().into(),
                r.payload_json.clone().into(),
                now.into(),
                r.prev_hash.clone().into(),
                r.hash.clone().into(),
            ]);
        }
        db::exec(
            c,
            &format!(
                "INSERT INTO audit_records (sequence, event_id, time, source, action, actor_id, actor_name, target_id, target_name, role_id, role_name, scope, justification, ticket, outcome, trace_id, payload_json, ingested_at, prev_hash, hash) VALUES {}",
                rows.join(", ")
            ),
            values,
        )
        .await?;
    }
    if !records.is_empty() {
        db::exec(
            c,
            "UPDATE chain_head SET sequence = $1, hash = $2 WHERE id = 1",
            vec![sequence.into(), prev.into()],
        )
        .await?;
    }
    Ok(())
}

/// The chain head: (sequence, hash).
pub async fn head<C: ConnectionTrait>(c: &C) -> Result<(i64, Vec<u8>), DbErr> {
    let row = db::query_one(c, "SELECT sequence, hash FROM chain_head WHERE id = 1", vec![])
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("chain head".into()))?;
    Ok((col(&row, "sequence")?, col(&row, "hash")?))
}

/// Records with sequence in [from, to], in order, at most `limit`.
pub async fn range<C: ConnectionTrait>(c: &C, from: i64, to: i64, limit: u64) -> Result<Vec<Record>, DbErr> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_records WHERE sequence >= $1 AND sequence <= $2 ORDER BY sequence LIMIT {limit}"
    );
    db::rows(c, &sql, vec![from.into(), to.into()], Record::from_row).await
}

pub async fn hash_at<C: ConnectionTrait>(c: &C, sequence: i64) -> Result<Option<Vec<u8>>, DbErr> {
    db::query_one(
        c,
        "SELECT hash FROM audit_records WHERE sequence = $1",
        vec![sequence.into()],
    )
    .await?
    .map(|r| col(&r, "hash"))
    .transpose()
}

/// Filters of a query; empty strings match anything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub actor_id: String,
    pub target_id: String,
    pub role_id: String,
    pub scope: String,
    pub action: String,
    pub outcome: String,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub trace_id: String,
    /// Only records this principal did or that were done to them ("my audit").
    pub involving: Option<String>,
    /// Where the page starts: after this sequence (oldest first), or before it (newest first).
    pub after_sequence: i64,
    pub newest_first: bool,
}

pub async fn query<C: ConnectionTrait>(c: &C, f: &Filter, limit: u64) -> Result<Vec<Record>, DbErr> {
    let (mut sql, start) = if f.newest_first {
        // A page of the newest: before the page token, or from the head.
        let before = if f.after_sequence > 0 {
            f.after_sequence
        } else {
            i64::MAX
        };
        (
            format!("SELECT {COLUMNS} FROM audit_records WHERE sequence < $1"),
            before,
        )
    } else {
        (
            format!("SELECT {COLUMNS} FROM audit_records WHERE sequence > $1"),
            f.after_sequence,
        )
    };
    let mut values: Vec<Value> = vec![start.into()];
    let eq = |sql: &mut String, values: &mut Vec<Value>, column: &str, value: &str| {
        if !value.is_empty() {
            values.push(value.into());
            sql.push_str(&format!(" AND {column} = ${}", values.len()));
        }
    };
    eq(&mut sql, &mut values, "actor_id", &f.actor_id);
    eq(&mut sql, &mut values, "target_id", &f.target_id);
    eq(&mut sql, &mut values, "role_id", &f.role_id);
    eq(&mut sql, &mut values, "scope", &f.scope);
    if f.outcome == "failure" {
        // Every attempt that did not succeed: failures and refusals.
        sql.push_str(" AND outcome IN ('failure', 'refused')");
    } else {
        eq(&mut sql, &mut values, "outcome", &f.outcome);
    }
    eq(&mut sql, &mut values, "trace_id", &f.trace_id);
    if !f.action.is_empty() {
        // Full type (pim.assignment.v1.RoleActivated) or its short name (RoleActivated).
        values.push(f.action.clone().into());
        values.push(format!("%.{}", db::like_escaped(&f.action)).into());
        sql.push_str(&format!(
            " AND (action = ${} OR action LIKE ${} ESCAPE '\\')",
            values.len() - 1,
            values.len()
        ));
    }
    if let Some(since) = f.since {
        values.push(since.into());
        sql.push_str(&format!(" AND time >= ${}", values.len()));
    }
    if let Some(until) = f.until {
        values.push(until.into());
        sql.push_str(&format!(" AND time < ${}", values.len()));
    }
    if let Some(p) = &f.involving {
        values.push(p.clone().into());
        values.push(p.clone().into());
        sql.push_str(&format!(
            " AND (actor_id = ${} OR target_id = ${})",
            values.len() - 1,
            values.len()
        ));
    }
    let order = if f.newest_first { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY sequence {order} LIMIT {limit}"));
    db::rows(c, &sql, values, Record::from_row).await
}

pub async fn get<C: ConnectionTrait>(c: &C, event_id: &str) -> Result<Option<Record>, DbErr> {
    let sql = format!("SELECT {COLUMNS} FROM audit_records WHERE event_id = $1");
    db::row(c, &sql, vec![event_id.into()], Record::from_row).await
}

/// Where the kept chain starts: records up to `sequence` were pruned, and the first kept
/// record's `prev_hash` is `hash` ((0, zeros) when nothing was pruned).
pub async fn cut<C: ConnectionTrait>(c: &C) -> Result<(i64, Vec<u8>), DbErr> {
    let row = db::query_one(c, "SELECT sequence, hash FROM chain_cut WHERE id = 1", vec![])
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("chain cut".into()))?;
    Ok((col(&row, "sequence")?, col(&row, "hash")?))
}

/// Prunes the oldest records, those before the first one at or after `cutoff` (all of them
/// when none is that recent), under the chain head's lock. The cut keeps the hash of the
/// last pruned record, so what remains still verifies. Returns the new cut, if it moved.
pub async fn prune<C: ConnectionTrait>(c: &C, cutoff: i64, now: i64) -> Result<Option<(i64, Vec<u8>)>, DbErr> {
    let head = db::query_one(
        c,
        &format!(
            "SELECT sequence FROM chain_head WHERE id = 1{}",
            pim_runtime::db::Dialect::for_update(c)
        ),
        vec![],
    )
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("chain head".into()))?;
    let head: i64 = col(&head, "sequence")?;
    let keep_from = db::query_one(
        c,
        "SELECT MIN(sequence) AS s FROM audit_records WHERE time >= $1",
        vec![cutoff.into()],
    )
    .await?
    .map(|r| col::<Option<i64>>(&r, "s"))
    .transpose()?
    .flatten();
    let last = keep_from.map(|s| s - 1).unwrap_or(head);
    let (current, _) = cut(c).await?;
    if last <= current {
        return Ok(None);
    }
    let Some(hash) = hash_at(c, last).await? else {
        return Err(DbErr::Custom(format!(
            "audit record {last} is missing; verify the chain"
        )));
    };
    db::exec(
        c,
        "UPDATE chain_cut SET sequence = $1, hash = $2, cut_at = $3 WHERE id = 1",
        vec![last.into(), hash.clone().into(), now.into()],
    )
    .await?;
    db::exec(c, "DELETE FROM audit_records WHERE sequence <= $1", vec![last.into()]).await?;
    Ok(Some((last, hash)))
}
