//! The identity service's gRPC surface; the only module here that knows tonic and prost.
//! Handlers take the request, check its shape, call the directory and map the answer.

use tonic::{Request, Response, Status};

use pim_proto::identity::v1 as pb;
use pim_proto::identity::v1::auth_service_server::AuthService;
use pim_proto::identity::v1::directory_service_server::DirectoryService;
use pim_proto::identity::v1::mfa_service_server::MfaService;
use pim_runtime::auth::caller;
use pim_runtime::consistency::{ConsistencyToken, answer};
use pim_runtime::db::to_timestamp;
use pim_runtime::events::streams;
use pim_runtime::grpc::{filter_value, invalid_argument, next_page};

use crate::directory::{ClientInfo, Directory, NewUser, Session};
use crate::groups::NewGroup;
use crate::store::{GroupRow, Link, UserRow};

mod auth;
mod mfa;

const DEFAULT_PAGE: i32 = 50;
const MAX_PAGE: i32 = 500;
const MAX_NEW_OWNERS: usize = 100;
/// How long a write that changes access waits for its events to leave before it answers.
const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

fn user_to_pb(u: UserRow) -> pb::User {
    pb::User {
        id: u.id,
        user_name: u.user_name,
        display_name: u.display_name,
        email: u.email,
        enabled: u.enabled,
        created_at: Some(to_timestamp(u.created_at)),
        last_sign_in_at: u.last_sign_in_at.map(to_timestamp),
    }
}

fn session_to_pb(s: Session) -> pb::SignInResponse {
    pb::SignInResponse {
        access_token: s.issued.token,
        expires_at: Some(to_timestamp(s.issued.expires_at)),
        refresh_token: s.refresh_token,
        principal_id: s.principal_id,
        amr: s.amr,
        mfa_pending: s.pending == Some(pim_runtime::auth::Pending::Mfa),
        enrollment_required: s.pending == Some(pim_runtime::auth::Pending::Enrollment),
        recovery_codes_left: s.recovery_codes_left,
    }
}

fn pass_to_pb(p: crate::store::EnrollmentPassRow) -> pb::EnrollmentPass {
    pb::EnrollmentPass {
        id: p.id,
        user_id: p.user_id,
        created_by: p.created_by,
        created_at: Some(to_timestamp(p.created_at)),
        expires_at: Some(to_timestamp(p.expires_at)),
        uses_left: p.uses_left,
    }
}

/// A document a call needs (a passkey's credential as JSON, of any layout): trimmed, at most
/// 64 KiB, without NUL (no database keeps it as text); its parser refuses the rest.
fn required_document<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Status> {
    let value = value.trim();
    match value {
        "" => Err(invalid_argument(field, "required")),
        v if v.len() > 64 * 1024 => Err(invalid_argument(field, "must be at most 64 KiB")),
        v if v.contains('\0') => Err(invalid_argument(field, "must not contain NUL characters")),
        v => Ok(v),
    }
}

/// A name or an id a call needs: trimmed, and one line without control characters (no
/// database keeps a NUL as text, and what is tried is recorded: a failed sign-in's name is
/// shown in the audit log, where an escape sequence must not forge a line).
fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Status> {
    let value = pim_runtime::text::one_line(value, 1024).map_err(|why| invalid_argument(field, &why))?;
    if value.is_empty() {
        return Err(invalid_argument(field, "required"));
    }
    Ok(value)
}

fn page_size(requested: i32) -> Result<u64, Status> {
    pim_runtime::grpc::page_size(requested, DEFAULT_PAGE as u64, MAX_PAGE as u64)
}

