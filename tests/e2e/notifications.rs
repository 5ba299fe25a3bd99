//! Who hears of what, on PostgreSQL + Redis: assignment works out the recipients from the
//! role's notification rules after each change (`NotificationsDue` on its stream), and audit
//! records it. Approvers named as a group hear of an activation waiting for them (the
//! requester is never named; audit, which reaches a group through its members, excepts
//! them there too: `store_tests::deliveries::notification_mail_is_queued_once_per_recipient_and_claimed_once`); administrators and the assignee hear of an activation;
//! a rule that says none is kept; turning the administrators' alert off is weakening.

use prost::Message;

use std::time::Duration;

use pim_e2e::{authed, eventually};
use pim_proto::common::v1::{ApprovalStageSettings, NotificationEvent, NotificationParty, NotificationRule};
use pim_proto::events::v1 as ev;

use pim_proto::assignment::v1 as apb;

use crate::activation::{EXCHANGE_ADMINISTRATOR, HOUR_MS, User, World, activation};

/// PostgreSQL + Redis with notifications on.
async fn notifying() -> anyhow::Result<World> {
    let clock = pim_runtime::clock::ManualClock::starting_now();
    let ts = pim_e2e::TestSuite::postgres_with(Some(clock.clone()), &[("PIM_NOTIFICATIONS", "on".to_owned())]).await?;
    let admin = ts.admin_token().await?;
    Ok(World { ts, clock, admin })
}

/// Lee, made eligible, asks for an hour of Exchange Administrator.
async fn ask(w: &World, lee: &User) -> anyhow::Result<apb::AssignmentRequest> {
    w.make_eligible(lee, EXCHANGE_ADMINISTRATOR).await?;
    Ok(w.assignments()
        .create_request(authed(
            &w.stepped_up(lee)?,
            activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "mailbox migration"),
        ))
        .await?
        .into_inner())
}

/// Every NotificationsDue on the assignment stream so far.
async fn dues(w: &World) -> anyhow::Result<Vec<ev::NotificationsDue>> {
    Ok(w.events("NotificationsDue")
        .await?
        .iter()
        .map(|e| ev::NotificationsDue::decode(e.data.as_slice()))
        .collect::<Result<_, _>>()?)
}

