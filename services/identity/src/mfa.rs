//! Multi-factor authentication: TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step of
//! skew) through totp-rs, each code accepted once; single-use recovery codes; failed attempts
//! counted per user and locked out after a burst. A successful check returns a stepped-up
//! token (`amr` has `otp`, `mfa_at` = now) for the caller's session, and completes a sign-in
//! that was waiting for it.
//!
//! Managing MFA needs MFA: once a user has a method, adding another, removing one and new
//! recovery codes need a recent step-up (`MfaRule`), so a password alone never gets around
//! the authenticator. A first method needs an administrator's enrolment pass, or the window
//! after an administrator created the account or reset its MFA.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sea_orm::TransactionTrait;
use totp_rs::{Algorithm, TOTP};

use pim_proto::common::v1::PrincipalKind;
use pim_proto::events::v1 as ev;
use pim_runtime::access::{permissions, require};
use pim_runtime::auth::Caller;
use pim_runtime::db::{now_ms, to_timestamp};

use crate::codes::{new_enrollment_pass, new_recovery_code};
use crate::credentials;
use crate::directory::{ClientInfo, Directory, SESSION_MS, Session, refresh_hash};
use crate::error::{Error, Result};
use crate::factor::Factor;
use crate::store::{self, EnrollmentPassRow, MfaMethodRow, UserRow};
use crate::tokens::TokenSubject;
use pim_runtime::events::EventType;

const STEP_SECS: u64 = 30;
const DIGITS: usize = 6;
const ISSUER: &str = "PIM";
const RECOVERY_CODES: usize = 10;
/// Failures within the window that lock MFA for the user.
const MAX_FAILURES: i32 = 5;
const FAILURE_WINDOW_MS: i64 = 15 * 60 * 1000;
const LOCKOUT_MS: i64 = 15 * 60 * 1000;

fn totp(secret: Vec<u8>, account: &str) -> Result<TOTP> {
    // Skew 0: each step is checked on its own so the matching step can be recorded.
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        0,
        STEP_SECS,
        secret,
        Some(ISSUER.to_owned()),
        account.to_owned(),
    )
    .map_err(|e| Error::Internal(anyhow::anyhow!("building a TOTP: {e:?}")))
}

/// The time step `code` belongs to, within one step either side of `now_secs`.
pub fn matching_step(totp: &TOTP, code: &str, now_secs: u64) -> Option<i64> {
    let current = now_secs / STEP_SECS;
    [current.saturating_sub(1), current, current + 1]
        .into_iter()
        .find(|step| totp.check(code, step * STEP_SECS))
        .map(|step| step as i64)
}

/// How long an enrolment pass may work, and how many enrolments it may allow (Entra's
/// Temporary Access Pass: 10 minutes to 30 days, 1 hour by default).
const PASS_LIFETIME_MS: std::ops::RangeInclusive<i64> = 10 * 60_000..=30 * 86_400_000;
const PASS_DEFAULT_LIFETIME_MS: i64 = 3_600_000;
const PASS_USES: std::ops::RangeInclusive<i32> = 1..=10;

/// What `ListMethods` shows: the confirmed methods and the state of the recovery codes.
pub struct MethodsView {
    pub methods: Vec<MfaMethodRow>,
    pub recovery_codes_left: i64,
    pub recovery_code_last_used_at: Option<i64>,
}

fn looks_like_totp(code: &str) -> bool {
    code.len() == DIGITS && code.chars().all(|c| c.is_ascii_digit())
}