#[tonic::async_trait]
impl DirectoryService for Directory {
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let new = NewUser {
            user_name: r.user_name,
            display_name: r.display_name,
            email: r.email,
            password: r.password,
        };
        let user = Directory::create_user(self, &caller, new).await?;
        Ok(Response::new(user_to_pb(user)))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&request)?.clone();
        let user = required("user", &request.get_ref().user)?;
        self.aim(user).await;
        Ok(Response::new(user_to_pb(
            Directory::get_user(self, &caller, user).await?,
        )))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let limit = page_size(r.page_size)?;
        let filter = filter_value("filter", &r.filter)?;
        let after = filter_value("page_token", &r.page_token)?;
        let users = Directory::list_users(self, &caller, filter, after, limit + 1).await?;
        let (users, next_page_token) = next_page(users, limit, |u| u.user_name.clone());
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(user_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn list_service_principals(
        &self,
        request: Request<pb::ListServicePrincipalsRequest>,
    ) -> Result<Response<pb::ListServicePrincipalsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let limit = page_size(r.page_size)?;
        let filter = filter_value("filter", &r.filter)?;
        let after = filter_value("page_token", &r.page_token)?;
        let found = Directory::list_service_principals(self, &caller, filter, after, limit + 1).await?;
        let (found, next_page_token) = next_page(found, limit, |sp| sp.id.clone());
        Ok(Response::new(pb::ListServicePrincipalsResponse {
            service_principals: found.into_iter().map(sp_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn create_service_principal(
        &self,
        request: Request<pb::CreateServicePrincipalRequest>,
    ) -> Result<Response<pb::CreateServicePrincipalResponse>, Status> {
        let caller = caller(&request)?.clone();
        let (sp, secret) = Directory::create_service_principal(self, &caller, &request.get_ref().display_name).await?;
        Ok(Response::new(pb::CreateServicePrincipalResponse {
            service_principal: Some(sp_to_pb(sp)),
            client_secret: secret,
        }))
    }

    async fn create_group(&self, request: Request<pb::CreateGroupRequest>) -> Result<Response<pb::Group>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        // As Entra: a group starts with at most 100 owners (more are added one by one).
        if r.owner_ids.len() > MAX_NEW_OWNERS {
            return Err(invalid_argument(
                "owner_ids",
                &format!("at most {MAX_NEW_OWNERS} owners at creation"),
            ));
        }
        let owner_ids = r
            .owner_ids
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| required("owner_ids", o).map(str::to_owned))
            .collect::<Result<_, _>>()?;
        let new = NewGroup {
            display_name: r.display_name,
            description: r.description,
            is_assignable_to_role: r.is_assignable_to_role,
            owner_ids,
        };
        Ok(Response::new(group_to_pb(
            Directory::create_group(self, &caller, new).await?,
        )))
    }

    async fn update_group(&self, request: Request<pb::UpdateGroupRequest>) -> Result<Response<pb::Group>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let id = required("group_id", &r.group_id)?;
        let updated = Directory::update_group(
            self,
            &caller,
            id,
            &r.display_name,
            &r.description,
            r.is_assignable_to_role,
        )
        .await?;
        Ok(Response::new(group_to_pb(updated)))
    }

    async fn get_group(&self, request: Request<pb::GetGroupRequest>) -> Result<Response<pb::Group>, Status> {
        let caller = caller(&request)?.clone();
        let id = required("group_id", &request.get_ref().group_id)?;
        Ok(Response::new(group_to_pb(
            Directory::get_group(self, &caller, id).await?,
        )))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let limit = page_size(r.page_size)?;
        let after = filter_value("page_token", &r.page_token)?;
        let groups = Directory::list_groups(self, &caller, after, limit + 1).await?;
        let (groups, next_page_token) = next_page(groups, limit, |g| g.id.clone());
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.into_iter().map(group_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let caller = caller(&request)?.clone();
        let group = required("group_id", &request.get_ref().group_id)?;
        Directory::delete_group(self, &caller, group).await?;
        let token = self.settled().await;
        Ok(answer(
            pb::DeleteGroupResponse {
                consistency_token: pim_runtime::consistency::field(token.as_ref()),
            },
            token.as_ref(),
        ))
    }

    async fn add_group_member(
        &self,
        request: Request<pb::GroupMembershipRequest>,
    ) -> Result<Response<pb::GroupMembershipResponse>, Status> {
        self.link(request, Link::Member, true).await
    }

    async fn remove_group_member(
        &self,
        request: Request<pb::GroupMembershipRequest>,
    ) -> Result<Response<pb::GroupMembershipResponse>, Status> {
        self.link(request, Link::Member, false).await
    }

    async fn add_group_owner(
        &self,
        request: Request<pb::GroupMembershipRequest>,
    ) -> Result<Response<pb::GroupMembershipResponse>, Status> {
        self.link(request, Link::Owner, true).await
    }

    async fn remove_group_owner(
        &self,
        request: Request<pb::GroupMembershipRequest>,
    ) -> Result<Response<pb::GroupMembershipResponse>, Status> {
        self.link(request, Link::Owner, false).await
    }

    async fn list_group_members(
        &self,
        request: Request<pb::ListGroupMembersRequest>,
    ) -> Result<Response<pb::ListGroupMembersResponse>, Status> {
        self.linked(request, Link::Member).await
    }

    async fn list_group_owners(
        &self,
        request: Request<pb::ListGroupMembersRequest>,
    ) -> Result<Response<pb::ListGroupMembersResponse>, Status> {
        self.linked(request, Link::Owner).await
    }

    async fn list_principal_groups(
        &self,
        request: Request<pb::ListPrincipalGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let principal = required("principal_id", &request.get_ref().principal_id)?;
        let groups = Directory::principal_groups(self, &caller, principal).await?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.into_iter().map(group_to_pb).collect(),
            next_page_token: String::new(),
        }))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let user = required("user", &r.user)?;
        self.aim(user).await;
        Directory::reset_password(self, &caller, user, &r.new_password).await?;
        // The sessions it ended stop working before it answers.
        let token = self.settled().await;
        Ok(answer(pb::ResetPasswordResponse {}, token.as_ref()))
    }

    async fn update_user(&self, request: Request<pb::UpdateUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let user = required("user", &r.user)?;
        self.aim(user).await;
        Ok(Response::new(user_to_pb(
            Directory::update_user(self, &caller, user, &r.display_name, &r.email).await?,
        )))
    }

    async fn delete_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = caller(&request)?.clone();
        let user = required("user", &request.get_ref().user)?;
        self.aim(user).await;
        Directory::delete_user(self, &caller, user).await?;
        let token = self.settled().await;
        Ok(answer(pb::DeleteUserResponse {}, token.as_ref()))
    }

    async fn rotate_service_principal_secret(
        &self,
        request: Request<pb::RotateServicePrincipalSecretRequest>,
    ) -> Result<Response<pb::CreateServicePrincipalResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let id = required("service_principal_id", &r.service_principal_id)?;
        let keep = match &r.keep_previous_for {
            Some(d) => {
                pim_runtime::db::checked_duration(d).map_err(|why| invalid_argument("keep_previous_for", why))?
            }
            None => std::time::Duration::ZERO,
        };
        self.aim(id).await;
        let (sp, secret) = Directory::rotate_service_principal_secret(self, &caller, id, keep).await?;
        Ok(Response::new(pb::CreateServicePrincipalResponse {
            service_principal: Some(sp_to_pb(sp)),
            client_secret: secret,
        }))
    }

    async fn disable_service_principal(
        &self,
        request: Request<pb::GetServicePrincipalRequest>,
    ) -> Result<Response<pb::ServicePrincipal>, Status> {
        let caller = caller(&request)?.clone();
        let id = required("service_principal_id", &request.get_ref().service_principal_id)?;
        self.aim(id).await;
        let disabled = Directory::disable_service_principal(self, &caller, id).await?;
        let token = self.settled().await;
        Ok(answer(sp_to_pb(disabled), token.as_ref()))
    }

    async fn disable_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&request)?.clone();
        let user = required("user", &request.get_ref().user)?;
        self.aim(user).await;
        let disabled = self.set_enabled(&caller, user, false).await?;
        let token = self.settled().await;
        Ok(answer(user_to_pb(disabled), token.as_ref()))
    }

    async fn enable_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&request)?.clone();
        let user = required("user", &request.get_ref().user)?;
        self.aim(user).await;
        Ok(Response::new(user_to_pb(self.set_enabled(&caller, user, true).await?)))
    }

    async fn get_principal(
        &self,
        request: Request<pb::GetPrincipalRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let caller = caller(&request)?.clone();
        let id = required("principal_id", &request.get_ref().principal_id)?;
        self.aim(id).await;
        Ok(Response::new(Directory::resolve_principal(self, &caller, id).await?))
    }
}

