//! The request lifecycle: requests that wait for approval (activation, selfExtend,
//! selfRenew), what an approval's outcome does to them, cancelling, and reading them.

use super::*;
use pim_runtime::events::EventType;

/// What a listing of assignments asks for: of one kind, held by `principal` (directly or
/// through their groups) or by anyone, of `role`, applying at `scope`; one page of at most
/// `limit` (all when none), after the assignment with id `after` (from the first when empty).
#[derive(Clone, Copy, Debug)]
pub struct Listing<'a> {
    pub kind: Kind,
    pub principal: Option<&'a str>,
    pub role: Option<&'a str>,
    pub scope: Option<&'a Scope>,
    pub started: store::Started,
    pub after: &'a str,
    pub limit: Option<u64>,
}

impl Assignments {
    /// selfExtend / selfRenew: a principal asks to keep an assignment an administrator made —
    /// extend one still in force to a later end, or renew one that expired. Either waits for
    /// approval (the role's approvers, or the default approvers), like Entra's.
    pub async fn self_keep(
        &self,
        caller: &Caller,
        action: Action,
        r: EndRequest,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<RequestRow> {
        let (role, scope) = self.role_at(&r.role, &r.scope)?;
        let now = self.now();
        if r.justification.trim().is_empty() {
            return Err(Error::PolicyViolation(vec![RuleViolation {
                kind: "JustificationRule",
                message: "say why you still need the role".into(),
            }]));
        }
        let open = store::open_assignments(&self.db, r.kind, &caller.principal_id, &role.id, scope.as_str(), now)
            .await?
            .into_iter()
            .find(|a| a.origin == "admin");
        let (policy, _) = self.effective_policy(&self.db, &role.id, &scope).await?;
        let (assignment_id, start) = if action == Action::SelfExtend {
            let Some(a) = open else {
                return Err(Error::NotFound(format!(
                    "your {} assignment of {} at {}",
                    r.kind.as_str(),
                    role.name,
                    scope.as_str()
                )));
            };
            let Some(current) = a.end_at else {
                return Err(Error::FailedPrecondition(
                    "this assignment is permanent; nothing to extend".into(),
                ));
            };
            if !pim_proto::extension_window_open(current, now) {
                let window = crate::domain::EXTENSION_WINDOW;
                return Err(Error::FailedPrecondition(format!(
                    "this assignment ends {}; you may ask to extend it in its last {} days, from {}",
                    pim_runtime::db::rfc3339(current),
                    window.as_secs() / 86_400,
                    pim_runtime::db::rfc3339(current - window.as_millis() as i64)
                )));
            }
            if end.is_none_or(|e| e <= current) {
                return Err(Error::PolicyViolation(vec![RuleViolation {
                    kind: "ExpirationRule",
                    message: "an extension must end later than the assignment does now".into(),
                }]));
            }
            (Some(a.id), a.start_at)
        } else {
            if open.is_some() {
                return Err(Error::FailedPrecondition(
                    "this assignment is still in force; ask to extend it instead".into(),
                ));
            }
            if store::last_expired_assignment(&self.db, r.kind, &caller.principal_id, &role.id, scope.as_str(), now)
                .await?
                .is_none()
            {
                return Err(Error::NotFound(format!(
                    "an expired {} assignment of {} at {} of yours",
                    r.kind.as_str(),
                    role.name,
                    scope.as_str()
                )));
            }
            (None, start.unwrap_or(now).max(now))
        };
        policy
            .check_new_end(r.kind, start, end, &r.justification, now)
            .map_err(Error::PolicyViolation)?;
        if let Some(waiting) =
            store::pending_request(&self.db, &caller.principal_id, &role.id, scope.as_str(), Waiting::Keep).await?
        {
            return Err(already_waiting(&role.name, &waiting));
        }
        let request = r.ticketed(RequestRow {
            id: if r.validate_only { String::new() } else { new_id() },
            action,
            kind: r.kind,
            principal_id: caller.principal_id.clone(),
            role_id: role.id.clone(),
            scope: scope.as_str().into(),
            status: RequestStatus::PendingApproval,
            start_at: start,
            end_at: end,
            justification: r.justification.trim().into(),
            ticket_system: String::new(),
            ticket_number: String::new(),
            requested_by: caller.principal_id.clone(),
            created_at: now,
            assignment_id,
            duration_ms: end.map(|e| e - start),
            policy: serde_json::to_string(&policy).map_err(|e| Error::Internal(e.into()))?,
            outcome_reason: String::new(),
        });
        if r.validate_only {
            return Ok(request);
        }
        let txn = self.db.begin().await?;
        match self
            .record_request(&txn, Some(caller.actor()), &request, &role.name)
            .await
        {
            // The database holds one waiting request to extend or renew per role and scope: a
            // concurrent one won.
            Err(err) if is_duplicate(&err) => {
                txn.rollback().await?;
                let waiting =
                    store::pending_request(&self.db, &caller.principal_id, &role.id, scope.as_str(), Waiting::Keep)
                        .await?;
                return Err(waiting.map_or_else(
                    || err_same_moment(&role.name, &scope),
                    |w| already_waiting(&role.name, &w),
                ));
            }
            recorded => recorded?,
        }
        txn.commit().await?;
        self.committed(&[&request.id]);
        Ok(request)
    }

    /// An approved selfExtend or selfRenew: the assignment gets its new end, or comes back.
    /// When it no longer can (removed meanwhile, or renewed another way) the request fails.
    pub(super) async fn apply_keep(
        &self,
        txn: &DatabaseTransaction,
        request: &mut RequestRow,
        actor: Option<Actor>,
        now: i64,
    ) -> Result<()> {
        let role_name = self.roles.get(&request.role_id).map(|r| r.name).unwrap_or_default();
        let open = store::open_assignments(
            txn,
            request.kind,
            &request.principal_id,
            &request.role_id,
            &request.scope,
            now,
        )
        .await?
        .into_iter()
        .find(|a| a.origin == "admin");
        let kept = if request.action == Action::SelfExtend {
            match open.filter(|a| Some(&a.id) == request.assignment_id.as_ref()) {
                // Only ever a later end: one made permanent, or extended further, meanwhile
                // stays as it is (so no permanent assignment, the last Global Administrator's
                // included, is given an end this way).
                Some(a)
                    if a.end_at
                        .is_none_or(|end| request.end_at.is_some_and(|asked| asked <= end)) =>
                {
                    false
                }
                Some(mut a) => {
                    self.change_end(txn, actor, &mut a, request.end_at, &role_name, request)
                        .await?
                }
                None => false,
            }
        } else {
            let last = store::last_expired_assignment(
                txn,
                request.kind,
                &request.principal_id,
                &request.role_id,
                &request.scope,
                now,
            )
            .await?;
            match (open, last) {
                (None, Some(last)) => {
                    if last.status == "active" {
                        // Past its end, not yet ended by the timer: it gives way (one live
                        // administrator's assignment at a time, held by the database).
                        self.end(txn, &last, "expired", Some(system_actor()), &role_name, now)
                            .await?;
                        self.index.remove(&last.principal_id, &last.id);
                        // Settled after the commit ([`Self::index_request`]).
                        let resting = self.resting_on(txn, std::slice::from_ref(&last), now).await?;
                        let _ = self
                            .bound_to_eligibility(txn, resting, Some(system_actor()), now)
                            .await?;
                    }
                    request.start_at = request.start_at.max(now);
                    // The end the approver was shown stands: time spent waiting comes off
                    // the renewal, never on top (a request naming only a length counts it
                    // from now).
                    if request.end_at.is_none()
                        && let Some(length) = request.duration_ms
                    {
                        request.end_at = Some(request.start_at + length);
                    }
                    if request.end_at.is_some_and(|end| end <= request.start_at) {
                        request.status = RequestStatus::Failed;
                        request.outcome_reason =
                            "approved, but the end it asked for has passed: nothing was renewed".into();
                        self.transition(txn, request, RequestStatus::Granted, None, now).await?;
                        return Ok(());
                    }
                    request.assignment_id = Some(new_id());
                    let kind = pim_runtime::auth::kind_from_claim(&last.principal_kind);
                    self.grant_in(txn, actor, request, kind, &last.principal_name, &role_name)
                        .await?;
                    true
                }
                _ => false,
            }
        };
        request.status = if kept {
            RequestStatus::Provisioned
        } else {
            // Not the approver's words: they approved something that can no longer be done.
            request.outcome_reason =
                "approved, but the assignment it would change was changed or ended meanwhile: nothing was changed"
                    .into();
            RequestStatus::Failed
        };
        self.transition(txn, request, RequestStatus::Granted, None, now).await?;
        Ok(())
    }

    /// What a scheduled request made started (`Provisioned`), ended before it started
    /// (`Canceled`: withdrawn, canceled, removed, or cut by its eligibility's end), or saw its
    /// whole window pass unstarted (`Failed`: the service was not running): the request says
    /// so, and `why` where it is not plain.
    pub(crate) async fn settle_scheduled(
        &self,
        txn: &DatabaseTransaction,
        a: &AssignmentRow,
        outcome: RequestStatus,
        why: &str,
        actor: Option<Actor>,
        now: i64,
    ) -> Result<()> {
        let Some(mut request) = store::find_request(txn, &a.request_id).await? else {
            return Ok(());
        };
        if request.status != RequestStatus::ScheduleCreated {
            return Ok(());
        }
        request.status = outcome;
        if !why.is_empty() {
            request.outcome_reason = why.into();
        }
        self.transition(txn, &request, RequestStatus::ScheduleCreated, actor, now)
            .await?;
        Ok(())
    }

    pub(super) async fn transition(
        &self,
        txn: &DatabaseTransaction,
        request: &RequestRow,
        from: RequestStatus,
        actor: Option<Actor>,
        now: i64,
    ) -> Result<bool> {
        if !from.may_become(request.status) {
            return Err(Error::Internal(anyhow::anyhow!(
                "request {} may not move from {from} to {}",
                request.id,
                request.status
            )));
        }
        if !store::transition_request(txn, request, from, now).await? {
            return Ok(false);
        }
        let event = ev::RequestStatusChanged {
            actor,
            request_id: request.id.clone(),
            status: request.status.to_string(),
            previous_status: from.to_string(),
            request_status: request.status.to_pb() as i32,
            previous_request_status: from.to_pb() as i32,
            principal_id: request.principal_id.clone(),
            role_id: request.role_id.clone(),
            scope: request.scope.clone(),
        };
        self.emit(txn, EventType::RequestStatusChanged, &request.id, &event)
            .await?;
        Ok(true)
    }

    /// Applies an approval's outcome to a pending activation (from the approval stream).
    /// Approved: active from now (or its scheduled start) for the whole duration asked —
    /// time spent waiting for approval does not eat the window.
    pub async fn apply_approval(
        &self,
        txn: &DatabaseTransaction,
        request_id: &str,
        outcome: RequestStatus,
        actor: Option<Actor>,
        reason: &str,
    ) -> Result<()> {
        let Some(mut request) = store::find_request(txn, request_id).await? else {
            tracing::warn!(request_id, "approval outcome for an unknown request");
            return Ok(());
        };
        if request.status != RequestStatus::PendingApproval {
            return Ok(());
        }
        let now = self.now();
        // The approver's words (or what ended it), for the requester to read.
        request.outcome_reason = reason.chars().filter(|c| *c != '\0').take(1000).collect();
        match outcome {
            RequestStatus::Granted => {
                request.status = RequestStatus::Granted;
                // Moved on meanwhile (the requester canceled it): nothing to apply.
                if !self
                    .transition(txn, &request, RequestStatus::PendingApproval, actor.clone(), now)
                    .await?
                {
                    return Ok(());
                }
                if request.action != Action::SelfActivate {
                    return self.apply_keep(txn, &mut request, actor, now).await;
                }
                let start = request.start_at.max(now);
                let length = request.duration_ms.unwrap_or_default();
                // Still eligible, directly or through a group (as the database holds it now).
                let groups = self.groups_in(txn, &request.principal_id, now).await?;
                let mut holders = vec![request.principal_id.clone()];
                holders.extend(groups.keys().cloned());
                let scopes = Scope::parse(&request.scope)?.with_ancestors();
                let (held, _) = store::activation_inputs(txn, &holders, &request.role_id, &scopes, now).await?;
                let allowing = group_access::longest_eligibility(&held, &groups, &request.role_id, &scopes, now);
                // Locked (PostgreSQL) until this transaction ends: a concurrent removal waits
                // for the activation, then ends it; or wins first, and none is made.
                let still = match allowing {
                    Some((e, until)) => {
                        let rests = store::RestsOn {
                            eligibility_id: &e.id,
                            via_group: (e.principal_id != request.principal_id).then_some(e.principal_id.as_str()),
                            until: Some((start + length).min(until.unwrap_or(i64::MAX))),
                        };
                        store::lock_resting(txn, rests, &request.principal_id, now).await?
                    }
                    None => false,
                };
                let eligible_until = allowing.filter(|_| still).map(|(_, until)| until.unwrap_or(i64::MAX));
                let Some(eligible_until) = eligible_until.filter(|until| *until > start) else {
                    request.status = RequestStatus::Failed;
                    request.outcome_reason =
                        "approved, but no eligibility allows it any more (it ended or was removed meanwhile)".into();
                    self.transition(txn, &request, RequestStatus::Granted, None, now)
                        .await?;
                    return Ok(());
                };
                let schedule = Schedule {
                    start,
                    end: Some((start + length).min(eligible_until)),
                };
                let role_name = self.roles.get(&request.role_id).map(|r| r.name).unwrap_or_default();
                // One live activation per principal, role and scope (a unique index): one whose
                // end passed is ended now; one still in force makes this request fail (had
                // they raced, the index refuses this insert and the redelivery lands here).
                if let Some(live) =
                    store::live_activation(txn, &request.principal_id, &request.role_id, &request.scope).await?
                {
                    if live.end_at.is_some_and(|end| end <= now) {
                        self.end(txn, &live, "expired", Some(system_actor()), &role_name, now)
                            .await?;
                    } else {
                        request.status = RequestStatus::Failed;
                        request.outcome_reason =
                            "approved, but an activation of this role at this scope is in force already".into();
                        self.transition(txn, &request, RequestStatus::Granted, None, now)
                            .await?;
                        return Ok(());
                    }
                }
                let assignment = self.activation_assignment(&request, "", schedule);
                request.assignment_id = Some(assignment.id.clone());
                request.start_at = schedule.start;
                request.end_at = schedule.end;
                request.status = RequestStatus::applied(schedule.start > now);
                self.transition(txn, &request, RequestStatus::Granted, None, now)
                    .await?;
                let justification = request.justification.clone();
                // The requester activates, as without approval; the approver is on record
                // with the approval (ApprovalGranted).
                let requester = Actor {
                    principal_id: request.principal_id.clone(),
                    kind: PrincipalKind::User as i32,
                    display_name: String::new(),
                    session_id: String::new(),
                };
                let via_group = allowing
                    .map(|(e, _)| e.principal_id.as_str())
                    .filter(|holder| *holder != request.principal_id);
                self.provision(
                    txn,
                    &assignment,
                    Some(requester),
                    &role_name,
                    &justification,
                    via_group,
                    now,
                )
                .await?;
            }
            RequestStatus::Denied | RequestStatus::Expired => {
                request.status = outcome;
                self.transition(txn, &request, RequestStatus::PendingApproval, actor, now)
                    .await?;
            }
            other => tracing::warn!(request_id, outcome = %other, "not an approval outcome"),
        }
        Ok(())
    }

    /// Cancels what `principal_id` asked for that still waits for approval, activations and
    /// extensions alike (their approvals end with them), saying why; the ids of those canceled.
    pub(crate) async fn cancel_waiting_requests(
        &self,
        txn: &DatabaseTransaction,
        principal_id: &str,
        why: &str,
        actor: Option<Actor>,
    ) -> Result<Vec<String>> {
        let now = self.now();
        let mut canceled = Vec::new();
        for mut request in store::pending_requests_of(txn, principal_id).await? {
            request.status = RequestStatus::Canceled;
            request.outcome_reason = why.into();
            if self
                .transition(txn, &request, RequestStatus::PendingApproval, actor.clone(), now)
                .await?
            {
                canceled.push(request.id);
            }
        }
        Ok(canceled)
    }

    /// Cancels the requests to extend assignment `assignment_id` that wait for approval, as it
    /// was removed: nobody is asked any more to extend what is gone. The ids of those canceled.
    pub(crate) async fn cancel_extensions_of(
        &self,
        txn: &DatabaseTransaction,
        assignment_id: &str,
        actor: Option<Actor>,
        now: i64,
    ) -> Result<Vec<String>> {
        let mut canceled = Vec::new();
        for mut waiting in store::pending_extensions_of(txn, assignment_id).await? {
            waiting.status = RequestStatus::Canceled;
            waiting.outcome_reason = "canceled: the assignment it would extend was removed".into();
            if self
                .transition(txn, &waiting, RequestStatus::PendingApproval, actor.clone(), now)
                .await?
            {
                canceled.push(waiting.id);
            }
        }
        Ok(canceled)
    }

    /// CancelRequest: the requester withdraws a request still waiting for approval.
    pub async fn cancel_request(&self, caller: &Caller, id: &str) -> Result<RequestRow> {
        let mut request = self.get_request(caller, id).await?;
        if request.requested_by != caller.principal_id {
            return Err(Error::PermissionDenied(
                "only the requester can cancel a request".into(),
            ));
        }
        if request.status == RequestStatus::ScheduleCreated {
            return self.cancel_scheduled(caller, request).await;
        }
        if request.status != RequestStatus::PendingApproval {
            return Err(Error::FailedPrecondition(format!(
                "request is {}; only a request waiting for approval or for its start can be canceled",
                request.status
            )));
        }
        request.status = RequestStatus::Canceled;
        let txn = self.db.begin().await?;
        if !self
            .transition(
                &txn,
                &request,
                RequestStatus::PendingApproval,
                Some(caller.actor()),
                self.now(),
            )
            .await?
        {
            return Err(Error::FailedPrecondition(
                "request changed meanwhile; fetch it again".into(),
            ));
        }
        txn.commit().await?;
        self.committed(&[id]);
        Ok(request)
    }

    /// Cancels a scheduled request before it starts: what it made ends unstarted, and the
    /// request is Canceled ([`Self::settle_scheduled`]).
    async fn cancel_scheduled(&self, caller: &Caller, request: RequestRow) -> Result<RequestRow> {
        let now = self.now();
        let txn = self.db.begin().await?;
        let scheduled = match &request.assignment_id {
            Some(id) => store::find_assignment(&txn, id).await?,
            None => None,
        };
        let Some(a) = scheduled.filter(|a| a.status == "active" && a.start_at > now) else {
            return Err(Error::FailedPrecondition(
                "it has started (or ended) meanwhile: deactivate or remove what it made instead".into(),
            ));
        };
        let role_name = self.roles.get(&a.role_id).map(|r| r.name).unwrap_or_default();
        if !self
            .end(&txn, &a, "canceled", Some(caller.actor()), &role_name, now)
            .await?
        {
            return Err(Error::FailedPrecondition(
                "request changed meanwhile; fetch it again".into(),
            ));
        }
        self.commit_ended(txn, &a, caller, &request.id, now).await?;
        store::find_request(&self.db, &request.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("request {}", request.id)))
    }

