//! Who is calling: access tokens (JWT, EdDSA, `kid` for rotation) verified with identity's
//! public keys, and the tower layer that puts the verified [`Caller`] in request extensions.
//! A missing, expired or forged token is UNAUTHENTICATED before any handler runs.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::codegen::http;
use tonic::{Request, Status};

use crate::events::EventType;
use crate::throttle::{Refusal, Throttle, Turn};
use pim_proto::common::v1::PrincipalKind;
use pim_proto::identity::v1::SigningKey;

/// Issuer and audience of every PIM access token.
pub const ISSUER: &str = "pim.identity";
pub const AUDIENCE: &str = "pim";
/// Audience of a sign-in that is not complete (MFA to verify or to enrol): a verifier that
/// knows nothing of pending sign-ins refuses such a token outright.
pub const PENDING_AUDIENCE: &str = "pim.mfa-pending";

/// What a sign-in still lacks before its token may do anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// The user has a method: verify a code (`MfaService.Verify`).
    Mfa,
    /// The directory requires MFA and the user has none: enrol one.
    Enrollment,
}

impl Pending {
    pub fn claim(self) -> &'static str {
        match self {
            Pending::Mfa => "mfa",
            Pending::Enrollment => "enrollment",
        }
    }

    fn from_claim(claim: &str) -> Option<Self> {
        match claim {
            "mfa" => Some(Pending::Mfa),
            "enrollment" => Some(Pending::Enrollment),
            _ => None,
        }
    }

    /// The RPCs a token of a pending sign-in may call: completing it, or signing out.
    pub fn allows(self, path: &str) -> bool {
        let completing: &[&str] = match self {
            Pending::Mfa => &[
                "/pim.identity.v1.MfaService/Verify",
                "/pim.identity.v1.MfaService/BeginPasskeyVerification",
                "/pim.identity.v1.MfaService/VerifyPasskey",
            ],
            Pending::Enrollment => &[
                "/pim.identity.v1.MfaService/EnrollTotp",
                "/pim.identity.v1.MfaService/ConfirmTotp",
            ],
        };
        path == SIGN_OUT || completing.contains(&path)
    }

    /// Why a pending sign-in's token was refused.
    pub fn refusal(self) -> &'static str {
        match self {
            Pending::Mfa => {
                "sign-in is not complete: verify a code from your authenticator first (MfaService.Verify; pim login asks for it)"
            }
            Pending::Enrollment => {
                "sign-in is not complete: this directory requires MFA, enrol an authenticator first (pim mfa enroll; once a new account's enrolment window has closed, with --pass and an enrolment pass from an administrator)"
            }
        }
    }
}

/// The claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// `user` or `service_principal`.
    pub kind: String,
    pub name: String,
    pub amr: Vec<String>,
    /// When MFA last succeeded (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_at: Option<i64>,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// Set (with audience [`PENDING_AUDIENCE`]) while the sign-in lacks MFA: `mfa` or `enrollment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// The verified caller of a request.
#[derive(Clone)]
pub struct Caller {
    pub principal_id: String,
    pub kind: PrincipalKind,
    pub name: String,
    pub amr: Vec<String>,
    pub mfa_at: Option<i64>,
    pub session_id: String,
    /// When the token was issued (seconds since the epoch).
    pub issued_at: i64,
    /// Set while the sign-in behind the token is not complete.
    pub pending: Option<Pending>,
    /// The bearer token itself, forwarded when this service asks another on the caller's
    /// behalf. Never printed.
    token: Arc<str>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("principal_id", &self.principal_id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// A signed-in user as a unit test of this crate needs one.
    #[cfg(test)]
    pub(crate) fn for_test(principal_id: &str) -> Self {
        Self {
            principal_id: principal_id.into(),
            kind: PrincipalKind::User,
            name: String::new(),
            amr: vec![],
            mfa_at: None,
            session_id: String::new(),
            issued_at: 0,
            pending: None,
            token: Arc::from("t"),
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn actor(&self) -> pim_proto::common::v1::Actor {
        pim_proto::common::v1::Actor {
            principal_id: self.principal_id.clone(),
            kind: self.kind as i32,
            display_name: self.name.clone(),
            session_id: self.session_id.clone(),
        }
    }
}

/// The principal id of what the suite does by itself (a timer, an overlap ending).
pub const SYSTEM_PRINCIPAL: &str = "system";

/// The suite itself as the actor of what a timer does; `name` says which part of it.
pub fn system_actor(name: &str) -> pim_proto::common::v1::Actor {
    pim_proto::common::v1::Actor {
        principal_id: SYSTEM_PRINCIPAL.into(),
        kind: PrincipalKind::Unspecified as i32,
        display_name: name.into(),
        session_id: String::new(),
    }
}

pub fn kind_claim(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::ServicePrincipal => "service_principal",
        PrincipalKind::Group => "group",
        _ => "user",
    }
}

/// The principal kind a `kind` claim (or stored kind) names.
pub fn kind_from_claim(claim: &str) -> PrincipalKind {
    match claim {
        "service_principal" => PrincipalKind::ServicePrincipal,
        "group" => PrincipalKind::Group,
        _ => PrincipalKind::User,
    }
}

/// How far ahead of the clock an MFA time may be (clock skew between hosts).
const MFA_SKEW_MS: i64 = 60_000;

/// Whether a token's `amr` names a second factor: a code (`otp`), a passkey's proof of
/// possession (`hwk`, RFC 8176), or `mfa` as another issuer may say it.
pub fn has_mfa(amr: &[String]) -> bool {
    amr.iter().any(|m| matches!(m.as_str(), "otp" | "hwk" | "mfa"))
}

/// Whether a token's `amr` names a phishing-resistant factor: a passkey (`hwk`).
pub fn has_phishing_resistant_mfa(amr: &[String]) -> bool {
    amr.iter().any(|m| m == "hwk")
}

/// Whether an MFA counts as recent: a second factor (`has_otp`) verified at `mfa_at_ms`, no
/// longer than `window_ms` before `now_ms` and not more than a minute's skew after it. The one
/// rule behind activation's `MfaRule` and identity's step-up for managing credentials.
pub fn mfa_is_fresh(has_otp: bool, mfa_at_ms: Option<i64>, now_ms: i64, window_ms: i64) -> bool {
    has_otp && mfa_at_ms.is_some_and(|at| now_ms - at <= window_ms && at <= now_ms + MFA_SKEW_MS)
}

/// The caller a request was authenticated as (the layer puts it in the request's extensions
/// as an `Arc<Caller>`, shared with its memory of verified tokens).
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Arc<Caller>>()
        .map(Arc::as_ref)
        .ok_or_else(|| Status::unauthenticated("sign in first: no access token"))
}

/// Sessions and principals whose unexpired tokens are refused, as identity publishes them:
/// by [`revocation_tag`] of their ids, never the ids themselves.
#[derive(Clone, Debug, Default)]
pub struct RevocationList {
    pub session_tags: Vec<String>,
    /// (principal tag, tokens issued up to this instant in ms are refused)
    pub principal_tags: Vec<(String, i64)>,
}

/// The tag a revoked session or principal id is published under (SHA-256, hex): a verifier
/// can match a token against it, a reader of the list learns no id.
pub fn revocation_tag(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"pim.revocation\0")
        .chain_update(id.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where verification keys and revocations come from: identity in-process, or its
/// `GetSigningKeys` and `ListRevocations`.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    async fn signing_keys(&self) -> anyhow::Result<Vec<SigningKey>>;
    /// Revocations made after `since_ms` (every one that can still matter).
    async fn revocations(&self, since_ms: i64) -> anyhow::Result<RevocationList>;
}

/// Asks a remote identity service for its keys.
pub struct RemoteKeys {
    client: pim_proto::identity::v1::auth_service_client::AuthServiceClient<tonic::transport::Channel>,
}

impl RemoteKeys {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            client: pim_proto::identity::v1::auth_service_client::AuthServiceClient::new(channel),
        }
    }
}

