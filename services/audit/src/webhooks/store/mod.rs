//! Webhook subscriptions and their deliveries: the durable outbox the dispatcher works from.

use sea_orm::{ConnectionTrait, DbErr, QueryResult};

use pim_runtime::db::{self, col};

use super::Subscription;
use crate::chain::Record;
use crate::queue::Queue;
use crate::ssf::{self, Method, Stream, StreamStatus, SubjectFormat};

mod streams;
pub use streams::*;

/// The tables (migration m0004_webhooks).
pub const MIGRATION: &str = "CREATE TABLE webhook_subscriptions (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        event_types TEXT NOT NULL,
        role_ids TEXT NOT NULL,
        group_ids TEXT NOT NULL,
        min_severity TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        generation BIGINT NOT NULL,
        previous_until BIGINT NOT NULL,
        suspended_at BIGINT
    );
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        subscription_id TEXT NOT NULL,
        position BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_status_code INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        next_attempt_at BIGINT NOT NULL,
        delivered_at BIGINT,
        first_attempt_at BIGINT,
        UNIQUE (subscription_id, event_id)
    );
    CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (subscription_id, status, position);
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)";

/// What makes a subscription a Shared Signals stream (migration m0005_ssf_streams): all
/// four set, or none.
pub const SSF_MIGRATION: &str = "ALTER TABLE webhook_subscriptions ADD COLUMN ssf_audience TEXT;
    ALTER TABLE webhook_subscriptions ADD COLUMN ssf_method TEXT;
    ALTER TABLE webhook_subscriptions ADD COLUMN ssf_status TEXT;
    ALTER TABLE webhook_subscriptions ADD COLUMN ssf_subjects TEXT";

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const DEAD: &str = "dead";

/// One delivery of one event to one subscription.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub subscription_id: String,
    pub position: i64,
    pub event_id: String,
    pub event_type: String,
    pub body: String,
    pub status: String,
    pub attempts: i32,
    pub last_status_code: i32,
    pub last_error: String,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
    /// When it was first attempted (its 24 hours of retries count from then).
    pub first_attempt_at: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "id, subscription_id, position, event_id, event_type, body, status, attempts, last_status_code, last_error, created_at, next_attempt_at, delivered_at";
/// What a delivery is read as: its columns and when it was first attempted.
const DELIVERY_READ: &str = "id, subscription_id, position, event_id, event_type, body, status, attempts, last_status_code, last_error, created_at, next_attempt_at, delivered_at, first_attempt_at";

impl Delivery {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            subscription_id: col(r, "subscription_id")?,
            position: col(r, "position")?,
            event_id: col(r, "event_id")?,
            event_type: col(r, "event_type")?,
            body: col(r, "body")?,
            status: col(r, "status")?,
            attempts: col(r, "attempts")?,
            last_status_code: col(r, "last_status_code")?,
            last_error: col(r, "last_error")?,
            created_at: col(r, "created_at")?,
            next_attempt_at: col(r, "next_attempt_at")?,
            delivered_at: col(r, "delivered_at")?,
            first_attempt_at: col(r, "first_attempt_at")?,
        })
    }
}

fn list(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

fn unlist(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

impl Subscription {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            url: col(r, "url")?,
            event_types: unlist(&col::<String>(r, "event_types")?),
            role_ids: unlist(&col::<String>(r, "role_ids")?),
            group_ids: unlist(&col::<String>(r, "group_ids")?),
            min_severity: col(r, "min_severity")?,
            description: col(r, "description")?,
            created_at: col(r, "created_at")?,
            created_by: col(r, "created_by")?,
            generation: col(r, "generation")?,
            previous_until: col(r, "previous_until")?,
            suspended_at: col(r, "suspended_at")?,
            stream: stream_from_row(r)?,
        })
    }
}

fn stream_from_row(r: &QueryResult) -> Result<Option<Stream>, DbErr> {
    let Some(audience) = col::<Option<String>>(r, "ssf_audience")? else {
        return Ok(None);
    };
    let text = |name: &str| col::<Option<String>>(r, name).map(Option::unwrap_or_default);
    let bad = |name: &str, value: &str| DbErr::Type(format!("{name} {value:?} is not one PIM writes"));
    let (method, status, subjects) = (text("ssf_method")?, text("ssf_status")?, text("ssf_subjects")?);
    Ok(Some(Stream {
        audience,
        method: Method::parse(&method).ok_or_else(|| bad("ssf_method", &method))?,
        status: StreamStatus::parse(&status).ok_or_else(|| bad("ssf_status", &status))?,
        subjects: SubjectFormat::parse(&subjects).ok_or_else(|| bad("ssf_subjects", &subjects))?,
        authorization: col(r, "ssf_authorization")?,
    }))
}

