//! The first vertical slice: the bootstrap administrator signs in, creates Lee, makes Lee an
//! active Exchange Administrator for an hour; CheckAccess says yes until then; audit shows who
//! did what; and a caller without the roles is refused.

use std::time::Duration;

use tonic::Code;

use pim_e2e::{TestSuite, authed, eventually};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::audit::v1 as aupb;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::db::{from_timestamp, now_ms};

const EXCHANGE_ADMINISTRATOR: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";
const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
const LEE_PASSWORD: &str = "lee's long passphrase";

fn check(principal: &str, role: &str, scope: &str) -> apb::CheckAccessRequest {
    apb::CheckAccessRequest {
        principal_id: principal.into(),
        target: Some(apb::check_access_request::Target::RoleId(role.into())),
        scope: scope.into(),
        ..Default::default()
    }
}

fn assign_active(principal: &str, role: &str, hours: i64, justification: &str) -> apb::CreateRequestRequest {
    apb::CreateRequestRequest {
        action: apb::RequestAction::AdminAssign as i32,
        kind: apb::AssignmentKind::Active as i32,
        principal_id: principal.into(),
        role_id: role.into(),
        scope: "/".into(),
        schedule: crate::activation::lasting(hours * 3_600_000),
        justification: justification.into(),
        ticket: Some(pim_proto::common::v1::Ticket {
            system: "ServiceNow".into(),
            number: "INC0012345".into(),
        }),
        validate_only: false,
    }
}

