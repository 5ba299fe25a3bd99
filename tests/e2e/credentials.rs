//! Credentials against an attacker who has a user's password but not their phone, on the
//! embedded default (`pim up`) and on PostgreSQL + Redis: sign-in MFA the server enforces,
//! managing MFA only after a step-up, enrolment passes that work once and expire, recovery
//! codes treated as an emergency (alert, audit), and credential protection for members and
//! owners of role-assignable groups.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use totp_rs::TOTP;

use pim_e2e::{TestSuite, assign_for_an_hour as assign, authed, eventually, password_of};
use pim_proto::alerting::v1 as alpb;
use pim_proto::alerting::v1::alert_service_client::AlertServiceClient;
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::audit::v1 as aupb;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;
use pim_runtime::clock::ManualClock;
use pim_runtime::db::now_ms;
use pim_runtime::grpc::violated_rules;

const SECURITY_ADMINISTRATOR: &str = "194ae4cb-b126-40b2-bd5b-6091b380977d";
const PRIVILEGED_AUTHENTICATION_ADMINISTRATOR: &str = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13";
const AUTHENTICATION_ADMINISTRATOR: &str = "c4e39bd9-1100-46d3-8c65-fb160da0071f";
const USER_ADMINISTRATOR: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";

/// Runs `test` on PostgreSQL + Redis and on the embedded default, each with `extra` settings
/// and its services reading a clock the test moves.
async fn on_both<F, Fut>(extra: &[(&str, String)], test: F) -> anyhow::Result<()>
where
    F: Fn(TestSuite, ManualClock) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<TestSuite>>,
{
    for embedded in [false, true] {
        let clock = ManualClock::starting_now();
        let ts = if embedded {
            TestSuite::embedded_with_clock(Some(clock.clone()), extra).await?
        } else {
            TestSuite::postgres_with(Some(clock.clone()), extra).await?
        };
        let ts = test(ts, clock).await?;
        ts.stop().await?;
    }
    Ok(())
}

fn mfa(ts: &TestSuite) -> MfaServiceClient<Channel> {
    MfaServiceClient::new(ts.channel.clone())
}

async fn sign_in(ts: &TestSuite, user: &str, password: &str) -> Result<ipb::SignInResponse, tonic::Status> {
    Ok(AuthServiceClient::new(ts.channel.clone())
        .sign_in(ipb::SignInRequest {
            user_name: user.into(),
            password: password.into(),
        })
        .await?
        .into_inner())
}

/// Enrols TOTP with `token`; returns the authenticator, the method id, the step time its
/// confirming code used and the stepped-up session the confirmation answered with.
async fn enrol(ts: &TestSuite, token: &str, pass: &str) -> anyhow::Result<(TOTP, String, u64, ipb::SignInResponse)> {
    let enrolled = mfa(ts)
        .enroll_totp(authed(
            token,
            ipb::EnrollTotpRequest {
                enrollment_pass: pass.into(),
            },
        ))
        .await?
        .into_inner();
    let authenticator = TOTP::from_url(&enrolled.otpauth_uri).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let at = (now_ms() / 1000) as u64;
    let confirmed = mfa(ts)
        .confirm_totp(authed(
            token,
            ipb::ConfirmTotpRequest {
                method_id: enrolled.method_id.clone(),
                code: authenticator.generate(at),
            },
        ))
        .await?
        .into_inner();
    let session = confirmed
        .session
        .ok_or_else(|| anyhow::anyhow!("confirming returns a session"))?;
    Ok((authenticator, enrolled.method_id, at, session))
}

/// Starts an enrolment with an enrolment pass (or none).
async fn start_enrolment(ts: &TestSuite, token: &str, pass: &str) -> Result<(), tonic::Status> {
    mfa(ts)
        .enroll_totp(authed(
            token,
            ipb::EnrollTotpRequest {
                enrollment_pass: pass.into(),
            },
        ))
        .await
        .map(drop)
}

async fn verify(ts: &TestSuite, token: &str, code: &str) -> Result<ipb::SignInResponse, tonic::Status> {
    Ok(mfa(ts)
        .verify(authed(token, ipb::VerifyRequest { code: code.into() }))
        .await?
        .into_inner())
}

