//! MFA step-up on PostgreSQL + Redis: enrol TOTP, confirm it, step up, and activate a role
//! whose policy requires MFA; codes are accepted once; a burst of wrong codes locks MFA;
//! recovery codes work once.

use tonic::Code;
use totp_rs::TOTP;

use pim_e2e::{TestSuite, authed};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;
use pim_runtime::db::now_ms;
use pim_runtime::grpc::violated_rules;

const EXCHANGE_ADMINISTRATOR: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";

async fn user(ts: &TestSuite, admin: &str, name: &str) -> anyhow::Result<(String, String)> {
    let created = ts.create_user(admin, name).await?;
    Ok((created.id, ts.sign_in(name, &pim_e2e::password_of(name)).await?))
}

/// Enrols and confirms TOTP; returns the authenticator, the time whose code confirmed it and
/// the stepped-up token the confirmation answered with.
pub(crate) async fn enrol(
    mfa: &mut MfaServiceClient<tonic::transport::Channel>,
    token: &str,
) -> anyhow::Result<(TOTP, u64, String)> {
    let enrolled = mfa
        .enroll_totp(authed(token, ipb::EnrollTotpRequest::default()))
        .await?
        .into_inner();
    assert!(enrolled.otpauth_uri.starts_with("otpauth://totp/PIM:"));
    let authenticator = TOTP::from_url(&enrolled.otpauth_uri).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let at = (now_ms() / 1000) as u64;
    let code = authenticator.generate(at);
    let confirmed = mfa
        .confirm_totp(authed(
            token,
            ipb::ConfirmTotpRequest {
                method_id: enrolled.method_id,
                code,
            },
        ))
        .await?
        .into_inner();
    let stepped = confirmed.session.map(|s| s.access_token).unwrap_or_default();
    Ok((authenticator, at, stepped))
}