#[async_trait::async_trait]
impl KeySource for RemoteKeys {
    async fn signing_keys(&self) -> anyhow::Result<Vec<SigningKey>> {
        let response = self
            .client
            .clone()
            .get_signing_keys(pim_proto::identity::v1::GetSigningKeysRequest {})
            .await?;
        Ok(response.into_inner().keys)
    }

    async fn revocations(&self, since_ms: i64) -> anyhow::Result<RevocationList> {
        let response = self
            .client
            .clone()
            .list_revocations(pim_proto::identity::v1::ListRevocationsRequest {
                since: Some(crate::db::to_timestamp(since_ms)),
            })
            .await?
            .into_inner();
        Ok(RevocationList {
            session_tags: response.session_tags,
            principal_tags: response
                .principals
                .into_iter()
                .map(|p| {
                    let at = p.revoked_at.as_ref().map(crate::db::from_timestamp).unwrap_or(i64::MAX);
                    (p.principal_tag, at)
                })
                .collect(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no access token: send `authorization: Bearer <token>`")]
    Missing,
    #[error("access token expired: sign in again")]
    Expired,
    #[error("access token is not valid")]
    Invalid,
    #[error("cannot fetch signing keys")]
    KeysUnavailable,
    /// The token verified, but its session ended (signed out, or its user disabled): the
    /// caller it named, for the record.
    #[error("session ended: sign in again")]
    Revoked(Arc<Caller>),
    #[error("cannot tell yet whether the session was revoked: retry in a moment")]
    RevocationsUnknown,
}

impl From<TokenError> for Status {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::KeysUnavailable | TokenError::RevocationsUnknown => Status::unavailable(err.to_string()),
            _ => Status::unauthenticated(err.to_string()),
        }
    }
}

/// Sessions and principals whose tokens must stop verifying before they expire: signed out,
/// or a user disabled. Fed from identity's `SessionRevoked` events.
#[derive(Default)]
pub struct Revocations {
    /// session id → until when to remember it (ms)
    sessions: RwLock<HashMap<String, i64>>,
    /// principal id → tokens issued up to this instant (ms) are refused
    principals: RwLock<HashMap<String, i64>>,
    /// Loaded from identity's list (at start, then every few seconds), by tag: session tag →
    /// until when to remember it, and principal tag → instant.
    loaded_sessions: RwLock<HashMap<String, i64>>,
    loaded_principals: RwLock<HashMap<String, i64>>,
}

/// Longest a revoked session is remembered: no access token lives longer.
pub const REMEMBER_MS: i64 = 24 * 3600 * 1000;

impl Revocations {
    pub fn revoke_session(&self, session_id: &str) {
        let now = crate::db::now_ms();
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, until| *until > now);
        sessions.insert(session_id.to_owned(), now + REMEMBER_MS);
    }

    /// Refuses the principal's tokens issued up to `at_ms`; an earlier revocation told late (a
    /// stream read after the event was applied here) never lowers the mark.
    pub fn revoke_principal(&self, principal_id: &str, at_ms: i64) {
        let mut principals = self.principals.write().unwrap_or_else(|e| e.into_inner());
        let at = principals.get(principal_id).map_or(at_ms, |known| (*known).max(at_ms));
        principals.insert(principal_id.to_owned(), at);
    }

    /// Takes in the revocations identity keeps (at start, before serving, then every few
    /// seconds); forgets those no token can outlive any more.
    pub fn load(&self, list: RevocationList) {
        let now = crate::db::now_ms();
        let mut sessions = self.loaded_sessions.write().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, until| *until > now);
        for tag in list.session_tags {
            sessions.entry(tag).or_insert(now + REMEMBER_MS);
        }
        drop(sessions);
        let mut principals = self.loaded_principals.write().unwrap_or_else(|e| e.into_inner());
        principals.retain(|_, at| *at > now - REMEMBER_MS);
        for (tag, at) in list.principal_tags {
            let at = principals.get(&tag).map_or(at, |known| (*known).max(at));
            principals.insert(tag, at);
        }
    }

