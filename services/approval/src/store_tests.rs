//! Approval's store on both databases: each test body runs against a migrated SQLite file and
//! a migrated PostgreSQL database.

use std::future::Future;

use pim_runtime::db::Db;

use pim_proto::assignment::v1::{AssignmentKind, RequestAction};

use crate::domain::{ApprovalStatus, Decision, ReviewStatus};
use crate::store::{self, ApprovalRow, DecisionRow, Stage};

const NOW: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;

async fn on_both<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("approval", None, test).await
}

/// Lee's request waiting for Ann, for an hour; Bob joins after half an hour.
fn approval(request_id: &str) -> ApprovalRow {
    ApprovalRow {
        id: uuid::Uuid::now_v7().to_string(),
        request_id: request_id.into(),
        requester_id: "lee".into(),
        role_id: "role".into(),
        role_name: "Exchange Administrator".into(),
        scope: "/".into(),
        duration_ms: 60 * MINUTE,
        action: RequestAction::SelfActivate,
        kind: AssignmentKind::Active,
        end_at: None,
        start_at: None,
        justification: "mailbox moves".into(),
        ticket_system: String::new(),
        ticket_number: String::new(),
        status: ApprovalStatus::Pending,
        stages: vec![Stage {
            approver_ids: vec!["ann".into()],
            approvals_required: 1,
            timeout_ms: 60 * MINUTE,
            escalation_approver_ids: vec!["bob".into()],
            escalate_after_ms: 30 * MINUTE,
            justification_required: true,
            approver_mfa_within_ms: 600_000,
        }],
        stage: 0,
        stage_started_at: NOW,
        stage_opened_by: String::new(),
        expires_at: NOW + 60 * MINUTE,
        escalated: false,
        reminded: false,
        created_at: NOW,
        completed_at: None,
        rev: 1,
        traceparent: String::new(),
    }
}

fn decision(approval_id: &str, approver: &str) -> DecisionRow {
    DecisionRow {
        approval_id: approval_id.into(),
        approver_id: approver.into(),
        requester_id: "lee".into(),
        stage: 0,
        decision: Decision::Approve,
        justification: "on call".into(),
        decided_at: NOW + MINUTE,
    }
}

/// Separation of duties is the table's own rule: a requester's decision on their own request
/// is refused by the database; an approver counts once; a request has one approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_self_approval_and_counts_an_approver_once() -> anyhow::Result<()> {
    on_both(|db| async move {
        let a = approval("r1");
        assert!(store::insert(&db, &a).await?);
        assert!(!store::insert(&db, &approval("r1")).await?, "one approval per request");
        let own = store::insert_decision(&db, &decision(&a.id, "lee")).await;
        assert!(own.is_err(), "the requester's own decision: {own:?}");
        assert!(store::insert_decision(&db, &decision(&a.id, "ann")).await?);
        assert!(!store::insert_decision(&db, &decision(&a.id, "ann")).await?, "once");
        let decided = store::decisions(&db, &a.id).await?;
        assert_eq!(
            decided.iter().map(|d| d.approver_id.as_str()).collect::<Vec<_>>(),
            vec!["ann"]
        );
        Ok(())
    })
    .await
}

/// Statuses and decisions are stored by their names and read back as what was written; a
/// list asks for one status; the table refuses a name PIM never writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_and_decisions_read_back_as_written_and_an_unknown_name_is_refused() -> anyhow::Result<()> {
    on_both(|db| async move {
        let mut denied = approval("r5");
        store::insert(&db, &denied).await?;
        let mut d = decision(&denied.id, "ann");
        d.decision = Decision::Deny;
        store::insert_decision(&db, &d).await?;
        denied.status = ApprovalStatus::Denied;
        denied.completed_at = Some(NOW + MINUTE);
        store::update(&db, &denied).await?;
        let mut pending = approval("r6");
        pending.rev = 2;
        (pending.action, pending.kind, pending.end_at) = (
            RequestAction::SelfExtend,
            AssignmentKind::Eligible,
            Some(NOW + 30 * 24 * 60 * MINUTE),
        );
        store::insert(&db, &pending).await?;

        let read = store::get(&db, &denied.id).await?.expect("stored");
        assert_eq!(read.status, ApprovalStatus::Denied);
        assert_eq!(
            (read.action, read.kind, read.end_at),
            (RequestAction::SelfActivate, AssignmentKind::Active, None)
        );
        let read = store::get(&db, &pending.id).await?.expect("stored");
        assert_eq!(
            (read.action, read.kind, read.end_at),
            (pending.action, pending.kind, pending.end_at)
        );
        let decided = store::decisions(&db, &denied.id).await?;
        assert_eq!(
            decided.iter().map(|d| d.decision).collect::<Vec<_>>(),
            vec![Decision::Deny]
        );
        let listed = |status| {
            let db = db.clone();
            async move {
                let filter = store::ListFilter {
                    status: Some(status),
                    involving: None,
                    before_rev: None,
                    limit: 10,
                };
                anyhow::Ok(
                    store::list(&db, &filter)
                        .await?
                        .into_iter()
                        .map(|a| a.id)
                        .collect::<Vec<_>>(),
                )
            }
        };
        assert_eq!(listed(ApprovalStatus::Pending).await?, vec![pending.id.clone()]);
        assert_eq!(listed(ApprovalStatus::Denied).await?, vec![denied.id.clone()]);

        let unknown = pim_runtime::db::exec(
            &db,
            "UPDATE approvals SET status = 'pending' WHERE id = $1",
            vec![pending.id.clone().into()],
        )
        .await;
        assert!(
            unknown.is_err(),
            "the table takes only the statuses PIM writes: {unknown:?}"
        );
        assert_eq!(
            store::get(&db, &pending.id).await?.map(|a| a.status),
            Some(ApprovalStatus::Pending)
        );
        Ok(())
    })
    .await
}

