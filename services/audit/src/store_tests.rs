//! Audit's store on both databases: each test body runs against a migrated SQLite file and a
//! migrated PostgreSQL database.

use pim_runtime::db::Db;
use sea_orm::TransactionTrait;

use crate::store::{self, Filter, Record};

const NOW: i64 = 1_800_000_000_000;

fn record(event_id: &str) -> Record {
    Record {
        event_id: event_id.into(),
        time: NOW,
        source: "pim.assignment".into(),
        action: "RoleActivated".into(),
        actor_id: "lee".into(),
        target_id: "lee".into(),
        outcome: "success".into(),
        payload_json: "{}".into(),
        ..Record::default()
    }
}

/// A polled Shared Signals stream of every CAEP event, naming subjects as `subjects` says.
fn polled_stream(id: &str, subjects: crate::ssf::SubjectFormat) -> crate::webhooks::Subscription {
    use crate::ssf::{EVENTS_SUPPORTED, Method, Stream, StreamStatus};
    crate::webhooks::Subscription {
        id: id.into(),
        event_types: EVENTS_SUPPORTED.iter().map(|e| (*e).to_owned()).collect(),
        generation: 1,
        stream: Some(Stream {
            audience: "app".into(),
            method: Method::Poll,
            status: StreamStatus::Enabled,
            subjects,
        }),
        ..Default::default()
    }
}

/// Keeps records as ingest does, in a transaction of their own.
async fn keep(db: &Db, mut records: Vec<Record>) -> anyhow::Result<()> {
    let txn = db.begin().await?;
    crate::ingest::keep(&txn, &mut records).await?;
    txn.commit().await?;
    Ok(())
}

async fn append(db: &Db, ids: &[&str]) -> anyhow::Result<Vec<Record>> {
    let mut records: Vec<Record> = ids.iter().map(|id| record(id)).collect();
    let txn = db.begin().await?;
    store::append_all(&txn, &mut records, NOW).await?;
    txn.commit().await?;
    Ok(records)
}

/// The chain grows by one link per new event, each record hashed over the one before; an
/// event seen before (in the same batch or an earlier one) is left out; pages run newest
/// first from the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_links_each_new_event_once_and_pages_newest_first() -> anyhow::Result<()> {
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        append(&db, &["e1", "e2", "e3"]).await?;
        let added = append(&db, &["e3", "e4", "e4"]).await?;
        assert_eq!(
            added
                .iter()
                .map(|r| (r.event_id.as_str(), r.sequence))
                .collect::<Vec<_>>(),
            vec![("e4", 4)],
            "e3 was stored already, e4 came twice"
        );
        let stored = store::range(&db, 1, 4, 10).await?;
        assert_eq!(stored.iter().map(|r| r.sequence).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        for pair in stored.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "each links to the one before");
            assert_eq!(pair[1].hash, crate::chain::hash(&pair[1].prev_hash, &pair[1]));
        }
        assert_eq!(store::head(&db).await?, (4, stored[3].hash.clone()));
        let page = |after_sequence| Filter {
            newest_first: true,
            after_sequence,
            ..Filter::default()
        };
        let newest: Vec<i64> = store::query(&db, &page(0), 2)
            .await?
            .iter()
            .map(|r| r.sequence)
            .collect();
        assert_eq!(newest, vec![4, 3]);
        let next: Vec<i64> = store::query(&db, &page(3), 2)
            .await?
            .iter()
            .map(|r| r.sequence)
            .collect();
        assert_eq!(next, vec![2, 1]);
        Ok(())
    })
    .await
}

