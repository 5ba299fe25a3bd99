//! Passkeys (WebAuthn, FIDO2) as an MFA method beside TOTP, through webauthn-rs. The portal is
//! the relying party (`PIM_PUBLIC_URL`: its origin, and its host as the RP ID). Each ceremony
//! is a Begin, whose state identity keeps for five minutes and hands out once, and a Finish
//! with the browser's answer. webauthn-rs checks the challenge, origin, RP ID, signature, user
//! verification and the signature counter (a counter that goes back is a cloned key: refused).
//!
//! Registering a passkey is adding a method (a recent MFA, or a first method's enrolment
//! window), as with TOTP. A verified assertion steps the session up with `amr` `hwk`: a
//! phishing-resistant MFA, which a role's policy may require.

use std::sync::Arc;

use sea_orm::TransactionTrait;
use webauthn_rs::prelude::{
    CredentialID, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};

use pim_runtime::auth::Caller;
use pim_runtime::db::now_ms;

use crate::directory::{ClientInfo, Directory, Session};
use crate::error::{Error, Result};
use crate::factor::Factor;
use crate::store::{self, MfaMethodRow};
use pim_runtime::events::EventType;

const CEREMONY_MS: i64 = 5 * 60 * 1000;
const REGISTRATION: &str = "registration";
const AUTHENTICATION: &str = "authentication";
const NAME_MAX: usize = 64;

/// The relying party for `public_url` (the portal's address): its host is the RP ID.
pub fn relying_party(public_url: &str) -> anyhow::Result<Arc<Webauthn>> {
    let origin = Url::parse(public_url).map_err(|e| anyhow::anyhow!("PIM_PUBLIC_URL {public_url:?}: {e}"))?;
    let rp_id = origin
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("PIM_PUBLIC_URL {public_url:?} has no host"))?
        .to_owned();
    let webauthn = WebauthnBuilder::new(&rp_id, &origin)
        .and_then(|b| b.rp_name("PIM").build())
        .map_err(|e| anyhow::anyhow!("passkeys for PIM_PUBLIC_URL {public_url:?}: {e:?}"))?;
    Ok(Arc::new(webauthn))
}

fn passkey_of(method: &MfaMethodRow) -> Result<Passkey> {
    serde_json::from_slice(&method.secret)
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored passkey {} does not decode: {e}", method.id)))
}

/// WebAuthn's user handle: the user's id when it is a UUID (it always is here), otherwise
/// derived from it.
fn user_handle(user_id: &str) -> uuid::Uuid {
    use sha2::Digest;
    uuid::Uuid::parse_str(user_id).unwrap_or_else(|_| {
        let digest = sha2::Sha256::digest(user_id.as_bytes());
        uuid::Uuid::from_slice(&digest[..16]).unwrap_or_default()
    })
}

impl Directory {
    fn relying(&self) -> Result<&Webauthn> {
        self.webauthn.as_deref().ok_or_else(|| {
            Error::FailedPrecondition(
                "passkeys need the portal's address: set PIM_PUBLIC_URL on identity (its host is the passkeys' relying party)"
                    .into(),
            )
        })
    }

    async fn passkeys(&self, user_id: &str) -> Result<Vec<(MfaMethodRow, Passkey)>> {
        self.confirmed_methods(user_id)
            .await?
            .into_iter()
            .filter(|m| m.kind == Factor::Passkey)
            .map(|m| passkey_of(&m).map(|p| (m, p)))
            .collect()
    }

