//! What a receiver does with its own stream besides managing it: remove and add back
//! subjects (SSF 1.0 §8.1.3) and poll its events (RFC 8936).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use sea_orm::TransactionTrait;
use serde_json::{Value, json};

use pim_runtime::db::now_ms;

use super::{Endpoints, Refusal, Reply, change_record, fault, no_content, object, refuse, reply};
use crate::ssf::{Method, StreamStatus};
use crate::webhooks::store;
use pim_runtime::events::EventType;

/// How long a poll that asked to wait waits for an event.
const LONG_POLL: Duration = Duration::from_secs(15);
/// How many events one poll answers with at most.
const MAX_POLLED: u64 = 1000;

pub(super) async fn subjects(
    State(e): State<Endpoints>,
    Path(change): Path<String>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let add = match change.as_str() {
        "add" => true,
        "remove" => false,
        _ => {
            return *refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "use /ssf/subjects/add or /ssf/subjects/remove",
            );
        }
    };
    subject_change(&e, &method, &uri, &headers, &body, add)
        .await
        .unwrap_or_else(|refused| *refused)
}

/// `/ssf/subjects/add` and `/ssf/subjects/remove` (SSF 1.0 §8.1.3): a receiver removes a
/// subject from its stream (its events are no longer queued there) or adds back one it
/// removed; a stream has every subject otherwise (`default_subjects`: ALL). A subject is named
/// as SETs name it: `opaque` (the principal id), `iss_sub` (PIM's issuer and the id) or
/// `email`. An address PIM does not know changes nothing and is answered like one it knows,
/// so the answer tells no one which addresses PIM knows. Each change is an audit record.
async fn subject_change(
    e: &Endpoints,
    method: &HttpMethod,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    add: bool,
) -> Result<Reply, Refusal> {
    let caller = e.receiver(headers, method, uri).await?;
    let asked = object(body)?;
    let s = e
        .own_stream(&caller, asked.get("stream_id").and_then(Value::as_str))
        .await?;
    let subject = asked.get("subject").cloned().unwrap_or(Value::Null);
    let bad = |description: &str| refuse(StatusCode::BAD_REQUEST, "invalid_request", description);
    let text = |field: &str| {
        subject[field]
            .as_str()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .ok_or_else(|| bad(&format!("subject.{field} is required (at most 256 characters)")))
    };
    let principal = match subject["format"].as_str() {
        Some("opaque") => Some(text("id")?.to_owned()),
        Some("iss_sub") if text("iss")? != pim_runtime::auth::ISSUER => {
            return Err(bad(&format!(
                "subject.iss must be the issuer of PIM's tokens ({})",
                pim_runtime::auth::ISSUER
            )));
        }
        Some("iss_sub") => Some(text("sub")?.to_owned()),
        Some("email") => crate::mail::store::principal_of_address(&e.audit.db, text("email")?)
            .await
            .map_err(fault)?,
        _ => return Err(bad("subject.format must be opaque, iss_sub or email")),
    };
    if let Some(principal) = principal {
        let txn = e.audit.db.begin().await.map_err(fault)?;
        if store::exclude_subject(&txn, &s.id, &principal, !add, now_ms())
            .await
            .map_err(fault)?
        {
            let (action, reason) = if add {
                (EventType::SsfSubjectAdded, format!("subject {principal} added back"))
            } else {
                (EventType::SsfSubjectRemoved, format!("subject {principal} removed"))
            };
            e.commit_with(txn, change_record(&caller, action, &s, &reason)).await?;
        }
    }
    Ok(if add {
        reply(StatusCode::OK, json!({}))
    } else {
        no_content()
    })
}

/// `/ssf/poll/{stream_id}` (RFC 8936): settles what the receiver acknowledged (`ack`) or
/// refused (`setErrs`), then answers the next events in order (`maxEvents`, default 100),
/// waiting up to 15 s for one unless `returnImmediately`. A paused stream answers none.
pub(super) async fn poll(
    State(e): State<Endpoints>,
    Path(stream_id): Path<String>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let outcome = async {
        let caller = e.receiver(&headers, &method, &uri).await?;
        let s = e.own_stream(&caller, Some(&stream_id)).await?;
        let Some(stream) = s.stream.clone().filter(|t| t.method == Method::Poll) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this stream is pushed, not polled",
            ));
        };
        let asked = object(&body)?;
        let bad = |description: &str| refuse(StatusCode::BAD_REQUEST, "invalid_request", description);
        let max = match asked.get("maxEvents") {
            None => 100,
            Some(n) => n
                .as_u64()
                .filter(|n| *n <= MAX_POLLED)
                .ok_or_else(|| bad("maxEvents must be a whole number from 0 to 1000"))?,
        };
        let immediately = asked.get("returnImmediately").and_then(Value::as_bool).unwrap_or(false);
        let now = now_ms();
        if let Some(acks) = asked.get("ack") {
            let acks: Vec<String> = acks
                .as_array()
                .filter(|a| a.len() <= MAX_POLLED as usize)
                .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
                .ok_or_else(|| bad("ack must be a list of at most 1000 jti values"))?;
            for jti in acks {
                store::settle_polled(&e.audit.db, &s.id, &jti, None, now)
                    .await
                    .map_err(fault)?;
            }
        }
        if let Some(errors) = asked.get("setErrs") {
            let errors = errors
                .as_object()
                .ok_or_else(|| bad("setErrs must map each jti to its err and description"))?;
            for (jti, error) in errors {
                let said = format!(
                    "the receiver refused it: {} {}",
                    error["err"].as_str().unwrap_or_default(),
                    error["description"].as_str().unwrap_or_default()
                );
                let said: String = said.trim().chars().take(512).collect();
                store::settle_polled(&e.audit.db, &s.id, jti, Some(&said), now)
                    .await
                    .map_err(fault)?;
            }
        }
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        let waiting = loop {
            let waiting = if stream.status == StreamStatus::Enabled && max > 0 {
                store::polled(&e.audit.db, &s.id, max + 1).await.map_err(fault)?
            } else {
                Vec::new()
            };
            if !waiting.is_empty() || immediately || max == 0 || tokio::time::Instant::now() >= deadline {
                break waiting;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let more = waiting.len() as u64 > max;
        let now = now_ms();
        let mut sets = serde_json::Map::new();
        for d in waiting.into_iter().take(max as usize) {
            let set = e
                .transmitter
                .sign(&d.body, &stream.audience, &d.id, now)
                .map_err(|err| fault(format!("{err:#}")))?;
            sets.insert(d.id, Value::String(set));
        }
        Ok(reply(StatusCode::OK, json!({"sets": sets, "moreAvailable": more})))
    };
    outcome.await.unwrap_or_else(|refused: Refusal| *refused)
}
