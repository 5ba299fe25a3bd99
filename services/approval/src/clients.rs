//! The services approval asks on a caller's behalf: identity (group memberships, direct
//! ownership) and assignment (role definitions). Their answers come back in approval's
//! words; their outages as UNAVAILABLE to retry, never as a decision.

use std::collections::{HashMap, HashSet};

use tonic::transport::Channel;

use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_proto::assignment::v1::{GetRoleDefinitionRequest, ListAssignmentsRequest};
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_proto::identity::v1::{GetPrincipalRequest, ListPrincipalGroupsRequest, Principal};
use pim_runtime::access::on_behalf_of;
use pim_runtime::auth::Caller;
use pim_runtime::error::{Error, Result};

#[derive(Clone)]
pub struct Services {
    identity: DirectoryServiceClient<Channel>,
    assignment: Channel,
}

impl Services {
    pub fn new(identity: Channel, assignment: Channel) -> Self {
        Self {
            identity: DirectoryServiceClient::new(identity),
            assignment,
        }
    }

    /// Whether the caller is a direct owner of the group (added as one, not through PIM).
    pub(crate) async fn directly_owns(&self, caller: &Caller, group_id: &str) -> Result<bool> {
        Ok(pim_runtime::access::directly_owns(&self.identity, caller, group_id).await?)
    }

    /// The groups `caller` is a member of, each with whether it is role-assignable.
    pub(crate) async fn groups_of(&self, caller: &Caller) -> Result<HashMap<String, bool>> {
        let request = on_behalf_of(
            caller,
            ListPrincipalGroupsRequest {
                principal_id: caller.principal_id.clone(),
            },
        )?;
        let groups = self
            .identity
            .clone()
            .list_principal_groups(request)
            .await
            .map_err(|s| {
                tracing::warn!(code = ?s.code(), "group lookup failed");
                Error::Unavailable("group membership is unavailable; try again".into())
            })?
            .into_inner()
            .groups;
        Ok(groups.into_iter().map(|g| (g.id, g.is_assignable_to_role)).collect())
    }

    /// The principal `id` (a user, a group or a service principal), where the directory holds
    /// it enabled.
    pub(crate) async fn enabled_principal(&self, caller: &Caller, id: &str) -> Result<Option<Principal>> {
        // The directory answers for disabled principals too: they decide nothing.
        Ok(self.principal(caller, id).await?.filter(|p| p.enabled))
    }

    /// The principal `id`, enabled or not, if the directory holds it.
    pub(crate) async fn principal(&self, caller: &Caller, id: &str) -> Result<Option<Principal>> {
        let request = on_behalf_of(
            caller,
            GetPrincipalRequest {
                principal_id: id.to_owned(),
            },
        )?;
        match self.identity.clone().get_principal(request).await {
            Ok(found) => Ok(Some(found.into_inner())),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => Ok(None),
            Err(s) => {
                tracing::warn!(code = ?s.code(), "principal lookup failed");
                Err(Error::Unavailable("the directory is unavailable; try again".into()))
            }
        }
    }

    /// Whether access to `role_id` at `scope` is privileged: a privileged role, or access to a
    /// role-assignable group. A role or group deleted since grants nothing to weigh: not.
    pub(crate) async fn is_privileged_access(&self, caller: &Caller, role_id: &str, scope: &str) -> Result<bool> {
        if let Some(group) =
            pim_proto::catalogue::group_of_scope(scope).filter(|_| pim_proto::catalogue::is_group_access(role_id))
        {
            return Ok(self
                .enabled_principal(caller, group)
                .await?
                .is_some_and(|g| g.is_assignable_to_role));
        }
        match self.role(caller, role_id).await {
            Ok((_, privileged)) => Ok(privileged),
            Err(Error::InvalidArgument { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The groups `caller` may be in through PIM: membership or ownership (an owner may add
    /// herself) they are eligible for or hold, scheduled ones included.
    pub(crate) async fn groups_through_pim(&self, caller: &Caller) -> Result<HashSet<String>> {
        let ask = ListAssignmentsRequest {
            principal_id: caller.principal_id.clone(),
            include_scheduled: true,
            ..Default::default()
        };
        let assignments = AssignmentServiceClient::new(self.assignment.clone());
        let listed = |active: bool| {
            let (assignments, ask) = (&assignments, &ask);
            async move {
                pim_runtime::access::assignments_listed(assignments, caller, active, ask)
                    .await
                    .map_err(|s| {
                        tracing::warn!(code = ?s.code(), "group access lookup failed");
                        Error::Unavailable("group access is unavailable; try again".into())
                    })
            }
        };
        let (eligible, active) = (listed(false).await?, listed(true).await?);
        Ok((eligible.into_iter())
            .chain(active)
            .filter(|a| pim_proto::catalogue::is_group_access(&a.role_id))
            .filter_map(|a| pim_proto::catalogue::group_of_scope(&a.scope).map(str::to_owned))
            .collect())
    }

    /// The id of a role given by name or id, and whether it is privileged; it must exist.
    pub(crate) async fn role(&self, caller: &Caller, role: &str) -> Result<(String, bool)> {
        let request = on_behalf_of(caller, GetRoleDefinitionRequest { role: role.to_owned() })?;
        match RoleServiceClient::new(self.assignment.clone())
            .get_role_definition(request)
            .await
        {
            Ok(found) => {
                let role = found.into_inner();
                Ok((role.id, role.privileged))
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                Err(Error::invalid("review.role_id", "no such role definition"))
            }
            Err(s) if s.code() == tonic::Code::InvalidArgument => Err(Error::invalid("review.role_id", s.message())),
            Err(s) => {
                tracing::warn!(code = ?s.code(), "role lookup for a review failed");
                Err(Error::Unavailable("role definitions are unavailable; try again".into()))
            }
        }
    }
}
