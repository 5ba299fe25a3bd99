//! Role definitions: the built-ins every directory starts with (seeded by migration, with
//! Entra's role template ids so people recognise them), and an in-memory catalogue of all
//! roles for the CheckAccess hot path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pim_runtime::db::Db;

use crate::store::{self, RoleRow};

pub use pim_proto::catalogue::{BUILT_IN_ROLES, GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR};
use pim_runtime::access::permissions as p;

/// Every role definition, by id, kept in memory (roles change rarely; CheckAccess reads them
/// on every call).
#[derive(Clone, Default)]
pub struct RoleCatalog {
    roles: Arc<RwLock<HashMap<String, RoleRow>>>,
}

impl RoleCatalog {
    pub async fn load(db: &Db) -> anyhow::Result<Self> {
        let catalog = Self::default();
        catalog.reload(db).await?;
        Ok(catalog)
    }

    pub async fn reload(&self, db: &Db) -> anyhow::Result<()> {
        let roles = store::roles(db).await?;
        *self.roles.write().unwrap_or_else(|e| e.into_inner()) = roles.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<RoleRow> {
        self.roles.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// By id, or by exact (case-insensitive) name.
    pub fn find(&self, id_or_name: &str) -> Option<RoleRow> {
        let roles = self.roles.read().unwrap_or_else(|e| e.into_inner());
        roles.get(id_or_name).cloned().or_else(|| {
            roles
                .values()
                .find(|r| r.name.eq_ignore_ascii_case(id_or_name))
                .cloned()
        })
    }

    /// [`Self::find`]'s id alone (the check path needs no more).
    pub fn find_id(&self, id_or_name: &str) -> Option<String> {
        let roles = self.roles.read().unwrap_or_else(|e| e.into_inner());
        match roles.get(id_or_name) {
            Some(r) => Some(r.id.clone()),
            None => roles
                .values()
                .find(|r| r.name.eq_ignore_ascii_case(id_or_name))
                .map(|r| r.id.clone()),
        }
    }

    pub fn all(&self) -> Vec<RoleRow> {
        let mut all: Vec<_> = self
            .roles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Whether role `id` carries `permission` (`*` carries every one).
    pub fn grants(&self, id: &str, permission: &str) -> bool {
        self.roles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|r| r.permissions.iter().any(|p| p == p::ALL || p == permission))
    }
}
