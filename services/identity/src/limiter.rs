//! Failed sign-ins are limited per principal and per source address: past the limit within
//! the window, sign-in answers RESOURCE_EXHAUSTED until the window passes — the same for an
//! unknown name as for a real one. A known user is counted by id, however they were named
//! (any case, id or name); an unknown name by its lower-cased text. The counts are in the
//! database, so a restart keeps them and every identity replica shares them; an attempt is
//! counted before its password is checked, so guesses sent at once cannot outrun the limit.
//! A user signing in from a familiar source (one they signed in from within 30 days) has a
//! count of their own there: guesses from elsewhere, however many, lock out only sign-ins
//! from elsewhere, so nobody can keep the break-glass administrator out from afar; nor by
//! guessing made-up names from the address they share (a NAT, a VPN's exit): there, the
//! users it is familiar to share a count of their own (as many failures as the address's),
//! so strangers cannot fill it, and guesses at them still cannot outrun an address's limit.

use sea_orm::ConnectionTrait;

use crate::store::{self, UserRow};

pub const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Failed sign-ins per principal (or unknown name) within the window.
pub const PER_ACCOUNT: i64 = 10;
/// Failed sign-ins per source address within the window.
pub const PER_SOURCE: i64 = 100;
/// How long a source a user signed in from stays familiar.
pub const FAMILIAR_MS: i64 = 30 * 24 * 3600 * 1000;

/// What a sign-in attempt counts against: the principal (or the name tried) and the source.
pub struct Keys {
    /// None where guessing the secret is hopeless and a lockout would only serve whoever
    /// wants the principal locked out (a service principal's random client secret).
    pub account: Option<String>,
    /// None where there is no source to count (a signed-in user re-entering a password).
    pub source: Option<String>,
    /// The user and the digest of the address a password sign-in comes from: familiar from
    /// then on, once it succeeds.
    remember: Option<(String, String)>,
}

impl Keys {
    pub fn new(user: Option<&UserRow>, name_tried: &str, source: Option<&str>) -> Self {
        Self {
            account: Some(match user {
                Some(u) => format!("user:{}", u.id),
                None => format!("name:{}", name_tried.trim().to_lowercase()),
            }),
            source: Some(format!("ip:{}", source.unwrap_or("unknown"))),
            remember: None,
        }
    }

    /// A password sign-in's keys ([`Keys::new`]), where a known user signing in from a
    /// familiar source is counted on a key of their own there.
    pub async fn of_sign_in<C: ConnectionTrait>(
        c: &C,
        user: Option<&UserRow>,
        name_tried: &str,
        source: Option<&str>,
        now: i64,
    ) -> Result<Self, sea_orm::DbErr> {
        let mut keys = Self::new(user, name_tried, source);
        keys.remember = user.zip(source).map(|(u, s)| (u.id.clone(), digest(s)));
        if let Some((user, source)) = &keys.remember
            && store::is_familiar(c, user, source, now - FAMILIAR_MS).await?
        {
            keys.account = Some(format!("user:{user}@{source}"));
            keys.source = Some(format!("familiar-ip:{source}"));
        }
        Ok(keys)
    }

    /// Only the user's own count (guesses at the current password by a signed-in session).
    pub fn account_of(user: &UserRow) -> Self {
        Self {
            account: Some(format!("user:{}", user.id)),
            source: None,
            remember: None,
        }
    }

    /// A client-credentials sign-in: only its source's count of apps' failures (kept apart
    /// from people's, so apps failing do not lock people out of an address, nor the reverse).
    /// A client id is no secret, and its 256-bit secret cannot be guessed; counting the
    /// principal would let anyone lock an app out, while the source's count bounds the
    /// hashing and the audit records a flood of wrong secrets costs.
    pub fn of_app_source(source: Option<&str>) -> Self {
        Self {
            account: None,
            source: Some(format!("app-ip:{}", source.unwrap_or("unknown"))),
            remember: None,
        }
    }

    fn limits(&self) -> Vec<(&str, i64)> {
        let account = self.account.as_deref().map(|a| (a, PER_ACCOUNT));
        let source = self.source.as_deref().map(|s| (s, PER_SOURCE));
        account.into_iter().chain(source).collect()
    }
}

