//! AuthService: sign-in (a malformed one on record too), refresh, sign-out, passwords.

use super::*;

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
