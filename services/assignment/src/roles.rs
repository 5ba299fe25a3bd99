//! Role definitions: the built-ins every directory starts with (seeded by migration, with
//! Entra's role template ids so people recognise them), and an in-memory catalogue of all
//! roles for the CheckAccess hot path.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use pim_runtime::db::Db;

use crate::store::{self, RoleRow};

pub use pim_proto::catalogue::{
    BUILT_IN_ROLES, GLOBAL_ADMINISTRATOR, GROUP_MEMBER, GROUP_OWNER, PRIVILEGED_ROLE_ADMINISTRATOR, group_of_scope,
    group_scope, is_group_access,
};
use pim_runtime::access::permissions as p;

/// Every role definition, by id, kept in memory (roles change rarely; CheckAccess reads them
/// on every call).
#[derive(Clone, Default)]
pub struct RoleCatalog {
    roles: Arc<RwLock<HashMap<String, RoleRow>>>,
    /// Which roles grant each permission, computed when the roles load.
    granting: Arc<RwLock<PermissionIndex>>,
    /// One reload at a time: a reload that read earlier never replaces a later one's roles.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

/// Which roles grant a permission, precomputed so that a check by permission costs a few
/// hash lookups rather than matching every permission of every role it meets.
#[derive(Default)]
struct PermissionIndex {
    /// A permission without wildcards (lower-cased) → the roles holding it.
    exact: HashMap<String, Vec<Arc<str>>>,
    /// Patterns with a wildcard, by the segments before their first `*` (lower-cased, e.g.
    /// `app.payments/refunds` for `app.payments/refunds/*`; empty for `*` and `*/…`): a
    /// permission meets only the patterns filed under one of its own leading segments.
    by_prefix: HashMap<String, Vec<(String, Arc<str>)>>,
}

impl PermissionIndex {
    fn build(roles: &HashMap<String, RoleRow>) -> Self {
        let mut index = Self::default();
        for role in roles.values() {
            let id: Arc<str> = Arc::from(role.id.as_str());
            for pattern in &role.permissions {
                let pattern = pattern.to_ascii_lowercase();
                let literal: Vec<&str> = pattern.split('/').take_while(|s| *s != "*").collect();
                if literal.len() == pattern.split('/').count() {
                    index.exact.entry(pattern).or_default().push(id.clone());
                } else {
                    let prefix = literal.join("/");
                    index.by_prefix.entry(prefix).or_default().push((pattern, id.clone()));
                }
            }
        }
        index
    }

    fn roles_granting(&self, permission: &str) -> Vec<Arc<str>> {
        let permission: std::borrow::Cow<str> = if permission.bytes().any(|b| b.is_ascii_uppercase()) {
            permission.to_ascii_lowercase().into()
        } else {
            permission.into()
        };
        let mut out = self.exact.get(permission.as_ref()).cloned().unwrap_or_default();
        // Every leading run of segments, the empty one first: `a`, `a/b`, … (never the whole
        // permission: a pattern's `*` stands for at least one more segment).
        let ends = std::iter::once(0).chain(permission.match_indices('/').map(|(i, _)| i));
        for end in ends {
            for (pattern, role) in self.by_prefix.get(&permission[..end]).into_iter().flatten() {
                if !out.contains(role) && permission_matches(pattern, &permission) {
                    out.push(role.clone());
                }
            }
        }
        out
    }
}

impl RoleCatalog {
    pub async fn load(db: &Db) -> anyhow::Result<Self> {
        let catalog = Self::default();
        catalog.reload(db).await?;
        Ok(catalog)
    }

