//! The trust boundary (PostgreSQL + Redis): whoever can write to Redis can delay or drop
//! events, never grant access or take it away. A service reads its own state from its
//! database; the stream only says that something changed.

use std::time::Duration;

use pim_e2e::{TestSuite, authed, eventually};
use pim_proto::alerting::v1 as alpb;
use pim_proto::alerting::v1::alert_service_client::AlertServiceClient;
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::audit::v1 as aupb;
use pim_proto::events::v1 as ev;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::db::{now_ms, to_timestamp};
use pim_runtime::events::{EventKeys, Publisher, RedisPublisher, envelope, streams};
use pim_runtime::testing::TestDatabase;

const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
use crate::activation::GLOBAL_READER;

/// A stream entry id as (milliseconds, sequence), to compare positions.
fn entry(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// "Is `principal` Global Administrator at `/`?" (empty: the caller).
/// The code a CheckAccess with `token` is refused with, if any (UNAUTHENTICATED: the token's
/// session ended).
pub(crate) async fn check_refused(ts: &TestSuite, token: String) -> Option<tonic::Code> {
    AccessServiceClient::new(ts.channel.clone())
        .check_access(authed(&token, global_admin_check("")))
        .await
        .err()
        .map(|s| s.code())
}

fn global_admin_check(principal: &str) -> apb::CheckAccessRequest {
    apb::CheckAccessRequest {
        principal_id: principal.into(),
        target: Some(apb::check_access_request::Target::RoleId(GLOBAL_ADMINISTRATOR.into())),
        scope: "/".into(),
        ..Default::default()
    }
}

async fn is_global_admin(ts: &TestSuite, admin: &str, principal: &str) -> anyhow::Result<bool> {
    Ok(AccessServiceClient::new(ts.channel.clone())
        .check_access(authed(admin, global_admin_check(principal)))
        .await?
        .into_inner()
        .allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_to_redis_by_hand_are_refused_audited_and_alerted() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let eve = ts.create_user(&admin, "eve").await?;
        let admin_id = DirectoryServiceClient::new(ts.channel.clone())
            .get_user(authed(
                &admin,
                ipb::GetUserRequest {
                    user: ts.admin_user.clone(),
                },
            ))
            .await?
            .into_inner()
            .id;
        let break_glass = AccessServiceClient::new(ts.channel.clone())
            .check_access(authed(&admin, global_admin_check(&admin_id)))
            .await?
            .into_inner()
            .assignment_ids
            .into_iter()
            .next()
            .expect("the break-glass assignment");

        // Eve writes to the streams: she activated Global Administrator (unsigned, then signed
        // with a key of her own), the break-glass administrator's assignment ended, and every
        // session of the administrator was revoked. She also copies a genuine, validly signed
        // identity event onto the assignment stream.
        let redis = RedisPublisher::connect(&pim_runtime::testing::redis_url(), &ts.stream_prefix).await?;
        let now = now_ms();
        let grant = || {
            envelope(
                pim_runtime::events::Source::Assignment,
                pim_runtime::events::EventType::RoleActivated,
                &eve.id,
                &ev::RoleActivated {
                    assignment_id: uuid::Uuid::now_v7().to_string(),
                    principal_id: eve.id.clone(),
                    role_id: GLOBAL_ADMINISTRATOR.into(),
                    scope: "/".into(),
                    start_time: Some(to_timestamp(now - 1000)),
                    end_time: Some(to_timestamp(now + 30 * 86_400_000)),
                    version: 1,
                    ..Default::default()
                },
            )
        };
        let unsigned_grant = grant();
        let mut self_signed_grant = grant();
        EventKeys::generate(&["assignment"]).sign(streams::ASSIGNMENT, &mut self_signed_grant)?;
        let forged_end = envelope(
            pim_runtime::events::Source::Assignment,
            pim_runtime::events::EventType::RoleDeactivated,
            &admin_id,
            &ev::RoleDeactivated {
                assignment_id: break_glass.clone(),
                principal_id: admin_id.clone(),
                role_id: GLOBAL_ADMINISTRATOR.into(),
                scope: "/".into(),
                reason: "expired".into(),
                ..Default::default()
            },
        );
        let forged_sign_out = envelope(
            pim_runtime::events::Source::Identity,
            pim_runtime::events::EventType::SessionRevoked,
            &admin_id,
            &ev::SessionRevoked {
                principal_id: admin_id.clone(),
                reason: "disabled".into(),
                ..Default::default()
            },
        );
        let mut copied = envelope(
            pim_runtime::events::Source::Identity,
            pim_runtime::events::EventType::UserCreated,
            &eve.id,
            &ev::UserCreated {
                user_id: eve.id.clone(),
                ..Default::default()
            },
        );
        pim_e2e::event_keys().sign(streams::IDENTITY, &mut copied)?;
        redis.publish(streams::ASSIGNMENT, &unsigned_grant, 0).await?;
        redis.publish(streams::ASSIGNMENT, &self_signed_grant, 0).await?;
        redis.publish(streams::ASSIGNMENT, &forged_end, 0).await?;
        redis.publish(streams::IDENTITY, &forged_sign_out, 0).await?;
        redis.publish(streams::ASSIGNMENT, &copied, 0).await?;
        // Text no database keeps (a NUL in its claims) is recorded all the same, not a jam.
        let mut nul = forged_end.clone();
        nul.id = uuid::Uuid::now_v7().to_string();
        nul.r#type = "pim.assignment.v1.Role\0Deactivated".into();
        nul.traceparent = "00-\0\0-00".into();
        redis.publish(streams::ASSIGNMENT, &nul, 0).await?;

        // Every consumer group has read and acknowledged them; and a genuine change made
        // afterwards has reached the access index's tail, so it is past them too.
        ts.settle().await?;
        let genuine = ts.create_user(&admin, "genuine").await?;
        AssignmentServiceClient::new(ts.channel.clone())
            .create_request(authed(
                &admin,
                crate::activation::request(
                    apb::RequestAction::AdminAssign,
                    apb::AssignmentKind::Eligible,
                    &genuine.id,
                    GLOBAL_READER,
                ),
            ))
            .await?;
        let last = pim_runtime::events::last_entry_id(
            &pim_runtime::testing::redis_url(),
            &ts.stream_prefix,
            streams::ASSIGNMENT,
        )
        .await?;
        let assignment = ts
            .suite
            .assignment()
            .expect("assignment runs here")
            .assignments()
            .clone();
        eventually(
            Duration::from_secs(10),
            "the index's tail past the forged events",
            || async { Ok((entry(&assignment.index_position()) >= entry(&last)).then_some(())) },
        )
        .await?;
        ts.settle().await?;

        // Nothing changed: no grant, no end, no sign-out.
        assert!(
            !is_global_admin(&ts, &admin, &eve.id).await?,
            "a forged activation grants nothing"
        );
        assert!(
            is_global_admin(&ts, &admin, &admin_id).await?,
            "a forged end takes nothing away (and a forged sign-out signs no one out)"
        );

        // Each refusal is an audit record, with what the entry claimed and why it was refused.
        let rejected = ts
            .audit_records(
                &admin,
                aupb::QueryEventsRequest {
                    action: "pim.audit.v1.EventRejected".into(),
                    ..Default::default()
                },
            )
            .await?;
        let refusal = |claimed_id: &str| {
            rejected
                .iter()
                .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.payload_json).ok())
                .find(|p| p["claimed"]["id"] == claimed_id)
                .map(|p| p["reason"].as_str().unwrap_or_default().to_owned())
        };
        assert_eq!(refusal(&unsigned_grant.id).as_deref(), Some("unsigned"), "{rejected:?}");
        assert_eq!(refusal(&self_signed_grant.id).as_deref(), Some("unknown_key"));
        assert_eq!(refusal(&forged_end.id).as_deref(), Some("unsigned"));
        assert_eq!(refusal(&forged_sign_out.id).as_deref(), Some("unsigned"));
        assert_eq!(refusal(&copied.id).as_deref(), Some("wrong_service"));
        assert_eq!(refusal(&nul.id).as_deref(), Some("unsigned"));
        assert!(rejected.iter().all(|r| r.outcome == "failure" && r.actor_id.is_empty()));
        assert_eq!(
            rejected.len(),
            6,
            "one record per entry, not per consumer: {rejected:?}"
        );

        // ... and a high-severity forged_event alert per stream, counting the entries.
        let alerts = AlertServiceClient::new(ts.channel.clone())
            .list_alerts(authed(
                &admin,
                alpb::ListAlertsRequest {
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .alerts;
        let forged: Vec<_> = alerts.iter().filter(|a| a.rule_id == "forged_event").collect();
        let on = |stream: &str| {
            forged
                .iter()
                .find(|a| a.figures.get("stream").map(String::as_str) == Some(stream))
                .map(|a| (a.count, a.severity))
        };
        let high = alpb::Severity::High as i32;
        assert_eq!(on(streams::ASSIGNMENT), Some((5, high)), "{forged:?}");
        assert_eq!(on(streams::IDENTITY), Some((1, high)), "{forged:?}");

        // The refused entries sit in the dead-letter stream for investigation, never as
        // events (no `ce` field), so nothing that follows dead letters applies them.
        let mut conn = redis::Client::open(pim_runtime::testing::redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        let dead: redis::streams::StreamRangeReply =
            redis::AsyncCommands::xrange_all(&mut conn, format!("{}{}", ts.stream_prefix, streams::DEADLETTER)).await?;
        assert!(!dead.ids.is_empty());
        assert!(
            dead.ids
                .iter()
                .all(|e| !e.map.contains_key("ce") && e.map.contains_key("refused"))
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// A service that would publish unsigned events, or read a stream whose owner it cannot
/// check, refuses to start, and says which key is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_its_event_keys_refuses_to_start() -> anyhow::Result<()> {
    let start = |signing: String, verifying: String, database: String| async move {
        let config = pim_e2e::test_config(&[
            ("PIM_REDIS_URL", pim_runtime::testing::redis_url()),
            (
                "PIM_STREAM_PREFIX",
                format!("{}:", pim_runtime::testing::unique("keys")),
            ),
            ("PIM_IDENTITY_URL", "http://127.0.0.1:9".into()),
            ("PIM_ASSIGNMENT_URL", "http://127.0.0.1:9".into()),
            ("PIM_EVENT_SIGNING_KEYS", signing),
            ("PIM_EVENT_VERIFYING_KEYS", verifying),
        ])?;
        let databases = [(pim::ServiceName::Approval, database)].into();
        match pim::Suite::start(pim::SuiteOptions::new(config, databases)).await {
            Ok(suite) => {
                suite.stop().await?;
                anyhow::Ok(None)
            }
            Err(err) => Ok(Some(format!("{err:#}"))),
        }
    };
    let approval = EventKeys::generate(&["approval"]);
    let assignment = EventKeys::generate(&["assignment"]);
    let identity = EventKeys::generate(&["identity"]);
    // No signing key for approval: refused before its database is even opened.
    let refused = start(
        assignment.signing_setting(),
        String::new(),
        "postgres://nowhere.invalid/db".into(),
    )
    .await?;
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("PIM_EVENT_SIGNING_KEYS has no key for approval")),
        "{refused:?}"
    );
    // Its own key, but none of assignment's, whose stream approval reads.
    let db = TestDatabase::create("keys").await?;
    let refused = start(approval.signing_setting(), identity.verifying_setting(), db.url.clone()).await?;
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("PIM_EVENT_VERIFYING_KEYS has no key for assignment")),
        "{refused:?}"
    );
    // With both it starts.
    let verifying = format!("{},{}", assignment.verifying_setting(), identity.verifying_setting());
    let started = start(approval.signing_setting(), verifying, db.url.clone()).await?;
    db.drop_database().await?;
    assert_eq!(started, None);
    Ok(())
}

/// Audit without a key for its HMACs would keep no trace of sign-in source addresses: it
/// refuses to start, and says which setting to give, before its database is even opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_without_its_hmac_key_refuses_to_start() -> anyhow::Result<()> {
    let config = pim_e2e::test_config(&[
        ("PIM_SECRETS_KEY", String::new()),
        ("PIM_IDENTITY_URL", "http://127.0.0.1:9".into()),
        ("PIM_ASSIGNMENT_URL", "http://127.0.0.1:9".into()),
    ])?;
    let databases = [(pim::ServiceName::Audit, "postgres://nowhere.invalid/db".to_owned())].into();
    let refused = pim::Suite::start(pim::SuiteOptions::new(config, databases))
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("audit needs PIM_AUDIT_HMAC_KEY")),
        "{refused:?}"
    );
    Ok(())
}

