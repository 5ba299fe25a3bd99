//! The rules of the directory and of sign-in: who may create whom, what a valid name is,
//! and what each change tells the rest of the suite (events, committed with the change).

use std::sync::Arc;
use std::time::Duration;

use sea_orm::TransactionTrait;

use pim_proto::common::v1::{Actor, PrincipalKind};
use pim_proto::events::v1 as ev;
use pim_runtime::access::{AccessCheck, permissions, require};
use pim_runtime::auth::{Caller, Pending};
use pim_runtime::clock::Clock;
use pim_runtime::config::SigninMfa;
use pim_runtime::db::{Db, now_ms};
use pim_runtime::events::{EventType, Outbox, Source, envelope, streams};

use crate::error::{Error, Result};
use crate::store::{self, ServicePrincipalRow, UserRow};
use crate::tokens::{Issued, Keystore, TokenSubject};
use crate::{credentials, limiter};

pub use crate::names::NewUser;
pub(crate) use crate::names::{checked_display_name, checked_email, checked_principal_name, name_refused, taken};

const SOURCE: Source = Source::Identity;

/// Where a sign-in comes from (recorded on its event; audit keeps only HMACs of them).
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: String,
}

/// A signed-in principal.
pub struct Session {
    pub principal_id: String,
    pub issued: Issued,
    pub amr: Vec<String>,
    /// For Refresh and SignOut; empty where there is none (service principals, step-up,
    /// a sign-in still waiting for MFA).
    pub refresh_token: String,
    /// Set while the sign-in lacks MFA: the token can only complete it.
    pub pending: Option<Pending>,
    /// After a recovery code was used: how many are left.
    pub recovery_codes_left: Option<i32>,
}

impl Session {
    pub(crate) fn new(principal_id: String, issued: Issued, amr: Vec<String>, refresh_token: String) -> Self {
        Self {
            principal_id,
            issued,
            amr,
            refresh_token,
            pending: None,
            recovery_codes_left: None,
        }
    }
}

/// How long a session (its refresh token) lasts.
pub(crate) const SESSION_MS: i64 = 12 * 3600 * 1000;

/// How long after its use a spent refresh token shown again is taken for the client's own
/// retry rather than a copy (which ends the session).
pub(crate) const REFRESH_RETRY_MS: i64 = 10_000;

/// How long the token of a sign-in waiting for MFA lives: time to read an authenticator. Its
/// session lives as long, until the sign-in completes and it gets [`SESSION_MS`].
const PENDING_TOKEN_TTL: Duration = Duration::from_secs(300);
pub(crate) const PENDING_SESSION_MS: i64 = PENDING_TOKEN_TTL.as_millis() as i64;

pub(crate) fn refresh_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone)]
pub struct Directory {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) access: Arc<dyn AccessCheck>,
    pub(crate) keys: Keystore,
    pub(crate) token_ttl: Duration,
    pub(crate) max_role_assignable_groups: u64,
    /// Proxies whose `x-forwarded-for` names the client (PIM_TRUSTED_PROXIES).
    pub(crate) forwarders: pim_runtime::grpc::Forwarders,
    pub(crate) assignment: crate::clients::AssignmentClients,
    pub(crate) approval: crate::clients::ApprovalClient,
    pub(crate) sealer: pim_runtime::sealing::Sealer,
    /// What time the MFA lifecycle reads (passes, enrolment windows, step-up freshness).
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) signin_mfa: SigninMfa,
    pub(crate) enrollment_window: Duration,
    pub(crate) step_up: Duration,
    /// The passkeys' relying party (the portal, `PIM_PUBLIC_URL`); none: no passkeys.
    pub(crate) webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// Signs the events given to assignment directly (as the relay signs what it publishes).
    pub(crate) event_keys: Arc<pim_runtime::events::EventKeys>,
    /// Sign-ins refused past a limit, recorded once a minute each.
    pub(crate) refused_sign_ins: Arc<limiter::Refusals>,
}