const SUBSCRIPTION_COLUMNS: &str = "id, url, event_types, role_ids, group_ids, min_severity, description, created_at, created_by, generation, previous_until, suspended_at, ssf_audience, ssf_method, ssf_status, ssf_subjects, ssf_authorization";

pub async fn insert_subscription<C: ConnectionTrait>(c: &C, s: &Subscription) -> Result<(), DbErr> {
    db::exec(
        c,
        &format!("INSERT INTO webhook_subscriptions ({SUBSCRIPTION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"),
        vec![
            s.id.clone().into(),
            s.url.clone().into(),
            list(&s.event_types).into(),
            list(&s.role_ids).into(),
            list(&s.group_ids).into(),
            s.min_severity.clone().into(),
            s.description.clone().into(),
            s.created_at.into(),
            s.created_by.clone().into(),
            s.generation.into(),
            s.previous_until.into(),
            s.suspended_at.into(),
            s.stream.as_ref().map(|t| t.audience.clone()).into(),
            s.stream.as_ref().map(|t| t.method.as_str()).into(),
            s.stream.as_ref().map(|t| t.status.as_str()).into(),
            s.stream.as_ref().map(|t| t.subjects.as_str()).into(),
            s.stream.as_ref().and_then(|t| t.authorization.clone()).into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn subscriptions<C: ConnectionTrait>(c: &C) -> Result<Vec<Subscription>, DbErr> {
    db::query(
        c,
        &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions ORDER BY created_at, id"),
        vec![],
    )
    .await?
    .iter()
    .map(Subscription::from_row)
    .collect()
}

pub async fn subscription<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<Subscription>, DbErr> {
    db::query_one(
        c,
        &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE id = $1"),
        vec![id.into()],
    )
    .await?
    .as_ref()
    .map(Subscription::from_row)
    .transpose()
}

/// Deletes a subscription and what it still had to deliver (a stream no longer counts for
/// its receiver); whether there was one.
pub async fn delete_subscription<C: ConnectionTrait>(c: &C, id: &str) -> Result<bool, DbErr> {
    db::exec(
        c,
        "UPDATE ssf_receivers SET streams = streams - 1
         WHERE audience = (SELECT ssf_audience FROM webhook_subscriptions WHERE id = $1)",
        vec![id.into()],
    )
    .await?;
    db::exec(
        c,
        "DELETE FROM webhook_deliveries WHERE subscription_id = $1",
        vec![id.into()],
    )
    .await?;
    db::exec(
        c,
        "DELETE FROM ssf_excluded_subjects WHERE stream_id = $1",
        vec![id.into()],
    )
    .await?;
    Ok(db::exec(c, "DELETE FROM webhook_subscriptions WHERE id = $1", vec![id.into()]).await? == 1)
}

/// The next secret generation; the one before keeps signing until `previous_until`.
pub async fn rotate<C: ConnectionTrait>(c: &C, id: &str, previous_until: i64) -> Result<Option<i64>, DbErr> {
    let row = db::query_one(
        c,
        "UPDATE webhook_subscriptions SET generation = generation + 1, previous_until = $2 WHERE id = $1 RETURNING generation",
        vec![id.into(), previous_until.into()],
    )
    .await?;
    row.as_ref().map(|r| col::<i64>(r, "generation")).transpose()
}

/// Every stream's removed subjects.
async fn excluded_subjects<C: ConnectionTrait>(c: &C) -> Result<std::collections::HashSet<(String, String)>, DbErr> {
    db::query(c, "SELECT stream_id, principal_id FROM ssf_excluded_subjects", vec![])
        .await?
        .iter()
        .map(|r| Ok((col(r, "stream_id")?, col(r, "principal_id")?)))
        .collect()
}

/// Queues each record for every subscription that wants it and is not suspended (in the
/// records' transaction), a few statements for the whole batch.
pub async fn enqueue<C: ConnectionTrait>(c: &C, records: &[Record], now: i64) -> Result<usize, DbErr> {
    if records.is_empty() {
        return Ok(0);
    }
    let subscriptions = subscriptions(c).await?;
    // Who each record is about, for Shared Signals streams (a group's members), and the
    // subjects receivers removed from their streams.
    let (about, excluded): (Vec<Vec<ssf::Subject>>, _) = if subscriptions.iter().any(|s| s.stream.is_some()) {
        let mut subjects = ssf::Subjects::before(c, records).await?;
        (
            records.iter().map(|r| subjects.about(r)).collect(),
            excluded_subjects(c).await?,
        )
    } else {
        Default::default()
    };
    let mut queued = Vec::new();
    for s in subscriptions.iter().filter(|s| s.suspended_at.is_none()) {
        for (i, r) in records.iter().enumerate().filter(|(_, r)| s.wants(r)) {
            // One delivery per subject: a member's is told apart by its id after the event's.
            let bodies: Vec<(String, String)> = match &s.stream {
                None => vec![(r.event_id.clone(), super::cloud_event(r))],
                Some(stream) => about[i]
                    .iter()
                    .filter(|subject| !excluded.contains(&(s.id.clone(), subject.principal_id.clone())))
                    .filter_map(|subject| {
                        let key = if subject.principal_id == r.target_id {
                            r.event_id.clone()
                        } else {
                            format!("{}/{}", r.event_id, subject.principal_id)
                        };
                        Some((key, ssf::claims(r, stream, subject)?))
                    })
                    .collect(),
            };
            for (event_id, body) in bodies {
                queued.push(Delivery {
                    id: uuid::Uuid::now_v7().to_string(),
                    subscription_id: s.id.clone(),
                    position: r.sequence,
                    event_id,
                    event_type: r.action.clone(),
                    body,
                    status: PENDING.into(),
                    created_at: now,
                    next_attempt_at: now,
                    ..Delivery::default()
                });
            }
        }
    }
    let mut added = 0;
    // 13 values a row: within both databases' parameter limits.
    for chunk in queued.chunks(500) {
        added += insert_deliveries(c, chunk).await?;
    }
    Ok(added)
}

/// How many deliveries of `event_type` a subscription was given since `since`.
pub async fn queued_since<C: ConnectionTrait>(
    c: &C,
    subscription_id: &str,
    event_type: &str,
    since: i64,
) -> Result<i64, DbErr> {
    let row = db::query_one(
        c,
        "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE subscription_id = $1 AND event_type = $2 AND created_at >= $3",
        vec![subscription_id.into(), event_type.into(), since.into()],
    )
    .await?;
    row.map_or(Ok(0), |r| col(&r, "n"))
}

/// Adds a delivery unless this event is queued for this subscription already.
pub async fn insert_delivery<C: ConnectionTrait>(c: &C, d: &Delivery) -> Result<usize, DbErr> {
    insert_deliveries(c, std::slice::from_ref(d)).await
}

/// Adds deliveries in one statement, leaving out events queued for their subscription already.
async fn insert_deliveries<C: ConnectionTrait>(c: &C, deliveries: &[Delivery]) -> Result<usize, DbErr> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let mut rows = Vec::with_capacity(deliveries.len());
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(deliveries.len() * 13);
    for d in deliveries {
        let base = values.len();
        rows.push(format!(
            "({})",
            (1..=13)
                .map(|i| format!("${}", base + i))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        values.extend([
            d.id.clone().into(),
            d.subscription_id.clone().into(),
            d.position.into(),
            d.event_id.clone().into(),
            d.event_type.clone().into(),
            d.body.clone().into(),
            d.status.clone().into(),
            d.attempts.into(),
            d.last_status_code.into(),
            d.last_error.clone().into(),
            d.created_at.into(),
            d.next_attempt_at.into(),
            d.delivered_at.into(),
        ]);
    }
    let added = db::exec(
        c,
        &format!(
            "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES {} ON CONFLICT (subscription_id, event_id) DO NOTHING",
            rows.join(", ")
        ),
        values,
    )
    .await?;
    Ok(added as usize)
}

/// The deliveries whose turn it is: for each subscription that is pushed to (not a polled or
/// paused stream) its first pending one (in record order), when its next attempt is due. One
/// indexed lookup per subscription, however long the queues.
pub async fn due<C: ConnectionTrait>(c: &C, now: i64, limit: u64) -> Result<Vec<Delivery>, DbErr> {
    let ids = db::query(
        c,
        "SELECT id FROM webhook_subscriptions
         WHERE ssf_method IS NULL OR (ssf_method = 'push' AND ssf_status = 'enabled')
         ORDER BY created_at, id",
        vec![],
    )
    .await?;
    let mut due = Vec::new();
    for row in ids {
        if due.len() as u64 >= limit {
            break;
        }
        if let Some(head) = head(c, &col::<String>(&row, "id")?, now).await? {
            due.push(head);
        }
    }
    Ok(due)
}

/// A subscription's first pending delivery (in record order), if its next attempt is due.
pub async fn head<C: ConnectionTrait>(c: &C, subscription_id: &str, now: i64) -> Result<Option<Delivery>, DbErr> {
    let first = db::query_one(
        c,
        &format!(
            "SELECT {DELIVERY_READ} FROM webhook_deliveries
             WHERE subscription_id = $1 AND status = 'pending' ORDER BY position, id LIMIT 1"
        ),
        vec![subscription_id.into()],
    )
    .await?
    .as_ref()
    .map(Delivery::from_row)
    .transpose()?;
    Ok(first.filter(|d| d.next_attempt_at <= now))
}

/// Takes a due delivery for one attempt (see [`Queue::claim`]).
pub async fn claim<C: ConnectionTrait>(c: &C, d: &Delivery, now: i64, lease_until: i64) -> Result<bool, DbErr> {
    Queue::WebhookDeliveries
        .claim(c, &d.id, d.next_attempt_at, now, lease_until)
        .await
}

/// Takes a subscription's next run of deliveries for one attempt each, in record order: its
/// head and up to `limit - 1` behind it, all due now (nothing if the head is not: a retry
/// waits for its time, a claimed head is another attempt's), in one statement after one read.
/// Only a run that starts at the head and has no gap is kept; a row another process took
/// meanwhile ends it (what was claimed past it is released).
pub async fn claim_run<C: ConnectionTrait>(
    c: &C,
    subscription_id: &str,
    now: i64,
    lease_until: i64,
    limit: u64,
) -> Result<Vec<Delivery>, DbErr> {
    let queued = db::query(
        c,
        &format!(
            "SELECT {DELIVERY_READ} FROM webhook_deliveries
             WHERE subscription_id = $1 AND status = 'pending' ORDER BY position, id LIMIT $2"
        ),
        vec![subscription_id.into(), (limit as i64).into()],
    )
    .await?
    .iter()
    .map(Delivery::from_row)
    .collect::<Result<Vec<_>, _>>()?;
    let run: Vec<Delivery> = queued.into_iter().take_while(|d| d.next_attempt_at <= now).collect();
    if run.is_empty() {
        return Ok(run);
    }
    let (list, mut values) = id_list(&run, 3);
    values.splice(0..0, [lease_until.into(), now.into()]);
    let taken: std::collections::HashSet<String> = db::query(
        c,
        &format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $1, first_attempt_at = COALESCE(first_attempt_at, $2)
             WHERE id IN ({list}) AND status = 'pending' AND next_attempt_at <= $2 RETURNING id"
        ),
        values,
    )
    .await?
    .iter()
    .map(|r| col::<String>(r, "id"))
    .collect::<Result<_, _>>()?;
    let kept = run.iter().take_while(|d| taken.contains(&d.id)).count();
    let (mut run, rest) = (run.clone(), run[kept..].to_vec());
    run.truncate(kept);
    let stray: Vec<Delivery> = rest.into_iter().filter(|d| taken.contains(&d.id)).collect();
    release(c, &stray, lease_until, now).await?;
    for d in &mut run {
        d.first_attempt_at = d.first_attempt_at.or(Some(now));
        d.next_attempt_at = lease_until;
    }
    Ok(run)
}

/// `$first, $first+1, …` for the deliveries' ids, and the ids as values.
fn id_list(deliveries: &[Delivery], first: usize) -> (String, Vec<sea_orm::Value>) {
    let list = (first..first + deliveries.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    (list, deliveries.iter().map(|d| d.id.clone().into()).collect())
}

/// Marks a run's deliveries delivered (the receiver's `status_code`), under the claim that
/// sent them (`lease`); how many were still held.
pub async fn delivered_run<C: ConnectionTrait>(
    c: &C,
    deliveries: &[Delivery],
    status_code: i32,
    lease: i64,
    now: i64,
) -> Result<u64, DbErr> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let (list, mut values) = id_list(deliveries, 4);
    values.splice(0..0, [status_code.into(), now.into(), lease.into()]);
    db::exec(
        c,
        &format!(
            "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, last_status_code = $1,
                 last_error = '', delivered_at = $2, next_attempt_at = $2
             WHERE id IN ({list}) AND status = 'pending' AND next_attempt_at = $3"
        ),
        values,
    )
    .await
}

/// Gives back claimed deliveries not attempted (behind one that failed): due again at once,
/// their first attempt still to come.
pub async fn release<C: ConnectionTrait>(c: &C, deliveries: &[Delivery], lease: i64, now: i64) -> Result<u64, DbErr> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let (list, mut values) = id_list(deliveries, 3);
    values.splice(0..0, [now.into(), lease.into()]);
    db::exec(
        c,
        &format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $1,
                 first_attempt_at = CASE WHEN attempts = 0 THEN NULL ELSE first_attempt_at END
             WHERE id IN ({list}) AND status = 'pending' AND next_attempt_at = $2"
        ),
        values,
    )
    .await
}

/// An attempt's outcome, as the process holding the claim (`lease`) records it: delivered,
/// or pending until `next_attempt_at`, or dead. False when the claim was lost meanwhile (the
/// lease ran out and another process took the delivery): then nothing is written.
#[allow(clippy::too_many_arguments)]
pub async fn attempted<C: ConnectionTrait>(
    c: &C,
    id: &str,
    lease: i64,
    status: &str,
    status_code: i32,
    error: &str,
    next_attempt_at: i64,
    now: i64,
) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, last_status_code = $3, last_error = $4,
             next_attempt_at = $5, delivered_at = CASE WHEN $2 = 'delivered' THEN $6 ELSE delivered_at END
         WHERE id = $1 AND status = 'pending' AND next_attempt_at = $7",
        vec![
            id.into(),
            status.into(),
            status_code.into(),
            error.into(),
            next_attempt_at.into(),
            now.into(),
            lease.into(),
        ],
    )
    .await?
        == 1)
}

