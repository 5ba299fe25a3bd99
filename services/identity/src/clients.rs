//! Clients of the other services identity asks (on the caller's behalf).

use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use tonic::transport::Channel;

/// Clients of the assignment service, for the privileged question.
#[derive(Clone)]
pub struct AssignmentClients {
    pub assignments: AssignmentServiceClient<Channel>,
    pub roles: RoleServiceClient<Channel>,
}

impl AssignmentClients {
    pub fn new(channel: Channel) -> Self {
        Self {
            assignments: AssignmentServiceClient::new(channel.clone()),
            roles: RoleServiceClient::new(channel),
        }
    }
}