/// The timers' reads: the next deadline is the escalation before the expiry, and an approval
/// is due at its escalation, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_fall_due_at_their_escalation_then_their_expiry() -> anyhow::Result<()> {
    on_both(|db| async move {
        let a = approval("r2");
        store::insert(&db, &a).await?;
        assert_eq!(store::next_deadline(&db).await?, Some(NOW + 30 * MINUTE));
        assert!(store::due(&db, NOW + 29 * MINUTE, 10).await?.is_empty());
        let due: Vec<String> = store::due(&db, NOW + 30 * MINUTE, 10)
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(due, vec![a.id.clone()]);
        Ok(())
    })
    .await
}

/// Approvers are reminded once, half through a stage of an hour or more: the reminder is the
/// next deadline until it is done, then the expiry; a shorter stage has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_fall_due_for_one_reminder_half_through_a_long_stage() -> anyhow::Result<()> {
    on_both(|db| async move {
        let mut long = approval("r3");
        long.stages[0].escalation_approver_ids.clear();
        long.stages[0].timeout_ms = 120 * MINUTE;
        long.expires_at = NOW + 120 * MINUTE;
        store::insert(&db, &long).await?;
        assert_eq!(store::next_deadline(&db).await?, Some(NOW + 60 * MINUTE));
        assert!(store::due(&db, NOW + 59 * MINUTE, 10).await?.is_empty());
        let mut due = store::due(&db, NOW + 60 * MINUTE, 10).await?;
        assert_eq!(
            due.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            vec![long.id.as_str()]
        );
        due[0].reminded = true;
        store::update(&db, &due[0]).await?;
        assert_eq!(store::next_deadline(&db).await?, Some(NOW + 120 * MINUTE), "once");
        assert!(store::due(&db, NOW + 119 * MINUTE, 10).await?.is_empty());

        let mut short = approval("r4");
        short.rev = 2;
        short.stages[0].escalation_approver_ids.clear();
        short.stages[0].timeout_ms = 40 * MINUTE;
        short.expires_at = NOW + 40 * MINUTE;
        store::insert(&db, &short).await?;
        assert_eq!(store::next_deadline(&db).await?, Some(NOW + 40 * MINUTE), "no reminder");
        Ok(())
    })
    .await
}

