//! PIM for Groups. Membership and ownership of a group ("group access") are assigned,
//! activated, approved, reviewed and timed exactly as roles are: they are the built-in roles
//! Group Member and Group Owner, held at the group's own scope `/groups/{group id}` and
//! nowhere else. What is theirs alone lives here: where they may be held, who manages them,
//! what an active membership gives (the group's roles, for as long as it lasts), and what
//! a group's deletion ends.

use std::collections::HashMap;

use super::*;
use crate::roles::{GROUP_MEMBER, group_of_scope, is_group_access};

/// Why only some may manage access to a role-assignable group.
const ROLE_ASSIGNABLE_REFUSAL: &str = "only the group's owners, Privileged Role Administrators and Global Administrators manage access to a role-assignable group";

impl Assignments {
    /// `role` (id or name) at `scope`, both checked: group access is held only at a group's
    /// scope, and a role never below `/groups`.
    pub(crate) fn role_at(&self, role: &str, scope: &str) -> Result<(store::RoleRow, Scope)> {
        let role = self.role(role)?;
        let scope = Scope::parse(scope)?;
        let group_scope = scope.as_str().starts_with("/groups/");
        match (is_group_access(&role.id), group_of_scope(scope.as_str())) {
            (true, None) => Err(Error::invalid(
                "scope",
                format!(
                    "{} is access to one group: its scope is /groups/{{group id}}",
                    role.name
                ),
            )),
            (false, _) if group_scope => Err(Error::invalid(
                "scope",
                format!(
                    "{} is a role; the scopes under /groups hold group access only (Group Member, Group Owner)",
                    role.name
                ),
            )),
            _ => Ok((role, scope)),
        }
    }

    /// Refuses unless the caller may assign, change or remove `role` at `scope`: holders of
    /// pim.assignments.manage there; for group access also the group's owners (permanent, or
    /// active through PIM) and, for a group that is not role-assignable, holders of
    /// pim.directory.groups.manage. Nobody grants themselves group access (`granting_to`:
    /// whom the call gives or lengthens access; a removal gives none).
    pub(crate) async fn authorize_assignments(
        &self,
        caller: &Caller,
        role: &store::RoleRow,
        scope: &Scope,
        granting_to: Option<&str>,
    ) -> Result<()> {
        let group_id = match group_of_scope(scope.as_str()) {
            Some(group) if is_group_access(&role.id) => group,
            _ => return self.authorize(caller, permissions::ASSIGNMENTS_MANAGE, scope).await,
        };
        if let Some(grantee) = granting_to {
            self.refuse_self_grant(caller, role, scope, grantee)?;
        }
        if self
            .authorize(caller, permissions::ASSIGNMENTS_MANAGE, scope)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let group = self.group(caller, group_id).await?;
        if self.owns(caller, group_id).await? {
            return Ok(());
        }
        if group.is_assignable_to_role {
            return Err(Error::PermissionDenied(ROLE_ASSIGNABLE_REFUSAL.into()));
        }
        self.authorize(caller, permissions::GROUPS_MANAGE, &Scope::root())
            .await
            .map_err(|_| {
                Error::PermissionDenied(
                    "requires the group's ownership, or permission pim.directory.groups.manage or pim.assignments.manage".into(),
                )
            })
    }

    /// [`Self::role_at`] for a new assignment or activation: nor is a role newly held at
    /// `/groups` itself, over every group. (One held there from before this rule can still be
    /// listed, extended, deactivated and removed.)
    pub(crate) fn role_to_grant_at(&self, role: &str, scope: &str) -> Result<(store::RoleRow, Scope)> {
        let (role, scope) = self.role_at(role, scope)?;
        if scope.as_str() == "/groups" {
            return Err(Error::invalid(
                "scope",
                format!(
                    "{} is a role; /groups and the scopes under it hold group access only",
                    role.name
                ),
            ));
        }
        Ok((role, scope))
    }

    /// Refuses group access the caller would give or lengthen to themselves.
    pub(crate) fn refuse_self_grant(
        &self,
        caller: &Caller,
        role: &store::RoleRow,
        scope: &Scope,
        grantee: &str,
    ) -> Result<()> {
        if grantee == caller.principal_id && is_group_access(&role.id) && group_of_scope(scope.as_str()).is_some() {
            return Err(Error::PermissionDenied(format!(
                "you may not assign yourself {} of a group; another owner or administrator does",
                role.name
            )));
        }
        Ok(())
    }

