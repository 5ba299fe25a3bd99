//! *Admin → Assignments* (who may and who does hold which role; assign and remove) and
//! *Admin → Directory* (users, groups and service principals; disable and enable). Assignment
//! and identity decide who may do what, and their protections (the last Global
//! Administrator, credential protection) hold here as everywhere.

use axum::extract::{Path, Query};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

use crate::decide::Names;
use crate::view::{self, moment, timestamp};
use crate::web::{Caller, CheckedForm, Failure};

fn directory(caller: &Caller) -> DirectoryServiceClient<tonic::transport::Channel> {
    DirectoryServiceClient::new(caller.portal.0.upstreams.identity.clone())
}

fn assignments(caller: &Caller) -> AssignmentServiceClient<tonic::transport::Channel> {
    AssignmentServiceClient::new(caller.portal.0.upstreams.assignment.clone())
}

#[derive(serde::Deserialize, Default)]
pub struct Filter {
    #[serde(default)]
    role: String,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    page: String,
}

/// GET /admin/assignments[?role=ID]: every eligible and active assignment (of one role).
pub async fn assignments_page(caller: Caller, Query(filter): Query<Filter>) -> Html<String> {
    let content = async {
        let roles = crate::roles::role_list(&caller).await?;
        let asked = || apb::ListAssignmentsRequest {
            role_id: filter.role.clone(),
            ..Default::default()
        };
        let mut held = assignments(&caller)
            .list_eligible_assignments(caller.request(asked()))
            .await?
            .into_inner()
            .assignments;
        held.extend(
            assignments(&caller)
                .list_active_assignments(caller.request(asked()))
                .await?
                .into_inner()
                .assignments,
        );
        let names = Names::of(&caller, held.iter().map(|a| a.principal_id.clone()).collect()).await;
        Ok::<_, Failure>(html! {
            form.search method="get" action="/admin/assignments" {
                label for="role" { "Role" }
                select id="role" name="role" {
                    option value="" { "every role" }
                    @for r in &roles { option value=(r.id) selected[r.id == filter.role] { (r.name) } }
                }
                button type="submit" { "Show" }
            }
            (assign_form(&caller, &roles))
            h2 { "Assignments" }
            @if held.is_empty() { p { "None." } } @else {
                table {
                    thead { tr { th scope="col" { "Who" } th scope="col" { "Role" } th scope="col" { "Scope" } th scope="col" { "Kind" } th scope="col" { "Until" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for a in &held {
                            @let who = names.get(&a.principal_id);
                            @let kind = if a.kind == apb::AssignmentKind::Eligible as i32 { "eligible" } else if a.activated { "active (activated)" } else { "active" };
                            tr {
                                td { (who) @if !a.via_group_id.is_empty() { " " small { "(through a group)" } } }
                                td { (a.role_name) }
                                td { code { (a.scope) } }
                                td { (kind) }
                                td { (moment(timestamp(&a.end_time))) }
                                td {
                                    @if a.via_group_id.is_empty() {
                                        form method="post" action="/admin/assignments/remove" {
                                            (view::csrf(&caller))
                                            input type="hidden" name="principal_id" value=(a.principal_id);
                                            input type="hidden" name="role_id" value=(a.role_id);
                                            input type="hidden" name="scope" value=(a.scope);
                                            input type="hidden" name="kind" value=(if a.kind == apb::AssignmentKind::Eligible as i32 { "eligible" } else { "active" });
                                            button.deny type="submit" aria-label=(format!("Remove {} from {who}", a.role_name)) { "Remove" }
                                        }
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
    view::page(&caller, "/admin/assignments", "Assignments", content)
}

fn assign_form(caller: &Caller, roles: &[apb::RoleDefinition]) -> Markup {
    html! {
        details {
            summary { "Assign a role" }
            form method="post" action="/admin/assignments" {
                (view::csrf(caller))
                label for="principal" { "User (user name)" }
                input id="principal" name="principal" type="text" required;
                label for="assign-role" { "Role" }
                select id="assign-role" name="role_id" {
                    @for r in roles { option value=(r.id) { (r.name) } }
                }
                label for="assign-scope" { "Scope" }
                input id="assign-scope" name="scope" type="text" value="/";
                label for="assign-kind" { "Kind" }
                select id="assign-kind" name="kind" {
                    option value="eligible" { "eligible" }
                    option value="active" { "active" }
                }
                label for="assign-duration" { "For (e.g. 30d)" }
                input id="assign-duration" name="duration" type="text" value="90d";
                label for="assign-justification" { "Justification" }
                input id="assign-justification" name="justification" type="text";
                button type="submit" { "Assign" }
            }
        }
    }
}

fn kind_of(text: &str) -> apb::AssignmentKind {
    match text {
        "active" => apb::AssignmentKind::Active,
        _ => apb::AssignmentKind::Eligible,
    }
}

/// POST /admin/assignments: an administrator's assignment.
pub async fn assign(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let done = async {
        let user = directory(&caller)
            .get_user(caller.request(ipb::GetUserRequest {
                user: fields.get("principal").to_owned(),
            }))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => Failure::Refused(format!("no user is named {:?}", fields.get("principal"))),
                _ => Failure::from(status),
            })?
            .into_inner();
        let duration = humantime::parse_duration(fields.get("duration")).map_err(|_| {
            Failure::Refused(format!(
                "{:?} is not a duration (write it like 30d)",
                fields.get("duration")
            ))
        })?;
        assignments(&caller)
            .create_request(caller.request(apb::CreateRequestRequest {
                action: apb::RequestAction::AdminAssign as i32,
                kind: kind_of(fields.get("kind")) as i32,
                principal_id: user.id,
                role_id: fields.get("role_id").to_owned(),
                scope: fields.get("scope").to_owned(),
                schedule: Some(apb::Schedule {
                    start_time: None,
                    expiration: Some(apb::schedule::Expiration::Duration(prost_types::Duration {
                        seconds: duration.as_secs() as i64,
                        nanos: 0,
                    })),
                }),
                justification: fields.get("justification").to_owned(),
                ..Default::default()
            }))
            .await?;
        Ok::<_, Failure>(user.user_name)
    }
    .await;
    match done {
        Ok(user) => caller.flash(true, format!("Assigned to {user}.")),
        Err(failure) => caller.flash(false, format!("Not assigned: {}", failure.text())),
    }
    Redirect::to("/admin/assignments").into_response()
}

/// POST /admin/assignments/remove: an administrator's removal (assignment keeps the last
/// permanent Global Administrator, and says so).
pub async fn remove(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let removed = assignments(&caller)
        .create_request(caller.request(apb::CreateRequestRequest {
            action: apb::RequestAction::AdminRemove as i32,
            kind: kind_of(fields.get("kind")) as i32,
            principal_id: fields.get("principal_id").to_owned(),
            role_id: fields.get("role_id").to_owned(),
            scope: fields.get("scope").to_owned(),
            justification: "removed in the portal".into(),
            ..Default::default()
        }))
        .await;
    match removed {
        Ok(_) => caller.flash(true, "The assignment is removed."),
        Err(status) => caller.flash(false, format!("Not removed: {}", Failure::from(status).text())),
    }
    Redirect::to("/admin/assignments").into_response()
}

/// GET /admin/directory[?filter=…&page=…]: users (paged), groups and service principals.
pub async fn directory_page(caller: Caller, Query(filter): Query<Filter>) -> Html<String> {
    let content = async {
        let users = directory(&caller)
            .list_users(caller.request(ipb::ListUsersRequest {
                page_size: 50,
                page_token: filter.page.clone(),
                filter: filter.filter.trim().to_owned(),
            }))
            .await?
            .into_inner();
        let groups = directory(&caller)
            .list_groups(caller.request(ipb::ListGroupsRequest {
                page_size: 100,
                ..Default::default()
            }))
            .await?
            .into_inner()
            .groups;
        let principals = directory(&caller)
            .list_service_principals(caller.request(ipb::ListServicePrincipalsRequest {
                page_size: 100,
                ..Default::default()
            }))
            .await?
            .into_inner()
            .service_principals;
        Ok::<_, Failure>(html! {
            h2 { "Users" }
            form.search method="get" action="/admin/directory" role="search" {
                label for="filter" { "Name contains" }
                input id="filter" name="filter" type="text" value=(filter.filter);
                button type="submit" { "Search" }
            }
            table {
                thead { tr { th scope="col" { "User name" } th scope="col" { "Display name" } th scope="col" { "Email" } th scope="col" { "Last sign-in" } th scope="col" { "Enabled" } th scope="col" { span.visually-hidden { "Actions" } } } }
                tbody {
                    @for u in &users.users {
                        tr {
                            td { (u.user_name) }
                            td { (u.display_name) }
                            td { (u.email) }
                            td { @if u.last_sign_in_at.is_some() { (moment(timestamp(&u.last_sign_in_at))) } @else { "never" } }
                            td { (if u.enabled { "yes" } else { "no" }) }
                            td {
                                form method="post" action=(format!("/admin/users/{}/{}", u.id, if u.enabled { "disable" } else { "enable" })) {
                                    (view::csrf(&caller))
                                    @if u.enabled {
                                        button.deny type="submit" aria-label=(format!("Disable {}", u.user_name)) { "Disable" }
                                    } @else {
                                        button type="submit" aria-label=(format!("Enable {}", u.user_name)) { "Enable" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !users.next_page_token.is_empty() {
                nav aria-label="Pages" {
                    a href=(format!("/admin/directory?page={}", users.next_page_token)) { "More users" }
                }
            }
            h2 { "Groups" }
            ul {
                @for g in &groups {
                    li { (g.display_name) @if g.is_assignable_to_role { " " small { "(role-assignable)" } } }
                }
            }
            h2 { "Service principals" }
            ul {
                @for p in &principals {
                    li { (p.display_name) " " small { "(" (if p.enabled { "enabled" } else { "disabled" }) ")" } }
                }
            }
        })
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/admin/directory", "Directory", content)
}

/// POST /admin/users/{id}/disable|enable (disabling ends the user's sessions everywhere).
pub async fn set_enabled(caller: Caller, Path((id, change)): Path<(String, String)>, _: CheckedForm) -> Response {
    let request = caller.request(ipb::GetUserRequest { user: id });
    let changed = match change.as_str() {
        "disable" => directory(&caller).disable_user(request).await,
        "enable" => directory(&caller).enable_user(request).await,
        _ => return Redirect::to("/admin/directory").into_response(),
    };
    match changed {
        Ok(user) => {
            let user = user.into_inner();
            let state = if user.enabled { "enabled" } else { "disabled" };
            caller.flash(true, format!("{} is {state}.", user.user_name));
        }
        Err(status) => caller.flash(false, format!("Not changed: {}", Failure::from(status).text())),
    }
    Redirect::to("/admin/directory").into_response()
}