/// Records name a principal and a role the same way whatever their events said: the user
/// name a user was created with (not a display name an assignment event carried), a custom
/// role's and a built-in role's name; a rename is seen by the records after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_names_principals_and_roles_the_same_way() -> anyhow::Result<()> {
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        let created = |event_id: &str, action: &str, id: &str, name: &str| Record {
            action: format!("pim.identity.v1.{action}"),
            target_id: id.into(),
            target_name: name.into(),
            ..record(event_id)
        };
        let granted = Record {
            action: "pim.assignment.v1.EligibilityGranted".into(),
            actor_id: "admin-id".into(),
            target_id: "lee-id".into(),
            target_name: "Lee Gu".into(),
            role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.into(),
            ..record("e3")
        };
        let policy = Record {
            action: "pim.assignment.v1.PolicyUpdated".into(),
            actor_id: "admin-id".into(),
            target_id: "role-9".into(),
            role_id: "role-9".into(),
            ..record("e4")
        };
        let mut batch = vec![
            created("e1", "UserCreated", "lee-id", "lee"),
            created("e2", "UserCreated", "admin-id", "admin"),
            granted,
            Record {
                action: "pim.assignment.v1.RoleDefinitionCreated".into(),
                ..created("e0", "", "role-9", "Payments Refunder")
            },
            policy,
        ];
        let txn = db.begin().await?;
        store::name_all(&txn, &mut batch).await?;
        store::append_all(&txn, &mut batch, NOW).await?;
        txn.commit().await?;
        let named = |r: &Record| (r.actor_name.clone(), r.target_name.clone(), r.role_name.clone());
        assert_eq!(
            named(&batch[2]),
            ("admin".into(), "lee".into(), "Global Administrator".into()),
            "the user name, not the display name the event carried"
        );
        assert_eq!(
            named(&batch[4]),
            ("admin".into(), "Payments Refunder".into(), "Payments Refunder".into())
        );
        let mut later = vec![
            created("e5", "UserUpdated", "lee-id", "lee.gu"),
            Record {
                actor_id: "lee-id".into(),
                target_id: "unknown-id".into(),
                target_name: "as the event said".into(),
                ..record("e6")
            },
        ];
        let txn = db.begin().await?;
        store::append_all(&txn, &mut later, NOW).await?;
        txn.commit().await?;
        assert_eq!(named(&later[1]).0, "lee.gu", "renamed");
        assert_eq!(named(&later[1]).1, "as the event said", "never announced: kept");
        // The old creation delivered again teaches nothing: it is not a new record.
        let mut redelivered = vec![
            created("e1", "UserCreated", "lee-id", "lee"),
            Record {
                target_id: "lee-id".into(),
                ..record("e7")
            },
        ];
        let txn = db.begin().await?;
        store::append_all(&txn, &mut redelivered, NOW).await?;
        txn.commit().await?;
        assert_eq!(redelivered.len(), 1, "e1 was kept already");
        assert_eq!(named(&redelivered[0]).1, "lee.gu", "not renamed back");
        Ok(())
    })
    .await
}

/// An upgraded audit database learns the names its records already announced (the latest
/// one for each id), so records written after the upgrade name earlier principals too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_learns_the_names_already_recorded() -> anyhow::Result<()> {
    // Every migration before m0003_names.
    const BEFORE_NAMES: u32 = 5;
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", Some(BEFORE_NAMES), |db| async move {
        let announced = |event_id: &str, action: &str, id: &str, name: &str| Record {
            action: format!("pim.identity.v1.{action}"),
            target_id: id.into(),
            target_name: name.into(),
            ..record(event_id)
        };
        let mut earlier = vec![
            announced("e1", "UserCreated", "lee-id", "lee"),
            announced("e2", "UserUpdated", "lee-id", "lee.gu"),
            announced("e3", "GroupCreated", "ops-id", "ops"),
            announced("e4", "SignInFailed", "eve-id", "claimed name"),
        ];
        let txn = db.begin().await?;
        store::append_unnamed(&txn, &mut earlier, NOW).await?;
        txn.commit().await?;
        <store::Migrator as sea_orm_migration::MigratorTrait>::up(&db, None).await?;
        let mut later = vec![Record {
            actor_id: "ops-id".into(),
            target_id: "lee-id".into(),
            role_id: "eve-id".into(),
            ..record("e5")
        }];
        let txn = db.begin().await?;
        store::name_all(&txn, &mut later).await?;
        txn.commit().await?;
        assert_eq!(
            (
                later[0].actor_name.as_str(),
                later[0].target_name.as_str(),
                later[0].role_name.as_str()
            ),
            ("ops", "lee.gu", ""),
            "the latest name; a failed sign-in's claim names nobody"
        );
        Ok(())
    })
    .await
}

