//! Browser sessions: a random id in an `HttpOnly`, `SameSite=Strict` cookie, the signed-in
//! user's tokens kept here (never sent to the browser), a CSRF token per session, and the idle
//! and absolute timeouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pim_runtime::clock::Clock;
use rand_core::{OsRng, RngCore};

/// The cookie's name: with `Secure`, the `__Host-` prefix also binds it to this host and path.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-pim_session" } else { "pim_session" }
}

/// Who a session signed in as, and the tokens the portal calls the services with for them.
#[derive(Clone)]
pub struct SignedIn {
    pub principal_id: String,
    pub name: String,
    pub access_token: String,
    pub refresh_token: String,
    /// When the access token expires (ms since the epoch).
    pub expires_ms: i64,
}

/// An authenticator app being added: the method waiting for its first code, and the URI that
/// holds its secret.
#[derive(Clone)]
pub struct Enrolling {
    pub method_id: String,
    pub otpauth_uri: String,
}

impl std::fmt::Debug for Enrolling {
    // The URI holds the secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolling")
            .field("method_id", &self.method_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct Session {
    pub id: String,
    /// Every form carries it; a POST without it is refused (`csrf::check`).
    pub csrf: String,
    pub signed_in: Option<SignedIn>,
    /// Between password and code: the short-lived token that can only verify a code.
    pub mfa_pending: Option<(String, String)>,
    /// An authenticator app being added (`enrol`), until its first code confirms it.
    pub enrolling: Option<Enrolling>,
    /// A message for the next page (after a form's redirect): whether good news, and its text.
    pub flash: Option<(bool, String)>,
    created_ms: i64,
    last_seen_ms: i64,
}

// Tokens and the CSRF token are never printed: only who, and whether a sign-in is pending.
impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("principal_id", &self.principal_id)
            .field("name", &self.name)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("signed_in", &self.signed_in)
            .field("mfa_pending", &self.mfa_pending.is_some())
            .field("enrolling", &self.enrolling)
            .finish_non_exhaustive()
    }
}

/// The sessions this portal process holds. A restart signs everyone out (tokens are never
/// written anywhere by the portal).
#[derive(Clone)]
pub struct Sessions {
    held: Arc<Mutex<HashMap<String, Session>>>,
    clock: Arc<dyn Clock>,
    idle_ms: i64,
    lifetime_ms: i64,
    max_held: usize,
}

