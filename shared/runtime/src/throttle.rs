//! How many calls one principal may be refused in a minute before its calls are refused
//! unheard.
//!
//! Every refused call is a security decision, and recorded: a script (or an attacker with a
//! stolen token) looping over calls it may not make would write a record a call, a thousand
//! in ten seconds, and make the service do the work of each. Past
//! [`MAX_REFUSALS_PER_MINUTE`] denials (PERMISSION_DENIED) in a minute, or
//! [`MAX_MERIT_REFUSALS_PER_MINUTE`] refusals on the merits of what was asked (a rule, the
//! state of things, bad input, the loser of a race: a caller allowed to ask errs in the normal
//! course, so the budget is larger), a principal's calls are answered RESOURCE_EXHAUSTED,
//! saying when to try again, without reaching the service; the first one so answered is
//! recorded, the rest are not. Counted per process, in memory: a restart forgets, and each
//! replica counts its own.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;
use std::time::Duration;

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// The calls a principal may be denied in a minute; the next call is refused unheard.
pub const MAX_REFUSALS_PER_MINUTE: u32 = 100;

/// The calls a principal may be refused on the merits in a minute (fifty a second: a script
/// racing itself loses many); the next call is refused unheard.
pub const MAX_MERIT_REFUSALS_PER_MINUTE: u32 = 3000;

const WINDOW_MS: i64 = 60_000;

/// The most principals counted at once (the oldest windows are forgotten first).
const MAX_COUNTED: usize = 10_000;

/// How a call was refused, each counted against its own budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// PERMISSION_DENIED: the caller may not make the call.
    Denied,
    /// Refused on the merits of what was asked: bad input, a rule, the state of things, a
    /// race lost.
    OnTheMerits,
}

impl Refusal {
    /// How an answer with `code` refused the call, if it did: faults (UNAVAILABLE, INTERNAL),
    /// an unknown caller and the throttle's own answer are not the caller's refusals.
    pub fn of(code: tonic::Code) -> Option<Self> {
        use tonic::Code::*;
        match code {
            PermissionDenied => Some(Self::Denied),
            InvalidArgument | FailedPrecondition | AlreadyExists | NotFound | OutOfRange | Aborted => {
                Some(Self::OnTheMerits)
            }
            _ => None,
        }
    }

    /// How many may come within a minute.
    fn budget(self) -> usize {
        match self {
            Self::Denied => MAX_REFUSALS_PER_MINUTE as usize,
            Self::OnTheMerits => MAX_MERIT_REFUSALS_PER_MINUTE as usize,
        }
    }
}

/// One principal's last refusals of each kind (at most its budget, oldest first), and until
/// when the calls refused unheard were told to the record.
#[derive(Default)]
struct Refusals {
    denied: VecDeque<i64>,
    on_the_merits: VecDeque<i64>,
    recorded_until: i64,
}

impl Refusals {
    fn of(&mut self, kind: Refusal) -> &mut VecDeque<i64> {
        match kind {
            Refusal::Denied => &mut self.denied,
            Refusal::OnTheMerits => &mut self.on_the_merits,
        }
    }

    /// Until when calls are unheard at `now`, and which budget is spent: the minute after the
    /// oldest of a kind's last refusals, if they are as many as its budget and it lasts (the
    /// later, should both be spent).
    fn until(&self, now: i64) -> Option<(i64, Refusal)> {
        [
            (&self.denied, Refusal::Denied),
            (&self.on_the_merits, Refusal::OnTheMerits),
        ]
        .into_iter()
        .filter_map(|(at, kind)| {
            let oldest = *at.front().filter(|_| at.len() >= kind.budget())?;
            Some((oldest + WINDOW_MS, kind)).filter(|(until, _)| now < *until)
        })
        .max_by_key(|(until, _)| *until)
    }

    fn last(&self) -> Option<i64> {
        self.denied.back().max(self.on_the_merits.back()).copied()
    }
}

/// Whether a call is heard.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    Heard,
    /// Refused unheard for `retry_after_ms`, the budget of refusals `spent`; `first` of its
    /// run (the one recorded).
    Unheard {
        retry_after_ms: i64,
        spent: Refusal,
        first: bool,
    },
}

