//! Commands about requests: activate (with MFA step-up and live progress), deactivate,
//! unassign, extend, cancel, requests, my roles.

use std::time::Duration;

use clap::Args;

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_runtime::db::{from_timestamp, to_timestamp};

use super::{
    Cell, ClientArgs, KindArg, Names, RoleRef, Session, Why, explain, json_wanted, kind_pb, print_made, print_table,
    printable, time,
};

/// A request as `--output json` gives it, one object: what a script needs of the answer
/// (the ids, where it stands and why, what it gives, from when until when).
pub(crate) fn request_json(r: &apb::AssignmentRequest, what: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "request_id": r.id,
        "status": status_name(r.status),
        "reason": r.outcome_reason,
        "assignment_id": r.assignment_id,
        "role": what,
        "role_id": r.role_id,
        "principal_id": r.principal_id,
        "scope": r.scope,
        "from": time(r.start_time.as_ref().map(from_timestamp)),
        "until": time(r.end_time.as_ref().map(from_timestamp)),
    })
}

#[derive(Args)]
pub(crate) struct ActivateArgs {
    #[command(flatten)]
    role: RoleRef,
    /// Where the role applies: / (everywhere) or a narrower scope such as /apps/payments.
    #[arg(long, default_value = "/")]
    scope: String,
    #[command(flatten)]
    how: ActivateHow,
}

/// How to activate, a role or access to a group.
#[derive(Args)]
pub(crate) struct ActivateHow {
    /// How long, e.g. 2h (default: the policy's maximum).
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true)]
    duration: Option<Duration>,
    /// Start later, at this time (RFC 3339 with its offset: 2026-12-01T09:00:00Z, or
    /// 2026-12-01T10:00:00+01:00).
    #[arg(long, value_parser = pim_runtime::format::parse_moment, allow_hyphen_values = true)]
    start: Option<i64>,
    #[command(flatten)]
    why: Why,
    /// The authenticator code, sent only when the server asks for a fresher MFA (one verified
    /// recently enough still counts, and the code is not checked); otherwise you are prompted.
    #[arg(long, env = "PIM_MFA_CODE")]
    code: Option<String>,
    /// Return once the request is made instead of following it.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct DeactivateArgs {
    #[command(flatten)]
    role: RoleRef,
    /// Where the activation applies (as activated).
    #[arg(long, default_value = "/")]
    scope: String,
    #[command(flatten)]
    how: DeactivateHow,
}

