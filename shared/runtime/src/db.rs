//! Database helpers shared by every service's `store/`: connecting (PostgreSQL, or a SQLite
//! file for the all-in-one), small typed wrappers over sea-orm raw statements, and the
//! error classification done at the storage boundary.
//!
//! Queries are hand-written SQL run through sea-orm's connection: the same text runs on
//! PostgreSQL and SQLite (placeholders `$1..$n` in order of first use), and the few places
//! that differ (`FOR UPDATE SKIP LOCKED`, column types) ask [`Dialect`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, QueryResult, Statement, Value,
};

pub type Db = DatabaseConnection;

/// How long a pooled connection may sit idle before it is pinged on its next use.
const IDLE_PING: Duration = Duration::from_secs(10);

/// Connects to `url` (postgres://… or sqlite://…). A SQLite file gets one connection (WAL, a
/// busy timeout): its writers take turns, so a transaction that read first never fails to
/// write because another connection committed meanwhile (SQLITE_BUSY_SNAPSHOT). Nothing here
/// holds a transaction while waiting for another connection to the same file.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(if url.starts_with("sqlite") { 1 } else { 10 })
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        // A connection idle a while may have been dropped (a restart, a proxy): ping it before
        // use. A busy one is not pinged, which would double the round trips of every query.
        .test_before_acquire_if_idle_for(IDLE_PING)
        .sqlx_logging(false);
    // The driver's error may quote the URL, password and all: never that in a log.
    let db = Database::connect(options).await.map_err(|err| {
        let shown = without_password(url);
        let mut said = err.to_string().replace(url, &shown);
        if let Some(password) = password_in(url).filter(|p| p.len() >= 4) {
            said = said.replace(password, "***");
        }
        anyhow::anyhow!("connecting to the database {shown}: {said}")
    })?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;")
            .await
            .context("configuring sqlite")?;
    }
    Ok(db)
}

/// Folds a SQLite database's write-ahead log into its file and empties the log, so that the
/// file alone holds every commit (a backup copying the `.db` files after a stop is whole).
/// Nothing to do on PostgreSQL.
pub async fn checkpoint(db: &Db) -> Result<(), DbErr> {
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    }
    Ok(())
}

/// `url` with the password of its user info (`scheme://user:password@host`) as `***`.
pub fn without_password(url: &str) -> String {
    match password_in(url) {
        Some(password) => url.replacen(&format!(":{password}@"), ":***@", 1),
        None => url.to_owned(),
    }
}

/// The password in `url`'s user info, if it has one: up to the last `@` before the query (a
/// password may hold a `/`).
fn password_in(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let before_query = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let (user_info, _) = before_query.rsplit_once('@')?;
    user_info.split_once(':').map(|(_, password)| password)
}

/// The URL of a SQLite file, created if missing.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Milliseconds since the Unix epoch: how every service stores instants (portable, sortable).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

pub fn to_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range a protobuf
/// `Timestamp` may hold.
const TIMESTAMP_RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// The last moment a protobuf `Timestamp` holds (9999-12-31T23:59:59.999Z), in epoch
/// milliseconds: nothing may be scheduled to end later, as no one could be told of it.
pub const LATEST_MS: i64 = 253_402_300_799_999;

/// Seconds of 10,000 years: the longest a protobuf `Duration` may be.
const DURATION_MAX_SECONDS: i64 = 315_576_000_000;

/// A length's whole seconds as a protobuf `Duration` holds them: one too long for it (a typo
/// of a CLI or form, `300000000000y`) stays too long (`i64::MAX`), for the server to refuse
/// as such, never wrapping to a negative length.
pub fn whole_seconds(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A length as a client sends it: [`whole_seconds`] of it, as a protobuf `Duration`.
pub fn duration_pb(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: whole_seconds(d),
        nanos: 0,
    }
}

/// A client's length of time; else why not, for the field's INVALID_ARGUMENT: it is negative,
/// or not a valid protobuf `Duration` (over 10,000 years, or nanoseconds of a second or more).
pub fn checked_duration(d: &prost_types::Duration) -> Result<std::time::Duration, &'static str> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err("must not be negative");
    }
    if d.seconds > DURATION_MAX_SECONDS || d.nanos >= 1_000_000_000 {
        return Err("must be a protobuf Duration: at most 10,000 years, its nanos less than a second");
    }
    Ok(std::time::Duration::new(d.seconds as u64, d.nanos as u32))
}

