//! Proof of origin for events. Each service signs what it publishes with its own Ed25519 key;
//! a consumer applies an entry of a stream only when it is signed by a key of the service that
//! owns that stream. Whoever can write to Redis can then delay or drop events, never make one
//! up, and one service's key cannot speak for another.
//!
//! The signature covers the stream name and the whole envelope (its `signature` left empty),
//! so an event copied onto another stream, or changed in any field, no longer verifies.
//! Keys are configured as `service:base64` lists ([`EventKeys::parse`]); a service may have
//! several verifying keys at once, which is how a key is rotated without downtime.

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;
use sha2::{Digest, Sha256};

use super::{Envelope, streams};

/// The services that publish events, by the name their keys are configured under.
pub const PUBLISHERS: [&str; 5] = ["identity", "assignment", "approval", "alerting", "audit"];

/// Domain separation: these bytes are never a valid signature of anything else we sign.
const CONTEXT: &[u8] = b"pim.events.v1\n";

/// The service that owns (alone publishes to) `stream`, a base stream name; None for streams
/// every consumer writes to (the dead-letter stream) or that the suite does not know.
pub fn owner(stream: &str) -> Option<&'static str> {
    match stream {
        streams::IDENTITY => Some("identity"),
        streams::ASSIGNMENT => Some("assignment"),
        streams::APPROVAL => Some("approval"),
        streams::ALERTING | streams::ALERTS => Some("alerting"),
        streams::AUDIT => Some("audit"),
        _ => None,
    }
}

/// Why an entry was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No signature at all.
    Unsigned,
    /// Signed with a key this process does not trust.
    UnknownKey(String),
    /// Signed by a trusted key of another service than the stream's owner (an event copied
    /// from another stream, or a compromised service speaking for another).
    WrongService { signer: String, owner: String },
    /// Claims a source other than the stream's owner.
    WrongSource(String),
    /// Claims a type of another service (`pim.<owner>.v1.*` only on the owner's streams).
    WrongType(String),
    /// The signature does not match the content (altered, or copied onto another stream).
    BadSignature,
    /// A stream no service owns: nothing published there is trusted.
    UnownedStream,
    /// The entry holds no envelope that decodes.
    Undecodable,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned => f.write_str("the event is not signed"),
            Self::UnknownKey(id) => write!(f, "signed with key {id:?}, which no service here has"),
            Self::WrongService { signer, owner } => {
                write!(f, "signed by {signer}, but the stream belongs to {owner}")
            }
            Self::WrongSource(source) => write!(f, "claims source {source:?}, not the stream's owner"),
            Self::WrongType(event_type) => write!(f, "claims type {event_type:?}, not one of the stream's owner"),
            Self::BadSignature => f.write_str("the signature does not match the event"),
            Self::UnownedStream => f.write_str("no service owns this stream"),
            Self::Undecodable => f.write_str("the entry holds no envelope that decodes"),
        }
    }
}

impl Rejection {
    /// A short machine-readable name (audit records, metrics).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::UnknownKey(_) => "unknown_key",
            Self::WrongService { .. } => "wrong_service",
            Self::WrongSource(_) => "wrong_source",
            Self::WrongType(_) => "wrong_type",
            Self::BadSignature => "bad_signature",
            Self::UnownedStream => "unowned_stream",
            Self::Undecodable => "undecodable",
        }
    }
}

/// The signing keys of the services this process publishes for, and the verifying keys of
/// every service whose streams it reads.
#[derive(Clone, Default)]
pub struct EventKeys {
    signing: HashMap<String, (String, SigningKey)>,
    verifying: HashMap<String, (String, VerifyingKey)>,
}

impl fmt::Debug for EventKeys {
    /// Key ids only: the signing keys are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut signing: Vec<_> = self.signing.iter().map(|(s, (id, _))| format!("{s}:{id}")).collect();
        let mut verifying: Vec<_> = self.verifying.iter().map(|(id, (s, _))| format!("{s}:{id}")).collect();
        signing.sort();
        verifying.sort();
        f.debug_struct("EventKeys")
            .field("signing", &signing)
            .field("verifying", &verifying)
            .finish()
    }
}

/// A key's id: the first 8 bytes of SHA-256 of its public half, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    Sha256::digest(key.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn entries<'a>(list: &'a str, what: &str) -> anyhow::Result<Vec<(&'a str, [u8; 32])>> {
    list.split([',', '\n', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (service, key) = entry
                .split_once(':')
                .with_context(|| format!("{what}: each entry is service:base64-key"))?;
            if !PUBLISHERS.contains(&service) {
                bail!(
                    "{what}: unknown service {service:?} (expected one of {})",
                    PUBLISHERS.join(", ")
                );
            }
            let bytes = STANDARD
                .decode(key.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("{what}: the key of {service} is not 32 bytes of base64"))?;
            Ok((service, bytes))
        })
        .collect()
}

