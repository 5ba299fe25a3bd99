//! Role-assignable group membership, projected from identity's events: members inherit the
//! group's eligible and active roles. Kept in this service's database (the projection) and
//! in memory for CheckAccess; updated after each commit here and, on every replica, from
//! the identity stream, so a member removed from a group loses the role at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use pim_proto::events::v1::{GroupDeleted, GroupMembershipChanged};
use pim_runtime::db::Db;
use pim_runtime::events::{Envelope, decode, short_type};

use crate::index::{Change, Changes, Grant};
use crate::roles::{GROUP_MEMBER, group_scope};
use crate::store;

#[derive(Clone, Default)]
pub struct Memberships {
    /// member → groups
    groups_of: Arc<RwLock<HashMap<String, HashSet<String>>>>,
    /// Where a membership that starts or ends is announced (WatchAccessChanges), if anywhere.
    changes: Option<Changes>,
}

impl Memberships {
    pub async fn load(db: &Db) -> anyhow::Result<Self> {
        let memberships = Self::default();
        for (group, member) in store::group_memberships(db).await? {
            memberships.set(&group, &member, true);
        }
        Ok(memberships)
    }

    /// From now on, each membership that starts or ends is announced on `changes` as a Group
    /// Member grant of the group's scope without an assignment (identity's membership, not
    /// PIM's), so watchers of access see access through groups change; one that ends drops
    /// the answers the process cached.
    pub fn announcing_to(mut self, changes: Changes) -> Self {
        self.changes = Some(changes);
        self
    }

    pub fn set(&self, group_id: &str, principal_id: &str, member: bool) {
        let changed = {
            let mut map = self.groups_of.write().unwrap_or_else(|e| e.into_inner());
            if member {
                map.entry(principal_id.to_owned())
                    .or_default()
                    .insert(group_id.to_owned())
            } else if let Some(groups) = map.get_mut(principal_id) {
                let removed = groups.remove(group_id);
                if groups.is_empty() {
                    map.remove(principal_id);
                }
                removed
            } else {
                false
            }
        };
        if let Some(changes) = self.changes.as_ref().filter(|_| changed) {
            changes.send(Change {
                principal_id: principal_id.to_owned(),
                assignment_id: String::new(),
                grant: Grant {
                    role_id: GROUP_MEMBER.into(),
                    scope: group_scope(group_id),
                    start: 0,
                    end: None,
                    version: 0,
                },
                active: member,
            });
            if !member {
                changes.access_lost();
            }
        }
    }

    pub fn groups_of(&self, principal_id: &str) -> Vec<String> {
        let map = self.groups_of.read().unwrap_or_else(|e| e.into_inner());
        map.get(principal_id)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The membership change an identity event describes: (group, member, is member now).
    pub fn change(envelope: &Envelope) -> anyhow::Result<Option<(String, String, bool)>> {
        let member = match short_type(envelope) {
            "GroupMemberAdded" => true,
            "GroupMemberRemoved" => false,
            _ => return Ok(None),
        };
        let e: GroupMembershipChanged = decode(envelope)?;
        Ok(e.is_assignable_to_role.then_some((e.group_id, e.principal_id, member)))
    }

    /// Another replica's consumer applies `change` to the database; this replica's memory
    /// takes the database's answer once it agrees with the change (or, after 5 s, whatever the
    /// database holds: the event was stale or replayed), never the event's word alone.
    pub async fn follow_database(&self, db: &Db, (group, member, claimed): (String, String, bool)) {
        let mut held = None;
        for _ in 0..50 {
            match store::is_group_member(db, &group, &member).await {
                Ok(now) if now == claimed => {
                    self.set(&group, &member, now);
                    return;
                }
                Ok(now) => held = Some(now),
                Err(err) => tracing::warn!(error = %err, "reading a group membership failed; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if let Some(now) = held {
            self.set(&group, &member, now);
        }
    }

    /// Applies an identity event to the in-memory map (after this replica's consumer wrote it).
    pub fn apply(&self, envelope: &Envelope) -> anyhow::Result<()> {
        if let Some((group, member, is_member)) = Self::change(envelope)? {
            self.set(&group, &member, is_member);
        }
        Ok(())
    }
}

/// What an entry of identity's stream changes for a replica's memory.
pub enum IdentityChange {
    /// A membership of a role-assignable group: (group, member, is member now).
    Membership((String, String, bool)),
    /// A group was deleted: its assignments end.
    GroupDeleted(String),
    Nothing,
}

impl IdentityChange {
    pub fn of(envelope: &Envelope) -> Self {
        if short_type(envelope) == "GroupDeleted" {
            return match decode::<GroupDeleted>(envelope) {
                Ok(e) => Self::GroupDeleted(e.group_id),
                Err(err) => {
                    tracing::warn!(event_id = %envelope.id, error = %err, "unreadable GroupDeleted event");
                    Self::Nothing
                }
            };
        }
        match Memberships::change(envelope) {
            Ok(Some(change)) => Self::Membership(change),
            Ok(None) => Self::Nothing,
            Err(err) => {
                tracing::warn!(event_id = %envelope.id, error = %err, "unreadable group membership event");
                Self::Nothing
            }
        }
    }

    pub fn membership(&self) -> Option<(String, String, bool)> {
        match self {
            Self::Membership(change) => Some(change.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_join_and_leave() {
        let m = Memberships::default();
        m.set("g1", "lee", true);
        m.set("g2", "lee", true);
        let mut groups = m.groups_of("lee");
        groups.sort();
        assert_eq!(groups, vec!["g1", "g2"]);
        m.set("g1", "lee", false);
        assert_eq!(m.groups_of("lee"), vec!["g2"]);
        m.set("g2", "lee", false);
        assert!(m.groups_of("lee").is_empty());
    }
}
