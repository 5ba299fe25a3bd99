//! The MFA step-up, in place: where a service refuses an action for want of a recent MFA
//! (`MfaRule`), the portal shows the same form again, its values kept, with a code field; sent
//! with a code, the form first verifies it (the session's token becomes a stepped-up one), then
//! does what it was asked.

use axum::response::{Html, IntoResponse, Response};
use maud::html;

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;

use crate::view;
use crate::web::{Caller, Failure, Fields};

/// Fields a step-up form never carries over: the CSRF token (written fresh) and the code.
const NOT_CARRIED: &[&str] = &["csrf", "code"];

/// Where the form has a code, verifies it and keeps the stepped-up token; a wrong code shows
/// the step-up form again with why.
pub async fn verify_if_given(caller: &mut Caller, fields: &Fields, action: &str, what: &str) -> Result<(), Response> {
    let code = fields.get("code");
    if code.is_empty() {
        return Ok(());
    }
    let verified = MfaServiceClient::new(caller.portal.0.upstreams.identity.clone())
        .verify(caller.request(ipb::VerifyRequest { code: code.to_owned() }))
        .await;
    match verified {
        Ok(answer) => {
            caller.keep_tokens(&answer.into_inner());
            Ok(())
        }
        Err(status) => Err(page(caller, action, fields, what, Some(&code_refusal(status)))),
    }
}

/// Why a code or passkey was refused, in identity's words where they are meant for the person
/// (a wrong code is UNAUTHENTICATED there, which elsewhere means signed out).
pub fn code_refusal(status: tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::InvalidArgument if !status.message().is_empty() => {
            status.message().to_owned()
        }
        _ => Failure::from(status).text(),
    }
}

/// The step-up asked for: after a code was given and did not do (the role wants a passkey),
/// with the service's words why.
pub fn asked_again(caller: &Caller, action: &str, fields: &Fields, what: &str, why: &str) -> Response {
    let problem = (!fields.get("code").is_empty()).then_some(why);
    page(caller, action, fields, what, problem)
}

/// The form that asks for the code, carrying the refused form's values.
pub fn page(caller: &Caller, action: &str, fields: &Fields, what: &str, problem: Option<&str>) -> Response {
    let content = html! {
        @if let Some(problem) = problem { (view::problem(problem)) }
        p { strong { (what) } " needs a recent multi-factor authentication. Enter the code from your authenticator app to go on." }
        form method="post" action=(action) {
            (view::csrf(caller))
            @for (name, value) in fields.0.iter().filter(|(k, _)| !NOT_CARRIED.contains(&k.as_str())) {
                input type="hidden" name=(name) value=(value);
            }
            label for="code" { "Authenticator code" }
            input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required autofocus;
            button type="submit" { "Verify and continue" }
            " "
            button type="button" data-passkey="step-up" { "Use a passkey" }
            p data-passkey-status role="status" {}
        }
    };
    let Html(body) = view::page(caller, "", "Verify it's you", content);
    Html(body).into_response()
}
