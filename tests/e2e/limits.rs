//! What one user can make the suite keep: live sessions, and refused calls with their records.

use std::time::Duration;

use pim_e2e::{TestSuite, authed, eventually};
use pim_proto::assignment::v1::AssignmentKind;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::audit::v1 as aupb;
use pim_runtime::throttle::{MAX_MERIT_REFUSALS_PER_MINUTE, MAX_REFUSALS_PER_MINUTE};
use tonic_types::StatusExt;

use crate::activation::{EXCHANGE_ADMINISTRATOR, GLOBAL_ADMINISTRATOR};
use crate::trust::check_refused;

/// Signing in in a loop fills no table: a user's sign-in past their 100 live sessions ends
/// the oldest, whose token stops working everywhere, and says so in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_past_a_users_live_sessions_ends_the_oldest() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let lee = ts.create_user(&admin, "lee").await?;
        let password = pim_e2e::password_of("lee");
        let oldest = ts.sign_in("lee", &password).await?;
        let second = ts.sign_in("lee", &password).await?;
        let check = |token: String| check_refused(&ts, token);
        for _ in 2..pim_identity::MAX_LIVE_SESSIONS {
            ts.sign_in("lee", &password).await?;
        }
        let ended = Some(tonic::Code::Unauthenticated);
        assert_ne!(check(oldest.clone()).await, ended, "100 live sessions: none ended");
        let newest = ts.sign_in("lee", &password).await?;
        eventually(Duration::from_secs(10), "the oldest session ended", || async {
            Ok((check(oldest.clone()).await == ended).then_some(()))
        })
        .await?;
        assert_ne!(check(second).await, ended, "the second oldest goes on");
        assert_ne!(check(newest).await, ended);
        eventually(Duration::from_secs(10), "the ending audited", || async {
            let query = aupb::QueryEventsRequest {
                target_id: lee.id.clone(),
                ..Default::default()
            };
            let ended = ts
                .audit_records(&admin, query)
                .await?
                .into_iter()
                .filter(|r| r.action.ends_with(".SessionRevoked") && r.payload_json.contains("session_limit"))
                .count();
            Ok((ended == 1).then_some(()))
        })
        .await?;
        Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// A user denied again and again (a script, a stolen token probing) is refused unheard for
/// the rest of the minute once 100 denials are in: one record says so, not one a call, and
/// others are heard as before, and lee may still sign out. Refusals on the merits (not
/// eligible) count against a budget of their own, thirty times larger: kim, refused 3000 times,
/// is refused unheard too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_denied_too_often_is_refused_unheard_for_the_rest_of_the_minute() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let lee = ts.create_user(&admin, "lee").await?;
        let kim = ts.create_user(&admin, "kim").await?;
        let lee_token = ts.sign_in("lee", &pim_e2e::password_of("lee")).await?;
        let kim_token = ts.sign_in("kim", &pim_e2e::password_of("kim")).await?;
        let create = |token: &str, request| {
            let mut client = AssignmentServiceClient::new(ts.channel.clone());
            let request = authed(token, request);
            async move { client.create_request(request).await.expect_err("lee holds no role") }
        };
        let activate = || pim_e2e::activate_for_an_hour(GLOBAL_ADMINISTRATOR, "just looking");
        let assign = || pim_e2e::assign_for_an_hour(AssignmentKind::Active, &lee.id, GLOBAL_ADMINISTRATOR);
        for _ in 0..MAX_REFUSALS_PER_MINUTE {
            let refused = create(&lee_token, activate()).await;
            assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
            let denied = create(&lee_token, assign()).await;
            assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        }
        for _ in 0..3 {
            let unheard = create(&lee_token, activate()).await;
            assert_eq!(unheard.code(), tonic::Code::ResourceExhausted, "{unheard:?}");
            assert!(unheard.message().contains("too many refused calls"), "{unheard:?}");
            let retry = unheard.get_details_retry_info().and_then(|r| r.retry_delay);
            assert!(retry.is_some_and(|d| d <= Duration::from_secs(60)), "{retry:?}");
        }
        let list = AssignmentServiceClient::new(ts.channel.clone())
            .list_requests(authed(&lee_token, Default::default()))
            .await;
        assert_eq!(
            list.err().map(|s| s.code()),
            Some(tonic::Code::ResourceExhausted),
            "every call of lee's"
        );
        pim_proto::identity::v1::auth_service_client::AuthServiceClient::new(ts.channel.clone())
            .sign_out(authed(&lee_token, Default::default()))
            .await?;
        let heard = create(
            &kim_token,
            pim_e2e::activate_for_an_hour(EXCHANGE_ADMINISTRATOR, "mailbox migration"),
        )
        .await;
        assert_eq!(heard.code(), tonic::Code::FailedPrecondition, "kim is heard: {heard:?}");
        // Sixteen at a time: a script in a hurry.
        let mut refusing = tokio::task::JoinSet::new();
        for n in 1..MAX_MERIT_REFUSALS_PER_MINUTE {
            let (channel, token) = (ts.channel.clone(), kim_token.clone());
            refusing.spawn(async move {
                AssignmentServiceClient::new(channel)
                    .create_request(authed(&token, activate()))
                    .await
            });
            while refusing.len() >= 16 || (n + 1 == MAX_MERIT_REFUSALS_PER_MINUTE && !refusing.is_empty()) {
                let refused = refusing
                    .join_next()
                    .await
                    .expect("one running")?
                    .expect_err("kim holds no role");
                assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
            }
        }
        let unheard = create(&kim_token, activate()).await;
        assert_eq!(unheard.code(), tonic::Code::ResourceExhausted, "{unheard:?}");
        assert!(
            unheard.message().contains("3000 of yours were refused within a minute"),
            "{unheard:?}"
        );

        // (refused calls recorded, calls refused unheard recorded) about a principal.
        let recorded = |id: String| {
            let (ts, admin) = (&ts, admin.clone());
            async move {
                let query = aupb::QueryEventsRequest {
                    target_id: id,
                    ..Default::default()
                };
                let records = ts.audit_records(&admin, query).await?;
                let refused = records.iter().filter(|r| r.action.ends_with(".RequestRefused")).count();
                let unheard = records
                    .iter()
                    .filter(|r| r.action.ends_with(".AccessDenied") && r.payload_json.contains("ResourceExhausted"))
                    .count();
                anyhow::Ok((refused, unheard))
            }
        };
        // Audit takes in 3,200 records one after another: on two busy cores that takes a while.
        eventually(
            Duration::from_secs(60),
            "a record a refusal, one for the rest",
            || async {
                let (lee, kim) = (recorded(lee.id.clone()).await?, recorded(kim.id.clone()).await?);
                let expected = (
                    (2 * MAX_REFUSALS_PER_MINUTE as usize, 1),
                    (MAX_MERIT_REFUSALS_PER_MINUTE as usize, 1),
                );
                Ok(((lee, kim) == expected).then_some(()))
            },
        )
        .await?;
        Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
