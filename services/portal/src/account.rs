//! *Security info*: the caller's MFA methods (add a passkey, remove a method, verify with a
//! code; authenticator apps and recovery codes are `enrol`'s), and the passkey ceremonies the
//! page's script runs: registration here, and an assertion at sign-in and at a step-up. Identity is the relying party's server; the portal
//! carries the options to `navigator.credentials` and the browser's answer back.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde_json::{Value, json};

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;

use crate::stepup;
use crate::view::{self, moment, timestamp};
use crate::web::{Caller, CheckedForm, ClientIp, Failure, check_call, json_failure};
use crate::{Portal, signin};

fn mfa(portal: &Portal) -> MfaServiceClient<tonic::transport::Channel> {
    MfaServiceClient::new(portal.0.upstreams.identity.clone())
}

/// GET /account.
pub async fn page(caller: Caller) -> Html<String> {
    let content = async {
        let listed = mfa(&caller.portal)
            .list_methods(caller.request(ipb::ListMethodsRequest::default()))
            .await?
            .into_inner();
        Ok::<_, Failure>(html! {
            section aria-labelledby="methods-h" {
                h2 id="methods-h" { "Your sign-in methods" }
                @if listed.methods.is_empty() {
                    p { "You have no second factor yet." }
                } @else {
                    table {
                        thead { tr { th scope="col" { "Method" } th scope="col" { "Name" } th scope="col" { "Added" } th scope="col" { span.visually-hidden { "Actions" } } } }
                        tbody {
                            @for m in &listed.methods {
                                @let label = if m.kind == "passkey" { "Passkey" } else { "Authenticator app (TOTP)" };
                                tr {
                                    td { (label) }
                                    td { (m.name) }
                                    td { (moment(timestamp(&m.created_at))) }
                                    td {
                                        form method="post" action=(format!("/account/methods/{}/remove", m.id)) {
                                            (view::csrf(&caller))
                                            input type="hidden" name="what" value=(format!("Removing {label} {}", m.name));
                                            button.deny type="submit" aria-label=(format!("Remove {label} {}", m.name)) { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                p { "Recovery codes left: " (listed.recovery_codes_left) }
            }
            section aria-labelledby="app-h" {
                h2 id="app-h" { "Add an authenticator app" }
                p { "An app on your phone shows a new 6-digit code every 30 seconds." }
                form method="post" action="/account/totp" {
                    (view::csrf(&caller))
                    button type="submit" { "Add an authenticator app" }
                }
            }
            section aria-labelledby="recovery-h" {
                h2 id="recovery-h" { "Recovery codes" }
                p { "Single-use codes for when your app or key is not at hand. Making new ones ends the old ones." }
                form method="post" action="/account/recovery-codes" {
                    (view::csrf(&caller))
                    button type="submit" { "Make new recovery codes" }
                }
            }
            section aria-labelledby="passkey-h" {
                h2 id="passkey-h" { "Add a passkey" }
                p { "A passkey (a security key, or your device's screen lock) signs you in and steps you up without a code, and no phishing site can use it." }
                (view::csrf(&caller))
                label for="passkey-name" { "Name" }
                input id="passkey-name" type="text" maxlength="64" placeholder="e.g. YubiKey or work laptop";
                button type="button" data-passkey="register" { "Add a passkey" }
                p data-passkey-status role="status" {}
            }
            section aria-labelledby="verify-h" {
                h2 id="verify-h" { "Verify it's you" }
                p { "Adding or removing a method needs a recent multi-factor authentication." }
                form method="post" action="/account/verify" {
                    (view::csrf(&caller))
                    label for="code" { "Authenticator code" }
                    input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required;
                    button type="submit" { "Verify" }
                }
            }
        })
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/account", "Security info", content)
}

/// POST /account/verify: a code steps the session up (for managing methods).
pub async fn verify(mut caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let answer = mfa(&caller.portal)
        .verify(caller.request(ipb::VerifyRequest {
            code: fields.get("code").to_owned(),
        }))
        .await;
    match answer {
        Ok(answer) => {
            caller.keep_tokens(&answer.into_inner());
            caller.flash(true, "Verified.");
        }
        Err(status) => caller.flash(false, format!("Not verified: {}", stepup::code_refusal(status))),
    }
    Redirect::to("/account").into_response()
}

/// POST /account/methods/{id}/remove (the step-up where asked).
pub async fn remove(mut caller: Caller, Path(id): Path<String>, CheckedForm(fields): CheckedForm) -> Response {
    let action = format!("/account/methods/{id}/remove");
    let what = fields.get("what").to_owned();
    if let Err(page) = stepup::verify_if_given(&mut caller, &fields, &action, &what).await {
        return page;
    }
    match mfa(&caller.portal)
        .remove_method(caller.request(ipb::RemoveMethodRequest { method_id: id }))
        .await
    {
        Ok(_) => caller.flash(true, "The method is removed."),
        Err(status) => match Failure::from(status) {
            Failure::MfaNeeded(why) => return stepup::asked_again(&caller, &action, &fields, &what, &why),
            failure => caller.flash(false, format!("Not removed: {}", failure.text())),
        },
    }
    Redirect::to("/account").into_response()
}

fn ceremony(answer: ipb::PasskeyCeremony) -> Response {
    let options: Value = serde_json::from_str(&answer.options_json).unwrap_or(Value::Null);
    Json(json!({ "ceremony": answer.ceremony_id, "options": options })).into_response()
}

fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// The browser's credential, back as the JSON identity reads.
fn credential(body: &Value) -> String {
    body.get("credential").map(Value::to_string).unwrap_or_default()
}

/// POST /account/passkeys/begin.
pub async fn register_begin(caller: Caller, headers: HeaderMap) -> Response {
    if let Err(refused) = check_call(&headers, &caller.session, caller.portal.0.public_origin.as_deref()) {
        return refused;
    }
    match mfa(&caller.portal)
        .begin_passkey_registration(caller.request(ipb::BeginPasskeyRegistrationRequest {}))
        .await
    {
        Ok(answer) => ceremony(answer.into_inner()),
        Err(status) => json_failure(Failure::from(status)),
    }
}

/// POST /account/passkeys/finish.
pub async fn register_finish(caller: Caller, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(refused) = check_call(&headers, &caller.session, caller.portal.0.public_origin.as_deref()) {
        return refused;
    }
    let request = ipb::FinishPasskeyRegistrationRequest {
        ceremony_id: field(&body, "ceremony").to_owned(),
        credential_json: credential(&body),
        name: field(&body, "name").to_owned(),
    };
    match mfa(&caller.portal)
        .finish_passkey_registration(caller.request(request))
        .await
    {
        Ok(method) => {
            caller.flash(true, format!("Passkey {} added.", method.into_inner().name));
            Json(json!({ "redirect": "/account" })).into_response()
        }
        Err(status) => json_failure(Failure::from(status)),
    }
}

/// POST /stepup/passkey/begin: an assertion for a signed-in session.
pub async fn step_up_begin(caller: Caller, headers: HeaderMap) -> Response {
    if let Err(refused) = check_call(&headers, &caller.session, caller.portal.0.public_origin.as_deref()) {
        return refused;
    }
    match mfa(&caller.portal)
        .begin_passkey_verification(caller.request(ipb::BeginPasskeyVerificationRequest {}))
        .await
    {
        Ok(answer) => ceremony(answer.into_inner()),
        Err(status) => json_failure(Failure::from(status)),
    }
}

/// POST /stepup/passkey/finish: the session steps up; the page then sends its form again.
pub async fn step_up_finish(mut caller: Caller, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(refused) = check_call(&headers, &caller.session, caller.portal.0.public_origin.as_deref()) {
        return refused;
    }
    let request = ipb::VerifyPasskeyRequest {
        ceremony_id: field(&body, "ceremony").to_owned(),
        credential_json: credential(&body),
    };
    match mfa(&caller.portal).verify_passkey(caller.request(request)).await {
        Ok(answer) => {
            caller.keep_tokens(&answer.into_inner());
            Json(json!({ "verified": true })).into_response()
        }
        Err(status) => json_failure(Failure::Refused(
            axum::http::StatusCode::FORBIDDEN,
            stepup::code_refusal(status),
        )),
    }
}

/// The pending sign-in's token and user name, for a session between password and MFA.
fn pending(portal: &Portal, headers: &HeaderMap) -> Result<(crate::session::Session, String, String), Response> {
    let session = portal
        .session_of(headers)
        .ok_or_else(|| json_failure(Failure::SignedOut))?;
    check_call(headers, &session, portal.0.public_origin.as_deref())?;
    let (token, user) = session
        .mfa_pending
        .clone()
        .ok_or_else(|| json_failure(Failure::SignedOut))?;
    Ok((session, token, user))
}

/// POST /signin/passkey/begin: an assertion to complete a sign-in waiting for MFA.
pub async fn sign_in_begin(State(portal): State<Portal>, ip: ClientIp, headers: HeaderMap) -> Response {
    let (_, token, _) = match pending(&portal, &headers) {
        Ok(pending) => pending,
        Err(refused) => return refused,
    };
    match mfa(&portal)
        .begin_passkey_verification(ip.request(ipb::BeginPasskeyVerificationRequest {}, Some(&token)))
        .await
    {
        Ok(answer) => ceremony(answer.into_inner()),
        Err(status) => json_failure(Failure::Refused(
            axum::http::StatusCode::FORBIDDEN,
            stepup::code_refusal(status),
        )),
    }
}

/// POST /signin/passkey/finish: the sign-in completes; the script goes to My roles.
pub async fn sign_in_finish(
    State(portal): State<Portal>,
    ip: ClientIp,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (session, token, user) = match pending(&portal, &headers) {
        Ok(pending) => pending,
        Err(refused) => return refused,
    };
    let request = ipb::VerifyPasskeyRequest {
        ceremony_id: field(&body, "ceremony").to_owned(),
        credential_json: credential(&body),
    };
    match mfa(&portal).verify_passkey(ip.request(request, Some(&token))).await {
        Ok(answer) => {
            let renewed = signin::complete(&portal, &session, answer.into_inner(), user);
            (
                [portal.cookie(Some(&renewed.id))],
                Json(json!({ "redirect": "/roles" })),
            )
                .into_response()
        }
        Err(status) => json_failure(Failure::Refused(
            axum::http::StatusCode::FORBIDDEN,
            stepup::code_refusal(status),
        )),
    }
}
