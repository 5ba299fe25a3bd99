//! *My roles* (eligible and active, activate and deactivate, with the MFA step-up in place)
//! and *My requests* (their progress, live, and cancel).

use std::collections::HashMap;

use axum::extract::Path;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::common::v1::Ticket;

use crate::view::{self, moment, short, time_left, timestamp};
use crate::web::{Caller, CheckedForm, Failure};
use crate::{stepup, web};

pub async fn home() -> Redirect {
    Redirect::to("/roles")
}

fn assignments(caller: &Caller) -> AssignmentServiceClient<tonic::transport::Channel> {
    AssignmentServiceClient::new(caller.portal.0.upstreams.assignment.clone())
}

/// A request's status as people say it.
pub fn status_text(status: i32) -> &'static str {
    use apb::RequestStatus as S;
    match S::try_from(status).unwrap_or(S::Unspecified) {
        S::PendingApproval => "waiting for approval",
        S::Granted => "approved, starting",
        S::Denied => "denied",
        S::Provisioned => "active",
        S::ScheduleCreated => "scheduled",
        S::Revoked => "revoked",
        S::Canceled => "canceled",
        S::Failed => "failed",
        S::Expired => "expired",
        S::Unspecified => "unknown",
    }
}

fn is_final(status: i32) -> bool {
    use apb::RequestStatus as S;
    !matches!(
        S::try_from(status).unwrap_or(S::Unspecified),
        S::PendingApproval | S::Granted | S::Unspecified
    )
}

/// GET /roles.
pub async fn my_roles(caller: Caller) -> Html<String> {
    let content = match roles_content(&caller).await {
        Ok(content) => content,
        // A dead token ends the portal session too, as on every other page.
        Err(failure) => caller.failed(failure),
    };
    view::page(&caller, "/roles", "My roles", content)
}

