//! *Approvals* (what waits for the caller, the requester's recent history, approve or deny
//! with a reason) and *Access reviews* (the caller's items, with the recommendation).

use axum::extract::Path;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use pim_proto::approval::v1 as rpb;
use pim_proto::approval::v1::access_review_service_client::AccessReviewServiceClient;
use pim_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use pim_proto::assignment::v1::{AssignmentKind, RequestAction};

use crate::lookup::Names;
use crate::stepup;
use crate::view::{self, moment, timestamp};
use crate::web::{Caller, CheckedForm, Failure};

fn approvals_client(caller: &Caller) -> ApprovalServiceClient<tonic::transport::Channel> {
    ApprovalServiceClient::new(caller.portal.0.upstreams.approval.clone())
}

fn duration_text(d: &Option<prost_types::Duration>) -> String {
    d.as_ref()
        .map(|d| pim_runtime::format::duration(std::time::Duration::from_secs(d.seconds.max(0) as u64)))
        .unwrap_or_default()
}

/// GET /approvals: requests waiting for the caller's decision.
pub async fn approvals(
    caller: Caller,
    axum::extract::Query(paging): axum::extract::Query<crate::view::Paging>,
) -> Html<String> {
    let mut next = String::new();
    let content = async {
        let listed = approvals_client(&caller)
            .list_approvals(caller.request(rpb::ListApprovalsRequest {
                status: rpb::ApprovalStatus::Pending as i32,
                page_size: 50,
                page_token: paging.page.clone(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        next = listed.next_page_token;
        let pending = listed.approvals;
        let names = Names::of(&caller, pending.iter().map(|a| a.requester_id.clone()).collect()).await;
        Ok::<_, Failure>(html! {
            @if pending.is_empty() {
                p { "Nothing waits for your decision." }
            }
            @for a in &pending {
                (approval_card(&caller, a, &names, false))
            }
        })
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    let content = maud::html! {
        (content)
        (crate::view::next_page("/approvals", &next, "More approvals"))
    };
    view::page(&caller, "/approvals", "Approvals", content)
}

fn approval_card(caller: &Caller, a: &rpb::Approval, names: &Names, detailed: bool) -> Markup {
    let requester = names.get(&a.requester_id);
    html! {
        article.card aria-label=(format!("{} for {requester}", a.role_name)) {
            h2 { (a.role_name) " for " (requester) }
            dl {
                dt { "Scope" } dd { code { (a.scope) } }
                @match RequestAction::try_from(a.action) {
                    Ok(action @ (RequestAction::SelfExtend | RequestAction::SelfRenew)) => {
                        @let kind = AssignmentKind::try_from(a.kind).map(|k| k.text()).unwrap_or("active");
                        dt { "Asks" }
                        dd {
                            (if action == RequestAction::SelfExtend { "To extend " } else { "To renew " })
                            "the " (kind) " assignment until " (moment(timestamp(&a.end_time)))
                        }
                    }
                    Ok(RequestAction::SelfActivate) => { dt { "Activation for" } dd { (duration_text(&a.duration)) } }
                    // Opened before approvals said what they ask for.
                    _ => { dt { "For" } dd { (duration_text(&a.duration)) } }
                }
                dt { "Justification" } dd { (a.justification) }
                @if let Some(t) = &a.ticket { @if !t.number.is_empty() { dt { "Ticket" } dd { (t.system) " " (t.number) } } }
                dt { "Asked" } dd { (moment(timestamp(&a.created_at))) }
                dt { "Decide by" } dd { (moment(timestamp(&a.expires_at))) }
                @if a.stages.len() > 1 { dt { "Stage" } dd { (a.current_stage + 1) " of " (a.stages.len()) } }
            }
            @if detailed {
                h3 { "Recent activations by " (requester) }
                @if a.requester_history.is_empty() {
                    p { "None." }
                } @else {
                    ul {
                        @for h in &a.requester_history {
                            li { (h.role_name) " at " code { (h.scope) } ", " (moment(timestamp(&h.start_time))) " to " (moment(timestamp(&h.end_time))) }
                        }
                    }
                }
            } @else {
                p { a href=(format!("/approvals/{}", a.id)) { "Details and " (requester) "'s recent activations" } }
            }
            @if a.status == rpb::ApprovalStatus::Pending as i32 && a.requester_id == caller.user.principal_id {
                // Nobody decides their own request: no form to try (and be flagged for).
                p { "This is your request: its approvers decide it." }
            } @else if a.status == rpb::ApprovalStatus::Pending as i32 {
                form.decide method="post" action=(format!("/approvals/{}", a.id)) {
                    (view::csrf(caller))
                    input type="hidden" name="what" value=(format!("Deciding on {} for {requester}", a.role_name));
                    label for=(format!("reason-{}", a.id)) { "Reason" }
                    textarea id=(format!("reason-{}", a.id)) name="reason" rows="2" required {}
                    button type="submit" name="decision" value="approve" { "Approve" }
                    button.deny type="submit" name="decision" value="deny" { "Deny" }
                }
            }
        }
    }
}

/// GET /approvals/{id}: one approval with the requester's recent activations.
pub async fn approval(caller: Caller, Path(id): Path<String>) -> Html<String> {
    let content = async {
        // Mails name the request an approval is for (/approvals/{request id}): either id does.
        let a = approvals_client(&caller)
            .get_approval(caller.request(rpb::GetApprovalRequest {
                approval_id: id.clone(),
            }))
            .await?
            .into_inner();
        let names = Names::of(&caller, vec![a.requester_id.clone()]).await;
        Ok::<_, Failure>(approval_card(&caller, &a, &names, true))
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/approvals", "Approval", content)
}

/// POST /approvals/{id}: approve or deny, with a reason (and the step-up where asked).
pub async fn decide(mut caller: Caller, Path(id): Path<String>, CheckedForm(fields): CheckedForm) -> Response {
    let action = format!("/approvals/{id}");
    let what = fields.get("what").to_owned();
    if let Err(page) = stepup::verify_if_given(&mut caller, &fields, &action, &what).await {
        return page;
    }
    let decision = match fields.get("decision") {
        "approve" => rpb::Decision::Approve,
        "deny" => rpb::Decision::Deny,
        _ => {
            caller.flash(false, "Choose Approve or Deny.");
            return Redirect::to("/approvals").into_response();
        }
    };
    let decided = approvals_client(&caller)
        .decide(caller.request(rpb::DecideRequest {
            approval_id: id,
            decision: decision as i32,
            justification: fields.get("reason").to_owned(),
        }))
        .await;
    match decided {
        Ok(a) => {
            let a = a.into_inner();
            let done = if decision == rpb::Decision::Approve {
                "approved"
            } else {
                "denied"
            };
            caller.flash(true, format!("You {done} {} for this request.", a.role_name));
        }
        Err(status) => match Failure::from(status) {
            Failure::MfaNeeded(why) => return stepup::asked_again(&caller, &action, &fields, &what, &why),
            failure => caller.flash(false, format!("Not decided: {}", failure.text())),
        },
    }
    Redirect::to("/approvals").into_response()
}

fn reviews_client(caller: &Caller) -> AccessReviewServiceClient<tonic::transport::Channel> {
    AccessReviewServiceClient::new(caller.portal.0.upstreams.approval.clone())
}

fn decision_text(decision: i32) -> &'static str {
    match rpb::Decision::try_from(decision).unwrap_or(rpb::Decision::Unspecified) {
        rpb::Decision::Approve => "keep",
        rpb::Decision::Deny => "remove",
        rpb::Decision::Unspecified => "not decided",
    }
}

/// GET /reviews: the items the caller reviews, in every review in progress.
pub async fn reviews(caller: Caller) -> Html<String> {
    let content = async {
        let items = pim_runtime::grpc::all_pages(|page_token| {
            let mut client = reviews_client(&caller);
            let asked = caller.request(rpb::ListMyReviewItemsRequest {
                page_token,
                ..Default::default()
            });
            async move {
                let page = client.list_my_review_items(asked).await?.into_inner();
                Ok::<_, Failure>((page.items, page.next_page_token))
            }
        })
        .await?;
        let names = Names::of(&caller, items.iter().map(|i| i.principal_id.clone()).collect()).await;
        let role_list = crate::lookup::role_list(&caller).await?;
        let roles: std::collections::HashMap<String, String> =
            role_list.iter().map(|r| (r.id.clone(), r.name.clone())).collect();
        // Reviews managers see every review; anyone else is refused, and sees only theirs.
        let all = reviews_client(&caller)
            .list_reviews(caller.request(rpb::ListReviewsRequest {
                page_size: 50,
                ..Default::default()
            }))
            .await
            .map(|answer| answer.into_inner().reviews)
            .ok();
        Ok::<_, Failure>(html! {
            @if let Some(all) = &all {
                (review_list(all, &roles))
                (start_form(&caller, &role_list))
                h2 { "Waiting for your decision" }
            }
            @if items.is_empty() {
                p { "No access review waits for you." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Who" } th scope="col" { "Role" } th scope="col" { "Scope" } th scope="col" { "Kind" } th scope="col" { "Recommendation" } th scope="col" { "Your decision" } th scope="col" { "Decide" } } }
                    tbody {
                        @for item in &items {
                            @let who = names.get(&item.principal_id);
                            @let role = roles.get(&item.role_id).map(String::as_str).unwrap_or(&item.role_id);
                            tr {
                                td { (who) }
                                td { (role) }
                                td { code { (item.scope) } }
                                td { (item.kind) }
                                td { (item.recommendation) }
                                td { (decision_text(item.decision)) }
                                td {
                                    form.decide method="post" action=(format!("/reviews/items/{}", item.id)) {
                                        (view::csrf(&caller))
                                        label for=(format!("why-{}", item.id)) { "Reason" }
                                        input id=(format!("why-{}", item.id)) name="reason" type="text";
                                        button type="submit" name="decision" value="approve" aria-label=(format!("Keep {role} for {who}")) { "Keep" }
                                        button.deny type="submit" name="decision" value="deny" aria-label=(format!("Remove {role} from {who}")) { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        })
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/reviews", "Access reviews", content)
}

fn review_list(all: &[rpb::AccessReview], roles: &std::collections::HashMap<String, String>) -> Markup {
    html! {
        h2 { "Reviews" }
        @if all.is_empty() { p { "None yet." } } @else {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Scope" } th scope="col" { "Status" } th scope="col" { "Ends" } } }
                tbody {
                    @for r in all {
                        tr {
                            td { (r.name) }
                            td { (roles.get(&r.role_id).map(String::as_str).unwrap_or(&r.role_id)) }
                            td { code { (r.scope) } }
                            td { (r.status) }
                            td { (moment(timestamp(&r.instance_end))) }
                        }
                    }
                }
            }
        }
    }
}

/// The form that starts a review (reviews managers; the service says so to anyone else).
fn start_form(caller: &Caller, roles: &[pim_proto::assignment::v1::RoleDefinition]) -> Markup {
    html! {
        details {
            summary { "Start an access review" }
            form method="post" action="/reviews" {
                (view::csrf(caller))
                label for="review-name" { "Name" }
                input id="review-name" name="name" type="text" required;
                label for="review-role" { "Role whose holders are reviewed" }
                select id="review-role" name="role_id" {
                    @for r in roles.iter().filter(|r| !pim_proto::catalogue::is_group_access(&r.id)) {
                        option value=(r.id) { (r.name) }
                    }
                }
                label for="review-reviewers" { "Reviewers (user names, comma-separated)" }
                input id="review-reviewers" name="reviewers" type="text";
                label for="review-duration" { "Runs for (e.g. 14d)" }
                input id="review-duration" name="duration" type="text" value="14d";
                div.check { input type="checkbox" id="review-self" name="self_review" value="on"; label for="review-self" { "Each holder reviews their own access" } }
                div.check { input type="checkbox" id="review-apply" name="auto_apply" value="on"; label for="review-apply" { "Remove denied access when the review ends" } }
                div.check { input type="checkbox" id="review-mail" name="mail" value="on" checked; label for="review-mail" { "Mail the reviewers when it starts" } }
                div.check { input type="checkbox" id="review-remind" name="reminders" value="on" checked; label for="review-remind" { "Remind them half through" } }
                button type="submit" { "Start the review" }
            }
        }
    }
}

/// POST /reviews: starts an access review.
pub async fn start(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let started = async {
        let duration = pim_runtime::format::parse_duration(fields.get("duration"))
            .map_err(|why| Failure::bad_input(format!("{why} (write it like 14d)")))?;
        let mut reviewer_ids = Vec::new();
        for name in fields
            .get("reviewers")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            reviewer_ids.push(crate::lookup::user_named(&caller, name).await?.id);
        }
        let review = rpb::AccessReview {
            name: fields.get("name").trim().to_owned(),
            role_id: fields.get("role_id").to_owned(),
            scope: "/".into(),
            review_scope: rpb::ReviewScope::Both as i32,
            reviewer_ids,
            self_review: fields.get("self_review") == "on",
            duration: Some(pim_runtime::db::duration_pb(duration)),
            auto_apply: fields.get("auto_apply") == "on",
            mail_notifications_disabled: fields.get("mail") != "on",
            reminders_disabled: fields.get("reminders") != "on",
            ..Default::default()
        };
        let created = reviews_client(&caller)
            .create_review(caller.request(rpb::CreateReviewRequest { review: Some(review) }))
            .await?
            .into_inner();
        Ok::<_, Failure>(created.name)
    }
    .await;
    match started {
        Ok(name) => caller.flash(true, format!("The review {name} is started.")),
        Err(failure) => caller.flash(false, format!("Not started: {}", failure.text())),
    }
    Redirect::to("/reviews").into_response()
}

/// POST /reviews/items/{id}: records the caller's decision on one item.
pub async fn record(caller: Caller, Path(id): Path<String>, CheckedForm(fields): CheckedForm) -> Response {
    let decision = match fields.get("decision") {
        "approve" => rpb::Decision::Approve,
        "deny" => rpb::Decision::Deny,
        _ => {
            caller.flash(false, "Choose Keep or Remove.");
            return Redirect::to("/reviews").into_response();
        }
    };
    let recorded = reviews_client(&caller)
        .record_decision(caller.request(rpb::RecordDecisionRequest {
            item_id: id,
            decision: decision as i32,
            justification: fields.get("reason").to_owned(),
        }))
        .await;
    match recorded {
        Ok(item) => caller.flash(
            true,
            format!("Recorded: {}.", decision_text(item.into_inner().decision)),
        ),
        Err(status) => caller.flash(false, format!("Not recorded: {}", Failure::from(status).text())),
    }
    Redirect::to("/reviews").into_response()
}