    /// Assignments in force now, in the order of their ids, with the group each is held
    /// through (none: held directly); the caller's own, or anyone's for readers of
    /// assignments.
    pub async fn list(&self, caller: &Caller, asked: &Listing<'_>) -> Result<Vec<(AssignmentRow, Option<String>)>> {
        if asked.principal != Some(caller.principal_id.as_str()) {
            self.may_list(caller, asked.role, asked.scope).await?;
        }
        let now = self.now();
        // At that scope, or above it (what applies there).
        let scopes = asked.scope.map(Scope::with_ancestors).unwrap_or_default();
        let slice = store::Slice {
            scopes: &scopes,
            after: asked.after,
            limit: asked.limit,
        };
        let (kind, role, started) = (asked.kind, asked.role, asked.started);
        let mut rows: Vec<_> = store::current_assignments(&self.db, kind, asked.principal, role, now, started, slice)
            .await?
            .into_iter()
            .map(|a| (a, None))
            .collect();
        // A principal's roles include those of their role-assignable groups (Entra hides these).
        if let Some(principal) = asked.principal {
            for (group, member_until) in self.groups_of(principal, now) {
                let inherited = store::current_assignments(&self.db, kind, Some(&group), role, now, started, slice);
                rows.extend(inherited.await?.into_iter().map(|mut a| {
                    // Held through the group for as long as the membership lasts.
                    a.end_at = group_access::earlier(a.end_at, member_until);
                    (a, Some(group.clone()))
                }));
            }
            // One page, cut in the order of ids across the principal's and their groups'.
            rows.sort_by(|(a, _), (b, _)| a.id.cmp(&b.id));
            rows.truncate(asked.limit.map_or(usize::MAX, |limit| limit as usize));
        }
        Ok(rows)
    }

