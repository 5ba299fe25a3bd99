//! *Admin → Role settings*: a role's policy at a scope, edited as Entra's role settings are
//! (activation, approval stages (`stages`), assignment, notifications (`notifications`)). The form sends every setting it shows with the policy's
//! etag, so a change someone made meanwhile is refused (ABORTED) rather than overwritten.
//! Assignment decides who may change what, validates, audits, and raises `policy_weakened`.

use std::time::Duration;

use axum::extract::Query;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::catalogue;
use pim_proto::identity::v1 as ipb;

use crate::lookup::Names;

mod notifications;
mod stages;
use crate::view;
use crate::web::{Caller, CheckedForm, Failure, Fields};

/// The settings the form edits: (RolePolicy field, label, kind).
const SETTINGS: &[(&str, &str, Kind)] = &[
    ("activation_max_duration", "Longest activation", Kind::Duration),
    ("activation_requires_mfa", "Activation needs MFA", Kind::Flag),
    (
        "activation_requires_phishing_resistant_mfa",
        "That MFA must be a passkey (phishing-resistant)",
        Kind::Flag,
    ),
    ("mfa_freshness", "How recent the MFA must be", Kind::Duration),
    (
        "activation_requires_justification",
        "Activation needs a justification",
        Kind::Flag,
    ),
    ("activation_requires_ticket", "Activation needs a ticket", Kind::Flag),
    ("approval_required", "Activation needs approval", Kind::Flag),
    (
        "eligible_allow_permanent",
        "Eligible assignments may be permanent",
        Kind::Flag,
    ),
    ("eligible_max_duration", "Longest eligible assignment", Kind::Duration),
    (
        "active_allow_permanent",
        "Active assignments may be permanent",
        Kind::Flag,
    ),
    ("active_max_duration", "Longest active assignment", Kind::Duration),
    (
        "active_requires_justification",
        "Active assignment needs a justification",
        Kind::Flag,
    ),
    (
        "active_requires_mfa",
        "Active assignment needs the administrator's MFA",
        Kind::Flag,
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Flag,
    Duration,
}

fn policies(caller: &Caller) -> PolicyServiceClient<tonic::transport::Channel> {
    PolicyServiceClient::new(caller.portal.0.upstreams.assignment.clone())
}

#[derive(serde::Deserialize, Default)]
pub struct Which {
    #[serde(default)]
    role: String,
    #[serde(default)]
    scope: String,
}

fn flag(p: &apb::RolePolicy, field: &str) -> bool {
    match field {
        "activation_requires_mfa" => p.activation_requires_mfa,
        "activation_requires_phishing_resistant_mfa" => p.activation_requires_phishing_resistant_mfa,
        "activation_requires_justification" => p.activation_requires_justification,
        "activation_requires_ticket" => p.activation_requires_ticket,
        "approval_required" => p.approval_required,
        "eligible_allow_permanent" => p.eligible_allow_permanent,
        "active_allow_permanent" => p.active_allow_permanent,
        "active_requires_justification" => p.active_requires_justification,
        "active_requires_mfa" => p.active_requires_mfa,
        _ => false,
    }
}

fn set_flag(p: &mut apb::RolePolicy, field: &str, on: bool) {
    match field {
        "activation_requires_mfa" => p.activation_requires_mfa = on,
        "activation_requires_phishing_resistant_mfa" => p.activation_requires_phishing_resistant_mfa = on,
        "activation_requires_justification" => p.activation_requires_justification = on,
        "activation_requires_ticket" => p.activation_requires_ticket = on,
        "approval_required" => p.approval_required = on,
        "eligible_allow_permanent" => p.eligible_allow_permanent = on,
        "active_allow_permanent" => p.active_allow_permanent = on,
        "active_requires_justification" => p.active_requires_justification = on,
        "active_requires_mfa" => p.active_requires_mfa = on,
        _ => {}
    }
}

fn duration_of<'a>(p: &'a mut apb::RolePolicy, field: &str) -> Option<&'a mut Option<prost_types::Duration>> {
    Some(match field {
        "activation_max_duration" => &mut p.activation_max_duration,
        "mfa_freshness" => &mut p.mfa_freshness,
        "eligible_max_duration" => &mut p.eligible_max_duration,
        "active_max_duration" => &mut p.active_max_duration,
        _ => return None,
    })
}

pub(super) fn duration_text(d: &Option<prost_types::Duration>) -> String {
    d.as_ref()
        .map(|d| pim_runtime::format::duration(Duration::from_secs(d.seconds.max(0) as u64)))
        .unwrap_or_default()
}

