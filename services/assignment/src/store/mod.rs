//! The assignment database: migrations (with the built-in role definitions), and queries,
//! one module per table family. Each row type has one decoder, beside its table's columns.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, TransactionTrait, Value};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use pim_runtime::db::{self, Db, Dialect, col, col_named, placeholders};
use pim_runtime::events::{NameKeysMigration, NamedRows, OUTBOX_INSERT, OutboxRows, SqlMigration, backbone_migrations};

use crate::domain::{Action, Kind, RequestStatus};
use pim_proto::catalogue::{BUILT_IN_ROLES, GROUP_ACCESS_ROLES};

mod assignments;
mod memberships;
mod migrations;
mod observed;
mod requests;
mod roles;

pub use assignments::*;
pub use memberships::*;
pub use migrations::*;
pub use observed::*;
pub use requests::*;
pub use roles::*;
