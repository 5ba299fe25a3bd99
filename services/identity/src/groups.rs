//! Groups. Role-assignable groups carry roles to their members, so they are guarded more
//! tightly: `is_assignable_to_role` is set at creation only; only Privileged Role
//! Administrators and Global Administrators create them and change their membership (with
//! the group's owners); no group is nested in one; their number is capped.

use sea_orm::TransactionTrait;

use pim_proto::assignment::v1 as apb;
use pim_proto::catalogue;
use pim_proto::common::v1::PrincipalKind;
use pim_proto::events::v1 as ev;
use pim_proto::identity::v1::{GroupLink, GroupLinkKind};
use pim_runtime::access::{Target, permissions, require};
use pim_runtime::auth::Caller;
use pim_runtime::db::now_ms;

use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::store::{self, GroupRow, Link};
use pim_runtime::events::EventType;

/// A new group as asked for.
pub struct NewGroup {
    pub display_name: String,
    pub description: String,
    pub is_assignable_to_role: bool,
    pub owner_ids: Vec<String>,
}

impl Directory {
    async fn holds(&self, caller: &Caller, permission: &str) -> Result<bool> {
        Ok(pim_runtime::access::holds(self.access.as_ref(), caller, permission, "/").await?)
    }

    pub async fn create_group(&self, caller: &Caller, new: NewGroup) -> Result<GroupRow> {
        let needed = if new.is_assignable_to_role {
            permissions::ROLE_ASSIGNABLE_GROUPS_MANAGE
        } else {
            permissions::GROUPS_MANAGE
        };
        require(self.access.as_ref(), caller, needed, "/").await?;
        let display_name = checked_text(&new.display_name, &new.description)?;
        // Owners are kept by id, however they were named.
        let mut owners = Vec::new();
        for owner in &new.owner_ids {
            match store::find_user(&self.db, owner.trim()).await? {
                Some(user) => owners.push(user.id),
                None => return Err(Error::NotFound(format!("owner {}", owner.trim()))),
            }
        }
        owners.sort();
        owners.dedup();
        let group = GroupRow {
            id: uuid::Uuid::now_v7().to_string(),
            display_name: display_name.into(),
            description: new.description.trim().into(),
            is_assignable_to_role: new.is_assignable_to_role,
            created_at: now_ms(),
        };
        let event = ev::GroupCreated {
            actor: Some(caller.actor()),
            group_id: group.id.clone(),
            display_name: group.display_name.clone(),
            is_assignable_to_role: group.is_assignable_to_role,
        };
        let txn = self.db.begin().await?;
        if group.is_assignable_to_role
            && store::count_role_assignable_groups(&txn).await? >= self.max_role_assignable_groups as i64
        {
            return Err(Error::Locked(format!(
                "at most {} role-assignable groups may exist",
                self.max_role_assignable_groups
            )));
        }
        if let Err(err) = store::insert_group(&txn, &group, &caller.principal_id).await {
            txn.rollback().await?;
            return Err(crate::directory::name_refused(&self.db, err, "group", "groups", &group.display_name).await);
        }
        self.emit(&txn, EventType::GroupCreated, &group.id, &event).await?;
        for owner in &owners {
            store::add_link(&txn, Link::Owner, &group.id, owner, group.created_at).await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        Ok(group)
    }

    /// Renames or re-describes a group; `is_assignable_to_role` cannot change.
    pub async fn update_group(
        &self,
        caller: &Caller,
        id: &str,
        display_name: &str,
        description: &str,
        assignable: Option<bool>,
    ) -> Result<GroupRow> {
        let mut group = store::find_group(&self.db, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {id}")))?;
        self.may_change(caller, &group).await?;
        if assignable.is_some_and(|a| a != group.is_assignable_to_role) {
            return Err(Error::invalid(
                "is_assignable_to_role",
                "is set when the group is created and never changes",
            ));
        }
        // A name kept as it was is not weighed again (one from before a rule keeps working
        // while the description changes).
        let display_name = match display_name.trim() {
            same if same == group.display_name => same,
            changed => crate::directory::checked_principal_name(changed)?,
        };
        checked_description(description)?;
        let event = ev::GroupCreated {
            actor: Some(caller.actor()),
            group_id: group.id.clone(),
            display_name: display_name.into(),
            is_assignable_to_role: group.is_assignable_to_role,
        };
        let txn = self.db.begin().await?;
        if let Err(err) = store::update_group(&txn, &group.id, display_name, description.trim()).await {
            txn.rollback().await?;
            return Err(crate::directory::name_refused(&self.db, err, "group", "groups", display_name).await);
        }
        self.emit(&txn, EventType::GroupUpdated, &group.id, &event).await?;
        txn.commit().await?;
        self.outbox.wake();
        group.display_name = display_name.into();
        group.description = description.trim().into();
        Ok(group)
    }

    pub async fn get_group(&self, caller: &Caller, id: &str) -> Result<GroupRow> {
        require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        store::find_group(&self.db, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {id}")))
    }

    pub async fn list_groups(&self, caller: &Caller, after: &str, limit: u64) -> Result<Vec<GroupRow>> {
        require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        Ok(store::list_groups(&self.db, after, limit).await?)
    }

    /// Whether the caller owns the group: permanently, or through an active Group Owner
    /// assignment (PIM for Groups) until it ends.
    async fn owns(&self, caller: &Caller, group: &GroupRow) -> Result<bool> {
        if store::is_owner(&self.db, &group.id, &caller.principal_id).await? {
            return Ok(true);
        }
        let decision = self
            .access
            .check(
                caller,
                &caller.principal_id,
                &Target::Role(catalogue::GROUP_OWNER.to_owned()),
                &catalogue::group_scope(&group.id),
            )
            .await?;
        Ok(decision.allowed)
    }

    /// Who may change a group's members or owners: its owners, and holders of the right permission.
    async fn may_change(&self, caller: &Caller, group: &GroupRow) -> Result<()> {
        if self.owns(caller, group).await? {
            return Ok(());
        }
        let needed = if group.is_assignable_to_role {
            permissions::ROLE_ASSIGNABLE_GROUPS_MANAGE
        } else {
            permissions::GROUPS_MANAGE
        };
        if self.holds(caller, needed).await? {
            return Ok(());
        }
        Err(Error::PermissionDenied(
            if group.is_assignable_to_role {
                "only the group's owners, Privileged Role Administrators and Global Administrators change a role-assignable group"
            } else {
                "requires the group's ownership or permission pim.directory.groups.manage"
            }
            .into(),
        ))
    }

    /// Adds or removes a member or owner, with its event.
    pub async fn change_link(
        &self,
        caller: &Caller,
        link: Link,
        add: bool,
        group_id: &str,
        principal_id: &str,
    ) -> Result<()> {
        let group = store::find_group(&self.db, group_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {group_id}")))?;
        self.may_change(caller, &group).await?;
        let principal = self.get_principal(principal_id).await?;
        // Owners manage others' links, never their own: an owner (perhaps one only for the
        // hour of an activation) adding themselves would keep what PIM gives for a while.
        if add && principal.id == caller.principal_id {
            let needed = if group.is_assignable_to_role {
                permissions::ROLE_ASSIGNABLE_GROUPS_MANAGE
            } else {
                permissions::GROUPS_MANAGE
            };
            if !self.holds(caller, needed).await? {
                return Err(Error::PermissionDenied(
                    "you may not add yourself to a group you own; another owner or an administrator does".into(),
                ));
            }
        }
        if add && link == Link::Member && principal.kind == PrincipalKind::Group as i32 && group.is_assignable_to_role {
            return Err(Error::invalid(
                "principal_id",
                "groups cannot be nested in a role-assignable group",
            ));
        }
        if add && link == Link::Owner && principal.kind != PrincipalKind::User as i32 {
            return Err(Error::invalid("principal_id", "owners are users"));
        }
        // A member of a role-assignable group holds its roles now, standing, and an owner
        // decides who does: as for credential changes, a caller with a method uses it, so a
        // session alone (stolen, or left open) gives nobody standing privileged access.
        if add && group.is_assignable_to_role && !self.confirmed_methods(&caller.principal_id).await?.is_empty() {
            self.require_recent_mfa(caller, "adding a member or owner to a role-assignable group")?;
        }
        let now = now_ms();
        let txn = self.db.begin().await?;
        let changed = if add {
            store::add_link(&txn, link, &group.id, &principal.id, now).await?
        } else {
            store::remove_link(&txn, link, &group.id, &principal.id).await?
        };
        if !changed {
            // Adding twice or removing what is not there changes nothing.
            return Ok(());
        }
        let told = self
            .link_changed(&txn, caller, link, add, &group, &principal.id)
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        self.tell_assignment(caller, told.into_iter().collect()).await;
        Ok(())
    }

    /// The event of a member or owner added to or removed from `group`; where it changes who
    /// holds a role-assignable group's roles, the event, for assignment to be told directly.
    async fn link_changed(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        caller: &Caller,
        link: Link,
        add: bool,
        group: &GroupRow,
        principal_id: &str,
    ) -> Result<Option<pim_runtime::events::Envelope>> {
        let event_type = match (link, add) {
            (Link::Member, true) => EventType::GroupMemberAdded,
            (Link::Member, false) => EventType::GroupMemberRemoved,
            (Link::Owner, true) => EventType::GroupOwnerAdded,
            (Link::Owner, false) => EventType::GroupOwnerRemoved,
        };
        let event = ev::GroupMembershipChanged {
            actor: Some(caller.actor()),
            group_id: group.id.clone(),
            principal_id: principal_id.to_owned(),
            is_assignable_to_role: group.is_assignable_to_role,
            version: store::next_link_version(txn, link, &group.id, principal_id, now_ms()).await?,
        };
        let envelope = self.emit_envelope(txn, event_type, principal_id, &event).await?;
        Ok((link == Link::Member && group.is_assignable_to_role).then_some(envelope))
    }

    /// Deletes a group, for those who may change it: its members and owners leave it first,
    /// each with its event (every projection of the membership follows), then `GroupDeleted`,
    /// on which assignment ends every assignment the group holds and every access to it,
    /// live activations included.
    pub async fn delete_group(&self, caller: &Caller, group_id: &str) -> Result<()> {
        let group = store::find_group(&self.db, group_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {group_id}")))?;
        self.may_change(caller, &group).await?;
        let txn = self.db.begin().await?;
        let mut told = Vec::new();
        for link in [Link::Member, Link::Owner] {
            for principal in store::linked(&txn, link, &group.id).await? {
                if store::remove_link(&txn, link, &group.id, &principal).await? {
                    told.extend(self.link_changed(&txn, caller, link, false, &group, &principal).await?);
                }
            }
        }
        if !store::delete_group(&txn, &group.id).await? {
            // Deleted by a concurrent call: one outcome, theirs.
            return Err(Error::NotFound(format!("group {group_id}")));
        }
        let event = ev::GroupDeleted {
            actor: Some(caller.actor()),
            group_id: group.id.clone(),
            display_name: group.display_name.clone(),
            is_assignable_to_role: group.is_assignable_to_role,
        };
        told.push(
            self.emit_envelope(&txn, EventType::GroupDeleted, &group.id, &event)
                .await?,
        );
        txn.commit().await?;
        self.outbox.wake();
        self.tell_assignment(caller, told).await;
        Ok(())
    }

    /// A group's members or owners, each with how and until when: for directory readers, and
    /// for the group's own owners. Those added to the group come from here; those holding
    /// the access through PIM for Groups (assigned, or activated) are asked of assignment.
    pub async fn linked_principals(
        &self,
        caller: &Caller,
        link: Link,
        group_id: &str,
        direct_only: bool,
    ) -> Result<Vec<GroupLink>> {
        let readable = require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await;
        let group = store::find_group(&self.db, group_id).await?;
        match (readable, group) {
            (Ok(()), None) => return Err(Error::NotFound(format!("group {group_id}"))),
            (Ok(()), Some(_)) => {}
            (Err(refused), None) => return Err(refused.into()),
            (Err(refused), Some(group)) => {
                if !self.owns(caller, &group).await? {
                    return Err(refused.into());
                }
            }
        }
        let mut out = Vec::new();
        for id in store::linked(&self.db, link, group_id).await? {
            if let Ok(p) = self.get_principal(&id).await {
                out.push(GroupLink {
                    principal: Some(p),
                    kind: GroupLinkKind::Direct as i32,
                    end_time: None,
                });
            }
        }
        if direct_only {
            return Ok(out);
        }
        let scope = catalogue::group_scope(group_id);
        let asked = apb::ListAssignmentsRequest {
            role_id: match link {
                Link::Member => catalogue::GROUP_MEMBER,
                Link::Owner => catalogue::GROUP_OWNER,
            }
            .into(),
            scope: scope.clone(),
            ..Default::default()
        };
        let held = self.assignment.active(caller, asked).await.map_err(|err| {
            tracing::warn!(error = %err, "asking assignment for a group's access failed");
            Error::Unavailable("who holds the group through PIM is unavailable; try again".into())
        })?;
        for a in held.into_iter().filter(|a| a.scope == scope) {
            if let Ok(p) = self.get_principal(&a.principal_id).await {
                out.push(GroupLink {
                    principal: Some(p),
                    kind: if a.activated {
                        GroupLinkKind::Activated
                    } else {
                        GroupLinkKind::Assigned
                    } as i32,
                    end_time: a.end_time,
                });
            }
        }
        Ok(out)
    }

    /// The groups a principal is a member of: their own, or anyone's for directory readers.
    pub async fn principal_groups(&self, caller: &Caller, principal_id: &str) -> Result<Vec<GroupRow>> {
        if principal_id != caller.principal_id {
            require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        }
        Ok(store::groups_of(&self.db, principal_id).await?)
    }
}

/// A group's display name (one line, 1 to 256 characters) and description (free text, at
/// most 1024), as people will read them; the name, trimmed.
fn checked_text<'a>(display_name: &'a str, description: &str) -> Result<&'a str> {
    let display_name = crate::directory::checked_principal_name(display_name)?;
    checked_description(description)?;
    Ok(display_name)
}

fn checked_description(description: &str) -> Result<()> {
    pim_runtime::text::free_text(description, 1024).map_err(|why| Error::invalid("description", why))?;
    Ok(())
}