impl Directory {
    /// Names the principal a call is aimed at, by id (a user's name as the id it names; a
    /// name that names nobody, nothing: it could be anything typed), so a refusal of the call
    /// is recorded against them (`pim_runtime::auth::aimed_at`).
    async fn aim(&self, id_or_name: &str) {
        let given = id_or_name.trim();
        if uuid::Uuid::parse_str(given).is_ok() {
            return pim_runtime::auth::aimed_at(given);
        }
        if let Ok(Some(user)) = crate::store::find_user(&self.db, given).await {
            pim_runtime::auth::aimed_at(&user.id);
        }
    }

    /// After a write that changes access: answers once its events left (in one process: once
    /// every consumer applied them, so the next CheckAccess already knows), with the token a
    /// reader on another replica waits for.
    async fn settled(&self) -> Option<ConsistencyToken> {
        self.outbox
            .settled(&self.db, pim_runtime::db::now_ms(), streams::IDENTITY, SETTLE_WITHIN)
            .await
    }

    async fn link(
        &self,
        request: Request<pb::GroupMembershipRequest>,
        link: Link,
        add: bool,
    ) -> Result<Response<pb::GroupMembershipResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let group = required("group_id", &r.group_id)?;
        let principal = required("principal_id", &r.principal_id)?;
        self.aim(principal).await;
        self.change_link(&caller, link, add, group, principal).await?;
        let token = self.settled().await;
        Ok(answer(
            pb::GroupMembershipResponse {
                consistency_token: pim_runtime::consistency::field(token.as_ref()),
            },
            token.as_ref(),
        ))
    }

    async fn linked(
        &self,
        request: Request<pb::ListGroupMembersRequest>,
        link: Link,
    ) -> Result<Response<pb::ListGroupMembersResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let group = required("group_id", &r.group_id)?;
        // 0: everyone at once (what the services ask); otherwise pages in id order.
        let limit = match r.page_size {
            0 => usize::MAX,
            asked => usize::try_from(page_size(asked)?).unwrap_or(usize::MAX),
        };
        let after = filter_value("page_token", &r.page_token)?.to_owned();
        let mut links = self.linked_principals(&caller, link, group, r.direct_only).await?;
        links.retain(|l| l.principal.as_ref().is_some_and(|p| p.id > after));
        links.sort_by(|a, b| {
            let id = |l: &pb::GroupLink| l.principal.as_ref().map(|p| p.id.clone()).unwrap_or_default();
            id(a).cmp(&id(b))
        });
        let mut principals: Vec<pb::Principal> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in links.iter().filter_map(|l| l.principal.as_ref()) {
            if seen.insert(p.id.clone()) {
                principals.push(p.clone());
            }
        }
        let next_page_token = if principals.len() > limit {
            principals.truncate(limit);
            let last = principals.last().map(|p| p.id.clone()).unwrap_or_default();
            links.retain(|l| l.principal.as_ref().is_some_and(|p| p.id <= last));
            last
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListGroupMembersResponse {
            principals,
            next_page_token,
            links,
        }))
    }
}

