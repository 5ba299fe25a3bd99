//! Access reviews across assignment and approval on PostgreSQL + Redis: a review of a role's
//! eligible assignments, with recommendations from activation history, run to completion:
//! approved assignments stay, denied ones and unanswered ones (default decision: remove) are
//! removed through assignment. A weekly review, decided by the members of a group, starts
//! again a week after its last instance began, with a new snapshot of who holds the role.

use std::time::Duration;

use tonic::Code;

use pim_e2e::{authed, eventually};
use pim_proto::approval::v1 as pb;
use pim_proto::approval::v1::access_review_service_client::AccessReviewServiceClient;
use pim_proto::assignment::v1 as apb;
use pim_proto::common::v1::ApprovalStageSettings;
use pim_runtime::db::{col, query_one};
use pim_runtime::events::streams;

use crate::activation::{EXCHANGE_ADMINISTRATOR, GLOBAL_ADMINISTRATOR, HOUR_MS, World, activation, run};

const DAY_S: i64 = 24 * 3600;
const SECURITY_READER: &str = "5d6b6bb7-de71-4623-b4af-96380a352509";

/// A one-day review of `role`'s assignments (of `scope` kind) at `/` by `reviewer`: unanswered
/// items are removed (default decision remove, auto-apply).
fn removing_review(name: &str, role: &str, scope: pb::ReviewScope, reviewer: &str) -> pb::CreateReviewRequest {
    pb::CreateReviewRequest {
        review: Some(pb::AccessReview {
            name: name.into(),
            role_id: role.into(),
            scope: "/".into(),
            review_scope: scope as i32,
            reviewer_ids: vec![reviewer.into()],
            duration: Some(prost_types::Duration {
                seconds: DAY_S,
                nanos: 0,
            }),
            default_decision: pb::DefaultDecision::Remove as i32,
            auto_apply: true,
            ..Default::default()
        }),
    }
}

impl World {
    fn reviews(&self) -> AccessReviewServiceClient<tonic::transport::Channel> {
        AccessReviewServiceClient::new(self.ts.channel.clone())
    }

