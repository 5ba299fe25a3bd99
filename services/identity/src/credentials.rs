//! Secrets at rest: passwords and client secrets are hashed with argon2id (on threads of
//! their own: hashing is deliberately slow), and checked in constant time by the library.

use std::sync::{Arc, LazyLock, Mutex};

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
    hashing(move || hash_now(&secret)).await?.map_err(Error::Internal)
}

/// Whether `secret` matches `hash`; with no hash (unknown account) it checks a dummy and fails.
pub async fn verify(secret: &str, hash: Option<String>) -> Result<bool> {
    let secret = secret.to_owned();
    let known = hash.is_some();
    let matched = hashing(move || {
        let hash = hash.as_deref().unwrap_or(&DUMMY_HASH);
        PasswordHash::new(hash)
            .is_ok_and(|parsed| Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok())
    })
    .await?;
    Ok(known && matched)
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads that hash, as many as the machine has cores (at most 8), fed in turn: that
/// many hashes at once at the most, and the others wait for a thread. Argon2 takes 19 MiB a
/// hash, and the allocator keeps what a thread freed for that thread's next use: on tokio's
/// blocking pool (up to 512 threads) a few hundred sign-ins, 32 at once, left `pim up`
/// holding 3 to 4 GB; on these threads it holds a hash's memory per thread.
static HASHING_THREADS: LazyLock<tokio::sync::mpsc::Sender<Job>> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    let (jobs, waiting) = tokio::sync::mpsc::channel::<Job>(threads * 4);
    let waiting = Arc::new(Mutex::new(waiting));
    for n in 0..threads {
        let waiting = Arc::clone(&waiting);
        let spawned = std::thread::Builder::new()
            .name(format!("pim-hashing-{n}"))
            .spawn(move || {
                loop {
                    let next = waiting
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .blocking_recv();
                    match next {
                        Some(job) => job(),
                        None => return,
                    }
                }
            });
        if let Err(e) = spawned {
            // With none at all, the queue's receiver is gone and each hash says so.
            tracing::error!(error = %e, "could not start a hashing thread");
        }
    }
    jobs
});

/// How long a hash waits for a place in the hashing threads' queue before the caller is told
/// to come back (a flood of sign-ins queues nobody for minutes).
const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `work` run on a hashing thread, once one is free; not at all if its caller went away
/// meanwhile.
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        if !answer.is_closed() {
            let _ = answer.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
        }
    });
    tokio::time::timeout(HASHING_WAIT, HASHING_THREADS.send(job))
        .await
        .map_err(|_| Error::Unavailable("too many sign-ins are being checked at once; try again shortly".into()))?
        .map_err(|_| Error::Internal(anyhow::anyhow!("no thread is left to hash secrets")))?;
    answered
        .await
        .map_err(|_| Error::Internal(anyhow::anyhow!("a hashing thread ended mid-hash")))?
        .map_err(|_| Error::Internal(anyhow::anyhow!("hashing a secret panicked")))
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

    /// Hashes take turns on the hashing threads, never more at once than there are threads,
    /// whatever the number of sign-ins waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_take_turns_on_their_own_threads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let hashes = (0..threads * 4).map(|_| {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            hashing(move || {
                most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let hashed = hash_now("correct horse battery");
                running.fetch_sub(1, Ordering::SeqCst);
                (std::thread::current().name().map(str::to_owned), hashed.is_ok())
            })
        });
        for done in futures::future::join_all(hashes).await {
            let (thread, hashed) = done.expect("hashed");
            assert!(hashed);
            assert!(thread.is_some_and(|name| name.starts_with("pim-hashing-")));
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=threads).contains(&most),
            "{most} hashes at once on {threads} threads"
        );
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_password_rules("short").is_err());
        assert!(check_password_rules("long enough pass").is_ok());
    }
}
