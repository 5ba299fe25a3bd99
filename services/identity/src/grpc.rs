//! The identity service's gRPC surface; the only module here that knows tonic and prost.
//! Handlers take the request, check its shape, call the directory and map the answer.

use tonic::{Request, Response, Status};

use pim_proto::identity::v1 as pb;
use pim_proto::identity::v1::auth_service_server::AuthService;
use pim_proto::identity::v1::directory_service_server::DirectoryService;
use pim_proto::identity::v1::mfa_service_server::MfaService;
use pim_runtime::auth::caller;
use pim_runtime::db::to_timestamp;

use crate::directory::{Directory, NewUser, Session};
use crate::store::UserRow;

const DEFAULT_PAGE: i32 = 50;
const MAX_PAGE: i32 = 500;

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
        refresh_token: String::new(),
        principal_id: s.principal_id,
        amr: s.amr,
    }
}

fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Status> {
    let value = value.trim();
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field}: required")))
    } else {
        Ok(value)
    }
}

fn page_size(requested: i32) -> Result<u64, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE as u64),
        n if (1..=MAX_PAGE).contains(&n) => Ok(n as u64),
        _ => Err(Status::invalid_argument(format!(
            "page_size: must be between 1 and {MAX_PAGE}"
        ))),
    }
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
        let mut users = Directory::list_users(self, &caller, &r.filter, &r.page_token, limit + 1).await?;
        let next_page_token = if users.len() as u64 > limit {
            users.truncate(limit as usize);
            users.last().map(|u| u.user_name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(user_to_pb).collect(),
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
            service_principal: Some(pb::ServicePrincipal {
                client_id: sp.id.clone(),
                id: sp.id,
                display_name: sp.display_name,
                enabled: sp.enabled,
                created_at: Some(to_timestamp(sp.created_at)),
            }),
            client_secret: secret,
        }))
    }

    async fn get_principal(
        &self,
        request: Request<pb::GetPrincipalRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        caller(&request)?;
        let id = required("principal_id", &request.get_ref().principal_id)?;
        Ok(Response::new(Directory::get_principal(self, id).await?))
    }
}

#[tonic::async_trait]
impl AuthService for Directory {
    async fn sign_in(&self, request: Request<pb::SignInRequest>) -> Result<Response<pb::SignInResponse>, Status> {
        let r = request.get_ref();
        let user_name = required("user_name", &r.user_name)?;
        if r.password.is_empty() {
            return Err(Status::invalid_argument("password: required"));
        }
        Ok(Response::new(session_to_pb(
            Directory::sign_in(self, user_name, &r.password).await?,
        )))
    }

    async fn sign_in_service_principal(
        &self,
        request: Request<pb::SignInServicePrincipalRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let r = request.get_ref();
        let client_id = required("client_id", &r.client_id)?;
        if r.client_secret.is_empty() {
            return Err(Status::invalid_argument("client_secret: required"));
        }
        Ok(Response::new(session_to_pb(
            Directory::sign_in_service_principal(self, client_id, &r.client_secret).await?,
        )))
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
        let (method_id, otpauth_uri) = Directory::enroll_totp(self, &caller).await?;
        Ok(Response::new(pb::EnrollTotpResponse { method_id, otpauth_uri }))
    }

    async fn confirm_totp(
        &self,
        request: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let method_id = required("method_id", &r.method_id)?;
        let code = required("code", &r.code)?;
        Directory::confirm_totp(self, &caller, method_id, code).await?;
        Ok(Response::new(pb::ConfirmTotpResponse {}))
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::SignInResponse>, Status> {
        let caller = caller(&request)?.clone();
        let code = required("code", &request.get_ref().code)?;
        Ok(Response::new(session_to_pb(self.verify_mfa(&caller, code).await?)))
    }

    async fn list_methods(
        &self,
        request: Request<pb::ListMethodsRequest>,
    ) -> Result<Response<pb::ListMethodsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let methods = self.list_mfa_methods(&caller, &request.get_ref().user).await?;
        Ok(Response::new(pb::ListMethodsResponse {
            methods: methods
                .into_iter()
                .map(|m| pb::MfaMethod {
                    id: m.id,
                    kind: m.kind,
                    created_at: Some(to_timestamp(m.created_at)),
                })
                .collect(),
        }))
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
        Directory::reset_mfa(self, &caller, user).await?;
        Ok(Response::new(pb::ResetMfaResponse {}))
    }
}
