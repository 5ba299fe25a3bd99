//! *Admin → Assignments* (who may and who does hold which role; assign and remove) and
//! *Admin → Directory* (users, groups and service principals; add a user, give an enrolment
//! pass, disable and enable; groups are `groups`'). Assignment and identity decide who may
//! do what, and their protections (the last Global Administrator, credential protection)
//! hold here as everywhere.

use axum::extract::{Path, Query};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;

use crate::lookup::{Names, directory, user_named};
use crate::view::{self, moment, timestamp};
use crate::web::{Caller, CheckedForm, Failure};

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
        let roles = crate::lookup::role_list(&caller).await?;
        let asked = || apb::ListAssignmentsRequest {
            role_id: filter.role.clone(),
            ..Default::default()
        };
        let mut held = crate::lookup::assignments(&caller, false, asked()).await?;
        held.extend(crate::lookup::assignments(&caller, true, asked()).await?);
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

/// POST /admin/assignments: an administrator's assignment (and the step-up, where the role's
/// policy wants the administrator's recent MFA for an active one).
pub async fn assign(mut caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    const ACTION: &str = "/admin/assignments";
    let what = format!("Assigning a role to {}", fields.get("principal"));
    if let Err(page) = crate::stepup::verify_if_given(&mut caller, &fields, ACTION, &what).await {
        return page;
    }
    let done = async {
        let user = user_named(&caller, fields.get("principal")).await?;
        let duration = pim_runtime::format::parse_duration(fields.get("duration"))
            .map_err(|why| Failure::bad_input(format!("{why} (write it like 30d)")))?;
        assignments(&caller)
            .create_request(caller.request(apb::CreateRequestRequest {
                action: apb::RequestAction::AdminAssign as i32,
                kind: kind_of(fields.get("kind")) as i32,
                principal_id: user.id,
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
            }))
            .await?;
        Ok::<_, Failure>(user.user_name)
    }
    .await;
    match done {
        Ok(user) => caller.flash(true, format!("Assigned to {user}.")),
        Err(Failure::MfaNeeded(why)) => return crate::stepup::asked_again(&caller, ACTION, &fields, &what, &why),
        Err(failure) => caller.flash(false, format!("Not assigned: {}", failure.text())),
    }
    Redirect::to(ACTION).into_response()
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
            (create_user_form(&caller))
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
                            td.actions {
                                form method="post" action=(format!("/admin/users/{}/{}", u.id, if u.enabled { "disable" } else { "enable" })) {
                                    (view::csrf(&caller))
                                    @if u.enabled {
                                        button.deny type="submit" aria-label=(format!("Disable {}", u.user_name)) { "Disable" }
                                    } @else {
                                        button type="submit" aria-label=(format!("Enable {}", u.user_name)) { "Enable" }
                                    }
                                }
                                form method="post" action=(format!("/admin/passes/{}", u.id)) {
                                    (view::csrf(&caller))
                                    button.quiet type="submit" aria-label=(format!("Give {} an enrolment pass", u.user_name)) { "Enrolment pass" }
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
            (crate::groups::create_form(&caller))
            ul {
                @for g in &groups {
                    li { a href=(format!("/admin/groups/{}", g.id)) { (g.display_name) } @if g.is_assignable_to_role { " " small { "(role-assignable)" } } }
                }
            }
            h2 { "Service principals" }
            details {
                summary { "Add a service principal" }
                form method="post" action="/admin/service-principals" {
                    (view::csrf(&caller))
                    label for="sp-name" { "Name (the app it signs in as)" }
                    input id="sp-name" name="name" type="text" required autocomplete="off";
                    p { small { "Its client secret is made and shown to you once." } }
                    button type="submit" { "Add the service principal" }
                }
            }
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Client id" } th scope="col" { "Enabled" } th scope="col" { span.visually-hidden { "Actions" } } } }
                tbody {
                    @for p in &principals {
                        tr {
                            td { (p.display_name) }
                            td { code { (p.client_id) } }
                            td { (if p.enabled { "yes" } else { "no" }) }
                            td.actions {
                                form method="post" action=(format!("/admin/service-principals/{}/rotate", p.id)) {
                                    (view::csrf(&caller))
                                    button.quiet type="submit" aria-label=(format!("New client secret for {}", p.display_name)) { "New secret" }
                                }
                                @if p.enabled {
                                    form method="post" action=(format!("/admin/service-principals/{}/disable", p.id)) {
                                        (view::csrf(&caller))
                                        button.deny type="submit" aria-label=(format!("Disable {}", p.display_name)) { "Disable" }
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

fn create_user_form(caller: &Caller) -> Markup {
    html! {
        details {
            summary { "Add a user" }
            form method="post" action="/admin/users" {
                (view::csrf(caller))
                label for="new-user" { "User name (they sign in with it)" }
                input id="new-user" name="user_name" type="text" required autocomplete="off";
                label for="new-display" { "Display name" }
                input id="new-display" name="display_name" type="text" autocomplete="off";
                label for="new-email" { "Email" }
                input id="new-email" name="email" type="email" autocomplete="off";
                p { small { "A strong initial password is made and shown to you once. They add their authenticator app at their first sign-in." } }
                button type="submit" { "Add the user" }
            }
        }
    }
}

/// POST /admin/users: a new user with a generated initial password, shown once on the page
/// that answers (never in a URL, a log or the audit trail).
pub async fn create_user(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let password = crate::session::random_token();
    let created = directory(&caller)
        .create_user(caller.request(ipb::CreateUserRequest {
            user_name: fields.get("user_name").trim().to_owned(),
            display_name: fields.get("display_name").trim().to_owned(),
            email: fields.get("email").trim().to_owned(),
            password: password.clone(),
        }))
        .await;
    match created {
        Ok(user) => {
            let user = user.into_inner();
            let content = html! {
                p role="status" { "The user " strong { (user.user_name) } " is added." }
                p { "Give them their initial password over a channel you trust. It is shown only now." }
                p { "Initial password: " code data-initial-password { (password) } }
                p { "At their first sign-in they add an authenticator app. If they wait longer than the enrolment window, give them an enrolment pass from the Directory." }
                p { a href="/admin/directory" { "Back to the directory" } }
            };
            view::page(&caller, "/admin/directory", "User added", content).into_response()
        }
        Err(status) => {
            caller.flash(false, format!("Not added: {}", Failure::from(status).text()));
            Redirect::to("/admin/directory").into_response()
        }
    }
}

/// POST /admin/passes/{user id}: an enrolment pass (one use, one hour), shown once, for a
/// user who has no second factor (new, or after an MFA reset) to add their first one.
pub async fn enrolment_pass(caller: Caller, Path(id): Path<String>, _: CheckedForm) -> Response {
    let created = MfaServiceClient::new(caller.portal.0.upstreams.identity.clone())
        .create_enrollment_pass(caller.request(ipb::CreateEnrollmentPassRequest {
            user: id.clone(),
            ..Default::default()
        }))
        .await;
    match created {
        Ok(answer) => {
            let answer = answer.into_inner();
            let names = Names::of(&caller, vec![id.clone()]).await;
            let until = answer.pass.as_ref().and_then(|p| timestamp(&p.expires_at));
            let content = html! {
                p { "Give " strong { (names.get(&id)) } " this pass over a channel you trust. At sign-in they enter it to add their first authenticator app. It works once, until " (moment(until)) ", and is shown only now." }
                p { "Enrolment pass: " code data-enrolment-pass { (answer.code) } }
                p { a href="/admin/directory" { "Back to the directory" } }
            };
            view::page(&caller, "/admin/directory", "Enrolment pass", content).into_response()
        }
        Err(status) => {
            caller.flash(false, format!("No pass: {}", Failure::from(status).text()));
            Redirect::to("/admin/directory").into_response()
        }
    }
}

/// The page that shows a service principal's client secret, once.
fn secret_page(caller: &Caller, title: &str, answer: ipb::CreateServicePrincipalResponse) -> Response {
    let sp = answer.service_principal.unwrap_or_default();
    let content = html! {
        p role="status" { "Service principal " strong { (sp.display_name) } ": its client id is " code { (sp.client_id) } "." }
        p { "Give the app its client secret over a channel you trust. It is shown only now; only its hash is kept." }
        p { "Client secret: " code data-client-secret { (answer.client_secret) } }
        p { a href="/admin/directory" { "Back to the directory" } }
    };
    view::page(caller, "/admin/directory", title, content).into_response()
}

/// POST /admin/service-principals: a new service principal; its secret shown once.
pub async fn create_service_principal(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let created = directory(&caller)
        .create_service_principal(caller.request(ipb::CreateServicePrincipalRequest {
            display_name: fields.get("name").trim().to_owned(),
        }))
        .await;
    match created {
        Ok(answer) => secret_page(&caller, "Service principal added", answer.into_inner()),
        Err(status) => {
            caller.flash(false, format!("Not added: {}", Failure::from(status).text()));
            Redirect::to("/admin/directory").into_response()
        }
    }
}

/// POST /admin/service-principals/{id}/rotate|disable: a new client secret (the old one stops
/// working), shown once; or the principal disabled (its sessions end).
pub async fn change_service_principal(
    caller: Caller,
    Path((id, change)): Path<(String, String)>,
    _: CheckedForm,
) -> Response {
    let request = caller.request(ipb::GetServicePrincipalRequest {
        service_principal_id: id,
    });
    let failed = |caller: &Caller, status: tonic::Status| {
        caller.flash(false, format!("Not changed: {}", Failure::from(status).text()));
        Redirect::to("/admin/directory").into_response()
    };
    match change.as_str() {
        "rotate" => match directory(&caller)
            .rotate_service_principal_secret(caller.request(ipb::RotateServicePrincipalSecretRequest {
                service_principal_id: request.get_ref().service_principal_id.clone(),
                keep_previous_for: None,
            }))
            .await
        {
            Ok(answer) => secret_page(&caller, "New client secret", answer.into_inner()),
            Err(status) => failed(&caller, status),
        },
        "disable" => match directory(&caller).disable_service_principal(request).await {
            Ok(sp) => {
                caller.flash(true, format!("{} is disabled.", sp.into_inner().display_name));
                Redirect::to("/admin/directory").into_response()
            }
            Err(status) => failed(&caller, status),
        },
        _ => Redirect::to("/admin/directory").into_response(),
    }
}