    pub async fn get_request(&self, caller: &Caller, id: &str) -> Result<RequestRow> {
        let request = store::find_request(&self.db, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("request {id}")))?;
        // A refusal below (reading or canceling it) is recorded against whom it is for.
        pim_runtime::auth::aimed_at(&request.principal_id);
        if request.principal_id != caller.principal_id && request.requested_by != caller.principal_id {
            self.authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
                .await?;
        }
        Ok(request)
    }

    /// Requests: the caller's own, or anyone's for readers of assignments.
    pub async fn list_requests(
        &self,
        caller: &Caller,
        principal: Option<&str>,
        role: Option<&str>,
        status: Option<RequestStatus>,
        after: &str,
        limit: u64,
    ) -> Result<Vec<RequestRow>> {
        if principal != Some(caller.principal_id.as_str()) {
            self.authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
                .await?;
        }
        Ok(store::list_requests(&self.db, principal, role, status, after, limit).await?)
    }

    /// Puts the assignment a request provisioned into the access index (after the commit
    /// that made it, e.g. by an approval event).
    pub async fn index_request(&self, request_id: &str) -> Result<()> {
        if let Some(request) = store::find_request(&self.db, request_id).await? {
            // What a renewal's lapsed assignment brought down with it leaves the index too.
            self.reindex_principals(std::slice::from_ref(&request.principal_id))
                .await?;
            if let Some(id) = request.assignment_id
                && let Some(a) = store::find_assignment(&self.db, &id).await?
            {
                self.index.upsert_row(&a);
            }
        }
        // Watchers learn of the new status once CheckAccess here agrees with it.
        let _ = self.changes.send(request_id.to_owned());
        Ok(())
    }
}
