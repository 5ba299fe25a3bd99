//! `pim plan|apply|export`: PIM's configuration kept in a file under version control.
//!
//! A plan reads the server, checks the whole file (every error listed with its line, nothing
//! changed while one is left) and lists the changes that would make the server match it;
//! `apply` makes them, in an order that creates what later changes name (roles, then groups
//! and their members, then policies, then assignments). Applied twice, a file changes nothing
//! the second time; `export` writes the server's state as a file whose plan is empty.

mod file;
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
use file::{AssignmentSpec, File, GroupSpec, PolicySpec, RoleAssignments, RoleSpec, at, made};
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

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Write the file here [default: standard output].
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
        spec: PolicySpec,
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

pub(crate) async fn plan(args: FileArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let (_, changes) = read_and_plan(&session, &args.file).await?;
    print_plan(&args.file, &changes);
    Ok(0)
}

pub(crate) async fn apply(args: FileArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let (snapshot, changes) = read_and_plan(&session, &args.file).await?;
    print_plan(&args.file, &changes);
    if changes.is_empty() {
        return Ok(0);
    }
    let mut applier = Applier {
        session: &session,
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
    match &args.file {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("Wrote {}.", path.display());
        }
        None => print!("{text}"),
    }
    Ok(0)
}

async fn read_and_plan(session: &Session, path: &std::path::Path) -> anyhow::Result<(Snapshot, Vec<Change>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let parsed = file::parse(&name, &text)?;
    let snapshot = Snapshot::read(session).await?;
    let mut planner = Planner::new(&name, &snapshot, &parsed);
    planner.roles(&parsed);
    planner.groups(session, &parsed).await?;
    planner.policies(session, &parsed).await?;
    planner.assignments(&parsed);
    planner.check_on_server(session).await?;
    if !planner.errors.is_empty() {
        bail!(
            "{name} has {} error(s); nothing was changed:\n  {}",
            planner.errors.len(),
            planner.errors.join("\n  ")
        );
    }
    let mut changes = planner.changes;
    // Everything a later change names exists by then: every group before any membership,
    // a policy's ancestors before it, removals last.
    changes.sort_by_key(|c| c.step.phase());
    Ok((snapshot, changes))
}

