//! Just-in-time activation: a principal turns an eligibility into an active role after the
//! policy's checks (one statement: the database holds one live activation), and ends it.

use super::*;
use pim_runtime::events::EventType;

impl Assignments {
    /// selfActivate: the caller turns an eligibility into an active role, after the policy's checks.
    pub async fn self_activate(&self, caller: &Caller, r: ActivateRequest) -> Result<RequestRow> {
        let (role, scope) = self.role_to_grant_at(&r.role, &r.scope)?;
        // Apps hold active assignments only: an eligibility a group it is a member of holds
        // is the people's in it, not the app's to activate.
        if caller.kind != PrincipalKind::User {
            return Err(Error::PolicyViolation(vec![RuleViolation {
                kind: "EligibilityRule",
                message: "service principals are never eligible, through a group neither: an app holds active assignments only".into(),
            }]));
        }
        let now = self.now();
        let mut violations = Vec::new();
        // One read for everything below: the caller's and their groups' unended assignments
        // of the role (eligible directly, or through a role-assignable group), and the
        // role's policies at the scope and above.
        let groups = self.groups_of(&caller.principal_id, now);
        let mut holders = vec![caller.principal_id.clone()];
        holders.extend(groups.keys().cloned());
        let scopes = scope.with_ancestors();
        let (held, policies) = store::activation_inputs(&self.db, &holders, &role.id, &scopes, now).await?;
        // The caller's own activation of the role at this very scope, started or not: said
        // first, as no step-up or justification would change it. (A quick answer; what
        // guarantees one at a time is the database, at the insert below.)
        if let Some(a) = held.iter().find(|a| {
            a.kind == Kind::Active
                && a.origin == "activation"
                && a.principal_id == caller.principal_id
                && a.scope == scope.as_str()
        }) {
            return Err(already_active(&role.name, a, now));
        }
        // An eligibility through a group lasts while the membership does (a just-in-time
        // membership ends it with itself).
        let eligibility = group_access::longest_eligibility(&held, &groups, &role.id, &scopes, now);
        if eligibility.is_none() {
            violations.push(RuleViolation {
                kind: "EligibilityRule",
                message: format!("you are not eligible for {} at {}", role.name, scope.as_str()),
            });
        }
        let (policy, _) = nearest_policy(&policies, &scopes)?;
        // A stage nobody could decide is refused now rather than left to expire: one that
        // would need the caller's approval (nobody approves their own request), or whose
        // approvers were all deleted or disabled since they were named.
        let mut privileged = None;
        for stage in policy.named_deciders(&caller.principal_id) {
            if stage.is_short() && (stage.others.is_empty() || !self.names_a_group(caller, &stage.others).await?) {
                violations.push(stage.violation());
                break;
            }
            // Asked of the directory only for a request nothing else refuses.
            let needed = stage.approvals_required as usize;
            if violations.is_empty() && !stage.others.is_empty() {
                let privileged = match privileged {
                    Some(privileged) => privileged,
                    None => *privileged.insert(self.confers_privilege(caller, &role, &scope).await?),
                };
                let left = self.still_deciding(caller, &stage.others, needed, privileged).await?;
                if left < needed {
                    violations.push(stage.too_few_left(left));
                    break;
                }
            }
        }
        let mfa = mfa_of(caller);
        let eligible_until = eligibility.and_then(|(_, until)| until);
        let schedule = match policy.check_activation(&r.ask, mfa, eligible_until, now) {
            Ok(s) if violations.is_empty() => s,
            Ok(_) => return Err(Error::PolicyViolation(violations)),
            Err(v) => {
                violations.extend(v);
                return Err(Error::PolicyViolation(violations));
            }
        };
        let length = schedule.end.map(|e| e - schedule.start).unwrap_or_default();
        let mut request = RequestRow {
            id: if r.validate_only { String::new() } else { new_id() },
            action: Action::SelfActivate,
            kind: Kind::Active,
            principal_id: caller.principal_id.clone(),
            role_id: role.id.clone(),
            scope: scope.as_str().into(),
            status: if policy.approval_required {
                RequestStatus::PendingApproval
            } else {
                RequestStatus::applied(schedule.start > now)
            },
            start_at: schedule.start,
            end_at: schedule.end,
            justification: r.ask.justification.trim().into(),
            ticket_system: r.ask.ticket_system.trim().into(),
            ticket_number: r.ask.ticket_number.trim().into(),
            requested_by: caller.principal_id.clone(),
            created_at: now,
            assignment_id: None,
            duration_ms: Some(length),
            policy: serde_json::to_string(&policy).map_err(|e| Error::Internal(e.into()))?,
            outcome_reason: String::new(),
        };
        if r.validate_only {
            if let Some(waiting) = store::pending_request(
                &self.db,
                &caller.principal_id,
                &role.id,
                scope.as_str(),
                Waiting::Activation,
            )
            .await?
            {
                return Err(already_waiting(&role.name, &waiting));
            }
            return Ok(request);
        }
        // The hot path of the service, so as few round trips as it can be: the request (unless
        // one is waiting for approval), the assignment when no approval is needed, and their
        // events, in one statement.
        let assignment =
            (!policy.approval_required).then(|| self.activation_assignment(&request, &caller.name, schedule));
        request.assignment_id = assignment.as_ref().map(|a| a.id.clone());
        let mut events = vec![envelope(
            SOURCE,
            EventType::RequestCreated,
            &request.id,
            &self.request_created(Some(caller.actor()), &request, &role.name),
        )];
        let starts_now = assignment.as_ref().is_some_and(|a| a.start_at <= now);
        if let Some(a) = assignment.as_ref().filter(|_| starts_now) {
            let via_group = eligibility
                .map(|(e, _)| e.principal_id.as_str())
                .filter(|holder| *holder != caller.principal_id);
            let activated = self.role_activated(Some(caller.actor()), a, &role.name, &request.justification, via_group);
            events.push(envelope(SOURCE, EventType::RoleActivated, &a.principal_id, &activated));
        }
        // What it rests on, checked (and locked) by the statement that stores it: in force
        // until the activation ends (an end moved earlier meanwhile refuses it).
        let Some((allowing, _)) = eligibility else {
            return Err(Error::PolicyViolation(violations));
        };
        let rests = store::RestsOn {
            eligibility_id: &allowing.id,
            via_group: (allowing.principal_id != caller.principal_id).then_some(allowing.principal_id.as_str()),
            until: assignment.as_ref().and_then(|a| a.end_at),
        };
        let insert = || {
            store::insert_activation(
                &self.db,
                &request,
                rests,
                assignment.as_ref().map(|a| (a, starts_now)),
                OutboxRows::new(streams::ASSIGNMENT, &events),
                now,
            )
        };
        let mut attempts = 0;
        while !insert().await? {
            // Refused by the database: another activation of the role at the scope is live or
            // waiting (perhaps from a concurrent call). One whose end passed before the timer
            // ended it is ended now, and the activation tried again; so is one that ended (by
            // the timer, or a decision) between the refusal and this look.
            attempts += 1;
            let (principal, scope) = (&caller.principal_id, scope.as_str());
            if !store::lock_resting(&self.db, rests, principal, self.now()).await? {
                return Err(Error::PolicyViolation(vec![RuleViolation {
                    kind: "EligibilityRule",
                    message: format!(
                        "your eligibility for {} at {scope} ended, or was moved earlier, meanwhile; ask again",
                        role.name
                    ),
                }]));
            }
            let cleared = match store::live_activation(&self.db, principal, &role.id, scope).await? {
                Some(live) => self.end_if_lapsed(&live, &role.name, self.now()).await?,
                None => store::pending_request(&self.db, principal, &role.id, scope, Waiting::Activation)
                    .await?
                    .is_none(),
            };
            if !cleared || attempts == 3 {
                return Err(self.refusal(principal, &role.name, &role.id, scope).await?);
            }
        }
        if let Some(a) = &assignment {
            self.announce_deadlines(a, starts_now);
        }
        if let Some(a) = &assignment {
            self.index.upsert_row(a);
        }
        self.committed(&[&request.id]);
        Ok(request)
    }