/// What a password-only token tries, in order: every MFA management action of the attack.
async fn manage_mfa(ts: &TestSuite, token: &str, method_id: &str) -> Vec<Result<(), tonic::Status>> {
    let mut m = mfa(ts);
    vec![
        m.generate_recovery_codes(authed(token, ipb::GenerateRecoveryCodesRequest {}))
            .await
            .map(drop),
        m.remove_method(authed(
            token,
            ipb::RemoveMethodRequest {
                method_id: method_id.into(),
            },
        ))
        .await
        .map(drop),
        start_enrolment(ts, token, "").await,
        AuthServiceClient::new(ts.channel.clone())
            .change_password(authed(
                token,
                ipb::ChangePasswordRequest {
                    current_password: password_of("lee"),
                    new_password: "a brand new passphrase".into(),
                },
            ))
            .await
            .map(drop),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mfa_enrolled_a_password_alone_only_gets_a_token_that_can_verify_a_code() -> anyhow::Result<()> {
    on_both(&[], |ts, clock| async move {
        let admin = ts.admin_token().await?;
        let lee = ts.create_user(&admin, "lee").await?;
        let before = ts.sign_in("lee", &password_of("lee")).await?;
        let (authenticator, method_id, confirmed_at, _) = enrol(&ts, &before, "").await?;

        // The attacker has the password: the sign-in is held until a code is verified.
        let held = sign_in(&ts, "lee", &password_of("lee")).await?;
        assert!(held.mfa_pending, "a user with MFA is asked for it at sign-in");
        assert!(held.refresh_token.is_empty(), "no refresh token before MFA");
        let password_only = held.access_token;
        for (i, refused) in manage_mfa(&ts, &password_only, &method_id)
            .await
            .into_iter()
            .enumerate()
        {
            let refused = refused.expect_err("a password-only token manages no MFA");
            assert_eq!(refused.code(), Code::Unauthenticated, "attempt {i}: {refused:?}");
            assert!(refused.message().contains("not complete"), "{}", refused.message());
        }
        let elsewhere = [
            mfa(&ts)
                .list_methods(authed(&password_only, ipb::ListMethodsRequest::default()))
                .await
                .map(drop),
            AssignmentServiceClient::new(ts.channel.clone())
                .create_request(authed(
                    &password_only,
                    pim_e2e::activate_for_an_hour(SECURITY_ADMINISTRATOR, "triage"),
                ))
                .await
                .map(drop),
            AuditServiceClient::new(ts.channel.clone())
                .query_events(authed(&password_only, aupb::QueryEventsRequest::default()))
                .await
                .map(drop),
            AlertServiceClient::new(ts.channel.clone())
                .list_alerts(authed(&password_only, alpb::ListAlertsRequest::default()))
                .await
                .map(drop),
            DirectoryServiceClient::new(ts.channel.clone())
                .get_user(authed(&password_only, ipb::GetUserRequest { user: "lee".into() }))
                .await
                .map(drop),
        ];
        for refused in elsewhere {
            assert_eq!(refused.expect_err("refused everywhere").code(), Code::Unauthenticated);
        }

        // A wrong code does not complete it; the authenticator's next code does.
        let wrong = verify(&ts, &password_only, "000000").await.expect_err("a wrong code");
        assert!(matches!(wrong.code(), Code::Unauthenticated), "{wrong:?}");
        let complete = verify(&ts, &password_only, &authenticator.generate(confirmed_at + 30)).await?;
        assert!(!complete.mfa_pending && complete.amr.contains(&"otp".to_owned()));
        assert!(!complete.refresh_token.is_empty(), "the completed sign-in can refresh");
        let listed = mfa(&ts)
            .list_methods(authed(&complete.access_token, ipb::ListMethodsRequest::default()))
            .await?
            .into_inner();
        assert_eq!(listed.methods.len(), 1);
        let refreshed = AuthServiceClient::new(ts.channel.clone())
            .refresh(ipb::RefreshRequest {
                refresh_token: complete.refresh_token.clone(),
            })
            .await?
            .into_inner();
        assert!(!refreshed.mfa_pending);
        // The spent refresh token shown again (someone kept a copy): the session ends, so the
        // newest refresh token and its access token stop working too, whoever holds them.
        let refresh = |refresh_token: String| {
            let mut auth = AuthServiceClient::new(ts.channel.clone());
            async move { auth.refresh(ipb::RefreshRequest { refresh_token }).await }
        };
        // Shown again at once, it is the client's own retry: refused, and the session goes on.
        let retried = refresh(complete.refresh_token.clone()).await.expect_err("spent");
        assert_eq!(retried.code(), Code::Unauthenticated);
        let refreshed = refresh(refreshed.refresh_token.clone()).await?.into_inner();
        // Shown again later, it is a copy.
        clock.advance(Duration::from_secs(11));
        let reused = refresh(complete.refresh_token.clone()).await.expect_err("spent");
        assert_eq!(reused.code(), Code::Unauthenticated);
        let newest = refresh(refreshed.refresh_token.clone())
            .await
            .expect_err("the session ended");
        assert_eq!(newest.code(), Code::Unauthenticated);
        eventually(
            Duration::from_secs(5),
            "the session's tokens to stop working",
            || async {
                let asked = mfa(&ts)
                    .list_methods(authed(&refreshed.access_token, ipb::ListMethodsRequest::default()))
                    .await;
                Ok(asked.err().filter(|e| e.code() == Code::Unauthenticated).map(drop))
            },
        )
        .await?;

        // A held sign-in may be abandoned.
        let abandoned = sign_in(&ts, "lee", &password_of("lee")).await?;
        AuthServiceClient::new(ts.channel.clone())
            .sign_out(authed(&abandoned.access_token, ipb::SignOutRequest::default()))
            .await?;

        // The audit log tells the held sign-in from the completed one.
        let records = eventually(Duration::from_secs(15), "sign-ins in the audit log", || async {
            let actions = ts.audited_actions(&admin, &lee.id).await?;
            Ok(actions
                .iter()
                .any(|a| a.ends_with(".SessionRevoked"))
                .then_some(actions))
        })
        .await?;
        assert!(
            records.iter().any(|a| a == "pim.identity.v1.SignInMfaPending"),
            "{records:?}"
        );
        assert!(records.iter().any(|a| a == "pim.identity.v1.SignInSucceeded"));
        assert!(records.iter().any(|a| a == "pim.identity.v1.MfaEnrolled"));
        Ok(ts)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managing_mfa_needs_a_recent_step_up_and_recovery_codes_raise_an_alert() -> anyhow::Result<()> {
    // Sign-in MFA off: the password gets a full token, and each rule must hold on its own.
    on_both(&[("PIM_SIGNIN_MFA", "off".into())], |ts, clock| async move {
        let admin = ts.admin_token().await?;
        let lee = ts.create_user(&admin, "lee").await?;
        AssignmentServiceClient::new(ts.channel.clone())
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Eligible, &lee.id, SECURITY_ADMINISTRATOR),
            ))
            .await?;
        let first = ts.sign_in("lee", &password_of("lee")).await?;
        let (authenticator, method_id, confirmed_at, _) = enrol(&ts, &first, "").await?;

        // The four steps of the attack, each refused with the password alone.
        let password_only = sign_in(&ts, "lee", &password_of("lee")).await?;
        assert!(!password_only.mfa_pending);
        for (i, refused) in manage_mfa(&ts, &password_only.access_token, &method_id)
            .await
            .into_iter()
            .enumerate()
        {
            let refused = refused.expect_err("a password-only token manages no MFA");
            assert_eq!(violated_rules(&refused), vec!["MfaRule"], "attempt {i}: {refused:?}");
        }

        // After a step-up: new recovery codes, and the other sessions end.
        let stepped = verify(
            &ts,
            &password_only.access_token,
            &authenticator.generate(confirmed_at + 30),
        )
        .await?;
        let codes = mfa(&ts)
            .generate_recovery_codes(authed(&stepped.access_token, ipb::GenerateRecoveryCodesRequest {}))
            .await?
            .into_inner()
            .codes;
        assert_eq!(codes.len(), 10);
        eventually(Duration::from_secs(10), "the other session ends", || {
            let mut directory = DirectoryServiceClient::new(ts.channel.clone());
            let first = first.clone();
            async move {
                let outcome = directory
                    .get_user(authed(&first, ipb::GetUserRequest { user: "lee".into() }))
                    .await;
                Ok(outcome.err().filter(|s| s.code() == Code::Unauthenticated))
            }
        })
        .await?;

        // A stale step-up counts for nothing.
        clock.advance(Duration::from_secs(11 * 60));
        let stale = mfa(&ts)
            .generate_recovery_codes(authed(&stepped.access_token, ipb::GenerateRecoveryCodesRequest {}))
            .await
            .expect_err("the step-up is 11 minutes old");
        assert_eq!(violated_rules(&stale), vec!["MfaRule"]);
        // So does a password change, refused, and recorded as every refusal for want of a
        // recent MFA is (ChangePassword records its own refusals).
        let stale = AuthServiceClient::new(ts.channel.clone())
            .change_password(authed(
                &stepped.access_token,
                ipb::ChangePasswordRequest {
                    current_password: password_of("lee"),
                    new_password: "a brand new passphrase".into(),
                },
            ))
            .await
            .expect_err("the step-up is 11 minutes old");
        assert_eq!(violated_rules(&stale), vec!["MfaRule"]);
        eventually(
            Duration::from_secs(10),
            "the stale password change recorded",
            || async {
                let query = aupb::QueryEventsRequest {
                    target_id: lee.id.clone(),
                    ..Default::default()
                };
                let records = ts.audit_records(&admin, query).await?;
                Ok(records
                    .iter()
                    .any(|r| {
                        r.action.ends_with(".AccessDenied")
                            && r.payload_json.contains("ChangePassword")
                            && r.payload_json.contains("MfaRule")
                    })
                    .then_some(()))
            },
        )
        .await?;

        // A recovery code steps up once, says how many are left, and raises an alert.
        let rescued = verify(&ts, &password_only.access_token, &codes[0]).await?;
        assert_eq!(rescued.recovery_codes_left, Some(9));
        let again = verify(&ts, &password_only.access_token, &codes[0]).await;
        assert_eq!(
            again.expect_err("a recovery code works once").code(),
            Code::Unauthenticated
        );

        // With that step-up: a second authenticator, the first removed, a new password.
        let (second, _, second_at, _) = enrol(&ts, &rescued.access_token, "").await?;
        mfa(&ts)
            .remove_method(authed(
                &rescued.access_token,
                ipb::RemoveMethodRequest {
                    method_id: method_id.clone(),
                },
            ))
            .await?;
        // A wrong current password is refused, and audited as a failed sign-in of Lee.
        let wrong = AuthServiceClient::new(ts.channel.clone())
            .change_password(authed(
                &rescued.access_token,
                ipb::ChangePasswordRequest {
                    current_password: "not lee's password at all".into(),
                    new_password: "a brand new passphrase".into(),
                },
            ))
            .await
            .expect_err("the current password is wrong");
        assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
        let query = aupb::QueryEventsRequest {
            action: "SignInFailed".into(),
            target_id: lee.id.clone(),
            ..Default::default()
        };
        eventually(Duration::from_secs(10), "the wrong current password audited", || {
            let (admin, query, ts) = (admin.clone(), query.clone(), &ts);
            async move {
                let records = ts.audit_records(&admin, query).await?;
                Ok(records
                    .iter()
                    .any(|r| r.outcome == "failure" && r.payload_json.contains("bad_current_password"))
                    .then_some(()))
            }
        })
        .await?;
        AuthServiceClient::new(ts.channel.clone())
            .change_password(authed(
                &rescued.access_token,
                ipb::ChangePasswordRequest {
                    current_password: password_of("lee"),
                    new_password: "a brand new passphrase".into(),
                },
            ))
            .await?;
        assert!(
            ts.sign_in("lee", &password_of("lee")).await.is_err(),
            "the old password is gone"
        );
        let fresh = sign_in(&ts, "lee", "a brand new passphrase").await?;
        verify(&ts, &fresh.access_token, &second.generate(second_at + 30)).await?;

        // Alerts: the recovery code (high: Lee is eligible for a privileged role), and the
        // removed method of a privileged account.
        let alerts = eventually(Duration::from_secs(15), "the recovery-code alerts", || {
            let admin = admin.clone();
            let mut alerts = AlertServiceClient::new(ts.channel.clone());
            async move {
                let listed = alerts
                    .list_alerts(authed(&admin, alpb::ListAlertsRequest::default()))
                    .await?
                    .into_inner()
                    .alerts;
                let wanted = ["recovery_code_used", "mfa_method_removed"];
                Ok(wanted
                    .iter()
                    .all(|rule| listed.iter().any(|a| a.rule_id == *rule))
                    .then_some(listed))
            }
        })
        .await?;
        let recovery = alerts
            .iter()
            .find(|a| a.rule_id == "recovery_code_used")
            .expect("listed");
        assert_eq!(recovery.principal_id, lee.id);
        assert_eq!(recovery.severity, alpb::Severity::High as i32);

        // The audit log has the recovery code's own record, naming the session it came from.
        let used = eventually(Duration::from_secs(15), "the recovery code's audit record", || async {
            let query = aupb::QueryEventsRequest {
                action: "pim.identity.v1.RecoveryCodeUsed".into(),
                ..Default::default()
            };
            Ok(ts.audit_records(&admin, query).await?.into_iter().next())
        })
        .await?;
        assert_eq!(used.actor_id, lee.id);
        assert!(used.payload_json.contains("\"session_id\""), "{}", used.payload_json);
        assert!(!used.payload_json.contains(&codes[0]), "no code in the audit log");
        Ok(ts)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_authenticator_needs_an_enrolment_pass_that_works_once_and_expires() -> anyhow::Result<()> {
    on_both(&[], |ts, clock| async move {
        let admin = ts.admin_token().await?;
        let ann = ts.create_user(&admin, "ann").await?;
        // A day later, the window after the account's creation has closed.
        clock.advance(Duration::from_secs(25 * 3600));
        let token = ts.sign_in("ann", &password_of("ann")).await?;
        let closed = start_enrolment(&ts, &token, "").await.expect_err("no pass, no window");
        assert_eq!(closed.code(), Code::FailedPrecondition);
        assert!(closed.message().contains("enrolment pass"), "{}", closed.message());

        let pass = |lifetime: i64| {
            let admin = admin.clone();
            let mut m = mfa(&ts);
            async move {
                m.create_enrollment_pass(authed(
                    &admin,
                    ipb::CreateEnrollmentPassRequest {
                        user: "ann".into(),
                        lifetime: Some(prost_types::Duration {
                            seconds: lifetime,
                            nanos: 0,
                        }),
                        uses: 0,
                    },
                ))
                .await
                .map(|r| r.into_inner())
            }
        };
        let issued = pass(3600).await?;
        assert_eq!(issued.pass.as_ref().map(|p| p.uses_left), Some(1));
        let listed = mfa(&ts)
            .list_enrollment_passes(authed(&admin, ipb::ListEnrollmentPassesRequest { user: "ann".into() }))
            .await?
            .into_inner()
            .passes;
        assert_eq!(listed.len(), 1);
        assert!(!format!("{listed:?}").contains(&issued.code), "the code is shown once");
        assert_eq!(
            pass(60).await.expect_err("shorter than 10 minutes").code(),
            Code::InvalidArgument
        );

        let wrong = start_enrolment(&ts, &token, "AAAAA-BBBBB-CCCCC-DDDDD")
            .await
            .expect_err("a wrong pass");
        assert_eq!(wrong.code(), Code::PermissionDenied);
        let (authenticator, _, at, stepped) = enrol(&ts, &token, &issued.code).await?;
        assert!(stepped.amr.contains(&"otp".to_owned()));
        assert!(
            verify(&ts, &stepped.access_token, &authenticator.generate(at + 30))
                .await
                .is_ok()
        );

        // Once used, the pass is gone, even after an administrator's reset.
        mfa(&ts)
            .reset_mfa(authed(&admin, ipb::ResetMfaRequest { user: "ann".into() }))
            .await?;
        // The reset signed Ann out.
        let token = ts.sign_in("ann", &password_of("ann")).await?;
        clock.advance(Duration::from_secs(25 * 3600));
        let used = start_enrolment(&ts, &token, &issued.code)
            .await
            .expect_err("a single-use pass works once");
        assert_eq!(used.code(), Code::PermissionDenied);

        // A pass that outlived its lifetime is refused.
        let short = pass(600).await?;
        clock.advance(Duration::from_secs(11 * 60));
        let expired = start_enrolment(&ts, &token, &short.code)
            .await
            .expect_err("the pass expired");
        assert_eq!(expired.code(), Code::PermissionDenied);

        let records = eventually(Duration::from_secs(15), "the passes in the audit log", || async {
            let actions = ts.audited_actions(&admin, &ann.id).await?;
            let passes = actions.iter().filter(|a| a.ends_with(".EnrollmentPassCreated")).count();
            Ok((passes == 2).then_some(actions))
        })
        .await?;
        assert!(
            records.iter().any(|a| a == "pim.identity.v1.EnrollmentPassUsed"),
            "{records:?}"
        );
        assert!(records.iter().any(|a| a == "pim.identity.v1.MfaReset"));
        Ok(ts)
    })
    .await
}

/// Waits for a failure record of `who`'s whose payload names `reason`.
async fn refusal_recorded(ts: &TestSuite, admin: &str, who: &str, reason: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), reason, || async {
        let query = pim_proto::audit::v1::QueryEventsRequest {
            outcome: "failure".into(),
            ..Default::default()
        };
        let records = ts.audit_records(admin, query).await?;
        Ok(records
            .iter()
            .any(|r| r.actor_name == who && r.payload_json.contains(reason))
            .then_some(()))
    })
    .await
}

/// Requiring MFA at sign-in reaches sessions already open: one of a user with no method is not
/// refreshed (they sign in again, and enrol), where it would have gone on for 12 hours. A
/// refresh refused for the session's own reason is on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiring_mfa_reaches_sessions_already_open() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "lee").await?;
        let before = sign_in(&ts, "lee", &password_of("lee")).await?;
        assert!(!before.refresh_token.is_empty() && !before.enrollment_required);
        // A session signed out is refreshed no more, and the attempt is on record: the first
        // three in the window, however many are made.
        let ended = sign_in(&ts, "lee", &password_of("lee")).await?;
        AuthServiceClient::new(ts.channel.clone())
            .sign_out(authed(&ended.access_token, ipb::SignOutRequest::default()))
            .await?;
        for _ in 0..5 {
            let refused = AuthServiceClient::new(ts.channel.clone())
                .refresh(ipb::RefreshRequest {
                    refresh_token: ended.refresh_token.clone(),
                })
                .await
                .expect_err("signed out");
            assert_eq!(refused.code(), Code::Unauthenticated);
        }
        refusal_recorded(&ts, &admin, "lee", "refresh_session_ended").await?;
        let ts = ts
            .restart_with(|c| c.signin_mfa = pim_runtime::config::SigninMfa::Required)
            .await?;
        let refused = AuthServiceClient::new(ts.channel.clone())
            .refresh(ipb::RefreshRequest {
                refresh_token: before.refresh_token.clone(),
            })
            .await
            .expect_err("a session without MFA ends at its next refresh");
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(refused.message().contains("enrol"), "{}", refused.message());
        refusal_recorded(&ts, &admin, "lee", "refresh_mfa_required").await?;
        // Recorded after them, in order: the signed-out session's refusals are all in.
        let query = pim_proto::audit::v1::QueryEventsRequest {
            outcome: "failure".into(),
            ..Default::default()
        };
        let records = ts.audit_records(&admin, query).await?;
        let ended = records
            .iter()
            .filter(|r| r.payload_json.contains("refresh_session_ended"))
            .count();
        assert_eq!(ended, 3, "five refusals, three on record");
        let again = sign_in(&ts, "lee", &password_of("lee")).await?;
        assert!(again.enrollment_required, "signed in again, Lee enrols");
        anyhow::Ok(ts)
    }
    .await;
    match result {
        Ok(ts) => ts.stop().await,
        Err(e) => Err(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_mfa_is_required_a_user_without_a_method_can_only_enrol_one() -> anyhow::Result<()> {
    on_both(&[("PIM_SIGNIN_MFA", "required".into())], |ts, _clock| async move {
        // The break-glass administrator has no method either: even they must enrol first.
        let held = sign_in(&ts, &ts.admin_user, &ts.admin_password).await?;
        assert!(held.enrollment_required && !held.mfa_pending);
        let refused = DirectoryServiceClient::new(ts.channel.clone())
            .list_users(authed(&held.access_token, ipb::ListUsersRequest::default()))
            .await
            .expect_err("nothing before enrolment");
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(refused.message().contains("enrol"), "{}", refused.message());
        let cannot_verify = verify(&ts, &held.access_token, "123456")
            .await
            .expect_err("no code to verify");
        assert_eq!(cannot_verify.code(), Code::Unauthenticated);

        // The account is new, so its enrolment window is open; confirming completes the sign-in.
        let (authenticator, _, at, complete) = enrol(&ts, &held.access_token, "").await?;
        assert!(!complete.refresh_token.is_empty());
        DirectoryServiceClient::new(ts.channel.clone())
            .list_users(authed(&complete.access_token, ipb::ListUsersRequest::default()))
            .await?;
        // From now on the administrator is asked for a code at sign-in.
        let next = sign_in(&ts, &ts.admin_user, &ts.admin_password).await?;
        assert!(next.mfa_pending && !next.enrollment_required);
        verify(&ts, &next.access_token, &authenticator.generate(at + 30)).await?;
        Ok(ts)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_owners_of_role_assignable_groups_are_protected_like_privileged_users() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut ids = std::collections::HashMap::new();
        for name in ["ann", "own", "ord", "bob", "kim", "pat"] {
            ids.insert(name, ts.create_user(&admin, name).await?.id);
        }
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        // A role-assignable group that holds no role yet: Ann is a member, Own an owner.
        let group = directory
            .create_group(authed(
                &admin,
                ipb::CreateGroupRequest {
                    display_name: "ops".into(),
                    is_assignable_to_role: true,
                    owner_ids: vec![ids["own"].clone()],
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        directory
            .add_group_member(authed(
                &admin,
                ipb::GroupMembershipRequest {
                    group_id: group.id.clone(),
                    principal_id: ids["ann"].clone(),
                },
            ))
            .await?;
        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        for (name, role) in [
            ("bob", USER_ADMINISTRATOR),
            ("kim", AUTHENTICATION_ADMINISTRATOR),
            ("pat", PRIVILEGED_AUTHENTICATION_ADMINISTRATOR),
        ] {
            assignments
                .create_request(authed(&admin, assign(apb::AssignmentKind::Active, &ids[name], role)))
                .await?;
        }
        let resets = directory.clone();
        let reset = |token: String, user: &'static str| {
            let mut directory = resets.clone();
            async move {
                directory
                    .reset_password(authed(
                        &token,
                        ipb::ResetPasswordRequest {
                            user: user.into(),
                            new_password: format!("{user}'s reset passphrase"),
                        },
                    ))
                    .await
            }
        };
        for administrator in ["bob", "kim"] {
            let token = ts.sign_in(administrator, &password_of(administrator)).await?;
            for (protected, why) in [("ann", "a member"), ("own", "an owner")] {
                let refused = reset(token.clone(), protected)
                    .await
                    .expect_err("protected by the group");
                assert_eq!(refused.code(), Code::PermissionDenied, "{administrator} on {protected}");
                assert!(
                    refused.message().contains(why) && refused.message().contains("role-assignable group ops"),
                    "{}",
                    refused.message()
                );
            }
            let mfa_reset = mfa(&ts)
                .reset_mfa(authed(&token, ipb::ResetMfaRequest { user: "ann".into() }))
                .await
                .expect_err("MFA too");
            assert_eq!(mfa_reset.code(), Code::PermissionDenied);
            reset(token, "ord").await?;
        }
        let bob = ts.sign_in("bob", &password_of("bob")).await?;
        for refused in [
            directory
                .disable_user(authed(&bob, ipb::GetUserRequest { user: "ann".into() }))
                .await
                .map(drop),
            directory
                .update_user(authed(
                    &bob,
                    ipb::UpdateUserRequest {
                        user: "own".into(),
                        display_name: "Someone else".into(),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ] {
            assert_eq!(refused.expect_err("protected").code(), Code::PermissionDenied);
        }
        let pat = ts.sign_in("pat", &password_of("pat")).await?;
        reset(pat.clone(), "ann").await?;
        reset(pat, "own").await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// MFA failures count within a window (15 minutes): four, a quiet quarter of an hour, then
/// another do not lock; five within it do, for 15 minutes. And a token no password and code gave (an MFA time
/// without `otp`, or an MFA time in the future) is no step-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_failures_count_within_their_window_and_only_real_step_ups_count() -> anyhow::Result<()> {
    let clock = ManualClock::starting_now();
    let ts = TestSuite::embedded_with_clock(Some(clock.clone()), &[]).await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let lee = ts.create_user(&admin, "lee").await?;
        let token = ts.sign_in("lee", &password_of("lee")).await?;
        let (authenticator, _, at, _) = enrol(&ts, &token, "").await?;
        let wrong = |n: usize| {
            let token = token.clone();
            let ts = &ts;
            async move {
                let mut codes = Vec::new();
                for _ in 0..n {
                    let refused = verify(ts, &token, "000000").await.expect_err("a wrong code");
                    codes.push(refused.code());
                }
                codes
            }
        };
        assert_eq!(wrong(4).await, [Code::Unauthenticated; 4]);
        // Four wrong codes lock nothing yet: the right one still works, and clears the count.
        verify(&ts, &token, &authenticator.generate(at + 30)).await?;
        assert_eq!(wrong(4).await, [Code::Unauthenticated; 4]);
        clock.advance(Duration::from_secs(16 * 60));
        assert_eq!(wrong(4).await, [Code::Unauthenticated; 4], "a new window");
        assert_eq!(wrong(1).await, [Code::ResourceExhausted], "five within it lock");
        assert_eq!(wrong(1).await, [Code::ResourceExhausted], "for 15 minutes");
        clock.advance(Duration::from_secs(16 * 60));
        assert_eq!(wrong(1).await, [Code::Unauthenticated], "and no longer");
        // A lockout lasts 15 minutes from when it began, even past the window of the
        // failures that caused it.
        clock.advance(Duration::from_secs(10 * 60));
        let codes = wrong(4).await;
        assert_eq!(codes[3], Code::ResourceExhausted, "{codes:?}");
        clock.advance(Duration::from_secs(6 * 60));
        assert_eq!(
            wrong(1).await,
            [Code::ResourceExhausted],
            "locked until 15 minutes after it began"
        );

        // Tokens the keystore signs but no verified code earned.
        let keys = ts.suite.identity().expect("identity runs here").keystore();
        let forged = |amr: &[&str], mfa_at_ms: i64| {
            let subject = pim_identity::TokenSubject {
                principal_id: lee.id.clone(),
                kind: pim_proto::common::v1::PrincipalKind::User,
                name: "lee".into(),
                amr: amr.iter().map(|m| (*m).to_owned()).collect(),
                session_id: "forged".into(),
                mfa_at: Some(mfa_at_ms / 1000),
                pending: None,
            };
            keys.issue(&subject, Duration::from_secs(600)).map(|i| i.token)
        };
        let now = pim_runtime::clock::Clock::now_ms(&clock);
        for (token, why) in [
            (forged(&["pwd"], now)?, "an MFA time without otp"),
            (forged(&["pwd", "otp"], now + 3_600_000)?, "an MFA time an hour ahead"),
        ] {
            let refused = mfa(&ts)
                .generate_recovery_codes(authed(&token, ipb::GenerateRecoveryCodesRequest {}))
                .await
                .expect_err(why);
            assert_eq!(violated_rules(&refused), vec!["MfaRule"], "{why}");
        }
        let real = forged(&["pwd", "otp"], now)?;
        mfa(&ts)
            .generate_recovery_codes(authed(&real, ipb::GenerateRecoveryCodesRequest {}))
            .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// An administrator's own credential changes of anyone need the administrator's recent MFA:
/// a refreshed session (no MFA in its token) cannot reset MFA, its own included, nor passwords
/// nor issue passes. And an account's first authenticator ends its other sessions, so a
/// password-only session from the enrolment window is out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_changes_need_the_administrators_own_recent_mfa() -> anyhow::Result<()> {
    let clock = ManualClock::starting_now();
    let ts = TestSuite::embedded_with_clock(Some(clock.clone()), &[]).await?;
    let result = async {
        let first = ts.admin_token().await?;
        let other = ts.admin_token().await?;
        let (authenticator, _, at, _) = enrol(&ts, &first, "").await?;
        // The first authenticator ended the administrator's other session.
        eventually(Duration::from_secs(10), "the other session to end", || async {
            let outcome = DirectoryServiceClient::new(ts.channel.clone())
                .get_user(authed(&other, ipb::GetUserRequest { user: "admin".into() }))
                .await;
            Ok(outcome.err().filter(|s| s.code() == Code::Unauthenticated))
        })
        .await?;

        let held = sign_in(&ts, &ts.admin_user, &ts.admin_password).await?;
        let fresh = verify(&ts, &held.access_token, &authenticator.generate(at + 30)).await?;
        ts.create_user(&fresh.access_token, "ann").await?;

        // The break-glass password was used: alerted, whether or not a code followed.
        let held_event = eventually(Duration::from_secs(10), "the held sign-in audited", || async {
            let query = aupb::QueryEventsRequest {
                action: "pim.identity.v1.SignInMfaPending".into(),
                ..Default::default()
            };
            Ok(ts.audit_records(&fresh.access_token, query).await?.into_iter().next())
        })
        .await?;
        eventually(Duration::from_secs(10), "the break-glass alert", || async {
            let alerts = AlertServiceClient::new(ts.channel.clone())
                .list_alerts(authed(&fresh.access_token, alpb::ListAlertsRequest::default()))
                .await?
                .into_inner()
                .alerts;
            Ok(alerts
                .iter()
                .any(|a| a.rule_id == "break_glass_used" && a.evidence_event_ids.contains(&held_event.event_id))
                .then_some(()))
        })
        .await?;
        let refreshed = AuthServiceClient::new(ts.channel.clone())
            .refresh(ipb::RefreshRequest {
                refresh_token: fresh.refresh_token.clone(),
            })
            .await?
            .into_inner()
            .access_token;
        let attempts = |token: String| {
            let ts = &ts;
            async move {
                let mut directory = DirectoryServiceClient::new(ts.channel.clone());
                vec![
                    mfa(ts)
                        .reset_mfa(authed(&token, ipb::ResetMfaRequest { user: "admin".into() }))
                        .await
                        .map(drop),
                    directory
                        .reset_password(authed(
                            &token,
                            ipb::ResetPasswordRequest {
                                user: "ann".into(),
                                new_password: "ann's new passphrase".into(),
                            },
                        ))
                        .await
                        .map(drop),
                    mfa(ts)
                        .create_enrollment_pass(authed(
                            &token,
                            ipb::CreateEnrollmentPassRequest {
                                user: "ann".into(),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(drop),
                ]
            }
        };
        for refused in attempts(refreshed).await {
            let refused = refused.expect_err("a refreshed token has no recent MFA");
            assert_eq!(violated_rules(&refused), vec!["MfaRule"], "{refused:?}");
        }
        DirectoryServiceClient::new(ts.channel.clone())
            .reset_password(authed(
                &fresh.access_token,
                ipb::ResetPasswordRequest {
                    user: "ann".into(),
                    new_password: "ann's new passphrase".into(),
                },
            ))
            .await?;
        clock.advance(Duration::from_secs(11 * 60));
        for refused in attempts(fresh.access_token.clone()).await {
            let refused = refused.expect_err("the step-up is 11 minutes old");
            assert_eq!(violated_rules(&refused), vec!["MfaRule"], "{refused:?}");
        }
        // Each is a security decision: recorded, as a refused call of its method.
        eventually(Duration::from_secs(10), "the six refusals recorded", || async {
            let records = ts
                .audit_records(&fresh.access_token, aupb::QueryEventsRequest::default())
                .await?;
            let refused: Vec<&str> = records
                .iter()
                .filter(|r| r.action.ends_with(".AccessDenied") && r.payload_json.contains("MfaRule"))
                .map(|r| r.payload_json.as_str())
                .filter(|p| !p.contains("GenerateRecoveryCodes"))
                .collect();
            for method in ["ResetMfa", "ResetPassword", "CreateEnrollmentPass"] {
                if refused.iter().filter(|p| p.contains(method)).count() != 2 {
                    return Ok(None);
                }
            }
            Ok((refused.len() == 6).then_some(()))
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Guesses sent all at once are counted before any is checked: no more than the limit (10)
/// are weighed, the rest refused unchecked, and the account is locked after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_sent_at_once_are_no_more_than_the_limit() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "dave").await?;
        let guesses: Vec<_> = (0..40)
            .map(|i| {
                let mut auth = AuthServiceClient::new(ts.channel.clone());
                tokio::spawn(async move {
                    auth.sign_in(ipb::SignInRequest {
                        user_name: "dave".into(),
                        password: format!("guess number {i}"),
                    })
                    .await
                })
            })
            .collect();
        let mut codes = std::collections::HashMap::new();
        for guess in guesses {
            *codes.entry(guess.await?.expect_err("a guess").code()).or_insert(0) += 1;
        }
        assert_eq!(
            codes,
            std::collections::HashMap::from([(Code::Unauthenticated, 10), (Code::ResourceExhausted, 30)]),
            "ten guesses weighed, thirty refused unchecked"
        );
        let locked = ts.sign_in("dave", &password_of("dave")).await.expect_err("locked");
        assert_eq!(locked.code(), Code::ResourceExhausted);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Wrong client secrets are limited by the address they come from (a flood costs a hash and
/// an audit record each), never by the app: a client id is no secret, and counting it would
/// let anyone lock the app out. Apps' failures are counted apart from people's: the flood
/// refuses apps from that address, while people there still sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_secrets_are_limited_by_their_source_not_the_app() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let (bot, secret) = ts.create_service_principal(&admin, "ticket bot").await?;
        let sign_in = |secret: String| {
            let (mut auth, bot) = (AuthServiceClient::new(ts.channel.clone()), bot.clone());
            async move {
                auth.sign_in_service_principal(ipb::SignInServicePrincipalRequest {
                    client_id: bot,
                    client_secret: secret,
                })
                .await
            }
        };
        // More than ten wrong secrets (a user's lockout) leave the app signing in.
        for i in 0..12 {
            let wrong = sign_in(format!("wrong secret {i}")).await.expect_err("wrong");
            assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
        }
        sign_in(secret.clone()).await?;
        // A hundred from one address within the window, and that address is refused unchecked.
        let guesses: Vec<_> = (0..100).map(|i| tokio::spawn(sign_in(format!("guess {i}")))).collect();
        let mut codes = std::collections::HashMap::new();
        for guess in guesses {
            *codes.entry(guess.await?.expect_err("a guess").code()).or_insert(0) += 1;
        }
        assert_eq!(
            codes,
            std::collections::HashMap::from([(Code::Unauthenticated, 88), (Code::ResourceExhausted, 12)]),
            "a hundred failures from one address, the rest refused unchecked"
        );
        let refused = sign_in(secret.clone()).await.expect_err("from that address");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        ts.admin_token().await?;
        // Each failure is on record; the thirteen refused unchecked, once a minute (the
        // next record says how many more came), so a flood cannot fill the audit log.
        let failed = aupb::QueryEventsRequest {
            action: "pim.identity.v1.SignInFailed".into(),
            ..Default::default()
        };
        let records = eventually(Duration::from_secs(10), "the failures audited", || async {
            let records = ts.audit_records(&admin, failed.clone()).await?;
            let wrong = records
                .iter()
                .filter(|r| r.payload_json.contains("bad_client_credentials"));
            Ok((wrong.count() == 12 + 88).then_some(records))
        })
        .await?;
        let refused: Vec<_> = records
            .iter()
            .filter(|r| r.payload_json.contains("locked_out"))
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// A sign-in lockout lasts its window (15 minutes), then the right password works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_lockout_ends_with_its_window() -> anyhow::Result<()> {
    let clock = ManualClock::starting_now();
    let ts = TestSuite::embedded_with_clock(Some(clock.clone()), &[]).await?;
    let result = async {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "bruce").await?;
        for _ in 0..10 {
            let refused = ts.sign_in("bruce", "a guessed passphrase").await.expect_err("wrong");
            assert_eq!(refused.code(), Code::Unauthenticated);
        }
        let locked = ts.sign_in("bruce", &password_of("bruce")).await.expect_err("locked");
        assert_eq!(locked.code(), Code::ResourceExhausted);
        // The refused sign-in is audited as a failure of its own.
        let query = aupb::QueryEventsRequest {
            action: "pim.identity.v1.SignInFailed".into(),
            outcome: "failure".into(),
            ..Default::default()
        };
        eventually(Duration::from_secs(10), "the lockout audited", || {
            let (admin, query) = (admin.clone(), query.clone());
            let ts = &ts;
            async move {
                let records = ts.audit_records(&admin, query).await?;
                Ok(records
                    .iter()
                    .any(|r| r.actor_name == "bruce" && r.payload_json.contains("locked_out"))
                    .then_some(()))
            }
        })
        .await?;
        clock.advance(Duration::from_secs(14 * 60));
        let still = ts
            .sign_in("bruce", &password_of("bruce"))
            .await
            .expect_err("still locked");
        assert_eq!(still.code(), Code::ResourceExhausted);
        clock.advance(Duration::from_secs(2 * 60));
        ts.sign_in("bruce", &password_of("bruce")).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// `PIM_SECRETS_KEY` rotates: with the old key in `PIM_SECRETS_KEY_PREVIOUS`, identity opens
/// what it sealed and seals it again under the new key at start (TOTP seeds, token signing
/// keys), so the next restart needs the new key alone; recovery codes kept under the old key
/// match while it is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_key_rotates_with_the_old_one_given_for_one_restart() -> anyhow::Result<()> {
    use pim_runtime::config::Secret;
    on_both(&[], |ts, _clock| async move {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "lee").await?;
        let before = ts.sign_in("lee", &password_of("lee")).await?;
        let (authenticator, _, confirmed_at, stepped) = enrol(&ts, &before, "").await?;
        let codes = mfa(&ts)
            .generate_recovery_codes(authed(&stepped.access_token, ipb::GenerateRecoveryCodesRequest {}))
            .await?
            .into_inner()
            .codes;
        let old = ts.config.secrets_key.as_ref().expect("the tests' key").expose().clone();
        let new = pim_identity::Sealer::new_key();

        // The new key, the old one given: a recovery code kept under the old key works.
        let ts = ts
            .restart_with(|config| {
                config.secrets_key = Some(Secret::new(new.clone()));
                config.secrets_key_previous = Some(Secret::new(old.clone()));
            })
            .await?;
        let held = sign_in(&ts, "lee", &password_of("lee")).await?;
        assert!(held.mfa_pending);
        let rescued = verify(&ts, &held.access_token, &codes[0]).await?;
        assert_eq!(rescued.recovery_codes_left, Some(9));

        // The new key alone: the seed and the signing keys were sealed again under it.
        let ts = ts.restart_with(|config| config.secrets_key_previous = None).await?;
        let held = sign_in(&ts, "lee", &password_of("lee")).await?;
        let stepped = verify(&ts, &held.access_token, &authenticator.generate(confirmed_at + 30)).await?;
        assert!(stepped.amr.contains(&"otp".to_owned()), "{stepped:?}");
        assert!(
            verify(&ts, &held.access_token, &codes[1]).await.is_err(),
            "a code kept under the old key matches no longer"
        );
        Ok(ts)
    })
    .await
}

/// A password alone signs nobody out: sign-ins waiting for MFA do not count among a user's
/// live sessions, so a hundred of them (someone holding only the password) end none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_waiting_for_mfa_end_no_session() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "kim").await?;
        let before = ts.sign_in("kim", &password_of("kim")).await?;
        let (_, _, _, session) = enrol(&ts, &before, "").await?;
        for _ in 0..pim_identity::MAX_LIVE_SESSIONS {
            let held = sign_in(&ts, "kim", &password_of("kim")).await?;
            assert!(held.mfa_pending, "a password alone waits for MFA");
        }
        assert_ne!(
            crate::trust::check_refused(&ts, session.access_token.clone()).await,
            Some(Code::Unauthenticated),
            "kim's signed-in session goes on"
        );
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Adding a member or an owner to a role-assignable group gives its roles now, standing: an
/// administrator who has a method steps up for it (the refusal on record), as for credential
/// changes; an ordinary group, and removing, need no step-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_to_a_role_assignable_group_needs_the_administrators_recent_mfa() -> anyhow::Result<()> {
    use pim_runtime::clock::Clock;
    let clock = ManualClock::starting_now();
    let ts = TestSuite::embedded_with_clock(Some(clock.clone()), &[]).await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let admin_id = pim_e2e::token_subject(&admin)?;
        let kim = ts.create_user(&admin, "kim").await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let group = |name: &'static str, assignable: bool| {
            let mut directory = directory.clone();
            let admin = admin.clone();
            async move {
                let made = directory
                    .create_group(authed(
                        &admin,
                        ipb::CreateGroupRequest {
                            display_name: name.into(),
                            is_assignable_to_role: assignable,
                            ..Default::default()
                        },
                    ))
                    .await?;
                anyhow::Ok(made.into_inner().id)
            }
        };
        let (tier0, team) = (group("tier0", true).await?, group("team", false).await?);
        enrol(&ts, &admin, "").await?;
        let stale = ts.stepped_up_token(&admin_id, &ts.admin_user, clock.now_ms() - 11 * 60_000)?;
        let link = |group: &str| ipb::GroupMembershipRequest {
            group_id: group.to_owned(),
            principal_id: kim.id.clone(),
        };
        let member = directory
            .add_group_member(authed(&stale, link(&tier0)))
            .await
            .expect_err("no recent MFA");
        let owner = directory
            .add_group_owner(authed(&stale, link(&tier0)))
            .await
            .expect_err("nor as an owner");
        for refused in [&member, &owner] {
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert_eq!(violated_rules(refused), ["MfaRule"], "{refused:?}");
        }
        directory.add_group_member(authed(&stale, link(&team))).await?;
        directory.remove_group_member(authed(&stale, link(&team))).await?;
        // Nor through PIM for Groups: standing (active) access to it is the same grant.
        let access = |kind: apb::AssignmentKind, role: &str| apb::CreateRequestRequest {
            action: apb::RequestAction::AdminAssign as i32,
            kind: kind as i32,
            principal_id: kim.id.clone(),
            role_id: role.into(),
            scope: pim_proto::catalogue::group_scope(&tier0),
            schedule: Some(apb::Schedule {
                start_time: None,
                expiration: Some(apb::schedule::Expiration::Duration(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                })),
            }),
            justification: "on call".into(),
            ..Default::default()
        };
        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        for role in [pim_proto::catalogue::GROUP_MEMBER, pim_proto::catalogue::GROUP_OWNER] {
            let refused = assignments
                .create_request(authed(&stale, access(apb::AssignmentKind::Active, role)))
                .await
                .expect_err("standing access to the group, no recent MFA");
            assert_eq!(violated_rules(&refused), ["MfaRule"], "{role}: {refused:?}");
        }
        assignments
            .create_request(authed(
                &stale,
                access(apb::AssignmentKind::Eligible, pim_proto::catalogue::GROUP_MEMBER),
            ))
            .await?;
        let fresh = ts.stepped_up_token(&admin_id, &ts.admin_user, clock.now_ms())?;
        directory.add_group_member(authed(&fresh, link(&tier0))).await?;
        directory.remove_group_member(authed(&stale, link(&tier0))).await?;
        assignments
            .create_request(authed(
                &fresh,
                access(apb::AssignmentKind::Active, pim_proto::catalogue::GROUP_OWNER),
            ))
            .await?;
        refusal_recorded(&ts, &fresh, &ts.admin_user, "MfaRule").await?;
        // The record of the change names the session it was made in (the token's).
        let added = eventually(Duration::from_secs(10), "the member's addition audited", || async {
            let query = aupb::QueryEventsRequest {
                action: "pim.identity.v1.GroupMemberAdded".into(),
                ..Default::default()
            };
            Ok(ts
                .audit_records(&fresh, query)
                .await?
                .into_iter()
                .find(|r| r.target_id == kim.id))
        })
        .await?;
        let payload: serde_json::Value = serde_json::from_str(&added.payload_json)?;
        assert_eq!(payload["actor_session_id"], "test-session", "{payload}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}