/// Failed sign-ins count against the principal however it is named, in the database: a
/// lockout holds whether the attacker types the name in capitals or the user id, on another
/// identity replica, and after every service restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_lockout_holds_across_aliases_replicas_and_restarts() -> anyhow::Result<()> {
    use pim::{ServiceName, Suite, SuiteOptions};
    use pim_proto::identity::v1::auth_service_client::AuthServiceClient;

    let ts = TestSuite::postgres().await?;
    let admin = ts.admin_token().await?;
    let bruce = ts.create_user(&admin, "bruce").await?;
    let sign_in = |channel: tonic::transport::Channel, name: String, password: String| async move {
        AuthServiceClient::new(channel)
            .sign_in(ipb::SignInRequest {
                user_name: name,
                password,
            })
            .await
            .map(drop)
    };
    for name in ["bruce", "BRUCE", bruce.id.as_str()].into_iter().cycle().take(10) {
        let refused = sign_in(ts.channel.clone(), name.into(), "a guessed passphrase".into())
            .await
            .expect_err("a wrong password");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{name}");
    }
    let right = pim_e2e::password_of("bruce");
    let locked = sign_in(ts.channel.clone(), bruce.id.clone(), right.clone())
        .await
        .expect_err("locked, even with the right password and the id");
    assert_eq!(locked.code(), tonic::Code::ResourceExhausted);

    // Another identity replica on the same database.
    let identity_db = ts
        .database_url(ServiceName::Identity)
        .expect("identity's database")
        .to_owned();
    let config = pim_e2e::test_config(&[
        ("PIM_REDIS_URL", pim_runtime::testing::redis_url()),
        ("PIM_STREAM_PREFIX", ts.stream_prefix.clone()),
        ("PIM_ASSIGNMENT_URL", ts.suite.url().to_owned()),
        ("PIM_APPROVAL_URL", ts.suite.url().to_owned()),
    ])?;
    let mut options = SuiteOptions::new(
        config,
        std::collections::BTreeMap::from([(ServiceName::Identity, identity_db)]),
    );
    options.relay_poll = Duration::from_millis(50);
    let replica = Suite::start(options).await?;
    let replica_channel = pim_runtime::grpc::channel(replica.url(), &Default::default())?;
    let elsewhere = sign_in(replica_channel, "Bruce".into(), right.clone()).await;
    replica.stop().await?;
    assert_eq!(
        elsewhere.expect_err("locked on every replica").code(),
        tonic::Code::ResourceExhausted
    );

    // Every service restarts: the count is in the database.
    let ts = ts.restart().await?;
    let after = sign_in(ts.channel.clone(), "bruce".into(), right).await;
    ts.stop().await?;
    assert_eq!(
        after.expect_err("still locked after a restart").code(),
        tonic::Code::ResourceExhausted
    );
    Ok(())
}

