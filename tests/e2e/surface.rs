//! The gRPC surface of `pim up`: health and reflection for every service in DESIGN.md's
//! table, and authentication before any handler.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use pim_e2e::{TestSuite, authed, eventually};
use pim_proto::alerting::v1::alert_service_client::AlertServiceClient;
use pim_proto::assignment::v1::ListRoleDefinitionsRequest;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_proto::service_names;

fn all_services() -> Vec<&'static str> {
    [
        service_names::IDENTITY,
        service_names::ASSIGNMENT,
        service_names::APPROVAL,
        service_names::ALERTING,
        service_names::AUDIT,
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_is_healthy_listed_and_guarded() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let mut health = HealthClient::new(ts.channel.clone());
        for name in all_services() {
            let status = health
                .check(HealthCheckRequest { service: name.into() })
                .await?
                .into_inner()
                .status();
            assert_eq!(status, ServingStatus::Serving, "{name}");
        }
        let unknown = health
            .check(HealthCheckRequest {
                service: "pim.nope.v1.Nope".into(),
            })
            .await
            .expect_err("unknown");
        assert_eq!(unknown.code(), Code::NotFound);

        let mut reflection = ServerReflectionClient::new(ts.channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::once(request))
            .await?
            .into_inner();
        let listed: Vec<String> = match responses.next().await.transpose()?.and_then(|r| r.message_response) {
            Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
            other => anyhow::bail!("unexpected reflection answer {other:?}"),
        };
        for name in all_services() {
            assert!(listed.iter().any(|l| l == name), "reflection lists {name}: {listed:?}");
        }

        // No token, a garbage token, a tampered token and a re-signed token are all refused.
        let mut roles = RoleServiceClient::new(ts.channel.clone());
        let missing = roles
            .list_role_definitions(ListRoleDefinitionsRequest {})
            .await
            .expect_err("no token");
        assert_eq!(missing.code(), Code::Unauthenticated);
        let admin = ts.admin_token().await?;
        let parts: Vec<&str> = admin.split('.').collect();
        assert_eq!(parts.len(), 3);
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1])?)?;
        let forged_payload = URL_SAFE_NO_PAD.encode(payload.replace("\"name\":\"admin\"", "\"name\":\"mallory\""));
        assert_ne!(forged_payload, parts[1]);
        let mut signature = URL_SAFE_NO_PAD.decode(parts[2])?;
        signature[0] ^= 0x01;
        let tampered = [
            "not-a-token".to_owned(),
            format!("{}.{}.{}", parts[0], forged_payload, parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(signature)),
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
                parts[1]
            ),
        ];
        for token in tampered {
            let refused = roles
                .list_role_definitions(authed(&token, ListRoleDefinitionsRequest {}))
                .await
                .expect_err("forged");
            assert_eq!(refused.code(), Code::Unauthenticated, "{token}");
        }
        let listed = roles
            .list_role_definitions(authed(&admin, ListRoleDefinitionsRequest {}))
            .await?
            .into_inner()
            .roles;
        let names: Vec<_> = listed.iter().map(|r| r.name.as_str()).collect();
        for built_in in [
            "Global Administrator",
            "Privileged Role Administrator",
            "Privileged Authentication Administrator",
            "Authentication Administrator",
            "User Administrator",
            "Groups Administrator",
            "Security Administrator",
            "Security Reader",
            "Global Reader",
            "Exchange Administrator",
        ] {
            assert!(names.contains(&built_in), "{built_in} is seeded");
        }

        // Every service answers only with a token.
        let mut alerts = AlertServiceClient::new(ts.channel.clone());
        alerts
            .list_alerts(authed(&admin, pim_proto::alerting::v1::ListAlertsRequest::default()))
            .await?;
        let anonymous = alerts
            .list_alerts(pim_proto::alerting::v1::ListAlertsRequest::default())
            .await
            .expect_err("no token");
        assert_eq!(anonymous.code(), Code::Unauthenticated);
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_without_breaking_tokens_in_flight() -> anyhow::Result<()> {
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
    let ts = TestSuite::embedded().await?;
    let result = async {
        let before = ts.admin_token().await?;
        let mut auth = AuthServiceClient::new(ts.channel.clone());
        let keys = auth
            .get_signing_keys(ipb::GetSigningKeysRequest {})
            .await?
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 1);
        let old_kid = keys[0].kid.clone();
        // A time that is no protobuf Timestamp is pointed out, not read as some other time.
        let odd = auth
            .list_revocations(ipb::ListRevocationsRequest {
                since: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 2_000_000_000,
                }),
            })
            .await
            .expect_err("nanos of two seconds");
        assert_eq!(odd.code(), Code::InvalidArgument, "{odd:?}");
        let anonymous = auth
            .rotate_signing_key(ipb::RotateSigningKeyRequest {})
            .await
            .expect_err("no token");
        assert_eq!(anonymous.code(), Code::Unauthenticated);

        let new_kid = auth
            .rotate_signing_key(authed(&before, ipb::RotateSigningKeyRequest {}))
            .await?
            .into_inner()
            .kid;
        assert_ne!(new_kid, old_kid);
        let keys = auth
            .get_signing_keys(ipb::GetSigningKeysRequest {})
            .await?
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 2, "the old key verifies until its tokens expire");
        let old = keys.iter().find(|k| k.kid == old_kid).expect("old key listed");
        assert!(old.retire_after.is_some());

        // A token signed before the rotation still works; a new one carries the new kid.
        let mut roles = RoleServiceClient::new(ts.channel.clone());
        roles
            .list_role_definitions(authed(&before, ListRoleDefinitionsRequest {}))
            .await?;
        let after = ts.admin_token().await?;
        let header = String::from_utf8(URL_SAFE_NO_PAD.decode(after.split('.').next().unwrap_or_default())?)?;
        assert!(header.contains(&new_kid), "{header}");
        roles
            .list_role_definitions(authed(&after, ListRoleDefinitionsRequest {}))
            .await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// `/metrics` on the admin address, read with a bare HTTP/1.1 request: RPCs by service,
