//! `pim assign`, `pim assignments` and `pim check`: administrators' assignments, and what a
//! principal holds.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::reconcile_service_client::ReconcileServiceClient;
use pim_runtime::db::from_timestamp;

use super::{
    Cell, ClientArgs, KindArg, Named, Names, RoleRef, Session, Why, explain, kind_pb, print_table, printable, time,
};

#[derive(Args)]
pub(crate) struct AssignArgs {
    /// User name, group or service principal name (`user:`, `group:` or `service-principal:NAME`
    /// where a name alone is ambiguous), or principal id.
    #[arg(long)]
    principal: String,
    #[command(flatten)]
    role: RoleRef,
    /// Where the role applies: / (everywhere) or a narrower scope such as /apps/payments.
    #[arg(long, default_value = "/")]
    scope: String,
    #[command(flatten)]
    how: AssignHow,
}

/// How to assign, a role or access to a group.
#[derive(Args)]
pub(crate) struct AssignHow {
    /// Which assignment: eligible (activated when needed) or active (held at once).
    #[arg(long, value_enum, default_value = "eligible")]
    kind: KindArg,
    /// How long it lasts, e.g. 1h, 30d (default: the policy's maximum, or permanent where allowed).
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true, conflicts_with = "permanent")]
    duration: Option<Duration>,
    /// Never expires (where the policy allows it).
    #[arg(long)]
    permanent: bool,
    /// Start later, at this time (RFC 3339 with its offset: 2026-12-01T09:00:00Z, or
    /// 2026-12-01T10:00:00+01:00); until then it is scheduled, and `pim cancel` withdraws it.
    #[arg(long, value_parser = pim_runtime::format::parse_moment, allow_hyphen_values = true)]
    start: Option<i64>,
    #[command(flatten)]
    why: Why,
    /// Your authenticator code, sent only if the role's policy wants your recent MFA to give
    /// an active assignment (otherwise you are prompted on a terminal).
    #[arg(long, env = "PIM_MFA_CODE")]
    code: Option<String>,
    /// Check everything, change nothing.
    #[arg(long)]
    validate_only: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct ListAssignmentsArgs {
    /// Only this principal (user name or id).
    #[arg(long)]
    principal: Option<String>,
    /// Only this role (name or id).
    #[arg(long)]
    role: Option<String>,
    /// Only eligible or only active assignments (default: both).
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Only mine.
    #[arg(long)]
    mine: bool,
    /// Also those scheduled to start later (with a FROM column).
    #[arg(long)]
    scheduled: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// User name or principal id.
    #[arg(long = "principal", value_name = "PRINCIPAL")]
    principal_flag: Option<String>,
    /// Role name or id.
    #[arg(long = "role", value_name = "ROLE", conflicts_with = "permission")]
    role_flag: Option<String>,
    /// The principal and the role, as positional arguments: `pim check lee "Exchange
    /// Administrator"`; with --principal, the role alone: `pim check --principal lee "Exchange
    /// Administrator"`.
    #[arg(value_name = "PRINCIPAL ROLE", num_args = 0..=2)]
    positional: Vec<String>,
    /// A permission, e.g. pim.assignments.manage.
    #[arg(long)]
    permission: Option<String>,
    /// Where: / (everywhere) or a narrower scope such as /apps/payments.
    #[arg(long, default_value = "/")]
    scope: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn assign(args: AssignArgs) -> anyhow::Result<i32> {
    assign_as(&args.principal, args.role.required()?, &args.scope, args.how).await
}

/// Assigns `role` at `scope` to `principal` (an administrator's adminAssign request).
pub(crate) async fn assign_as(principal: &str, role: &str, scope: &str, args: AssignHow) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let principal_id = session.principal_id(principal).await?;
    let role_id = session.role_id(role).await?;
    let expiration = if args.permanent {
        Some(apb::schedule::Expiration::Permanent(true))
    } else {
        args.duration
            .map(|d| apb::schedule::Expiration::Duration(pim_runtime::db::duration_pb(d)))
    };
    let request = apb::CreateRequestRequest {
        action: apb::RequestAction::AdminAssign as i32,
        kind: kind_pb(args.kind) as i32,
        principal_id,
        role_id,
        scope: scope.to_owned(),
        schedule: Some(apb::Schedule {
            start_time: args.start.map(pim_runtime::db::to_timestamp),
            expiration,
        }),
        justification: args.why.justification,
        ticket: args.why.ticket,
        validate_only: args.validate_only,
    };
    let what = format!("Assigning {role}");
    let (_, r) = super::mfa::create_request_stepping_up(&args.client, &what, args.code, request).await?;
    let status = apb::RequestStatus::try_from(r.status)
        .map(|s| s.as_str_name().trim_start_matches("REQUEST_STATUS_").to_lowercase())
        .unwrap_or_default();
    let (from, until) = (
        time(r.start_time.as_ref().map(from_timestamp)),
        time(r.end_time.as_ref().map(from_timestamp)),
    );
    let words = if args.validate_only {
        format!("Valid: would be {status}, from {from} until {until}")
    } else {
        format!(
            "Request {} {status}: assignment {} from {from} until {until}",
            r.id, r.assignment_id
        )
    };
    let mut fields = super::requests::request_json(&r, Some(role));
    fields["validate_only"] = args.validate_only.into();
    super::print_made(&words, fields);
    Ok(0)
}

