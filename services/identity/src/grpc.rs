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
        request: Request<pb::GetServicePrincipalRequest>,
    ) -> Result<Response<pb::CreateServicePrincipalResponse>, Status> {
        let caller = caller(&request)?.clone();
        let id = required("service_principal_id", &request.get_ref().service_principal_id)?;
        self.aim(id).await;
        let (sp, secret) = Directory::rotate_service_principal_secret(self, &caller, id).await?;
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

impl Directory {
    /// A sign-in's name (or client id) and secret, each `(field, value)`: the name trimmed,
    /// or INVALID_ARGUMENT for a malformed one, which is a refused sign-in on record too.
    async fn well_formed<'a>(
        &self,
        (field, name): (&'static str, &'a str),
        (secret_field, secret): (&'static str, &str),
        client: &ClientInfo,
    ) -> Result<&'a str, Status> {
        let checked = match required(field, name) {
            Ok(_) if secret.is_empty() => Err(invalid_argument(secret_field, "required")),
            checked => checked,
        };
        if checked.is_err() {
            self.malformed_sign_in(name, client).await;
        }
        checked
    }
}

#[tonic::async_trait]
impl AuthService for Directory {
    async fn sign_in(&self, request: Request<pb::SignInRequest>) -> Result<Response<pb::SignInResponse>, Status> {
        let client = client_info(&request, &self.forwarders);
        let r = request.get_ref();
        let user_name = self
            .well_formed(("user_name", &r.user_name), ("password", &r.password), &client)
            .await?;
        Ok(Response::new(session_to_pb(
            Directory::sign_in(self, user_name, &r.password, &client).await?,
        )))
    }

    async fn sign_in_service_principal(
        &self,
        request: Request<pb::SignInServicePrincipalRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let client = client_info(&request, &self.forwarders);
        let r = request.get_ref();
        let client_id = self
            .well_formed(
                ("client_id", &r.client_id),
                ("client_secret", &r.client_secret),
                &client,
            )
            .await?;
        Ok(Response::new(session_to_pb(
            Directory::sign_in_service_principal(self, client_id, &r.client_secret, &client).await?,
        )))
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Result<Response<pb::SignInResponse>, Status> {
        let client = client_info(&request, &self.forwarders);
        let token = required("refresh_token", &request.get_ref().refresh_token)?;
        Ok(Response::new(session_to_pb(
            Directory::refresh(self, token, &client).await?,
        )))
    }

    async fn sign_out(&self, request: Request<pb::SignOutRequest>) -> Result<Response<pb::SignOutResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        Directory::sign_out(self, &caller, &r.refresh_token, r.everywhere).await?;
        // The session's tokens stop working before it answers.
        let token = self.settled().await;
        Ok(answer(pb::SignOutResponse {}, token.as_ref()))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        if r.current_password.is_empty() {
            return Err(pim_runtime::grpc::invalid_argument("current_password", "required"));
        }
        Directory::change_password(self, &caller, &r.current_password, &r.new_password).await?;
        let token = self.settled().await;
        Ok(answer(pb::ChangePasswordResponse {}, token.as_ref()))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let caller = caller(&request)?.clone();
        pim_runtime::access::require(
            self.access.as_ref(),
            &caller,
            pim_runtime::access::permissions::SIGNING_KEYS_MANAGE,
            "/",
        )
        .await?;
        let kid = self
            .keys
            .rotate(self.token_ttl + std::time::Duration::from_secs(300))
            .await
            .map_err(pim_runtime::grpc::internal)?;
        Ok(Response::new(pb::RotateSigningKeyResponse { kid }))
    }

    async fn list_revocations(
        &self,
        request: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::ListRevocationsResponse>, Status> {
        let now = pim_runtime::db::now_ms();
        let oldest = now - pim_runtime::auth::REMEMBER_MS;
        let since = match &request.get_ref().since {
            Some(t) => pim_runtime::grpc::time_field("since", t)?.max(oldest),
            None => oldest,
        };
        let list = pim_runtime::auth::KeySource::revocations(&self.keys, since)
            .await
            .map_err(pim_runtime::grpc::internal)?;
        Ok(Response::new(pb::ListRevocationsResponse {
            session_tags: list.session_tags,
            principals: list
                .principal_tags
                .into_iter()
                .map(|(principal_tag, at)| pb::RevokedPrincipal {
                    principal_tag,
                    revoked_at: Some(to_timestamp(at)),
                })
                .collect(),
        }))
    }

    async fn get_signing_keys(
        &self,
        _request: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
        Ok(Response::new(pb::GetSigningKeysResponse {
            keys: self.keys.public_keys(),
        }))
    }
}

#[tonic::async_trait]
impl MfaService for Directory {
    async fn enroll_totp(
        &self,
        request: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let caller = caller(&request)?.clone();
        let (method_id, otpauth_uri) =
            Directory::enroll_totp(self, &caller, &request.get_ref().enrollment_pass).await?;
        Ok(Response::new(pb::EnrollTotpResponse { method_id, otpauth_uri }))
    }