/// Webhook deliveries are queued with the records, in record order per subscription: a
/// receiver that keeps failing holds back only its own queue, each attempt is taken by one
/// process only (a late write after the claim ran out changes nothing), and after 24 hours of
/// failures the delivery is given up with an event for alerting, with what waited behind it,
/// and the subscription is suspended (nothing more is queued for it) until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_keep_order_per_subscription_and_are_dead_lettered_after_a_day() -> anyhow::Result<()> {
    use crate::webhooks::store as hooks;
    use crate::webhooks::{Dispatcher, GIVE_UP_AFTER_MS, Keys, Subscription};
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        // Nothing listens on port 9 of the loopback: every attempt fails at once.
        for (id, types) in [("s1", vec![]), ("s2", vec!["RoleActivated".to_owned()])] {
            hooks::insert_subscription(
                &db,
                &Subscription {
                    id: id.into(),
                    url: "http://127.0.0.1:9/hook".into(),
                    event_types: types,
                    generation: 1,
                    ..Subscription::default()
                },
            )
            .await?;
        }
        let mut records: Vec<Record> = ["e1", "e2", "e3"]
            .iter()
            .map(|id| Record {
                action: "pim.assignment.v1.RoleActivated".into(),
                ..record(id)
            })
            .collect();
        records.push(Record {
            action: "pim.identity.v1.UserCreated".into(),
            ..record("e4")
        });
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut records).await?;
        txn.commit().await?;
        assert_eq!(hooks::deliveries(&db, "s1", 10).await?.len(), 4, "s1 wants every event");
        assert_eq!(
            hooks::deliveries(&db, "s2", 10).await?.len(),
            3,
            "s2 only RoleActivated"
        );
        let queued = hooks::deliveries(&db, "s1", 10).await?;
        let created = queued[0].created_at;
        let heads = |now: i64| {
            let db = db.clone();
            async move {
                let mut due: Vec<(String, String)> = hooks::due(&db, now, 10)
                    .await?
                    .into_iter()
                    .map(|d| (d.subscription_id, d.event_id))
                    .collect();
                due.sort();
                anyhow::Ok(due)
            }
        };
        let first = vec![("s1".to_owned(), "e1".to_owned()), ("s2".to_owned(), "e1".to_owned())];
        assert_eq!(heads(created).await?, first, "one at a time per subscription, in order");

        let head = hooks::due(&db, created, 10)
            .await?
            .into_iter()
            .find(|d| d.subscription_id == "s1")
            .expect("s1's head");
        assert!(hooks::claim(&db, &head, created, created + 1).await?, "taken once");
        assert!(!hooks::claim(&db, &head, created, created + 2).await?, "not twice");
        let late = hooks::attempted(&db, &head.id, created + 2, hooks::DELIVERED, 200, "", 0, created).await?;
        assert!(
            !late,
            "a write under a claim that is not the current one changes nothing"
        );

        let dispatcher = Dispatcher {
            db: db.clone(),
            outbox: pim_runtime::events::Outbox::default(),
            keys: Some(Keys::new("suite key")),
            wake: Default::default(),
            ssf: None,
        };
        let later = created + 120_000;
        assert_eq!(dispatcher.round(later).await?, 2);
        let failed = hooks::delivery(&db, &head.id).await?.expect("still there");
        assert_eq!((failed.status.as_str(), failed.attempts), (hooks::PENDING, 1));
        assert!(failed.last_error.contains("connecting"), "{}", failed.last_error);
        assert!(failed.next_attempt_at > later);
        assert_eq!(
            heads(later + 60_000).await?,
            first,
            "a failing head holds back its own queue"
        );

        // A day after its first attempt, not after its queueing: s1's head was first tried
        // at once (the claim above), s2's two minutes later.
        assert_eq!(dispatcher.round(created + GIVE_UP_AFTER_MS + 1).await?, 2);
        let dead = hooks::delivery(&db, &head.id).await?.expect("still there");
        assert_eq!(
            (dead.status.as_str(), dead.attempts, dead.first_attempt_at),
            (hooks::DEAD, 2, Some(created))
        );
        let s2 = hooks::due(&db, later + GIVE_UP_AFTER_MS, 10).await?;
        assert_eq!(
            s2.iter()
                .map(|d| (d.subscription_id.as_str(), d.first_attempt_at))
                .collect::<Vec<_>>(),
            vec![("s2", Some(later))],
            "s2's head still has time"
        );
        let past_a_day = later + GIVE_UP_AFTER_MS + 1;
        assert_eq!(dispatcher.round(past_a_day).await?, 1);
        let lettered = pim_runtime::db::query(
            &db,
            "SELECT id FROM outbox WHERE event_type = 'pim.audit.v1.WebhookDeadLettered'",
            vec![],
        )
        .await?;
        assert_eq!(lettered.len(), 2, "one event per subscription given up");
        assert!(
            hooks::deliveries(&db, "s1", 10)
                .await?
                .iter()
                .all(|d| d.status == hooks::DEAD),
            "what waited behind it was given up with it"
        );
        assert!(heads(past_a_day).await?.is_empty());
        // A delivery an ingest queued just before the suspension (it read the subscription
        // as active) is given up without being sent, and raises nothing more.
        hooks::insert_delivery(
            &db,
            &hooks::Delivery {
                id: "stray".into(),
                subscription_id: "s1".into(),
                position: 99,
                event_id: "e99".into(),
                status: hooks::PENDING.into(),
                created_at: past_a_day,
                next_attempt_at: past_a_day,
                ..hooks::Delivery::default()
            },
        )
        .await?;
        assert_eq!(dispatcher.round(past_a_day).await?, 0, "nothing sent");
        let stray = hooks::delivery(&db, "stray").await?.expect("kept");
        assert_eq!((stray.status.as_str(), stray.last_status_code), (hooks::DEAD, 0));
        let lettered_after = pim_runtime::db::query(
            &db,
            "SELECT id FROM outbox WHERE event_type = 'pim.audit.v1.WebhookDeadLettered'",
            vec![],
        )
        .await?;
        assert_eq!(lettered_after.len(), 2, "no second alert for a suspended subscription");
        assert!(
            hooks::subscription(&db, "s1")
                .await?
                .expect("kept")
                .suspended_at
                .is_some()
        );
        // Suspended: nothing more is queued for it (nor alerts about itself); resumed, it is.
        let mut more = vec![Record {
            action: "pim.assignment.v1.RoleActivated".into(),
            ..record("e5")
        }];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut more).await?;
        txn.commit().await?;
        assert_eq!(
            hooks::deliveries(&db, "s1", 10).await?.len(),
            5,
            "nothing queued while suspended (4 and the stray)"
        );
        assert!(hooks::resume(&db, "s1").await?);
        let mut again = vec![Record {
            action: "pim.assignment.v1.RoleActivated".into(),
            ..record("e6")
        }];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut again).await?;
        txn.commit().await?;
        assert_eq!(heads(past_a_day).await?, vec![("s1".to_owned(), "e6".to_owned())]);
        assert_eq!(
            hooks::forget_settled(&db, created).await?,
            0,
            "nothing settled that early"
        );
        assert_eq!(
            hooks::forget_settled(&db, past_a_day + 60_000).await?,
            8,
            "history forgotten once settled: 4 of s1 and the stray, 3 of s2"
        );
        Ok(())
    })
    .await
}

