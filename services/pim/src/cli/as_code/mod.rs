//! `pim plan|apply|export`: PIM's configuration kept in a file under version control.
//!
//! A plan reads the server, checks the whole file (every error listed with its line, nothing
//! changed while one is left) and lists the changes that would make the server match it;
//! `apply` makes them, in an order that creates what later changes name (roles, then groups
//! and their members, then policies, then assignments). Applied twice, a file changes nothing
//! the second time; `export` writes the server's state as a file whose plan is empty.

mod applier;
mod file;
mod planner;
mod policy;
mod state;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::db::{from_timestamp, to_timestamp};

use super::{ClientArgs, Session, explain, time};
use applier::Applier;
use file::{AssignmentSpec, File, GroupSpec, PolicySpec, RoleAssignments, RoleSpec, at, made};
use planner::Planner;
pub(crate) use state::Kind;
use state::Snapshot;

#[derive(Args)]
pub(crate) struct FileArgs {
    /// The configuration file (YAML; its format is deploy/pim.schema.json).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
}

/// `pim plan`'s: the file, and how to tell a script whether anything would change.
#[derive(Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Exit 6 when the server differs from the file (changes to apply), 0 when it matches:
    /// drift found by a scheduled job. Errors keep their codes.
    #[arg(long)]
    detailed_exitcode: bool,
}

/// `pim apply`'s: the file, and a code for where a role's policy wants the administrator's
/// recent MFA to give an active assignment.
#[derive(Args)]
pub(crate) struct ApplyArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Your authenticator code, sent only if a role's policy wants your recent MFA to give or
    /// change an active assignment (otherwise you are prompted on a terminal).
    #[arg(long, env = "PIM_MFA_CODE")]
    code: Option<String>,
}

/// `pim plan --detailed-exitcode`'s exit status when there are changes to apply.
pub(crate) const CHANGES_TO_APPLY: i32 = 6;

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Write the file here (`-`: standard output) [default: standard output].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

/// What one change does, by name: ids of what the apply creates are looked up when it runs.
enum Step {
    CreateRole(apb::CreateRoleDefinitionRequest),
    UpdateRole(apb::UpdateRoleDefinitionRequest),
    CreateGroup(GroupSpec),
    UpdateGroup {
        id: String,
        name: String,
        description: String,
    },
    Membership {
        group: String,
        principal: String,
        owner: bool,
        add: bool,
    },
    Policy {
        spec: Box<PolicySpec>,
        mask: Vec<&'static str>,
        etag: String,
    },
    Assign {
        kind: apb::AssignmentKind,
        principal: String,
        role: String,
        scope: String,
        end: Option<i64>,
    },
    ChangeEnd {
        kind: apb::AssignmentKind,
        principal: String,
        role: String,
        scope: String,
        end: Option<i64>,
    },
    Remove {
        kind: apb::AssignmentKind,
        principal: String,
        role: String,
        scope: String,
    },
}

impl Step {
    /// The order changes apply in (a stable sort keeps the file's order within a phase).
    fn phase(&self) -> (u8, usize) {
        match self {
            Step::CreateRole(_) | Step::UpdateRole(_) => (0, 0),
            Step::CreateGroup(_) | Step::UpdateGroup { .. } => (1, 0),
            Step::Membership { .. } => (2, 0),
            // Ancestor scopes first: a scope below inherits what they become.
            Step::Policy { spec, .. } => (3, spec.scope.matches('/').count()),
            Step::Assign { .. } | Step::ChangeEnd { .. } => (4, 0),
            Step::Remove { .. } => (5, 0),
        }
    }
}

/// One line of a plan (`+` adds, `~` changes, `-` removes) and what applying it does.
struct Change {
    text: String,
    step: Step,
}

pub(crate) async fn plan(args: PlanArgs) -> anyhow::Result<i32> {
    let PlanArgs {
        file: args,
        detailed_exitcode,
    } = args;
    let session = Session::open(&args.client, true)?;
    let (_, changes, kept) = read_and_plan(&session, &args.file).await?;
    print_plan(&args.file, &changes, &kept);
    Ok(match detailed_exitcode && !changes.is_empty() {
        true => CHANGES_TO_APPLY,
        false => 0,
    })
}

