//! Secrets at rest: passwords and client secrets are hashed with argon2id (in a blocking
//! task: hashing is deliberately slow), and checked in constant time by the library.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;

use crate::error::{Error, Result};

pub const MIN_PASSWORD_LEN: usize = 12;
pub const MAX_PASSWORD_LEN: usize = 256;

/// A hash checked when the account does not exist, so that an unknown name costs the same
/// time as a wrong password.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash_now(&random_secret()).unwrap_or_default());

fn hash_now(secret: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a secret: {e}"))
}

pub fn check_password_rules(password: &str) -> Result<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(Error::invalid(
            "password",
            format!("must be at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    if n > MAX_PASSWORD_LEN {
        return Err(Error::invalid(
            "password",
            format!("must be at most {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

pub async fn hash(secret: &str) -> Result<String> {
    let secret = secret.to_owned();
    tokio::task::spawn_blocking(move || hash_now(&secret))
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map_err(Error::Internal)
}

/// Whether `secret` matches `hash`; with no hash (unknown account) it checks a dummy and fails.
pub async fn verify(secret: &str, hash: Option<String>) -> Result<bool> {
    let secret = secret.to_owned();
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
    let matched = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .is_ok_and(|parsed| Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(|e| Error::Internal(e.into()))?;
    Ok(known && matched)
}

/// A random secret (32 bytes, base64url): client secrets and generated passwords.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_secret_only() {
        let h = hash("correct horse battery").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", Some(h.clone())).await.unwrap());
        assert!(!verify("correct horse batterx", Some(h)).await.unwrap());
        assert!(!verify("anything at all", None).await.unwrap());
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_password_rules("short").is_err());
        assert!(check_password_rules("long enough pass").is_ok());
    }
}
