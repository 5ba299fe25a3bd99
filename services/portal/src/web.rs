//! What every page shares: the signed-in caller (tokens refreshed before they lapse), the
//! checks on every form (CSRF token and origin), the security headers on every answer, and
//! how a service's refusal or fault becomes a page.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tonic::Code;

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_runtime::db::from_timestamp;

use crate::session::{self, Session, SignedIn};
use crate::{Portal, layout};

/// Why an action did not happen, in the portal's words.
#[derive(Debug)]
pub enum Failure {
    /// The session's token no longer works: sign in again.
    SignedOut,
    /// The service wants a recent multi-factor authentication (`MfaRule`): step up, retry.
    /// Its words say which (a passkey, where a code does not do).
    MfaNeeded(String),
    /// The service refused, with a message meant for the person (bad input, a rule, a
    /// permission): shown as it is, the page answered with the HTTP status that says which
    /// (400 bad input, 403 not allowed, 404 not found, 409 a rule or the state of things, 429
    /// too many).
    Refused(StatusCode, String),
    /// Something broke: the person sees a reference, the log has the details.
    Fault(String),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        // Only then: where another rule failed too, a step-up would not do, and every rule
        // is shown.
        if pim_runtime::grpc::violated_rules(&status) == ["MfaRule"] {
            return Self::MfaNeeded(status.message().to_owned());
        }
        let refused = |http: StatusCode| Self::Refused(http, status.message().to_owned());
        match status.code() {
            Code::Unauthenticated => Self::SignedOut,
            Code::InvalidArgument | Code::OutOfRange => refused(StatusCode::BAD_REQUEST),
            Code::PermissionDenied => refused(StatusCode::FORBIDDEN),
            Code::NotFound => refused(StatusCode::NOT_FOUND),
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => refused(StatusCode::CONFLICT),
            Code::ResourceExhausted => refused(StatusCode::TOO_MANY_REQUESTS),
            code => {
                let reference = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
                tracing::error!(%reference, ?code, message = status.message(), "a service call from the portal failed");
                Self::Fault(reference)
            }
        }
    }
}

impl Failure {
    /// A refusal of what the person wrote (400).
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::Refused(StatusCode::BAD_REQUEST, message.into())
    }

    /// The HTTP status a page showing this failure answers with.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::SignedOut => StatusCode::UNAUTHORIZED,
            Self::MfaNeeded(_) => StatusCode::FORBIDDEN,
            Self::Refused(status, _) => *status,
            Self::Fault(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// What the person reads.
    pub fn text(&self) -> String {
        match self {
            Self::SignedOut => "Your session has ended: sign in again.".into(),
            Self::MfaNeeded(message) => message.clone(),
            Self::Refused(_, message) => message.clone(),
            Self::Fault(reference) => format!(
                "Something went wrong on our side and nothing was changed by this page. \
                 If it happens again, give your administrator the reference {reference}."
            ),
        }
    }
}

/// The browser's address: the connection's peer, or where a trusted proxy says it forwards
/// for. Every call the portal makes for the browser names it in `x-forwarded-for`, so sign-in
/// limits and audit records count the person, not the portal.
#[derive(Clone, Default)]
pub struct ClientIp {
    ip: Option<std::net::IpAddr>,
    /// `pim up`'s key, which makes the services believe the address this forwards.
    forwarder_key: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientIp({:?})", self.ip)
    }
}

impl FromRequestParts<Portal> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, portal: &Portal) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts, portal))
    }
}

impl ClientIp {
    fn of(parts: &Parts, portal: &Portal) -> Self {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip());
        let forwarded: Vec<&str> = parts
            .headers
            .get_all(pim_runtime::grpc::FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Self {
            ip: pim_runtime::grpc::client_ip(peer, &forwarded, &portal.0.forwarders.trusted),
            forwarder_key: portal.0.forwarders.key.clone(),
        }
    }

    /// A gRPC request for this browser, with `token` when there is one.
    pub fn request<T>(&self, message: T, token: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        pim_runtime::telemetry::inject(&mut request);
        request.set_timeout(Duration::from_secs(15));
        if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(value) = self.ip.and_then(|ip| ip.to_string().parse().ok()) {
            request.metadata_mut().insert(pim_runtime::grpc::FORWARDED_FOR, value);
            if let Some(key) = self.forwarder_key.as_deref().and_then(|k| k.parse().ok()) {
                request.metadata_mut().insert(pim_runtime::grpc::FORWARDER_KEY, key);
            }
        }
        request
    }
}

/// A signed-in caller of a page: the session and the user it holds.
pub struct Caller {
    pub session: Session,
    pub user: SignedIn,
    pub portal: Portal,
    pub ip: ClientIp,
    /// What the page answers with when it shows a failure ([`Caller::failed`]).
    page_status: PageStatus,
}

