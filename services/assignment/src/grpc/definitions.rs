//! The role catalogue's and the policies' gRPC surface, and the offline check of a new policy.

use super::*;

#[tonic::async_trait]
impl RoleService for Assignments {
    async fn list_role_definitions(
        &self,
        request: Request<pb::ListRoleDefinitionsRequest>,
    ) -> Result<Response<pb::ListRoleDefinitionsResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(pb::ListRoleDefinitionsResponse {
            roles: self.roles.all().into_iter().map(role_to_pb).collect(),
        }))
    }

    async fn get_role_definition(
        &self,
        request: Request<pb::GetRoleDefinitionRequest>,
    ) -> Result<Response<pb::RoleDefinition>, Status> {
        caller(&request)?;
        let role = filter(&request.get_ref().role).ok_or_else(|| Error::invalid("role", "required"))?;
        let found = self
            .roles
            .find(role)
            .ok_or_else(|| Error::NotFound(format!("role {role}")))?;
        Ok(Response::new(role_to_pb(found)))
    }

    async fn create_role_definition(
        &self,
        request: Request<pb::CreateRoleDefinitionRequest>,
    ) -> Result<Response<pb::RoleDefinition>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let new = NewRole {
            name: r.name,
            description: r.description,
            permissions: r.permissions,
            privileged: r.privileged,
        };
        Ok(Response::new(role_to_pb(self.create_role(&caller, new).await?)))
    }

    async fn update_role_definition(
        &self,
        request: Request<pb::UpdateRoleDefinitionRequest>,
    ) -> Result<Response<pb::RoleDefinition>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let change = RoleChange {
            description: r.description,
            permissions: (!r.permissions.is_empty()).then_some(r.permissions),
            privileged: r.privileged,
        };
        Ok(Response::new(role_to_pb(
            self.update_role(&caller, &r.role, change).await?,
        )))
    }

    async fn delete_role_definition(
        &self,
        request: Request<pb::GetRoleDefinitionRequest>,
    ) -> Result<Response<pb::DeleteRoleDefinitionResponse>, Status> {
        let caller = caller(&request)?.clone();
        self.delete_role(&caller, &request.get_ref().role).await?;
        Ok(Response::new(pb::DeleteRoleDefinitionResponse {}))
    }
}

#[tonic::async_trait]
impl PolicyService for Assignments {
    /// The policy in force at (role, scope): set there or above, else Entra's defaults.
    async fn get_role_policy(
        &self,
        request: Request<pb::GetRolePolicyRequest>,
    ) -> Result<Response<pb::RolePolicy>, Status> {
        caller(&request)?;
        let r = request.into_inner();
        Ok(Response::new(policy_to_pb(
            self.get_policy(&r.role_id, &r.scope).await?,
        )))
    }

    async fn update_role_policy(
        &self,
        request: Request<pb::UpdateRolePolicyRequest>,
    ) -> Result<Response<pb::RolePolicy>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let p = r.policy.ok_or_else(|| Error::invalid("policy", "required"))?;
        let settings = Setting::from_mask(&r.update_mask.map(|m| m.paths).unwrap_or_default())?;
        let (role, scope) = (p.role_id.clone(), p.scope.clone());
        let etag = Some(p.etag.trim().to_owned()).filter(|e| !e.is_empty());
        let update = PolicyUpdate {
            asked: policy_from_pb(p)?,
            settings,
            etag,
            validate_only: r.validate_only,
        };
        Ok(Response::new(policy_to_pb(
            self.update_policy(&caller, &role, &scope, update).await?,
        )))
    }

    /// The policies set for a role, by scope (scopes without one use the nearest above, or the defaults).
    async fn list_role_policies(
        &self,
        request: Request<pb::ListRolePoliciesRequest>,
    ) -> Result<Response<pb::ListRolePoliciesResponse>, Status> {
        caller(&request)?;
        let set = self.policies_set(&request.get_ref().role_id).await?;
        Ok(Response::new(pb::ListRolePoliciesResponse {
            policies: set.into_iter().map(policy_to_pb).collect(),
        }))
    }

    async fn list_access_approved_by(
        &self,
        request: Request<pb::ListAccessApprovedByRequest>,
    ) -> Result<Response<pb::ListAccessApprovedByResponse>, Status> {
        let caller = caller(&request)?.clone();
        let principal = request.get_ref().principal_id.trim();
        if uuid::Uuid::parse_str(principal).is_err() {
            return Err(Error::invalid("principal_id", "a principal id (UUID)").into());
        }
        let approved = self.access_approved_by(&caller, principal).await?;
        Ok(Response::new(pb::ListAccessApprovedByResponse {
            access: approved
                .into_iter()
                .map(|(role, scope)| pb::list_access_approved_by_response::Access {
                    role_id: role.id,
                    role_name: role.name,
                    scope: scope.as_str().to_owned(),
                })
                .collect(),
        }))
    }
}

/// Checks the settings `mask` names in `asked` as `UpdateRolePolicy` would over the defaults
/// (ranges, stages), without a database, `is_group` telling which approvers are groups:
/// `pim plan` checks the policies of roles and groups its file creates with it, which the
/// server cannot dry-run yet.
pub fn check_new_policy(asked: pb::RolePolicy, mask: &[String], is_group: &dyn Fn(&str) -> bool) -> Result<(), Status> {
    let settings = Setting::from_mask(mask)?;
    let asked = policy_from_pb(asked)?;
    let policy = crate::policy_edits::merged(&crate::domain::Policy::default(), &asked, &settings)?;
    policy.validate()?;
    for (n, stage) in policy.stages_outnumbering_approvers() {
        if !stage.approver_ids.iter().any(|id| is_group(id)) {
            return Err(stage.outnumbered(n).into());
        }
    }
    Ok(())
}
