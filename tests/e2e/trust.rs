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

async fn is_global_admin(ts: &TestSuite, admin: &str, principal: &str) -> anyhow::Result<bool> {
    Ok(AccessServiceClient::new(ts.channel.clone())
        .check_access(authed(
            admin,
            apb::CheckAccessRequest {
                principal_id: principal.into(),
                target: Some(apb::check_access_request::Target::RoleId(GLOBAL_ADMINISTRATOR.into())),
                scope: "/".into(),
            },
        ))
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
            .check_access(authed(
                &admin,
                apb::CheckAccessRequest {
                    principal_id: admin_id.clone(),
                    target: Some(apb::check_access_request::Target::RoleId(GLOBAL_ADMINISTRATOR.into())),
                    scope: "/".into(),
                },
            ))
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
