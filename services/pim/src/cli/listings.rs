//! Every item of the directory's paged listings, for the commands that need them all.

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

use super::{Session, explain};

const PAGE: i32 = 500;

/// Every user whose user name or display name contains `filter` (empty: all).
pub(crate) async fn users(session: &Session, filter: &str) -> anyhow::Result<Vec<ipb::User>> {
    let directory = DirectoryServiceClient::new(session.channel.clone());
    all_pages(|page_token| {
        let mut directory = directory.clone();
        let request = session.request(ipb::ListUsersRequest {
            page_size: PAGE,
            page_token,
            filter: filter.to_owned(),
        });
        async move {
            let page = directory.list_users(request?).await.map_err(explain)?.into_inner();
            Ok((page.users, page.next_page_token))
        }
    })
    .await
}

/// Every group.
pub(crate) async fn groups(session: &Session) -> anyhow::Result<Vec<ipb::Group>> {
    let directory = DirectoryServiceClient::new(session.channel.clone());
    all_pages(|page_token| {
        let mut directory = directory.clone();
        let request = session.request(ipb::ListGroupsRequest {
            page_size: PAGE,
            page_token,
        });
        async move {
            let page = directory.list_groups(request?).await.map_err(explain)?.into_inner();
            Ok((page.groups, page.next_page_token))
        }
    })
    .await
}

/// Every service principal whose display name contains `filter` (empty: all).
pub(crate) async fn service_principals(session: &Session, filter: &str) -> anyhow::Result<Vec<ipb::ServicePrincipal>> {
    let directory = DirectoryServiceClient::new(session.channel.clone());
    all_pages(|page_token| {
        let mut directory = directory.clone();
        let request = session.request(ipb::ListServicePrincipalsRequest {
            page_size: PAGE,
            page_token,
            filter: filter.to_owned(),
        });
        async move {
            let page = directory
                .list_service_principals(request?)
                .await
                .map_err(explain)?
                .into_inner();
            Ok((page.service_principals, page.next_page_token))
        }
    })
    .await
}

/// Every assignment `ask` lists, eligible ones or (`active`) active ones.
pub(crate) async fn assignments(
    session: &Session,
    active: bool,
    ask: &apb::ListAssignmentsRequest,
) -> anyhow::Result<Vec<apb::Assignment>> {
    let client = AssignmentServiceClient::new(session.channel.clone());
    all_pages(|page_token| {
        let mut client = client.clone();
        let request = session.request(apb::ListAssignmentsRequest {
            page_size: PAGE,
            page_token,
            ..ask.clone()
        });
        async move {
            let page = if active {
                client.list_active_assignments(request?).await
            } else {
                client.list_eligible_assignments(request?).await
            }
            .map_err(explain)?
            .into_inner();
            Ok((page.assignments, page.next_page_token))
        }
    })
    .await
}

/// Every item of a paged listing ([`pim_runtime::grpc::all_pages`], failing as the CLI does).
pub(crate) async fn all_pages<T, F, Fut>(page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    pim_runtime::grpc::all_pages(page).await
}

/// A group's members (or, `owners`, its owners), each with how (added, assigned or
/// activated through PIM) and until when.
pub(crate) async fn members(session: &Session, group_id: &str, owners: bool) -> anyhow::Result<Vec<ipb::GroupLink>> {
    let directory = DirectoryServiceClient::new(session.channel.clone());
    all_pages(|page_token| {
        let mut directory = directory.clone();
        let request = session.request(ipb::ListGroupMembersRequest {
            group_id: group_id.to_owned(),
            page_size: PAGE,
            page_token,
            direct_only: false,
        });
        async move {
            let page = if owners {
                directory.list_group_owners(request?).await
            } else {
                directory.list_group_members(request?).await
            }
            .map_err(explain)?
            .into_inner();
            Ok((page.links, page.next_page_token))
        }
    })
    .await
}
