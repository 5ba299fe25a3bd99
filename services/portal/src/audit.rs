//! *Admin → Audit*: search the audit log (newest first, paged), verify its hash chain, and
//! download what a search finds as OCSF (or JSON lines). Audit decides who may read it.

use axum::extract::Query;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;

use pim_proto::audit::v1 as upb;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;

use crate::view::{self, moment, timestamp};
use crate::web::{Caller, CheckedForm, Failure};

const PAGE_SIZE: i32 = 50;
/// What an export download holds at the most (a bigger one: `pim audit export`).
const EXPORT_MAX_BYTES: usize = 64 * 1024 * 1024;

fn client(caller: &Caller) -> AuditServiceClient<tonic::transport::Channel> {
    AuditServiceClient::new(caller.portal.0.upstreams.audit.clone())
}

#[derive(serde::Deserialize, Default, Clone)]
pub struct Search {
    #[serde(default)]
    action: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    page: String,
    #[serde(default)]
    format: String,
}

impl Search {
    fn filter(&self) -> upb::QueryEventsRequest {
        upb::QueryEventsRequest {
            action: self.action.trim().to_owned(),
            outcome: self.outcome.trim().to_owned(),
            page_size: PAGE_SIZE,
            page_token: self.page.clone(),
            newest_first: true,
            ..Default::default()
        }
    }

    /// This search in a URL's query (its values escaped), for the next page and the download.
    fn query(&self, extra: &str) -> String {
        format!(
            "action={}&outcome={}{extra}",
            view::in_query(self.action.trim()),
            view::in_query(self.outcome.trim())
        )
    }
}

const OUTCOMES: &[(&str, &str)] = &[
    ("", "any"),
    ("success", "success"),
    ("failure", "failed or refused"),
    ("refused", "refused"),
    ("detected", "detected"),
];

/// GET /admin/audit[?action=…&outcome=…&page=…].
pub async fn page(caller: Caller, Query(search): Query<Search>) -> Html<String> {
    let content = async {
        let found = client(&caller)
            .query_events(caller.request(search.filter()))
            .await?
            .into_inner();
        Ok::<_, Failure>(html! {
            form.search method="get" action="/admin/audit" role="search" {
                label for="action" { "Action (e.g. RoleActivated)" }
                input id="action" name="action" type="text" value=(search.action);
                label for="outcome" { "Outcome" }
                select id="outcome" name="outcome" {
                    @for (value, label) in OUTCOMES {
                        option value=(value) selected[search.outcome == *value] { (label) }
                    }
                }
                button type="submit" { "Search" }
            }
            p {
                a href=(format!("/admin/audit/export?{}", search.query("&format=ocsf"))) download { "Download as OCSF" }
                " · "
                a href=(format!("/admin/audit/export?{}", search.query("&format=jsonl"))) download { "Download as JSON lines" }
            }
            form method="post" action="/admin/audit/verify" {
                (view::csrf(&caller))
                button type="submit" { "Verify the hash chain" }
            }
            @if found.records.is_empty() {
                p { "No record matches." }
            } @else {
                table {
                    thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Action" } th scope="col" { "Who" } th scope="col" { "On" } th scope="col" { "Role" } th scope="col" { "Scope" } th scope="col" { "Outcome" } } }
                    tbody {
                        @for r in &found.records {
                            tr {
                                td { (r.sequence) }
                                td { (moment(timestamp(&r.time))) }
                                td { (r.action.rsplit('.').next().unwrap_or(&r.action)) }
                                td { (r.actor_name) }
                                td { (r.target_name) }
                                td { (r.role_name) }
                                td { code { (r.scope) } }
                                td { (r.outcome) }
                            }
                        }
                    }
                }
            }
            @if !found.next_page_token.is_empty() {
                nav aria-label="Pages" {
                    a href=(format!("/admin/audit?{}", search.query(&format!("&page={}", found.next_page_token)))) { "Older records" }
                }
            }
        })
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/admin/audit", "Audit", content)
}

/// POST /admin/audit/verify: checks the whole hash chain.
pub async fn verify(caller: Caller, _: CheckedForm) -> Response {
    match client(&caller)
        .verify_chain(caller.request(upb::VerifyChainRequest::default()))
        .await
    {
        Ok(answer) => {
            let answer = answer.into_inner();
            if answer.ok {
                caller.flash(true, format!("The chain verifies: {} records checked.", answer.checked));
            } else {
                caller.flash(
                    false,
                    format!(
                        "The chain is broken at record {}: a record was changed or removed.",
                        answer.first_broken_sequence
                    ),
                );
            }
        }
        Err(status) => caller.flash(false, format!("Not verified: {}", Failure::from(status).text())),
    }
    Redirect::to("/admin/audit").into_response()
}

/// GET /admin/audit/export?format=ocsf|jsonl: what the search finds, as a file.
pub async fn export(caller: Caller, Query(search): Query<Search>) -> Response {
    let format = if search.format == "jsonl" { "jsonl" } else { "ocsf" };
    let collected = async {
        let mut filter = search.filter();
        filter.page_token.clear();
        let mut stream = client(&caller)
            .export_events(caller.request(upb::ExportEventsRequest {
                filter: Some(filter),
                format: format.into(),
            }))
            .await?
            .into_inner();
        let mut body = Vec::new();
        while let Some(chunk) = stream.message().await? {
            body.extend_from_slice(&chunk.data);
            if body.len() > EXPORT_MAX_BYTES {
                return Err(Failure::bad_input(
                    "this export is larger than the portal downloads (64 MiB): narrow the search, or use pim audit export",
                ));
            }
        }
        Ok::<_, Failure>(body)
    }
    .await;
    match collected {
        Ok(body) => (
            [
                (http::header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
                (
                    http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"pim-audit.{format}.jsonl\""),
                ),
            ],
            body,
        )
            .into_response(),
        Err(failure) => {
            caller.flash(false, format!("Not exported: {}", failure.text()));
            Redirect::to("/admin/audit").into_response()
        }
    }
}
