//! What administrators do to assignments: assign, renew, extend, update, remove (and an
//! access review's removal), within the policy and the protections.

use super::*;
use pim_runtime::events::EventType;

impl Assignments {
    /// adminAssign: an administrator makes a principal eligible for, or active in, a role.
    /// adminAssign, or adminRenew: the same for an assignment that expired (only then).
    pub async fn admin_assign(&self, caller: &Caller, r: AdminAssignRequest, action: Action) -> Result<RequestRow> {
        let (role, scope) = self.role_to_grant_at(&r.role, &r.scope)?;
        let principal_id = r.principal_id.trim();
        if principal_id.is_empty() {
            return Err(Error::invalid("principal_id", "required"));
        }
        self.authorize_assignments(caller, &role, &scope, Some(principal_id))
            .await?;
        let principal = self.principal(caller, principal_id).await?;
        // Asked by user name: the assignment names the id, and nobody grants themselves
        // group access by spelling their name.
        let principal_id = principal.id.as_str();
        self.refuse_self_grant(caller, &role, &scope, principal_id)?;
        if let Some(group) = crate::roles::group_of_scope(scope.as_str()) {
            // The group must exist; access to it is for users and service principals.
            self.group(caller, group).await?;
            if principal.kind == PrincipalKind::Group {
                return Err(Error::invalid(
                    "principal_id",
                    "group access is for users and service principals, not groups",
                ));
            }
            if role.id == crate::roles::GROUP_OWNER && principal.kind != PrincipalKind::User {
                return Err(Error::invalid("principal_id", "owners are users"));
            }
        } else if principal.kind == PrincipalKind::Group && !principal.is_assignable_to_role {
            return Err(Error::FailedPrecondition(format!(
                "{principal_id} is not a role-assignable group; only those can hold roles"
            )));
        }
        if principal.kind == PrincipalKind::ServicePrincipal && r.assignment.kind == Kind::Eligible {
            return Err(Error::PolicyViolation(vec![RuleViolation {
                kind: "EligibilityRule",
                message: "service principals get active assignments only, never eligible".into(),
            }]));
        }
        let now = self.now();
        let (policy, _) = self.effective_policy(&self.db, &role.id, &scope).await?;
        let policy = self.standing_group_access_asks_mfa(caller, &scope, policy).await?;
        let schedule = policy
            .check_admin_assignment(&r.assignment, mfa_of(caller), now)
            .map_err(Error::PolicyViolation)?;
        let existing =
            store::open_assignments(&self.db, r.assignment.kind, principal_id, &role.id, scope.as_str(), now).await?;
        if action == Action::AdminRenew {
            if existing.iter().any(|a| a.origin == "admin") {
                return Err(Error::FailedPrecondition(
                    "this assignment is still in force; extend it instead".into(),
                ));
            }
            let kind = r.assignment.kind;
            if store::last_expired_assignment(&self.db, kind, principal_id, &role.id, scope.as_str(), now)
                .await?
                .is_none()
            {
                return Err(Error::NotFound(format!(
                    "an expired {kind} assignment of {} for {principal_id} at {}",
                    role.name,
                    scope.as_str()
                )));
            }
        }
        if let Some(live) = existing.iter().find(|a| a.origin == "admin") {
            return Err(already_assigned(&role.name, live));
        }
        let ticket = r.ticket.unwrap_or_default();
        let request = RequestRow {
            id: if r.validate_only { String::new() } else { new_id() },
            action,
            kind: r.assignment.kind,
            principal_id: principal_id.into(),
            role_id: role.id.clone(),
            scope: scope.as_str().into(),
            status: RequestStatus::applied(schedule.start > now),
            start_at: schedule.start,
            end_at: schedule.end,
            justification: r.assignment.justification.trim().into(),
            ticket_system: ticket.system.trim().into(),
            ticket_number: ticket.number.trim().into(),
            requested_by: caller.principal_id.clone(),
            created_at: now,
            assignment_id: None,
            duration_ms: None,
            policy: String::new(),
            outcome_reason: String::new(),
        };
        if r.validate_only {
            return Ok(request);
        }
        let grant = || self.grant(Some(caller.actor()), request.clone(), &principal, &role.name);
        let kind = r.assignment.kind.as_str();
        for attempt in 1..=3 {
            match grant().await {
                Err(err) if is_duplicate(&err) => {}
                granted => return granted,
            }
            // Refused by the database: another administrator's assignment of the role at the
            // scope is held (perhaps from a concurrent call). One whose end passed is ended now
            // (or was, by the timer, a moment ago) and the grant tried again.
            let held = store::live_admin_assignment(&self.db, kind, principal_id, &role.id, scope.as_str()).await?;
            match held {
                Some(held) if !self.end_if_lapsed(&held, &role.name, self.now()).await? => {
                    return Err(already_assigned(&role.name, &held));
                }
                _ if attempt == 3 => break,
                _ => {}
            }
        }
        Err(err_same_moment(&role.name, &scope))
    }

