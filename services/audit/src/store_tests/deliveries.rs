//! Webhook deliveries and notification mail, queued with the records, on both databases.

use super::*;

/// Webhook deliveries are queued with the records, in record order per subscription: a
/// receiver that keeps failing holds back only its own queue, each attempt is taken by one
/// process only (a late write after the claim ran out changes nothing), and after 24 hours of
/// failures the delivery is given up with an event for alerting, with what waited behind it,
/// and the subscription is suspended (nothing more is queued for it) until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_keep_order_per_subscription_and_are_dead_lettered_after_a_day() -> anyhow::Result<()> {
    use crate::queue::GIVE_UP_AFTER_MS;
    use crate::webhooks::store as hooks;
    use crate::webhooks::{Dispatcher, Keys, Subscription};
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

/// The owners of a group, as identity's records say them, are mailed a notice that names the
/// group in `owners_of` (the default approvers of access to it), never the requester among
/// them; an owner removed, or the group deleted, is mailed no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_owners_are_mailed_a_notice_for_its_approvers() -> anyhow::Result<()> {
    use crate::mail::{self, store as mails};
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        let user = |id: &str| Record {
            action: "pim.identity.v1.UserCreated".into(),
            target_id: format!("{id}-id"),
            target_name: id.into(),
            payload_json: serde_json::json!({"user_name": id, "email": format!("{id}@example.com")}).to_string(),
            ..record(&format!("{id}-created"))
        };
        let owner = |id: &str, action: &str| Record {
            action: format!("pim.identity.v1.{action}"),
            target_id: format!("{id}-id"),
            payload_json: r#"{"group_id":"g1"}"#.into(),
            ..record(&format!("{id}-{action}"))
        };
        let mut records = vec![
            user("olga"),
            user("sam"),
            user("ann"),
            owner("olga", "GroupOwnerAdded"),
            owner("sam", "GroupOwnerAdded"),
        ];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut records).await?;
        txn.commit().await?;
        let due = |id: &str| Record {
            action: "pim.assignment.v1.NotificationsDue".into(),
            target_id: "sam-id".into(),
            role_name: "Group Member".into(),
            payload_json: serde_json::json!({
                "event": "activation", "happening": "awaiting_approval", "request_id": id,
                "notices": [{"party": "approver", "principal_ids": ["ann-id"], "emails": [],
                             "critical": true, "owners_of": ["g1"]}],
            })
            .to_string(),
            ..record(id)
        };
        let recipients = |id: &'static str| {
            let db = db.clone();
            async move {
                let due = due(id);
                let txn = db.begin().await?;
                crate::ingest::keep(&txn, &mut vec![due.clone()]).await?;
                mail::enqueue(&txn, std::slice::from_ref(&due), NOW, None).await?;
                txn.commit().await?;
                let queued = mails::of_event(&db, id).await?;
                anyhow::Ok(queued.into_iter().map(|m| m.recipient).collect::<Vec<_>>())
            }
        };
        assert_eq!(
            recipients("asked-1").await?,
            ["ann@example.com", "olga@example.com"],
            "the owners, never sam, who asked"
        );
        let mut removed = vec![owner("olga", "GroupOwnerRemoved")];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut removed).await?;
        txn.commit().await?;
        assert_eq!(recipients("asked-2").await?, ["ann@example.com"]);
        assert!(mails::owners_of(&db, &["g1"]).await? == ["sam-id"]);
        let mut deleted = vec![Record {
            action: "pim.identity.v1.GroupDeleted".into(),
            target_id: "g1".into(),
            ..record("g1-deleted")
        }];
        let txn = db.begin().await?;
        crate::ingest::keep(&txn, &mut deleted).await?;
        txn.commit().await?;
        assert!(
            mails::owners_of(&db, &["g1"]).await?.is_empty(),
            "a deleted group has no owners"
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