/// A receiver that answers 2xx gets each of its deliveries once, in order, each marked
/// delivered with the receiver's answer; a rotation moves the subscription to its next secret
/// generation, the previous one signing until the time given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_webhooks_are_marked_once_and_secrets_rotate() -> anyhow::Result<()> {
    use crate::webhooks::store as hooks;
    use crate::webhooks::{Dispatcher, Keys, Subscription};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        // A receiver that takes everything: 204 to each request, the bodies kept in order.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (bodies, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
        let receiver = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    loop {
                        let n = socket.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buffer[..n]);
                        let text = String::from_utf8_lossy(&request).into_owned();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let length: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if body.len() >= length {
                                let _ = bodies.send(body.to_owned());
                                let _ = socket
                                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                                    .await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        hooks::insert_subscription(
            &db,
            &Subscription {
                id: "s1".into(),
                url: format!("http://127.0.0.1:{port}/hook"),
                generation: 1,
                ..Subscription::default()
            },
        )
        .await?;
        let mut records: Vec<Record> = ["e1", "e2"].iter().map(|id| record(id)).collect();
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut records).await?;
        txn.commit().await?;
        let dispatcher = Dispatcher {
            db: db.clone(),
            outbox: pim_runtime::events::Outbox::default(),
            keys: Some(Keys::new("suite key")),
            wake: Default::default(),
            ssf: None,
        };
        let now = pim_runtime::db::now_ms();
        let delivered = || {
            pim_runtime::metrics::metrics()
                .webhook_attempts
                .with_label_values(&["delivered"])
                .get()
        };
        let before = delivered();
        assert_eq!(dispatcher.round(now).await?, 1, "one at a time");
        assert_eq!(dispatcher.round(now).await?, 1);
        assert_eq!(dispatcher.round(now).await?, 0, "nothing left");
        assert!(delivered() >= before + 2, "counted");
        let first: serde_json::Value = serde_json::from_str(&received.recv().await.expect("a body"))?;
        let second: serde_json::Value = serde_json::from_str(&received.recv().await.expect("a body"))?;
        assert_eq!((first["id"].as_str(), second["id"].as_str()), (Some("e1"), Some("e2")));
        for d in hooks::deliveries(&db, "s1", 10).await? {
            assert_eq!(
                (d.status.as_str(), d.attempts, d.last_status_code),
                (hooks::DELIVERED, 1, 204)
            );
            assert!(d.delivered_at.is_some());
        }
        assert_eq!(hooks::rotate(&db, "s1", now + 1_000).await?, Some(2));
        let rotated = hooks::subscription(&db, "s1").await?.expect("kept");
        assert_eq!((rotated.generation, rotated.previous_until), (2, now + 1_000));
        assert_eq!(hooks::rotate(&db, "nobody", now).await?, None);
        assert!(hooks::delete_subscription(&db, "s1").await?);
        assert!(hooks::deliveries(&db, "s1", 10).await?.is_empty());
        receiver.abort();
        Ok(())
    })
    .await
}