/// What a session knew before a restart, it knows after: a signed-out session's token and a
/// disabled user's stay refused when every service restarts (both backends), and a host that
/// starts after the revocation (it never saw the event) refuses them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stay_refused_after_restarts() -> anyhow::Result<()> {
    use pim::{ServiceName, Suite, SuiteOptions};
    use pim_proto::identity::v1::auth_service_client::AuthServiceClient;

    for embedded in [false, true] {
        let ts = if embedded {
            TestSuite::embedded().await?
        } else {
            TestSuite::postgres().await?
        };
        let admin = ts.admin_token().await?;
        let lee = ts.create_user(&admin, "lee").await?;
        ts.create_user(&admin, "kim").await?;
        let signed_out = ts.sign_in("lee", &pim_e2e::password_of("lee")).await?;
        let disabled = ts.sign_in("kim", &pim_e2e::password_of("kim")).await?;
        AuthServiceClient::new(ts.channel.clone())
            .sign_out(authed(&signed_out, ipb::SignOutRequest::default()))
            .await?;
        DirectoryServiceClient::new(ts.channel.clone())
            .disable_user(authed(&admin, ipb::GetUserRequest { user: "kim".into() }))
            .await?;
        for token in [&signed_out, &disabled] {
            eventually(Duration::from_secs(10), "the revocation applied", || async {
                Ok((check_refused(&ts, token.clone()).await == Some(tonic::Code::Unauthenticated)).then_some(()))
            })
            .await?;
        }

        let ts = ts.restart().await?;
        for token in [&signed_out, &disabled] {
            assert_eq!(
                check_refused(&ts, token.clone()).await,
                Some(tonic::Code::Unauthenticated),
                "refused after a restart (embedded: {embedded})"
            );
        }
        // Lee signs in again: a new session gets past authentication.
        let again = ts.sign_in("lee", &pim_e2e::password_of("lee")).await?;
        assert_ne!(
            check_refused(&ts, again).await,
            Some(tonic::Code::Unauthenticated),
            "{}",
            lee.id
        );

        if !embedded {
            // An assignment replica that starts now never saw the events.
            let config = pim_e2e::test_config(&[
                ("PIM_REDIS_URL", pim_runtime::testing::redis_url()),
                ("PIM_STREAM_PREFIX", ts.stream_prefix.clone()),
                ("PIM_IDENTITY_URL", ts.suite.url().to_owned()),
            ])?;
            let database = ts.database_url(ServiceName::Assignment).expect("assignment's database");
            let options = SuiteOptions::new(
                config,
                std::collections::BTreeMap::from([(ServiceName::Assignment, database.to_owned())]),
            );
            let replica = Suite::start(options).await?;
            let channel = pim_runtime::grpc::channel(replica.url(), &Default::default())?;
            let mut outcomes = Vec::new();
            for token in [&signed_out, &disabled] {
                let outcome = AccessServiceClient::new(channel.clone())
                    .check_access(authed(token, global_admin_check("")))
                    .await;
                outcomes.push(outcome.err().map(|s| s.code()));
            }
            replica.stop().await?;
            assert_eq!(
                outcomes,
                [Some(tonic::Code::Unauthenticated), Some(tonic::Code::Unauthenticated)]
            );
        }
        ts.stop().await?;
    }
    Ok(())
}

