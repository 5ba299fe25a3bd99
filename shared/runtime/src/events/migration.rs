//! Migrations written as SQL, and the backbone tables (outbox, inbox) every service database has.

use std::collections::HashSet;

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

use crate::db::Dialect;

/// A migration given as SQL text, rendered for the backend (types differ a little).
pub struct SqlMigration {
    name: &'static str,
    sql: fn(&dyn Dialect) -> String,
}

impl SqlMigration {
    pub fn boxed(name: &'static str, sql: fn(&dyn Dialect) -> String) -> Box<dyn MigrationTrait> {
        Box::new(Self { name, sql })
    }
}

impl MigrationName for SqlMigration {
    fn name(&self) -> &str {
        self.name
    }
}

struct Backend(DbBackend);

impl Dialect for Backend {
    fn backend(&self) -> DbBackend {
        self.0
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SqlMigration {
    /// Each migration and its record in one transaction on both databases (SQLite's DDL is
    /// transactional too): a start killed halfway leaves the database as it was, and the next
    /// start applies the migration whole. Without it, SQLite kept half a migration and no
    /// record of it, and every later start failed on what it had made ("table … already
    /// exists"): a first `pim up` interrupted left its data directory unusable.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        let conn = manager.get_connection();
        let sql = (self.sql)(&Backend(manager.get_database_backend()));
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            conn.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}

/// A table whose names must be told apart by how they read, not only by their letters.
pub struct NamedRows {
    pub table: &'static str,
    /// The column holding the name.
    pub column: &'static str,
    /// Which rows' names are held (an SQL condition): `TRUE` for all.
    pub rows: &'static str,
}

/// A migration giving names their lookalike keys ([`crate::text::name_keys`]): two columns,
/// `lookalike_key` and `lookalike_key_cased`, each held once by a unique index (`{table}_lookalike`,
/// `{table}_lookalike_cased`), so a name that reads as another (`орѕ` beside `ops`) is refused
/// however many are written at once. Filled here for the rows already there, the oldest first;
/// a row whose name reads as an older one's keeps no key, nothing renamed: it goes on as it
/// was, its older lookalike holds the key, so no one else takes it.
pub struct NameKeysMigration {
    name: &'static str,
    tables: &'static [NamedRows],
}

impl NameKeysMigration {
    pub fn boxed(name: &'static str, tables: &'static [NamedRows]) -> Box<dyn MigrationTrait> {
        Box::new(Self { name, tables })
    }
}

impl MigrationName for NameKeysMigration {
    fn name(&self) -> &str {
        self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NameKeysMigration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        let conn = manager.get_connection();
        for NamedRows { table, column, rows } in self.tables {
            conn.execute_unprepared(&format!("ALTER TABLE {table} ADD COLUMN lookalike_key TEXT"))
                .await?;
            conn.execute_unprepared(&format!("ALTER TABLE {table} ADD COLUMN lookalike_key_cased TEXT"))
                .await?;
            let sql = format!("SELECT id, {column} AS name FROM {table} WHERE {rows} ORDER BY created_at, id");
            let named = crate::db::query(conn, &sql, vec![]).await?;
            let (mut lower_held, mut cased_held) = (HashSet::new(), HashSet::new());
            for row in named {
                let (id, name): (String, String) = (crate::db::col(&row, "id")?, crate::db::col(&row, "name")?);
                let [lower, cased] = crate::text::name_keys(&name);
                let lower = lower_held.insert(lower.clone()).then_some(lower);
                let cased = cased_held.insert(cased.clone()).then_some(cased);
                let sql = format!("UPDATE {table} SET lookalike_key = $1, lookalike_key_cased = $2 WHERE id = $3");
                crate::db::exec(conn, &sql, vec![lower.into(), cased.into(), id.into()]).await?;
            }
            conn.execute_unprepared(&format!(
                "CREATE UNIQUE INDEX {table}_lookalike ON {table} (lookalike_key)"
            ))
            .await?;
            conn.execute_unprepared(&format!(
                "CREATE UNIQUE INDEX {table}_lookalike_cased ON {table} (lookalike_key_cased)"
            ))
            .await?;
        }
        Ok(())
    }
}

/// The backbone's tables, the outbox (events waiting for the relay) and the inbox (events this
/// service already applied), with each later change to them, in order. Every service's
/// migrator starts with these, so a change to the backbone is added here, once.
pub fn backbone_migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        backbone_migration(),
        backbone_indexes_migration(),
        backbone_replay_migration(),
        backbone_applied_here_migration(),
        backbone_reached_migration(),
    ]
}

