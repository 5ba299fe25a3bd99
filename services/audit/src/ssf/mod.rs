//! Shared Signals (OpenID SSF 1.0 with CAEP 1.0): a transmitter that tells receivers, as
//! signed Security Event Tokens (RFC 8417), the moment a principal's access ends
//! (`session-revoked`) or grows (`token-claims-change`), so an app that caches roles ends its
//! sessions when PIM does. A stream is a subscription of its own kind: its events go through
//! the webhooks' durable queue, in record order, pushed (RFC 8935) or polled (RFC 8936).
//!
//! What a stream holds is the SET's claims without the envelope: issuer, audience, `iat` and
//! `jti` are added, and the token signed, when it leaves (pushed or polled).

use anyhow::Context;
use base64::Engine;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::chain::Record;
use pim_runtime::events::EventType;

pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const TOKEN_CLAIMS_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// The events a stream may ask for (verification is always delivered).
pub const EVENTS_SUPPORTED: &[&str] = &[SESSION_REVOKED, TOKEN_CLAIMS_CHANGE];

/// How a stream's events reach its receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// POSTed to the receiver's endpoint (RFC 8935).
    Push,
    /// Fetched by the receiver from the transmitter's endpoint (RFC 8936).
    Poll,
}

impl Method {
    pub fn urn(self) -> &'static str {
        match self {
            Method::Push => "urn:ietf:rfc:8935",
            Method::Poll => "urn:ietf:rfc:8936",
        }
    }

    pub fn from_urn(urn: &str) -> Option<Self> {
        [Method::Push, Method::Poll].into_iter().find(|m| m.urn() == urn)
    }

    /// As the database keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Push => "push",
            Method::Poll => "poll",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Method::Push, Method::Poll].into_iter().find(|m| m.as_str() == text)
    }
}

/// A stream's status (SSF 1.0 §8.1.2): paused holds events, disabled drops them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamStatus {
    Enabled,
    Paused,
    Disabled,
}

impl StreamStatus {
    const ALL: [StreamStatus; 3] = [StreamStatus::Enabled, StreamStatus::Paused, StreamStatus::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Enabled => "enabled",
            StreamStatus::Paused => "paused",
            StreamStatus::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// How a SET names its subject (RFC 9493): PIM's principal id alone, with the issuer of
/// PIM's tokens (`iss_sub`), which is what a receiver matching PIM tokens holds, or the
/// user's email address, which is what an app that signs users in elsewhere holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectFormat {
    Opaque,
    IssSub,
    Email,
}

impl SubjectFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectFormat::Opaque => "opaque",
            SubjectFormat::IssSub => "iss_sub",
            SubjectFormat::Email => "email",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [SubjectFormat::Opaque, SubjectFormat::IssSub, SubjectFormat::Email]
            .into_iter()
            .find(|f| f.as_str() == text)
    }

    /// The subject identifier of a principal, whose address is `email` if known. A principal
    /// without one (a service principal, a user whose address is unknown) is named `iss_sub`
    /// in an email stream: a signal that ends access is never held back for want of a name.
    pub fn subject(self, principal_id: &str, email: Option<&str>) -> Value {
        match (self, email.filter(|e| !e.is_empty())) {
            (SubjectFormat::Opaque, _) => json!({"format": "opaque", "id": principal_id}),
            (SubjectFormat::Email, Some(email)) => json!({"format": "email", "email": email}),
            (SubjectFormat::IssSub | SubjectFormat::Email, _) => {
                json!({"format": "iss_sub", "iss": pim_runtime::auth::ISSUER, "sub": principal_id})
            }
        }
    }
}

/// What makes a subscription an SSF stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Stream {
    /// The receiver: the service principal that made the stream (the SETs' `aud`).
    pub audience: String,
    pub method: Method,
    pub status: StreamStatus,
    pub subjects: SubjectFormat,
    /// The `Authorization` header the receiver asked its pushes to carry (SSF
    /// `delivery.authorization_header`), sealed (`Transmitter::seal_authorization`): never
    /// held, logged or shown in the clear.
    pub authorization: Option<String>,
}

