//! Who hears of what, on PostgreSQL + Redis: assignment works out the recipients from the
//! role's notification rules after each change (`NotificationsDue` on its stream), and audit
//! records it. Approvers named as a group hear of an activation waiting for them (the
//! requester is never named; audit, which reaches a group through its members, excepts
//! them there too: `store_tests::notification_mail_is_queued_once_per_recipient_and_claimed_once`); administrators and the assignee hear of an activation;
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
