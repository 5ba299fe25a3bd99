//! `WebhookService`: subscriptions managed by holders of pim.webhooks.manage, each change an
//! audit record of its own.

use sea_orm::TransactionTrait;
use tonic::{Request, Response, Status};

use pim_proto::audit::v1 as pb;
use pim_proto::audit::v1::webhook_service_server::WebhookService;
use pim_runtime::access::permissions;
use pim_runtime::auth::{Caller, caller};
use pim_runtime::db::{now_ms, to_timestamp};
use pim_runtime::grpc::{internal, invalid_argument};

use crate::chain::Record;
use crate::ssf::StreamStatus;
use crate::webhooks::store::{self, Delivery, PENDING};
use crate::webhooks::{Keys, ROTATION_OVERLAP_MS, Subscription, validate};
use crate::{Audit, ingest};
use pim_runtime::events::{EventType, Source};

fn subscription_to_pb(s: Subscription) -> pb::Subscription {
    pb::Subscription {
        id: s.id,
        url: s.url,
        event_types: s.event_types,
        role_ids: s.role_ids,
        group_ids: s.group_ids,
        min_severity: s.min_severity,
        description: s.description,
        created_at: Some(to_timestamp(s.created_at)),
        created_by: s.created_by,
        suspended_at: s.suspended_at.map(to_timestamp),
    }
}

fn delivery_to_pb(d: Delivery) -> pb::Delivery {
    let status = match d.status.as_str() {
        store::PENDING => pb::DeliveryStatus::Pending,
        store::DELIVERED => pb::DeliveryStatus::Delivered,
        store::DEAD => pb::DeliveryStatus::Dead,
        _ => pb::DeliveryStatus::Unspecified,
    };
    pb::Delivery {
        id: d.id,
        subscription_id: d.subscription_id,
        event_id: d.event_id,
        event_type: d.event_type,
        status: status as i32,
        attempts: d.attempts,
        last_status_code: d.last_status_code,
        last_error: d.last_error,
        created_at: Some(to_timestamp(d.created_at)),
        next_attempt_at: (d.status == PENDING).then(|| to_timestamp(d.next_attempt_at)),
        delivered_at: d.delivered_at.map(to_timestamp),
    }
}

/// The record of a change to a subscription, by whom, naming it by its URL (without a query
/// string, which may carry a token).
fn change_record(caller: &Caller, action: EventType, s: &Subscription) -> Record {
    let actor = caller.actor();
    Record {
        event_id: uuid::Uuid::now_v7().to_string(),
        time: now_ms(),
        source: Source::Audit.name().into(),
        action: action.full_name(Source::Audit),
        actor_id: actor.principal_id,
        actor_name: actor.display_name,
        target_id: s.id.clone(),
        target_name: s.url_shown(),
        outcome: "success".into(),
        // The session it came from, as every other action's record names it.
        payload_json: serde_json::json!({
            "url": s.url_shown(), "event_types": s.event_types, "role_ids": s.role_ids, "group_ids": s.group_ids,
            "min_severity": s.min_severity, "generation": s.generation, "actor_session_id": actor.session_id,
        })
        .to_string(),
        ..Record::default()
    }
}

impl Audit {
    async fn require_webhooks(&self, caller: &Caller) -> Result<&Keys, Status> {
        pim_runtime::access::require(self.access.as_ref(), caller, permissions::WEBHOOKS_MANAGE, "/").await?;
        self.webhooks.keys.as_ref().ok_or_else(|| {
            Status::failed_precondition("webhooks need PIM_SECRETS_KEY (their signing secrets derive from it)")
        })
    }

    /// A webhook subscription (a Shared Signals stream is its receiver's to manage).
    async fn found(&self, id: &str) -> Result<Subscription, Status> {
        store::subscription(&self.db, id.trim())
            .await
            .map_err(internal)?
            .filter(|s| s.stream.is_none())
            .ok_or_else(|| pim_runtime::grpc::not_found(&format!("webhook subscription {id} not found")))
    }