/// The HTTP status a page that shows a failure answers with, where the page is still drawn
/// (200 otherwise): set by [`Caller::failed`], put on the response by [`page_status`].
#[derive(Clone, Default)]
pub struct PageStatus(std::sync::Arc<std::sync::atomic::AtomicU16>);

/// Gives each request a [`PageStatus`], and the page drawn the status of the failure it
/// shows: a refusal is a 403 or a 404 to a script, a scanner or a proxy's log, not a 200.
pub async fn page_status(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use std::sync::atomic::Ordering;
    let status = PageStatus::default();
    request.extensions_mut().insert(status.clone());
    let mut response = next.run(request).await;
    let failed = StatusCode::from_u16(status.0.load(Ordering::Relaxed)).ok();
    if let Some(failed) = failed
        && response.status() == StatusCode::OK
    {
        *response.status_mut() = failed;
    }
    response
}

impl Caller {
    /// A gRPC request carrying the user's token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.ip.request(message, Some(&self.user.access_token))
    }

    /// Keeps the tokens a step-up (or refresh) answered with.
    pub fn keep_tokens(&mut self, answer: &ipb::SignInResponse) {
        self.user.access_token = answer.access_token.clone();
        if !answer.refresh_token.is_empty() {
            self.user.refresh_token = answer.refresh_token.clone();
        }
        self.user.expires_ms = answer.expires_at.as_ref().map(from_timestamp).unwrap_or_default();
        let user = self.user.clone();
        self.portal
            .0
            .sessions
            .update(&self.session.id, |s| s.signed_in = Some(user));
    }

    /// The flash message to show once, taken from the session.
    pub fn take_flash(&self) -> Option<(bool, String)> {
        let mut flash = None;
        self.portal
            .0
            .sessions
            .update(&self.session.id, |s| flash = s.flash.take());
        flash
    }

    /// What a page shows where its content failed. A token no longer good (signed out
    /// elsewhere, the user disabled) ends this session too: the next page is the sign-in.
    pub fn failed(&self, failure: Failure) -> maud::Markup {
        self.page_status
            .0
            .store(failure.http_status().as_u16(), std::sync::atomic::Ordering::Relaxed);
        if matches!(failure, Failure::SignedOut) {
            self.portal.0.sessions.end(&self.session.id);
            return maud::html! {
                p.flash.bad role="alert" { (failure.text()) " " a href="/signin" { "Sign in" } }
            };
        }
        layout::problem(&failure.text())
    }

    pub fn flash(&self, good: bool, text: impl Into<String>) {
        let text = text.into();
        self.portal
            .0
            .sessions
            .update(&self.session.id, |s| s.flash = Some((good, text)));
    }
}

impl FromRequestParts<Portal> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Portal) -> Result<Self, Response> {
        // What a page's script asks by itself (`x-pim-poll`) leaves the idle time running, and
        // once the session is gone it is told so (401), not sent to a page it cannot show.
        let polled = parts.headers.contains_key(POLL_HEADER);
        let to_sign_in = || match polled {
            true => StatusCode::UNAUTHORIZED.into_response(),
            false => Redirect::to("/signin").into_response(),
        };
        let session = match polled {
            true => portal.polled_session_of(&parts.headers),
            false => portal.session_of(&parts.headers),
        }
        .ok_or_else(to_sign_in)?;
        let Some(user) = session.signed_in.clone() else {
            return Err(to_sign_in());
        };
        let mut caller = Caller {
            session,
            user,
            portal: portal.clone(),
            ip: ClientIp::of(parts, portal),
            page_status: parts.extensions.get::<PageStatus>().cloned().unwrap_or_default(),
        };
        // A token about to lapse is refreshed first, so a page never fails half-way; one
        // refresh at a time, and a page that waited for another takes what it got.
        let lapsing = |caller: &Caller| caller.user.expires_ms - portal.0.sessions.now_ms() < 60_000;
        let _refreshing = if lapsing(&caller) {
            let turn = portal.0.refresh_lock(&caller.session.id).lock().await;
            if let Some(user) = portal.polled_session_of(&parts.headers).and_then(|s| s.signed_in) {
                caller.user = user;
            }
            Some(turn)
        } else {
            None
        };
        if lapsing(&caller) {
            let refreshed = AuthServiceClient::new(portal.0.upstreams.identity.clone())
                .refresh(caller.ip.request(
                    ipb::RefreshRequest {
                        refresh_token: caller.user.refresh_token.clone(),
                    },
                    None,
                ))
                .await;
            match refreshed {
                Ok(answer) => caller.keep_tokens(&answer.into_inner()),
                Err(_) => {
                    portal.0.sessions.end(&caller.session.id);
                    return Err(to_sign_in());
                }
            }
        }
        Ok(caller)
    }
}

