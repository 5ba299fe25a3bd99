//! What pages look up to show names rather than ids, and to turn names people type into ids:
//! principals, roles, users by name. One call per name, per page.

use std::collections::HashMap;

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

use crate::view::short;
use crate::web::{Caller, Failure};

/// Principal names, looked up once per page; an id the caller may not look up stays an id.
pub struct Names(HashMap<String, String>);

impl Names {
    pub async fn of(caller: &Caller, ids: Vec<String>) -> Self {
        let mut names = HashMap::new();
        for id in &ids {
            if id.is_empty() || names.contains_key(id) {
                continue;
            }
            let name = DirectoryServiceClient::new(caller.portal.0.upstreams.identity.clone())
                .get_principal(caller.request(ipb::GetPrincipalRequest {
                    principal_id: id.clone(),
                }))
                .await
                .ok()
                .map(|p| p.into_inner())
                .map(|p| {
                    if p.user_name.is_empty() {
                        p.display_name
                    } else {
                        p.user_name
                    }
                });
            names.insert(id.clone(), name.unwrap_or_else(|| short(id).to_owned()));
        }
        Self(names)
    }

    pub fn get<'a>(&'a self, id: &'a str) -> &'a str {
        self.0.get(id).map(String::as_str).unwrap_or(id)
    }
}

/// Every role definition, built-in and custom.
pub async fn role_list(caller: &Caller) -> Result<Vec<apb::RoleDefinition>, Failure> {
    Ok(RoleServiceClient::new(caller.portal.0.upstreams.assignment.clone())
        .list_role_definitions(caller.request(apb::ListRoleDefinitionsRequest {}))
        .await?
        .into_inner()
        .roles)
}

/// Role id → name, for requests (which carry ids only).
pub async fn role_names(caller: &Caller) -> Result<HashMap<String, String>, Failure> {
    Ok(role_list(caller).await?.into_iter().map(|r| (r.id, r.name)).collect())
}

/// Every assignment `ask` lists (each page), eligible ones or (`active`) active ones.
pub async fn assignments(
    caller: &Caller,
    active: bool,
    ask: apb::ListAssignmentsRequest,
) -> Result<Vec<apb::Assignment>, Failure> {
    let client = AssignmentServiceClient::new(caller.portal.0.upstreams.assignment.clone());
    pim_runtime::grpc::all_pages(|page_token| {
        let mut client = client.clone();
        let asked = caller.request(apb::ListAssignmentsRequest {
            page_token,
            ..ask.clone()
        });
        async move {
            let page = if active {
                client.list_active_assignments(asked).await
            } else {
                client.list_eligible_assignments(asked).await
            }?
            .into_inner();
            Ok::<_, Failure>((page.assignments, page.next_page_token))
        }
    })
    .await
}

pub fn directory(caller: &Caller) -> DirectoryServiceClient<tonic::transport::Channel> {
    DirectoryServiceClient::new(caller.portal.0.upstreams.identity.clone())
}

/// The user a form names (by user name or id), or why there is none.
pub async fn user_named(caller: &Caller, reference: &str) -> Result<ipb::User, Failure> {
    let reference = reference.trim();
    directory(caller)
        .get_user(caller.request(ipb::GetUserRequest {
            user: reference.to_owned(),
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => {
                Failure::Refused(http::StatusCode::NOT_FOUND, format!("no user is named {reference:?}"))
            }
            _ => Failure::from(status),
        })
}
