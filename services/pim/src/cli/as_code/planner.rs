//! The plan: a file compared with the server's state, every error with its line, and the
//! changes that would make the server match it.

use std::collections::BTreeMap;

use super::*;

mod assignments;

/// Compares a file with a snapshot: the changes, and every error with its line.
pub(super) struct Planner<'a> {
    path: &'a str,
    snapshot: &'a Snapshot,
    /// Roles and groups the file creates (lower-cased role names; group names).
    /// The roles the file creates, by lower-case name.
    new_roles: BTreeSet<String>,
    /// The roles the file defines (creates or changes), by lower-case name: whether each is
    /// privileged as the file has it.
    file_roles: BTreeMap<String, bool>,
    /// The groups the file creates, by name: whether each is role-assignable.
    new_groups: BTreeMap<String, bool>,
    pub(super) errors: Vec<String>,
    /// What changes nothing but the reader should know, each with its line (an entry whose
    /// time is over: a file exported yesterday still applies).
    pub(super) notes: Vec<String>,
    pub(super) changes: Vec<Change>,
    /// What the file would remove but is kept for now, said as part of the plan: the server
    /// matches the file only once it is gone.
    pub(super) kept: Vec<String>,
    /// Roles (lower-cased) whose assignment limits (eligible and active settings) the file
    /// changes somewhere: their assignments are judged by the server only once that is made.
    policies_changed: BTreeSet<String>,
    /// Assignments the server can check before anything changes (`validate_only`): those of
    /// roles that exist, to principals that exist, under limits the file leaves as they are.
    checks: Vec<(String, apb::CreateRequestRequest)>,
    /// Policy changes the server checks as it would make them (`validate_only`): those of
    /// roles and scopes it holds.
    policy_checks: Vec<(String, apb::UpdateRolePolicyRequest)>,
}

impl<'a> Planner<'a> {
    pub(super) fn new(path: &'a str, snapshot: &'a Snapshot, file: &File) -> Self {
        let new_roles = file
            .roles
            .iter()
            .filter(|r| snapshot.role(&r.value.name).is_none())
            .map(|r| r.value.name.to_lowercase())
            .collect();
        let file_roles = file
            .roles
            .iter()
            .map(|r| {
                let privileged = r.value.privileged
                    || r.value
                        .permissions
                        .iter()
                        .any(|p| pim_assignment::privileged_permission(p));
                (r.value.name.to_lowercase(), privileged)
            })
            .collect();
        let new_groups = file
            .groups
            .iter()
            .filter(|g| snapshot.groups_named(&g.value.name).is_empty())
            .map(|g| (g.value.name.clone(), g.value.role_assignable))
            .collect();
        Self {
            path,
            snapshot,
            new_roles,
            file_roles,
            new_groups,
            errors: Vec::new(),
            notes: Vec::new(),
            changes: Vec::new(),
            kept: Vec::new(),
            policies_changed: BTreeSet::new(),
            checks: Vec::new(),
            policy_checks: Vec::new(),
        }
    }

    pub(super) fn error<T>(&mut self, item: &serde_saphyr::Spanned<T>, message: impl std::fmt::Display) {
        self.errors.push(format!("{}: {message}", at(self.path, item)));
    }

    pub(super) fn change(&mut self, text: String, step: Step) {
        self.changes.push(Change { text, step });
    }

