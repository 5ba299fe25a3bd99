//! Assignment: role definitions, eligible and active assignments, requests, and the access
//! decisions (CheckAccess) every other service authorizes with.

mod assignments;
mod clients;
mod domain;
mod drift;
mod error;
mod groups;
mod grpc;
mod identity_events;
mod index;
mod notifications;
mod policy_edits;
mod roles;
mod scheduler;
mod store;
#[cfg(test)]
mod store_tests;
mod timers;

use std::sync::Arc;

use pim_proto::events::v1::{ApprovalCompleted, ReviewEvent};

use crate::domain::RequestStatus;
use pim_runtime::events::{Envelope, EventHandler, EventType, Outbox, Source, decode, event_type, streams};
use sea_orm::DatabaseTransaction;

use sea_orm_migration::MigratorTrait;
use tonic::service::RoutesBuilder;

use pim_proto::assignment::v1::access_service_server::AccessServiceServer;
use pim_proto::assignment::v1::assignment_service_server::AssignmentServiceServer;
use pim_proto::assignment::v1::policy_service_server::PolicyServiceServer;
use pim_proto::assignment::v1::reconcile_service_server::ReconcileServiceServer;
use pim_proto::assignment::v1::role_service_server::RoleServiceServer;
use pim_runtime::db::Db;
use pim_runtime::host::{Deps, Service};

pub use assignments::Assignments;
pub use domain::Scope;
pub use grpc::check_new_policy;
pub use roles::{
    BUILT_IN_ROLES, GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR, check_permission, privileged_permission,
};
pub use scheduler::Scheduler;

#[derive(Clone)]
pub struct Assignment {
    assignments: Assignments,
    config: pim_runtime::Config,
    /// Where the access index's tail of the assignment stream starts (Redis only).
    tail_from: Option<String>,
    /// Where the group membership tail of the identity stream starts (Redis only).
    identity_tail_from: Option<String>,
    /// Whose signatures the tails accept.
    event_keys: std::sync::Arc<pim_runtime::events::EventKeys>,
    /// Where the tails read (Redis only).
    redis: Option<pim_runtime::events::RedisTarget>,
}

impl Assignment {
    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        store::Migrator::up(&deps.db, None).await?;
        let roles = roles::RoleCatalog::load(&deps.db).await?;
        // The stream position is read before the snapshot, so the tail misses nothing after it.
        let redis = deps.config.redis()?;
        let tail_from = match &redis {
            Some(redis) => Some(from_start_if_unknown(redis, &deps.config.stream_prefix, streams::ASSIGNMENT).await),
            None => None,
        };
        let identity_tail_from = match &redis {
            Some(redis) => Some(from_start_if_unknown(redis, &deps.config.stream_prefix, streams::IDENTITY).await),
            None => None,
        };
        // Answers other services cached here are dropped at once when the index changes.
        let index = index::AccessIndex::load(&deps.db, deps.clock.now_ms())
            .await?
            .dropping_answers_of(deps.access.clone());
        let memberships = groups::Memberships::load(&deps.db)
            .await?
            .announcing_to(&index, deps.clock.clone());
        let event_keys = std::sync::Arc::new(deps.config.event_keys()?);
        let assignments = Assignments {
            event_keys: event_keys.clone(),
            db: deps.db,
            outbox: Outbox::default(),
            roles,
            identity: clients::Directory::new(deps.identity),
            clock: deps.clock,
            timers: Arc::default(),
            expiry_notice_ms: deps.config.expiry_notice.as_millis() as i64,
            changes: tokio::sync::broadcast::channel(1024).0,
            index,
            memberships,
            // The tails start where the snapshot ends: a token up to there is met at once.
            freshness: Arc::new(match (&tail_from, &identity_tail_from) {
                (Some(assignment), Some(identity)) => pim_runtime::consistency::Freshness::following(&[
                    (streams::ASSIGNMENT, assignment.as_str()),
                    (streams::IDENTITY, identity.as_str()),
                ]),
                _ => pim_runtime::consistency::Freshness::embedded(),
            }),
        };
        Ok(Self {
            assignments,
            event_keys,
            redis,
            config: deps.config,
            tail_from,
            identity_tail_from,
        })
    }

    pub fn assignments(&self) -> &Assignments {
        &self.assignments
    }

    /// The service's database (tests inspect its outbox).
    pub fn assignments_db(&self) -> &pim_runtime::db::Db {
        &self.assignments.db
    }

    /// Principals and grants held by the in-memory access index.
    pub fn access_index_size(&self) -> (usize, usize) {
        self.assignments.index.size()
    }

    /// The timer pass (tests run it after moving the clock).
    pub fn scheduler(&self) -> Scheduler {
        Scheduler::new(self.assignments.clone())
    }
}