/// Suspends a subscription whose delivery was given up, and gives up what waited behind it;
/// how many that was.
pub async fn suspend<C: ConnectionTrait>(c: &C, subscription_id: &str, now: i64) -> Result<u64, DbErr> {
    db::exec(
        c,
        "UPDATE webhook_subscriptions SET suspended_at = $2 WHERE id = $1",
        vec![subscription_id.into(), now.into()],
    )
    .await?;
    db::exec(
        c,
        "UPDATE webhook_deliveries SET status = 'dead', next_attempt_at = $2,
             last_error = 'given up with an earlier delivery (the subscription was suspended)'
         WHERE subscription_id = $1 AND status = 'pending'",
        vec![subscription_id.into(), now.into()],
    )
    .await
}

/// Lets a suspended subscription receive events again; whether it was suspended.
pub async fn resume<C: ConnectionTrait>(c: &C, subscription_id: &str) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE webhook_subscriptions SET suspended_at = NULL WHERE id = $1 AND suspended_at IS NOT NULL",
        vec![subscription_id.into()],
    )
    .await?
        == 1)
}

/// Removes a delivery whose subscription is gone.
pub async fn forget_delivery<C: ConnectionTrait>(c: &C, id: &str) -> Result<(), DbErr> {
    db::exec(c, "DELETE FROM webhook_deliveries WHERE id = $1", vec![id.into()]).await?;
    Ok(())
}