fn print_plan(path: &std::path::Path, changes: &[Change]) {
    if changes.is_empty() {
        println!("No changes: the server matches {}.", path.display());
        return;
    }
    for change in changes {
        println!("{}", change.text);
    }
    let count = |sign: char| changes.iter().filter(|c| c.text.starts_with(sign)).count();
    println!(
        "Plan: {} to add, {} to change, {} to remove.",
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

/// Compares a file with a snapshot: the changes, and every error with its line.
struct Planner<'a> {
    path: &'a str,
    snapshot: &'a Snapshot,
    /// Roles and groups the file creates (lower-cased role names; group names).
    new_roles: BTreeSet<String>,
    new_groups: BTreeSet<String>,
    errors: Vec<String>,
    changes: Vec<Change>,
    /// Roles (lower-cased) whose policy the file changes somewhere.
    policies_changed: BTreeSet<String>,
    /// Assignments the server can check before anything changes (`validate_only`): those of
    /// roles that exist, to principals that exist, under a policy the file leaves as it is.
    checks: Vec<(String, apb::CreateRequestRequest)>,
}

impl<'a> Planner<'a> {
    fn new(path: &'a str, snapshot: &'a Snapshot, file: &File) -> Self {
        let new_roles = file
            .roles
            .iter()
            .map(|r| r.value.name.to_lowercase())
            .filter(|name| snapshot.role(name).is_none())
            .collect();
        let new_groups = file
            .groups
            .iter()
            .map(|g| g.value.name.clone())
            .filter(|name| snapshot.groups_named(name).is_empty())
            .collect();
        Self {
            path,
            snapshot,
            new_roles,
            new_groups,
            errors: Vec::new(),
            changes: Vec::new(),
            policies_changed: BTreeSet::new(),
            checks: Vec::new(),
        }
    }

    fn error<T>(&mut self, item: &serde_saphyr::Spanned<T>, message: impl std::fmt::Display) {
        self.errors.push(format!("{}: {message}", at(self.path, item)));
    }

    fn change(&mut self, text: String, step: Step) {
        self.changes.push(Change { text, step });
    }

    /// A role the file names: its id when it exists, None when the file creates it.
    fn role<T>(&mut self, item: &serde_saphyr::Spanned<T>, name: &str) -> Option<Option<String>> {
        if let Some(role) = self.snapshot.role(name) {
            return Some(Some(role.id.clone()));
        }
        if self.new_roles.contains(&name.to_lowercase()) {
            return Some(None);
        }
        self.error(
            item,
            format!("no role is named {name:?} (nor does this file define one)"),
        );
        None
    }

    /// A principal the file names: its id when it exists, None for a group the file creates.
    fn principal(&mut self, item: &serde_saphyr::Spanned<String>) -> Option<Option<String>> {
        let reference = item.value.trim();
        let group = reference.strip_prefix("group:").unwrap_or(reference);
        match self.snapshot.directory.resolve(reference) {
            // A bare name this file also gives a new group: which one is meant?
            Ok(_) if !reference.contains(':') && self.new_groups.contains(reference) => {
                self.error(
                    item,
                    format!("{reference:?} names an existing principal and a group this file creates; write group:{reference} or the other's kind"),
                );
                None
            }
            Ok(known) => Some(Some(known.id.clone())),
            Err(_) if self.new_groups.contains(group) => Some(None),
            Err(e) => {
                self.error(item, e);
                None
            }
        }
    }

    fn scope<T>(&mut self, item: &serde_saphyr::Spanned<T>, raw: &str) -> Option<String> {
        match pim_assignment::Scope::parse(raw) {
            Ok(scope) => Some(scope.as_str().to_owned()),
            Err(e) => {
                self.error(item, e);
                None
            }
        }
    }

    fn roles(&mut self, file: &File) {
        let mut seen = BTreeSet::new();
        for item in &file.roles {
            let spec = &item.value;
            if spec.name.trim().is_empty() {
                self.error(item, "a role needs a name");
                continue;
            }
            if !seen.insert(spec.name.to_lowercase()) {
                self.error(item, format!("role {:?} is defined twice", spec.name));
                continue;
            }
            // As the server keeps them: trimmed, one of each whatever its case.
            let mut permissions: BTreeSet<String> = BTreeSet::new();
            for p in spec.permissions.iter().map(|p| p.trim()) {
                if !permissions.iter().any(|held: &String| held.eq_ignore_ascii_case(p)) {
                    permissions.insert(p.to_owned());
                }
            }
            let (name, description) = (spec.name.trim(), spec.description.trim());
            if permissions.is_empty() {
                self.error(item, format!("role {:?} needs at least one permission", spec.name));
            }
            for permission in &permissions {
                if let Err(e) = pim_assignment::check_permission(permission, false) {
                    self.error(item, format!("role {:?}: {e}", spec.name));
                }
            }
            let privileged = spec.privileged || permissions.iter().any(|p| pim_assignment::privileged_permission(p));
            match self.snapshot.role(&spec.name) {
                None => self.change(
                    format!(
                        "+ role {:?}: {}{}",
                        spec.name,
                        permissions.iter().cloned().collect::<Vec<_>>().join(", "),
                        if privileged { " (privileged)" } else { "" }
                    ),
                    Step::CreateRole(apb::CreateRoleDefinitionRequest {
                        name: name.to_owned(),
                        description: description.to_owned(),
                        permissions: permissions.into_iter().collect(),
                        privileged: spec.privileged,
                    }),
                ),
                Some(role) if role.built_in => {
                    self.error(
                        item,
                        format!("{:?} is a built-in role: it cannot be changed", role.name),
                    );
                }
                Some(role) => {
                    let held: BTreeSet<String> = role.permissions.iter().cloned().collect();
                    let lower = |set: &BTreeSet<String>| -> BTreeSet<String> {
                        set.iter().map(|p| p.to_ascii_lowercase()).collect()
                    };
                    let mut said = Vec::new();
                    let mut update = apb::UpdateRoleDefinitionRequest {
                        role: role.id.clone(),
                        ..Default::default()
                    };
                    if role.description.trim() != description {
                        said.push(format!("description {:?} -> {description:?}", role.description));
                        update.description = Some(description.to_owned());
                    }
                    if lower(&held) != lower(&permissions) {
                        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
                        said.push(format!("permissions {} -> {}", list(&held), list(&permissions)));
                        update.permissions = permissions.into_iter().collect();
                    }
                    if role.privileged != privileged {
                        said.push(format!("privileged {} -> {privileged}", role.privileged));
                        update.privileged = Some(spec.privileged);
                    }
                    if !said.is_empty() {
                        self.change(
                            format!("~ role {:?}: {}", role.name, said.join("; ")),
                            Step::UpdateRole(update),
                        );
                    }
                }
            }
        }
    }

    async fn groups(&mut self, session: &Session, file: &File) -> anyhow::Result<()> {
        let mut seen = BTreeSet::new();
        for item in &file.groups {
            let spec = &item.value;
            if spec.name.trim().is_empty() {
                self.error(item, "a group needs a name");
                continue;
            }
            if !seen.insert(spec.name.clone()) {
                self.error(item, format!("group {:?} is defined twice", spec.name));
                continue;
            }
            let existing = self.snapshot.groups_named(&spec.name);
            let (current_members, current_owners) = match existing.as_slice() {
                [] => {
                    self.change(
                        format!(
                            "+ group {:?}{}",
                            spec.name,
                            if spec.role_assignable { " (role-assignable)" } else { "" }
                        ),
                        Step::CreateGroup(spec.clone()),
                    );
                    (BTreeSet::new(), BTreeSet::new())
                }
                [group] => {
                    if group.is_assignable_to_role != spec.role_assignable {
                        self.error(
                            item,
                            format!(
                                "group {:?} is {}role-assignable, and that cannot change after it is created",
                                spec.name,
                                if group.is_assignable_to_role { "" } else { "not " }
                            ),
                        );
                    }
                    let description = spec.description.trim();
                    if group.description.trim() != description {
                        self.change(
                            format!(
                                "~ group {:?}: description {:?} -> {description:?}",
                                spec.name, group.description
                            ),
                            Step::UpdateGroup {
                                id: group.id.clone(),
                                name: group.display_name.clone(),
                                description: description.to_owned(),
                            },
                        );
                    }
                    let members = match &spec.members {
                        Some(_) => self.snapshot.members(session, &group.id, false).await?,
                        None => Vec::new(),
                    };
                    let owners = match &spec.owners {
                        Some(_) => self.snapshot.members(session, &group.id, true).await?,
                        None => Vec::new(),
                    };
                    (members.into_iter().collect(), owners.into_iter().collect())
                }
                _ => {
                    self.error(
                        item,
                        format!("several groups are named {:?}; rename one of them first", spec.name),
                    );
                    continue;
                }
            };
            for (listed, current, owner) in [
                (&spec.members, current_members, false),
                (&spec.owners, current_owners, true),
            ] {
                let Some(listed) = listed else { continue };
                let what = if owner { "owner" } else { "member" };
                let mut wanted = BTreeSet::new();
                for principal in listed {
                    let Some(id) = self.principal(principal) else { continue };
                    // What identity refuses, refused here before anything changes.
                    let kind = match &id {
                        Some(id) => self.snapshot.directory.resolve(id).map(|k| k.kind).ok(),
                        None => Some(state::Kind::Group),
                    };
                    if owner && kind != Some(state::Kind::User) {
                        self.error(principal, format!("{}: a group's owners are users", principal.value));
                        continue;
                    }
                    if !owner && spec.role_assignable && kind == Some(state::Kind::Group) {
                        self.error(
                            principal,
                            format!(
                                "{}: a role-assignable group cannot have groups as members",
                                principal.value
                            ),
                        );
                        continue;
                    }
                    let id = id.unwrap_or_else(|| principal.value.clone());
                    if !wanted.insert(id.clone()) {
                        self.error(principal, format!("{} is listed twice", principal.value));
                    } else if !current.contains(&id) {
                        self.change(
                            format!("+ {what} {} of group {:?}", principal.value, spec.name),
                            Step::Membership {
                                group: spec.name.clone(),
                                principal: principal.value.clone(),
                                owner,
                                add: true,
                            },
                        );
                    }
                }
                for id in current.difference(&wanted) {
                    let name = self.snapshot.directory.name_of(id);
                    self.change(
                        format!("- {what} {name} of group {:?} (not in the file)", spec.name),
                        Step::Membership {
                            group: spec.name.clone(),
                            principal: id.clone(),
                            owner,
                            add: false,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn policies(&mut self, session: &Session, file: &File) -> anyhow::Result<()> {
        let mut seen = BTreeSet::new();
        // Every valid policy of the file (role's name, scope, spec), and those that change.
        let mut listed: Vec<(String, String, PolicySpec)> = Vec::new();
        let mut changed: BTreeSet<(String, String)> = BTreeSet::new();
        for item in &file.policies {
            let spec = &item.value;
            let Some(role_id) = self.role(item, &spec.role) else {
                continue;
            };
            let Some(scope) = self.scope(item, &spec.scope) else {
                continue;
            };
            if !seen.insert((spec.role.to_lowercase(), scope.clone())) {
                self.error(item, format!("the policy of {} at {scope} is given twice", spec.role));
                continue;
            }
            // A group this file creates may be named as an approver: it stands as itself
            // until the apply creates it.
            let directory = &self.snapshot.directory;
            let new_groups = &self.new_groups;
            let desired = policy::to_pb(spec, |name| match directory.resolve(name) {
                Ok(known) => Ok(known.id.clone()),
                Err(_) if new_groups.contains(name.strip_prefix("group:").unwrap_or(name)) => Ok(name.to_owned()),
                Err(e) => Err(e),
            });
            let desired = match desired {
                Ok(desired) => desired,
                Err(errors) => {
                    for (line, e) in errors {
                        let at = line.map_or_else(|| at(self.path, item), |l| format!("{}:{l}", self.path));
                        self.errors.push(format!("{at}: policy of {}: {e}", spec.role));
                    }
                    continue;
                }
            };
            let current = match &role_id {
                Some(role_id) => Some(
                    PolicyServiceClient::new(session.channel.clone())
                        .get_role_policy(session.request(apb::GetRolePolicyRequest {
                            role_id: role_id.clone(),
                            scope: scope.clone(),
                        })?)
                        .await
                        .map_err(explain)?
                        .into_inner(),
                ),
                None => None,
            };
            let directory = &self.snapshot.directory;
            let mut said = Vec::new();
            for path in policy::named(spec) {
                let held = current.as_ref().map(|p| policy::shown(p, path, directory));
                let wanted = policy::shown(&desired, path, directory);
                if held.as_ref() != Some(&wanted) {
                    let held = held.unwrap_or_else(|| "(default)".into());
                    said.push(format!("{}: {held} -> {wanted}", policy::file_key(path)));
                }
            }
            let role = self
                .snapshot
                .role(&spec.role)
                .map_or(spec.role.clone(), |r| r.name.clone());
            let spec = PolicySpec {
                scope: scope.clone(),
                ..spec.clone()
            };
            if !said.is_empty() {
                self.policies_changed.insert(role.to_lowercase());
                changed.insert((role.to_lowercase(), scope.clone()));
                self.change(
                    format!("~ policy of {role:?} at {scope}: {}", said.join("; ")),
                    Step::Policy {
                        spec: spec.clone(),
                        // Every setting the file names, so the values it gives hold even
                        // where they equal what a scope above is changing from.
                        mask: policy::named(&spec),
                        etag: current.map(|p| p.etag).unwrap_or_default(),
                    },
                );
            }
            listed.push((role, scope, spec));
        }
        // A scope below one that changes inherits the change unless it is written again: the
        // file's settings there are applied after it, as the file gives them.
        for (role, scope, spec) in listed {
            let key = (role.to_lowercase(), scope.clone());
            let under_a_change = changed.iter().any(|(r, above)| {
                *r == key.0 && *above != scope && (above == "/" || scope.starts_with(&format!("{above}/")))
            });
            if !changed.contains(&key) && under_a_change {
                self.change(
                    format!("~ policy of {role:?} at {scope}: kept as the file gives it, under the change above"),
                    Step::Policy {
                        mask: policy::named(&spec),
                        spec,
                        etag: String::new(),
                    },
                );
            }
        }
        Ok(())
    }

    fn assignments(&mut self, file: &File) {
        let mut roles_seen = BTreeSet::new();
        for item in &file.assignments {
            let spec: &RoleAssignments = &item.value;
            let Some(role_id) = self.role(item, &spec.role) else {
                continue;
            };
            if !roles_seen.insert(spec.role.to_lowercase()) {
                self.error(item, format!("the assignments of {} are given twice", spec.role));
                continue;
            }
            let role_name = self
                .snapshot
                .role(&spec.role)
                .map_or(spec.role.clone(), |r| r.name.clone());
            let mut wanted = BTreeSet::new();
            for (kind, listed) in [
                (apb::AssignmentKind::Eligible, &spec.eligible),
                (apb::AssignmentKind::Active, &spec.active),
            ] {
                for entry in listed {
                    self.assignment(kind, &role_name, role_id.as_deref(), entry, &mut wanted);
                }
            }
            let Some(role_id) = role_id.filter(|_| spec.prune) else {
                continue;
            };
            for held in self.snapshot.assignments.iter().filter(|a| a.role_id == role_id) {
                let kind = apb::AssignmentKind::try_from(held.kind).unwrap_or(apb::AssignmentKind::Eligible);
                if wanted.contains(&(kind as i32, held.principal_id.clone(), held.scope.clone())) {
                    continue;
                }
                let name = self.snapshot.directory.name_of(&held.principal_id);
                // Removing an active assignment ends every active one of that principal, role
                // and scope, an activation included: left for a run after it ends.
                let activated =
                    self.snapshot.activations.iter().any(|a| {
                        a.principal_id == held.principal_id && a.role_id == held.role_id && a.scope == held.scope
                    });
                if kind == apb::AssignmentKind::Active && activated {
                    eprintln!(
                        "warning: {name}'s active {role_name} at {} is not in the file, but is kept while their activation of it runs (removing one would end both); apply again later",
                        held.scope
                    );
                    continue;
                }
                // The server judges the removal before anything changes (the last
                // Global Administrator stays).
                let mut ask = assignment_request(
                    apb::RequestAction::AdminRemove,
                    kind,
                    &held.principal_id,
                    &role_id,
                    &held.scope,
                    None,
                );
                ask.schedule = None;
                ask.validate_only = true;
                ask.justification = justification(self.path);
                self.checks.push((at(self.path, item), ask));
                self.change(
                    format!(
                        "- {} {name}: {role_name} at {} (not in the file, which prunes the role)",
                        kind_name(kind),
                        held.scope
                    ),
                    Step::Remove {
                        kind,
                        principal: held.principal_id.clone(),
                        role: role_id.clone(),
                        scope: held.scope.clone(),
                    },
                );
            }
        }
    }

    fn assignment(
        &mut self,
        kind: apb::AssignmentKind,
        role_name: &str,
        role_id: Option<&str>,
        entry: &serde_saphyr::Spanned<AssignmentSpec>,
        wanted: &mut BTreeSet<(i32, String, String)>,
    ) {
        let spec = &entry.value;
        let principal = made(spec.principal.clone());
        let principal = serde_saphyr::Spanned {
            referenced: entry.referenced,
            ..principal
        };
        let (Some(id), Some(scope)) = (self.principal(&principal), self.scope(entry, &spec.scope)) else {
            return;
        };
        let end = match spec.until.as_deref().map(until_ms) {
            None => None,
            Some(Ok(end)) => Some(end),
            Some(Err(e)) => {
                self.error(entry, e);
                return;
            }
        };
        let id = id.unwrap_or_else(|| spec.principal.clone());
        if !wanted.insert((kind as i32, id.clone(), scope.clone())) {
            self.error(
                entry,
                format!("{} {} at {scope} is listed twice", kind_name(kind), spec.principal),
            );
            return;
        }
        let end = &end;
        let held = role_id.and_then(|role_id| {
            self.snapshot
                .assignments
                .iter()
                .find(|a| a.kind == kind as i32 && a.principal_id == id && a.role_id == role_id && a.scope == scope)
        });
        if let (Some(role_id), false) = (role_id, self.policies_changed.contains(&role_name.to_lowercase())) {
            let action = if held.is_some() {
                apb::RequestAction::AdminUpdate
            } else {
                apb::RequestAction::AdminAssign
            };
            let mut ask = assignment_request(action, kind, &id, role_id, &scope, *end);
            ask.validate_only = true;
            ask.justification = justification(self.path);
            let unchanged =
                held.is_some_and(|h| h.end_time.as_ref().map(|t| from_timestamp(t) / 1000) == end.map(|e| e / 1000));
            if !unchanged && uuid::Uuid::parse_str(&id).is_ok() {
                self.checks.push((at(self.path, entry), ask));
            }
        }
        let label = format!("{} {}: {role_name} at {scope}", kind_name(kind), spec.principal);
        match held {
            None => self.change(
                format!("+ {label}, until {}", time(*end)),
                Step::Assign {
                    kind,
                    principal: spec.principal.clone(),
                    role: role_name.to_owned(),
                    scope,
                    end: *end,
                },
            ),
            Some(held) => {
                let current = held.end_time.as_ref().map(from_timestamp);
                if current.map(|ms| ms / 1000) != end.map(|ms| ms / 1000) {
                    self.change(
                        format!("~ {label}: until {} -> {}", time(current), time(*end)),
                        Step::ChangeEnd {
                            kind,
                            principal: id,
                            role: role_name.to_owned(),
                            scope,
                            end: *end,
                        },
                    );
                }
            }
        }
    }

    /// Asks the server whether each assignment it can judge now would be made (policy limits,
    /// who may hold the role): every refusal is an error of the file, at its line.
    async fn check_on_server(&mut self, session: &Session) -> anyhow::Result<()> {
        let mut client = AssignmentServiceClient::new(session.channel.clone());
        for (at, ask) in std::mem::take(&mut self.checks) {
            match client.create_request(session.request(ask)?).await {
                Ok(_) => {}
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(explain(status));
                }
                Err(status) => self.errors.push(format!("{at}: {}", status.message())),
            }
        }
        Ok(())
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

/// An `until` (RFC 3339, e.g. 2027-06-30T00:00:00Z) in epoch milliseconds, if still ahead.
fn until_ms(text: &str) -> Result<i64, String> {
    let at = humantime::parse_rfc3339_weak(text.trim())
        .map_err(|e| format!("until {text:?} is not an RFC 3339 time such as 2027-06-30T00:00:00Z ({e})"))?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("until {text:?} is before 1970"))?
        .as_millis() as i64;
    if ms <= pim_runtime::db::now_ms() {
        return Err(format!("until {text:?} has passed"));
    }
    Ok(ms)
}

/// Makes each change, looking names up in a snapshot read again after something was created.
struct Applier<'a> {
    session: &'a Session,
    snapshot: Snapshot,
    stale: bool,
    source: String,
    /// Roles whose policy this apply changed already (ids): a later scope of one has a
    /// new version by then, so its write is not tied to the version the plan read.
    policies_written: BTreeSet<String>,
}

impl Applier<'_> {
    async fn fresh(&mut self) -> anyhow::Result<&Snapshot> {
        if self.stale {
            self.snapshot = Snapshot::read(self.session).await?;
            self.stale = false;
        }
        Ok(&self.snapshot)
    }

    async fn principal_id(&mut self, reference: &str) -> anyhow::Result<String> {
        let snapshot = self.fresh().await?;
        Ok(snapshot
            .directory
            .resolve(reference)
            .map_err(anyhow::Error::msg)?
            .id
            .clone())
    }

    async fn role_id(&mut self, name: &str) -> anyhow::Result<String> {
        let snapshot = self.fresh().await?;
        Ok(snapshot
            .role(name)
            .with_context(|| format!("no role is named {name:?}"))?
            .id
            .clone())
    }

    async fn group_id(&mut self, name: &str) -> anyhow::Result<String> {
        let snapshot = self.fresh().await?;
        match snapshot.groups_named(name).as_slice() {
            [group] => Ok(group.id.clone()),
            _ => bail!("no single group is named {name:?}"),
        }
    }

    async fn apply(&mut self, step: &Step) -> anyhow::Result<()> {
        let session = self.session;
        let roles = || RoleServiceClient::new(session.channel.clone());
        let directory = || DirectoryServiceClient::new(session.channel.clone());
        let assignments = || AssignmentServiceClient::new(session.channel.clone());
        match step {
            Step::CreateRole(create) => {
                roles()
                    .create_role_definition(session.request(create.clone())?)
                    .await
                    .map_err(explain)?;
                self.stale = true;
            }
            Step::UpdateRole(update) => {
                roles()
                    .update_role_definition(session.request(update.clone())?)
                    .await
                    .map_err(explain)?;
            }
            Step::CreateGroup(spec) => {
                let created = directory()
                    .create_group(session.request(ipb::CreateGroupRequest {
                        display_name: spec.name.clone(),
                        description: spec.description.clone(),
                        is_assignable_to_role: spec.role_assignable,
                        owner_ids: Vec::new(),
                    })?)
                    .await
                    .map_err(explain)?;
                session.remember(created);
                self.stale = true;
            }
            Step::UpdateGroup { id, name, description } => {
                directory()
                    .update_group(session.request(ipb::UpdateGroupRequest {
                        group_id: id.clone(),
                        display_name: name.clone(),
                        description: description.clone(),
                        is_assignable_to_role: None,
                    })?)
                    .await
                    .map_err(explain)?;
            }
            Step::Membership {
                group,
                principal,
                owner,
                add,
            } => {
                let request = ipb::GroupMembershipRequest {
                    group_id: self.group_id(group).await?,
                    principal_id: self.principal_id(principal).await?,
                };
                let request = session.request(request)?;
                let mut directory = directory();
                let answer = match (owner, add) {
                    (false, true) => directory.add_group_member(request).await,
                    (false, false) => directory.remove_group_member(request).await,
                    (true, true) => directory.add_group_owner(request).await,
                    (true, false) => directory.remove_group_owner(request).await,
                }
                .map_err(explain)?;
                session.remember(answer);
            }
            Step::Policy { spec, mask, etag } => {
                let role_id = self.role_id(&spec.role).await?;
                let snapshot = self.fresh().await?;
                let mut policy =
                    policy::to_pb(spec, |r| snapshot.directory.resolve(r).map(|k| k.id.clone())).map_err(|errors| {
                        anyhow::anyhow!("{}", errors.into_iter().map(|(_, e)| e).collect::<Vec<_>>().join("; "))
                    })?;
                policy.etag = if self.policies_written.contains(&role_id) {
                    String::new()
                } else {
                    etag.clone()
                };
                self.policies_written.insert(role_id.clone());
                policy.role_id = role_id;
                let updated = PolicyServiceClient::new(session.channel.clone())
                    .update_role_policy(session.request(apb::UpdateRolePolicyRequest {
                        policy: Some(policy),
                        update_mask: Some(prost_types::FieldMask {
                            paths: mask.iter().map(|p| (*p).to_owned()).collect(),
                        }),
                    })?)
                    .await
                    .map_err(explain)?
                    .into_inner();
                super::requests::warn_without_people(session, &updated).await;
            }
            Step::Assign {
                kind,
                principal,
                role,
                scope,
                end,
            }
            | Step::ChangeEnd {
                kind,
                principal,
                role,
                scope,
                end,
            } => {
                let action = if matches!(step, Step::Assign { .. }) {
                    apb::RequestAction::AdminAssign
                } else {
                    apb::RequestAction::AdminUpdate
                };
                let principal_id = self.principal_id(principal).await?;
                let role_id = self.role_id(role).await?;
                let mut request = assignment_request(action, *kind, &principal_id, &role_id, scope, *end);
                request.justification = justification(&self.source);
                let answer = assignments()
                    .create_request(session.request(request)?)
                    .await
                    .map_err(explain)?;
                session.remember(answer);
            }
            Step::Remove {
                kind,
                principal,
                role,
                scope,
            } => {
                let request = apb::CreateRequestRequest {
                    action: apb::RequestAction::AdminRemove as i32,
                    kind: *kind as i32,
                    principal_id: principal.clone(),
                    role_id: role.clone(),
                    scope: scope.clone(),
                    schedule: None,
                    justification: format!("not in {}, which prunes the role; removed by pim apply", self.source),
                    ticket: None,
                    validate_only: false,
                };
                let answer = assignments()
                    .create_request(session.request(request)?)
                    .await
                    .map_err(explain)?;
                session.remember(answer);
            }
        }
        Ok(())
    }
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
            file.policies
                .push(made(policy::from_pb(&role.name, &p, &snapshot.directory)));
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
        let of = |kind: apb::AssignmentKind| {
            let mut list: Vec<_> = list.iter().filter(|a| a.kind == kind as i32).map(entry).collect();
            list.sort_by(|a, b| (&a.value.principal, &a.value.scope).cmp(&(&b.value.principal, &b.value.scope)));
            list
        };
        file.assignments.push(made(RoleAssignments {
            role: role.name.clone(),
            prune: false,
            eligible: of(apb::AssignmentKind::Eligible),
            active: of(apb::AssignmentKind::Active),
        }));
    }
    Ok(file)
}