/// The outbox and the inbox.
fn backbone_migration() -> Box<dyn MigrationTrait> {
    SqlMigration::boxed("m0000_backbone", |d| {
        format!(
            "CREATE TABLE outbox (
                id TEXT PRIMARY KEY,
                stream TEXT NOT NULL,
                event_type TEXT NOT NULL,
                envelope {blob} NOT NULL,
                created_at BIGINT NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending',
                attempts INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                sent_at BIGINT
            );
            CREATE INDEX outbox_pending ON outbox (status, created_at);
            CREATE TABLE inbox (
                consumer TEXT NOT NULL,
                event_id TEXT NOT NULL,
                processed_at BIGINT NOT NULL,
                PRIMARY KEY (consumer, event_id)
            )",
            blob = d.blob()
        )
    })
}

/// The relay now deletes what it published (rows marked sent only made the table and its
/// index grow), reads pending rows in order from an index that holds nothing else, and the
/// relay's upkeep prunes old inbox rows by time.
fn backbone_indexes_migration() -> Box<dyn MigrationTrait> {
    SqlMigration::boxed("m0000_backbone_indexes", |_| {
        "DELETE FROM outbox WHERE status = 'sent';
         DROP INDEX outbox_pending;
         CREATE INDEX outbox_due ON outbox (created_at, id) WHERE status = 'pending';
         CREATE INDEX inbox_processed ON inbox (processed_at)"
            .to_owned()
    })
}

/// Published rows may now stay for a replay window (`status = 'sent'`, `sent_at`); the relay's
/// upkeep prunes them by that time, from an index of sent rows only.
fn backbone_replay_migration() -> Box<dyn MigrationTrait> {
    SqlMigration::boxed("m0000_backbone_replay", |_| {
        "CREATE INDEX outbox_sent ON outbox (sent_at) WHERE status = 'sent'".to_owned()
    })
}

/// Events applied ahead of their publication (`InProcessFirst`) are marked with the process
/// that applied them, so that while Redis refuses them the relay applies the ones behind them
/// too, and a write of that process waiting for its events need not wait for Redis.
fn backbone_applied_here_migration() -> Box<dyn MigrationTrait> {
    SqlMigration::boxed("m0000_backbone_applied_here", |_| {
        "ALTER TABLE outbox ADD COLUMN applied_by TEXT;
         CREATE INDEX outbox_not_applied_here ON outbox (created_at, id) WHERE status = 'pending' AND applied_by IS NULL"
            .to_owned()
    })
}

/// Where each stream's newest event from this outbox stands on it (its Redis entry id), so a
/// relay notices a stream that lost them (Redis restarted empty or from an older snapshot)
/// and publishes again what it keeps.
fn backbone_reached_migration() -> Box<dyn MigrationTrait> {
    SqlMigration::boxed("m0000_backbone_reached", |_| {
        "CREATE TABLE outbox_reached (
            stream TEXT PRIMARY KEY,
            entry_ms BIGINT NOT NULL,
            entry_seq BIGINT NOT NULL
        )"
        .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use sea_orm_migration::MigratorTrait;

    use super::*;

    struct Failing;

    #[async_trait::async_trait]
    impl MigratorTrait for Failing {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![
                SqlMigration::boxed("m0001_kept", |_| "CREATE TABLE kept (x INTEGER)".to_owned()),
                // Fails at its second statement, as a start killed halfway stops.
                SqlMigration::boxed("m0002_halfway", |_| {
                    "CREATE TABLE half (x INTEGER); CREATE TABLE kept (x INTEGER)".to_owned()
                }),
            ]
        }
    }

    struct Mended;

    #[async_trait::async_trait]
    impl MigratorTrait for Mended {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![
                SqlMigration::boxed("m0001_kept", |_| "CREATE TABLE kept (x INTEGER)".to_owned()),
                SqlMigration::boxed("m0002_halfway", |_| "CREATE TABLE half (x INTEGER)".to_owned()),
            ]
        }
    }

    /// A migration that stops halfway leaves nothing of itself, on SQLite as on PostgreSQL:
    /// the next start applies it whole.
    #[tokio::test]
    async fn a_migration_stopped_halfway_leaves_nothing_and_runs_whole_next_time() {
        let dir = std::env::temp_dir().join(crate::testing::unique("halfway"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = crate::db::connect(&crate::db::sqlite_url(&dir.join("halfway.db")))
            .await
            .unwrap();
        Failing::up(&db, None).await.expect_err("the second statement fails");
        let tables = |db: crate::db::Db| async move {
            crate::db::query(
                &db,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('kept', 'half') ORDER BY name",
                vec![],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| crate::db::col::<String>(r, "name").unwrap())
            .collect::<Vec<_>>()
        };
        assert_eq!(
            tables(db.clone()).await,
            ["kept"],
            "the first kept, nothing of the second"
        );
        Mended::up(&db, None).await.expect("applied whole at the next start");
        assert_eq!(tables(db.clone()).await, ["half", "kept"]);
        db.close().await.ok();
        std::fs::remove_dir_all(&dir).ok();
    }
}
