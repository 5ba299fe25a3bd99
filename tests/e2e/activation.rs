//! Just-in-time activation on PostgreSQL + Redis, on a clock the tests move: the seed's
//! scenario (Lee Gu), each policy rule, scheduled starts, expiry to the second with its event,
//! timers shared by replicas, deactivation, approval hand-off, and last-Global-Administrator
//! protection.

use std::time::Duration;

use prost::Message;
use redis::AsyncCommands;
use tonic::Code;

use pim_e2e::{TestSuite, assign_for_an_hour, authed, eventually};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
use pim_proto::events::v1 as ev;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::clock::{Clock, ManualClock};
use pim_runtime::db::from_timestamp;
use pim_runtime::events::{Envelope, short_type, streams};
use pim_runtime::grpc::violated_rules;
use pim_runtime::testing::redis_url;

pub(crate) const EXCHANGE_ADMINISTRATOR: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";
pub(crate) const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
pub(crate) const GLOBAL_READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";
pub(crate) const HOUR_MS: i64 = 3_600_000;

pub(crate) struct World {
    pub(crate) ts: TestSuite,
    pub(crate) clock: ManualClock,
    pub(crate) admin: String,
}

pub(crate) struct User {
    pub(crate) id: String,
    pub(crate) name: String,
    /// Signed in with a password only.
    pub(crate) token: String,
}

/// A schedule from now, for `length_ms`.
pub(crate) fn lasting(length_ms: i64) -> Option<apb::Schedule> {
    Some(apb::Schedule {
        start_time: None,
        expiration: Some(apb::schedule::Expiration::Duration(duration(length_ms))),
    })
}

fn duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: 0,
    }
}

pub(crate) fn request(
    action: apb::RequestAction,
    kind: apb::AssignmentKind,
    principal: &str,
    role: &str,
) -> apb::CreateRequestRequest {
    apb::CreateRequestRequest {
        action: action as i32,
        kind: kind as i32,
        principal_id: principal.into(),
        role_id: role.into(),
        scope: "/".into(),
        schedule: None,
        justification: String::new(),
        ticket: None,
        validate_only: false,
    }
}

pub(crate) fn activation(role: &str, length_ms: i64, justification: &str) -> apb::CreateRequestRequest {
    apb::CreateRequestRequest {
        schedule: lasting(length_ms),
        justification: justification.into(),
        ..request(apb::RequestAction::SelfActivate, apb::AssignmentKind::Active, "", role)
    }
}

impl World {
    pub(crate) async fn new() -> anyhow::Result<Self> {
        let clock = ManualClock::starting_now();
        let ts = TestSuite::postgres_with_clock(Some(clock.clone())).await?;
        let admin = ts.admin_token().await?;
        Ok(Self { ts, clock, admin })
    }

    /// The same world on the all-in-one default (SQLite, embedded delivery): no Redis, so
    /// nothing that reads the streams.
    pub(crate) async fn embedded() -> anyhow::Result<Self> {
        let clock = ManualClock::starting_now();
        let ts = TestSuite::embedded_with_clock(Some(clock.clone()), &[]).await?;
        let admin = ts.admin_token().await?;
        Ok(Self { ts, clock, admin })
    }

    pub(crate) fn assignments(&self) -> AssignmentServiceClient<tonic::transport::Channel> {
        AssignmentServiceClient::new(self.ts.channel.clone())
    }

    /// A new role-assignable group (its roles reach its members), made by the administrator;
    /// its id.
    pub(crate) async fn role_assignable_group(&self, name: &str) -> anyhow::Result<String> {
        let created = DirectoryServiceClient::new(self.ts.channel.clone())
            .create_group(authed(
                &self.admin,
                pim_proto::identity::v1::CreateGroupRequest {
                    display_name: name.into(),
                    is_assignable_to_role: true,
                    ..Default::default()
                },
            ))
            .await?;
        Ok(created.into_inner().id)
    }

