//! Four-eyes approval across assignment and approval on PostgreSQL + Redis: an approver sees
//! the request in WatchApprovals and approves it into an active role; deny, timeout, N-of-M,
//! default approvers, separation of duties (also as a table constraint), and racing decisions.

use std::time::Duration;

use prost::Message;
use tonic::Code;

use pim_e2e::{authed, eventually};
use pim_proto::approval::v1 as pb;
use pim_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use pim_proto::assignment::v1 as apb;
use pim_proto::common::v1::ApprovalStageSettings;
use pim_proto::events::v1 as ev;
use pim_runtime::clock::Clock;
use pim_runtime::events::streams;

use crate::activation::{EXCHANGE_ADMINISTRATOR, HOUR_MS, User, World, activation, run};

type Client = ApprovalServiceClient<tonic::transport::Channel>;

impl World {
    pub(crate) fn approvals(&self) -> Client {
        ApprovalServiceClient::new(self.ts.channel.clone())
    }

    /// Runs the approval service's timer passes (stages, then reviews), then waits until
    /// nothing is due any more: the service's own timer may be firing the same rows (locked,
    /// so these passes skipped them). What fired is read from its effects, never from which
    /// pass did it.
    pub(crate) async fn approval_tick(&self) -> anyhow::Result<()> {
        let approvals = self.ts.suite.approval().expect("approval runs here").approvals();
        approvals.run_timers_once().await?;
        approvals.run_review_timers_once().await?;
        let now = self.clock.now_ms();
        eventually(Duration::from_secs(10), "no approval timer due any more", || async {
            Ok(approvals.next_deadline().await?.is_none_or(|at| at > now).then_some(()))
        })
        .await
    }

    /// Makes `user` eligible (once) and has them ask for an hour of Exchange Administrator.
    pub(crate) async fn ask(&self, user: &User, justification: &str) -> anyhow::Result<apb::AssignmentRequest> {
        self.ask_from(user, justification, None).await
    }