/// A Shared Signals stream queues only what CAEP speaks of (access given, access ended), as
/// claims naming the subject its way, in record order. A polled stream is never pushed and
/// keeps its events until its receiver acknowledges (or refuses) them, and only its own; a
/// paused stream holds what comes, a disabled one drops what it held and queues no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssf_streams_queue_caep_events_and_polled_ones_wait_for_acknowledgement() -> anyhow::Result<()> {
    use crate::ssf::{self, Method, Stream, StreamStatus, SubjectFormat};
    use crate::webhooks::Subscription;
    use crate::webhooks::store as hooks;
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        let stream = |id: &str, method: Method, subjects: SubjectFormat, events: &[&str]| Subscription {
            id: id.into(),
            url: if method == Method::Push {
                "http://127.0.0.1:9/caep".into()
            } else {
                String::new()
            },
            event_types: events.iter().map(|e| (*e).to_owned()).collect(),
            generation: 1,
            stream: Some(Stream {
                audience: "app".into(),
                method,
                status: StreamStatus::Enabled,
                subjects,
            }),
            ..Subscription::default()
        };
        hooks::insert_subscription(
            &db,
            &stream("push", Method::Push, SubjectFormat::Opaque, &[ssf::SESSION_REVOKED]),
        )
        .await?;
        hooks::insert_subscription(
            &db,
            &stream("poll", Method::Poll, SubjectFormat::IssSub, ssf::EVENTS_SUPPORTED),
        )
        .await?;
        assert_eq!(
            hooks::subscription(&db, "poll")
                .await?
                .and_then(|s| s.stream.map(|t| t.subjects)),
            Some(SubjectFormat::IssSub)
        );
        let about = |id: &str, action: &str| Record {
            action: format!("pim.assignment.v1.{action}"),
            payload_json: r#"{"reason":"expired"}"#.into(),
            ..record(id)
        };
        keep(
            &db,
            vec![
                about("e1", "RoleActivated"),
                about("e2", "RoleDeactivated"),
                about("e3", "UserCreated"),
            ],
        )
        .await?;
        let pushed = hooks::deliveries(&db, "push", 10).await?;
        assert_eq!(
            pushed.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(),
            ["e2"],
            "only what it asked for"
        );
        let claims: serde_json::Value = serde_json::from_str(&pushed[0].body)?;
        assert_eq!(claims["sub_id"], serde_json::json!({"format": "opaque", "id": "lee"}));
        assert_eq!(claims["txn"], "e2");
        let polled = hooks::polled(&db, "poll", 10).await?;
        assert_eq!(
            polled.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(),
            ["e1", "e2"],
            "in record order"
        );
        let claims: serde_json::Value = serde_json::from_str(&polled[1].body)?;
        assert_eq!(claims["sub_id"]["format"], "iss_sub");
        assert!(claims["events"][ssf::SESSION_REVOKED].is_object());

        let due = hooks::due(&db, pushed[0].next_attempt_at, 10).await?;
        assert_eq!(
            due.iter().map(|d| d.subscription_id.as_str()).collect::<Vec<_>>(),
            ["push"],
            "a polled stream is never pushed"
        );
        assert!(hooks::set_stream_status(&db, "push", StreamStatus::Paused, NOW).await?);
        assert!(
            hooks::due(&db, pushed[0].next_attempt_at, 10).await?.is_empty(),
            "a paused stream is not pushed"
        );

        assert_eq!(
            hooks::settle_polled(&db, "push", &polled[0].id, None, NOW).await?,
            0,
            "only its own stream's"
        );
        assert_eq!(hooks::settle_polled(&db, "poll", &polled[0].id, None, NOW).await?, 1);
        assert_eq!(
            hooks::settle_polled(&db, "poll", &polled[1].id, Some("refused"), NOW).await?,
            1
        );
        assert_eq!(
            hooks::settle_polled(&db, "poll", &polled[1].id, None, NOW).await?,
            0,
            "settled once"
        );
        assert!(hooks::polled(&db, "poll", 10).await?.is_empty());
        let settled: Vec<_> = hooks::deliveries(&db, "poll", 10)
            .await?
            .into_iter()
            .map(|d| (d.event_id, d.status))
            .collect();
        assert_eq!(
            settled,
            [
                ("e2".to_owned(), hooks::DEAD.to_owned()),
                ("e1".to_owned(), hooks::DELIVERED.to_owned())
            ]
        );

        assert!(hooks::set_stream_status(&db, "poll", StreamStatus::Disabled, NOW).await?);
        keep(&db, vec![about("e4", "RoleDeactivated")]).await?;
        assert_eq!(
            hooks::pending_count(&db, "poll").await?,
            0,
            "a disabled stream queues nothing"
        );
        assert_eq!(
            hooks::pending_count(&db, "push").await?,
            2,
            "a paused one holds what comes"
        );
        assert!(hooks::set_stream_status(&db, "push", StreamStatus::Disabled, NOW).await?);
        assert_eq!(
            hooks::pending_count(&db, "push").await?,
            0,
            "disabling drops what it held"
        );

        hooks::insert_subscription(
            &db,
            &Subscription {
                id: "hook".into(),
                url: "http://127.0.0.1:9/".into(),
                generation: 1,
                ..Subscription::default()
            },
        )
        .await?;
        assert!(
            !hooks::update_stream(&db, "hook", &[], "").await?,
            "a webhook is not a stream"
        );
        assert!(!hooks::set_stream_status(&db, "hook", StreamStatus::Paused, NOW).await?);
        assert!(hooks::update_stream(&db, "poll", &[ssf::SESSION_REVOKED.to_owned()], "changed").await?);
        let changed = hooks::subscription(&db, "poll").await?.expect("kept");
        assert_eq!(
            (changed.event_types.len(), changed.description.as_str()),
            (1, "changed")
        );

        // A receiver an administrator cut off is sent nothing more: its streams are disabled,
        // each with a record saying so.
        assert!(hooks::set_stream_status(&db, "poll", StreamStatus::Enabled, NOW).await?);
        keep(
            &db,
            vec![Record {
                action: "pim.identity.v1.SessionRevoked".into(),
                target_id: "app".into(),
                payload_json: r#"{"session_id":"","reason":"signed_out"}"#.into(),
                ..record("e5")
            }],
        )
        .await?;
        let status = |id: &'static str| {
            let db = db.clone();
            async move {
                anyhow::Ok(
                    hooks::subscription(&db, id)
                        .await?
                        .and_then(|s| s.stream)
                        .map(|t| t.status),
                )
            }
        };
        assert_eq!(
            status("poll").await?,
            Some(StreamStatus::Enabled),
            "signing out is not being cut off"
        );
        keep(
            &db,
            vec![Record {
                action: "pim.identity.v1.SessionRevoked".into(),
                target_id: "app".into(),
                payload_json: r#"{"session_id":"","reason":"service_principal_disabled"}"#.into(),
                ..record("e6")
            }],
        )
        .await?;
        assert_eq!(status("poll").await?, Some(StreamStatus::Disabled));
        let recorded = store::query(
            &db,
            &Filter {
                target_id: "poll".into(),
                ..Filter::default()
            },
            10,
        )
        .await?;
        assert_eq!(
            recorded
                .iter()
                .map(|r| (r.action.as_str(), r.actor_id.as_str()))
                .collect::<Vec<_>>(),
            [("pim.audit.v1.SsfStreamStatusChanged", "system")]
        );
        assert!(
            recorded[0].justification.contains("SessionRevoked"),
            "{}",
            recorded[0].justification
        );
        Ok(())
    })
    .await
}