/// The CAEP event a record is, if it is one: its type and its event object. Access ends
/// (an active role deactivated, expired, removed or revoked, which every such end announces
/// as RoleDeactivated; a session revoked; a user disabled or deleted; a member leaving a
/// role-assignable group): `session-revoked`. Access given (a role activated, an active
/// assignment granted): `token-claims-change` naming the role; joining a role-assignable group:
/// `token-claims-change` naming it (`pim_group_added`); an activation that now ends
/// earlier: `token-claims-change` with its new end (`pim_role_changed`).
pub fn signal(r: &Record) -> Option<(&'static str, Value)> {
    let payload: Value = serde_json::from_str(&r.payload_json).unwrap_or_default();
    let role = || {
        let name = if r.role_name.is_empty() {
            &r.role_id
        } else {
            &r.role_name
        };
        format!("{name} at {}", if r.scope.is_empty() { "/" } else { &r.scope })
    };
    let at = r.time / 1000;
    let revoked = |initiator: &str, why: String| json!({"event_timestamp": at, "initiating_entity": initiator, "reason_admin": {"en": why}});
    // The role, with its end, under `claim` (`pim_role_added`, `pim_role_changed`).
    let claims_change = |initiator: &str, claim: &str| {
        let role = json!({"id": r.role_id, "name": r.role_name, "scope": r.scope, "until": payload["end_time"]});
        json!({"event_timestamp": at, "initiating_entity": initiator, "claims": {claim: role}})
    };
    let event = match r.event_type() {
        Some(EventType::RoleDeactivated) => {
            let reason = payload["reason"].as_str().unwrap_or_default();
            let initiator = match reason {
                "expired" => "policy",
                "deactivated" => "user",
                _ => "admin",
            };
            (
                SESSION_REVOKED,
                revoked(initiator, format!("role {} ended: {reason}", role())),
            )
        }
        Some(EventType::SessionRevoked) => {
            let initiator = if r.actor_id == r.target_id { "user" } else { "admin" };
            (SESSION_REVOKED, revoked(initiator, "session revoked".into()))
        }
        Some(EventType::UserDisabled) => (SESSION_REVOKED, revoked("admin", "user disabled".into())),
        Some(EventType::UserDeleted) => (SESSION_REVOKED, revoked("admin", "user deleted".into())),
        Some(EventType::RoleActivated) => (TOKEN_CLAIMS_CHANGE, claims_change("user", "pim_role_added")),
        Some(EventType::ActiveAssignmentGranted) => (TOKEN_CLAIMS_CHANGE, claims_change("admin", "pim_role_added")),
        // A role-assignable group carries roles to its members: leaving it ends them, joining
        // it gives them (apps know users, not PIM's groups). An ordinary group carries none.
        Some(EventType::GroupMemberRemoved | EventType::GroupMemberAdded)
            if payload["is_assignable_to_role"] == true =>
        {
            let group = payload["group_id"].as_str().unwrap_or_default();
            let initiator = if r.actor_id == r.target_id { "user" } else { "admin" };
            if r.event_type() == Some(EventType::GroupMemberRemoved) {
                let why = format!("left group {group}, and the roles it carries");
                (SESSION_REVOKED, revoked(initiator, why))
            } else {
                let group = json!({"id": group, "scope": r.scope});
                let event = json!({"event_timestamp": at, "initiating_entity": initiator, "claims": {"pim_group_added": group}});
                (TOKEN_CLAIMS_CHANGE, event)
            }
        }
        Some(EventType::ActivationShortened) => {
            let mut event = claims_change("admin", "pim_role_changed");
            let why = payload["reason"].as_str().unwrap_or_default();
            event["reason_admin"] = json!({"en": format!("role {} now ends earlier: {why}", role())});
            (TOKEN_CLAIMS_CHANGE, event)
        }
        _ => return None,
    };
    (!r.target_id.is_empty()).then_some(event)
}

/// One principal a record is about, with their address as of that record, if known.
#[derive(Clone, Debug, PartialEq)]
pub struct Subject {
    pub principal_id: String,
    pub email: Option<String>,
}

/// Who each record of a batch is about, as Shared Signals name subjects: its target or, for a
/// group, each of its members (a group's role ending ends every member's access, and apps know
/// users, not PIM's groups), each with their address as of that record. Read from what audit
/// knew before the batch, then moved along the batch's own user and membership records.
pub struct Subjects {
    addresses: std::collections::HashMap<String, String>,
    members: std::collections::HashMap<String, std::collections::BTreeSet<String>>,
}