pub(crate) async fn list_assignments(args: ListAssignmentsArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let principal_id = match &args.principal {
        Some(p) => session.principal_id(p).await?,
        None => String::new(),
    };
    let role_id = match &args.role {
        Some(r) => session.role_id(r).await?,
        None => String::new(),
    };
    let request = apb::ListAssignmentsRequest {
        principal_id,
        role_id,
        mine: args.mine,
        include_scheduled: args.scheduled,
        ..Default::default()
    };
    let kinds = match args.kind {
        Some(kind) => vec![kind],
        None => vec![KindArg::Eligible, KindArg::Active],
    };
    let mut names = Names::new(&session);
    let mut rows = Vec::new();
    for kind in kinds {
        let (label, active) = match kind {
            KindArg::Active => ("active", true),
            KindArg::Eligible => ("eligible", false),
        };
        let listed = super::listings::assignments(&session, active, &request).await?;
        for a in listed {
            let from = Cell::from(time(a.start_time.as_ref().map(from_timestamp)));
            let mut cells = row(&mut names, label, a).await;
            if args.scheduled {
                cells.insert(cells.len() - 1, from);
            }
            rows.push(cells);
        }
    }
    if args.scheduled {
        print_table(
            &["ID", "KIND", "PRINCIPAL", "ROLE", "SCOPE", "VIA", "FROM", "UNTIL"],
            rows,
        );
    } else {
        print_table(&["ID", "KIND", "PRINCIPAL", "ROLE", "SCOPE", "VIA", "UNTIL"], rows);
    }
    Ok(0)
}

/// One assignment as a table row, its principal and role by name.
async fn row(names: &mut Names<'_>, kind: &str, a: apb::Assignment) -> Vec<Cell> {
    let via = via(names, &a).await;
    vec![
        a.id.into(),
        kind.into(),
        names.principal(&a.principal_id).await.into(),
        Named {
            name: a.role_name,
            id: a.role_id,
        }
        .into(),
        a.scope.into(),
        via,
        Cell::from(time(a.end_time.as_ref().map(from_timestamp))),
    ]
}

/// How a principal holds an assignment: `direct`, or through a group, by name (with --ids,
/// its id too): one a member holds through a group is the group's to change, not theirs.
pub(crate) async fn via(names: &mut Names<'_>, a: &apb::Assignment) -> Cell {
    if a.member_type == apb::MemberType::Group as i32 {
        let group = names.principal(&a.via_group_id).await;
        Cell::Named(Named {
            name: format!("group {}", group.name),
            id: group.id,
        })
    } else {
        "direct".into()
    }
}

/// `pim check`: 0 allowed, 1 not allowed. A question that could not be answered (refused to
/// the asker, throttled, naming no one) exits 5, never 1: a script acting on "does not hold
/// it" must not act on "could not ask".
pub(crate) async fn check(args: CheckArgs) -> anyhow::Result<i32> {
    ask(args).await.map_err(|err| {
        let refused =
            super::exit_status(&err) == 1 || err.chain().any(|cause| cause.is::<super::session::LookupRefused>());
        if !refused {
            return err;
        }
        // A script reading JSON finds an answer that is none.
        if super::json_wanted() {
            println!("{}", serde_json::json!({"allowed": null, "error": format!("{err:#}")}));
        }
        err.context(super::Unanswered)
    })
}