impl EventKeys {
    /// Reads `PIM_EVENT_SIGNING_KEYS` (`service:base64-seed`, one per service this process
    /// publishes for) and `PIM_EVENT_VERIFYING_KEYS` (`service:base64-public-key`, any number
    /// per service). A process always trusts its own signing keys' public halves.
    pub fn parse(signing: Option<&str>, verifying: Option<&str>) -> anyhow::Result<Self> {
        let mut keys = Self::default();
        for (service, seed) in entries(signing.unwrap_or_default(), "PIM_EVENT_SIGNING_KEYS")? {
            if keys.signing.contains_key(service) {
                bail!(
                    "PIM_EVENT_SIGNING_KEYS: {service} has two signing keys; give it one (rotate through PIM_EVENT_VERIFYING_KEYS)"
                );
            }
            keys.add_signing(service, SigningKey::from_bytes(&seed));
        }
        for (service, public) in entries(verifying.unwrap_or_default(), "PIM_EVENT_VERIFYING_KEYS")? {
            let key = VerifyingKey::from_bytes(&public).map_err(|_| {
                anyhow::anyhow!("PIM_EVENT_VERIFYING_KEYS: the key of {service} is not an Ed25519 public key")
            })?;
            keys.verifying.insert(key_id(&key), (service.to_owned(), key));
        }
        Ok(keys)
    }

    /// New random keys for `services`, each trusted (`pim up`, `pim event-keys generate`).
    pub fn generate(services: &[&str]) -> Self {
        let mut keys = Self::default();
        for service in services {
            keys.add_signing(service, SigningKey::generate(&mut rand_core::OsRng));
        }
        keys
    }

    fn add_signing(&mut self, service: &str, key: SigningKey) {
        let public = key.verifying_key();
        let id = key_id(&public);
        self.verifying.insert(id.clone(), (service.to_owned(), public));
        self.signing.insert(service.to_owned(), (id, key));
    }

    /// Adds every key of `other` (the keys of services hosted in one process).
    pub fn merge(&mut self, other: EventKeys) {
        self.signing.extend(other.signing);
        self.verifying.extend(other.verifying);
    }

    /// The `PIM_EVENT_SIGNING_KEYS` value of these keys (secret: handle like a password).
    pub fn signing_setting(&self) -> String {
        let mut out: Vec<String> = self
            .signing
            .iter()
            .map(|(service, (_, key))| format!("{service}:{}", STANDARD.encode(key.to_bytes())))
            .collect();
        out.sort();
        out.join(",")
    }

    /// The `PIM_EVENT_VERIFYING_KEYS` value of these keys (public).
    pub fn verifying_setting(&self) -> String {
        let mut out: Vec<String> = self
            .verifying
            .values()
            .map(|(service, key)| format!("{service}:{}", STANDARD.encode(key.as_bytes())))
            .collect();
        out.sort();
        out.join(",")
    }

    /// Whether this process can sign for `service`.
    pub fn signs_for(&self, service: &str) -> bool {
        self.signing.contains_key(service)
    }

    /// Whether this process trusts at least one key of `service`.
    pub fn verifies(&self, service: &str) -> bool {
        self.verifying.values().any(|(s, _)| s == service)
    }

    fn message(stream: &str, envelope: &Envelope) -> Vec<u8> {
        let mut message = Vec::with_capacity(CONTEXT.len() + stream.len() + 1 + envelope.encoded_len());
        message.extend_from_slice(CONTEXT);
        message.extend_from_slice(stream.as_bytes());
        message.push(b'\n');
        envelope.encode(&mut message).expect("a Vec grows as needed");
        message
    }

    /// Signs `envelope` for `stream` (base name) with the key of the stream's owner.
    pub fn sign(&self, stream: &str, envelope: &mut Envelope) -> anyhow::Result<()> {
        let service = owner(stream).with_context(|| format!("no service owns stream {stream}"))?;
        let (id, key) = self
            .signing
            .get(service)
            .with_context(|| format!("no event signing key for {service} (PIM_EVENT_SIGNING_KEYS)"))?;
        envelope.key_id = id.clone();
        envelope.signature = Vec::new();
        envelope.signature = key.sign(&Self::message(stream, envelope)).to_bytes().to_vec();
        Ok(())
    }

