//! Signing keys and access tokens: Ed25519 (JWT alg EdDSA) with a `kid` per key, so keys
//! can rotate while tokens signed by the previous key keep verifying until they expire.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use argon2::password_hash::rand_core::OsRng;
use base64::Engine;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use pim_proto::common::v1::PrincipalKind;
use pim_proto::identity::v1 as pb;
use pim_runtime::auth::{
    AUDIENCE, Claims, ISSUER, KeySource, PENDING_AUDIENCE, Pending, RevocationList, kind_claim, revocation_tag,
};
use pim_runtime::db::{Db, now_ms, to_timestamp};
use pim_runtime::sealing::Sealer;
use sea_orm::TransactionTrait;

use crate::store::{self, SigningKeyRow};

/// Identity's signing keys, loaded from its database and cached. Private keys are sealed at
/// rest with `PIM_SECRETS_KEY` (as TOTP seeds are): whoever reads the database, a backup or
/// a replica, cannot sign tokens with them. In memory they are open.
#[derive(Clone)]
pub struct Keystore {
    db: Db,
    sealer: Sealer,
    keys: Arc<RwLock<Vec<SigningKeyRow>>>,
}

/// What a private key is sealed to: its own row.
fn sealed_as(kid: &str) -> String {
    format!("signing_keys:{kid}")
}

/// Who a token is for, and how they authenticated.
#[derive(Clone, Debug)]
pub struct TokenSubject {
    pub principal_id: String,
    pub kind: PrincipalKind,
    pub name: String,
    /// Authentication methods: `pwd`, `otp`, `secret`.
    pub amr: Vec<String>,
    pub session_id: String,
    /// When a second factor last succeeded (seconds since the epoch).
    pub mfa_at: Option<i64>,
    /// Set for a sign-in that still lacks MFA: the token can only complete it.
    pub pending: Option<Pending>,
}

/// A token just issued.
pub struct Issued {
    pub token: String,
    pub expires_at: i64,
}

impl Keystore {
    /// Loads the keys, creating the first one when there is none. A key that does not open
    /// with `sealer` stops the start: PIM_SECRETS_KEY is not the one the keys were sealed with.
    pub async fn open(db: Db, sealer: Sealer) -> anyhow::Result<Self> {
        let store = Self {
            db,
            sealer,
            keys: Arc::default(),
        };
        store.reload().await?;
        if store.active().is_none() {
            store.create_key().await?;
        }
        Ok(store)
    }

    /// Makes a new active key; the old one keeps verifying for `grace` (the longest a token it
    /// signed can live), then drops out of GetSigningKeys. Keys retired a day ago are deleted.
    pub async fn rotate(&self, grace: Duration) -> anyhow::Result<String> {
        let now = now_ms();
        let row = self.new_key()?;
        let txn = self.db.begin().await?;
        store::retire_active_keys(&txn, now + grace.as_millis() as i64).await?;
        store::insert_signing_key(&txn, &row).await?;
        store::delete_retired_keys(&txn, now - 24 * 3600 * 1000).await?;
        txn.commit().await.context("committing a key rotation")?;
        self.reload().await?;
        tracing::info!(kid = %row.kid, "signing key rotated");
        Ok(row.kid)
    }

    /// Reloads the keys (another replica may have rotated) and rotates when the active key is
    /// older than `every`.
    pub async fn maintain(&self, every: Duration, grace: Duration) -> anyhow::Result<()> {
        self.reload().await?;
        match self.active() {
            Some(active) if now_ms() - active.created_at < every.as_millis() as i64 => Ok(()),
            _ => self.rotate(grace).await.map(drop),
        }
    }