/// Forgets deliveries delivered or given up before `before` (their history, and the copy of
/// the record each holds); how many.
pub async fn forget_settled<C: ConnectionTrait>(c: &C, before: i64) -> Result<u64, DbErr> {
    Queue::WebhookDeliveries.forget_settled(c, before).await
}

/// How many events wait for a subscription.
pub async fn pending_count<C: ConnectionTrait>(c: &C, subscription_id: &str) -> Result<i64, DbErr> {
    let row = db::query_one(
        c,
        "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE subscription_id = $1 AND status = 'pending'",
        vec![subscription_id.into()],
    )
    .await?;
    row.as_ref()
        .map(|r| col::<i64>(r, "n"))
        .transpose()
        .map(Option::unwrap_or_default)
}

#[cfg(test)]
pub async fn delivery<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<Delivery>, DbErr> {
    db::query_one(
        c,
        &format!("SELECT {DELIVERY_READ} FROM webhook_deliveries WHERE id = $1"),
        vec![id.into()],
    )
    .await?
    .as_ref()
    .map(Delivery::from_row)
    .transpose()
}

/// A subscription's deliveries, newest first.
pub async fn deliveries<C: ConnectionTrait>(c: &C, subscription_id: &str, limit: u64) -> Result<Vec<Delivery>, DbErr> {
    db::query(
        c,
        &format!(
            "SELECT {DELIVERY_READ} FROM webhook_deliveries WHERE subscription_id = $1
             ORDER BY position DESC, id DESC LIMIT $2"
        ),
        vec![subscription_id.into(), (limit as i64).into()],
    )
    .await?
    .iter()
    .map(Delivery::from_row)
    .collect()
}

/// The audit chain's head sequence (a test delivery goes after what is queued).
pub async fn head_position<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let row = db::query_one(c, "SELECT sequence FROM chain_head WHERE id = 1", vec![]).await?;
    row.as_ref()
        .map(|r| col::<i64>(r, "sequence"))
        .transpose()
        .map(Option::unwrap_or_default)
}