    /// Accepts `envelope`, read from `stream` (base name), only when its owner signed it for
    /// that stream.
    pub fn verify(&self, stream: &str, envelope: &Envelope) -> Result<(), Rejection> {
        let owner = owner(stream).ok_or(Rejection::UnownedStream)?;
        if envelope.signature.is_empty() {
            return Err(Rejection::Unsigned);
        }
        let (signer, key) = self
            .verifying
            .get(&envelope.key_id)
            .ok_or_else(|| Rejection::UnknownKey(envelope.key_id.chars().take(64).collect()))?;
        if signer != owner {
            return Err(Rejection::WrongService {
                signer: signer.clone(),
                owner: owner.to_owned(),
            });
        }
        let source = format!("pim.{owner}");
        if envelope.source != source {
            return Err(Rejection::WrongSource(envelope.source.chars().take(64).collect()));
        }
        // A service's key speaks only of its own events: consumers act on the short type.
        if !envelope
            .r#type
            .strip_prefix(source.as_str())
            .is_some_and(|rest| rest.starts_with(".v1."))
        {
            return Err(Rejection::WrongType(envelope.r#type.chars().take(64).collect()));
        }
        let signature = Signature::from_slice(&envelope.signature).map_err(|_| Rejection::BadSignature)?;
        let unsigned = Envelope {
            signature: Vec::new(),
            ..envelope.clone()
        };
        key.verify(&Self::message(stream, &unsigned), &signature)
            .map_err(|_| Rejection::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventType, Source, envelope};
    use pim_proto::events::v1::UserCreated;

    /// A `UserCreated` that claims `source` (one the catalogue has, or not).
    fn event(source: &str) -> Envelope {
        let mut e = envelope(Source::Identity, EventType::UserCreated, "u-1", &UserCreated::default());
        e.source = source.into();
        e.r#type = format!("{source}.v1.UserCreated");
        e
    }

    #[test]
    fn only_the_owner_of_a_stream_signs_for_it() {
        let keys = EventKeys::generate(&PUBLISHERS);
        let mut e = event("pim.identity");
        keys.sign(streams::IDENTITY, &mut e).unwrap();
        assert_eq!(keys.verify(streams::IDENTITY, &e), Ok(()));
        // Copied onto another service's stream: the key is identity's.
        assert!(matches!(
            keys.verify(streams::ASSIGNMENT, &e),
            Err(Rejection::WrongService { .. })
        ));
        // Any change to the content breaks the signature.
        let mut altered = e.clone();
        altered.subject = "u-2".into();
        assert_eq!(keys.verify(streams::IDENTITY, &altered), Err(Rejection::BadSignature));
        let mut altered = e.clone();
        altered.data.push(0);
        assert_eq!(keys.verify(streams::IDENTITY, &altered), Err(Rejection::BadSignature));
        let mut unsigned = e.clone();
        unsigned.signature.clear();
        assert_eq!(keys.verify(streams::IDENTITY, &unsigned), Err(Rejection::Unsigned));
        assert_eq!(keys.verify(streams::DEADLETTER, &e), Err(Rejection::UnownedStream));
        // Assignment's key, claiming to be identity.
        let mut e = event("pim.identity");
        keys.sign(streams::ASSIGNMENT, &mut e).unwrap();
        assert_eq!(
            keys.verify(streams::ASSIGNMENT, &e),
            Err(Rejection::WrongSource("pim.identity".into()))
        );
        // Assignment's key, assignment's source, identity's event type.
        let mut e = event("pim.assignment");
        e.r#type = "pim.identity.v1.SessionRevoked".into();
        keys.sign(streams::ASSIGNMENT, &mut e).unwrap();
        assert_eq!(
            keys.verify(streams::ASSIGNMENT, &e),
            Err(Rejection::WrongType("pim.identity.v1.SessionRevoked".into()))
        );
    }

    #[test]
    fn a_key_nobody_configured_is_not_trusted_and_rotation_keeps_both() {
        let ours = EventKeys::generate(&["identity"]);
        let theirs = EventKeys::generate(&["identity"]);
        let mut e = event("pim.identity");
        theirs.sign(streams::IDENTITY, &mut e).unwrap();
        assert!(matches!(
            ours.verify(streams::IDENTITY, &e),
            Err(Rejection::UnknownKey(_))
        ));
        // Rotation: the consumer trusts the old and the new public key at once.
        let both = EventKeys::parse(
            None,
            Some(&format!("{},{}", ours.verifying_setting(), theirs.verifying_setting())),
        )
        .unwrap();
        assert_eq!(both.verify(streams::IDENTITY, &e), Ok(()));
        let mut old = event("pim.identity");
        ours.sign(streams::IDENTITY, &mut old).unwrap();
        assert_eq!(both.verify(streams::IDENTITY, &old), Ok(()));
    }

    #[test]
    fn settings_round_trip_and_bad_ones_are_refused() {
        let keys = EventKeys::generate(&["assignment", "audit"]);
        let again = EventKeys::parse(Some(&keys.signing_setting()), None).unwrap();
        assert_eq!(again.verifying_setting(), keys.verifying_setting());
        assert!(again.signs_for("assignment") && again.signs_for("audit") && !again.signs_for("identity"));
        assert!(!format!("{again:?}").contains(&keys.signing_setting()[11..30]));
        for bad in ["assignment", "nobody:AAAA", "assignment:not-base64!", "assignment:AAAA"] {
            assert!(EventKeys::parse(Some(bad), None).is_err(), "{bad}");
        }
        let twice = format!("{0},{0}", keys.signing_setting().split(',').next().unwrap());
        assert!(EventKeys::parse(Some(&twice), None).is_err());
    }
}
