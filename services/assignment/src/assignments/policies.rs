//! Role (and group access) policies: the one in force at a scope, reading them, and safe
//! updates (field mask, etag, approvers that exist).

use super::*;
use crate::roles::{group_of_scope, is_group_access};
use pim_runtime::events::EventType;

/// The policy in force at the last of `scopes` (ordered from `/` down), given the role's
/// policies `set` at any of them: the nearest one set, with its scope, else the defaults.
pub(super) fn nearest_policy(set: &[(String, String)], scopes: &[String]) -> Result<(Policy, Option<String>)> {
    for candidate in scopes.iter().rev() {
        if let Some((_, json)) = set.iter().find(|(s, _)| s == candidate) {
            let policy = serde_json::from_str(json)
                .map_err(|e| Error::Internal(anyhow::anyhow!("stored policy is unreadable: {e}")))?;
            return Ok((policy, Some(candidate.clone())));
        }
    }
    Ok((Policy::default(), None))
}

/// Every approver a policy names: of its single stage and of each stage, escalation included.
pub(super) fn policy_approvers(p: &Policy) -> impl Iterator<Item = &String> {
    p.approver_ids.iter().chain(
        p.approval_stages
            .iter()
            .flat_map(|s| s.approver_ids.iter().chain(&s.escalation_approver_ids)),
    )
}

/// A role's policy as clients read it: in force at `scope`, with its etag.
pub struct PolicyAt {
    pub role_id: String,
    pub scope: String,
    pub policy: Policy,
    pub etag: String,
    /// Where the policy in force was set: `scope` itself, an ancestor it is inherited from,
    /// or empty for the defaults.
    pub set_at: String,
}

impl PolicyAt {
    /// `policy`, in force at `scope` and set at `set_at` (`None`: the defaults).
    pub(super) fn new(role_id: String, scope: &str, policy: Policy, set_at: Option<&str>) -> Self {
        Self {
            etag: policy_edits::etag(&policy, set_at),
            role_id,
            scope: scope.to_owned(),
            policy,
            set_at: set_at.unwrap_or_default().to_owned(),
        }
    }
}

/// Times an update without an etag is merged again after losing a race.
pub(super) const MAX_POLICY_ATTEMPTS: usize = 5;

/// What an UpdateRolePolicy asks: the `settings` its mask names, their values in `asked`,
/// and the version it was read at (`etag`), if it names one.
pub struct PolicyUpdate {
    pub asked: Policy,
    pub settings: Vec<Setting>,
    pub etag: Option<String>,
    /// Checked as it would be made, and nothing changed.
    pub validate_only: bool,
}

impl Assignments {
    /// The policy in force for (role, scope): the one set at the nearest scope at or above,
    /// else Entra's defaults (see [`nearest_policy`]).
    pub async fn effective_policy<C: ConnectionTrait>(
        &self,
        conn: &C,
        role_id: &str,
        scope: &Scope,
    ) -> Result<(Policy, Option<String>)> {
        // One read for the scope and all above it.
        let scopes = scope.with_ancestors();
        let set = store::policies_at(conn, role_id, &scopes).await?;
        nearest_policy(&set, &scopes)
    }

    /// The policy in force at (role, scope), with its etag.
    pub async fn get_policy(&self, role: &str, scope: &str) -> Result<PolicyAt> {
        let (role, scope) = self.role_at(role, scope)?;
        let (policy, set_at) = self.effective_policy(&self.db, &role.id, &scope).await?;
        Ok(PolicyAt::new(role.id, scope.as_str(), policy, set_at.as_deref()))
    }

