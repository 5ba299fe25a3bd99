//! Custom role definitions: created, changed and deleted by those who manage roles; built-in
//! roles are read-only. Every replica's catalogue reloads from the database when the
//! assignment stream says a definition changed.

use sea_orm::TransactionTrait;

use pim_proto::events::v1 as ev;
use pim_runtime::access::permissions;
use pim_runtime::auth::Caller;

use super::Assignments;
use crate::domain::Scope;
use crate::error::{Error, Result};
use crate::roles::{MAX_PERMISSIONS, check_permission, privileged_permission};
use crate::store::{self, RoleRow};
use pim_runtime::events::EventType;

const MAX_NAME: usize = 128;
const MAX_DESCRIPTION: usize = 1024;

/// What a new custom role is to be.
pub struct NewRole {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub privileged: bool,
}

/// What a change of a custom role asks: `None` keeps the value.
pub struct RoleChange {
    pub description: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub privileged: Option<bool>,
}

/// A permission set as stored: each one checked, trimmed, without repeats, in order. Refused
/// as soon as it holds too many, so a list of any length costs at most that many comparisons
/// an entry.
fn permission_set(permissions: Vec<String>) -> Result<Vec<String>> {
    let refused = || {
        Error::invalid(
            "permissions",
            format!("a role holds 1 to {MAX_PERMISSIONS} permissions"),
        )
    };
    let mut out: Vec<String> = Vec::new();
    for p in permissions.iter().map(|p| p.trim()) {
        check_permission(p, false).map_err(|e| Error::invalid("permissions", e))?;
        if !out.iter().any(|o| o.eq_ignore_ascii_case(p)) {
            if out.len() == MAX_PERMISSIONS {
                return Err(refused());
            }
            out.push(p.to_owned());
        }
    }
    if out.is_empty() {
        return Err(refused());
    }
    Ok(out)
}

/// A role's name: printable ASCII (so that "unique whatever its case" means the same on
/// every database), not an id, and not how a deleted role is renamed.
fn role_name(name: &str) -> Result<String> {
    let name = text("name", name, MAX_NAME)?;
    if name.is_empty() {
        return Err(Error::invalid("name", "required"));
    }
    if !name.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(Error::invalid("name", "may hold only printable ASCII characters"));
    }
    // Spacing is no way to tell two roles apart ("Global  Administrator"): an approver reads
    // the name, not its spaces (nor a mail reader's decoding of an encoded-word), nor a
    // lookalike of a built-in role's name ("GIobal Administrator").
    pim_runtime::text::own_name(&name, MAX_NAME).map_err(|why| Error::invalid("name", why))?;
    // A name a built-in role's id already is would only ever find the built-in role.
    let built_in_id = (pim_proto::catalogue::BUILT_IN_ROLES.iter())
        .chain(pim_proto::catalogue::GROUP_ACCESS_ROLES)
        .any(|r| r.id.eq_ignore_ascii_case(&name));
    if uuid::Uuid::parse_str(&name).is_ok() || built_in_id || name.contains("(deleted ") {
        return Err(Error::invalid("name", "must not look like a role id or a deleted role"));
    }
    Ok(name)
}

fn text(field: &'static str, value: &str, max: usize) -> Result<String> {
    pim_runtime::text::free_text(value, max)
        .map(str::to_owned)
        .map_err(|why| Error::invalid(field, why))
}

/// Privileged when marked so or when any permission is ([`privileged_permission`]).
fn is_privileged(marked: bool, permissions: &[String]) -> bool {
    marked || permissions.iter().any(|p| privileged_permission(p))
}

impl Assignments {
    async fn may_manage_roles(&self, caller: &Caller) -> Result<()> {
        self.authorize(caller, permissions::ROLES_MANAGE, &Scope::root()).await
    }

    /// Whether `caller` may put `added` into a role. Whoever may manage assignments everywhere
    /// may hand out any role already (Global Administrator included), so a role's permissions
    /// give them nothing more; anyone else who manages roles may add only what they hold
    /// themselves (a wildcard only where one they hold reaches as far), or they would edit a
    /// role they hold or may activate into one that holds everything.
    async fn may_grant(&self, caller: &Caller, added: &[String]) -> Result<()> {
        if added.is_empty()
            || self
                .authorize(caller, permissions::ASSIGNMENTS_MANAGE, &Scope::root())
                .await
                .is_ok()
        {
            return Ok(());
        }
        for permission in added {
            if self.authorize(caller, permission, &Scope::root()).await.is_err() {
                return Err(Error::PermissionDenied(format!(
                    "a role may hold only permissions its editor holds ({permission} is not one of yours), \
                     unless the editor may manage assignments everywhere ({} at /)",
                    permissions::ASSIGNMENTS_MANAGE
                )));
            }
        }
        Ok(())
    }

