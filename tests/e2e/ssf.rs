//! Shared Signals on PostgreSQL + Redis: an app made a receiver polls its stream over HTTP
//! and gets, signed and in order, the claims change when Lee is given a role and the session
//! revocation when it is taken away; only its own stream, and only with the permission.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

use pim_e2e::{TestSuite, assign_for_an_hour, authed, eventually};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;

use crate::activation::EXCHANGE_ADMINISTRATOR;

const SHARED_SIGNALS_RECEIVER: &str = "8c6f4a2e-5b1d-4f3a-9e7c-2d0b6a1f3c58";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const CLAIMS_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";

/// One HTTP/1.1 call: the status and the JSON body (null when empty).
async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = sender.send_request(request.body(Full::new(Bytes::from(body)))?).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, value))
}

/// Whom a SET is about, read without verifying it (to wait for the right ones).
fn unverified_subject(set: &Value) -> String {
    use base64::Engine;
    let payload = set.as_str().unwrap_or_default().split('.').nth(1).unwrap_or_default();
    let claims: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    claims["sub_id"]["id"].as_str().unwrap_or_default().to_owned()
}

/// A service principal holding Shared Signals Receiver, signed in: its id and token.
async fn receiver(ts: &TestSuite, admin: &str, name: &str) -> anyhow::Result<(String, String)> {
    let (id, secret) = ts.create_service_principal(admin, name).await?;
    AssignmentServiceClient::new(ts.channel.clone())
        .create_request(authed(
            admin,
            assign_for_an_hour(apb::AssignmentKind::Active, &id, SHARED_SIGNALS_RECEIVER),
        ))
        .await?;
    let token = AuthServiceClient::new(ts.channel.clone())
        .sign_in_service_principal(ipb::SignInServicePrincipalRequest {
            client_id: id.clone(),
            client_secret: secret,
        })
        .await?
        .into_inner()
        .access_token;
    Ok((id, token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_stream_gets_signed_caep_events_in_order_on_postgres_and_redis() -> anyhow::Result<()> {
    let ts = TestSuite::postgres_with(None, &[("PIM_SSF_ADDR", "127.0.0.1:0".to_owned())]).await?;
    let result = async {
        let issuer = ts.suite.ssf_url().expect("the transmitter is served").to_owned();
        let admin = ts.admin_token().await?;
        let (_, config) = call("GET", &format!("{issuer}/.well-known/ssf-configuration"), None, None).await?;
        assert_eq!(config["issuer"], issuer.as_str());
        let (_, jwks) = call("GET", config["jwks_uri"].as_str().unwrap_or_default(), None, None).await?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone())?;
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)?;
        let streams = config["configuration_endpoint"].as_str().unwrap_or_default().to_owned();

        let (app, token) = receiver(&ts, &admin, "payments app").await?;
        let lee = ts.create_user(&admin, "lee").await?;
        let lee_token = ts.sign_in("lee", &pim_e2e::password_of("lee")).await?;
        let poll_stream = json!({"delivery": {"method": "urn:ietf:rfc:8936"}});
        let (status, _) = call("POST", &streams, Some(&lee_token), Some(poll_stream.clone())).await?;
        assert_eq!(status, 403, "lee does not hold pim.ssf.receive");
        // A receiver is an app: it may not make PIM post into the network PIM runs in.
        for inside in [
            "http://127.0.0.1:9/caep",
            "https://169.254.169.254/latest",
            "https://[::ffff:10.0.0.1]/x",
            "https://localhost/x",
        ] {
            let push = json!({"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": inside}});
            let (status, refused) = call("POST", &streams, Some(&token), Some(push)).await?;
            assert_eq!(status, 400, "{inside}: {refused}");
            assert!(
                refused["description"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("public address"),
                "{refused}"
            );
        }
        let (status, stream) = call("POST", &streams, Some(&token), Some(poll_stream.clone())).await?;
        assert_eq!((status, stream["aud"].as_str()), (201, Some(app.as_str())), "{stream}");
        let poll = stream["delivery"]["endpoint_url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();

        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        let mut grant = assign_for_an_hour(apb::AssignmentKind::Active, &lee.id, EXCHANGE_ADMINISTRATOR);
        assignments.create_request(authed(&admin, grant.clone())).await?;
        grant.action = apb::RequestAction::AdminRemove as i32;
        assignments.create_request(authed(&admin, grant)).await?;

        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_audience(&[&app]);
        validation.set_issuer(&[&issuer]);
        validation.required_spec_claims.clear();
        // Every principal's events come (the other receiver's grant among them): Lee's two,
        // in order, are what this test follows.
        let about_lee = |sets: &serde_json::Map<String, Value>| -> anyhow::Result<Vec<(String, Value)>> {
            let mut jtis: Vec<&String> = sets.keys().collect();
            jtis.sort();
            let mut lees = Vec::new();
            for jti in jtis {
                let set = sets[jti].as_str().unwrap_or_default();
                let decoded = jsonwebtoken::decode::<Value>(set, &key, &validation)?;
                anyhow::ensure!(decoded.header.typ.as_deref() == Some("secevent+jwt"));
                anyhow::ensure!(decoded.claims["jti"] == jti.as_str());
                if decoded.claims["sub_id"] == json!({"format": "opaque", "id": lee.id}) {
                    lees.push((jti.clone(), decoded.claims));
                }
            }
            Ok(lees)
        };
        let polled = eventually(Duration::from_secs(15), "both of Lee's events polled", || {
            let (poll, token, lee_id) = (poll.clone(), token.clone(), lee.id.clone());
            async move {
                let (status, answer) =
                    call("POST", &poll, Some(&token), Some(json!({"returnImmediately": true}))).await?;
                anyhow::ensure!(status == 200, "poll answered {status}: {answer}");
                let sets = answer["sets"].as_object().cloned().unwrap_or_default();
                let lees = sets.values().filter(|set| unverified_subject(set) == lee_id).count();
                Ok((lees >= 2).then_some(sets))
            }
        })
        .await?;
        let lees = about_lee(&polled)?;
        let kinds: Vec<String> = lees
            .iter()
            .flat_map(|(_, claims)| {
                claims["events"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, _)| k)
            })
            .collect();
        assert_eq!(kinds, [CLAIMS_CHANGE, SESSION_REVOKED], "in the order they happened");

        // Another receiver sees none of it.
        let (_, other) = receiver(&ts, &admin, "other app").await?;
        let (status, _) = call("POST", &poll, Some(&other), Some(json!({"returnImmediately": true}))).await?;
        assert_eq!(status, 404, "not its stream");

        // HEAD reads nothing and deletes nothing (axum routes it with GET).
        let one = format!(
            "{streams}?stream_id={}",
            stream["stream_id"].as_str().unwrap_or_default()
        );
        let (status, _) = call("HEAD", &one, Some(&token), None).await?;
        assert_eq!(status, 405);
        let (status, still) = call("GET", &one, Some(&token), None).await?;
        assert_eq!((status, still["stream_id"].clone()), (200, stream["stream_id"].clone()));

        // Acknowledged, they are gone.
        let ack = json!({"returnImmediately": true, "ack": polled.keys().collect::<Vec<_>>()});
        let (status, answer) = call("POST", &poll, Some(&token), Some(ack)).await?;
        assert_eq!(status, 200);
        let left = about_lee(answer["sets"].as_object().unwrap_or(&serde_json::Map::new()))?;
        assert!(left.is_empty(), "acknowledged: {left:?}");
        let records = ts
            .audited_actions(&admin, stream["stream_id"].as_str().unwrap_or_default())
            .await?;
        assert!(records.iter().any(|a| a.ends_with("SsfStreamCreated")), "{records:?}");
        Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