impl Directory {
    pub(crate) fn user_caller<'a>(&self, caller: &'a Caller) -> Result<&'a Caller> {
        if caller.kind != PrincipalKind::User {
            return Err(Error::FailedPrecondition(
                "multi-factor authentication is for users".into(),
            ));
        }
        Ok(caller)
    }

    /// What an MFA event says: who, about which user and method, from which session.
    pub(crate) fn mfa_fact(
        caller: &Caller,
        user_id: &str,
        method: &str,
        method_id: &str,
        reason: &str,
    ) -> ev::MfaEvent {
        ev::MfaEvent {
            actor: Some(caller.actor()),
            user_id: user_id.into(),
            method: method.into(),
            reason: reason.into(),
            session_id: caller.session_id.clone(),
            method_id: method_id.into(),
        }
    }

    async fn mfa_event(&self, kind: EventType, caller: &Caller, factor: Option<Factor>, reason: &str) -> Result<()> {
        let event = Self::mfa_fact(
            caller,
            &caller.principal_id,
            factor.map_or("", Factor::as_str),
            "",
            reason,
        );
        self.record(kind, &caller.principal_id, &event).await
    }

    pub(crate) async fn confirmed_methods(&self, user_id: &str) -> Result<Vec<MfaMethodRow>> {
        Ok(store::mfa_methods(&self.db, user_id)
            .await?
            .into_iter()
            .filter(|m| m.confirmed)
            .collect())
    }

    /// Refuses (FAILED_PRECONDITION with `MfaRule`) unless the caller's token carries an MFA
    /// within the step-up window: what a password alone must not be able to do.
    pub(crate) fn require_recent_mfa(&self, caller: &Caller, what: &str) -> Result<()> {
        let window = self.step_up.as_secs() as i64;
        let fresh = pim_runtime::auth::mfa_is_fresh(
            pim_runtime::auth::has_mfa(&caller.amr),
            caller.mfa_at.map(|at| at.saturating_mul(1000)),
            self.clock.now_ms(),
            window.saturating_mul(1000),
        );
        if fresh {
            return Ok(());
        }
        Err(Error::MfaRequired(format!(
            "{what} needs a multi-factor authentication within the last {window} s: verify a code and retry"
        )))
    }

    /// Whether the caller may add a method without an enrolment pass: with a recent MFA where
    /// they have a method, or within the account's enrolment window where they have none.
    pub(crate) async fn may_add_method(&self, caller: &Caller) -> Result<()> {
        if !self.confirmed_methods(&caller.principal_id).await?.is_empty() {
            return self.require_recent_mfa(caller, "adding an MFA method");
        }
        let window = store::enrollment_window(&self.db, &caller.principal_id).await?;
        if window.is_none_or(|until| until <= self.clock.now_ms()) {
            return Err(Error::FailedPrecondition(
                "enrolling a first MFA method needs an enrolment pass from an administrator: \
                 enrol TOTP first (pim mfa enroll --pass PASS)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Opens the transaction that adds a confirmed method to `user_id`, and says whether it is
    /// their first. The user's enrolments take turns (a row lock): whether this is the first
    /// method is decided with no other confirmation in flight, so a second method never slips
    /// in without a recent MFA while the first is being confirmed.
    pub(crate) async fn begin_adding_method(
        &self,
        caller: &Caller,
        user_id: &str,
    ) -> Result<(sea_orm::DatabaseTransaction, bool)> {
        let txn = self.db.begin().await?;
        store::lock_user(&txn, user_id).await?;
        let first = !store::mfa_methods(&txn, user_id).await?.iter().any(|m| m.confirmed);
        if !first && let Err(err) = self.require_recent_mfa(caller, "adding an MFA method") {
            txn.rollback().await?;
            return Err(err);
        }
        Ok((txn, first))
    }

    /// Starts TOTP enrolment: a new secret, shown once as an `otpauth://` URI. A first method
    /// needs an enrolment pass or the account's enrolment window; another one a recent MFA.
    pub async fn enroll_totp(&self, caller: &Caller, pass: &str) -> Result<(String, String)> {
        let caller = self.user_caller(caller)?;
        self.check_not_locked(caller).await?;
        let now = self.clock.now_ms();
        let pass = pass.trim();
        let has_method = !self.confirmed_methods(&caller.principal_id).await?.is_empty();
        if has_method {
            self.require_recent_mfa(caller, "adding an MFA method")?;
        } else if pass.is_empty() {
            let window = store::enrollment_window(&self.db, &caller.principal_id).await?;
            if window.is_none_or(|until| until <= now) {
                return Err(Error::FailedPrecondition(
                    "enrolling a first MFA method needs an enrolment pass from an administrator \
                     (pim mfa pass create USER; then pim mfa enroll --pass): the account's enrolment window has closed"
                        .into(),
                ));
            }
        }
        let mut secret = vec![0u8; 20];
        OsRng.fill_bytes(&mut secret);
        let uri = totp(secret.clone(), &caller.name)?.get_url();
        let id = uuid::Uuid::now_v7().to_string();
        let method = MfaMethodRow {
            secret: self.sealer.seal(&secret, &id)?,
            id,
            user_id: caller.principal_id.clone(),
            kind: Factor::Totp,
            confirmed: false,
            last_step: 0,
            created_at: now_ms(),
            name: String::new(),
        };
        // A pass is a credential: guessing one counts like a wrong code.
        let attempt = match has_method || pass.is_empty() {
            true => None,
            false => Some(self.take_attempt(caller).await?),
        };
        let txn = self.db.begin().await?;
        if let Some(attempt) = attempt {
            // One statement takes a use of the pass: two racing enrolments cannot share one.
            let Some((pass_id, expires_at, uses_left)) =
                self.use_enrollment_pass(&txn, &caller.principal_id, pass, now).await?
            else {
                txn.rollback().await?;
                return Err(match self.failed(caller, Factor::EnrollmentPass, attempt).await {
                    Error::BadCode => Error::BadPass,
                    other => other,
                });
            };
            store::clear_mfa_failures(&txn, &caller.principal_id).await?;
            let event = ev::EnrollmentPassEvent {
                actor: Some(caller.actor()),
                user_id: caller.principal_id.clone(),
                pass_id,
                expires_at: Some(to_timestamp(expires_at)),
                uses_left,
            };
            self.emit(&txn, EventType::EnrollmentPassUsed, &caller.principal_id, &event)
                .await?;
        }
        store::delete_unconfirmed_methods(&txn, &caller.principal_id).await?;
        store::insert_mfa_method(&txn, &method).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok((method.id, uri))
    }

    /// Confirms enrolment with a first code from the authenticator. That code is an MFA, so
    /// the answer is a stepped-up token (completing the sign-in it may have been waiting for).
    pub async fn confirm_totp(
        &self,
        caller: &Caller,
        method_id: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<Session> {
        let caller = self.user_caller(caller)?;
        let attempt = self.take_attempt(caller).await?;
        let user = self.signed_in_user(caller).await?;
        let methods = store::mfa_methods(&self.db, &caller.principal_id).await?;
        let method = methods
            .into_iter()
            .find(|m| m.id == method_id && !m.confirmed)
            .ok_or_else(|| Error::NotFound(format!("pending TOTP enrolment {method_id}")))?;
        let seed = self.sealer.open(&method.secret, &method.id)?;
        let Some(step) = matching_step(&totp(seed, &caller.name)?, code.trim(), (now_ms() / 1000) as u64) else {
            return Err(self.failed(caller, Factor::Totp, attempt).await);
        };
        let (txn, first) = self.begin_adding_method(caller, &user.id).await?;
        if !store::use_step(&txn, &method.id, step, true).await? {
            txn.rollback().await?;
            return Err(self.failed(caller, Factor::Totp, attempt).await);
        }
        store::clear_mfa_failures(&txn, &user.id).await?;
        if first {
            // Whoever else was signed in with the password alone (say, within the enrolment
            // window) is out: from now on the account has a second factor.
            self.revoke_other_sessions(&txn, caller, "mfa_enrolled").await?;
        }
        let event = Self::mfa_fact(caller, &user.id, Factor::Totp.as_str(), &method.id, "");
        self.stepped_up(txn, caller, &user, EventType::MfaEnrolled, &event, None, client)
            .await
    }

    pub(crate) async fn signed_in_user(&self, caller: &Caller) -> Result<UserRow> {
        match store::find_user(&self.db, &caller.principal_id).await? {
            Some(user) if user.enabled => Ok(user),
            _ => Err(Error::BadCredentials),
        }
    }

    pub(crate) async fn check_not_locked(&self, caller: &Caller) -> Result<()> {
        if let Some((_, _, Some(until))) = store::mfa_failures(&self.db, &caller.principal_id).await?
            && until > self.clock.now_ms()
        {
            // Refused because MFA is locked: audited like a refused code.
            self.mfa_event(EventType::MfaFailed, caller, None, "locked_out").await?;
            return Err(Error::Locked(format!(
                "too many failed codes: multi-factor authentication is locked for {} more minutes",
                (until - self.clock.now_ms()) / 60_000 + 1
            )));
        }
        Ok(())
    }

    /// Takes one attempt at a code (or a pass), counted before it is checked and in one
    /// statement, so parallel guesses cannot outrun the lockout: a locked user, or an attempt
    /// past the limit, is refused without looking at the code. A right answer clears the count.
    pub(crate) async fn take_attempt(&self, caller: &Caller) -> Result<i32> {
        let now = self.clock.now_ms();
        let (attempts, locked_until) =
            store::count_mfa_attempt(&self.db, &caller.principal_id, now, now - FAILURE_WINDOW_MS).await?;
        if locked_until.is_some_and(|until| until > now) || attempts > MAX_FAILURES {
            // A refused attempt is audited like a wrong one, without looking at the code.
            self.mfa_event(EventType::MfaFailed, caller, None, "locked_out").await?;
        }
        if let Some(until) = locked_until.filter(|until| *until > now) {
            return Err(Error::Locked(format!(
                "too many failed codes: multi-factor authentication is locked for {} more minutes",
                (until - now) / 60_000 + 1
            )));
        }
        if attempts > MAX_FAILURES {
            return Err(Error::Locked(
                "too many failed codes: multi-factor authentication is locked for 15 minutes".into(),
            ));
        }
        Ok(attempts)
    }

    /// A wrong answer on attempt `attempt`: audited, and the one that reaches the limit locks
    /// MFA. Returns the error to answer with.
    pub(crate) async fn failed(&self, caller: &Caller, factor: Factor, attempt: i32) -> Error {
        self.failed_because(caller, factor, attempt, "bad_code").await
    }

    /// [`Self::failed`], audited with `reason` (`replayed_code`: a right code used before, the
    /// sign of a relayed or phished one; the caller is told only that it is wrong).
    pub(crate) async fn failed_because(&self, caller: &Caller, factor: Factor, attempt: i32, reason: &str) -> Error {
        let now = self.clock.now_ms();
        let locked = attempt >= MAX_FAILURES;
        let outcome = async {
            if locked {
                store::lock_mfa(&self.db, &caller.principal_id, now + LOCKOUT_MS).await?;
            }
            self.mfa_event(EventType::MfaFailed, caller, Some(factor), reason)
                .await?;
            if locked {
                self.mfa_event(EventType::MfaLockedOut, caller, Some(factor), "too_many_failures")
                    .await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        match outcome {
            Ok(()) if locked => {
                Error::Locked("too many failed codes: multi-factor authentication is locked for 15 minutes".into())
            }
            Ok(()) => Error::BadCode,
            Err(err) => err,
        }
    }

    /// Checks a TOTP or recovery code and returns a stepped-up token for the caller's session
    /// (completing the sign-in when it was waiting for MFA).
    pub async fn verify_mfa(&self, caller: &Caller, code: &str, client: &ClientInfo) -> Result<Session> {
        let caller = self.user_caller(caller)?;
        let code = code.trim();
        if code.is_empty() || code.len() > 32 {
            return Err(Error::invalid("code", "a 6-digit code or a recovery code"));
        }
        let user = self.signed_in_user(caller).await?;
        let methods = self.confirmed_methods(&user.id).await?;
        if methods.is_empty() {
            return Err(Error::FailedPrecondition(
                "no MFA method is enrolled: run pim mfa enroll".into(),
            ));
        }
        let attempt = self.take_attempt(caller).await?;
        if looks_like_totp(code) {
            let now_secs = (now_ms() / 1000) as u64;
            let mut replayed = false;
            // Only authenticator apps have codes (a passkey's row holds no sealed seed).
            for method in methods.iter().filter(|m| m.kind == Factor::Totp) {
                let seed = self.sealer.open(&method.secret, &method.id)?;
                // A code is accepted once: its step must be later than the last one used.
                let Some(step) = matching_step(&totp(seed, &user.user_name)?, code, now_secs) else {
                    continue;
                };
                replayed = true;
                if store::use_step(&self.db, &method.id, step, false).await? {
                    let txn = self.db.begin().await?;
                    store::clear_mfa_failures(&txn, &user.id).await?;
                    let event = Self::mfa_fact(caller, &user.id, Factor::Totp.as_str(), &method.id, "");
                    return self
                        .stepped_up(txn, caller, &user, EventType::MfaVerified, &event, None, client)
                        .await;
                }
            }
            let reason = if replayed { "replayed_code" } else { "bad_code" };
            return Err(self.failed_because(caller, Factor::Totp, attempt, reason).await);
        }
        if !self.use_recovery_code(&user.id, code).await? {
            return Err(self.failed(caller, Factor::RecoveryCode, attempt).await);
        }
        // A recovery code is an emergency: its own event (audit, an alert), and the answer
        // tells the user how many are left.
        let (left, _) = store::recovery_codes_state(&self.db, &user.id).await?;
        let left = i32::try_from(left).unwrap_or(i32::MAX);
        let event = Self::mfa_fact(
            caller,
            &user.id,
            Factor::RecoveryCode.as_str(),
            "",
            &format!("{left} left"),
        );
        let txn = self.db.begin().await?;
        store::clear_mfa_failures(&txn, &user.id).await?;
        self.stepped_up(
            txn,
            caller,
            &user,
            EventType::RecoveryCodeUsed,
            &event,
            Some(left),
            client,
        )
        .await
    }

    /// A token with a fresh MFA for the caller's session, committed in `txn` with the event
    /// that says why; a sign-in waiting for MFA is completed (its refresh token,
    /// `SignInSucceeded`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn stepped_up(
        &self,
        txn: sea_orm::DatabaseTransaction,
        caller: &Caller,
        user: &UserRow,
        event_type: EventType,
        event: &ev::MfaEvent,
        recovery_codes_left: Option<i32>,
        client: &ClientInfo,
    ) -> Result<Session> {
        // RFC 8176: `otp` for a code, `hwk` for a key's proof of possession (a passkey).
        let method = Factor::parse(&event.method).and_then(Factor::amr).unwrap_or("otp");
        // The factor just verified is the one `mfa_at` dates: an earlier one of another kind
        // leaves `amr`, so a passkey's `hwk` never stands beside a later code's time.
        let mut amr: Vec<String> = caller
            .amr
            .iter()
            .filter(|m| !matches!(m.as_str(), "otp" | "hwk"))
            .cloned()
            .collect();
        amr.push(method.into());
        let subject = TokenSubject {
            principal_id: user.id.clone(),
            kind: PrincipalKind::User,
            name: user.user_name.clone(),
            amr: amr.clone(),
            session_id: caller.session_id.clone(),
            mfa_at: Some(self.clock.now_ms() / 1000),
            pending: None,
        };
        let issued = self.keys.issue(&subject, self.token_ttl)?;
        self.emit(&txn, event_type, &user.id, event).await?;
        let mut refresh_token = String::new();
        if caller.pending.is_some() {
            let next = credentials::random_secret();
            if !store::set_session_refresh(&txn, &caller.session_id, &refresh_hash(&next), SESSION_MS).await? {
                return Err(Error::BadRefresh);
            }
            let by = crate::directory::actor(&user.id, PrincipalKind::User, &user.user_name);
            self.end_sessions_past_limit(&txn, &by, now_ms()).await?;
            refresh_token = next;
            self.signed_in(&txn, user, &caller.session_id, &amr, client).await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        Ok(Session {
            principal_id: user.id.clone(),
            issued,
            amr,
            refresh_token,
            pending: None,
            recovery_codes_left,
        })
    }

    /// Removes one of the caller's own methods, after a recent MFA.
    pub async fn remove_mfa_method(&self, caller: &Caller, method_id: &str) -> Result<()> {
        let caller = self.user_caller(caller)?;
        let method_id = method_id.trim();
        let Some(kind) = self
            .confirmed_methods(&caller.principal_id)
            .await?
            .into_iter()
            .find(|m| m.id == method_id)
            .map(|m| m.kind)
        else {
            return Err(Error::NotFound(format!("MFA method {method_id}")));
        };
        self.require_recent_mfa(caller, "removing an MFA method")?;
        let event = Self::mfa_fact(
            caller,
            &caller.principal_id,
            kind.as_str(),
            method_id,
            "removed_by_user",
        );
        let txn = self.db.begin().await?;
        if !store::delete_method(&txn, &caller.principal_id, method_id).await? {
            return Err(Error::NotFound(format!("MFA method {method_id}")));
        }
        self.emit(&txn, EventType::MfaMethodRemoved, &caller.principal_id, &event)
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// New single-use recovery codes (the old ones stop working), shown once, after a recent
    /// MFA; the user's other sessions end (whoever else was signed in is out).
    pub async fn generate_recovery_codes(&self, caller: &Caller) -> Result<Vec<String>> {
        let caller = self.user_caller(caller)?;
        if self.confirmed_methods(&caller.principal_id).await?.is_empty() {
            return Err(Error::FailedPrecondition(
                "enrol TOTP before generating recovery codes".into(),
            ));
        }
        self.require_recent_mfa(caller, "generating recovery codes")?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let hashes: Vec<String> = codes.iter().map(|c| self.code_digest(c)).collect();
        let event = Self::mfa_fact(
            caller,
            &caller.principal_id,
            Factor::RecoveryCode.as_str(),
            "",
            "regenerated",
        );
        let txn = self.db.begin().await?;
        store::replace_recovery_codes(&txn, &caller.principal_id, &hashes).await?;
        self.emit(&txn, EventType::RecoveryCodesGenerated, &caller.principal_id, &event)
            .await?;
        self.revoke_other_sessions(&txn, caller, "recovery_codes_regenerated")
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(codes)
    }

    /// A user's MFA methods (never their secrets) and recovery-code state: their own, or
    /// anyone's for directory readers.
    pub async fn list_mfa_methods(&self, caller: &Caller, user: &str) -> Result<MethodsView> {
        let user = if user.trim().is_empty() {
            caller.principal_id.clone()
        } else {
            user.trim().to_owned()
        };
        let found = store::find_user(&self.db, &user).await?;
        if found.as_ref().is_none_or(|u| u.id != caller.principal_id) {
            require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        }
        let found = found.ok_or_else(|| Error::NotFound(format!("user {user}")))?;
        let (recovery_codes_left, recovery_code_last_used_at) =
            store::recovery_codes_state(&self.db, &found.id).await?;
        Ok(MethodsView {
            methods: self.confirmed_methods(&found.id).await?,
            recovery_codes_left,
            recovery_code_last_used_at,
        })
    }

    /// Removes a user's MFA methods and recovery codes (credential protection applies), and
    /// opens the enrolment window so they can enrol again with their password.
    pub async fn reset_mfa(&self, caller: &Caller, user: &str) -> Result<()> {
        let found = self.target_user(caller, user, permissions::CREDENTIALS_RESET).await?;
        self.require_credential_admin(caller, &found).await?;
        let event = Self::mfa_fact(caller, &found.id, "all", "", "reset");
        let window_end = self.clock.now_ms() + self.enrollment_window.as_millis() as i64;
        let txn = self.db.begin().await?;
        store::reset_mfa(&txn, &found.id).await?;
        store::open_enrollment_window(&txn, &found.id, window_end).await?;
        self.emit(&txn, EventType::MfaReset, &found.id, &event).await?;
        // Whoever enrolled what was reset (the user, or someone holding their password) is
        // signed out, and signs in again with the password alone.
        self.end_sessions_of(&txn, caller, &found.id, "mfa_reset").await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// An administrator's one-time enrolment pass for a user with no method (credential
    /// protection applies). The code is returned once; only its hash is kept.
    pub async fn create_enrollment_pass(
        &self,
        caller: &Caller,
        user: &str,
        lifetime_ms: Option<i64>,
        uses: Option<i32>,
    ) -> Result<(EnrollmentPassRow, String)> {
        let target = self.target_user(caller, user, permissions::CREDENTIALS_RESET).await?;
        self.require_credential_admin(caller, &target).await?;
        let lifetime = lifetime_ms.unwrap_or(PASS_DEFAULT_LIFETIME_MS);
        if !PASS_LIFETIME_MS.contains(&lifetime) {
            return Err(Error::invalid("lifetime", "must be between 10 minutes and 30 days"));
        }
        let uses = uses.unwrap_or(1);
        if !PASS_USES.contains(&uses) {
            return Err(Error::invalid("uses", "must be between 1 and 10"));
        }
        if !self.confirmed_methods(&target.id).await?.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{} has an MFA method already; a pass is for a first enrolment (reset their MFA first: pim mfa reset {})",
                target.user_name, target.user_name
            )));
        }
        let code = new_enrollment_pass();
        let now = self.clock.now_ms();
        let row = EnrollmentPassRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: target.id.clone(),
            code_hash: self.code_digest(&code),
            created_by: caller.principal_id.clone(),
            created_at: now,
            expires_at: now + lifetime,
            uses_left: uses,
        };
        let event = ev::EnrollmentPassEvent {
            actor: Some(caller.actor()),
            user_id: target.id.clone(),
            pass_id: row.id.clone(),
            expires_at: Some(to_timestamp(row.expires_at)),
            uses_left: uses,
        };
        let txn = self.db.begin().await?;
        store::insert_enrollment_pass(&txn, &row).await?;
        self.emit(&txn, EventType::EnrollmentPassCreated, &target.id, &event)
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok((row, code))
    }

    /// A user's passes that still work, for directory readers (never their codes).
    pub async fn list_enrollment_passes(&self, caller: &Caller, user: &str) -> Result<Vec<EnrollmentPassRow>> {
        require(self.access.as_ref(), caller, permissions::USERS_READ, "/").await?;
        let target = store::find_user(&self.db, user.trim())
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {}", user.trim())))?;
        Ok(store::enrollment_passes(&self.db, &target.id, self.clock.now_ms()).await?)
    }

    /// Changes the caller's own password: the current one, a recent MFA when they have a
    /// method, the password rules; their other sessions end.
    pub async fn change_password(&self, caller: &Caller, current: &str, new_password: &str) -> Result<()> {
        let caller = self.user_caller(caller)?;
        let user = self.signed_in_user(caller).await?;
        // Guesses at the current password count like failed sign-ins of the same principal.
        let keys = crate::limiter::Keys::account_of(&user);
        let now = self.clock.now_ms();
        // A wrong current password, or one refused by the lockout, is audited as a failed
        // sign-in of the account (it counts against the same limit).
        let failed = |reason: &str| ev::SignInFailed {
            user_name: user.user_name.clone(),
            principal_id: user.id.clone(),
            reason: reason.to_owned(),
            source_ip: String::new(),
            user_agent: String::new(),
            more_refused: 0,
        };
        if let Some(minutes) = crate::limiter::attempt(&self.db, &keys, now).await? {
            self.record(EventType::SignInFailed, &user.id, &failed("locked_out"))
                .await?;
            return Err(Error::Locked(format!(
                "too many failed attempts: try again in {minutes} minutes"
            )));
        }
        if !credentials::verify(current, Some(user.password_hash.clone())).await? {
            self.record(EventType::SignInFailed, &user.id, &failed("bad_current_password"))
                .await?;
            return Err(Error::WrongPassword);
        }
        crate::limiter::succeeded(&self.db, &keys, now).await?;
        if !self.confirmed_methods(&user.id).await?.is_empty()
            && let Err(refused) = self.require_recent_mfa(caller, "changing your password")
        {
            // ChangePassword records its own refusals (the auth layer's SELF_AUDITED_METHODS):
            // this one as any refusal for want of a recent MFA is.
            let denied = ev::AccessDenied {
                actor: Some(caller.actor()),
                method: "/pim.identity.v1.AuthService/ChangePassword".into(),
                // As the answer's message names it (`MfaRule: …`), and the layer records it.
                reason: format!("MfaRule: {refused}"),
                code: "FailedPrecondition".into(),
                target: user.id.clone(),
            };
            self.record(EventType::AccessDenied, &user.id, &denied).await?;
            return Err(refused);
        }
        credentials::check_password_rules(new_password)?;
        if current == new_password {
            return Err(Error::invalid("new_password", "must differ from the current password"));
        }
        let hash = credentials::hash(new_password).await?;
        let event = ev::CredentialsReset {
            actor: Some(caller.actor()),
            user_id: user.id.clone(),
            what: "password".into(),
        };
        let txn = self.db.begin().await?;
        store::set_password(&txn, &user.id, &hash).await?;
        self.emit(&txn, EventType::PasswordChanged, &user.id, &event).await?;
        self.revoke_other_sessions(&txn, caller, "password_changed").await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (8 digits, the RFC's seed).
    #[test]
    fn totp_matches_the_rfc_6238_test_vectors() {
        let seed = b"12345678901234567890".to_vec();
        let rfc = TOTP::new_unchecked(Algorithm::SHA1, 8, 0, 30, seed, None, String::new());
        for (time, expected) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(rfc.generate(time), expected, "T = {time}");
        }
    }

    #[test]
    fn a_code_matches_its_step_and_one_either_side_only() {
        let t = totp(vec![7u8; 20], "lee").unwrap();
        let now = 1_700_000_000u64;
        let step = (now / 30) as i64;
        assert_eq!(matching_step(&t, &t.generate(now), now), Some(step));
        assert_eq!(matching_step(&t, &t.generate(now - 30), now), Some(step - 1));
        assert_eq!(matching_step(&t, &t.generate(now + 30), now), Some(step + 1));
        assert_eq!(matching_step(&t, &t.generate(now - 60), now), None);
        assert_eq!(
            matching_step(&t, "000000", now).filter(|_| t.generate(now) != "000000"),
            None
        );
        assert!(t.get_url().starts_with("otpauth://totp/PIM:lee?secret="));
    }
}