    /// Whether `caller` may unmark a privileged role: its holders would lose a privileged
    /// holder's protections (their credentials reset by any Authentication Administrator, its
    /// approvers any group), so only whoever may manage assignments everywhere, and may hand
    /// the role out already, may.
    async fn may_unmark(&self, caller: &Caller, role: &RoleRow) -> Result<()> {
        match self
            .authorize(caller, permissions::ASSIGNMENTS_MANAGE, &Scope::root())
            .await
        {
            Err(Error::PermissionDenied(_)) => Err(Error::PermissionDenied(format!(
                "{} is privileged: unmarking it lowers its holders' protection (an Authentication Administrator \
                 could reset their credentials), which only whoever may manage assignments everywhere may do ({} at /)",
                role.name,
                permissions::ASSIGNMENTS_MANAGE
            ))),
            other => other,
        }
    }

    /// The custom role `role` (id or name), or why it cannot be changed.
    fn custom_role(&self, role: &str) -> Result<RoleRow> {
        let found = self.role(role)?;
        if found.built_in {
            return Err(Error::FailedPrecondition(format!(
                "{} is a built-in role and cannot be changed; create a custom role instead",
                found.name
            )));
        }
        Ok(found)
    }

    pub async fn create_role(&self, caller: &Caller, new: NewRole) -> Result<RoleRow> {
        self.may_manage_roles(caller).await?;
        let name = role_name(&new.name)?;
        let permissions = permission_set(new.permissions)?;
        self.may_grant(caller, &permissions).await?;
        let role = RoleRow {
            id: uuid::Uuid::now_v7().to_string(),
            description: text("description", &new.description, MAX_DESCRIPTION)?,
            privileged: is_privileged(new.privileged, &permissions),
            name,
            permissions,
            built_in: false,
        };
        let event = ev::RoleDefinitionCreated {
            actor: Some(caller.actor()),
            role_id: role.id.clone(),
            name: role.name.clone(),
            permissions: role.permissions.clone(),
            privileged: role.privileged,
            description: role.description.clone(),
        };
        let txn = self.db.begin().await?;
        if !store::insert_role(&txn, &role, self.now()).await? {
            let held = store::role_named_like(&txn, &role.name).await?;
            let why = held.and_then(|held| pim_runtime::text::reads_as("role", &role.name, &held));
            return Err(Error::AlreadyExists(
                why.unwrap_or_else(|| format!("a role named {} exists", role.name)),
            ));
        }
        self.emit(&txn, EventType::RoleDefinitionCreated, &role.id, &event)
            .await?;
        txn.commit().await?;
        self.roles_changed().await?;
        Ok(role)
    }