impl Turn {
    /// The answer to a call refused unheard.
    pub fn status(retry_after_ms: i64, spent: Refusal) -> Status {
        let seconds = (retry_after_ms + 999) / 1000;
        let (budget, how) = match spent {
            Refusal::Denied => (MAX_REFUSALS_PER_MINUTE, "denied"),
            Refusal::OnTheMerits => (MAX_MERIT_REFUSALS_PER_MINUTE, "refused"),
        };
        let message =
            format!("too many refused calls: {budget} of yours were {how} within a minute; try again in {seconds} s");
        let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(retry_after_ms.max(0) as u64)));
        Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
    }
}

/// Refusals counted by principal, over the last minute (a sliding window: never more than a
/// budget within any minute).
#[derive(Default)]
pub struct Throttle(RwLock<HashMap<String, Refusals>>);

impl Throttle {
    /// Whether `principal`'s call at `now` is heard: not while the minute after the oldest of
    /// their last [`MAX_REFUSALS_PER_MINUTE`] denials, or of their last
    /// [`MAX_MERIT_REFUSALS_PER_MINUTE`] refusals on the merits, lasts.
    pub fn turn(&self, principal: &str, now: i64) -> Turn {
        // Every call asks: most principals were never denied, and are answered under a read
        // lock that calls share.
        if self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(principal)
            .is_none_or(|d| d.until(now).is_none())
        {
            return Turn::Heard;
        }
        let mut counted = self.0.write().unwrap_or_else(|e| e.into_inner());
        let Some(refusals) = counted.get_mut(principal) else {
            return Turn::Heard;
        };
        let Some((until, spent)) = refusals.until(now) else {
            return Turn::Heard;
        };
        let first = now >= refusals.recorded_until;
        if first {
            refusals.recorded_until = until;
        }
        Turn::Unheard {
            retry_after_ms: until - now,
            spent,
            first,
        }
    }

    /// Counts a refusal of `principal`'s call at `now`.
    pub fn refused(&self, principal: &str, now: i64, kind: Refusal) {
        let mut counted = self.0.write().unwrap_or_else(|e| e.into_inner());
        if counted.len() >= MAX_COUNTED && !counted.contains_key(principal) {
            counted.retain(|_, r| r.last().is_some_and(|last| now - last < WINDOW_MS));
            if counted.len() >= MAX_COUNTED {
                counted.clear();
            }
        }
        let at = counted.entry(principal.to_owned()).or_default().of(kind);
        at.push_back(now);
        // Only the last minute counts: what is older goes, so a principal refused now and
        // then over days holds a few entries, not a budget's worth.
        while at.len() > kind.budget() || at.front().is_some_and(|oldest| now - oldest >= WINDOW_MS) {
            at.pop_front();
        }
    }