    /// Whether the list loaded at start revokes the caller's token (tags are computed only
    /// when something was loaded).
    fn loaded_revokes(&self, caller: &Caller) -> bool {
        let sessions = self.loaded_sessions.read().unwrap_or_else(|e| e.into_inner());
        if !sessions.is_empty() && sessions.contains_key(&revocation_tag(&caller.session_id)) {
            return true;
        }
        let principals = self.loaded_principals.read().unwrap_or_else(|e| e.into_inner());
        !principals.is_empty()
            && principals
                .get(&revocation_tag(&caller.principal_id))
                .is_some_and(|at| caller.issued_at * 1000 <= *at)
    }

    pub fn is_revoked(&self, caller: &Caller) -> bool {
        if self.loaded_revokes(caller) {
            return true;
        }
        if self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&caller.session_id)
        {
            return true;
        }
        self.principals
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&caller.principal_id)
            .is_some_and(|at| caller.issued_at * 1000 <= *at)
    }

    /// Applies an identity event (`SessionRevoked`); others are ignored.
    pub fn apply(&self, envelope: &crate::events::Envelope) {
        if crate::events::event_type(envelope) != Some(EventType::SessionRevoked) {
            return;
        }
        match crate::events::decode::<pim_proto::events::v1::SessionRevoked>(envelope) {
            Ok(e) if e.session_id.is_empty() => {
                let at = e
                    .issued_up_to
                    .as_ref()
                    .or(envelope.time.as_ref())
                    .map(crate::db::from_timestamp)
                    .unwrap_or_else(crate::db::now_ms);
                self.revoke_principal(&e.principal_id, at);
            }
            Ok(e) => self.revoke_session(&e.session_id),
            Err(err) => tracing::warn!(error = %err, "unreadable SessionRevoked event"),
        }
    }
}

/// Verifies tokens against cached keys; an unknown `kid` refreshes the cache (at most once a
/// second). A token that verified is remembered until it expires, so a client that calls
/// often pays for the signature check once, not on every call.
pub struct TokenVerifier {
    source: Arc<dyn KeySource>,
    /// kid → (key, when it stops verifying, ms)
    keys: RwLock<HashMap<String, (DecodingKey, Option<i64>)>>,
    refreshed: Mutex<Option<Instant>>,
    verified: RwLock<Verified>,
    revocations: Arc<Revocations>,
    /// Whether the revocations identity keeps are loaded: until then no token is accepted
    /// (a restart must not forget a sign-out or a disabled user).
    revocations_known: std::sync::atomic::AtomicBool,
}

/// Verified tokens: token → (caller, expiry in seconds since the epoch). Each call gets the
/// caller shared, not copied.
type Verified = HashMap<Arc<str>, (Arc<Caller>, i64)>;

/// Verified tokens kept at most; past that the memory is cleared and refilled.
const MAX_VERIFIED: usize = 100_000;