    async fn confirm_totp(
        &self,
        request: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let caller = caller(&request)?.clone();
        let client = client_info(&request, &self.forwarders);
        let r = request.into_inner();
        let method_id = required("method_id", &r.method_id)?;
        let code = required("code", &r.code)?;
        let session = Directory::confirm_totp(self, &caller, method_id, code, &client).await?;
        Ok(Response::new(pb::ConfirmTotpResponse {
            session: Some(session_to_pb(session)),
        }))
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::SignInResponse>, Status> {
        let caller = caller(&request)?.clone();
        let client = client_info(&request, &self.forwarders);
        let code = required("code", &request.get_ref().code)?;
        Ok(Response::new(session_to_pb(
            self.verify_mfa(&caller, code, &client).await?,
        )))
    }

    async fn list_methods(
        &self,
        request: Request<pb::ListMethodsRequest>,
    ) -> Result<Response<pb::ListMethodsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let view = self.list_mfa_methods(&caller, &request.get_ref().user).await?;
        Ok(Response::new(pb::ListMethodsResponse {
            recovery_codes_left: i32::try_from(view.recovery_codes_left).unwrap_or(i32::MAX),
            recovery_code_last_used_at: view.recovery_code_last_used_at.map(to_timestamp),
            methods: view.methods.into_iter().map(method_to_pb).collect(),
        }))
    }

    async fn begin_passkey_registration(
        &self,
        request: Request<pb::BeginPasskeyRegistrationRequest>,
    ) -> Result<Response<pb::PasskeyCeremony>, Status> {
        let caller = caller(&request)?.clone();
        let (ceremony_id, options_json) = self.begin_passkey_registration(&caller).await?;
        Ok(Response::new(pb::PasskeyCeremony {
            ceremony_id,
            options_json,
        }))
    }

    async fn finish_passkey_registration(
        &self,
        request: Request<pb::FinishPasskeyRegistrationRequest>,
    ) -> Result<Response<pb::MfaMethod>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let ceremony_id = required("ceremony_id", &r.ceremony_id)?;
        let credential = required_document("credential_json", &r.credential_json)?;
        let method = self
            .finish_passkey_registration(&caller, ceremony_id, credential, &r.name)
            .await?;
        Ok(Response::new(method_to_pb(method)))
    }

    async fn begin_passkey_verification(
        &self,
        request: Request<pb::BeginPasskeyVerificationRequest>,
    ) -> Result<Response<pb::PasskeyCeremony>, Status> {
        let caller = caller(&request)?.clone();
        let (ceremony_id, options_json) = self.begin_passkey_verification(&caller).await?;
        Ok(Response::new(pb::PasskeyCeremony {
            ceremony_id,
            options_json,
        }))
    }

    async fn verify_passkey(
        &self,
        request: Request<pb::VerifyPasskeyRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let caller = caller(&request)?.clone();
        let client = client_info(&request, &self.forwarders);
        let r = request.into_inner();
        let ceremony_id = required("ceremony_id", &r.ceremony_id)?;
        let credential = required_document("credential_json", &r.credential_json)?;
        Ok(Response::new(session_to_pb(
            self.verify_passkey(&caller, ceremony_id, credential, &client).await?,
        )))
    }

    async fn remove_method(
        &self,
        request: Request<pb::RemoveMethodRequest>,
    ) -> Result<Response<pb::RemoveMethodResponse>, Status> {
        let caller = caller(&request)?.clone();
        let id = required("method_id", &request.get_ref().method_id)?;
        self.remove_mfa_method(&caller, id).await?;
        Ok(Response::new(pb::RemoveMethodResponse {}))
    }

    async fn generate_recovery_codes(
        &self,
        request: Request<pb::GenerateRecoveryCodesRequest>,
    ) -> Result<Response<pb::GenerateRecoveryCodesResponse>, Status> {
        let caller = caller(&request)?.clone();
        Ok(Response::new(pb::GenerateRecoveryCodesResponse {
            codes: Directory::generate_recovery_codes(self, &caller).await?,
        }))
    }

    async fn reset_mfa(&self, request: Request<pb::ResetMfaRequest>) -> Result<Response<pb::ResetMfaResponse>, Status> {
        let caller = caller(&request)?.clone();
        let user = required("user", &request.get_ref().user)?;
        self.aim(user).await;
        Directory::reset_mfa(self, &caller, user).await?;
        let token = self.settled().await;
        Ok(answer(pb::ResetMfaResponse {}, token.as_ref()))
    }

    async fn create_enrollment_pass(
        &self,
        request: Request<pb::CreateEnrollmentPassRequest>,
    ) -> Result<Response<pb::CreateEnrollmentPassResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let user = required("user", &r.user)?;
        self.aim(user).await;
        let lifetime_ms = match &r.lifetime {
            Some(d) => Some(
                pim_runtime::db::checked_duration(d)
                    .map_err(|why| pim_runtime::grpc::invalid_argument("lifetime", why))?
                    .as_millis() as i64,
            ),
            None => None,
        };
        let uses = (r.uses != 0).then_some(r.uses);
        let (pass, code) = Directory::create_enrollment_pass(self, &caller, user, lifetime_ms, uses).await?;
        Ok(Response::new(pb::CreateEnrollmentPassResponse {
            pass: Some(pass_to_pb(pass)),
            code,
        }))
    }

    async fn list_enrollment_passes(
        &self,
        request: Request<pb::ListEnrollmentPassesRequest>,
    ) -> Result<Response<pb::ListEnrollmentPassesResponse>, Status> {
        let caller = caller(&request)?.clone();
        let user = required("user", &request.get_ref().user)?;
        self.aim(user).await;
        let passes = Directory::list_enrollment_passes(self, &caller, user).await?;
        Ok(Response::new(pb::ListEnrollmentPassesResponse {
            passes: passes.into_iter().map(pass_to_pb).collect(),
        }))
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