fn party(notice: &ev::Notice) -> NotificationParty {
    NotificationParty::try_from(notice.party).unwrap_or(NotificationParty::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_follow_the_rules_and_never_ask_requesters_to_approve_themselves() -> anyhow::Result<()> {
    let world = notifying().await?;
    let result = async {
        let w = &world;
        let (lee, ann, bob) = (w.user("lee").await?, w.user("ann").await?, w.user("bob").await?);
        let approvers = w.group("approvers", &[&ann, &lee]).await?;
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| {
            p.approval_required = true;
            p.approval_stages = vec![ApprovalStageSettings {
                approver_ids: vec![approvers.clone()],
                approvals_required: 1,
                ..Default::default()
            }];
            p.notification_rules = vec![NotificationRule {
                event: NotificationEvent::EligibleAssignment as i32,
                party: NotificationParty::Assignee as i32,
                default_recipients: false,
                additional_recipients: vec!["iam@example.com".into()],
                critical_only: false,
            }];
        })
        .await?;
        let request = ask(w, &lee).await?;

        // The bootstrap's own grant was announced too: wait for the request's.
        let dues = eventually(Duration::from_secs(10), "the request's notice", || async {
            let dues = dues(w).await?;
            Ok(dues
                .iter()
                .any(|d| d.happening == ev::Happening::AwaitingApproval as i32)
                .then_some(dues))
        })
        .await?;
        let eligible = dues
            .iter()
            .find(|d| d.event == NotificationEvent::EligibleAssignment as i32 && d.principal_id == lee.id)
            .expect("the eligibility's notice");
        let assignee = eligible
            .notices
            .iter()
            .find(|n| party(n) == NotificationParty::Assignee)
            .expect("the assignee's rule");
        assert!(assignee.principal_ids.is_empty(), "the rule says not lee himself");
        assert_eq!(assignee.emails, ["iam@example.com"], "but this address");
        let admins = eligible
            .notices
            .iter()
            .find(|n| party(n) == NotificationParty::Admin)
            .expect("the administrators' alert, by default");
        assert!(!admins.principal_ids.is_empty(), "the break-glass Global Administrator");

        let waiting = dues
            .iter()
            .find(|d| d.happening == ev::Happening::AwaitingApproval as i32)
            .expect("the activation waiting for approval");
        assert_eq!(waiting.request_id, request.id);
        assert_eq!(waiting.justification, "mailbox migration");
        assert_eq!(waiting.notices.len(), 1, "only the approvers hear of a request");
        let asked = &waiting.notices[0];
        assert_eq!(party(asked), NotificationParty::Approver);
        assert!(asked.critical, "it asks for action");
        assert!(
            asked.principal_ids.contains(&approvers),
            "the group: audit reaches its members"
        );
        assert!(!asked.principal_ids.contains(&lee.id), "never the requester");
        assert!(!asked.principal_ids.contains(&bob.id));

        // Turning the administrators' alert off lowers oversight: marked as weakening.
        let updated = w
            .set_policy(EXCHANGE_ADMINISTRATOR, |p| {
                p.notification_rules.push(NotificationRule {
                    event: NotificationEvent::Activation as i32,
                    party: NotificationParty::Admin as i32,
                    default_recipients: false,
                    ..Default::default()
                });
            })
            .await?;
        assert_eq!(updated.notification_rules.len(), 2);
        let changed = w.eventually_events("PolicyUpdated", 2).await?;
        let last = ev::PolicyUpdated::decode(changed.last().expect("an update").data.as_slice())?;
        let rules = last
            .changes
            .iter()
            .find(|c| c.setting == "notification_rules")
            .expect("the rules' change");
        assert!(rules.weakens && last.weakened, "{rules:?}");
        assert!(
            rules.after.contains("activation/admin: not the party itself"),
            "{}",
            rules.after
        );
        anyhow::Ok(())
    }
    .await;
    world.ts.stop().await?;
    result
}

/// An activation cut short because its eligibility was moved earlier: its holder is told,
/// with the new end and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_hears_that_an_activation_now_ends_earlier() -> anyhow::Result<()> {
    use pim_runtime::clock::Clock;
    let world = notifying().await?;
    let result = async {
        let w = &world;
        let lee = w.user("lee").await?;
        ask(w, &lee).await?;
        let shortened_to = w.clock.now_ms() + 30 * 60_000;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: crate::activation::lasting(30 * 60_000),
                    justification: "migration done early".into(),
                    ..crate::activation::request(
                        apb::RequestAction::AdminUpdate,
                        apb::AssignmentKind::Eligible,
                        &lee.id,
                        EXCHANGE_ADMINISTRATOR,
                    )
                },
            ))
            .await?;
        let told = eventually(Duration::from_secs(10), "the shortened activation's notice", || async {
            Ok(dues(w)
                .await?
                .into_iter()
                .find(|d| d.happening == ev::Happening::Shortened as i32))
        })
        .await?;
        assert_eq!(
            (told.principal_id.as_str(), told.role_id.as_str(), told.reason.as_str()),
            (lee.id.as_str(), EXCHANGE_ADMINISTRATOR, "eligibility shortened")
        );
        assert_eq!(
            told.end_time.as_ref().map(pim_runtime::db::from_timestamp),
            Some(shortened_to)
        );
        assert_eq!(told.justification, "mailbox migration", "the activation's request");
        let assignee = told
            .notices
            .iter()
            .find(|n| party(n) == NotificationParty::Assignee)
            .expect("the holder's notice");
        assert_eq!(assignee.principal_ids, std::slice::from_ref(&lee.id));
        anyhow::Ok(())
    }
    .await;
    world.ts.stop().await?;
    result
}