    /// [`Self::ask`], for a start later than now where one is given.
    pub(crate) async fn ask_from(
        &self,
        user: &User,
        justification: &str,
        start: Option<i64>,
    ) -> anyhow::Result<apb::AssignmentRequest> {
        if let Err(err) = self.make_eligible(user, EXCHANGE_ADMINISTRATOR).await {
            let already = err
                .downcast_ref::<tonic::Status>()
                .is_some_and(|s| s.code() == Code::AlreadyExists);
            if !already {
                return Err(err);
            }
        }
        let mut ask = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, justification);
        if let Some(schedule) = ask.schedule.as_mut() {
            schedule.start_time = start.map(pim_runtime::db::to_timestamp);
        }
        ask.ticket = Some(pim_proto::common::v1::Ticket {
            system: "ServiceNow".into(),
            number: "INC0042".into(),
        });
        let request = self
            .assignments()
            .create_request(authed(&self.stepped_up(user)?, ask))
            .await?
            .into_inner();
        assert_eq!(request.status, apb::RequestStatus::PendingApproval as i32);
        Ok(request)
    }

    /// The approval opened for `request_id`, as an approval manager sees it.
    pub(crate) async fn approval_of(&self, request_id: &str) -> anyhow::Result<pb::Approval> {
        eventually(Duration::from_secs(10), "the approval to open", || async {
            let page = self
                .approvals()
                .list_approvals(authed(
                    &self.admin,
                    pb::ListApprovalsRequest {
                        all: true,
                        page_size: 500,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            Ok(page.approvals.into_iter().find(|a| a.request_id == request_id))
        })
        .await
    }

    pub(crate) async fn request_of(&self, token: &str, request_id: &str) -> anyhow::Result<apb::AssignmentRequest> {
        Ok(self
            .assignments()
            .get_request(authed(
                token,
                apb::GetRequestRequest {
                    request_id: request_id.into(),
                },
            ))
            .await?
            .into_inner())
    }

    pub(crate) async fn request_status(&self, token: &str, request_id: &str) -> anyhow::Result<i32> {
        Ok(self
            .assignments()
            .get_request(authed(
                token,
                apb::GetRequestRequest {
                    request_id: request_id.into(),
                },
            ))
            .await?
            .into_inner()
            .status)
    }

    pub(crate) async fn eventually_status(
        &self,
        token: &str,
        request_id: &str,
        status: apb::RequestStatus,
    ) -> anyhow::Result<()> {
        eventually(Duration::from_secs(10), status.as_str_name(), || async {
            Ok((self.request_status(token, request_id).await? == status as i32).then_some(()))
        })
        .await
    }

    /// The break-glass administrator's principal id.
    pub(crate) async fn admin_id(&self) -> anyhow::Result<String> {
        Ok(
            pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(self.ts.channel.clone())
                .get_user(authed(
                    &self.admin,
                    pim_proto::identity::v1::GetUserRequest {
                        user: self.ts.admin_user.clone(),
                    },
                ))
                .await?
                .into_inner()
                .id,
        )
    }

    pub(crate) async fn require_approval(&self, stages: Vec<ApprovalStageSettings>) -> anyhow::Result<()> {
        self.set_policy(EXCHANGE_ADMINISTRATOR, |p| {
            p.approval_required = true;
            p.approval_stages = stages;
        })
        .await?;
        Ok(())
    }
}

pub(crate) fn stage(approvers: &[&User], required: i32) -> ApprovalStageSettings {
    ApprovalStageSettings {
        approver_ids: approvers.iter().map(|u| u.id.clone()).collect(),
        approvals_required: required,
        justification_required: true,
        ..Default::default()
    }
}

fn decide(id: &str, approve: bool, justification: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        approval_id: id.into(),
        decision: if approve {
            pb::Decision::Approve
        } else {
            pb::Decision::Deny
        } as i32,
        justification: justification.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_watching_approves_and_the_role_becomes_active() -> anyhow::Result<()> {
    run(|w| async move {
        let (lee, ann) = (w.user("lee").await?, w.user("ann").await?);
        w.require_approval(vec![stage(&[&ann], 1)]).await?;

        let mut watch = w
            .approvals()
            .watch_approvals(authed(&ann.token, pb::WatchApprovalsRequest::default()))
            .await?
            .into_inner();
        let request = w.ask(&lee, "restore the CEO's mailbox").await?;
        let seen = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await??
            .expect("an approval to decide");
        assert_eq!(
            (
                seen.request_id.as_str(),
                seen.requester_id.as_str(),
                seen.role_id.as_str()
            ),
            (request.id.as_str(), lee.id.as_str(), EXCHANGE_ADMINISTRATOR)
        );
        assert_eq!(seen.justification, "restore the CEO's mailbox");
        assert_eq!(seen.ticket.as_ref().map(|t| t.number.as_str()), Some("INC0042"));
        assert_eq!(seen.duration.as_ref().map(|d| d.seconds), Some(HOUR_MS / 1000));

        // Lee sees it too but may not decide it; nobody unnamed may either.
        let kim = w.user("kim").await?;
        let refused = w
            .approvals()
            .decide(authed(&kim.token, decide(&seen.id, true, "sure")))
            .await
            .expect_err("not an approver");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let missing = w
            .approvals()
            .decide(authed(&ann.token, decide(&seen.id, true, "")))
            .await
            .expect_err("the policy asks for a justification");
        assert_eq!(missing.code(), Code::InvalidArgument);

        let approved = w
            .approvals()
            .decide(authed(&ann.token, decide(&seen.id, true, "checked with Lee's manager")))
            .await?
            .into_inner();
        assert_eq!(approved.status, pb::ApprovalStatus::Approved as i32);
        w.eventually_status(&lee.token, &request.id, apb::RequestStatus::Provisioned)
            .await?;
        eventually(Duration::from_secs(5), "CheckAccess to agree", || async {
            Ok(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed.then_some(()))
        })
        .await?;

        // The requester reads the outcome, with their activation history.
        let mine = eventually(Duration::from_secs(10), "the activation in history", || async {
            let a = w
                .approvals()
                .get_approval(authed(
                    &lee.token,
                    pb::GetApprovalRequest {
                        approval_id: seen.id.clone(),
                    },
                ))
                .await?
                .into_inner();
            Ok((!a.requester_history.is_empty()).then_some(a))
        })
        .await?;
        assert_eq!(mine.decisions.len(), 1);
        assert_eq!(mine.decisions[0].approver_id, ann.id);
        assert_eq!(mine.requester_history[0].role_id, EXCHANGE_ADMINISTRATOR);
        // Repeating the decision changes nothing; reversing it is refused.
        let again = w
            .approvals()
            .decide(authed(&ann.token, decide(&seen.id, true, "checked with Lee's manager")))
            .await?
            .into_inner();
        assert_eq!(again.status, pb::ApprovalStatus::Approved as i32);
        let reversed = w
            .approvals()
            .decide(authed(&ann.token, decide(&seen.id, false, "changed my mind")))
            .await
            .expect_err("already decided");
        assert_eq!(reversed.code(), Code::FailedPrecondition);
        let granted = w.events_on(streams::APPROVAL, "ApprovalGranted").await?;
        assert_eq!(granted.len(), 1, "one outcome");
        Ok(w)
    })
    .await
}

/// One principal holds at most `MAX_OPEN` streams open at once: one more is refused
/// RESOURCE_EXHAUSTED, others still open theirs, and a stream closed makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principals_open_streams_are_capped_and_others_are_not_held_up() -> anyhow::Result<()> {
    use pim_runtime::streams::MAX_OPEN;
    run(|w| async move {
        let (eve, ann) = (w.user("eve").await?, w.user("ann").await?);
        // A stream the holder of `token` opens: its messages, or why it was refused.
        let open = |token: String| {
            let mut approvals = w.approvals();
            async move {
                let watch = approvals.watch_approvals(authed(&token, pb::WatchApprovalsRequest::default()));
                match watch.await {
                    Err(refused) => Err(refused),
                    Ok(watch) => {
                        let mut watch = watch.into_inner();
                        // A refused stream ends at once; an open one stays quiet.
                        match tokio::time::timeout(Duration::from_millis(300), watch.message()).await {
                            Ok(Err(refused)) => Err(refused),
                            _ => Ok(watch),
                        }
                    }
                }
            }
        };
        // Each counted once the call is answered (before its first message).
        let mut eves = Vec::new();
        for _ in 0..MAX_OPEN {
            let watch = authed(&eve.token, pb::WatchApprovalsRequest::default());
            eves.push(w.approvals().watch_approvals(watch).await?.into_inner());
        }
        let refused = open(eve.token.clone()).await.expect_err("one too many");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("close one"), "{refused:?}");
        // An export of the audit log is such a stream too, however the others were opened.
        let mut audit = pim_proto::audit::v1::audit_service_client::AuditServiceClient::new(w.ts.channel.clone());
        let export = authed(&eve.token, pim_proto::audit::v1::ExportEventsRequest::default());
        let refused = match audit.export_events(export).await {
            Err(refused) => refused,
            Ok(export) => export.into_inner().message().await.expect_err("one too many"),
        };
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        let anns = open(ann.token.clone()).await?;
        drop(eves.pop());
        let again = eventually(Duration::from_secs(10), "room for one more of Eve's", || async {
            Ok(open(eve.token.clone()).await.ok())
        })
        .await?;
        drop((eves, anns, again));
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_ends_it_and_an_unanswered_approval_expires() -> anyhow::Result<()> {
    run(|w| async move {
        let (lee, ann, kim) = (w.user("lee").await?, w.user("ann").await?, w.user("kim").await?);
        // A stage that asks no reason of its approvers.
        w.require_approval(vec![ApprovalStageSettings {
            timeout: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
            justification_required: false,
            ..stage(&[&ann, &kim], 1)
        }])
        .await?;
        let request = w.ask(&lee, "mailbox export").await?;
        let approval = w.approval_of(&request.id).await?;
        assert_eq!(approval.start_time, None, "it starts once approved");
        // A denial says why all the same: the requester reads it.
        let unexplained = w
            .approvals()
            .decide(authed(&ann.token, decide(&approval.id, false, "  ")))
            .await
            .expect_err("a denial without a reason");
        assert_eq!(unexplained.code(), Code::InvalidArgument, "{unexplained:?}");
        assert!(unexplained.message().starts_with("justification"), "{unexplained:?}");
        let denied = w
            .approvals()
            .decide(authed(&ann.token, decide(&approval.id, false, "no ticket approval")))
            .await?
            .into_inner();
        assert_eq!(denied.status, pb::ApprovalStatus::Denied as i32);
        w.eventually_status(&lee.token, &request.id, apb::RequestStatus::Denied)
            .await?;
        assert!(!w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        // The requester reads why, in the approver's words.
        assert_eq!(
            w.request_of(&lee.token, &request.id).await?.outcome_reason,
            "no ticket approval"
        );
        let late = w
            .approvals()
            .decide(authed(&kim.token, decide(&approval.id, true, "looks fine")))
            .await
            .expect_err("already denied");
        assert_eq!(late.code(), Code::FailedPrecondition);

        // Nobody answers the next one, which asks to start in an hour (the approvers see when):
        // after the stage's ten minutes it expires.
        let start = w.clock.now_ms() + HOUR_MS;
        let request = w.ask_from(&lee, "mailbox export, again", Some(start)).await?;
        let approval = w.approval_of(&request.id).await?;
        assert_eq!(
            approval.start_time.as_ref().map(pim_runtime::db::from_timestamp),
            Some(start)
        );
        w.clock.advance(Duration::from_secs(599));
        let approvals = w.ts.suite.approval().expect("approval runs here").approvals();
        assert_eq!(approvals.run_timers_once().await?, 0, "not yet");
        w.clock.advance(Duration::from_secs(1));
        w.approval_tick().await?;
        w.eventually_status(&lee.token, &request.id, apb::RequestStatus::Expired)
            .await?;
        let expired = w
            .approvals()
            .decide(authed(&ann.token, decide(&approval.id, true, "sorry, late")))
            .await
            .expect_err("expired");
        assert_eq!(expired.code(), Code::FailedPrecondition);
        assert!(!w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        assert_eq!(
            w.request_of(&lee.token, &request.id).await?.outcome_reason,
            "no approver decided in time"
        );
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_then_a_second_stage_decided_by_a_group_member() -> anyhow::Result<()> {
    run(|w| async move {
        let lee = w.user("lee").await?;
        let (a, b, c, d) = (
            w.user("ann").await?,
            w.user("bob").await?,
            w.user("cyd").await?,
            w.user("dee").await?,
        );
        // Stage two names a group: its members decide (Ann and Bob, who decide stage one, too).
        let leads = w.group("exchange leads", &[&d, &a, &b]).await?;
        w.require_approval(vec![
            stage(&[&a, &b, &c], 2),
            ApprovalStageSettings {
                approver_ids: vec![leads.clone()],
                ..stage(&[], 1)
            },
        ])
        .await?;
        let request = w.ask(&lee, "quarterly audit").await?;
        let approval = w.approval_of(&request.id).await?;
        let first = w
            .approvals()
            .decide(authed(&a.token, decide(&approval.id, true, "ok")))
            .await?
            .into_inner();
        assert_eq!(
            (first.status, first.current_stage),
            (pb::ApprovalStatus::Pending as i32, 0)
        );
        // One approver counts once.
        let again = w
            .approvals()
            .decide(authed(&a.token, decide(&approval.id, true, "ok")))
            .await?
            .into_inner();
        assert_eq!((again.current_stage, again.decisions.len()), (0, 1));
        // Stage two's approver cannot decide stage one.
        let early = w
            .approvals()
            .decide(authed(&d.token, decide(&approval.id, true, "ok")))
            .await
            .expect_err("not yet their stage");
        assert_eq!(early.code(), Code::PermissionDenied);
        // Bob decides in the same millisecond as Ann did (the clock stands still): who moved
        // the approval on is recorded, not told from the time.
        let second = w
            .approvals()
            .decide(authed(&b.token, decide(&approval.id, true, "ok")))
            .await?
            .into_inner();
        assert_eq!(
            (second.status, second.current_stage),
            (pb::ApprovalStatus::Pending as i32, 1)
        );
        assert_eq!(
            w.request_status(&lee.token, &request.id).await?,
            apb::RequestStatus::PendingApproval as i32
        );
        // Bob's answer was lost and he sends it again: a retry (his decision moved the approval
        // to stage two, which he approves too), answered as the approval stands.
        let retried = w
            .approvals()
            .decide(authed(&b.token, decide(&approval.id, true, "ok")))
            .await?
            .into_inner();
        assert_eq!((retried.current_stage, retried.decisions.len()), (1, 2));
        // Ann decided stage one: her decision counts once, so another decides stage two, and
        // she is told so (not answered as if it counted).
        let twice = w
            .approvals()
            .decide(authed(&a.token, decide(&approval.id, true, "ok")))
            .await
            .expect_err("one person's decision counts once");
        assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");
        assert!(
            twice.message().contains("another approver decides stage 2"),
            "{twice:?}"
        );
        let done = w
            .approvals()
            .decide(authed(&d.token, decide(&approval.id, true, "ok")))
            .await?
            .into_inner();
        assert_eq!(done.status, pb::ApprovalStatus::Approved as i32);
        w.eventually_status(&lee.token, &request.id, apb::RequestStatus::Provisioned)
            .await?;
        Ok(w)
    })
    .await
}

/// A stage that names a group may need more approvals than it names approvers: the group's
/// members make up the number. One that names only people may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_makes_up_the_approvals_a_stage_needs() -> anyhow::Result<()> {
    run(|w| async move {
        let (lee, ann, bob) = (w.user("lee").await?, w.user("ann").await?, w.user("bob").await?);
        let refused = w
            .require_approval(vec![stage(&[&ann], 2)])
            .await
            .expect_err("two approvals of one approver");
        let refused = refused.downcast_ref::<tonic::Status>().expect("a gRPC answer");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().starts_with("approval_stages.approvals_required"),
            "{refused:?}"
        );

        let approvers = w.group("exchange approvers", &[&ann, &bob]).await?;
        w.require_approval(vec![ApprovalStageSettings {
            approver_ids: vec![approvers.clone()],
            ..stage(&[], 2)
        }])
        .await?;
        let request = w.ask(&lee, "tenant move").await?;
        let approval = w.approval_of(&request.id).await?;
        let first = w
            .approvals()
            .decide(authed(&ann.token, decide(&approval.id, true, "ok")))
            .await?
            .into_inner();
        assert_eq!(first.status, pb::ApprovalStatus::Pending as i32);
        let second = w
            .approvals()
            .decide(authed(&bob.token, decide(&approval.id, true, "ok")))
            .await?
            .into_inner();
        assert_eq!(second.status, pb::ApprovalStatus::Approved as i32);
        w.eventually_status(&lee.token, &request.id, apb::RequestStatus::Provisioned)
            .await?;
        // The group is deleted later: a change that leaves the stages as they are is not
        // weighed against it.
        pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(w.ts.channel.clone())
            .delete_group(authed(
                &w.admin,
                pim_proto::identity::v1::GetGroupRequest { group_id: approvers },
            ))
            .await?;
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.activation_requires_ticket = true)
            .await?;
        // A request now could only wait until it expires: nobody is left to decide it.
        let kim = w.user("kim").await?;
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        let mut ask = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "tenant move, part two");
        ask.ticket = Some(pim_proto::common::v1::Ticket {
            system: "ServiceNow".into(),
            number: "INC0043".into(),
        });
        let refused = w
            .assignments()
            .create_request(authed(&w.stepped_up(&kim)?, ask.clone()))
            .await
            .expect_err("nobody left to approve");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(pim_runtime::grpc::violated_rules(&refused), vec!["ApprovalRule"]);
        assert!(
            refused
                .message()
                .contains("no approver of this policy can decide any more"),
            "{refused:?}"
        );
        // Two of Ann and Bob, and Ann is disabled since: Bob alone cannot give two.
        w.require_approval(vec![stage(&[&ann, &bob], 2)]).await?;
        pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(w.ts.channel.clone())
            .disable_user(authed(
                &w.admin,
                pim_proto::identity::v1::GetUserRequest { user: ann.id.clone() },
            ))
            .await?;
        let refused = w
            .assignments()
            .create_request(authed(&w.stepped_up(&kim)?, ask))
            .await
            .expect_err("too few left to approve");
        assert_eq!(pim_runtime::grpc::violated_rules(&refused), vec!["ApprovalRule"]);
        assert!(
            refused
                .message()
                .contains("only 1 approver of this policy can decide any more, and it needs 2"),
            "{refused:?}"
        );
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_approves_their_own_request_and_default_approvers_decide_otherwise() -> anyhow::Result<()> {
    run(|w| async move {
        // No approvers named: the default approvers (active Global / Privileged Role
        // Administrators) decide. The admin is a Global Administrator asking for a role.
        w.require_approval(Vec::new()).await?;
                let admin_id = w.admin_id().await?;
        w.make_principal_eligible(&admin_id, EXCHANGE_ADMINISTRATOR).await?;
        let admin_up = w
            .ts
            .stepped_up_token(&admin_id, &w.ts.admin_user, w.clock.now_ms())?;
        let own = w
            .assignments()
            .create_request(authed(&admin_up, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "self")))
            .await?
            .into_inner();
        let approval = w.approval_of(&own.id).await?;
        let refused = w
            .approvals()
            .decide(authed(&admin_up, decide(&approval.id, true, "I trust me")))
            .await
            .expect_err("self-approval");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let attempts = eventually(Duration::from_secs(10), "the attempt as an event", || async {
            let found = w
                .events_on(streams::APPROVAL, "SelfApprovalAttempted")
                .await?;
            Ok((!found.is_empty()).then_some(found))
        })
        .await?;
        assert_eq!(attempts.len(), 1, "the attempt is an event for alerting");
        let attempt = ev::ApprovalDecisionRecorded::decode(attempts[0].data.as_slice())?;
        assert_eq!(attempt.actor.map(|a| a.principal_id), Some(admin_id.clone()));

        // The table refuses it too, whatever the code does.
        let db = w.ts.suite.approval().expect("approval").approvals_db().clone();
        let direct = pim_runtime::db::exec(
            &db,
            "INSERT INTO approval_decisions (approval_id, approver_id, requester_id, stage, decision, justification, decided_at) \
             VALUES ($1, $2, $2, 0, 'approve', '', 0)",
            vec![approval.id.clone().into(), admin_id.clone().into()],
        )
        .await;
        let refused = direct.expect_err("the table refuses self-approval");
        assert!(
            refused.to_string().to_lowercase().contains("check constraint"),
            "a CHECK constraint refuses it, not another error: {refused}"
        );

        // A plain user is no default approver; a Global Administrator other than the
        // requester is.
        let lee = w.user("lee").await?;
        let request = w.ask(&lee, "mail flow rules").await?;
        let approval = w.approval_of(&request.id).await?;
        let refused = w
            .approvals()
            .decide(authed(&lee.token, decide(&approval.id, true, "x")))
            .await
            .expect_err("requester");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let kim = w.user("kim").await?;
        let refused = w
            .approvals()
            .decide(authed(&kim.token, decide(&approval.id, true, "x")))
            .await
            .expect_err("no role");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let approved = w
            .approvals()
            .decide(authed(&w.admin, decide(&approval.id, true, "ticket checked")))
            .await?
            .into_inner();
        assert_eq!(approved.status, pb::ApprovalStatus::Approved as i32);
        w.eventually_status(&lee.token, &request.id, apb::RequestStatus::Provisioned)
            .await?;

        // Named as the only approver of a stage, Kim could never be approved: her request is
        // refused at once instead of waiting until it expires.
        w.require_approval(vec![stage(&[&w.user("ann").await?], 1), stage(&[&kim], 1)])
            .await?;
        let alone = w.ask(&kim, "rota").await.expect_err("nobody else approves stage 2");
        let alone = alone.downcast_ref::<tonic::Status>().expect("a refusal");
        assert_eq!(alone.code(), Code::FailedPrecondition);
        assert!(
            alone.message().contains("you are the only approver of stage 2"),
            "{}",
            alone.message()
        );

        // Two approvals from Kim and Anna: Anna alone cannot give both, so it is refused too;
        // unless a group is named, whose members could make up the number.
        let anna = w.user("anna").await?;
        w.require_approval(vec![stage(&[&kim, &anna], 2)]).await?;
        let short = w.ask(&kim, "rota").await.expect_err("Anna cannot give two approvals");
        let short = short.downcast_ref::<tonic::Status>().expect("a refusal");
        assert_eq!(short.code(), Code::FailedPrecondition);
        assert!(
            short.message().contains("must give 2 approvals, and besides you it names only 1"),
            "{}",
            short.message()
        );
        let approvers = w.group("Approvers", &[&anna, &lee]).await?;
        w.require_approval(vec![ApprovalStageSettings {
            approver_ids: vec![kim.id.clone(), approvers],
            ..stage(&[], 2)
        }])
        .await?;
        let waiting = w.ask(&kim, "rota").await?;
        let approval = w.approval_of(&waiting.id).await?;
        for approver in [&anna, &lee] {
            w.approvals()
                .decide(authed(&approver.token, decide(&approval.id, true, "seen")))
                .await?;
        }
        w.eventually_status(&kim.token, &waiting.id, apb::RequestStatus::Provisioned)
            .await?;
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_approve_and_deny_end_in_exactly_one_state() -> anyhow::Result<()> {
    run(|w| async move {
        let (ann, bo) = (w.user("ann").await?, w.user("bob").await?);
        w.require_approval(vec![stage(&[&ann, &bo], 1)]).await?;
        let mut requests = Vec::new();
        for i in 0..100 {
            let user = w.user(&format!("user{i}")).await?;
            let request = w.ask(&user, "race").await?;
            requests.push((user, request));
        }
        let mut approvals = Vec::new();
        for (_, request) in &requests {
            approvals.push(w.approval_of(&request.id).await?);
        }
        let mut races = Vec::new();
        for approval in &approvals {
            let (mut one, mut other) = (w.approvals(), w.approvals());
            let (a, b) = (
                authed(&ann.token, decide(&approval.id, true, "yes")),
                authed(&bo.token, decide(&approval.id, false, "no")),
            );
            races.push(tokio::spawn(
                async move { tokio::join!(one.decide(a), other.decide(b)) },
            ));
        }
        let mut approved = 0;
        for (race, (user, request)) in races.into_iter().zip(&requests) {
            let (yes, no) = race.await?;
            let winner = match (yes, no) {
                (Ok(y), Err(n)) => {
                    assert_eq!(n.code(), Code::FailedPrecondition, "{n:?}");
                    approved += 1;
                    y.into_inner()
                }
                (Err(y), Ok(n)) => {
                    assert_eq!(y.code(), Code::FailedPrecondition, "{y:?}");
                    n.into_inner()
                }
                other => panic!("exactly one decision must win: {other:?}"),
            };
            let expected = if winner.status == pb::ApprovalStatus::Approved as i32 {
                apb::RequestStatus::Provisioned
            } else {
                assert_eq!(winner.status, pb::ApprovalStatus::Denied as i32);
                apb::RequestStatus::Denied
            };
            w.eventually_status(&user.token, &request.id, expected).await?;
        }
        let outcomes = w.events_on(streams::APPROVAL, "ApprovalGranted").await?.len()
            + w.events_on(streams::APPROVAL, "ApprovalDenied").await?.len();
        assert_eq!(outcomes, 100, "one outcome event per approval");
        assert_eq!(w.events_on(streams::APPROVAL, "ApprovalGranted").await?.len(), approved);
        Ok(w)
    })
    .await
}

/// An approver's decision sent several times at once (a retry, a double click) counts once,
/// and every answer tells the approval as it left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_decision_sent_at_once_counts_once_and_each_answer_is_current() -> anyhow::Result<()> {
    run(|w| async move {
        let ann = w.user("ann").await?;
        w.require_approval(vec![stage(&[&ann], 1)]).await?;
        for i in 0..10 {
            let user = w.user(&format!("user{i}")).await?;
            let request = w.ask(&user, "twice").await?;
            let approval = w.approval_of(&request.id).await?;
            let sent: Vec<_> = (0..5)
                .map(|_| {
                    let (mut approvals, ask) = (w.approvals(), authed(&ann.token, decide(&approval.id, true, "yes")));
                    tokio::spawn(async move { approvals.decide(ask).await })
                })
                .collect();
            for answer in sent {
                let answer = answer.await??.into_inner();
                assert_eq!(answer.status, pb::ApprovalStatus::Approved as i32, "{answer:?}");
                assert_eq!(answer.decisions.len(), 1, "one decision");
            }
            w.eventually_status(&user.token, &request.id, apb::RequestStatus::Provisioned)
                .await?;
        }
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_that_crosses_its_requests_withdrawal_ends_canceled() -> anyhow::Result<()> {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    run(|w| async move {
        let (ann, kim) = (w.user("ann").await?, w.user("kim").await?);
        w.require_approval(vec![stage(&[&ann], 1)]).await?;
        let request = w.ask(&kim, "crossing").await?;
        let approval = w.approval_of(&request.id).await?;
        // Assignment hears nothing for a moment (its consumers wait on a lock of their inbox):
        // Ann approves while Kim withdraws, each unaware of the other.
        let url = w.ts.database_url(pim::ServiceName::Assignment).expect("its database");
        let assignment_db = pim_runtime::db::connect(url).await?;
        let deaf = assignment_db.begin().await?;
        deaf.execute_unprepared("LOCK TABLE inbox IN EXCLUSIVE MODE").await?;
        let approved = w
            .approvals()
            .decide(authed(&ann.token, decide(&approval.id, true, "fine")))
            .await?
            .into_inner();
        assert_eq!(approved.status, pb::ApprovalStatus::Approved as i32);
        let withdrawn = w
            .assignments()
            .cancel_request(authed(
                &kim.token,
                apb::GetRequestRequest {
                    request_id: request.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(withdrawn.status, apb::RequestStatus::Canceled as i32);
        deaf.rollback().await?;

        // The approval never took effect, and says so: canceled, not approved.
        eventually(Duration::from_secs(10), "the approval to end canceled", || async {
            let now = w.approval_of(&request.id).await?;
            Ok((now.status == pb::ApprovalStatus::Canceled as i32).then_some(()))
        })
        .await?;
        w.ts.settle().await?;
        let canceled = w.events_on(streams::APPROVAL, "ApprovalCanceled").await?;
        let told = ev::ApprovalCompleted::decode(canceled.first().expect("one cancel").data.as_slice())?;
        assert!(told.reason.contains("never took effect"), "{told:?}");
        assert_eq!(
            w.request_status(&kim.token, &request.id).await?,
            apb::RequestStatus::Canceled as i32
        );
        assert!(!w.check(&kim.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_bot_approves_what_its_rule_allows() -> anyhow::Result<()> {
    run(|w| async move {
        let created =
            pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(w.ts.channel.clone())
                .create_service_principal(authed(
                    &w.admin,
                    pim_proto::identity::v1::CreateServicePrincipalRequest {
                        display_name: "approval-bot".into(),
                    },
                ))
                .await?
                .into_inner();
        let sp = created.service_principal.expect("a service principal");
        let (lee, kim) = (w.user("lee").await?, w.user("kim").await?);
        // The bot approves only because the policy names it.
        w.require_approval(vec![ApprovalStageSettings {
            approver_ids: vec![sp.id.clone()],
            approvals_required: 1,
            ..Default::default()
        }])
        .await?;
        let bot = pim::approval_bot::Bot {
            channel: w.ts.channel.clone(),
            client_id: sp.client_id.clone(),
            client_secret: created.client_secret.clone(),
            rule: pim::approval_bot::Rule {
                ticket_pattern: "INC*".into(),
                max_duration: Duration::from_secs(3600),
            },
        };
        let running = tokio::spawn(async move { bot.run().await });

        // Kim's ticket is a change, not an incident: left to people.
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        let mut ask = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "planned change");
        ask.ticket = Some(pim_proto::common::v1::Ticket {
            system: "ServiceNow".into(),
            number: "CHG0007".into(),
        });
        let left = w
            .assignments()
            .create_request(authed(&w.stepped_up(&kim)?, ask))
            .await?
            .into_inner();
        let left_approval = w.approval_of(&left.id).await?;
        // Lee's incident ticket and one hour: approved by the bot.
        let request = w.ask(&lee, "incident INC0042").await?;
        w.eventually_status(&lee.token, &request.id, apb::RequestStatus::Provisioned)
            .await?;
        let approval = w.approval_of(&request.id).await?;
        assert_eq!(approval.decisions.len(), 1);
        assert_eq!(approval.decisions[0].approver_id, sp.id);
        assert!(approval.decisions[0].justification.starts_with("auto-approved"));
        // The bot saw Kim's first and left it.
        let still = w
            .approvals()
            .get_approval(authed(
                &w.admin,
                pb::GetApprovalRequest {
                    approval_id: left_approval.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(still.status, pb::ApprovalStatus::Pending as i32);
        assert!(still.decisions.is_empty());
        assert!(!running.is_finished(), "the bot keeps watching");
        // The server restarting does not stop the bot: it resumes from its cursor.
        let World { ts, clock, admin } = w;
        let w = World {
            ts: ts.restart().await?,
            clock,
            admin,
        };
        let ann = w.user("ann").await?;
        let request = w.ask(&ann, "incident INC0043").await?;
        w.eventually_status(&ann.token, &request.id, apb::RequestStatus::Provisioned)
            .await?;
        assert!(!running.is_finished(), "the bot keeps watching after the restart");
        running.abort();
        // The bot decided within milliseconds, by the rule it was given: no rubber stamp.
        w.ts.settle().await?;
        let stamps: Vec<_> = w
            .all_alerts()
            .await?
            .into_iter()
            .filter(|a| a.rule_id == "rubber_stamp")
            .collect();
        assert!(stamps.is_empty(), "a bot's approval flagged: {stamps:?}");
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_adds_approvers_and_a_watch_resumes_from_its_cursor() -> anyhow::Result<()> {
    run(|w| async move {
        let (lee, kim, ann, bob) = (
            w.user("lee").await?,
            w.user("kim").await?,
            w.user("ann").await?,
            w.user("bob").await?,
        );
        w.require_approval(vec![ApprovalStageSettings {
            escalation_approver_ids: vec![bob.id.clone()],
            escalate_after: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
            ..stage(&[&ann], 1)
        }])
        .await?;

        let mut watch = w
            .approvals()
            .watch_approvals(authed(&ann.token, pb::WatchApprovalsRequest::default()))
            .await?
            .into_inner();
        let first = w.ask(&lee, "first").await?;
        let seen = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await??
            .expect("the first approval");
        assert_eq!(seen.request_id, first.id);
        // Ann's bot disconnects; a request arrives meanwhile; resuming from the cursor
        // delivers it, and only it.
        drop(watch);
        let second = w.ask(&kim, "second").await?;
        w.approval_of(&second.id).await?;
        let mut resumed = w
            .approvals()
            .watch_approvals(authed(
                &ann.token,
                pb::WatchApprovalsRequest {
                    cursor: seen.cursor.clone(),
                },
            ))
            .await?
            .into_inner();
        let next = tokio::time::timeout(Duration::from_secs(10), resumed.message())
            .await??
            .expect("the second approval");
        assert_eq!(next.request_id, second.id, "no duplicate of the first");
        // A cursor this service never issued (ahead of its latest) would skip what comes
        // up to it: refused.
        let ahead = w
            .approvals()
            .watch_approvals(authed(
                &ann.token,
                pb::WatchApprovalsRequest {
                    cursor: "999999".into(),
                },
            ))
            .await
            .expect_err("a cursor from elsewhere");
        assert_eq!(ahead.code(), Code::InvalidArgument, "{ahead:?}");

        let garbage = w
            .approvals()
            .decide(authed(&bob.token, decide("garbage", true, "ok")))
            .await
            .expect_err("not an approval id");
        assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");

        // Bob may decide only after ten minutes without a decision.
        let early = w
            .approvals()
            .decide(authed(&bob.token, decide(&seen.id, true, "ok")))
            .await
            .expect_err("not yet escalated");
        assert_eq!(early.code(), Code::PermissionDenied);
        w.clock.advance(Duration::from_secs(600));
        w.approval_tick().await?;
        let escalated = eventually(Duration::from_secs(10), "ApprovalEscalated", || async {
            let found = w.events_on(streams::APPROVAL, "ApprovalEscalated").await?;
            Ok((found.len() >= 2).then_some(found))
        })
        .await?;
        assert_eq!(escalated.len(), 2);
        let approved = w
            .approvals()
            .decide(authed(&bob.token, decide(&seen.id, true, "covering for Ann")))
            .await?
            .into_inner();
        assert_eq!(approved.status, pb::ApprovalStatus::Approved as i32);
        w.eventually_status(&lee.token, &first.id, apb::RequestStatus::Provisioned)
            .await?;
        Ok(w)
    })
    .await
}

/// Where a role's policy requires MFA on active assignment, an approver who approves a
/// request to keep an active assignment gives it, as an administrator extending it would:
/// their own recent MFA is asked for, and a refusal is on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_an_active_extension_needs_the_approvers_recent_mfa_where_the_policy_says() -> anyhow::Result<()> {
    use crate::activation::request;
    use apb::{AssignmentKind as K, RequestAction as A};
    run(|w| async move {
        let sam = w.user("sam").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: for_days(1),
                    justification: "migration".into(),
                    ..request(A::AdminAssign, K::Active, &sam.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?;
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.active_requires_mfa = true)
            .await?;
        let extend = w
            .assignments()
            .create_request(authed(
                &sam.token,
                apb::CreateRequestRequest {
                    schedule: for_days(5),
                    justification: "the migration runs longer".into(),
                    ..request(A::SelfExtend, K::Active, "", EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?
            .into_inner();
        let approval = w.approval_of(&extend.id).await?;
        let admin_id = w.admin_id().await?;
        let stale =
            w.ts.stepped_up_token(&admin_id, "admin", w.clock.now_ms() - 11 * 60_000)?;
        for token in [&w.admin, &stale] {
            let refused = w
                .approvals()
                .decide(authed(token, decide(&approval.id, true, "fine")))
                .await
                .expect_err("no recent MFA");
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert_eq!(pim_runtime::grpc::violated_rules(&refused), ["MfaRule"], "{refused:?}");
        }
        let refusals = eventually(Duration::from_secs(10), "the refusals on record", || async {
            let found = w.events_on(streams::APPROVAL, "ApprovalDecisionRefused").await?;
            Ok((found.len() == 2).then_some(found))
        })
        .await?;
        assert!(
            refusals
                .iter()
                .all(|e| String::from_utf8_lossy(&e.data).contains("MfaRule"))
        );
        let fresh = w.ts.stepped_up_token(&admin_id, "admin", w.clock.now_ms())?;
        w.approvals()
            .decide(authed(&fresh, decide(&approval.id, true, "fine")))
            .await?;
        w.eventually_status(&sam.token, &extend.id, apb::RequestStatus::Provisioned)
            .await?;

        // An eligible one's extension needs no such thing: the MFA comes at activation.
        let kim = w.user("kim").await?;
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: for_days(1),
                    justification: "project".into(),
                    ..request(A::AdminUpdate, K::Eligible, &kim.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?;
        let keep = w
            .assignments()
            .create_request(authed(
                &kim.token,
                apb::CreateRequestRequest {
                    schedule: for_days(5),
                    justification: "project".into(),
                    ..request(A::SelfExtend, K::Eligible, "", EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?
            .into_inner();
        let approval = w.approval_of(&keep.id).await?;
        w.approvals()
            .decide(authed(&w.admin, decide(&approval.id, true, "fine")))
            .await?;
        Ok(w)
    })
    .await
}

fn for_days(days: i64) -> Option<apb::Schedule> {
    crate::activation::lasting(days * 86_400_000)
}

/// Asking for more time keeps nobody from using the role meanwhile, and a request to extend
/// an assignment that is removed ends with it: no approver is asked to extend what is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_waiting_neither_blocks_activation_nor_outlives_its_assignment() -> anyhow::Result<()> {
    use crate::activation::{activation, request};
    use apb::{AssignmentKind as K, RequestAction as A};
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: for_days(10),
                    justification: "project".into(),
                    ..request(A::AdminAssign, K::Eligible, &lee.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?;
        let extend = w
            .assignments()
            .create_request(authed(
                &lee.token,
                apb::CreateRequestRequest {
                    schedule: for_days(30),
                    justification: "the migration slipped".into(),
                    ..request(A::SelfExtend, K::Eligible, "", EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?
            .into_inner();
        assert_eq!(extend.status, apb::RequestStatus::PendingApproval as i32);
        let activated = w
            .assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                activation(EXCHANGE_ADMINISTRATOR, crate::activation::HOUR_MS, "mailbox restore"),
            ))
            .await?
            .into_inner();
        assert_eq!(activated.status, apb::RequestStatus::Provisioned as i32);

        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    justification: "project over".into(),
                    ..request(A::AdminRemove, K::Eligible, &lee.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?;
        w.eventually_status(&lee.token, &extend.id, apb::RequestStatus::Canceled)
            .await?;
        let canceled = w
            .assignments()
            .get_request(authed(
                &lee.token,
                apb::GetRequestRequest {
                    request_id: extend.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert!(
            canceled.outcome_reason.contains("removed"),
            "{}",
            canceled.outcome_reason
        );
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_ask_to_extend_and_renew_and_approvers_decide() -> anyhow::Result<()> {
    use crate::activation::request;
    use apb::{AssignmentKind as K, RequestAction as A};
    const DAY_MS: i64 = 86_400_000;
    run(|w| async move {
        let (lee, kim) = (w.user("lee").await?, w.user("kim").await?);
        let admin_id = w.admin_id().await?;
        for (who, days) in [(&lee, 10), (&kim, 1)] {
            w.assignments()
                .create_request(authed(
                    &w.admin,
                    apb::CreateRequestRequest {
                        schedule: for_days(days),
                        justification: "project".into(),
                        ..request(A::AdminAssign, K::Eligible, &who.id, EXCHANGE_ADMINISTRATOR)
                    },
                ))
                .await?;
        }
        let ask = |action: A, days: i64, justification: &str| apb::CreateRequestRequest {
            schedule: for_days(days),
            justification: justification.into(),
            ..request(action, K::Eligible, "", EXCHANGE_ADMINISTRATOR)
        };
        let world = &w;
        let approve = |approval: pb::Approval| async move {
            world
                .approvals()
                .decide(authed(&world.admin, decide(&approval.id, true, "still on the project")))
                .await
        };
        let eligible_until = |who: String| async move {
            let found = world
                .assignments()
                .list_eligible_assignments(authed(
                    &world.admin,
                    apb::ListAssignmentsRequest {
                        principal_id: who,
                        role_id: EXCHANGE_ADMINISTRATOR.into(),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .assignments;
            anyhow::Ok(
                found
                    .first()
                    .map(|a| a.end_time.as_ref().map(pim_runtime::db::from_timestamp)),
            )
        };

        // Lee asks for 30 days more; it waits for an approver (the default ones here).
        let refused = w
            .assignments()
            .create_request(authed(&lee.token, ask(A::SelfExtend, 30, "")))
            .await
            .expect_err("no reason given");
        assert_eq!(pim_runtime::grpc::violated_rules(&refused), vec!["JustificationRule"]);
        let ticket = pim_proto::common::v1::Ticket {
            system: "ServiceNow".into(),
            number: "INC5555".into(),
        };
        let extend = w
            .assignments()
            .create_request(authed(
                &lee.token,
                apb::CreateRequestRequest {
                    ticket: Some(ticket.clone()),
                    ..ask(A::SelfExtend, 30, "the migration slipped")
                },
            ))
            .await?
            .into_inner();
        assert_eq!(extend.status, apb::RequestStatus::PendingApproval as i32);
        assert_eq!(extend.ticket.as_ref(), Some(&ticket), "the request keeps its ticket");
        let asked_at = w.clock.now_ms();
        // The approver sees what is asked: an extension of an eligibility, until when, and
        // the ticket it names.
        let approval = w.approval_of(&extend.id).await?;
        // The request's id (what mails give approvers) names the approval too.
        let by_request = w
            .approvals()
            .get_approval(authed(
                &w.admin,
                pb::GetApprovalRequest {
                    approval_id: extend.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(by_request.id, approval.id);
        assert_eq!((approval.action(), approval.kind()), (A::SelfExtend, K::Eligible));
        assert_eq!(approval.ticket.as_ref(), Some(&ticket));
        assert_eq!(
            approval.end_time.as_ref().map(pim_runtime::db::from_timestamp),
            Some(asked_at + 30 * DAY_MS)
        );
        approve(approval).await?;
        w.eventually_status(&lee.token, &extend.id, apb::RequestStatus::Provisioned)
            .await?;
        assert_eq!(
            eligible_until(lee.id.clone()).await?,
            Some(Some(asked_at + 30 * DAY_MS))
        );

        // With 30 days left it is too early to ask again: extensions are asked for in the
        // last 14 days (Entra's window).
        let early = w
            .assignments()
            .create_request(authed(&lee.token, ask(A::SelfExtend, 40, "and a bit more")))
            .await
            .expect_err("more than 14 days left");
        assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
        assert!(early.message().contains("in its last 14 days"), "{early:?}");
        w.clock.advance(Duration::from_millis((17 * DAY_MS) as u64));

        // While a request for 40 days waits, an administrator gives Lee 60: approving the
        // request later never shortens what Lee holds; the request fails.
        let more = w
            .assignments()
            .create_request(authed(&lee.token, ask(A::SelfExtend, 40, "and a bit more")))
            .await?
            .into_inner();
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: for_days(60),
                    justification: "the whole project".into(),
                    ..request(A::AdminUpdate, K::Eligible, &lee.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?;
        let updated_at = w.clock.now_ms();
        approve(w.approval_of(&more.id).await?).await?;
        w.eventually_status(&lee.token, &more.id, apb::RequestStatus::Failed)
            .await?;
        let failed = w
            .assignments()
            .get_request(authed(
                &lee.token,
                apb::GetRequestRequest {
                    request_id: more.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert!(
            failed.outcome_reason.contains("changed or ended meanwhile"),
            "the requester reads why, not the approver's words: {}",
            failed.outcome_reason
        );
        assert_eq!(
            eligible_until(lee.id.clone()).await?,
            Some(Some(updated_at + 60 * DAY_MS))
        );

        // Kim's day runs out; extending is too late, renewing is the way.
        w.clock.advance(Duration::from_millis((2 * DAY_MS) as u64));
        w.tick().await?;
        assert_eq!(eligible_until(kim.id.clone()).await?, None, "expired");
        let late = w
            .assignments()
            .create_request(authed(&kim.token, ask(A::SelfExtend, 30, "please")))
            .await
            .expect_err("nothing in force to extend");
        assert_eq!(late.code(), Code::NotFound);
        let asked_at = w.clock.now_ms();
        let renew = w
            .assignments()
            .create_request(authed(&kim.token, ask(A::SelfRenew, 30, "back on the project")))
            .await?
            .into_inner();
        assert_eq!(renew.status, apb::RequestStatus::PendingApproval as i32);
        let approval = w.approval_of(&renew.id).await?;
        // Half a day passes before the approver decides: the end they were shown stands (the
        // wait comes off the renewal, never on top of what was approved).
        w.clock.advance(Duration::from_millis((DAY_MS / 2) as u64));
        approve(approval).await?;
        w.eventually_status(&kim.token, &renew.id, apb::RequestStatus::Provisioned)
            .await?;
        assert_eq!(
            eligible_until(kim.id.clone()).await?,
            Some(Some(asked_at + 30 * DAY_MS))
        );
        let again = w
            .assignments()
            .create_request(authed(&kim.token, ask(A::SelfRenew, 30, "again")))
            .await
            .expect_err("in force");
        assert_eq!(again.code(), Code::FailedPrecondition);

        // An administrator renews directly, but only what expired.
        let in_force = w
            .assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: for_days(30),
                    ..request(A::AdminRenew, K::Eligible, &kim.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await
            .expect_err("still in force");
        assert_eq!(in_force.code(), Code::FailedPrecondition);
        let never = w
            .assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: for_days(30),
                    ..request(A::AdminRenew, K::Eligible, &admin_id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await
            .expect_err("never had one");
        assert_eq!(never.code(), Code::NotFound);
        w.clock.advance(Duration::from_millis((31 * DAY_MS) as u64));
        w.tick().await?;
        let renewed = w
            .assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: for_days(30),
                    justification: "renewed for the next quarter".into(),
                    ..request(A::AdminRenew, K::Eligible, &kim.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?
            .into_inner();
        assert_eq!(
            (renewed.status, renewed.action),
            (apb::RequestStatus::Provisioned as i32, A::AdminRenew as i32)
        );
        assert_eq!(
            eligible_until(kim.id.clone()).await?,
            Some(Some(w.clock.now_ms() + 30 * DAY_MS))
        );
        Ok(w)
    })
    .await
}

/// A role made privileged after its policy named an ordinary group as approver: that group's
/// members approve nothing for it any more, whatever the policy still says (privileged access
/// is approved through role-assignable groups only; Groups and User Administrators manage the
/// members of any other group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_group_approves_nothing_once_its_role_is_privileged() -> anyhow::Result<()> {
    run(|w| async move {
        let (lee, ann) = (w.user("lee").await?, w.user("ann").await?);
        let helpers = w.group("refund helpers", &[&ann]).await?;
        let mut roles = pim_proto::assignment::v1::role_service_client::RoleServiceClient::new(w.ts.channel.clone());
        let role = roles
            .create_role_definition(authed(
                &w.admin,
                apb::CreateRoleDefinitionRequest {
                    name: "Refunder".into(),
                    permissions: vec!["app.payments/refunds/approve".into()],
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        w.set_policy(&role.id, |p| {
            p.approval_required = true;
            p.approval_stages = vec![ApprovalStageSettings {
                approver_ids: vec![helpers.clone()],
                ..stage(&[], 1)
            }];
        })
        .await?;
        // Lee asks while the role is ordinary; it is made privileged before anyone decides.
        w.make_eligible(&lee, &role.id).await?;
        let request = w
            .assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                activation(&role.id, HOUR_MS, "refund run"),
            ))
            .await?
            .into_inner();
        let approval = w.approval_of(&request.id).await?;
        let made = roles
            .update_role_definition(authed(
                &w.admin,
                apb::UpdateRoleDefinitionRequest {
                    role: role.id.clone(),
                    permissions: vec!["app.payments/refunds/approve".into(), "pim.assignments.read".into()],
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        assert!(made.privileged);
        let refused = w
            .approvals()
            .decide(authed(&ann.token, decide(&approval.id, true, "ok")))
            .await
            .expect_err("an ordinary group decides nothing privileged");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        // Asked now, the request is refused at once: nobody could decide it.
        w.assignments()
            .cancel_request(authed(&lee.token, apb::GetRequestRequest { request_id: request.id }))
            .await?;
        let again = w
            .assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                activation(&role.id, HOUR_MS, "refund run"),
            ))
            .await
            .expect_err("no approver left who may decide");
        assert_eq!(pim_runtime::grpc::violated_rules(&again), vec!["ApprovalRule"]);

        // Access to a role-assignable group is privileged too. Its policy may not name an
        // ordinary group; one stored before that rule (written here into the database) is
        // decided by nobody, so Lee's request for membership is refused at once.
        use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
        use pim_proto::catalogue::{GROUP_MEMBER, group_scope};
        let tier0 = w.role_assignable_group("Tier 0").await?;
        let scope = group_scope(&tier0);
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        let asked = apb::GetRolePolicyRequest {
            role_id: GROUP_MEMBER.into(),
            scope: scope.clone(),
        };
        let mut policy = policies.get_role_policy(authed(&w.admin, asked)).await?.into_inner();
        policy.approval_required = true;
        policy.approval_stages = vec![ApprovalStageSettings {
            approver_ids: vec![helpers.clone()],
            ..stage(&[], 1)
        }];
        let update = |policy: &apb::RolePolicy| apb::UpdateRolePolicyRequest {
            policy: Some(policy.clone()),
            ..Default::default()
        };
        let refused = policies
            .update_role_policy(authed(&w.admin, update(&policy)))
            .await
            .expect_err("an ordinary group decides nothing privileged");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        policy.approval_stages[0].approver_ids = vec![ann.id.clone()];
        policies.update_role_policy(authed(&w.admin, update(&policy))).await?;
        let url = w.ts.database_url(pim::ServiceName::Assignment).expect("its database");
        pim_runtime::db::exec(
            &pim_runtime::db::connect(url).await?,
            "UPDATE role_policies SET policy = REPLACE(policy, $1, $2) WHERE role_id = $3 AND scope = $4",
            vec![
                ann.id.clone().into(),
                helpers.clone().into(),
                GROUP_MEMBER.into(),
                scope.clone().into(),
            ],
        )
        .await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    scope: scope.clone(),
                    justification: "tier 0 on call".into(),
                    ..crate::activation::request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Eligible,
                        &lee.id,
                        GROUP_MEMBER,
                    )
                },
            ))
            .await?;
        let refused = w
            .assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                apb::CreateRequestRequest {
                    scope,
                    ..activation(GROUP_MEMBER, HOUR_MS, "tier 0 on call")
                },
            ))
            .await
            .expect_err("only an ordinary group would decide");
        assert_eq!(
            pim_runtime::grpc::violated_rules(&refused),
            vec!["ApprovalRule"],
            "{refused:?}"
        );
        Ok(w)
    })
    .await
}
