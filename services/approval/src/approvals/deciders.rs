//! Who decides an approval and who reads it: the approvers a stage names (through groups
//! too), the default approvers (a group's owners first, then active Privileged Role and
//! Global Administrators), the requester never.

use pim_proto::catalogue;
use pim_runtime::access::{Target, permissions, require};
use pim_runtime::auth::Caller;
use pim_runtime::error::Result;

use pim_proto::common::v1::PrincipalKind;

use super::{Approvals, GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR};
use crate::domain::ApprovalStatus;
use crate::store::{ApprovalRow, DecisionRow};

/// What one request learned about its caller from other services, each asked at most once
/// however many approvals the request weighs: the caller's groups, whether they are an active
/// Privileged Role or Global Administrator, which groups they own.
#[derive(Default)]
pub struct Asked {
    /// The caller's groups, each with whether it is role-assignable.
    groups: Option<std::collections::HashMap<String, bool>>,
    /// The groups the caller may be in through PIM (eligible or active membership or ownership).
    pub(crate) pim_groups: Option<std::collections::HashSet<String>>,
    /// Whether access to (role, scope) is privileged.
    privileged: std::collections::HashMap<(String, String), bool>,
    administrator: Option<bool>,
    owned: std::collections::HashMap<String, bool>,
}

impl Approvals {
    /// Whether `caller` may decide the current stage of `approval` now. The requester never
    /// may; service principals only where the policy names them.
    pub async fn may_decide(&self, caller: &Caller, approval: &ApprovalRow, asked: &mut Asked) -> Result<bool> {
        if approval.is_own(&caller.principal_id) || approval.status != ApprovalStatus::Pending {
            return Ok(false);
        }
        let stage = approval.current_stage();
        let escalated = approval.escalates_at().is_some_and(|at| at <= self.now());
        let named: Vec<&String> = stage
            .approver_ids
            .iter()
            .chain(stage.escalation_approver_ids.iter().filter(|_| escalated))
            .collect();
        if named.iter().any(|id| **id == caller.principal_id) {
            return Ok(true);
        }
        if caller.kind != PrincipalKind::User {
            return Ok(false);
        }
        if self
            .decides_through_a_group(caller, &named, &approval.role_id, &approval.scope, asked)
            .await?
        {
            return Ok(true);
        }
        if stage.approver_ids.is_empty() {
            return self.is_default_approver(caller, approval, asked).await;
        }
        Ok(false)
    }

    /// The caller's groups, each with whether it is role-assignable: asked of identity once
    /// per request.
    pub(crate) async fn caller_groups<'a>(
        &self,
        caller: &Caller,
        asked: &'a mut Asked,
    ) -> Result<&'a std::collections::HashMap<String, bool>> {
        let groups = match asked.groups.take() {
            Some(groups) => groups,
            None => self.services.groups_of(caller).await?,
        };
        Ok(asked.groups.insert(groups))
    }

    /// Whether the caller (a user) decides access to (role, scope) as a member of one of the
    /// groups among `named`. Privileged access is decided through a role-assignable group
    /// only: any other group's members are managed by Groups and User Administrators (a policy
    /// set before that rule, or a role made privileged since, may still name one). Approvals
    /// and reviews both weigh it here.
    pub(crate) async fn decides_through_a_group(
        &self,
        caller: &Caller,
        named: &[&String],
        role_id: &str,
        scope: &str,
        asked: &mut Asked,
    ) -> Result<bool> {
        if named.is_empty() {
            return Ok(false);
        }
        let groups = self.caller_groups(caller, asked).await?;
        let through: Vec<bool> = named.iter().filter_map(|id| groups.get(id.as_str()).copied()).collect();
        Ok(through.contains(&true)
            || (!through.is_empty() && !self.privileged_access(caller, role_id, scope, asked).await?))
    }

    /// Whether access to (role, scope) is privileged, asked once per request.
    pub(crate) async fn privileged_access(
        &self,
        caller: &Caller,
        role_id: &str,
        scope: &str,
        asked: &mut Asked,
    ) -> Result<bool> {
        let key = (role_id.to_owned(), scope.to_owned());
        if let Some(privileged) = asked.privileged.get(&key) {
            return Ok(*privileged);
        }
        let privileged = self.services.is_privileged_access(caller, role_id, scope).await?;
        asked.privileged.insert(key, privileged);
        Ok(privileged)
    }

    /// Default approvers: whoever is active Privileged Role Administrator or Global
    /// Administrator when deciding (asked of assignment); for access to a group (PIM for
    /// Groups), the group's owners first.
    /// Each answer is asked once per request (`asked`), however many approvals it weighs.
    pub(crate) async fn is_default_approver(
        &self,
        caller: &Caller,
        approval: &ApprovalRow,
        asked: &mut Asked,
    ) -> Result<bool> {
        if let Some(group) =
            catalogue::group_of_scope(&approval.scope).filter(|_| catalogue::is_group_access(&approval.role_id))
        {
            let owns = match asked.owned.get(group) {
                Some(owns) => *owns,
                None => {
                    let owns = self.owns(caller, group).await?;
                    asked.owned.insert(group.to_owned(), owns);
                    owns
                }
            };
            if owns {
                return Ok(true);
            }
        }
        if let Some(administrator) = asked.administrator {
            return Ok(administrator);
        }
        let mut administrator = false;
        for role in [PRIVILEGED_ROLE_ADMINISTRATOR, GLOBAL_ADMINISTRATOR] {
            let d = self
                .access
                .check(caller, &caller.principal_id, &Target::Role(role.to_owned()), "/")
                .await?;
            if d.allowed {
                administrator = true;
                break;
            }
        }
        asked.administrator = Some(administrator);
        Ok(administrator)
    }

    /// Whether `caller` owns the group: through an active Group Owner assignment (asked of
    /// assignment), or permanently (asked of identity, which shows a group's owners to them).
    pub(crate) async fn owns(&self, caller: &Caller, group_id: &str) -> Result<bool> {
        let active = self
            .access
            .check(
                caller,
                &caller.principal_id,
                &Target::Role(catalogue::GROUP_OWNER.to_owned()),
                &catalogue::group_scope(group_id),
            )
            .await?;
        if active.allowed {
            return Ok(true);
        }
        self.services.directly_owns(caller, group_id).await
    }

    /// Whether `caller` may see `approval`: its requester, anyone who decided it or may
    /// decide it, and approval managers.
    pub(crate) async fn may_read(
        &self,
        caller: &Caller,
        approval: &ApprovalRow,
        decisions: &[DecisionRow],
    ) -> Result<bool> {
        if approval.is_own(&caller.principal_id) || decisions.iter().any(|d| d.approver_id == caller.principal_id) {
            return Ok(true);
        }
        if self.may_decide(caller, approval, &mut Asked::default()).await? {
            return Ok(true);
        }
        Ok(
            require(self.access.as_ref(), caller, permissions::APPROVALS_MANAGE, "/")
                .await
                .is_ok(),
        )
    }
}