impl Subjects {
    /// What audit knew of the batch's principals before it (call before the batch is learnt).
    pub async fn before<C: sea_orm::ConnectionTrait>(c: &C, records: &[Record]) -> Result<Self, sea_orm::DbErr> {
        let mut ids: Vec<&str> = records.iter().map(|r| r.target_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let members = crate::mail::store::members_of(c, &ids).await?;
        let mut principals: Vec<&str> = ids;
        principals.extend(members.values().flatten().map(String::as_str));
        principals.sort_unstable();
        principals.dedup();
        Ok(Self {
            addresses: crate::mail::store::addresses_of(c, &principals).await?,
            members,
        })
    }

    /// Moves past `r`: who it is about then.
    pub fn about(&mut self, r: &Record) -> Vec<Subject> {
        let address = crate::mail::announced_address(r);
        if let Some(email) = address.as_ref().filter(|e| !e.is_empty()) {
            self.addresses.insert(r.target_id.clone(), email.clone());
        }
        let membership = crate::mail::announced_membership(r);
        if let Some((group, member, true)) = &membership {
            self.members.entry(group.clone()).or_default().insert(member.clone());
        }
        let subject = |id: &str| Subject {
            principal_id: id.to_owned(),
            email: self.addresses.get(id).cloned(),
        };
        let about = match self.members.get(&r.target_id).filter(|m| !m.is_empty()) {
            Some(members) => members.iter().map(|m| subject(m)).collect(),
            None => vec![subject(&r.target_id)],
        };
        // A deleted user's, a departing member's last record still names them.
        if address.is_some_and(|e| e.is_empty()) {
            self.addresses.remove(&r.target_id);
        }
        match membership {
            Some((group, member, false)) if member.is_empty() => {
                self.members.remove(&group);
            }
            Some((group, member, false)) => {
                if let Some(members) = self.members.get_mut(&group) {
                    members.remove(&member);
                }
            }
            _ => {}
        }
        about
    }
}

/// The claims a stream queues for a record it wants (see [`signal`]), about one `subject`
/// (the record's target, or a member of the group it targets).
pub fn claims(r: &Record, stream: &Stream, subject: &Subject) -> Option<String> {
    let (event_type, mut event) = signal(r)?;
    if subject.principal_id != r.target_id
        && let Some(why) = event["reason_admin"]["en"].as_str()
    {
        let group = if r.target_name.is_empty() {
            &r.target_id
        } else {
            &r.target_name
        };
        event["reason_admin"]["en"] = json!(format!("{why} (held through group {group})"));
    }
    Some(
        json!({
            "sub_id": stream.subjects.subject(&subject.principal_id, subject.email.as_deref()),
            "txn": r.event_id,
            "events": {event_type: event},
        })
        .to_string(),
    )
}

/// The claims of a verification event (SSF 1.0 §8.1.4): the stream itself is its subject.
pub fn verification(stream_id: &str, state: &str) -> String {
    let mut event = json!({});
    if !state.is_empty() {
        event["state"] = json!(state);
    }
    json!({
        "sub_id": {"format": "opaque", "id": stream_id},
        "events": {VERIFICATION: event},
    })
    .to_string()
}

/// What push credentials are sealed under, derived from the suite's key.
const CREDENTIALS: &str = "ssf push authorization";

/// The transmitter's identity: its issuer URL and its Ed25519 signing key, derived from the
/// suite's secrets key (never stored: a copy of the database signs nothing).
#[derive(Clone)]
pub struct Transmitter {
    pub issuer: String,
    /// The generation that signs (`PIM_SSF_KEY_GENERATION`), and the one before it, published
    /// still so that SETs signed just before a rotation verify.
    current: Generation,
    previous: Option<Generation>,
    /// The same generation under the suite's keys the current one replaced
    /// (`PIM_SECRETS_KEY_PREVIOUS`), published while they are given so that SETs signed before
    /// the rotation verify.
    replaced: Vec<Generation>,
    generation: u32,
    /// Seals receivers' push credentials at rest (a key of its own from the same secret).
    credentials: pim_runtime::sealing::Sealer,
    /// Whether receivers' streams may push to private addresses too (the operator allows it:
    /// `PIM_SSF_PRIVATE_RECEIVERS`); public ones only otherwise.
    pub private_receivers: bool,
}

/// One generation of the signing key: the private key, its `kid`, the public key's `x`.
#[derive(Clone)]
struct Generation {
    key: EncodingKey,
    kid: String,
    x: String,
}

impl Generation {
    /// Generation `n` of the key `master` derives (generation 1 is the one PIM always had).
    fn derive(master: &str, n: u32) -> anyhow::Result<Self> {
        let mut mac = Hmac::<Sha256>::new_from_slice(master.as_bytes()).expect("HMAC takes a key of any length");
        mac.update(b"pim ssf signing key\0v");
        mac.update(n.to_string().as_bytes());
        let seed: [u8; 32] = mac.finalize().into_bytes().into();
        let signing = SigningKey::from_bytes(&seed);
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| anyhow::anyhow!("encoding the SSF signing key: {e}"))?;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
        let kid = Sha256::digest(x.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            key: EncodingKey::from_ed_der(der.as_bytes()),
            kid,
            x,
        })
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": self.x, "kid": self.kid, "use": "sig", "alg": "EdDSA"})
    }
}

