//! Consistency under concurrency: at most one activation per principal, role and scope,
//! guaranteed by the database (SQLite and PostgreSQL), however many requests race.

use tonic::Code;

use pim_e2e::authed;
use pim_proto::assignment::v1 as apb;
use pim_proto::audit::v1 as aupb;
use pim_runtime::clock::Clock;
use pim_runtime::events::streams;

use crate::activation::{EXCHANGE_ADMINISTRATOR, HOUR_MS, World, activation, request, run_on_both};

const RACERS: usize = 32;
const ROUNDS: usize = 20;

/// `RACERS` concurrent selfActivate calls with `token`; the ones that succeeded, and the
/// refusals (each must be ALREADY_EXISTS naming the winner).
async fn race(w: &World, token: &str) -> anyhow::Result<(Vec<apb::AssignmentRequest>, Vec<tonic::Status>)> {
    all_at_once(w, token, RACERS, |i| {
        activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, &format!("racer {i}"))
    })
    .await
}

/// `n` concurrent CreateRequest calls with `token`, the i-th asking `ask(i)`; the ones that
/// succeeded, and the refusals.
async fn all_at_once(
    w: &World,
    token: &str,
    n: usize,
    ask: impl Fn(usize) -> apb::CreateRequestRequest,
) -> anyhow::Result<(Vec<apb::AssignmentRequest>, Vec<tonic::Status>)> {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut client = w.assignments();
        let asked = authed(token, ask(i));
        calls.spawn(async move { client.create_request(asked).await.map(tonic::Response::into_inner) });
    }
    let (mut won, mut refused) = (Vec::new(), Vec::new());
    while let Some(outcome) = calls.join_next().await {
        match outcome? {
            Ok(request) => won.push(request),
            Err(status) => refused.push(status),
        }
    }
    Ok((won, refused))
}

