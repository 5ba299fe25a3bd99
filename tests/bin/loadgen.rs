//! Load generator for the assignment service's hot paths, against the real suite on
//! PostgreSQL + Redis over loopback gRPC (not a timed test: it measures and prints).
//!
//!   cargo run --release -p pim-e2e --bin pim-loadgen -- check-access
//!   cargo run --release -p pim-e2e --bin pim-loadgen -- activation
//!   cargo run --release -p pim-e2e --bin pim-loadgen -- consistency
//!   cargo run --release -p pim-e2e --bin pim-loadgen -- expiry
//!   cargo run --release -p pim-e2e --bin pim-loadgen -- notify
//!   cargo run --release -p pim-e2e --bin pim-loadgen -- portal
//!
//! check-access: 100k principals with 1M active assignments (seeded by SQL), then CheckAccess
//! (without a token, and with a met one) against an empty gRPC call (grpc.health.v1 Check) and
//! an empty authenticated one, in alternating rounds of the same run: closed-loop throughput
//! (median ratio of the rounds, with its spread) and open-loop latency at a fixed rate.
//! `--by-permission`: the assignments hold 200 custom roles of 20 permissions (one a
//! wildcard) and every check asks about a permission.
//! consistency: two replicas of assignment, writes on one at a fixed rate, convergence of the
//! other without a token and its wait with one. activation: selfActivate → CheckAccess says yes, at a
//! fixed rate. expiry: many activations ending within a minute; lag from each deadline to its
//! RoleDeactivated on the Redis stream. notify: activations at a fixed rate, first without
//! webhook subscribers, then with ten (one down): CreateRequest latency in both halves, and
//! each RoleActivated's lag from creation to its delivery at the healthy receivers. portal:
//! My roles for a user with 50 eligible roles, beside GET /healthz and the page's gRPC calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use prost::Message;
use redis::AsyncCommands;
use sea_orm::ConnectionTrait;
use tokio::sync::Mutex;

use pim::ServiceName;
use pim_runtime::events::{Envelope, EventType, Source, short_type, streams};

mod portal_bench;
use pim_e2e::{TestSuite, authed};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_runtime::db::now_ms;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// CheckAccess vs an empty call: throughput and latency.
    CheckAccess {
        #[arg(long, default_value_t = 100_000)]
        principals: u64,
        #[arg(long, default_value_t = 1_000_000)]
        assignments: u64,
        /// Concurrent callers in the closed loop.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Length of each path's round.
        #[arg(long, default_value_t = 1)]
        seconds: u64,
        /// Rounds of each path, alternating: many short ones, so that the median ratio is
        /// steady on a noisy machine (its throughput swings by half from second to second).
        #[arg(long, default_value_t = 15)]
        rounds: u64,
        /// Fixed rate for the latency run (calls per second).
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// Check by permission: 200 custom roles of 20 permissions each (one a wildcard)
        /// hold the assignments, and each check asks about a permission.
        #[arg(long)]
        by_permission: bool,
    },
    /// Two replicas of assignment: assignments made and removed on one at a fixed rate; how
    /// long the other takes to give the new answer without a token (its access-change
    /// stream), and how long a CheckAccess carrying the write's token waits (never stale).
    Consistency {
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Principals the writes go round (each write toggles one).
        #[arg(long, default_value_t = 100)]
        principals: usize,
    },
    /// Webhooks under activation load: activations at a fixed rate without subscribers (the
    /// baseline), then with `--subscribers` webhook subscriptions to RoleActivated (local
    /// receivers answering 204, one of them down): activation latency in both runs, and for
    /// the healthy receivers each event's lag from its creation to its delivery, and any lost.
    Notify {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 10)]
        subscribers: usize,
    },
    /// selfActivate then CheckAccess, end to end, at a fixed rate.
    Activation {
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Audit ingest: events put on the identity stream as fast as Redis takes them (or at
    /// --rate per second); how fast the audit log (hash chain included) takes them in, and
    /// each event's lag from creation to its record.
    AuditIngest {
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        /// Events per second; 0 publishes them all at once.
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// The portal's My roles page for a user with many eligible roles, beside GET /healthz
    /// and the page's gRPC calls made directly.
    Portal {
        #[arg(long, default_value_t = 50)]
        roles: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 6)]
        rounds: u32,
    },
    /// Events that raise alerts (self-approval attempts) at a fixed rate; event → alert on
    /// `pim.alerts` (Redis) and on `StreamAlerts` (gRPC).
    AlertLatency {
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Many activations ending within a minute; deadline → RoleDeactivated lag.
    Expiry {
        #[arg(long, default_value_t = 10_000)]
        roles: u64,
        #[arg(long, default_value_t = 60)]
        within_seconds: u64,
    },
}

/// A synthetic principal's id: UUID-shaped, as every principal id is (CheckAccess refuses
/// other ids), and readable back as `n`.
fn bench_principal(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

const ROLES: [&str; 10] = [
    "62e90394-69f5-4237-9190-012177145e10",
    "e8611ab8-c189-46e8-94e1-60213ab1f814",
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
    "c4e39bd9-1100-46d3-8c65-fb160da0071f",
    "fe930be7-5e62-47db-91af-98c3a49a38b1",
    "fdd7a751-b60b-444a-984c-02652fe8fa1c",
    "194ae4cb-b126-40b2-bd5b-6091b380977d",
    "5d6b6bb7-de71-4623-b4af-96380a352509",
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
    "29232cdf-9323-42fd-ade2-1d097af3e4de",
];
const EXCHANGE_ADMINISTRATOR: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";

/// xorshift: cheap, deterministic choice of principals (not for anything secret).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, mut micros: Vec<u64>, elapsed: Duration) {
    micros.sort_unstable();
    println!(
        "{name:<28} n={:<8} {:>9.0}/s  p50={:.3} ms  p99={:.3} ms  max={:.3} ms",
        micros.len(),
        micros.len() as f64 / elapsed.as_secs_f64(),
        percentile(&micros, 0.50),
        percentile(&micros, 0.99),
        percentile(&micros, 1.0),
    );
}

/// Runs `call` from `concurrency` tasks for `seconds`; returns (latencies µs, elapsed).
async fn closed_loop<F, Fut>(concurrency: usize, seconds: u64, call: F) -> anyhow::Result<(Vec<u64>, Duration)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let counter = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (call, counter) = (call.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                call(n).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}

/// Starts `call` at a fixed `rate` for `seconds` (the sender never waits for answers).
/// Latency counts from when each call was sent; how far the sender fell behind its schedule
/// is printed too. The sender is a thread of its own sleeping to each call's instant: tokio's
/// timer has millisecond granularity, so a sender on it would release calls in bursts (five
/// at a time at 5k/s) and measure its own queueing rather than a steady rate.
async fn open_loop<F, Fut>(rate: u64, seconds: u64, call: F) -> anyhow::Result<(Vec<u64>, Duration)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let total = rate * seconds;
    let start = Instant::now();
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let runtime = tokio::runtime::Handle::current();
    let sender_lat = lat.clone();
    let (behind, tasks) = tokio::task::spawn_blocking(move || {
        let mut behind = Duration::ZERO;
        let mut tasks = Vec::with_capacity(total as usize);
        for n in 0..total {
            let scheduled = start + Duration::from_nanos(n * 1_000_000_000 / rate);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            behind = behind.max(scheduled.elapsed());
            let (call, lat) = (call.clone(), sender_lat.clone());
            tasks.push(runtime.spawn(async move {
                let sent = Instant::now();
                call(n).await?;
                lat.lock().await.push(sent.elapsed().as_micros() as u64);
                anyhow::Ok(())
            }));
        }
        (behind, tasks)
    })
    .await?;
    println!(
        "  (sender at most {:.1} ms behind schedule)",
        behind.as_secs_f64() * 1000.0
    );
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let lat = std::mem::take(&mut *lat.lock().await);
    Ok((lat, elapsed))
}

