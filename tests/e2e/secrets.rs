//! Secrets never leak: after a scenario that uses every kind of secret — passwords, a TOTP
//! secret and codes, recovery codes, a client secret, access and refresh tokens — none of
//! them appears in the logs (captured at trace level), the Redis stream entries, or the
//! audit rows.

use std::time::Duration;

use totp_rs::TOTP;

use pim_e2e::{TestSuite, authed, eventually};
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;
use pim_runtime::db::now_ms;
use pim_runtime::testing::{CapturedLogs, redis_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_streams_or_audit() -> anyhow::Result<()> {
    let logs = CapturedLogs::install().expect("this test process installs the first subscriber");
    let ts = TestSuite::postgres().await?;
    let result = async {
        let mut secrets: Vec<String> = vec![ts.admin_password.clone()];
        let admin = ts.admin_token().await?;
        secrets.push(admin.clone());
        let lee_password = "correct horse battery staple 42".to_owned();
        secrets.push(lee_password.clone());
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        directory
            .create_user(authed(
                &admin,
                ipb::CreateUserRequest {
                    user_name: "lee".into(),
                    password: lee_password.clone(),
                    ..Default::default()
                },
            ))
            .await?;
        // A wrong password is a secret too (a typo of the real one, often).
        let typo = "correct horse battery stapel 42".to_owned();
        assert!(ts.sign_in("lee", &typo).await.is_err());
        secrets.push(typo);
        let mut auth = AuthServiceClient::new(ts.channel.clone());
        let session = auth
            .sign_in(ipb::SignInRequest {
                user_name: "lee".into(),
                password: lee_password.clone(),
            })
            .await?
            .into_inner();
        secrets.push(session.access_token.clone());
        secrets.push(session.refresh_token.clone());
        let lee = session.access_token.clone();

        let mut mfa = MfaServiceClient::new(ts.channel.clone());
        let enrolled = mfa
            .enroll_totp(authed(&lee, ipb::EnrollTotpRequest::default()))
            .await?
            .into_inner();
        let authenticator = TOTP::from_url(&enrolled.otpauth_uri).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        secrets.push(authenticator.get_secret_base32());
        let at = (now_ms() / 1000) as u64;
        let code = authenticator.generate(at);
        mfa.confirm_totp(authed(
            &lee,
            ipb::ConfirmTotpRequest {
                method_id: enrolled.method_id,
                code: code.clone(),
            },
        ))
        .await?;
        let wrong = if code == "000000" { "111111" } else { "000000" };
        assert!(
            mfa.verify(authed(&lee, ipb::VerifyRequest { code: wrong.into() }))
                .await
                .is_err()
        );
        let next = authenticator.generate(at + 30);
        let stepped = mfa
            .verify(authed(&lee, ipb::VerifyRequest { code: next.clone() }))
            .await?
            .into_inner();
        secrets.push(stepped.access_token.clone());
        let codes = mfa
            .generate_recovery_codes(authed(&stepped.access_token, ipb::GenerateRecoveryCodesRequest {}))
            .await?
            .into_inner()
            .codes;
        mfa.verify(authed(&lee, ipb::VerifyRequest { code: codes[0].clone() }))
            .await?;
        secrets.extend(codes);

        let bot = directory
            .create_service_principal(authed(
                &admin,
                ipb::CreateServicePrincipalRequest {
                    display_name: "bot".into(),
                },
            ))
            .await?
            .into_inner();
        secrets.push(bot.client_secret.clone());
        let bot_id = bot.service_principal.expect("created").id;
        let bot_token = auth
            .sign_in_service_principal(ipb::SignInServicePrincipalRequest {
                client_id: bot_id,
                client_secret: bot.client_secret,
            })
            .await?
            .into_inner();
        secrets.push(bot_token.access_token);
        auth.sign_out(authed(
            &lee,
            ipb::SignOutRequest {
                refresh_token: session.refresh_token.clone(),
                everywhere: false,
            },
        ))
        .await?;

        // Let the events reach audit.
        let mut audit = pim_proto::audit::v1::audit_service_client::AuditServiceClient::new(ts.channel.clone());
        eventually(Duration::from_secs(10), "the sign-out to be audited", || {
            let (mut audit, admin) = (audit.clone(), admin.clone());
            async move {
                let r = audit
                    .query_events(authed(
                        &admin,
                        pim_proto::audit::v1::QueryEventsRequest {
                            action: "SessionRevoked".into(),
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner();
                Ok((!r.records.is_empty()).then_some(()))
            }
        })
        .await?;
        let exported = {
            use tokio_stream::StreamExt;
            let mut chunks = audit
                .export_events(authed(&admin, pim_proto::audit::v1::ExportEventsRequest::default()))
                .await?
                .into_inner();
            let mut all = Vec::new();
            while let Some(chunk) = chunks.next().await {
                all.extend(chunk?.data);
            }
            String::from_utf8(all)?
        };

        // Everything on the streams, field by field.
        let mut redis = redis::Client::open(redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", ts.stream_prefix))
            .query_async(&mut redis)
            .await?;
        assert!(!keys.is_empty());
        let mut streamed = Vec::new();
        for key in keys {
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(&mut redis)
                .await?;
            for entry in entries.ids {
                for value in entry.map.values() {
                    if let Ok(bytes) = redis::from_redis_value::<Vec<u8>>(value.clone()) {
                        streamed.extend(bytes);
                    }
                }
            }
        }
        let streamed = String::from_utf8_lossy(&streamed).into_owned();
        let logged = logs.text();
        assert!(logged.contains("serving"), "the capture works");
        for secret in &secrets {
            assert!(secret.len() >= 6, "a real secret");
            for (place, text) in [("logs", &logged), ("Redis streams", &streamed), ("audit", &exported)] {
                assert!(!text.contains(secret.as_str()), "a secret reached the {place}");
            }
        }
        // TOTP codes are short: look for them only where they would stand as a value.
        for code in [&code, &next] {
            assert!(!logged.contains(&format!("\"{code}\"")) && !exported.contains(&format!("\"{code}\"")));
        }
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