/// Notification mail: audit learns where users are reached from identity's records, queues one
/// mail per recipient of each notice (a principal with an address, or an address a rule
/// names; nobody twice, a redelivery adds nothing), and a mail is attempted by one process at a
/// time, its outcome written only under that claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_mail_is_queued_once_per_recipient_and_claimed_once() -> anyhow::Result<()> {
    use crate::mail::{self, store as mails};
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        let user = |id: &str, action: &str, email: &str| Record {
            action: format!("pim.identity.v1.{action}"),
            target_id: format!("{id}-id"),
            target_name: id.into(),
            payload_json: serde_json::json!({"user_name": id, "email": email}).to_string(),
            ..record(&format!("{id}-{action}"))
        };
        let due = Record {
            action: "pim.assignment.v1.NotificationsDue".into(),
            target_id: "lee-id".into(),
            role_name: "Exchange Administrator".into(),
            payload_json: serde_json::json!({
                "event": "activation", "happening": "awaiting_approval", "request_id": "r1",
                "notices": [{"party": "approver", "principal_ids": ["ann-id", "bob-id", "group-id"],
                             "emails": ["soc@example.com", "ann@example.com"], "critical": true}],
            })
            .to_string(),
            ..record("due-1")
        };
        let mut records = vec![
            user("ann", "UserCreated", "ann@example.com"),
            user("bob", "UserCreated", "bob@old.example.com"),
            user("bob", "UserUpdated", "bob@example.com"),
            user("cy", "UserCreated", "cy@example.com"),
            user("cy", "UserDeleted", ""),
        ];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut records).await?;
        txn.commit().await?;
        let ids = ["ann-id", "bob-id", "cy-id", "group-id"].map(String::from);
        assert_eq!(
            mails::addresses(&db, &ids, "").await?,
            ["ann@example.com", "bob@example.com"],
            "the latest address of each user; none for the deleted one or a group"
        );
        let mut joined = vec![
            Record {
                action: "pim.identity.v1.GroupMemberAdded".into(),
                target_id: "dee-id".into(),
                payload_json: r#"{"group_id":"group-id"}"#.into(),
                ..record("dee-joined")
            },
            user("dee", "UserCreated", "dee@example.com"),
        ];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut joined).await?;
        txn.commit().await?;
        assert_eq!(
            mails::addresses(&db, &["group-id".to_owned()], "").await?,
            ["dee@example.com"],
            "a group is reached through its members"
        );
        assert!(
            mails::addresses(&db, &["group-id".to_owned()], "dee-id")
                .await?
                .is_empty(),
            "never the one excepted"
        );
        let mut disabled = vec![Record {
            action: "pim.identity.v1.UserDisabled".into(),
            target_id: "bob-id".into(),
            ..record("bob-disabled")
        }];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut disabled).await?;
        txn.commit().await?;
        assert_eq!(
            mails::addresses(&db, &ids, "").await?,
            ["ann@example.com", "dee@example.com"],
            "a disabled user gets no mail"
        );
        let mut enabled = vec![Record {
            action: "pim.identity.v1.UserEnabled".into(),
            target_id: "bob-id".into(),
            ..record("bob-enabled")
        }];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut enabled).await?;
        txn.commit().await?;
        assert_eq!(
            mails::addresses(&db, &ids, "").await?,
            ["ann@example.com", "bob@example.com", "dee@example.com"]
        );
        for _ in 0..2 {
            let mut kept = vec![due.clone()];
            let txn = db.begin().await?;
            crate::ingest::keep(&txn, &mut kept).await?;
            mail::enqueue(&txn, std::slice::from_ref(&due), NOW, Some("https://pim.example.com")).await?;
            txn.commit().await?;
        }
        let queued = mails::of_event(&db, "due-1").await?;
        assert_eq!(
            queued.iter().map(|m| m.recipient.as_str()).collect::<Vec<_>>(),
            [
                "ann@example.com",
                "bob@example.com",
                "dee@example.com",
                "soc@example.com"
            ],
            "each recipient once, however often the event came; the group's member too"
        );
        assert!(queued[0].subject.contains("approval needed") && queued[0].text_body.contains("/approvals/r1"));

        let first = mails::due(&db, NOW, 10).await?.remove(0);
        assert!(mails::claim(&db, &first, NOW, NOW + 60_000).await?, "taken once");
        assert!(!mails::claim(&db, &first, NOW, NOW + 60_001).await?, "not twice");
        assert!(
            !mails::attempted(&db, &first.id, NOW + 1, "sent", "", NOW, NOW).await?,
            "not under another claim"
        );
        assert!(mails::attempted(&db, &first.id, NOW + 60_000, "sent", "", NOW, NOW).await?);
        assert_eq!(mails::due(&db, NOW, 10).await?.len(), 3, "the others wait their turn");
        assert_eq!(
            mails::forget_settled(&db, NOW + 1).await?,
            1,
            "sent mail is history, then forgotten"
        );
        Ok(())
    })
    .await
}