impl Portal {
    /// The session the request's cookie names, if it is still held.
    pub(crate) fn session_of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = session::from_cookies(headers, self.0.secure)?;
        self.0.sessions.get(&id)
    }

    /// The same for a page's own poll: the session's idle time is not restarted.
    fn polled_session_of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = session::from_cookies(headers, self.0.secure)?;
        self.0.sessions.peek(&id)
    }

    pub(crate) fn cookie(&self, id: Option<&str>) -> (header::HeaderName, String) {
        (header::SET_COOKIE, session::set_cookie(id, self.0.secure))
    }
}

/// The header a page's script sends with what it asks by itself (see `portal.js`).
const POLL_HEADER: &str = "x-pim-poll";

/// A form's fields, in order.
#[derive(serde::Deserialize, Default)]
#[serde(transparent)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .unwrap_or_default()
    }
}

/// A form from one of the portal's own pages ([`check_form`] passed): what every POST
/// handler takes, so none can forget the check.
pub struct CheckedForm(pub Fields);

impl axum::extract::FromRequest<Portal> for CheckedForm {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, portal: &Portal) -> Result<Self, Response> {
        let Some(session) = portal.session_of(request.headers()) else {
            return Err(Redirect::to("/signin").into_response());
        };
        let headers = request.headers().clone();
        let axum::Form(fields) = axum::Form::<Fields>::from_request(request, portal)
            .await
            .map_err(IntoResponse::into_response)?;
        check_form(&headers, &session, &fields, portal.0.public_origin.as_deref())?;
        Ok(Self(fields))
    }
}

/// Refuses a form not sent from one of this portal's own pages: its CSRF token must be the
/// session's, and a browser's `Origin` (or `Sec-Fetch-Site`) must say this site.
pub fn check_form(
    headers: &HeaderMap,
    session: &Session,
    fields: &Fields,
    public: Option<&str>,
) -> Result<(), Response> {
    check_token(headers, session, fields.get("csrf"), public)
}

/// Whether a `Host` header names this machine's loopback: `localhost`, 127.0.0.0/8 or `[::1]`,
/// with or without a port.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// As [`check_form`], for the script's JSON calls: the token in `x-csrf-token`.
pub fn check_call(headers: &HeaderMap, session: &Session, public: Option<&str>) -> Result<(), Response> {
    let token = headers
        .get("x-csrf-token")
        .and_then(|t| t.to_str().ok())
        .unwrap_or_default();
    check_token(headers, session, token, public)
}

/// `public`: the origin browsers reach the portal at (`PIM_PUBLIC_URL`), where known: then a
/// form's Origin must be it, scheme and all (a page of another name that resolves here, DNS
/// rebinding, sends a Host of its own), or name the Host asked where that is a loopback
/// address (`pim up` opened at 127.0.0.1 rather than localhost; no name of an attacker's
/// is one). Where unknown, the Origin must name the Host asked.
fn check_token(headers: &HeaderMap, session: &Session, token: &str, public: Option<&str>) -> Result<(), Response> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let cross_origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|origin| {
            let names_host = origin.split_once("://").map(|(_, h)| h) == Some(host);
            match public {
                Some(public) => origin != public && !(names_host && is_loopback(host)),
                None => !names_host,
            }
        });
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|s| s.as_bytes() == b"cross-site");
    if cross_origin || cross_site || !session::same(token, &session.csrf) {
        tracing::warn!(
            cross_origin,
            cross_site,
            "refused a form not sent from the portal's own page"
        );
        return Err((
            StatusCode::FORBIDDEN,
            layout::bare_page(
                "Refused",
                "This form was not sent from this portal's own page, or the page is too old. \
                 Go back, reload the page and try again.",
            ),
        )
            .into_response());
    }
    Ok(())
}

/// The headers every answer carries: a strict Content-Security-Policy (no inline script or
/// style), no framing, no sniffing, no referrer, nothing cached.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let cached = headers.contains_key(header::CACHE_CONTROL);
    let mut set = |name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set("x-content-type-options", "nosniff");
    set("x-frame-options", "DENY");
    // Not `no-referrer`: with it Chromium sends `Origin: null` on the portal's own forms.
    set("referrer-policy", "same-origin");
    set("cross-origin-opener-policy", "same-origin");
    if !cached {
        set("cache-control", "no-store");
    }
    response
}

/// `Strict-Transport-Security` for a portal reached over https: a browser that met it once
/// never goes to it over plain http again (a year).
pub async fn strict_transport(mut response: Response) -> Response {
    response.headers_mut().insert(
        "strict-transport-security",
        HeaderValue::from_static("max-age=31536000"),
    );
    response
}