/// The suite on PostgreSQL + Redis, with production's claim time (the tests' is short, so
/// their retries come quickly, and would have every consumer look for stale entries often).
async fn bench_suite() -> anyhow::Result<TestSuite> {
    TestSuite::postgres_with(None, &[("PIM_CLAIM_IDLE_MS", "30000".into())]).await
}

/// Waits until every consumer group of the suite's streams has read and acknowledged every
/// entry (twice in a row, 100 ms apart), so work left from a warm-up is not measured as part
/// of the run.
async fn sql(ts: &TestSuite, statement: &str) -> anyhow::Result<()> {
    let url = ts
        .database_url(ServiceName::Assignment)
        .context("assignment database")?;
    let db = pim_runtime::db::connect(url).await?;
    db.execute_unprepared(statement).await?;
    db.close().await?;
    Ok(())
}

fn roles_array() -> String {
    format!(
        "ARRAY[{}]",
        ROLES.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(",")
    )
}

/// What the check-access scenario seeds and asks.
struct Load {
    principals: u64,
    assignments: u64,
    by_permission: bool,
}

/// Custom roles of the by-permission load, and the permissions each holds.
const CUSTOM_ROLES: u64 = 200;
/// Role-assignable groups whose membership one grant in ten is (PIM for Groups): as many as
/// the seed's group expression `((g / principals) % 10) * 100 + (g / 10) % 100` reaches.
const JIT_GROUPS: u64 = 1000;
const PERMISSIONS_PER_ROLE: u64 = 20;

/// The permission `n` of custom role `role`: the last is asked under the role's wildcard.
fn bench_permission(role: u64, n: u64) -> String {
    if n + 1 == PERMISSIONS_PER_ROLE {
        format!("app.bench{}/r{role}/w/approve", role % 10)
    } else {
        format!("app.bench{}/r{role}/p{n}", role % 10)
    }
}

