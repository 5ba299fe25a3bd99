//! Clients of the other services identity asks (on the caller's behalf).

use tonic::transport::Channel;

use pim_proto::approval::v1::ListPrivilegedDecisionsOfRequest;
use pim_proto::approval::v1::access_review_service_client::AccessReviewServiceClient;
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_runtime::access::on_behalf_of;
use pim_runtime::auth::Caller;

use crate::error::{Error, Result};

/// Assignment's or approval's answer to "who is privileged?", in identity's words: a refusal
/// stays one; any other failure means the answer is unknown, so the change waits.
fn unavailable(status: tonic::Status) -> Error {
    if status.code() == tonic::Code::Unimplemented {
        return Error::Unavailable(
            "a service identity asks does not know this question yet: upgrade assignment and approval before identity"
                .into(),
        );
    }
    match Error::from(status) {
        refused @ (Error::PermissionDenied(_) | Error::Unauthenticated(_)) => refused,
        _ => Error::Unavailable("cannot tell whether the user is privileged; try again".into()),
    }
}

/// The approval service, for the privileged question: who is named to decide privileged access.
#[derive(Clone)]
pub struct ApprovalClient(AccessReviewServiceClient<Channel>);

impl ApprovalClient {
    pub fn new(channel: Channel) -> Self {
        Self(AccessReviewServiceClient::new(channel))
    }

    /// What privileged access `principal_id` is named to decide while it is open (pending
    /// approvals, access reviews not over), each as a person reads it.
    pub async fn privileged_decisions_of(&self, caller: &Caller, principal_id: &str) -> Result<Vec<String>> {
        let asked = ListPrivilegedDecisionsOfRequest {
            principal_id: principal_id.to_owned(),
        };
        Ok(self
            .0
            .clone()
            .list_privileged_decisions_of(on_behalf_of(caller, asked)?)
            .await
            .map_err(unavailable)?
            .into_inner()
            .decisions)
    }
}

/// Clients of the assignment service, for the privileged question.
#[derive(Clone)]
pub struct AssignmentClients {
    pub assignments: AssignmentServiceClient<Channel>,
    pub roles: RoleServiceClient<Channel>,
    pub policies: PolicyServiceClient<Channel>,
}

impl AssignmentClients {
    pub fn new(channel: Channel) -> Self {
        Self {
            assignments: AssignmentServiceClient::new(channel.clone()),
            roles: RoleServiceClient::new(channel.clone()),
            policies: PolicyServiceClient::new(channel),
        }
    }

    /// The ids of the privileged roles (built-in and custom).
    pub async fn privileged_roles(&self, caller: &Caller) -> Result<Vec<String>> {
        let roles = self
            .roles
            .clone()
            .list_role_definitions(on_behalf_of(caller, apb::ListRoleDefinitionsRequest {})?)
            .await
            .map_err(unavailable)?;
        Ok(roles
            .into_inner()
            .roles
            .into_iter()
            .filter(|r| r.privileged)
            .map(|r| r.id)
            .collect())
    }

    /// The users who hold a permanent active Global Administrator assignment at `/` directly
    /// (the ones the last-Global-Administrator protection counts), by id.
    pub async fn permanent_global_admins(&self, caller: &Caller) -> Result<Vec<String>> {
        use pim_proto::common::v1::PrincipalKind;
        let ask = apb::ListAssignmentsRequest {
            role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.to_owned(),
            scope: "/".to_owned(),
            ..Default::default()
        };
        let now = pim_runtime::db::now_ms();
        Ok(self
            .active(caller, ask)
            .await?
            .into_iter()
            .filter(|a| {
                a.scope == "/"
                    && a.end_time.is_none()
                    && a.principal_kind == PrincipalKind::User as i32
                    && a.member_type != apb::MemberType::Group as i32
                    && a.start_time
                        .as_ref()
                        .is_none_or(|t| pim_runtime::db::from_timestamp(t) <= now)
            })
            .map(|a| a.principal_id)
            .collect())
    }

