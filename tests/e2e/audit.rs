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
        let head = eventually(Duration::from_secs(10), "seven audit records", || {
            let (mut audit, admin) = (audit.clone(), admin.clone());
            async move {
                let head = audit
                    .get_chain_head(authed(&admin, aupb::GetChainHeadRequest {}))
                    .await?
                    .into_inner();
                Ok((head.sequence >= 7).then_some(head))
            }
        })
        .await?;
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
        let failed = DirectoryServiceClient::new(ts.channel.clone())
            .create_user(authed(
                &admin,
                ipb::CreateUserRequest {
                    user_name: "lee".into(),
                    password: "lee's long passphrase".into(),
                    ..Default::default()
                },
            ))
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
        DirectoryServiceClient::new(ts.channel.clone())
            .create_user(authed(
                &admin,
                ipb::CreateUserRequest {
                    user_name: "lee".into(),
                    password: "lee's long passphrase".into(),
                    ..Default::default()
                },
            ))
            .await?;
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
        let head = eventually(Duration::from_secs(10), "audit records", || {
            let (mut audit, admin) = (audit.clone(), admin.clone());
            async move {
                let head = audit
                    .get_chain_head(authed(&admin, aupb::GetChainHeadRequest {}))
                    .await?
                    .into_inner();
                Ok((head.sequence >= 4).then_some(head))
            }
        })
        .await?;
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
        let envelope = pim_runtime::events::Envelope::decode(checkpoint.as_slice())?;
        let event = pim_proto::events::v1::ChainCheckpoint::decode(envelope.data.as_slice())?;
        assert_eq!(event.sequence, last);
        assert_eq!(event.hash.len(), 32);
        // Nothing new to anchor (unless a record arrived meanwhile): no second checkpoint.
        let moved = audit
            .get_chain_head(authed(&admin, aupb::GetChainHeadRequest {}))
            .await?
            .into_inner()
            .sequence
            != last;
        assert_eq!(service.checkpoint(&mut last).await?, moved);
        let _: () = redis.del(&key).await?;
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}