/// A failed sign-in as audit and alerting read it: the name tried, never the secret.
fn failed_sign_in(tried: &str, principal_id: &str, reason: &str, client: &ClientInfo) -> ev::SignInFailed {
    // User names are printable ASCII: a name tried that is not shows escaped (`\u{430}dmin`),
    // so a lookalike tried by anyone never reads as the account in the audit log.
    let shown = |c: char| {
        if c.is_ascii_graphic() {
            c.to_string()
        } else {
            c.escape_unicode().to_string()
        }
    };
    ev::SignInFailed {
        user_name: tried.trim().chars().take(256).map(shown).collect(),
        principal_id: principal_id.to_owned(),
        reason: reason.to_owned(),
        source_ip: client.ip.clone().unwrap_or_default(),
        user_agent: client.user_agent.clone(),
        more_refused: 0,
    }
}

/// What a user's sign-in (complete or waiting for MFA) tells audit and alerting.
fn sign_in_event(user: &UserRow, session_id: &str, amr: &[String], client: &ClientInfo) -> ev::SignInSucceeded {
    ev::SignInSucceeded {
        actor: Some(actor(&user.id, PrincipalKind::User, &user.user_name)),
        session_id: session_id.to_owned(),
        amr: amr.to_vec(),
        source_ip: client.ip.clone().unwrap_or_default(),
        user_agent: client.user_agent.clone(),
    }
}

pub(crate) fn actor(principal_id: &str, kind: PrincipalKind, name: &str) -> Actor {
    Actor {
        principal_id: principal_id.to_owned(),
        kind: kind as i32,
        display_name: name.to_owned(),
        session_id: String::new(),
    }
}

impl Directory {
    /// Announces every user's address once for the database (`UserAddressAnnounced`, by PIM):
    /// audit learns where users are reached from identity's events, and users created before
    /// those events carried an address would otherwise never be mailed. How many were.
    pub async fn announce_addresses_once(&self) -> Result<usize> {
        let txn = self.db.begin().await?;
        if !store::claim_announcement(&txn, "user_addresses", self.clock.now_ms()).await? {
            return Ok(0);
        }
        let users = store::users_with_email(&txn).await?;
        for u in &users {
            let event = ev::UserUpdated {
                actor: Some(actor("system", PrincipalKind::Unspecified, "PIM (upgrade)")),
                user_id: u.id.clone(),
                user_name: u.user_name.clone(),
                display_name: u.display_name.clone(),
                email: u.email.clone(),
            };
            self.emit(&txn, EventType::UserAddressAnnounced, &u.id, &event).await?;
        }
        txn.commit().await?;
        Ok(users.len())
    }

    /// Announces every disabled user once for the database (`UserDisabledAnnounced`, by PIM),
    /// and every disabled service principal (`ServicePrincipalDisabled`): assignment counts
    /// only enabled principals, and those disabled before it followed these events would
    /// otherwise count. How many were.
    pub async fn announce_disabled_once(&self) -> Result<usize> {
        let txn = self.db.begin().await?;
        let upgrade = || Some(actor("system", PrincipalKind::Unspecified, "PIM (upgrade)"));
        let mut announced = 0;
        if store::claim_announcement(&txn, "disabled_users", self.clock.now_ms()).await? {
            for u in store::disabled_users(&txn).await? {
                let event = ev::UserDisabled {
                    actor: upgrade(),
                    user_id: u.id.clone(),
                    user_name: u.user_name.clone(),
                };
                self.emit(&txn, EventType::UserDisabledAnnounced, &u.id, &event).await?;
                announced += 1;
            }
        }
        if store::claim_announcement(&txn, "disabled_service_principals", self.clock.now_ms()).await? {
            for sp in store::disabled_service_principals(&txn).await? {
                let event = ev::ServicePrincipalCreated {
                    actor: upgrade(),
                    service_principal_id: sp.id.clone(),
                    display_name: sp.display_name.clone(),
                };
                self.emit(&txn, EventType::ServicePrincipalDisabled, &sp.id, &event)
                    .await?;
                announced += 1;
            }
        }
        txn.commit().await?;
        Ok(announced)
    }

    pub async fn create_user(&self, caller: &Caller, new: NewUser) -> Result<UserRow> {
        require(self.access.as_ref(), caller, permissions::USERS_MANAGE, "/").await?;
        let new = new.validate()?;
        self.insert_user(Some(caller.actor()), new).await
    }

