//! Durable timers: activations that start later and assignments that end. The times live in
//! the assignments table (nothing in memory to lose on a crash); each pass locks the due rows
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas share the work without doubling an
//! event), and the loop sleeps until the next deadline. CheckAccess compares times itself, so
//! a late timer never lets an expired role through: the timer only tells the others.

use std::time::Duration;

use sea_orm::TransactionTrait;
use tokio::sync::watch;

use crate::assignments::{Assignments, system_actor};
use crate::domain::RequestStatus;
use crate::error::Result;
use crate::store;
use pim_runtime::events::{EventType, Source};

const BATCH: u64 = 500;
/// The longest sleep: other replicas' new deadlines are found at least this often.
const MAX_SLEEP: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Scheduler {
    assignments: Assignments,
}

impl Scheduler {
    pub fn new(assignments: Assignments) -> Self {
        Self { assignments }
    }

    /// Fires every start and end due now; returns how many it fired.
    pub async fn run_once(&self) -> Result<usize> {
        let a = &self.assignments;
        let now = a.now();
        let txn = a.db.begin().await?;
        let mut fired = 0;
        let mut missed = Vec::new();
        for due in store::due_starts(&txn, now, BATCH).await? {
            if !store::mark_announced(&txn, &due.id).await? {
                continue;
            }
            let role_name = a.roles.get(&due.role_id).map(|r| r.name).unwrap_or_default();
            // Its whole window passed before this pass (the service was down): it never
            // held, and is not announced as if it had.
            let over = due.end_at.is_some_and(|end| end <= now);
            if due.origin == "activation" && !over {
                let via_group = a.eligible_through(&txn, &due, now).await?;
                let event = a.role_activated(Some(system_actor()), &due, &role_name, "", via_group.as_deref());
                a.outbox
                    .enqueue(
                        &txn,
                        pim_runtime::events::streams::ASSIGNMENT,
                        &pim_runtime::events::envelope(
                            Source::Assignment,
                            EventType::RoleActivated,
                            &due.principal_id,
                            &event,
                        ),
                    )
                    .await?;
            }
            let (outcome, why) = if over {
                (
                    RequestStatus::Failed,
                    "its whole window passed before it could start (the service was not running): it never held",
                )
            } else {
                (RequestStatus::Provisioned, "")
            };
            a.settle_scheduled(&txn, &due, outcome, why, Some(system_actor()), now)
                .await?;
            fired += 1;
            // An activation never announced ends as quietly: no deactivation of what never
            // held (an administrator's assignment, announced when made, is ended below, told).
            if over && due.origin == "activation" {
                let end = due.end_at.unwrap_or(now);
                if store::end_assignment(&txn, &due.id, "expired", end).await? {
                    missed.push(due);
                }
            }
        }
        let mut ended = missed;
        for due in store::due_ends(&txn, now, BATCH).await? {
            if let Some(end) = due.end_at {
                pim_runtime::metrics::metrics()
                    .scheduler_lag_seconds
                    .observe((now - end).max(0) as f64 / 1000.0);
            }
            let role_name = a.roles.get(&due.role_id).map(|r| r.name).unwrap_or_default();
            if a.end(
                &txn,
                &due,
                "expired",
                Some(system_actor()),
                &role_name,
                due.expired_at(now),
            )
            .await?
            {
                fired += 1;
                ended.push(due);
            }
        }
        // Holders of active roles ending soon are told, once (audit mails them).
        if a.expiry_notice_ms > 0 {
            for due in store::due_expiry_notices(&txn, now, a.expiry_notice_ms, BATCH).await? {
                if !store::mark_expiry_noticed(&txn, &due.id).await? {
                    continue;
                }
                let event = pim_proto::events::v1::AssignmentExpiring {
                    assignment_id: due.id.clone(),
                    principal_id: due.principal_id.clone(),
                    role_id: due.role_id.clone(),
                    scope: due.scope.clone(),
                    end_time: due.end_at.map(pim_runtime::db::to_timestamp),
                    request_id: due.request_id.clone(),
                };
                a.outbox
                    .enqueue(
                        &txn,
                        pim_runtime::events::streams::ASSIGNMENT,
                        &pim_runtime::events::envelope(
                            Source::Assignment,
                            EventType::AssignmentExpiring,
                            &due.principal_id,
                            &event,
                        ),
                    )
                    .await?;
                fired += 1;
            }
        }
        // An eligibility or membership shortened since an activation rested on it ends that
        // activation now.
        let resting = a.resting_on(&txn, &ended, now).await?;
        let fallout = a.bound_to_eligibility(&txn, resting, Some(system_actor()), now).await?;
        txn.commit().await?;
        // Answers never depended on it (the index compares end times), but keep it small.
        for due in &ended {
            a.index.remove(&due.principal_id, &due.id);
        }
        a.settle(&fallout);
        if fired > 0 {
            a.outbox.wake();
        }
        Ok(fired)
    }

    /// The earliest start or end still to fire, on the service's clock (`None`: none). At or
    /// before now while a pass (this replica's or another's) has it in hand.
    pub async fn next_deadline(&self) -> Result<Option<i64>> {
        Ok(store::next_deadline(&self.assignments.db).await?)
    }

    /// How long to sleep before the next deadline (at most [`MAX_SLEEP`]).
    async fn sleep_for(&self) -> Duration {
        let a = &self.assignments;
        let now = a.now();
        let latest = now + MAX_SLEEP.as_millis() as i64;
        let next = match store::next_deadline(&a.db).await {
            Ok(at) => at.map_or(latest, |at| at.min(latest)),
            Err(err) => {
                tracing::warn!(error = %err, "reading the next deadline failed");
                latest
            }
        };
        Duration::from_millis(u64::try_from(a.timers.plan(next) - now).unwrap_or(0))
    }

    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    break;
                }
                self.assignments.timers.working();
                match self.run_once().await {
                    Ok(n) if n as u64 >= BATCH => continue,
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "scheduler pass failed"),
                }
                let sleep = self.sleep_for().await;
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = self.assignments.timers.woken() => {}
                    _ = stop.changed() => break,
                }
            }
        })
    }
}