async fn run_slice(ts: &TestSuite) -> anyhow::Result<()> {
    let admin = ts.admin_token().await?;
    let mut directory = DirectoryServiceClient::new(ts.channel.clone());
    let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
    let mut access = AccessServiceClient::new(ts.channel.clone());
    let mut audit = AuditServiceClient::new(ts.channel.clone());

    let admin_id = directory
        .get_user(authed(
            &admin,
            ipb::GetUserRequest {
                user: ts.admin_user.clone(),
            },
        ))
        .await?
        .into_inner()
        .id;
    let lee = directory
        .create_user(authed(
            &admin,
            ipb::CreateUserRequest {
                user_name: "lee@contoso.example".into(),
                display_name: "Lee Gu".into(),
                email: "lee@contoso.example".into(),
                password: LEE_PASSWORD.into(),
            },
        ))
        .await?
        .into_inner();

    // Before: Lee holds nothing.
    let before = access
        .check_access(authed(&admin, check(&lee.id, EXCHANGE_ADMINISTRATOR, "/")))
        .await?
        .into_inner();
    assert!(!before.allowed);

    let request = assignments
        .create_request(authed(
            &admin,
            assign_active(&lee.id, EXCHANGE_ADMINISTRATOR, 1, "mailbox migration"),
        ))
        .await?
        .into_inner();
    assert_eq!(request.status, apb::RequestStatus::Provisioned as i32);
    assert_eq!(request.requested_by, admin_id);

    let decision = access
        .check_access(authed(&admin, check(&lee.id, EXCHANGE_ADMINISTRATOR, "/")))
        .await?
        .into_inner();
    assert!(decision.allowed, "Lee is an active Exchange Administrator");
    let expires_at = from_timestamp(decision.expires_at.as_ref().expect("a one-hour assignment expires"));
    let in_an_hour = now_ms() + 3_600_000;
    assert!(
        (in_an_hour - expires_at).abs() < 60_000,
        "expires in about an hour, not {expires_at}"
    );
    assert_eq!(decision.assignment_ids, vec![request.assignment_id.clone()]);
    // An assignment at / applies below it; it grants only the role it names.
    let below = access
        .check_access(authed(
            &admin,
            check(&lee.id, EXCHANGE_ADMINISTRATOR, "/subscriptions/s1"),
        ))
        .await?
        .into_inner();
    assert!(below.allowed);
    let other_role = access
        .check_access(authed(&admin, check(&lee.id, GLOBAL_ADMINISTRATOR, "/")))
        .await?
        .into_inner();
    assert!(!other_role.allowed);

    // Audit: both actions, with actor, target, role and time.
    let records = eventually(Duration::from_secs(10), "audit records of Lee", || {
        let mut audit = audit.clone();
        let admin = admin.clone();
        let lee_id = lee.id.clone();
        async move {
            let r = audit
                .query_events(authed(
                    &admin,
                    aupb::QueryEventsRequest {
                        target_id: lee_id,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .records;
            let has = |t: &str| r.iter().any(|x| x.action.ends_with(t));
            Ok((has("UserCreated") && has("ActiveAssignmentGranted")).then_some(r))
        }
    })
    .await?;
    let created = records
        .iter()
        .find(|r| r.action == "pim.identity.v1.UserCreated")
        .expect("user creation audited");
    assert_eq!(
        (created.actor_id.as_str(), created.target_id.as_str()),
        (admin_id.as_str(), lee.id.as_str())
    );
    let granted = records
        .iter()
        .find(|r| r.action == "pim.assignment.v1.ActiveAssignmentGranted")
        .expect("assignment audited");
    assert_eq!(granted.actor_id, admin_id);
    assert_eq!(granted.target_id, lee.id);
    assert_eq!(granted.role_id, EXCHANGE_ADMINISTRATOR);
    assert_eq!(granted.role_name, "Exchange Administrator");
    assert_eq!(granted.scope, "/");
    assert_eq!(granted.justification, "mailbox migration");
    assert_eq!(granted.ticket, "ServiceNow:INC0012345");
    assert!(granted.time.is_some());
    // Each event is recorded once, also once every event has been delivered and applied.
    ts.settle().await?;
    let records = audit
        .clone()
        .query_events(authed(
            &admin,
            aupb::QueryEventsRequest {
                target_id: lee.id.clone(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .records;
    let ids: std::collections::HashSet<_> = records.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(ids.len(), records.len());

    // Lee is no administrator: the same actions are refused.
    let lee_token = ts.sign_in("lee@contoso.example", LEE_PASSWORD).await?;
    let refused = directory
        .create_user(authed(
            &lee_token,
            ipb::CreateUserRequest {
                user_name: "eve".into(),
                display_name: String::new(),
                email: String::new(),
                password: "eve's long passphrase".into(),
            },
        ))
        .await
        .expect_err("Lee may not create users");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = assignments
        .create_request(authed(
            &lee_token,
            assign_active(&lee.id, GLOBAL_ADMINISTRATOR, 1, "let me in"),
        ))
        .await
        .expect_err("Lee may not assign roles");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let still = access
        .check_access(authed(&lee_token, check(&lee.id, GLOBAL_ADMINISTRATOR, "/")))
        .await?
        .into_inner();
    assert!(!still.allowed, "a refused request changes nothing");
    // Lee may ask about Lee, not about the administrator.
    let prying = access
        .check_access(authed(&lee_token, check(&admin_id, GLOBAL_ADMINISTRATOR, "/")))
        .await
        .expect_err("not Lee's business");
    assert_eq!(prying.code(), Code::PermissionDenied);
    // Lee's audit view holds only what involves Lee.
    let mine = audit
        .query_events(authed(&lee_token, aupb::QueryEventsRequest::default()))
        .await?
        .into_inner()
        .records;
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|r| r.actor_id == lee.id || r.target_id == lee.id));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_on_postgres_and_redis() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = run_slice(&ts).await;
    ts.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_on_the_embedded_default() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = run_slice(&ts).await;
    ts.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_invalid_argument_or_failed_precondition() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        let short = directory
            .create_user(authed(
                &admin,
                ipb::CreateUserRequest {
                    user_name: "kim".into(),
                    password: "short".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("short password");
        assert_eq!(short.code(), Code::InvalidArgument);
        assert!(short.message().contains("password"));
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
        let again = directory
            .create_user(authed(
                &admin,
                ipb::CreateUserRequest {
                    user_name: "KIM".into(),
                    password: "kim's long passphrase".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("user names are unique, whatever the case");
        assert_eq!(again.code(), Code::AlreadyExists);
        let mut no_justification = assign_active(&kim.id, EXCHANGE_ADMINISTRATOR, 1, "");
        no_justification.schedule = Some(apb::Schedule {
            start_time: None,
            expiration: Some(apb::schedule::Expiration::Permanent(true)),
        });
        let refused = assignments
            .create_request(authed(&admin, no_justification))
            .await
            .expect_err("policy refuses");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        let rules = pim_runtime::grpc::violated_rules(&refused);
        assert_eq!(rules, vec!["ExpirationRule", "JustificationRule"]);
        let mut bad_scope = assign_active(&kim.id, EXCHANGE_ADMINISTRATOR, 1, "x");
        bad_scope.scope = "subscriptions/../x".into();
        assert_eq!(
            assignments
                .create_request(authed(&admin, bad_scope))
                .await
                .expect_err("scope")
                .code(),
            Code::InvalidArgument
        );
        let unknown = assign_active("01a21966-0000-7000-8000-000000000000", EXCHANGE_ADMINISTRATOR, 1, "x");
        assert_eq!(
            assignments
                .create_request(authed(&admin, unknown))
                .await
                .expect_err("no such principal")
                .code(),
            Code::NotFound
        );
        let mut dry = assign_active(&kim.id, EXCHANGE_ADMINISTRATOR, 1, "dry run");
        dry.validate_only = true;
        let validated = assignments.create_request(authed(&admin, dry)).await?.into_inner();
        assert!(validated.id.is_empty());
        let held = AccessServiceClient::new(ts.channel.clone())
            .check_access(authed(&admin, check(&kim.id, EXCHANGE_ADMINISTRATOR, "/")))
            .await?
            .into_inner();
        assert!(!held.allowed, "validate_only changes nothing");
        let wrong = ts
            .sign_in(&ts.admin_user, "not the password at all")
            .await
            .expect_err("wrong password");
        let unknown = ts
            .sign_in("nobody-here", "not the password at all")
            .await
            .expect_err("unknown user");
        assert_eq!(
            (wrong.code(), unknown.code()),
            (Code::Unauthenticated, Code::Unauthenticated)
        );
        assert_eq!(
            wrong.message(),
            unknown.message(),
            "the same words for an unknown user and a wrong password"
        );
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