/// A service whose PostgreSQL takes no connections (an outage, a failover) answers UNAVAILABLE,
/// to try again, and its health says NOT_SERVING so probes take it out of rotation; both
/// come back with the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_and_not_serving_until_it_ends() -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let url = ts
            .database_url(pim::ServiceName::Identity)
            .expect("identity's database");
        let name = url
            .rsplit('/')
            .next()
            .and_then(|n| n.split('?').next())
            .unwrap_or_default()
            .to_owned();
        let server =
            sea_orm::Database::connect(format!("{}/postgres", pim_runtime::testing::postgres_server())).await?;
        let allow = |allowed: bool| format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS {allowed}");
        let health = || {
            let mut health = HealthClient::new(ts.channel.clone());
            async move {
                let asked = HealthCheckRequest {
                    service: "pim.identity.v1.DirectoryService".into(),
                };
                anyhow::Ok(health.check(asked).await?.into_inner().status())
            }
        };
        let get_user = || {
            let mut directory = DirectoryServiceClient::new(ts.channel.clone());
            let asked = authed(&admin, ipb::GetUserRequest { user: "admin".into() });
            async move { directory.get_user(asked).await.err().map(|s| s.code()) }
        };
        assert_eq!(health().await?, ServingStatus::Serving);
        server.execute_unprepared(&allow(false)).await?;
        server
            .execute_unprepared(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ))
            .await?;
        let outage = async {
            eventually(Duration::from_secs(15), "health says NOT_SERVING", || async {
                Ok((health().await? == ServingStatus::NotServing).then_some(()))
            })
            .await?;
            assert_eq!(get_user().await, Some(tonic::Code::Unavailable), "to try again");
            anyhow::Ok(())
        }
        .await;
        server.execute_unprepared(&allow(true)).await?;
        server.close().await.ok();
        outage?;
        eventually(Duration::from_secs(15), "health says SERVING again", || async {
            Ok((health().await? == ServingStatus::Serving).then_some(()))
        })
        .await?;
        assert_eq!(get_user().await, None, "answered again");
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Redis out of reach shows in the metrics (the relays and consumers down, not a lag frozen
/// at its last value), and once it answers, the events that waited flow and the metrics say
/// so. (A Redis of the test's own, started late on a port nothing listened on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_shows_in_the_metrics_and_what_waited_flows_after_it() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let ts = TestSuite::postgres_with(None, &[("PIM_REDIS_URL", format!("redis://127.0.0.1:{port}"))]).await?;
    let result = async {
        let shows = |wanted: &'static str| async move {
            let text = pim_runtime::metrics::render();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(wanted))
                .map(str::to_owned)
                .collect();
            anyhow::Ok(lines)
        };
        let admin = ts.admin_token().await?;
        let lee = ts.create_user(&admin, "lee").await?;
        eventually(
            Duration::from_secs(10),
            "the relays and consumers shown down",
            || async {
                let relays = shows("pim_relay_up{service=\"identity\"}").await?;
                let consumers = shows("pim_consumer_up{").await?;
                Ok(
                    (relays.iter().any(|l| l.ends_with(" 0")) && consumers.iter().any(|l| l.ends_with(" 0")))
                        .then_some(()),
                )
            },
        )
        .await?;
        let mut redis = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let flowed = async {
            eventually(Duration::from_secs(20), "lee's creation audited", || async {
                let actions = ts.audited_actions(&admin, &lee.id).await?;
                Ok(actions.iter().any(|a| a.ends_with(".UserCreated")).then_some(()))
            })
            .await?;
            eventually(Duration::from_secs(10), "the relays and consumers shown up", || async {
                let relays = shows("pim_relay_up{").await?;
                let consumers = shows("pim_consumer_up{").await?;
                Ok(
                    (relays.iter().all(|l| l.ends_with(" 1")) && consumers.iter().all(|l| l.ends_with(" 1")))
                        .then_some(()),
                )
            })
            .await
        }
        .await;
        redis.kill().ok();
        redis.wait().ok();
        flowed
    }
    .await;
    ts.stop().await?;
    result
}

