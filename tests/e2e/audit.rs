//! The audit log's hash chain on PostgreSQL: intact, it verifies; changing, deleting or
//! swapping any row with direct SQL makes VerifyChain name the first broken record.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use tonic::Code;

use pim::ServiceName;
use pim_e2e::{TestSuite, authed, eventually};
use pim_proto::audit::v1 as aupb;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

/// Waits until the chain head reaches `sequence`.
async fn head_reaching(
    audit: &AuditServiceClient<tonic::transport::Channel>,
    admin: &str,
    sequence: i64,
) -> anyhow::Result<aupb::ChainHead> {
    eventually(Duration::from_secs(10), "audit records", || {
        let (mut audit, admin) = (audit.clone(), admin.to_owned());
        async move {
            let head = audit
                .get_chain_head(authed(&admin, aupb::GetChainHeadRequest {}))
                .await?
                .into_inner();
            Ok((head.sequence >= sequence).then_some(head))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_audit_log_is_detected() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        for name in ["lee", "kim", "ann"] {
            DirectoryServiceClient::new(ts.channel.clone())
                .create_user(authed(
                    &admin,
                    ipb::CreateUserRequest {
                        user_name: name.into(),
                        password: format!("{name}'s long passphrase"),
                        ..Default::default()
                    },
                ))
                .await?;
        }
        let audit = AuditServiceClient::new(ts.channel.clone());
        // bootstrap (3 events) + sign-in + three users: at least 7 records.
        let head = head_reaching(&audit, &admin, 7).await?;
        assert_eq!(head.hash.len(), 32);
        let verify = |from: i64, to: i64| {
            let (mut audit, admin) = (audit.clone(), admin.clone());
            async move {
                anyhow::Ok(
                    audit
                        .verify_chain(authed(
                            &admin,
                            aupb::VerifyChainRequest {
                                from_sequence: from,
                                to_sequence: to,
                            },
                        ))
                        .await?
                        .into_inner(),
                )
            }
        };
        let intact = verify(0, 7).await?;
        assert!(intact.ok);
        assert_eq!(intact.checked, 7);
        // A range that ends before it starts checks nothing, and is not called intact.
        let backwards = verify(5, 2).await.expect_err("to before from");
        let backwards = backwards.downcast_ref::<tonic::Status>().map(tonic::Status::code);
        assert_eq!(backwards, Some(Code::InvalidArgument));
        // So does a range past the chain's end: a chain that lost its tail is not "intact".
        let past = verify(100_000, 0).await.expect_err("past the head");
        let past = past.downcast_ref::<tonic::Status>().map(tonic::Status::code);
        assert_eq!(past, Some(Code::InvalidArgument));
        let odd = AuditServiceClient::new(ts.channel.clone())
            .query_events(authed(
                &admin,
                aupb::QueryEventsRequest {
                    since: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: -1,
                    }),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("negative nanos");
        assert_eq!(odd.code(), Code::InvalidArgument, "{odd:?}");

        let lee = ts.sign_in("lee", "lee's long passphrase").await?;
        let denied = AuditServiceClient::new(ts.channel.clone())
            .verify_chain(authed(&lee, aupb::VerifyChainRequest::default()))
            .await
            .expect_err("Lee reads no audit");
        assert_eq!(denied.code(), Code::PermissionDenied);

        let db = pim_runtime::db::connect(ts.database_url(ServiceName::Audit).expect("audit db")).await?;
        // Changed: one field of record 3.
        db.execute_unprepared("UPDATE audit_records SET justification = 'nothing to see' WHERE sequence = 3")
            .await?;
        let changed = verify(0, 7).await?;
        assert!(!changed.ok);
        assert_eq!(changed.first_broken_sequence, 3);

        // Swapped: records 5 and 6 trade places.
        for statement in [
            "UPDATE audit_records SET sequence = -5 WHERE sequence = 5",
            "UPDATE audit_records SET sequence = 5 WHERE sequence = 6",
            "UPDATE audit_records SET sequence = 6 WHERE sequence = -5",
        ] {
            db.execute_unprepared(statement).await?;
        }
        let swapped = verify(4, 7).await?;
        assert!(!swapped.ok);
        assert_eq!(swapped.first_broken_sequence, 5);

        // Removed: record 2 is gone.
        db.execute_unprepared("DELETE FROM audit_records WHERE sequence = 2")
            .await?;
        let removed = verify(0, 0).await?;
        assert!(!removed.ok);
        assert_eq!(removed.first_broken_sequence, 2);
        db.close().await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Fail closed: when a service cannot write its event, the change is not made and the caller
/// is told so — nothing happens that the audit log would not hear of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_without_its_event() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let identity_db =
            pim_runtime::db::connect(ts.database_url(ServiceName::Identity).expect("identity db")).await?;
        // Break the outbox: every insert into it fails from now on.
        identity_db
            .execute_unprepared("ALTER TABLE outbox ADD CONSTRAINT outbox_refuses CHECK (false) NOT VALID")
            .await?;
        let failed = ts
            .create_user(&admin, "lee")
            .await
            .expect_err("the event cannot be written");
        assert_eq!(failed.code(), Code::Internal);
        assert_eq!(
            failed.message(),
            "internal error",
            "no internal detail reaches the caller"
        );
        let users = pim_runtime::db::query_one(
            &identity_db,
            "SELECT COUNT(*) AS n FROM users WHERE user_name = 'lee'",
            vec![],
        )
        .await?;
        assert_eq!(
            users.map(|r| pim_runtime::db::col::<i64>(&r, "n")).transpose()?,
            Some(0),
            "the user was not created"
        );

        identity_db
            .execute_unprepared("ALTER TABLE outbox DROP CONSTRAINT outbox_refuses")
            .await?;
        ts.create_user(&admin, "lee").await?;
        identity_db.close().await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// The chain head goes onto the audit stream as a ChainCheckpoint, to be kept elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_head_is_checkpointed_on_the_stream() -> anyhow::Result<()> {
    use prost::Message;
    use redis::AsyncCommands;
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut audit = AuditServiceClient::new(ts.channel.clone());
        let head = head_reaching(&audit, &admin, 4).await?;
        let service = ts.suite.audit().expect("audit runs here");
        let mut last = 0;
        assert!(service.checkpoint(&mut last).await?);
        let current = audit
            .get_chain_head(authed(&admin, aupb::GetChainHeadRequest {}))
            .await?
            .into_inner();
        assert!(current.sequence >= head.sequence);
        let key = format!("{}pim.audit.events", ts.stream_prefix);
        let mut redis = redis::Client::open(pim_runtime::testing::redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        let checkpoint = eventually(Duration::from_secs(10), "the checkpoint on the stream", || {
            let (mut redis, key) = (redis.clone(), key.clone());
            async move {
                let entries: redis::streams::StreamRangeReply = redis.xrange_all(&key).await?;
                Ok(entries.ids.first().and_then(|e| e.get::<Vec<u8>>("ce")))
            }
        })
        .await?;
        let sequence_of = |ce: &[u8]| -> anyhow::Result<pim_proto::events::v1::ChainCheckpoint> {
            let envelope = pim_runtime::events::Envelope::decode(ce)?;
            Ok(pim_proto::events::v1::ChainCheckpoint::decode(
                envelope.data.as_slice(),
            )?)
        };
        let event = sequence_of(&checkpoint)?;
        assert_eq!(event.sequence, last);
        assert_eq!(event.hash.len(), 32);
        // Records from the suite's start may still be arriving: each move of the head is
        // anchored once, and a pass with nothing new anchors nothing.
        let (mut anchored, deadline) = (1, std::time::Instant::now() + Duration::from_secs(10));
        loop {
            let previous = last;
            if !service.checkpoint(&mut last).await? {
                assert_eq!(last, previous);
                break;
            }
            assert!(last > previous, "a checkpoint anchors a newer head");
            anchored += 1;
            anyhow::ensure!(std::time::Instant::now() < deadline, "the chain never stopped moving");
        }
        let sequences = eventually(Duration::from_secs(10), "every checkpoint on the stream", || {
            let (mut redis, key) = (redis.clone(), key.clone());
            async move {
                let entries: redis::streams::StreamRangeReply = redis.xrange_all(&key).await?;
                let sequences = entries
                    .ids
                    .iter()
                    .filter_map(|e| e.get::<Vec<u8>>("ce"))
                    .map(|ce| sequence_of(&ce).map(|c| c.sequence))
                    .collect::<anyhow::Result<Vec<i64>>>()?;
                Ok((sequences.len() >= anchored).then_some(sequences))
            }
        })
        .await?;
        assert_eq!(
            sequences.len(),
            anchored,
            "one entry per checkpoint, none for the idle pass"
        );
        assert_eq!(sequences.last(), Some(&last));
        let _: () = redis.del(&key).await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Every action of the seed's scenario — assign eligible, activate with MFA and a
/// justification, approve, expire — is in the audit log once, with actor, target, role,
/// scope, justification and time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_is_audited_once_per_action() -> anyhow::Result<()> {
    use crate::activation::{EXCHANGE_ADMINISTRATOR, HOUR_MS, activation, run};
    use pim_proto::approval::v1 as pb;
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
            .await?;
        let request = w
            .assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "mailbox migration"),
            ))
            .await?
            .into_inner();
        let approval = w.approval_of(&request.id).await?;
        w.approvals()
            .decide(authed(
                &w.admin,
                pb::DecideRequest {
                    approval_id: approval.id.clone(),
                    decision: pb::Decision::Approve as i32,
                    justification: "planned migration".into(),
                },
            ))
            .await?;
        w.eventually_status(
            &lee.token,
            &request.id,
            pim_proto::assignment::v1::RequestStatus::Provisioned,
        )
        .await?;
        w.clock.advance(Duration::from_millis(HOUR_MS as u64));
        w.tick().await?;

        let admin_id = w.admin_id().await?;
        let expected: [(&str, &str, &str); 6] = [
            ("EligibilityGranted", admin_id.as_str(), ""),
            ("RequestCreated", lee.id.as_str(), "mailbox migration"),
            ("ApprovalDecisionRecorded", admin_id.as_str(), "planned migration"),
            ("ApprovalGranted", admin_id.as_str(), ""),
            ("RoleActivated", lee.id.as_str(), "mailbox migration"),
            ("RoleDeactivated", "system", ""),
        ];
        // Every event has been delivered and applied from here on: a duplicate would show.
        w.ts.settle().await?;
        for (action, actor, justification) in expected {
            let records = AuditServiceClient::new(w.ts.channel.clone())
                .query_events(authed(
                    &w.admin,
                    aupb::QueryEventsRequest {
                        action: action.into(),
                        target_id: lee.id.clone(),
                        actor_id: actor.into(),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .records;
            assert_eq!(records.len(), 1, "{action} once: {records:?}");
            let r = &records[0];
            assert_eq!(
                (r.role_id.as_str(), r.scope.as_str()),
                (EXCHANGE_ADMINISTRATOR, "/"),
                "{action}"
            );
            if !actor.is_empty() {
                assert_eq!(r.actor_id, actor, "{action}");
            }
            assert_eq!(r.justification, justification, "{action}");
            assert!(r.time.is_some(), "{action}");
        }
        Ok(w)
    })
    .await
}

/// Retention prunes old records and the rest still verifies from the cut, which goes onto
/// the stream; sign-in addresses are kept only as keyed HMACs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_and_the_kept_chain_still_verifies() -> anyhow::Result<()> {
    let ts = TestSuite::postgres_with(
        None,
        &[
            ("PIM_AUDIT_RETENTION_DAYS", "1".into()),
            ("PIM_AUDIT_HMAC_KEY", "audit correlation key".into()),
        ],
    )
    .await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut audit = AuditServiceClient::new(ts.channel.clone());
        let head = head_reaching(&audit, &admin, 4).await?;
        // The admin's sign-in (its record may follow the first four): its address only as an
        // HMAC.
        let sign_ins = eventually(Duration::from_secs(10), "the admin's sign-in audited", || {
            let (mut audit, admin) = (audit.clone(), admin.clone());
            async move {
                let records = audit
                    .query_events(authed(
                        &admin,
                        aupb::QueryEventsRequest {
                            action: "SignInSucceeded".into(),
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner()
                    .records;
                Ok((!records.is_empty()).then_some(records))
            }
        })
        .await?;
        let payload: serde_json::Value = serde_json::from_str(&sign_ins[0].payload_json)?;
        assert_eq!(payload["source_hmac"].as_str().map(str::len), Some(64), "{payload}");
        assert!(!sign_ins[0].payload_json.contains("127.0.0.1"));

        // Nothing is a day old yet; two days from now everything is.
        let service = ts.suite.audit().expect("audit runs here").clone();
        assert_eq!(service.prune(pim_runtime::db::now_ms()).await?, None);
        let cut = service
            .prune(pim_runtime::db::now_ms() + 2 * 86_400_000)
            .await?
            .expect("a cut");
        assert!(cut >= head.sequence);
        let left = audit
            .query_events(authed(&admin, aupb::QueryEventsRequest::default()))
            .await?
            .into_inner()
            .records;
        assert!(left.iter().all(|r| r.sequence > cut), "pruned through {cut}");

        // The chain goes on from the cut, and still catches tampering after it.
        ts.sign_in(&ts.admin_user, &ts.admin_password).await?;
        let fresh = eventually(Duration::from_secs(10), "a record after the cut", || {
            let (mut audit, admin) = (audit.clone(), admin.clone());
            async move {
                let r = audit
                    .query_events(authed(&admin, aupb::QueryEventsRequest::default()))
                    .await?
                    .into_inner()
                    .records;
                Ok(r.iter().any(|r| r.sequence > cut).then_some(r))
            }
        })
        .await?;
        let verified = audit
            .verify_chain(authed(&admin, aupb::VerifyChainRequest::default()))
            .await?
            .into_inner();
        assert!(verified.ok, "{verified:?}");
        assert!(verified.checked >= 1);
        let checkpoints = eventually(Duration::from_secs(10), "the cut on the stream", || async {
            let mut redis = redis::Client::open(pim_runtime::testing::redis_url())?
                .get_multiplexed_async_connection()
                .await?;
            let key = format!("{}{}", ts.stream_prefix, pim_runtime::events::streams::AUDIT);
            let entries: redis::streams::StreamRangeReply = redis::AsyncCommands::xrange_all(&mut redis, key).await?;
            let cuts: Vec<pim_proto::events::v1::ChainCheckpoint> = entries
                .ids
                .iter()
                .filter_map(|e| e.get::<Vec<u8>>("ce"))
                .filter_map(|b| <pim_runtime::events::Envelope as prost::Message>::decode(b.as_slice()).ok())
                .filter_map(|e| pim_runtime::events::decode(&e).ok())
                .filter(|c: &pim_proto::events::v1::ChainCheckpoint| c.reason == "retention")
                .collect();
            Ok((!cuts.is_empty()).then_some(cuts))
        })
        .await?;
        assert_eq!(checkpoints[0].sequence, cut);
        let first = fresh.iter().map(|r| r.sequence).min().expect("one");
        let db = pim_runtime::db::connect(ts.database_url(ServiceName::Audit).expect("audit db")).await?;
        db.execute_unprepared(&format!(
            "UPDATE audit_records SET actor_id = 'someone else' WHERE sequence = {first}"
        ))
        .await?;
        let broken = audit
            .verify_chain(authed(&admin, aupb::VerifyChainRequest::default()))
            .await?
            .into_inner();
        assert_eq!((broken.ok, broken.first_broken_sequence), (false, first));
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// At-least-once delivery brings an event twice (a relay that crashed after XADD, a claimed
/// entry): audit records it once, whether the copies come together or apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_recorded_once() -> anyhow::Result<()> {
    use pim_runtime::events::{Publisher, RedisPublisher, envelope, streams};

    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut event = envelope(
            pim_runtime::events::Source::Identity,
            pim_runtime::events::EventType::UserCreated,
            "twice-delivered",
            &pim_proto::events::v1::UserCreated {
                actor: None,
                user_id: "twice-delivered".into(),
                user_name: "twice".into(),
                display_name: "Delivered twice".into(),
                email: String::new(),
            },
        );
        pim_e2e::event_keys().sign(streams::IDENTITY, &mut event)?;
        let publisher = RedisPublisher::connect(&pim_runtime::testing::redis_url(), &ts.stream_prefix).await?;
        publisher.publish(streams::IDENTITY, &event, 0).await?;
        publisher.publish(streams::IDENTITY, &event, 0).await?;
        let query = || {
            let (ts, admin) = (&ts, admin.clone());
            async move {
                let query = aupb::QueryEventsRequest {
                    target_id: "twice-delivered".into(),
                    ..Default::default()
                };
                ts.audit_records(&admin, query).await
            }
        };
        eventually(Duration::from_secs(10), "the event recorded", || async {
            Ok((!query().await?.is_empty()).then_some(()))
        })
        .await?;
        // Both copies delivered and acknowledged; then, and after a third copy on its own:
        // one record.
        ts.settle().await?;
        assert_eq!(query().await?.len(), 1);
        publisher.publish(streams::IDENTITY, &event, 0).await?;
        ts.settle().await?;
        let records = query().await?;
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].event_id, event.id);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Asked newest first, QueryEvents pages down from the head: the latest records first, the
/// next page older than the last one, nothing skipped or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_records_come_first_when_asked() -> anyhow::Result<()> {
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        for name in ["ann", "ben", "cas"] {
            ts.create_user(&admin, name).await?;
        }
        let query = |page_token: String, newest_first: bool| aupb::QueryEventsRequest {
            action: "UserCreated".into(),
            page_size: 2,
            page_token,
            newest_first,
            ..Default::default()
        };
        let mut audit = AuditServiceClient::new(ts.channel.clone());
        let all = eventually(Duration::from_secs(10), "three users audited", || {
            let ts = &ts;
            let admin = admin.clone();
            async move {
                let records = ts
                    .audit_records(
                        &admin,
                        aupb::QueryEventsRequest {
                            action: "UserCreated".into(),
                            ..Default::default()
                        },
                    )
                    .await?;
                Ok((records.iter().filter(|r| r.target_name != "admin").count() == 3).then_some(records))
            }
        })
        .await?;
        let oldest_first: Vec<i64> = all.iter().map(|r| r.sequence).collect();
        let first = audit
            .query_events(authed(&admin, query(String::new(), true)))
            .await?
            .into_inner();
        let second = audit
            .query_events(authed(&admin, query(first.next_page_token.clone(), true)))
            .await?
            .into_inner();
        let newest_first: Vec<i64> = first
            .records
            .iter()
            .chain(&second.records)
            .map(|r| r.sequence)
            .collect();
        let mut expected = oldest_first.clone();
        expected.reverse();
        assert_eq!(newest_first, expected[..newest_first.len()].to_vec());
        assert_eq!(newest_first.len(), oldest_first.len().min(4));
        assert_eq!(first.records[0].target_name, "cas", "the latest first");
        // Oldest first stays the default of the API.
        let oldest = audit
            .query_events(authed(&admin, query(String::new(), false)))
            .await?
            .into_inner();
        assert_eq!(oldest.records[0].sequence, oldest_first[0]);
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Webhooks: managing them needs pim.webhooks.manage; the secret is shown once; a URL that is
/// not https:// (or loopback), or an event type PIM does not publish, is refused; what audit
/// records is queued for the subscription;
/// a receiver failing for a day has its delivery given up, and alerting raises
/// webhook_dead_lettered; the subscription's creation is itself audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_for_a_day_is_dead_lettered_and_alerted() -> anyhow::Result<()> {
    use pim_proto::alerting::v1 as alpb;
    use pim_proto::alerting::v1::alert_service_client::AlertServiceClient;
    use pim_proto::audit::v1::webhook_service_client::WebhookServiceClient;
    let ts = TestSuite::embedded().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut hooks = WebhookServiceClient::new(ts.channel.clone());
        let asking = |url: &str| aupb::CreateSubscriptionRequest {
            subscription: Some(aupb::Subscription {
                url: url.into(),
                event_types: vec!["UserCreated".into()],
                ..Default::default()
            }),
        };
        ts.create_user(&admin, "lee").await?;
        let lee = ts.sign_in("lee", &pim_e2e::password_of("lee")).await?;
        let refused = hooks
            .create_subscription(authed(&lee, asking("http://127.0.0.1:9/hook")))
            .await
            .expect_err("lee manages no webhooks");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let plain = hooks
            .create_subscription(authed(&admin, asking("http://hooks.example.com/pim")))
            .await
            .expect_err("plain http off the machine");
        assert_eq!(plain.code(), Code::InvalidArgument);
        let mut misspelt = asking("http://127.0.0.1:9/hook");
        misspelt.subscription.as_mut().expect("set").event_types = vec!["RoleActivate".into()];
        let misspelt = hooks
            .create_subscription(authed(&admin, misspelt))
            .await
            .expect_err("no such event type: it would never deliver");
        assert_eq!(misspelt.code(), Code::InvalidArgument);
        assert!(
            misspelt.message().contains("RoleActivate is not an event type"),
            "{}",
            misspelt.message()
        );
        // Nothing listens on port 9 of the loopback.
        let created = hooks
            .create_subscription(authed(&admin, asking("http://127.0.0.1:9/hook/t0ps3cret?token=t0ps3cret")))
            .await?
            .into_inner();
        assert!(created.secret.starts_with("whsec_"), "shown once, at creation");
        let id = created.subscription.expect("the subscription").id;
        ts.create_user(&admin, "wendy").await?;
        let deliveries = |hooks: WebhookServiceClient<tonic::transport::Channel>, admin: String, id: String| async move {
            let mut hooks = hooks;
            anyhow::Ok(
                hooks
                    .list_deliveries(authed(
                        &admin,
                        aupb::ListDeliveriesRequest {
                            subscription_id: id,
                            page_size: 10,
                        },
                    ))
                    .await?
                    .into_inner()
                    .deliveries,
            )
        };
        let queued = eventually(Duration::from_secs(10), "wendy's creation queued", || {
            let (hooks, admin, id) = (hooks.clone(), admin.clone(), id.clone());
            async move {
                let listed = deliveries(hooks, admin, id).await?;
                Ok((!listed.is_empty()).then_some(listed))
            }
        })
        .await?;
        assert_eq!(queued[0].event_type, "pim.identity.v1.UserCreated");

        // A day of failures later, the delivery is given up and alerting says so.
        let service = ts.suite.audit().expect("audit runs here").clone();
        eventually(Duration::from_secs(10), "the delivery given up", || {
            let (hooks, admin, id, service) = (hooks.clone(), admin.clone(), id.clone(), service.clone());
            async move {
                // A first attempt now (unless the dispatcher made it), then one a day later.
                service.deliver_webhooks(pim_runtime::db::now_ms()).await?;
                service
                    .deliver_webhooks(pim_runtime::db::now_ms() + 25 * 3_600_000)
                    .await?;
                let listed = deliveries(hooks, admin, id).await?;
                Ok(listed
                    .iter()
                    .any(|d| d.status == aupb::DeliveryStatus::Dead as i32)
                    .then_some(()))
            }
        })
        .await?;
        // The alert `rule` raised, once there.
        let raised = |rule: &'static str| {
            let admin = admin.clone();
            let ts = &ts;
            eventually(Duration::from_secs(10), rule, move || {
                let admin = admin.clone();
                let mut alerts = AlertServiceClient::new(ts.channel.clone());
                async move {
                    let listed = alerts
                        .list_alerts(authed(
                            &admin,
                            alpb::ListAlertsRequest {
                                page_size: 500,
                                ..Default::default()
                            },
                        ))
                        .await?
                        .into_inner()
                        .alerts;
                    Ok(listed.into_iter().find(|a| a.rule_id == rule))
                }
            })
        };
        let alert = raised("webhook_dead_lettered").await?;
        assert_eq!(alert.figures.get("subscription_id"), Some(&id));
        assert_eq!(
            alert.figures.get("url").map(String::as_str),
            Some("http://127.0.0.1:9"),
            "the origin only (a path or query may hold a token)"
        );
        // Its creation was alerted too: events going to a new receiver are a way out.
        let made = raised("webhook_subscribed").await?;
        assert_eq!(
            (made.figures.get("subscription_id"), made.figures.get("url").map(String::as_str)),
            (Some(&id), Some("http://127.0.0.1:9"))
        );
        assert_eq!(made.principal_id, pim_e2e::token_subject(&admin)?, "who made it");
        assert!(!made.figures.values().any(|v| v.contains("t0ps3cret")));
        // Given up, the subscription is suspended until someone resumes it.
        let listed = hooks
            .list_subscriptions(authed(&admin, aupb::ListSubscriptionsRequest {}))
            .await?
            .into_inner()
            .subscriptions;
        assert!(listed[0].suspended_at.is_some(), "{listed:?}");
        let resume = || aupb::SubscriptionRequest {
            subscription_id: id.clone(),
        };
        let resumed = hooks.resume_subscription(authed(&admin, resume())).await?.into_inner();
        assert!(resumed.suspended_at.is_none());
        let again = hooks
            .resume_subscription(authed(&admin, resume()))
            .await
            .expect_err("not suspended any more");
        assert_eq!(again.code(), Code::FailedPrecondition);
        let records = AuditServiceClient::new(ts.channel.clone())
            .query_events(authed(
                &admin,
                aupb::QueryEventsRequest {
                    action: "pim.audit.v1.WebhookSubscriptionCreated".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .records;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].target_name, "http://127.0.0.1:9");
        assert!(!records[0].payload_json.contains("t0ps3cret"));
        let payload: serde_json::Value = serde_json::from_str(&records[0].payload_json)?;
        assert_eq!(
            payload["actor_session_id"],
            pim_e2e::token_claim(&admin, "sid")?,
            "the session it came from"
        );
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// The mail history is for audit readers: anyone else is refused, and a reader sees it (no
/// mail here: notifications are off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_audit_readers_read_the_mail_history() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "lee").await?;
        let lee = ts.sign_in("lee", &pim_e2e::password_of("lee")).await?;
        let mut audit = AuditServiceClient::new(ts.channel.clone());
        let refused = audit
            .list_mails(authed(&lee, aupb::ListMailsRequest::default()))
            .await
            .expect_err("lee reads no one's mail");
        assert_eq!(refused.code(), Code::PermissionDenied, "{}", refused.message());
        let listed = audit
            .list_mails(authed(&admin, aupb::ListMailsRequest::default()))
            .await?
            .into_inner();
        assert!(listed.mails.is_empty());
        Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