async fn check_access(load: Load, concurrency: usize, seconds: u64, rounds: u64, rate: u64) -> anyhow::Result<()> {
    let Load {
        principals,
        assignments,
        by_permission,
    } = load;
    let ts = bench_suite().await?;
    let t = Instant::now();
    let role_of = if by_permission {
        // Each role: 19 permissions by name and one wildcard; a principal's ten grants hold
        // ten different roles.
        sql(
            &ts,
            &format!(
                "INSERT INTO role_definitions (id, name, description, permissions, built_in, privileged, created_at) \
                 SELECT 'bench-role-' || r, 'Bench role ' || r, '', \
                   (SELECT string_agg('app.bench' || (r % 10) || '/r' || r || '/p' || j, ' ') FROM generate_series(0, {last_named}) AS j) \
                   || ' app.bench' || (r % 10) || '/r' || r || '/w/*', FALSE, FALSE, 0 \
                 FROM generate_series(0, {last_role}) AS r",
                last_named = PERMISSIONS_PER_ROLE - 2,
                last_role = CUSTOM_ROLES - 1
            ),
        )
        .await?;
        format!("'bench-role-' || (((g / {principals}) * 7 + g) % {CUSTOM_ROLES})")
    } else {
        format!("({})[((g / {principals}) % 10) + 1]", roles_array())
    };
    // One grant in ten is a just-in-time group membership (PIM for Groups): the principal
    // holds Group Member of one of JIT_GROUPS role-assignable groups (a different one for
    // each of its grants), each group holding a role.
    sql(
        &ts,
        &format!(
            "INSERT INTO assignments (id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, status, origin, announced, request_id, created_by, created_at) \
             SELECT 'bench-a-' || g, 'active', '00000000-0000-4000-8000-' || lpad((g % {principals})::text, 12, '0'), 'user', 'bench', \
               CASE WHEN g % 10 = 9 THEN '{member}' ELSE {role_of} END, \
               CASE WHEN g % 10 = 9 THEN '/groups/bench-g-' || (((g / {principals}) % 10) * 100 + (g / 10) % 100) ELSE '/s' || (g % 7) END, \
               0, CAST(NULL AS BIGINT), 'active', 'admin', TRUE, 'bench', 'bench', 0 \
             FROM generate_series(0, {last}) AS g \
             UNION ALL \
             SELECT 'bench-ga-' || g, 'active', 'bench-g-' || g, 'group', 'bench', {role_of}, '/s' || (g % 7), 0, CAST(NULL AS BIGINT), 'active', 'admin', TRUE, 'bench', 'bench', 0 \
             FROM generate_series(0, {last_group}) AS g",
            member = pim_proto::catalogue::GROUP_MEMBER,
            last = assignments - 1,
            last_group = JIT_GROUPS - 1,
        ),
    )
    .await?;
    // Statistics and the visibility map now, as an operator's bulk load would end, rather
    // than autovacuum doing it in the middle of the measurement.
    sql(&ts, "VACUUM ANALYZE assignments").await?;
    println!(
        "seeded {assignments} assignments for {principals} principals in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let ts = ts.restart().await?;
    println!(
        "restart with the access index loaded in {:.1} s: {:?} (principals, grants)",
        t.elapsed().as_secs_f64(),
        ts.suite.assignment().map(|a| a.access_index_size())
    );
    let token = Arc::new(ts.admin_token().await?);
    let channel = ts.channel.clone();

    let health = {
        let channel = channel.clone();
        move |_n: u64| {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            async move {
                client
                    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                    .await?;
                anyhow::Ok(())
            }
        }
    };
    // The cheapest authenticated call: a role looked up in memory by id.
    // Every call carries the same header, built once, as a long-lived client's would be.
    let header = Arc::new(pim_e2e::bearer(&token));
    let authenticated = {
        let (channel, header) = (channel.clone(), header.clone());
        move |_n: u64| {
            let mut client = RoleServiceClient::new(channel.clone());
            let request = pim_e2e::with_bearer(
                &header,
                apb::GetRoleDefinitionRequest {
                    role: EXCHANGE_ADMINISTRATOR.into(),
                },
            );
            async move {
                client.get_role_definition(request).await?;
                anyhow::Ok(())
            }
        }
    };
    // A write's consistency token, already applied here: what a check carrying one costs.
    let writer = ts.create_user(&token, "bench-writer").await?;
    let written = AssignmentServiceClient::new(channel.clone())
        .create_request(authed(
            &token,
            pim_e2e::assign_for_an_hour(apb::AssignmentKind::Active, &writer.id, EXCHANGE_ADMINISTRATOR),
        ))
        .await?
        .into_inner()
        .consistency_token;
    let check = |fresh: String| {
        let (channel, header) = (channel.clone(), header.clone());
        move |n: u64| {
            let mut client = AccessServiceClient::new(channel.clone());
            let mut rng = Rng(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let principal = bench_principal(rng.next() % principals);
            let target = if by_permission {
                let permission = bench_permission(rng.next() % CUSTOM_ROLES, rng.next() % PERMISSIONS_PER_ROLE);
                apb::check_access_request::Target::Permission(permission)
            } else {
                apb::check_access_request::Target::RoleId(ROLES[(rng.next() % 10) as usize].into())
            };
            let request = pim_e2e::with_bearer(
                &header,
                apb::CheckAccessRequest {
                    principal_id: principal,
                    target: Some(target),
                    scope: format!("/s{}/rg", rng.next() % 7),
                    at_least_as_fresh: fresh.clone(),
                },
            );
            async move {
                client.check_access(request).await?;
                anyhow::Ok(())
            }
        }
    };
    let (check, check_fresh) = (check(String::new()), check(written));
    // Warm up every path.
    closed_loop(concurrency, 1, health.clone()).await?;
    closed_loop(concurrency, 1, authenticated.clone()).await?;
    closed_loop(concurrency, 1, check.clone()).await?;
    closed_loop(concurrency, 1, check_fresh.clone()).await?;
    // Rounds alternate the paths, so a noisy moment on the machine falls on all of them; the
    // ratio of each round is computed within it, and their median reported with its spread.
    println!("closed loop, {concurrency} concurrent callers, {rounds} alternating rounds of {seconds} s:");
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut latencies: [Vec<u64>; 4] = Default::default();
    let mut elapsed = [Duration::ZERO; 4];
    for _ in 0..rounds {
        for (i, (lat, el)) in [
            closed_loop(concurrency, seconds, health.clone()).await?,
            closed_loop(concurrency, seconds, authenticated.clone()).await?,
            closed_loop(concurrency, seconds, check.clone()).await?,
            closed_loop(concurrency, seconds, check_fresh.clone()).await?,
        ]
        .into_iter()
        .enumerate()
        {
            rates[i].push(lat.len() as f64 / el.as_secs_f64());
            latencies[i].extend(lat);
            elapsed[i] += el;
        }
    }
    const PATHS: [&str; 4] = [
        "  empty call (health)",
        "  empty authenticated call",
        "  CheckAccess",
        "  CheckAccess, token met",
    ];
    for (i, name) in PATHS.iter().enumerate() {
        report(name, std::mem::take(&mut latencies[i]), elapsed[i]);
    }
    let ratio = |of: usize, to: usize| {
        let mut r: Vec<f64> = rates[of].iter().zip(&rates[to]).map(|(a, b)| 100.0 * a / b).collect();
        r.sort_by(f64::total_cmp);
        (r[r.len() / 2], r[0], r[r.len() - 1])
    };
    for (of, to) in [(2, 0), (3, 0), (2, 1), (3, 1)] {
        let (median, low, high) = ratio(of, to);
        println!(
            "  {} throughput = {median:.0} % of {} (median of {rounds} rounds; {low:.0}–{high:.0} %)",
            PATHS[of].trim(),
            PATHS[to].trim()
        );
    }
    println!("open loop at {rate}/s, {rounds} alternating rounds of {seconds} s:");
    let mut latencies: [Vec<u64>; 3] = Default::default();
    let mut elapsed = [Duration::ZERO; 3];
    for _ in 0..rounds {
        for (i, (lat, el)) in [
            open_loop(rate, seconds, health.clone()).await?,
            open_loop(rate, seconds, check.clone()).await?,
            open_loop(rate, seconds, check_fresh.clone()).await?,
        ]
        .into_iter()
        .enumerate()
        {
            latencies[i].extend(lat);
            elapsed[i] += el;
        }
    }
    for (i, name) in [PATHS[0], PATHS[2], PATHS[3]].iter().enumerate() {
        report(name, std::mem::take(&mut latencies[i]), elapsed[i]);
    }
    ts.stop().await
}

/// When each (principal, granted?) state appeared on a replica's access-change stream.
type Sightings = HashMap<(String, bool), Vec<Instant>>;

/// One write of the consistency scenario, as the writer saw it.
struct Write {
    started: Instant,
    answered: Instant,
    principal: String,
    granted: bool,
    write_us: u64,
    /// From the write's answer to the answer of B's CheckAccess carrying its token.
    wait_us: u64,
}

async fn consistency(rate: u64, seconds: u64, principals: usize) -> anyhow::Result<()> {
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

    let replicas = pim_e2e::Replicas::start(2).await?;
    let admin = Arc::new(replicas.admin.clone());
    let mut directory = DirectoryServiceClient::new(replicas.identity().await?);
    let mut ids = Vec::with_capacity(principals);
    for n in 0..principals {
        let user = ipb::CreateUserRequest {
            user_name: format!("bench-{n}"),
            password: pim_e2e::password_of("bench"),
            ..Default::default()
        };
        ids.push(directory.create_user(authed(&admin, user)).await?.into_inner().id);
    }
    let (a, b) = (replicas.assignment(0).await?, replicas.assignment(1).await?);
    // When each (principal, granted?) change reached B's index, as B's change stream tells it.
    let seen: Arc<std::sync::Mutex<Sightings>> = Arc::default();
    let mut watch = AccessServiceClient::new(b.clone())
        .watch_access_changes(authed(&admin, apb::WatchAccessChangesRequest::default()))
        .await?
        .into_inner();
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(change)) = watch.message().await {
                let at = Instant::now();
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry((change.principal_id, change.active))
                    .or_default()
                    .push(at);
            }
        });
    }
    // One write at a time per principal: each toggles its principal's grant.
    let principals: Arc<Vec<Mutex<(String, bool)>>> =
        Arc::new(ids.into_iter().map(|id| Mutex::new((id, false))).collect());
    let results: Arc<std::sync::Mutex<Vec<Write>>> = Arc::default();
    let stale = Arc::new(AtomicU64::new(0));
    let write = {
        let (principals, results, stale, admin) = (principals.clone(), results.clone(), stale.clone(), admin.clone());
        move |n: u64| {
            let (principals, results, stale, admin) =
                (principals.clone(), results.clone(), stale.clone(), admin.clone());
            let (a, b) = (a.clone(), b.clone());
            async move {
                let mut held = principals[n as usize % principals.len()].lock().await;
                let (principal, granted) = (held.0.clone(), !held.1);
                let mut request =
                    pim_e2e::assign_for_an_hour(apb::AssignmentKind::Active, &principal, EXCHANGE_ADMINISTRATOR);
                if !granted {
                    request.action = apb::RequestAction::AdminRemove as i32;
                }
                let started = Instant::now();
                let token = AssignmentServiceClient::new(a)
                    .create_request(authed(&admin, request))
                    .await?
                    .into_inner()
                    .consistency_token;
                let answered = Instant::now();
                let write_us = (answered - started).as_micros() as u64;
                let mut check = authed(
                    &admin,
                    apb::CheckAccessRequest {
                        principal_id: principal.clone(),
                        target: Some(apb::check_access_request::Target::RoleId(EXCHANGE_ADMINISTRATOR.into())),
                        scope: "/".into(),
                        at_least_as_fresh: token,
                    },
                );
                check.set_timeout(Duration::from_secs(5));
                let allowed = AccessServiceClient::new(b)
                    .check_access(check)
                    .await?
                    .into_inner()
                    .allowed;
                let wait_us = answered.elapsed().as_micros() as u64;
                if allowed != granted {
                    stale.fetch_add(1, Ordering::Relaxed);
                }
                held.1 = granted;
                results.lock().unwrap_or_else(|e| e.into_inner()).push(Write {
                    started,
                    answered,
                    principal,
                    granted,
                    write_us,
                    wait_us,
                });
                anyhow::Ok(())
            }
        }
    };
    println!(
        "{} principals, writes on replica A at {rate}/s for {seconds} s, reads on replica B:",
        principals.len()
    );
    let (_, elapsed) = open_loop(rate, seconds, write).await?;
    // Every change must reach B's stream; give the last ones a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    let (mut lags, mut from_start) = (Vec::with_capacity(results.len()), Vec::with_capacity(results.len()));
    let mut missing = 0;
    for w in &results {
        // The first time B showed this principal in this state after the write began (writes
        // to one principal are one at a time, so an earlier one's change came before).
        let at = loop {
            let first = seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(w.principal.clone(), w.granted))
                .and_then(|times| times.iter().find(|t| **t >= w.started).copied());
            if first.is_some() || Instant::now() > deadline {
                break first;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        match at {
            // Zero when B had it before A answered.
            Some(at) => {
                lags.push(at.saturating_duration_since(w.answered).as_micros() as u64);
                from_start.push(at.saturating_duration_since(w.started).as_micros() as u64);
            }
            None => missing += 1,
        }
    }
    report(
        "  write on A (CreateRequest)",
        results.iter().map(|w| w.write_us).collect(),
        elapsed,
    );
    report("  B converged after A answered", lags, elapsed);
    report("  B converged after A was asked", from_start, elapsed);
    report(
        "  B CheckAccess with token",
        results.iter().map(|w| w.wait_us).collect(),
        elapsed,
    );
    println!(
        "  stale answers with a token: {} of {}; changes B never showed: {missing}",
        stale.load(Ordering::Relaxed),
        results.len()
    );
    replicas.stop().await
}