#[derive(Args)]
pub(crate) struct DeactivateHow {
    #[command(flatten)]
    why: Why,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct UnassignArgs {
    /// Whose assignment: a user name, group or service principal name, or a principal id.
    #[arg(long)]
    principal: String,
    #[command(flatten)]
    role: RoleRef,
    /// Where the assignment applies (as assigned).
    #[arg(long, default_value = "/")]
    scope: String,
    #[command(flatten)]
    how: UnassignHow,
}

#[derive(Args)]
pub(crate) struct UnassignHow {
    /// Which assignment: eligible (to activate) or active (held now).
    #[arg(long, value_enum, default_value = "eligible")]
    kind: KindArg,
    #[command(flatten)]
    why: Why,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct ExtendArgs {
    #[command(flatten)]
    role: RoleRef,
    /// Where the assignment applies (as assigned).
    #[arg(long, default_value = "/")]
    scope: String,
    #[command(flatten)]
    how: ExtendHow,
}

/// How to give an assignment a new end, of a role or of access to a group.
#[derive(Args)]
pub(crate) struct ExtendHow {
    /// User name, or principal id (an administrator's request). Without it you ask for
    /// your own assignment (selfExtend / selfRenew), and an approver decides.
    #[arg(long)]
    principal: Option<String>,
    /// Which assignment: eligible (to activate) or active (held now).
    #[arg(long, value_enum, default_value = "eligible")]
    kind: KindArg,
    /// The new end, counted from now, e.g. 30d.
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true, required_unless_present = "permanent")]
    duration: Option<Duration>,
    /// No end (where the policy allows it).
    #[arg(long, conflicts_with = "duration")]
    permanent: bool,
    /// Allow an earlier end too (adminUpdate); without it the end may only move later.
    #[arg(long, requires = "principal", conflicts_with = "renew")]
    update: bool,
    /// Bring back an assignment that expired (adminRenew, or selfRenew for your own).
    #[arg(long)]
    renew: bool,
    #[command(flatten)]
    why: Why,
    /// Your authenticator code, sent only if the role's policy wants your recent MFA to
    /// change an active assignment (otherwise you are prompted on a terminal).
    #[arg(long, env = "PIM_MFA_CODE")]
    code: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct RequestsArgs {
    /// Only this principal's (user name or id); default: yours.
    #[arg(long)]
    principal: Option<String>,
    /// Every principal's (readers of assignments only).
    #[arg(long, conflicts_with = "principal")]
    all: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct CancelArgs {
    /// The request's id (see `pim requests`).
    request_id: String,
    #[command(flatten)]
    client: ClientArgs,
}

fn status_name(status: i32) -> String {
    apb::RequestStatus::try_from(status)
        .map(|s| s.as_str_name().trim_start_matches("REQUEST_STATUS_").to_lowercase())
        .unwrap_or_default()
}

/// A duration as every command prints it (`8h`, `90m`, `30d`).
pub(crate) fn show_duration(d: &Option<prost_types::Duration>) -> String {
    d.as_ref()
        .map(|d| pim_runtime::format::duration(Duration::from_secs(d.seconds.max(0) as u64)))
        .unwrap_or_default()
}

const FINAL: &[apb::RequestStatus] = &[
    apb::RequestStatus::Provisioned,
    // Scheduled: nothing more happens until its start (a follow would wait until then).
    apb::RequestStatus::ScheduleCreated,
    apb::RequestStatus::Denied,
    apb::RequestStatus::Canceled,
    apb::RequestStatus::Failed,
    apb::RequestStatus::Expired,
    apb::RequestStatus::Revoked,
];

pub(crate) async fn activate(args: ActivateArgs) -> anyhow::Result<i32> {
    let role = args.role.required()?;
    activate_as(role, role, &args.scope, args.how).await
}

/// Activates `role` at `scope` (`what` names it to people) and follows the request.
pub(crate) async fn activate_as(what: &str, role: &str, scope: &str, args: ActivateHow) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let role_id = session.role_id(role).await?;
    let request = apb::CreateRequestRequest {
        action: apb::RequestAction::SelfActivate as i32,
        kind: apb::AssignmentKind::Active as i32,
        principal_id: String::new(),
        role_id,
        scope: scope.to_owned(),
        schedule: Some(apb::Schedule {
            start_time: args.start.map(to_timestamp),
            expiration: args
                .duration
                .map(|d| apb::schedule::Expiration::Duration(pim_runtime::db::duration_pb(d))),
        }),
        justification: args.why.justification.clone(),
        ticket: args.why.ticket.clone(),
        validate_only: false,
    };
    let (session, created) =
        super::mfa::create_request_stepping_up(&args.client, &format!("Activating {what}"), args.code.clone(), request)
            .await?;
    if !json_wanted() {
        println!("Request {} {}", created.id, status_name(created.status));
    }
    let mut last = created;
    if !args.no_wait && !FINAL.iter().any(|s| *s as i32 == last.status) {
        let mut watch = AssignmentServiceClient::new(session.channel.clone())
            .watch_request(session.request(apb::GetRequestRequest {
                request_id: last.id.clone(),
            })?)
            .await
            .map_err(explain)?
            .into_inner();
        loop {
            let update = match watch.message().await {
                Ok(Some(update)) => update,
                Ok(None) => break,
                // The follow outlived the token (a long wait for approval) or the server
                // restarted: the request goes on without it.
                Err(status) if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::Unavailable) => {
                    eprintln!(
                        "stopped following request {} ({}): {}; `pim requests` shows how it goes on",
                        last.id,
                        status_name(last.status),
                        status.message()
                    );
                    break;
                }
                Err(status) => return Err(explain(status)),
            };
            if update.status != last.status && !json_wanted() {
                match update.outcome_reason.as_str() {
                    "" => println!("Request {} {}", update.id, status_name(update.status)),
                    why => println!(
                        "Request {} {}: {}",
                        update.id,
                        status_name(update.status),
                        printable(why)
                    ),
                }
            }
            last = update;
        }
    }
    let active = [
        apb::RequestStatus::Provisioned as i32,
        apb::RequestStatus::ScheduleCreated as i32,
    ]
    .contains(&last.status);
    if json_wanted() {
        println!("{}", request_json(&last, Some(what)));
    } else if active {
        // A start still ahead is a schedule, not yet access.
        let becomes = if last.status == apb::RequestStatus::ScheduleCreated as i32 {
            "will be active"
        } else {
            "active"
        };
        println!(
            "{what} {becomes} at {} from {} until {}",
            last.scope,
            time(last.start_time.as_ref().map(from_timestamp)),
            time(last.end_time.as_ref().map(from_timestamp))
        );
    }
    Ok(if active || last.status == apb::RequestStatus::PendingApproval as i32 {
        0
    } else {
        1
    })
}