    /// Standing access to a role-assignable group gives its roles at once, as a member added
    /// directly does: a caller who has a second factor (their token names one) uses it
    /// recently, within the policy's freshness, whatever the group's policy says (identity
    /// asks the same of a member or owner added directly).
    async fn standing_group_access_asks_mfa(
        &self,
        caller: &Caller,
        scope: &Scope,
        mut policy: Policy,
    ) -> Result<Policy> {
        if let Some(group) = crate::roles::group_of_scope(scope.as_str())
            && pim_runtime::auth::has_mfa(&caller.amr)
            && self.group(caller, group).await?.is_assignable_to_role
        {
            policy.active_requires_mfa = true;
        }
        Ok(policy)
    }

    /// Records a request that grants an assignment, the assignment, and their events, in one transaction.
    pub(super) async fn grant(
        &self,
        actor: Option<Actor>,
        mut request: RequestRow,
        principal: &crate::clients::Principal,
        role_name: &str,
    ) -> Result<RequestRow> {
        let txn = self.db.begin().await?;
        request.assignment_id = Some(new_id());
        self.record_request(&txn, actor.clone(), &request, role_name).await?;
        let assignment = self
            .grant_in(&txn, actor, &request, principal.kind, &principal.name, role_name)
            .await?;
        txn.commit().await?;
        self.index.upsert_row(&assignment);
        self.committed(&[&request.id]);
        Ok(request)
    }

    /// Inserts the assignment `request` grants (an administrator's, with the id the request
    /// names) and its event.
    pub(super) async fn grant_in(
        &self,
        txn: &DatabaseTransaction,
        actor: Option<Actor>,
        request: &RequestRow,
        principal_kind: PrincipalKind,
        principal_name: &str,
        role_name: &str,
    ) -> Result<AssignmentRow> {
        let assignment = AssignmentRow {
            id: request.assignment_id.clone().unwrap_or_else(new_id),
            kind: request.kind,
            principal_id: request.principal_id.clone(),
            principal_kind: principal_kind_str(principal_kind).into(),
            principal_name: principal_name.into(),
            role_id: request.role_id.clone(),
            scope: request.scope.clone(),
            start_at: request.start_at,
            end_at: request.end_at,
            status: "active".into(),
            origin: "admin".into(),
            request_id: request.id.clone(),
            created_by: request.requested_by.clone(),
            version: 1,
        };

        let ticket = Ticket {
            system: request.ticket_system.clone(),
            number: request.ticket_number.clone(),
        };
        let (granted_type, mut granted) = assignment_changed(&assignment, Change::Granted, role_name, actor.clone());
        granted.justification = request.justification.clone();
        granted.ticket = Some(ticket);
        // One that starts later is started by the scheduler, which then settles its request.
        let starts_later = assignment.start_at > self.now();
        store::insert_assignment(txn, &assignment, !starts_later, request.created_at).await?;
        self.announce_deadlines(&assignment, !starts_later);
        self.emit(txn, granted_type, &assignment.principal_id, &granted).await?;
        Ok(assignment)
    }