/// What a client is told of a timestamp [`checked_timestamp`] refuses.
pub const TIMESTAMP_RULE: &str = "must be a time between 0001-01-01 and 9999-12-31 (RFC 3339)";

/// A client's timestamp in epoch milliseconds, or None when it lies outside
/// 0001-01-01…9999-12-31 or its nanoseconds are out of range (not a valid `Timestamp`).
pub fn checked_timestamp(ts: &prost_types::Timestamp) -> Option<i64> {
    (TIMESTAMP_RANGE.contains(&ts.seconds) && (0..1_000_000_000).contains(&ts.nanos)).then(|| from_timestamp(ts))
}

/// `ms` (epoch milliseconds) as RFC 3339 in UTC, the only way times appear in messages.
pub fn rfc3339(ms: i64) -> String {
    to_timestamp(ms).to_string()
}

pub fn from_timestamp(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// What differs between the two backends.
pub trait Dialect {
    fn backend(&self) -> DbBackend;
    fn blob(&self) -> &'static str {
        if self.backend() == DbBackend::Postgres {
            "BYTEA"
        } else {
            "BLOB"
        }
    }
    fn serial_pk(&self) -> &'static str {
        if self.backend() == DbBackend::Postgres {
            "BIGSERIAL PRIMARY KEY"
        } else {
            "INTEGER PRIMARY KEY AUTOINCREMENT"
        }
    }
    /// A row lock held to the end of the transaction (PostgreSQL); SQLite's one writer
    /// already serializes transactions.
    fn for_update(&self) -> &'static str {
        if self.backend() == DbBackend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        }
    }
    /// Row locks for work queues: PostgreSQL skips rows another replica holds; SQLite has
    /// one writer per file, so there is nothing to skip.
    fn skip_locked(&self) -> &'static str {
        if self.backend() == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        }
    }
}

impl<C: ConnectionTrait> Dialect for C {
    fn backend(&self) -> DbBackend {
        self.get_database_backend()
    }
}

fn statement<C: ConnectionTrait>(c: &C, sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(c.get_database_backend(), sql, values)
}