/// The ids of `principal`'s active Exchange Administrator assignments.
async fn live_activations(w: &World, principal: &str) -> anyhow::Result<Vec<String>> {
    let listed = w
        .assignments()
        .list_active_assignments(authed(
            &w.admin,
            apb::ListAssignmentsRequest {
                principal_id: principal.into(),
                role_id: EXCHANGE_ADMINISTRATOR.into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    Ok(listed.assignments.into_iter().map(|a| a.id).collect())
}

/// Races once; exactly one call must win (with `status`), and every other must be
/// ALREADY_EXISTS.
async fn one_winner(
    w: &World,
    token: &str,
    round: usize,
    status: apb::RequestStatus,
) -> anyhow::Result<(apb::AssignmentRequest, Vec<tonic::Status>)> {
    let (won, refused) = race(w, token).await?;
    assert_eq!(won.len(), 1, "round {round}: exactly one winner ({refused:?})");
    assert_eq!(won[0].status, status as i32);
    for refusal in &refused {
        assert_eq!(refusal.code(), Code::AlreadyExists, "round {round}: {refusal:?}");
    }
    Ok((won.into_iter().next().expect("one"), refused))
}

async fn one_activation_wins_each_race(w: World) -> anyhow::Result<World> {
    let lee = w.user("lee").await?;
    w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
    let token = w.stepped_up(&lee)?;
    for round in 0..ROUNDS {
        let (winner, refused) = one_winner(&w, &token, round, apb::RequestStatus::Provisioned).await?;
        // The refusals name the live activation and its end in RFC 3339.
        assert!(
            refused
                .iter()
                .all(|r| r.message().contains(&winner.assignment_id) && r.message().contains("until 20")),
            "{refused:?}"
        );
        let live = live_activations(&w, &lee.id).await?;
        assert_eq!(live.len(), 1, "round {round}: one live instance: {live:?}");
        // Ready for the next round.
        w.assignments()
            .create_request(authed(
                &token,
                request(
                    apb::RequestAction::SelfDeactivate,
                    apb::AssignmentKind::Active,
                    "",
                    EXCHANGE_ADMINISTRATOR,
                ),
            ))
            .await?;
    }
    Ok(w)
}

async fn one_request_waits_for_approval_after_each_race(w: World) -> anyhow::Result<World> {
    let lee = w.user("lee").await?;
    w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
    w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
        .await?;
    let token = w.stepped_up(&lee)?;
    for round in 0..ROUNDS {
        let (winner, refused) = one_winner(&w, &token, round, apb::RequestStatus::PendingApproval).await?;
        // The refusals name the waiting request and when it was made.
        assert!(
            refused
                .iter()
                .all(|r| r.message().contains(&winner.id) && r.message().contains("since 20")),
            "{refused:?}"
        );
        w.assignments()
            .cancel_request(authed(
                &token,
                apb::GetRequestRequest {
                    request_id: winner.id.clone(),
                },
            ))
            .await?;
    }
    Ok(w)
}

/// The codes and messages of `refused`, to read in a failed assertion.
fn codes(refused: &[tonic::Status]) -> Vec<(Code, &str)> {
    refused.iter().map(|s| (s.code(), s.message())).collect()
}

/// Racing changes: the same eligibility assigned, extended and removed by many administrators'
/// calls at once, its extension asked for by many of its holder's, and an activation ended by
/// many at once; each race has exactly one outcome.
async fn admin_races_have_one_outcome(w: World) -> anyhow::Result<World> {
    use apb::{AssignmentKind as K, RequestAction as A};
    let lee = w.user("lee").await?;
    for round in 0..5 {
        let admin_call = |action: A| {
            let mut ask = request(action, K::Eligible, &lee.id, EXCHANGE_ADMINISTRATOR);
            ask.justification = format!("round {round}");
            ask
        };
        let (won, refused) = all_at_once(&w, &w.admin, RACERS, |_| {
            let mut ask = admin_call(A::AdminAssign);
            ask.schedule = crate::activation::lasting(10 * 24 * 3_600_000);
            ask
        })
        .await?;
        assert_eq!(won.len(), 1, "round {round}: one assignment ({:?})", codes(&refused));
        let assignment = &won[0].assignment_id;
        for refusal in &refused {
            assert_eq!(refusal.code(), Code::AlreadyExists, "round {round}: {refusal:?}");
            assert!(refusal.message().contains(assignment.as_str()), "{refusal:?}");
        }

        // Twelve days: within the last 14, when Lee may ask for more.
        let end = w.clock.now_ms() + 12 * 24 * HOUR_MS + round as i64 * 1000;
        let (won, refused) = all_at_once(&w, &w.admin, RACERS / 2, |_| {
            let mut ask = admin_call(A::AdminExtend);
            ask.schedule = Some(apb::Schedule {
                start_time: None,
                expiration: Some(apb::schedule::Expiration::EndTime(pim_runtime::db::to_timestamp(end))),
            });
            ask
        })
        .await?;
        assert_eq!(won.len(), 1, "round {round}: one extension ({:?})", codes(&refused));
        for refusal in &refused {
            assert!(
                matches!(refusal.code(), Code::Aborted | Code::FailedPrecondition),
                "round {round}: {refusal:?}"
            );
        }

        if round == 0 {
            // Lee asks for more, many times at once: one request waits for approval.
            let (won, refused) = all_at_once(&w, &lee.token, RACERS / 2, |_| {
                let mut ask = request(A::SelfExtend, K::Eligible, "", EXCHANGE_ADMINISTRATOR);
                ask.justification = "the migration slipped".into();
                ask.schedule = Some(apb::Schedule {
                    start_time: None,
                    expiration: Some(apb::schedule::Expiration::EndTime(pim_runtime::db::to_timestamp(
                        end + 24 * HOUR_MS,
                    ))),
                });
                ask
            })
            .await?;
            assert_eq!(won.len(), 1, "one waiting extension ({:?})", codes(&refused));
            assert_eq!(won[0].status, apb::RequestStatus::PendingApproval as i32);
            for refusal in &refused {
                assert_eq!(refusal.code(), Code::AlreadyExists, "{refusal:?}");
                assert!(refusal.message().contains(won[0].id.as_str()), "{refusal:?}");
            }
            w.assignments()
                .cancel_request(authed(
                    &lee.token,
                    apb::GetRequestRequest {
                        request_id: won[0].id.clone(),
                    },
                ))
                .await?;
        }

        let (won, refused) = all_at_once(&w, &w.admin, RACERS / 2, |_| admin_call(A::AdminRemove)).await?;
        assert_eq!(won.len(), 1, "round {round}: one removal ({:?})", codes(&refused));
        for refusal in &refused {
            assert_eq!(refusal.code(), Code::NotFound, "round {round}: {refusal:?}");
        }
    }

    w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
    for round in 0..5 {
        // Stepped up again each round: the clock moves on.
        let token = w.stepped_up(&lee)?;
        w.assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "work")))
            .await?;
        // The default policy lets an activation be ended after 5 minutes.
        w.clock.advance(std::time::Duration::from_secs(6 * 60));
        let (won, refused) = all_at_once(&w, &token, RACERS / 2, |_| {
            request(A::SelfDeactivate, K::Active, "", EXCHANGE_ADMINISTRATOR)
        })
        .await?;
        assert_eq!(won.len(), 1, "round {round}: one deactivation ({:?})", codes(&refused));
        for refusal in &refused {
            assert_eq!(refusal.code(), Code::NotFound, "round {round}: {refusal:?}");
        }
    }
    Ok(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_assignments_extensions_and_removals_have_one_outcome() -> anyhow::Result<()> {
    run_on_both(admin_races_have_one_outcome).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_leave_exactly_one_instance() -> anyhow::Result<()> {
    run_on_both(one_activation_wins_each_race).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_needing_approval_leave_exactly_one_waiting() -> anyhow::Result<()> {
    run_on_both(one_request_waits_for_approval_after_each_race).await
}

/// A refused activation is a security decision like a granted one: audited as a failure with
/// the rules that refused it, and exported to OCSF as a Failure with the reason.
/// The failure record of `action` (short name) whose actor is `actor`, once audit holds it.
pub(crate) async fn failure_record(w: &World, action: &str, actor: &str) -> anyhow::Result<aupb::AuditRecord> {
    let query = aupb::QueryEventsRequest {
        actor_id: actor.into(),
        outcome: "failure".into(),
        ..Default::default()
    };
    pim_e2e::eventually(std::time::Duration::from_secs(10), action, || {
        let (ts, admin, query) = (&w.ts, w.admin.clone(), query.clone());
        async move {
            let records = ts.audit_records(&admin, query).await?;
            Ok(records
                .into_iter()
                .find(|r| r.action.rsplit('.').next() == Some(action)))
        }
    })
    .await
}

/// The OCSF export of every failure `actor` is the actor of.
async fn ocsf_failures(w: &World, actor: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
    let mut export = AuditServiceClient::new(w.ts.channel.clone())
        .export_events(authed(
            &w.admin,
            aupb::ExportEventsRequest {
                filter: Some(aupb::QueryEventsRequest {
                    actor_id: actor.into(),
                    outcome: "failure".into(),
                    ..Default::default()
                }),
                format: "ocsf".into(),
            },
        ))
        .await?
        .into_inner();
    let mut text = Vec::new();
    while let Some(chunk) = export.message().await? {
        text.extend(chunk.data);
    }
    Ok(String::from_utf8(text)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// Every refused attempt is a failure record in QueryEvents and a Failure in the OCSF export,
/// with why: an activation a rule refused, a decision by someone who is not an approver and
/// one on an approval already decided, a wrong password, and PERMISSION_DENIED on an
/// administrative call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_audited_and_exported_as_a_failure() -> anyhow::Result<()> {
    use pim_proto::approval::v1 as appb;
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

    crate::activation::run_on_both(|w| async move {
        let eve = w.user("eve").await?;
        let token = w.stepped_up(&eve)?;
        // An activation the eligibility rule refuses, at a scope spelt as the caller likes: on
        // record as a grant would be, so a search by scope finds it.
        let refused = w
            .assignments()
            .create_request(authed(
                &token,
                apb::CreateRequestRequest {
                    scope: "/Apps/Payments/".into(),
                    ..activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "let me in")
                },
            ))
            .await
            .expect_err("eve is not eligible");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        let record = failure_record(&w, "RequestRefused", &eve.id).await?;
        assert_eq!(
            (
                record.target_id.as_str(),
                record.role_id.as_str(),
                record.scope.as_str()
            ),
            (eve.id.as_str(), EXCHANGE_ADMINISTRATOR, "/apps/payments")
        );
        let payload: serde_json::Value = serde_json::from_str(&record.payload_json)?;
        assert_eq!(payload["action"], "selfActivate");
        assert_eq!(payload["rules"], serde_json::json!(["EligibilityRule"]));

        // Decisions refused: eve is no approver; the admin decides twice.
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
            .await?;
        let lee = w.user("lee").await?;
        let request = w.ask(&lee, "incident 9").await?;
        let approval = w.approval_of(&request.id).await?;
        let decide = |token: &str, approve: bool| {
            let mut client = w.approvals();
            let ask = authed(
                token,
                appb::DecideRequest {
                    approval_id: approval.id.clone(),
                    decision: if approve {
                        appb::Decision::Approve
                    } else {
                        appb::Decision::Deny
                    } as i32,
                    justification: "looked at it".into(),
                },
            );
            async move { client.decide(ask).await }
        };
        let nul = w
            .approvals()
            .decide(authed(
                &w.admin,
                appb::DecideRequest {
                    approval_id: approval.id.clone(),
                    decision: appb::Decision::Approve as i32,
                    justification: "fine\0".into(),
                },
            ))
            .await
            .expect_err("a NUL in the justification");
        assert_eq!(nul.code(), Code::InvalidArgument, "{nul:?}");
        let not_approver = decide(&token, true).await.expect_err("eve is no approver");
        assert_eq!(not_approver.code(), Code::PermissionDenied, "{not_approver:?}");
        decide(&w.admin, false).await?;
        let decided = decide(&w.admin, true).await.expect_err("already decided");
        assert_eq!(decided.code(), Code::FailedPrecondition, "{decided:?}");
        let record = failure_record(&w, "ApprovalDecisionRefused", &eve.id).await?;
        assert_eq!(
            (record.target_id.as_str(), record.role_id.as_str()),
            (lee.id.as_str(), EXCHANGE_ADMINISTRATOR)
        );
        let admin = w.admin_id().await?;
        let record = failure_record(&w, "ApprovalDecisionRefused", &admin).await?;
        let payload: serde_json::Value = serde_json::from_str(&record.payload_json)?;
        assert_eq!(
            (payload["approval_id"].as_str(), payload["code"].as_str()),
            (Some(approval.id.as_str()), Some("FailedPrecondition")),
            "{payload}"
        );

        // A wrong password.
        let wrong = w.ts.sign_in("eve", "not her password").await.expect_err("wrong");
        assert_eq!(wrong.code(), Code::Unauthenticated);
        let record = failure_record(&w, "SignInFailed", &eve.id).await?;
        assert!(record.payload_json.contains("bad_password"), "{record:?}");

        // An administrative call without the permission it needs.
        let denied = DirectoryServiceClient::new(w.ts.channel.clone())
            .create_user(authed(
                &token,
                ipb::CreateUserRequest {
                    user_name: "mallory".into(),
                    display_name: "Mallory".into(),
                    password: "correct horse battery staple".into(),
                    email: String::new(),
                },
            ))
            .await
            .expect_err("eve administers nobody");
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        let record = failure_record(&w, "AccessDenied", &eve.id).await?;
        assert_eq!(record.target_id, "/pim.identity.v1.DirectoryService/CreateUser");
        // A refused call aimed at someone is on record against them: here the admin, named by
        // name, whose password Eve tried to reset.
        let aimed = DirectoryServiceClient::new(w.ts.channel.clone())
            .reset_password(authed(
                &token,
                ipb::ResetPasswordRequest {
                    user: w.ts.admin_user.clone(),
                    new_password: "a password of eve's choosing".into(),
                },
            ))
            .await
            .expect_err("eve resets nobody's password");
        assert_eq!(aimed.code(), Code::PermissionDenied, "{aimed:?}");
        let against = aupb::QueryEventsRequest {
            target_id: admin.clone(),
            actor_id: eve.id.clone(),
            outcome: "failure".into(),
            ..Default::default()
        };
        let records = pim_e2e::eventually(std::time::Duration::from_secs(10), "the attempt on record", || {
            let (ts, token, against) = (&w.ts, w.admin.clone(), against.clone());
            async move { Ok(Some(ts.audit_records(&token, against).await?).filter(|r| !r.is_empty())) }
        })
        .await?;
        assert!(records[0].payload_json.contains("ResetPassword"), "{:?}", records[0]);

        // The export says Failure, and why, for each.
        let exported = ocsf_failures(&w, &eve.id).await?;
        for (action, why) in [
            ("RequestRefused", "not eligible"),
            ("ApprovalDecisionRefused", "not an approver"),
            ("SignInFailed", "bad_password"),
            ("AccessDenied", "requires permission"),
        ] {
            let event = exported
                .iter()
                .find(|e| {
                    e["unmapped"]["pim_action"]
                        .as_str()
                        .is_some_and(|a| a.ends_with(action))
                })
                .unwrap_or_else(|| panic!("{action} exported: {exported:?}"));
            assert_eq!(
                (event["status_id"].as_i64(), event["status"].as_str()),
                (Some(2), Some("Failure"))
            );
            assert!(
                event["status_detail"].as_str().is_some_and(|d| d.contains(why)),
                "{event}"
            );
        }
        Ok(w)
    })
    .await
}

/// Bad input is INVALID_ARGUMENT naming the field, never OK and never INTERNAL: a start no
/// protobuf Timestamp may hold, a start further in the past than the skew allows, NUL characters in a justification or a user name (which
/// PostgreSQL cannot keep as text), a terminal escape sequence in a justification or a line
/// break in a ticket number (which would forge what an approver's terminal shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

    crate::activation::run_on_both(|w| async move {
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        let token = w.stepped_up(&lee)?;
        let mut far_past = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "ok");
        if let Some(schedule) = far_past.schedule.as_mut() {
            schedule.start_time = Some(prost_types::Timestamp {
                seconds: -(1 << 62),
                nanos: 0,
            });
        }
        let nul = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "incident\0 42");
        let escape = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "rota\u{1b}[8m");
        let mut fake_row = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "on call\nsecond line");
        fake_row.ticket = Some(pim_proto::common::v1::Ticket {
            system: "ServiceNow".into(),
            number: "INC1\n01a2  approved  admin".into(),
        });
        // A ticket number that shows as another: a zero-width space takes no room.
        let mut unseen = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "on call");
        unseen.ticket = Some(pim_proto::common::v1::Ticket {
            system: "ServiceNow".into(),
            number: "INC\u{200B}0012345".into(),
        });
        // Nor a link every mail program would offer to follow.
        let mut link = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "on call");
        link.ticket = Some(pim_proto::common::v1::Ticket {
            system: "https".into(),
            number: "//servicenow.example.com/approved:CHG0001".into(),
        });
        // A start more than the skew (5 minutes) in the past; one within it means now.
        let starting = |ago_ms: i64| {
            let mut ask = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "ok");
            if let Some(schedule) = ask.schedule.as_mut() {
                schedule.start_time = Some(pim_runtime::db::to_timestamp(w.clock.now_ms() - ago_ms));
            }
            ask
        };
        let mut within = starting(4 * 60_000);
        within.validate_only = true;
        w.assignments().create_request(authed(&token, within)).await?;
        for (ask, field) in [
            (far_past, "schedule.start_time"),
            (starting(6 * 60_000), "schedule.start_time"),
            (nul, "justification"),
            (escape, "justification"),
            (fake_row, "ticket.number"),
            (unseen, "ticket.number"),
            (link, "ticket.number"),
        ] {
            let refused = w
                .assignments()
                .create_request(authed(&token, ask))
                .await
                .expect_err("bad input");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(refused.message().contains(field), "{refused:?}");
        }
        let sign_in =
            w.ts.sign_in("lee\0", "whatever password")
                .await
                .expect_err("a NUL in the name");
        assert_eq!(sign_in.code(), Code::InvalidArgument, "{sign_in:?}");
        assert!(sign_in.message().contains("user_name"), "{sign_in:?}");
        // What is tried is recorded: an escape sequence in it would forge an audit line.
        let forged =
            w.ts.sign_in(
                "ghost\u{1b}[2J\r\n2026-12-06  RoleActivated  admin",
                "whatever password",
            )
            .await
            .expect_err("control characters in the name");
        assert_eq!(forged.code(), Code::InvalidArgument, "{forged:?}");
        // Malformed sign-ins are refused sign-ins too, on record once a minute per source: the
        // first with its name escaped, those after it within the minute counted in the next.
        w.clock.advance(std::time::Duration::from_secs(61));
        let nameless = w.ts.sign_in("", "whatever password").await.expect_err("no name");
        assert_eq!(nameless.code(), Code::InvalidArgument, "{nameless:?}");
        let malformed = pim_e2e::eventually(
            std::time::Duration::from_secs(10),
            "malformed sign-ins on record",
            || async {
                let query = aupb::QueryEventsRequest {
                    action: "pim.identity.v1.SignInFailed".into(),
                    outcome: "failure".into(),
                    ..Default::default()
                };
                let found: Vec<_> =
                    w.ts.audit_records(&w.admin, query)
                        .await?
                        .into_iter()
                        .filter(|r| r.payload_json.contains("\"malformed\""))
                        .collect();
                Ok((found.len() == 2).then_some(found))
            },
        )
        .await?;
        let payloads: Vec<serde_json::Value> = malformed
            .iter()
            .map(|r| serde_json::from_str(&r.payload_json))
            .collect::<Result<_, _>>()?;
        let names: Vec<&str> = payloads.iter().filter_map(|p| p["user_name"].as_str()).collect();
        assert!(names.contains(&"lee\\0") && names.contains(&""), "{payloads:?}");
        assert!(
            payloads.iter().any(|p| p["user_name"] == "" && p["more_refused"] == 1),
            "the forged one, counted: {payloads:?}"
        );
        assert!(malformed.iter().all(|r| !r.payload_json.contains('\u{1b}')));
        // A lookalike of a user name tried (its `а` Cyrillic) is on record as written, escaped.
        w.ts.sign_in("\u{430}dmin", "whatever password")
            .await
            .expect_err("no such user");
        pim_e2e::eventually(
            std::time::Duration::from_secs(10),
            "the lookalike on record",
            || async {
                let query = aupb::QueryEventsRequest {
                    action: "pim.identity.v1.SignInFailed".into(),
                    ..Default::default()
                };
                let records = w.ts.audit_records(&w.admin, query).await?;
                Ok(records
                    .iter()
                    .any(|r| r.payload_json.contains(r#""user_name":"\\u{430}dmin""#))
                    .then_some(()))
            },
        )
        .await?;
        let bcc = DirectoryServiceClient::new(w.ts.channel.clone())
            .update_user(authed(
                &w.admin,
                ipb::UpdateUserRequest {
                    user: lee.id.clone(),
                    display_name: "Lee".into(),
                    email: "lee@example.com\r\nBcc: eve@example.com".into(),
                },
            ))
            .await
            .expect_err("a header in an address");
        assert_eq!(bcc.code(), Code::InvalidArgument, "{bcc:?}");
        assert!(bcc.message().contains("email"), "{bcc:?}");
        // A name where an id belongs is not "not allowed" but a mistake to point out.
        let by_name = w.check("lee", EXCHANGE_ADMINISTRATOR).await.expect_err("a name");
        let by_name = by_name.downcast_ref::<tonic::Status>().expect("a gRPC answer");
        assert_eq!(by_name.code(), Code::InvalidArgument, "{by_name:?}");
        assert!(by_name.message().contains("principal_id"), "{by_name:?}");
        assert!(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await.is_ok());
        // A scope with an empty segment is a mistake to point out (it once took the handler down).
        for scope in ["//", "///", "/a//b"] {
            let refused =
                pim_proto::assignment::v1::access_service_client::AccessServiceClient::new(w.ts.channel.clone())
                    .check_access(authed(
                        &w.admin,
                        apb::CheckAccessRequest {
                            principal_id: lee.id.clone(),
                            target: Some(apb::check_access_request::Target::RoleId(EXCHANGE_ADMINISTRATOR.into())),
                            scope: scope.into(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .expect_err("an empty segment");
            assert_eq!(refused.code(), Code::InvalidArgument, "{scope}: {refused:?}");
            assert!(refused.message().contains("scope"), "{refused:?}");
        }
        // Searches and filters are short, one-line values; a wildcard in one is matched as is.
        let huge = "x".repeat(50_001);
        let mut audit = pim_proto::audit::v1::audit_service_client::AuditServiceClient::new(w.ts.channel.clone());
        let query = |q: aupb::QueryEventsRequest| {
            let mut audit = audit.clone();
            let admin = w.admin.clone();
            async move { audit.query_events(authed(&admin, q)).await }
        };
        for (q, field) in [
            (
                aupb::QueryEventsRequest {
                    action: huge.clone(),
                    ..Default::default()
                },
                "action",
            ),
            (
                aupb::QueryEventsRequest {
                    outcome: "sucess".into(),
                    ..Default::default()
                },
                "outcome",
            ),
            (
                aupb::QueryEventsRequest {
                    target_id: "lee\nkim".into(),
                    ..Default::default()
                },
                "target_id",
            ),
        ] {
            let refused = query(q).await.expect_err("a bad filter");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(refused.message().starts_with(field), "{refused:?}");
        }
        let wildcard = query(aupb::QueryEventsRequest {
            action: "%".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
        assert!(wildcard.records.is_empty(), "no action ends in a literal %");
        let users = DirectoryServiceClient::new(w.ts.channel.clone())
            .list_users(authed(
                &w.admin,
                ipb::ListUsersRequest {
                    filter: huge.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("too long a search");
        assert_eq!(users.code(), Code::InvalidArgument, "{users:?}");
        // A page token is a position a page gave: a name or an id, not a megabyte.
        let position = DirectoryServiceClient::new(w.ts.channel.clone())
            .list_users(authed(
                &w.admin,
                ipb::ListUsersRequest {
                    page_token: huge.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("too long a page token");
        assert_eq!(position.code(), Code::InvalidArgument, "{position:?}");
        assert!(position.message().starts_with("page_token"), "{position:?}");
        let position = w
            .assignments()
            .list_requests(authed(
                &w.admin,
                apb::ListRequestsRequest {
                    page_token: "r1\nr2".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("a page token over two lines");
        assert_eq!(position.code(), Code::InvalidArgument, "{position:?}");
        assert!(position.message().starts_with("page_token"), "{position:?}");
        // A request status no status has, or a Duration that is no protobuf Duration.
        let unknown_status = w
            .assignments()
            .list_requests(authed(
                &w.admin,
                apb::ListRequestsRequest {
                    status: 99,
                    ..Default::default()
                },
            ))
            .await
            .expect_err("no status 99");
        assert_eq!(unknown_status.code(), Code::InvalidArgument, "{unknown_status:?}");
        assert!(unknown_status.message().contains("status"), "{unknown_status:?}");
        let overflowing = w
            .set_policy(EXCHANGE_ADMINISTRATOR, |p| {
                p.activation_max_duration = Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 1_000_000_000,
                })
            })
            .await
            .expect_err("nanos of a whole second");
        let overflowing = overflowing.downcast_ref::<tonic::Status>().expect("a gRPC answer");
        assert_eq!(overflowing.code(), Code::InvalidArgument, "{overflowing:?}");
        assert!(
            overflowing.message().contains("activation_max_duration"),
            "{overflowing:?}"
        );
        // A name shown to others (a service principal's here) says only what it shows.
        let spoofing = DirectoryServiceClient::new(w.ts.channel.clone())
            .create_service_principal(authed(
                &w.admin,
                ipb::CreateServicePrincipalRequest {
                    display_name: "payments\u{202e}nimda".into(),
                },
            ))
            .await
            .expect_err("a right-to-left override");
        assert_eq!(spoofing.code(), Code::InvalidArgument, "{spoofing:?}");
        assert!(spoofing.message().contains("display_name"), "{spoofing:?}");
        // Nor does one pass for another name: a lookalike (a Cyrillic А, a no-break space), a
        // built-in role's name, or a MIME encoded-word a mail reader would decode.
        let mut directory = DirectoryServiceClient::new(w.ts.channel.clone());
        let mut roles = pim_proto::assignment::v1::role_service_client::RoleServiceClient::new(w.ts.channel.clone());
        for lookalike in [
            "Exchange \u{410}dmins",
            "Exchange\u{a0}Admins",
            "\u{FF25}xchange Admins",
            "Global Administrator",
            "GIobal Administrator",
            "=?UTF-8?B?R2xvYmFsIEFkbWluaXN0cmF0b3LigK4=?=",
        ] {
            let group = ipb::CreateGroupRequest {
                display_name: lookalike.into(),
                ..Default::default()
            };
            // A person may be called anything a role is; not written as another name.
            let user = ipb::UpdateUserRequest {
                user: lee.id.clone(),
                display_name: lookalike.replace("Administrator", "Admin\u{a0}Team"),
                email: String::new(),
            };
            let role = apb::CreateRoleDefinitionRequest {
                name: lookalike.into(),
                permissions: vec!["app.payments/refunds/read".into()],
                ..Default::default()
            };
            let refusals = [
                directory.create_group(authed(&w.admin, group)).await.map(drop),
                directory.update_user(authed(&w.admin, user)).await.map(drop),
                roles.create_role_definition(authed(&w.admin, role)).await.map(drop),
            ];
            for refused in refusals {
                let refused = refused.expect_err(lookalike);
                assert_eq!(refused.code(), Code::InvalidArgument, "{lookalike:?}: {refused:?}");
            }
        }
        // An email address is one user's: mail and Shared Signals name a user by it.
        let lees = ipb::UpdateUserRequest {
            user: lee.id.clone(),
            display_name: "Lee".into(),
            email: "lee@example.com".into(),
        };
        directory.update_user(authed(&w.admin, lees)).await?;
        let copy = ipb::CreateUserRequest {
            user_name: "ann".into(),
            password: pim_e2e::password_of("ann"),
            email: "LEE@example.com".into(),
            ..Default::default()
        };
        let taken = directory.create_user(authed(&w.admin, copy)).await.expect_err("Lee's");
        assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
        assert!(taken.message().contains("email"), "{taken:?}");
        // Nor does a name read as another's of its kind, each letter of one script though it
        // is (`орѕ`, Cyrillic, beside `ops`), as made or as renamed: ALREADY_EXISTS, naming it.
        let group = |name: &str| ipb::CreateGroupRequest {
            display_name: name.into(),
            ..Default::default()
        };
        directory.create_group(authed(&w.admin, group("ops"))).await?;
        let dev = directory
            .create_group(authed(&w.admin, group("dev")))
            .await?
            .into_inner();
        let app = |name: &str| ipb::CreateServicePrincipalRequest {
            display_name: name.into(),
        };
        directory
            .create_service_principal(authed(&w.admin, app("ci-bot")))
            .await?;
        let role = |name: &str| apb::CreateRoleDefinitionRequest {
            name: name.into(),
            permissions: vec!["app.payments/refunds/read".into()],
            ..Default::default()
        };
        roles
            .create_role_definition(authed(&w.admin, role("Payments Reader")))
            .await?;
        let rename = ipb::UpdateGroupRequest {
            group_id: dev.id.clone(),
            display_name: "0PS".into(),
            description: String::new(),
            is_assignable_to_role: None,
        };
        let refusals = [
            (
                "ops",
                directory
                    .create_group(authed(&w.admin, group("\u{43E}\u{440}\u{455}")))
                    .await
                    .map(drop),
            ),
            ("ops", directory.update_group(authed(&w.admin, rename)).await.map(drop)),
            (
                "ci-bot",
                directory
                    .create_service_principal(authed(&w.admin, app("ci-b0t")))
                    .await
                    .map(drop),
            ),
            (
                "Payments Reader",
                roles
                    .create_role_definition(authed(&w.admin, role("Payrnents Reader")))
                    .await
                    .map(drop),
            ),
        ];
        for (held, refused) in refusals {
            let refused = refused.expect_err(held);
            assert_eq!(refused.code(), Code::AlreadyExists, "{held}: {refused:?}");
            assert!(refused.message().contains(" reads as the "), "{refused:?}");
            assert!(refused.message().contains(held), "{refused:?}");
        }
        // A refusal that would echo a megabyte says the start of why, and its code.
        let unknown = audit
            .get_event(authed(
                &w.admin,
                aupb::GetEventRequest {
                    event_id: "e".repeat(1 << 20),
                },
            ))
            .await
            .expect_err("no such event");
        assert_eq!(unknown.code(), Code::NotFound, "{:?}", unknown.code());
        assert!(unknown.message().chars().count() <= 501, "{}", unknown.message().len());
        // A policy's approvers must be principals the directory holds.
        let nobody = uuid::Uuid::now_v7().to_string();
        for unknown in ["nosuchperson", nobody.as_str()] {
            let refused = w
                .set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approver_ids = vec![unknown.to_owned()])
                .await
                .expect_err("no such approver");
            let refused = refused.downcast_ref::<tonic::Status>().expect("a gRPC answer");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(
                refused.message().contains("approver_ids") && refused.message().contains(unknown),
                "{refused:?}"
            );
        }
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approver_ids = vec![lee.id.clone()])
            .await?;
        // A change of who approves leaves no disabled approver, kept ones included; a change
        // of other settings (approvers sent as they are, as the portal sends them) does not
        // weigh them. A dry run (validate_only) says what a change would give and changes
        // nothing.
        let kim = w.user("kim").await?;
        DirectoryServiceClient::new(w.ts.channel.clone())
            .disable_user(authed(&w.admin, ipb::GetUserRequest { user: lee.id.clone() }))
            .await?;
        let refused = w
            .set_policy(EXCHANGE_ADMINISTRATOR, |p| {
                p.approver_ids = vec![lee.id.clone(), kim.id.clone()]
            })
            .await
            .expect_err("Lee is disabled");
        let refused = refused.downcast_ref::<tonic::Status>().expect("a gRPC answer");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("is disabled"), "{refused:?}");
        let ticket = |validate_only: bool| apb::UpdateRolePolicyRequest {
            policy: Some(apb::RolePolicy {
                role_id: EXCHANGE_ADMINISTRATOR.into(),
                scope: "/".into(),
                activation_requires_ticket: true,
                approver_ids: vec![lee.id.clone()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["activation_requires_ticket".into(), "approver_ids".into()],
            }),
            validate_only,
        };
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        let would = policies
            .update_role_policy(authed(&w.admin, ticket(true)))
            .await?
            .into_inner();
        assert!(would.activation_requires_ticket && would.approver_ids == [lee.id.clone()]);
        let read = |policies: &mut PolicyServiceClient<tonic::transport::Channel>| {
            let mut policies = policies.clone();
            let admin = w.admin.clone();
            async move {
                let ask = apb::GetRolePolicyRequest {
                    role_id: EXCHANGE_ADMINISTRATOR.into(),
                    scope: "/".into(),
                };
                anyhow::Ok(policies.get_role_policy(authed(&admin, ask)).await?.into_inner())
            }
        };
        assert!(
            !read(&mut policies).await?.activation_requires_ticket,
            "a dry run changes nothing"
        );
        policies.update_role_policy(authed(&w.admin, ticket(false))).await?;
        assert!(read(&mut policies).await?.activation_requires_ticket);
        Ok(w)
    })
    .await
}

/// Read-your-writes in one process (`pim up`, and `pim serve` hosting identity with
/// assignment): once AddGroupMember or RemoveGroupMember has answered, the very next
/// CheckAccess gives the new answer, every time. On Redis, a membership ended while Redis
/// refuses identity's events ends access all the same: the process applies it before the
/// event leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_one_process_the_next_check_after_a_membership_change_sees_it() -> anyhow::Result<()> {
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

    run_on_both(|w| async move {
        let on_redis = !w.ts.stream_prefix.is_empty();
        let lee = w.user("lee").await?;
        let mut directory = DirectoryServiceClient::new(w.ts.channel.clone());
        let group = operators_group(&mut directory, &w.admin).await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                pim_e2e::assign_for_an_hour(apb::AssignmentKind::Active, &group.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        let membership = ipb::GroupMembershipRequest {
            group_id: group.id.clone(),
            principal_id: lee.id.clone(),
        };
        for round in 0..20 {
            let added = directory.add_group_member(authed(&w.admin, membership.clone())).await?;
            if !on_redis {
                assert_eq!(
                    added.into_inner().consistency_token,
                    "v1",
                    "embedded, the write is applied before it answers: its token asks for nothing"
                );
            }
            assert!(
                w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
                "round {round}: allowed right after AddGroupMember"
            );
            directory
                .remove_group_member(authed(&w.admin, membership.clone()))
                .await?;
            assert!(
                !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
                "round {round}: refused right after RemoveGroupMember"
            );
        }

        directory.add_group_member(authed(&w.admin, membership.clone())).await?;
        assert!(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        crate::protection::hold_back(&w.ts, streams::IDENTITY, true).await?;
        directory
            .remove_group_member(authed(&w.admin, membership.clone()))
            .await?;
        assert!(
            !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "refused right after RemoveGroupMember, while Redis refuses identity's events"
        );
        crate::protection::hold_back(&w.ts, streams::IDENTITY, false).await?;

        if on_redis {
            // The stream numbers each change of the membership, growing in the order they were
            // made: 21 adds and 21 removals, so a consumer given them out of order keeps the last.
            let versions = pim_e2e::eventually(
                std::time::Duration::from_secs(10),
                "every membership change",
                || async {
                    let mut versions = Vec::new();
                    for (event_type, is_member) in [("GroupMemberAdded", true), ("GroupMemberRemoved", false)] {
                        for e in w.events_on(streams::IDENTITY, event_type).await? {
                            let change: pim_proto::events::v1::GroupMembershipChanged =
                                pim_runtime::events::decode(&e)?;
                            if change.group_id == group.id {
                                versions.push((change.version, is_member));
                            }
                        }
                    }
                    versions.sort();
                    Ok((versions.len() == 42).then_some(versions))
                },
            )
            .await?;
            let kinds: Vec<bool> = versions.iter().map(|(_, is_member)| *is_member).collect();
            let alternating: Vec<bool> = (0..42).map(|i| i % 2 == 0).collect();
            assert_eq!(kinds, alternating, "add, remove, add, …: {versions:?}");
            assert!(versions.windows(2).all(|w| w[0].0 < w[1].0), "{versions:?}");

            // An add told late (validly signed, an event not seen before, a version older than
            // the removal applied) changes nothing.
            let (last_removal, _) = versions[41];
            let late = pim_runtime::events::envelope(
                pim_runtime::events::Source::Identity,
                pim_runtime::events::EventType::GroupMemberAdded,
                &lee.id,
                &pim_proto::events::v1::GroupMembershipChanged {
                    actor: None,
                    group_id: group.id.clone(),
                    principal_id: lee.id.clone(),
                    is_assignable_to_role: true,
                    version: last_removal - 1,
                },
            );
            let db =
                w.ts.suite
                    .assignment()
                    .expect("assignment runs here")
                    .assignments_db()
                    .clone();
            w.tell(streams::IDENTITY, late, "assignment", &db).await?;
            let projected = pim_runtime::db::query_one(
                &db,
                "SELECT COUNT(*) AS n FROM group_memberships WHERE group_id = $1 AND principal_id = $2",
                vec![group.id.clone().into(), lee.id.clone().into()],
            )
            .await?
            .map(|r| pim_runtime::db::col::<i64>(&r, "n"))
            .transpose()?;
            assert_eq!(
                projected,
                Some(0),
                "an add told after the later removal changes nothing"
            );
            assert!(!w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        }
        Ok(w)
    })
    .await
}

/// An activation whose end has passed no longer blocks a new one, even before the timer ended
/// it: the database's one-activation rule ends it on the spot (an `expired` RoleDeactivated)
/// and the new activation is made. The same for an administrator's assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_past_its_end_gives_way_before_the_timer_runs() -> anyhow::Result<()> {
    use std::time::Duration;

    crate::activation::run_on_both(|w| async move {
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        let token = w.stepped_up(&lee)?;
        let first = w
            .assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "first")))
            .await?
            .into_inner();
        // Past its end; no timer has run.
        w.clock.advance(Duration::from_millis(HOUR_MS as u64));
        let token = w.stepped_up(&lee)?;
        let second = w
            .assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "second")))
            .await?
            .into_inner();
        assert_eq!(second.status, apb::RequestStatus::Provisioned as i32);
        assert_ne!(second.assignment_id, first.assignment_id);
        assert!(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        let live = live_activations(&w, &lee.id).await?;
        assert_eq!(live, vec![second.assignment_id.clone()]);

        // The same for an administrator's assignment: one past its end gives way to a new one.
        let mut ask = request(
            apb::RequestAction::AdminAssign,
            apb::AssignmentKind::Active,
            &lee.id,
            EXCHANGE_ADMINISTRATOR,
        );
        ask.justification = "on call".into();
        ask.schedule = crate::activation::lasting(24 * 3_600_000);
        let assigned = w
            .assignments()
            .create_request(authed(&w.admin, ask.clone()))
            .await?
            .into_inner();
        w.clock.advance(Duration::from_millis(25 * HOUR_MS as u64));
        let again = w
            .assignments()
            .create_request(authed(&w.admin, ask))
            .await?
            .into_inner();
        assert_ne!(again.assignment_id, assigned.assignment_id);
        assert!(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        Ok(w)
    })
    .await
}

/// A new role-assignable group, "Exchange operators".
pub(crate) async fn operators_group(
    directory: &mut pim_proto::identity::v1::directory_service_client::DirectoryServiceClient<
        tonic::transport::Channel,
    >,
    admin: &str,
) -> anyhow::Result<pim_proto::identity::v1::Group> {
    let group = pim_proto::identity::v1::CreateGroupRequest {
        display_name: "Exchange operators".into(),
        is_assignable_to_role: true,
        ..Default::default()
    };
    Ok(directory.create_group(authed(admin, group)).await?.into_inner())
}

/// Asks replica `channel` whether `principal` holds Exchange Administrator at "/", at least
/// as fresh as `token`, with a one-second deadline.
async fn check_fresh(
    channel: &tonic::transport::Channel,
    admin: &str,
    principal: &str,
    token: &str,
) -> Result<bool, tonic::Status> {
    use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
    let mut request = authed(
        admin,
        apb::CheckAccessRequest {
            principal_id: principal.into(),
            target: Some(apb::check_access_request::Target::RoleId(EXCHANGE_ADMINISTRATOR.into())),
            scope: "/".into(),
            at_least_as_fresh: token.into(),
        },
    );
    request.set_timeout(std::time::Duration::from_secs(1));
    Ok(AccessServiceClient::new(channel.clone())
        .check_access(request)
        .await?
        .into_inner()
        .allowed)
}

/// The distributed shape: a write on one replica (or on identity) answers with a consistency
/// token; a check on another replica of assignment given that token is never stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistency_token_makes_another_replica_answer_after_the_write() -> anyhow::Result<()> {
    use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
    use pim_runtime::consistency::{ConsistencyToken, TOKEN_HEADER};

    let replicas = pim_e2e::Replicas::start(2).await?;
    let result = async {
        let admin = replicas.admin.clone();
        let mut directory = DirectoryServiceClient::new(replicas.identity().await?);
        let (a, b) = (replicas.assignment(0).await?, replicas.assignment(1).await?);
        let lee = directory
            .create_user(authed(
                &admin,
                ipb::CreateUserRequest {
                    user_name: "lee".into(),
                    password: pim_e2e::password_of("lee"),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();

        // Direct assignments: written on A, checked on B.
        let mut writes = AssignmentServiceClient::new(a.clone());
        for round in 0..10 {
            let mut assign = pim_e2e::assign_for_an_hour(apb::AssignmentKind::Active, &lee.id, EXCHANGE_ADMINISTRATOR);
            let granted = writes.create_request(authed(&admin, assign.clone())).await?;
            let header = granted
                .metadata()
                .get(TOKEN_HEADER)
                .map(|v| v.to_str().map(str::to_owned));
            let token = granted.into_inner().consistency_token;
            assert!(
                token.starts_with("v1;"),
                "a write on Redis names its position: {token:?}"
            );
            assert_eq!(
                header.transpose()?,
                Some(token.clone()),
                "the header carries the same token"
            );
            assert!(
                check_fresh(&b, &admin, &lee.id, &token).await?,
                "round {round}: B allows right after the grant on A"
            );
            assign.action = apb::RequestAction::AdminRemove as i32;
            let token = writes
                .create_request(authed(&admin, assign))
                .await?
                .into_inner()
                .consistency_token;
            assert!(
                !check_fresh(&b, &admin, &lee.id, &token).await?,
                "round {round}: B refuses right after the removal on A"
            );
        }

        // Group membership: written on identity, checked on B (and A).
        let group = operators_group(&mut directory, &admin).await?;
        let group_role = writes
            .create_request(authed(
                &admin,
                pim_e2e::assign_for_an_hour(apb::AssignmentKind::Active, &group.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?
            .into_inner()
            .consistency_token;
        let group_role = ConsistencyToken::parse(&group_role).map_err(anyhow::Error::msg)?;
        let membership = ipb::GroupMembershipRequest {
            group_id: group.id.clone(),
            principal_id: lee.id.clone(),
        };
        for round in 0..10 {
            let added = directory
                .add_group_member(authed(&admin, membership.clone()))
                .await?
                .into_inner()
                .consistency_token;
            // What a client holds after both writes: the two tokens merged.
            let both = ConsistencyToken::parse(&added)
                .map_err(anyhow::Error::msg)?
                .merge(&group_role)
                .to_string();
            for (name, replica) in [("A", &a), ("B", &b)] {
                assert!(
                    check_fresh(replica, &admin, &lee.id, &both).await?,
                    "round {round}: {name} allows right after AddGroupMember"
                );
            }
            let removed = directory
                .remove_group_member(authed(&admin, membership.clone()))
                .await?
                .into_inner()
                .consistency_token;
            for (name, replica) in [("A", &a), ("B", &b)] {
                assert!(
                    !check_fresh(replica, &admin, &lee.id, &removed).await?,
                    "round {round}: {name} refuses right after RemoveGroupMember"
                );
            }
        }

        // A user disabled on identity holds nothing on either replica, given DisableUser's
        // token (whichever replica's consumer applied it); enabled, their assignment counts.
        let direct = writes
            .create_request(authed(
                &admin,
                pim_e2e::assign_for_an_hour(apb::AssignmentKind::Active, &lee.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?
            .into_inner()
            .consistency_token;
        let direct = ConsistencyToken::parse(&direct).map_err(anyhow::Error::msg)?;
        let lee_user = || ipb::GetUserRequest { user: lee.id.clone() };
        let disabled = directory.disable_user(authed(&admin, lee_user())).await?;
        let disabled = disabled
            .metadata()
            .get(TOKEN_HEADER)
            .map(|v| v.to_str().map(str::to_owned))
            .transpose()?
            .expect("DisableUser names its position");
        let disabled = ConsistencyToken::parse(&disabled)
            .map_err(anyhow::Error::msg)?
            .merge(&direct)
            .to_string();
        for (name, replica) in [("A", &a), ("B", &b)] {
            assert!(
                !check_fresh(replica, &admin, &lee.id, &disabled).await?,
                "{name} refuses a disabled user right after DisableUser"
            );
        }
        directory.enable_user(authed(&admin, lee_user())).await?;
        for replica in [&a, &b] {
            pim_e2e::eventually(
                std::time::Duration::from_secs(10),
                "enabled, Lee holds it again",
                || async { Ok(check_fresh(replica, &admin, &lee.id, "").await?.then_some(())) },
            )
            .await?;
        }

        // A token no replica reaches before the deadline: UNAVAILABLE, with a retry hint.
        let ahead = format!("v1;{}=99999999999999-0", pim_runtime::events::streams::IDENTITY);
        let stale = check_fresh(&b, &admin, &lee.id, &ahead).await.expect_err("not reached");
        assert_eq!(stale.code(), Code::Unavailable, "{stale:?}");
        use tonic_types::StatusExt;
        assert!(stale.get_details_retry_info().is_some(), "{stale:?}");
        // Tokens this suite did not issue are refused, naming the field.
        for bad in ["nonsense", "v1;pim.approval.events=1-0"] {
            let refused = check_fresh(&b, &admin, &lee.id, bad).await.expect_err(bad);
            assert_eq!(refused.code(), Code::InvalidArgument, "{bad}: {refused:?}");
            assert!(refused.message().contains("at_least_as_fresh"), "{refused:?}");
        }
        anyhow::Ok(())
    }
    .await;
    replicas.stop().await?;
    result
}