    /// adminRemove: ends an eligible or active assignment an administrator made. The last
    /// permanent, active Global Administrator at `/` is never removed.
    pub async fn admin_remove(&self, caller: &Caller, r: EndRequest) -> Result<RequestRow> {
        let (role, scope) = self.role_at(&r.role, &r.scope)?;
        let principal_id = r.principal_id.trim().to_owned();
        if principal_id.is_empty() {
            return Err(Error::invalid("principal_id", "required"));
        }
        self.authorize_assignments(caller, &role, &scope, None).await?;
        let now = self.now();
        let txn = self.db.begin().await?;
        let open = store::open_assignments(&txn, r.kind, &principal_id, &role.id, scope.as_str(), now).await?;
        if open.is_empty() {
            return Err(Error::NotFound(format!(
                "{} assignment of {} for {principal_id} at {}",
                r.kind.as_str(),
                role.name,
                scope.as_str()
            )));
        }
        if self
            .takes_the_last_global_admin(&txn, &open.iter().collect::<Vec<_>>(), now)
            .await?
        {
            return Err(last_global_admin_refused());
        }
        let request = r.ticketed(Self::ending_request(
            Action::AdminRemove,
            r.kind,
            &principal_id,
            &role.id,
            &scope,
            &r.justification,
            &caller.principal_id,
            open.first().map(|a| a.id.clone()),
            now,
            r.validate_only,
        ));
        if r.validate_only {
            return Ok(request);
        }
        self.record_request(&txn, Some(caller.actor()), &request, &role.name)
            .await?;
        let mut removed = 0;
        for a in &open {
            removed += usize::from(
                self.end(&txn, a, "removed", Some(caller.actor()), &role.name, now)
                    .await?,
            );
        }
        if removed == 0 {
            // A concurrent removal or expiry ended them first: one outcome, theirs.
            return Err(Error::NotFound(format!(
                "{} assignment of {} for {principal_id} at {} (it ended meanwhile)",
                r.kind.as_str(),
                role.name,
                scope.as_str()
            )));
        }
        let resting = self.resting_on(&txn, &open, now).await?;
        let mut fallout = self
            .bound_to_eligibility(&txn, resting, Some(caller.actor()), now)
            .await?;
        for a in &open {
            let canceled = self
                .cancel_extensions_of(&txn, &a.id, Some(caller.actor()), now)
                .await?;
            fallout.canceled.extend(canceled);
        }
        txn.commit().await?;
        for a in &open {
            self.index.remove(&a.principal_id, &a.id);
        }
        self.settle(&fallout);
        self.committed(&[&request.id]);
        Ok(request)
    }

    /// Applies an access review's removal (an adminRemove) and says what became of it on the
    /// assignment stream: `ReviewRemovalApplied`, or `ReviewRemovalRefused` when a protection
    /// kept the assignment (the last permanent Global Administrator), so the review item and
    /// the audit log show it. The access index follows the database after the commit
    /// ([`Self::index_removal`]), never the request.
    pub async fn remove_for_review(&self, txn: &DatabaseTransaction, asked: &ev::ReviewEvent) -> Result<()> {
        let now = self.now();
        let assignment_id = asked.assignment_id.as_str();
        let actor = asked.actor.clone();
        let mut answer = asked.clone();
        answer.actor = Some(Actor {
            principal_id: "system".into(),
            kind: 0,
            display_name: "assignment service".into(),
            session_id: String::new(),
        });
        let a = match store::find_assignment(txn, assignment_id).await? {
            Some(a) if a.status == "active" && a.end_at.is_none_or(|e| e > now) => a,
            found => {
                if found.is_none() {
                    tracing::warn!(assignment_id, "review removal of an unknown assignment");
                }
                answer.decision = "already_ended".into();
                answer.justification = match found {
                    Some(_) => "nothing to remove: the assignment had ended already",
                    None => "nothing to remove: no such assignment",
                }
                .into();
                return self
                    .emit(txn, EventType::ReviewRemovalApplied, &asked.principal_id, &answer)
                    .await;
            }
        };
        // A review removes only what its creator may still remove themselves: one who has
        // lost pim.assignments.manage since (or a recurring review from before the rule) asks.
        let scope = Scope::parse(&a.scope)?;
        let creator = asked.review_created_by.as_str();
        if !self.may_manage_assignments(txn, creator, &scope, now).await? {
            tracing::warn!(
                assignment_id,
                creator,
                "review removal by a creator who may not remove it; kept"
            );
            answer.decision = "refused".into();
            answer.justification = if creator.is_empty() {
                // Asked by an approval service from before reviews named their creator.
                "kept: the removal does not name the review's creator (asked before this version): run the review again"
                    .to_owned()
            } else if self.memberships.is_disabled(creator) {
                "kept: the review's creator is disabled, and may no longer remove it".to_owned()
            } else {
                format!(
                    "kept: the review's creator no longer holds, nor is eligible for, {} at {}, which removing it needs",
                    permissions::ASSIGNMENTS_MANAGE,
                    a.scope
                )
            };
            return self
                .emit(txn, EventType::ReviewRemovalRefused, &a.principal_id, &answer)
                .await;
        }
        if self.takes_the_last_global_admin(txn, &[&a], now).await? {
            tracing::warn!(
                assignment_id,
                "review would remove the last permanent Global Administrator; kept"
            );
            answer.decision = "refused".into();
            answer.justification = LAST_GLOBAL_ADMIN_KEPT.into();
            return self
                .emit(txn, EventType::ReviewRemovalRefused, &a.principal_id, &answer)
                .await;
        }
        let role_name = self.roles.get(&a.role_id).map(|r| r.name).unwrap_or_default();
        let kind = if a.kind == Kind::Eligible {
            Kind::Eligible
        } else {
            Kind::Active
        };
        let request = Self::ending_request(
            Action::AdminRemove,
            kind,
            &a.principal_id,
            &a.role_id,
            &scope,
            &asked.justification,
            &actor.as_ref().map(|a| a.principal_id.clone()).unwrap_or_default(),
            Some(a.id.clone()),
            now,
            false,
        );
        self.record_request(txn, actor.clone(), &request, &role_name).await?;
        self.end(txn, &a, "removed", actor.clone(), &role_name, now).await?;
        self.cancel_extensions_of(txn, &a.id, actor.clone(), now).await?;
        let resting = self.resting_on(txn, std::slice::from_ref(&a), now).await?;
        // Settled by the consumer after the commit ([`Self::index_removal`]).
        let _ = self.bound_to_eligibility(txn, resting, actor, now).await?;
        answer.decision = "removed".into();
        self.emit(txn, EventType::ReviewRemovalApplied, &a.principal_id, &answer)
            .await
    }

