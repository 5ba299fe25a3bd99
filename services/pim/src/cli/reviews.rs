//! `pim reviews`: create and follow access reviews, and decide the items you review.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use pim_proto::approval::v1 as pb;
use pim_proto::approval::v1::access_review_service_client::AccessReviewServiceClient;
use pim_runtime::db::from_timestamp;

use super::{Cell, ClientArgs, Names, Session, explain, print_table, snake_case, time};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ReviewScopeArg {
    Eligible,
    Active,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DefaultArg {
    NoChange,
    Remove,
    Approve,
    Recommendation,
}

#[derive(Subcommand)]
pub(crate) enum ReviewsCommand {
    /// Access reviews you manage or review.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start reviewing who holds a role at a scope.
    Create(CreateArgs),
    /// The items waiting for your decision (of one review, or of all in progress); with
    /// --all, every item of the review's latest instance and its outcome (review managers).
    Items {
        /// The review's id (see `pim reviews list`); default: every review in progress.
        review: Option<String>,
        /// Every item and its outcome (kept, removed, or kept by a protection), not just yours.
        #[arg(long, requires = "review")]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Keep (--approve) or remove (--deny) an assignment under review.
    Decide(DecideArgs),
    /// End a review now: unanswered items take the default decision, and no recurrence follows.
    Stop {
        /// The review's id (see `pim reviews list`).
        review: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// The review's name, as reviewers will see it.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    role: super::RoleRef,
    /// The scope whose holders are reviewed (assignments there and below).
    #[arg(long, default_value = "/")]
    scope: String,
    /// Review who holds access to a group instead (--group NAME --access member|owner).
    #[command(flatten)]
    group: super::policy::GroupTarget,
    /// Which assignments are reviewed: eligible, active or both.
    #[arg(long, value_enum, default_value = "both")]
    assignments: ReviewScopeArg,
    /// Reviewers, comma-separated: user or group names (`group:NAME` where a name alone is
    /// ambiguous; a group's members review) or ids. A reviewer never decides their own
    /// access; the others do.
    #[arg(long, value_delimiter = ',')]
    reviewers: Vec<String>,
    /// Each holder reviews their own assignment.
    #[arg(long)]
    self_review: bool,
    /// How long each instance runs (1h to 180d).
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true, default_value = "14d")]
    duration: Duration,
    /// none, weekly, monthly, quarterly, semiannually or annually.
    #[arg(long, default_value = "none")]
    recurrence: String,
    /// What happens to items nobody answered.
    #[arg(long, value_enum, default_value = "no-change")]
    default_decision: DefaultArg,
    /// Remove denied assignments when the review ends.
    #[arg(long)]
    auto_apply: bool,
    /// Do not mail the reviewers when an instance starts (with PIM_NOTIFICATIONS on, they are by default).
    #[arg(long)]
    no_mail: bool,
    /// Do not remind the reviewers, half through an instance, of items still waiting.
    #[arg(long)]
    no_reminders: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct DecideArgs {
    /// The item id (from `pim reviews items`).
    item: String,
    /// Keep the assignment.
    #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
    approve: bool,
    /// Remove the assignment (when the review ends, or at once with auto-apply).
    #[arg(long)]
    deny: bool,
    /// Why (the review may require it).
    #[arg(long, short = 'j', default_value = "")]
    justification: String,
    #[command(flatten)]
    client: ClientArgs,
}

fn decision_name(d: i32) -> String {
    match pb::Decision::try_from(d) {
        Ok(pb::Decision::Approve) => "approve".into(),
        Ok(pb::Decision::Deny) => "deny".into(),
        _ => String::new(),
    }
}

pub(crate) async fn run(cmd: ReviewsCommand) -> anyhow::Result<i32> {
    match cmd {
        ReviewsCommand::List { client } => {
            let session = Session::open(&client, true)?;
            let mut api = AccessReviewServiceClient::new(session.channel.clone());
            let mut names = Names::new(&session);
            let mut rows = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = api
                    .list_reviews(session.request(pb::ListReviewsRequest {
                        page_size: 500,
                        page_token,
                    })?)
                    .await
                    .map_err(explain)?
                    .into_inner();
                for r in page.reviews {
                    rows.push(vec![
                        Cell::from(r.id),
                        r.name.into(),
                        names.role(&r.role_id).await.into(),
                        r.scope.into(),
                        snake_case(&r.status).into(),
                        r.instance.to_string().into(),
                        time(r.instance_end.as_ref().map(from_timestamp)).into(),
                    ]);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print_table(&["ID", "NAME", "ROLE", "SCOPE", "STATUS", "INSTANCE", "ENDS"], rows);
            Ok(0)
        }
        ReviewsCommand::Create(a) => {
            let session = Session::open(&a.client, true)?;
            let mut reviewer_ids = Vec::new();
            for r in a.reviewers.iter().filter(|r| !r.trim().is_empty()) {
                reviewer_ids.push(session.principal_id(r.trim()).await?);
            }
            let (role_id, scope) = a.group.target(&session, a.role.given(), &a.scope).await?;
            let review = pb::AccessReview {
                name: a.name,
                role_id,
                scope,
                review_scope: match a.assignments {
                    ReviewScopeArg::Eligible => pb::ReviewScope::Eligible,
                    ReviewScopeArg::Active => pb::ReviewScope::Active,
                    ReviewScopeArg::Both => pb::ReviewScope::Both,
                } as i32,
                reviewer_ids,
                self_review: a.self_review,
                duration: Some(pim_runtime::db::duration_pb(a.duration)),
                recurrence: a.recurrence,
                default_decision: match a.default_decision {
                    DefaultArg::NoChange => pb::DefaultDecision::NoChange,
                    DefaultArg::Remove => pb::DefaultDecision::Remove,
                    DefaultArg::Approve => pb::DefaultDecision::Approve,
                    DefaultArg::Recommendation => pb::DefaultDecision::Recommendation,
                } as i32,
                auto_apply: a.auto_apply,
                mail_notifications_disabled: a.no_mail,
                reminders_disabled: a.no_reminders,
                ..Default::default()
            };
            let created = AccessReviewServiceClient::new(session.channel.clone())
                .create_review(session.request(pb::CreateReviewRequest { review: Some(review) })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!(
                "review {} {} (instance {}, ends {})",
                created.id,
                snake_case(&created.status),
                created.instance,
                time(created.instance_end.as_ref().map(from_timestamp))
            );
            Ok(0)
        }
        ReviewsCommand::Items { review, all, client } => {
            let session = Session::open(&client, true)?;
            let reviews = AccessReviewServiceClient::new(session.channel.clone());
            let review_id = review.unwrap_or_default();
            let items = super::all_pages(|page_token| {
                let mut reviews = reviews.clone();
                let (session, review_id) = (&session, review_id.clone());
                async move {
                    let page = if all {
                        let asked = pb::ListReviewItemsRequest {
                            review_id,
                            instance: 0,
                            page_size: 0,
                            page_token,
                        };
                        reviews.list_review_items(session.request(asked)?).await
                    } else {
                        let asked = pb::ListMyReviewItemsRequest {
                            review_id,
                            page_size: 0,
                            page_token,
                        };
                        reviews.list_my_review_items(session.request(asked)?).await
                    }
                    .map_err(explain)?
                    .into_inner();
                    Ok((page.items, page.next_page_token))
                }
            })
            .await?;
            // Reviewers see whom they keep by name (an id that cannot be looked up stays).
            let mut names = Names::new(&session);
            let mut rows = Vec::new();
            for i in items {
                rows.push(vec![
                    Cell::from(i.id),
                    names.principal(&i.principal_id).await.into(),
                    names.role(&i.role_id).await.into(),
                    i.kind.into(),
                    i.scope.into(),
                    i.recommendation.into(),
                    decision_name(i.decision).into(),
                    i.outcome.into(),
                ]);
            }
            print_table(
                &[
                    "ITEM",
                    "PRINCIPAL",
                    "ROLE",
                    "KIND",
                    "SCOPE",
                    "RECOMMENDATION",
                    "DECISION",
                    "OUTCOME",
                ],
                rows,
            );
            Ok(0)
        }
        ReviewsCommand::Decide(a) => {
            let session = Session::open(&a.client, true)?;
            let item = AccessReviewServiceClient::new(session.channel.clone())
                .record_decision(session.request(pb::RecordDecisionRequest {
                    item_id: a.item.trim().to_owned(),
                    decision: if a.approve {
                        pb::Decision::Approve
                    } else {
                        pb::Decision::Deny
                    } as i32,
                    justification: a.justification,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!(
                "item {} ({}): {}",
                item.id,
                item.principal_id,
                decision_name(item.decision)
            );
            Ok(0)
        }
        ReviewsCommand::Stop { review, client } => {
            let session = Session::open(&client, true)?;
            let stopped = AccessReviewServiceClient::new(session.channel.clone())
                .stop_review(session.request(pb::GetReviewRequest { review_id: review })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!("review {} {}", stopped.id, snake_case(&stopped.status));
            Ok(0)
        }
    }
}