/// An activation nobody decided in time is escalated: the escalation approvers are told, as
/// the first ones were, the requester still not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_approvers_are_told_when_a_request_reaches_them() -> anyhow::Result<()> {
    let world = notifying().await?;
    let result = async {
        let w = &world;
        let (lee, ann, bob) = (w.user("lee").await?, w.user("ann").await?, w.user("bob").await?);
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| {
            p.approval_required = true;
            p.approval_stages = vec![ApprovalStageSettings {
                approver_ids: vec![ann.id.clone()],
                approvals_required: 1,
                escalation_approver_ids: vec![bob.id.clone(), lee.id.clone()],
                escalate_after: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                ..Default::default()
            }];
        })
        .await?;
        let request = ask(w, &lee).await?;
        w.approval_of(&request.id).await?;
        w.clock.advance(Duration::from_secs(600));
        let approvals = w.ts.suite.approval().expect("approval runs here").approvals();
        // Escalated by this pass, or by the service's own timer if it came first.
        approvals.run_timers_once().await?;
        let escalated = eventually(Duration::from_secs(10), "the escalation's notice", || async {
            let dues = dues(w).await?;
            Ok(dues
                .into_iter()
                .find(|d| d.request_id == request.id && d.reason.starts_with("escalated")))
        })
        .await?;
        let asked = &escalated.notices[0];
        assert_eq!(party(asked), NotificationParty::Approver);
        assert_eq!(
            asked.principal_ids,
            std::slice::from_ref(&bob.id),
            "bob, never the requester"
        );
        Ok(())
    }
    .await;
    world.ts.stop().await?;
    result
}

