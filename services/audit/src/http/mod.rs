//! The transmitter's HTTP endpoints (SSF 1.0 §7 and §8): its configuration and keys for
//! anyone; stream management, status, verification and polling for receivers, each a
//! principal (normally a service principal) holding pim.ssf.receive that signs in to PIM and
//! sends its access token as a bearer token. A receiver sees and changes only its own streams;
//! every change, and every refusal for want of the permission, is an audit record.

mod receiving;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::{get, post};
use http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use sea_orm::TransactionTrait;
use serde_json::{Value, json};

use pim_runtime::access::permissions;
use pim_runtime::auth::{Caller, TokenVerifier};
use pim_runtime::db::now_ms;
use pim_runtime::host::Service as _;

use crate::chain::Record;
use crate::ssf::{EVENTS_SUPPORTED, Method, Stream, StreamStatus, SubjectFormat, Transmitter, VERIFICATION};
use crate::webhooks::store::{self, Delivery, PENDING};
use crate::webhooks::{Reach, Subscription, validate};
use crate::{Audit, ingest};
use pim_runtime::events::EventType;

/// How many streams one receiver may have.
const MAX_STREAMS: i64 = 10;
/// How many verification events a stream is sent a minute at most.
const VERIFICATIONS_PER_MINUTE: i64 = 5;

type Reply = http::Response<Body>;
/// A refusal on its way out (boxed: a response is large, a refusal the rarer path).
type Refusal = Box<Reply>;

#[derive(Clone)]
struct Endpoints {
    audit: Audit,
    verifier: Arc<TokenVerifier>,
    transmitter: Transmitter,
}

/// The transmitter's routes; none without a signing key.
pub fn router(audit: &Audit, verifier: Arc<TokenVerifier>) -> Option<Router> {
    let transmitter = audit.webhooks.ssf.clone()?;
    let endpoints = Endpoints {
        audit: audit.clone(),
        verifier,
        transmitter,
    };
    Some(
        Router::new()
            .route("/.well-known/ssf-configuration", get(configuration))
            .route("/ssf/jwks.json", get(jwks))
            .route(
                "/ssf/streams",
                get(streams).post(streams).patch(streams).put(streams).delete(streams),
            )
            .route("/ssf/status", get(status).post(status))
            .route("/ssf/verify", post(verify))
            .route("/ssf/subjects/{change}", post(receiving::subjects))
            .route("/ssf/poll/{stream_id}", post(receiving::poll))
            .with_state(endpoints),
    )
}

fn reply(code: StatusCode, body: Value) -> Reply {
    http::Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn no_content() -> Reply {
    http::Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .unwrap_or_default()
}

/// A refusal: the status and a JSON body naming the error (RFC 8936's `err`/`description`
/// shape, which SSF's errors follow).
fn refuse(code: StatusCode, err: &str, description: impl Into<String>) -> Refusal {
    let mut reply = reply(code, json!({"err": err, "description": description.into()}));
    if code == StatusCode::UNAUTHORIZED {
        reply
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
    Box::new(reply)
}

fn fault(err: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %err, "an SSF request failed");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the transmitter could not answer; try again",
    )
}

/// A JSON object body (an empty body is an empty object).
fn object(body: &Bytes) -> Result<serde_json::Map<String, Value>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be a JSON object",
        )),
    }
}

/// `stream_id` from the query string.
fn stream_id_in(uri: &Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "stream_id").then(|| value.to_owned())
    })
}

fn strings(value: &Value, field: &str) -> Result<Vec<String>, Refusal> {
    let bad = || {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field} must be a list of at most 100 event type URIs"),
        )
    };
    let list = value.as_array().ok_or_else(bad)?;
    if list.len() > 100 {
        return Err(bad());
    }
    list.iter()
        .map(|v| {
            v.as_str()
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .map(str::to_owned)
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)
}

async fn configuration(State(e): State<Endpoints>) -> Reply {
    let issuer = &e.transmitter.issuer;
    reply(
        StatusCode::OK,
        json!({
            "spec_version": "1_0",
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/ssf/jwks.json"),
            "delivery_methods_supported": [Method::Push.urn(), Method::Poll.urn()],
            "configuration_endpoint": format!("{issuer}/ssf/streams"),
            "status_endpoint": format!("{issuer}/ssf/status"),
            "verification_endpoint": format!("{issuer}/ssf/verify"),
            "add_subject_endpoint": format!("{issuer}/ssf/subjects/add"),
            "remove_subject_endpoint": format!("{issuer}/ssf/subjects/remove"),
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
            "default_subjects": "ALL",
        }),
    )
}