pub(crate) async fn apply(args: ApplyArgs) -> anyhow::Result<i32> {
    let ApplyArgs { file: args, code } = args;
    let session = Session::open(&args.client, true)?;
    let (snapshot, changes, kept) = read_and_plan(&session, &args.file).await?;
    print_plan(&args.file, &changes, &kept);
    if changes.is_empty() {
        return Ok(0);
    }
    let mut applier = Applier {
        session,
        client: args.client.clone(),
        code,
        stepped_up: false,
        snapshot,
        stale: false,
        source: args.file.display().to_string(),
        policies_written: BTreeSet::new(),
    };
    for (done, change) in changes.iter().enumerate() {
        applier.apply(&change.step).await.with_context(|| {
            format!(
                "could not apply `{}`; the {done} change(s) before it were applied, the rest were not",
                change.text
            )
        })?;
    }
    println!("Applied {} change(s).", changes.len());
    Ok(0)
}

pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let snapshot = Snapshot::read(&session).await?;
    let file = exported(&session, &snapshot).await?;
    let text = file::render(&file)?;
    match args.file.as_ref().filter(|path| path.as_os_str() != "-") {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("Wrote {}.", path.display());
        }
        None => print!("{text}"),
    }
    Ok(0)
}

/// The server's state, the changes that would make it match the file, and what the file would
/// remove but is kept for now.
async fn read_and_plan(
    session: &Session,
    path: &std::path::Path,
) -> anyhow::Result<(Snapshot, Vec<Change>, Vec<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let mut parsed = file::parse(&name, &text)?;
    let snapshot = Snapshot::read(session).await?;
    let mut planner = Planner::new(&name, &snapshot, &parsed);
    planner.group_forms(&mut parsed);
    planner.roles(&parsed);
    planner.groups(session, &parsed).await?;
    planner.policies(session, &parsed).await?;
    planner.assignments(&parsed);
    planner.check_on_server(session).await?;
    for note in &planner.notes {
        eprintln!("note: {note}");
    }
    if !planner.errors.is_empty() {
        bail!(
            "{name} has {} error(s); nothing was changed:\n  {}",
            planner.errors.len(),
            planner.errors.join("\n  ")
        );
    }
    let (mut changes, kept) = (planner.changes, planner.kept);
    // Everything a later change names exists by then: every group before any membership,
    // a policy's ancestors before it, removals last.
    changes.sort_by_key(|c| c.step.phase());
    Ok((snapshot, changes, kept))
}

fn print_plan(path: &std::path::Path, changes: &[Change], kept: &[String]) {
    for line in changes.iter().map(|c| &c.text).chain(kept) {
        println!("{line}");
    }
    let later = if kept.is_empty() {
        String::new()
    } else {
        format!(
            " {} kept while an activation runs: the server matches {} only after a later apply.",
            kept.len(),
            path.display()
        )
    };
    if changes.is_empty() {
        if kept.is_empty() {
            println!("No changes: the server matches {}.", path.display());
        } else {
            println!("No changes now.{later}");
        }
        return;
    }
    let count = |sign: char| changes.iter().filter(|c| c.text.starts_with(sign)).count();
    println!(
        "Plan: {} to add, {} to change, {} to remove.{later}",
        count('+'),
        count('~'),
        count('-')
    );
}

fn kind_name(kind: apb::AssignmentKind) -> &'static str {
    match kind {
        apb::AssignmentKind::Active => "active",
        _ => "eligible",
    }
}

/// Why `pim apply` assigns: the audit trail names the file.
fn justification(source: &str) -> String {
    format!("declared in {source}, applied by pim apply")
}

/// An administrator's request to assign, or to change the end of, an assignment.
fn assignment_request(
    action: apb::RequestAction,
    kind: apb::AssignmentKind,
    principal_id: &str,
    role_id: &str,
    scope: &str,
    end: Option<i64>,
) -> apb::CreateRequestRequest {
    apb::CreateRequestRequest {
        action: action as i32,
        kind: kind as i32,
        principal_id: principal_id.to_owned(),
        role_id: role_id.to_owned(),
        scope: scope.to_owned(),
        schedule: Some(apb::Schedule {
            start_time: None,
            expiration: Some(match end {
                Some(end) => apb::schedule::Expiration::EndTime(to_timestamp(end)),
                None => apb::schedule::Expiration::Permanent(true),
            }),
        }),
        justification: String::new(),
        ticket: None,
        validate_only: false,
    }
}

/// An `until` (RFC 3339 with its offset, e.g. 2027-06-30T00:00:00Z) in epoch milliseconds.
fn until_ms(text: &str) -> Result<i64, String> {
    let at = pim_runtime::format::parse_moment(text).map_err(|e| format!("until {e}"))?;
    if at < 0 {
        return Err(format!("until {text:?} is before 1970"));
    }
    Ok(at)
}

