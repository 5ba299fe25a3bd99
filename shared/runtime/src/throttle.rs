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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// The calls a principal may be denied in a minute; the next call is refused unheard.
pub const MAX_REFUSALS_PER_MINUTE: u32 = 100;

const WINDOW_MS: i64 = 60_000;

/// The most principals counted at once (the oldest windows are forgotten first).
const MAX_COUNTED: usize = 10_000;

/// One principal's minute: when it started, the refusals in it, and whether a call was
/// refused unheard in it yet.
#[derive(Clone, Copy)]
struct Minute {
    started: i64,
    refused: u32,
    throttled: bool,
}

/// Whether a call is heard.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    Heard,
    /// Refused unheard for `retry_after_ms`; `first` in its minute (the one recorded).
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

/// Refusals counted by principal, a minute at a time.
#[derive(Default)]
pub struct Throttle(Mutex<HashMap<String, Minute>>);

impl Throttle {
    /// Whether `principal`'s call at `now` is heard.
    pub fn turn(&self, principal: &str, now: i64) -> Turn {
        let mut counted = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(minute) = counted.get_mut(principal) else {
            return Turn::Heard;
        };
        if now - minute.started >= WINDOW_MS || minute.refused < MAX_REFUSALS_PER_MINUTE {
            return Turn::Heard;
        }
        let first = !minute.throttled;
        minute.throttled = true;
        Turn::Unheard {
            retry_after_ms: minute.started + WINDOW_MS - now,
            first,
        }
    }

    /// Counts a refusal of `principal`'s at `now`.
    pub fn refused(&self, principal: &str, now: i64) {
        let mut counted = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if counted.len() >= MAX_COUNTED && !counted.contains_key(principal) {
            counted.retain(|_, m| now - m.started < WINDOW_MS);
            if counted.len() >= MAX_COUNTED {
                counted.clear();
            }
        }
        let minute = counted.entry(principal.to_owned()).or_insert(Minute {
            started: now,
            refused: 0,
            throttled: false,
        });
        if now - minute.started >= WINDOW_MS {
            *minute = Minute {
                started: now,
                refused: 0,
                throttled: false,
            };
        }
        minute.refused += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_refusals_of_a_minute_calls_are_unheard_until_it_ends() {
        let throttle = Throttle::default();
        assert_eq!(throttle.turn("lee", 0), Turn::Heard, "nothing refused yet");
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
            "the minute's refusals are spent: the first call unheard is the one recorded"
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
            "a minute after the first refusal"
        );
        throttle.refused("lee", 60_000);
        assert_eq!(
            throttle.turn("lee", 60_001),
            Turn::Heard,
            "a new minute counts from one"
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