/// GET /admin/policies[?role=ID&scope=/]: the roles, or one role's settings.
pub async fn page(caller: Caller, Query(which): Query<Which>) -> Html<String> {
    let content = async {
        let roles = crate::lookup::role_list(&caller).await?;
        if which.role.is_empty() {
            let groups = crate::lookup::directory(&caller)
                .list_groups(caller.request(ipb::ListGroupsRequest {
                    page_size: 200,
                    ..Default::default()
                }))
                .await
                .map(|answer| answer.into_inner().groups)
                .unwrap_or_default();
            return Ok::<_, Failure>(html! {
                p { "Choose a role to see and change its settings." }
                ul.columns {
                    @for role in roles.iter().filter(|r| !catalogue::is_group_access(&r.id)) {
                        li { a href=(format!("/admin/policies?role={}", role.id)) { (role.name) } @if role.privileged { " " small { "(privileged)" } } }
                    }
                }
                @if !groups.is_empty() {
                    h2 { "Groups (PIM for Groups)" }
                    p { "Membership and ownership of a group are activated like roles, under their own settings." }
                    ul.columns {
                        @for g in &groups {
                            @let scope = view::in_query(&catalogue::group_scope(&g.id));
                            li {
                                (g.display_name) ": "
                                a href=(format!("/admin/policies?role={}&scope={scope}", catalogue::GROUP_MEMBER)) aria-label=(format!("Membership of {}", g.display_name)) { "membership" }
                                ", "
                                a href=(format!("/admin/policies?role={}&scope={scope}", catalogue::GROUP_OWNER)) aria-label=(format!("Ownership of {}", g.display_name)) { "ownership" }
                            }
                        }
                    }
                }
            });
        }
        let scope = if which.scope.is_empty() { "/".to_owned() } else { which.scope.clone() };
        let mut policy = policies(&caller)
            .get_role_policy(caller.request(apb::GetRolePolicyRequest {
                role_id: which.role.clone(),
                scope: scope.clone(),
            }))
            .await?
            .into_inner();
        let name = match catalogue::group_of_scope(&policy.scope).filter(|_| catalogue::is_group_access(&policy.role_id)) {
            Some(group) => {
                let access = if policy.role_id == catalogue::GROUP_OWNER { "Ownership" } else { "Membership" };
                format!("{access} of {}", Names::of(&caller, vec![group.to_owned()]).await.get(group))
            }
            None => roles
                .iter()
                .find(|r| r.id == policy.role_id)
                .map(|r| r.name.clone())
                .unwrap_or_else(|| policy.role_id.clone()),
        };
        let stages = stages::fields(&caller, &policy).await;
        Ok(form(&caller, &name, &mut policy, stages))
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/admin/policies", "Role settings", content)
}

fn form(caller: &Caller, name: &str, p: &mut apb::RolePolicy, stages: Markup) -> Markup {
    html! {
        h2 { (name) " at " code { (p.scope) } }
        form.policy method="post" action="/admin/policies" {
            (view::csrf(caller))
            input type="hidden" name="role_id" value=(p.role_id);
            input type="hidden" name="scope" value=(p.scope);
            input type="hidden" name="etag" value=(p.etag);
            input type="hidden" name="role_name" value=(name);
            @for (field, label, kind) in SETTINGS {
                @match kind {
                    Kind::Flag => {
                        div.check {
                            input type="checkbox" id=(field) name=(field) value="on" checked[flag(p, field)];
                            label for=(field) { (label) }
                        }
                    }
                    Kind::Duration => {
                        label for=(field) { (label) }
                        input type="text" id=(field) name=(field) value=(duration_of(p, field).map(|d| duration_text(d)).unwrap_or_default());
                    }
                }
            }
            h3 { "Approval" }
            (stages)
            h3 { "Notifications" }
            (notifications::fields(p))
            button type="submit" { "Save " (name) "'s settings" }
        }
        p { small { "Lowering protection (MFA, approval or justification off, longer limits, approvers changed) raises a policy_weakened alert." } }
    }
}

/// An approver named by user name or id → the id (as the CLI resolves them).
pub(super) async fn approver_id(caller: &Caller, reference: &str) -> Result<String, Failure> {
    if uuid::Uuid::parse_str(reference).is_ok() {
        return Ok(reference.to_owned());
    }
    Ok(crate::lookup::user_named(caller, reference).await?.id)
}

/// The policy the form describes (every setting it shows, named in the mask).
async fn from_form(caller: &Caller, fields: &Fields) -> Result<(apb::RolePolicy, Vec<String>), Failure> {
    let mut p = apb::RolePolicy {
        role_id: fields.get("role_id").to_owned(),
        scope: fields.get("scope").to_owned(),
        etag: fields.get("etag").to_owned(),
        ..Default::default()
    };
    let mut mask = Vec::new();
    for (field, label, kind) in SETTINGS {
        match kind {
            Kind::Flag => set_flag(&mut p, field, fields.get(field) == "on"),
            Kind::Duration => {
                let parsed = parse_duration(label, fields.get(field))?;
                if let Some(slot) = duration_of(&mut p, field) {
                    *slot = Some(parsed);
                }
            }
        }
        mask.push((*field).to_owned());
    }
    mask.extend(stages::read(caller, fields, &mut p).await?);
    notifications::read(fields, &mut p);
    mask.push("notification_rules".into());
    Ok((p, mask))
}

/// A duration as people write it (`8h`, `30m`, `1d 12h`), or why it is not one.
pub(super) fn parse_duration(label: &str, text: &str) -> Result<prost_types::Duration, Failure> {
    let parsed = pim_runtime::format::parse_duration(text)
        .map_err(|why| Failure::bad_input(format!("{label}: {why} (write it like 8h or 30m)")))?;
    Ok(pim_runtime::db::duration_pb(parsed))
}

/// POST /admin/policies.
pub async fn save(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let back = format!(
        "/admin/policies?role={}&scope={}",
        view::in_query(fields.get("role_id")),
        view::in_query(fields.get("scope"))
    );
    let name = fields.get("role_name").to_owned();
    let saved = async {
        let (policy, paths) = from_form(&caller, &fields).await?;
        policies(&caller)
            .update_role_policy(caller.request(apb::UpdateRolePolicyRequest {
                policy: Some(policy),
                update_mask: Some(prost_types::FieldMask { paths }),
                validate_only: false,
            }))
            .await?;
        Ok::<_, Failure>(())
    }
    .await;
    match saved {
        Ok(()) => caller.flash(true, format!("{name}'s settings are saved.")),
        Err(failure) => caller.flash(false, format!("Not saved: {}", failure.text())),
    }
    Redirect::to(&back).into_response()
}
