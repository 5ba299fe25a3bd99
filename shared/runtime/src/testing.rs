//! Helpers for tests (feature `test-util`): fresh PostgreSQL databases with unique names,
//! dropped afterwards; unique Redis stream prefixes; and polling with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use sea_orm::ConnectionTrait;

/// PostgreSQL server used by tests (`PIM_TEST_POSTGRES_URL`, default local trust auth).
pub fn postgres_server() -> String {
    std::env::var("PIM_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Redis used by tests (`PIM_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("PIM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A unique name for a test's database or stream prefix.
pub fn unique(label: &str) -> String {
    format!("pim_test_{label}_{}", uuid::Uuid::now_v7().simple())
}

/// A PostgreSQL database that exists for one test. Dropped by [`TestDatabase::drop_database`],
/// or, when a failing test never gets there, when the value is dropped.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    dropped: bool,
}

impl TestDatabase {
    pub async fn create(label: &str) -> anyhow::Result<Self> {
        let name = unique(label);
        let admin = sea_orm::Database::connect(format!("{}/postgres", postgres_server()))
            .await
            .context("connecting to PostgreSQL")?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .context("creating a test database")?;
        admin.close().await.ok();
        // Loopback, so no TLS (as in deploy/compose, whose PostgreSQL has none): tests and
        // benchmarks measure PIM, not encryption to a database on the same host.
        let url = format!("{}/{name}?sslmode=disable", postgres_server());
        Ok(Self {
            name,
            url,
            dropped: false,
        })
    }

    /// Drops the database, ending connections still open to it.
    pub async fn drop_database(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_named(&self.name).await
    }
}

async fn drop_named(name: &str) -> anyhow::Result<()> {
    let admin = sea_orm::Database::connect(format!("{}/postgres", postgres_server())).await?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    admin.close().await.ok();
    Ok(())
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // A test that failed before cleaning up: drop the database on a runtime of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(drop_named(&name)).ok()
        })
        .join();
    }
}

/// How many of `M`'s migrations come before the one named `name`: the `steps` that migrate a
/// database to as it was just before that upgrade.
pub fn steps_before<M: sea_orm_migration::MigratorTrait>(name: &str) -> u32 {
    let position = M::migrations().iter().position(|m| m.name() == name);
    position.unwrap_or_else(|| panic!("no migration named {name}")) as u32
}

/// Runs `test` on a fresh SQLite database, then on a fresh PostgreSQL one, each migrated by
/// `M` through its first `steps` migrations (all of them with `None`): a store's functions
/// tested from one body on both databases, so a dialect difference fails there, not by luck
/// in an end-to-end test.
pub async fn on_both_databases<M, F, Fut>(label: &str, steps: Option<u32>, test: F) -> anyhow::Result<()>
where
    M: sea_orm_migration::MigratorTrait,
    F: Fn(crate::db::Db) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let dir = std::env::temp_dir().join(unique(label));
    std::fs::create_dir_all(&dir)?;
    let sqlite = crate::db::connect(&crate::db::sqlite_url(&dir.join(format!("{label}.db")))).await?;
    M::up(&sqlite, steps).await?;
    let outcome = test(sqlite.clone()).await;
    sqlite.close().await.ok();
    std::fs::remove_dir_all(&dir).ok();
    outcome.map_err(|e| e.context("on SQLite"))?;

    let database = TestDatabase::create(label).await?;
    let postgres = crate::db::connect(&database.url).await?;
    M::up(&postgres, steps).await?;
    let outcome = test(postgres.clone()).await;
    postgres.close().await.ok();
    database.drop_database().await?;
    outcome.map_err(|e| e.context("on PostgreSQL"))
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a transaction on `db`'s database waits for a lock another holds (PostgreSQL;
/// on SQLite a second writer waits on the one connection, and there is nothing to see).
pub async fn a_transaction_waits_for_a_lock(db: &crate::db::Db) -> anyhow::Result<()> {
    if db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    eventually(Duration::from_secs(10), "a transaction to wait for a lock", || async {
        let waiting = crate::db::query_one(
            db,
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
            vec![],
        )
        .await?
        .map(|r| crate::db::col::<i64>(&r, "n"))
        .transpose()?
        .unwrap_or_default();
        Ok((waiting > 0).then_some(()))
    })
    .await
}

/// Log lines captured in memory (tests that check what reached the logs).
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Installs a subscriber that writes every event, at every level, here (once per process;
    /// returns None when a subscriber was installed already).
    pub fn install() -> Option<Self> {
        let logs = Self::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .ok()
            .map(|_| logs)
    }

    /// Captures this thread's events until the guard drops (for a test on one thread that
    /// must not depend on which subscriber the process installed).
    pub fn on_this_thread() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        (logs, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `PIM_EVENT_SIGNING_KEYS` for tests: a fixed key per service (derived from its name), so
/// every process of a test trusts the others, as a deployment's configuration would make it.
pub fn event_signing_keys() -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    crate::events::PUBLISHERS
        .iter()
        .map(|service| {
            let seed = Sha256::digest(format!("pim test event key: {service}"));
            format!("{service}:{}", base64::engine::general_purpose::STANDARD.encode(seed))
        })
        .collect::<Vec<_>>()
        .join(",")
}