/// What a tail handed on since the last batch (at least one item, at most 500): `None` once
/// the tail ended.
async fn next_batch<T>(from: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let mut batch = vec![from.recv().await?];
    while batch.len() < 500
        && let Ok(next) = from.try_recv()
    {
        batch.push(next);
    }
    Some(batch)
}

/// Applies approval outcomes to pending activations, and access reviews' removals.
struct ApprovalOutcomes(Assignments);

#[async_trait::async_trait]
impl EventHandler for ApprovalOutcomes {
    fn consumer(&self) -> &str {
        "assignment"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![streams::APPROVAL]
    }

    fn wants(&self, event_type: Option<EventType>) -> bool {
        matches!(
            event_type,
            Some(
                EventType::ApprovalGranted
                    | EventType::ApprovalDenied
                    | EventType::ApprovalExpired
                    | EventType::ReviewRemovalRequested
            )
        )
    }

    /// An access review's removal ends access (and outcomes keep their order with it).
    fn ends_access(&self) -> bool {
        true
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        let outcome = match event_type(envelope) {
            Some(EventType::ApprovalGranted) => RequestStatus::Granted,
            Some(EventType::ApprovalDenied) => RequestStatus::Denied,
            Some(EventType::ApprovalExpired) => RequestStatus::Expired,
            Some(EventType::ReviewRemovalRequested) => {
                let event: ReviewEvent = decode(envelope)?;
                self.0
                    .remove_for_review(txn, &event)
                    .await
                    .map_err(crate::error::Error::into_anyhow)?;
                return Ok(());
            }
            _ => return Ok(()),
        };
        let event: ApprovalCompleted = decode(envelope)?;
        self.0
            .apply_approval(txn, &event.request_id, outcome, event.actor, &event.reason)
            .await
            .map_err(crate::error::Error::into_anyhow)
    }

    /// The index follows what was committed, read back from the database: the activation an
    /// approval provisioned joins it, and a review's removal leaves it only if it happened.
    async fn after_commit(&self, envelope: &Envelope) {
        if event_type(envelope) == Some(EventType::ReviewRemovalRequested) {
            if let Ok(event) = decode::<ReviewEvent>(envelope)
                && let Err(err) = self.0.index_removal(&event.assignment_id).await
            {
                tracing::warn!(assignment_id = %event.assignment_id, error = %err, "re-indexing a reviewed assignment failed");
            }
            return;
        }
        let Ok(event) = decode::<ApprovalCompleted>(envelope) else {
            return;
        };
        if let Err(err) = self.0.index_request(&event.request_id).await {
            tracing::warn!(request_id = %event.request_id, error = %err, "indexing an approved activation failed");
        }
    }
}

