//! The plan of a file's `assignments` entries: what to assign, change and prune, and which
//! of them the server can judge before anything changes.

use super::*;

impl Planner<'_> {
    pub(in crate::cli::as_code) fn assignments(&mut self, file: &File) {
        let mut roles_seen = BTreeSet::new();
        for item in &file.assignments {
            let spec: &RoleAssignments = &item.value;
            if !self.names_what(item, &spec.role, &spec.group) {
                continue;
            }
            let Some(role_id) = self.role(item, &spec.role) else {
                continue;
            };
            if !roles_seen.insert((spec.role.to_lowercase(), spec.within.clone())) {
                let of = match &spec.group {
                    Some(group) => format!(
                        "the {} access to group {group:?}",
                        spec.access.unwrap_or_default().name()
                    ),
                    None => spec.role.clone(),
                };
                self.error(item, format!("the assignments of {of} are given twice"));
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
            // A group's access is pruned within that group only.
            let within = |a: &&apb::Assignment| spec.within.as_ref().is_none_or(|scope| *scope == a.scope);
            for held in self
                .snapshot
                .assignments
                .iter()
                .filter(|a| a.role_id == role_id)
                .filter(within)
            {
                let kind = apb::AssignmentKind::try_from(held.kind).unwrap_or(apb::AssignmentKind::Eligible);
                if wanted.contains(&(kind as i32, held.principal_id.clone(), held.scope.clone())) {
                    continue;
                }
                let name = self.snapshot.directory.name_of(&held.principal_id);
                // Removing an active assignment ends every active one of that principal, role
                // and scope, an activation included; removing an eligible one ends the
                // activations resting on it, there or below. Either is left for a run after
                // the activation ends: a file never ends one.
                let ends_an_activation = self.snapshot.activations.iter().any(|a| {
                    a.principal_id == held.principal_id
                        && a.role_id == held.role_id
                        && match kind {
                            apb::AssignmentKind::Eligible => {
                                held.scope == "/"
                                    || a.scope
                                        .strip_prefix(held.scope.as_str())
                                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                            }
                            _ => a.scope == held.scope,
                        }
                });
                if ends_an_activation {
                    self.kept.push(format!(
                        "! {name}'s {} {role_name} at {} is not in the file, but is kept while their activation of it runs (removing it would end the activation)",
                        kind_name(kind),
                        self.place(&held.scope)
                    ));
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
                        self.place(&held.scope)
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

    pub(in crate::cli::as_code) fn assignment(
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
        if end.is_some_and(|end| end <= pim_runtime::db::now_ms()) {
            // Over: nothing to assign. Still listed, so a prune leaves alone what the server
            // holds there (extended since, say), and nothing changes it: said, with its end.
            let until = spec.until.as_deref().unwrap_or_default().trim();
            let held = role_id.and_then(|role_id| {
                self.snapshot
                    .assignments
                    .iter()
                    .find(|a| a.kind == kind as i32 && a.principal_id == id && a.role_id == role_id && a.scope == scope)
            });
            let note = match held {
                None => format!("until {until} has passed: nothing to assign; remove the entry"),
                Some(held) => format!(
                    "until {until} has passed, but the server holds this {}: left alone; write its end here, or remove the entry (where the role is pruned, that removes the assignment)",
                    held.end_time.as_ref().map_or("permanently".to_owned(), |end| format!(
                        "until {}",
                        time(Some(from_timestamp(end)))
                    ))
                ),
            };
            self.notes.push(format!("{}: {note}", at(self.path, entry)));
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
            if !unchanged && uuid::Uuid::parse_str(&id).is_ok() && !scope.starts_with("group:") {
                self.checks.push((at(self.path, entry), ask));
            }
        }
        let label = format!(
            "{} {}: {role_name} at {}",
            kind_name(kind),
            spec.principal,
            self.place(&scope)
        );
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
}
