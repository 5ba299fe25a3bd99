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

    /// Whether role `id` carries `permission`: one of its permissions matches it
    /// ([`permission_matches`]).
    pub fn grants(&self, id: &str, permission: &str) -> bool {
        self.roles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|r| r.permissions.iter().any(|p| permission_matches(p, permission)))
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