    pub async fn update_role(&self, caller: &Caller, role: &str, change: RoleChange) -> Result<RoleRow> {
        self.may_manage_roles(caller).await?;
        let id = self.custom_role(role)?.id;
        // What is stored now, not this replica's memory of it: the change applies to it only.
        let before = store::role(&self.db, &id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("role {role}")))?;
        let mut after = before.clone();
        if let Some(description) = change.description {
            after.description = text("description", &description, MAX_DESCRIPTION)?;
        }
        if let Some(permissions) = change.permissions {
            after.permissions = permission_set(permissions)?;
        }
        let marked = change.privileged.unwrap_or(before.privileged);
        after.privileged = is_privileged(marked, &after.permissions);
        let missing = |of: &RoleRow, from: &RoleRow| -> Vec<String> {
            of.permissions
                .iter()
                .filter(|p| !from.permissions.contains(p))
                .cloned()
                .collect()
        };
        let added = missing(&after, &before);
        self.may_grant(caller, &added).await?;
        if before.privileged && !after.privileged {
            self.may_unmark(caller, &before).await?;
        }
        let event = ev::RoleDefinitionUpdated {
            actor: Some(caller.actor()),
            role_id: after.id.clone(),
            name: after.name.clone(),
            permissions: after.permissions.clone(),
            permissions_added: added,
            permissions_removed: missing(&before, &after),
            privileged: after.privileged,
            was_privileged: before.privileged,
        };
        let txn = self.db.begin().await?;
        if !store::update_role(&txn, &before, &after).await? {
            return Err(Error::Aborted(format!(
                "role {} changed while this update was made; read it again and reapply the change",
                before.name
            )));
        }
        self.emit(&txn, EventType::RoleDefinitionUpdated, &after.id, &event)
            .await?;
        txn.commit().await?;
        self.roles_changed().await?;
        Ok(after)
    }

    /// Deletes a custom role nobody holds or waits for; else FAILED_PRECONDITION saying how
    /// many assignments and requests name it.
    pub async fn delete_role(&self, caller: &Caller, role: &str) -> Result<()> {
        self.may_manage_roles(caller).await?;
        let role = self.custom_role(role)?;
        let event = ev::RoleDefinitionDeleted {
            actor: Some(caller.actor()),
            role_id: role.id.clone(),
            name: role.name.clone(),
        };
        let txn = self.db.begin().await?;
        if !store::delete_role(&txn, &role.id, self.now()).await? {
            let (assigned, waiting) = store::role_uses(&txn, &role.id).await?;
            let exists = store::role(&txn, &role.id).await?.is_some();
            txn.rollback().await?;
            if !exists {
                // Deleted by another call meanwhile.
                return Err(Error::NotFound(format!("role {}", role.name)));
            }
            return Err(Error::FailedPrecondition(format!(
                "{} still has {assigned} eligible or active assignment(s) and {waiting} request(s) awaiting approval; remove them first",
                role.name
            )));
        }
        self.emit(&txn, EventType::RoleDefinitionDeleted, &role.id, &event)
            .await?;
        txn.commit().await?;
        self.roles_changed().await
    }

    /// After a definition changed: this replica's catalogue now, the others' from the event.
    async fn roles_changed(&self) -> Result<()> {
        self.committed(&[]);
        self.reload_roles().await.map_err(Error::Internal)
    }

    /// Reads the catalogue again; answers cached from the one before are dropped (a role
    /// that lost a permission no longer grants it anywhere in this process).
    /// The same, quietly when no role's permissions changed: what a replica does every few
    /// seconds, in case a definition's event never reached it (Redis lost it).
    pub(crate) async fn follow_roles(&self) -> anyhow::Result<()> {
        let redefined = self.roles.reload(&self.db).await?;
        if !redefined.is_empty() {
            self.index.changes().access_lost();
            self.index.announce_redefined(&redefined, self.now());
        }
        Ok(())
    }

    pub(crate) async fn reload_roles(&self) -> anyhow::Result<()> {
        let redefined = self.roles.reload(&self.db).await?;
        self.index.changes().access_lost();
        // Apps that cache answers by permission ask again for whoever holds a role that
        // changed (WatchAccessChanges).
        self.index.announce_redefined(&redefined, self.now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_printable_ascii_and_never_look_like_ids() {
        assert_eq!(role_name("  Payments Refunder ").unwrap(), "Payments Refunder");
        for bad in [
            "",
            "Zahlungsprüfer",
            "tab\there",
            "0192f3a4-b5c6-7d8e-9f0a-1b2c3d4e5f6a",
            "X (deleted 0192f3a4)",
            "Group-Member",
        ] {
            assert!(role_name(bad).is_err(), "{bad:?}");
        }
        assert!(role_name(&"a".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn a_permission_set_is_checked_trimmed_and_without_repeats() {
        let set = permission_set(vec![" app.x/read ".into(), "APP.X/READ".into(), "app.x/*".into()]).unwrap();
        assert_eq!(set, ["app.x/read", "app.x/*"]);
        assert!(permission_set(vec![]).is_err(), "a role holds at least one");
        assert!(permission_set(vec!["app.x//read".into()]).is_err());
        let too_many: Vec<String> = (0..=MAX_PERMISSIONS).map(|i| format!("app.x/p{i}")).collect();
        assert!(permission_set(too_many.clone()).is_err());
        assert_eq!(
            permission_set(too_many[..MAX_PERMISSIONS].to_vec()).unwrap().len(),
            MAX_PERMISSIONS
        );
        assert_eq!(
            permission_set(vec!["app.x/read".into(); 1000]).unwrap(),
            ["app.x/read"],
            "repeats count once"
        );
        assert!(is_privileged(false, &["pim.roles.manage".into()]) && is_privileged(true, &["app.x/read".into()]));
        assert!(!is_privileged(false, &["app.x/read".into()]));
    }
}