    /// How many refusals are kept in all (for tests: memory follows the last minute).
    #[cfg(test)]
    fn kept(&self) -> usize {
        let counted = self.0.read().unwrap_or_else(|e| e.into_inner());
        counted.values().map(|r| r.denied.len() + r.on_the_merits.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unheard(retry_after_ms: i64, spent: Refusal, first: bool) -> Turn {
        Turn::Unheard {
            retry_after_ms,
            spent,
            first,
        }
    }

    #[test]
    fn past_the_denials_of_a_minute_calls_are_unheard_until_it_ends() {
        let throttle = Throttle::default();
        assert_eq!(throttle.turn("lee", 0), Turn::Heard, "nothing denied yet");
        for at in 0..MAX_REFUSALS_PER_MINUTE as i64 {
            assert_eq!(throttle.turn("lee", at), Turn::Heard);
            throttle.refused("lee", at, Refusal::Denied);
        }
        assert_eq!(
            throttle.turn("lee", 20_000),
            unheard(40_000, Refusal::Denied, true),
            "the minute's denials are spent: the first call unheard is the one recorded"
        );
        assert_eq!(throttle.turn("lee", 30_000), unheard(30_000, Refusal::Denied, false));
        assert_eq!(throttle.turn("kim", 30_000), Turn::Heard, "another principal is heard");
        assert_eq!(
            throttle.turn("lee", 60_000),
            Turn::Heard,
            "a minute after the oldest denial"
        );
        throttle.refused("lee", 60_000, Refusal::Denied);
        assert_eq!(
            throttle.turn("lee", 60_000),
            unheard(1, Refusal::Denied, true),
            "100 again within the minute before: unheard until the second oldest is a minute old"
        );
        assert_eq!(throttle.turn("lee", 60_001), Turn::Heard);
    }

    /// A burst at the end of one minute and another at the start of the next is not twice
    /// the limit: the window slides.
    #[test]
    fn denials_are_counted_over_any_minute() {
        let throttle = Throttle::default();
        throttle.refused("lee", 0, Refusal::Denied);
        for at in 59_000..59_000 + MAX_REFUSALS_PER_MINUTE as i64 - 1 {
            assert_eq!(throttle.turn("lee", at), Turn::Heard);
            throttle.refused("lee", at, Refusal::Denied);
        }
        assert!(matches!(throttle.turn("lee", 59_500), Turn::Unheard { .. }));
        let heard_after = (60_000..70_000).find(|at| throttle.turn("lee", *at) == Turn::Heard);
        assert_eq!(heard_after, Some(60_000), "once the first denial is a minute old");
        throttle.refused("lee", 60_000, Refusal::Denied);
        assert!(
            matches!(throttle.turn("lee", 60_300), Turn::Unheard { .. }),
            "the 99 of a second ago still count"
        );
    }

    #[test]
    fn the_answer_says_when_to_try_again() {
        let status = Turn::status(40_000, Refusal::Denied);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("try again in 40 s"), "{}", status.message());
        let retry = status.get_details_retry_info().expect("a retry delay");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(40)));
        let merits = Turn::status(500, Refusal::OnTheMerits);
        assert!(
            merits
                .message()
                .contains("3000 of yours were refused within a minute; try again in 1 s"),
            "{}",
            merits.message()
        );
    }

    /// Refusals on the merits have a budget of their own, larger: a hundred of them leave the
    /// caller heard, and they do not spend the denials'.
    #[test]
    fn refusals_on_the_merits_count_against_a_larger_budget_of_their_own() {
        let throttle = Throttle::default();
        for at in 0..MAX_MERIT_REFUSALS_PER_MINUTE as i64 - 1 {
            throttle.refused("lee", at, Refusal::OnTheMerits);
            assert_eq!(throttle.turn("lee", at), Turn::Heard, "{at}");
        }
        for at in 0..MAX_REFUSALS_PER_MINUTE as i64 - 1 {
            throttle.refused("lee", 1_000 + at, Refusal::Denied);
        }
        assert_eq!(throttle.turn("lee", 2_000), Turn::Heard, "neither budget spent");
        throttle.refused("lee", 2_000, Refusal::OnTheMerits);
        assert_eq!(throttle.turn("lee", 2_000), unheard(58_000, Refusal::OnTheMerits, true));
        throttle.refused("lee", 2_000, Refusal::Denied);
        assert!(
            matches!(
                throttle.turn("lee", 2_500),
                Turn::Unheard {
                    retry_after_ms: 58_500,
                    spent: Refusal::Denied,
                    ..
                }
            ),
            "both spent: the later end"
        );
        assert_eq!(Refusal::of(tonic::Code::PermissionDenied), Some(Refusal::Denied));
        assert_eq!(Refusal::of(tonic::Code::FailedPrecondition), Some(Refusal::OnTheMerits));
        assert_eq!(
            Refusal::of(tonic::Code::Unavailable),
            None,
            "a fault is nobody's refusal"
        );
        assert_eq!(Refusal::of(tonic::Code::ResourceExhausted), None);
    }

    /// A principal refused now and then, for ever, keeps only the last minute's refusals.
    #[test]
    fn only_the_last_minutes_refusals_are_kept() {
        let throttle = Throttle::default();
        for at in 0..10_000 {
            throttle.refused("lee", at * 1_000, Refusal::OnTheMerits);
        }
        assert_eq!(throttle.kept(), 60, "one a second: the last minute's sixty");
        assert_eq!(throttle.turn("lee", 10_000_000), Turn::Heard);
    }
}
