//! Multi-factor authentication: TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step of
//! skew) through totp-rs, each code accepted once; single-use recovery codes; failed attempts
//! counted per user and locked out after a burst. A successful check returns a stepped-up
//! token (`amr` has `otp`, `mfa_at` = now) for the caller's session.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sea_orm::TransactionTrait;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP};

use pim_proto::common::v1::PrincipalKind;
use pim_proto::events::v1 as ev;
use pim_runtime::access::{permissions, require};
use pim_runtime::auth::Caller;
use pim_runtime::db::now_ms;

use crate::directory::{Directory, Session};
use crate::error::{Error, Result};
use crate::store::{self, MfaMethodRow};
use crate::tokens::TokenSubject;

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

/// Recovery codes are random (50 bits each) and single-use, so a fast hash suffices.
fn recovery_hash(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    Sha256::digest(normal.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn new_recovery_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 10];
    OsRng.fill_bytes(&mut bytes);
    let chars: String = bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

fn looks_like_totp(code: &str) -> bool {
    code.len() == DIGITS && code.chars().all(|c| c.is_ascii_digit())
}

impl Directory {
    fn user_caller<'a>(&self, caller: &'a Caller) -> Result<&'a Caller> {
        if caller.kind != PrincipalKind::User {
            return Err(Error::FailedPrecondition(
                "multi-factor authentication is for users".into(),
            ));
        }
        Ok(caller)
    }

    async fn mfa_event(&self, event_type: &str, caller: &Caller, method: &str, reason: &str) -> Result<()> {
        let event = ev::MfaEvent {
            actor: Some(caller.actor()),
            user_id: caller.principal_id.clone(),
            method: method.into(),
            reason: reason.into(),
        };
        let txn = self.db.begin().await?;
        self.emit(&txn, event_type, &caller.principal_id, &event).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// Starts TOTP enrolment: a new secret, shown once as an `otpauth://` URI.
    pub async fn enroll_totp(&self, caller: &Caller) -> Result<(String, String)> {
        let caller = self.user_caller(caller)?;
        let methods = store::mfa_methods(&self.db, &caller.principal_id).await?;
        if methods.iter().any(|m| m.confirmed) {
            return Err(Error::FailedPrecondition(
                "TOTP is enrolled already; an administrator must reset it first".into(),
            ));
        }
        let mut secret = vec![0u8; 20];
        OsRng.fill_bytes(&mut secret);
        let uri = totp(secret.clone(), &caller.name)?.get_url();
        let id = uuid::Uuid::now_v7().to_string();
        let method = MfaMethodRow {
            secret: self.sealer.seal(&secret, &id)?,
            id,
            user_id: caller.principal_id.clone(),
            kind: "totp".into(),
            confirmed: false,
            last_step: 0,
            created_at: now_ms(),
        };
        let txn = self.db.begin().await?;
        store::delete_unconfirmed_methods(&txn, &caller.principal_id).await?;
        store::insert_mfa_method(&txn, &method).await?;
        txn.commit().await?;
        Ok((method.id, uri))
    }

    /// Confirms enrolment with a first code from the authenticator.
    pub async fn confirm_totp(&self, caller: &Caller, method_id: &str, code: &str) -> Result<()> {
        let caller = self.user_caller(caller)?;
        self.check_not_locked(caller).await?;
        let methods = store::mfa_methods(&self.db, &caller.principal_id).await?;
        let method = methods
            .into_iter()
            .find(|m| m.id == method_id && !m.confirmed)
            .ok_or_else(|| Error::NotFound(format!("pending TOTP enrolment {method_id}")))?;
        let seed = self.sealer.open(&method.secret, &method.id)?;
        let step = matching_step(&totp(seed, &caller.name)?, code.trim(), (now_ms() / 1000) as u64);
        match step {
            Some(step) if store::use_step(&self.db, &method.id, step, true).await? => {
                store::clear_mfa_failures(&self.db, &caller.principal_id).await?;
                self.mfa_event("MfaEnrolled", caller, "totp", "").await
            }
            _ => Err(self.failed(caller, "totp").await),
        }
    }

    async fn check_not_locked(&self, caller: &Caller) -> Result<()> {
        if let Some((_, _, Some(until))) = store::mfa_failures(&self.db, &caller.principal_id).await?
            && until > now_ms()
        {
            return Err(Error::Locked(format!(
                "too many failed codes: multi-factor authentication is locked for {} more minutes",
                (until - now_ms()) / 60_000 + 1
            )));
        }
        Ok(())
    }

    /// Counts a failure (locking out after a burst) and returns the error to answer with.
    async fn failed(&self, caller: &Caller, method: &str) -> Error {
        let now = now_ms();
        let outcome = async {
            let (failures, window_start) = match store::mfa_failures(&self.db, &caller.principal_id).await? {
                Some((n, start, _)) if now - start < FAILURE_WINDOW_MS => (n + 1, start),
                _ => (1, now),
            };
            let locked = failures >= MAX_FAILURES;
            store::set_mfa_failures(
                &self.db,
                &caller.principal_id,
                failures,
                window_start,
                locked.then_some(now + LOCKOUT_MS),
            )
            .await?;
            self.mfa_event("MfaFailed", caller, method, "bad_code").await?;
            if locked {
                self.mfa_event("MfaLockedOut", caller, method, "too_many_failures")
                    .await?;
            }
            Ok::<bool, Error>(locked)
        }
        .await;
        match outcome {
            Ok(true) => {
                Error::Locked("too many failed codes: multi-factor authentication is locked for 15 minutes".into())
            }
            Ok(false) => Error::BadCode,
            Err(err) => err,
        }
    }

    /// Checks a TOTP or recovery code and returns a stepped-up token for the caller's session.
    pub async fn verify_mfa(&self, caller: &Caller, code: &str) -> Result<Session> {
        let caller = self.user_caller(caller)?;
        let code = code.trim();
        if code.is_empty() || code.len() > 32 {
            return Err(Error::invalid("code", "a 6-digit code or a recovery code"));
        }
        self.check_not_locked(caller).await?;
        let user = store::find_user(&self.db, &caller.principal_id)
            .await?
            .ok_or_else(|| Error::NotFound("user".into()))?;
        if !user.enabled {
            return Err(Error::BadCredentials);
        }
        let methods = store::mfa_methods(&self.db, &user.id).await?;
        let Some(method) = methods.into_iter().find(|m| m.confirmed) else {
            return Err(Error::FailedPrecondition(
                "no MFA method is enrolled: run pim mfa enroll".into(),
            ));
        };
        let (ok, how) = if looks_like_totp(code) {
            let seed = self.sealer.open(&method.secret, &method.id)?;
            let step = matching_step(&totp(seed, &user.user_name)?, code, (now_ms() / 1000) as u64);
            // A code is accepted once: its step must be later than the last one used.
            let fresh = match step {
                Some(step) => store::use_step(&self.db, &method.id, step, false).await?,
                None => false,
            };
            (fresh, "totp")
        } else {
            (
                store::use_recovery_code(&self.db, &user.id, &recovery_hash(code), now_ms()).await?,
                "recovery_code",
            )
        };
        if !ok {
            return Err(self.failed(caller, how).await);
        }
        store::clear_mfa_failures(&self.db, &user.id).await?;
        self.mfa_event("MfaVerified", caller, how, "").await?;
        let mut amr = caller.amr.clone();
        if !amr.iter().any(|m| m == "otp") {
            amr.push("otp".into());
        }
        let subject = TokenSubject {
            principal_id: user.id.clone(),
            kind: PrincipalKind::User,
            name: user.user_name.clone(),
            amr: amr.clone(),
            session_id: caller.session_id.clone(),
            mfa_at: Some(now_ms() / 1000),
        };
        let issued = self.keys.issue(&subject, self.token_ttl)?;
        Ok(Session {
            principal_id: user.id,
            issued,
            amr,
            refresh_token: String::new(),
        })
    }

    /// Removes one of the caller's own methods (an event, for alerting and audit).
    pub async fn remove_mfa_method(&self, caller: &Caller, method_id: &str) -> Result<()> {
        let caller = self.user_caller(caller)?;
        if !store::delete_method(&self.db, &caller.principal_id, method_id.trim()).await? {
            return Err(Error::NotFound(format!("MFA method {}", method_id.trim())));
        }
        self.mfa_event("MfaMethodRemoved", caller, "totp", "removed_by_user")
            .await
    }

    /// New single-use recovery codes (the old ones stop working), shown once.
    pub async fn generate_recovery_codes(&self, caller: &Caller) -> Result<Vec<String>> {
        let caller = self.user_caller(caller)?;
        let methods = store::mfa_methods(&self.db, &caller.principal_id).await?;
        if !methods.iter().any(|m| m.confirmed) {
            return Err(Error::FailedPrecondition(
                "enrol TOTP before generating recovery codes".into(),
            ));
        }
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let hashes: Vec<String> = codes.iter().map(|c| recovery_hash(c)).collect();
        let txn = self.db.begin().await?;
        store::replace_recovery_codes(&txn, &caller.principal_id, &hashes).await?;
        txn.commit().await?;
        Ok(codes)
    }

    /// A user's MFA methods (never their secrets): their own, or anyone's for directory readers.
    pub async fn list_mfa_methods(&self, caller: &Caller, user: &str) -> Result<Vec<MfaMethodRow>> {
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
        Ok(store::mfa_methods(&self.db, &found.id)
            .await?
            .into_iter()
            .filter(|m| m.confirmed)
            .collect())
    }

    /// Removes a user's MFA methods and recovery codes (credential protection applies).
    pub async fn reset_mfa(&self, caller: &Caller, user: &str) -> Result<()> {
        let found = store::find_user(&self.db, user.trim())
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {}", user.trim())))?;
        self.require_credential_admin(caller, &found).await?;
        let event = ev::MfaEvent {
            actor: Some(caller.actor()),
            user_id: found.id.clone(),
            method: "all".into(),
            reason: "reset".into(),
        };
        let txn = self.db.begin().await?;
        store::reset_mfa(&txn, &found.id).await?;
        self.emit(&txn, "MfaReset", &found.id, &event).await?;
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

    #[test]
    fn recovery_codes_are_hashed_ignoring_case_and_dashes() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 11);
        assert_eq!(
            recovery_hash(&code),
            recovery_hash(&code.to_lowercase().replace('-', ""))
        );
        assert_ne!(recovery_hash(&code), recovery_hash(&new_recovery_code()));
    }
}