    /// Keeps a record of a change in the change's transaction, then commits.
    async fn commit_with(&self, txn: sea_orm::DatabaseTransaction, record: Record) -> Result<(), Status> {
        ingest::keep(&txn, &mut vec![record]).await.map_err(internal)?;
        txn.commit().await.map_err(internal)?;
        self.webhooks.wake.notify_one();
        Ok(())
    }
}

#[tonic::async_trait]
impl WebhookService for Audit {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionSecret>, Status> {
        let caller = caller(&request)?.clone();
        let keys = self.require_webhooks(&caller).await?.clone();
        let asked = request.into_inner().subscription.unwrap_or_default();
        let s = Subscription {
            id: uuid::Uuid::now_v7().to_string(),
            url: asked.url.trim().to_owned(),
            event_types: asked.event_types.iter().map(|t| t.trim().to_owned()).collect(),
            role_ids: asked.role_ids.iter().map(|r| r.trim().to_owned()).collect(),
            group_ids: asked.group_ids.iter().map(|g| g.trim().to_owned()).collect(),
            min_severity: asked.min_severity.trim().to_lowercase(),
            description: asked.description,
            created_at: now_ms(),
            created_by: caller.principal_id.clone(),
            generation: 1,
            previous_until: 0,
            suspended_at: None,
            stream: None,
        };
        validate(&s).map_err(|e| invalid_argument(&format!("subscription.{}", e.field), &e.reason))?;
        let txn = self.db.begin().await.map_err(internal)?;
        store::insert_subscription(&txn, &s).await.map_err(internal)?;
        // Alerting hears of it: events going to a new receiver is a way out for the log.
        let made = pim_proto::events::v1::WebhookSubscriptionCreated {
            actor: Some(caller.actor()),
            subscription_id: s.id.clone(),
            url: s.url_shown(),
            event_types: s.event_types.clone(),
            min_severity: s.min_severity.clone(),
        };
        let told = pim_runtime::events::envelope(Source::Audit, EventType::WebhookSubscriptionCreated, &s.id, &made);
        self.outbox
            .enqueue(&txn, pim_runtime::events::streams::AUDIT, &told)
            .await
            .map_err(internal)?;
        self.commit_with(txn, change_record(&caller, EventType::WebhookSubscriptionCreated, &s))
            .await?;
        self.outbox.wake();
        Ok(Response::new(pb::SubscriptionSecret {
            secret: keys.shown(&s.id, s.generation),
            subscription: Some(subscription_to_pb(s)),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        self.require_webhooks(caller(&request)?).await?;
        let subscriptions = store::subscriptions(&self.db).await.map_err(internal)?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subscriptions
                .into_iter()
                .filter(|s| s.stream.is_none())
                .map(subscription_to_pb)
                .collect(),
        }))
    }