async fn ask(args: CheckArgs) -> anyhow::Result<i32> {
    let (principal, role_arg) = match (args.principal_flag, args.positional.as_slice()) {
        (Some(principal), []) => (principal, None),
        (Some(principal), [role]) => (principal, Some(role.clone())),
        (None, [principal]) => (principal.clone(), None),
        (None, [principal, role]) => (principal.clone(), Some(role.clone())),
        (Some(_), _) => bail!("--principal names the principal already: give the role alone after it"),
        (None, _) => bail!("name the principal: pim check lee \"Exchange Administrator\" (or --principal lee)"),
    };
    if role_arg.is_some() && (args.role_flag.is_some() || args.permission.is_some()) {
        bail!("give the role once: as an argument, or with --role or --permission");
    }
    let role = args.role_flag.or(role_arg);
    let session = Session::open(&args.client, true)?;
    // An unknown principal, as an unknown role, is a mistake in the command (2).
    let principal_id = match session.principal_id(&principal).await {
        Err(e) if super::answered(&e, tonic::Code::NotFound) => bail!("{e}"),
        found => found?,
    };
    let target = match (&role, &args.permission) {
        // An unknown role is a mistake in the command (2), not "does not hold it" (1).
        (Some(role), _) => match session.role_id(role).await {
            Ok(id) => apb::check_access_request::Target::RoleId(id),
            Err(e) if super::answered(&e, tonic::Code::NotFound) => {
                bail!("no role is named {role:?} (pim roles --definitions lists them)")
            }
            Err(e) => return Err(e),
        },
        (None, Some(p)) => apb::check_access_request::Target::Permission(p.clone()),
        (None, None) => bail!("pass --role or --permission"),
    };
    let r = AccessServiceClient::new(session.channel.clone())
        .check_access(session.request(apb::CheckAccessRequest {
            principal_id,
            target: Some(target),
            scope: args.scope.clone(),
            at_least_as_fresh: session.at_least_as_fresh(),
        })?)
        .await
        .map_err(explain)?
        .into_inner();
    let what = role.or(args.permission).unwrap_or_default();
    if r.allowed {
        // Through which role, assignment and group, where: the grants behind the answer.
        let mut names = Names::new(&session);
        let (mut through, mut grants) = (Vec::new(), Vec::new());
        for g in &r.grants {
            let until = time(g.end_time.as_ref().map(from_timestamp));
            let group = if g.via_group_id.is_empty() {
                String::new()
            } else {
                format!(" via group {}", names.principal(&g.via_group_id).await.with_id())
            };
            through.push(printable(&format!(
                "{} at {} until {until} (assignment {}{group})",
                g.role_name, g.scope, g.assignment_id
            )));
            grants.push(serde_json::json!({
                "role": g.role_name, "role_id": g.role_id, "scope": g.scope, "until": until,
                "assignment_id": g.assignment_id, "via_group_id": g.via_group_id,
            }));
        }
        let until = time(r.expires_at.as_ref().map(from_timestamp));
        let mut words = format!("allowed: {principal} holds {what} at {} until {until}", args.scope);
        for grant in through {
            words.push_str(&format!("\n  through {grant}"));
        }
        super::print_made(
            &words,
            serde_json::json!({
                "allowed": true, "principal": principal, "asked": what, "scope": args.scope,
                "until": until, "grants": grants,
            }),
        );
        Ok(0)
    } else {
        super::print_made(
            &format!("denied: {principal} does not hold {what} at {}", args.scope),
            serde_json::json!({"allowed": false, "principal": principal, "asked": what, "scope": args.scope}),
        );
        Ok(1)
    }
}

/// `pim unmanaged`: grants the target systems' connectors reported that PIM did not make
/// (standing access outside PIM), each principal and role by name.
pub(crate) async fn unmanaged(client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    let grants = ReconcileServiceClient::new(session.channel.clone())
        .list_unmanaged_grants(session.request(apb::ListUnmanagedGrantsRequest {})?)
        .await
        .map_err(explain)?
        .into_inner()
        .grants;
    let mut names = Names::new(&session);
    let mut rows = Vec::new();
    for g in grants {
        rows.push(vec![
            Cell::from(g.system),
            names.principal(&g.principal_id).await.into(),
            names.role(&g.role_id).await.into(),
            g.scope.into(),
        ]);
    }
    print_table(&["SYSTEM", "PRINCIPAL", "ROLE", "SCOPE"], rows);
    Ok(0)
}