/// A failure as the page's script reads it.
pub fn json_failure(failure: Failure) -> Response {
    (
        failure.http_status(),
        axum::Json(serde_json::json!({ "error": failure.text() })),
    )
        .into_response()
}

pub async fn stylesheet() -> Response {
    static_file("text/css; charset=utf-8", include_str!("../static/portal.css"))
}

pub async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", include_str!("../static/portal.js"))
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

pub async fn not_found(State(_): State<Portal>) -> Response {
    (
        StatusCode::NOT_FOUND,
        layout::bare_page("Not found", "There is no such page here."),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Sessions;
    use pim_runtime::clock::ManualClock;

    fn form(csrf: &str) -> Fields {
        Fields(vec![("csrf".into(), csrf.into()), ("role_id".into(), "r".into())])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("portal.example.com"));
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn a_form_needs_the_sessions_csrf_token_and_this_sites_origin() {
        let sessions = Sessions::new(
            std::sync::Arc::new(ManualClock::starting_now()),
            Duration::from_secs(1800),
            Duration::from_secs(8 * 3600),
        );
        let session = sessions.start();
        let own = [("origin", "https://portal.example.com")];
        assert!(check_form(&headers(&own), &session, &form(&session.csrf), None).is_ok());
        assert!(
            check_form(&headers(&[]), &session, &form(&session.csrf), None).is_ok(),
            "no Origin (an older browser): the token decides"
        );
        let refused = |h: HeaderMap, f: Fields| check_form(&h, &session, &f, None).map_err(|r| r.status());
        assert_eq!(refused(headers(&own), form("")), Err(StatusCode::FORBIDDEN));
        assert_eq!(refused(headers(&own), form("guessed")), Err(StatusCode::FORBIDDEN));
        let other = sessions.start();
        assert_eq!(
            refused(headers(&own), form(&other.csrf)),
            Err(StatusCode::FORBIDDEN),
            "another session's token"
        );
        for origin in [
            "https://evil.example.com",
            "https://portal.example.com.evil.example",
            "null",
        ] {
            assert_eq!(
                refused(headers(&[("origin", origin)]), form(&session.csrf)),
                Err(StatusCode::FORBIDDEN),
                "{origin}"
            );
        }
        assert_eq!(
            refused(headers(&[("sec-fetch-site", "cross-site")]), form(&session.csrf)),
            Err(StatusCode::FORBIDDEN)
        );
        // Behind a proxy that rewrites Host, the public origin (PIM_PUBLIC_URL) is the portal's.
        let proxied = |origin: &str| {
            let mut h = headers(&[("origin", origin)]);
            h.insert(header::HOST, HeaderValue::from_static("pim-portal:8080"));
            check_form(&h, &session, &form(&session.csrf), Some("https://portal.example.com")).map_err(|r| r.status())
        };
        assert!(proxied("https://portal.example.com").is_ok());
        assert_eq!(proxied("https://evil.example.com"), Err(StatusCode::FORBIDDEN));
        // Where the public origin is known, it alone is the portal's: not the same host over
        // plain http, nor a name that resolves here and sends a Host of its own.
        let public = |origin: &str, host: &'static str| {
            let mut h = headers(&[("origin", origin)]);
            h.insert(header::HOST, HeaderValue::from_static(host));
            check_form(&h, &session, &form(&session.csrf), Some("https://portal.example.com")).map_err(|r| r.status())
        };
        assert!(public("https://portal.example.com", "portal.example.com").is_ok());
        assert_eq!(
            public("http://portal.example.com", "portal.example.com"),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            public("http://rebound.example", "rebound.example"),
            Err(StatusCode::FORBIDDEN)
        );
        // The same machine by another loopback name than PIM_PUBLIC_URL's (pim up opened at
        // 127.0.0.1 rather than localhost) is still the portal.
        assert!(public("http://127.0.0.1:8080", "127.0.0.1:8080").is_ok());
        assert!(public("http://[::1]:8080", "[::1]:8080").is_ok());
    }

    #[test]
    fn a_fault_shows_a_reference_never_the_services_words() {
        let fault = Failure::from(tonic::Status::internal("SELECT * FROM users failed at db-7:5432"));
        let text = fault.text();
        assert!(!text.contains("db-7") && !text.contains("SELECT"), "{text}");
        assert!(text.contains("reference"), "{text}");
        let refused = Failure::from(tonic::Status::invalid_argument("justification is required"));
        assert_eq!(refused.text(), "justification is required");
        assert!(matches!(
            Failure::from(tonic::Status::unauthenticated("token expired")),
            Failure::SignedOut
        ));
    }
}