/// `text` to match literally inside a LIKE pattern written with `ESCAPE '\'` (a backslash):
/// its `%`, `_` and backslashes stand for themselves.
pub fn like_escaped(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// `$first, …`: `count` numbered placeholders, comma-separated.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a statement and returns the rows it affected.
pub async fn exec<C: ConnectionTrait>(c: &C, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
    Ok(c.execute_raw(statement(c, sql, values)).await?.rows_affected())
}

pub async fn query<C: ConnectionTrait>(c: &C, sql: &str, values: Vec<Value>) -> Result<Vec<QueryResult>, DbErr> {
    c.query_all_raw(statement(c, sql, values)).await
}

pub async fn query_one<C: ConnectionTrait>(c: &C, sql: &str, values: Vec<Value>) -> Result<Option<QueryResult>, DbErr> {
    c.query_one_raw(statement(c, sql, values)).await
}

/// Runs a query and decodes each row with `decode`, the table's one decoder.
pub async fn rows<C: ConnectionTrait, T>(
    c: &C,
    sql: &str,
    values: Vec<Value>,
    decode: fn(&QueryResult) -> Result<T, DbErr>,
) -> Result<Vec<T>, DbErr> {
    query(c, sql, values).await?.iter().map(decode).collect()
}

/// Runs a query for at most one row and decodes it with `decode`.
pub async fn row<C: ConnectionTrait, T>(
    c: &C,
    sql: &str,
    values: Vec<Value>,
    decode: fn(&QueryResult) -> Result<T, DbErr>,
) -> Result<Option<T>, DbErr> {
    query_one(c, sql, values).await?.as_ref().map(decode).transpose()
}

/// Reads a column of a raw row.
pub fn col<T: sea_orm::TryGetable>(row: &QueryResult, name: &str) -> Result<T, DbErr> {
    row.try_get("", name)
}

/// Reads a text column that names one of a domain type's values (a status, a kind), as
/// `parse` reads it; a name the service never writes is a type error, not a default.
pub fn col_named<T>(row: &QueryResult, name: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, DbErr> {
    let text: String = col(row, name)?;
    parse(&text).ok_or_else(|| DbErr::Type(format!("{name} {text:?} is not one PIM writes")))
}

/// Whether `err` is a unique-constraint violation (mapped to ALREADY_EXISTS by callers).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// A name's lookalike keys ([`crate::text::name_keys`]), as the values of the `lookalike_key` and
/// `lookalike_key_cased` columns a [`crate::events::NameKeysMigration`] adds.
pub fn name_key_values(name: &str) -> Vec<Value> {
    crate::text::name_keys(name).map(Value::from).into()
}

/// Whether `err` refused a name for reading as another's: one of its lookalike keys is held
/// already (PostgreSQL names the index, `{table}_lookalike…`; SQLite the column).
pub fn is_lookalike_violation(err: &DbErr) -> bool {
    let said = err.to_string();
    is_unique_violation(err)
        && (said.contains("_lookalike\"") || said.contains("_lookalike_cased\"") || said.contains(".lookalike_key"))
}

/// The name among `table`'s that `name` reads as (holding one of its lookalike keys), if any:
/// the same name in another case first, which a lookalike from before the keys may hold.
pub async fn name_read_as<C: ConnectionTrait>(
    c: &C,
    table: &str,
    column: &str,
    name: &str,
) -> Result<Option<String>, DbErr> {
    let sql = format!(
        "SELECT {column} AS name FROM {table} WHERE LOWER({column}) = LOWER($3) OR lookalike_key = $1 OR lookalike_key_cased = $2 \
         ORDER BY CASE WHEN LOWER({column}) = LOWER($3) THEN 0 ELSE 1 END LIMIT 1"
    );
    let mut values = name_key_values(name);
    values.push(name.into());
    let row = query_one(c, &sql, values).await?;
    row.map(|row| col(&row, "name")).transpose()
}

/// What the caller is told of text [`nul_in`] finds.
pub const NUL_REFUSED: &str = "text must not contain NUL characters";

/// Whether PostgreSQL refused text because it holds a NUL character (22021,
/// `character_not_in_repertoire`), anywhere in an error's chain: the caller's input, not a
/// fault. Fields checked at the edge say so themselves; this catches any that are not.
pub fn nul_in(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<DbErr>())
        .any(|err| sql_state(err).is_some_and(|code| code == "22021"))
}

/// Whether the database was out of reach, anywhere in an error's chain: no connection came
/// free in time, a connection could not be made or was lost, the server is shutting down or
/// takes no connections. The service is unavailable for now (UNAVAILABLE, try again), not
/// broken.
pub fn busy_in(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<DbErr>())
        .any(out_of_reach)
}

fn out_of_reach(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr::SqlxError;
    use sea_orm::sqlx::Error as E;
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(SqlxError(e)) | DbErr::Query(SqlxError(e)) => {
            matches!(
                &**e,
                E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed
            ) || sql_state(err).is_some_and(|state| {
                // Connection exceptions; the server shutting down, crashed or starting; too
                // many connections.
                state.starts_with("08") || matches!(state.as_str(), "57P01" | "57P02" | "57P03" | "53300")
            })
        }
        _ => false,
    }
}

/// The SQLSTATE the database answered `err` with, if it answered one.
fn sql_state(err: &DbErr) -> Option<String> {
    use sea_orm::RuntimeErr::SqlxError;
    let (DbErr::Exec(SqlxError(e)) | DbErr::Query(SqlxError(e)) | DbErr::Conn(SqlxError(e))) = err else {
        return None;
    };
    Some(e.as_database_error()?.code()?.into_owned())
}

/// [`conflict`] anywhere in an error's chain.
pub fn conflict_in(err: &anyhow::Error) -> Option<String> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<DbErr>().and_then(conflict))
}