    /// Asks assignment, before a user is disabled, whether that leaves an enabled permanent
    /// Global Administrator (`false`: the protection refuses); when it does, assignment counts
    /// the user as disabled from then on.
    pub async fn prepare_user_disable(&self, caller: &Caller, user_id: &str) -> Result<bool> {
        // No later than the time this disable's event will carry (stamped when written, after
        // this answer), so that event, and whatever identity tells next, outranks it.
        let asked = apb::PrepareUserDisableRequest {
            user_id: user_id.to_owned(),
            as_of: Some(pim_runtime::db::to_timestamp(pim_runtime::db::now_ms())),
        };
        match self
            .assignments
            .clone()
            .prepare_user_disable(on_behalf_of(caller, asked)?)
            .await
        {
            Ok(_) => Ok(true),
            Err(status)
                if pim_runtime::grpc::violated_rules(&status)
                    .iter()
                    .any(|r| r == pim_runtime::grpc::LAST_GLOBAL_ADMINISTRATOR_RULE) =>
            {
                Ok(false)
            }
            Err(status) if status.code() == tonic::Code::Aborted => {
                Err(Error::Unavailable(format!("{}; try again", status.message())))
            }
            Err(status) => Err(match Error::from(status) {
                refused @ (Error::PermissionDenied(_) | Error::Unauthenticated(_)) => refused,
                _ => Error::Unavailable(
                    "cannot tell whether disabling the user leaves an enabled Global Administrator; try again".into(),
                ),
            }),
        }
    }

    /// The privileged access a policy asking for approval names `principal_id` to approve
    /// (escalation included), as assignment reads its policies: (role name, scope).
    pub async fn approves(&self, caller: &Caller, principal_id: &str) -> Result<Vec<(String, String)>> {
        let asked = apb::ListAccessApprovedByRequest {
            principal_id: principal_id.to_owned(),
        };
        let approved = self
            .policies
            .clone()
            .list_access_approved_by(on_behalf_of(caller, asked)?)
            .await
            .map_err(unavailable)?
            .into_inner()
            .access;
        Ok(approved.into_iter().map(|a| (a.role_name, a.scope)).collect())
    }

    /// Gives assignment a committed, signed identity event to apply now (`ApplyDirectoryEvent`).
    pub async fn apply_directory_event(&self, caller: &Caller, envelope: &pim_runtime::events::Envelope) -> Result<()> {
        use prost::Message;
        let asked = apb::ApplyDirectoryEventRequest {
            envelope: envelope.encode_to_vec(),
        };
        self.assignments
            .clone()
            .apply_directory_event(on_behalf_of(caller, asked)?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Tells assignment of a disable committed as of `as_of` (its event's time), to apply now.
    pub async fn apply_principal_disabled(&self, caller: &Caller, principal_id: &str, as_of: i64) -> Result<()> {
        let asked = apb::ApplyPrincipalDisabledRequest {
            principal_id: principal_id.to_owned(),
            as_of: Some(pim_runtime::db::to_timestamp(as_of)),
        };
        self.assignments
            .clone()
            .apply_principal_disabled(on_behalf_of(caller, asked)?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The roles a principal is eligible for or holds, directly or through a group, each with
    /// its scope.
    pub async fn roles_of(&self, caller: &Caller, principal_id: &str) -> Result<Vec<(String, String)>> {
        // Access scheduled to start is counted already: whoever took the credentials now
        // would hold it when it starts.
        let ask = apb::ListAssignmentsRequest {
            principal_id: principal_id.to_owned(),
            include_scheduled: true,
            ..Default::default()
        };
        let eligible = self.listed(caller, false, &ask).await?;
        Ok(eligible
            .into_iter()
            .chain(self.active(caller, ask).await?)
            .map(|a| (a.role_id, a.scope))
            .collect())
    }

    pub async fn active(&self, caller: &Caller, ask: apb::ListAssignmentsRequest) -> Result<Vec<apb::Assignment>> {
        self.listed(caller, true, &ask).await
    }

    async fn listed(
        &self,
        caller: &Caller,
        active: bool,
        ask: &apb::ListAssignmentsRequest,
    ) -> Result<Vec<apb::Assignment>> {
        pim_runtime::access::assignments_listed(&self.assignments, caller, active, ask)
            .await
            .map_err(unavailable)
    }
}