pub(crate) async fn deactivate(args: DeactivateArgs) -> anyhow::Result<i32> {
    let role = args.role.required()?;
    deactivate_as(role, role, &args.scope, args.how).await
}

/// A request about `principal_id`'s (empty: the caller's) assignment of `role_id` at `scope`,
/// with its reasons; the caller sets the action and kind.
fn about(principal_id: String, role_id: String, scope: &str, why: Why) -> apb::CreateRequestRequest {
    apb::CreateRequestRequest {
        principal_id,
        role_id,
        scope: scope.to_owned(),
        justification: why.justification,
        ticket: why.ticket,
        ..Default::default()
    }
}

/// Ends the caller's activation of `role` at `scope` (`what` names it to people).
pub(crate) async fn deactivate_as(what: &str, role: &str, scope: &str, args: DeactivateHow) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let role_id = session.role_id(role).await?;
    let request = apb::CreateRequestRequest {
        action: apb::RequestAction::SelfDeactivate as i32,
        kind: apb::AssignmentKind::Active as i32,
        ..about(String::new(), role_id, scope, args.why)
    };
    let r = session.create_request(request).await?;
    print_made(
        &format!("{what} deactivated at {} (request {})", r.scope, r.id),
        request_json(&r, Some(what)),
    );
    Ok(0)
}

pub(crate) async fn unassign(args: UnassignArgs) -> anyhow::Result<i32> {
    let role = args.role.required()?;
    unassign_as(&args.principal, role, role, &args.scope, args.how).await
}

/// Ends `principal`'s assignment of `role` at `scope` (`what` names it to people).
pub(crate) async fn unassign_as(
    principal: &str,
    what: &str,
    role: &str,
    scope: &str,
    args: UnassignHow,
) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let principal_id = session.principal_id(principal).await?;
    let role_id = session.role_id(role).await?;
    let request = apb::CreateRequestRequest {
        action: apb::RequestAction::AdminRemove as i32,
        kind: kind_pb(args.kind) as i32,
        ..about(principal_id, role_id, scope, args.why)
    };
    let r = session.create_request(request).await?;
    print_made(
        &format!("Removed {what} from {principal} at {} (request {})", r.scope, r.id),
        request_json(&r, Some(what)),
    );
    Ok(0)
}

pub(crate) async fn extend(args: ExtendArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.how.client, true)?;
    let role = args.role.required()?;
    let role_id = session.role_id(role).await?;
    extend_as(role, &role_id, &args.scope, args.how).await
}

/// Gives `role_id` at `scope` (`what` to people) a new end: an administrator's change of
/// someone's assignment, or a request for your own.
pub(crate) async fn extend_as(what: &str, role_id: &str, scope: &str, how: ExtendHow) -> anyhow::Result<i32> {
    use apb::RequestAction as A;
    let session = Session::open(&how.client, true)?;
    let principal_id = match &how.principal {
        Some(p) => session.principal_id(p).await?,
        None => String::new(),
    };
    let expiration = match how.duration {
        Some(d) => apb::schedule::Expiration::Duration(pim_runtime::db::duration_pb(d)),
        None => apb::schedule::Expiration::Permanent(true),
    };
    let action = match (how.principal.is_some(), how.renew, how.update) {
        (true, true, _) => A::AdminRenew,
        (true, false, true) => A::AdminUpdate,
        (true, false, false) => A::AdminExtend,
        (false, true, _) => A::SelfRenew,
        (false, false, _) => A::SelfExtend,
    };
    let request = apb::CreateRequestRequest {
        action: action as i32,
        kind: kind_pb(how.kind) as i32,
        principal_id,
        role_id: role_id.to_owned(),
        scope: scope.to_owned(),
        schedule: Some(apb::Schedule {
            start_time: None,
            expiration: Some(expiration),
        }),
        justification: how.why.justification,
        ticket: how.why.ticket,
        ..Default::default()
    };
    let (_, r) =
        super::mfa::create_request_stepping_up(&how.client, &format!("Extending {what}"), how.code, request).await?;
    let words = if r.status == apb::RequestStatus::PendingApproval as i32 {
        format!(
            "Request {} pending_approval: {what} at {} until {} once an approver agrees (pim requests shows the outcome)",
            r.id,
            r.scope,
            time(r.end_time.as_ref().map(from_timestamp))
        )
    } else {
        format!(
            "{what} of {} at {} now ends {} (request {})",
            how.principal.as_deref().unwrap_or("you"),
            r.scope,
            time(r.end_time.as_ref().map(from_timestamp)),
            r.id
        )
    };
    print_made(&words, request_json(&r, Some(what)));
    Ok(0)
}