/// Sign-ins refused unchecked (past a limit) are recorded once a minute per limit that refused
/// them (an account's, a name's, a source's), with how many more were refused meanwhile: a
/// flood costs the audit log a record a minute, not one an attempt. Kept in memory, per
/// replica.
#[derive(Default)]
pub struct Refusals(std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>);

/// How often a refusal of one account (or source) is recorded.
const RECORD_REFUSAL_EVERY_MS: i64 = 60_000;
/// The most accounts and sources whose refusals are remembered (a flood of distinct ones
/// forgets the quiet first).
const MAX_REMEMBERED_REFUSALS: usize = 10_000;

impl Refusals {
    /// For a refusal of `key` at `now`: how many went unrecorded since the last record, when
    /// this one is to be recorded; none when it is not.
    pub fn worth_recording(&self, key: &str, now: i64) -> Option<u64> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, more)) = seen.get_mut(key) {
            if now - *at < RECORD_REFUSAL_EVERY_MS {
                *more += 1;
                return None;
            }
            *at = now;
            return Some(std::mem::take(more));
        }
        if seen.len() >= MAX_REMEMBERED_REFUSALS {
            seen.retain(|_, (at, _)| now - *at < RECORD_REFUSAL_EVERY_MS);
            if seen.len() >= MAX_REMEMBERED_REFUSALS {
                seen.clear();
            }
        }
        seen.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

/// Counts this attempt against every key before the password is looked at (one statement
/// each, on every replica's shared database), so guesses sent at once cannot all pass a check
/// made before any of them was counted. Where a key was at its limit already, the attempt is
/// refused unchecked and taken back (what it counts against stays at its limit, and a client
/// retrying a locked account does not lock out its whole network): the minutes left on the
/// lockout. A failure stays counted; a success calls [`succeeded`].
pub async fn attempt<C: ConnectionTrait>(c: &C, keys: &Keys, now: i64) -> Result<Option<i64>, sea_orm::DbErr> {
    Ok(weigh(c, keys, now).await?.refused)
}

/// What counting an attempt found ([`attempt`]).
pub struct Counted {
    /// Refused unchecked: the minutes left on the lockout.
    pub refused: Option<i64>,
    /// The key at its limit that refused it (an account, or a source).
    pub refused_by: Option<String>,
    /// The account's last attempt within the window: failed, it locks the account out.
    pub last: bool,
}

/// [`attempt`], telling also whether this is the account's last attempt before a lockout.
pub async fn weigh<C: ConnectionTrait>(c: &C, keys: &Keys, now: i64) -> Result<Counted, sea_orm::DbErr> {
    let limits = keys.limits();
    let mut before = Vec::with_capacity(limits.len());
    for (key, _) in &limits {
        let (counted, window_start) = store::count_sign_in_attempt(c, key, now, now - WINDOW_MS).await?;
        // Those counted before this one decide it.
        before.push(((*key).to_owned(), counted - 1, window_start));
    }
    let refused = minutes_left(&limits, &before, now);
    let refused_by = at_limit(&limits, &before, now).next().map(|(key, _)| key.to_owned());
    if refused.is_some() {
        for (key, _) in &limits {
            store::uncount_sign_in_attempt(c, key).await?;
        }
    }
    let last = keys
        .account
        .as_deref()
        .is_some_and(|account| before.iter().any(|(k, n, _)| k == account && *n + 1 == PER_ACCOUNT));
    Ok(Counted {
        refused,
        refused_by,
        last,
    })
}

/// An attempt that could not be weighed (hashing unavailable, a fault): taken back from every
/// count, for it was no failure.
pub async fn abandoned<C: ConnectionTrait>(c: &C, keys: &Keys) -> Result<(), sea_orm::DbErr> {
    for (key, _) in keys.limits() {
        store::uncount_sign_in_attempt(c, key).await?;
    }
    Ok(())
}

