//! Adding an authenticator app (TOTP) in the browser: at a first sign-in, where the directory
//! requires a second factor the account does not have yet, and on *Security info* for another
//! one. Identity makes the secret and checks the first code; the portal shows the `otpauth://`
//! URI once, as a QR code and as text, and keeps it only in the server-side session until the
//! code confirms it (so a mistyped code can show it again). Recovery codes are made here too.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, PreEscaped, html};

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;

use crate::session::{Enrolling, Session};
use crate::web::{Caller, CheckedForm, ClientIp, Failure};
use crate::{Portal, signin, stepup, view};

fn mfa(portal: &Portal) -> MfaServiceClient<tonic::transport::Channel> {
    MfaServiceClient::new(portal.0.upstreams.identity.clone())
}

/// Keeps the method identity made in the session, until its first code confirms it.
fn remember(portal: &Portal, session_id: &str, answer: ipb::EnrollTotpResponse) -> Enrolling {
    let enrolling = Enrolling {
        method_id: answer.method_id,
        otpauth_uri: answer.otpauth_uri,
    };
    portal
        .0
        .sessions
        .update(session_id, |s| s.enrolling = Some(enrolling.clone()));
    enrolling
}

/// The secret in an `otpauth://` URI, in groups of four for typing into an app.
fn typed_secret(uri: &str) -> String {
    let secret = uri
        .split(['?', '&'])
        .find_map(|part| part.strip_prefix("secret="))
        .unwrap_or_default();
    secret
        .as_bytes()
        .chunks(4)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The URI as a QR code (inline SVG: no script, no request for an image).
fn qr(uri: &str) -> Markup {
    let Ok(code) = qrcode::QrCode::new(uri.as_bytes()) else {
        return html! {};
    };
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    let svg = svg.find("<svg").map_or("", |at| &svg[at..]).to_owned();
    html! { div.qr role="img" aria-label="QR code of the new authenticator's secret" { (PreEscaped(svg)) } }
}

/// The page that shows the secret and asks for the app's first code.
fn setup(csrf: &str, action: &str, enrolling: &Enrolling, problem: Option<&str>) -> Markup {
    html! {
        @if let Some(problem) = problem { (view::problem(problem)) }
        ol.steps {
            li { "Open your authenticator app (Microsoft Authenticator, Google Authenticator, 1Password…) and add an account." }
            li {
                "Scan this QR code, or type the key below. It is a secret: it is shown only until you confirm."
                (qr(&enrolling.otpauth_uri))
                p { "Key: " code data-secret { (typed_secret(&enrolling.otpauth_uri)) } }
                details {
                    summary { "The whole setup link" }
                    p { code data-otpauth { (enrolling.otpauth_uri) } }
                }
            }
            li {
                form method="post" action=(action) {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="code" { "The 6-digit code the app shows now" }
                    input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required autofocus;
                    button type="submit" { "Confirm the app" }
                }
            }
        }
    }
}

/// The session between password and enrolment, and its short-lived token.
fn pending(portal: &Portal, headers: &HeaderMap) -> Option<(Session, String, String)> {
    let session = portal.session_of(headers)?;
    let (token, user) = session.mfa_pending.clone()?;
    Some((session, token, user))
}

/// POST /signin/enrol: identity makes the secret (a first method needs the account's
/// enrolment window, or a pass).
pub async fn begin_at_sign_in(
    State(portal): State<Portal>,
    ip: ClientIp,
    headers: HeaderMap,
    CheckedForm(fields): CheckedForm,
) -> Response {
    let Some((session, token, _)) = pending(&portal, &headers) else {
        return Redirect::to("/signin").into_response();
    };
    let request = ip.request(
        ipb::EnrollTotpRequest {
            enrollment_pass: fields.get("pass").trim().to_owned(),
        },
        Some(&token),
    );
    match mfa(&portal).enroll_totp(request).await {
        Ok(answer) => {
            let enrolling = remember(&portal, &session.id, answer.into_inner());
            signin::document(
                "Add an authenticator app",
                setup(&session.csrf, "/signin/enrol/confirm", &enrolling, None),
            )
        }
        Err(status) => signin::first_method(&session, Some(&stepup::code_refusal(status))),
    }
}

/// POST /signin/enrol/confirm: the app's first code confirms it and completes the sign-in.
pub async fn confirm_at_sign_in(
    State(portal): State<Portal>,
    ip: ClientIp,
    headers: HeaderMap,
    CheckedForm(fields): CheckedForm,
) -> Response {
    let Some((session, token, user)) = pending(&portal, &headers) else {
        return Redirect::to("/signin").into_response();
    };
    let Some(enrolling) = session.enrolling.clone() else {
        return signin::first_method(&session, None);
    };
    let request = ip.request(
        ipb::ConfirmTotpRequest {
            method_id: enrolling.method_id.clone(),
            code: fields.get("code").trim().to_owned(),
        },
        Some(&token),
    );
    match mfa(&portal).confirm_totp(request).await {
        Ok(answer) => match answer.into_inner().session {
            Some(signed_in) => {
                let response = signin::signed_in(&portal, &session, signed_in, user);
                tracing::info!("an authenticator app was added at sign-in in the portal");
                response
            }
            None => {
                // Confirmed: its secret is not kept, nor the pending sign-in.
                portal.0.sessions.update(&session.id, |s| {
                    s.enrolling = None;
                    s.mfa_pending = None;
                });
                signin::first_method(&session, Some("The app is added; sign in again with a code from it."))
            }
        },
        Err(status) => signin::document(
            "Add an authenticator app",
            setup(
                &session.csrf,
                "/signin/enrol/confirm",
                &enrolling,
                Some(&stepup::code_refusal(status)),
            ),
        ),
    }
}

/// POST /account/totp: another authenticator app (adding a method needs a recent MFA: the
/// step-up in place).
pub async fn begin(mut caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    const ACTION: &str = "/account/totp";
    const WHAT: &str = "Adding an authenticator app";
    if let Err(page) = stepup::verify_if_given(&mut caller, &fields, ACTION, WHAT).await {
        return page;
    }
    let request = caller.request(ipb::EnrollTotpRequest::default());
    match mfa(&caller.portal).enroll_totp(request).await {
        Ok(answer) => {
            let enrolling = remember(&caller.portal, &caller.session.id, answer.into_inner());
            let content = setup(&caller.session.csrf, "/account/totp/confirm", &enrolling, None);
            view::page(&caller, "/account", "Add an authenticator app", content).into_response()
        }
        Err(status) => match Failure::from(status) {
            Failure::MfaNeeded(why) => stepup::asked_again(&caller, ACTION, &fields, WHAT, &why),
            failure => {
                caller.flash(false, format!("Not added: {}", failure.text()));
                Redirect::to("/account").into_response()
            }
        },
    }
}

/// POST /account/totp/confirm.
pub async fn confirm(mut caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let Some(enrolling) = caller.session.enrolling.clone() else {
        return Redirect::to("/account").into_response();
    };
    let request = caller.request(ipb::ConfirmTotpRequest {
        method_id: enrolling.method_id.clone(),
        code: fields.get("code").trim().to_owned(),
    });
    match mfa(&caller.portal).confirm_totp(request).await {
        Ok(answer) => {
            if let Some(stepped) = answer.into_inner().session {
                caller.keep_tokens(&stepped);
            }
            caller
                .portal
                .0
                .sessions
                .update(&caller.session.id, |s| s.enrolling = None);
            caller.flash(true, "The authenticator app is added.");
            Redirect::to("/account").into_response()
        }
        Err(status) => {
            let content = setup(
                &caller.session.csrf,
                "/account/totp/confirm",
                &enrolling,
                Some(&stepup::code_refusal(status)),
            );
            view::page(&caller, "/account", "Add an authenticator app", content).into_response()
        }
    }
}

/// POST /account/recovery-codes: a new set of single-use recovery codes, shown once (the old
/// set stops working; a recent MFA is needed).
pub async fn recovery_codes(mut caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    const ACTION: &str = "/account/recovery-codes";
    const WHAT: &str = "Making new recovery codes";
    if let Err(page) = stepup::verify_if_given(&mut caller, &fields, ACTION, WHAT).await {
        return page;
    }
    let request = caller.request(ipb::GenerateRecoveryCodesRequest {});
    match mfa(&caller.portal).generate_recovery_codes(request).await {
        Ok(answer) => {
            let codes = answer.into_inner().codes;
            let content = html! {
                p { "Keep these somewhere safe, away from this device. Each works once, in place of a code from your app; the codes you had before no longer work. They are shown only now." }
                ul.codes data-recovery-codes { @for code in &codes { li { code { (code) } } } }
                p { a href="/account" { "Done" } }
            };
            view::page(&caller, "/account", "Your recovery codes", content).into_response()
        }
        Err(status) => match Failure::from(status) {
            Failure::MfaNeeded(why) => stepup::asked_again(&caller, ACTION, &fields, WHAT, &why),
            failure => {
                caller.flash(false, format!("No new codes: {}", failure.text()));
                Redirect::to("/account").into_response()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_uris_secret_in_groups_of_four() {
        let uri = "otpauth://totp/PIM:lee?secret=JBSWY3DPEHPK3PXPAB&issuer=PIM";
        assert_eq!(typed_secret(uri), "JBSW Y3DP EHPK 3PXP AB");
        assert_eq!(typed_secret("otpauth://totp/PIM:lee?issuer=PIM"), "");
    }

    #[test]
    fn an_enrolment_never_prints_its_secret() {
        let enrolling = Enrolling {
            method_id: "m1".into(),
            otpauth_uri: "otpauth://totp/PIM:lee?secret=JBSWY3DPEHPK3PXP".into(),
        };
        let printed = format!("{enrolling:?}");
        assert!(printed.contains("m1") && !printed.contains("JBSW"), "{printed}");
    }

    #[test]
    fn the_qr_code_is_inline_svg_without_an_xml_prologue() {
        let markup = qr("otpauth://totp/PIM:lee?secret=JBSWY3DPEHPK3PXP").into_string();
        assert!(markup.contains("<svg") && !markup.contains("<?xml"), "{markup}");
    }
}
