//! The access index: every active assignment that has not ended, by principal, in memory, so
//! CheckAccess answers without a database query. It is loaded at start, updated right after
//! this replica's own commits (read-your-writes), and kept current with other replicas'
//! writes by tailing the assignment event stream. Entries carry their start and end, and
//! every answer compares them with the clock: a late update never lets an expired role
//! through. A removal made on another replica reaches this one with the event (milliseconds).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::broadcast;

use pim_proto::events::v1 as ev;
use pim_runtime::access::AccessCheck;
use pim_runtime::db::Db;
use pim_runtime::events::{Envelope, EventType, decode, event_type};

use crate::domain::Kind;
use crate::store::{self, AssignmentRow};

/// One active assignment, as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub role_id: String,
    pub scope: String,
    pub start: i64,
    pub end: Option<i64>,
    /// The assignment's version: a grant replaces the one held only when newer.
    pub version: i64,
}

/// principal id → assignment id → grant
type Grants = HashMap<String, HashMap<String, Grant>>;

/// Shards of the index, each behind its own lock: a write or a prune holds up only the checks
/// of principals in one shard, and only briefly.
const SHARDS: usize = 64;

#[derive(Clone)]
pub struct AccessIndex {
    /// Principals spread over [`SHARDS`] maps by the hash of their id.
    shards: Arc<[RwLock<Grants>]>,
    hasher: RandomState,
    /// Assignments that ended (id → when it was learnt), so a grant event that arrives after
    /// its removal event (two replicas' relays can publish out of order) cannot revive it.
    ended: Arc<RwLock<HashMap<String, i64>>>,
    /// Each grant added and each removed.
    changes: Changes,
}

/// Where the index's changes go: to WatchAccessChanges, and, where access may have been lost,
/// at once to the answers this process cached from the index (the other services'
/// `CachedAccess`, which would otherwise wait for the change's event).
#[derive(Clone)]
pub struct Changes {
    watchers: broadcast::Sender<Change>,
    cached: Option<Arc<dyn AccessCheck>>,
}

impl Changes {
    pub fn send(&self, change: Change) {
        let _ = self.watchers.send(change);
    }

    /// Access may have been lost (a grant ended or changed, a membership ended, a role's
    /// permissions changed): answers cached from before are dropped. Called once the change
    /// is applied, and before the write that made it answers.
    pub fn access_lost(&self) {
        if let Some(cached) = &self.cached {
            cached.access_lost();
        }
    }
}

/// A grant that entered or left the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub principal_id: String,
    pub assignment_id: String,
    pub grant: Grant,
    pub active: bool,
    /// The grant holds on, but what its role grants changed (a custom role's permissions):
    /// answers cached from it are to be asked again.
    pub redefined: bool,
}

impl Default for AccessIndex {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            ended: Arc::default(),
            changes: Changes {
                watchers: broadcast::channel(4096).0,
                cached: None,
            },
        }
    }
}

impl AccessIndex {
    fn shard(&self, principal_id: &str) -> &RwLock<Grants> {
        &self.shards[self.hasher.hash_one(principal_id) as usize % SHARDS]
    }