/// `pim cancel`: withdraws a request of yours that waits for approval or for its start.
pub(crate) async fn cancel(args: CancelArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let r = session.remember(
        AssignmentServiceClient::new(session.channel.clone())
            .cancel_request(session.request(apb::GetRequestRequest {
                request_id: args.request_id.clone(),
            })?)
            .await
            .map_err(explain)?,
    );
    print_made(
        &format!("Request {} {}", r.id, status_name(r.status)),
        request_json(&r, None),
    );
    Ok(0)
}

pub(crate) async fn list(args: RequestsArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let principal_id = match (&args.principal, args.all) {
        (Some(p), _) => session.principal_id(p).await?,
        (None, true) => String::new(),
        (None, false) => session.whoami()?,
    };
    let mut client = AssignmentServiceClient::new(session.channel.clone());
    let mut names = Names::new(&session);
    let mut rows = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_requests(session.request(apb::ListRequestsRequest {
                principal_id: principal_id.clone(),
                page_size: 500,
                page_token,
                ..Default::default()
            })?)
            .await
            .map_err(explain)?
            .into_inner();
        for r in page.requests {
            // As the help and Entra name them: selfActivate, adminAssign.
            let action = apb::RequestAction::try_from(r.action)
                .map(|a| a.text())
                .unwrap_or_default();
            // A request that granted nothing has no end to show.
            use apb::RequestStatus as S;
            let granted_nothing = [S::Denied, S::Canceled, S::Failed, S::Expired]
                .iter()
                .any(|s| *s as i32 == r.status);
            // An activation waiting for approval lasts its time from when it is approved.
            let waiting_activation =
                r.status == S::PendingApproval as i32 && r.action == apb::RequestAction::SelfActivate as i32;
            let until = match (&r.start_time, &r.end_time) {
                _ if granted_nothing => "-".to_owned(),
                (Some(start), Some(end)) if waiting_activation => {
                    let lasts = (from_timestamp(end) - from_timestamp(start)).max(0) as u64;
                    format!(
                        "{} once approved",
                        pim_runtime::format::duration(std::time::Duration::from_millis(lasts))
                    )
                }
                (_, end) => time(end.as_ref().map(from_timestamp)),
            };
            rows.push(vec![
                Cell::from(time(r.created_at.as_ref().map(from_timestamp))),
                r.id.into(),
                action.into(),
                names.principal(&r.principal_id).await.into(),
                names.role(&r.role_id).await.into(),
                r.scope.into(),
                status_name(r.status).into(),
                until.into(),
                r.outcome_reason.into(),
            ]);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    print_table(
        &[
            "CREATED",
            "ID",
            "ACTION",
            "PRINCIPAL",
            "ROLE",
            "SCOPE",
            "STATUS",
            "UNTIL",
            "WHY",
        ],
        rows,
    );
    Ok(0)
}

pub(crate) async fn my_roles(client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    // Those scheduled to start later too (an activation asked for tomorrow), FROM saying when.
    let mine = apb::ListAssignmentsRequest {
        mine: true,
        include_scheduled: true,
        ..Default::default()
    };
    let now = pim_runtime::db::now_ms();
    let eligible = super::listings::assignments(&session, false, &mine).await?;
    let active = super::listings::assignments(&session, true, &mine).await?;
    let mut names = Names::new(&session);
    let mut rows = Vec::new();
    let listed = (eligible.into_iter().map(|a| ("eligible", a))).chain(active.into_iter().map(|a| ("active", a)));
    for (kind, a) in listed {
        let via = super::assignments::via(&mut names, &a).await;
        let later = a.start_time.as_ref().map(from_timestamp).filter(|start| *start > now);
        rows.push(vec![
            Cell::from(kind),
            super::Named {
                name: a.role_name,
                id: a.role_id,
            }
            .into(),
            a.scope.into(),
            via,
            later.map(|start| time(Some(start))).unwrap_or_default().into(),
            time(a.end_time.as_ref().map(from_timestamp)).into(),
        ]);
    }
    print_table(&["KIND", "ROLE", "SCOPE", "VIA", "FROM", "UNTIL"], rows);
    Ok(0)
}