/// A request to extend or renew an assignment waits for approvers as an activation does, and
/// they are asked as they are for one (the activation's approver rule): the notice says what
/// is asked. A denial is told to the requester.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_are_asked_to_decide_an_extension_and_its_denial_is_told() -> anyhow::Result<()> {
    use apb::{AssignmentKind as K, RequestAction as A};
    let world = notifying().await?;
    let result = async {
        let w = &world;
        let (lee, ann) = (w.user("lee").await?, w.user("ann").await?);
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approver_ids = vec![ann.id.clone()])
            .await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: crate::activation::lasting(24 * HOUR_MS),
                    justification: "project".into(),
                    ..crate::activation::request(A::AdminAssign, K::Eligible, &lee.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?;
        let extend = w
            .assignments()
            .create_request(authed(
                &lee.token,
                apb::CreateRequestRequest {
                    schedule: crate::activation::lasting(10 * 24 * HOUR_MS),
                    justification: "the project runs longer".into(),
                    ..crate::activation::request(A::SelfExtend, K::Eligible, "", EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?
            .into_inner();
        let asked = eventually(Duration::from_secs(10), "the approvers asked", || async {
            let dues = dues(w).await?;
            Ok(dues
                .into_iter()
                .find(|d| d.request_id == extend.id && d.happening() == ev::Happening::AwaitingApproval))
        })
        .await?;
        assert_eq!(
            (asked.request_action(), asked.assignment_kind()),
            (A::SelfExtend, K::Eligible)
        );
        assert_eq!(party(&asked.notices[0]), NotificationParty::Approver);
        assert_eq!(asked.notices[0].principal_ids, std::slice::from_ref(&ann.id));
        let approval = w.approval_of(&extend.id).await?;
        w.approvals()
            .decide(authed(
                &w.stepped_up(&ann)?,
                pim_proto::approval::v1::DecideRequest {
                    approval_id: approval.id,
                    decision: pim_proto::approval::v1::Decision::Deny as i32,
                    justification: "the project ends on time".into(),
                },
            ))
            .await?;
        let denied = eventually(Duration::from_secs(10), "the denial told", || async {
            let dues = dues(w).await?;
            Ok(dues
                .into_iter()
                .find(|d| d.request_id == extend.id && d.happening() == ev::Happening::Denied))
        })
        .await?;
        assert_eq!(party(&denied.notices[0]), NotificationParty::Assignee);
        assert!(denied.reason.contains("the project ends on time"), "{denied:?}");
        Ok(())
    }
    .await;
    world.ts.stop().await?;
    result
}

/// Access to a group waiting for its default approvers asks the group's owners: those who own
/// it through PIM by id, and its owners in the directory through `owners_of` (audit reaches
/// them: `store_tests::deliveries::a_groups_owners_are_mailed_a_notice_for_its_approvers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_owners_are_asked_to_approve_access_to_it() -> anyhow::Result<()> {
    use apb::{AssignmentKind as K, RequestAction as A};
    use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
    use pim_proto::catalogue::{GROUP_MEMBER, GROUP_OWNER, group_scope};
    let world = notifying().await?;
    let result = async {
        let w = &world;
        let (lee, ann) = (w.user("lee").await?, w.user("ann").await?);
        let group = w.role_assignable_group("mail team").await?;
        let scope = group_scope(&group);
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        let mut policy = policies
            .get_role_policy(authed(
                &w.admin,
                apb::GetRolePolicyRequest {
                    role_id: GROUP_MEMBER.into(),
                    scope: scope.clone(),
                },
            ))
            .await?
            .into_inner();
        policy.approval_required = true;
        policies
            .update_role_policy(authed(
                &w.admin,
                apb::UpdateRolePolicyRequest {
                    policy: Some(policy),
                    ..Default::default()
                },
            ))
            .await?;
        for (who, role, kind) in [(&ann, GROUP_OWNER, K::Active), (&lee, GROUP_MEMBER, K::Eligible)] {
            w.assignments()
                .create_request(authed(
                    &w.admin,
                    apb::CreateRequestRequest {
                        scope: scope.clone(),
                        schedule: crate::activation::lasting(24 * HOUR_MS),
                        justification: "mail team".into(),
                        ..crate::activation::request(A::AdminAssign, kind, &who.id, role)
                    },
                ))
                .await?;
        }
        let asked = w
            .assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                apb::CreateRequestRequest {
                    scope: scope.clone(),
                    ..activation(GROUP_MEMBER, HOUR_MS, "mailbox moves")
                },
            ))
            .await?
            .into_inner();
        assert_eq!(asked.status, apb::RequestStatus::PendingApproval as i32);
        let due = eventually(Duration::from_secs(10), "the owners asked", || async {
            let dues = dues(w).await?;
            Ok(dues
                .into_iter()
                .find(|d| d.request_id == asked.id && d.happening() == ev::Happening::AwaitingApproval))
        })
        .await?;
        let notice = &due.notices[0];
        assert_eq!(party(notice), NotificationParty::Approver);
        assert_eq!(
            notice.owners_of,
            std::slice::from_ref(&group),
            "its owners in the directory"
        );
        assert!(
            notice.principal_ids.contains(&ann.id),
            "its owner through PIM: {notice:?}"
        );
        assert!(!notice.principal_ids.contains(&lee.id), "never the requester");
        Ok(())
    }
    .await;
    world.ts.stop().await?;
    result
}

/// Every NotificationsDue approval published (access reviews') so far.
async fn review_dues(w: &World) -> anyhow::Result<Vec<ev::NotificationsDue>> {
    Ok(w.events_on(pim_runtime::events::streams::APPROVAL, "NotificationsDue")
        .await?
        .iter()
        .map(|e| ev::NotificationsDue::decode(e.data.as_slice()))
        .collect::<Result<_, _>>()?)
}

fn hours(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: n * 3600,
        nanos: 0,
    })
}