/// 256 random bits, URL-safe.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal, compared in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    pub fn new(clock: Arc<dyn Clock>, idle: Duration, lifetime: Duration) -> Self {
        Self {
            held: Arc::new(Mutex::new(HashMap::new())),
            clock,
            idle_ms: idle.as_millis() as i64,
            lifetime_ms: lifetime.as_millis() as i64,
            max_held: Self::MAX_HELD,
        }
    }

    /// Sessions held at most: past it, starting one first drops the sessions signed in as no
    /// one that were used longest ago (a flood of sign-in pages cannot grow memory without end,
    /// and never signs anyone out).
    const MAX_HELD: usize = 100_000;

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new session, signed in as no one yet.
    pub fn start(&self) -> Session {
        let now = self.clock.now_ms();
        let session = Session {
            id: random_token(),
            csrf: random_token(),
            signed_in: None,
            mfa_pending: None,
            enrolling: None,
            flash: None,
            created_ms: now,
            last_seen_ms: now,
        };
        let mut held = self.held();
        let (idle, lifetime) = (self.idle_ms, self.lifetime_ms);
        // Timed-out sessions go now and then (each is refused when used anyway), and always
        // before any is dropped for room.
        if held.len().is_multiple_of(1024) || held.len() >= self.max_held {
            held.retain(|_, s| !s.timed_out(now, idle, lifetime));
        }
        if held.len() >= self.max_held {
            // Blank ones first: a flood of sign-in pages makes only those, and a sign-in half
            // done (its password given, its code or first authenticator awaited) stays.
            let mut anonymous: Vec<(bool, i64, String)> = held
                .values()
                .filter(|s| s.signed_in.is_none())
                .map(|s| {
                    (
                        s.mfa_pending.is_some() || s.enrolling.is_some(),
                        s.last_seen_ms,
                        s.id.clone(),
                    )
                })
                .collect();
            anonymous.sort_unstable();
            let excess = held.len() + 1 - self.max_held;
            for (_, _, id) in anonymous.into_iter().take(excess.max(self.max_held / 10)) {
                held.remove(&id);
            }
        }
        held.insert(session.id.clone(), session.clone());
        session
    }

    /// The session `id` names, if it has not timed out (its idle time restarts).
    pub fn get(&self, id: &str) -> Option<Session> {
        self.held_for(id, true)
    }

    /// The same for what a page asks by itself (a pending request's status, polled): no one
    /// used the session, so its idle time goes on. An open page must not keep it alive.
    pub fn peek(&self, id: &str) -> Option<Session> {
        self.held_for(id, false)
    }

    fn held_for(&self, id: &str, used: bool) -> Option<Session> {
        let now = self.clock.now_ms();
        let mut held = self.held();
        let session = held.get_mut(id)?;
        if session.timed_out(now, self.idle_ms, self.lifetime_ms) {
            held.remove(id);
            return None;
        }
        if used {
            session.last_seen_ms = now;
        }
        Some(session.clone())
    }

    /// Changes a session that is still held.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Session)) {
        if let Some(session) = self.held().get_mut(id) {
            change(session);
        }
    }

    /// Gives `session` a new id and CSRF token (at sign-in: an id known before it is worth
    /// nothing after), keeping its creation time.
    pub fn renew(&self, session: &Session, signed_in: Option<SignedIn>) -> Session {
        let mut held = self.held();
        held.remove(&session.id);
        let renewed = Session {
            id: random_token(),
            csrf: random_token(),
            signed_in,
            mfa_pending: None,
            enrolling: None,
            flash: None,
            created_ms: session.created_ms,
            last_seen_ms: self.clock.now_ms(),
        };
        held.insert(renewed.id.clone(), renewed.clone());
        renewed
    }

    /// Ends one session; returns it.
    pub fn end(&self, id: &str) -> Option<Session> {
        self.held().remove(id)
    }

    /// Ends every session of `principal_id`; returns them (to sign their tokens out).
    pub fn end_all_of(&self, principal_id: &str) -> Vec<Session> {
        let mut held = self.held();
        let ids: Vec<String> = held
            .values()
            .filter(|s| s.signed_in.as_ref().is_some_and(|u| u.principal_id == principal_id))
            .map(|s| s.id.clone())
            .collect();
        ids.iter().filter_map(|id| held.remove(id)).collect()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

impl Session {
    fn timed_out(&self, now: i64, idle_ms: i64, lifetime_ms: i64) -> bool {
        now - self.last_seen_ms >= idle_ms || now - self.created_ms >= lifetime_ms
    }
}

/// The session id a request's `Cookie` header carries.
pub fn from_cookies(headers: &http::HeaderMap, secure: bool) -> Option<String> {
    let name = cookie_name(secure);
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The `Set-Cookie` value that holds `id` (or clears the cookie when `None`).
pub fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let name = cookie_name(secure);
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!("{name}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pim_runtime::clock::ManualClock;

    #[test]
    fn a_session_never_prints_its_tokens() {
        let clock = ManualClock::starting_now();
        let mut session = sessions(&clock).start();
        session.mfa_pending = Some(("pending-token-x".into(), "lee".into()));
        session.signed_in = Some(SignedIn {
            principal_id: "lee-id".into(),
            name: "lee".into(),
            access_token: "access-token-x".into(),
            refresh_token: "refresh-token-x".into(),
            expires_ms: 0,
        });
        let printed = format!("{session:?}");
        assert!(printed.contains("lee-id"), "{printed}");
        for secret in [
            "pending-token-x",
            "access-token-x",
            "refresh-token-x",
            session.csrf.as_str(),
            session.id.as_str(),
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    fn sessions(clock: &ManualClock) -> Sessions {
        Sessions::new(
            Arc::new(clock.clone()),
            Duration::from_secs(30 * 60),
            Duration::from_secs(8 * 3600),
        )
    }

    #[test]
    fn a_session_ends_after_its_idle_time_and_after_its_lifetime_however_busy() {
        let clock = ManualClock::starting_now();
        let sessions = sessions(&clock);
        let idle = sessions.start();
        clock.advance(Duration::from_millis(30 * 60 * 1000 - 1));
        assert!(
            sessions.get(&idle.id).is_some(),
            "used a millisecond before its idle time"
        );
        clock.advance(Duration::from_millis(30 * 60 * 1000));
        assert!(sessions.get(&idle.id).is_none(), "idle for 30 minutes");

        // A page polling by itself is not someone using the session.
        let polled = sessions.start();
        for _ in 0..(30 * 60 - 1) {
            clock.advance(Duration::from_secs(1));
            assert!(sessions.peek(&polled.id).is_some());
        }
        clock.advance(Duration::from_secs(1));
        assert!(
            sessions.peek(&polled.id).is_none(),
            "idle for 30 minutes, however polled"
        );

        let busy = sessions.start();
        for _ in 0..(8 * 4 - 1) {
            clock.advance(Duration::from_secs(15 * 60));
            assert!(sessions.get(&busy.id).is_some());
        }
        clock.advance(Duration::from_secs(15 * 60));
        assert!(sessions.get(&busy.id).is_none(), "8 hours after it began, however busy");
    }

    #[test]
    fn signing_in_gives_a_new_id_and_csrf_token_and_the_old_id_is_worth_nothing() {
        let clock = ManualClock::starting_now();
        let sessions = sessions(&clock);
        let anonymous = sessions.start();
        let renewed = sessions.renew(&anonymous, None);
        assert_ne!(renewed.id, anonymous.id);
        assert_ne!(renewed.csrf, anonymous.csrf);
        assert!(sessions.get(&anonymous.id).is_none());
        assert!(sessions.get(&renewed.id).is_some());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        assert_eq!(
            set_cookie(Some("abc"), false),
            "pim_session=abc; Path=/; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            set_cookie(Some("abc"), true),
            "__Host-pim_session=abc; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, "a=1; pim_session=xyz; b=2".parse().unwrap());
        assert_eq!(from_cookies(&headers, false).as_deref(), Some("xyz"));
        assert_eq!(from_cookies(&headers, true), None);
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;
    use pim_runtime::clock::ManualClock;

    #[test]
    fn a_flood_of_sign_in_pages_drops_the_oldest_anonymous_sessions_never_a_signed_in_one() {
        let clock = ManualClock::starting_now();
        let mut sessions = Sessions::new(
            Arc::new(clock.clone()),
            Duration::from_secs(30 * 60),
            Duration::from_secs(8 * 3600),
        );
        sessions.max_held = 1_000;
        let lee = sessions.start();
        let signed_in = SignedIn {
            principal_id: "lee".into(),
            name: "lee".into(),
            access_token: String::new(),
            refresh_token: String::new(),
            expires_ms: 0,
        };
        let lee = sessions.renew(&lee, Some(signed_in));
        // Kim gave her password; her code is awaited.
        let kim = sessions.start();
        sessions.update(&kim.id, |s| {
            s.mfa_pending = Some(("kim".into(), "pending token".into()))
        });
        for _ in 0..(sessions.max_held * 3) {
            clock.advance(Duration::from_millis(1));
            sessions.start();
        }
        assert!(sessions.held().len() <= sessions.max_held);
        assert!(sessions.get(&lee.id).is_some(), "the signed-in session stays");
        assert!(sessions.get(&kim.id).is_some(), "a sign-in half done stays");
    }
}