    /// Why the database refused an activation: the live or waiting one it collided with.
    pub(super) async fn refusal(&self, principal: &str, role_name: &str, role_id: &str, scope: &str) -> Result<Error> {
        if let Some(live) = store::live_activation(&self.db, principal, role_id, scope).await? {
            return Ok(already_active(role_name, &live, self.now()));
        }
        if let Some(waiting) = store::pending_request(&self.db, principal, role_id, scope, Waiting::Activation).await? {
            return Ok(already_waiting(role_name, &waiting));
        }
        Ok(Error::AlreadyExists(format!(
            "another activation of {role_name} at {scope} was being made at the same moment; look at your requests"
        )))
    }

    pub(super) fn activation_assignment(
        &self,
        request: &RequestRow,
        principal_name: &str,
        schedule: Schedule,
    ) -> AssignmentRow {
        AssignmentRow {
            id: new_id(),
            kind: Kind::Active,
            principal_id: request.principal_id.clone(),
            principal_kind: "user".into(),
            principal_name: principal_name.into(),
            role_id: request.role_id.clone(),
            scope: request.scope.clone(),
            start_at: schedule.start,
            end_at: schedule.end,
            status: "active".into(),
            origin: "activation".into(),
            request_id: request.id.clone(),
            created_by: request.principal_id.clone(),
            version: 1,
        }
    }