    /// adminExtend / adminUpdate: an administrator moves the end of an assignment they made
    /// (extend: only later). Shortening the last permanent Global Administrator is refused.
    pub async fn admin_change_end(
        &self,
        caller: &Caller,
        action: Action,
        r: EndRequest,
        end: Option<i64>,
    ) -> Result<RequestRow> {
        let (role, scope) = self.role_at(&r.role, &r.scope)?;
        let principal_id = r.principal_id.trim().to_owned();
        if principal_id.is_empty() {
            return Err(Error::invalid("principal_id", "required"));
        }
        self.authorize_assignments(caller, &role, &scope, Some(&principal_id))
            .await?;
        let now = self.now();
        let txn = self.db.begin().await?;
        let open = store::open_assignments(&txn, r.kind, &principal_id, &role.id, scope.as_str(), now).await?;
        let Some(mut assignment) = open.into_iter().find(|a| a.origin == "admin") else {
            return Err(Error::NotFound(format!(
                "{} assignment of {} for {principal_id} at {}",
                r.kind.as_str(),
                role.name,
                scope.as_str()
            )));
        };
        if action == Action::AdminExtend && end.is_some_and(|e| assignment.end_at.is_none_or(|current| e <= current)) {
            return Err(Error::PolicyViolation(vec![pim_runtime::grpc::RuleViolation {
                kind: "ExpirationRule",
                message: "an extension must end later than the assignment does now".into(),
            }]));
        }
        let (policy, _) = self.effective_policy(&txn, &role.id, &scope).await?;
        let policy = self.standing_group_access_asks_mfa(caller, &scope, policy).await?;
        let mut violations: Vec<RuleViolation> = policy
            .unverified_administrator(r.kind, mfa_of(caller), now)
            .into_iter()
            .collect();
        violations.extend(
            policy
                .check_new_end(r.kind, assignment.start_at, end, &r.justification, now)
                .err()
                .into_iter()
                .flatten(),
        );
        if !violations.is_empty() {
            return Err(Error::PolicyViolation(violations));
        }
        // A permanent assignment given an end stops being permanent.
        if end.is_some() && self.takes_the_last_global_admin(&txn, &[&assignment], now).await? {
            return Err(last_global_admin_refused());
        }
        let mut request = r.ticketed(Self::ending_request(
            action,
            r.kind,
            &principal_id,
            &role.id,
            &scope,
            &r.justification,
            &caller.principal_id,
            Some(assignment.id.clone()),
            now,
            r.validate_only,
        ));
        request.status = RequestStatus::Provisioned;
        request.start_at = assignment.start_at;
        request.end_at = end;
        if r.validate_only {
            return Ok(request);
        }
        self.record_request(&txn, Some(caller.actor()), &request, &role.name)
            .await?;
        if !self
            .change_end(&txn, Some(caller.actor()), &mut assignment, end, &role.name, &request)
            .await?
        {
            // Another change or removal committed since the read: this one is not applied.
            return Err(Error::Aborted(format!(
                "the {} assignment {} changed or ended meanwhile; look again",
                r.kind.as_str(),
                assignment.id
            )));
        }
        // An eligibility or membership moved earlier holds what rested on it to its new end.
        let resting = self.resting_on(&txn, std::slice::from_ref(&assignment), now).await?;
        let fallout = self
            .bound_to_eligibility(&txn, resting, Some(caller.actor()), now)
            .await?;
        txn.commit().await?;
        self.index.upsert_row(&assignment);
        self.settle(&fallout);
        self.committed(&[&request.id]);
        Ok(request)
    }
}
