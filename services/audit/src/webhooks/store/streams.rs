//! Shared Signals streams: the rows of `webhook_subscriptions` that are streams (an
//! audience set), what a receiver counts, and the events a polled stream hands out.

use sea_orm::{ConnectionTrait, DbErr};

use pim_runtime::db;

use super::{DEAD, DELIVERED, DELIVERY_READ, Delivery, SUBSCRIPTION_COLUMNS, list};
use crate::ssf::StreamStatus;
use crate::webhooks::Subscription;

/// A push stream's sealed `Authorization` header, replaced.
pub async fn set_stream_authorization<C: ConnectionTrait>(c: &C, id: &str, sealed: &str) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE webhook_subscriptions SET ssf_authorization = $2 WHERE id = $1 AND ssf_method = 'push'",
        vec![id.into(), sealed.into()],
    )
    .await?;
    Ok(())
}

/// Every push stream's sealed `Authorization` header: (stream id, sealed).
pub async fn stream_authorizations<C: ConnectionTrait>(c: &C) -> Result<Vec<(String, String)>, DbErr> {
    db::rows(
        c,
        "SELECT id, ssf_authorization FROM webhook_subscriptions WHERE ssf_authorization IS NOT NULL ORDER BY id",
        vec![],
        |r| Ok((db::col(r, "id")?, db::col(r, "ssf_authorization")?)),
    )
    .await
}

/// Counts one more stream for a receiver unless it has `max` already: one statement (the
/// receiver's row locked by the upsert), so two creations at once cannot both pass the
/// limit. Whether it counted.
pub async fn count_stream<C: ConnectionTrait>(c: &C, audience: &str, max: i64) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "INSERT INTO ssf_receivers (audience, streams) VALUES ($1, 1)
         ON CONFLICT (audience) DO UPDATE SET streams = ssf_receivers.streams + 1
         WHERE ssf_receivers.streams < $2",
        vec![audience.into(), max.into()],
    )
    .await?
        == 1)
}

/// Removes a subject from a stream (`excluded`: its events no longer queued there) or adds it
/// back; whether that changed anything.
pub async fn exclude_subject<C: ConnectionTrait>(
    c: &C,
    stream_id: &str,
    principal_id: &str,
    excluded: bool,
    now: i64,
) -> Result<bool, DbErr> {
    let n = if excluded {
        db::exec(
            c,
            "INSERT INTO ssf_excluded_subjects (stream_id, principal_id, excluded_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            vec![stream_id.into(), principal_id.into(), now.into()],
        )
        .await?
    } else {
        db::exec(
            c,
            "DELETE FROM ssf_excluded_subjects WHERE stream_id = $1 AND principal_id = $2",
            vec![stream_id.into(), principal_id.into()],
        )
        .await?
    };
    Ok(n == 1)
}

/// Whether any Shared Signals stream is pushed (enabled or not).
pub async fn has_push_streams<C: ConnectionTrait>(c: &C) -> Result<bool, DbErr> {
    Ok(db::query_one(
        c,
        "SELECT id FROM webhook_subscriptions WHERE ssf_method = 'push' LIMIT 1",
        vec![],
    )
    .await?
    .is_some())
}

/// A receiver's streams.
pub async fn streams_of<C: ConnectionTrait>(c: &C, audience: &str) -> Result<Vec<Subscription>, DbErr> {
    db::query(
        c,
        &format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE ssf_audience = $1 ORDER BY created_at, id"
        ),
        vec![audience.into()],
    )
    .await?
    .iter()
    .map(Subscription::from_row)
    .collect()
}

/// Changes what a stream asks for and its description; whether there was such a stream.
pub async fn update_stream<C: ConnectionTrait>(
    c: &C,
    id: &str,
    event_types: &[String],
    description: &str,
) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE webhook_subscriptions SET event_types = $2, description = $3 WHERE id = $1 AND ssf_audience IS NOT NULL",
        vec![id.into(), list(event_types).into(), description.into()],
    )
    .await?
        == 1)
}

/// Sets a stream's status; disabling it gives up what it had queued (a disabled stream
/// neither sends nor holds events). Whether there was such a stream.
pub async fn set_stream_status<C: ConnectionTrait>(
    c: &C,
    id: &str,
    status: StreamStatus,
    now: i64,
) -> Result<bool, DbErr> {
    let changed = db::exec(
        c,
        "UPDATE webhook_subscriptions SET ssf_status = $2 WHERE id = $1 AND ssf_audience IS NOT NULL",
        vec![id.into(), status.as_str().into()],
    )
    .await?
        == 1;
    if changed && status == StreamStatus::Disabled {
        db::exec(
            c,
            "UPDATE webhook_deliveries SET status = 'dead', next_attempt_at = $2, last_error = 'the stream was disabled'
             WHERE subscription_id = $1 AND status = 'pending'",
            vec![id.into(), now.into()],
        )
        .await?;
    }
    Ok(changed)
}

/// A polled stream's next events, in record order: at most `limit`.
pub async fn polled<C: ConnectionTrait>(c: &C, stream_id: &str, limit: u64) -> Result<Vec<Delivery>, DbErr> {
    db::query(
        c,
        &format!(
            "SELECT {DELIVERY_READ} FROM webhook_deliveries WHERE subscription_id = $1 AND status = 'pending'
             ORDER BY position, id LIMIT $2"
        ),
        vec![stream_id.into(), (limit as i64).into()],
    )
    .await?
    .iter()
    .map(Delivery::from_row)
    .collect()
}

/// Settles a polled stream's events by their `jti` (the delivery id): delivered when the
/// receiver acknowledged it, dead with the receiver's error when it refused it. How many.
pub async fn settle_polled<C: ConnectionTrait>(
    c: &C,
    stream_id: &str,
    jti: &str,
    error: Option<&str>,
    now: i64,
) -> Result<u64, DbErr> {
    db::exec(
        c,
        "UPDATE webhook_deliveries SET status = $3, attempts = attempts + 1, last_error = $4,
             delivered_at = CASE WHEN $3 = 'delivered' THEN $5 ELSE delivered_at END, next_attempt_at = $5
         WHERE subscription_id = $1 AND id = $2 AND status = 'pending'",
        vec![
            stream_id.into(),
            jti.into(),
            if error.is_some() { DEAD } else { DELIVERED }.into(),
            error.unwrap_or_default().into(),
            now.into(),
        ],
    )
    .await
}
