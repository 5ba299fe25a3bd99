//! *Admin*: alerts (open and acknowledged ones, acknowledge, dismiss or resolve with a reason),
//! paged. Who may see and change them is alerting's decision; the portal shows its refusal.

use axum::extract::{Path, Query};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;

use pim_proto::alerting::v1 as lpb;
use pim_proto::alerting::v1::alert_service_client::AlertServiceClient;

use crate::lookup::Names;
use crate::view::{self, moment, short, timestamp};
use crate::web::{Caller, CheckedForm, Failure};

const PAGE_SIZE: i32 = 25;

fn alerts_client(caller: &Caller) -> AlertServiceClient<tonic::transport::Channel> {
    AlertServiceClient::new(caller.portal.0.upstreams.alerting.clone())
}

fn severity_text(severity: i32) -> &'static str {
    match lpb::Severity::try_from(severity).unwrap_or(lpb::Severity::Unspecified) {
        lpb::Severity::Critical => "critical",
        lpb::Severity::High => "high",
        lpb::Severity::Medium => "medium",
        lpb::Severity::Low => "low",
        lpb::Severity::Unspecified => "",
    }
}

fn status_text(status: i32) -> &'static str {
    match lpb::AlertStatus::try_from(status).unwrap_or(lpb::AlertStatus::Unspecified) {
        lpb::AlertStatus::Open => "open",
        lpb::AlertStatus::Acknowledged => "acknowledged",
        lpb::AlertStatus::Dismissed => "dismissed",
        lpb::AlertStatus::Resolved => "resolved",
        lpb::AlertStatus::Unspecified => "",
    }
}

/// Which alerts the page lists: open ones, or (`?status=acknowledged`) those acknowledged and
/// not yet closed.
#[derive(serde::Deserialize)]
pub struct AlertsQuery {
    #[serde(default)]
    page: String,
    #[serde(default)]
    status: String,
}

/// GET /admin/alerts[?status=acknowledged][&page=TOKEN]: open (or acknowledged) alerts, most
/// severe first as alerting lists them.
pub async fn alerts(caller: Caller, Query(query): Query<AlertsQuery>) -> Html<String> {
    let acknowledged = query.status == "acknowledged";
    let (status, other, other_link) = if acknowledged {
        (lpb::AlertStatus::Acknowledged, "open", "/admin/alerts")
    } else {
        (
            lpb::AlertStatus::Open,
            "acknowledged",
            "/admin/alerts?status=acknowledged",
        )
    };
    let content = async {
        let listed = alerts_client(&caller)
            .list_alerts(caller.request(lpb::ListAlertsRequest {
                status: status as i32,
                page_size: PAGE_SIZE,
                page_token: query.page.clone(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        let names = Names::of(&caller, listed.alerts.iter().map(|a| a.principal_id.clone()).collect())
            .await;
        let roles = crate::lookup::role_names(&caller).await?;
        let role = |id: &str| roles.get(id).cloned().unwrap_or_default();
        Ok::<_, Failure>(html! {
            p { a href=(other_link) { "Show the " (other) " alerts" } }
            @if listed.alerts.is_empty() {
                p { "No " (status_text(status as i32)) " alerts." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Severity" } th scope="col" { "Rule" } th scope="col" { "Who" } th scope="col" { "Role" } th scope="col" { "Scope" } th scope="col" { "Last seen" } th scope="col" { "Count" } th scope="col" { "Status" } th scope="col" { "Change" } } }
                    tbody {
                        @for a in &listed.alerts {
                            tr {
                                td.(severity_text(a.severity)) { (severity_text(a.severity)) }
                                td { (a.rule_id) }
                                td { @if !a.principal_id.is_empty() { (names.get(&a.principal_id)) } }
                                td { (role(&a.role_id)) }
                                td { code { (a.scope) } }
                                td { (moment(timestamp(&a.last_seen))) }
                                td { (a.count) }
                                td { (status_text(a.status)) }
                                @if a.principal_id == caller.user.principal_id
                                    || a.figures.get("requester_id") == Some(&caller.user.principal_id) {
                                    td { "About you: another administrator dismisses or resolves it" }
                                } @else { td {
                                    form.decide method="post" action=(format!("/admin/alerts/{}", a.id)) {
                                        (view::csrf(&caller))
                                        label for=(format!("reason-{}", a.id)) { "Reason" }
                                        input id=(format!("reason-{}", a.id)) name="reason" type="text";
                                        button type="submit" name="change" value="dismiss" aria-label=(format!("Dismiss alert {}", short(&a.id))) { "Dismiss" }
                                        button type="submit" name="change" value="resolve" aria-label=(format!("Resolve alert {}", short(&a.id))) { "Resolve" }
                                    }
                                } }
                            }
                        }
                    }
                }
            }
            @if !listed.next_page_token.is_empty() {
                nav aria-label="Pages" {
                    a href=(format!("/admin/alerts?status={}&page={}", status_text(status as i32), listed.next_page_token)) { "Next page" }
                }
            }
        })
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/admin/alerts", "Alerts", content)
}

/// POST /admin/alerts/{id}: dismiss or resolve, with a reason.
pub async fn change_alert(caller: Caller, Path(id): Path<String>, CheckedForm(fields): CheckedForm) -> Response {
    let request = caller.request(lpb::AlertStatusRequest {
        alert_id: id,
        reason: fields.get("reason").to_owned(),
    });
    let changed = match fields.get("change") {
        "dismiss" => alerts_client(&caller).dismiss_alert(request).await,
        "resolve" => alerts_client(&caller).resolve_alert(request).await,
        _ => {
            caller.flash(false, "Choose Dismiss or Resolve.");
            return Redirect::to("/admin/alerts").into_response();
        }
    };
    match changed {
        Ok(alert) => caller.flash(
            true,
            format!("The alert is {}.", status_text(alert.into_inner().status)),
        ),
        Err(status) => caller.flash(false, format!("Not changed: {}", Failure::from(status).text())),
    }
    Redirect::to("/admin/alerts").into_response()
}