/// `total` synthetic principals, each eligible for Exchange Administrator (seeded by SQL), and
/// a token for each, stepped up with MFA.
async fn eligible_principals(ts: &TestSuite, total: u64) -> anyhow::Result<Arc<Vec<String>>> {
    sql(
        ts,
        &format!(
            "INSERT INTO assignments (id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, status, origin, announced, request_id, created_by, created_at) \
             SELECT 'bench-e-' || g, 'eligible', '00000000-0000-4000-8000-' || lpad(g::text, 12, '0'), 'user', 'bench', '{EXCHANGE_ADMINISTRATOR}', '/', 0, NULL, 'active', 'admin', TRUE, 'bench', 'bench', 0 \
             FROM generate_series(0, {last}) AS g",
            last = total - 1
        ),
    )
    .await?;
    let identity = ts.suite.identity().context("identity")?.keystore();
    let mut tokens = Vec::with_capacity(total as usize);
    for i in 0..total {
        let subject = pim_identity::TokenSubject {
            principal_id: bench_principal(i),
            kind: pim_proto::common::v1::PrincipalKind::User,
            name: format!("bench{i}"),
            amr: vec!["pwd".into(), "otp".into()],
            session_id: "bench".into(),
            mfa_at: Some(now_ms() / 1000),
            pending: None,
        };
        tokens.push(identity.issue(&subject, Duration::from_secs(3600))?.token);
    }
    Ok(Arc::new(tokens))
}

