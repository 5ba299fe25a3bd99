//! Secrets a service must read back (identity's TOTP seeds, audit's receivers' push
//! credentials) are sealed at rest with XChaCha20-Poly1305 under a key from config
//! (`PIM_SECRETS_KEY`): a copy of the database alone does not reveal them. Each sealed value
//! is bound to its row (associated data), so it cannot be moved to another.
//!
//! The key rotates: a sealer may hold the keys it replaced (`PIM_SECRETS_KEY_PREVIOUS`),
//! which open what they sealed and check what they digested, while only the current key
//! seals; identity seals again, under the current key, whatever opened under an earlier one.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;

const NONCE: usize = 24;

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// Keys [`Sealer::digest`]: derived from the same key, never used to seal.
    digests: [u8; 32],
    /// The keys this one replaced, newest first: they open and check, never seal.
    previous: Vec<Sealer>,
}

/// A sealed value, open: `stale` when an earlier key sealed it (seal it again).
pub struct Opened {
    pub plaintext: Vec<u8>,
    pub stale: bool,
}

/// The keys `PIM_SECRETS_KEY_PREVIOUS` names: comma-separated, newest first.
pub fn replaced_keys(previous: &str) -> Vec<String> {
    previous
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The keys `current` replaced, of those `previous` names: the current key given again
/// replaces nothing (what derives from it would be there twice, its SSF key under one kid).
pub fn keys_replaced_by(current: &str, previous: &str) -> Vec<String> {
    replaced_keys(previous)
        .into_iter()
        .filter(|k| k != current.trim())
        .collect()
}

/// A key of its own for `purpose` from key material `key` (HMAC-SHA256).
fn derive(key: &[u8], purpose: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(purpose);
    mac.finalize().into_bytes().into()
}

impl Sealer {
    /// From the base64 of 32 random bytes.
    pub fn from_base64(key: &str) -> anyhow::Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| anyhow::anyhow!("PIM_SECRETS_KEY is not base64"))?;
        anyhow::ensure!(
            bytes.len() == 32,
            "PIM_SECRETS_KEY must be 32 bytes (base64), not {}",
            bytes.len()
        );
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| anyhow::anyhow!("PIM_SECRETS_KEY must be 32 bytes"))?;
        Ok(Self {
            cipher,
            digests: derive(&bytes, b"pim digest key"),
            previous: Vec::new(),
        })
    }

    /// This key, holding the keys it replaced (`PIM_SECRETS_KEY_PREVIOUS`: base64 keys,
    /// comma-separated, newest first) to open and check what they sealed and digested.
    pub fn with_previous(self, previous: &str) -> anyhow::Result<Self> {
        let previous = replaced_keys(previous)
            .iter()
            .map(|k| {
                Self::from_base64(k)
                    .map_err(|_| anyhow::anyhow!("PIM_SECRETS_KEY_PREVIOUS: each key must be base64 of 32 bytes"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(self.replacing(previous))
    }

    /// This key, holding `replaced` (the keys it replaced, newest first) to open and check
    /// what they sealed and digested.
    pub fn replacing(self, replaced: Vec<Sealer>) -> Self {
        Self {
            previous: replaced,
            ..self
        }
    }

    /// A key of its own for `purpose`, derived from a master secret of any form (HMAC-SHA256):
    /// one secret serves several purposes without one's sealed values opening under another.
    pub fn derived(master: &str, purpose: &str) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master.as_bytes()).expect("HMAC takes a key of any length");
        mac.update(b"pim sealing key\0");
        mac.update(purpose.as_bytes());
        let key = mac.finalize().into_bytes();
        Self {
            cipher: XChaCha20Poly1305::new_from_slice(&key).expect("32 bytes"),
            digests: derive(&key, b"pim digest key"),
            previous: Vec::new(),
        }
    }

    /// A keyed digest (HMAC-SHA256, hex) of `value` for `purpose`: what is kept of a short
    /// random secret (a recovery code) so that a copy of the database alone cannot be tried
    /// against it, as a plain hash could be, every guess at once.
    pub fn digest(&self, purpose: &str, value: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.digests).expect("HMAC takes a key of any length");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(value);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// [`Sealer::digest`] under this key and then each it replaced: what a value kept before a
    /// rotation may have been kept as.
    pub fn digests(&self, purpose: &str, value: &[u8]) -> Vec<String> {
        std::iter::once(self)
            .chain(&self.previous)
            .map(|key| key.digest(purpose, value))
            .collect()
    }

    /// A new random key, base64 (for `pim up`'s first start).
    pub fn new_key() -> String {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    pub fn seal(&self, plaintext: &[u8], row: &str) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: row.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing a secret failed"))?;
        Ok([nonce.as_slice(), sealed.as_slice()].concat())
    }

    /// Opens what this key, or one it replaced, sealed for `row`.
    pub fn open(&self, sealed: &[u8], row: &str) -> anyhow::Result<Vec<u8>> {
        self.open_telling(sealed, row).map(|o| o.plaintext)
    }

    /// Opens what this key, or one it replaced (then `stale`), sealed for `row`.
    pub fn open_telling(&self, sealed: &[u8], row: &str) -> anyhow::Result<Opened> {
        if let Ok(plaintext) = self.open_with_this(sealed, row) {
            return Ok(Opened {
                plaintext,
                stale: false,
            });
        }
        for earlier in &self.previous {
            if let Ok(plaintext) = earlier.open_with_this(sealed, row) {
                return Ok(Opened { plaintext, stale: true });
            }
        }
        anyhow::bail!("a sealed secret does not open: wrong PIM_SECRETS_KEY, or the row was tampered with")
    }

    fn open_with_this(&self, sealed: &[u8], row: &str) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(sealed.len() > NONCE, "sealed secret is too short");
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into()?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: row.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!("a sealed secret does not open: wrong PIM_SECRETS_KEY, or the row was tampered with")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_key_given_again_replaces_nothing() {
        assert_eq!(keys_replaced_by("new", " old , new,, older "), ["old", "older"]);
        assert!(keys_replaced_by("new", "new").is_empty());
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_row() {
        let sealer = Sealer::from_base64(&Sealer::new_key()).unwrap();
        let sealed = sealer.seal(b"totp seed", "method-1").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"totp seed"));
        assert_eq!(sealer.open(&sealed, "method-1").unwrap(), b"totp seed");
        assert!(sealer.open(&sealed, "method-2").is_err(), "bound to its row");
        let other = Sealer::from_base64(&Sealer::new_key()).unwrap();
        assert!(other.open(&sealed, "method-1").is_err(), "another key cannot open it");
        assert!(Sealer::from_base64("c2hvcnQ=").is_err());
        let (a, b) = (Sealer::derived("master", "one"), Sealer::derived("master", "two"));
        let sealed = a.seal(b"Bearer x", "stream-1").unwrap();
        assert_eq!(a.open(&sealed, "stream-1").unwrap(), b"Bearer x");
        assert!(
            b.open(&sealed, "stream-1").is_err(),
            "another purpose's key cannot open it"
        );
    }

    #[test]
    fn after_a_rotation_the_keys_replaced_open_and_check_and_only_the_new_one_seals() {
        let (old_key, new_key) = (Sealer::new_key(), Sealer::new_key());
        let old = Sealer::from_base64(&old_key).unwrap();
        let sealed = old.seal(b"totp seed", "method-1").unwrap();
        let kept = old.digest("code", b"ABCDE");
        let rotated = Sealer::from_base64(&new_key)
            .unwrap()
            .with_previous(&format!(" {}, ", old_key))
            .unwrap();
        let opened = rotated.open_telling(&sealed, "method-1").unwrap();
        assert_eq!((opened.plaintext.as_slice(), opened.stale), (&b"totp seed"[..], true));
        assert!(rotated.open(&sealed, "method-2").is_err(), "still bound to its row");
        let resealed = rotated.seal(b"totp seed", "method-1").unwrap();
        assert!(!rotated.open_telling(&resealed, "method-1").unwrap().stale);
        assert!(
            old.open(&resealed, "method-1").is_err(),
            "sealed under the new key alone"
        );
        let digests = rotated.digests("code", b"ABCDE");
        assert_eq!(digests.len(), 2);
        assert_eq!(digests[0], rotated.digest("code", b"ABCDE"), "the new key's first");
        assert_eq!(digests[1], kept, "then the replaced key's");
        let refused = Sealer::from_base64(&new_key)
            .unwrap()
            .with_previous("c2hvcnQ=")
            .err()
            .unwrap();
        assert_eq!(
            refused.to_string(),
            "PIM_SECRETS_KEY_PREVIOUS: each key must be base64 of 32 bytes"
        );
    }
}
