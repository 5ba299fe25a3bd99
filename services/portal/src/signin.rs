//! Sign-in (password, then the authenticator code where the account has MFA, or the first
//! authenticator app where it has none: `enrol`) and sign-out.
//! The password and code go to identity and nowhere else; the tokens stay in the session.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;

use crate::session::{Session, SignedIn};
use crate::view::{self, timestamp};
use crate::web::{Caller, CheckedForm, ClientIp};
use crate::{Portal, web};

/// GET /signin: the password form (a session, signed in as no one, is made to carry its CSRF
/// token).
pub async fn form(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    match portal.session_of(&headers) {
        Some(session) if session.signed_in.is_some() => Redirect::to("/roles").into_response(),
        Some(session) => password_form(&session, "", None).into_response(),
        None => {
            let session = portal.0.sessions.start();
            ([portal.cookie(Some(&session.id))], password_form(&session, "", None)).into_response()
        }
    }
}

fn password_form(session: &Session, user: &str, problem: Option<&str>) -> Html<String> {
    Html(
        view::document(
            "Sign in",
            html! {
                main id="main" .narrow {
                    h1 { "Sign in to PIM" }
                    @if let Some(problem) = problem { (view::problem(problem)) }
                    form method="post" action="/signin" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="user" { "User name" }
                        input id="user" name="user" type="text" autocomplete="username" required value=(user);
                        label for="password" { "Password" }
                        input id="password" name="password" type="password" autocomplete="current-password" required;
                        button type="submit" { "Sign in" }
                    }
                }
            },
        )
        .into_string(),
    )
}

fn code_form(session: &Session, problem: Option<&str>) -> Html<String> {
    Html(
        view::document(
            "Verify it's you",
            html! {
                main id="main" .narrow {
                    h1 { "Verify it's you" }
                    @if let Some(problem) = problem { (view::problem(problem)) }
                    form method="post" action="/signin/code" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="code" { "Code from your authenticator app (or a recovery code)" }
                        input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required autofocus;
                        button type="submit" { "Verify" }
                        " "
                        button type="button" data-passkey="signin" { "Use a passkey" }
                        p data-passkey-status role="status" {}
                    }
                }
            },
        )
        .into_string(),
    )
}

/// A page of the sign-in (no navigation: no one is signed in yet).
pub fn document(title: &str, body: Markup) -> Response {
    Html(view::document(title, html! { main id="main" .narrow { h1 { (title) } (body) } }).into_string())
        .into_response()
}

/// At sign-in, the password is right and the account has no second factor yet: the offer to
/// add an authenticator app (`enrol` takes it from there) (with an administrator's enrolment pass, where the account's
/// enrolment window has closed).
pub fn first_method(session: &Session, problem: Option<&str>) -> Response {
    document(
        "Add an authenticator app",
        html! {
            @if let Some(problem) = problem { (view::problem(problem)) }
            p { "Your password is right. This directory requires a second factor, and your account has none yet: add an authenticator app now to finish signing in." }
            form method="post" action="/signin/enrol" {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="pass" { "Enrolment pass (only if your administrator gave you one)" }
                input id="pass" name="pass" type="text" autocomplete="off" spellcheck="false";
                button type="submit" { "Set up an authenticator app" }
            }
        },
    )
}

/// POST /signin: checks the password with identity.
pub async fn password(
    State(portal): State<Portal>,
    ip: ClientIp,
    headers: HeaderMap,
    CheckedForm(fields): CheckedForm,
) -> Response {
    let Some(session) = portal.session_of(&headers) else {
        return Redirect::to("/signin").into_response();
    };
    let user = fields.get("user").to_owned();
    let answer = AuthServiceClient::new(portal.0.upstreams.identity.clone())
        .sign_in(ip.request(
            ipb::SignInRequest {
                user_name: user.clone(),
                password: fields.get("password").to_owned(),
            },
            None,
        ))
        .await;
    let answer = match answer {
        Ok(answer) => answer.into_inner(),
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            return password_form(&session, &user, Some(status.message())).into_response();
        }
        Err(status) => return password_form(&session, &user, Some(&web::Failure::from(status).text())).into_response(),
    };
    if answer.mfa_pending {
        let pending = (answer.access_token, user);
        portal.0.sessions.update(&session.id, |s| {
            // A new sign-in starts clean: nothing an earlier one left is shown to it.
            s.mfa_pending = Some(pending);
            s.enrolling = None;
        });
        return code_form(&session, None).into_response();
    }
    if answer.enrollment_required {
        // The token can only add a first method: kept server-side for the enrolment pages.
        let pending = (answer.access_token, user);
        portal.0.sessions.update(&session.id, |s| {
            // A new sign-in starts clean: nothing an earlier one left is shown to it.
            s.mfa_pending = Some(pending);
            s.enrolling = None;
        });
        return first_method(&session, None);
    }
    signed_in(&portal, &session, answer, user)
}

