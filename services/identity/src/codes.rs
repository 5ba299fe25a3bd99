//! Recovery codes and enrolment passes: how they are made, what is kept of them (a digest
//! keyed under `PIM_SECRETS_KEY`, so a copy of the database alone cannot be tried against
//! them), and taking one. Those an earlier version kept as a plain SHA-256 are still taken.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use pim_runtime::db::now_ms;

use crate::directory::Directory;
use crate::error::Result;
use crate::store;

/// What a keyed code digest is for (recovery codes and enrolment passes).
const CODE_DIGEST: &str = "pim recovery code";

/// A recovery code or an enrolment pass as typed, read the way it was made: letters and
/// digits, upper case.
fn normal(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// What earlier versions kept of a code: a plain SHA-256, which a copy of the database alone
/// lets anyone try every 50-bit code against. Looked up still, for codes made then.
fn legacy_hash(code: &str) -> String {
    Sha256::digest(normal(code).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A recovery code: 10 characters of an alphabet without look-alikes (50 bits), `XXXXX-XXXXX`.
pub(crate) fn new_recovery_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 10];
    OsRng.fill_bytes(&mut bytes);
    let chars: String = bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

/// Enrolment passes: 20 characters of the recovery-code alphabet (100 bits), in groups of five.
pub(crate) fn new_enrollment_pass() -> String {
    let a = new_recovery_code().replace('-', "");
    let b = new_recovery_code().replace('-', "");
    format!("{}-{}-{}-{}", &a[..5], &a[5..], &b[..5], &b[5..])
}

impl Directory {
    /// What is kept of a recovery code or an enrolment pass.
    pub(crate) fn code_digest(&self, code: &str) -> String {
        self.sealer.digest(CODE_DIGEST, normal(code).as_bytes())
    }

    /// What a recovery code or enrolment pass may have been kept as: keyed under the current
    /// key or one it replaced, or (made by an earlier version) plainly hashed.
    fn kept_as(&self, code: &str) -> Vec<String> {
        let mut kept = self.sealer.digests(CODE_DIGEST, normal(code).as_bytes());
        kept.push(legacy_hash(code));
        kept
    }

    /// Takes `code` as one of the user's unused recovery codes.
    pub(crate) async fn use_recovery_code(&self, user_id: &str, code: &str) -> Result<bool> {
        let now = now_ms();
        for kept in self.kept_as(code) {
            if store::use_recovery_code(&self.db, user_id, &kept, now).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Takes a use of the user's enrolment pass `pass`: its id, end and uses left.
    pub(crate) async fn use_enrollment_pass(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        user_id: &str,
        pass: &str,
        now: i64,
    ) -> Result<Option<(String, i64, i32)>> {
        for kept in self.kept_as(pass) {
            if let Some(used) = store::use_enrollment_pass(txn, user_id, &kept, now).await? {
                return Ok(Some(used));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_read_ignoring_case_and_dashes_and_kept_keyed() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 11);
        assert_eq!(normal(&code), normal(&code.to_lowercase().replace('-', "")));
        assert_ne!(legacy_hash(&code), legacy_hash(&new_recovery_code()));
        // Kept keyed: another key (a copy of the database without it) makes another digest.
        let sealer = |key: &str| pim_runtime::sealing::Sealer::derived(key, "test");
        let digest =
            |sealer: &pim_runtime::sealing::Sealer, code: &str| sealer.digest(CODE_DIGEST, normal(code).as_bytes());
        assert_eq!(digest(&sealer("a"), &code), digest(&sealer("a"), &code.to_lowercase()));
        assert_ne!(digest(&sealer("a"), &code), digest(&sealer("b"), &code));
        assert_ne!(digest(&sealer("a"), &code), legacy_hash(&code));
        assert_eq!(new_enrollment_pass().len(), 23);
    }
}