    async fn insert_user(&self, by: Option<Actor>, new: NewUser) -> Result<UserRow> {
        let row = UserRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_name: new.user_name,
            display_name: new.display_name,
            email: new.email,
            password_hash: credentials::hash(&new.password).await?,
            enabled: true,
            created_at: now_ms(),
            last_sign_in_at: None,
        };
        let event = ev::UserCreated {
            actor: by,
            user_id: row.id.clone(),
            user_name: row.user_name.clone(),
            display_name: row.display_name.clone(),
            email: row.email.clone(),
        };
        let txn = self.db.begin().await?;
        store::insert_user(&txn, &row)
            .await
            .map_err(|err| taken(err, "user", &row.user_name))?;
        // A new account may enrol its first MFA method with the password alone for a while.
        let window_end = self.clock.now_ms() + self.enrollment_window.as_millis() as i64;
        store::open_enrollment_window(&txn, &row.id, window_end).await?;
        self.emit(&txn, EventType::UserCreated, &row.id, &event).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(row)
    }

    /// A user, to the user themself or to someone who may read the directory.
    pub async fn get_user(&self, caller: &Caller, id_or_name: &str) -> Result<UserRow> {
        let user = store::find_user(&self.db, id_or_name).await?;
        let own = user.as_ref().is_some_and(|u| u.id == caller.principal_id);
        if !own {
            require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        }
        user.ok_or_else(|| Error::NotFound(format!("user {id_or_name}")))
    }

    pub async fn list_users(&self, caller: &Caller, filter: &str, after: &str, limit: u64) -> Result<Vec<UserRow>> {
        require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        Ok(store::list_users(&self.db, filter, after, limit).await?)
    }

    /// Service principals whose display names contain `filter`, after the one with id `after`
    /// (empty: from the first), at most `limit`.
    pub async fn list_service_principals(
        &self,
        caller: &Caller,
        filter: &str,
        after: &str,
        limit: u64,
    ) -> Result<Vec<store::ServicePrincipalRow>> {
        require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        let after = match after {
            "" => (String::new(), String::new()),
            id => {
                let last = store::find_service_principal(&self.db, id)
                    .await?
                    .ok_or_else(|| Error::invalid("page_token", "is not one this listing gave"))?;
                (last.display_name, last.id)
            }
        };
        Ok(store::list_service_principals(&self.db, filter, (&after.0, &after.1), limit).await?)
    }

    /// Any principal by id, for any authenticated caller (other services, on their callers'
    /// behalf); by user name only for directory readers: who exists is theirs to know.
    pub async fn resolve_principal(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<pim_proto::identity::v1::Principal> {
        if uuid::Uuid::parse_str(id_or_name).is_err() {
            require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        }
        self.get_principal(id_or_name).await
    }

    /// Any principal by id (a user by user name too).
    pub async fn get_principal(&self, id: &str) -> Result<pim_proto::identity::v1::Principal> {
        if let Some(u) = store::find_user(&self.db, id).await? {
            return Ok(pim_proto::identity::v1::Principal {
                id: u.id,
                kind: PrincipalKind::User as i32,
                display_name: u.display_name,
                user_name: u.user_name,
                enabled: u.enabled,
                is_assignable_to_role: false,
            });
        }
        if let Some(g) = store::find_group(&self.db, id).await? {
            return Ok(pim_proto::identity::v1::Principal {
                id: g.id,
                kind: PrincipalKind::Group as i32,
                display_name: g.display_name,
                user_name: String::new(),
                enabled: true,
                is_assignable_to_role: g.is_assignable_to_role,
            });
        }
        if let Some(sp) = store::find_service_principal(&self.db, id).await? {
            return Ok(pim_proto::identity::v1::Principal {
                id: sp.id,
                kind: PrincipalKind::ServicePrincipal as i32,
                display_name: sp.display_name,
                user_name: String::new(),
                enabled: sp.enabled,
                is_assignable_to_role: false,
            });
        }
        Err(Error::NotFound(format!("principal {id}")))
    }

    /// Creates a service principal; the secret is returned once and only its hash is kept.
    pub async fn create_service_principal(
        &self,
        caller: &Caller,
        display_name: &str,
    ) -> Result<(ServicePrincipalRow, String)> {
        require(
            self.access.as_ref(),
            caller,
            permissions::SERVICE_PRINCIPALS_MANAGE,
            "/",
        )
        .await?;
        let display_name = checked_principal_name(display_name)?;
        let secret = credentials::random_secret();
        let row = ServicePrincipalRow {
            id: uuid::Uuid::now_v7().to_string(),
            display_name: display_name.to_owned(),
            secret_hash: credentials::hash(&secret).await?,
            enabled: true,
            created_at: now_ms(),
            previous_secret: None,
        };
        let event = ev::ServicePrincipalCreated {
            actor: Some(caller.actor()),
            service_principal_id: row.id.clone(),
            display_name: row.display_name.clone(),
        };
        let txn = self.db.begin().await?;
        if let Err(err) = store::insert_service_principal(&txn, &row).await {
            txn.rollback().await?;
            return Err(name_refused(
                &self.db,
                err,
                "service principal",
                "service_principals",
                &row.display_name,
            )
            .await);
        }
        self.emit(&txn, EventType::ServicePrincipalCreated, &row.id, &event)
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok((row, secret))
    }

    /// Password sign-in. Unknown user, disabled user and wrong password answer alike, in
    /// about the same time.
    pub async fn sign_in(&self, user_name: &str, password: &str, client: &ClientInfo) -> Result<Session> {
        let now = now_ms();
        let user = store::find_user(&self.db, user_name.trim()).await?;
        // Counted against the principal however it was named, and against the source.
        let at = self.clock.now_ms();
        let keys = limiter::Keys::of_sign_in(&self.db, user.as_ref(), user_name, client.ip.as_deref(), at).await?;
        let counted = limiter::weigh(&self.db, &keys, at).await?;
        if let Some(minutes) = counted.refused {
            // Refused without looking at the password, and audited as a failed sign-in.
            let id = user.as_ref().map(|u| u.id.as_str()).unwrap_or_default();
            let by = counted.refused_by.as_deref().unwrap_or(id);
            self.sign_in_refused(user_name, id, by, client).await?;
            return Err(Error::Locked(format!(
                "too many failed sign-ins: try again in {minutes} minutes"
            )));
        }
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let matched = self.weighed(&keys, password, hash).await?;
        let user = match user {
            Some(u) if matched && u.enabled => u,
            other => {
                let reason = match &other {
                    None => "unknown_user",
                    Some(u) if !u.enabled => "disabled",
                    // The failure that reaches the limit says so: the lockout starts now.
                    Some(_) if counted.last => "bad_password_locked_out",
                    Some(_) => "bad_password",
                };
                let id = other.as_ref().map(|u| u.id.as_str()).unwrap_or_default();
                self.sign_in_failed(user_name, id, reason, client).await?;
                return Err(Error::BadCredentials);
            }
        };
        limiter::succeeded(&self.db, &keys, at).await?;
        let has_method = store::mfa_methods(&self.db, &user.id)
            .await?
            .iter()
            .any(|m| m.confirmed);
        let pending = match self.signin_mfa {
            SigninMfa::Off => None,
            SigninMfa::WhenEnrolled => has_method.then_some(Pending::Mfa),
            SigninMfa::Required if has_method => Some(Pending::Mfa),
            SigninMfa::Required => Some(Pending::Enrollment),
        };
        let amr = vec!["pwd".to_owned()];
        let session_id = uuid::Uuid::now_v7().to_string();
        let subject = TokenSubject {
            principal_id: user.id.clone(),
            kind: PrincipalKind::User,
            name: user.user_name.clone(),
            amr: amr.clone(),
            session_id: session_id.clone(),
            mfa_at: None,
            pending,
        };
        let ttl = if pending.is_some() {
            PENDING_TOKEN_TTL
        } else {
            self.token_ttl
        };
        let issued = self.keys.issue(&subject, ttl)?;
        // A sign-in waiting for MFA gets no refresh token yet: its session has one nobody
        // knows until the code is verified (`complete_sign_in`).
        let refresh_token = credentials::random_secret();
        let txn = self.db.begin().await?;
        // The password checked is still the user's, held until the session is in: a reset
        // committed meanwhile refuses this sign-in, and one after it ends its session.
        if !store::hold_user_password(&txn, &user.id, &user.password_hash).await? {
            return Err(Error::BadCredentials);
        }
        store::insert_session(
            &txn,
            &subject.session_id,
            &user.id,
            &refresh_hash(&refresh_token),
            now,
            now + if pending.is_some() {
                PENDING_SESSION_MS
            } else {
                SESSION_MS
            },
        )
        .await?;
        match pending {
            None => {
                // Only a sign-in complete counts, and ends the oldest: a password alone (MFA
                // not given) must not sign the user out anywhere.
                let by = actor(&user.id, PrincipalKind::User, &user.user_name);
                self.end_sessions_past_limit(&txn, &by, now).await?;
                self.signed_in(&txn, &user, &session_id, &amr, client).await?
            }
            Some(pending) => {
                let event_type = match pending {
                    Pending::Mfa => EventType::SignInMfaPending,
                    Pending::Enrollment => EventType::SignInEnrollmentPending,
                };
                let event = sign_in_event(&user, &session_id, &amr, client);
                self.emit(&txn, event_type, &user.id, &event).await?;
            }
        }
        txn.commit().await?;
        self.outbox.wake();
        Ok(Session {
            pending,
            ..Session::new(
                user.id,
                issued,
                amr,
                if pending.is_some() {
                    String::new()
                } else {
                    refresh_token
                },
            )
        })
    }

    /// Records a completed sign-in (last sign-in time, `SignInSucceeded`) in `txn`.
    pub(crate) async fn signed_in<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        user: &UserRow,
        session_id: &str,
        amr: &[String],
        client: &ClientInfo,
    ) -> Result<()> {
        store::record_user_sign_in(txn, &user.id, now_ms()).await?;
        let event = sign_in_event(user, session_id, amr, client);
        self.emit(txn, EventType::SignInSucceeded, &user.id, &event).await?;
        Ok(())
    }

    /// Whether `secret` matches `hash` ([`credentials::verify`]); where it could not be
    /// weighed (no hashing thread free in time, a fault), the attempt `keys` counted is taken
    /// back: it was no failure, and a client retrying would otherwise lock its address out.
    async fn weighed(&self, keys: &limiter::Keys, secret: &str, hash: Option<String>) -> Result<bool> {
        match credentials::verify(secret, hash).await {
            Err(e) => {
                limiter::abandoned(&self.db, keys).await?;
                Err(e)
            }
            matched => matched,
        }
    }

    /// Records a failed sign-in: the name or client id tried (its first 256 characters), the
    /// principal it names if any, why, and from where.
    pub(crate) async fn sign_in_failed(
        &self,
        tried: &str,
        principal_id: &str,
        reason: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        let event = failed_sign_in(tried, principal_id, reason, client);
        self.record(EventType::SignInFailed, principal_id, &event).await
    }

    /// A sign-in refused as malformed (a name with control characters or too long, no name, no
    /// secret) is a refused sign-in too: recorded as `malformed`, the name tried escaped
    /// (`\u{1b}` for an escape character), once a minute per source as refusals past a limit
    /// are, so a flood of them costs the log a record a minute. The refusal is answered
    /// whether or not the record could be written (logged then).
    pub(crate) async fn malformed_sign_in(&self, tried: &str, client: &ClientInfo) {
        let by = format!("malformed from {}", client.ip.as_deref().unwrap_or("an unknown source"));
        let Some(more_refused) = self.refused_sign_ins.worth_recording(&by, self.clock.now_ms()) else {
            return;
        };
        let escaped: String = tried.chars().take(256).flat_map(char::escape_debug).collect();
        let event = ev::SignInFailed {
            more_refused,
            ..failed_sign_in(&escaped, "", "malformed", client)
        };
        if let Err(e) = self.record(EventType::SignInFailed, "", &event).await {
            tracing::warn!(error = %e, "recording a malformed sign-in failed");
        }
    }

    /// A sign-in refused unchecked past a limit (`locked_out`): recorded once a minute per
    /// limit that refused it, `by` (an account's, a name's or a source's:
    /// [`limiter::Refusals`]), so rotating addresses at a locked account, or names at a locked
    /// address, still costs the log a record a minute.
    async fn sign_in_refused(&self, tried: &str, principal_id: &str, by: &str, client: &ClientInfo) -> Result<()> {
        let Some(more_refused) = self.refused_sign_ins.worth_recording(by, self.clock.now_ms()) else {
            return Ok(());
        };
        let event = ev::SignInFailed {
            more_refused,
            ..failed_sign_in(tried, principal_id, "locked_out", client)
        };
        self.record(EventType::SignInFailed, principal_id, &event).await
    }

    pub async fn sign_in_service_principal(
        &self,
        client_id: &str,
        secret: &str,
        client: &ClientInfo,
    ) -> Result<Session> {
        let sp = match uuid::Uuid::parse_str(client_id.trim()) {
            Ok(_) => store::find_service_principal(&self.db, client_id.trim()).await?,
            Err(_) => None,
        };
        let keys = limiter::Keys::of_app_source(client.ip.as_deref());
        if let Some(minutes) = limiter::attempt(&self.db, &keys, self.clock.now_ms()).await? {
            // Refused without hashing the secret, and audited as a failed sign-in.
            let id = sp.as_ref().map(|s| s.id.as_str()).unwrap_or_default();
            self.sign_in_refused(client_id, id, keys.source.as_deref().unwrap_or(id), client)
                .await?;
            return Err(Error::Locked(format!(
                "too many failed sign-ins from this address: try again in {minutes} minutes"
            )));
        }
        let mut matched = self
            .weighed(&keys, secret, sp.as_ref().map(|s| s.secret_hash.clone()))
            .await?
            .then(|| sp.as_ref().map(|s| s.secret_hash.clone()))
            .flatten();
        // The secret before a rotation that kept it a while, until then: its tokens end then too.
        let now = self.clock.now_ms();
        let previous = sp
            .as_ref()
            .and_then(|s| s.previous_secret.clone())
            .filter(|kept| kept.until > now);
        let (mut ttl, mut kept_since) = (self.token_ttl, None);
        if matched.is_none()
            && let Some(kept) = previous
            && self.weighed(&keys, secret, Some(kept.hash.clone())).await?
        {
            ttl = ttl.min(std::time::Duration::from_millis((kept.until - now) as u64));
            (matched, kept_since) = (Some(kept.hash), Some(kept.since));
        }
        // The principal, and the hash of the secret that signed in (held below).
        let (sp, held_hash) = match (sp, matched) {
            (Some(sp), Some(hash)) if sp.enabled => (sp, hash),
            (other, _) => {
                let id = other.as_ref().map(|s| s.id.as_str()).unwrap_or_default();
                self.sign_in_failed(client_id, id, "bad_client_credentials", client)
                    .await?;
                return Err(Error::BadClientCredentials);
            }
        };
        limiter::succeeded(&self.db, &keys, self.clock.now_ms()).await?;
        let amr = vec!["secret".to_owned()];
        // The tokens a kept secret gets share one session (a second rotation ends it, however
        // often the app signed in meanwhile); others keep none.
        let session_id = match kept_since {
            Some(since) => format!("{}-kept-{since}", sp.id),
            None => uuid::Uuid::now_v7().to_string(),
        };
        let subject = TokenSubject {
            principal_id: sp.id.clone(),
            kind: PrincipalKind::ServicePrincipal,
            name: sp.display_name.clone(),
            amr: amr.clone(),
            session_id: session_id.clone(),
            mfa_at: None,
            pending: None,
        };
        let txn = self.db.begin().await?;
        // The secret checked is still the principal's, held until the token is issued: a
        // rotation committed meanwhile refuses this sign-in, and one after it refuses the
        // token (issued before the rotation's instant).
        if !store::hold_service_principal_secret(&txn, &sp.id, &held_hash, kept_since.is_some(), now).await? {
            return Err(Error::BadClientCredentials);
        }
        let issued = self.keys.issue(&subject, ttl)?;
        let event = ev::SignInSucceeded {
            actor: Some(actor(&sp.id, PrincipalKind::ServicePrincipal, &sp.display_name)),
            session_id: session_id.clone(),
            amr: amr.clone(),
            source_ip: client.ip.clone().unwrap_or_default(),
            user_agent: client.user_agent.clone(),
        };
        store::record_sp_sign_in(&txn, &sp.id, now_ms()).await?;
        if kept_since.is_some() {
            // Its session, so a rotation that ends the kept secret early ends this token too.
            let issued_at = now_ms();
            store::keep_session(&txn, &session_id, &sp.id, issued_at, issued_at + ttl.as_millis() as i64).await?;
        }
        self.emit(&txn, EventType::SignInSucceeded, &sp.id, &event).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(Session::new(sp.id, issued, amr, String::new()))
    }

    /// Writes an identity event inside the caller's transaction (the change and its event
    /// commit together); wake the relay after the commit.
    pub(crate) async fn emit<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        event_type: EventType,
        subject: &str,
        event: &impl prost::Message,
    ) -> Result<i64> {
        let envelope = self.emit_envelope(txn, event_type, subject, event).await?;
        Ok(envelope
            .time
            .as_ref()
            .map(pim_runtime::db::from_timestamp)
            .unwrap_or_default())
    }

    /// [`Self::emit`], answering the envelope written.
    pub(crate) async fn emit_envelope<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        event_type: EventType,
        subject: &str,
        event: &impl prost::Message,
    ) -> Result<pim_runtime::events::Envelope> {
        let envelope = envelope(SOURCE, event_type, subject, event);
        self.outbox.enqueue(txn, streams::IDENTITY, &envelope).await?;
        Ok(envelope)
    }

    /// Gives assignment committed events that change who is in a role-assignable group (or
    /// delete a group) at once, signed, where they are not applied before the answer (events
    /// cross Redis, which may be down): the access they end is gone there before this
    /// answers. A failure only waits for the stream, which delivers the same events.
    pub(crate) async fn tell_assignment(&self, caller: &Caller, mut told: Vec<pim_runtime::events::Envelope>) {
        if told.is_empty() {
            return;
        }
        let tell = async {
            for envelope in &mut told {
                self.event_keys.sign(streams::IDENTITY, envelope)?;
                self.assignment.apply_directory_event(caller, envelope).await?;
            }
            anyhow::Ok(())
        };
        self.tell_assignment_now("a group change", tell).await;
    }

    /// Tells assignment of `what` committed here now, where events are not applied before the
    /// answer, waiting at most 3 s: a failure only waits for the events, which tell the same.
    pub(crate) async fn tell_assignment_now(
        &self,
        what: &str,
        tell: impl std::future::Future<Output = anyhow::Result<()>>,
    ) {
        if self.outbox.applies_before_answering() {
            return;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(3), tell).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "telling assignment of {what} failed; its events will"),
            Err(_) => tracing::warn!("assignment did not take {what} within 3 s; its events will tell it"),
        }
    }

    /// An event that stands alone (no state change with it), in its own transaction.
    pub(crate) async fn record(&self, event_type: EventType, subject: &str, event: &impl prost::Message) -> Result<()> {
        let txn = self.db.begin().await?;
        self.emit(&txn, event_type, subject, event).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// The break-glass administrator: created with a random password when missing, given a
    /// new one when present (an interrupted bootstrap is re-run). Returns (user, password).
    /// Whether any of `ids` is an enabled user.
    pub async fn any_enabled(&self, ids: &[String]) -> Result<bool> {
        Ok(!store::lock_enabled_users(&self.db, ids).await?.is_empty())
    }

    pub async fn bootstrap_admin(&self, user_name: &str) -> Result<(UserRow, String)> {
        let password = credentials::random_secret();
        if let Some(mut user) = store::find_user(&self.db, user_name).await? {
            store::set_password(&self.db, &user.id, &credentials::hash(&password).await?).await?;
            if !user.enabled {
                // No enabled user holds a permanent Global Administrator assignment: the
                // break-glass account is the way back in, so it may sign in again.
                let event = ev::UserDisabled {
                    actor: Some(actor("system", PrincipalKind::Unspecified, "PIM (bootstrap)")),
                    user_id: user.id.clone(),
                    user_name: user.user_name.clone(),
                };
                self.after_the_disables_second(&user.id).await?;
                let txn = self.db.begin().await?;
                if store::set_user_enabled(&txn, &user.id, true).await? {
                    self.emit(&txn, EventType::UserEnabled, &user.id, &event).await?;
                }
                txn.commit().await?;
                user.enabled = true;
            }
            // Re-run (say, after an upgrade): the break-glass account may enrol MFA again.
            if !store::mfa_methods(&self.db, &user.id)
                .await?
                .iter()
                .any(|m| m.confirmed)
            {
                let window_end = self.clock.now_ms() + self.enrollment_window.as_millis() as i64;
                store::open_enrollment_window(&self.db, &user.id, window_end).await?;
            }
            return Ok((user, password));
        }
        let new = NewUser {
            user_name: user_name.to_owned(),
            display_name: "Break-glass administrator".to_owned(),
            email: String::new(),
            password: password.clone(),
        }
        .validate()?;
        Ok((self.insert_user(None, new).await?, password))
    }
}