/// POST /signin/code: the authenticator code after the password.
pub async fn code(
    State(portal): State<Portal>,
    ip: ClientIp,
    headers: HeaderMap,
    CheckedForm(fields): CheckedForm,
) -> Response {
    let Some(session) = portal.session_of(&headers) else {
        return Redirect::to("/signin").into_response();
    };
    let Some((pending, user)) = session.mfa_pending.clone() else {
        return Redirect::to("/signin").into_response();
    };
    let request = ip.request(
        ipb::VerifyRequest {
            code: fields.get("code").to_owned(),
        },
        Some(&pending),
    );
    match MfaServiceClient::new(portal.0.upstreams.identity.clone())
        .verify(request)
        .await
    {
        Ok(answer) => signed_in(&portal, &session, answer.into_inner(), user),
        Err(status) if status.code() == tonic::Code::Unauthenticated && !status.message().is_empty() => {
            code_form(&session, Some(status.message())).into_response()
        }
        Err(status) => code_form(&session, Some(&web::Failure::from(status).text())).into_response(),
    }
}

/// The sign-in is complete: a new session id (the one used before signing in is worth
/// nothing now) holds the tokens.
pub fn signed_in(portal: &Portal, session: &Session, answer: ipb::SignInResponse, name: String) -> Response {
    let renewed = complete(portal, session, answer, name);
    ([portal.cookie(Some(&renewed.id))], Redirect::to("/roles")).into_response()
}

/// The signed-in session that replaces `session` (its cookie is the caller's to set).
pub fn complete(portal: &Portal, session: &Session, answer: ipb::SignInResponse, name: String) -> Session {
    let user = SignedIn {
        principal_id: answer.principal_id,
        name,
        access_token: answer.access_token,
        refresh_token: answer.refresh_token,
        expires_ms: timestamp(&answer.expires_at).unwrap_or_default(),
    };
    portal.0.sessions.renew(session, Some(user))
}

/// POST /signout: this session's tokens stop working at identity, and the session ends.
pub async fn sign_out(caller: Caller, _: CheckedForm) -> Response {
    let portal = caller.portal.clone();
    if let Some(session) = portal.0.sessions.end(&caller.session.id) {
        end_tokens(&portal, session, false).await;
    }
    signed_out(&portal, "You are signed out; this session's tokens no longer work.")
}

/// POST /signout/everywhere: every session of this user ends, the portal's here and
/// identity's everywhere (the CLI's, other browsers', other portal replicas'), their tokens
/// with them: one call to identity ends them all.
pub async fn sign_out_everywhere(caller: Caller, _: CheckedForm) -> Response {
    let portal = caller.portal.clone();
    let sessions = portal.0.sessions.end_all_of(&caller.user.principal_id);
    if let Some(own) = sessions.into_iter().find(|s| s.id == caller.session.id) {
        end_tokens(&portal, own, true).await;
    }
    signed_out(
        &portal,
        "You are signed out everywhere: every session of yours (the portal's, the CLI's, other browsers') has ended, and its tokens no longer work.",
    )
}

async fn end_tokens(portal: &Portal, session: Session, everywhere: bool) {
    let Some(user) = session.signed_in else { return };
    let request = ClientIp::default().request(
        ipb::SignOutRequest {
            refresh_token: user.refresh_token,
            everywhere,
        },
        Some(&user.access_token),
    );
    if let Err(status) = AuthServiceClient::new(portal.0.upstreams.identity.clone())
        .sign_out(request)
        .await
    {
        // The session is gone from the portal either way; the token lapses at its expiry.
        tracing::warn!(code = ?status.code(), "identity did not confirm a portal sign-out");
    }
}

fn signed_out(portal: &Portal, text: &str) -> Response {
    (
        [portal.cookie(None)],
        Html(
            view::document(
                "Signed out",
                html! {
                    main id="main" .narrow {
                        h1 { "Signed out" }
                        p role="status" { (text) }
                        p { a href="/signin" { "Sign in again" } }
                    }
                },
            )
            .into_string(),
        ),
    )
        .into_response()
}