/// What the caller is told when the database gave up their transaction because it met another
/// one (PostgreSQL's `deadlock_detected`, 40P01, and `serialization_failure`, 40001): nothing
/// of it was applied, and the same call made again may succeed. The one mapping of faults to
/// gRPC ([`crate::grpc::internal`]) answers these ABORTED with this message, not INTERNAL.
pub fn conflict(err: &DbErr) -> Option<String> {
    let code = sql_state(err)?;
    matches!(code.as_str(), "40P01" | "40001")
        .then(|| "this change met another one made at the same moment and was not applied; try again".to_owned())
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    /// A length too long for a protobuf `Duration` stays too long on its way (never a negative
    /// length), and the server refuses it as such.
    #[test]
    fn a_length_too_long_is_refused_as_too_long() {
        let huge = std::time::Duration::from_secs(u64::MAX);
        let sent = prost_types::Duration {
            seconds: whole_seconds(huge),
            nanos: 0,
        };
        assert_eq!(sent.seconds, i64::MAX);
        assert!(checked_duration(&sent).unwrap_err().contains("at most 10,000 years"));
        let hour = prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        };
        assert_eq!(checked_duration(&hour), Ok(std::time::Duration::from_secs(3600)));
        let negative = prost_types::Duration { seconds: -1, nanos: 0 };
        assert_eq!(checked_duration(&negative), Err("must not be negative"));
    }

    #[test]
    fn timestamps_outside_what_protobuf_allows_are_refused() {
        let at = |seconds, nanos| checked_timestamp(&prost_types::Timestamp { seconds, nanos });
        assert_eq!(at(1_700_000_000, 5_000_000), Some(1_700_000_000_005));
        assert_eq!(at(-62_135_596_800, 0), Some(-62_135_596_800_000));
        assert_eq!(at(253_402_300_799, 999_999_999), Some(253_402_300_799_999));
        assert_eq!(at(-(1 << 62), 0), None);
        assert_eq!(at(253_402_300_800, 0), None);
        assert_eq!(at(-62_135_596_801, 0), None);
        assert_eq!(at(0, -1), None);
        assert_eq!(at(0, 1_000_000_000), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PostgreSQL database that drops its connections and takes no new ones (an outage, a
    /// failover): calls answer UNAVAILABLE, to try again, not INTERNAL.
    #[tokio::test]
    async fn a_database_out_of_reach_is_unavailable_not_internal() -> anyhow::Result<()> {
        let test_db = crate::testing::TestDatabase::create("out_of_reach").await?;
        let db = connect(&test_db.url).await?;
        db.execute_unprepared("SELECT 1").await?;
        let admin = sea_orm::Database::connect(format!("{}/postgres", crate::testing::postgres_server())).await?;
        let name = &test_db.name;
        admin
            .execute_unprepared(&format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"))
            .await?;
        admin
            .execute_unprepared(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ))
            .await?;
        // The connection it had is gone, and a new one is refused.
        let mut codes = Vec::new();
        for _ in 0..2 {
            let failed = db.execute_unprepared("SELECT 1").await.expect_err("out of reach");
            codes.push(crate::grpc::internal(failed).code());
        }
        db.close().await.ok();
        admin.close().await.ok();
        test_db.drop_database().await?;
        assert_eq!(codes, [tonic::Code::Unavailable, tonic::Code::Unavailable]);
        Ok(())
    }

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(from_timestamp(&to_timestamp(ms)), ms);
        }
    }
}

#[cfg(test)]
mod url_tests {
    use super::without_password;

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        assert_eq!(
            without_password("postgres://pim:s3cretDB@db host/x?sslmode=require"),
            "postgres://pim:***@db host/x?sslmode=require"
        );
        assert_eq!(without_password("postgres://pim@db/x"), "postgres://pim@db/x");
        assert_eq!(
            without_password("postgres://pim:ab/cd+ef@db/x"),
            "postgres://pim:***@db/x"
        );
        assert_eq!(
            without_password("sqlite:///data/pim.db?mode=rwc"),
            "sqlite:///data/pim.db?mode=rwc"
        );
    }

    #[tokio::test]
    async fn a_failed_connection_says_where_but_not_the_password() {
        let failed = super::connect("postgres://pim:s3cretDB@bad host/x").await.unwrap_err();
        let said = format!("{failed:#}");
        assert!(!said.contains("s3cretDB"), "{said}");
        assert!(said.contains("postgres://pim:***@bad host/x"), "{said}");
    }
}