/// A successful sign-in clears the principal's count (where it came from: a familiar
/// source's, or everywhere else's), takes its own attempt back from the source's (which
/// counts failures only), and makes the source familiar.
pub async fn succeeded<C: ConnectionTrait>(c: &C, keys: &Keys, now: i64) -> Result<(), sea_orm::DbErr> {
    if let Some(account) = &keys.account {
        store::clear_sign_in_failures(c, account).await?;
    }
    if let Some((user, source)) = &keys.remember {
        store::remember_source(c, user, source, now).await?;
    }
    if let Some(source) = &keys.source {
        store::uncount_sign_in_attempt(c, source).await?;
    }
    Ok(())
}

/// An address as the database keeps it: a digest, not the address.
fn digest(source: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(source.as_bytes());
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The longest wait, in whole minutes rounded up, among keys at or over their limit.
fn minutes_left(limits: &[(&str, i64)], counts: &[(String, i64, i64)], now: i64) -> Option<i64> {
    at_limit(limits, counts, now)
        .map(|(_, ms)| ms)
        .max()
        .map(|ms| ms / 60_000 + 1)
}

/// The keys at or over their limit within the window, each with the window's time left (ms).
fn at_limit<'a>(
    limits: &'a [(&'a str, i64)],
    counts: &'a [(String, i64, i64)],
    now: i64,
) -> impl Iterator<Item = (&'a str, i64)> + 'a {
    limits.iter().filter_map(move |(key, limit)| {
        counts
            .iter()
            .find(|(k, n, start)| k == key && n >= limit && start + WINDOW_MS > now)
            .map(|(_, _, start)| (*key, start + WINDOW_MS - now))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_recorded_once_a_minute_each_with_how_many_more_came() {
        let r = Refusals::default();
        assert_eq!(r.worth_recording("user:1", 0), Some(0), "the first");
        assert_eq!(r.worth_recording("user:1", 1_000), None);
        assert_eq!(r.worth_recording("user:1", 59_999), None);
        assert_eq!(r.worth_recording("ip:a", 2_000), Some(0), "another account's own turn");
        assert_eq!(
            r.worth_recording("user:1", 60_000),
            Some(2),
            "a minute on, with the two unrecorded"
        );
        assert_eq!(r.worth_recording("user:1", 60_001), None);
        assert_eq!(r.worth_recording("user:1", 130_000), Some(1));
    }

    #[test]
    fn a_key_at_its_limit_blocks_for_the_rest_of_its_window() {
        let limits = [("user:1", 3), ("ip:a", 100)];
        let counts = |n: i64| vec![("user:1".to_owned(), n, 0), ("ip:a".to_owned(), n, 0)];
        assert_eq!(minutes_left(&limits, &counts(2), 1), None, "under the limit");
        assert_eq!(minutes_left(&limits, &counts(3), 1), Some(15), "at the limit");
        assert_eq!(minutes_left(&limits, &counts(3), WINDOW_MS - 60_000), Some(2));
        assert_eq!(minutes_left(&limits, &[], 1), None);
        assert_eq!(minutes_left(&limits, &counts(3), WINDOW_MS), None, "the window passed");
        let by_source = vec![("ip:a".to_owned(), 100, 0)];
        assert_eq!(minutes_left(&limits, &by_source, 1), Some(15), "the source's limit");
    }

    #[test]
    fn a_user_counts_by_id_however_named_and_an_unknown_name_by_its_text() {
        let user = UserRow {
            id: "u1".into(),
            user_name: "bruce".into(),
            display_name: String::new(),
            email: String::new(),
            password_hash: String::new(),
            enabled: true,
            created_at: 0,
            last_sign_in_at: None,
        };
        assert_eq!(
            Keys::new(Some(&user), "BRUCE", None).account.as_deref(),
            Some("user:u1")
        );
        assert_eq!(Keys::new(Some(&user), "u1", None).account.as_deref(), Some("user:u1"));
        assert_eq!(
            Keys::new(None, " Ghost ", Some("10.0.0.1")).account.as_deref(),
            Some("name:ghost")
        );
        assert_eq!(
            Keys::new(None, "ghost", Some("10.0.0.1")).source.as_deref(),
            Some("ip:10.0.0.1")
        );
        assert_eq!(Keys::account_of(&user).source, None);
    }
}
