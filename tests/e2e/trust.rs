//! The trust boundary (PostgreSQL + Redis): whoever can write to Redis can delay or drop
//! events, never grant access or take it away. A service reads its own state from its
//! database; the stream only says that something changed.

use std::time::Duration;

use pim_e2e::{TestSuite, authed, eventually};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::events::v1 as ev;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::db::{now_ms, to_timestamp};
use pim_runtime::events::{Publisher, RedisPublisher, envelope, streams};

const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";

/// A stream entry id as (milliseconds, sequence), to compare positions.
fn entry(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// "Is `principal` Global Administrator at `/`?" (empty: the caller).
fn global_admin_check(principal: &str) -> apb::CheckAccessRequest {
    apb::CheckAccessRequest {
        principal_id: principal.into(),
        target: Some(apb::check_access_request::Target::RoleId(GLOBAL_ADMINISTRATOR.into())),
        scope: "/".into(),
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
async fn events_written_to_redis_by_hand_neither_grant_nor_end_access() -> anyhow::Result<()> {
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

        // Eve writes to the assignment stream: she activated Global Administrator, and the
        // break-glass administrator's assignment ended.
        let redis = RedisPublisher::connect(&pim_runtime::testing::redis_url(), &ts.stream_prefix).await?;
        let now = now_ms();
        let forged_grant = envelope(
            "pim.assignment",
            "RoleActivated",
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
        );
        let forged_end = envelope(
            "pim.assignment",
            "RoleDeactivated",
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
        redis.publish(streams::ASSIGNMENT, &forged_grant, 0).await?;
        redis.publish(streams::ASSIGNMENT, &forged_end, 0).await?;
        let last = pim_runtime::events::last_entry_id(
            &pim_runtime::testing::redis_url(),
            &ts.stream_prefix,
            streams::ASSIGNMENT,
        )
        .await?;

        // The access index has judged both (its tail is past them) ...
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
        // ... and, reading the database instead of the events, changed nothing.
        assert!(
            !is_global_admin(&ts, &admin, &eve.id).await?,
            "a forged activation grants nothing"
        );
        assert!(
            is_global_admin(&ts, &admin, &admin_id).await?,
            "a forged end takes nothing away"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
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
        let refused = |ts: &TestSuite, token: String| {
            let channel = ts.channel.clone();
            async move {
                AccessServiceClient::new(channel)
                    .check_access(authed(&token, global_admin_check("")))
                    .await
                    .err()
                    .map(|s| s.code())
            }
        };
        for token in [&signed_out, &disabled] {
            eventually(Duration::from_secs(10), "the revocation applied", || async {
                Ok((refused(&ts, token.clone()).await == Some(tonic::Code::Unauthenticated)).then_some(()))
            })
            .await?;
        }

        let ts = ts.restart().await?;
        for token in [&signed_out, &disabled] {
            assert_eq!(
                refused(&ts, token.clone()).await,
                Some(tonic::Code::Unauthenticated),
                "refused after a restart (embedded: {embedded})"
            );
        }
        // Lee signs in again: a new session gets past authentication.
        let again = ts.sign_in("lee", &pim_e2e::password_of("lee")).await?;
        assert_ne!(
            refused(&ts, again).await,
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