impl TokenVerifier {
    pub fn new(source: Arc<dyn KeySource>) -> Self {
        Self {
            source,
            keys: RwLock::default(),
            refreshed: Mutex::new(None),
            verified: RwLock::default(),
            revocations: Arc::default(),
            revocations_known: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Loads the revocations that can still matter (made within the longest token lifetime);
    /// tokens are accepted only once this has succeeded.
    pub async fn load_revocations(&self) -> anyhow::Result<()> {
        let list = self.source.revocations(crate::db::now_ms() - REMEMBER_MS).await?;
        self.revocations.load(list);
        self.revocations_known.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Takes in the revocations identity made since `since_ms`. A process that reads
    /// identity's stream is told of them by it too; asked every few seconds, identity tells
    /// them while Redis is down.
    pub async fn refresh_revocations(&self, since_ms: i64) -> anyhow::Result<()> {
        self.revocations.load(self.source.revocations(since_ms).await?);
        Ok(())
    }

    /// Keeps trying [`Self::load_revocations`] until it succeeds (identity may be starting).
    pub async fn load_revocations_until_known(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut delay = Duration::from_millis(200);
        while let Err(err) = self.load_revocations().await {
            tracing::warn!(error = %format!("{err:#}"), "loading revocations failed; refusing tokens until it succeeds");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // A host that stops before identity answered does not wait for it.
                _ = stop.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// The revocations this verifier honours (the host feeds them from identity's stream).
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    /// The key for `kid`, unless it has retired.
    fn key(&self, kid: &str) -> Option<DecodingKey> {
        let now = crate::db::now_ms();
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .filter(|(_, retire_after)| retire_after.is_none_or(|t| t > now))
            .map(|(key, _)| key.clone())
    }

    /// Fetches the keys again, at most once a second: a caller with an unknown `kid` waits
    /// for the next slot rather than being refused (a key rotated a moment ago is found).
    async fn refresh(&self, kid: &str) -> Result<(), TokenError> {
        let mut refreshed = self.refreshed.lock().await;
        // Another caller waiting for the same new key may have fetched it already.
        if self.key(kid).is_some() {
            return Ok(());
        }
        if let Some(at) = *refreshed {
            let wait = Duration::from_secs(1).saturating_sub(at.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let keys = self.source.signing_keys().await.map_err(|err| {
            tracing::warn!(error = %format!("{err:#}"), "fetching signing keys failed");
            TokenError::KeysUnavailable
        })?;
        let mut map = HashMap::new();
        for key in keys.into_iter().filter(|k| k.alg == "EdDSA") {
            match DecodingKey::from_ed_components(&key.public_key) {
                Ok(decoding) => {
                    map.insert(
                        key.kid,
                        (decoding, key.retire_after.as_ref().map(crate::db::from_timestamp)),
                    );
                }
                Err(err) => tracing::warn!(kid = %key.kid, error = %err, "ignoring a malformed signing key"),
            }
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = map;
        *refreshed = Some(Instant::now());
        Ok(())
    }

    /// Verifies `token` and returns the caller it names.
    pub async fn verify(&self, token: &str) -> Result<Arc<Caller>, TokenError> {
        if !self.revocations_known.load(std::sync::atomic::Ordering::Acquire) {
            return Err(TokenError::RevocationsUnknown);
        }
        let now = crate::db::now_ms() / 1000;
        let cached = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        let (caller, exp, remembered) = match cached {
            Some((caller, exp)) if exp > now => (caller, exp, true),
            _ => {
                let (caller, exp) = self.verify_signature(token).await?;
                (Arc::new(caller), exp, false)
            }
        };
        if self.revocations.is_revoked(&caller) {
            return Err(TokenError::Revoked(caller));
        }
        if remembered {
            return Ok(caller);
        }
        let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.retain(|_, (_, exp)| *exp > now);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(caller.token.clone(), (caller.clone(), exp));
        Ok(caller)
    }

    async fn verify_signature(&self, token: &str) -> Result<(Caller, i64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refresh(&kid).await?;
                self.key(&kid).ok_or(TokenError::Invalid)?
            }
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE, PENDING_AUDIENCE]);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        let claims = data.claims;
        // A pending sign-in's token names what it lacks under its own audience; any other
        // mix is not a token identity issued.
        let pending = match (claims.aud.as_str(), claims.pending.as_deref()) {
            (AUDIENCE, None) => None,
            (PENDING_AUDIENCE, Some(claim)) => Some(Pending::from_claim(claim).ok_or(TokenError::Invalid)?),
            _ => return Err(TokenError::Invalid),
        };
        let caller = Caller {
            principal_id: claims.sub,
            kind: kind_from_claim(&claims.kind),
            name: claims.name,
            amr: claims.amr,
            mfa_at: claims.mfa_at,
            session_id: claims.sid,
            issued_at: claims.iat,
            pending,
            token: Arc::from(token),
        };
        Ok((caller, claims.exp))
    }
}

/// Ending the caller's own session.
const SIGN_OUT: &str = "/pim.identity.v1.AuthService/SignOut";

/// RPCs anyone may call without a token.
pub const PUBLIC_METHODS: &[&str] = &[
    "/pim.identity.v1.AuthService/ListRevocations",
    "/pim.identity.v1.AuthService/SignIn",
    "/pim.identity.v1.AuthService/SignInServicePrincipal",
    "/pim.identity.v1.AuthService/Refresh",
    "/pim.identity.v1.AuthService/GetSigningKeys",
];

/// Methods whose PERMISSION_DENIED answers carry an event of their own, with what was asked
/// (RequestRefused, ApprovalDecisionRefused, SignInFailed for a wrong current password): the
/// layer records no second one.
pub const SELF_AUDITED_METHODS: &[&str] = &[
    "/pim.assignment.v1.AssignmentService/CreateRequest",
    "/pim.approval.v1.ApprovalService/Decide",
    "/pim.identity.v1.AuthService/ChangePassword",
];

/// Where refused calls are recorded, so every refusal is auditable. Called before the answer
/// leaves, with the authenticated caller, the method and the answer, for every
/// PERMISSION_DENIED and FAILED_PRECONDITION: the sink records the former, and of the latter a
/// protection's refusal (the grpc module's `LAST_GLOBAL_ADMINISTRATOR_RULE`) and a change
/// refused for want of a recent MFA (`MfaRule`). And with UNAUTHENTICATED for a refused token worth a record (see
/// `Rejections`): the caller its session named, or an unknown one for a token not valid. And
/// with RESOURCE_EXHAUSTED for the first of a run of calls refused unheard, their caller having
/// been denied too often ([`crate::throttle`]).
#[async_trait::async_trait]
pub trait Refusals: Send + Sync {
    /// `target`: what the call was about, as its handler named it ([`aimed_at`]), or empty.
    async fn refused(&self, caller: &pim_proto::common::v1::Actor, method: &str, status: &Status, target: &str);
    /// Whether a refusal of `method` is recorded here (a method of a service this process
    /// serves): a refused token's record is rate-limited, and a call no one would record
    /// takes no one's turn.
    fn records(&self, method: &str) -> bool;
}

tokio::task_local! {
    /// What the call being answered is about, as its handler named it.
    static AIMED_AT: std::sync::Mutex<String>;
}

/// Names what the call being answered is about (a principal's id, as the handler resolved
/// it), so that if it is refused, the record says at whom it was aimed: a search for who
/// tried to take over an account finds the attempts. Outside a call, nothing happens.
pub fn aimed_at(target: &str) {
    let _ = AIMED_AT.try_with(|aimed| {
        *aimed.lock().unwrap_or_else(|e| e.into_inner()) = target.chars().take(200).collect();
    });
}

fn is_public(path: &str, public: &HashSet<&'static str>) -> bool {
    public.contains(path) || path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// The most characters a refusal's message keeps: one echoing a huge value (an id of a
/// megabyte) would overflow the caller's header limit, which reads as RESOURCE_EXHAUSTED.
const MAX_MESSAGE: usize = 500;

/// The most bytes of error details a refusal keeps (the same reason, as structured detail).
const MAX_DETAILS: usize = 4096;

/// Cuts a refusal's message to [`MAX_MESSAGE`] characters (with `…`), and drops details over
/// [`MAX_DETAILS`] bytes, so the caller reads the code and the start of why.
fn shorten_refusal(response: &mut http::Response<tonic::body::Body>) {
    let headers = response.headers_mut();
    if headers
        .get("grpc-status-details-bin")
        .is_some_and(|d| d.len() > MAX_DETAILS)
    {
        headers.remove("grpc-status-details-bin");
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.message().chars().count() <= MAX_MESSAGE {
        return;
    }
    let short: String = status.message().chars().take(MAX_MESSAGE).chain(['…']).collect();
    let replaced: http::Response<tonic::body::Body> = Status::new(status.code(), short).into_http();
    if let Some(message) = replaced.headers().get("grpc-message") {
        headers.insert("grpc-message", message.clone());
    }
}

/// Tower layer: authenticates every request except the public ones.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    public: Arc<HashSet<&'static str>>,
    refusals: Option<Arc<dyn Refusals>>,
    rejections: Arc<Rejections>,
    /// Denials counted by principal: past a minute's share, calls are refused unheard.
    throttle: Arc<Throttle>,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
    /// What it puts beside every caller for a long answer: one for the layer, shared.
    rechecks: Arc<RecheckWith>,
}

/// The most streams one principal may have open in one process: each is weighed again every
/// [`crate::streams::RECHECK`], so thousands opened by one user made the service slow for
/// everyone. One more is refused RESOURCE_EXHAUSTED.
pub const MAX_OPEN_STREAMS: usize = 100;

/// How many streams each principal has open, by principal id.
#[derive(Clone, Default)]
pub(crate) struct OpenStreams(Arc<std::sync::Mutex<HashMap<String, usize>>>);

/// One open stream, counted until it is dropped.
pub(crate) struct Opened {
    open: OpenStreams,
    principal: String,
}

impl OpenStreams {
    /// A place for one more of `principal`'s streams, or none when they have [`MAX_OPEN_STREAMS`].
    pub(crate) fn open(&self, principal: &str) -> Option<Opened> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(principal.to_owned()).or_default();
        if *count >= MAX_OPEN_STREAMS {
            return None;
        }
        *count += 1;
        Some(Opened {
            open: self.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

/// What a long answer (a server stream, [`crate::streams::Guard`]) needs beside its caller,
/// put there by [`AuthLayer`] with the method it answers: the verifier that checked the token,
/// to weigh it again; what turns true when the server starts to stop (the stream then ends
/// UNAVAILABLE rather than holding the shutdown back); where a refusal is recorded.
#[derive(Clone)]
pub struct Rechecks {
    pub(crate) with: Arc<RecheckWith>,
    pub(crate) method: Arc<str>,
}

pub(crate) struct RecheckWith {
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) stopping: Option<tokio::sync::watch::Receiver<bool>>,
    pub(crate) refusals: Option<Arc<dyn Refusals>>,
    /// How many streams each principal has open here (see [`MAX_OPEN_STREAMS`]).
    pub(crate) open: OpenStreams,
}

/// How often one refused token is recorded at most: a client retrying a dead token, or
/// someone sending forged ones by the thousand, writes a record now and then, not one a call.
const RECORD_REJECTION_EVERY_MS: i64 = 60_000;

/// The tokens refused that are worth a record: one of a session that ended (a token used
/// again after a sign-out or a disable, perhaps stolen), once a minute per session; one that
/// is not valid (not signed by identity, or altered), once a minute in all, with how many
/// more came meanwhile. An expired or missing token is routine, and not recorded.
#[derive(Default)]
struct Rejections {
    /// session (or principal) → when its refusal was last recorded (ms)
    sessions: std::sync::Mutex<HashMap<String, i64>>,
    /// when an invalid token was last recorded (ms), and how many came since
    invalid: std::sync::Mutex<(i64, u64)>,
}

/// The most sessions whose refusals are remembered (a flood of distinct ones forgets the
/// oldest first).
const MAX_REMEMBERED_REJECTIONS: usize = 10_000;

impl Rejections {
    /// The actor and reason to record for `err` now, if any.
    fn worth_recording(&self, err: &TokenError) -> Option<(pim_proto::common::v1::Actor, String)> {
        let now = crate::db::now_ms();
        match err {
            TokenError::Revoked(caller) => self.once_a_minute(caller, now).then(|| {
                (
                    caller.actor(),
                    "a token of a session that ended (signed out, or its user disabled) was used again".into(),
                )
            }),
            TokenError::Invalid => {
                let mut invalid = self.invalid.lock().unwrap_or_else(|e| e.into_inner());
                let (last, more) = *invalid;
                if now - last < RECORD_REJECTION_EVERY_MS {
                    *invalid = (last, more + 1);
                    return None;
                }
                *invalid = (now, 0);
                let more = if more > 0 {
                    format!("; {more} more since the last one recorded")
                } else {
                    String::new()
                };
                let unknown = pim_proto::common::v1::Actor {
                    principal_id: String::new(),
                    kind: PrincipalKind::Unspecified as i32,
                    display_name: "unauthenticated caller".into(),
                    session_id: String::new(),
                };
                Some((
                    unknown,
                    format!("an access token that is not valid (not signed by identity, or altered){more}"),
                ))
            }
            _ => None,
        }
    }

    /// The actor and reason to record, if any, when the token of a sign-in waiting for MFA
    /// (a password alone) calls `method`, which it may not: someone may hold the password
    /// and not the second factor. Once a minute per session.
    fn pending_worth_recording(
        &self,
        caller: &Caller,
        pending: Pending,
        method: &str,
    ) -> Option<(pim_proto::common::v1::Actor, String)> {
        self.once_a_minute(caller, crate::db::now_ms()).then(|| {
            (
                caller.actor(),
                format!(
                    "the token of a sign-in not complete ({}) called {method}",
                    match pending {
                        Pending::Mfa => "a password, no MFA code yet",
                        Pending::Enrollment => "a password, no authenticator enrolled yet",
                    }
                ),
            )
        })
    }

    /// Whether a refusal of the caller's session (or the principal, where it has none) is
    /// recorded at `now`: the first in a minute is.
    fn once_a_minute(&self, caller: &Caller, now: i64) -> bool {
        let key = if caller.session_id.is_empty() {
            &caller.principal_id
        } else {
            &caller.session_id
        };
        let mut revoked = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if revoked.get(key).is_some_and(|at| now - at < RECORD_REJECTION_EVERY_MS) {
            return false;
        }
        if revoked.len() >= MAX_REMEMBERED_REJECTIONS {
            revoked.retain(|_, at| now - *at < RECORD_REJECTION_EVERY_MS);
            if revoked.len() >= MAX_REMEMBERED_REJECTIONS {
                revoked.clear();
            }
        }
        revoked.insert(key.clone(), now);
        true
    }
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>) -> Self {
        Self {
            rechecks: Arc::new(RecheckWith {
                verifier: verifier.clone(),
                stopping: None,
                refusals: None,
                open: Default::default(),
            }),
            verifier,
            public: Arc::new(PUBLIC_METHODS.iter().copied().collect()),
            refusals: None,
            rejections: Arc::default(),
            throttle: Arc::default(),
            stopping: None,
        }
    }

    /// Tells the streams it lets through when the server starts to stop (see [`Rechecks`]).
    pub fn stopping_with(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self.with_rechecks_renewed()
    }

    /// [`Rechecks`] as the layer now stands.
    fn with_rechecks_renewed(mut self) -> Self {
        self.rechecks = Arc::new(RecheckWith {
            verifier: self.verifier.clone(),
            stopping: self.stopping.clone(),
            refusals: self.refusals.clone(),
            open: self.rechecks.open.clone(),
        });
        self
    }

    /// Records every PERMISSION_DENIED answer to an authenticated caller with `refusals`
    /// (except [`SELF_AUDITED_METHODS`]), and a protection's refusal (see [`Refusals`]).
    pub fn recording_refusals(mut self, refusals: Arc<dyn Refusals>) -> Self {
        self.refusals = Some(refusals);
        self.with_rechecks_renewed()
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call (tower's readiness contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        // One span per call, a child of the caller's trace when the metadata names one.
        let path = request.uri().path().to_owned();
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            pim.principal = tracing::field::Empty,
            pim.role_id = tracing::field::Empty,
            pim.request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let _ = span.set_parent(crate::telemetry::context_from_headers(request.headers()));
        }
        let traceparent = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let recorded = span.clone();
        let started = std::time::Instant::now();
        let method: Arc<str> = path.as_str().into();
        let call = async move {
            if is_public(request.uri().path(), &layer.public) {
                return inner.call(request).await;
            }
            let token = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim);
            let verified = match token {
                None | Some("") => Err(TokenError::Missing),
                Some(token) => layer.verifier.verify(token).await,
            };
            match verified {
                Ok(caller) if caller.pending.is_some_and(|p| !p.allows(request.uri().path())) => {
                    let pending = caller.pending.unwrap_or(Pending::Mfa);
                    let refused = Status::unauthenticated(pending.refusal());
                    if let Some(refusals) = layer.refusals.as_ref().filter(|r| r.records(&method))
                        && let Some((actor, reason)) =
                            layer.rejections.pending_worth_recording(&caller, pending, &method)
                    {
                        refusals
                            .refused(&actor, &method, &Status::unauthenticated(reason), &caller.principal_id)
                            .await;
                    }
                    Ok(refused.into_http())
                }
                Ok(caller) => {
                    recorded.record("pim.principal", caller.principal_id.as_str());
                    let now = crate::db::now_ms();
                    // Signing out is always heard: ending one's own session is never refused.
                    if *method != *SIGN_OUT
                        && let Turn::Unheard {
                            retry_after_ms,
                            spent,
                            first,
                        } = layer.throttle.turn(&caller.principal_id, now)
                    {
                        let refused = Turn::status(retry_after_ms, spent);
                        if first && let Some(refusals) = layer.refusals.as_ref().filter(|r| r.records(&method)) {
                            refusals
                                .refused(&caller.actor(), &method, &refused, &caller.principal_id)
                                .await;
                        }
                        return Ok(refused.into_http());
                    }
                    let principal = caller.principal_id.clone();
                    let refusals = layer
                        .refusals
                        .clone()
                        .filter(|_| !SELF_AUDITED_METHODS.contains(&&*method))
                        // Who asked, kept for the answer.
                        .map(|refusals| (refusals, caller.clone()));
                    request.extensions_mut().insert(caller);
                    request.extensions_mut().insert(Rechecks {
                        with: layer.rechecks.clone(),
                        method: method.clone(),
                    });
                    let (response, target) = AIMED_AT
                        .scope(std::sync::Mutex::default(), async move {
                            let response = inner.call(request).await;
                            let target = AIMED_AT
                                .with(|aimed| std::mem::take(&mut *aimed.lock().unwrap_or_else(|e| e.into_inner())));
                            (response, target)
                        })
                        .await;
                    // Errors come back trailers-only: their status is in the headers (read once).
                    let answered = response
                        .as_ref()
                        .ok()
                        .and_then(|a| Status::from_header_map(a.headers()));
                    if let Some(kind) = answered.as_ref().and_then(|s| Refusal::of(s.code())) {
                        layer.throttle.refused(&principal, now, kind);
                    }
                    let denied = answered.filter(|status| {
                        refusals.is_some()
                            && matches!(
                                status.code(),
                                tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition
                            )
                    });
                    if let (Some((refusals, caller)), Some(status)) = (refusals, denied) {
                        refusals.refused(&caller.actor(), &method, &status, &target).await;
                    }
                    response
                }
                Err(err) => {
                    // A token refused is a security decision too: recorded now and then.
                    if let Some(refusals) = layer.refusals.as_ref().filter(|r| r.records(&method))
                        && let Some((actor, reason)) = layer.rejections.worth_recording(&err)
                    {
                        refusals
                            .refused(&actor, &method, &Status::unauthenticated(reason), "")
                            .await;
                    }
                    Ok(Status::from(err).into_http())
                }
            }
        };
        Box::pin(crate::telemetry::traced(span, traceparent.as_deref(), async move {
            // A handler that panics answers INTERNAL, logged with the call's trace, rather than
            // resetting the stream (which the caller reads as CANCELLED).
            let response = match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(call)).await {
                Ok(Ok(mut response)) => {
                    shorten_refusal(&mut response);
                    Ok(response)
                }
                Ok(failed) => failed,
                Err(_) => {
                    tracing::error!(method = %path, "the handler panicked: answered INTERNAL");
                    Ok(Status::internal("internal error").into_http())
                }
            };
            let code = match &response {
                Ok(r) => crate::metrics::answered_code(r),
                Err(_) => tonic::Code::Unknown,
            };
            crate::metrics::record_rpc(&path, code, started.elapsed());
            response
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use ed25519_dalek::SigningKey as Ed25519;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{EncodingKey, Header};

    struct Fixed(Vec<SigningKey>);

    #[async_trait::async_trait]
    impl KeySource for Fixed {
        async fn signing_keys(&self) -> anyhow::Result<Vec<SigningKey>> {
            Ok(self.0.clone())
        }

        async fn revocations(&self, _since_ms: i64) -> anyhow::Result<RevocationList> {
            Ok(RevocationList {
                session_tags: vec![revocation_tag("signed-out")],
                principal_tags: vec![],
            })
        }
    }

    fn key(seed: u8) -> Ed25519 {
        Ed25519::from_bytes(&[seed; 32])
    }

    fn published(kid: &str, k: &Ed25519) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            alg: "EdDSA".into(),
            public_key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.verifying_key().to_bytes()),
            created_at: None,
            retire_after: None,
        }
    }

    fn token(kid: &str, k: &Ed25519, exp_offset: i64, aud: &str) -> String {
        let now = crate::db::now_ms() / 1000;
        let claims = Claims {
            sub: "lee-id".into(),
            kind: "user".into(),
            name: "lee".into(),
            amr: vec!["pwd".into()],
            mfa_at: None,
            sid: "s1".into(),
            iat: now,
            exp: now + exp_offset,
            iss: ISSUER.into(),
            aud: aud.into(),
            pending: (aud == PENDING_AUDIENCE).then(|| "mfa".into()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        let der = k.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    }

    #[tokio::test]
    async fn only_current_tokens_signed_by_a_published_key_verify() {
        let verifier = TokenVerifier::new(Arc::new(Fixed(vec![published("k1", &key(1))])));
        assert!(
            matches!(
                verifier.verify(&token("k1", &key(1), 600, AUDIENCE)).await,
                Err(TokenError::RevocationsUnknown)
            ),
            "no token before the revocations are known"
        );
        verifier.load_revocations().await.unwrap();
        let caller = verifier.verify(&token("k1", &key(1), 600, AUDIENCE)).await.unwrap();
        assert_eq!(
            (caller.principal_id.as_str(), caller.kind),
            ("lee-id", PrincipalKind::User)
        );
        assert!(
            !format!("{caller:?}").contains(caller.token()),
            "the token never prints"
        );

        assert!(matches!(
            verifier.verify(&token("k1", &key(1), -600, AUDIENCE)).await,
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            verifier.verify(&token("k1", &key(2), 600, AUDIENCE)).await,
            Err(TokenError::Invalid)
        ));
        assert!(matches!(
            verifier.verify(&token("k9", &key(1), 600, AUDIENCE)).await,
            Err(TokenError::Invalid)
        ));
        assert!(matches!(
            verifier.verify(&token("k1", &key(1), 600, "other")).await,
            Err(TokenError::Invalid)
        ));
        assert!(matches!(verifier.verify("a.b.c").await, Err(TokenError::Invalid)));
    }

    #[test]
    fn loaded_revocations_refuse_their_sessions_and_principals() {
        let r = Revocations::default();
        r.load(RevocationList {
            session_tags: vec![revocation_tag("s1")],
            principal_tags: vec![(revocation_tag("p2"), 5_000)],
        });
        let caller = |principal: &str, session: &str, issued_at: i64| Caller {
            principal_id: principal.into(),
            kind: PrincipalKind::User,
            name: String::new(),
            amr: vec![],
            mfa_at: None,
            session_id: session.into(),
            issued_at,
            pending: None,
            token: Arc::from("t"),
        };
        assert!(r.is_revoked(&caller("p1", "s1", 1)), "a signed-out session");
        assert!(!r.is_revoked(&caller("p1", "s2", 1)));
        assert!(
            r.is_revoked(&caller("p2", "s3", 5)),
            "issued before the principal's revocation"
        );
        assert!(!r.is_revoked(&caller("p2", "s3", 6)), "issued after it");

        // The same from identity's events: a principal's revocation refuses the tokens issued
        // up to it, not the ones issued after (a re-enabled user signing in again).
        r.revoke_principal("p3", 7_000);
        assert!(r.is_revoked(&caller("p3", "s4", 7)));
        assert!(!r.is_revoked(&caller("p3", "s4", 8)));
        // An earlier revocation told again later (applied in the process, then read from the
        // stream) does not undo a later one.
        r.revoke_principal("p3", 9_000);
        r.revoke_principal("p3", 7_000);
        assert!(
            r.is_revoked(&caller("p3", "s4", 8)),
            "issued before the later revocation"
        );
        r.revoke_session("s5");
        assert!(r.is_revoked(&caller("p4", "s5", 8)));
    }

    /// What no token can outlive any more is forgotten at the next load, so the lists the
    /// poll keeps taking in do not grow for ever.
    #[test]
    fn loaded_revocations_no_token_outlives_are_forgotten() {
        let r = Revocations::default();
        let now = crate::db::now_ms();
        r.load(RevocationList {
            session_tags: vec![revocation_tag("s1")],
            principal_tags: vec![
                (revocation_tag("p-old"), now - REMEMBER_MS - 1_000),
                (revocation_tag("p-new"), now - 1_000),
            ],
        });
        // A session remembered until a moment now past, as a day-old load leaves it.
        r.loaded_sessions
            .write()
            .unwrap()
            .insert(revocation_tag("s-old"), now - 1);
        r.load(RevocationList::default());
        let sessions = r.loaded_sessions.read().unwrap();
        assert_eq!(
            sessions.keys().collect::<Vec<_>>(),
            vec![&revocation_tag("s1")],
            "the session no token outlives is forgotten, the recent one kept"
        );
        let principals = r.loaded_principals.read().unwrap();
        assert_eq!(
            principals.keys().collect::<Vec<_>>(),
            vec![&revocation_tag("p-new")],
            "the principal's revocation no token outlives is forgotten, the recent one kept"
        );
    }

    /// A refused token's record takes the minute's turn only where it is recorded: junk sent to
    /// a path no service here serves leaves the next refusal of a real call on record. A
    /// password-only sign-in's token calling further is recorded too, once a minute a session.
    #[tokio::test]
    async fn a_refused_token_nobody_records_takes_no_turn() {
        use tower::{Layer, ServiceExt};
        #[derive(Default)]
        struct Sink(std::sync::Mutex<Vec<(String, String, String)>>);
        #[async_trait::async_trait]
        impl Refusals for Sink {
            async fn refused(
                &self,
                _caller: &pim_proto::common::v1::Actor,
                method: &str,
                status: &Status,
                target: &str,
            ) {
                let mut recorded = self.0.lock().unwrap();
                recorded.push((method.to_owned(), status.message().to_owned(), target.to_owned()));
            }
            fn records(&self, method: &str) -> bool {
                method.starts_with("/pim.")
            }
        }
        let verifier = Arc::new(TokenVerifier::new(Arc::new(Fixed(vec![published("k1", &key(1))]))));
        verifier.load_revocations().await.unwrap();
        let sink = Arc::new(Sink::default());
        let served = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let service = AuthLayer::new(verifier).recording_refusals(sink.clone()).layer(served);
        let real = "/pim.assignment.v1.RoleService/ListRoleDefinitions";
        let pending = format!("Bearer {}", token("k1", &key(1), 600, PENDING_AUDIENCE));
        for (path, bearer) in [
            ("/x.Y/Z", "Bearer a.b.c"),
            (real, "Bearer a.b.c"),
            (real, "Bearer a.b.c"),
            (real, pending.as_str()),
            (real, pending.as_str()),
        ] {
            let request = http::Request::builder()
                .uri(path)
                .header("authorization", bearer)
                .body(())
                .unwrap();
            let answer = service.clone().oneshot(request).await.unwrap();
            let code = Status::from_header_map(answer.headers()).map(|s| s.code());
            assert_eq!(code, Some(tonic::Code::Unauthenticated), "{path}");
        }
        let recorded = sink.0.lock().unwrap().clone();
        assert_eq!(
            recorded.len(),
            2,
            "once a minute (a session), for a call someone records: {recorded:?}"
        );
        assert_eq!(recorded[0].0, real);
        assert!(recorded[0].1.contains("not valid"), "{recorded:?}");
        assert_eq!((recorded[1].0.as_str(), recorded[1].2.as_str()), (real, "lee-id"));
        assert!(recorded[1].1.contains("sign-in not complete"), "{recorded:?}");
    }

    #[tokio::test]
    async fn a_pending_sign_in_may_only_complete_itself_or_sign_out() {
        let verifier = TokenVerifier::new(Arc::new(Fixed(vec![published("k1", &key(1))])));
        verifier.load_revocations().await.unwrap();
        let caller = verifier
            .verify(&token("k1", &key(1), 600, PENDING_AUDIENCE))
            .await
            .unwrap();
        assert_eq!(caller.pending, Some(Pending::Mfa));
        assert!(Pending::Mfa.allows("/pim.identity.v1.MfaService/Verify"));
        assert!(Pending::Mfa.allows("/pim.identity.v1.AuthService/SignOut"));
        for path in [
            "/pim.identity.v1.MfaService/GenerateRecoveryCodes",
            "/pim.identity.v1.MfaService/RemoveMethod",
            "/pim.identity.v1.MfaService/EnrollTotp",
            "/pim.assignment.v1.AssignmentService/CreateRequest",
            "/pim.identity.v1.AuthService/ChangePassword",
        ] {
            assert!(!Pending::Mfa.allows(path), "{path}");
        }
        assert!(Pending::Enrollment.allows("/pim.identity.v1.MfaService/EnrollTotp"));
        assert!(!Pending::Enrollment.allows("/pim.identity.v1.MfaService/ListMethods"));
        let full = verifier.verify(&token("k1", &key(1), 600, AUDIENCE)).await.unwrap();
        assert_eq!(full.pending, None);
    }

    /// A handler that panics (as a scope of "//" once made one) answers INTERNAL.
    #[tokio::test]
    async fn a_handler_that_panics_answers_internal() {
        #[derive(Clone)]
        struct Panics;
        impl tower::Service<http::Request<()>> for Panics {
            type Response = http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<()>) -> Self::Future {
                Box::pin(async { panic!("out of bounds") })
            }
        }
        let verifier = Arc::new(TokenVerifier::new(Arc::new(Fixed(Vec::new()))));
        let mut service = tower::Layer::layer(&AuthLayer::new(verifier), Panics);
        let request = http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(())
            .unwrap();
        let answer = tower::Service::call(&mut service, request).await.unwrap();
        let status = Status::from_header_map(answer.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error", "nothing of the panic is told");
    }
}
