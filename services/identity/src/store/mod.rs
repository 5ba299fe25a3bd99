//! The identity database: migrations and queries, one module per table family. Only this
//! module writes SQL.

use sea_orm::{ConnectionTrait, DbErr, QueryResult};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use pim_runtime::db::{self, Dialect, col, col_named};
use pim_runtime::events::{NameKeysMigration, NamedRows, SqlMigration, backbone_migrations};

mod groups;
mod mfa;
mod migrations;
mod principals;
mod sessions;

pub use groups::*;
pub use mfa::*;
pub use migrations::*;
pub use principals::*;
pub use sessions::*;
