//! Shared Signals streams, on both databases.

use super::*;

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
                authorization: None,
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

/// A receiver that may have lost pim.ssf.receive some other way than its receiver role (a
/// custom role ended, a group left, its group's role ended, the permission taken from a role)
/// has its push streams paused, each with a record by PIM naming why: they hold their events
/// until it enables them at /ssf/status with its own token. Its polled streams (each poll
/// checks the permission) and other receivers' streams go on; a change that cannot take the
/// permission pauses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_may_have_lost_the_permission_has_its_push_streams_paused() -> anyhow::Result<()> {
    use crate::ssf::{Method, Stream, StreamStatus, SubjectFormat};
    use crate::webhooks::Subscription;
    use crate::webhooks::store as hooks;
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("audit", None, |db| async move {
        let stream = |id: &str, audience: &str, method: Method| Subscription {
            id: id.into(),
            url: "http://127.0.0.1:9/caep".into(),
            event_types: crate::ssf::EVENTS_SUPPORTED.iter().map(|e| (*e).to_owned()).collect(),
            generation: 1,
            stream: Some(Stream {
                audience: audience.into(),
                method,
                status: StreamStatus::Enabled,
                subjects: SubjectFormat::Opaque,
                authorization: None,
            }),
            ..Subscription::default()
        };
        hooks::insert_subscription(&db, &stream("app-push", "app", Method::Push)).await?;
        hooks::insert_subscription(&db, &stream("app-poll", "app", Method::Poll)).await?;
        hooks::insert_subscription(&db, &stream("other-push", "other", Method::Push)).await?;
        let status = |id: &'static str| {
            let db = db.clone();
            async move {
                Ok::<_, anyhow::Error>(
                    hooks::subscription(&db, id)
                        .await?
                        .and_then(|s| s.stream)
                        .map(|t| t.status),
                )
            }
        };
        let enable_all = || async {
            for id in ["app-push", "app-poll", "other-push"] {
                hooks::set_stream_status(&db, id, StreamStatus::Enabled, NOW).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        let event = |id: &str, action: &str, target: &str, payload: &str| Record {
            action: action.into(),
            target_id: target.into(),
            role_id: "custom-role".into(),
            payload_json: payload.into(),
            ..record(id)
        };

        keep(
            &db,
            vec![event(
                "e1",
                "pim.assignment.v1.RoleDeactivated",
                "app",
                r#"{"reason":"expired"}"#,
            )],
        )
        .await?;
        assert_eq!(
            status("app-push").await?,
            Some(StreamStatus::Paused),
            "a custom role of its ended"
        );
        assert_eq!(
            status("app-poll").await?,
            Some(StreamStatus::Enabled),
            "a poll checks for itself"
        );
        assert_eq!(
            status("other-push").await?,
            Some(StreamStatus::Enabled),
            "another receiver's"
        );
        let recorded = store::query(
            &db,
            &Filter {
                target_id: "app-push".into(),
                ..Filter::default()
            },
            10,
        )
        .await?;
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].action, "pim.audit.v1.SsfStreamStatusChanged");
        assert!(
            recorded[0].justification.contains("/ssf/status"),
            "{}",
            recorded[0].justification
        );

        enable_all().await?;
        let joined = r#"{"group_id":"readers"}"#;
        keep(
            &db,
            vec![event("e2", "pim.identity.v1.GroupMemberAdded", "app", joined)],
        )
        .await?;
        assert_eq!(
            status("app-push").await?,
            Some(StreamStatus::Enabled),
            "joining takes nothing"
        );
        keep(
            &db,
            vec![event("e3", "pim.assignment.v1.RoleDeactivated", "readers", "{}")],
        )
        .await?;
        assert_eq!(
            status("app-push").await?,
            Some(StreamStatus::Paused),
            "its group's role ended"
        );

        enable_all().await?;
        keep(
            &db,
            vec![event("e4", "pim.identity.v1.GroupMemberRemoved", "app", joined)],
        )
        .await?;
        assert_eq!(
            status("app-push").await?,
            Some(StreamStatus::Paused),
            "it left the group"
        );

        enable_all().await?;
        let removed = |p: &str| format!(r#"{{"permissions_removed":["{p}"]}}"#);
        keep(
            &db,
            vec![event(
                "e5",
                "pim.assignment.v1.RoleDefinitionUpdated",
                "",
                &removed("pim.audit.read"),
            )],
        )
        .await?;
        assert_eq!(
            status("app-push").await?,
            Some(StreamStatus::Enabled),
            "another permission taken"
        );
        keep(
            &db,
            vec![event(
                "e6",
                "pim.assignment.v1.RoleDefinitionUpdated",
                "",
                &removed("pim.ssf.receive"),
            )],
        )
        .await?;
        assert_eq!(status("app-push").await?, Some(StreamStatus::Paused));
        assert_eq!(
            status("other-push").await?,
            Some(StreamStatus::Paused),
            "whoever held the role"
        );
        assert_eq!(status("app-poll").await?, Some(StreamStatus::Enabled));
        Ok(())
    })
    .await
}