async fn jwks(State(e): State<Endpoints>) -> Reply {
    reply(StatusCode::OK, e.transmitter.jwks())
}

impl Endpoints {
    /// The receiver calling: a valid bearer token whose principal holds pim.ssf.receive. A
    /// refusal for want of the permission is audited like any other.
    async fn receiver(&self, headers: &HeaderMap, method: &HttpMethod, uri: &Uri) -> Result<Arc<Caller>, Refusal> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "authentication_failed",
                    "a bearer token is required",
                )
            })?;
        let caller = self.verifier.verify(token).await.map_err(|err| {
            let status = tonic::Status::from(err);
            if status.code() == tonic::Code::Unavailable {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    status.message(),
                );
            }
            refuse(StatusCode::UNAUTHORIZED, "authentication_failed", status.message())
        })?;
        if caller.pending.is_some() {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "authentication_failed",
                "the token's sign-in is not complete",
            ));
        }
        if let Err(status) =
            pim_runtime::access::require(self.audit.access.as_ref(), &caller, permissions::SSF_RECEIVE, "/").await
        {
            if status.code() != tonic::Code::PermissionDenied {
                return Err(fault(status.message()));
            }
            let denied = pim_proto::events::v1::AccessDenied {
                actor: Some(caller.actor()),
                method: format!("{method} {}", uri.path()),
                reason: status.message().to_owned(),
                code: "PermissionDenied".into(),
                target: String::new(),
            };
            if let Err(err) = self.audit.access_denied(&denied).await {
                tracing::warn!(error = %format!("{err:#}"), "recording an SSF refusal failed");
            }
            return Err(refuse(StatusCode::FORBIDDEN, "access_denied", status.message()));
        }
        Ok(caller)
    }

    /// The caller's stream `id`: NOT FOUND for another receiver's, as for none.
    async fn own_stream(&self, caller: &Caller, id: Option<&str>) -> Result<Subscription, Refusal> {
        let id = id
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "invalid_request", "stream_id is required"))?;
        let found = store::subscription(&self.audit.db, id).await.map_err(fault)?;
        found
            .filter(|s| s.stream.as_ref().is_some_and(|t| t.audience == caller.principal_id))
            .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "not_found", format!("no stream {id}")))
    }

    /// A stream's configuration, as SSF 1.0 §8.1.1 words it.
    fn config(&self, s: &Subscription) -> Value {
        let Some(stream) = &s.stream else {
            return Value::Null;
        };
        let issuer = &self.transmitter.issuer;
        let endpoint = match stream.method {
            Method::Push => s.url.clone(),
            Method::Poll => format!("{issuer}/ssf/poll/{}", s.id),
        };
        let delivered: Vec<&str> = EVENTS_SUPPORTED
            .iter()
            .copied()
            .filter(|t| s.event_types.iter().any(|r| r == t))
            .collect();
        json!({
            "stream_id": s.id,
            "iss": issuer,
            "aud": stream.audience,
            "delivery": {"method": stream.method.urn(), "endpoint_url": endpoint},
            "events_supported": EVENTS_SUPPORTED,
            "events_requested": s.event_types,
            "events_delivered": delivered,
            "description": s.description,
            "format": stream.subjects.as_str(),
        })
    }

    /// Keeps the record of a change in the change's transaction, then commits.
    async fn commit_with(&self, txn: sea_orm::DatabaseTransaction, record: Record) -> Result<(), Refusal> {
        ingest::keep(&txn, &mut vec![record]).await.map_err(fault)?;
        txn.commit().await.map_err(fault)?;
        self.audit.webhooks.wake.notify_one();
        Ok(())
    }
}

/// A stream's status as SSF words it: one given up after a day of failed pushes is disabled,
/// with the reason.
fn status_of(s: &Subscription) -> Value {
    match (s.suspended_at, s.stream.as_ref()) {
        (Some(_), _) => json!({
            "stream_id": s.id, "status": StreamStatus::Disabled.as_str(),
            "reason": "pushes failed for 24 hours; enable the stream to deliver again",
        }),
        (None, stream) => json!({"stream_id": s.id, "status": stream.map(|t| t.status.as_str())}),
    }
}