    async fn list_ssf_streams(
        &self,
        request: Request<pb::ListSsfStreamsRequest>,
    ) -> Result<Response<pb::ListSsfStreamsResponse>, Status> {
        pim_runtime::access::require(self.access.as_ref(), caller(&request)?, permissions::AUDIT_READ, "/").await?;
        let mut streams = Vec::new();
        for s in store::subscriptions(&self.db).await.map_err(internal)? {
            let Some(stream) = &s.stream else { continue };
            let status = match stream.status {
                StreamStatus::Enabled => pb::SsfStreamStatus::Enabled,
                StreamStatus::Paused => pb::SsfStreamStatus::Paused,
                StreamStatus::Disabled => pb::SsfStreamStatus::Disabled,
            };
            streams.push(pb::SsfStream {
                pending: store::pending_count(&self.db, &s.id).await.map_err(internal)?,
                id: s.id.clone(),
                receiver_id: stream.audience.clone(),
                delivery_method: stream.method.urn().into(),
                endpoint: s.url_shown(),
                events_requested: s.event_types.clone(),
                status: status as i32,
                description: s.description.clone(),
                created_at: Some(to_timestamp(s.created_at)),
            });
        }
        Ok(Response::new(pb::ListSsfStreamsResponse { streams }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let caller = caller(&request)?.clone();
        self.require_webhooks(&caller).await?;
        let s = self.found(&request.get_ref().subscription_id).await?;
        let txn = self.db.begin().await.map_err(internal)?;
        store::delete_subscription(&txn, &s.id).await.map_err(internal)?;
        self.commit_with(txn, change_record(&caller, EventType::WebhookSubscriptionDeleted, &s))
            .await?;
        Ok(Response::new(subscription_to_pb(s)))
    }

    async fn resume_subscription(
        &self,
        request: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let caller = caller(&request)?.clone();
        self.require_webhooks(&caller).await?;
        let mut s = self.found(&request.get_ref().subscription_id).await?;
        let txn = self.db.begin().await.map_err(internal)?;
        if !store::resume(&txn, &s.id).await.map_err(internal)? {
            return Err(Status::failed_precondition(format!(
                "webhook subscription {} is not suspended",
                s.id
            )));
        }
        s.suspended_at = None;
        self.commit_with(txn, change_record(&caller, EventType::WebhookSubscriptionResumed, &s))
            .await?;
        Ok(Response::new(subscription_to_pb(s)))
    }

    async fn rotate_subscription_secret(
        &self,
        request: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionSecret>, Status> {
        let caller = caller(&request)?.clone();
        let keys = self.require_webhooks(&caller).await?.clone();
        let mut s = self.found(&request.get_ref().subscription_id).await?;
        let txn = self.db.begin().await.map_err(internal)?;
        let generation = store::rotate(&txn, &s.id, now_ms() + ROTATION_OVERLAP_MS)
            .await
            .map_err(internal)?
            .ok_or_else(|| pim_runtime::grpc::not_found(&format!("webhook subscription {} not found", s.id)))?;
        s.generation = generation;
        self.commit_with(txn, change_record(&caller, EventType::WebhookSecretRotated, &s))
            .await?;
        Ok(Response::new(pb::SubscriptionSecret {
            secret: keys.shown(&s.id, generation),
            subscription: Some(subscription_to_pb(s)),
        }))
    }

    async fn test_subscription(
        &self,
        request: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::Delivery>, Status> {
        let caller = caller(&request)?.clone();
        self.require_webhooks(&caller).await?;
        let s = self.found(&request.get_ref().subscription_id).await?;
        if s.suspended_at.is_some() {
            return Err(Status::failed_precondition(format!(
                "webhook subscription {} is suspended: resume it first (pim webhooks resume)",
                s.id
            )));
        }
        let now = now_ms();
        let mut test = change_record(&caller, EventType::WebhookTest, &s);
        test.payload_json = serde_json::json!({"message": "a test delivery, asked for by the actor"}).to_string();
        test.time = now;
        let txn = self.db.begin().await.map_err(internal)?;
        test.sequence = store::head_position(&txn).await.map_err(internal)?;
        let delivery = Delivery {
            id: uuid::Uuid::now_v7().to_string(),
            subscription_id: s.id.clone(),
            position: test.sequence,
            event_id: test.event_id.clone(),
            event_type: test.action.clone(),
            body: crate::webhooks::cloud_event(&test),
            status: PENDING.into(),
            created_at: now,
            next_attempt_at: now,
            ..Delivery::default()
        };
        store::insert_delivery(&txn, &delivery).await.map_err(internal)?;
        txn.commit().await.map_err(internal)?;
        self.webhooks.wake.notify_one();
        Ok(Response::new(delivery_to_pb(delivery)))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        self.require_webhooks(caller(&request)?).await?;
        let r = request.into_inner();
        let s = self.found(&r.subscription_id).await?;
        let limit = pim_runtime::grpc::page_size(r.page_size, 100, 1000)?;
        let deliveries = store::deliveries(&self.db, &s.id, limit).await.map_err(internal)?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: deliveries.into_iter().map(delivery_to_pb).collect(),
        }))
    }
}
