//! How many calls one principal may be refused (PERMISSION_DENIED) in a minute before its
//! calls are refused unheard.
//!
//! Every refused call is a security decision, and recorded: a script (or an attacker with a
//! stolen token) looping over calls it may not make would write a record a call, a thousand
//! in ten seconds, and make the service do the work of each. Past
//! [`MAX_REFUSALS_PER_MINUTE`] in a minute, a principal's calls are answered
//! RESOURCE_EXHAUSTED, saying when to try again, without reaching the service; the first one
//! so answered is recorded, the rest are not. A refusal on the merits of what was asked (a
//! rule, the state of things, the loser of a race) does not count: a caller allowed to ask
//! is heard. Counted per process, in memory: a restart forgets, and each replica counts its
//! own.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;
use std::time::Duration;

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// The calls a principal may be denied in a minute; the next call is refused unheard.
pub const MAX_REFUSALS_PER_MINUTE: u32 = 100;

const WINDOW_MS: i64 = 60_000;

/// The most principals counted at once (the oldest windows are forgotten first).
const MAX_COUNTED: usize = 10_000;

/// One principal's last denials (at most [`MAX_REFUSALS_PER_MINUTE`], oldest first), and until
/// when the calls refused unheard were told to the record.
#[derive(Default)]
struct Denials {
    at: VecDeque<i64>,
    recorded_until: i64,
}

impl Denials {
    /// Until when calls are unheard at `now`: the minute after the oldest of the last
    /// [`MAX_REFUSALS_PER_MINUTE`] denials, if they are all that many and it lasts.
    fn until(&self, now: i64) -> Option<i64> {
        let oldest = *self
            .at
            .front()
            .filter(|_| self.at.len() >= MAX_REFUSALS_PER_MINUTE as usize)?;
        Some(oldest + WINDOW_MS).filter(|until| now < *until)
    }
}

/// Whether a call is heard.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    Heard,
    /// Refused unheard for `retry_after_ms`; `first` of its run (the one recorded).
    Unheard {
        retry_after_ms: i64,
        first: bool,
    },
}

impl Turn {
    /// The answer to a call refused unheard.
    pub fn status(retry_after_ms: i64) -> Status {
        let seconds = (retry_after_ms + 999) / 1000;
        let message = format!(
            "too many refused calls: {MAX_REFUSALS_PER_MINUTE} of yours were denied within a minute; \
             try again in {seconds} s"
        );
        let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(retry_after_ms.max(0) as u64)));
        Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
    }
}

/// Denials counted by principal, over the last minute (a sliding window: never more than
/// [`MAX_REFUSALS_PER_MINUTE`] within any minute).
#[derive(Default)]
pub struct Throttle(RwLock<HashMap<String, Denials>>);

impl Throttle {
    /// Whether `principal`'s call at `now` is heard: not while the minute after the oldest of
    /// their last [`MAX_REFUSALS_PER_MINUTE`] denials lasts.
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
        let Some(denials) = counted.get_mut(principal) else {
            return Turn::Heard;
        };
        let Some(until) = denials.until(now) else {
            return Turn::Heard;
        };
        let first = now >= denials.recorded_until;
        if first {
            denials.recorded_until = until;
        }
        Turn::Unheard {
            retry_after_ms: until - now,
            first,
        }
    }

    /// Counts a denial of `principal`'s at `now`.
    pub fn refused(&self, principal: &str, now: i64) {
        let mut counted = self.0.write().unwrap_or_else(|e| e.into_inner());
        if counted.len() >= MAX_COUNTED && !counted.contains_key(principal) {
            counted.retain(|_, d| d.at.back().is_some_and(|last| now - last < WINDOW_MS));
            if counted.len() >= MAX_COUNTED {
                counted.clear();
            }
        }
        let denials = counted.entry(principal.to_owned()).or_default();
        denials.at.push_back(now);
        while denials.at.len() > MAX_REFUSALS_PER_MINUTE as usize {
            denials.at.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_denials_of_a_minute_calls_are_unheard_until_it_ends() {
        let throttle = Throttle::default();
        assert_eq!(throttle.turn("lee", 0), Turn::Heard, "nothing denied yet");
        for at in 0..MAX_REFUSALS_PER_MINUTE as i64 {
            assert_eq!(throttle.turn("lee", at), Turn::Heard);
            throttle.refused("lee", at);
        }
        assert_eq!(
            throttle.turn("lee", 20_000),
            Turn::Unheard {
                retry_after_ms: 40_000,
                first: true
            },
            "the minute's denials are spent: the first call unheard is the one recorded"
        );
        assert_eq!(
            throttle.turn("lee", 30_000),
            Turn::Unheard {
                retry_after_ms: 30_000,
                first: false
            }
        );
        assert_eq!(throttle.turn("kim", 30_000), Turn::Heard, "another principal is heard");
        assert_eq!(
            throttle.turn("lee", 60_000),
            Turn::Heard,
            "a minute after the oldest denial"
        );
        throttle.refused("lee", 60_000);
        assert_eq!(
            throttle.turn("lee", 60_000),
            Turn::Unheard {
                retry_after_ms: 1,
                first: true
            },
            "100 again within the minute before: unheard until the second oldest is a minute old"
        );
        assert_eq!(throttle.turn("lee", 60_001), Turn::Heard);
    }

    /// A burst at the end of one minute and another at the start of the next is not twice
    /// the limit: the window slides.
    #[test]
    fn denials_are_counted_over_any_minute() {
        let throttle = Throttle::default();
        throttle.refused("lee", 0);
        for at in 59_000..59_000 + MAX_REFUSALS_PER_MINUTE as i64 - 1 {
            assert_eq!(throttle.turn("lee", at), Turn::Heard);
            throttle.refused("lee", at);
        }
        assert!(matches!(throttle.turn("lee", 59_500), Turn::Unheard { .. }));
        let heard_after = (60_000..70_000).find(|at| throttle.turn("lee", *at) == Turn::Heard);
        assert_eq!(heard_after, Some(60_000), "once the first denial is a minute old");
        throttle.refused("lee", 60_000);
        assert!(
            matches!(throttle.turn("lee", 60_300), Turn::Unheard { .. }),
            "the 99 of a second ago still count"
        );
    }

    #[test]
    fn the_answer_says_when_to_try_again() {
        let status = Turn::status(40_000);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("try again in 40 s"), "{}", status.message());
        let retry = status.get_details_retry_info().expect("a retry delay");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(40)));
    }
}