    /// Refuses unless the caller may list others' assignments of `role` at `scope`: readers of
    /// assignments; and for access to one group, also readers of the directory (membership is
    /// theirs to see) and the group's owners.
    pub(crate) async fn may_list(&self, caller: &Caller, role: Option<&str>, scope: Option<&Scope>) -> Result<()> {
        let refused = match self
            .authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
            .await
        {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        let group = scope.and_then(|s| group_of_scope(s.as_str()));
        let (Some(group), Some(true)) = (group, role.map(is_group_access)) else {
            return Err(refused);
        };
        if self
            .authorize(caller, permissions::USERS_READ, &Scope::root())
            .await
            .is_ok()
            || self.owns(caller, group).await?
        {
            return Ok(());
        }
        Err(refused)
    }

    /// The group `group_id` names, as the directory knows it.
    pub(super) async fn group(&self, caller: &Caller, group_id: &str) -> Result<crate::clients::Principal> {
        match self.principal(caller, group_id).await {
            Ok(p) if p.kind == PrincipalKind::Group => Ok(p),
            Ok(_) | Err(Error::NotFound(_)) => Err(Error::NotFound(format!("group {group_id}"))),
            Err(err) => Err(err),
        }
    }

    /// Whether the caller owns the group: permanently (the directory says so), or through an
    /// active Group Owner assignment.
    async fn owns(&self, caller: &Caller, group_id: &str) -> Result<bool> {
        let scope = Scope::parse(&crate::roles::group_scope(group_id))?;
        let (active, _) = self
            .decide(
                &caller.principal_id,
                &Target::Role(crate::roles::GROUP_OWNER.into()),
                &scope,
            )
            .await?;
        if active.allowed {
            return Ok(true);
        }
        self.identity.directly_owns(caller, group_id).await
    }

    /// A group was deleted (identity's `GroupDeleted`): every assignment it holds and every
    /// access to it ends now, live activations included, each with its event.
    pub(crate) async fn end_group(
        &self,
        txn: &DatabaseTransaction,
        group_id: &str,
        actor: Option<Actor>,
    ) -> Result<()> {
        let now = self.now();
        let scope = crate::roles::group_scope(group_id);
        let mut ended = Vec::new();
        for a in store::group_assignments(txn, group_id, &scope, true).await? {
            let role_name = self.roles.name(&a.role_id).unwrap_or_default();
            if self
                .end(txn, &a, "group deleted", actor.clone(), &role_name, now)
                .await?
            {
                ended.push(a);
            }
        }
        // Its access policies govern nothing any more.
        store::delete_policies_at(txn, &scope).await?;
        // Requests for access to it wait for nobody any more.
        for mut request in store::pending_requests_at(txn, &scope).await? {
            request.status = RequestStatus::Canceled;
            request.outcome_reason = "canceled: the group was deleted".into();
            self.transition(txn, &request, RequestStatus::PendingApproval, actor.clone(), now)
                .await?;
        }
        // Activations its members made from its eligibilities, or through a membership.
        let resting = self.resting_on(txn, &ended, now).await?;
        // Settled after the commit ([`Self::reindex_group`]).
        let _ = self.bound_to_eligibility(txn, resting, actor, now).await?;
        Ok(())
    }

    /// After [`Self::end_group`] committed: the access index drops what it ended, the
    /// activations that rested on the group included.
    pub(crate) async fn reindex_group(&self, group_id: &str) -> Result<()> {
        let scope = crate::roles::group_scope(group_id);
        let ended: Vec<AssignmentRow> = store::group_assignments(&self.db, group_id, &scope, false)
            .await?
            .into_iter()
            .filter(|a| a.status != "active")
            .collect();
        for a in &ended {
            self.index.remove(&a.principal_id, &a.id);
        }
        let resting = self.resting_on(&self.db, &ended, self.now()).await?;
        self.reindex_principals(&resting).await
    }

    /// After a review's removal (or an identity change) committed: the removed assignment and
    /// what rested on it are read back into the index.
    pub(crate) async fn index_removal(&self, assignment_id: &str) -> Result<()> {
        self.index_assignment(assignment_id).await?;
        if let Some(a) = store::find_assignment(&self.db, assignment_id).await? {
            let resting = self.resting_on(&self.db, &[a], self.now()).await?;
            self.reindex_principals(&resting).await?;
        }
        Ok(())
    }

    /// On a replica that learns of a group's deletion from the stream: waits until the
    /// database has the group's assignments ended (another replica's consumer may be at it),
    /// at most 5 s, then lets the index drop them.
    pub(crate) async fn follow_group_deletion(&self, group_id: &str) {
        let scope = crate::roles::group_scope(group_id);
        for _ in 0..50 {
            match store::group_assignments(&self.db, group_id, &scope, true).await {
                Ok(live) if live.is_empty() => break,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "reading a deleted group's assignments failed; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if let Err(err) = self.reindex_group(group_id).await {
            tracing::warn!(error = %err, "a deleted group's assignments could not be re-indexed");
        }
    }

    /// The groups whose members `principal` counts among now, each with when that ends
    /// (`None`: it does not): the role-assignable groups the directory has them in, and the
    /// groups they hold an active Group Member assignment of.
    pub(crate) fn groups_of(&self, principal: &str, now: i64) -> HashMap<String, Option<i64>> {
        let mut activated = Vec::new();
        self.index
            .visit(principal, now, |_, grant| activated.extend(membership(grant)));
        self.groups_with(principal, activated)
    }

    /// The role-assignable group whose eligibility the activation `a` rests on, where it is
    /// not its principal's own (as the database holds them at `now`).
    pub(crate) async fn eligible_through<C: ConnectionTrait>(
        &self,
        c: &C,
        a: &AssignmentRow,
        now: i64,
    ) -> Result<Option<String>> {
        let groups = self.groups_in(c, &a.principal_id, now).await?;
        let mut holders = vec![a.principal_id.clone()];
        holders.extend(groups.keys().cloned());
        let scopes = Scope::parse(&a.scope)?.with_ancestors();
        let (held, _) = store::activation_inputs(c, &holders, &a.role_id, &scopes, now).await?;
        Ok(longest_eligibility(&held, &groups, &a.role_id, &scopes, now)
            .map(|(e, _)| e.principal_id.clone())
            .filter(|holder| *holder != a.principal_id))
    }

    /// [`Self::groups_of`] as the database `c` holds it (read inside the transaction that
    /// changed it, before the memory follows).
    pub(crate) async fn groups_in<C: ConnectionTrait>(
        &self,
        c: &C,
        principal: &str,
        now: i64,
    ) -> Result<HashMap<String, Option<i64>>> {
        let mut groups = HashMap::new();
        for (group, end) in store::memberships_of(c, principal, GROUP_MEMBER, now).await? {
            let until = groups.entry(group).or_insert(end);
            *until = later(*until, end);
        }
        Ok(groups)
    }

    /// Whose activations may rest on the assignments `ended`: the holder of an eligibility or
    /// a just-in-time membership; and when a group holds the eligibility, the group's members.
    pub(crate) async fn resting_on<C: ConnectionTrait>(
        &self,
        c: &C,
        ended: &[AssignmentRow],
        now: i64,
    ) -> Result<Vec<String>> {
        let mut principals = Vec::new();
        for a in ended {
            if a.kind != Kind::Eligible && a.role_id != GROUP_MEMBER {
                continue;
            }
            principals.push(a.principal_id.clone());
            if a.kind == Kind::Eligible && a.principal_kind == "group" {
                let scope = crate::roles::group_scope(&a.principal_id);
                principals.extend(store::members_of(c, &a.principal_id, &scope, GROUP_MEMBER, now).await?);
            }
        }
        principals.sort();
        principals.dedup();
        Ok(principals)
    }

    /// [`Self::groups_of`], given the principal's memberships through Group Member grants
    /// (read by a caller that visits their grants anyway: CheckAccess).
    pub(crate) fn groups_with(
        &self,
        principal: &str,
        activated: impl IntoIterator<Item = (String, Option<i64>)>,
    ) -> HashMap<String, Option<i64>> {
        let mut groups: HashMap<String, Option<i64>> = self
            .memberships
            .groups_of(principal)
            .into_iter()
            .map(|g| (g, None))
            .collect();
        for (group, end) in activated {
            let until = groups.entry(group).or_insert(end);
            *until = later(*until, end);
        }
        groups
    }
}

/// The eligibility among `held` (a principal's own, and their `groups'`) that allows
/// activating `role_id` at the last of `scopes` (ordered from `/` down) for longest, and
/// until when: a group's lasts no longer than the membership; it must be at the scope or
/// above and started by `now`. `None`: nothing allows the activation.
pub(crate) fn longest_eligibility<'a>(
    held: &'a [AssignmentRow],
    groups: &HashMap<String, Option<i64>>,
    role_id: &str,
    scopes: &[String],
    now: i64,
) -> Option<(&'a AssignmentRow, Option<i64>)> {
    held.iter()
        .filter(|e| e.kind == Kind::Eligible && e.role_id == role_id && e.start_at <= now)
        .filter(|e| scopes.contains(&e.scope))
        .map(|e| match groups.get(&e.principal_id) {
            Some(member_until) => (e, earlier(e.end_at, *member_until)),
            None => (e, e.end_at),
        })
        .max_by_key(|(_, until)| until.unwrap_or(i64::MAX))
}

/// The membership an active grant is, if it is Group Member of a group: (group, end).
pub(crate) fn membership(grant: &crate::index::Grant) -> Option<(String, Option<i64>)> {
    (grant.role_id == GROUP_MEMBER)
        .then(|| group_of_scope(&grant.scope))
        .flatten()
        .map(|group| (group.to_owned(), grant.end))
}

/// The later of two ends, where `None` never comes.
pub(crate) fn later(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

/// The earlier of two ends, where `None` never comes.
pub(crate) fn earlier(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