fn activation() -> apb::CreateRequestRequest {
    pim_e2e::activate_for_an_hour(EXCHANGE_ADMINISTRATOR, "mailbox migration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_with_totp_then_activate() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let (lee, lee_token) = user(&ts, &admin, "lee").await?;
        AssignmentServiceClient::new(ts.channel.clone())
            .create_request(authed(
                &admin,
                apb::CreateRequestRequest {
                    action: apb::RequestAction::AdminAssign as i32,
                    kind: apb::AssignmentKind::Eligible as i32,
                    principal_id: lee.clone(),
                    role_id: EXCHANGE_ADMINISTRATOR.into(),
                    scope: "/".into(),
                    ..Default::default()
                },
            ))
            .await?;
        let mut mfa = MfaServiceClient::new(ts.channel.clone());
        let none = mfa
            .verify(authed(&lee_token, ipb::VerifyRequest { code: "123456".into() }))
            .await
            .expect_err("nothing enrolled");
        assert_eq!(none.code(), Code::FailedPrecondition);
        let (authenticator, confirmed_at, _) = enrol(&mut mfa, &lee_token).await?;
        let again = mfa
            .enroll_totp(authed(&lee_token, ipb::EnrollTotpRequest::default()))
            .await
            .expect_err("enrolled already");
        assert_eq!(again.code(), Code::FailedPrecondition);

        let refused = AssignmentServiceClient::new(ts.channel.clone())
            .create_request(authed(&lee_token, activation()))
            .await
            .expect_err("no MFA yet");
        assert_eq!(violated_rules(&refused), vec!["MfaRule"]);

        // The confirmation code was used; the next step's code (within the skew) is fresh.
        let used = authenticator.generate(confirmed_at);
        let replay = mfa
            .verify(authed(&lee_token, ipb::VerifyRequest { code: used }))
            .await
            .expect_err("a code works once");
        assert_eq!(replay.code(), Code::Unauthenticated);
        let next = authenticator.generate(confirmed_at + 30);
        let stepped = mfa
            .verify(authed(&lee_token, ipb::VerifyRequest { code: next.clone() }))
            .await?
            .into_inner();
        assert!(stepped.amr.contains(&"otp".to_owned()));
        let replay = mfa
            .verify(authed(&lee_token, ipb::VerifyRequest { code: next }))
            .await
            .expect_err("a code works once");
        assert_eq!(replay.code(), Code::Unauthenticated);
        // The caller hears only that the code is wrong; the audit log tells a code used
        // before (relayed, or phished) from a mistyped one.
        let query = pim_proto::audit::v1::QueryEventsRequest {
            action: "pim.identity.v1.MfaFailed".into(),
            actor_id: lee.clone(),
            ..Default::default()
        };
        pim_e2e::eventually(std::time::Duration::from_secs(10), "the replays audited", || {
            let (ts, admin, query) = (&ts, admin.clone(), query.clone());
            async move {
                let records = ts.audit_records(&admin, query).await?;
                let replays = records.iter().filter(|r| r.payload_json.contains("replayed_code"));
                Ok((replays.count() == 2).then_some(()))
            }
        })
        .await?;

        let activated = AssignmentServiceClient::new(ts.channel.clone())
            .create_request(authed(&stepped.access_token, activation()))
            .await?
            .into_inner();
        assert_eq!(activated.status, apb::RequestStatus::Provisioned as i32);
        let allowed = AccessServiceClient::new(ts.channel.clone())
            .check_access(authed(
                &admin,
                apb::CheckAccessRequest {
                    principal_id: lee.clone(),
                    target: Some(apb::check_access_request::Target::RoleId(EXCHANGE_ADMINISTRATOR.into())),
                    scope: "/".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        assert!(allowed.allowed);
        let listed = mfa
            .list_methods(authed(&lee_token, ipb::ListMethodsRequest { user: String::new() }))
            .await?
            .into_inner()
            .methods;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].kind, "totp");
        let remove = ipb::RemoveMethodRequest {
            method_id: listed[0].id.clone(),
        };
        let unverified = mfa
            .remove_method(authed(&lee_token, remove.clone()))
            .await
            .expect_err("removing a method needs a recent MFA");
        assert_eq!(violated_rules(&unverified), vec!["MfaRule"]);
        mfa.remove_method(authed(&stepped.access_token, remove)).await?;
        assert!(
            mfa.list_methods(authed(&lee_token, ipb::ListMethodsRequest { user: String::new() }))
                .await?
                .into_inner()
                .methods
                .is_empty()
        );
        let gone = mfa
            .verify(authed(&lee_token, ipb::VerifyRequest { code: "123456".into() }))
            .await
            .expect_err("no method left");
        assert_eq!(gone.code(), Code::FailedPrecondition);
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_lock_mfa_and_recovery_codes_work_once() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let (kim_id, kim_token) = user(&ts, &admin, "kim").await?;
        let mut mfa = MfaServiceClient::new(ts.channel.clone());
        let (authenticator, _, stepped) = enrol(&mut mfa, &kim_token).await?;
        let codes = mfa
            .generate_recovery_codes(authed(&stepped, ipb::GenerateRecoveryCodesRequest {}))
            .await?
            .into_inner()
            .codes;
        assert_eq!(codes.len(), 10);
        let recovered = mfa
            .verify(authed(&kim_token, ipb::VerifyRequest { code: codes[0].clone() }))
            .await?
            .into_inner();
        assert!(recovered.amr.contains(&"otp".to_owned()));
        // Kept keyed under PIM_SECRETS_KEY: not as a plain SHA-256, which a copy of the
        // database could be tried against; a code an earlier version kept so still works.
        let plain = |code: &str| -> String {
            use sha2::Digest;
            let normal: String = code.chars().filter(|c| *c != '-').collect();
            sha2::Sha256::digest(normal.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let identity_db =
            pim_runtime::db::connect(ts.database_url(pim::ServiceName::Identity).expect("its database")).await?;
        let stored: Vec<String> = pim_runtime::db::query(
            &identity_db,
            "SELECT code_hash FROM recovery_codes WHERE user_id = $1",
            vec![kim_id.clone().into()],
        )
        .await?
        .iter()
        .map(|r| pim_runtime::db::col::<String>(r, "code_hash"))
        .collect::<Result<_, _>>()?;
        assert_eq!(stored.len(), 10);
        assert!(codes.iter().all(|c| !stored.contains(&plain(c))), "kept plainly hashed");
        pim_runtime::db::exec(
            &identity_db,
            "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)",
            vec![kim_id.clone().into(), plain("OLDER-CODES").into()],
        )
        .await?;
        mfa.verify(authed(
            &kim_token,
            ipb::VerifyRequest {
                code: "older-codes".into(),
            },
        ))
        .await?;
        identity_db.close().await?;
        let reused = mfa
            .verify(authed(&kim_token, ipb::VerifyRequest { code: codes[0].clone() }))
            .await
            .expect_err("single use");
        assert_eq!(reused.code(), Code::Unauthenticated);

        // Four more wrong codes make five failures in the window: locked.
        let right = authenticator.generate((now_ms() / 1000) as u64 + 30);
        let wrong = if right == "000000" { "111111" } else { "000000" };
        for attempt in 0..4 {
            let failed = mfa
                .verify(authed(&kim_token, ipb::VerifyRequest { code: wrong.into() }))
                .await
                .expect_err("wrong code");
            let expected = if attempt < 3 {
                Code::Unauthenticated
            } else {
                Code::ResourceExhausted
            };
            assert_eq!(failed.code(), expected, "attempt {attempt}");
        }
        let locked = mfa
            .verify(authed(&kim_token, ipb::VerifyRequest { code: right }))
            .await
            .expect_err("locked out");
        assert_eq!(locked.code(), Code::ResourceExhausted);
        // The attempt refused without a look at the code is audited as a failure too.
        let query = pim_proto::audit::v1::QueryEventsRequest {
            action: "pim.identity.v1.MfaFailed".into(),
            outcome: "failure".into(),
            ..Default::default()
        };
        pim_e2e::eventually(std::time::Duration::from_secs(10), "the refused code audited", || {
            let (ts, admin, query) = (&ts, admin.clone(), query.clone());
            async move {
                let records = ts.audit_records(&admin, query).await?;
                Ok(records
                    .iter()
                    .any(|r| r.payload_json.contains("locked_out"))
                    .then_some(()))
            }
        })
        .await?;

        // Only credential administrators reset MFA; then Kim can enrol again.
        let kim_reset = mfa
            .reset_mfa(authed(&kim_token, ipb::ResetMfaRequest { user: "kim".into() }))
            .await
            .expect_err("not for Kim");
        assert_eq!(kim_reset.code(), Code::PermissionDenied);
        mfa.reset_mfa(authed(&admin, ipb::ResetMfaRequest { user: "kim".into() }))
            .await?;
        // Whoever enrolled what was reset is signed out: Kim signs in again, then enrols.
        pim_e2e::eventually(
            std::time::Duration::from_secs(5),
            "the session to end with the reset",
            || {
                let (mut mfa, token) = (mfa.clone(), kim_token.clone());
                async move {
                    let asked = mfa
                        .list_methods(authed(&token, ipb::ListMethodsRequest::default()))
                        .await;
                    Ok(asked.err().filter(|e| e.code() == Code::Unauthenticated).map(drop))
                }
            },
        )
        .await?;
        let kim_token = ts.sign_in("kim", &pim_e2e::password_of("kim")).await?;
        enrol(&mut mfa, &kim_token).await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_code_twice_at_once_succeeds_once_and_lockout_survives_a_restart() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let admin = ts.admin_token().await?;
    let (_, token) = user(&ts, &admin, "lee").await?;
    let mut mfa = MfaServiceClient::new(ts.channel.clone());
    let (authenticator, confirmed_at, _) = enrol(&mut mfa, &token).await?;
    let code = authenticator.generate(confirmed_at + 30);
    let (mut first, mut second) = (
        MfaServiceClient::new(ts.channel.clone()),
        MfaServiceClient::new(ts.channel.clone()),
    );
    let (a, b) = tokio::join!(
        first.verify(authed(&token, ipb::VerifyRequest { code: code.clone() })),
        second.verify(authed(&token, ipb::VerifyRequest { code: code.clone() })),
    );
    assert_eq!(
        a.is_ok() as u8 + b.is_ok() as u8,
        1,
        "exactly one of two concurrent uses of a code succeeds"
    );

    let wrong = if authenticator.generate(confirmed_at + 60) == "000000" {
        "111111"
    } else {
        "000000"
    };
    // Every attempt counts before its code is checked, and the winner's success cleared the
    // count, perhaps after the loser's attempt: four or five more wrong codes lock MFA, and
    // from then on every code is refused as locked.
    let mut codes = Vec::new();
    for _ in 0..5 {
        let failed = mfa
            .verify(authed(&token, ipb::VerifyRequest { code: wrong.into() }))
            .await
            .expect_err("a wrong code");
        codes.push(failed.code());
    }
    let locked_from = codes
        .iter()
        .position(|c| *c == Code::ResourceExhausted)
        .expect("locked within five attempts");
    assert!((3..=4).contains(&locked_from), "{codes:?}");
    assert!(
        codes[..locked_from].iter().all(|c| *c == Code::Unauthenticated),
        "{codes:?}"
    );
    assert!(
        codes[locked_from..].iter().all(|c| *c == Code::ResourceExhausted),
        "{codes:?}"
    );
    let locked = mfa
        .verify(authed(&token, ipb::VerifyRequest { code: wrong.into() }))
        .await
        .expect_err("locked");
    assert_eq!(locked.code(), Code::ResourceExhausted);

    // Every service restarts; the lockout is in the database, so it holds.
    let ts = ts.restart().await?;
    let result = async {
        let still = MfaServiceClient::new(ts.channel.clone())
            .verify(authed(
                &token,
                ipb::VerifyRequest {
                    code: authenticator.generate((now_ms() / 1000) as u64 + 30),
                },
            ))
            .await
            .expect_err("still locked after a restart");
        assert_eq!(still.code(), Code::ResourceExhausted);
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