/// The record of a change to a stream, by its receiver.
fn change_record(caller: &Caller, action: EventType, s: &Subscription, reason: &str) -> Record {
    let actor = caller.actor();
    crate::receivers::stream_record((&actor.principal_id, &actor.display_name), action, s, reason, now_ms())
}

/// `/ssf/streams`: create (POST), read (GET, one with `?stream_id=` or all the caller's),
/// update (PATCH) or replace (PUT) what it asks for and its description, delete (DELETE).
async fn streams(State(e): State<Endpoints>, method: HttpMethod, uri: Uri, headers: HeaderMap, body: Bytes) -> Reply {
    let caller = match e.receiver(&headers, &method, &uri).await {
        Ok(caller) => caller,
        Err(refused) => return *refused,
    };
    let outcome = match method {
        HttpMethod::POST => create(&e, &caller, &body).await,
        HttpMethod::GET => read(&e, &caller, &uri).await,
        HttpMethod::PATCH => update(&e, &caller, &body, false).await,
        HttpMethod::PUT => update(&e, &caller, &body, true).await,
        HttpMethod::DELETE => delete(&e, &caller, &uri).await,
        _ => Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET, POST, PATCH, PUT or DELETE",
        )),
    };
    outcome.unwrap_or_else(|refused| *refused)
}

/// The `Authorization` header a push receiver asks its SETs to carry (SSF
/// `delivery.authorization_header`), checked to be one: printable, one line, at most 4 KiB.
fn authorization_header(delivery: &Value) -> Result<Option<String>, Refusal> {
    let Some(header) = delivery.get("authorization_header") else {
        return Ok(None);
    };
    let bad = |why: &str| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("delivery.authorization_header {why}"),
        )
    };
    let header = header.as_str().ok_or_else(|| bad("must be text"))?.trim();
    if header.is_empty() || header.len() > 4096 {
        return Err(bad("must be 1 to 4096 characters"));
    }
    if !header.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) || http::HeaderValue::from_str(header).is_err() {
        return Err(bad("must be one line of printable ASCII (an HTTP header value)"));
    }
    Ok(Some(header.to_owned()))
}

async fn create(e: &Endpoints, caller: &Caller, body: &Bytes) -> Result<Reply, Refusal> {
    let asked = object(body)?;
    let bad = |description: &str| refuse(StatusCode::BAD_REQUEST, "invalid_request", description);
    let delivery = asked.get("delivery").cloned().unwrap_or(Value::Null);
    let method = delivery["method"]
        .as_str()
        .and_then(Method::from_urn)
        .ok_or_else(|| bad("delivery.method must be urn:ietf:rfc:8935 (push) or urn:ietf:rfc:8936 (poll)"))?;
    let url = match (method, delivery["endpoint_url"].as_str()) {
        (Method::Push, Some(url)) => url.trim().to_owned(),
        (Method::Push, None) => return Err(bad("delivery.endpoint_url is required for push delivery")),
        (Method::Poll, Some(_)) => {
            return Err(bad(
                "delivery.endpoint_url is the transmitter's to give for poll delivery",
            ));
        }
        (Method::Poll, None) => String::new(),
    };
    let authorization = authorization_header(&delivery)?;
    if authorization.is_some() && method == Method::Poll {
        return Err(bad(
            "delivery.authorization_header is for push delivery (a poll uses the receiver's own token)",
        ));
    }
    let events = match asked.get("events_requested") {
        Some(requested) => strings(requested, "events_requested")?,
        None => EVENTS_SUPPORTED.iter().map(|t| (*t).to_owned()).collect(),
    };
    let subjects = match asked.get("format") {
        None => SubjectFormat::Opaque,
        Some(format) => format
            .as_str()
            .and_then(SubjectFormat::parse)
            .ok_or_else(|| bad("format must be opaque, iss_sub or email"))?,
    };
    let s = Subscription {
        id: uuid::Uuid::now_v7().to_string(),
        url,
        event_types: events,
        description: asked
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        created_at: now_ms(),
        created_by: caller.principal_id.clone(),
        generation: 1,
        stream: Some(Stream {
            audience: caller.principal_id.clone(),
            method,
            status: StreamStatus::Enabled,
            subjects,
            authorization: None,
        }),
        ..Subscription::default()
    };
    let mut s = s;
    if let (Some(header), Some(stream)) = (authorization, s.stream.as_mut()) {
        stream.authorization = Some(e.transmitter.seal_authorization(&s.id, &header).map_err(fault)?);
    }
    let checked = match method {
        // A polled stream has no URL to check.
        Method::Poll => validate(&Subscription {
            url: "https://poll.invalid/".into(),
            ..s.clone()
        }),
        Method::Push => Reach::of_receivers(e.transmitter.private_receivers)
            .check_url(&s.url)
            .and_then(|()| validate(&s)),
    };
    checked.map_err(|invalid| {
        let field = if invalid.field == "url" {
            "delivery.endpoint_url"
        } else {
            invalid.field
        };
        bad(&format!("{field} {}", invalid.reason))
    })?;
    let txn = e.audit.db.begin().await.map_err(fault)?;
    if !store::count_stream(&txn, &caller.principal_id, MAX_STREAMS)
        .await
        .map_err(fault)?
    {
        return Err(refuse(
            StatusCode::CONFLICT,
            "too_many_streams",
            format!("a receiver may have {MAX_STREAMS} streams; delete one first"),
        ));
    }
    store::insert_subscription(&txn, &s).await.map_err(fault)?;
    e.commit_with(txn, change_record(caller, EventType::SsfStreamCreated, &s, ""))
        .await?;
    tracing::info!(stream = %s.id, receiver = %caller.principal_id, "SSF stream created");
    Ok(reply(StatusCode::CREATED, e.config(&s)))
}