    pub(crate) async fn user(&self, name: &str) -> anyhow::Result<User> {
        let password = format!("{name}'s long passphrase");
        let created = DirectoryServiceClient::new(self.ts.channel.clone())
            .create_user(authed(
                &self.admin,
                ipb::CreateUserRequest {
                    user_name: name.into(),
                    password: password.clone(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        let token = self.ts.sign_in(name, &password).await?;
        Ok(User {
            id: created.id,
            name: name.into(),
            token,
        })
    }

    /// A new group with `members`; returns its id.
    pub(crate) async fn group(&self, name: &str, members: &[&User]) -> anyhow::Result<String> {
        let mut directory = DirectoryServiceClient::new(self.ts.channel.clone());
        let group = directory
            .create_group(authed(
                &self.admin,
                ipb::CreateGroupRequest {
                    display_name: name.into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        for member in members {
            directory
                .add_group_member(authed(
                    &self.admin,
                    ipb::GroupMembershipRequest {
                        group_id: group.id.clone(),
                        principal_id: member.id.clone(),
                    },
                ))
                .await?;
        }
        Ok(group.id)
    }

    /// The user's token after a fresh MFA step-up.
    pub(crate) fn stepped_up(&self, user: &User) -> anyhow::Result<String> {
        self.ts.stepped_up_token(&user.id, &user.name, self.clock.now_ms())
    }

    pub(crate) async fn make_eligible(&self, user: &User, role: &str) -> anyhow::Result<()> {
        self.make_principal_eligible(&user.id, role).await
    }

    /// Makes a user, group or service principal, by id, eligible for `role` at `/` (admin).
    pub(crate) async fn make_principal_eligible(&self, principal_id: &str, role: &str) -> anyhow::Result<()> {
        self.assignments()
            .create_request(authed(
                &self.admin,
                request(
                    apb::RequestAction::AdminAssign,
                    apb::AssignmentKind::Eligible,
                    principal_id,
                    role,
                ),
            ))
            .await?;
        Ok(())
    }

    pub(crate) async fn check(&self, principal: &str, role: &str) -> anyhow::Result<apb::CheckAccessResponse> {
        let r = AccessServiceClient::new(self.ts.channel.clone())
            .check_access(authed(
                &self.admin,
                apb::CheckAccessRequest {
                    principal_id: principal.into(),
                    target: Some(apb::check_access_request::Target::RoleId(role.into())),
                    scope: "/".into(),
                    ..Default::default()
                },
            ))
            .await?;
        Ok(r.into_inner())
    }

    pub(crate) async fn set_policy(
        &self,
        role: &str,
        change: impl FnOnce(&mut apb::RolePolicy),
    ) -> anyhow::Result<apb::RolePolicy> {
        let mut policies = PolicyServiceClient::new(self.ts.channel.clone());
        let mut policy = policies
            .get_role_policy(authed(
                &self.admin,
                apb::GetRolePolicyRequest {
                    role_id: role.into(),
                    scope: "/".into(),
                },
            ))
            .await?
            .into_inner();
        change(&mut policy);
        Ok(policies
            .update_role_policy(authed(
                &self.admin,
                apb::UpdateRolePolicyRequest {
                    policy: Some(policy),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner())
    }

    /// Publishes `event` on `stream` as its source would (validly signed, an event not seen
    /// before) and waits until `consumer` has taken it in: its inbox in `db` holds it.
    pub(crate) async fn tell(
        &self,
        stream: &str,
        mut event: Envelope,
        consumer: &str,
        db: &pim_runtime::db::Db,
    ) -> anyhow::Result<()> {
        use pim_runtime::events::Publisher as _;
        pim_e2e::event_keys().sign(stream, &mut event)?;
        pim_runtime::events::RedisPublisher::connect(&redis_url(), &self.ts.stream_prefix)
            .await?
            .publish(stream, &event, 0)
            .await?;
        eventually(Duration::from_secs(10), "the event taken in", || async {
            let row = pim_runtime::db::query_one(
                db,
                "SELECT COUNT(*) AS n FROM inbox WHERE consumer = $1 AND event_id = $2",
                vec![consumer.into(), event.id.clone().into()],
            )
            .await?;
            let n = row.map(|r| pim_runtime::db::col::<i64>(&r, "n")).transpose()?;
            Ok((n == Some(1)).then_some(()))
        })
        .await
    }

    /// Every event of `event_type` on the assignment stream so far.
    pub(crate) async fn events(&self, event_type: &str) -> anyhow::Result<Vec<Envelope>> {
        self.events_on(streams::ASSIGNMENT, event_type).await
    }

    /// Every event of `event_type` on `stream` so far.
    pub(crate) async fn events_on(&self, stream: &str, event_type: &str) -> anyhow::Result<Vec<Envelope>> {
        let mut redis = redis::Client::open(redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        let key = format!("{}{}", self.ts.stream_prefix, stream);
        let entries: redis::streams::StreamRangeReply = redis.xrange_all(key).await?;
        Ok(entries
            .ids
            .iter()
            .filter_map(|e| e.get::<Vec<u8>>("ce"))
            .filter_map(|b| Envelope::decode(b.as_slice()).ok())
            .filter(|e| short_type(e) == event_type)
            .collect())
    }

    pub(crate) async fn eventually_events(&self, event_type: &str, n: usize) -> anyhow::Result<Vec<Envelope>> {
        eventually(Duration::from_secs(10), event_type, || async {
            let found = self.events(event_type).await?;
            Ok((found.len() >= n).then_some(found))
        })
        .await
    }

    /// Runs a scheduler pass, then waits until nothing is due any more: the service's own
    /// timer may be firing the same rows (locked, so this pass skipped them).
    pub(crate) async fn tick(&self) -> anyhow::Result<usize> {
        let scheduler = self.ts.suite.assignment().expect("assignment runs here").scheduler();
        let fired = scheduler.run_once().await?;
        let now = self.clock.now_ms();
        eventually(Duration::from_secs(10), "nothing due any more", || async {
            Ok(scheduler.next_deadline().await?.is_none_or(|at| at > now).then_some(()))
        })
        .await?;
        Ok(fired)
    }
}

pub(crate) async fn run<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: FnOnce(World) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<World>>,
{
    let world = World::new().await?;
    let world = test(world).await?;
    world.ts.stop().await
}

/// Runs `test` on PostgreSQL + Redis, then on the embedded default.
pub(crate) async fn run_on_both<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: Fn(World) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<World>>,
{
    for world in [World::new().await?, World::embedded().await?] {
        let world = test(world).await?;
        world.ts.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lee_gu_activates_exchange_administrator_after_mfa_until_it_expires() -> anyhow::Result<()> {
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        assert!(
            !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "eligible is not active"
        );

        // Without MFA: refused, with the rule named so the client can step up.
        let refused = w
            .assignments()
            .create_request(authed(
                &lee.token,
                activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "mailbox migration"),
            ))
            .await
            .expect_err("no MFA");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert_eq!(violated_rules(&refused), vec!["MfaRule"]);
        assert!(!w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);

        // After MFA and with a justification: active at once.
        let token = w.stepped_up(&lee)?;
        let started = w.clock.now_ms();
        let activated = w
            .assignments()
            .create_request(authed(
                &token,
                activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "mailbox migration"),
            ))
            .await?
            .into_inner();
        assert_eq!(activated.status, apb::RequestStatus::Provisioned as i32);
        let yes = w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?;
        assert!(yes.allowed);
        assert_eq!(
            from_timestamp(yes.expires_at.as_ref().expect("it ends")),
            started + HOUR_MS
        );
        let activated_events = w.eventually_events("RoleActivated", 1).await?;
        let e = ev::RoleActivated::decode(activated_events[0].data.as_slice())?;
        assert_eq!(
            (e.principal_id.as_str(), e.role_id.as_str(), e.justification.as_str()),
            (lee.id.as_str(), EXCHANGE_ADMINISTRATOR, "mailbox migration")
        );
        // The events name the action, kind and status in the API's enums, and in text still.
        let created = w.eventually_events("RequestCreated", 1).await?;
        let e = created
            .iter()
            .filter_map(|e| ev::RequestCreated::decode(e.data.as_slice()).ok())
            .find(|e| e.request_id == activated.id)
            .expect("the activation's RequestCreated");
        assert_eq!(
            (e.request_action(), e.assignment_kind(), e.request_status()),
            (
                apb::RequestAction::SelfActivate,
                apb::AssignmentKind::Active,
                apb::RequestStatus::Provisioned
            )
        );
        assert_eq!(
            (e.action.as_str(), e.kind.as_str(), e.status.as_str()),
            ("selfActivate", "active", "Provisioned")
        );
        let refusals = w.eventually_events("RequestRefused", 1).await?;
        let e = ev::RequestRefused::decode(refusals[0].data.as_slice())?;
        assert_eq!(
            (e.request_action(), e.action.as_str()),
            (apb::RequestAction::SelfActivate, "selfActivate")
        );
        let granted = w.eventually_events("EligibilityGranted", 1).await?;
        let e = ev::AssignmentChanged::decode(granted[0].data.as_slice())?;
        assert_eq!(
            (e.assignment_kind(), e.kind.as_str()),
            (apb::AssignmentKind::Eligible, "eligible")
        );

        // One second before the end it holds; at the end it does not — before any timer ran.
        w.clock.advance(Duration::from_millis((HOUR_MS - 1000) as u64));
        assert!(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        w.clock.advance(Duration::from_secs(1));
        assert!(
            !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "expired to the second"
        );
        // The timer comes ten minutes late (a restart, say): the record says when it ended.
        w.clock.advance(Duration::from_secs(600));
        w.tick().await?;
        let ended = w.eventually_events("RoleDeactivated", 1).await?;
        let e = ev::RoleDeactivated::decode(ended[0].data.as_slice())?;
        assert_eq!(
            (e.principal_id.as_str(), e.reason.as_str()),
            (lee.id.as_str(), "expired")
        );
        assert_eq!(e.end_time.as_ref().map(from_timestamp), Some(started + HOUR_MS));

        // Audit holds the activation and its end.
        let records = eventually(Duration::from_secs(10), "audit of the activation", || {
            let mut audit = AuditServiceClient::new(w.ts.channel.clone());
            let admin = w.admin.clone();
            async move {
                let r = audit
                    .query_events(authed(
                        &admin,
                        pim_proto::audit::v1::QueryEventsRequest {
                            action: "RoleDeactivated".into(),
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner()
                    .records;
                Ok((!r.is_empty()).then_some(r))
            }
        })
        .await?;
        assert_eq!(records[0].target_id, lee.id);
        Ok(w)
    })
    .await
}

/// Entra's "require MFA on active assignment": with it on, an administrator gives an active
/// assignment, or a new end for one, only with their own recent MFA; an eligible assignment,
/// and a role without the setting, need none. Each refusal is on the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_assignment_can_need_the_administrators_recent_mfa() -> anyhow::Result<()> {
    run(|w| async move {
        let kim = w.user("kim").await?;
        let ann = w.user("ann").await?;
        let admin_id = pim_e2e::token_subject(&w.admin)?;
        let policy = w
            .set_policy(EXCHANGE_ADMINISTRATOR, |p| p.active_requires_mfa = true)
            .await?;
        assert!(policy.active_requires_mfa);
        let active = |action: apb::RequestAction, who: &User, role: &str| apb::CreateRequestRequest {
            schedule: lasting(2 * HOUR_MS),
            justification: "on call".into(),
            ..request(action, apb::AssignmentKind::Active, &who.id, role)
        };
        let stale =
            w.ts.stepped_up_token(&admin_id, "admin", w.clock.now_ms() - 11 * 60_000)?;
        for token in [&w.admin, &stale] {
            let refused = w
                .assignments()
                .create_request(authed(
                    token,
                    active(apb::RequestAction::AdminAssign, &kim, EXCHANGE_ADMINISTRATOR),
                ))
                .await
                .expect_err("no recent MFA");
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert_eq!(violated_rules(&refused), ["MfaRule"], "{refused:?}");
        }
        assert!(
            !w.check(&kim.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "nothing given"
        );
        // Eligible: the MFA comes at activation. Another role: not asked.
        w.make_eligible(&ann, EXCHANGE_ADMINISTRATOR).await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                active(apb::RequestAction::AdminAssign, &ann, GLOBAL_READER),
            ))
            .await?;

        let fresh = w.ts.stepped_up_token(&admin_id, "admin", w.clock.now_ms())?;
        w.assignments()
            .create_request(authed(
                &fresh,
                active(apb::RequestAction::AdminAssign, &kim, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        assert!(w.check(&kim.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        // A later end for it: the MFA must still be recent.
        w.clock.advance(Duration::from_secs(11 * 60));
        let longer = apb::CreateRequestRequest {
            schedule: lasting(3 * HOUR_MS),
            ..active(apb::RequestAction::AdminExtend, &kim, EXCHANGE_ADMINISTRATOR)
        };
        let refused = w
            .assignments()
            .create_request(authed(&fresh, longer.clone()))
            .await
            .expect_err("the MFA is 11 minutes old");
        assert_eq!(violated_rules(&refused), ["MfaRule"], "{refused:?}");
        let again = w.ts.stepped_up_token(&admin_id, "admin", w.clock.now_ms())?;
        w.assignments().create_request(authed(&again, longer)).await?;

        let refusals = w.eventually_events("RequestRefused", 3).await?;
        let refusals: Vec<ev::RequestRefused> = refusals
            .iter()
            .map(|e| ev::RequestRefused::decode(e.data.as_slice()))
            .collect::<Result<_, _>>()?;
        let actions: Vec<&str> = refusals.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["adminAssign", "adminAssign", "adminExtend"]);
        assert!(refusals.iter().all(|r| r.rules == ["MfaRule"]
            && r.principal_id == kim.id
            && r.actor.as_ref().is_some_and(|a| a.principal_id == admin_id)));
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_rule_is_reported_and_policies_can_change() -> anyhow::Result<()> {
    run(|w| async move {
        let kim = w.user("kim").await?;
        let token = w.stepped_up(&kim)?;
        // Not eligible.
        let refused = w
            .assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "x")))
            .await
            .expect_err("not eligible");
        assert_eq!(violated_rules(&refused), vec!["EligibilityRule"]);
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        // No justification, and longer than the 8 h maximum.
        let refused = w
            .assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, 9 * HOUR_MS, "")))
            .await
            .expect_err("rules");
        assert_eq!(violated_rules(&refused), vec!["JustificationRule", "ExpirationRule"]);
        // A stale step-up (11 minutes ago) is not fresh enough.
        let stale =
            w.ts.stepped_up_token(&kim.id, &kim.name, w.clock.now_ms() - 11 * 60_000)?;
        let refused = w
            .assignments()
            .create_request(authed(&stale, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "x")))
            .await
            .expect_err("stale MFA");
        assert_eq!(violated_rules(&refused), vec!["MfaRule"]);

        // Only policy administrators change policies.
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        let current = policies
            .get_role_policy(authed(
                &kim.token,
                apb::GetRolePolicyRequest {
                    role_id: EXCHANGE_ADMINISTRATOR.into(),
                    scope: "/".into(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(
            current.activation_max_duration.as_ref().map(|d| d.seconds),
            Some(8 * 3600),
            "Entra's default"
        );
        let denied = policies
            .update_role_policy(authed(
                &kim.token,
                apb::UpdateRolePolicyRequest {
                    policy: Some(current.clone()),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("kim is no admin");
        assert_eq!(denied.code(), Code::PermissionDenied);
        let mut too_short = current.clone();
        too_short.activation_max_duration = Some(duration(30_000));
        let invalid = policies
            .update_role_policy(authed(
                &w.admin,
                apb::UpdateRolePolicyRequest {
                    policy: Some(too_short),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("under a minute");
        assert_eq!(invalid.code(), Code::InvalidArgument);

        // A ticket becomes required, and activations as short as one minute are allowed.
        let updated = w
            .set_policy(EXCHANGE_ADMINISTRATOR, |p| {
                p.activation_requires_ticket = true;
                p.activation_max_duration = Some(duration(60_000));
            })
            .await?;
        assert!(updated.activation_requires_ticket);
        w.eventually_events("PolicyUpdated", 1).await?;
        let refused = w
            .assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, 60_000, "x")))
            .await
            .expect_err("ticket");
        assert_eq!(violated_rules(&refused), vec!["TicketingRule"]);
        let mut with_ticket = activation(EXCHANGE_ADMINISTRATOR, 60_000, "x");
        with_ticket.ticket = Some(pim_proto::common::v1::Ticket {
            system: "ServiceNow".into(),
            number: "INC1".into(),
        });
        let mut dry = with_ticket.clone();
        dry.validate_only = true;
        assert!(
            w.assignments()
                .create_request(authed(&token, dry))
                .await?
                .into_inner()
                .id
                .is_empty()
        );
        assert!(
            !w.check(&kim.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "a dry run changes nothing"
        );
        w.assignments().create_request(authed(&token, with_ticket)).await?;
        assert!(w.check(&kim.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        w.clock.advance(Duration::from_secs(60));
        assert!(
            !w.check(&kim.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "a one-minute activation lasts one minute"
        );
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_start_becomes_active_on_time_and_deactivation_ends_it() -> anyhow::Result<()> {
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        let token = w.stepped_up(&lee)?;
        let start = w.clock.now_ms() + 10 * 60_000;
        let mut later = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "change window");
        later.schedule.as_mut().expect("schedule").start_time = Some(pim_runtime::db::to_timestamp(start));
        let scheduled = w
            .assignments()
            .create_request(authed(&token, later))
            .await?
            .into_inner();
        assert_eq!(scheduled.status, apb::RequestStatus::ScheduleCreated as i32);
        assert!(
            !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "not before its start"
        );
        assert_eq!(w.tick().await?, 0);

        w.clock.advance(Duration::from_secs(600));
        assert!(
            w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "active from its start"
        );
        w.tick().await?;
        w.eventually_events("RoleActivated", 1).await?;
        let request = w
            .assignments()
            .get_request(authed(
                &token,
                apb::GetRequestRequest {
                    request_id: scheduled.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(request.status, apb::RequestStatus::Provisioned as i32);
        assert_eq!(
            from_timestamp(request.end_time.as_ref().expect("ends")),
            start + HOUR_MS,
            "the hour counts from the start"
        );

        // Ending it early.
        let off = request_for(apb::RequestAction::SelfDeactivate, EXCHANGE_ADMINISTRATOR);
        let revoked = w
            .assignments()
            .create_request(authed(&lee.token, off))
            .await?
            .into_inner();
        assert_eq!(revoked.status, apb::RequestStatus::Revoked as i32);
        assert!(!w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        let ended = w.eventually_events("RoleDeactivated", 1).await?;
        assert_eq!(
            ev::RoleDeactivated::decode(ended[0].data.as_slice())?.reason,
            "deactivated"
        );
        let again = w
            .assignments()
            .create_request(authed(
                &lee.token,
                request_for(apb::RequestAction::SelfDeactivate, EXCHANGE_ADMINISTRATOR),
            ))
            .await
            .expect_err("nothing left");
        assert_eq!(again.code(), Code::NotFound);
        Ok(w)
    })
    .await
}

/// A scheduled request ends in a final status: canceled by its requester before it starts
/// (what it made never holds); Provisioned when an administrator's scheduled assignment
/// starts; Failed, never announced as activated, when its whole window passed before the
/// scheduler could start it (the service was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_requests_start_are_canceled_or_fail_and_say_so() -> anyhow::Result<()> {
    run(|w| async move {
        let (lee, kim) = (w.user("lee").await?, w.user("kim").await?);
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        let token = w.stepped_up(&lee)?;
        let at = |start: i64, length: i64| {
            let mut later = activation(EXCHANGE_ADMINISTRATOR, length, "change window");
            later.schedule.as_mut().expect("schedule").start_time = Some(pim_runtime::db::to_timestamp(start));
            later
        };
        let status = |id: String, token: String| {
            let mut assignments = w.assignments();
            async move {
                let asked = authed(&token, apb::GetRequestRequest { request_id: id });
                anyhow::Ok(assignments.get_request(asked).await?.into_inner())
            }
        };
        // Canceled before it starts: nothing holds at the start.
        let start = w.clock.now_ms() + 10 * 60_000;
        let scheduled = w
            .assignments()
            .create_request(authed(&token, at(start, HOUR_MS)))
            .await?
            .into_inner();
        let again = w
            .assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "now, too")))
            .await
            .expect_err("one activation at a time, scheduled or not");
        assert_eq!(again.code(), Code::AlreadyExists);
        assert!(again.message().contains("already scheduled"), "{again:?}");
        let canceled = w
            .assignments()
            .cancel_request(authed(
                &lee.token,
                apb::GetRequestRequest {
                    request_id: scheduled.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(canceled.status, apb::RequestStatus::Canceled as i32, "{canceled:?}");
        assert!(
            canceled.outcome_reason.contains("ended before it started"),
            "{canceled:?}"
        );

        // An administrator's assignment from the same start: Provisioned when it starts.
        let assigned = w
            .assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: Some(apb::Schedule {
                        start_time: Some(pim_runtime::db::to_timestamp(start)),
                        ..lasting(HOUR_MS).expect("a schedule")
                    }),
                    justification: "covers the change window".into(),
                    ..request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Active,
                        &kim.id,
                        EXCHANGE_ADMINISTRATOR,
                    )
                },
            ))
            .await?
            .into_inner();
        assert_eq!(assigned.status, apb::RequestStatus::ScheduleCreated as i32);
        w.clock.advance(Duration::from_secs(600));
        w.tick().await?;
        assert!(!w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed, "canceled");
        assert!(w.check(&kim.id, EXCHANGE_ADMINISTRATOR).await?.allowed, "started");
        let started = status(assigned.id.clone(), w.admin.clone()).await?;
        assert_eq!(started.status, apb::RequestStatus::Provisioned as i32, "{started:?}");

        // A window that passed whole before any scheduler pass: it fails, never activated.
        let token = w.stepped_up(&lee)?;
        let missed = w
            .assignments()
            .create_request(authed(&token, at(w.clock.now_ms() + 60_000, HOUR_MS)))
            .await?
            .into_inner();
        w.clock.advance(Duration::from_secs(2 * 3600));
        w.tick().await?;
        let failed = status(missed.id.clone(), lee.token.clone()).await?;
        assert_eq!(failed.status, apb::RequestStatus::Failed as i32, "{failed:?}");
        assert!(failed.outcome_reason.contains("never held"), "{failed:?}");
        assert!(
            w.events("RoleActivated").await?.is_empty(),
            "nothing was ever activated"
        );
        let deactivated = w.events("RoleDeactivated").await?;
        let told: Vec<String> = deactivated
            .iter()
            .filter_map(|e| ev::RoleDeactivated::decode(e.data.as_slice()).ok())
            .map(|d| d.assignment_id)
            .collect();
        assert!(told.contains(&canceled.assignment_id), "{told:?}");
        assert!(
            !told.contains(&missed.assignment_id),
            "not the one that never held: {told:?}"
        );
        Ok(w)
    })
    .await
}

/// An eligibility moved to end before a scheduled activation starts takes the activation with
/// it: ended at once, never shortened to end before it starts, never active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_start_after_its_eligibilitys_new_end_is_ended_not_shortened() -> anyhow::Result<()> {
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        let start = w.clock.now_ms() + 10 * 60_000;
        let mut later = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "change window");
        later.schedule.as_mut().expect("schedule").start_time = Some(pim_runtime::db::to_timestamp(start));
        let scheduled = w
            .assignments()
            .create_request(authed(&w.stepped_up(&lee)?, later))
            .await?
            .into_inner();
        // The eligibility now ends in five minutes, before the activation would start.
        let moved = apb::CreateRequestRequest {
            schedule: lasting(5 * 60_000),
            justification: "rota changed".into(),
            ..request(
                apb::RequestAction::AdminUpdate,
                apb::AssignmentKind::Eligible,
                &lee.id,
                EXCHANGE_ADMINISTRATOR,
            )
        };
        w.assignments().create_request(authed(&w.admin, moved)).await?;
        let ended = w.eventually_events("RoleDeactivated", 1).await?;
        assert_eq!(
            ev::RoleDeactivated::decode(ended[0].data.as_slice())?.reason,
            "eligibility ended"
        );
        assert!(
            w.events("ActivationShortened").await?.is_empty(),
            "ended, not shortened"
        );
        w.clock.advance(Duration::from_secs(600));
        w.tick().await?;
        assert!(!w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        assert!(w.events("RoleActivated").await?.is_empty(), "never active");
        // Its request says it was canceled, and why.
        let request = w
            .assignments()
            .get_request(authed(
                &lee.token,
                apb::GetRequestRequest {
                    request_id: scheduled.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(request.status, apb::RequestStatus::Canceled as i32, "{request:?}");
        assert_eq!(request.outcome_reason, "ended before it started (eligibility ended)");
        Ok(w)
    })
    .await
}

fn request_for(action: apb::RequestAction, role: &str) -> apb::CreateRequestRequest {
    request(action, apb::AssignmentKind::Active, "", role)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_timers_without_double_events() -> anyhow::Result<()> {
    run(|w| async move {
        let mut users = Vec::new();
        for i in 0..12 {
            let u = w.user(&format!("user{i}")).await?;
            w.assignments()
                .create_request(authed(
                    &w.admin,
                    assign_for_an_hour(apb::AssignmentKind::Active, &u.id, EXCHANGE_ADMINISTRATOR),
                ))
                .await?;
            users.push(u);
        }
        w.clock.advance(Duration::from_secs(3600));
        let assignment = w.ts.suite.assignment().expect("assignment runs here");
        let (a, b, c) = (assignment.scheduler(), assignment.scheduler(), assignment.scheduler());
        let (x, y, z) = tokio::try_join!(a.run_once(), b.run_once(), c.run_once())?;
        // The background timer loop of the suite may have fired some too; never twice.
        let ended = w.eventually_events("RoleDeactivated", 12).await?;
        assert!(x + y + z <= 12);
        let mut ids: Vec<String> = ended
            .iter()
            .map(|e| ev::RoleDeactivated::decode(e.data.as_slice()).map(|d| d.assignment_id))
            .collect::<Result<_, _>>()?;
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 12, "one event per assignment");
        assert_eq!(w.events("RoleDeactivated").await?.len(), 12, "no duplicates");
        for u in &users {
            assert!(!w.check(&u.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        }
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_holds_the_activation_and_the_window_starts_when_approved() -> anyhow::Result<()> {
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
            .await?;
        let token = w.stepped_up(&lee)?;
        let pending = w
            .assignments()
            .create_request(authed(
                &token,
                activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "incident 7"),
            ))
            .await?
            .into_inner();
        assert_eq!(pending.status, apb::RequestStatus::PendingApproval as i32);
        assert!(
            !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "not before approval"
        );
        // One request waits at a time, asked for real or only validated; and with approval
        // turned off meanwhile, the waiting one still blocks a direct activation.
        for validate_only in [false, true] {
            let mut again = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "again");
            again.validate_only = validate_only;
            let refused = w
                .assignments()
                .create_request(authed(&token, again))
                .await
                .expect_err("a second request while one waits");
            assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
            assert!(
                refused.message().contains("already waiting for approval"),
                "{refused:?}"
            );
        }
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = false)
            .await?;
        let direct = w
            .assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "direct")))
            .await
            .expect_err("a direct activation while one waits");
        assert_eq!(direct.code(), Code::AlreadyExists, "{direct:?}");
        assert!(
            !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "the refused activation left nothing behind"
        );
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
            .await?;

        let mut watch = w
            .assignments()
            .watch_request(authed(
                &token,
                apb::GetRequestRequest {
                    request_id: pending.id.clone(),
                },
            ))
            .await?
            .into_inner();
        let first = watch.message().await?.expect("the current status first");
        assert_eq!(first.status, apb::RequestStatus::PendingApproval as i32);

        // Half an hour of waiting, then an approver (a default one: the admin) says yes.
        w.clock.advance(Duration::from_secs(1800));
        let approved_at = w.clock.now_ms();
        let approval = w.approval_of(&pending.id).await?;
        w.approvals()
            .decide(authed(
                &w.admin,
                pim_proto::approval::v1::DecideRequest {
                    approval_id: approval.id,
                    decision: pim_proto::approval::v1::Decision::Approve as i32,
                    justification: "on call".into(),
                },
            ))
            .await?;
        let mut last = first;
        while last.status != apb::RequestStatus::Provisioned as i32 {
            last = tokio::time::timeout(Duration::from_secs(10), watch.message())
                .await??
                .expect("more updates until final");
        }
        assert!(watch.message().await?.is_none(), "the stream ends at a final status");
        // Each move is an event with both statuses typed (and in text).
        let moves: Vec<ev::RequestStatusChanged> = w
            .eventually_events("RequestStatusChanged", 2)
            .await?
            .iter()
            .filter_map(|e| ev::RequestStatusChanged::decode(e.data.as_slice()).ok())
            .filter(|e| e.request_id == pending.id)
            .collect();
        let typed: Vec<_> = moves
            .iter()
            .map(|e| (e.previous_request_status(), e.request_status()))
            .collect();
        assert_eq!(
            typed,
            vec![
                (apb::RequestStatus::PendingApproval, apb::RequestStatus::Granted),
                (apb::RequestStatus::Granted, apb::RequestStatus::Provisioned),
            ]
        );
        assert_eq!(
            (moves[0].previous_status.as_str(), moves[0].status.as_str()),
            ("PendingApproval", "Granted")
        );
        let recorded = w.events_on(streams::APPROVAL, "ApprovalDecisionRecorded").await?;
        let decided = ev::ApprovalDecisionRecorded::decode(recorded[0].data.as_slice())?;
        assert_eq!(
            (decided.approval_decision(), decided.decision.as_str()),
            (pim_proto::approval::v1::Decision::Approve, "approve")
        );
        let granted = w.events_on(streams::APPROVAL, "ApprovalGranted").await?;
        let outcome = ev::ApprovalCompleted::decode(granted[0].data.as_slice())?;
        assert_eq!(
            (outcome.approval_status(), outcome.outcome.as_str()),
            (pim_proto::approval::v1::ApprovalStatus::Approved, "Approved")
        );
        // The watch may see the committed status (its 1 s re-read) a moment before the access
        // index has applied the approval: poll briefly.
        let yes = eventually(Duration::from_secs(5), "CheckAccess to agree", || async {
            let r = w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?;
            Ok(r.allowed.then_some(r))
        })
        .await?;
        assert_eq!(
            from_timestamp(yes.expires_at.as_ref().expect("ends")),
            approved_at + HOUR_MS,
            "waiting did not eat the window"
        );

        // A second request is withdrawn before anyone decides.
        let kim = w.user("kim").await?;
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        let kim_token = w.stepped_up(&kim)?;
        // Kim's own actions are Kim's: one asked for Lee is an attempt to act as Lee, refused
        // and recorded as such, never done for Kim or Lee.
        let as_lee = w
            .assignments()
            .create_request(authed(
                &kim_token,
                request(
                    apb::RequestAction::SelfDeactivate,
                    apb::AssignmentKind::Active,
                    &lee.id,
                    EXCHANGE_ADMINISTRATOR,
                ),
            ))
            .await
            .expect_err("Kim deactivates only her own");
        assert_eq!(as_lee.code(), Code::PermissionDenied, "{as_lee:?}");
        // So is one with something else wrong as well (a start long past): the attempt is
        // what it is told and recorded as.
        let mut long_ago = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "x");
        long_ago.principal_id = lee.id.clone();
        if let Some(schedule) = long_ago.schedule.as_mut() {
            schedule.start_time = Some(pim_runtime::db::to_timestamp(w.clock.now_ms() - 24 * HOUR_MS));
        }
        let as_lee_too = w
            .assignments()
            .create_request(authed(&kim_token, long_ago))
            .await
            .expect_err("still an attempt to act as Lee");
        assert_eq!(as_lee_too.code(), Code::PermissionDenied, "{as_lee_too:?}");
        assert!(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed, "Lee keeps it");
        eventually(Duration::from_secs(10), "the attempt recorded", || async {
            let refused = w.events_on(streams::ASSIGNMENT, "RequestRefused").await?;
            Ok(refused
                .iter()
                .any(|e| {
                    ev::RequestRefused::decode(e.data.as_slice()).is_ok_and(|r| {
                        r.principal_id == lee.id && r.actor.as_ref().is_some_and(|a| a.principal_id == kim.id)
                    })
                })
                .then_some(()))
        })
        .await?;
        let pending = w
            .assignments()
            .create_request(authed(&kim_token, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "x")))
            .await?
            .into_inner();
        let stranger = w
            .assignments()
            .cancel_request(authed(
                &lee.token,
                apb::GetRequestRequest {
                    request_id: pending.id.clone(),
                },
            ))
            .await
            .expect_err("not Lee's");
        assert_eq!(stranger.code(), Code::PermissionDenied);
        // Recorded against whom the request is for, so a search for Kim finds the attempt.
        eventually(
            Duration::from_secs(10),
            "Lee's attempt recorded against Kim",
            || async {
                let query = pim_proto::audit::v1::QueryEventsRequest {
                    target_id: kim.id.clone(),
                    ..Default::default()
                };
                let records = w.ts.audit_records(&w.admin, query).await?;
                Ok(records
                    .iter()
                    .any(|r| r.action.ends_with(".AccessDenied") && r.payload_json.contains("CancelRequest"))
                    .then_some(()))
            },
        )
        .await?;
        // An id that cannot be a request's is a mistake to point out, not a request not found.
        let garbage = w
            .assignments()
            .cancel_request(authed(
                &kim_token,
                apb::GetRequestRequest {
                    request_id: "req-1".into(),
                },
            ))
            .await
            .expect_err("not a request id");
        assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
        let canceled = w
            .assignments()
            .cancel_request(authed(
                &kim_token,
                apb::GetRequestRequest {
                    request_id: pending.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(canceled.status, apb::RequestStatus::Canceled as i32);
        let listed = w
            .assignments()
            .list_requests(authed(
                &kim.token,
                apb::ListRequestsRequest {
                    principal_id: kim.id.clone(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        assert_eq!(
            listed
                .requests
                .iter()
                .filter(|r| r.action == apb::RequestAction::SelfActivate as i32)
                .count(),
            1
        );
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_permanent_global_administrator_cannot_be_removed() -> anyhow::Result<()> {
    run(|w| async move {
        let admin_id = DirectoryServiceClient::new(w.ts.channel.clone())
            .get_user(authed(
                &w.admin,
                ipb::GetUserRequest {
                    user: w.ts.admin_user.clone(),
                },
            ))
            .await?
            .into_inner()
            .id;
        let remove = |principal: &str| {
            request(
                apb::RequestAction::AdminRemove,
                apb::AssignmentKind::Active,
                principal,
                GLOBAL_ADMINISTRATOR,
            )
        };
        let refused = w
            .assignments()
            .create_request(authed(&w.admin, remove(&admin_id)))
            .await
            .expect_err("the last one");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(w.check(&admin_id, GLOBAL_ADMINISTRATOR).await?.allowed);

        // A group holding it for good does not count: it may be emptied or deleted in the
        // directory, where assignment has no say.
        w.set_policy(GLOBAL_ADMINISTRATOR, |p| p.active_allow_permanent = true)
            .await?;
        let group = w.role_assignable_group("Tier 0").await?;
        let permanent = |principal: &str| apb::CreateRequestRequest {
            justification: "break-glass".into(),
            schedule: Some(apb::Schedule {
                start_time: None,
                expiration: Some(apb::schedule::Expiration::Permanent(true)),
            }),
            ..request(
                apb::RequestAction::AdminAssign,
                apb::AssignmentKind::Active,
                principal,
                GLOBAL_ADMINISTRATOR,
            )
        };
        w.assignments()
            .create_request(authed(&w.admin, permanent(&group)))
            .await?;
        let refused = w
            .assignments()
            .create_request(authed(&w.admin, remove(&admin_id)))
            .await
            .expect_err("still the last user");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        w.assignments().create_request(authed(&w.admin, remove(&group))).await?;

        // Nor does a disabled user's: no one can sign in to use it. And the directory does not
        // disable the last enabled user who holds one.
        let ola = w.user("ola").await?;
        w.assignments()
            .create_request(authed(&w.admin, permanent(&ola.id)))
            .await?;
        let mut directory = DirectoryServiceClient::new(w.ts.channel.clone());
        let user = |id: &str| ipb::GetUserRequest { user: id.into() };
        directory.disable_user(authed(&w.admin, user(&ola.id))).await?;
        // The directory asked assignment first, which counted Ola out, and said so.
        let prepared = w.eventually_events("UserDisablePrepared", 1).await?;
        let told = ev::UserDisabled::decode(prepared[0].data.as_slice())?;
        assert_eq!(
            (told.user_id.as_str(), told.user_name.as_str()),
            (ola.id.as_str(), "ola")
        );
        // A User Administrator may disable users, but not count a Global Administrator out.
        let uma = w.user("uma").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &uma.id, "User Administrator"),
            ))
            .await?;
        let prepare = |user_id: &str| apb::PrepareUserDisableRequest {
            user_id: user_id.into(),
            as_of: None,
        };
        let refused = w
            .assignments()
            .prepare_user_disable(authed(&w.stepped_up(&uma)?, prepare(&admin_id)))
            .await
            .expect_err("not a privileged credentials administrator");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        w.assignments()
            .prepare_user_disable(authed(&w.stepped_up(&uma)?, prepare(&uma.id)))
            .await?;
        let refused = w
            .assignments()
            .create_request(authed(&w.admin, remove(&admin_id)))
            .await
            .expect_err("Ola is disabled");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let tom = w.user("tom").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &tom.id, GLOBAL_ADMINISTRATOR),
            ))
            .await?;
        let refused = directory
            .disable_user(authed(&w.stepped_up(&tom)?, user(&admin_id)))
            .await
            .expect_err("the last enabled one");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("last enabled user"), "{refused:?}");
        // A protection's refusal is audited, as a refused permission is.
        // It names at whom it was aimed, so a search for the admin finds it.
        let record = crate::consistency::failure_record(&w, "AccessDenied", &tom.id).await?;
        assert_eq!(record.target_id, admin_id);
        assert!(
            record
                .payload_json
                .contains("/pim.identity.v1.DirectoryService/DisableUser")
                && record.payload_json.contains("\"code\":\"FailedPrecondition\"")
                && record.payload_json.contains("last enabled user"),
            "{}",
            record.payload_json
        );

        // With a second permanent Global Administrator, the first may go — and then the second may not.
        let kim = w.user("kim").await?;
        let mut assign = request(
            apb::RequestAction::AdminAssign,
            apb::AssignmentKind::Active,
            &kim.id,
            GLOBAL_ADMINISTRATOR,
        );
        assign.justification = "second break-glass account".into();
        assign.schedule = Some(apb::Schedule {
            start_time: None,
            expiration: Some(apb::schedule::Expiration::Permanent(true)),
        });
        w.assignments().create_request(authed(&w.admin, assign)).await?;
        let removed = w
            .assignments()
            .create_request(authed(&w.admin, remove(&admin_id)))
            .await?
            .into_inner();
        assert_eq!(removed.status, apb::RequestStatus::Revoked as i32);
        assert!(!w.check(&admin_id, GLOBAL_ADMINISTRATOR).await?.allowed);
        let removed = w.eventually_events("ActiveAssignmentRemoved", 1).await?;
        let e = removed
            .iter()
            .filter_map(|e| ev::AssignmentChanged::decode(e.data.as_slice()).ok())
            .find(|e| e.principal_id == admin_id)
            .expect("the removal of the admin's assignment");
        assert_eq!(
            (e.principal_kind(), e.assignment_kind()),
            (pim_proto::common::v1::PrincipalKind::User, apb::AssignmentKind::Active),
            "a removal names the kind of principal whose assignment it was, as the grant did"
        );
        assert!(e.end_time.is_some(), "a removal says when it ended");
        let kim_admin = w.stepped_up(&kim)?;
        let refused = w
            .assignments()
            .create_request(authed(&kim_admin, remove(&kim.id)))
            .await
            .expect_err("the last one again");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

        // A user disabled before assignment followed who is (here: its record of it lost) is
        // announced once when identity starts, and counts as disabled again.
        use pim::ServiceName;
        let connect = |service| pim_runtime::db::connect(w.ts.database_url(service).expect("its database"));
        let (assignment_db, identity_db) = (
            connect(ServiceName::Assignment).await?,
            connect(ServiceName::Identity).await?,
        );
        let disabled = |db: pim_runtime::db::Db| async move {
            let row =
                pim_runtime::db::query_one(&db, "SELECT COUNT(*) AS n FROM user_states WHERE NOT enabled", vec![])
                    .await?;
            anyhow::Ok(
                row.map(|r| pim_runtime::db::col::<i64>(&r, "n"))
                    .transpose()?
                    .unwrap_or_default(),
            )
        };
        assert_eq!(disabled(assignment_db.clone()).await?, 1, "Ola");
        use sea_orm::ConnectionTrait;
        assignment_db.execute_unprepared("DELETE FROM user_states").await?;
        identity_db
            .execute_unprepared("DELETE FROM announcements WHERE name = 'disabled_users'")
            .await?;
        let World { ts, clock, admin } = w;
        let w = World {
            ts: ts.restart().await?,
            clock,
            admin,
        };
        eventually(Duration::from_secs(10), "Ola announced disabled", || {
            let db = assignment_db.clone();
            async move { Ok((disabled(db).await? == 1).then_some(())) }
        })
        .await?;

        // With no enabled holder left (here: Kim disables the administrator, then is disabled
        // behind the services' backs), the break-glass bootstrap brings the administrator back:
        // enabled again, with a new password, and a holder again. From the start of a second,
        // so the disable, the bootstrap and the sign-in after it fall in one second, as they do
        // when one script runs them (a token's time is in seconds).
        let into_second = pim_runtime::db::now_ms().rem_euclid(1000);
        tokio::time::sleep(Duration::from_millis((1000 - into_second) as u64)).await;
        DirectoryServiceClient::new(w.ts.channel.clone())
            .disable_user(authed(&kim_admin, user(&admin_id)))
            .await?;
        for id in [&kim.id, &admin_id] {
            assignment_db
                .execute_unprepared(&format!(
                    "INSERT INTO user_states (principal_id, enabled, as_of) VALUES ('{id}', FALSE, 0) \
                     ON CONFLICT (principal_id) DO UPDATE SET enabled = FALSE"
                ))
                .await?;
        }
        // Assignment's word alone (say, an enable it was not told of) does not do: the
        // directory still has Kim enabled.
        assert!(
            w.ts.suite.bootstrap().await?.is_none(),
            "Kim is enabled in the directory"
        );
        identity_db
            .execute_unprepared(&format!("UPDATE users SET enabled = FALSE WHERE id = '{}'", kim.id))
            .await?;
        let (admin_name, password) =
            anyhow::Context::context(w.ts.suite.bootstrap().await?, "no enabled holder: bootstrapped")?;
        assert_eq!(admin_name, w.ts.admin_user);
        // A token the administrator gets right after (in the disable's second) works.
        let w = World {
            admin: w.ts.sign_in(&admin_name, &password).await?,
            ..w
        };
        eventually(Duration::from_secs(10), "the administrator enabled again", || {
            let db = assignment_db.clone();
            async move { Ok((disabled(db).await? == 2).then_some(())) }
        })
        .await?;
        assert!(w.check(&admin_id, GLOBAL_ADMINISTRATOR).await?.allowed);

        // Enabling a user who is enabled changes nothing, and no event says it did: the
        // administrator's one UserEnabled is the bootstrap's, counted once Kim's enable, which
        // comes after it on the same stream, is there.
        let mut directory = DirectoryServiceClient::new(w.ts.channel.clone());
        directory.enable_user(authed(&w.admin, user(&admin_id))).await?;
        directory.enable_user(authed(&w.admin, user(&kim.id))).await?;
        let enabled = |id: &str| {
            let id = id.to_owned();
            move |events: &[Envelope]| {
                events
                    .iter()
                    .filter_map(|e| ev::UserDisabled::decode(e.data.as_slice()).ok())
                    .filter(|e| e.user_id == id)
                    .count()
            }
        };
        let events = eventually(Duration::from_secs(10), "Kim's enable", || async {
            let events = w.events_on(streams::IDENTITY, "UserEnabled").await?;
            Ok((enabled(&kim.id)(&events) == 1).then_some(events))
        })
        .await?;
        assert_eq!(enabled(&admin_id)(&events), 1, "the bootstrap's alone");
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_apps_batch_their_checks_and_watch_access_change() -> anyhow::Result<()> {
    run(|w| async move {
        let lee = w.user("lee").await?;
        let mut access = AccessServiceClient::new(w.ts.channel.clone());
        let denied = access
            .watch_access_changes(authed(
                &lee.token,
                apb::WatchAccessChangesRequest { ..Default::default() },
            ))
            .await
            .expect_err("Lee reads no one's access");
        assert_eq!(denied.code(), Code::PermissionDenied);
        let mut changes = access
            .watch_access_changes(authed(
                &w.admin,
                apb::WatchAccessChangesRequest { ..Default::default() },
            ))
            .await?
            .into_inner();

        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &lee.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        let granted = tokio::time::timeout(Duration::from_secs(10), changes.message())
            .await??
            .expect("a change");
        assert!(granted.active);
        assert_eq!(
            (granted.principal_id.as_str(), granted.role_id.as_str()),
            (lee.id.as_str(), EXCHANGE_ADMINISTRATOR)
        );

        let ask = |principal: &str, role: &str| apb::CheckAccessRequest {
            principal_id: principal.into(),
            target: Some(apb::check_access_request::Target::RoleId(role.into())),
            scope: "/x/y".into(),
            ..Default::default()
        };
        let results = access
            .batch_check_access(authed(
                &w.admin,
                apb::BatchCheckAccessRequest {
                    checks: vec![ask(&lee.id, EXCHANGE_ADMINISTRATOR), ask(&lee.id, GLOBAL_ADMINISTRATOR)],
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .results;
        assert_eq!(results.iter().map(|r| r.allowed).collect::<Vec<_>>(), vec![true, false]);
        let too_many = apb::BatchCheckAccessRequest {
            checks: (0..1001).map(|_| ask(&lee.id, EXCHANGE_ADMINISTRATOR)).collect(),
            ..Default::default()
        };
        assert_eq!(
            access
                .batch_check_access(authed(&w.admin, too_many))
                .await
                .expect_err("too many")
                .code(),
            Code::InvalidArgument
        );

        w.assignments()
            .create_request(authed(
                &w.admin,
                request(
                    apb::RequestAction::AdminRemove,
                    apb::AssignmentKind::Active,
                    &lee.id,
                    EXCHANGE_ADMINISTRATOR,
                ),
            ))
            .await?;
        // Other changes (none expected here) would come first; the removal must arrive.
        loop {
            let change = tokio::time::timeout(Duration::from_secs(10), changes.message())
                .await??
                .expect("a change");
            if !change.active {
                assert_eq!(change.assignment_id, granted.assignment_id);
                break;
            }
        }

        // Access through a role-assignable group changes with the membership identity holds:
        // added, then removed, each a Group Member change for Lee at the group's scope.
        use pim_proto::identity::v1 as ipb;
        let mut directory = DirectoryServiceClient::new(w.ts.channel.clone());
        let group = w.role_assignable_group("Exchange Admins").await?;
        let membership = ipb::GroupMembershipRequest {
            group_id: group.clone(),
            principal_id: lee.id.clone(),
        };
        directory.add_group_member(authed(&w.admin, membership.clone())).await?;
        directory.remove_group_member(authed(&w.admin, membership)).await?;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let change = tokio::time::timeout(Duration::from_secs(10), changes.message())
                .await??
                .expect("a change");
            if change.principal_id == lee.id {
                seen.push(change);
            }
        }
        for (change, active) in seen.iter().zip([true, false]) {
            assert_eq!(change.active, active, "{change:?}");
            assert_eq!(
                (change.role_id.as_str(), change.scope.clone()),
                (
                    pim_proto::catalogue::GROUP_MEMBER,
                    pim_proto::catalogue::group_scope(&group)
                )
            );
            assert!(change.assignment_id.is_empty() && change.start_time.is_none());
        }

        // A watch ends once its watcher could no longer open it, before it sends another
        // change: a reader whose role was taken away (PERMISSION_DENIED), a reader who signed
        // out (UNAUTHENTICATED).
        let (ann, ola) = (w.user("ann").await?, w.user("ola").await?);
        for reader in [&ann, &ola] {
            w.assignments()
                .create_request(authed(
                    &w.admin,
                    assign_for_an_hour(apb::AssignmentKind::Active, &reader.id, GLOBAL_READER),
                ))
                .await?;
        }
        let watch = |token: String| {
            let mut access = access.clone();
            async move {
                let request = apb::WatchAccessChangesRequest { ..Default::default() };
                anyhow::Ok(access.watch_access_changes(authed(&token, request)).await?.into_inner())
            }
        };
        let (mut ann_watch, mut ola_watch) = (watch(ann.token.clone()).await?, watch(ola.token.clone()).await?);
        pim_proto::identity::v1::auth_service_client::AuthServiceClient::new(w.ts.channel.clone())
            .sign_out(authed(&ola.token, ipb::SignOutRequest::default()))
            .await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                request(
                    apb::RequestAction::AdminRemove,
                    apb::AssignmentKind::Active,
                    &ann.id,
                    GLOBAL_READER,
                ),
            ))
            .await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &lee.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        for (watch, code) in [
            (&mut ann_watch, Code::PermissionDenied),
            (&mut ola_watch, Code::Unauthenticated),
        ] {
            let ended = match tokio::time::timeout(Duration::from_secs(10), watch.message()).await? {
                Ok(Some(change)) => anyhow::bail!("{code:?}: a change after the watcher lost it: {change:?}"),
                Ok(None) => anyhow::bail!("{code:?}: the watch ended without saying why"),
                Err(status) => status,
            };
            assert_eq!(ended.code(), code, "{ended:?}");
        }
        // The permission taken away is a refusal on record, as a refused call is.
        let record = crate::consistency::failure_record(&w, "AccessDenied", &ann.id).await?;
        assert_eq!(record.target_id, "/pim.assignment.v1.AccessService/WatchAccessChanges");

        // A server that stops ends its streams UNAVAILABLE (reconnect), rather than waiting
        // for as long as their clients stay.
        let mut watching = watch(w.admin.clone()).await?;
        let World { ts, clock, admin } = w;
        let ts = tokio::time::timeout(Duration::from_secs(30), ts.restart())
            .await
            .map_err(|_| anyhow::anyhow!("the restart waited on an open stream"))??;
        let ended = tokio::time::timeout(Duration::from_secs(10), watching.message())
            .await?
            .expect_err("the stream ended with the server");
        assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
        Ok(World { ts, clock, admin })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_made_outside_pim_are_detected() -> anyhow::Result<()> {
    run(|w| async move {
        use pim_proto::assignment::v1::reconcile_service_client::ReconcileServiceClient;
        let lee = w.user("lee").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &lee.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;

        let grant = |principal: &str, role: &str, scope: &str| apb::ObservedGrant {
            principal_id: principal.into(),
            role_id: role.into(),
            scope: scope.into(),
            system: String::new(),
        };
        let report = apb::ReportObservedGrantsRequest {
            system: "exchange-online".into(),
            grants: vec![
                grant(&lee.id, EXCHANGE_ADMINISTRATOR, "/tenants/t1"),
                grant("mallory-id", GLOBAL_ADMINISTRATOR, "/"),
            ],
        };
        let mut reconcile = ReconcileServiceClient::new(w.ts.channel.clone());
        let refused = reconcile
            .report_observed_grants(authed(&lee.token, report.clone()))
            .await
            .expect_err("Lee is no connector");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let unmanaged = reconcile
            .report_observed_grants(authed(&w.admin, report.clone()))
            .await?
            .into_inner()
            .unmanaged;
        assert_eq!(unmanaged.len(), 1, "Lee's grant is PIM's; Mallory's is not");
        assert_eq!(
            (unmanaged[0].principal_id.as_str(), unmanaged[0].role_id.as_str()),
            ("mallory-id", GLOBAL_ADMINISTRATOR)
        );
        let detected = w.eventually_events("UnmanagedGrantDetected", 1).await?;
        let e = ev::UnmanagedGrantDetected::decode(detected[0].data.as_slice())?;
        assert_eq!(
            (e.system.as_str(), e.principal_id.as_str()),
            ("exchange-online", "mallory-id")
        );

        // Reported again: still unmanaged, but not announced twice.
        reconcile.report_observed_grants(authed(&w.admin, report)).await?;
        let listed = reconcile
            .list_unmanaged_grants(authed(&w.admin, apb::ListUnmanagedGrantsRequest {}))
            .await?
            .into_inner()
            .grants;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].system, "exchange-online");
        w.tick().await?;
        // Wait for anything still in the outbox, then count.
        eventually(Duration::from_secs(5), "the outbox to drain", || async {
            let n = pim_runtime::events::pending(w.ts.suite.assignment().expect("assignment").assignments_db()).await?;
            Ok((n == 0).then_some(()))
        })
        .await?;
        assert_eq!(w.events("UnmanagedGrantDetected").await?.len(), 1);

        // Kim holds Global Reader there before PIM gives it: unmanaged, until it does.
        let kim = w.user("kim").await?;
        let with_kim = |grants: Vec<apb::ObservedGrant>| apb::ReportObservedGrantsRequest {
            system: "exchange-online".into(),
            grants,
        };
        let kims = || grant(&kim.id, GLOBAL_READER, "/");
        reconcile
            .report_observed_grants(authed(
                &w.admin,
                with_kim(vec![grant("mallory-id", GLOBAL_ADMINISTRATOR, "/"), kims()]),
            ))
            .await?;
        w.eventually_events("UnmanagedGrantDetected", 2).await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &kim.id, GLOBAL_READER),
            ))
            .await?;
        reconcile
            .report_observed_grants(authed(
                &w.admin,
                with_kim(vec![grant("mallory-id", GLOBAL_ADMINISTRATOR, "/"), kims()]),
            ))
            .await?;
        let cleared = w.eventually_events("UnmanagedGrantCleared", 1).await?;
        let e = ev::UnmanagedGrantCleared::decode(cleared[0].data.as_slice())?;
        assert_eq!(
            (e.principal_id.as_str(), e.reason.as_str()),
            (kim.id.as_str(), "managed")
        );

        // Fixed at the source: the next report no longer lists it, and says so once.
        reconcile
            .report_observed_grants(authed(&w.admin, with_kim(vec![])))
            .await?;
        let cleared = w.eventually_events("UnmanagedGrantCleared", 2).await?;
        let e = ev::UnmanagedGrantCleared::decode(cleared[1].data.as_slice())?;
        assert_eq!(
            (e.principal_id.as_str(), e.reason.as_str()),
            ("mallory-id", "unreported")
        );
        assert!(
            reconcile
                .list_unmanaged_grants(authed(&w.admin, apb::ListUnmanagedGrantsRequest {}))
                .await?
                .into_inner()
                .grants
                .is_empty()
        );
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_extend_and_shorten_assignments_within_policy() -> anyhow::Result<()> {
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &lee.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        let change = |action: apb::RequestAction, length_ms: i64| apb::CreateRequestRequest {
            schedule: lasting(length_ms),
            justification: "change window moved".into(),
            ..request(action, apb::AssignmentKind::Active, &lee.id, EXCHANGE_ADMINISTRATOR)
        };
        let now = w.clock.now_ms();
        let extended = w
            .assignments()
            .create_request(authed(&w.admin, change(apb::RequestAction::AdminExtend, 3 * HOUR_MS)))
            .await?
            .into_inner();
        assert_eq!(extended.status, apb::RequestStatus::Provisioned as i32);
        assert_eq!(
            from_timestamp(
                w.check(&lee.id, EXCHANGE_ADMINISTRATOR)
                    .await?
                    .expires_at
                    .as_ref()
                    .expect("ends")
            ),
            now + 3 * HOUR_MS
        );
        let earlier = w
            .assignments()
            .create_request(authed(&w.admin, change(apb::RequestAction::AdminExtend, HOUR_MS)))
            .await
            .expect_err("not an extension");
        assert_eq!(violated_rules(&earlier), vec!["ExpirationRule"]);
        let too_long = w
            .assignments()
            .create_request(authed(
                &w.admin,
                change(apb::RequestAction::AdminExtend, 181 * 24 * HOUR_MS),
            ))
            .await
            .expect_err("over 180 days");
        assert_eq!(violated_rules(&too_long), vec!["ExpirationRule"]);
        w.assignments()
            .create_request(authed(&w.admin, change(apb::RequestAction::AdminUpdate, 30 * 60_000)))
            .await?;
        assert_eq!(
            from_timestamp(
                w.check(&lee.id, EXCHANGE_ADMINISTRATOR)
                    .await?
                    .expires_at
                    .as_ref()
                    .expect("ends")
            ),
            now + 30 * 60_000
        );
        w.eventually_events("ActiveAssignmentUpdated", 2).await?;
        let lees = w
            .assignments()
            .create_request(authed(&lee.token, change(apb::RequestAction::AdminExtend, 3 * HOUR_MS)))
            .await
            .expect_err("not an admin");
        assert_eq!(lees.code(), Code::PermissionDenied);

        // The only permanent Global Administrator cannot be given an end.
        let admin_id = DirectoryServiceClient::new(w.ts.channel.clone())
            .get_user(authed(
                &w.admin,
                ipb::GetUserRequest {
                    user: w.ts.admin_user.clone(),
                },
            ))
            .await?
            .into_inner()
            .id;
        let mut end_admin = change(apb::RequestAction::AdminUpdate, HOUR_MS);
        end_admin.principal_id = admin_id;
        end_admin.role_id = GLOBAL_ADMINISTRATOR.into();
        let refused = w
            .assignments()
            .create_request(authed(&w.admin, end_admin))
            .await
            .expect_err("the last one");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_set_nearest_above_a_scope_applies() -> anyhow::Result<()> {
    run_on_both(|w| async move {
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        let reader = policies.clone();
        let get = |scope: &'static str| {
            let mut policies = reader.clone();
            let admin = w.admin.clone();
            async move {
                anyhow::Ok(
                    policies
                        .get_role_policy(authed(
                            &admin,
                            apb::GetRolePolicyRequest {
                                role_id: EXCHANGE_ADMINISTRATOR.into(),
                                scope: scope.into(),
                            },
                        ))
                        .await?
                        .into_inner(),
                )
            }
        };
        let mut prod = get("/subscriptions/prod").await?;
        assert!(!prod.activation_requires_ticket, "Entra's default: no ticket");
        assert_eq!(prod.set_at, "", "set nowhere: the defaults");
        prod.activation_requires_ticket = true;
        policies
            .update_role_policy(authed(
                &w.admin,
                apb::UpdateRolePolicyRequest {
                    policy: Some(prod),
                    ..Default::default()
                },
            ))
            .await?;
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
            .await?;
        let below = get("/subscriptions/prod/rg1").await?;
        assert!(below.activation_requires_ticket, "inherited from /subscriptions/prod");
        assert_eq!(
            (below.scope.as_str(), below.set_at.as_str()),
            ("/subscriptions/prod/rg1", "/subscriptions/prod"),
            "it says where it is set"
        );
        assert_eq!(get("/subscriptions/prod").await?.set_at, "/subscriptions/prod");
        assert!(!below.approval_required, "the nearer policy wins over the root's");
        let beside = get("/subscriptions/dev").await?;
        assert!(!beside.activation_requires_ticket, "a sibling scope gets the root's");
        assert!(beside.approval_required);

        // Activation reads the same policies (with the eligibility, in one query).
        let kim = w.user("kim").await?;
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        let token = w.stepped_up(&kim)?;
        let at = |scope: &str, ticket: bool| {
            let mut r = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "incident 42");
            r.scope = scope.into();
            r.ticket = ticket.then(|| pim_proto::common::v1::Ticket {
                system: "ServiceNow".into(),
                number: "INC42".into(),
            });
            authed(&token, r)
        };
        let refused = w
            .assignments()
            .create_request(at("/subscriptions/prod/rg1", false))
            .await
            .expect_err("the nearer policy wants a ticket");
        assert_eq!(violated_rules(&refused), vec!["TicketingRule"]);
        let active = w
            .assignments()
            .create_request(at("/subscriptions/prod/rg1", true))
            .await?
            .into_inner();
        assert_eq!(
            active.status,
            apb::RequestStatus::Provisioned as i32,
            "no approval there"
        );
        let waiting = w
            .assignments()
            .create_request(at("/subscriptions/dev", false))
            .await?
            .into_inner();
        assert_eq!(waiting.status, apb::RequestStatus::PendingApproval as i32);
        let again = w
            .assignments()
            .create_request(at("/subscriptions/dev", false))
            .await
            .expect_err("one is waiting already");
        assert_eq!(again.code(), Code::AlreadyExists);
        assert!(again.message().contains("already waiting"), "{}", again.message());
        let mine = w
            .assignments()
            .list_requests(authed(
                &w.admin,
                apb::ListRequestsRequest {
                    principal_id: kim.id.clone(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .requests;
        let activations = mine
            .iter()
            .filter(|r| r.action == apb::RequestAction::SelfActivate as i32)
            .count();
        assert_eq!(activations, 2, "the refused ones left nothing behind");
        Ok(w)
    })
    .await
}

/// Rules no other test guarded, each on both backends: eligibility at a scope reaches down,
/// never up; a justification of spaces is no justification; a service principal is never
/// made eligible (active assignments only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_reaches_down_not_up_justifications_are_words_and_apps_are_never_eligible() -> anyhow::Result<()> {
    run_on_both(|w| async move {
        let lee = w.user("lee").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    scope: "/subscriptions/s1".into(),
                    ..request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Eligible,
                        &lee.id,
                        EXCHANGE_ADMINISTRATOR,
                    )
                },
            ))
            .await?;
        let at = |scope: &str, justification: &str| apb::CreateRequestRequest {
            scope: scope.into(),
            ..activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, justification)
        };
        let token = w.stepped_up(&lee)?;
        let above = w
            .assignments()
            .create_request(authed(&token, at("/", "mailbox migration")))
            .await
            .expect_err("eligible below /, not at /");
        assert_eq!(violated_rules(&above), vec!["EligibilityRule"]);
        let blank = w
            .assignments()
            .create_request(authed(&token, at("/subscriptions/s1/resourceGroups/rg", " \t  ")))
            .await
            .expect_err("spaces justify nothing");
        assert_eq!(violated_rules(&blank), vec!["JustificationRule"]);
        let below = w
            .assignments()
            .create_request(authed(
                &token,
                at("/subscriptions/s1/resourceGroups/rg", "mailbox migration"),
            ))
            .await?
            .into_inner();
        assert_eq!(below.status, apb::RequestStatus::Provisioned as i32);

        let created = DirectoryServiceClient::new(w.ts.channel.clone())
            .create_service_principal(authed(
                &w.admin,
                ipb::CreateServicePrincipalRequest {
                    display_name: "bot".into(),
                },
            ))
            .await?
            .into_inner();
        let bot_secret = created.client_secret;
        let bot = created.service_principal.expect("created");
        let eligible = w
            .assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Eligible, &bot.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await
            .expect_err("a service principal is never eligible");
        assert_eq!(eligible.code(), Code::FailedPrecondition);
        assert_eq!(violated_rules(&eligible), vec!["EligibilityRule"]);
        // Nor through a role-assignable group it is a member of: what an app holds through
        // one is the group's active roles, never an eligibility it could activate.
        let apps = w.role_assignable_group("apps").await?;
        DirectoryServiceClient::new(w.ts.channel.clone())
            .add_group_member(authed(
                &w.admin,
                ipb::GroupMembershipRequest {
                    group_id: apps.clone(),
                    principal_id: bot.id.clone(),
                },
            ))
            .await?;
        w.make_principal_eligible(&apps, EXCHANGE_ADMINISTRATOR).await?;
        let bot_token = pim_proto::identity::v1::auth_service_client::AuthServiceClient::new(w.ts.channel.clone())
            .sign_in_service_principal(ipb::SignInServicePrincipalRequest {
                client_id: bot.id.clone(),
                client_secret: bot_secret,
            })
            .await?
            .into_inner()
            .access_token;
        let through_group = w
            .assignments()
            .create_request(authed(
                &bot_token,
                activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "nightly run"),
            ))
            .await
            .expect_err("an app activates nothing");
        assert_eq!(violated_rules(&through_group), vec!["EligibilityRule"]);
        assert!(through_group.message().contains("never eligible"), "{through_group:?}");
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &bot.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        Ok(w)
    })
    .await
}

/// A user the directory disabled holds nothing: CheckAccess answers no for roles still
/// assigned to them, and the activation they asked for that waited for approval is canceled
/// (no approver can grant it now). Enabled again, their assignments count again. On both
/// deployments: with Redis, assignment hears of it over the identity stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_holds_nothing_and_what_they_asked_for_ends() -> anyhow::Result<()> {
    const SECURITY_READER: &str = "5d6b6bb7-de71-4623-b4af-96380a352509";
    run_on_both(|w| async move {
        let dan = w.user("dan").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &dan.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        w.make_eligible(&dan, SECURITY_READER).await?;
        w.set_policy(SECURITY_READER, |p| p.approval_required = true).await?;
        let asked = w
            .assignments()
            .create_request(authed(
                &w.stepped_up(&dan)?,
                activation(SECURITY_READER, HOUR_MS, "rota"),
            ))
            .await?
            .into_inner();
        assert_eq!(asked.status, apb::RequestStatus::PendingApproval as i32);
        assert!(w.check(&dan.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        // Dan asks for more time too: a disable ends that request as well.
        let more = w
            .assignments()
            .create_request(authed(
                &dan.token,
                apb::CreateRequestRequest {
                    schedule: lasting(2 * HOUR_MS),
                    justification: "the migration slipped".into(),
                    ..request(
                        apb::RequestAction::SelfExtend,
                        apb::AssignmentKind::Active,
                        "",
                        EXCHANGE_ADMINISTRATOR,
                    )
                },
            ))
            .await?
            .into_inner();
        assert_eq!(more.status, apb::RequestStatus::PendingApproval as i32);
        // An internal app that mirrors access from the changes PIM pushes.
        let mut watched = AccessServiceClient::new(w.ts.channel.clone())
            .watch_access_changes(authed(&w.admin, apb::WatchAccessChangesRequest::default()))
            .await?
            .into_inner();
        // A grant that starts tomorrow is told when made; a disable ends it too.
        let mut tomorrow = assign_for_an_hour(apb::AssignmentKind::Active, &dan.id, GLOBAL_READER);
        tomorrow.schedule.as_mut().expect("schedule").start_time =
            Some(pim_runtime::db::to_timestamp(w.clock.now_ms() + 24 * HOUR_MS));
        w.assignments().create_request(authed(&w.admin, tomorrow)).await?;
        changes_of(&mut watched, &dan.id, &[(GLOBAL_READER, true)]).await?;

        let mut directory = DirectoryServiceClient::new(w.ts.channel.clone());
        let user = || ipb::GetUserRequest { user: dan.id.clone() };
        directory.disable_user(authed(&w.admin, user())).await?;
        eventually(Duration::from_secs(10), "a disabled user holds nothing", || async {
            Ok((!w.check(&dan.id, EXCHANGE_ADMINISTRATOR).await?.allowed).then_some(()))
        })
        .await?;
        changes_of(
            &mut watched,
            &dan.id,
            &[(EXCHANGE_ADMINISTRATOR, false), (GLOBAL_READER, false)],
        )
        .await?;
        w.eventually_status(&w.admin, &asked.id, apb::RequestStatus::Canceled)
            .await?;
        w.eventually_status(&w.admin, &more.id, apb::RequestStatus::Canceled)
            .await?;
        // No role is given while disabled, and a role-assignable group joined meanwhile is not
        // announced as held (it is not): a grant to someone else comes next, nothing of Dan's.
        let refused = w
            .assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &dan.id, SECURITY_READER),
            ))
            .await
            .expect_err("a disabled user is given nothing");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let group = w.role_assignable_group("Exchange Admins").await?;
        directory
            .add_group_member(authed(
                &w.admin,
                ipb::GroupMembershipRequest {
                    group_id: group.clone(),
                    principal_id: dan.id.clone(),
                },
            ))
            .await?;
        let lee = w.user("lee").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &lee.id, SECURITY_READER),
            ))
            .await?;
        changes_of(&mut watched, &lee.id, &[(SECURITY_READER, true)]).await?;

        directory.enable_user(authed(&w.admin, user())).await?;
        eventually(
            Duration::from_secs(10),
            "enabled, the assignment counts again",
            || async { Ok(w.check(&dan.id, EXCHANGE_ADMINISTRATOR).await?.allowed.then_some(())) },
        )
        .await?;
        changes_of(
            &mut watched,
            &dan.id,
            &[
                (EXCHANGE_ADMINISTRATOR, true),
                (GLOBAL_READER, true),
                (pim_proto::catalogue::GROUP_MEMBER, true),
            ],
        )
        .await?;
        Ok(w)
    })
    .await
}

/// A disable this replica never heard of (another replica's consumer recorded it while this
/// one's tail lagged, say) reaches its memory all the same: who is disabled is read again
/// from the database every few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_recorded_without_an_event_here_still_reaches_memory() -> anyhow::Result<()> {
    run(|w| async move {
        let dan = w.user("dan").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &dan.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        assert!(w.check(&dan.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        let url = w.ts.database_url(pim::ServiceName::Assignment).expect("its database");
        pim_runtime::db::exec(
            &pim_runtime::db::connect(url).await?,
            "INSERT INTO user_states (principal_id, enabled, told, as_of) VALUES ($1, FALSE, TRUE, $2)",
            vec![dan.id.clone().into(), w.clock.now_ms().into()],
        )
        .await?;
        eventually(
            Duration::from_secs(15),
            "the recorded disable to reach memory",
            || async { Ok((!w.check(&dan.id, EXCHANGE_ADMINISTRATOR).await?.allowed).then_some(())) },
        )
        .await?;
        Ok(w)
    })
    .await
}

/// Identity's word that a disable is committed (`ApplyPrincipalDisabled`) is taken only from
/// those who manage users, only for a principal the directory holds disabled, and never as of
/// a time later than assignment asked: an enable afterwards always counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_told_directly_never_outranks_the_enable_after_it() -> anyhow::Result<()> {
    run(|w| async move {
        let dan = w.user("dan").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign_for_an_hour(apb::AssignmentKind::Active, &dan.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        let told = |as_of: i64| apb::ApplyPrincipalDisabledRequest {
            principal_id: dan.id.clone(),
            as_of: Some(pim_runtime::db::to_timestamp(as_of)),
        };
        let in_an_hour = pim_runtime::db::now_ms() + 3_600_000;
        let refused = w
            .assignments()
            .apply_principal_disabled(authed(&dan.token, told(in_an_hour)))
            .await
            .expect_err("Dan manages nobody");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        let enabled = w
            .assignments()
            .apply_principal_disabled(authed(&w.admin, told(in_an_hour)))
            .await
            .expect_err("the directory holds Dan enabled");
        assert_eq!(enabled.code(), Code::FailedPrecondition, "{enabled:?}");
        assert!(w.check(&dan.id, EXCHANGE_ADMINISTRATOR).await?.allowed);

        let mut directory = DirectoryServiceClient::new(w.ts.channel.clone());
        let user = || ipb::GetUserRequest { user: dan.id.clone() };
        directory.disable_user(authed(&w.admin, user())).await?;
        assert!(!w.check(&dan.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        // Told again, stamped an hour ahead: taken as of the moment assignment asked.
        w.assignments()
            .apply_principal_disabled(authed(&w.admin, told(in_an_hour)))
            .await?;
        directory.enable_user(authed(&w.admin, user())).await?;
        eventually(Duration::from_secs(10), "Dan's role back once enabled", || async {
            Ok(w.check(&dan.id, EXCHANGE_ADMINISTRATOR).await?.allowed.then_some(()))
        })
        .await?;
        Ok(w)
    })
    .await
}

/// Waits (up to 10 s) until a watcher is told of each of `principal`'s `(role, active)`
/// changes, in any order: none of the roles told otherwise meanwhile, and nobody else
/// granted anything.
async fn changes_of(
    watched: &mut tonic::Streaming<apb::AccessChange>,
    principal: &str,
    expected: &[(&str, bool)],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut waiting: Vec<(&str, bool)> = expected.to_vec();
    while !waiting.is_empty() {
        let change = tokio::time::timeout_at(deadline, watched.message())
            .await
            .map_err(|_| anyhow::anyhow!("the watcher was not told of {waiting:?} for {principal}"))??
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        anyhow::ensure!(
            change.principal_id == principal || !change.active,
            "told of {change:?} before {waiting:?} for {principal}"
        );
        let told = expected.iter().find(|(role, _)| *role == change.role_id);
        if let Some((role, active)) = told.filter(|_| change.principal_id == principal) {
            anyhow::ensure!(*active == change.active, "told {change:?}, expected active={active}");
            waiting.retain(|(waited, _)| waited != role);
        }
    }
    Ok(())
}
