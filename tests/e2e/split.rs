//! The production shape: identity, assignment and audit each in their own host (as
//! `pim serve <service>` runs them), each with its own PostgreSQL database, sharing Redis.
//! Tokens are verified with keys fetched from identity, access is asked of assignment over
//! gRPC, and audit hears about both over Redis Streams.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

use pim::{ServiceName, Suite, SuiteOptions};
use pim_e2e::{authed, eventually, test_config};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::audit::v1 as aupb;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
use pim_proto::catalogue::GLOBAL_ADMINISTRATOR;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::events::streams;
use pim_runtime::testing::{TestDatabase, redis_url, unique};
use redis::AsyncCommands;

struct Host {
    suite: Suite,
    database: TestDatabase,
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_owned())?.connect().await?)
}

/// Starts each service in a host of its own (identity first, then assignment), each on its
/// own PostgreSQL database and the Redis it is given, on one stream prefix; with their
/// addresses, in the same order, and the prefix.
async fn start_hosts(services: &[(ServiceName, String)]) -> anyhow::Result<(Vec<Host>, Vec<String>, String)> {
    let prefix = format!("{}:", unique("split"));
    let mut listeners = Vec::new();
    for _ in services {
        listeners.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let urls = listeners
        .iter()
        .map(|l| Ok(format!("http://{}", l.local_addr()?)))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let mut hosts = Vec::new();
    for ((service, redis), listener) in services.iter().zip(listeners) {
        let database = TestDatabase::create(service.as_str()).await?;
        let config = test_config(&[
            ("PIM_REDIS_URL", redis.clone()),
            ("PIM_STREAM_PREFIX", prefix.clone()),
            ("PIM_IDENTITY_URL", urls[0].clone()),
            ("PIM_ASSIGNMENT_URL", urls[1].clone()),
            // No host here serves approval: identity's questions to it find nobody.
            ("PIM_APPROVAL_URL", "http://127.0.0.1:9".into()),
        ])?;
        let mut options = SuiteOptions::new(config, BTreeMap::from([(*service, database.url.clone())]));
        options.listener = Some(listener);
        options.relay_poll = Duration::from_millis(50);
        hosts.push(Host {
            suite: Suite::start(options).await?,
            database,
        });
    }
    Ok((hosts, urls, prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_in_separate_hosts_work_together() -> anyhow::Result<()> {
    let (hosts, urls, prefix) = start_hosts(&[
        (ServiceName::Identity, redis_url()),
        (ServiceName::Assignment, redis_url()),
        (ServiceName::Audit, redis_url()),
    ])
    .await?;
    let (identity_url, assignment_url, audit_url) = (urls[0].clone(), urls[1].clone(), urls[2].clone());
    let result = async {
        let (identity, assignment) = (
            hosts[0].suite.identity().expect("identity host"),
            hosts[1].suite.assignment().expect("assignment host"),
        );
        let (admin, password) = pim::bootstrap::run(identity, assignment)
            .await?
            .expect("a fresh directory bootstraps");
        assert!(
            pim::bootstrap::run(identity, assignment).await?.is_none(),
            "bootstrap happens once"
        );

        let (identity_channel, assignment_channel, audit_channel) = (
            connect(&identity_url).await?,
            connect(&assignment_url).await?,
            connect(&audit_url).await?,
        );
        let token = AuthServiceClient::new(identity_channel.clone())
            .sign_in(ipb::SignInRequest {
                user_name: admin.clone(),
                password,
            })
            .await?
            .into_inner()
            .access_token;
        // Identity asks assignment whether the admin may create users.
        let mut directory = DirectoryServiceClient::new(identity_channel.clone());
        let lee = directory
            .create_user(authed(
                &token,
                ipb::CreateUserRequest {
                    user_name: "lee".into(),
                    password: "lee's long passphrase".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        // Assignment verifies the token with keys fetched from identity, and asks identity who Lee is.
        let request = AssignmentServiceClient::new(assignment_channel.clone())
            .create_request(authed(
                &token,
                apb::CreateRequestRequest {
                    action: apb::RequestAction::AdminAssign as i32,
                    kind: apb::AssignmentKind::Eligible as i32,
                    principal_id: lee.id.clone(),
                    role_id: "Exchange Administrator".into(),
                    scope: "/".into(),
                    schedule: None,
                    justification: "on call rota".into(),
                    ticket: None,
                    validate_only: false,
                },
            ))
            .await?
            .into_inner();
        assert_eq!(request.kind, apb::AssignmentKind::Eligible as i32);
        assert!(
            request.end_time.is_none(),
            "eligible assignments may be permanent by default"
        );
        let anonymous = AssignmentServiceClient::new(assignment_channel.clone())
            .list_eligible_assignments(apb::ListAssignmentsRequest::default())
            .await
            .expect_err("no token");
        assert_eq!(anonymous.code(), Code::Unauthenticated);

        // Audit verifies tokens and access remotely too, and hears both services' events.
        let mut audit = AuditServiceClient::new(audit_channel);
        let records = eventually(Duration::from_secs(15), "audit to hear identity and assignment", || {
            let mut audit = audit.clone();
            let (token, lee) = (token.clone(), lee.id.clone());
            async move {
                let r = audit
                    .query_events(authed(
                        &token,
                        aupb::QueryEventsRequest {
                            target_id: lee,
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner()
                    .records;
                Ok((r.iter().any(|x| x.action.ends_with("UserCreated"))
                    && r.iter().any(|x| x.action.ends_with("EligibilityGranted")))
                .then_some(r))
            }
        })
        .await?;
        assert!(
            records.iter().any(|r| r.source == "pim.identity") && records.iter().any(|r| r.source == "pim.assignment")
        );

        // Redis loses identity's stream (restarted empty, say): identity's relay notices and
        // publishes again, by itself, what it keeps.
        let mut redis = redis::Client::open(redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        let identity_stream = format!("{prefix}{}", streams::IDENTITY);
        let _: () = redis.del(&identity_stream).await?;
        eventually(Duration::from_secs(15), "identity's events published again", || {
            let (mut redis, stream) = (redis.clone(), identity_stream.clone());
            async move {
                let entries: usize = redis.xlen(&stream).await?;
                Ok((entries > 0).then_some(()))
            }
        })
        .await?;
        let none = audit
            .query_events(aupb::QueryEventsRequest::default())
            .await
            .expect_err("no token");
        assert_eq!(none.code(), Code::Unauthenticated);

        // The last-Global-Administrator protection across processes: with Kim a second
        // permanent Global Administrator, disabling her counts at assignment before identity
        // answers, even while identity's events cannot reach it (a string where identity's
        // stream was, so Redis refuses them): the admin then cannot remove their own.
        let mut policies = PolicyServiceClient::new(assignment_channel.clone());
        let ask = apb::GetRolePolicyRequest {
            role_id: GLOBAL_ADMINISTRATOR.into(),
            scope: "/".into(),
        };
        let mut policy = policies.get_role_policy(authed(&token, ask)).await?.into_inner();
        policy.active_allow_permanent = true;
        let update = apb::UpdateRolePolicyRequest {
            policy: Some(policy),
            ..Default::default()
        };
        policies.update_role_policy(authed(&token, update)).await?;
        let new_user = ipb::CreateUserRequest {
            user_name: "kim".into(),
            password: "kim's long passphrase".into(),
            ..Default::default()
        };
        let kim = directory.create_user(authed(&token, new_user)).await?.into_inner();
        let admin_id = directory
            .get_user(authed(&token, ipb::GetUserRequest { user: admin }))
            .await?
            .into_inner()
            .id;
        let permanent = |action: apb::RequestAction, principal_id: &str| apb::CreateRequestRequest {
            action: action as i32,
            kind: apb::AssignmentKind::Active as i32,
            principal_id: principal_id.into(),
            role_id: GLOBAL_ADMINISTRATOR.into(),
            scope: "/".into(),
            schedule: Some(apb::Schedule {
                start_time: None,
                expiration: Some(apb::schedule::Expiration::Permanent(true)),
            }),
            justification: "second break-glass account".into(),
            ..Default::default()
        };
        let mut assignments = AssignmentServiceClient::new(assignment_channel);
        assignments
            .create_request(authed(&token, permanent(apb::RequestAction::AdminAssign, &kim.id)))
            .await?;
        let _: () = redis.del(&identity_stream).await?;
        let _: () = redis.set(&identity_stream, "refused").await?;
        let kim_user = || ipb::GetUserRequest { user: kim.id.clone() };
        directory.disable_user(authed(&token, kim_user())).await?;
        let refused = assignments
            .create_request(authed(&token, permanent(apb::RequestAction::AdminRemove, &admin_id)))
            .await
            .expect_err("Kim is disabled: the admin is the last enabled one");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        // Enabled again while assignment cannot hear of it, Kim still does not count there, so
        // Tom, a Global Administrator for an hour, may not disable the admin: stricter than
        // the directory, never looser.
        directory.enable_user(authed(&token, kim_user())).await?;
        let new_user = ipb::CreateUserRequest {
            user_name: "tom".into(),
            password: "tom's long passphrase".into(),
            ..Default::default()
        };
        let tom = directory.create_user(authed(&token, new_user)).await?.into_inner();
        let for_an_hour = apb::CreateRequestRequest {
            schedule: crate::activation::lasting(3_600_000),
            ..permanent(apb::RequestAction::AdminAssign, &tom.id)
        };
        assignments.create_request(authed(&token, for_an_hour)).await?;
        let tom_token = AuthServiceClient::new(identity_channel.clone())
            .sign_in(ipb::SignInRequest {
                user_name: "tom".into(),
                password: "tom's long passphrase".into(),
            })
            .await?
            .into_inner()
            .access_token;
        let refused = directory
            .disable_user(authed(&tom_token, ipb::GetUserRequest { user: admin_id }))
            .await
            .expect_err("assignment counts only the admin");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("last enabled user"), "{refused:?}");
        anyhow::Ok(())
    }
    .await;
    for host in hosts {
        host.suite.stop().await?;
        host.database.drop_database().await?;
    }
    pim_e2e::drop_streams(&prefix).await?;
    result
}

/// Two replicas of assignment on one database: a grant and a removal made through one reach
/// the other's in-memory access index through the event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_assignment_keep_their_access_indexes_current() -> anyhow::Result<()> {
    let replicas = pim_e2e::Replicas::start(2).await?;
    let result = grant_and_removal_reach_the_other_replica(&replicas, Duration::from_secs(10)).await;
    replicas.stop().await?;
    result
}

/// The database is the truth: a replica that hears none of the other's events (Redis lost
/// them: restarted empty, or trimmed before it read them) still learns of the grant and, above
/// all, of the removal, within seconds, with no replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_events_were_lost_learns_of_changes_from_the_database() -> anyhow::Result<()> {
    let replicas = pim_e2e::Replicas::start_with_last_unheard(2).await?;
    let result = grant_and_removal_reach_the_other_replica(&replicas, Duration::from_secs(20)).await;
    replicas.stop().await?;
    result
}

/// A grant and a removal made through replica A are allowed, then refused, on replica B
/// `within` their answer; and so is a role held through a group whose member identity adds,
/// then removes (identity tells replica A).
async fn grant_and_removal_reach_the_other_replica(
    replicas: &pim_e2e::Replicas,
    within: Duration,
) -> anyhow::Result<()> {
    let token = replicas.admin.clone();
    let mut directory = DirectoryServiceClient::new(replicas.identity().await?);
    let lee = directory
        .create_user(authed(
            &token,
            ipb::CreateUserRequest {
                user_name: "lee".into(),
                password: "lee's long passphrase".into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let (a, b) = (replicas.assignment(0).await?, replicas.assignment(1).await?);
    let assign_to = |action: apb::RequestAction, principal: &str| apb::CreateRequestRequest {
        action: action as i32,
        kind: apb::AssignmentKind::Active as i32,
        principal_id: principal.to_owned(),
        role_id: "Exchange Administrator".into(),
        scope: "/".into(),
        schedule: crate::activation::lasting(3_600_000),
        justification: "on call".into(),
        ticket: None,
        validate_only: false,
    };
    let assign = |action: apb::RequestAction| assign_to(action, &lee.id);
    let check = |principal: String, role: &'static str| {
        let (b, token) = (b.clone(), token.clone());
        async move {
            let r = AccessServiceClient::new(b)
                .check_access(authed(
                    &token,
                    apb::CheckAccessRequest {
                        principal_id: principal,
                        target: Some(apb::check_access_request::Target::RoleId(role.into())),
                        scope: "/".into(),
                        ..Default::default()
                    },
                ))
                .await?;
            anyhow::Ok(r.into_inner().allowed)
        }
    };
    let check_on_b = || check(lee.id.clone(), "Exchange Administrator");
    replicas.until_replica_knows_the_administrator(1, within).await?;
    assert!(!check_on_b().await?);
    let granted = AssignmentServiceClient::new(a.clone())
        .create_request(authed(&token, assign(apb::RequestAction::AdminAssign)))
        .await?
        .into_inner()
        .consistency_token;
    // A read given the grant's token waits until B has applied it, however B learns it
    // (its tail, or reading the database back when the event never reaches it).
    let mut fresh = authed(
        &token,
        apb::CheckAccessRequest {
            principal_id: lee.id.clone(),
            target: Some(apb::check_access_request::Target::RoleId(
                "Exchange Administrator".into(),
            )),
            scope: "/".into(),
            at_least_as_fresh: granted,
        },
    );
    fresh.set_timeout(within);
    assert!(
        AccessServiceClient::new(b.clone())
            .check_access(fresh)
            .await?
            .into_inner()
            .allowed,
        "B answers a read given the grant's token, allowed"
    );
    eventually(within, "replica B to learn of the grant", || async {
        Ok(check_on_b().await?.then_some(()))
    })
    .await?;
    AssignmentServiceClient::new(a.clone())
        .create_request(authed(&token, assign(apb::RequestAction::AdminRemove)))
        .await?;
    eventually(within, "replica B to learn of the removal", || async {
        Ok((!check_on_b().await?).then_some(()))
    })
    .await?;

    let group = crate::consistency::operators_group(&mut directory, &token).await?;
    AssignmentServiceClient::new(a)
        .create_request(authed(&token, assign_to(apb::RequestAction::AdminAssign, &group.id)))
        .await?;
    let membership = ipb::GroupMembershipRequest {
        group_id: group.id.clone(),
        principal_id: lee.id.clone(),
    };
    directory.add_group_member(authed(&token, membership.clone())).await?;
    eventually(within, "replica B to learn lee joined the group", || async {
        Ok(check_on_b().await?.then_some(()))
    })
    .await?;
    directory.remove_group_member(authed(&token, membership)).await?;
    eventually(within, "replica B to learn lee left the group", || async {
        Ok((!check_on_b().await?).then_some(()))
    })
    .await?;
    anyhow::Ok(())
}

/// A disable while identity's events cannot reach Redis: assignment is told at once by
/// identity itself, so the user holds nothing there before the disable answers, and what they
/// asked for that waits for approval is canceled; their tokens stop working within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_reaches_assignment_while_identitys_events_wait_for_redis() -> anyhow::Result<()> {
    // Identity's Redis refuses every connection: its events wait in its outbox.
    let (hosts, urls, prefix) = start_hosts(&[
        (ServiceName::Identity, "redis://127.0.0.1:1".to_owned()),
        (ServiceName::Assignment, redis_url()),
    ])
    .await?;
    let (identity_url, assignment_url) = (urls[0].clone(), urls[1].clone());
    let result = async {
        let (identity, assignment) = (
            hosts[0].suite.identity().expect("identity host"),
            hosts[1].suite.assignment().expect("assignment host"),
        );
        let (admin, password) = pim::bootstrap::run(identity, assignment)
            .await?
            .expect("a fresh directory bootstraps");
        let (identity_channel, assignment_channel) = (connect(&identity_url).await?, connect(&assignment_url).await?);
        let token = AuthServiceClient::new(identity_channel.clone())
            .sign_in(ipb::SignInRequest {
                user_name: admin.clone(),
                password,
            })
            .await?
            .into_inner()
            .access_token;
        let mut directory = DirectoryServiceClient::new(identity_channel);
        let admin_id = directory
            .get_user(authed(&token, ipb::GetUserRequest { user: admin }))
            .await?
            .into_inner()
            .id;
        let lee = directory
            .create_user(authed(
                &token,
                ipb::CreateUserRequest {
                    user_name: "lee".into(),
                    password: "lee's long passphrase".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        // Active for an hour.
        let assign = |principal_id: &str, role_id: &str| {
            let request = apb::CreateRequestRequest {
                action: apb::RequestAction::AdminAssign as i32,
                kind: apb::AssignmentKind::Active as i32,
                principal_id: principal_id.into(),
                role_id: role_id.into(),
                scope: "/".into(),
                schedule: crate::activation::lasting(3_600_000),
                justification: "on call".into(),
                ..Default::default()
            };
            let (mut assignments, token) = (AssignmentServiceClient::new(assignment_channel.clone()), token.clone());
            async move { assignments.create_request(authed(&token, request)).await }
        };
        assign(&lee.id, "Exchange Administrator").await?;
        let check = || {
            let (channel, token, lee) = (assignment_channel.clone(), token.clone(), lee.id.clone());
            async move {
                let r = AccessServiceClient::new(channel)
                    .check_access(authed(
                        &token,
                        apb::CheckAccessRequest {
                            principal_id: lee,
                            target: Some(apb::check_access_request::Target::RoleId(
                                "Exchange Administrator".into(),
                            )),
                            scope: "/".into(),
                            ..Default::default()
                        },
                    ))
                    .await?;
                anyhow::Ok(r.into_inner().allowed)
            }
        };
        assert!(check().await?);
        // Lee asks for Security Reader, which waits for an approver.
        let mut policies = PolicyServiceClient::new(assignment_channel.clone());
        let ask = apb::GetRolePolicyRequest {
            role_id: "Security Reader".into(),
            scope: "/".into(),
        };
        let mut policy = policies.get_role_policy(authed(&token, ask)).await?.into_inner();
        (policy.approval_required, policy.activation_requires_mfa) = (true, false);
        let update = apb::UpdateRolePolicyRequest {
            policy: Some(policy),
            ..Default::default()
        };
        policies.update_role_policy(authed(&token, update)).await?;
        let mut requests = AssignmentServiceClient::new(assignment_channel.clone());
        requests
            .create_request(authed(
                &token,
                apb::CreateRequestRequest {
                    action: apb::RequestAction::AdminAssign as i32,
                    kind: apb::AssignmentKind::Eligible as i32,
                    principal_id: lee.id.clone(),
                    role_id: "Security Reader".into(),
                    scope: "/".into(),
                    schedule: crate::activation::lasting(24 * 3_600_000),
                    justification: "on call".into(),
                    ..Default::default()
                },
            ))
            .await?;
        let lee_token = AuthServiceClient::new(connect(&identity_url).await?)
            .sign_in(ipb::SignInRequest {
                user_name: "lee".into(),
                password: "lee's long passphrase".into(),
            })
            .await?
            .into_inner()
            .access_token;
        let waiting = requests
            .create_request(authed(
                &lee_token,
                crate::activation::activation("Security Reader", 3_600_000, "incident 7"),
            ))
            .await?
            .into_inner();
        assert_eq!(waiting.status, apb::RequestStatus::PendingApproval as i32);

        // A role-assignable group's members change in assignment before the change answers,
        // Redis or not: identity gives it the signed events itself.
        let night = directory
            .create_group(authed(
                &token,
                ipb::CreateGroupRequest {
                    display_name: "night shift".into(),
                    is_assignable_to_role: true,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        assign(&night.id, crate::activation::GLOBAL_READER).await?;
        let reads = || {
            let (channel, token, lee) = (assignment_channel.clone(), token.clone(), lee.id.clone());
            async move {
                let asked = apb::CheckAccessRequest {
                    principal_id: lee,
                    target: Some(apb::check_access_request::Target::RoleId(
                        crate::activation::GLOBAL_READER.into(),
                    )),
                    scope: "/".into(),
                    ..Default::default()
                };
                let r = AccessServiceClient::new(channel)
                    .check_access(authed(&token, asked))
                    .await?;
                anyhow::Ok(r.into_inner().allowed)
            }
        };
        let membership = ipb::GroupMembershipRequest {
            group_id: night.id.clone(),
            principal_id: lee.id.clone(),
        };
        directory.add_group_member(authed(&token, membership.clone())).await?;
        assert!(reads().await?, "Lee reads through the night shift once added");
        directory.remove_group_member(authed(&token, membership)).await?;
        assert!(!reads().await?, "and no longer once removed");
        // Only identity's signature makes an event: one anybody signs, or none, is refused.
        let mut forged = pim_runtime::events::envelope(
            pim_runtime::events::Source::Identity,
            pim_runtime::events::EventType::GroupDeleted,
            &night.id,
            &pim_proto::events::v1::GroupDeleted {
                group_id: night.id.clone(),
                ..Default::default()
            },
        );
        forged.key_id = "made-up".into();
        forged.signature = vec![1; 64];
        let refused = AssignmentServiceClient::new(assignment_channel.clone())
            .apply_directory_event(authed(
                &token,
                apb::ApplyDirectoryEventRequest {
                    envelope: prost::Message::encode_to_vec(&forged),
                },
            ))
            .await
            .expect_err("not identity's signature");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

        directory
            .disable_user(authed(&token, ipb::GetUserRequest { user: lee.id.clone() }))
            .await?;
        assert!(!check().await?, "Lee holds nothing once the disable answered");
        let canceled = requests
            .get_request(authed(&token, apb::GetRequestRequest { request_id: waiting.id }))
            .await?
            .into_inner();
        assert_eq!(canceled.status, apb::RequestStatus::Canceled as i32, "{canceled:?}");
        // Lee's token stops working there too: assignment asks identity for revocations every
        // few seconds, as well as following its stream.
        eventually(Duration::from_secs(10), "Lee's token to be refused", || {
            let (mut requests, lee_token, id) = (requests.clone(), lee_token.clone(), canceled.id.clone());
            async move {
                let asked = requests
                    .get_request(authed(&lee_token, apb::GetRequestRequest { request_id: id }))
                    .await;
                Ok(asked.is_err_and(|s| s.code() == Code::Unauthenticated).then_some(()))
            }
        })
        .await?;
        // Only the directory's word is taken: an enabled user is not disabled by asking.
        let refused = AssignmentServiceClient::new(assignment_channel.clone())
            .apply_principal_disabled(authed(
                &token,
                apb::ApplyPrincipalDisabledRequest {
                    principal_id: admin_id,
                    as_of: None,
                },
            ))
            .await
            .expect_err("the directory holds the admin enabled");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        anyhow::Ok(())
    }
    .await;
    for host in hosts {
        host.suite.stop().await?;
        host.database.drop_database().await?;
    }
    pim_e2e::drop_streams(&prefix).await?;
    result
}