/// A second stage's approvers are asked when the first approves; a stage's approvers are
/// reminded half through its time, the requester never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_stage_is_asked_when_it_starts_and_reminded_half_through() -> anyhow::Result<()> {
    use pim_proto::approval::v1 as appb;
    let world = notifying().await?;
    let result = async {
        let w = &world;
        let (lee, ann, bob) = (w.user("lee").await?, w.user("ann").await?, w.user("bob").await?);
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| {
            p.approval_required = true;
            p.approval_stages = [&ann, &bob]
                .iter()
                .map(|approver| ApprovalStageSettings {
                    approver_ids: vec![approver.id.clone()],
                    approvals_required: 1,
                    timeout: hours(4),
                    ..Default::default()
                })
                .collect();
        })
        .await?;
        let request = ask(w, &lee).await?;
        let approval = w.approval_of(&request.id).await?;
        w.approvals()
            .decide(authed(
                &ann.token,
                appb::DecideRequest {
                    approval_id: approval.id.clone(),
                    decision: appb::Decision::Approve as i32,
                    justification: "checked with Lee's manager".into(),
                },
            ))
            .await?;
        let request = &request;
        let told = |happening: ev::Happening| async move {
            eventually(Duration::from_secs(10), "the stage's notice", || async {
                Ok(dues(w)
                    .await?
                    .into_iter()
                    // Not the first stage's notice, which gives no reason.
                    .find(|d| d.request_id == request.id && d.happening == happening as i32 && !d.reason.is_empty()))
            })
            .await
        };
        let second = told(ev::Happening::AwaitingApproval).await?;
        assert!(
            second.reason.starts_with("the previous stage approved"),
            "{}",
            second.reason
        );
        assert_eq!(
            second.notices[0].principal_ids,
            std::slice::from_ref(&bob.id),
            "bob, not ann again"
        );

        w.clock.advance(Duration::from_secs(2 * 3600));
        // Reminded by this pass, or by the service's own timer if it came first.
        let approvals = w.ts.suite.approval().expect("approval runs here").approvals();
        approvals.run_timers_once().await?;
        let reminder = told(ev::Happening::ApprovalReminder).await?;
        let asked = &reminder.notices[0];
        assert_eq!(party(asked), NotificationParty::Approver);
        assert!(asked.critical);
        assert_eq!(
            asked.principal_ids,
            std::slice::from_ref(&bob.id),
            "the stage's approver, not lee"
        );
        assert!(reminder.reason.starts_with("reminder"), "{}", reminder.reason);
        Ok(())
    }
    .await;
    world.ts.stop().await?;
    result
}

/// An access review's reviewers hear that it started, with how many items wait, and are
/// reminded half through it; in a self-review each holder hears too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_hear_that_a_review_started_and_are_reminded_half_through() -> anyhow::Result<()> {
    use pim_proto::approval::v1 as appb;
    let world = notifying().await?;
    let result = async {
        let w = &world;
        let (lee, ann) = (w.user("lee").await?, w.user("ann").await?);
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        // The review snapshots what approval has seen: the break-glass administrator and lee.
        w.approval_sees(2, 0).await?;
        let review = appb::access_review_service_client::AccessReviewServiceClient::new(w.ts.channel.clone())
            .create_review(authed(
                &w.admin,
                appb::CreateReviewRequest {
                    review: Some(appb::AccessReview {
                        name: "Exchange admins, Q4".into(),
                        role_id: EXCHANGE_ADMINISTRATOR.into(),
                        scope: "/".into(),
                        review_scope: appb::ReviewScope::Eligible as i32,
                        reviewer_ids: vec![ann.id.clone()],
                        self_review: true,
                        duration: hours(48),
                        ..Default::default()
                    }),
                },
            ))
            .await?
            .into_inner();
        let told = |happening: ev::Happening| {
            let review_id = review.id.clone();
            async move {
                eventually(Duration::from_secs(10), "the reviewers' notice", || async {
                    Ok(review_dues(w)
                        .await?
                        .into_iter()
                        .find(|d| d.review_id == review_id && d.happening == happening as i32))
                })
                .await
            }
        };
        let started = told(ev::Happening::ReviewStarted).await?;
        assert_eq!(started.review_name, "Exchange admins, Q4");
        assert_eq!(started.undecided_items, 1, "lee's eligibility");
        let reviewers = &started.notices[0];
        assert_eq!(party(reviewers), NotificationParty::Reviewer);
        let mut expected = vec![ann.id.clone(), lee.id.clone()];
        expected.sort();
        assert_eq!(reviewers.principal_ids, expected, "ann, and lee for his own");

        w.clock.advance(Duration::from_secs(24 * 3600));
        let approvals = w.ts.suite.approval().expect("approval runs here").approvals();
        approvals.run_review_timers_once().await?;
        let reminded = told(ev::Happening::ReviewReminder).await?;
        assert_eq!(reminded.undecided_items, 1);
        assert_eq!(reminded.notices[0].principal_ids, expected);
        Ok(())
    }
    .await;
    world.ts.stop().await?;
    result
}