/// A subscription's deliveries are claimed in runs that start at its head and keep record
/// order: nothing while the head waits for a retry, nothing twice, the taken ones recorded in
/// one statement under the claim, and what was not attempted given back untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_runs_start_at_the_head_and_keep_record_order() -> anyhow::Result<()> {
    use crate::webhooks::Subscription;
    use crate::webhooks::store as hooks;
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        hooks::insert_subscription(
            &db,
            &Subscription {
                id: "s1".into(),
                url: "http://127.0.0.1:9/hook".into(),
                generation: 1,
                ..Subscription::default()
            },
        )
        .await?;
        let mut records: Vec<Record> = ["e1", "e2", "e3", "e4"].iter().map(|id| record(id)).collect();
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut records).await?;
        txn.commit().await?;
        let created = hooks::deliveries(&db, "s1", 10).await?[0].created_at;
        let events = |run: &[hooks::Delivery]| run.iter().map(|d| d.event_id.clone()).collect::<Vec<_>>();

        let lease = created + 60_000;
        let run = hooks::claim_run(&db, "s1", created, lease, 3).await?;
        assert_eq!(
            events(&run),
            ["e1", "e2", "e3"],
            "from the head, in order, at most the limit"
        );
        assert!(
            hooks::claim_run(&db, "s1", created, lease + 1, 3).await?.is_empty(),
            "a claimed head is another attempt's"
        );
        assert_eq!(
            hooks::delivered_run(&db, &run[..1], 204, lease + 1, created).await?,
            0,
            "not under another claim"
        );
        assert_eq!(hooks::delivered_run(&db, &run[..1], 204, lease, created).await?, 1);
        assert_eq!(hooks::release(&db, &run[1..], lease, created).await?, 2);
        let released = hooks::deliveries(&db, "s1", 10).await?;
        let e2 = released.iter().find(|d| d.event_id == "e2").expect("e2");
        assert_eq!(
            (e2.status.as_str(), e2.first_attempt_at),
            (hooks::PENDING, None),
            "given back untouched"
        );

        // A head waiting for its retry holds back the run behind it.
        let head = hooks::claim_run(&db, "s1", created, lease, 1).await?.remove(0);
        assert_eq!(head.event_id, "e2");
        assert!(
            hooks::attempted(
                &db,
                &head.id,
                lease,
                hooks::PENDING,
                500,
                "HTTP 500",
                created + 5_000,
                created
            )
            .await?
        );
        assert!(
            hooks::claim_run(&db, "s1", created + 1_000, lease, 10)
                .await?
                .is_empty(),
            "e3 waits behind e2"
        );
        assert_eq!(
            events(&hooks::claim_run(&db, "s1", created + 5_000, lease, 10).await?),
            ["e2", "e3", "e4"]
        );
        Ok(())
    })
    .await
}