    async fn keep_ceremony(&self, user_id: &str, kind: &str, state: String) -> Result<String> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = self.clock.now_ms();
        store::insert_ceremony(&self.db, &id, user_id, kind, &state, now, now + CEREMONY_MS).await?;
        Ok(id)
    }

    async fn take_ceremony(&self, id: &str, user_id: &str, kind: &str) -> Result<String> {
        store::take_ceremony(&self.db, id.trim(), user_id, kind, self.clock.now_ms())
            .await?
            .ok_or_else(|| {
                Error::FailedPrecondition("this passkey ceremony is unknown, used or expired: start again".into())
            })
    }

    /// The options for the browser's `navigator.credentials.create`: a new passkey for the
    /// caller, none of theirs registered twice.
    pub async fn begin_passkey_registration(&self, caller: &Caller) -> Result<(String, String)> {
        let caller = self.user_caller(caller)?;
        let webauthn = self.relying()?;
        self.check_not_locked(caller).await?;
        self.may_add_method(caller).await?;
        let user = self.signed_in_user(caller).await?;
        let exclude: Vec<CredentialID> = self
            .passkeys(&user.id)
            .await?
            .iter()
            .map(|(_, p)| p.cred_id().clone())
            .collect();
        let (options, state) = webauthn
            .start_passkey_registration(
                user_handle(&user.id),
                &user.user_name,
                &user.display_name,
                Some(exclude),
            )
            .map_err(|e| Error::Internal(anyhow::anyhow!("starting a passkey registration: {e:?}")))?;
        let state = serde_json::to_string(&state).map_err(|e| Error::Internal(e.into()))?;
        let id = self.keep_ceremony(&user.id, REGISTRATION, state).await?;
        Ok((
            id,
            serde_json::to_string(&options).map_err(|e| Error::Internal(e.into()))?,
        ))
    }

    /// Registers the passkey the browser made: a method of the caller's from now on.
    pub async fn finish_passkey_registration(
        &self,
        caller: &Caller,
        ceremony_id: &str,
        credential_json: &str,
        name: &str,
    ) -> Result<MfaMethodRow> {
        let caller = self.user_caller(caller)?;
        let webauthn = self.relying()?;
        // Shown to the user and to directory readers: one line, nothing unseen in it.
        let name = pim_runtime::text::one_line(name, NAME_MAX).map_err(|why| Error::invalid("name", why))?;
        let credential: RegisterPublicKeyCredential = serde_json::from_str(credential_json)
            .map_err(|e| Error::invalid("credential_json", format!("not a WebAuthn credential: {e}")))?;
        let state: PasskeyRegistration = serde_json::from_str(
            &self
                .take_ceremony(ceremony_id, &caller.principal_id, REGISTRATION)
                .await?,
        )
        .map_err(|e| Error::Internal(e.into()))?;
        let passkey = webauthn
            .finish_passkey_registration(&credential, &state)
            .map_err(|e| Error::invalid("credential_json", format!("the passkey did not verify: {e}")))?;
        let user = self.signed_in_user(caller).await?;
        let method = MfaMethodRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user.id.clone(),
            kind: Factor::Passkey,
            secret: serde_json::to_vec(&passkey).map_err(|e| Error::Internal(e.into()))?,
            confirmed: true,
            last_step: 0,
            created_at: now_ms(),
            name: if name.is_empty() {
                "passkey".into()
            } else {
                name.to_owned()
            },
        };
        let (txn, first) = self.begin_adding_method(caller, &user.id).await?;
        store::insert_mfa_method(&txn, &method).await?;
        if first {
            self.revoke_other_sessions(&txn, caller, "mfa_enrolled").await?;
        }
        let event = Self::mfa_fact(caller, &user.id, Factor::Passkey.as_str(), &method.id, "");
        self.emit(&txn, EventType::MfaEnrolled, &user.id, &event).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(method)
    }

    /// The options for the browser's `navigator.credentials.get`, for the caller's passkeys.
    pub async fn begin_passkey_verification(&self, caller: &Caller) -> Result<(String, String)> {
        let caller = self.user_caller(caller)?;
        let webauthn = self.relying()?;
        self.check_not_locked(caller).await?;
        let passkeys: Vec<Passkey> = self
            .passkeys(&caller.principal_id)
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        if passkeys.is_empty() {
            return Err(Error::FailedPrecondition(
                "you have no passkey: verify with a code, or add a passkey first".into(),
            ));
        }
        let (options, state) = webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(|e| Error::Internal(anyhow::anyhow!("starting a passkey assertion: {e:?}")))?;
        let state = serde_json::to_string(&state).map_err(|e| Error::Internal(e.into()))?;
        let id = self.keep_ceremony(&caller.principal_id, AUTHENTICATION, state).await?;
        Ok((
            id,
            serde_json::to_string(&options).map_err(|e| Error::Internal(e.into()))?,
        ))
    }

    /// A refused assertion: counted and audited like a wrong code, and said as what it is.
    async fn passkey_failed(&self, caller: &Caller, attempt: i32) -> Error {
        match self.failed(caller, Factor::Passkey, attempt).await {
            Error::BadCode => Error::BadPasskey,
            other => other,
        }
    }

    /// Checks the browser's assertion; a stepped-up token (`amr` `hwk`) for the caller's
    /// session. A failed assertion counts toward the MFA lockout like a wrong code.
    pub async fn verify_passkey(
        &self,
        caller: &Caller,
        ceremony_id: &str,
        credential_json: &str,
        client: &ClientInfo,
    ) -> Result<Session> {
        let caller = self.user_caller(caller)?;
        let webauthn = self.relying()?;
        let credential: PublicKeyCredential = serde_json::from_str(credential_json)
            .map_err(|e| Error::invalid("credential_json", format!("not a WebAuthn assertion: {e}")))?;
        let attempt = self.take_attempt(caller).await?;
        let state: PasskeyAuthentication = serde_json::from_str(
            &self
                .take_ceremony(ceremony_id, &caller.principal_id, AUTHENTICATION)
                .await?,
        )
        .map_err(|e| Error::Internal(e.into()))?;
        let result = match webauthn.finish_passkey_authentication(&credential, &state) {
            Ok(result) => result,
            Err(err) => {
                tracing::warn!(error = ?err, "a passkey assertion did not verify");
                return Err(self.passkey_failed(caller, attempt).await);
            }
        };
        let user = self.signed_in_user(caller).await?;
        let Some((method, mut passkey)) = self
            .passkeys(&user.id)
            .await?
            .into_iter()
            .find(|(_, p)| p.cred_id() == result.cred_id())
        else {
            // Removed between Begin and Finish.
            return Err(self.passkey_failed(caller, attempt).await);
        };
        let txn = self.db.begin().await?;
        if passkey.update_credential(&result) == Some(true) {
            let stored = serde_json::to_vec(&passkey).map_err(|e| Error::Internal(e.into()))?;
            // Compare-and-set: two assertions racing to move the counter, one wins.
            if !store::update_passkey(&txn, &method.id, &method.secret, &stored).await? {
                txn.rollback().await?;
                return Err(self.passkey_failed(caller, attempt).await);
            }
        }
        store::clear_mfa_failures(&txn, &user.id).await?;
        let event = Self::mfa_fact(caller, &user.id, Factor::Passkey.as_str(), &method.id, "");
        self.stepped_up(txn, caller, &user, EventType::MfaVerified, &event, None, client)
            .await
    }
}