/// After a stop, each SQLite file alone holds every commit (its write-ahead log folded in): a
/// backup that copies the `.db` files is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stop_the_database_files_alone_hold_every_commit() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let admin = ts.admin_token().await?;
    let lee = ts.create_user(&admin, "lee").await?;
    let dir = ts.stop_keeping_files().await?;
    let copy = dir.with_extension("copy");
    std::fs::create_dir_all(&copy)?;
    std::fs::copy(dir.join("identity.db"), copy.join("identity.db"))?;
    let db = pim_runtime::db::connect(&pim_runtime::db::sqlite_url(&copy.join("identity.db"))).await?;
    let found = pim_runtime::db::query_one(
        &db,
        "SELECT user_name FROM users WHERE id = $1",
        vec![lee.id.clone().into()],
    )
    .await?;
    db.close().await?;
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&copy).ok();
    assert!(found.is_some(), "lee, created before the stop, is in the copied file");
    Ok(())
}

/// Redis comes back empty (a failover without persistence): the consumer groups are gone.
/// The consumers make them again by themselves, and what happens afterwards is audited within
/// seconds, without a restart. (The test deletes its own streams rather than FLUSHALL, which
/// would take other tests' streams with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_streams_events_flow_again_without_a_restart() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "before").await?;
        ts.settle().await?;
        pim_e2e::drop_streams(&ts.stream_prefix).await?;

        let after = ts.create_user(&admin, "after").await?;
        eventually(Duration::from_secs(5), "the new user's audit record", || async {
            let actions = ts.audited_actions(&admin, &after.id).await?;
            Ok(actions.iter().any(|a| a.ends_with(".UserCreated")).then_some(()))
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Redis as a real dependency: TLS (`rediss://`, a private CA, a client certificate) and an
/// ACL user that may only run the stream commands the suite uses, appending only to PIM's
/// streams. Events flow: a user created on identity is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_redis_over_tls_as_an_acl_user() -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    let dir = std::env::temp_dir().join(pim_runtime::testing::unique("redis-tls"));
    std::fs::create_dir_all(&dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "PIM test Redis CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let write = |name: &str, pem: String| -> anyhow::Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, pem)?;
        Ok(path.display().to_string())
    };
    let issue = |names: Vec<String>, file: &str| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(names)?.signed_by(&key, &ca)?;
        Ok((
            write(&format!("{file}.pem"), cert.pem())?,
            write(&format!("{file}-key.pem"), key.serialize_pem())?,
        ))
    };
    let ca_path = write("ca.pem", ca.pem())?;
    let (server_cert, server_key) = issue(vec!["127.0.0.1".into(), "localhost".into()], "server")?;
    let (client_cert, client_key) = issue(vec!["pim".into()], "client")?;
    // The commands README's "Redis" section gives each service's user; XADD only on PIM's keys.
    let redis = PrivateRedis::start(&[
        "--tls-cert-file",
        &server_cert,
        "--tls-key-file",
        &server_key,
        "--tls-ca-cert-file",
        &ca_path,
        "--tls-auth-clients",
        "yes",
        "--user",
        "default",
        "off",
        "--user",
        "pim",
        "on",
        ">s3cret",
        "resetkeys",
        "~pim_test_*",
        "-@all",
        "+@connection",
        "+xreadgroup",
        "+xread",
        "+xack",
        "+xautoclaim",
        "+xpending",
        "+xgroup|create",
        "+xrange",
        "+xrevrange",
        "+multi",
        "+exec",
        "+discard",
        "(+xadd ~pim_test_*)",
    ])?;
    let port = redis.port;
    let url = format!("rediss://pim:s3cret@127.0.0.1:{port}");
    let tls = [
        ("PIM_REDIS_URL", url.clone()),
        ("PIM_REDIS_TLS_CA", ca_path.clone()),
        ("PIM_REDIS_TLS_CERT", client_cert.clone()),
        ("PIM_REDIS_TLS_KEY", client_key.clone()),
    ];
    let result = async {
        let config = pim_e2e::test_config(&tls)?;
        let target = config.redis()?.expect("Redis is configured");
        eventually(
            Duration::from_secs(10),
            "Redis with TLS to accept connections",
            || async {
                let probe = pim_runtime::events::last_entry_id(&target, "pim_test_probe:", streams::IDENTITY);
                Ok(tokio::time::timeout(Duration::from_secs(3), probe)
                    .await
                    .ok()
                    .and_then(Result::ok))
            },
        )
        .await?;
        // Without the client certificate, Redis refuses the connection (the client retries,
        // so it is given a few seconds to fail and never succeeds).
        let bare = pim_runtime::events::RedisTarget::new(url.clone(), Some(std::fs::read(&ca_path)?), None);
        let probe = pim_runtime::events::last_entry_id(&bare, "pim_test_probe:", streams::IDENTITY);
        assert!(!matches!(
            tokio::time::timeout(Duration::from_secs(3), probe).await,
            Ok(Ok(_))
        ));

        let ts = TestSuite::postgres_with(None, &tls).await?;
        let outcome = async {
            let admin = ts.admin_token().await?;
            let lee = ts.create_user(&admin, "lee").await?;
            eventually(Duration::from_secs(10), "lee's creation audited", || async {
                let actions = ts.audited_actions(&admin, &lee.id).await?;
                Ok(actions.iter().any(|a| a.ends_with("UserCreated")).then_some(()))
            })
            .await?;
            anyhow::Ok(())
        }
        .await;
        ts.stop().await?;
        outcome
    }
    .await;
    drop(redis);
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// A redis-server of the test's own (so it may be flushed, or speak TLS), stopped when dropped.
struct PrivateRedis {
    port: u16,
    process: std::process::Child,
}

impl PrivateRedis {
    /// With `extra` settings; TLS ones make the port a TLS port.
    fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let tls = extra.iter().any(|a| a.starts_with("--tls"));
        let (plain, tls_port) = if tls {
            ("0".to_owned(), port.to_string())
        } else {
            (port.to_string(), "0".to_owned())
        };
        let process = std::process::Command::new("redis-server")
            .args(["--port", &plain, "--tls-port", &tls_port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Self { port, process })
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.process.kill().ok();
        self.process.wait().ok();
    }
}

/// FLUSHALL in the middle of a stream of changes (a Redis that restarts empty): the suite
/// recovers by itself, and every change made after the flush is audited within 5 s of the
/// last one, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flushall_mid_load_every_later_change_is_audited_within_5_s() -> anyhow::Result<()> {
    let redis = PrivateRedis::start(&[])?;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    eventually(Duration::from_secs(10), "the private Redis to answer", || async {
        Ok(
            pim_runtime::events::last_entry_id(url.as_str(), "pim_test_probe:", streams::IDENTITY)
                .await
                .ok(),
        )
    })
    .await?;
    let ts = TestSuite::postgres_with(None, &[("PIM_REDIS_URL", url.clone())]).await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut after_flush = Vec::new();
        for i in 0..40 {
            if i == 15 {
                let mut conn = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                let () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
            }
            let user = ts.create_user(&admin, &format!("load{i}")).await?;
            if i >= 15 {
                after_flush.push(user.id);
            }
        }
        // Within 5 s of the last change, all of them are in the audit log.
        eventually(
            Duration::from_secs(5),
            "every change after the flush audited",
            || async {
                for id in &after_flush {
                    let actions = ts.audited_actions(&admin, id).await?;
                    if !actions.iter().any(|a| a.ends_with(".UserCreated")) {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    drop(redis);
    result
}