/// The server's state as a file: custom roles, groups with their owners and members, every
/// policy set at a scope, and administrators' assignments (never pruned: adopt a role by
/// adding `prune: true` to it).
async fn exported(session: &Session, snapshot: &Snapshot) -> anyhow::Result<File> {
    let mut file = File::default();
    let mut roles: Vec<&apb::RoleDefinition> = snapshot.roles.iter().collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    for role in roles.iter().filter(|r| !r.built_in) {
        let derived = role
            .permissions
            .iter()
            .any(|p| pim_assignment::privileged_permission(p));
        file.roles.push(made(RoleSpec {
            name: role.name.clone(),
            description: role.description.clone(),
            permissions: role.permissions.clone(),
            privileged: role.privileged && !derived,
        }));
    }
    let mut groups: Vec<&ipb::Group> = snapshot.groups.iter().collect();
    groups.sort_by(|a, b| a.display_name.cmp(&b.display_name));
    for group in groups {
        let names = |ids: Vec<String>| {
            let mut names: Vec<String> = ids.iter().map(|id| snapshot.directory.name_of(id)).collect();
            names.sort();
            names.into_iter().map(made).collect::<Vec<_>>()
        };
        file.groups.push(made(GroupSpec {
            name: group.display_name.clone(),
            description: group.description.clone(),
            role_assignable: group.is_assignable_to_role,
            owners: Some(names(snapshot.members(session, &group.id, true).await?)),
            members: Some(names(snapshot.members(session, &group.id, false).await?)),
        }));
    }
    let mut policies = PolicyServiceClient::new(session.channel.clone());
    for role in &roles {
        let set = policies
            .list_role_policies(session.request(apb::ListRolePoliciesRequest {
                role_id: role.id.clone(),
            })?)
            .await
            .map_err(explain)?
            .into_inner()
            .policies;
        for p in set {
            let mut spec = policy::from_pb(&role.name, &p, &snapshot.directory);
            // A group's access policy, by the group's name.
            if let (Some(access), Some(group)) =
                (file::GroupAccess::of_role(&role.id), snapshot.group_of_scope(&p.scope))
            {
                spec.role = String::new();
                spec.group = Some(group);
                spec.access = Some(access);
                spec.scope = "/".into();
            }
            file.policies.push(made(spec));
        }
    }
    let held = state::by_role(&snapshot.assignments);
    for role in &roles {
        let Some(list) = held.get(role.id.as_str()) else {
            continue;
        };
        let entry = |a: &&apb::Assignment| {
            made(AssignmentSpec {
                principal: snapshot.directory.name_of(&a.principal_id),
                scope: a.scope.clone(),
                until: a.end_time.as_ref().map(|t| time(Some(from_timestamp(t)))),
            })
        };
        let of = |kind: apb::AssignmentKind, scope: Option<&str>| {
            let mut list: Vec<_> = list
                .iter()
                .filter(|a| a.kind == kind as i32 && scope.is_none_or(|s| a.scope == s))
                .map(entry)
                .collect();
            list.sort_by(|a, b| (&a.value.principal, &a.value.scope).cmp(&(&b.value.principal, &b.value.scope)));
            list
        };
        // A group's access, group by group and by the group's name (its entries hold there).
        let access = file::GroupAccess::of_role(&role.id);
        let mut groups: Vec<(String, String)> = list
            .iter()
            .filter_map(|a| Some((snapshot.group_of_scope(&a.scope)?, a.scope.clone())))
            .filter(|_| access.is_some())
            .collect();
        groups.sort();
        groups.dedup();
        for (group, scope) in &groups {
            let at_root = |mut entries: Vec<serde_saphyr::Spanned<AssignmentSpec>>| {
                entries.iter_mut().for_each(|e| e.value.scope = "/".into());
                entries
            };
            file.assignments.push(made(RoleAssignments {
                group: Some(group.clone()),
                access,
                eligible: at_root(of(apb::AssignmentKind::Eligible, Some(scope))),
                active: at_root(of(apb::AssignmentKind::Active, Some(scope))),
                ..RoleAssignments::default()
            }));
        }
        let named: BTreeSet<&str> = groups.iter().map(|(_, scope)| scope.as_str()).collect();
        let rest = |kind| -> Vec<_> {
            of(kind, None)
                .into_iter()
                .filter(|e| !named.contains(e.value.scope.as_str()))
                .collect()
        };
        let (eligible, active) = (rest(apb::AssignmentKind::Eligible), rest(apb::AssignmentKind::Active));
        if eligible.is_empty() && active.is_empty() && !groups.is_empty() {
            continue;
        }
        file.assignments.push(made(RoleAssignments {
            role: role.name.clone(),
            eligible,
            active,
            ..RoleAssignments::default()
        }));
    }
    Ok(file)
}