    fn read(&self, principal_id: &str) -> RwLockReadGuard<'_, Grants> {
        self.shard(principal_id).read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, principal_id: &str) -> RwLockWriteGuard<'_, Grants> {
        self.shard(principal_id).write().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every active assignment that has not ended by `now`.
    pub async fn load(db: &Db, now: i64) -> anyhow::Result<Self> {
        let index = Self::default();
        for a in store::unended_active_assignments(db, now).await? {
            index.upsert_row(&a);
        }
        Ok(index)
    }

    /// Holds `grant` for the assignment unless it ended or a newer version is held already:
    /// this replica applies its own changes at commit, and the stream brings each back later,
    /// after changes that may have come since.
    pub fn upsert(&self, principal_id: &str, assignment_id: &str, grant: Grant) {
        if self
            .ended
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(assignment_id)
        {
            return;
        }
        let mut map = self.write(principal_id);
        let grants = map.entry(principal_id.to_owned()).or_default();
        if grants
            .get(assignment_id)
            .is_some_and(|held| held.version >= grant.version)
        {
            return;
        }
        let previous = grants.insert(assignment_id.to_owned(), grant.clone());
        if previous.as_ref() == Some(&grant) {
            return;
        }
        self.changes.send(Change {
            principal_id: principal_id.to_owned(),
            assignment_id: assignment_id.to_owned(),
            grant,
            active: true,
            redefined: false,
        });
        drop(map);
        // A grant held before and now different (an earlier end) may grant less.
        if previous.is_some() {
            self.changes.access_lost();
        }
    }

    /// From now on, each change that may lose access also drops the answers `cached` holds.
    pub fn dropping_answers_of(mut self, cached: Arc<dyn AccessCheck>) -> Self {
        self.changes.cached = Some(cached);
        self
    }

    /// Grants added and removed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.watchers.subscribe()
    }

    /// Where changes go: also those of group membership identity holds (see
    /// [`crate::groups::Memberships::announcing_to`]).
    pub fn changes(&self) -> Changes {
        self.changes.clone()
    }

    pub fn upsert_row(&self, a: &AssignmentRow) {
        if a.kind == Kind::Active && a.status == "active" {
            let grant = Grant {
                role_id: a.role_id.clone(),
                scope: a.scope.clone(),
                start: a.start_at,
                end: a.end_at,
                version: a.version,
            };
            self.upsert(&a.principal_id, &a.id, grant);
        }
    }

    pub fn remove(&self, principal_id: &str, assignment_id: &str) {
        self.ended
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(assignment_id.to_owned(), pim_runtime::db::now_ms());
        let mut map = self.write(principal_id);
        let Some(grants) = map.get_mut(principal_id) else {
            return;
        };
        let Some(grant) = grants.remove(assignment_id) else {
            return;
        };
        self.changes.send(Change {
            principal_id: principal_id.to_owned(),
            assignment_id: assignment_id.to_owned(),
            grant,
            active: false,
            redefined: false,
        });
        if grants.is_empty() {
            map.remove(principal_id);
        }
        drop(map);
        self.changes.access_lost();
    }

    /// Tells watchers that what `roles` grant changed: each grant of one in force at `now` is
    /// announced again to its holder, marked `redefined` (a group's, to the group: watchers
    /// follow a group's grants to its members, as for any change of them).
    pub fn announce_redefined(&self, roles: &HashSet<String>, now: i64) {
        if roles.is_empty() {
            return;
        }
        let in_force = |g: &Grant| roles.contains(&g.role_id) && g.start <= now && g.end.is_none_or(|end| end > now);
        let mut held = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            for (principal, grants) in map.iter() {
                for (id, grant) in grants.iter().filter(|(_, g)| in_force(g)) {
                    held.push(Change {
                        principal_id: principal.clone(),
                        assignment_id: id.clone(),
                        grant: grant.clone(),
                        active: true,
                        redefined: true,
                    });
                }
            }
        }
        for change in held {
            self.changes.send(change);
        }
    }

    /// The principal's grants that have not ended by `now`, started or not: (assignment id,
    /// grant), as watchers were told of them.
    pub fn unended(&self, principal_id: &str, now: i64) -> Vec<(String, Grant)> {
        self.read(principal_id)
            .get(principal_id)
            .map(|grants| {
                grants
                    .iter()
                    .filter(|(_, g)| g.end.is_none_or(|end| end > now))
                    .map(|(id, g)| (id.clone(), g.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The principal's grants in force at `now`: (assignment id, grant).
    pub fn current(&self, principal_id: &str, now: i64) -> Vec<(String, Grant)> {
        let mut current = Vec::new();
        self.visit(principal_id, now, |id, g| current.push((id.to_owned(), g.clone())));
        current
    }

    /// Calls `f` with each of the principal's grants in force at `now`, in place (the check
    /// path copies only what it answers with).
    pub fn visit(&self, principal_id: &str, now: i64, mut f: impl FnMut(&str, &Grant)) {
        if let Some(grants) = self.read(principal_id).get(principal_id) {
            for (id, g) in grants {
                if g.start <= now && g.end.is_none_or(|end| end > now) {
                    f(id, g);
                }
            }
        }
    }

    /// How many principals and grants it holds (the cache-size figure).
    pub fn size(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(principals, grants), shard| {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            (
                principals + map.len(),
                grants + map.values().map(HashMap::len).sum::<usize>(),
            )
        })
    }

    /// Drops grants that ended before `now`, and removal marks older than an hour (keeps
    /// memory bounded; answers never depend on it). One shard at a time, giving the worker
    /// back in between: with a million grants a single pass would hold a thread for
    /// milliseconds, and every check queued behind it would wait.
    pub async fn prune(&self, now: i64) {
        let horizon = pim_runtime::db::now_ms() - 3_600_000;
        self.ended
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| *at > horizon);
        for shard in self.shards.iter() {
            shard.write().unwrap_or_else(|e| e.into_inner()).retain(|_, grants| {
                grants.retain(|_, g| g.end.is_none_or(|end| end > now));
                !grants.is_empty()
            });
            tokio::task::yield_now().await;
        }
    }

    /// The assignment an event of the assignment stream says changed, if it concerns this
    /// index. The event says only *that* it changed: what it is now is read from the
    /// database ([`crate::assignments::Assignments::index_assignments`]), so a forged or stale
    /// event grants or ends nothing.
    pub fn assignment_named(envelope: &Envelope) -> Option<String> {
        match event_type(envelope) {
            Some(
                EventType::ActiveAssignmentGranted
                | EventType::ActiveAssignmentUpdated
                | EventType::ActiveAssignmentRemoved,
            ) => decode::<ev::AssignmentChanged>(envelope).ok().map(|e| e.assignment_id),
            Some(EventType::RoleActivated) => decode::<ev::RoleActivated>(envelope).ok().map(|e| e.assignment_id),
            Some(EventType::ActivationShortened) => decode::<ev::ActivationShortened>(envelope)
                .ok()
                .map(|e| e.assignment_id),
            Some(EventType::RoleDeactivated) => decode::<ev::RoleDeactivated>(envelope).ok().map(|e| e.assignment_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(start: i64, end: Option<i64>) -> Grant {
        Grant {
            role_id: "r".into(),
            scope: "/".into(),
            start,
            end,
            version: 1,
        }
    }

    /// A role redefined is announced again to whoever holds it now (a group, as the group);
    /// nobody else hears of it, nor of a grant ended or still to start.
    #[tokio::test]
    async fn a_role_redefined_is_announced_to_whoever_holds_it() {
        let index = AccessIndex::default();
        index.upsert("lee", "a1", grant(0, None));
        index.upsert("team", "a2", grant(0, Some(100)));
        index.upsert("kim", "a3", grant(0, Some(10)));
        index.upsert("ann", "a4", grant(60, None));
        let other = Grant {
            role_id: "other".into(),
            ..grant(0, None)
        };
        index.upsert("joe", "a5", other);
        let mut heard = index.subscribe();
        index.announce_redefined(&HashSet::from(["r".to_owned()]), 50);
        let mut told = Vec::new();
        while let Ok(change) = heard.try_recv() {
            assert!(
                change.redefined && change.active && change.grant.role_id == "r",
                "{change:?}"
            );
            told.push(change.principal_id);
        }
        told.sort();
        assert_eq!(told, ["lee", "team"]);
    }

    #[tokio::test]
    async fn only_grants_in_force_count() {
        let index = AccessIndex::default();
        index.upsert("p", "a1", grant(10, Some(20)));
        index.upsert("p", "a2", grant(30, None));
        assert!(index.current("p", 9).is_empty(), "not started");
        assert_eq!(index.current("p", 10).len(), 1);
        assert!(
            index.current("p", 20).is_empty(),
            "ended at its end, to the millisecond"
        );
        assert_eq!(index.current("p", 30)[0].0, "a2");
        index.remove("p", "a2");
        assert!(index.current("p", 30).is_empty());
        index.upsert("p", "a2", grant(30, None));
        assert!(
            index.current("p", 30).is_empty(),
            "a late grant event does not revive a removed assignment"
        );
        index.prune(25).await;
        assert_eq!(index.size(), (0, 0));
    }

    #[test]
    fn unended_grants_include_those_that_start_later() {
        let index = AccessIndex::default();
        index.upsert("p", "ended", grant(10, Some(20)));
        index.upsert("p", "now", grant(10, None));
        index.upsert("p", "later", grant(50, Some(60)));
        let mut unended: Vec<String> = index.unended("p", 30).into_iter().map(|(id, _)| id).collect();
        unended.sort();
        assert_eq!(unended, ["later", "now"]);
        assert_eq!(index.current("p", 30).len(), 1, "only one in force");
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let index = AccessIndex::default();
        let version = |end: i64, version: i64| Grant {
            version,
            ..grant(10, Some(end))
        };
        // This replica extended the assignment, then shortened it (each applied at its
        // commit) before a slower read brought back the state of its creation and extension.
        index.upsert("p", "a1", version(30, 3));
        index.upsert("p", "a1", version(20, 1));
        index.upsert("p", "a1", version(50, 2));
        assert!(index.current("p", 30).is_empty(), "still shortened to 30");
        assert_eq!(index.current("p", 25).len(), 1);
        // A newer change from another replica does replace it.
        index.upsert("p", "a1", version(40, 4));
        assert_eq!(index.current("p", 35).len(), 1);
    }

    #[test]
    fn only_events_about_active_assignments_name_one() {
        use pim_runtime::events::{EventType, Source};
        let changed = ev::AssignmentChanged {
            assignment_id: "a1".into(),
            ..Default::default()
        };
        let named = |event_type| {
            AccessIndex::assignment_named(&pim_runtime::events::envelope(
                Source::Assignment,
                event_type,
                "p",
                &changed,
            ))
        };
        assert_eq!(named(EventType::ActiveAssignmentGranted).as_deref(), Some("a1"));
        assert_eq!(named(EventType::ActiveAssignmentRemoved).as_deref(), Some("a1"));
        assert_eq!(named(EventType::EligibilityGranted), None);
    }
}