fn sp_to_pb(sp: crate::store::ServicePrincipalRow) -> pb::ServicePrincipal {
    pb::ServicePrincipal {
        client_id: sp.id.clone(),
        id: sp.id,
        display_name: sp.display_name,
        enabled: sp.enabled,
        created_at: Some(to_timestamp(sp.created_at)),
    }
}

fn group_to_pb(g: GroupRow) -> pb::Group {
    pb::Group {
        id: g.id,
        display_name: g.display_name,
        description: g.description,
        is_assignable_to_role: g.is_assignable_to_role,
        created_at: Some(to_timestamp(g.created_at)),
    }
}

/// The caller's address (as forwarded by a trusted proxy, see
/// [`pim_runtime::grpc::client_ip`]) and user agent (at most 256 characters of it).
fn client_info<T>(request: &Request<T>, forwarders: &pim_runtime::grpc::Forwarders) -> ClientInfo {
    ClientInfo {
        ip: forwarders.client_ip(request).map(|a| a.to_string()),
        user_agent: request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect())
            .unwrap_or_default(),
    }
}

fn method_to_pb(m: crate::store::MfaMethodRow) -> pb::MfaMethod {
    pb::MfaMethod {
        id: m.id,
        kind: m.kind.as_str().into(),
        created_at: Some(to_timestamp(m.created_at)),
        name: m.name,
    }
}