async fn read(e: &Endpoints, caller: &Caller, uri: &Uri) -> Result<Reply, Refusal> {
    if let Some(id) = stream_id_in(uri) {
        let s = e.own_stream(caller, Some(&id)).await?;
        return Ok(reply(StatusCode::OK, e.config(&s)));
    }
    let all = store::subscriptions(&e.audit.db).await.map_err(fault)?;
    let mine: Vec<Value> = all
        .iter()
        .filter(|s| s.stream.as_ref().is_some_and(|t| t.audience == caller.principal_id))
        .map(|s| e.config(s))
        .collect();
    Ok(reply(StatusCode::OK, Value::Array(mine)))
}

async fn update(e: &Endpoints, caller: &Caller, body: &Bytes, replace: bool) -> Result<Reply, Refusal> {
    let asked = object(body)?;
    let mut s = e
        .own_stream(caller, asked.get("stream_id").and_then(Value::as_str))
        .await?;
    if let Some(delivery) = asked.get("delivery") {
        let method = s.stream.as_ref().map(|t| t.method.urn());
        let same_url = delivery
            .get("endpoint_url")
            .is_none_or(|u| u.as_str() == Some(e.config(&s)["delivery"]["endpoint_url"].as_str().unwrap_or_default()));
        if delivery.get("method").and_then(Value::as_str) != method || !same_url {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "a stream's delivery cannot change: make a new stream",
            ));
        }
        // The receiver's credential may change (a token it rotates); only a push's.
        if let Some(header) = authorization_header(delivery)? {
            let Some(stream) = s.stream.as_mut().filter(|t| t.method == Method::Push) else {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "delivery.authorization_header is for push delivery",
                ));
            };
            stream.authorization = Some(e.transmitter.seal_authorization(&s.id, &header).map_err(fault)?);
        }
    }
    match asked.get("events_requested") {
        Some(requested) => s.event_types = strings(requested, "events_requested")?,
        None if replace => s.event_types = Vec::new(),
        None => {}
    }
    match asked.get("description") {
        Some(Value::String(d)) => s.description = d.clone(),
        Some(_) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "description must be text",
            ));
        }
        None if replace => s.description = String::new(),
        None => {}
    }
    validate(&Subscription {
        url: "https://checked.invalid/".into(),
        ..s.clone()
    })
    .map_err(|invalid| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{} {}", invalid.field, invalid.reason),
        )
    })?;
    let txn = e.audit.db.begin().await.map_err(fault)?;
    store::update_stream(&txn, &s.id, &s.event_types, &s.description)
        .await
        .map_err(fault)?;
    if let Some(sealed) = s.stream.as_ref().and_then(|t| t.authorization.as_deref()) {
        store::set_stream_authorization(&txn, &s.id, sealed)
            .await
            .map_err(fault)?;
    }
    e.commit_with(txn, change_record(caller, EventType::SsfStreamUpdated, &s, ""))
        .await?;
    Ok(reply(StatusCode::OK, e.config(&s)))
}

