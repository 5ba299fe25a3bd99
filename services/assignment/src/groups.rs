//! Role-assignable group membership, projected from identity's events: members inherit the
//! group's eligible and active roles. Kept in this service's database (the projection) and
//! in memory for CheckAccess; updated after each commit here and, on every replica, from
//! the identity stream, so a member removed from a group loses the role at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use pim_proto::common::v1::Actor;
use pim_proto::events::v1::{GroupDeleted, GroupMembershipChanged, ServicePrincipalCreated, UserDisabled};
use pim_runtime::clock::Clock;
use pim_runtime::db::Db;
use pim_runtime::events::{Envelope, EventType, decode, event_type};

use crate::index::{AccessIndex, Change, Grant};
use crate::roles::{GROUP_MEMBER, group_scope};
use crate::store;

#[derive(Clone, Default)]
pub struct Memberships {
    held: Arc<RwLock<Held>>,
    /// Taken while who is disabled is read and replaced.
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// Where access that starts or ends here is announced (WatchAccessChanges), if anywhere.
    watched: Option<Watched>,
}

/// What the index's watchers are told through: a membership that starts or ends, and the
/// grants a user stops holding when disabled (and holds again when enabled).
#[derive(Clone)]
struct Watched {
    index: AccessIndex,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Held {
    /// member → groups
    groups_of: HashMap<String, HashSet<String>>,
    /// (group, member) → the version of identity's last change applied, current or ended.
    versions: HashMap<(String, String), u64>,
    /// The users identity disabled (or deleted): they hold nothing until enabled again.
    disabled: HashSet<String>,
}

/// A membership identity changed: (group, member) is a member now, or no longer, as of
/// `version` (0 in events from before versions were kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    pub group: String,
    pub member: String,
    pub is_member: bool,
    pub version: u64,
}

impl Memberships {
    pub async fn load(db: &Db) -> anyhow::Result<Self> {
        let memberships = Self::default();
        for m in store::group_memberships(db).await? {
            memberships.set_as_of(&m.group_id, &m.principal_id, m.member, m.version);
        }
        let disabled = store::disabled_users(db).await?;
        memberships
            .held
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .disabled
            .extend(disabled);
        Ok(memberships)
    }

    /// The user state an identity event tells: a user disabled, enabled or deleted, or a
    /// service principal disabled, as of the event's time. The announcement of a user
    /// disabled before assignment followed such events tells of the past: as of 0, so
    /// whatever identity told since wins over it.
    pub fn user_state_change(envelope: &Envelope) -> anyhow::Result<Option<UserStateChange>> {
        let told = match event_type(envelope) {
            Some(EventType::ServicePrincipalDisabled) => {
                let e: ServicePrincipalCreated = decode(envelope)?;
                return Ok(Some(UserStateChange {
                    user: e.service_principal_id,
                    actor: e.actor,
                    enabled: false,
                    as_of: envelope
                        .time
                        .as_ref()
                        .map(pim_runtime::db::from_timestamp)
                        .unwrap_or_default(),
                }));
            }
            Some(
                t @ (EventType::UserDisabled
                | EventType::UserDisabledAnnounced
                | EventType::UserEnabled
                | EventType::UserDeleted),
            ) => t,
            _ => return Ok(None),
        };
        let e: UserDisabled = decode(envelope)?;
        let as_of = match told {
            EventType::UserDisabledAnnounced => 0,
            _ => envelope
                .time
                .as_ref()
                .map(pim_runtime::db::from_timestamp)
                .unwrap_or_default(),
        };
        Ok(Some(UserStateChange {
            user: e.user_id,
            actor: e.actor,
            enabled: told == EventType::UserEnabled,
            as_of,
        }))
    }

    /// Whether identity disabled (or deleted) `principal_id`: such a user holds nothing.
    pub fn is_disabled(&self, principal_id: &str) -> bool {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.disabled.contains(principal_id)
    }