    async fn reload(&self) -> anyhow::Result<()> {
        let mut keys = store::signing_keys(&self.db).await.context("loading signing keys")?;
        for key in &mut keys {
            key.private_key = self.opened(key).await?;
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// A stored key's private half, open. One stored before keys were sealed (a PKCS#8 key
    /// as it is) is sealed now.
    async fn opened(&self, key: &SigningKeyRow) -> anyhow::Result<Vec<u8>> {
        let row = sealed_as(&key.kid);
        if let Ok(opened) = self.sealer.open_telling(&key.private_key, &row) {
            // Sealed under a key PIM_SECRETS_KEY replaced: sealed again under it.
            if opened.stale {
                let again = self.sealer.seal(&opened.plaintext, &row)?;
                store::seal_signing_key(&self.db, &key.kid, &key.private_key, &again)
                    .await
                    .context("sealing a signing key again under the current PIM_SECRETS_KEY")?;
                tracing::info!(kid = %key.kid, "a signing key sealed under an earlier PIM_SECRETS_KEY is sealed under the current one");
            }
            return Ok(opened.plaintext);
        }
        if SigningKey::from_pkcs8_der(&key.private_key).is_err() {
            anyhow::bail!(
                "signing key {} does not open: neither PIM_SECRETS_KEY nor any key of PIM_SECRETS_KEY_PREVIOUS is the key identity's secrets were sealed with",
                key.kid
            );
        }
        let sealed = self.sealer.seal(&key.private_key, &row)?;
        store::seal_signing_key(&self.db, &key.kid, &key.private_key, &sealed)
            .await
            .context("sealing a signing key stored open")?;
        tracing::info!(kid = %key.kid, "a signing key stored open is sealed now");
        Ok(key.private_key.clone())
    }

    fn active(&self) -> Option<SigningKeyRow> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|k| k.retire_after.is_none())
            .cloned()
    }

    async fn create_key(&self) -> anyhow::Result<()> {
        let row = self.new_key()?;
        store::insert_signing_key(&self.db, &row)
            .await
            .context("storing a signing key")?;
        self.reload().await
    }

    /// A new key, its private half sealed as it is stored.
    fn new_key(&self) -> anyhow::Result<SigningKeyRow> {
        let key = SigningKey::generate(&mut OsRng);
        let der = key
            .to_pkcs8_der()
            .map_err(|e| anyhow::anyhow!("encoding a signing key: {e}"))?;
        let kid = uuid::Uuid::now_v7().simple().to_string();
        let row = SigningKeyRow {
            private_key: self.sealer.seal(der.as_bytes(), &sealed_as(&kid))?,
            kid,
            public_key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
            created_at: now_ms(),
            retire_after: None,
        };
        Ok(row)
    }

    /// Signs an access token for `subject`, valid for `ttl`.
    pub fn issue(&self, subject: &TokenSubject, ttl: Duration) -> anyhow::Result<Issued> {
        let key = self.active().context("no active signing key")?;
        let now = now_ms() / 1000;
        let exp = now + ttl.as_secs() as i64;
        let claims = Claims {
            sub: subject.principal_id.clone(),
            kind: kind_claim(subject.kind).to_owned(),
            name: subject.name.clone(),
            amr: subject.amr.clone(),
            mfa_at: subject.mfa_at,
            sid: subject.session_id.clone(),
            iat: now,
            exp,
            iss: ISSUER.to_owned(),
            aud: if subject.pending.is_some() {
                PENDING_AUDIENCE
            } else {
                AUDIENCE
            }
            .to_owned(),
            pending: subject.pending.map(|p| p.claim().to_owned()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&key.private_key))
            .context("signing an access token")?;
        Ok(Issued {
            token,
            expires_at: exp * 1000,
        })
    }

    /// Public halves of every key still verifying tokens.
    pub fn public_keys(&self) -> Vec<pb::SigningKey> {
        let now = now_ms();
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|k| k.retire_after.is_none_or(|t| t > now))
            .map(|k| pb::SigningKey {
                kid: k.kid.clone(),
                alg: "EdDSA".to_owned(),
                public_key: k.public_key.clone(),
                created_at: Some(to_timestamp(k.created_at)),
                retire_after: k.retire_after.map(to_timestamp),
            })
            .collect()
    }
}

/// In-process verification keys, for hosts that run identity themselves.
#[async_trait::async_trait]
impl KeySource for Keystore {
    async fn signing_keys(&self) -> anyhow::Result<Vec<pb::SigningKey>> {
        // Another replica may have added a key since we loaded them.
        self.reload().await?;
        Ok(self.public_keys())
    }

    async fn revocations(&self, since_ms: i64) -> anyhow::Result<RevocationList> {
        let (sessions, principals) = store::revocations_since(&self.db, since_ms)
            .await
            .context("loading revocations")?;
        Ok(RevocationList {
            session_tags: sessions.iter().map(|id| revocation_tag(id)).collect(),
            principal_tags: principals
                .into_iter()
                .map(|(id, at)| (revocation_tag(&id), at))
                .collect(),
        })
    }
}
