//! The event-driven rules: what each event type an alert rule cares about does to the
//! projections and to the alerts.

use super::*;
use pim_runtime::events::event_type;

impl Alerts {
    /// Runs the rules an event concerns, inside the consumer's transaction.
    pub async fn evaluate(&self, txn: &DatabaseTransaction, e: &Envelope) -> anyhow::Result<()> {
        let at = event_time(e);
        match event_type(e) {
            Some(EventType::SignInMfaPending | EventType::SignInEnrollmentPending) => {
                // The break-glass password was used, whether or not a code follows.
                let s: ev::SignInSucceeded = decode(e)?;
                if let Some(actor) = s.actor
                    && store::is_break_glass(txn, &actor.principal_id).await?
                {
                    self.break_glass_used(txn, &actor.principal_id, &actor.display_name, &e.id)
                        .await?;
                }
            }
            Some(EventType::SignInSucceeded) => {
                let s: ev::SignInSucceeded = decode(e)?;
                let Some(actor) = s.actor else {
                    return Ok(());
                };
                store::signed_in(txn, &actor.principal_id, at).await?;
                if store::is_break_glass(txn, &actor.principal_id).await? {
                    self.break_glass_used(txn, &actor.principal_id, &actor.display_name, &e.id)
                        .await?;
                }
                // Signing in clears a stale-account alert.
                self.clear(txn, &format!("stale:{}", actor.principal_id), "signed in again")
                    .await?;
            }
            Some(EventType::SignInFailed) => {
                // The failure that locks the account out, and each sign-in refused while it
                // is; one alert per account while it is live.
                let f: ev::SignInFailed = decode(e)?;
                if matches!(f.reason.as_str(), "locked_out" | "bad_password_locked_out")
                    && !f.principal_id.is_empty()
                    && store::is_privileged(txn, &f.principal_id, self.now()).await?
                {
                    let figures = BTreeMap::from([("user_name".to_owned(), f.user_name.clone())]);
                    let subject = Subject {
                        principal_id: f.principal_id.clone(),
                        ..Subject::default()
                    };
                    let key = format!("sign_in_lockout:{}", f.principal_id);
                    self.raise(
                        txn,
                        rules::SIGN_IN_LOCKOUT,
                        &key,
                        subject,
                        std::slice::from_ref(&e.id),
                        figures,
                    )
                    .await?;
                }
            }
            Some(EventType::MfaFailed | EventType::MfaLockedOut) => {
                let m: ev::MfaEvent = decode(e)?;
                // Every failure is kept for the window: the account may turn out privileged
                // by an event on another stream judged later. A lockout follows the failure
                // that caused it (one attempt, not two); an attempt refused while locked is a
                // failure of its own, and the account is still locked out.
                let lockout = event_type(e) == Some(EventType::MfaLockedOut);
                if !lockout {
                    store::record_mfa_failure(txn, &e.id, &m.user_id, at).await?;
                }
                let locked = lockout || m.reason == "locked_out";
                if store::is_privileged(txn, &m.user_id, self.now()).await? {
                    self.check_mfa_failures(txn, &m.user_id, at, locked, false).await?;
                }
            }
            Some(EventType::RecoveryCodeUsed | EventType::MfaMethodRemoved | EventType::MfaReset) => {
                let m: ev::MfaEvent = decode(e)?;
                let privileged = store::is_privileged(txn, &m.user_id, self.now()).await?;
                let by = m.actor.as_ref().map(|a| a.display_name.clone()).unwrap_or_default();
                // A recovery code is an emergency for anyone (high for a privileged account);
                // a lost method matters for privileged accounts.
                let (rule, key, severity) = match event_type(e) {
                    Some(EventType::RecoveryCodeUsed) => (
                        rules::RECOVERY_CODE_USED,
                        "recovery_code",
                        privileged.then_some(Severity::High),
                    ),
                    _ if privileged => (rules::MFA_METHOD_REMOVED, "mfa_method_removed", None),
                    _ => return Ok(()),
                };
                let figures = BTreeMap::from([
                    ("change".to_owned(), short_type(e).to_owned()),
                    ("by".to_owned(), by),
                    ("privileged".to_owned(), privileged.to_string()),
                    ("detail".to_owned(), m.reason.clone()),
                ]);
                let subject = Subject {
                    principal_id: m.user_id.clone(),
                    ..Subject::default()
                };
                self.raise_as(
                    txn,
                    rule,
                    &format!("{key}:{}", m.user_id),
                    subject,
                    std::slice::from_ref(&e.id),
                    figures,
                    severity,
                )
                .await?;
            }
            Some(
                granted @ (EventType::EligibilityGranted
                | EventType::EligibilityUpdated
                | EventType::ActiveAssignmentGranted
                | EventType::ActiveAssignmentUpdated),
            ) => {
                let a: ev::AssignmentChanged = decode(e)?;
                // The typed kind (or an older publisher's text); an event naming neither is
                // not counted as anything.
                let kind = match a.typed_kind() {
                    AssignmentKind::Unspecified => return Ok(()),
                    kind => kind.text(),
                };
                if !privileged(txn, &a.role_id, &a.scope, self.now()).await? {
                    return Ok(());
                }
                let end = a.end_time.as_ref().map(from_timestamp);
                let since = a.start_time.as_ref().map(from_timestamp).unwrap_or(at);
                store::upsert_privileged(
                    txn,
                    &store::Privileged {
                        assignment_id: &a.assignment_id,
                        kind,
                        principal_id: &a.principal_id,
                        is_group: a.principal_kind == pim_proto::common::v1::PrincipalKind::Group as i32,
                        role_id: &a.role_id,
                        scope: &a.scope,
                        end_at: end,
                        since,
                    },
                )
                .await?;
                self.check_mfa_failures(txn, &a.principal_id, self.now(), false, true)
                    .await?;
                // A group made privileged: those already in it in the directory hold the role
                // for good, outside PIM.
                if matches!(
                    granted,
                    EventType::EligibilityGranted | EventType::ActiveAssignmentGranted
                ) {
                    for (principal_id, owner) in store::group_links(txn, &a.principal_id).await? {
                        self.outside_pim(txn, &a.principal_id, &principal_id, owner, &e.id)
                            .await?;
                    }
                }
                if a.justification.starts_with("bootstrap:") {
                    store::add_break_glass(txn, &a.principal_id).await?;
                    // Identity's and assignment's streams are read independently: a sign-in
                    // judged before this grant counts once the grant arrives.
                    if store::last_sign_in(txn, &a.principal_id)
                        .await?
                        .is_some_and(|t| t >= since)
                    {
                        self.break_glass_used(txn, &a.principal_id, &a.principal_name, &e.id)
                            .await?;
                    }
                }
                // Given to themselves by an administrator: no one else decided it.
                let by_themselves = a
                    .actor
                    .as_ref()
                    .is_some_and(|actor| actor.principal_id == a.principal_id);
                if matches!(
                    granted,
                    EventType::EligibilityGranted | EventType::ActiveAssignmentGranted
                ) && by_themselves
                    && !a.justification.starts_with("bootstrap:")
                {
                    let figures = BTreeMap::from([
                        ("role_name".to_owned(), a.role_name.clone()),
                        ("kind".to_owned(), kind.to_owned()),
                    ]);
                    self.raise(
                        txn,
                        rules::SELF_ASSIGNMENT,
                        &format!("self_assignment:{}", a.assignment_id),
                        Subject {
                            principal_id: a.principal_id.clone(),
                            role_id: a.role_id.clone(),
                            scope: a.scope.clone(),
                        },
                        std::slice::from_ref(&e.id),
                        figures,
                    )
                    .await?;
                }
                let key = format!("permanent:{}", a.assignment_id);
                if a.typed_kind() == AssignmentKind::Active && end.is_none() {
                    let figures = BTreeMap::from([("role_name".to_owned(), a.role_name.clone())]);
                    let subject = Subject {
                        principal_id: a.principal_id.clone(),
                        role_id: a.role_id.clone(),
                        scope: a.scope.clone(),
                    };
                    self.raise(
                        txn,
                        rules::PERMANENT_PRIVILEGED,
                        &key,
                        subject,
                        std::slice::from_ref(&e.id),
                        figures,
                    )
                    .await?;
                } else {
                    self.clear(txn, &key, "the assignment has an end now").await?;
                }
                self.check_global_admins(txn, &e.id).await?;
            }
            Some(EventType::EligibilityRemoved | EventType::ActiveAssignmentRemoved) => {
                let a: ev::AssignmentChanged = decode(e)?;
                store::forget_privileged(txn, &a.assignment_id).await?;
                self.clear(txn, &format!("permanent:{}", a.assignment_id), "the assignment ended")
                    .await?;
                self.check_global_admins(txn, &e.id).await?;
            }
            Some(EventType::RoleActivated) => {
                let a: ev::RoleActivated = decode(e)?;
                // Frequent activation is about any role; the counts only about privileged ones.
                if privileged(txn, &a.role_id, &a.scope, self.now()).await? {
                    store::upsert_privileged(
                        txn,
                        &store::Privileged {
                            assignment_id: &a.assignment_id,
                            kind: "activation",
                            principal_id: &a.principal_id,
                            is_group: false,
                            role_id: &a.role_id,
                            scope: &a.scope,
                            end_at: a.end_time.as_ref().map(from_timestamp),
                            since: a.start_time.as_ref().map(from_timestamp).unwrap_or(at),
                        },
                    )
                    .await?;
                    self.check_global_admins(txn, &e.id).await?;
                }
                let s = self.settings(txn, rules::FREQUENT_ACTIVATION).await?;
                let recent = store::activations_since(
                    txn,
                    &a.assignment_id,
                    &a.principal_id,
                    &a.role_id,
                    at,
                    &e.id,
                    at - s.get("window_hours") * 3_600_000,
                )
                .await?;
                if recent.len() as i64 >= s.get("count") {
                    let figures = BTreeMap::from([
                        ("activations".to_owned(), recent.len().to_string()),
                        ("window_hours".to_owned(), s.get("window_hours").to_string()),
                    ]);
                    self.raise(
                        txn,
                        rules::FREQUENT_ACTIVATION,
                        &format!("frequent:{}:{}", a.principal_id, a.role_id),
                        Subject {
                            principal_id: a.principal_id,
                            role_id: a.role_id,
                            scope: a.scope,
                        },
                        &recent,
                        figures,
                    )
                    .await?;
                }
            }
            Some(EventType::RoleDeactivated) => {
                let a: ev::RoleDeactivated = decode(e)?;
                store::forget_privileged(txn, &a.assignment_id).await?;
                self.check_global_admins(txn, &e.id).await?;
            }
            Some(
                kind @ (EventType::GroupMemberAdded
                | EventType::GroupMemberRemoved
                | EventType::GroupOwnerAdded
                | EventType::GroupOwnerRemoved),
            ) => {
                // A member added to a group that holds a privileged role holds it for good,
                // outside PIM's just-in-time activation, and an owner may add any member
                // (themselves too); the alert resolves when they leave.
                let m: ev::GroupMembershipChanged = decode(e)?;
                let owner = matches!(kind, EventType::GroupOwnerAdded | EventType::GroupOwnerRemoved);
                let removed = matches!(kind, EventType::GroupMemberRemoved | EventType::GroupOwnerRemoved);
                // Only a role-assignable group holds roles: its members are kept, so that a
                // role it is assigned later, and the Global Administrator count, see them.
                // A change told after a newer one of the same link changes nothing: a removal
                // arriving late neither clears the alert nor lowers the count.
                let latest = match m.is_assignable_to_role {
                    true => {
                        let version = i64::try_from(m.version).unwrap_or(i64::MAX);
                        store::set_group_link(txn, &m.group_id, &m.principal_id, owner, !removed, version).await?
                    }
                    false => true,
                };
                if latest {
                    if removed {
                        let left = if owner {
                            "the owner left the group"
                        } else {
                            "the member left the group"
                        };
                        self.clear(txn, &link_key(&m.group_id, &m.principal_id, owner), left)
                            .await?;
                    } else if m.is_assignable_to_role && store::is_privileged(txn, &m.group_id, self.now()).await? {
                        self.outside_pim(txn, &m.group_id, &m.principal_id, owner, &e.id)
                            .await?;
                    }
                    if m.is_assignable_to_role && !owner {
                        self.check_global_admins(txn, &e.id).await?;
                    }
                }
            }
            Some(EventType::UnmanagedGrantDetected) => {
                let g: ev::UnmanagedGrantDetected = decode(e)?;
                let figures = BTreeMap::from([("system".to_owned(), g.system.clone())]);
                self.raise(
                    txn,
                    rules::UNMANAGED_GRANT,
                    &unmanaged_key(&g.system, &g.principal_id, &g.role_id, &g.scope),
                    Subject {
                        principal_id: g.principal_id,
                        role_id: g.role_id,
                        scope: g.scope,
                    },
                    std::slice::from_ref(&e.id),
                    figures,
                )
                .await?;
            }
            Some(EventType::UnmanagedGrantCleared) => {
                let g: ev::UnmanagedGrantCleared = decode(e)?;
                let why = if g.reason == "managed" {
                    "an assignment in PIM explains the grant now"
                } else {
                    "the system no longer reports the grant"
                };
                self.clear(
                    txn,
                    &unmanaged_key(&g.system, &g.principal_id, &g.role_id, &g.scope),
                    why,
                )
                .await?;
            }
            Some(EventType::RoleDefinitionCreated) => {
                let r: ev::RoleDefinitionCreated = decode(e)?;
                store::upsert_custom_role(txn, &r.role_id, r.privileged).await?;
            }
            Some(EventType::RoleDefinitionUpdated) => {
                let r: ev::RoleDefinitionUpdated = decode(e)?;
                store::upsert_custom_role(txn, &r.role_id, r.privileged).await?;
                self.role_weakened(txn, e, &r).await?;
            }
            Some(EventType::RoleDefinitionDeleted) => {
                let r: ev::RoleDefinitionDeleted = decode(e)?;
                store::forget_custom_role(txn, &r.role_id).await?;
            }
            Some(EventType::PolicyUpdated) => {
                let p: ev::PolicyUpdated = decode(e)?;
                if p.weakened {
                    self.policy_weakened(txn, e, &p).await?;
                }
                let key = format!("no_mfa:{}:{}", p.role_id, p.scope);
                if !p.activation_requires_mfa && privileged(txn, &p.role_id, &p.scope, self.now()).await? {
                    let subject = Subject {
                        role_id: p.role_id,
                        scope: p.scope,
                        ..Subject::default()
                    };
                    self.raise(
                        txn,
                        rules::ACTIVATION_WITHOUT_MFA,
                        &key,
                        subject,
                        std::slice::from_ref(&e.id),
                        BTreeMap::new(),
                    )
                    .await?;
                } else {
                    self.clear(txn, &key, "activation requires MFA again").await?;
                }
            }
            Some(EventType::ApprovalCreated) => {
                let a: ev::ApprovalCreated = decode(e)?;
                store::approval_created(txn, &a.approval_id, at).await?;
            }
            Some(EventType::ApprovalDecisionRecorded) => {
                let d: ev::ApprovalDecisionRecorded = decode(e)?;
                let Some(created) = store::approval_created_at(txn, &d.approval_id).await? else {
                    return Ok(());
                };
                let s = self.settings(txn, rules::RUBBER_STAMP).await?;
                let took_ms = at - created;
                // A bot (a service principal the policy names as approver) decides in
                // milliseconds by design, by the rule it was given: not a rubber stamp.
                let by_bot = d
                    .actor
                    .as_ref()
                    .is_some_and(|a| a.kind == pim_proto::common::v1::PrincipalKind::ServicePrincipal as i32);
                if d.typed_decision() == Decision::Approve && !by_bot && took_ms <= s.get("seconds") * 1000 {
                    let approver = d.actor.map(|a| a.principal_id).unwrap_or_default();
                    let figures = BTreeMap::from([
                        ("decided_after_ms".to_owned(), took_ms.to_string()),
                        ("requester_id".to_owned(), d.requester_id.clone()),
                    ]);
                    // One alert per approver of the approval: each names whose decision it was.
                    self.raise(
                        txn,
                        rules::RUBBER_STAMP,
                        &format!("rubber_stamp:{}:{approver}", d.approval_id),
                        Subject {
                            principal_id: approver.clone(),
                            role_id: d.role_id,
                            scope: d.scope,
                        },
                        std::slice::from_ref(&e.id),
                        figures,
                    )
                    .await?;
                }
            }
            Some(EventType::EventRejected) => self.forged(txn, decode(e)?).await?,
            Some(EventType::WebhookDeadLettered) => self.webhook_given_up(txn, decode(e)?).await?,
            Some(EventType::WebhookSubscriptionCreated) => {
                let s: ev::WebhookSubscriptionCreated = decode(e)?;
                let events = match s.event_types.is_empty() {
                    true => "every event".to_owned(),
                    false => s.event_types.join(","),
                };
                let figures = BTreeMap::from([
                    ("subscription_id".to_owned(), s.subscription_id.clone()),
                    ("url".to_owned(), s.url.clone()),
                    ("events".to_owned(), events),
                ]);
                self.raise(
                    txn,
                    rules::WEBHOOK_SUBSCRIBED,
                    &format!("webhook_subscribed:{}", s.subscription_id),
                    Subject {
                        principal_id: s.actor.map(|a| a.principal_id).unwrap_or_default(),
                        role_id: String::new(),
                        scope: "/".into(),
                    },
                    std::slice::from_ref(&e.id),
                    figures,
                )
                .await?;
            }
            Some(EventType::SelfApprovalAttempted) => {
                let d: ev::ApprovalDecisionRecorded = decode(e)?;
                let figures = BTreeMap::from([("approval_id".to_owned(), d.approval_id.clone())]);
                self.raise(
                    txn,
                    rules::SELF_APPROVAL,
                    &format!("self_approval:{}", d.approval_id),
                    Subject {
                        principal_id: d.requester_id,
                        role_id: d.role_id,
                        scope: d.scope,
                    },
                    std::slice::from_ref(&e.id),
                    figures,
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// One alert per weakening update: who changed which settings of which role, each
    /// setting's value before and after (every change, the weakening ones marked).
    pub(super) async fn policy_weakened(
        &self,
        txn: &DatabaseTransaction,
        e: &Envelope,
        p: &ev::PolicyUpdated,
    ) -> Result<()> {
        let mut figures: BTreeMap<String, String> = p
            .changes
            .iter()
            .map(|c| {
                let mark = if c.weakens { " (weaker)" } else { "" };
                (c.setting.clone(), format!("{} -> {}{mark}", c.before, c.after))
            })
            .collect();
        let weakened: Vec<&str> = p
            .changes
            .iter()
            .filter(|c| c.weakens)
            .map(|c| c.setting.as_str())
            .collect();
        figures.insert("weakened".into(), weakened.join(","));
        let subject = Subject {
            principal_id: p.actor.as_ref().map(|a| a.principal_id.clone()).unwrap_or_default(),
            role_id: p.role_id.clone(),
            scope: p.scope.clone(),
        };
        let severity = privileged(txn, &p.role_id, &p.scope, self.now())
            .await?
            .then_some(Severity::High);
        self.raise_weakened(txn, e, subject, figures, severity).await
    }

    /// One `policy_weakened` alert per change (keyed by its event).
    pub(super) async fn raise_weakened(
        &self,
        txn: &DatabaseTransaction,
        e: &Envelope,
        subject: Subject,
        figures: BTreeMap<String, String>,
        severity: Option<Severity>,
    ) -> Result<()> {
        let key = format!("policy_weakened:{}", e.id);
        self.raise_as(
            txn,
            rules::POLICY_WEAKENED,
            &key,
            subject,
            std::slice::from_ref(&e.id),
            figures,
            severity,
        )
        .await
    }

    /// A privileged custom role that gained permissions, or stopped being privileged, lowers
    /// protection as a weakened policy does: the same alert, with what changed.
    pub(super) async fn role_weakened(
        &self,
        txn: &DatabaseTransaction,
        e: &Envelope,
        r: &ev::RoleDefinitionUpdated,
    ) -> Result<()> {
        let gained = (r.privileged || r.was_privileged) && !r.permissions_added.is_empty();
        let unmarked = r.was_privileged && !r.privileged;
        if !gained && !unmarked {
            return Ok(());
        }
        let mut figures = BTreeMap::new();
        let mut weakened = Vec::new();
        if gained {
            figures.insert("permissions_added".to_owned(), r.permissions_added.join(" "));
            weakened.push("permissions");
        }
        if unmarked {
            figures.insert("privileged".to_owned(), "on -> off (weaker)".to_owned());
            weakened.push("privileged");
        }
        figures.insert("weakened".to_owned(), weakened.join(","));
        let subject = Subject {
            principal_id: r.actor.as_ref().map(|a| a.principal_id.clone()).unwrap_or_default(),
            role_id: r.role_id.clone(),
            scope: "/".to_owned(),
        };
        self.raise_weakened(txn, e, subject, figures, Some(Severity::High))
            .await
    }

    /// MFA failures of a privileged account within the window, or a lockout; `rejudged`: on
    /// no new failure, the account having turned privileged.
    pub(super) async fn check_mfa_failures(
        &self,
        txn: &DatabaseTransaction,
        principal_id: &str,
        at: i64,
        locked: bool,
        rejudged: bool,
    ) -> Result<()> {
        let s = self.settings(txn, rules::MFA_FAILURES).await?;
        let failures = store::mfa_failures_since(txn, principal_id, at - s.get("window_minutes") * 60_000).await?;
        if locked || failures.len() as i64 >= s.get("count") {
            let figures = BTreeMap::from([
                ("failures".to_owned(), failures.len().to_string()),
                ("locked_out".to_owned(), locked.to_string()),
            ]);
            let subject = Subject {
                principal_id: principal_id.into(),
                ..Subject::default()
            };
            let key = format!("mfa_failures:{principal_id}");
            // Judged again when the account turns privileged: the same failures are no news.
            if !(rejudged && self.nothing_new(txn, &key, &failures).await?) {
                self.raise(txn, rules::MFA_FAILURES, &key, subject, &failures, figures)
                    .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn break_glass_used(
        &self,
        txn: &DatabaseTransaction,
        principal_id: &str,
        name: &str,
        event_id: &str,
    ) -> Result<()> {
        let figures = BTreeMap::from([("user_name".to_owned(), name.to_owned())]);
        self.raise(
            txn,
            rules::BREAK_GLASS_USED,
            &format!("break_glass:{principal_id}"),
            Subject {
                principal_id: principal_id.into(),
                role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.into(),
                scope: "/".into(),
            },
            &[event_id.to_owned()],
            figures,
        )
        .await
    }

    /// A member (or owner) added in the directory to a group that holds a privileged role.
    async fn outside_pim(
        &self,
        txn: &DatabaseTransaction,
        group_id: &str,
        principal_id: &str,
        owner: bool,
        event_id: &str,
    ) -> Result<()> {
        let figures = BTreeMap::from([("group_id".to_owned(), group_id.to_owned())]);
        let subject = Subject {
            principal_id: principal_id.to_owned(),
            role_id: if owner { pim_proto::catalogue::GROUP_OWNER } else { "" }.to_owned(),
            scope: pim_proto::catalogue::group_scope(group_id),
        };
        self.raise(
            txn,
            rules::GROUP_MEMBER_OUTSIDE_PIM,
            &link_key(group_id, principal_id, owner),
            subject,
            &[event_id.to_owned()],
            figures,
        )
        .await
    }

    /// Entra's two-condition rule: at least N Global Administrators, and at least P % of the
    /// active privileged assignments. Resolves itself when either no longer holds.
    pub(super) async fn check_global_admins(&self, txn: &DatabaseTransaction, event_id: &str) -> Result<()> {
        let s = self.settings(txn, rules::TOO_MANY_GLOBAL_ADMINS).await?;
        self.judge_global_admins(txn, event_id, &s).await
    }

    /// The Global Administrator count judged under settings `s`.
    pub(super) async fn judge_global_admins(
        &self,
        txn: &DatabaseTransaction,
        event_id: &str,
        s: &Settings,
    ) -> Result<()> {
        let (admins, total) = store::holder_counts(txn, pim_proto::catalogue::GLOBAL_ADMINISTRATOR, self.now()).await?;
        let key = "too_many_global_admins";
        // A re-judgement after a settings change has no event behind it.
        let evidence: Vec<String> = (!event_id.is_empty())
            .then(|| event_id.to_owned())
            .into_iter()
            .collect();
        if admins >= s.get("min_count") && admins * 100 >= s.get("min_percent") * total.max(1) {
            let figures = BTreeMap::from([
                ("global_admins".to_owned(), admins.to_string()),
                ("privileged_assignments".to_owned(), total.to_string()),
            ]);
            let subject = Subject {
                role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.into(),
                scope: "/".into(),
                ..Subject::default()
            };
            self.raise(txn, rules::TOO_MANY_GLOBAL_ADMINS, key, subject, &evidence, figures)
                .await
        } else {
            self.clear(txn, key, "the Global Administrator count is back under the threshold")
                .await
        }
    }

    /// Entry `entry_id` of `pim.deadletter`: some service could not process event `e`. Every
    /// replica reads the entry; the first to take it raises (or counts) the alert.
    pub async fn dead_lettered(&self, entry_id: &str, e: &Envelope) -> Result<()> {
        let txn = self.db.begin().await?;
        if !store::first_sight_of_dead_letter(&txn, entry_id, self.now()).await? {
            return Ok(());
        }
        let figures = BTreeMap::from([
            ("event_type".to_owned(), e.r#type.clone()),
            ("source".to_owned(), e.source.clone()),
        ]);
        let subject = Subject {
            principal_id: e.subject.clone(),
            ..Subject::default()
        };
        self.raise(
            &txn,
            rules::DEAD_LETTERED,
            &format!("dead_letter:{}", e.id),
            subject,
            std::slice::from_ref(&e.id),
            figures,
        )
        .await?;
        txn.commit().await?;
        self.committed();
        Ok(())
    }

    /// Audit recorded an entry of `stream` that its owner did not sign: one live alert per
    /// stream, counting the entries, with each refusal's id as evidence. The entry's claims
    /// (subject, type) are figures, never the alert's subject.
    pub(super) async fn forged(&self, txn: &DatabaseTransaction, r: ev::EventRejected) -> Result<()> {
        let figures = BTreeMap::from([
            ("stream".to_owned(), r.stream.clone()),
            ("entry_id".to_owned(), r.entry_id),
            ("reason".to_owned(), r.reason),
            ("claimed_type".to_owned(), r.claimed_type),
            ("claimed_subject".to_owned(), r.claimed_subject),
        ]);
        self.raise(
            txn,
            rules::FORGED_EVENT,
            &format!("forged_event:{}", r.stream),
            Subject::default(),
            &[r.refusal_id],
            figures,
        )
        .await
    }

    /// Audit gave up a webhook delivery: one live alert per subscription, counting them.
    pub(super) async fn webhook_given_up(&self, txn: &DatabaseTransaction, d: ev::WebhookDeadLettered) -> Result<()> {
        let figures = BTreeMap::from([
            ("subscription_id".to_owned(), d.subscription_id.clone()),
            ("url".to_owned(), d.url),
            ("event_type".to_owned(), d.event_type),
            ("attempts".to_owned(), d.attempts.to_string()),
            ("abandoned".to_owned(), d.abandoned.to_string()),
            ("last_error".to_owned(), d.last_error),
        ]);
        self.raise(
            txn,
            rules::WEBHOOK_DEAD_LETTERED,
            &format!("webhook_dead_lettered:{}", d.subscription_id),
            Subject::default(),
            &[d.event_id],
            figures,
        )
        .await
    }
}

/// The one live `unmanaged_grant` alert of a grant a system reports.
fn unmanaged_key(system: &str, principal_id: &str, role_id: &str, scope: &str) -> String {
    format!("unmanaged:{system}:{principal_id}:{role_id}:{scope}")
}

/// The dedup key of a directory member's (or owner's) alert about a group.
fn link_key(group_id: &str, principal_id: &str, owner: bool) -> String {
    let kind = if owner { "group_owner" } else { "group_member" };
    format!("{kind}:{group_id}:{principal_id}")
}