    /// A role the file names: its id when it exists, None when the file creates it.
    pub(super) fn role<T>(&mut self, item: &serde_saphyr::Spanned<T>, name: &str) -> Option<Option<String>> {
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
    pub(super) fn principal(&mut self, item: &serde_saphyr::Spanned<String>) -> Option<Option<String>> {
        let reference = item.value.trim();
        let group = reference.strip_prefix("group:").unwrap_or(reference);
        match self.snapshot.directory.resolve(reference) {
            // A bare name this file also gives a new group: which one is meant?
            Ok(_) if !reference.contains(':') && self.new_groups.contains_key(reference) => {
                self.error(
                    item,
                    format!("{reference:?} names an existing principal and a group this file creates; write group:{reference} or the other's kind"),
                );
                None
            }
            Ok(known) => Some(Some(known.id.clone())),
            Err(_) if self.new_groups.contains_key(group) => Some(None),
            Err(e) => {
                self.error(item, e);
                None
            }
        }
    }

    /// The scope of a group's access, by the group's name: `/groups/{id}`, or `group:NAME`
    /// for a group this file creates (its id is known once the apply created it).
    fn group_scope<T>(&mut self, item: &serde_saphyr::Spanned<T>, name: &str) -> Option<String> {
        match self.snapshot.groups_named(name).as_slice() {
            [group] => Some(pim_proto::catalogue::group_scope(&group.id)),
            [] if self.new_groups.contains_key(name) => Some(format!("group:{name}")),
            [] => {
                self.error(
                    item,
                    format!("no group is named {name:?} (nor does this file define one)"),
                );
                None
            }
            _ => {
                self.error(
                    item,
                    format!("several groups are named {name:?}; rename one of them first"),
                );
                None
            }
        }
    }

    /// Turns the file's group access (`group:` and `access:` in policies and assignments) into
    /// the role that stands for it at the group's scope, which the rest of the plan reads.
    pub(super) fn group_forms(&mut self, file: &mut File) {
        for item in file.policies.iter_mut() {
            let Some(group) = item.value.group.clone() else {
                continue;
            };
            let spec = &item.value;
            if !spec.role.is_empty() || spec.scope != "/" {
                let message = format!("the policy of group {group:?} names its group: leave role and scope out");
                self.error(item, message);
                item.value.role.clear();
                continue;
            }
            let access = spec.access.unwrap_or_default();
            if let Some(scope) = self.group_scope(item, &group) {
                item.value.role = access.role_id().to_owned();
                item.value.scope = scope;
            }
        }
        for item in file.assignments.iter_mut() {
            let Some(group) = item.value.group.clone() else {
                continue;
            };
            if !item.value.role.is_empty() {
                self.error(
                    item,
                    format!("the access to group {group:?} names its group: leave role out"),
                );
                item.value.role.clear();
                continue;
            }
            let Some(scope) = self.group_scope(item, &group) else {
                continue;
            };
            let access = item.value.access.unwrap_or_default();
            item.value.role = access.role_id().to_owned();
            item.value.within = Some(scope.clone());
            for entry in item.value.eligible.iter_mut().chain(item.value.active.iter_mut()) {
                if entry.value.scope != "/" {
                    let message = format!("{}: access to a group has no scope of its own", entry.value.principal);
                    self.error(entry, message);
                }
                entry.value.scope = scope.clone();
            }
        }
    }

    /// Whether an item names its role (a group's, once [`Self::group_forms`] read it); one
    /// that names neither is an error, one whose group was wrong was told already.
    fn names_what<T>(&mut self, item: &serde_saphyr::Spanned<T>, role: &str, group: &Option<String>) -> bool {
        if role.is_empty() && group.is_none() {
            self.error(item, "name a role, or a group (with access: member or owner)");
        }
        !role.is_empty()
    }

    /// Whether access to `role` at `scope` is privileged: a privileged role (on the server, or
    /// as the file defines it), or access to a role-assignable group (held or created by the
    /// file).
    fn confers_privilege(&self, role: &str, scope: &str) -> bool {
        if self.file_roles.get(&role.to_lowercase()).copied().unwrap_or(false) {
            return true;
        }
        let Some(role) = self.snapshot.role(role).map(|r| (r.id.as_str(), r.privileged)) else {
            return false;
        };
        match role {
            (id, _) if pim_proto::catalogue::is_group_access(id) => match scope.strip_prefix("group:") {
                Some(name) => self.new_groups.get(name).copied().unwrap_or(false),
                None => pim_proto::catalogue::group_of_scope(scope).is_some_and(|id| {
                    self.snapshot
                        .groups
                        .iter()
                        .any(|g| g.id == id && g.is_assignable_to_role)
                }),
            },
            (_, privileged) => privileged,
        }
    }

    /// Where a policy or an assignment holds, as a plan says it: a group's scope by its name.
    fn place(&self, scope: &str) -> String {
        if let Some(name) = scope.strip_prefix("group:") {
            return format!("group {name:?}");
        }
        match pim_proto::catalogue::group_of_scope(scope) {
            Some(id) => format!("group {:?}", self.snapshot.directory.name_of(id)),
            None => scope.to_owned(),
        }
    }

    pub(super) fn scope<T>(&mut self, item: &serde_saphyr::Spanned<T>, raw: &str) -> Option<String> {
        if raw
            .strip_prefix("group:")
            .is_some_and(|name| self.new_groups.contains_key(name))
        {
            return Some(raw.to_owned());
        }
        match pim_assignment::Scope::parse(raw) {
            Ok(scope) => Some(scope.as_str().to_owned()),
            Err(e) => {
                self.error(item, e);
                None
            }
        }
    }

    /// Whether a name the file makes reads as itself, as the server will ask
    /// (`text::name`, no lookalike of a built-in role's, nor of `others`: the names of its
    /// kind there or made earlier in the file); if not, an error at its line.
    fn reads_as_itself<T>(
        &mut self,
        item: &serde_saphyr::Spanned<T>,
        what: &str,
        name: &str,
        others: &[String],
    ) -> bool {
        // Its length is the server's to weigh (roles and groups differ).
        let why = match pim_runtime::text::own_name(name, usize::MAX) {
            Ok(name) => (others.iter())
                .find(|other| pim_runtime::text::looks_like(name, other))
                .map(|held| {
                    pim_runtime::text::reads_as(what, name, held)
                        .unwrap_or_else(|| format!("the {what} {held} exists (a name is held once, in any case)"))
                }),
            Err(why) => Some(why),
        };
        match why {
            Some(why) => {
                self.error(item, format!("{what} {name:?}: {why}"));
                false
            }
            None => true,
        }
    }

    pub(super) fn roles(&mut self, file: &File) {
        let mut seen: Vec<String> = Vec::new();
        for item in &file.roles {
            let spec = &item.value;
            if spec.name.trim().is_empty() {
                self.error(item, "a role needs a name");
                continue;
            }
            if defined_twice(&mut seen, &spec.name) {
                self.error(item, format!("role {:?} is defined twice", spec.name));
                continue;
            }
            let others: Vec<String> = (self.snapshot.roles.iter().map(|r| r.name.clone()))
                .chain(seen[..seen.len() - 1].iter().cloned())
                .collect();
            if self.snapshot.role(&spec.name).is_none() && !self.reads_as_itself(item, "role", &spec.name, &others) {
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

    pub(super) async fn groups(&mut self, session: &Session, file: &File) -> anyhow::Result<()> {
        let mut seen: Vec<String> = Vec::new();
        for item in &file.groups {
            let spec = &item.value;
            if spec.name.trim().is_empty() {
                self.error(item, "a group needs a name");
                continue;
            }
            if defined_twice(&mut seen, &spec.name) {
                self.error(item, format!("group {:?} is defined twice", spec.name));
                continue;
            }
            let existing = self.snapshot.groups_named(&spec.name);
            let others: Vec<String> = (self.snapshot.groups.iter().map(|g| g.display_name.clone()))
                .chain(seen[..seen.len() - 1].iter().cloned())
                .collect();
            if existing.is_empty() && !self.reads_as_itself(item, "group", &spec.name, &others) {
                continue;
            }
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

    pub(super) async fn policies(&mut self, session: &Session, file: &File) -> anyhow::Result<()> {
        let mut seen = BTreeSet::new();
        // Every valid policy of the file (role's name, scope, spec), and those that change.
        let mut listed: Vec<(String, String, PolicySpec)> = Vec::new();
        let mut changed: BTreeSet<(String, String)> = BTreeSet::new();
        for item in &file.policies {
            let spec = &item.value;
            if !self.names_what(item, &spec.role, &spec.group) {
                continue;
            }
            let Some(role_id) = self.role(item, &spec.role) else {
                continue;
            };
            let Some(scope) = self.scope(item, &spec.scope) else {
                continue;
            };
            if !seen.insert((spec.role.to_lowercase(), scope.clone())) {
                let message = format!("the policy of {} at {} is given twice", spec.role, self.place(&scope));
                self.error(item, message);
                continue;
            }
            // A group this file creates may be named as an approver: it stands as itself
            // until the apply creates it.
            let directory = &self.snapshot.directory;
            let new_groups = &self.new_groups;
            let desired = policy::to_pb(spec, |name| match directory.resolve(name) {
                Ok(known) => Ok(known.id.clone()),
                Err(_) if new_groups.contains_key(name.strip_prefix("group:").unwrap_or(name)) => Ok(name.to_owned()),
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
            // A group this file creates has no policy yet.
            let current = match role_id.as_ref().filter(|_| !scope.starts_with("group:")) {
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
            let mut limits_change = false;
            for path in policy::named(spec) {
                let held = current.as_ref().map(|p| policy::shown(p, path, directory));
                let wanted = policy::shown(&desired, path, directory);
                if held.as_ref() != Some(&wanted) {
                    let held = held.unwrap_or_else(|| "(default)".into());
                    said.push(format!("{}: {held} -> {wanted}", policy::file_key(path)));
                    limits_change |= path.starts_with("eligible_") || path.starts_with("active_");
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
                // Checked before anything changes, as the server would make it: by the server
                // where it holds the role and scope (and every approver named exists yet), else
                // by the same rules here.
                let mask: Vec<String> = policy::named(&spec).into_iter().map(str::to_owned).collect();
                let approvers: Vec<&String> = desired
                    .approver_ids
                    .iter()
                    .chain(
                        desired
                            .approval_stages
                            .iter()
                            .flat_map(|s| s.approver_ids.iter().chain(&s.escalation_approver_ids)),
                    )
                    .collect();
                let approvers_exist = approvers.iter().all(|id| uuid::Uuid::parse_str(id).is_ok());
                // An approver is a group the directory holds, or one this file creates (with
                // whether it is role-assignable).
                let group = |id: &str| match self.snapshot.directory.resolve(id) {
                    Ok(known) if known.kind == state::Kind::Group => Some(
                        self.snapshot
                            .groups
                            .iter()
                            .any(|g| g.id == known.id && g.is_assignable_to_role),
                    ),
                    Ok(_) => None,
                    Err(_) => self.new_groups.get(id.strip_prefix("group:").unwrap_or(id)).copied(),
                };
                // Weighed here for every policy, as the file has the role (it may make a role
                // privileged that the server does not hold so yet).
                let mut open: Vec<String> = approvers
                    .iter()
                    .filter(|id| group(id) == Some(false))
                    .map(|id| format!("{id:?}"))
                    .collect();
                open.sort();
                open.dedup();
                let groups: BTreeSet<String> = approvers
                    .iter()
                    .filter(|id| group(id).is_some())
                    .map(|id| (*id).clone())
                    .collect();
                if self.confers_privilege(&spec.role, &scope)
                    && let Some(why) = pim_proto::catalogue::groups_unfit_to_decide_privilege("approvers", &open)
                {
                    self.error(item, format!("policy of {}: approver_ids: {why}", spec.role));
                }
                match (&current, role_id.as_ref()) {
                    (Some(current), Some(role_id)) if approvers_exist => {
                        let policy = apb::RolePolicy {
                            role_id: role_id.clone(),
                            scope: scope.clone(),
                            etag: current.etag.clone(),
                            ..desired.clone()
                        };
                        self.policy_checks.push((
                            at(self.path, item),
                            apb::UpdateRolePolicyRequest {
                                policy: Some(policy),
                                update_mask: Some(prost_types::FieldMask { paths: mask }),
                                validate_only: true,
                            },
                        ));
                    }
                    _ => {
                        let is_group = |id: &str| groups.contains(id);
                        if let Err(refused) = pim_assignment::check_new_policy(desired.clone(), &mask, &is_group) {
                            self.error(item, format!("policy of {}: {}", spec.role, refused.message()));
                        }
                    }
                }
                if limits_change {
                    self.policies_changed.insert(role.to_lowercase());
                }
                changed.insert((role.to_lowercase(), scope.clone()));
                self.change(
                    format!("~ policy of {role:?} at {}: {}", self.place(&scope), said.join("; ")),
                    Step::Policy {
                        spec: Box::new(spec.clone()),
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
                    format!(
                        "~ policy of {role:?} at {}: kept as the file gives it, under the change above",
                        self.place(&scope)
                    ),
                    Step::Policy {
                        mask: policy::named(&spec),
                        spec: Box::new(spec),
                        etag: String::new(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Asks the server whether each assignment it can judge now would be made (policy limits,
    /// who may hold the role): every refusal is an error of the file, at its line.
    pub(super) async fn check_on_server(&mut self, session: &Session) -> anyhow::Result<()> {
        let mut policies = PolicyServiceClient::new(session.channel.clone());
        for (at, ask) in std::mem::take(&mut self.policy_checks) {
            let role = ask.policy.as_ref().map(|p| p.role_id.clone()).unwrap_or_default();
            let role = self.snapshot.role(&role).map_or(role, |r| r.name.clone());
            match policies.update_role_policy(session.request(ask)?).await {
                Ok(_) => {}
                Err(status) if is_the_files(&status) => self
                    .errors
                    .push(format!("{at}: policy of {role}: {}", status.message())),
                Err(status) => return Err(explain(status)),
            }
        }
        let mut client = AssignmentServiceClient::new(session.channel.clone());
        for (at, ask) in std::mem::take(&mut self.checks) {
            match client.create_request(session.request(ask)?).await {
                Ok(_) => {}
                // Only the administrator's recent MFA is wanted: not the file's to mend, and
                // `pim apply` steps up for it.
                Err(status) if pim_runtime::grpc::violated_rules(&status) == ["MfaRule"] => {}
                Err(status) if is_the_files(&status) => self.errors.push(format!("{at}: {}", status.message())),
                Err(status) => return Err(explain(status)),
            }
        }
        Ok(())
    }
}

/// Whether the server's refusal of a dry run is a mistake of the file (to list at its line),
/// not a reason the plan cannot go on (the server away or at fault, the session ended, not
/// allowed, a change made meanwhile).
fn is_the_files(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound | Code::AlreadyExists | Code::OutOfRange
    )
}

/// Whether the file names `name` a second time, in any case (the server holds a name once,
/// whatever its case); if not, it is `seen` from now on, last.
fn defined_twice(seen: &mut Vec<String>, name: &str) -> bool {
    let twice = seen.iter().any(|s| s.to_lowercase() == name.to_lowercase());
    if !twice {
        seen.push(name.to_owned());
    }
    twice
}