    async fn eligible(&self, principal: &str) -> anyhow::Result<bool> {
        Ok(!self
            .assignments()
            .list_eligible_assignments(authed(
                &self.admin,
                apb::ListAssignmentsRequest {
                    principal_id: principal.into(),
                    role_id: EXCHANGE_ADMINISTRATOR.into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .assignments
            .is_empty())
    }

    /// The items of the review's current instance that the holder of `token` reviews.
    async fn my_items(&self, token: &str, review_id: &str) -> anyhow::Result<Vec<pb::ReviewItem>> {
        Ok(self
            .reviews()
            .list_my_review_items(authed(
                token,
                pb::ListMyReviewItemsRequest {
                    review_id: review_id.into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .items)
    }

    async fn review(&self, review_id: &str) -> anyhow::Result<pb::AccessReview> {
        Ok(self
            .reviews()
            .get_review(authed(
                &self.admin,
                pb::GetReviewRequest {
                    review_id: review_id.into(),
                },
            ))
            .await?
            .into_inner())
    }

    /// Waits until the approval service has seen `n` assignments and `m` activations.
    pub(crate) async fn approval_sees(&self, n: i64, m: i64) -> anyhow::Result<()> {
        let db = self
            .ts
            .suite
            .approval()
            .expect("approval runs here")
            .approvals_db()
            .clone();
        eventually(Duration::from_secs(10), "assignments reach approval", || async {
            let count = |sql: &'static str| {
                let db = db.clone();
                async move {
                    let row = query_one(&db, sql, vec![]).await?.expect("a count");
                    anyhow::Ok(col::<i64>(&row, "n")?)
                }
            };
            let seen = count("SELECT COUNT(*) AS n FROM assignments_seen").await?;
            let activated = count("SELECT COUNT(*) AS n FROM activations").await?;
            Ok((seen >= n && activated >= m).then_some(()))
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_removes_denied_and_unanswered_assignments_and_keeps_approved_ones() -> anyhow::Result<()> {
    run(|w| async move {
        let ann = w.user("ann").await?;
        let (lee, kim, joe) = (w.user("lee").await?, w.user("kim").await?, w.user("joe").await?);
        for u in [&lee, &kim, &joe] {
            w.make_eligible(u, EXCHANGE_ADMINISTRATOR).await?;
        }
        // Eligible for over 30 days (younger, an eligibility gets no recommendation): Lee used
        // the role this week; Kim and Joe never did.
        w.clock.advance(Duration::from_secs(31 * DAY_S as u64));
        w.assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "mailbox restore"),
            ))
            .await?;
        w.approval_sees(4, 1).await?;

        let bad = w
            .reviews()
            .create_review(authed(
                &w.admin,
                pb::CreateReviewRequest {
                    review: Some(pb::AccessReview {
                        name: "no reviewers".into(),
                        role_id: EXCHANGE_ADMINISTRATOR.into(),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect_err("nobody reviews");
        assert_eq!(bad.code(), Code::InvalidArgument);
        // A reviewer must be a principal the directory holds, named by id.
        let nobody = uuid::Uuid::now_v7().to_string();
        for reviewer in ["not-a-uuid", nobody.as_str()] {
            let bad = w
                .reviews()
                .create_review(authed(
                    &w.admin,
                    removing_review("ghosts", "Exchange Administrator", pb::ReviewScope::Eligible, reviewer),
                ))
                .await
                .expect_err("nobody would decide");
            assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
            assert!(bad.message().contains("review.reviewer_ids"), "{bad:?}");
        }
        // No review ends past the last moment a time is told (9999-12-31).
        let mut late = removing_review("late", "Exchange Administrator", pb::ReviewScope::Eligible, &ann.id);
        if let Some(review) = late.review.as_mut() {
            review.start_time = Some(prost_types::Timestamp {
                seconds: 253_402_300_000,
                nanos: 0,
            });
        }
        let bad = w
            .reviews()
            .create_review(authed(&w.admin, late))
            .await
            .expect_err("ends after 9999");
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
        let refused = w
            .reviews()
            .create_review(authed(
                &lee.token,
                pb::CreateReviewRequest {
                    review: Some(pb::AccessReview {
                        name: "mine".into(),
                        role_id: EXCHANGE_ADMINISTRATOR.into(),
                        self_review: true,
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect_err("not a reviews manager");
        assert_eq!(refused.code(), Code::PermissionDenied);

        let review = w
            .reviews()
            .create_review(authed(
                &w.admin,
                removing_review(
                    "Exchange admins, Q4",
                    "Exchange Administrator",
                    pb::ReviewScope::Eligible,
                    &ann.id,
                ),
            ))
            .await?
            .into_inner();
        assert_eq!((review.status.as_str(), review.instance), ("InProgress", 1));
        assert_eq!(review.role_id, EXCHANGE_ADMINISTRATOR, "named by name, stored by id");

        let items = w.my_items(&ann.token, &review.id).await?;
        assert_eq!(items.len(), 3, "the three eligible assignments, snapshotted: {items:?}");
        let item_of = |id: &str| items.iter().find(|i| i.principal_id == id).expect("an item").clone();
        let (lee_item, kim_item, joe_item) = (item_of(&lee.id), item_of(&kim.id), item_of(&joe.id));
        assert_eq!(lee_item.recommendation, "approve", "activated within 30 days");
        assert_eq!(kim_item.recommendation, "deny", "never activated");
        // A page at a time, the same items in the same order: a reviewer's and a manager's.
        let (mut mine, mut all, mut token) = (Vec::new(), Vec::new(), String::new());
        loop {
            let asked = pb::ListMyReviewItemsRequest {
                review_id: review.id.clone(),
                page_size: 1,
                page_token: token.clone(),
            };
            let page = w
                .reviews()
                .list_my_review_items(authed(&ann.token, asked))
                .await?
                .into_inner();
            assert_eq!(page.items.len(), 1, "{page:?}");
            mine.extend(page.items);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(mine, items);
        token.clear();
        loop {
            let asked = pb::ListReviewItemsRequest {
                review_id: review.id.clone(),
                instance: 0,
                page_size: 2,
                page_token: token.clone(),
            };
            let page = w
                .reviews()
                .list_review_items(authed(&w.admin, asked))
                .await?
                .into_inner();
            all.extend(page.items);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(all, items);
        let forged = pb::ListReviewItemsRequest {
            review_id: review.id.clone(),
            page_token: "not-one".into(),
            ..Default::default()
        };
        let refused = w
            .reviews()
            .list_review_items(authed(&w.admin, forged))
            .await
            .expect_err("a token the service never gave");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

        // Lee is no reviewer here.
        let refused = w
            .reviews()
            .record_decision(authed(
                &lee.token,
                pb::RecordDecisionRequest {
                    item_id: lee_item.id.clone(),
                    decision: pb::Decision::Approve as i32,
                    justification: "I need it".into(),
                },
            ))
            .await
            .expect_err("not a reviewer");
        assert_eq!(refused.code(), Code::PermissionDenied);
        for (item, decision) in [(&lee_item, pb::Decision::Approve), (&kim_item, pb::Decision::Deny)] {
            w.reviews()
                .record_decision(authed(
                    &ann.token,
                    pb::RecordDecisionRequest {
                        item_id: item.id.clone(),
                        decision: decision as i32,
                        justification: "reviewed with the team lead".into(),
                    },
                ))
                .await?;
        }

        // The review ends after its day; Joe's item was never answered.
        let approvals = w.ts.suite.approval().expect("approval runs here").approvals();
        w.clock.advance(Duration::from_secs(DAY_S as u64 - 1));
        // (The pass reminds the reviewers, half through: the review goes on.)
        approvals.run_review_timers_once().await?;
        assert_eq!(w.review(&review.id).await?.status, "InProgress", "not yet");
        // Redis refusing approval's events does not keep the removals waiting: approval is
        // hosted with assignment.
        crate::protection::hold_back(&w.ts, streams::APPROVAL, true).await?;
        w.clock.advance(Duration::from_secs(1));
        w.approval_tick().await?;
        eventually(Duration::from_secs(10), "denied assignments removed", || async {
            Ok((!w.eligible(&kim.id).await? && !w.eligible(&joe.id).await?).then_some(()))
        })
        .await?;
        crate::protection::hold_back(&w.ts, streams::APPROVAL, false).await?;
        assert!(w.eligible(&lee.id).await?, "approved: kept");

        assert_eq!(w.review(&review.id).await?.status, "Completed");
        let late = w
            .reviews()
            .record_decision(authed(
                &ann.token,
                pb::RecordDecisionRequest {
                    item_id: joe_item.id.clone(),
                    decision: pb::Decision::Approve as i32,
                    justification: "late".into(),
                },
            ))
            .await
            .expect_err("over");
        assert_eq!(late.code(), Code::FailedPrecondition);
        let removed = w.eventually_events("EligibilityRemoved", 2).await?;
        assert_eq!(removed.len(), 2, "Kim's and Joe's");
        Ok(w)
    })
    .await
}

/// A group's eligibility is used when its members activate through it: the recommendation
/// for it is their activity, so a review that follows recommendations keeps what is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_eligibility_is_recommended_by_its_members_activations() -> anyhow::Result<()> {
    run(|w| async move {
        let (ann, sam) = (w.user("ann").await?, w.user("sam").await?);
        let (used, idle) = (
            w.role_assignable_group("mail team").await?,
            w.role_assignable_group("old team").await?,
        );
        pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(w.ts.channel.clone())
            .add_group_member(authed(
                &w.admin,
                pim_proto::identity::v1::GroupMembershipRequest {
                    group_id: used.clone(),
                    principal_id: sam.id.clone(),
                },
            ))
            .await?;
        for group in [&used, &idle] {
            w.make_principal_eligible(group, EXCHANGE_ADMINISTRATOR).await?;
        }
        // Eligible for over 30 days: old enough to be judged by use; a team eligible since
        // today is too new to judge.
        w.clock.advance(Duration::from_secs(31 * DAY_S as u64));
        let new = w.role_assignable_group("new team").await?;
        w.make_principal_eligible(&new, EXCHANGE_ADMINISTRATOR).await?;
        w.ts.settle().await?;
        w.assignments()
            .create_request(authed(
                &w.stepped_up(&sam)?,
                activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "mailbox restore"),
            ))
            .await?;
        w.approval_sees(4, 1).await?;
        let review = w
            .reviews()
            .create_review(authed(
                &w.admin,
                removing_review(
                    "groups, Q4",
                    "Exchange Administrator",
                    pb::ReviewScope::Eligible,
                    &ann.id,
                ),
            ))
            .await?
            .into_inner();
        let items = w.my_items(&ann.token, &review.id).await?;
        let recommended = |group: &str| {
            items
                .iter()
                .find(|i| i.principal_id == group)
                .map(|i| i.recommendation.clone())
        };
        assert_eq!(
            recommended(&used).as_deref(),
            Some("approve"),
            "Sam activated through it"
        );
        assert_eq!(recommended(&idle).as_deref(), Some("deny"), "nobody did");
        assert_eq!(recommended(&new).as_deref(), Some(""), "too new to tell");
        Ok(w)
    })
    .await
}

/// Named reviewers decide each other's access, never their own; only a self-review lets people
/// attest their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_do_not_review_their_own_access() -> anyhow::Result<()> {
    run(|w| async move {
        let (ann, lee) = (w.user("ann").await?, w.user("lee").await?);
        for u in [&ann, &lee] {
            w.make_eligible(u, EXCHANGE_ADMINISTRATOR).await?;
        }
        // Ann is in a group that is eligible too: its access is hers as well.
        let ops = w.role_assignable_group("ops").await?;
        pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(w.ts.channel.clone())
            .add_group_member(authed(
                &w.admin,
                pim_proto::identity::v1::GroupMembershipRequest {
                    group_id: ops.clone(),
                    principal_id: ann.id.clone(),
                },
            ))
            .await?;
        w.make_principal_eligible(&ops, EXCHANGE_ADMINISTRATOR).await?;
        // Lee may join the night shift through PIM: its access is his to weigh as well.
        let night = w.role_assignable_group("night shift").await?;
        w.make_principal_eligible(&night, EXCHANGE_ADMINISTRATOR).await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                pim_proto::assignment::v1::CreateRequestRequest {
                    scope: pim_proto::catalogue::group_scope(&night),
                    ..crate::activation::request(
                        pim_proto::assignment::v1::RequestAction::AdminAssign,
                        pim_proto::assignment::v1::AssignmentKind::Eligible,
                        &lee.id,
                        pim_proto::catalogue::GROUP_MEMBER,
                    )
                },
            ))
            .await?;
        w.approval_sees(5, 0).await?;
        let mut peers = removing_review(
            "Exchange admins, by peers",
            "Exchange Administrator",
            pb::ReviewScope::Eligible,
            &ann.id,
        );
        // A bot reviews too, and is in ops: ops is its own to weigh as for a person.
        let (bot, secret) = w.ts.create_service_principal(&w.admin, "review-bot").await?;
        pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(w.ts.channel.clone())
            .add_group_member(authed(
                &w.admin,
                pim_proto::identity::v1::GroupMembershipRequest {
                    group_id: ops.clone(),
                    principal_id: bot.clone(),
                },
            ))
            .await?;
        let reviewers = &mut peers.review.as_mut().expect("a review").reviewer_ids;
        reviewers.extend([lee.id.clone(), bot.clone()]);
        let review = w.reviews().create_review(authed(&w.admin, peers)).await?.into_inner();
        let bot_token = pim_proto::identity::v1::auth_service_client::AuthServiceClient::new(w.ts.channel.clone())
            .sign_in_service_principal(pim_proto::identity::v1::SignInServicePrincipalRequest {
                client_id: bot.clone(),
                client_secret: secret,
            })
            .await?
            .into_inner()
            .access_token;
        let bots = w.my_items(&bot_token, &review.id).await?;
        let (anns, lees) = (
            w.my_items(&ann.token, &review.id).await?,
            w.my_items(&lee.token, &review.id).await?,
        );
        let whose = |items: &[pb::ReviewItem]| items.iter().map(|i| i.principal_id.clone()).collect::<Vec<_>>();
        let sorted = |mut ids: Vec<String>| {
            ids.sort();
            ids
        };
        assert_eq!(
            sorted(whose(&anns)),
            sorted(vec![lee.id.clone(), night.clone()]),
            "Ann reviews Lee and the night shift"
        );
        assert_eq!(
            sorted(whose(&lees)),
            sorted(vec![ann.id.clone(), ops.clone()]),
            "Lee reviews Ann and ops, not the night shift"
        );
        assert_eq!(
            sorted(whose(&bots)),
            sorted(vec![ann.id.clone(), lee.id.clone(), night.clone()]),
            "the bot reviews all but ops"
        );
        let lees: Vec<pb::ReviewItem> = lees.into_iter().filter(|i| i.principal_id == ann.id).collect();
        let refused = w
            .reviews()
            .record_decision(authed(
                &ann.token,
                pb::RecordDecisionRequest {
                    item_id: lees[0].id.clone(),
                    decision: pb::Decision::Approve as i32,
                    justification: "I still need it".into(),
                },
            ))
            .await
            .expect_err("her own access");
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("their own access"), "{refused:?}");

        let mut own = removing_review(
            "Exchange admins, each their own",
            "Exchange Administrator",
            pb::ReviewScope::Eligible,
            "",
        );
        let asked = own.review.as_mut().expect("a review");
        (asked.reviewer_ids, asked.self_review) = (Vec::new(), true);
        let review = w.reviews().create_review(authed(&w.admin, own)).await?.into_inner();
        assert_eq!(
            whose(&w.my_items(&ann.token, &review.id).await?),
            std::slice::from_ref(&ann.id)
        );
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_removes_only_what_its_creator_may_and_names_one_group() -> anyhow::Result<()> {
    run(|w| async move {
        // Gina manages reviews and nothing else: a review may ask, not remove for her.
        let manager = pim_proto::assignment::v1::role_service_client::RoleServiceClient::new(w.ts.channel.clone())
            .create_role_definition(authed(
                &w.admin,
                apb::CreateRoleDefinitionRequest {
                    name: "Review Manager".into(),
                    description: "Runs access reviews".into(),
                    permissions: vec!["pim.reviews.manage".into()],
                    privileged: false,
                },
            ))
            .await?
            .into_inner();
        let gina = w.user("gina").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    justification: "runs the quarterly reviews".into(),
                    ..crate::activation::request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Active,
                        &gina.id,
                        &manager.id,
                    )
                },
            ))
            .await?;
        let admins = || removing_review("admins", "Global Administrator", pb::ReviewScope::Active, &gina.id);
        let removing = w
            .reviews()
            .create_review(authed(&gina.token, admins()))
            .await
            .expect_err("Gina may not remove Global Administrators");
        assert_eq!(removing.code(), Code::PermissionDenied, "{removing:?}");
        assert!(removing.message().contains("auto-apply"), "{removing:?}");
        let mut asking = admins();
        asking.review.as_mut().expect("a review").auto_apply = false;
        w.reviews().create_review(authed(&gina.token, asking)).await?;

        // Group membership is reviewed one group at a time, and the group must exist.
        let members = |scope: &str| {
            let mut review = removing_review("members", "group-member", pb::ReviewScope::Eligible, &gina.id);
            review.review.as_mut().expect("a review").scope = scope.into();
            review
        };
        let everywhere = w
            .reviews()
            .create_review(authed(&w.admin, members("/")))
            .await
            .expect_err("no group named");
        assert_eq!(everywhere.code(), Code::InvalidArgument, "{everywhere:?}");
        let nowhere = w
            .reviews()
            .create_review(authed(
                &w.admin,
                members(&pim_proto::catalogue::group_scope(&uuid::Uuid::new_v4().to_string())),
            ))
            .await
            .expect_err("no such group");
        assert_eq!(nowhere.code(), Code::NotFound, "{nowhere:?}");
        let ops = w.role_assignable_group("ops").await?;
        w.reviews()
            .create_review(authed(&w.admin, members(&pim_proto::catalogue::group_scope(&ops))))
            .await?;

        // Hal may remove access, actively and just in time, when he creates two reviews. Each
        // removes only while he still may: eligible is enough (he would activate to remove it
        // himself); with nothing left, his review's removal is refused and the access kept.
        let access_manager =
            pim_proto::assignment::v1::role_service_client::RoleServiceClient::new(w.ts.channel.clone())
                .create_role_definition(authed(
                    &w.admin,
                    apb::CreateRoleDefinitionRequest {
                        name: "Access Manager".into(),
                        description: "Runs access reviews that remove".into(),
                        permissions: vec!["pim.reviews.manage".into(), "pim.assignments.manage".into()],
                        privileged: true,
                    },
                ))
                .await?
                .into_inner();
        let hal = w.user("hal").await?;
        let hals = |action, kind| apb::CreateRequestRequest {
            justification: "runs the removing reviews".into(),
            ..crate::activation::request(action, kind, &hal.id, &access_manager.id)
        };
        for kind in [apb::AssignmentKind::Active, apb::AssignmentKind::Eligible] {
            w.assignments()
                .create_request(authed(&w.admin, hals(apb::RequestAction::AdminAssign, kind)))
                .await?;
        }
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        let admin_id = w.admin_id().await?;
        let items = |review: String| {
            let w = &w;
            async move {
                let all = w
                    .reviews()
                    .list_review_items(authed(
                        &w.admin,
                        pb::ListReviewItemsRequest {
                            review_id: review,
                            instance: 0,
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner()
                    .items;
                anyhow::Ok(all)
            }
        };
        let mia = w.user("mia").await?;
        w.make_eligible(&mia, SECURITY_READER).await?;
        let kim = w.user("kim").await?;
        w.make_eligible(&kim, crate::activation::GLOBAL_READER).await?;
        let mut reviews = Vec::new();
        for (name, role, of) in [
            ("exchange", EXCHANGE_ADMINISTRATOR, pb::ReviewScope::Eligible),
            ("readers", crate::activation::GLOBAL_READER, pb::ReviewScope::Eligible),
            ("review managers", manager.id.as_str(), pb::ReviewScope::Active),
            ("security readers", SECURITY_READER, pb::ReviewScope::Eligible),
        ] {
            let review = w
                .reviews()
                .create_review(authed(&hal.token, removing_review(name, role, of, &admin_id)))
                .await?
                .into_inner();
            eventually(Duration::from_secs(10), "the review's items", || async {
                Ok((!items(review.id.clone()).await?.is_empty()).then_some(()))
            })
            .await?;
            reviews.push(review.id);
        }
        let stop_and_see = |review: String| {
            let w = &w;
            async move {
                w.reviews()
                    .stop_review(authed(
                        &w.admin,
                        pb::GetReviewRequest {
                            review_id: review.clone(),
                        },
                    ))
                    .await?;
                eventually(Duration::from_secs(15), "assignment's answer on the item", || async {
                    let all = items(review.clone()).await?;
                    Ok(all.into_iter().find(|i| i.outcome != "removal requested"))
                })
                .await
            }
        };
        let hal_loses = |kind| {
            let mut assignments = w.assignments();
            let asked = authed(&w.admin, hals(apb::RequestAction::AdminRemove, kind));
            async move { assignments.create_request(asked).await }
        };
        hal_loses(apb::AssignmentKind::Active).await?;
        let item = stop_and_see(reviews[0].clone()).await?;
        assert_eq!(
            (item.principal_id.as_str(), item.outcome.as_str()),
            (lee.id.as_str(), "removed")
        );
        assert!(!w.eligible(&lee.id).await?, "removed while Hal is still eligible");
        // Eligible only to join, through PIM, a group that holds the role: enough too.
        let admins = w.role_assignable_group("access admins").await?;
        let admins_scope = pim_proto::catalogue::group_scope(&admins);
        let group_access = |action, principal: &str, role: &str, scope: &str, kind| apb::CreateRequestRequest {
            scope: scope.into(),
            justification: "access admins rota".into(),
            ..crate::activation::request(action, kind, principal, role)
        };
        for asked in [
            group_access(
                apb::RequestAction::AdminAssign,
                &admins,
                &access_manager.id,
                "/",
                apb::AssignmentKind::Active,
            ),
            group_access(
                apb::RequestAction::AdminAssign,
                &hal.id,
                pim_proto::catalogue::GROUP_MEMBER,
                &admins_scope,
                apb::AssignmentKind::Eligible,
            ),
        ] {
            w.assignments().create_request(authed(&w.admin, asked)).await?;
        }
        hal_loses(apb::AssignmentKind::Eligible).await?;
        let item = stop_and_see(reviews[1].clone()).await?;
        assert_eq!(
            (item.principal_id.as_str(), item.outcome.as_str()),
            (kim.id.as_str(), "removed")
        );
        // With nothing left, the last review's removal is kept.
        let leaves = group_access(
            apb::RequestAction::AdminRemove,
            &hal.id,
            pim_proto::catalogue::GROUP_MEMBER,
            &admins_scope,
            apb::AssignmentKind::Eligible,
        );
        w.assignments().create_request(authed(&w.admin, leaves)).await?;
        let item = stop_and_see(reviews[2].clone()).await?;
        assert_eq!(item.principal_id, gina.id);
        assert!(
            item.outcome
                .contains("no longer holds, nor is eligible for, pim.assignments.manage"),
            "{}",
            item.outcome
        );
        assert!(w.check(&gina.id, &manager.id).await?.allowed, "Gina keeps her role");
        // Eligible again, but disabled: a disabled creator removes nothing.
        w.assignments()
            .create_request(authed(
                &w.admin,
                hals(apb::RequestAction::AdminAssign, apb::AssignmentKind::Eligible),
            ))
            .await?;
        pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(w.ts.channel.clone())
            .disable_user(authed(
                &w.admin,
                pim_proto::identity::v1::GetUserRequest { user: hal.id.clone() },
            ))
            .await?;
        let item = stop_and_see(reviews[3].clone()).await?;
        assert_eq!(item.principal_id, mia.id);
        assert!(item.outcome.contains("creator is disabled"), "{}", item.outcome);
        Ok(w)
    })
    .await
}

/// A review reviews what was in force when it started, whenever approval hears of it: an
/// eligibility granted while assignment's events were held back (a burst, a Redis outage)
/// joins the instance in progress once its event arrives; one granted after the start does
/// not.
/// An assignment scheduled to start after a review starts is reviewed too (access planted to
/// start later would otherwise pass every review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_covers_assignments_scheduled_to_start_later() -> anyhow::Result<()> {
    use apb::{AssignmentKind as K, RequestAction as A};
    run(|w| async move {
        let lee = w.user("lee").await?;
        let admin_id = w.admin_id().await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: Some(apb::Schedule {
                        start_time: Some(pim_runtime::db::to_timestamp(
                            pim_runtime::clock::Clock::now_ms(&w.clock) + 2 * DAY_S * 1000,
                        )),
                        expiration: None,
                    }),
                    justification: "from Wednesday".into(),
                    ..crate::activation::request(A::AdminAssign, K::Eligible, &lee.id, EXCHANGE_ADMINISTRATOR)
                },
            ))
            .await?;
        w.approval_sees(2, 0).await?;
        let review = w
            .reviews()
            .create_review(authed(
                &w.admin,
                removing_review("planted", EXCHANGE_ADMINISTRATOR, pb::ReviewScope::Eligible, &admin_id),
            ))
            .await?
            .into_inner();
        let items = w.my_items(&w.admin, &review.id).await?;
        let reviewed: Vec<_> = items.iter().map(|i| i.principal_id.as_str()).collect();
        assert_eq!(reviewed, vec![lee.id.as_str()], "the scheduled eligibility: {items:?}");
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_covers_what_was_in_force_at_its_start_however_late_approval_hears() -> anyhow::Result<()> {
    run(|w| async move {
        let (lee, kim) = (w.user("lee").await?, w.user("kim").await?);
        let admin_id = w.admin_id().await?;
        crate::protection::hold_back(&w.ts, streams::ASSIGNMENT, true).await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        w.clock.advance(Duration::from_secs(1));
        let mut asked = removing_review("exchange", EXCHANGE_ADMINISTRATOR, pb::ReviewScope::Eligible, &admin_id);
        asked.review.as_mut().expect("a review").auto_apply = false;
        let review = w.reviews().create_review(authed(&w.admin, asked)).await?.into_inner();
        w.clock.advance(Duration::from_secs(1));
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        crate::protection::hold_back(&w.ts, streams::ASSIGNMENT, false).await?;
        eventually(Duration::from_secs(15), "Lee's eligibility reviewed", || async {
            Ok((!w.my_items(&w.admin, &review.id).await?.is_empty()).then_some(()))
        })
        .await?;
        // Kim's came after the start: once approval has seen it, still only Lee's.
        w.approval_sees(3, 0).await?;
        let items = w.my_items(&w.admin, &review.id).await?;
        let reviewed: Vec<_> = items.iter().map(|i| i.principal_id.as_str()).collect();
        assert_eq!(reviewed, vec![lee.id.as_str()], "{items:?}");
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weekly_review_by_a_group_starts_again_with_a_fresh_snapshot() -> anyhow::Result<()> {
    run(|w| async move {
        let ann = w.user("ann").await?;
        let (lee, kim) = (w.user("lee").await?, w.user("kim").await?);
        // The reviewers are a group: its members review.
        let reviewers = w.group("mail team leads", &[&ann]).await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        w.approval_sees(2, 0).await?;
        let review = w
            .reviews()
            .create_review(authed(
                &w.admin,
                pb::CreateReviewRequest {
                    review: Some(pb::AccessReview {
                        name: "Exchange admins, weekly".into(),
                        role_id: EXCHANGE_ADMINISTRATOR.into(),
                        review_scope: pb::ReviewScope::Eligible as i32,
                        reviewer_ids: vec![reviewers.clone()],
                        duration: Some(prost_types::Duration {
                            seconds: DAY_S,
                            nanos: 0,
                        }),
                        recurrence: "weekly".into(),
                        default_decision: pb::DefaultDecision::NoChange as i32,
                        auto_apply: true,
                        ..Default::default()
                    }),
                },
            ))
            .await?
            .into_inner();
        assert_eq!((review.status.as_str(), review.instance), ("InProgress", 1));
        let items_now = || async {
            let mut items: Vec<(i32, String)> = w
                .my_items(&ann.token, &review.id)
                .await?
                .into_iter()
                .map(|i| (i.instance, i.principal_id))
                .collect();
            items.sort();
            anyhow::Ok(items)
        };
        assert_eq!(items_now().await?, vec![(1, lee.id.clone())]);
        let state = || async {
            let r = w.review(&review.id).await?;
            anyhow::Ok((r.status, r.instance))
        };

        // The first instance ends after its day: unanswered, Lee keeps the role (no change),
        // and the review waits for next week rather than completing.
        let approvals = w.ts.suite.approval().expect("approval runs here").approvals();
        w.clock.advance(Duration::from_secs(DAY_S as u64));
        w.approval_tick().await?;
        assert_eq!(state().await?, ("NotStarted".to_owned(), 1));
        assert!(items_now().await?.is_empty(), "nothing to review between instances");
        assert!(w.eligible(&lee.id).await?, "no change");

        // Kim became eligible in between; the second instance, a week after the first began,
        // reviews both.
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        w.approval_sees(3, 0).await?;
        w.clock.advance(Duration::from_secs(6 * DAY_S as u64 - 1));
        assert_eq!(approvals.run_review_timers_once().await?, 0, "not yet");
        w.clock.advance(Duration::from_secs(1));
        w.approval_tick().await?;
        assert_eq!(state().await?, ("InProgress".to_owned(), 2));
        let mut both = vec![(2, lee.id.clone()), (2, kim.id.clone())];
        both.sort();
        assert_eq!(items_now().await?, both, "a new snapshot, with Kim");

        // Ann decides as a member of the group; Kim, in no group and under review, may not.
        let items = w.my_items(&ann.token, &review.id).await?;
        let kims = items.iter().find(|i| i.principal_id == kim.id).expect("Kim's item");
        let decide = |token: &str| {
            authed(
                token,
                pb::RecordDecisionRequest {
                    item_id: kims.id.clone(),
                    decision: pb::Decision::Approve as i32,
                    justification: "still on call".into(),
                },
            )
        };
        let refused = w
            .reviews()
            .record_decision(decide(&kim.token))
            .await
            .expect_err("not a reviewer");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let decided = w.reviews().record_decision(decide(&ann.token)).await?.into_inner();
        assert_eq!(
            (decided.decision, decided.reviewer_id),
            (pb::Decision::Approve as i32, ann.id.clone())
        );
        Ok(w)
    })
    .await
}

/// The break-glass administrator is the only permanent Global Administrator; a review of the
/// role's active assignments whose reviewer never answers (default: remove, auto-apply) ends.
/// Assignment keeps the assignment (the last-Global-Administrator protection), and the access
/// index, the review item and the audit log all say so: the administrator still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_never_locks_out_the_last_global_administrator() -> anyhow::Result<()> {
    use pim_proto::audit::v1 as aupb;
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

    crate::activation::run_on_both(|w| async move {
        let ann = w.user("ann").await?;
        let admin_id = w.admin_id().await?;
        let review = w
            .reviews()
            .create_review(authed(
                &w.admin,
                removing_review(
                    "Global Administrators",
                    GLOBAL_ADMINISTRATOR,
                    pb::ReviewScope::Active,
                    &ann.id,
                ),
            ))
            .await?
            .into_inner();
        let items = w.my_items(&ann.token, &review.id).await?;
        assert_eq!(items.len(), 1, "the break-glass assignment: {items:?}");
        assert_eq!(items[0].principal_id, admin_id);

        // Ann never answers; the administrator stops the review.
        w.reviews()
            .stop_review(authed(
                &w.admin,
                pb::GetReviewRequest {
                    review_id: review.id.clone(),
                },
            ))
            .await?;
        let item = eventually(Duration::from_secs(15), "assignment's answer on the item", || async {
            let items = w
                .reviews()
                .list_review_items(authed(
                    &w.admin,
                    pb::ListReviewItemsRequest {
                        review_id: review.id.clone(),
                        instance: 0,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .items;
            Ok(items.into_iter().find(|i| i.outcome != "removal requested"))
        })
        .await?;
        assert_eq!(item.decision, pb::Decision::Deny as i32, "the default decision");
        assert!(
            item.outcome.contains("last-Global-Administrator protection"),
            "{}",
            item.outcome
        );

        // The administrator is still Global Administrator, to CheckAccess and in practice.
        assert!(w.check(&admin_id, GLOBAL_ADMINISTRATOR).await?.allowed);
        DirectoryServiceClient::new(w.ts.channel.clone())
            .create_user(authed(
                &w.admin,
                ipb::CreateUserRequest {
                    user_name: "after-review".into(),
                    password: pim_e2e::password_of("after-review"),
                    ..Default::default()
                },
            ))
            .await?;

        // The refusal is in the audit log.
        let refused = eventually(Duration::from_secs(15), "the refusal's audit record", || async {
            let query = aupb::QueryEventsRequest {
                action: "pim.assignment.v1.ReviewRemovalRefused".into(),
                ..Default::default()
            };
            Ok(w.ts.audit_records(&w.admin, query).await?.into_iter().next())
        })
        .await?;
        assert_eq!(
            (refused.target_id.as_str(), refused.outcome.as_str()),
            (admin_id.as_str(), "refused")
        );
        assert_eq!(refused.role_id, GLOBAL_ADMINISTRATOR);
        Ok(w)
    })
    .await
}

/// Who decides on privileged access is a group only if role-assignable: any other group's
/// members are managed by Groups and User Administrators, who could add themselves and
/// approve their own Global Administrator activation, or keep their own access in its review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_role_assignable_groups_decide_on_privileged_access() -> anyhow::Result<()> {
    run(|w| async move {
        let ann = w.user("ann").await?;
        let open = w.group("ga approvers", &[&ann]).await?;
        let guarded = w.role_assignable_group("ga approvers (role-assignable)").await?;
        let approved_by = |approvers: Vec<String>, escalation: Vec<String>| {
            move |p: &mut apb::RolePolicy| {
                p.approval_required = true;
                p.approval_stages = vec![ApprovalStageSettings {
                    approver_ids: approvers,
                    approvals_required: 1,
                    escalation_approver_ids: escalation,
                    escalate_after: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                    ..Default::default()
                }];
            }
        };
        for (approvers, escalation) in [(vec![open.clone()], vec![]), (vec![ann.id.clone()], vec![open.clone()])] {
            let refused = w
                .set_policy(GLOBAL_ADMINISTRATOR, approved_by(approvers, escalation))
                .await
                .expect_err("a group anyone managing groups controls");
            let refused = refused.downcast_ref::<tonic::Status>().expect("a gRPC answer");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(
                refused.message().contains("\"ga approvers\" is not role-assignable"),
                "{refused:?}"
            );
        }
        w.set_policy(
            GLOBAL_ADMINISTRATOR,
            approved_by(vec![guarded.clone()], vec![ann.id.clone()]),
        )
        .await?;
        // A role that is not privileged may name any group.
        w.set_policy(EXCHANGE_ADMINISTRATOR, approved_by(vec![open.clone()], vec![]))
            .await?;

        let refused = w
            .reviews()
            .create_review(authed(
                &w.admin,
                removing_review("admins", "Global Administrator", pb::ReviewScope::Eligible, &open),
            ))
            .await
            .expect_err("a group anyone managing groups controls");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("review.reviewer_ids"), "{refused:?}");
        assert!(refused.message().contains("not role-assignable"), "{refused:?}");
        for (role, reviewers) in [("Global Administrator", &guarded), ("Exchange Administrator", &open)] {
            w.reviews()
                .create_review(authed(
                    &w.admin,
                    removing_review("kept", role, pb::ReviewScope::Eligible, reviewers),
                ))
                .await?;
        }
        Ok(w)
    })
    .await
}
