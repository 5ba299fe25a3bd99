//! The approval database: approvals with their stages, decisions (separation of duties is a
//! table constraint, not only code), the requesters' activation history, and access reviews.

use sea_orm::{ConnectionTrait, DbErr, QueryResult};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use pim_runtime::db::{self, Dialect, col, col_named};
use pim_runtime::events::{SqlMigration, backbone_migrations};
mod approvals;
mod history;
mod migrations;
mod reviews;

pub use approvals::*;
pub use history::*;
pub use migrations::*;
pub use reviews::*;