impl Service for Assignment {
    fn name(&self) -> &'static str {
        "assignment"
    }

    fn source(&self) -> Source {
        Source::Assignment
    }

    fn stream(&self) -> &'static str {
        pim_runtime::events::streams::ASSIGNMENT
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::ASSIGNMENT
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        let a = &self.assignments;
        routes
            .add_service(RoleServiceServer::new(a.clone()))
            .add_service(PolicyServiceServer::new(a.clone()))
            .add_service(AssignmentServiceServer::new(a.clone()))
            .add_service(AccessServiceServer::new(a.clone()))
            .add_service(ReconcileServiceServer::new(a.clone()));
    }

    fn db(&self) -> &Db {
        &self.assignments.db
    }

    fn outbox(&self) -> &Outbox {
        &self.assignments.outbox
    }

    fn handlers(&self) -> Vec<Arc<dyn EventHandler>> {
        let mut handlers: Vec<Arc<dyn EventHandler>> = vec![
            Arc::new(ApprovalOutcomes(self.assignments.clone())),
            Arc::new(identity_events::IdentityEvents(self.assignments.clone())),
        ];
        // Who must hear of what: only where notifications are on (a consumer of its own on
        // assignment's stream, which activations do not wait for).
        if self.config.notifications {
            handlers.push(Arc::new(notifications::Notifier(self.assignments.clone())));
        }
        handlers
    }

    fn background(&self, stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![self.scheduler().spawn(stop.clone())];
        if let (Some(redis), Some(from)) = (&self.redis, &self.tail_from) {
            // Other replicas' writes reach this replica's access index: the stream says which
            // assignments changed, the database what they are now (never the event's body).
            let (changed, mut to_read) = tokio::sync::mpsc::unbounded_channel::<(String, Changed)>();
            tasks.push(pim_runtime::events::tail(
                redis.clone(),
                self.config.stream_prefix.clone(),
                streams::ASSIGNMENT,
                from.clone(),
                self.event_keys.clone(),
                stop.clone(),
                // Every type: which assignment changed is read from any of them.
                |_| true,
                move |entry_id, envelope| {
                    let what = if matches!(
                        event_type(envelope),
                        Some(
                            EventType::RoleDefinitionCreated
                                | EventType::RoleDefinitionUpdated
                                | EventType::RoleDefinitionDeleted
                        )
                    ) {
                        Changed::Roles
                    } else {
                        Changed::Assignment(index::AccessIndex::assignment_named(envelope))
                    };
                    let _ = changed.send((entry_id.to_owned(), what));
                },
            ));
            let assignments = self.assignments.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(batch) = next_batch(&mut to_read).await {
                    // A role definition changed: the catalogue is read again (from the
                    // database, as the assignments are), before the batch counts as applied.
                    if batch.iter().any(|(_, what)| matches!(what, Changed::Roles)) {
                        let mut delay = std::time::Duration::from_millis(100);
                        while let Err(err) = assignments.reload_roles().await {
                            tracing::warn!(error = %format!("{err:#}"), "reloading role definitions failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(std::time::Duration::from_secs(5));
                        }
                    }
                    let ids: Vec<String> = batch
                        .iter()
                        .filter_map(|(_, what)| match what {
                            Changed::Assignment(id) => id.clone(),
                            Changed::Roles => None,
                        })
                        .collect();
                    // A database that does not answer now answers a moment later; the
                    // stream has moved on, so the ids are kept until it does.
                    let mut delay = std::time::Duration::from_millis(100);
                    while let Err(err) = assignments.index_assignments(&ids).await {
                        tracing::warn!(error = %err, "reading changed assignments for the access index failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(5));
                    }
                    if let Some((entry_id, _)) = batch.last() {
                        assignments.freshness.advance(streams::ASSIGNMENT, entry_id);
                    }
                }
            }));
        }
        if let (Some(redis), Some(from)) = (&self.redis, &self.identity_tail_from) {
            // Membership changes consumed by another replica reach this one's memory too: the
            // stream says which membership changed, the database what it is now (a replayed
            // old event, even validly signed, changes nothing the database does not hold).
            let (changed, mut to_read) = tokio::sync::mpsc::unbounded_channel::<(String, groups::IdentityChange)>();
            tasks.push(pim_runtime::events::tail(
                redis.clone(),
                self.config.stream_prefix.clone(),
                streams::IDENTITY,
                from.clone(),
                self.event_keys.clone(),
                stop.clone(),
                // Every type: the position advances past entries that change no membership.
                |_| true,
                move |entry_id, envelope| {
                    let change = groups::IdentityChange::of(envelope);
                    let _ = changed.send((entry_id.to_owned(), change));
                },
            ));
            let (assignments, memberships, db, freshness) = (
                self.assignments.clone(),
                self.assignments.memberships.clone(),
                self.assignments.db.clone(),
                self.assignments.freshness.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Some(batch) = next_batch(&mut to_read).await {
                    // A deleted group's assignments leave memory once the database has them
                    // ended (by whichever replica's consumer handled the deletion).
                    let mut told_of = std::collections::HashMap::new();
                    for (_, change) in &batch {
                        match change {
                            groups::IdentityChange::GroupDeleted(group) => {
                                assignments.follow_group_deletion(group).await
                            }
                            groups::IdentityChange::UserState(user) => {
                                told_of.insert(user.user.clone(), user.as_of);
                            }
                            _ => {}
                        }
                    }
                    // A user disabled holds nothing here either, once the database says so
                    // (the last word on each user, followed at once).
                    if !told_of.is_empty() {
                        memberships.follow_user_states(&db, &told_of).await;
                    }
                    // The last word on each membership in the batch, each followed at once.
                    let mut last_word = std::collections::HashMap::new();
                    for change in batch.iter().filter_map(|(_, c)| c.membership()) {
                        last_word.insert((change.group.clone(), change.member.clone()), change);
                    }
                    let left: Vec<String> = last_word
                        .values()
                        .filter(|change| !change.is_member)
                        .map(|change| change.member.clone())
                        .collect();
                    futures::future::join_all(
                        last_word
                            .values()
                            .map(|change| memberships.follow_database(&db, change)),
                    )
                    .await;
                    // What those who left activated through the group ended in the same
                    // transaction as the membership: the index drops it before the position
                    // moves, so the removal's token covers it.
                    if let Err(err) = assignments.reindex_principals(&left).await {
                        tracing::warn!(error = %err, "former members' activations could not be re-indexed");
                    }
                    if let Some((entry_id, _)) = batch.last() {
                        freshness.advance(streams::IDENTITY, entry_id);
                    }
                }
            }));
        }
        if self.redis.is_some() {
            tasks.push(tokio::spawn(follow_changes(self.assignments.clone(), stop.clone())));
        }
        let (index, clock, mut pruning) = (
            self.assignments.index.clone(),
            self.assignments.clock.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => index.prune(clock.now_ms()).await,
                    _ = pruning.changed() => return,
                }
            }
        }));
        // Who is disabled, from the database every few seconds: a disable this replica's
        // tail saw before the consumer recorded it (a lagging consumer, a restart) still
        // reaches memory. With replicas, the group memberships too, every other time: one
        // identity told another replica of, whose event Redis lost, still reaches this one.
        let (memberships, db, mut stop) = (self.assignments.memberships.clone(), self.assignments.db.clone(), stop);
        let replicated = self.redis.is_some();
        tasks.push(tokio::spawn(async move {
            for tick in 0u64.. {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                        if let Err(err) = memberships.reload_disabled(&db).await {
                            tracing::warn!(error = %err, "reading the disabled users failed; retrying");
                        }
                        if replicated && tick % 2 == 1
                            && let Err(err) = memberships.reload_memberships(&db).await
                        {
                            tracing::warn!(error = %err, "reading the group memberships failed; retrying");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        }));
        tasks
    }
}