/// A stream that names subjects by email names each with the address it had at that record
/// (a deleted user's by the one it had), and a principal without one as `iss_sub`, so its
/// signal still goes; a group's role ending is told to each of its members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_stream_names_each_subject_by_the_address_it_had_then() -> anyhow::Result<()> {
    use crate::ssf::{self, SubjectFormat};
    use crate::webhooks::store as hooks;
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        hooks::insert_subscription(&db, &polled_stream("by-email", SubjectFormat::Email)).await?;
        let event = |id: &str, action: &str, target: &str, payload: &str| Record {
            action: action.into(),
            target_id: target.into(),
            payload_json: payload.into(),
            ..record(id)
        };
        keep(
            &db,
            vec![
                event(
                    "e1",
                    "pim.identity.v1.UserCreated",
                    "ann",
                    r#"{"email":"ann@example.com"}"#,
                ),
                event(
                    "e2",
                    "pim.identity.v1.UserCreated",
                    "kim",
                    r#"{"email":"kim@example.com"}"#,
                ),
                // A user created before events carried addresses, announced once on upgrade.
                event(
                    "e2b",
                    "pim.identity.v1.UserAddressAnnounced",
                    "joe",
                    r#"{"email":"joe@example.com"}"#,
                ),
            ],
        )
        .await?;
        keep(
            &db,
            vec![
                event("e3", "pim.assignment.v1.RoleActivated", "ann", "{}"),
                event("e4", "pim.assignment.v1.RoleActivated", "svc", "{}"),
                event("e5", "pim.identity.v1.UserDeleted", "ann", "{}"),
                event("e6", "pim.assignment.v1.RoleActivated", "ann", "{}"),
                event("e7", "pim.identity.v1.GroupMemberAdded", "kim", r#"{"group_id":"ops"}"#),
                event(
                    "e8",
                    "pim.assignment.v1.RoleDeactivated",
                    "ops",
                    r#"{"reason":"expired"}"#,
                ),
                event("e9", "pim.assignment.v1.RoleActivated", "joe", "{}"),
            ],
        )
        .await?;
        let polled = hooks::polled(&db, "by-email", 10).await?;
        let subjects: Vec<(String, serde_json::Value)> = polled
            .iter()
            .map(|d| {
                let claims: serde_json::Value = serde_json::from_str(&d.body).expect("claims");
                (d.event_id.clone(), claims["sub_id"].clone())
            })
            .collect();
        let email = |who: &str| serde_json::json!({"format": "email", "email": format!("{who}@example.com")});
        let iss_sub =
            |sub: &str| serde_json::json!({"format": "iss_sub", "iss": pim_runtime::auth::ISSUER, "sub": sub});
        assert_eq!(
            subjects,
            vec![
                ("e3".to_owned(), email("ann")),
                ("e4".to_owned(), iss_sub("svc")),
                ("e5".to_owned(), email("ann")),
                ("e6".to_owned(), iss_sub("ann")),
                ("e8/kim".to_owned(), email("kim")),
                ("e9".to_owned(), email("joe")),
            ]
        );
        let kims: serde_json::Value = serde_json::from_str(&polled[4].body)?;
        let why = kims["events"][ssf::SESSION_REVOKED]["reason_admin"]["en"]
            .as_str()
            .unwrap_or_default();
        assert!(why.ends_with("(held through group ops)"), "{why}");
        Ok(())
    })
    .await
}

/// A subject a receiver removed from its stream is queued there no more, once, until added
/// back; other streams still get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_subject_is_not_queued_on_that_stream_until_added_back() -> anyhow::Result<()> {
    use crate::ssf::SubjectFormat;
    use crate::webhooks::store as hooks;
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        for id in ["narrow", "wide"] {
            hooks::insert_subscription(&db, &polled_stream(id, SubjectFormat::Opaque)).await?;
        }
        let activated = |id: &str| Record {
            action: "pim.assignment.v1.RoleActivated".into(),
            ..record(id)
        };
        assert!(hooks::exclude_subject(&db, "narrow", "lee", true, NOW).await?);
        assert!(!hooks::exclude_subject(&db, "narrow", "lee", true, NOW).await?, "once");
        keep(&db, vec![activated("e1")]).await?;
        assert!(hooks::exclude_subject(&db, "narrow", "lee", false, NOW).await?);
        keep(&db, vec![activated("e2")]).await?;
        let queued = |id: &'static str| {
            let db = db.clone();
            async move {
                anyhow::Ok(
                    hooks::polled(&db, id, 10)
                        .await?
                        .into_iter()
                        .map(|d| d.event_id)
                        .collect::<Vec<_>>(),
                )
            }
        };
        assert_eq!(queued("narrow").await?, ["e2"], "removed for e1, added back for e2");
        assert_eq!(queued("wide").await?, ["e1", "e2"]);
        Ok(())
    })
    .await
}

/// A receiver's stream limit is one statement's to hold: of twelve creations at once, ten
/// count; deleting a stream frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_holds_ten_streams_at_most_even_when_created_at_once() -> anyhow::Result<()> {
    use crate::webhooks::store as hooks;
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        let racing = (0..12).map(|_| hooks::count_stream(&db, "app", 10));
        let counted = futures::future::try_join_all(racing).await?;
        assert_eq!(counted.iter().filter(|c| **c).count(), 10, "{counted:?}");
        assert!(!hooks::count_stream(&db, "app", 10).await?);
        assert!(hooks::count_stream(&db, "other-app", 10).await?, "per receiver");
        let mut stream = polled_stream("s1", crate::ssf::SubjectFormat::Opaque);
        if let Some(t) = stream.stream.as_mut() {
            t.audience = "app".into();
        }
        hooks::insert_subscription(&db, &stream).await?;
        assert!(hooks::delete_subscription(&db, "s1").await?);
        assert!(hooks::count_stream(&db, "app", 10).await?, "a deleted stream's place");
        Ok(())
    })
    .await
}
