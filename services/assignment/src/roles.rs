//! Role definitions: the built-ins every directory starts with (seeded by migration, with
//! Entra's role template ids so people recognise them), and an in-memory catalogue of all
//! roles for the CheckAccess hot path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pim_runtime::access::permissions as p;
use pim_runtime::db::Db;

use crate::store::{self, RoleRow};

pub struct BuiltInRole {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub permissions: &'static [&'static str],
    pub privileged: bool,
}

pub const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
pub const PRIVILEGED_ROLE_ADMINISTRATOR: &str = "e8611ab8-c189-46e8-94e1-60213ab1f814";

pub const BUILT_IN_ROLES: &[BuiltInRole] = &[
    BuiltInRole {
        id: GLOBAL_ADMINISTRATOR,
        name: "Global Administrator",
        description: "Can manage every aspect of the directory and of PIM.",
        permissions: &[p::ALL],
        privileged: true,
    },
    BuiltInRole {
        id: PRIVILEGED_ROLE_ADMINISTRATOR,
        name: "Privileged Role Administrator",
        description: "Can manage role assignments, role policies and role-assignable groups.",
        permissions: &[
            p::ASSIGNMENTS_MANAGE,
            p::ASSIGNMENTS_READ,
            p::POLICIES_MANAGE,
            p::ROLES_MANAGE,
            p::APPROVALS_MANAGE,
            p::REVIEWS_MANAGE,
            p::GROUPS_MANAGE,
            p::ROLE_ASSIGNABLE_GROUPS_MANAGE,
            p::USERS_READ,
            p::AUDIT_READ,
            p::RECONCILE_REPORT,
        ],
        privileged: true,
    },
    BuiltInRole {
        id: "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
        name: "Privileged Authentication Administrator",
        description: "Can reset credentials and MFA of any user, privileged or not.",
        permissions: &[
            p::CREDENTIALS_RESET,
            p::PRIVILEGED_CREDENTIALS_RESET,
            p::USERS_READ,
            p::ASSIGNMENTS_READ,
        ],
        privileged: true,
    },
    BuiltInRole {
        id: "c4e39bd9-1100-46d3-8c65-fb160da0071f",
        name: "Authentication Administrator",
        description: "Can reset credentials and MFA of users who hold no privileged role.",
        permissions: &[p::CREDENTIALS_RESET, p::USERS_READ, p::ASSIGNMENTS_READ],
        privileged: true,
    },
    BuiltInRole {
        id: "fe930be7-5e62-47db-91af-98c3a49a38b1",
        name: "User Administrator",
        description: "Can create and manage users and groups (not role-assignable groups).",
        permissions: &[
            p::USERS_MANAGE,
            p::USERS_READ,
            p::GROUPS_MANAGE,
            p::CREDENTIALS_RESET,
            p::ASSIGNMENTS_READ,
        ],
        privileged: true,
    },
    BuiltInRole {
        id: "fdd7a751-b60b-444a-984c-02652fe8fa1c",
        name: "Groups Administrator",
        description: "Can create and manage groups (not role-assignable groups).",
        permissions: &[p::GROUPS_MANAGE, p::USERS_READ],
        privileged: false,
    },
    BuiltInRole {
        id: "194ae4cb-b126-40b2-bd5b-6091b380977d",
        name: "Security Administrator",
        description: "Can manage alerts and their rules, and read the audit log.",
        permissions: &[
            p::ALERTS_READ,
            p::ALERTS_MANAGE,
            p::AUDIT_READ,
            p::ASSIGNMENTS_READ,
            p::USERS_READ,
            p::RECONCILE_REPORT,
        ],
        privileged: true,
    },
    BuiltInRole {
        id: "5d6b6bb7-de71-4623-b4af-96380a352509",
        name: "Security Reader",
        description: "Can read alerts, assignments and the audit log.",
        permissions: &[p::ALERTS_READ, p::AUDIT_READ, p::ASSIGNMENTS_READ, p::USERS_READ],
        privileged: false,
    },
    BuiltInRole {
        id: "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
        name: "Global Reader",
        description: "Can read everything a Global Administrator can, and change nothing.",
        permissions: &[p::USERS_READ, p::ASSIGNMENTS_READ, p::AUDIT_READ, p::ALERTS_READ],
        privileged: false,
    },
    BuiltInRole {
        id: "29232cdf-9323-42fd-ade2-1d097af3e4de",
        name: "Exchange Administrator",
        description: "Can manage the Exchange organisation.",
        permissions: &[p::EXCHANGE_MANAGE],
        privileged: false,
    },
];

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