impl Transmitter {
    /// The first generation (tests).
    #[cfg(test)]
    pub fn new(issuer: &str, master: &str) -> anyhow::Result<Self> {
        Self::at_generation(issuer, master, 1)
    }

    /// Signing with generation `generation` of the key (`PIM_SSF_KEY_GENERATION`).
    pub fn at_generation(issuer: &str, master: &str, generation: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(generation >= 1, "the SSF key generation counts from 1");
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            current: Generation::derive(master, generation)?,
            previous: match generation {
                1 => None,
                n => Some(Generation::derive(master, n - 1)?),
            },
            replaced: Vec::new(),
            generation,
            credentials: pim_runtime::sealing::Sealer::derived(master, CREDENTIALS),
            private_receivers: false,
        })
    }

    /// This transmitter, holding the suite's keys its own replaced (newest first): their keys
    /// are published, and push credentials they sealed open (and are sealed again at start).
    pub fn replacing(self, replaced: &[String]) -> anyhow::Result<Self> {
        Ok(Self {
            replaced: replaced
                .iter()
                .map(|master| Generation::derive(master, self.generation))
                .collect::<anyhow::Result<_>>()?,
            credentials: self.credentials.replacing(
                replaced
                    .iter()
                    .map(|master| pim_runtime::sealing::Sealer::derived(master, CREDENTIALS))
                    .collect(),
            ),
            ..self
        })
    }

    /// Letting receivers' streams push to private addresses too (`PIM_SSF_PRIVATE_RECEIVERS`).
    pub fn allowing_private_receivers(mut self, allowed: bool) -> Self {
        self.private_receivers = allowed;
        self
    }

    /// A receiver's `authorization_header`, sealed for the stream `stream_id` (base64).
    pub fn seal_authorization(&self, stream_id: &str, header: &str) -> anyhow::Result<String> {
        let sealed = self.credentials.seal(header.as_bytes(), stream_id)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    /// The header a stream's pushes carry, opened from its sealed form.
    pub fn open_authorization(&self, stream_id: &str, sealed: &str) -> anyhow::Result<String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .context("a sealed authorization header is not base64")?;
        String::from_utf8(self.credentials.open(&bytes, stream_id)?).context("an authorization header is not UTF-8")
    }

    /// A stream's authorization header sealed again under the current key, when a key it
    /// replaced sealed it (none when the current key did).
    pub fn reseal_authorization(&self, stream_id: &str, sealed: &str) -> anyhow::Result<Option<String>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .context("a sealed authorization header is not base64")?;
        let opened = self.credentials.open_telling(&bytes, stream_id)?;
        if !opened.stale {
            return Ok(None);
        }
        let header = String::from_utf8(opened.plaintext).context("an authorization header is not UTF-8")?;
        self.seal_authorization(stream_id, &header).map(Some)
    }

    /// The public keys, as a JWK Set: the one that signs, and the one before it.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .chain(&self.replaced)
            .map(Generation::jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// The SET of queued `claims` for `audience`: issuer, audience, `iat` and `jti` added,
    /// signed (EdDSA, `typ` `secevent+jwt`).
    pub fn sign(&self, claims: &str, audience: &str, jti: &str, now_ms: i64) -> anyhow::Result<String> {
        let mut claims: serde_json::Map<String, Value> =
            serde_json::from_str(claims).context("a queued SET's claims are not a JSON object")?;
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(audience));
        claims.insert("iat".into(), json!(now_ms / 1000));
        claims.insert("jti".into(), json!(jti));
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.current.kid.clone());
        header.typ = Some("secevent+jwt".into());
        jsonwebtoken::encode(&header, &claims, &self.current.key).context("signing a SET")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: &str, payload: &str) -> Record {
        Record {
            event_id: "e1".into(),
            time: 1_700_000_000_123,
            action: format!("pim.assignment.v1.{action}"),
            actor_id: "admin-id".into(),
            target_id: "lee-id".into(),
            role_id: "ga".into(),
            role_name: "Global Administrator".into(),
            scope: "/".into(),
            payload_json: payload.into(),
            ..Record::default()
        }
    }

    #[test]
    fn access_that_ends_is_a_session_revoked_and_access_given_a_claims_change() {
        let (kind, event) = signal(&record("RoleDeactivated", r#"{"reason":"expired"}"#)).unwrap();
        assert_eq!(kind, SESSION_REVOKED);
        assert_eq!(event["initiating_entity"], "policy");
        assert_eq!(event["event_timestamp"], 1_700_000_000);
        assert_eq!(
            event["reason_admin"]["en"],
            "role Global Administrator at / ended: expired"
        );
        for ends in ["SessionRevoked", "UserDisabled", "UserDeleted"] {
            assert_eq!(signal(&record(ends, "{}")).unwrap().0, SESSION_REVOKED, "{ends}");
        }
        let (kind, event) = signal(&record("RoleActivated", r#"{"end_time":"2026-12-05T00:00:00Z"}"#)).unwrap();
        assert_eq!(kind, TOKEN_CLAIMS_CHANGE);
        assert_eq!(event["claims"]["pim_role_added"]["until"], "2026-12-05T00:00:00Z");
        let (kind, event) = signal(&record(
            "ActivationShortened",
            r#"{"end_time":"2026-12-04T22:00:00Z","reason":"eligibility shortened"}"#,
        ))
        .unwrap();
        assert_eq!(kind, TOKEN_CLAIMS_CHANGE);
        assert_eq!(event["claims"]["pim_role_changed"]["until"], "2026-12-04T22:00:00Z");
        assert_eq!(
            event["reason_admin"]["en"],
            "role Global Administrator at / now ends earlier: eligibility shortened"
        );
        assert!(signal(&record("EligibilityGranted", "{}")).is_none());
        // Its RoleDeactivated says it already: one signal for one end.
        assert!(signal(&record("ActiveAssignmentRemoved", "{}")).is_none());
        assert!(signal(&record("PolicyUpdated", "{}")).is_none());

        // Leaving a role-assignable group ends the roles it carried; joining gives them; an
        // ordinary group carries none.
        let membership = |assignable: bool| format!(r#"{{"group_id":"g-1","is_assignable_to_role":{assignable}}}"#);
        let (kind, event) = signal(&record("GroupMemberRemoved", &membership(true))).unwrap();
        assert_eq!(kind, SESSION_REVOKED);
        assert_eq!(event["reason_admin"]["en"], "left group g-1, and the roles it carries");
        let (kind, event) = signal(&record("GroupMemberAdded", &membership(true))).unwrap();
        assert_eq!(kind, TOKEN_CLAIMS_CHANGE);
        assert_eq!(event["claims"]["pim_group_added"]["id"], "g-1");
        for ordinary in ["GroupMemberRemoved", "GroupMemberAdded"] {
            assert!(signal(&record(ordinary, &membership(false))).is_none(), "{ordinary}");
        }
    }

    #[test]
    fn a_rotated_key_signs_and_the_one_before_stays_published() {
        let kids = |t: &Transmitter| -> Vec<String> {
            t.jwks()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect()
        };
        let one = Transmitter::new("https://pim.example", "suite key").unwrap();
        let two = Transmitter::at_generation("https://pim.example", "suite key", 2).unwrap();
        assert_eq!(kids(&one).len(), 1, "nothing before the first");
        assert_eq!(kids(&two).len(), 2);
        assert_ne!(kids(&two)[0], kids(&one)[0], "a new key signs");
        assert_eq!(kids(&two)[1], kids(&one)[0], "the one before stays published");
        let set = two.sign("{}", "app-id", "jti-1", 1_700_000_000_000).unwrap();
        let header = jsonwebtoken::decode_header(&set).unwrap();
        assert_eq!(header.kid.as_deref(), Some(kids(&two)[0].as_str()));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(two.jwks()["keys"][0].clone()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["app-id"]);
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(&set, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation)
            .expect("the published key verifies it");
        assert!(Transmitter::at_generation("https://pim.example", "suite key", 0).is_err());
    }

    /// After the suite's key rotates, the old key's signing key stays published and the push
    /// credentials it sealed open, and are sealed again under the new one.
    #[test]
    fn after_the_suites_key_rotates_the_old_keys_publish_and_open_while_given() {
        let old = Transmitter::new("https://pim.example", "old key").unwrap();
        let sealed = old.seal_authorization("stream-1", "Bearer s3cret").unwrap();
        let alone = Transmitter::new("https://pim.example", "new key").unwrap();
        assert!(alone.open_authorization("stream-1", &sealed).is_err());
        let rotated = alone.clone().replacing(&["old key".to_owned()]).unwrap();
        let published = rotated.jwks()["keys"].clone();
        assert_eq!(published[0], alone.jwks()["keys"][0], "the new key signs");
        assert_eq!(published[1], old.jwks()["keys"][0], "the old one stays published");
        assert_eq!(
            rotated.open_authorization("stream-1", &sealed).unwrap(),
            "Bearer s3cret"
        );
        let again = rotated
            .reseal_authorization("stream-1", &sealed)
            .unwrap()
            .expect("sealed again");
        assert_eq!(alone.open_authorization("stream-1", &again).unwrap(), "Bearer s3cret");
        assert!(rotated.reseal_authorization("stream-1", &again).unwrap().is_none());
    }

    #[test]
    fn a_receivers_push_credential_is_kept_sealed_to_its_stream() {
        let t = Transmitter::new("https://pim.example/", "suite key").unwrap();
        let sealed = t.seal_authorization("stream-1", "Bearer s3cret").unwrap();
        assert!(!sealed.contains("s3cret"), "{sealed}");
        assert_eq!(t.open_authorization("stream-1", &sealed).unwrap(), "Bearer s3cret");
        assert!(
            t.open_authorization("stream-2", &sealed).is_err(),
            "bound to its stream"
        );
        let other = Transmitter::new("https://pim.example/", "another key").unwrap();
        assert!(other.open_authorization("stream-1", &sealed).is_err());
    }

    #[test]
    fn sets_are_signed_with_a_key_of_their_own_published_as_a_jwk() {
        let t = Transmitter::new("https://pim.example/", "suite key").unwrap();
        let stream = Stream {
            audience: "app-id".into(),
            method: Method::Push,
            status: StreamStatus::Enabled,
            subjects: SubjectFormat::IssSub,
            authorization: None,
        };
        let lee = Subject {
            principal_id: "lee-id".into(),
            email: None,
        };
        let claims = claims(&record("RoleDeactivated", r#"{"reason":"revoked"}"#), &stream, &lee).unwrap();
        let set = t.sign(&claims, "app-id", "jti-1", 1_700_000_001_000).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(t.jwks()["keys"][0].clone()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["app-id"]);
        validation.set_issuer(&["https://pim.example"]);
        validation.required_spec_claims.clear();
        let decoded =
            jsonwebtoken::decode::<Value>(&set, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation)
                .unwrap();
        assert_eq!(decoded.header.typ.as_deref(), Some("secevent+jwt"));
        assert_eq!(decoded.claims["jti"], "jti-1");
        assert_eq!(decoded.claims["iat"], 1_700_000_001);
        assert_eq!(decoded.claims["sub_id"]["sub"], "lee-id");
        assert_eq!(decoded.claims["sub_id"]["iss"], pim_runtime::auth::ISSUER);
        assert_eq!(decoded.claims["events"][SESSION_REVOKED]["initiating_entity"], "admin");
        // The same suite key gives the same key after a restart; another gives another.
        assert_eq!(
            Transmitter::new("https://pim.example", "suite key").unwrap().jwks(),
            t.jwks()
        );
        assert_ne!(
            Transmitter::new("https://pim.example", "other").unwrap().jwks(),
            t.jwks()
        );
    }
}