/// A review falls due when it starts, then when its instance ends; an item reads back
/// undecided until a decision is stored, then as that decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_fall_due_in_their_status_and_items_keep_their_decision() -> anyhow::Result<()> {
    on_both(|db| async move {
        let mut review = store::ReviewRow {
            id: uuid::Uuid::now_v7().to_string(),
            name: "quarterly".into(),
            role_id: "role".into(),
            scope: "/".into(),
            review_scope: "both".into(),
            reviewer_ids: vec!["ann".into()],
            self_review: false,
            start_at: NOW,
            duration_ms: 60 * MINUTE,
            recurrence: String::new(),
            default_decision: "no_change".into(),
            auto_apply: false,
            status: ReviewStatus::NotStarted,
            instance: 0,
            instance_start: None,
            instance_end: None,
            remind_at: None,
            mail_off: false,
            reminders_off: false,
            created_by: "admin".into(),
            created_at: NOW,
        };
        store::insert_review(&db, &review).await?;
        assert!(store::due_reviews(&db, NOW - 1, 10).await?.is_empty());
        assert_eq!(store::next_review_deadline(&db).await?, Some(NOW));
        let due = store::due_reviews(&db, NOW, 10).await?;
        assert_eq!(
            due.iter().map(|r| r.status).collect::<Vec<_>>(),
            vec![ReviewStatus::NotStarted]
        );

        review.status = ReviewStatus::InProgress;
        review.instance = 1;
        review.instance_start = Some(NOW);
        review.instance_end = Some(NOW + 60 * MINUTE);
        store::update_review(&db, &review).await?;
        assert_eq!(store::next_review_deadline(&db).await?, Some(NOW + 60 * MINUTE));
        assert!(
            store::due_reviews(&db, NOW + MINUTE, 10).await?.is_empty(),
            "in progress, not ended"
        );

        let mut item = store::ItemRow {
            id: uuid::Uuid::now_v7().to_string(),
            review_id: review.id.clone(),
            instance: 1,
            assignment_id: "a-1".into(),
            kind: "eligible".into(),
            principal_id: "lee".into(),
            role_id: "role".into(),
            scope: "/".into(),
            recommendation: "deny".into(),
            decision: None,
            justification: String::new(),
            reviewer_id: String::new(),
            decided_at: None,
            outcome: String::new(),
        };
        store::insert_item(&db, &item).await?;
        assert_eq!(store::item(&db, &item.id).await?.map(|i| i.decision), Some(None));
        item.decision = Some(Decision::Deny);
        item.reviewer_id = "ann".into();
        item.decided_at = Some(NOW + MINUTE);
        store::update_item(&db, &item).await?;
        let items = store::items(&db, &review.id, 1).await?;
        assert_eq!(
            items.iter().map(|i| i.decision).collect::<Vec<_>>(),
            vec![Some(Decision::Deny)]
        );
        // Pages: by principal, then id, after the item a token names, however many a
        // principal has (Kim's two come before Lee's and Mia's).
        for (n, principal) in ["mia", "kim", "kim"].into_iter().enumerate() {
            let more = store::ItemRow {
                id: uuid::Uuid::now_v7().to_string(),
                assignment_id: format!("a-{}", n + 2),
                principal_id: principal.into(),
                ..item.clone()
            };
            store::insert_item(&db, &more).await?;
        }
        let all = store::items(&db, &review.id, 1).await?;
        let key = |i: &store::ItemRow| (i.principal_id.clone(), i.id.clone());
        let principals: Vec<&str> = all.iter().map(|i| i.principal_id.as_str()).collect();
        assert_eq!(principals, ["kim", "kim", "lee", "mia"]);
        let (mut paged, mut after) = (Vec::new(), None::<(String, String)>);
        while paged.len() <= all.len() {
            let page = store::ItemsPage {
                after: after.as_ref().map(|(p, i)| (p.as_str(), i.as_str())),
                limit: Some(1),
            };
            let Some(next) = store::items_page(&db, &review.id, 1, page).await?.pop() else {
                break;
            };
            after = Some(key(&next));
            paged.push(next);
        }
        assert_eq!(
            paged.iter().map(key).collect::<Vec<_>>(),
            all.iter().map(key).collect::<Vec<_>>()
        );
        let stored = store::review(&db, &review.id, false).await?.expect("stored");
        assert_eq!(stored.status, ReviewStatus::InProgress);
        Ok(())
    })
    .await
}

/// What approvers see of a requester's activations ends when the activation did: deactivated
/// or shortened, its end moves earlier, never later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_in_a_requesters_history_ends_when_it_ended() -> anyhow::Result<()> {
    on_both(|db| async move {
        let activation = store::ActivationRow {
            assignment_id: uuid::Uuid::now_v7().to_string(),
            principal_id: "lee".into(),
            role_id: "role-1".into(),
            role_name: "Security Reader".into(),
            scope: "/".into(),
            start_at: NOW,
            end_at: Some(NOW + 60 * MINUTE),
            via_group_id: String::new(),
        };
        store::record_activation(&db, &activation).await?;
        let end = |db: Db| async move {
            let rows = store::recent_activations(&db, "lee", 10).await?;
            anyhow::Ok(rows.iter().map(|r| r.end_at).collect::<Vec<_>>())
        };
        store::activation_ended(&db, &activation.assignment_id, NOW + 10 * MINUTE).await?;
        assert_eq!(end(db.clone()).await?, [Some(NOW + 10 * MINUTE)], "deactivated early");
        store::activation_ended(&db, &activation.assignment_id, NOW + 30 * MINUTE).await?;
        assert_eq!(end(db.clone()).await?, [Some(NOW + 10 * MINUTE)], "never later");
        Ok(())
    })
    .await
}