async fn activation(rate: u64, seconds: u64) -> anyhow::Result<()> {
    let ts = bench_suite().await?;
    let total = rate * seconds + rate;
    let tokens = eligible_principals(&ts, total).await?;
    let channel = ts.channel.clone();
    // How long CreateRequest itself took, within each activation.
    let create_lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let activate = {
        let create_lat = create_lat.clone();
        move |n: u64| {
            let (channel, tokens, create_lat) = (channel.clone(), tokens.clone(), create_lat.clone());
            async move {
                let sent = Instant::now();
                let token = &tokens[n as usize];
                let request = pim_e2e::activate_for_an_hour(EXCHANGE_ADMINISTRATOR, "load test");
                AssignmentServiceClient::new(channel.clone())
                    .create_request(authed(token, request))
                    .await?;
                create_lat
                    .lock()
                    .expect("latencies")
                    .push(sent.elapsed().as_micros() as u64);
                let allowed = AccessServiceClient::new(channel)
                    .check_access(authed(
                        token,
                        apb::CheckAccessRequest {
                            principal_id: bench_principal(n),
                            target: Some(apb::check_access_request::Target::RoleId(EXCHANGE_ADMINISTRATOR.into())),
                            scope: "/".into(),
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner()
                    .allowed;
                anyhow::ensure!(allowed, "activation {n} did not grant access");
                Ok(())
            }
        }
    };
    // Warm-up on the last principals (each activates once), measured run on the others. Half
    // a second at the rate, so the connection pools are as full as the run will need.
    let warm_up = (rate / 2).max(1);
    let warm: Vec<_> = (0..warm_up)
        .map(|i| tokio::spawn(activate.clone()(total - 1 - i)))
        .collect();
    for w in warm {
        w.await??;
    }
    ts.settle().await?;
    create_lat.lock().expect("latencies").clear();
    let (lat, el) = open_loop(rate, seconds, activate).await?;
    println!(
        "activation, selfActivate → CheckAccess allowed, open loop at {rate}/s for {seconds} s (PostgreSQL + Redis):"
    );
    report("  activation end to end", lat, el);
    let create_lat = std::mem::take(&mut *create_lat.lock().expect("latencies"));
    report("  of which CreateRequest", create_lat, el);
    ts.stop().await
}

/// A webhook receiver on the loopback: answers 204 to every POST and records, for each
/// RoleActivated event, how long after its creation (the CloudEvent's `time`) it arrived.
async fn receiver(lags: Arc<std::sync::Mutex<Vec<u64>>>) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let lags = lags.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 16 * 1024];
                loop {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    let arrived = now_ms();
                    if let Ok(event) = serde_json::from_str::<serde_json::Value>(body)
                        && event["type"].as_str().is_some_and(|t| t.ends_with("RoleActivated"))
                        && let Some(created) = event["time"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok())
                    {
                        let created = created
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(arrived);
                        lags.lock()
                            .expect("lags")
                            .push(((arrived - created).max(0) as u64) * 1000);
                    }
                    // Kept open for the next request (HTTP/1.1 keep-alive).
                    let consumed = head.len() + 4 + length;
                    if socket
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    request.drain(..consumed.min(request.len()));
                }
            });
        }
    });
    Ok(url)
}