    /// The privileged access (role, scope) whose policy asks for approval and names
    /// `principal_id` among its approvers, escalation included: whoever holds that principal's
    /// credentials would approve it, so identity protects them.
    pub async fn access_approved_by(
        &self,
        caller: &Caller,
        principal_id: &str,
    ) -> Result<Vec<(store::RoleRow, Scope)>> {
        let mut approved = Vec::new();
        for (role, scope, json) in store::every_policy(&self.db).await? {
            let policy: Policy = serde_json::from_str(&json).map_err(|e| Error::Internal(e.into()))?;
            if !policy.approval_required || !policy_approvers(&policy).any(|id| id == principal_id) {
                continue;
            }
            // A role deleted since governs nothing any more.
            let (Some(role), Ok(scope)) = (self.roles.find(&role), Scope::parse(&scope)) else {
                continue;
            };
            // Nor does one of access to a group deleted since.
            match self.confers_privilege(caller, &role, &scope).await {
                Ok(true) => approved.push((role, scope)),
                Ok(false) | Err(Error::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(approved)
    }

    /// Every policy set for a role, by scope.
    pub async fn policies_set(&self, role: &str) -> Result<Vec<PolicyAt>> {
        let role = self.role(role)?;
        let mut set = Vec::new();
        for (scope, json) in store::policies(&self.db, &role.id).await? {
            let policy = serde_json::from_str(&json).map_err(|e| Error::Internal(e.into()))?;
            set.push(PolicyAt::new(role.id.clone(), &scope, policy, Some(&scope)));
        }
        Ok(set)
    }

    /// Applies `update` to the role's policy at `scope`: the settings it names take its
    /// values, the others keep those in force there (set at that scope, inherited from above,
    /// or the defaults). With an etag, only onto the version it names (else ABORTED). The
    /// write is conditional on what was read, so two updates never lose one another.
    pub async fn update_policy(
        &self,
        caller: &Caller,
        role: &str,
        scope: &str,
        update: PolicyUpdate,
    ) -> Result<PolicyAt> {
        let (role, scope) = self.role_at(role, scope)?;
        self.authorize(caller, permissions::POLICIES_MANAGE, &scope).await?;
        // A policy of access to a group the directory does not hold would govern nothing.
        let group = match group_of_scope(scope.as_str()).filter(|_| is_group_access(&role.id)) {
            Some(group) => Some(self.group(caller, group).await?),
            None => None,
        };
        let privileged = role.privileged || group.is_some_and(|g| g.is_assignable_to_role);
        let scopes = scope.with_ancestors();
        // Without an etag the caller asked for no particular version: an update that lost a
        // race is merged again onto the newer one.
        for _ in 0..MAX_POLICY_ATTEMPTS {
            let set = store::policies_at(&self.db, &role.id, &scopes).await?;
            let (before, set_at) = nearest_policy(&set, &scopes)?;
            let current = policy_edits::etag(&before, set_at.as_deref());
            if let Some(asked) = update
                .etag
                .as_deref()
                .filter(|e| !policy_edits::etag_matches(e, &current))
            {
                return Err(Error::Aborted(format!(
                    "the policy changed since it was read (etag {asked}, now {current}); read it again and reapply the change"
                )));
            }
            let after = policy_edits::merged(&before, &update.asked, &update.settings)?;
            after.validate()?;
            let changes = policy_edits::changes(&before, &after);
            if let Some(weaker) = changes.iter().find(|c| c.weakens) {
                self.may_weaken(caller, &role, &scope, weaker).await?;
            }
            // An update that changes who approves must leave only approvers who exist and are
            // enabled, new or kept; one that leaves them as they are does not weigh them, so a
            // disabled approver never blocks an unrelated change (the portal sends the
            // approvers with every save).
            let named = |p: &Policy| -> std::collections::BTreeSet<String> { policy_approvers(p).cloned().collect() };
            if named(&after) != named(&before) {
                let approvers = self
                    .approvers_exist(caller, &named(&after).into_iter().collect::<Vec<_>>())
                    .await?;
                if privileged {
                    let open: Vec<String> = approvers
                        .iter()
                        .filter(|p| p.kind == PrincipalKind::Group && !p.is_assignable_to_role)
                        .map(|p| format!("{:?}", p.name))
                        .collect();
                    if let Some(why) = pim_proto::catalogue::groups_unfit_to_decide_privilege("approvers", &open) {
                        return Err(Error::invalid("approver_ids", why));
                    }
                }
            }
            // Weighed when the stages change, as the approvers are: a group deleted since never
            // blocks an unrelated change.
            if after.approval_stages != before.approval_stages {
                for (n, stage) in after.stages_outnumbering_approvers() {
                    if !self.names_a_group(caller, &stage.approver_ids).await? {
                        return Err(stage.outnumbered(n));
                    }
                }
            }
            if update.validate_only {
                return Ok(PolicyAt::new(role.id, scope.as_str(), after, Some(scope.as_str())));
            }
            let event = ev::PolicyUpdated {
                actor: Some(caller.actor()),
                role_id: role.id.clone(),
                scope: scope.as_str().into(),
                activation_requires_mfa: after.activation_requires_mfa,
                approval_required: after.approval_required,
                weakened: changes.iter().any(|c| c.weakens),
                changes: changes
                    .into_iter()
                    .map(|c| ev::PolicySettingChange {
                        setting: c.setting.name().into(),
                        before: c.before,
                        after: c.after,
                        weakens: c.weakens,
                    })
                    .collect(),
            };
            let json = serde_json::to_string(&after).map_err(|e| Error::Internal(e.into()))?;
            let read = set
                .iter()
                .find(|(s, _)| s == scope.as_str())
                .map(|(_, json)| json.as_str());
            let txn = self.db.begin().await?;
            if !store::replace_policy(
                &txn,
                &role.id,
                scope.as_str(),
                read,
                &json,
                &caller.principal_id,
                self.now(),
            )
            .await?
            {
                txn.rollback().await?;
                if update.etag.is_some() {
                    return Err(Error::Aborted(
                        "the policy changed since it was read; read it again and reapply the change".into(),
                    ));
                }
                continue;
            }
            self.emit(&txn, EventType::PolicyUpdated, &role.id, &event).await?;
            txn.commit().await?;
            self.committed(&[]);
            return Ok(PolicyAt::new(role.id, scope.as_str(), after, Some(scope.as_str())));
        }
        Err(Error::Aborted(
            "the policy kept changing while this update was applied; try again".into(),
        ))
    }

    /// Refuses a change that lowers a role's protection at `scope` (`weaker`, the first such
    /// setting) unless `caller` may assign the role there directly (pim.assignments.manage, or
    /// a group's ownership for access to it), and so gains nothing by it. Whoever may only
    /// edit policies tightens them: else they would switch off the approval or MFA of a role
    /// they are eligible for, or make their own second account its approver, and activate it.
    async fn may_weaken(
        &self,
        caller: &Caller,
        role: &store::RoleRow,
        scope: &Scope,
        weaker: &policy_edits::Change,
    ) -> Result<()> {
        // Nobody grants themselves access to a group: nor do they lower its policy while they
        // may activate it, or hold it.
        if is_group_access(&role.id) && group_of_scope(scope.as_str()).is_some() {
            let mut holders = vec![caller.principal_id.clone()];
            holders.extend(self.memberships.groups_of(&caller.principal_id));
            let (eligible, active) =
                store::eligibilities_and_activations(&self.db, &caller.principal_id, &holders, self.now()).await?;
            if (eligible.iter().chain(&active)).any(|a| a.role_id == role.id && a.scope == scope.as_str()) {
                return Err(Error::PermissionDenied(format!(
                    "{} {} → {} lowers the protection of {} at {}, which you may activate or hold yourself: \
                     another owner or administrator does",
                    weaker.setting.name(),
                    weaker.before,
                    weaker.after,
                    role.name,
                    scope.as_str()
                )));
            }
        }
        match self.authorize_assignments(caller, role, scope, None).await {
            Err(Error::PermissionDenied(_)) => Err(Error::PermissionDenied(format!(
                "{} {} → {} lowers the protection of {} at {at}, which only whoever may assign it there may do \
                 ({} at {at}); you may tighten its policy",
                weaker.setting.name(),
                weaker.before,
                weaker.after,
                role.name,
                permissions::ASSIGNMENTS_MANAGE,
                at = scope.as_str(),
            ))),
            other => other,
        }
    }

    /// Whether the directory names a group among `ids` (its members may approve); an id it
    /// does not know, or holds disabled, approves nothing.
    pub(super) async fn names_a_group(&self, caller: &Caller, ids: &[String]) -> Result<bool> {
        for id in ids.iter().filter(|id| uuid::Uuid::parse_str(id).is_ok()) {
            match self.principal(caller, id).await {
                Ok(p) if p.kind == PrincipalKind::Group => return Ok(true),
                Ok(_) | Err(Error::NotFound(_) | Error::FailedPrecondition(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(false)
    }

    /// Whether access to `role` at `scope` is privileged: a privileged role, or access to a
    /// role-assignable group.
    pub(super) async fn confers_privilege(
        &self,
        caller: &Caller,
        role: &store::RoleRow,
        scope: &Scope,
    ) -> Result<bool> {
        if role.privileged {
            return Ok(true);
        }
        match group_of_scope(scope.as_str()).filter(|_| is_group_access(&role.id)) {
            Some(group) => Ok(self.group(caller, group).await?.is_assignable_to_role),
            None => Ok(false),
        }
    }

    /// How many of `ids` the directory still holds enabled, to decide, counting up to
    /// `enough` (a group counts as enough: its members may make up the number; for
    /// `privileged` access, only a role-assignable group decides at all).
    pub(super) async fn still_deciding(
        &self,
        caller: &Caller,
        ids: &[String],
        enough: usize,
        privileged: bool,
    ) -> Result<usize> {
        let mut found = 0;
        for id in ids.iter().filter(|id| uuid::Uuid::parse_str(id).is_ok()) {
            match self.principal(caller, id).await {
                Ok(p) if p.kind == PrincipalKind::Group && privileged && !p.is_assignable_to_role => {}
                Ok(p) if p.kind == PrincipalKind::Group => return Ok(enough),
                Ok(_) => found += 1,
                Err(Error::NotFound(_) | Error::FailedPrecondition(_)) => {}
                Err(err) => return Err(err),
            }
            if found >= enough {
                break;
            }
        }
        Ok(found)
    }

    /// Refuses approvers the directory does not hold, or holds disabled: an approval waiting
    /// for them would only time out. Those it holds, as it holds them.
    pub(super) async fn approvers_exist(&self, caller: &Caller, named: &[String]) -> Result<Vec<Principal>> {
        let (mut found, mut unknown, mut disabled) = (Vec::new(), Vec::new(), Vec::new());
        for id in named {
            if uuid::Uuid::parse_str(id).is_err() {
                unknown.push(id.as_str());
                continue;
            }
            match self.principal(caller, id).await {
                Ok(p) => found.push(p),
                Err(Error::NotFound(_)) => unknown.push(id.as_str()),
                Err(Error::FailedPrecondition(_)) => disabled.push(id.as_str()),
                Err(err) => return Err(err),
            }
        }
        if !unknown.is_empty() {
            return Err(Error::invalid(
                "approver_ids",
                format!(
                    "no principal has the id {} (approvers are named by id)",
                    unknown.join(", ")
                ),
            ));
        }
        if !disabled.is_empty() {
            return Err(Error::invalid(
                "approver_ids",
                format!("{} is disabled and could not decide", disabled.join(", ")),
            ));
        }
        Ok(found)
    }
}
