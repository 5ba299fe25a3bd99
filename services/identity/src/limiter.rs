//! Failed sign-ins are rate-limited per account name and per source address: past the limit
//! within the window, sign-in answers RESOURCE_EXHAUSTED until the window passes — the same
//! for an unknown name as for a real one. Counted in memory per replica (a replica restart
//! forgets them; the per-account MFA lockout is in the database).

use std::collections::HashMap;
use std::sync::Mutex;

const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Failed sign-ins per account name within the window.
pub const PER_ACCOUNT: u32 = 10;
/// Failed sign-ins per source address within the window.
pub const PER_SOURCE: u32 = 100;
/// Entries kept at most; the oldest windows go first when it fills.
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<String, (u32, i64)>>,
}

impl SignInLimiter {
    /// Minutes left on a lockout of any of `keys` (with its limit), if one is over.
    pub fn blocked(&self, keys: &[(&str, u32)], now: i64) -> Option<i64> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|(key, limit)| {
                map.get(*key)
                    .filter(|(n, start)| *n >= *limit && now - start < WINDOW_MS)
                    .map(|(_, start)| start + WINDOW_MS - now)
            })
            .max()
            .map(|ms| ms / 60_000 + 1)
    }

    pub fn failed(&self, keys: &[&str], now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, (_, start)| now - *start < WINDOW_MS);
        }
        for key in keys {
            let entry = map.entry((*key).to_owned()).or_insert((0, now));
            if now - entry.1 >= WINDOW_MS {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_blocks_until_the_window_passes() {
        let l = SignInLimiter::default();
        let keys = [("user:lee", 3)];
        for _ in 0..2 {
            l.failed(&["user:lee"], 0);
        }
        assert_eq!(l.blocked(&keys, 1), None);
        l.failed(&["user:lee"], 1);
        assert_eq!(l.blocked(&keys, 2), Some(15));
        assert_eq!(l.blocked(&keys, WINDOW_MS + 1), None, "the window passed");
        l.succeeded("user:lee");
        assert_eq!(l.blocked(&keys, 2), None);
    }
}