async fn notify(rate: u64, seconds: u64, subscribers: usize) -> anyhow::Result<()> {
    use pim_proto::audit::v1 as aupb;
    use pim_proto::audit::v1::webhook_service_client::WebhookServiceClient;
    let ts = bench_suite().await?;
    let per_run = rate * seconds;
    let total = 2 * per_run + rate;
    let tokens = eligible_principals(&ts, total).await?;
    let channel = ts.channel.clone();
    let activate = move |n: u64| {
        let (channel, tokens) = (channel.clone(), tokens.clone());
        async move {
            let request = pim_e2e::activate_for_an_hour(EXCHANGE_ADMINISTRATOR, "load test");
            AssignmentServiceClient::new(channel)
                .create_request(authed(&tokens[n as usize], request))
                .await?;
            Ok(())
        }
    };
    let warm: Vec<_> = (0..rate.max(1))
        .map(|i| tokio::spawn(activate.clone()(total - 1 - i)))
        .collect();
    for w in warm {
        w.await??;
    }
    ts.settle().await?;
    let (baseline, el) = open_loop(rate, seconds, activate.clone()).await?;
    println!(
        "notify: selfActivate at {rate}/s for {seconds} s (PostgreSQL + Redis), then with {subscribers} webhook subscribers (one down):"
    );
    report("  CreateRequest, no webhooks", baseline, el);
    ts.settle().await?;

    let admin = ts.admin_token().await?;
    let mut hooks = WebhookServiceClient::new(ts.channel.clone());
    let mut healthy = Vec::new();
    for i in 0..subscribers {
        let url = if i + 1 == subscribers {
            "http://127.0.0.1:9/down".to_owned()
        } else {
            let lags = Arc::new(std::sync::Mutex::new(Vec::new()));
            let url = receiver(lags.clone()).await?;
            healthy.push(lags);
            url
        };
        hooks
            .create_subscription(authed(
                &admin,
                aupb::CreateSubscriptionRequest {
                    subscription: Some(aupb::Subscription {
                        url,
                        event_types: vec!["RoleActivated".into()],
                        ..Default::default()
                    }),
                },
            ))
            .await?;
    }
    let offset = per_run;
    let (with_hooks, el) = open_loop(rate, seconds, move |n| activate.clone()(n + offset)).await?;
    report("  CreateRequest, webhooks on", with_hooks, el);
    let drained = Instant::now();
    let expected = per_run as usize;
    loop {
        let least = healthy
            .iter()
            .map(|l| l.lock().expect("lags").len())
            .min()
            .unwrap_or(expected);
        if least >= expected || drained.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut all = Vec::new();
    let mut lost = 0;
    for lags in &healthy {
        let lags = lags.lock().expect("lags");
        lost += expected.saturating_sub(lags.len());
        all.extend(lags.iter().copied());
    }
    println!(
        "  drained {:.1} s after the run; {} deliveries to {} healthy receivers, {lost} missing",
        drained.elapsed().as_secs_f64(),
        all.len(),
        healthy.len()
    );
    report("  event → delivery (healthy)", all, el);
    ts.stop().await
}

async fn audit_ingest(events: u64, rate: u64) -> anyhow::Result<()> {
    use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
    use pim_runtime::events::{Pending, Publisher, RedisPublisher, envelope};
    let ts = bench_suite().await?;
    let admin = ts.admin_token().await?;
    let mut audit = AuditServiceClient::new(ts.channel.clone());
    let head = |audit: &mut AuditServiceClient<tonic::transport::Channel>| {
        let request = authed(&admin, pim_proto::audit::v1::GetChainHeadRequest {});
        let mut audit = audit.clone();
        async move { anyhow::Ok(audit.get_chain_head(request).await?.into_inner().sequence) }
    };
    // Let the bootstrap's own events land first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start_sequence = head(&mut audit).await?;
    let publisher = RedisPublisher::connect(&pim_runtime::testing::redis_url(), &ts.stream_prefix).await?;
    // Identity's key signs them, as identity's relay would.
    let keys = pim_e2e::event_keys();
    let start = Instant::now();
    // At a rate: one batch every 20 ms; otherwise batches of 500 back to back.
    let batch_size = if rate == 0 { 500 } else { (rate / 50).max(1) as usize };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in (0..events).collect::<Vec<_>>().chunks(batch_size) {
        if rate > 0 {
            tick.tick().await;
        }
        let batch: Vec<Pending> = chunk
            .iter()
            .map(|i| {
                let e = pim_proto::events::v1::UserCreated {
                    actor: None,
                    user_id: format!("bench-{i}"),
                    user_name: format!("bench{i}"),
                    display_name: "bench".into(),
                    email: String::new(),
                };
                let mut envelope = envelope(Source::Identity, EventType::UserCreated, &e.user_id, &e);
                keys.sign(streams::IDENTITY, &mut envelope)?;
                Ok(Pending {
                    id: String::new(),
                    stream: streams::IDENTITY.into(),
                    envelope,
                    attempts: 0,
                    applied_here: false,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let published = publisher.publish_all(&batch).await;
        anyhow::ensure!(
            published.count == batch.len(),
            "publishing failed: {:?}",
            published.error
        );
    }
    let published = start.elapsed();
    let target = start_sequence + events as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while head(&mut audit).await? < target {
        anyhow::ensure!(Instant::now() < deadline, "audit did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = start.elapsed();
    println!(
        "audit ingest (PostgreSQL + Redis): {events} events published in {:.1} s ({}); all in the hash-chained log after {:.1} s = {:.0} events/s",
        published.as_secs_f64(),
        if rate == 0 {
            "at once".to_owned()
        } else {
            format!("at {rate}/s")
        },
        drained.as_secs_f64(),
        events as f64 / drained.as_secs_f64()
    );
    // Lag: from the event's creation (envelope time) to its record's insert.
    let db = pim_runtime::db::connect(ts.database_url(ServiceName::Audit).context("audit database")?).await?;
    let row = pim_runtime::db::query_one(
        &db,
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ingested_at - time) AS p50, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ingested_at - time) AS p99, \
                MAX(ingested_at - time) AS max \
         FROM audit_records WHERE target_id LIKE 'bench-%'",
        vec![],
    )
    .await?
    .context("lag figures")?;
    println!(
        "lag from event creation to audit record: p50 {:.0} ms, p99 {:.0} ms, max {} ms",
        pim_runtime::db::col::<f64>(&row, "p50")?,
        pim_runtime::db::col::<f64>(&row, "p99")?,
        pim_runtime::db::col::<i64>(&row, "max")?
    );
    db.close().await?;
    ts.stop().await
}

async fn expiry(roles: u64, within_seconds: u64) -> anyhow::Result<()> {
    let ts = bench_suite().await?;
    let base = now_ms() + 5_000;
    let spread = within_seconds * 1000;
    sql(
        &ts,
        &format!(
            "INSERT INTO assignments (id, kind, principal_id, principal_kind, principal_name, role_id, scope, start_at, end_at, status, origin, announced, request_id, created_by, created_at) \
             SELECT 'bench-x-' || g, 'active', '00000000-0000-4000-8000-' || lpad(g::text, 12, '0'), 'user', 'bench', '{EXCHANGE_ADMINISTRATOR}', '/', 0, {base} + (g * {spread}) / {roles}, 'active', 'activation', TRUE, 'bench', 'bench', 0 \
             FROM generate_series(0, {last}) AS g",
            last = roles - 1
        ),
    )
    .await?;
    let ts = ts.restart().await?;
    let mut redis = redis::Client::open(pim_runtime::testing::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let key = format!("{}{}", ts.stream_prefix, streams::ASSIGNMENT);
    let mut last = "0-0".to_owned();
    let mut lags = Vec::with_capacity(roles as usize);
    let deadline = Instant::now() + Duration::from_millis(spread + 30_000);
    while (lags.len() as u64) < roles && Instant::now() < deadline {
        // Shorter than the connection's 500 ms response timeout.
        let options = redis::streams::StreamReadOptions::default().count(1000).block(200);
        let reply: Option<redis::streams::StreamReadReply> = redis.xread_options(&[&key], &[&last], &options).await?;
        let seen = now_ms();
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            last = entry.id.clone();
            let Some(envelope) = entry
                .get::<Vec<u8>>("ce")
                .and_then(|b| Envelope::decode(b.as_slice()).ok())
            else {
                continue;
            };
            if short_type(&envelope) != "RoleDeactivated" {
                continue;
            }
            let event = pim_proto::events::v1::RoleDeactivated::decode(envelope.data.as_slice())?;
            let g: u64 = event.assignment_id.trim_start_matches("bench-x-").parse()?;
            let end = base + (g * spread / roles) as i64;
            lags.push(((seen - end).max(0) as u64) * 1000);
        }
    }
    println!(
        "expiry: {} of {roles} activations ending within {within_seconds} s; deadline → RoleDeactivated read from Redis:",
        lags.len()
    );
    report("  expiry lag", lags, Duration::from_millis(spread));
    ts.stop().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().scenario {
        Scenario::CheckAccess {
            principals,
            assignments,
            concurrency,
            seconds,
            rounds,
            rate,
            by_permission,
        } => {
            let load = Load {
                principals,
                assignments,
                by_permission,
            };
            check_access(load, concurrency, seconds, rounds, rate).await
        }
        Scenario::Activation { rate, seconds } => activation(rate, seconds).await,
        Scenario::Notify {
            rate,
            seconds,
            subscribers,
        } => notify(rate, seconds, subscribers).await,
        Scenario::Consistency {
            rate,
            seconds,
            principals,
        } => consistency(rate, seconds, principals).await,
        Scenario::Expiry { roles, within_seconds } => expiry(roles, within_seconds).await,
        Scenario::AuditIngest { events, rate } => audit_ingest(events, rate).await,
        Scenario::AlertLatency { rate, seconds } => alert_latency(rate, seconds).await,
        Scenario::Portal { roles, seconds, rounds } => portal_bench::portal(roles, seconds, rounds).await,
    }
}

async fn alert_latency(rate: u64, seconds: u64) -> anyhow::Result<()> {
    use pim_proto::alerting::v1 as alpb;
    use pim_proto::alerting::v1::alert_service_client::AlertServiceClient;
    use pim_runtime::events::{Publisher, RedisPublisher, envelope};
    let ts = bench_suite().await?;
    let admin = ts.admin_token().await?;
    let total = rate * seconds;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    // gRPC: StreamAlerts from now on.
    let mut stream = AlertServiceClient::new(ts.channel.clone())
        .stream_alerts(authed(&admin, alpb::StreamAlertsRequest::default()))
        .await?
        .into_inner();
    let grpc_sent = sent.clone();
    let grpc = tokio::spawn(async move {
        let mut lags = Vec::new();
        while (lags.len() as u64) < total {
            let Ok(Some(update)) = stream.message().await else {
                break;
            };
            let Some(alert) = update.alert else { continue };
            let Some(evidence) = alert.evidence_event_ids.first() else {
                continue;
            };
            if let Some(at) = grpc_sent.lock().await.get(evidence) {
                lags.push(at.elapsed().as_micros() as u64);
            }
        }
        lags
    });

    // Redis: pim.alerts from its current end.
    let key = format!("{}{}", ts.stream_prefix, streams::ALERTS);
    let mut last =
        pim_runtime::events::last_entry_id(&pim_runtime::testing::redis_url(), &ts.stream_prefix, streams::ALERTS)
            .await?;
    let mut redis = redis::Client::open(pim_runtime::testing::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let redis_sent = sent.clone();
    let redis_reader = tokio::spawn(async move {
        let mut lags = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while (lags.len() as u64) < total && Instant::now() < deadline {
            let options = redis::streams::StreamReadOptions::default().count(1000).block(200);
            let reply: Option<redis::streams::StreamReadReply> =
                match redis.xread_options(&[&key], &[&last], &options).await {
                    Ok(r) => r,
                    Err(_) => break,
                };
            let seen = Instant::now();
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                last = entry.id.clone();
                let Some(data) = entry.get::<Vec<u8>>("data") else {
                    continue;
                };
                let Ok(finding) = serde_json::from_slice::<serde_json::Value>(&data) else {
                    continue;
                };
                let evidence = finding["finding_info"]["related_events"][0]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if let Some(at) = redis_sent.lock().await.get(&evidence) {
                    lags.push(seen.duration_since(*at).as_micros() as u64);
                }
            }
        }
        lags
    });

    // The events: one self-approval attempt each, each a new alert.
    let keys = pim_e2e::event_keys();
    let publisher = RedisPublisher::connect(&pim_runtime::testing::redis_url(), &ts.stream_prefix).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    let start = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let e = pim_proto::events::v1::ApprovalDecisionRecorded {
            approval_id: format!("bench-approval-{i}"),
            requester_id: bench_principal(i),
            role_id: EXCHANGE_ADMINISTRATOR.into(),
            scope: "/".into(),
            decision: "approve".into(),
            ..Default::default()
        };
        // Signed by approval's key, as approval's relay signs (the time counts from here).
        let mut env = envelope(Source::Approval, EventType::SelfApprovalAttempted, &e.approval_id, &e);
        sent.lock().await.insert(env.id.clone(), Instant::now());
        keys.sign(streams::APPROVAL, &mut env)?;
        publisher.publish(streams::APPROVAL, &env, 0).await?;
    }
    let elapsed = start.elapsed();
    let redis_lags = redis_reader.await?;
    let grpc_lags = tokio::time::timeout(Duration::from_secs(30), grpc).await??;
    println!("alert latency (PostgreSQL + Redis), {total} self-approval attempts at {rate}/s → new alerts:");
    report("event → pim.alerts (Redis)", redis_lags, elapsed);
    report("event → StreamAlerts (gRPC)", grpc_lags, elapsed);
    ts.stop().await
}