    /// Reads the catalogue again; answers the ids of the roles whose permissions changed
    /// (or that appeared or went).
    pub async fn reload(&self, db: &Db) -> anyhow::Result<HashSet<String>> {
        let _one_at_a_time = self.reloading.lock().await;
        let roles: HashMap<String, RoleRow> = store::roles(db).await?.into_iter().map(|r| (r.id.clone(), r)).collect();
        let granting = PermissionIndex::build(&roles);
        // Roles first: a role that appears is found before any check is told it grants.
        let before = std::mem::replace(
            &mut *self.roles.write().unwrap_or_else(|e| e.into_inner()),
            roles.clone(),
        );
        *self.granting.write().unwrap_or_else(|e| e.into_inner()) = granting;
        Ok((before.keys().chain(roles.keys()))
            .filter(|id| before.get(*id).map(|r| &r.permissions) != roles.get(*id).map(|r| &r.permissions))
            .cloned()
            .collect())
    }

    pub fn get(&self, id: &str) -> Option<RoleRow> {
        self.roles.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// The name of role `id` (nothing else copied: the check path asks for it).
    pub fn name(&self, id: &str) -> Option<String> {
        self.roles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|r| r.name.clone())
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

    /// The roles that carry `permission`: one of their permissions matches it
    /// ([`permission_matches`]).
    pub fn roles_granting(&self, permission: &str) -> Vec<Arc<str>> {
        self.granting
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .roles_granting(permission)
    }
}

/// Most permissions one custom role may hold.
pub const MAX_PERMISSIONS: usize = 100;
const MAX_SEGMENTS: usize = 8;
const MAX_PERMISSION_LEN: usize = 256;

/// Whether `pattern` (a role's permission) grants `permission`: segments (split at `/`)
/// compare case-insensitively; a `*` segment matches any one, a last `*` any rest (one or
/// more); `*` alone grants everything.
pub fn permission_matches(pattern: &str, permission: &str) -> bool {
    if pattern == p::ALL {
        return true;
    }
    let (mut want, mut have) = (pattern.split('/').peekable(), permission.split('/'));
    while let Some(segment) = want.next() {
        let Some(asked) = have.next() else {
            return false;
        };
        if segment == "*" {
            if want.peek().is_none() {
                return true;
            }
        } else if !segment.eq_ignore_ascii_case(asked) {
            return false;
        }
    }
    have.next().is_none()
}

/// Checks a permission a custom role is to hold (wildcards allowed) or a check asks about
/// (`concrete`: none); the error says what is wrong.
pub fn check_permission(permission: &str, concrete: bool) -> Result<(), String> {
    if permission.is_empty() || permission.len() > MAX_PERMISSION_LEN {
        return Err(format!("{permission:?} must be 1 to {MAX_PERMISSION_LEN} characters"));
    }
    if permission == p::ALL {
        return if concrete {
            Err("names every permission; ask about one".into())
        } else {
            Ok(())
        };
    }
    let segments: Vec<&str> = permission.split('/').collect();
    if segments.len() > MAX_SEGMENTS {
        return Err(format!("{permission} has more than {MAX_SEGMENTS} segments"));
    }
    for segment in segments {
        let word = !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let wildcard = segment == "*" && !concrete;
        if !word && !wildcard {
            return Err(format!(
                "{permission} is not a permission: resource/action segments of letters, digits, . _ -{}",
                if concrete { "" } else { " or *" }
            ));
        }
    }
    Ok(())
}

/// Whether a permission makes its role privileged: everything (`*`), any resource (`*/…`),
/// or the suite's own administration (`pim.…`).
pub fn privileged_permission(permission: &str) -> bool {
    permission == p::ALL || permission.starts_with("*/") || permission.to_ascii_lowercase().starts_with("pim.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_segment_or_a_last_rest() {
        for (pattern, permission, matches) in [
            ("*", "app.payments/refunds/approve", true),
            ("app.payments/refunds/approve", "app.payments/refunds/approve", true),
            ("app.payments/refunds/approve", "App.Payments/Refunds/Approve", true),
            ("app.payments/refunds/approve", "app.payments/refunds/read", false),
            ("app.payments/refunds/approve", "app.payments/refunds", false),
            ("app.payments/refunds", "app.payments/refunds/approve", false),
            ("app.payments/*", "app.payments/refunds/approve", true),
            ("app.payments/*", "app.payments/refunds", true),
            ("app.payments/*", "app.payments", false),
            ("app.payments/*/approve", "app.payments/refunds/approve", true),
            ("app.payments/*/approve", "app.payments/refunds/read", false),
            ("app.payments/*/approve", "app.payments/a/b/approve", false),
            ("*/refunds/approve", "app.shop/refunds/approve", true),
            ("app.payments/refunds/approve", "app.payments/refunds/approve/x", false),
            ("pim.assignments.read", "pim.assignments.read", true),
            ("pim.assignments.read", "pim.assignments.manage", false),
        ] {
            assert_eq!(
                permission_matches(pattern, permission),
                matches,
                "{pattern} ~ {permission}"
            );
        }
    }

    #[test]
    fn the_index_finds_the_roles_whose_permissions_match() {
        let role = |id: &str, permissions: &[&str]| RoleRow {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            built_in: false,
            privileged: false,
        };
        let roles: HashMap<String, RoleRow> = [
            role("all", &["*"]),
            role("refunds", &["App.Payments/Refunds/Approve", "app.payments/reports/*"]),
            role("any-app", &["*/refunds/approve"]),
            role("reader", &["pim.assignments.read"]),
            role("approver", &["app.payments/*/approve"]),
            role("eu", &["app.payments/refunds/eu/*"]),
        ]
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
        let index = PermissionIndex::build(&roles);
        let granting = |p: &str| {
            let mut ids: Vec<String> = index.roles_granting(p).iter().map(|r| r.to_string()).collect();
            ids.sort();
            ids
        };
        assert_eq!(
            granting("app.payments/refunds/approve"),
            ["all", "any-app", "approver", "refunds"]
        );
        assert_eq!(granting("app.payments/refunds/eu/approve"), ["all", "eu"]);
        assert_eq!(granting("app.payments/refunds/eu"), ["all"]);
        assert_eq!(granting("APP.payments/reports/monthly/pdf"), ["all", "refunds"]);
        assert_eq!(granting("app.shop/refunds/approve"), ["all", "any-app"]);
        assert_eq!(granting("pim.assignments.read"), ["all", "reader"]);
        assert_eq!(granting("app.payments/reports"), ["all"]);
        // The same answers as matching every permission of every role.
        for asked in [
            "app.payments/refunds/approve",
            "app.payments/reports/x",
            "app.x/refunds/approve",
            "pim.assignments.manage",
            "app.payments/chargebacks/approve",
            "app.payments/refunds/eu/x/y",
            "app.payments",
        ] {
            let mut scanned: Vec<String> = roles
                .values()
                .filter(|r| r.permissions.iter().any(|p| permission_matches(p, asked)))
                .map(|r| r.id.clone())
                .collect();
            scanned.sort();
            assert_eq!(granting(asked), scanned, "{asked}");
        }
    }

    #[test]
    fn permissions_are_paths_of_words_and_some_are_privileged() {
        assert!(check_permission("app.payments/refunds/approve", true).is_ok());
        assert!(check_permission("app.payments/*", false).is_ok());
        assert!(check_permission("*", false).is_ok());
        for bad in ["", "a//b", "a/b c", "a/b/", "a/ü", "/a"] {
            assert!(check_permission(bad, false).is_err(), "{bad:?}");
        }
        assert!(
            check_permission("app.payments/*", true).is_err(),
            "a check names one permission"
        );
        assert!(check_permission("*", true).is_err());
        assert!(
            check_permission(&format!("{}a", "a/".repeat(8)), false).is_err(),
            "9 segments"
        );
        assert!(privileged_permission("*") && privileged_permission("*/users/read"));
        assert!(privileged_permission("pim.assignments.manage") && privileged_permission("PIM.roles.manage"));
        assert!(!privileged_permission("app.payments/refunds/approve") && !privileged_permission("app.pim/x"));
    }
}