async fn delete(e: &Endpoints, caller: &Caller, uri: &Uri) -> Result<Reply, Refusal> {
    let s = e.own_stream(caller, stream_id_in(uri).as_deref()).await?;
    let txn = e.audit.db.begin().await.map_err(fault)?;
    store::delete_subscription(&txn, &s.id).await.map_err(fault)?;
    e.commit_with(txn, change_record(caller, EventType::SsfStreamDeleted, &s, ""))
        .await?;
    Ok(no_content())
}

/// `/ssf/status`: a stream's status (GET), or a new one (POST: enabled, paused or disabled,
/// with an optional reason).
async fn status(State(e): State<Endpoints>, method: HttpMethod, uri: Uri, headers: HeaderMap, body: Bytes) -> Reply {
    let outcome = async {
        let caller = e.receiver(&headers, &method, &uri).await?;
        if method == HttpMethod::GET {
            let s = e.own_stream(&caller, stream_id_in(&uri).as_deref()).await?;
            return Ok(reply(StatusCode::OK, status_of(&s)));
        }
        let asked = object(&body)?;
        let mut s = e
            .own_stream(&caller, asked.get("stream_id").and_then(Value::as_str))
            .await?;
        let status = asked
            .get("status")
            .and_then(Value::as_str)
            .and_then(StreamStatus::parse)
            .ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "status must be enabled, paused or disabled",
                )
            })?;
        let reason: String = asked
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(1024)
            .collect();
        let txn = e.audit.db.begin().await.map_err(fault)?;
        store::set_stream_status(&txn, &s.id, status, now_ms())
            .await
            .map_err(fault)?;
        if status == StreamStatus::Enabled {
            // A push stream given up after a day of failures delivers again from now on.
            store::resume(&txn, &s.id).await.map_err(fault)?;
            s.suspended_at = None;
        }
        if let Some(stream) = s.stream.as_mut() {
            stream.status = status;
        }
        e.commit_with(
            txn,
            change_record(&caller, EventType::SsfStreamStatusChanged, &s, &reason),
        )
        .await?;
        let mut answer = json!({"stream_id": s.id, "status": status.as_str()});
        if !reason.is_empty() {
            answer["reason"] = json!(reason);
        }
        Ok(reply(StatusCode::OK, answer))
    };
    outcome.await.unwrap_or_else(|refused: Refusal| *refused)
}

/// `/ssf/verify`: queues a verification event (with the receiver's `state`) on the stream.
async fn verify(State(e): State<Endpoints>, method: HttpMethod, uri: Uri, headers: HeaderMap, body: Bytes) -> Reply {
    let outcome = async {
        let caller = e.receiver(&headers, &method, &uri).await?;
        let asked = object(&body)?;
        let s = e
            .own_stream(&caller, asked.get("stream_id").and_then(Value::as_str))
            .await?;
        let state = asked.get("state").and_then(Value::as_str).unwrap_or_default();
        if state.len() > 1024 {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "state must be at most 1024 bytes",
            ));
        }
        let now = now_ms();
        // A receiver asks now and then, not in a loop that fills its own queue.
        let recent = store::queued_since(&e.audit.db, &s.id, VERIFICATION, now - 60_000)
            .await
            .map_err(fault)?;
        if recent >= VERIFICATIONS_PER_MINUTE {
            let mut refused = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("at most {VERIFICATIONS_PER_MINUTE} verifications a minute per stream"),
            );
            refused
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("60"));
            return Err(refused);
        }
        let position = store::head_position(&e.audit.db).await.map_err(fault)?;
        let event_id = uuid::Uuid::now_v7().to_string();
        let d = Delivery {
            id: uuid::Uuid::now_v7().to_string(),
            subscription_id: s.id.clone(),
            position,
            event_id,
            event_type: VERIFICATION.into(),
            body: crate::ssf::verification(&s.id, state),
            status: PENDING.into(),
            created_at: now,
            next_attempt_at: now,
            ..Delivery::default()
        };
        store::insert_delivery(&e.audit.db, &d).await.map_err(fault)?;
        e.audit.webhooks.wake.notify_one();
        Ok(no_content())
    };
    outcome.await.unwrap_or_else(|refused: Refusal| *refused)
}
