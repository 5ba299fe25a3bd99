//! MfaService: enrolment, step-up, methods, recovery codes, resets.

use super::*;

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
