//! How writers tell the scheduler (`scheduler.rs`) about new deadlines, without the
//! scheduler's loop: the domain announces, the scheduler plans.

use std::sync::atomic::{AtomicI64, Ordering::SeqCst};

use tokio::sync::Notify;

/// How writers tell the scheduler about a new deadline. It is woken only when the deadline
/// comes before the time it already sleeps until, so a busy service (an activation ending in
/// an hour, hundreds a second) does not send it to the database after every write.
pub struct Timers {
    /// When the scheduler will look next (ms, the service clock); `i64::MIN` while it works.
    planned: AtomicI64,
    /// The earliest deadline announced since the scheduler last planned (ms).
    announced: AtomicI64,
    wake: Notify,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            planned: AtomicI64::new(i64::MIN),
            announced: AtomicI64::new(i64::MAX),
            wake: Notify::new(),
        }
    }
}

impl Timers {
    /// Something starts or ends at `at` (ms).
    pub fn deadline(&self, at: i64) {
        // Announce first, then compare: the scheduler plans, then reads the announcements, so
        // (all orderings being sequentially consistent) either it sees this one or this
        // sees its plan.
        self.announced.fetch_min(at, SeqCst);
        if at < self.planned.load(SeqCst) {
            self.wake.notify_one();
        }
    }

    /// The scheduler plans to look again at `at` (ms); returns the time it should, counting
    /// deadlines announced while it worked.
    pub(crate) fn plan(&self, at: i64) -> i64 {
        self.planned.store(at, SeqCst);
        let at = at.min(self.announced.swap(i64::MAX, SeqCst));
        self.planned.store(at, SeqCst);
        at
    }

    /// Until a deadline sooner than the plan is announced.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }

    /// The scheduler is awake: announcements need not wake it until it plans again.
    pub(crate) fn working(&self) {
        self.planned.store(i64::MIN, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    /// Whether a wake-up is waiting for the scheduler (consumes it).
    fn woken(timers: &Timers) -> bool {
        timers.wake.notified().now_or_never().is_some()
    }

    #[test]
    fn only_a_deadline_sooner_than_the_plan_wakes_the_scheduler() {
        let timers = Timers::default();
        assert_eq!(timers.plan(10_000), 10_000);
        timers.deadline(60_000);
        assert!(!woken(&timers), "a later deadline must not wake it");
        timers.deadline(5_000);
        assert!(woken(&timers), "a sooner deadline must wake it");
        // Both are remembered for the next plan, which takes the soonest.
        assert_eq!(timers.plan(20_000), 5_000);
    }

    #[test]
    fn deadlines_announced_while_it_works_join_the_next_plan() {
        let timers = Timers::default();
        timers.working();
        timers.deadline(7_000);
        assert!(!woken(&timers), "a working scheduler reads announcements when it plans");
        assert_eq!(timers.plan(9_000), 7_000);
        // Announcements are read once.
        assert_eq!(timers.plan(9_000), 9_000);
    }
}