/// method and code with latency, events published and consumed with consumer lag, the outbox
/// backlog and the CheckAccess cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_the_admin_address() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ts = TestSuite::postgres_with(None, &[("PIM_ADMIN_ADDR", "127.0.0.1:0".into())]).await?;
    let result = async {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "lee").await?;
        let refused = DirectoryServiceClient::new(ts.channel.clone())
            .get_user(authed(&admin, ipb::GetUserRequest { user: "nobody".into() }))
            .await
            .expect_err("no such user");
        assert_eq!(refused.code(), Code::NotFound);
        let address = ts.suite.admin_addr().expect("an admin address");
        let wanted = [
            r#"pim_rpc_requests_total{code="Ok",method="SignIn",service="pim.identity.v1.AuthService"}"#,
            r#"pim_rpc_requests_total{code="NotFound",method="GetUser",service="pim.identity.v1.DirectoryService"}"#,
            r#"pim_rpc_duration_seconds_bucket{method="CreateUser",service="pim.identity.v1.DirectoryService""#,
            "pim_events_published_total{stream=\"pim.identity.events\"}",
            "pim_events_consumed_total{",
            "pim_consumer_lag_milliseconds{",
            "pim_outbox_backlog{service=\"identity\"}",
            "pim_access_cache_entries",
        ];
        let body = eventually(Duration::from_secs(10), "the metrics", || async {
            let mut http = tokio::net::TcpStream::connect(address).await?;
            http.write_all(b"GET /metrics HTTP/1.1\r\nHost: pim\r\nConnection: close\r\n\r\n")
                .await?;
            let mut response = String::new();
            http.read_to_string(&mut response).await?;
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            Ok(wanted.iter().all(|w| response.contains(w)).then_some(response))
        })
        .await?;
        assert!(body.contains("text/plain"), "Prometheus text format");
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
