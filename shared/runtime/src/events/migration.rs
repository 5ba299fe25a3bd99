//! Migrations written as SQL, and the backbone tables (outbox, inbox) every service database has.

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
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        let conn = manager.get_connection();
        let sql = (self.sql)(&Backend(manager.get_database_backend()));
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            conn.execute_unprepared(statement).await?;
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