    /// Stores an activation's assignment; if it starts now, it is active at once and announced
    /// (with the group whose eligibility it rests on, if any).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn provision(
        &self,
        txn: &DatabaseTransaction,
        a: &AssignmentRow,
        actor: Option<Actor>,
        role_name: &str,
        justification: &str,
        via_group: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let starts_now = a.start_at <= now;
        store::insert_assignment(txn, a, starts_now, now).await?;
        self.announce_deadlines(a, starts_now);
        if starts_now {
            self.emit(
                txn,
                EventType::RoleActivated,
                &a.principal_id,
                &self.role_activated(actor, a, role_name, justification, via_group),
            )
            .await?;
        }
        Ok(())
    }

    /// Tells the scheduler when a new activation starts (unless it already has) and ends.
    pub(super) fn announce_deadlines(&self, a: &AssignmentRow, started: bool) {
        if !started {
            self.timers.deadline(a.start_at);
        }
        if let Some(end) = a.end_at {
            self.timers.deadline(end);
        }
    }

    pub(crate) fn role_activated(
        &self,
        actor: Option<Actor>,
        a: &AssignmentRow,
        role_name: &str,
        justification: &str,
        via_group: Option<&str>,
    ) -> ev::RoleActivated {
        ev::RoleActivated {
            actor,
            assignment_id: a.id.clone(),
            request_id: a.request_id.clone(),
            principal_id: a.principal_id.clone(),
            role_id: a.role_id.clone(),
            role_name: role_name.into(),
            scope: a.scope.clone(),
            start_time: Some(to_timestamp(a.start_at)),
            end_time: a.end_at.map(to_timestamp),
            justification: justification.into(),
            version: a.version,
            via_group_id: via_group.unwrap_or_default().into(),
        }
    }

    /// selfDeactivate: the caller ends their own activation now.
    pub async fn self_deactivate(&self, caller: &Caller, r: EndRequest) -> Result<RequestRow> {
        let (role, scope) = self.role_at(&r.role, &r.scope)?;
        let now = self.now();
        let txn = self.db.begin().await?;
        let open =
            store::open_assignments(&txn, Kind::Active, &caller.principal_id, &role.id, scope.as_str(), now).await?;
        let standing = open.iter().any(|a| a.origin == "admin");
        let Some(activation) = open.into_iter().find(|a| a.origin == "activation") else {
            let what = format!("an activation of {} at {}", role.name, scope.as_str());
            return Err(
                match self.how_held(&txn, caller, standing, &role.id, &scope, now).await? {
                    // Held another way: nothing to deactivate, and what would end it instead.
                    Some(held) => Error::FailedPrecondition(format!("you have no {what}: {held}")),
                    None => Error::NotFound(what),
                },
            );
        };
        let (policy, _) = self.effective_policy(&txn, &role.id, &scope).await?;
        let min = policy.min_activation_before_deactivate.as_millis() as i64;
        if activation.start_at <= now && now - activation.start_at < min {
            return Err(Error::PolicyViolation(vec![RuleViolation {
                kind: "ExpirationRule",
                message: format!(
                    "an activation can be ended only after {}",
                    pim_runtime::format::duration(policy.min_activation_before_deactivate)
                ),
            }]));
        }
        let request = Self::ending_request(
            Action::SelfDeactivate,
            Kind::Active,
            &caller.principal_id,
            &role.id,
            &scope,
            &r.justification,
            &caller.principal_id,
            Some(activation.id.clone()),
            now,
            r.validate_only,
        );
        if r.validate_only {
            return Ok(request);
        }
        self.record_request(&txn, Some(caller.actor()), &request, &role.name)
            .await?;
        if !self
            .end(&txn, &activation, "deactivated", Some(caller.actor()), &role.name, now)
            .await?
        {
            // A concurrent deactivation or the timer ended it first: one outcome, theirs.
            return Err(Error::NotFound(format!(
                "an activation of {} at {} (it ended meanwhile)",
                role.name,
                scope.as_str()
            )));
        }
        self.commit_ended(txn, &activation, caller, &request.id, now).await?;
        Ok(request)
    }

    /// How the caller holds a role they have no activation of to end, told with the refusal
    /// (none: not at all): assigned active by an administrator, or through a group.
    async fn how_held<C: ConnectionTrait>(
        &self,
        c: &C,
        caller: &Caller,
        standing: bool,
        role_id: &str,
        scope: &Scope,
        now: i64,
    ) -> Result<Option<String>> {
        if standing {
            return Ok(Some(
                "you have it by an administrator's active assignment, which an administrator removes".into(),
            ));
        }
        for group in self.groups_of(&caller.principal_id, now).into_keys() {
            if !store::open_assignments(c, Kind::Active, &group, role_id, scope.as_str(), now)
                .await?
                .is_empty()
            {
                let name = match self.principal(caller, &group).await {
                    Ok(p) if !p.name.is_empty() => p.name,
                    _ => group,
                };
                return Ok(Some(format!(
                    "you hold it as a member of group {name}; end that membership instead"
                )));
            }
        }
        Ok(None)
    }

    /// Commits `txn`, which ended `a` at the caller's word for request `request_id`: what
    /// rested on it ends too (a just-in-time membership ends what came through it), and this
    /// process's index and watchers follow.
    pub(super) async fn commit_ended(
        &self,
        txn: DatabaseTransaction,
        a: &AssignmentRow,
        caller: &Caller,
        request_id: &str,
        now: i64,
    ) -> Result<()> {
        let resting = self.resting_on(&txn, std::slice::from_ref(a), now).await?;
        let fallout = self
            .bound_to_eligibility(&txn, resting, Some(caller.actor()), now)
            .await?;
        txn.commit().await?;
        self.index.remove(&a.principal_id, &a.id);
        self.settle(&fallout);
        self.committed(&[request_id]);
        Ok(())
    }

    /// After eligibilities or memberships that the principals in `todo` rested on ended or
    /// were shortened (in `txn`): an activation never outlives what allowed it. It rests on
    /// an eligibility, its holder's own or a group's while they are a member; one that no
    /// eligibility allows any more ends now, one allowed for less time than it lasts ends
    /// when the longest eligibility still allowing it does (`ActivationShortened`, so
    /// CheckAccess refuses it then without waiting for the timer), and an activation request
    /// waiting for approval on such ground is canceled. Ending or shortening a just-in-time
    /// membership this way does the same in turn to activations through the group. What it
    /// changed is for [`Self::settle`] once `txn` commits.
    pub(crate) async fn bound_to_eligibility(
        &self,
        txn: &DatabaseTransaction,
        mut todo: Vec<String>,
        actor: Option<Actor>,
        now: i64,
    ) -> Result<Fallout> {
        todo.sort();
        todo.dedup();
        let mut fallout = Fallout::default();
        while let Some(principal) = todo.pop() {
            // Principals are locked in one order (sorted, taken from the end).
            store::lock_principal(txn, &principal).await?;
            let groups = self.groups_in(txn, &principal, now).await?;
            let mut holders = vec![principal.clone()];
            holders.extend(groups.keys().cloned());
            let (eligibilities, activations) =
                store::eligibilities_and_activations(txn, &principal, &holders, now).await?;
            // Until when an activation of `role_id` at `scope` is allowed (`None`: it is not).
            let allowed_until = |role_id: &str, scope: &str| {
                Scope::parse(scope).ok().and_then(|s| {
                    group_access::longest_eligibility(&eligibilities, &groups, role_id, &s.with_ancestors(), now)
                        .map(|(_, until)| until)
                })
            };
            for mut a in activations {
                let role_name = self.roles.name(&a.role_id).unwrap_or_default();
                let changed = match allowed_until(&a.role_id, &a.scope) {
                    Some(until) if group_access::earlier(a.end_at, until) == a.end_at => false,
                    Some(Some(until)) if until > a.start_at => {
                        let shortened = self.shorten(txn, &mut a, until, actor.clone(), &role_name).await?;
                        if shortened {
                            fallout.shortened.push(a.clone());
                        }
                        shortened
                    }
                    _ => {
                        let ended = self
                            .end(txn, &a, "eligibility ended", actor.clone(), &role_name, now)
                            .await?;
                        if ended {
                            fallout.ended.push(a.clone());
                        }
                        ended
                    }
                };
                if changed && a.role_id == crate::roles::GROUP_MEMBER && !todo.contains(&principal) {
                    todo.push(principal.clone());
                }
            }
            for mut request in store::pending_activations(txn, &principal).await? {
                if allowed_until(&request.role_id, &request.scope).is_some() {
                    continue;
                }
                request.status = RequestStatus::Canceled;
                request.outcome_reason = "canceled: the eligibility it rested on ended".into();
                if self
                    .transition(txn, &request, RequestStatus::PendingApproval, actor.clone(), now)
                    .await?
                {
                    fallout.canceled.push(request.id);
                }
            }
        }
        Ok(fallout)
    }

    /// Moves an activation's end earlier, to `until`, and tells the others
    /// (`ActivationShortened`); false when a concurrent change or end came first.
    async fn shorten(
        &self,
        txn: &DatabaseTransaction,
        a: &mut AssignmentRow,
        until: i64,
        actor: Option<Actor>,
        role_name: &str,
    ) -> Result<bool> {
        let Some(version) = store::set_assignment_end(txn, &a.id, a.version, Some(until), self.clock.now_ms()).await?
        else {
            return Ok(false);
        };
        store::shorten_request(txn, &a.request_id, until).await?;
        let event = ev::ActivationShortened {
            actor,
            assignment_id: a.id.clone(),
            principal_id: a.principal_id.clone(),
            role_id: a.role_id.clone(),
            role_name: role_name.into(),
            scope: a.scope.clone(),
            end_time: Some(to_timestamp(until)),
            previous_end_time: a.end_at.map(to_timestamp),
            reason: "eligibility shortened".into(),
            version,
        };
        a.end_at = Some(until);
        a.version = version;
        self.timers.deadline(until);
        self.emit(txn, EventType::ActivationShortened, &a.principal_id, &event)
            .await?;
        Ok(true)
    }

    /// After the commit of an [`Self::bound_to_eligibility`]: the index drops what ended and
    /// takes the new ends of what was shortened, and those watching the canceled requests
    /// hear of it.
    pub(crate) fn settle(&self, fallout: &Fallout) {
        for a in &fallout.ended {
            self.index.remove(&a.principal_id, &a.id);
        }
        for a in &fallout.shortened {
            self.index.upsert_row(a);
        }
        let canceled: Vec<&str> = fallout.canceled.iter().map(String::as_str).collect();
        self.committed(&canceled);
    }

    /// On a consumer, after the commit of an [`Self::bound_to_eligibility`] for `principals`: their
    /// grants in the index are read back from the database, so those it ended leave.
    pub(crate) async fn reindex_principals(&self, principals: &[String]) -> Result<()> {
        let now = self.now();
        for principal in principals {
            let held: Vec<String> = self
                .index
                .current(principal, now)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            self.index_assignments(&held).await?;
        }
        Ok(())
    }
}

/// What ending an eligibility or a membership early brought down with it.
#[derive(Default)]
#[must_use]
pub(crate) struct Fallout {
    /// Activations ended.
    pub ended: Vec<AssignmentRow>,
    /// Activations shortened, as they are now.
    pub shortened: Vec<AssignmentRow>,
    /// Ids of activation requests canceled.
    pub canceled: Vec<String>,
}