/// How often a replica reads from the database the assignments changed lately.
const FOLLOW_CHANGES: std::time::Duration = std::time::Duration::from_secs(5);

/// How far back each reading goes before the last one: replicas' clocks differ a little, and a
/// change stamped by its replica's clock commits a moment later (a call lasts 30 s at most).
const FOLLOW_MARGIN_MS: i64 = 60_000;

/// How far Redis's clock (which stamps entry ids) may be ahead of this replica's.
const READ_BACK_SKEW_MS: i64 = 5_000;

/// Reads the role definitions, and the assignments any replica changed lately, into this
/// replica's memory, every
/// [`FOLLOW_CHANGES`], until the host stops. The stream tells each change at once; this is
/// what makes the database the truth when the stream does not (Redis restarted empty, its
/// entries trimmed before this replica read them): a role ended elsewhere stops being allowed
/// here within seconds, with no replay.
async fn follow_changes(assignments: Assignments, mut stop: tokio::sync::watch::Receiver<bool>) {
    // The index was loaded from the database as the host started.
    let mut since = assignments.clock.now_ms() - FOLLOW_MARGIN_MS;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_CHANGES) => {}
            _ = stop.changed() => return,
        }
        let (asked_at, asked_at_real) = (assignments.clock.now_ms(), pim_runtime::db::now_ms());
        // The role catalogue too: a custom role narrowed on another replica grants less here.
        let read = async {
            assignments.follow_roles().await?;
            anyhow::Ok(assignments.index_changed_since(since).await?)
        };
        match read.await {
            Ok(()) => {
                (since, failing) = (asked_at - FOLLOW_MARGIN_MS, false);
                // Every write committed before the reading is in the index now, and each
                // entry of the stream was added after its write committed: a token naming an
                // entry of up to then (Redis's clock, a few seconds' difference allowed) is
                // met, even one this replica's tail never saw.
                let through = u64::try_from(asked_at_real - READ_BACK_SKEW_MS).unwrap_or_default();
                assignments.freshness.read_back(
                    streams::ASSIGNMENT,
                    pim_runtime::consistency::Position::after_ms(through),
                );
            }
            Err(err) if !failing => {
                tracing::warn!(error = %format!("{err:#}"), "reading the assignments changed lately failed; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Where a tail of `stream` starts: after its newest entry, or, with Redis unreachable at
/// start, at its start (reading it again changes nothing: what it names is read from the
/// database, loaded after this position was taken).
async fn from_start_if_unknown(redis: &pim_runtime::events::RedisTarget, prefix: &str, stream: &str) -> String {
    pim_runtime::events::tail_start(redis, prefix, stream)
        .await
        .unwrap_or_else(|| "0-0".to_owned())
}

/// What an entry of the assignment stream tells a replica's memory to read again.
enum Changed {
    /// The assignment it names, if any.
    Assignment(Option<String>),
    /// The role definitions.
    Roles,
}