/// A review's own switches, as Entra's: with mail notifications off its reviewers hear
/// nothing when it starts (reminders are their own switch); with reminders off they hear that
/// it started but are not reminded. (Each absence is read after a later review's notice,
/// published after it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_with_mail_or_reminders_off_tells_its_reviewers_nothing_of_that() -> anyhow::Result<()> {
    use pim_proto::approval::v1 as appb;
    let world = notifying().await?;
    let result = async {
        let w = &world;
        let (lee, ann) = (w.user("lee").await?, w.user("ann").await?);
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        w.approval_sees(2, 0).await?;
        let create = |name: &'static str, mail_off: bool, reminders_off: bool| {
            let ann = ann.id.clone();
            async move {
                Ok::<_, anyhow::Error>(
                    appb::access_review_service_client::AccessReviewServiceClient::new(w.ts.channel.clone())
                        .create_review(authed(
                            &w.admin,
                            appb::CreateReviewRequest {
                                review: Some(appb::AccessReview {
                                    name: name.into(),
                                    role_id: EXCHANGE_ADMINISTRATOR.into(),
                                    scope: "/".into(),
                                    review_scope: appb::ReviewScope::Eligible as i32,
                                    reviewer_ids: vec![ann],
                                    duration: hours(48),
                                    mail_notifications_disabled: mail_off,
                                    reminders_disabled: reminders_off,
                                    ..Default::default()
                                }),
                            },
                        ))
                        .await?
                        .into_inner(),
                )
            }
        };
        let told = |review_id: String, happening: ev::Happening| async move {
            eventually(Duration::from_secs(10), "a reviewers' notice", || async {
                Ok(review_dues(w)
                    .await?
                    .into_iter()
                    .find(|d| d.review_id == review_id && d.happening == happening as i32))
            })
            .await
        };
        let quiet = create("quiet", true, false).await?;
        assert!(quiet.mail_notifications_disabled, "the switch is kept");
        let no_reminders = create("no reminders", false, true).await?;
        told(no_reminders.id.clone(), ev::Happening::ReviewStarted).await?;
        let heard = |id: &str, dues: &[ev::NotificationsDue]| dues.iter().filter(|d| d.review_id == id).count();
        assert_eq!(
            heard(&quiet.id, &review_dues(w).await?),
            0,
            "mail off: no word that it started"
        );

        w.clock.advance(Duration::from_secs(24 * 3600));
        let approvals = w.ts.suite.approval().expect("approval runs here").approvals();
        approvals.run_review_timers_once().await?;
        let later = create("later", false, false).await?;
        told(later.id.clone(), ev::Happening::ReviewStarted).await?;
        let dues = review_dues(w).await?;
        let reminded_only = dues.iter().filter(|d| d.review_id == quiet.id).collect::<Vec<_>>();
        assert!(
            reminded_only.len() == 1 && reminded_only[0].happening == ev::Happening::ReviewReminder as i32,
            "mail off, reminders on: only the reminder"
        );
        assert_eq!(heard(&no_reminders.id, &dues), 1, "reminders off: only that it started");
        Ok(())
    }
    .await;
    world.ts.stop().await?;
    result
}