async fn roles_content(caller: &Caller) -> Result<Markup, Failure> {
    let mine = || apb::ListAssignmentsRequest {
        mine: true,
        ..Default::default()
    };
    let mut eligible = crate::lookup::assignments(caller, false, mine()).await?;
    let mut active = crate::lookup::assignments(caller, true, mine()).await?;
    name_group_access(caller, [&mut eligible, &mut active]).await;
    let pending = assignments(caller)
        .list_requests(caller.request(apb::ListRequestsRequest {
            principal_id: caller.user.principal_id.clone(),
            status: apb::RequestStatus::PendingApproval as i32,
            page_size: 50,
            ..Default::default()
        }))
        .await?
        .into_inner()
        .requests;
    let names = if pending.is_empty() {
        HashMap::new()
    } else {
        crate::lookup::role_names(caller).await?
    };
    let now = caller.portal.0.sessions.now_ms();
    Ok(html! {
        section aria-labelledby="active-h" {
            h2 id="active-h" { "Active" }
            @if active.is_empty() {
                p { "No active roles." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Role" } th scope="col" { "Scope" } th scope="col" { "Until" } th scope="col" { "Time left" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for (i, a) in active.iter().enumerate() {
                            @let end = timestamp(&a.end_time);
                            tr data-role=(a.role_name) {
                                td { (a.role_name) (via(a)) }
                                td { code { (a.scope) } }
                                td { (moment(end)) }
                                td.left data-end=[end] { (time_left(end, now)) }
                                td {
                                    @if a.activated && a.principal_id == caller.user.principal_id {
                                        (deactivate_form(caller, &a.role_id, &a.scope, &a.role_name, "/roles"))
                                    } @else if a.extendable_at(now) && a.via_group_id.is_empty() && a.principal_id == caller.user.principal_id {
                                        (extend_form(caller, &format!("active-{i}"), a))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !pending.is_empty() {
            section aria-labelledby="pending-h" {
                h2 id="pending-h" { "Waiting for approval" }
                ul {
                    @for r in &pending {
                        li {
                            (names.get(&r.role_id).map(String::as_str).unwrap_or(&r.role_id))
                            " at " code { (r.scope) } ": "
                            span.live data-request=(r.id) aria-live="polite" { (status_text(r.status)) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="eligible-h" {
            h2 id="eligible-h" { "Eligible" }
            @if eligible.is_empty() {
                p { "You have no eligible roles." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Role" } th scope="col" { "Scope" } th scope="col" { "Eligible until" } th scope="col" { "Activate" } } }
                    tbody {
                        @for (i, a) in eligible.iter().enumerate() {
                            tr {
                                td { (a.role_name) (via(a)) }
                                td { code { (a.scope) } }
                                td { (moment(timestamp(&a.end_time))) }
                                td {
                                    (activate_form(caller, i, a))
                                    @if a.extendable_at(now) && a.via_group_id.is_empty() { (extend_form(caller, &format!("eligible-{i}"), a)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// Group access (PIM for Groups: the Group Member or Owner role at the group's scope) reads as
/// what it is: "Member of payments-oncall".
async fn name_group_access(caller: &Caller, lists: [&mut Vec<apb::Assignment>; 2]) {
    use pim_proto::catalogue;
    let groups: Vec<String> = lists
        .iter()
        .flat_map(|list| list.iter())
        .filter_map(|a| catalogue::group_of_scope(&a.scope).map(str::to_owned))
        .collect();
    if groups.is_empty() {
        return;
    }
    let names = crate::lookup::Names::of(caller, groups).await;
    for list in lists {
        for a in list.iter_mut() {
            let access = match a.role_id.as_str() {
                catalogue::GROUP_MEMBER => "Member",
                catalogue::GROUP_OWNER => "Owner",
                _ => continue,
            };
            if let Some(group) = catalogue::group_of_scope(&a.scope) {
                a.role_name = format!("{access} of {}", names.get(group));
            }
        }
    }
}

fn via(a: &apb::Assignment) -> Markup {
    html! {
        @if !a.via_group_id.is_empty() {
            " " small { "(through a group)" }
        }
    }
}

/// Asking an administrator for more time on an eligibility that ends (Entra's "Extend").
/// Asks to extend an assignment (eligible, or active as an administrator assigned it) that
/// ends; `i` tells its fields from the other rows'.
fn extend_form(caller: &Caller, i: &str, a: &apb::Assignment) -> Markup {
    let kind = if a.kind == apb::AssignmentKind::Active as i32 {
        "active"
    } else {
        "eligible"
    };
    html! {
        details {
            summary { "Extend " span.visually-hidden { (a.role_name) } }
            form method="post" action="/roles/extend" {
                (view::csrf(caller))
                input type="hidden" name="role_id" value=(a.role_id);
                input type="hidden" name="scope" value=(a.scope);
                input type="hidden" name="role_name" value=(a.role_name);
                input type="hidden" name="kind" value=(kind);
                label for=(format!("extend-{i}")) { "For (e.g. 90d)" }
                input id=(format!("extend-{i}")) name="duration" type="text" value="90d";
                label for=(format!("extend-why-{i}")) { "Justification" }
                input id=(format!("extend-why-{i}")) name="justification" type="text";
                button type="submit" { "Ask to extend " (a.role_name) }
            }
        }
    }
}

/// POST /roles/extend: asks an administrator to extend the caller's eligible or active
/// assignment.
pub async fn extend(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let what = fields.get("role_name");
    let duration = match pim_runtime::format::parse_duration(fields.get("duration")) {
        Ok(duration) => duration,
        Err(why) => {
            caller.flash(false, format!("{why}: write it like 90d"));
            return Redirect::to("/roles").into_response();
        }
    };
    let request = apb::CreateRequestRequest {
        action: apb::RequestAction::SelfExtend as i32,
        kind: match fields.get("kind") {
            "active" => apb::AssignmentKind::Active,
            _ => apb::AssignmentKind::Eligible,
        } as i32,
        role_id: fields.get("role_id").to_owned(),
        scope: fields.get("scope").to_owned(),
        schedule: Some(apb::Schedule {
            start_time: None,
            expiration: Some(apb::schedule::Expiration::Duration(pim_runtime::db::duration_pb(
                duration,
            ))),
        }),
        justification: fields.get("justification").to_owned(),
        ..Default::default()
    };
    match assignments(&caller).create_request(caller.request(request)).await {
        Ok(r) if r.get_ref().status == apb::RequestStatus::PendingApproval as i32 => caller.flash(
            true,
            format!("Your request to extend {what} is waiting for an administrator (My requests follows it)."),
        ),
        Ok(r) => caller.flash(
            true,
            format!("{what}: your request is {}.", status_text(r.get_ref().status)),
        ),
        Err(status) => caller.flash(false, format!("Not asked: {}", Failure::from(status).text())),
    }
    Redirect::to("/roles").into_response()
}

fn activate_form(caller: &Caller, i: usize, a: &apb::Assignment) -> Markup {
    let id = |field: &str| format!("{field}-{i}");
    html! {
        details {
            summary { "Activate " span.visually-hidden { (a.role_name) } }
            form.activate method="post" action="/roles/activate" {
                (view::csrf(caller))
                input type="hidden" name="role_id" value=(a.role_id);
                input type="hidden" name="scope" value=(a.scope);
                input type="hidden" name="role_name" value=(a.role_name);
                label for=(id("duration")) { "Duration" }
                input id=(id("duration")) name="duration" type="text" placeholder="e.g. 2h (empty: the role's maximum)";
                label for=(id("justification")) { "Justification" }
                textarea id=(id("justification")) name="justification" rows="2" {}
                label for=(id("ticket")) { "Ticket number" }
                input id=(id("ticket")) name="ticket" type="text";
                label for=(id("system")) { "Ticket system" }
                input id=(id("system")) name="ticket_system" type="text";
                button type="submit" { "Activate " (a.role_name) }
            }
        }
    }
}

/// POST /roles/activate: asks for the activation; where the role wants a recent MFA, the
/// code is asked for in place and the request sent again with it.
pub async fn activate(mut caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let what = fields.get("role_name").to_owned();
    if let Err(page) = stepup::verify_if_given(&mut caller, &fields, "/roles/activate", &what).await {
        return page;
    }
    let duration = match fields.get("duration") {
        "" => None,
        text => match pim_runtime::format::parse_duration(text) {
            Ok(d) if d.as_secs() >= 60 => Some(d),
            _ => {
                caller.flash(
                    false,
                    format!("{text:?} is not a length of a minute or more: write it like 90m or 2h"),
                );
                return Redirect::to("/roles").into_response();
            }
        },
    };
    let ticket = match (fields.get("ticket"), fields.get("ticket_system")) {
        ("", "") => None,
        (number, system) => Some(Ticket {
            system: system.to_owned(),
            number: number.to_owned(),
        }),
    };
    let request = apb::CreateRequestRequest {
        action: apb::RequestAction::SelfActivate as i32,
        kind: apb::AssignmentKind::Active as i32,
        role_id: fields.get("role_id").to_owned(),
        scope: fields.get("scope").to_owned(),
        schedule: Some(apb::Schedule {
            start_time: None,
            expiration: duration.map(|d| apb::schedule::Expiration::Duration(pim_runtime::db::duration_pb(d))),
        }),
        justification: fields.get("justification").to_owned(),
        ticket,
        ..Default::default()
    };
    match assignments(&caller).create_request(caller.request(request)).await {
        Ok(created) => {
            let created = created.into_inner();
            let text = match apb::RequestStatus::try_from(created.status) {
                Ok(apb::RequestStatus::Provisioned) => format!(
                    "{what} is active until {}.",
                    timestamp(&created.end_time)
                        .map(|ms| pim_runtime::format::rfc3339_ms(ms)[..16].replace('T', " ") + " UTC")
                        .unwrap_or_else(|| "you deactivate it".into())
                ),
                Ok(apb::RequestStatus::PendingApproval) => {
                    format!("{what}: your request is waiting for approval. This page follows it.")
                }
                _ => format!("{what}: your request is {}.", status_text(created.status)),
            };
            caller.flash(true, text);
        }
        Err(status) => match Failure::from(status) {
            Failure::MfaNeeded(why) => return stepup::asked_again(&caller, "/roles/activate", &fields, &what, &why),
            failure => caller.flash(false, format!("{what} was not activated: {}", failure.text())),
        },
    }
    Redirect::to("/roles").into_response()
}

/// POST /roles/deactivate: ends the caller's own activation.
/// The button that ends the caller's activation of a role at a scope; back to `back` after.
fn deactivate_form(caller: &Caller, role_id: &str, scope: &str, name: &str, back: &str) -> Markup {
    html! {
        form method="post" action="/roles/deactivate" {
            (view::csrf(caller))
            input type="hidden" name="role_id" value=(role_id);
            input type="hidden" name="scope" value=(scope);
            input type="hidden" name="role_name" value=(name);
            input type="hidden" name="back" value=(back);
            button type="submit" aria-label=(format!("Deactivate {name}")) { "Deactivate" }
        }
    }
}

pub async fn deactivate(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let what = fields.get("role_name");
    let request = apb::CreateRequestRequest {
        action: apb::RequestAction::SelfDeactivate as i32,
        kind: apb::AssignmentKind::Active as i32,
        role_id: fields.get("role_id").to_owned(),
        scope: fields.get("scope").to_owned(),
        ..Default::default()
    };
    match assignments(&caller).create_request(caller.request(request)).await {
        Ok(_) => caller.flash(true, format!("{what} is deactivated.")),
        Err(status) => caller.flash(
            false,
            format!("{what} was not deactivated: {}", Failure::from(status).text()),
        ),
    }
    // Only the portal's own pages: a form cannot send the browser elsewhere.
    let back = if fields.get("back") == "/requests" {
        "/requests"
    } else {
        "/roles"
    };
    Redirect::to(back).into_response()
}

/// GET /requests: the caller's requests, newest first.
pub async fn my_requests(
    caller: Caller,
    axum::extract::Query(paging): axum::extract::Query<crate::view::Paging>,
) -> Html<String> {
    let mut next = String::new();
    let content = async {
        let listed = assignments(&caller)
            .list_requests(caller.request(apb::ListRequestsRequest {
                principal_id: caller.user.principal_id.clone(),
                page_size: 50,
                page_token: paging.page.clone(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        next = listed.next_page_token;
        let requests = listed.requests;
        let names = crate::lookup::role_names(&caller).await?;
        // The caller's activations still active: the newest request that made each can end it.
        let mine = apb::ListAssignmentsRequest {
            mine: true,
            ..Default::default()
        };
        let mut active: std::collections::HashSet<(String, String)> = crate::lookup::assignments(&caller, true, mine)
            .await?
            .into_iter()
            .filter(|a| a.activated && a.principal_id == caller.user.principal_id)
            .map(|a| (a.role_id, a.scope))
            .collect();
        let deactivatable: std::collections::HashSet<&str> = requests
            .iter()
            .filter(|r| {
                r.action == apb::RequestAction::SelfActivate as i32
                    && r.status == apb::RequestStatus::Provisioned as i32
                    && active.remove(&(r.role_id.clone(), r.scope.clone()))
            })
            .map(|r| r.id.as_str())
            .collect();
        Ok::<_, Failure>(html! {
            @if requests.is_empty() {
                p { "You have made no requests." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Asked" } th scope="col" { "Role" } th scope="col" { "Scope" } th scope="col" { "What" } th scope="col" { "Status" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for r in &requests {
                            tr {
                                td { a href=(format!("/requests/{}", r.id)) { (moment(timestamp(&r.created_at))) } }
                                td { (names.get(&r.role_id).map(String::as_str).unwrap_or(short(&r.role_id))) }
                                td { code { (r.scope) } }
                                td { (action_text(r.action)) }
                                td {
                                    span.live data-request=[(!is_final(r.status)).then_some(&r.id)] aria-live="polite" { (status_text(r.status)) }
                                    @if !r.outcome_reason.is_empty() { ": " (r.outcome_reason) }
                                }
                                td {
                                    @if r.status == apb::RequestStatus::PendingApproval as i32 {
                                        form method="post" action=(format!("/requests/{}/cancel", r.id)) {
                                            (view::csrf(&caller))
                                            button type="submit" { "Cancel" }
                                        }
                                    } @else if deactivatable.contains(r.id.as_str()) {
                                        @let name = names.get(&r.role_id).map(String::as_str).unwrap_or(short(&r.role_id));
                                        (deactivate_form(&caller, &r.role_id, &r.scope, name, "/requests"))
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
    let content = maud::html! {
        (content)
        (crate::view::next_page("/requests", &next, "Older requests"))
    };
    view::page(&caller, "/requests", "My requests", content)
}

fn action_text(action: i32) -> &'static str {
    use apb::RequestAction as A;
    match A::try_from(action).unwrap_or(A::Unspecified) {
        A::SelfActivate => "activate",
        A::SelfDeactivate => "deactivate",
        A::SelfExtend => "extend",
        A::SelfRenew => "renew",
        A::AdminAssign => "assigned by an administrator",
        A::AdminRemove => "removed by an administrator",
        A::AdminUpdate => "changed by an administrator",
        A::AdminExtend => "extended by an administrator",
        A::AdminRenew => "renewed by an administrator",
        A::Unspecified => "",
    }
}

/// GET /requests/{id}: one request, its progress followed live.
pub async fn request(caller: Caller, Path(id): Path<String>) -> Html<String> {
    let content = async {
        let r = assignments(&caller)
            .get_request(caller.request(apb::GetRequestRequest { request_id: id }))
            .await?
            .into_inner();
        let names = crate::lookup::role_names(&caller).await?;
        Ok::<_, Failure>(html! {
            dl {
                dt { "Role" } dd { (names.get(&r.role_id).map(String::as_str).unwrap_or(&r.role_id)) }
                dt { "Scope" } dd { code { (r.scope) } }
                dt { "What" } dd { (action_text(r.action)) }
                dt { "Status" } dd { span.live data-request=[(!is_final(r.status)).then_some(&r.id)] aria-live="polite" { (status_text(r.status)) } }
                @if !r.outcome_reason.is_empty() { dt { "Why" } dd { (r.outcome_reason) } }
                dt { "Asked" } dd { (moment(timestamp(&r.created_at))) }
                dt { "From" } dd { (moment(timestamp(&r.start_time))) }
                dt { "Until" } dd { (moment(timestamp(&r.end_time))) }
                @if !r.justification.is_empty() { dt { "Justification" } dd { (r.justification) } }
                @if let Some(t) = &r.ticket { dt { "Ticket" } dd { (t.system) " " (t.number) } }
            }
        })
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/requests", "Request", content)
}

/// GET /requests/{id}/status: what the page's script polls (JSON).
pub async fn request_status(caller: Caller, Path(id): Path<String>) -> Response {
    match assignments(&caller)
        .get_request(caller.request(apb::GetRequestRequest { request_id: id }))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            axum::Json(serde_json::json!({
                "status": status_text(r.status),
                "final": is_final(r.status),
            }))
            .into_response()
        }
        Err(status) => web::json_failure(Failure::from(status)),
    }
}

/// POST /requests/{id}/cancel.
pub async fn cancel(caller: Caller, Path(id): Path<String>, _: CheckedForm) -> Response {
    match assignments(&caller)
        .cancel_request(caller.request(apb::GetRequestRequest { request_id: id }))
        .await
    {
        Ok(_) => caller.flash(true, "The request is canceled."),
        Err(status) => caller.flash(false, format!("Not canceled: {}", Failure::from(status).text())),
    }
    Redirect::to("/requests").into_response()
}
