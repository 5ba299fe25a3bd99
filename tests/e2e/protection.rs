//! Credential protection and sign-in limits (PostgreSQL + Redis): Authentication and User
//! Administrators manage ordinary users only; a user eligible for a privileged role is
//! managed by Privileged Authentication and Global Administrators; failed sign-ins are
//! rate-limited alike for real and unknown names.

use std::time::Duration;

use tonic::Code;

use pim_e2e::{TestSuite, assign_for_an_hour as assign, authed, eventually};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_proto::catalogue::permissions;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::events::streams;

/// Whether `token` is still accepted (a call it may make answers anything but UNAUTHENTICATED).
async fn works(ts: &TestSuite, token: &str) -> anyhow::Result<bool> {
    let asked = DirectoryServiceClient::new(ts.channel.clone())
        .get_principal(authed(
            token,
            ipb::GetPrincipalRequest {
                principal_id: "nobody".into(),
            },
        ))
        .await;
    Ok(!matches!(asked, Err(e) if e.code() == Code::Unauthenticated))
}

const SECURITY_ADMINISTRATOR: &str = "194ae4cb-b126-40b2-bd5b-6091b380977d";

/// A client secret rotated with `keep_previous_for` keeps signing in beside the new one until
/// then, and the tokens it got keep working (the apps move over without an outage); then it
/// stops, and every token it got with it. A rotation during an overlap ends the secret kept
/// before; one without it stops the old one at once. Seven days at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_may_keep_working_for_a_while() -> anyhow::Result<()> {
    let clock = pim_runtime::clock::ManualClock::starting_now();
    let ts = TestSuite::embedded_with_clock(Some(clock.clone()), &[]).await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let (bot, first) = ts.create_service_principal(&admin, "sync bot").await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let auth = AuthServiceClient::new(ts.channel.clone());
        let rotate = |keep_secs: Option<i64>| ipb::RotateServicePrincipalSecretRequest {
            service_principal_id: bot.clone(),
            keep_previous_for: keep_secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        };
        let signs_in = |secret: &str| {
            let request = ipb::SignInServicePrincipalRequest {
                client_id: bot.clone(),
                client_secret: secret.to_owned(),
            };
            let mut auth = auth.clone();
            async move {
                auth.sign_in_service_principal(request)
                    .await
                    .map(|r| r.into_inner().access_token)
            }
        };
        let token = signs_in(&first).await?;
        let too_long = directory
            .rotate_service_principal_secret(authed(&admin, rotate(Some(8 * 86_400))))
            .await
            .expect_err("more than a week");
        assert_eq!(too_long.code(), Code::InvalidArgument, "{too_long:?}");
        let rotate_keeping = |minutes: i64| {
            let mut directory = directory.clone();
            let request = authed(&admin, rotate(Some(minutes * 60)));
            async move {
                let secret = directory.rotate_service_principal_secret(request).await?;
                Ok::<_, anyhow::Error>(secret.into_inner().client_secret)
            }
        };
        let second = rotate_keeping(10).await?;
        let during = signs_in(&first).await.expect("the old secret for ten minutes");
        let new_token = signs_in(&second).await.expect("and the new one");
        assert!(works(&ts, &token).await?, "the old secret's tokens keep working");
        let claim = |name| pim_e2e::token_claim(&during, name).map(|v| v.as_i64().unwrap_or_default());
        let lifetime = claim("exp")? - claim("iat")?;
        assert!(
            lifetime <= 600,
            "a token the old secret gets now ends with it: {lifetime} s"
        );
        clock.advance(Duration::from_secs(601));
        let late = signs_in(&first).await.expect_err("the ten minutes are over");
        assert_eq!(late.code(), Code::Unauthenticated);
        assert!(signs_in(&second).await.is_ok());
        eventually(Duration::from_secs(10), "the tokens it got before to stop", || async {
            Ok((!works(&ts, &token).await?).then_some(()))
        })
        .await?;
        assert!(works(&ts, &new_token).await?, "the new secret's tokens keep working");
        // Rotated again during an overlap: the secret kept from before stops now, with its
        // tokens, and only the one just replaced is kept.
        let second_token = signs_in(&second).await?;
        let third = rotate_keeping(10).await?;
        let kept_token = signs_in(&second).await?;
        let third_token = signs_in(&third).await?;
        let fourth = rotate_keeping(10).await?;
        assert_eq!(
            signs_in(&second).await.expect_err("two rotations ago").code(),
            Code::Unauthenticated
        );
        for (token, got) in [(&second_token, "before"), (&kept_token, "during its overlap")] {
            eventually(Duration::from_secs(5), got, || async {
                Ok((!works(&ts, token).await?).then_some(()))
            })
            .await?;
        }
        assert!(signs_in(&third).await.is_ok(), "the one kept");
        assert!(works(&ts, &third_token).await?);
        // Rotated at once (a leak): the secret before stops now, with its tokens.
        let fifth = directory
            .rotate_service_principal_secret(authed(&admin, rotate(None)))
            .await?
            .into_inner()
            .client_secret;
        for stopped in [&third, &fourth] {
            assert_eq!(
                signs_in(stopped).await.expect_err("stopped").code(),
                Code::Unauthenticated
            );
        }
        eventually(Duration::from_secs(5), "its token to stop working", || async {
            Ok((!works(&ts, &third_token).await?).then_some(()))
        })
        .await?;
        assert!(signs_in(&fifth).await.is_ok());
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}
const AUTHENTICATION_ADMINISTRATOR: &str = "c4e39bd9-1100-46d3-8c65-fb160da0071f";
const USER_ADMINISTRATOR: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_users_credentials_need_privileged_administrators() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        let mut ids = std::collections::HashMap::new();
        for name in ["ann", "lee", "kim", "bob", "dee"] {
            let u = directory
                .create_user(authed(
                    &admin,
                    ipb::CreateUserRequest {
                        user_name: name.into(),
                        password: format!("{name}'s long passphrase"),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            ids.insert(name, u.id);
        }
        // Lee is only eligible for a privileged role; that is enough to be protected.
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Eligible, &ids["lee"], SECURITY_ADMINISTRATOR),
            ))
            .await?;
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &ids["kim"], AUTHENTICATION_ADMINISTRATOR),
            ))
            .await?;
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &ids["bob"], USER_ADMINISTRATOR),
            ))
            .await?;
        let kim = ts.sign_in("kim", "kim's long passphrase").await?;
        let bo = ts.sign_in("bob", "bob's long passphrase").await?;
        let reset = |user: &str, password: &str| ipb::ResetPasswordRequest {
            user: user.into(),
            new_password: password.into(),
        };

        // Ann is signed in (an attacker with her old password, say) when her password is reset:
        // that session ends, its refresh token with it; Kim, who reset it, stays signed in.
        let old = AuthServiceClient::new(ts.channel.clone())
            .sign_in(ipb::SignInRequest {
                user_name: "ann".into(),
                password: "ann's long passphrase".into(),
            })
            .await?
            .into_inner();
        assert!(works(&ts, &old.access_token).await?);
        directory
            .reset_password(authed(&kim, reset("ann", "ann's brand new passphrase")))
            .await?;
        eventually(Duration::from_secs(5), "Ann's old session to end", || async {
            Ok((!works(&ts, &old.access_token).await?).then_some(()))
        })
        .await?;
        let refreshed = AuthServiceClient::new(ts.channel.clone())
            .refresh(ipb::RefreshRequest {
                refresh_token: old.refresh_token.clone(),
            })
            .await
            .expect_err("the old session's refresh token ended with it");
        assert_eq!(refreshed.code(), Code::Unauthenticated);
        assert!(works(&ts, &kim).await?, "the administrator's own session goes on");
        let new = ts.sign_in("ann", "ann's brand new passphrase").await?;
        assert!(works(&ts, &new).await?, "a sign-in with the new password works at once");
        let refused = directory
            .reset_password(authed(&kim, reset("lee", "taken over passphrase")))
            .await
            .expect_err("Lee is privileged");
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            ts.sign_in("lee", "taken over passphrase").await.is_err(),
            "a refused reset changes nothing"
        );
        directory
            .reset_password(authed(&admin, reset("lee", "lee's new long passphrase")))
            .await?;
        assert!(ts.sign_in("lee", "lee's new long passphrase").await.is_ok());
        let short = directory
            .reset_password(authed(&admin, reset("ann", "short")))
            .await
            .expect_err("too short");
        assert_eq!(short.code(), Code::InvalidArgument);

        // Disabling: a User Administrator may disable Ann, not Lee; an Authentication Administrator neither.
        let user = |name: &str| ipb::GetUserRequest { user: name.into() };
        assert_eq!(
            directory
                .disable_user(authed(&kim, user("ann")))
                .await
                .expect_err("no users.manage")
                .code(),
            Code::PermissionDenied
        );
        // Who may not change users learns nothing of who exists: a name nobody holds is refused
        // alike, not "not found".
        for probe in [user("nobody-at-all"), user("ann")] {
            let refused = directory
                .disable_user(authed(&kim, probe))
                .await
                .expect_err("no users.manage");
            assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        }
        let dee = ts.sign_in("dee", "dee's long passphrase").await?;
        let refused = directory
            .reset_password(authed(&dee, reset("nobody-at-all", "whatever passphrase")))
            .await
            .expect_err("no credentials.reset");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        // Anyone resolves an id; only directory readers look a user up by name.
        let principal = |id: &str| ipb::GetPrincipalRequest {
            principal_id: id.into(),
        };
        let by_id = directory
            .get_principal(authed(&dee, principal(&ids["ann"])))
            .await?
            .into_inner();
        assert_eq!(by_id.user_name, "ann");
        for name in ["ann", "nobody-at-all"] {
            let refused = directory
                .get_principal(authed(&dee, principal(name)))
                .await
                .expect_err("not a directory reader");
            assert_eq!(refused.code(), Code::PermissionDenied, "{name}: {refused:?}");
        }
        // Nor is a user named after an id: ids and names share every lookup.
        let named_as_an_id = directory
            .create_user(authed(
                &bo,
                ipb::CreateUserRequest {
                    user_name: ids["lee"].clone(),
                    password: "a long enough passphrase".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("a name that reads as an id");
        assert_eq!(named_as_an_id.code(), Code::InvalidArgument, "{named_as_an_id:?}");
        // Nor a group or an app named after an id, or as the CLI writes a name of a kind: an
        // export applied again would name someone else.
        let group = |display_name: &str| ipb::CreateGroupRequest {
            display_name: display_name.into(),
            ..Default::default()
        };
        let lee_as_user = format!("user:{}", "lee");
        for name in [ids["lee"].as_str(), lee_as_user.as_str(), "Group:ops"] {
            let refused = directory
                .create_group(authed(&admin, group(name)))
                .await
                .expect_err("a name that stands for another");
            assert_eq!(refused.code(), Code::InvalidArgument, "{name}: {refused:?}");
            let refused = directory
                .create_service_principal(authed(
                    &admin,
                    ipb::CreateServicePrincipalRequest {
                        display_name: name.into(),
                    },
                ))
                .await
                .expect_err("a name that stands for another");
            assert_eq!(refused.code(), Code::InvalidArgument, "{name}: {refused:?}");
        }
        // A group's owners are kept by id, however they were named.
        let ops = directory
            .create_group(authed(
                &admin,
                ipb::CreateGroupRequest {
                    owner_ids: vec!["LEE".into()],
                    ..group("ops")
                },
            ))
            .await?
            .into_inner();
        let renamed = directory
            .update_group(authed(
                &admin,
                ipb::UpdateGroupRequest {
                    group_id: ops.id.clone(),
                    display_name: ids["lee"].clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("renamed after an id");
        assert_eq!(renamed.code(), Code::InvalidArgument, "{renamed:?}");
        let owners = directory
            .list_group_owners(authed(
                &admin,
                ipb::ListGroupMembersRequest {
                    group_id: ops.id.clone(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        let links: Vec<&str> = owners
            .links
            .iter()
            .filter_map(|l| l.principal.as_ref())
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(links, vec![ids["lee"].as_str()], "{owners:?}");
        let lee = ts.sign_in("lee", "lee's new long passphrase").await?;
        directory
            .add_group_member(authed(
                &lee,
                ipb::GroupMembershipRequest {
                    group_id: ops.id.clone(),
                    principal_id: ids["ann"].clone(),
                },
            ))
            .await?;
        // From the start of a second, so the disable, the enable and the sign-in after it fall
        // in one second, as a quick administrator's do (a token's time is in seconds).
        let into_second = pim_runtime::db::now_ms().rem_euclid(1000);
        tokio::time::sleep(Duration::from_millis((1000 - into_second) as u64)).await;
        let disabled = directory.disable_user(authed(&bo, user("ann"))).await?.into_inner();
        assert!(!disabled.enabled);
        assert_eq!(
            ts.sign_in("ann", "ann's brand new passphrase")
                .await
                .expect_err("disabled")
                .code(),
            Code::Unauthenticated
        );
        assert_eq!(
            directory
                .disable_user(authed(&bo, user("lee")))
                .await
                .expect_err("Lee is privileged")
                .code(),
            Code::PermissionDenied
        );
        directory.enable_user(authed(&bo, user("ann"))).await?;
        // A sign-in right after the enable (in the disable's second) works.
        let ann = ts.sign_in("ann", "ann's brand new passphrase").await?;
        assert!(
            works(&ts, &ann).await?,
            "a token issued after the enable is not refused"
        );

        // Once Ann approves Global Administrator activations, her credentials are protected as
        // a privileged user's: in Kim's hands they would approve them.
        use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
        let policies = PolicyServiceClient::new(ts.channel.clone());
        let set_approvers = |role: &str, approvers: Vec<String>| {
            let (mut policies, admin) = (policies.clone(), admin.clone());
            let ask = apb::GetRolePolicyRequest {
                role_id: role.into(),
                scope: "/".into(),
            };
            async move {
                let mut policy = policies.get_role_policy(authed(&admin, ask)).await?.into_inner();
                (policy.approval_required, policy.approver_ids) = (!approvers.is_empty(), approvers);
                let update = apb::UpdateRolePolicyRequest {
                    policy: Some(policy),
                    ..Default::default()
                };
                policies.update_role_policy(authed(&admin, update)).await?;
                anyhow::Ok(())
            }
        };
        set_approvers(pim_proto::catalogue::GLOBAL_ADMINISTRATOR, vec![ids["ann"].clone()]).await?;
        let refused = directory
            .reset_password(authed(&kim, reset("ann", "taken over passphrase")))
            .await
            .expect_err("Ann approves Global Administrator");
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused.message().contains("approves Global Administrator"),
            "{refused:?}"
        );
        // A request waiting for her keeps her protected after no policy names her any more:
        // it keeps the approvers named when it was asked.
        set_approvers(SECURITY_ADMINISTRATOR, vec![ids["ann"].clone()]).await?;
        let lee_stepped_up = ts.stepped_up_token(&ids["lee"], "lee", pim_runtime::db::now_ms())?;
        let waiting = assignments
            .create_request(authed(
                &lee_stepped_up,
                crate::activation::activation(SECURITY_ADMINISTRATOR, 3_600_000, "incident 7"),
            ))
            .await?
            .into_inner();
        assert_eq!(waiting.status, apb::RequestStatus::PendingApproval as i32);
        set_approvers(pim_proto::catalogue::GLOBAL_ADMINISTRATOR, vec![]).await?;
        set_approvers(SECURITY_ADMINISTRATOR, vec![]).await?;
        use pim_proto::approval::v1::approval_service_client::ApprovalServiceClient;
        eventually(Duration::from_secs(10), "the approval to wait for Ann", || async {
            let listed = ApprovalServiceClient::new(ts.channel.clone())
                .list_approvals(authed(
                    &admin,
                    pim_proto::approval::v1::ListApprovalsRequest {
                        all: true,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            Ok(listed
                .approvals
                .iter()
                .any(|a| a.request_id == waiting.id)
                .then_some(()))
        })
        .await?;
        let refused = directory
            .reset_password(authed(&kim, reset("ann", "taken over passphrase")))
            .await
            .expect_err("Ann decides the waiting request");
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused.message().contains("decides privileged access in the approval"),
            "{refused:?}"
        );

        // So are a reviewer's, while an access review of privileged access is not over: in
        // Kim's hands they would keep or remove Global Administrators.
        use pim_proto::approval::v1 as rpb;
        use pim_proto::approval::v1::access_review_service_client::AccessReviewServiceClient;
        let mut reviews = AccessReviewServiceClient::new(ts.channel.clone());
        directory
            .reset_password(authed(&kim, reset("dee", "dee's second passphrase")))
            .await?;
        let review = rpb::AccessReview {
            name: "Global Administrators, quarterly".into(),
            role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.into(),
            reviewer_ids: vec![ids["dee"].clone()],
            ..Default::default()
        };
        let review = reviews
            .create_review(authed(&admin, rpb::CreateReviewRequest { review: Some(review) }))
            .await?
            .into_inner();
        let refused = directory
            .reset_password(authed(&kim, reset("dee", "taken over passphrase")))
            .await
            .expect_err("Dee reviews Global Administrators");
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused
                .message()
                .contains("decides privileged access in the access review 'Global Administrators, quarterly'"),
            "{refused:?}"
        );
        assert!(ts.sign_in("dee", "dee's second passphrase").await.is_ok());
        let asked = rpb::ListPrivilegedDecisionsOfRequest {
            principal_id: ids["dee"].clone(),
        };
        let refused = reviews
            .list_privileged_decisions_of(authed(&ann, asked))
            .await
            .expect_err("Ann may neither reset credentials nor manage reviews");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        // Once the review is over, Dee is an ordinary user again.
        reviews
            .stop_review(authed(&admin, rpb::GetReviewRequest { review_id: review.id }))
            .await?;
        directory
            .reset_password(authed(&kim, reset("dee", "dee's third passphrase")))
            .await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_rate_limited_alike_for_real_and_unknown_names() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        for name in [ts.admin_user.clone(), "ghost".to_owned()] {
            for _ in 0..10 {
                let e = ts.sign_in(&name, "not the right passphrase").await.expect_err("wrong");
                assert_eq!(e.code(), Code::Unauthenticated);
            }
            let limited = ts
                .sign_in(&name, "not the right passphrase")
                .await
                .expect_err("limited");
            assert_eq!(limited.code(), Code::ResourceExhausted, "{name}");
        }
        let blocked = ts
            .sign_in(&ts.admin_user, &ts.admin_password)
            .await
            .expect_err("even the right password waits");
        assert_eq!(blocked.code(), Code::ResourceExhausted);
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Guesses from elsewhere cannot keep a user out of where they sign in from: past the limit,
/// sign-ins from unfamiliar sources wait, while a source the user signed in from (within 30
/// days) has a count of its own, so nobody can lock the break-glass administrator out from afar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_elsewhere_do_not_lock_a_user_out_of_a_familiar_source() -> anyhow::Result<()> {
    let ts = TestSuite::embedded_with(&[("PIM_TRUSTED_PROXIES", "127.0.0.1/32,::1/128".into())]).await?;
    let result = async {
        let sign_in_as = |from: &'static str, user_name: String, password: String| {
            let channel = ts.channel.clone();
            async move {
                let mut asked = tonic::Request::new(ipb::SignInRequest { user_name, password });
                asked.metadata_mut().insert("x-forwarded-for", from.parse()?);
                let answer = AuthServiceClient::new(channel).sign_in(asked).await;
                anyhow::Ok(answer.err().map(|e| e.code()))
            }
        };
        let sign_in = |from: &'static str, password: String| sign_in_as(from, ts.admin_user.clone(), password);
        let (right, wrong) = (ts.admin_password.clone(), "not the right passphrase".to_owned());
        assert_eq!(
            sign_in("198.51.100.7", right.clone()).await?,
            None,
            "the administrator's desk"
        );
        for _ in 0..10 {
            assert_eq!(
                sign_in("203.0.113.5", wrong.clone()).await?,
                Some(Code::Unauthenticated)
            );
        }
        assert_eq!(
            sign_in("203.0.113.5", right.clone()).await?,
            Some(Code::ResourceExhausted)
        );
        assert_eq!(
            sign_in("203.0.113.9", right.clone()).await?,
            Some(Code::ResourceExhausted),
            "every unfamiliar source waits"
        );
        assert_eq!(
            sign_in("198.51.100.7", right.clone()).await?,
            None,
            "the desk is not locked out"
        );
        // Nor by a hundred made-up names guessed from the desk's own address (a NAT shared
        // with whoever guesses): strangers there wait, the administrator does not.
        let stranger = |i: usize| sign_in_as("198.51.100.7", format!("nobody {i}"), "a guess".into());
        let strangers: Vec<_> = (0..100).map(|i| tokio::spawn(stranger(i))).collect();
        for answer in strangers {
            assert_eq!(answer.await??, Some(Code::Unauthenticated));
        }
        assert_eq!(
            stranger(100).await?,
            Some(Code::ResourceExhausted),
            "the address's limit"
        );
        assert_eq!(
            sign_in("198.51.100.7", right.clone()).await?,
            None,
            "the desk's own user still signs in"
        );
        // Guesses from the familiar source itself count there.
        for _ in 0..10 {
            assert_eq!(
                sign_in("198.51.100.7", wrong.clone()).await?,
                Some(Code::Unauthenticated)
            );
        }
        assert_eq!(sign_in("198.51.100.7", right).await?, Some(Code::ResourceExhausted));
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// On Redis, holds back every event of `stream` (`held`): its key holds a string, so the
/// relay's XADD fails and the events wait in the outbox while the stream is kept aside; or
/// lets them through again. Embedded delivery has nothing to hold back.
pub(crate) async fn hold_back(ts: &TestSuite, stream: &str, held: bool) -> anyhow::Result<()> {
    if ts.stream_prefix.is_empty() {
        return Ok(());
    }
    let mut redis = redis::Client::open(pim_runtime::testing::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let key = format!("{}{stream}", ts.stream_prefix);
    let aside = format!("{key}:held");
    let mut pipe = redis::pipe();
    pipe.atomic();
    if held {
        pipe.rename(&key, &aside).set(&key, "held back");
    } else {
        pipe.del(&key).rename(&aside, &key);
    }
    pipe.query_async::<()>(&mut redis).await?;
    Ok(())
}

/// With answers cached for a minute, lost access stops working in the other services with the
/// answer to the change: a removed role, and a permission taken from a custom role. On Redis
/// the change's events are held back meanwhile: the services hosted with assignment drop
/// their cached answers when it commits, not when its event arrives.
async fn lost_access_is_not_served_from_the_cache(ts: TestSuite) -> anyhow::Result<()> {
    let result = async {
        let admin = ts.admin_token().await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        let kim = directory
            .create_user(authed(
                &admin,
                ipb::CreateUserRequest {
                    user_name: "kim".into(),
                    password: "kim's long passphrase".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &kim.id, USER_ADMINISTRATOR),
            ))
            .await?;
        let token = ts.sign_in("kim", "kim's long passphrase").await?;
        let create = |name: &str| ipb::CreateUserRequest {
            user_name: name.into(),
            password: "a long enough passphrase".into(),
            ..Default::default()
        };
        // What Kim's next user creation answers (a refusal's code).
        let kim_creates = |name: &str| {
            let (mut directory, request) = (directory.clone(), authed(&token, create(name)));
            async move { directory.create_user(request).await.err().map(|e| e.code()) }
        };
        assert_eq!(kim_creates("ann").await, None);
        let mut remove = assign(apb::AssignmentKind::Active, &kim.id, USER_ADMINISTRATOR);
        remove.action = apb::RequestAction::AdminRemove as i32;
        hold_back(&ts, streams::ASSIGNMENT, true).await?;
        assignments.create_request(authed(&admin, remove)).await?;
        assert_eq!(
            kim_creates("bob").await,
            Some(Code::PermissionDenied),
            "the removed role's cached answer was dropped"
        );
        hold_back(&ts, streams::ASSIGNMENT, false).await?;

        // A custom role loses the permission Kim used: Kim loses it with the answer.
        let mut roles = RoleServiceClient::new(ts.channel.clone());
        let onboarder = roles
            .create_role_definition(authed(
                &admin,
                apb::CreateRoleDefinitionRequest {
                    name: "Onboarder".into(),
                    description: "Adds new colleagues".into(),
                    permissions: vec![permissions::USERS_MANAGE.into(), permissions::USERS_READ.into()],
                    privileged: false,
                },
            ))
            .await?
            .into_inner();
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &kim.id, &onboarder.id),
            ))
            .await?;
        assert_eq!(kim_creates("cas").await, None);
        hold_back(&ts, streams::ASSIGNMENT, true).await?;
        roles
            .update_role_definition(authed(
                &admin,
                apb::UpdateRoleDefinitionRequest {
                    role: onboarder.id.clone(),
                    permissions: vec![permissions::USERS_READ.into()],
                    ..Default::default()
                },
            ))
            .await?;
        assert_eq!(
            kim_creates("dee").await,
            Some(Code::PermissionDenied),
            "the lost permission's cached answer was dropped"
        );
        hold_back(&ts, streams::ASSIGNMENT, false).await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_access_reaches_cached_answers_embedded() -> anyhow::Result<()> {
    lost_access_is_not_served_from_the_cache(
        TestSuite::embedded_with(&[("PIM_ACCESS_CACHE_TTL_MS", "60000".into())]).await?,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_access_reaches_cached_answers_on_redis() -> anyhow::Result<()> {
    lost_access_is_not_served_from_the_cache(
        TestSuite::postgres_with(None, &[("PIM_ACCESS_CACHE_TTL_MS", "60000".into())]).await?,
    )
    .await
}

/// Sessions: refresh tokens rotate; signing out or being disabled ends the session's tokens
/// in every service, before they expire.
async fn sessions_end_everywhere(ts: TestSuite) -> anyhow::Result<()> {
    use pim_proto::assignment::v1::ListRoleDefinitionsRequest;
    use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let lee = directory
            .create_user(authed(
                &admin,
                ipb::CreateUserRequest {
                    user_name: "lee".into(),
                    password: "lee's long passphrase".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        let mut auth = AuthServiceClient::new(ts.channel.clone());
        let signed_in = auth
            .sign_in(ipb::SignInRequest {
                user_name: "lee".into(),
                password: "lee's long passphrase".into(),
            })
            .await?
            .into_inner();
        assert!(!signed_in.refresh_token.is_empty());
        let refreshed = auth
            .refresh(ipb::RefreshRequest {
                refresh_token: signed_in.refresh_token.clone(),
            })
            .await?
            .into_inner();
        assert_ne!(refreshed.refresh_token, signed_in.refresh_token);
        let reused = auth
            .refresh(ipb::RefreshRequest {
                refresh_token: signed_in.refresh_token.clone(),
            })
            .await
            .expect_err("rotated");
        assert_eq!(reused.code(), Code::Unauthenticated);
        // The spent token shown again ended the session (reuse detection): Lee signs in again.
        let refreshed = auth
            .sign_in(ipb::SignInRequest {
                user_name: "lee".into(),
                password: "lee's long passphrase".into(),
            })
            .await?
            .into_inner();

        let works = |token: String| {
            let channel = ts.channel.clone();
            async move {
                RoleServiceClient::new(channel)
                    .list_role_definitions(authed(&token, ListRoleDefinitionsRequest {}))
                    .await
                    .map(|_| ())
            }
        };
        works(refreshed.access_token.clone()).await?;
        // Redis refusing identity's events does not keep a session alive in this process.
        hold_back(&ts, streams::IDENTITY, true).await?;
        auth.sign_out(authed(&refreshed.access_token, ipb::SignOutRequest::default()))
            .await?;
        // Once the sign-out answers, its token works no more.
        let refused = works(refreshed.access_token.clone()).await.expect_err("signed out");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        hold_back(&ts, streams::IDENTITY, false).await?;
        // The ended session's token used again is a refusal on record, once however often it
        // comes back (a client retrying it, or a thief), naming whose it was; a token that is
        // not valid is on record too, once, naming nobody.
        works(refreshed.access_token.clone())
            .await
            .expect_err("still signed out");
        for _ in 0..2 {
            works("e30.e30.c2lnbmF0dXJl".into())
                .await
                .expect_err("not a token identity issued");
        }
        // A change assignment records after them: once audit has it, it has every refusal
        // assignment recorded before (one stream, in order), so none comes late.
        RoleServiceClient::new(ts.channel.clone())
            .create_role_definition(authed(
                &admin,
                pim_proto::assignment::v1::CreateRoleDefinitionRequest {
                    name: "After the refusals".into(),
                    permissions: vec!["app.marker/read".into()],
                    ..Default::default()
                },
            ))
            .await?;
        let (revoked, invalid) = eventually(Duration::from_secs(10), "the refused tokens on record", || async {
            let query = |action: &str| pim_proto::audit::v1::QueryEventsRequest {
                action: action.into(),
                ..Default::default()
            };
            let marked = ts
                .audit_records(&admin, query("pim.assignment.v1.RoleDefinitionCreated"))
                .await?;
            if marked.is_empty() {
                return Ok(None);
            }
            let records = ts
                .audit_records(&admin, query("pim.assignment.v1.AccessDenied"))
                .await?;
            let denied = |reason: &str| {
                records
                    .iter()
                    .filter(|r| r.action.ends_with("AccessDenied") && r.payload_json.contains(reason))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let (revoked, invalid) = (denied("a session that ended"), denied("not valid"));
            Ok((!revoked.is_empty() && !invalid.is_empty()).then_some((revoked, invalid)))
        })
        .await?;
        assert_eq!(
            revoked.iter().map(|r| r.actor_id.as_str()).collect::<Vec<_>>(),
            vec![lee.id.as_str()],
            "{revoked:?}"
        );
        assert_eq!(
            invalid.iter().map(|r| r.actor_id.as_str()).collect::<Vec<_>>(),
            vec![""],
            "{invalid:?}"
        );
        let after = auth
            .refresh(ipb::RefreshRequest {
                refresh_token: refreshed.refresh_token.clone(),
            })
            .await
            .expect_err("session over");
        assert_eq!(after.code(), Code::Unauthenticated);

        // Disabled: every token of the user stops working.
        let again = ts.sign_in("lee", "lee's long passphrase").await?;
        works(again.clone()).await?;
        hold_back(&ts, streams::IDENTITY, true).await?;
        directory
            .disable_user(authed(&admin, ipb::GetUserRequest { user: "lee".into() }))
            .await?;
        eventually(
            Duration::from_secs(5),
            "the disabled user's token to stop working",
            || async {
                Ok(works(again.clone())
                    .await
                    .err()
                    .filter(|e| e.code() == Code::Unauthenticated)
                    .map(|_| ()))
            },
        )
        .await?;
        hold_back(&ts, streams::IDENTITY, false).await?;
        works(admin.clone()).await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_everywhere_embedded() -> anyhow::Result<()> {
    sessions_end_everywhere(TestSuite::embedded().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_everywhere_on_redis() -> anyhow::Result<()> {
    sessions_end_everywhere(TestSuite::postgres().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_service_principals_are_maintained_safely() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let mut ids = std::collections::HashMap::new();
        for name in ["ann", "lee"] {
            let u = directory
                .create_user(authed(
                    &admin,
                    ipb::CreateUserRequest {
                        user_name: name.into(),
                        password: format!("{name}'s long passphrase"),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            ids.insert(name, u.id);
        }
        AssignmentServiceClient::new(ts.channel.clone())
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Eligible, &ids["lee"], SECURITY_ADMINISTRATOR),
            ))
            .await?;

        let updated = directory
            .update_user(authed(
                &admin,
                ipb::UpdateUserRequest {
                    user: "ann".into(),
                    display_name: "Ann Example".into(),
                    email: "ann@example.org".into(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(
            (updated.display_name.as_str(), updated.email.as_str()),
            ("Ann Example", "ann@example.org")
        );
        let bad = directory
            .update_user(authed(
                &admin,
                ipb::UpdateUserRequest {
                    user: "ann".into(),
                    display_name: "Ann".into(),
                    email: "not an address".into(),
                },
            ))
            .await
            .expect_err("bad email");
        assert_eq!(bad.code(), Code::InvalidArgument);

        let has_roles = directory
            .delete_user(authed(&admin, ipb::GetUserRequest { user: "lee".into() }))
            .await
            .expect_err("eligible");
        assert_eq!(has_roles.code(), Code::FailedPrecondition);
        directory
            .delete_user(authed(&admin, ipb::GetUserRequest { user: "ann".into() }))
            .await?;
        assert_eq!(
            directory
                .get_user(authed(&admin, ipb::GetUserRequest { user: "ann".into() }))
                .await
                .expect_err("gone")
                .code(),
            Code::NotFound
        );
        assert!(ts.sign_in("ann", "ann's long passphrase").await.is_err());

        // A bot: its secret rotates (the old one stops working) and disabling it ends its tokens.
        let (bot, secret) = ts.create_service_principal(&admin, "ticket bot").await?;
        // Listed by name, a page at a time, and found by part of its name. A name is held
        // once: a second "ticket bot" is refused.
        let again = directory
            .create_service_principal(authed(
                &admin,
                ipb::CreateServicePrincipalRequest {
                    display_name: "ticket bot".into(),
                },
            ))
            .await
            .expect_err("the name is taken");
        assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
        for name in ["audit exporter", "zz deploy bot"] {
            ts.create_service_principal(&admin, name).await?;
        }
        let (mut names, mut page_token) = (Vec::new(), String::new());
        loop {
            let page = directory
                .list_service_principals(authed(
                    &admin,
                    ipb::ListServicePrincipalsRequest {
                        page_size: 1,
                        page_token,
                        filter: String::new(),
                    },
                ))
                .await?
                .into_inner();
            assert!(page.service_principals.len() <= 1);
            names.extend(page.service_principals.into_iter().map(|sp| sp.display_name));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(names, ["audit exporter", "ticket bot", "zz deploy bot"]);
        let found = directory
            .list_service_principals(authed(
                &admin,
                ipb::ListServicePrincipalsRequest {
                    filter: "BOT".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .service_principals;
        assert_eq!(found.len(), 2);
        let mut auth = AuthServiceClient::new(ts.channel.clone());
        let sign_in = |secret: String| ipb::SignInServicePrincipalRequest {
            client_id: bot.clone(),
            client_secret: secret,
        };
        let token = auth
            .sign_in_service_principal(sign_in(secret.clone()))
            .await?
            .into_inner()
            .access_token;
        let rotated = directory
            .rotate_service_principal_secret(authed(
                &admin,
                ipb::RotateServicePrincipalSecretRequest {
                    service_principal_id: bot.clone(),
                    keep_previous_for: None,
                },
            ))
            .await?
            .into_inner()
            .client_secret;
        assert_eq!(
            auth.sign_in_service_principal(sign_in(secret.clone()))
                .await
                .expect_err("old secret")
                .code(),
            Code::Unauthenticated
        );
        // What the old secret got stops working; what the new one gets works at once.
        eventually(
            Duration::from_secs(5),
            "the old secret's token to stop working",
            || async { Ok((!works(&ts, &token).await?).then_some(())) },
        )
        .await?;
        let token = auth
            .sign_in_service_principal(sign_in(rotated.clone()))
            .await?
            .into_inner()
            .access_token;
        assert!(works(&ts, &token).await?, "the new secret's token works");

        // Whoever manages apps manages the secrets of apps that hold no privileged role; an
        // app's that does is protected like a privileged person's, or Dee would rotate it,
        // sign in as the app and use its role.
        let app_manager = RoleServiceClient::new(ts.channel.clone())
            .create_role_definition(authed(
                &admin,
                apb::CreateRoleDefinitionRequest {
                    name: "App Manager".into(),
                    description: "Looks after the apps".into(),
                    permissions: vec![permissions::SERVICE_PRINCIPALS_MANAGE.into()],
                    privileged: false,
                },
            ))
            .await?
            .into_inner();
        let cas = ts.create_user(&admin, "cas").await?;
        let dee = ts.create_user(&admin, "dee").await?;
        let (plain_bot, _) = ts.create_service_principal(&admin, "plain-bot").await?;
        let (role_bot, _) = ts.create_service_principal(&admin, "role-bot").await?;
        ts.settle().await?;
        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &cas.id, &app_manager.id),
            ))
            .await?;
        for role in [app_manager.id.as_str(), crate::activation::GLOBAL_READER] {
            assignments
                .create_request(authed(&admin, assign(apb::AssignmentKind::Active, &dee.id, role)))
                .await?;
        }
        assignments
            .create_request(authed(
                &admin,
                assign(
                    apb::AssignmentKind::Active,
                    &role_bot,
                    pim_proto::catalogue::PRIVILEGED_ROLE_ADMINISTRATOR,
                ),
            ))
            .await?;
        let cas_id = cas.id.clone();
        let cas = ts.sign_in("cas", &pim_e2e::password_of("cas")).await?;
        let app = |id: &str| ipb::GetServicePrincipalRequest {
            service_principal_id: id.into(),
        };
        let rotation = |id: &str| ipb::RotateServicePrincipalSecretRequest {
            service_principal_id: id.into(),
            keep_previous_for: None,
        };
        // Whether an app is privileged is read from its assignments, which Cas may not read.
        let unread = directory
            .rotate_service_principal_secret(authed(&cas, rotation(&plain_bot)))
            .await
            .expect_err("Cas cannot tell");
        assert_eq!(unread.code(), Code::PermissionDenied, "{unread:?}");
        assert!(
            unread.message().contains("pim.assignments.read"),
            "{}",
            unread.message()
        );
        let dee = ts.sign_in("dee", &pim_e2e::password_of("dee")).await?;
        directory
            .rotate_service_principal_secret(authed(&dee, rotation(&plain_bot)))
            .await?;
        let rotate = directory
            .rotate_service_principal_secret(authed(&dee, rotation(&role_bot)))
            .await
            .expect_err("role-bot holds a privileged role");
        assert_eq!(rotate.code(), Code::PermissionDenied, "{rotate:?}");
        assert!(rotate.message().contains("privileged role"), "{}", rotate.message());
        let disable = directory
            .disable_service_principal(authed(&dee, app(&role_bot)))
            .await
            .expect_err("nor may Dee disable it");
        assert_eq!(disable.code(), Code::PermissionDenied, "{disable:?}");
        directory
            .rotate_service_principal_secret(authed(&admin, rotation(&role_bot)))
            .await?;
        // Dee may ask what an app decides, not what a person does.
        {
            use pim_proto::approval::v1 as rpb;
            let mut approval = pim_proto::approval::v1::access_review_service_client::AccessReviewServiceClient::new(
                ts.channel.clone(),
            );
            let of = |id: &str| rpb::ListPrivilegedDecisionsOfRequest {
                principal_id: id.into(),
            };
            approval
                .list_privileged_decisions_of(authed(&dee, of(&role_bot)))
                .await?;
            let person = approval
                .list_privileged_decisions_of(authed(&dee, of(&cas_id)))
                .await
                .expect_err("Cas is a person");
            assert_eq!(person.code(), Code::PermissionDenied, "{person:?}");
            assert!(
                person.message().contains("only about a service principal"),
                "{person:?}"
            );
        }
        // A privileged role scheduled to start later protects as one in force: whoever took
        // the secret now would hold the role when it starts.
        let (later_bot, _) = ts.create_service_principal(&admin, "later-bot").await?;
        ts.settle().await?;
        let mut later = assign(
            apb::AssignmentKind::Active,
            &later_bot,
            pim_proto::catalogue::PRIVILEGED_ROLE_ADMINISTRATOR,
        );
        if let Some(schedule) = later.schedule.as_mut() {
            schedule.start_time = Some(pim_runtime::db::to_timestamp(pim_runtime::db::now_ms() + 3_600_000));
        }
        let scheduled = assignments.create_request(authed(&admin, later)).await?.into_inner();
        assert_eq!(scheduled.status, apb::RequestStatus::ScheduleCreated as i32);
        let rotate = directory
            .rotate_service_principal_secret(authed(&dee, rotation(&later_bot)))
            .await
            .expect_err("later-bot will hold a privileged role");
        assert_eq!(rotate.code(), Code::PermissionDenied, "{rotate:?}");

        // An app disabled holds nothing, whatever stays assigned to it.
        const SECURITY_READER: &str = "5d6b6bb7-de71-4623-b4af-96380a352509";
        AssignmentServiceClient::new(ts.channel.clone())
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &bot, SECURITY_READER),
            ))
            .await?;
        let holds = || {
            use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
            let (channel, admin, bot) = (ts.channel.clone(), admin.clone(), bot.clone());
            async move {
                let ask = apb::CheckAccessRequest {
                    principal_id: bot,
                    target: Some(apb::check_access_request::Target::RoleId(SECURITY_READER.into())),
                    scope: "/".into(),
                    ..Default::default()
                };
                anyhow::Ok(
                    AccessServiceClient::new(channel)
                        .check_access(authed(&admin, ask))
                        .await?
                        .into_inner()
                        .allowed,
                )
            }
        };
        assert!(holds().await?, "the bot holds Security Reader");
        directory
            .disable_service_principal(authed(
                &admin,
                ipb::GetServicePrincipalRequest {
                    service_principal_id: bot.clone(),
                },
            ))
            .await?;
        assert_eq!(
            auth.sign_in_service_principal(sign_in(rotated))
                .await
                .expect_err("disabled")
                .code(),
            Code::Unauthenticated
        );
        eventually(Duration::from_secs(5), "the disabled bot to hold nothing", || async {
            Ok((!holds().await?).then_some(()))
        })
        .await?;
        eventually(
            Duration::from_secs(5),
            "the disabled bot's token to stop working",
            || {
                let (mut directory, token) = (directory.clone(), token.clone());
                async move {
                    let r = directory
                        .get_principal(authed(
                            &token,
                            ipb::GetPrincipalRequest {
                                principal_id: "x".into(),
                            },
                        ))
                        .await;
                    Ok(r.err().filter(|e| e.code() == Code::Unauthenticated).map(|_| ()))
                }
            },
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Allowed-and-refused pairs by role: who may make and change role-assignable groups, and who
/// may reset a privileged user's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_what_it_should_and_no_more() -> anyhow::Result<()> {
    const PRIVILEGED_ROLE_ADMINISTRATOR: &str = "e8611ab8-c189-46e8-94e1-60213ab1f814";
    const GROUPS_ADMINISTRATOR: &str = "fdd7a751-b60b-444a-984c-02652fe8fa1c";
    const PRIVILEGED_AUTHENTICATION_ADMINISTRATOR: &str = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13";
    let ts = TestSuite::embedded_with(&[("PIM_MAX_ROLE_ASSIGNABLE_GROUPS", "1".into())]).await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        let mut tokens = std::collections::HashMap::new();
        let mut ids = std::collections::HashMap::new();
        for (name, role) in [
            ("pra", Some(PRIVILEGED_ROLE_ADMINISTRATOR)),
            ("gra", Some(GROUPS_ADMINISTRATOR)),
            ("uad", Some(USER_ADMINISTRATOR)),
            ("paa", Some(PRIVILEGED_AUTHENTICATION_ADMINISTRATOR)),
            ("aad", Some(AUTHENTICATION_ADMINISTRATOR)),
            ("lee", None),
        ] {
            let password = format!("{name}'s long passphrase");
            let u = directory
                .create_user(authed(
                    &admin,
                    ipb::CreateUserRequest {
                        user_name: name.into(),
                        password: password.clone(),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            if let Some(role) = role {
                assignments
                    .create_request(authed(&admin, assign(apb::AssignmentKind::Active, &u.id, role)))
                    .await?;
            }
            tokens.insert(name, ts.sign_in(name, &password).await?);
            ids.insert(name, u.id);
        }
        // Lee becomes privileged: eligible for Security Administrator.
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Eligible, &ids["lee"], SECURITY_ADMINISTRATOR),
            ))
            .await?;

        let group = |name: &str| ipb::CreateGroupRequest {
            display_name: name.into(),
            description: String::new(),
            is_assignable_to_role: true,
            owner_ids: vec![],
        };
        for refused in ["gra", "uad"] {
            let e = directory
                .create_group(authed(&tokens[refused], group("nope")))
                .await
                .expect_err("not theirs");
            assert_eq!(
                e.code(),
                Code::PermissionDenied,
                "{refused} creating a role-assignable group"
            );
        }
        let team = directory
            .create_group(authed(&tokens["pra"], group("tier 0")))
            .await?
            .into_inner();
        let member = ipb::GroupMembershipRequest {
            group_id: team.id.clone(),
            principal_id: ids["lee"].clone(),
        };
        for refused in ["gra", "uad"] {
            let e = directory
                .add_group_member(authed(&tokens[refused], member.clone()))
                .await
                .expect_err("not theirs");
            assert_eq!(
                e.code(),
                Code::PermissionDenied,
                "{refused} changing a role-assignable group"
            );
        }
        directory.add_group_member(authed(&tokens["pra"], member)).await?;
        let over_cap = directory
            .create_group(authed(&tokens["pra"], group("tier 0 again")))
            .await
            .expect_err("cap of 1");
        assert_eq!(over_cap.code(), Code::ResourceExhausted);

        let reset = ipb::ResetPasswordRequest {
            user: "lee".into(),
            new_password: "a brand new long passphrase".into(),
        };
        for refused in ["aad", "uad"] {
            let e = directory
                .reset_password(authed(&tokens[refused], reset.clone()))
                .await
                .expect_err("Lee is privileged");
            assert_eq!(
                e.code(),
                Code::PermissionDenied,
                "{refused} resetting a privileged user's password"
            );
        }
        directory.reset_password(authed(&tokens["paa"], reset)).await?;
        assert!(ts.sign_in("lee", "a brand new long passphrase").await.is_ok());
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