    /// Takes the database's word on who is disabled (recorded from identity's events by
    /// whichever replica consumed them) once it holds each user's state as of the time told
    /// or later, or after 5 s whatever it holds (the event was stale or replayed, or the
    /// consumer lags: [`Self::reload_disabled`], run every few seconds too, catches up).
    pub async fn follow_user_states(&self, db: &Db, told: &HashMap<String, i64>) {
        let recorded = |user_id: String, as_of: i64| async move {
            for _ in 0..50 {
                match store::user_state(db, &user_id).await {
                    Ok(Some((_, at))) if at >= as_of => return,
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "reading a user's state failed; retrying"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        futures::future::join_all(told.iter().map(|(user, as_of)| recorded(user.clone(), *as_of))).await;
        if let Err(err) = self.reload_disabled(db).await {
            tracing::warn!(error = %err, "reading the disabled users failed; the next reload catches up");
        }
    }

    /// Replaces who is disabled with what the database holds now; reloads take turns, so an
    /// older read never replaces a newer one. A user newly disabled drops the answers the
    /// process cached; watchers see each grant they held end (and start again once enabled).
    /// Reads every membership the database holds into memory, each applied only where it is
    /// newer than what memory holds: a change whose event never reached this replica (Redis
    /// lost it; identity told another replica) is followed all the same.
    pub async fn reload_memberships(&self, db: &Db) -> anyhow::Result<()> {
        for m in store::group_memberships(db).await? {
            self.set_as_of(&m.group_id, &m.principal_id, m.member, m.version);
        }
        Ok(())
    }

    pub async fn reload_disabled(&self, db: &Db) -> anyhow::Result<()> {
        let _turn = self.reloading.lock().await;
        let now: HashSet<String> = store::disabled_users(db).await?.into_iter().collect();
        let (disabled, enabled): (Vec<String>, Vec<String>) = {
            let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
            let disabled = now.difference(&held.disabled).cloned().collect();
            let enabled = held.disabled.difference(&now).cloned().collect();
            held.disabled = now;
            (disabled, enabled)
        };
        if let Some(watched) = &self.watched {
            if !disabled.is_empty() {
                watched.index.changes().access_lost();
            }
            for user in &disabled {
                self.announce_held(watched, user, false);
            }
            for user in &enabled {
                self.announce_held(watched, user, true);
            }
        }
        Ok(())
    }

    /// Tells watchers that each grant `user` holds, in the index and through identity's group
    /// memberships, ended (`active` false: the user was disabled) or holds again.
    fn announce_held(&self, watched: &Watched, user: &str, active: bool) {
        let changes = watched.index.changes();
        // Those that start later too: watchers were told of them when they were granted.
        for (assignment_id, grant) in watched.index.unended(user, watched.clock.now_ms()) {
            changes.send(Change {
                principal_id: user.to_owned(),
                assignment_id,
                grant,
                active,
                redefined: false,
            });
        }
        for group in self.groups_of(user) {
            changes.send(membership_grant(&group, user, active));
        }
    }

    /// From now on, each membership that starts or ends is announced on the index's changes
    /// as a Group Member grant of the group's scope without an assignment (identity's
    /// membership, not PIM's), so watchers of access see access through groups change; one
    /// that ends drops the answers the process cached. A user disabled or enabled is
    /// announced as the end or the start of all they hold, as of `clock`.
    pub fn announcing_to(mut self, index: &AccessIndex, clock: Arc<dyn Clock>) -> Self {
        self.watched = Some(Watched {
            index: index.clone(),
            clock,
        });
        self
    }

    /// Sets a membership as identity's change `version` left it, unless a later change was
    /// applied already (a change told late, out of order, changes nothing). Version 0 (a
    /// change from before versions were kept, so older than every versioned one) applies only
    /// to a membership no versioned change was applied to.
    pub fn set_as_of(&self, group_id: &str, principal_id: &str, member: bool, version: u64) {
        let changed = {
            let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
            let key = (group_id.to_owned(), principal_id.to_owned());
            match (version, held.versions.get(&key)) {
                (0, Some(_)) => return,
                (0, None) => {}
                (version, Some(known)) if *known >= version => return,
                (version, _) => {
                    held.versions.insert(key, version);
                }
            }
            let map = &mut held.groups_of;
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
        if let Some(watched) = self.watched.as_ref().filter(|_| changed) {
            watched
                .index
                .changes()
                .send(membership_grant(group_id, principal_id, member));
            if !member {
                watched.index.changes().access_lost();
            }
        }
    }

    pub fn groups_of(&self, principal_id: &str) -> Vec<String> {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.groups_of
            .get(principal_id)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The membership change an identity event describes, for a role-assignable group.
    pub fn change(envelope: &Envelope) -> anyhow::Result<Option<MembershipChange>> {
        let is_member = match event_type(envelope) {
            Some(EventType::GroupMemberAdded) => true,
            Some(EventType::GroupMemberRemoved) => false,
            _ => return Ok(None),
        };
        let e: GroupMembershipChanged = decode(envelope)?;
        Ok(e.is_assignable_to_role.then_some(MembershipChange {
            group: e.group_id,
            member: e.principal_id,
            is_member,
            version: e.version,
        }))
    }

    /// Another replica's consumer applies `change` to the database; this replica's memory
    /// takes the database's answer, with its version, once it reflects the change (its
    /// version or a later one; unversioned, once it agrees), or after 5 s whatever the
    /// database holds (the event was stale or replayed): never the event's word alone.
    pub async fn follow_database(&self, db: &Db, change: &MembershipChange) {
        let (group, member) = (&change.group, &change.member);
        let reflects = |now: &store::MembershipState| match change.version {
            0 => now.member == change.is_member,
            version => now.version >= version,
        };
        let mut held = None;
        for _ in 0..50 {
            match store::group_membership(db, group, member).await {
                Ok(now) if reflects(&now) => {
                    self.set_as_of(group, member, now.member, now.version);
                    return;
                }
                Ok(now) => held = Some(now),
                Err(err) => tracing::warn!(error = %err, "reading a group membership failed; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if let Some(now) = held {
            self.set_as_of(group, member, now.member, now.version);
        }
    }
}

/// Identity's membership of `principal_id` in `group_id` as watchers see it: a Group Member
/// grant of the group's scope without an assignment, and no start PIM knows of.
fn membership_grant(group_id: &str, principal_id: &str, active: bool) -> Change {
    Change {
        principal_id: principal_id.to_owned(),
        assignment_id: String::new(),
        grant: Grant {
            role_id: GROUP_MEMBER.into(),
            scope: group_scope(group_id),
            start: 0,
            end: None,
            version: 0,
        },
        active,
        redefined: false,
    }
}

/// A user identity disabled, enabled or deleted (`enabled` false for both others).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStateChange {
    pub user: String,
    /// Who changed it.
    pub actor: Option<Actor>,
    pub enabled: bool,
    pub as_of: i64,
}

/// What an entry of identity's stream changes for a replica's memory.
pub enum IdentityChange {
    /// A membership of a role-assignable group.
    Membership(MembershipChange),
    /// A group was deleted: its assignments end.
    GroupDeleted(String),
    /// A user was disabled, enabled or deleted.
    UserState(UserStateChange),
    Nothing,
}

impl IdentityChange {
    pub fn of(envelope: &Envelope) -> Self {
        if event_type(envelope) == Some(EventType::GroupDeleted) {
            return match decode::<GroupDeleted>(envelope) {
                Ok(e) => Self::GroupDeleted(e.group_id),
                Err(err) => {
                    tracing::warn!(event_id = %envelope.id, error = %err, "unreadable GroupDeleted event");
                    Self::Nothing
                }
            };
        }
        match Memberships::user_state_change(envelope) {
            Ok(Some(change)) => return Self::UserState(change),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(event_id = %envelope.id, error = %err, "unreadable user state event");
                return Self::Nothing;
            }
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

    pub fn membership(&self) -> Option<MembershipChange> {
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
        m.set_as_of("g1", "lee", true, 0);
        m.set_as_of("g2", "lee", true, 0);
        let mut groups = m.groups_of("lee");
        groups.sort();
        assert_eq!(groups, vec!["g1", "g2"]);
        m.set_as_of("g1", "lee", false, 0);
        assert_eq!(m.groups_of("lee"), vec!["g2"]);
        m.set_as_of("g2", "lee", false, 0);
        assert!(m.groups_of("lee").is_empty());
    }

    /// Changes told out of order: the one with the later version stands, whichever came last.
    #[test]
    fn a_membership_change_told_late_changes_nothing() {
        let m = Memberships::default();
        m.set_as_of("g1", "lee", true, 1);
        m.set_as_of("g1", "lee", false, 3);
        m.set_as_of("g1", "lee", true, 2);
        assert!(
            m.groups_of("lee").is_empty(),
            "the removal (3) stands after the late add (2)"
        );
        m.set_as_of("g1", "lee", true, 3);
        assert!(m.groups_of("lee").is_empty(), "the same version again changes nothing");
        m.set_as_of("g1", "lee", true, 4);
        assert_eq!(m.groups_of("lee"), vec!["g1"]);
        m.set_as_of("g2", "kim", false, 2);
        m.set_as_of("g2", "kim", true, 1);
        assert!(
            m.groups_of("kim").is_empty(),
            "a removal told first still wins over an older add"
        );
        m.set_as_of("g2", "kim", true, 0);
        assert!(
            m.groups_of("kim").is_empty(),
            "an unversioned change is older than any versioned one"
        );
    }
}
