//! The web portal: server-rendered pages for requesters, approvers, reviewers and
//! administrators. It is a client of the other services over gRPC with the signed-in user's
//! token, like the CLI, so every rule, permission check and audit record stays where it is.
//!
//! - `session`: cookies, CSRF tokens, timeouts; the tokens stay on the server.
//! - `web`: what every page shares (the signed-in caller, security headers, failures, forms).
//! - `layout`, `view`: the document, the layout and the small pieces pages are made of (maud
//!   escapes every value); `lookup`: names for ids and ids for names.
//! - `signin`, `enrol` (authenticator apps), `account` (passkeys), `roles`, `decide`
//!   (approvals and reviews), `admin`, `directory`, `groups`, `policies`, `audit`: the pages.

// A handler's early exit is a ready `Response` (a redirect, a refusal page): boxing it would
// buy nothing on a path taken once per request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tonic::transport::Channel;

use pim_runtime::clock::Clock;

mod account;
mod admin;
mod audit;
mod decide;
mod directory;
mod enrol;
mod groups;
mod layout;
mod lookup;
mod policies;
mod roles;
pub mod session;
mod signin;
mod stepup;
mod view;
mod web;

pub use web::Failure;

/// Where the portal reaches each service (in `pim up`, all at the suite's one address).
#[derive(Clone)]
pub struct Upstreams {
    pub identity: Channel,
    pub assignment: Channel,
    pub approval: Channel,
    pub alerting: Channel,
    pub audit: Channel,
}

impl Upstreams {
    /// Every service behind one address (`pim up`, or a gateway).
    pub fn all_at(channel: Channel) -> Self {
        Self {
            identity: channel.clone(),
            assignment: channel.clone(),
            approval: channel.clone(),
            alerting: channel.clone(),
            audit: channel,
        }
    }
}

/// How the portal is served.
#[derive(Clone, Debug)]
pub struct PortalOptions {
    /// Cookies get `Secure` (and the `__Host-` prefix): the portal is reached over TLS
    /// (`PIM_PUBLIC_URL` is `https://…`).
    pub secure: bool,
    pub idle: std::time::Duration,
    pub lifetime: std::time::Duration,
    /// Proxies in front of the portal whose `x-forwarded-for` names the browser
    /// (`PIM_TRUSTED_PROXIES`); the browser's address goes on to the services the same way,
    /// with `pim up`'s key where it runs the portal.
    pub forwarders: pim_runtime::grpc::Forwarders,
    /// The origin browsers reach the portal at (`PIM_PUBLIC_URL`'s scheme, host and port):
    /// a form from it is the portal's own even where a proxy rewrote the `Host` header.
    pub public_origin: Option<String>,
}

impl PortalOptions {
    pub fn from_config(config: &pim_runtime::Config) -> Self {
        Self {
            secure: config.public_url.as_deref().is_some_and(|u| u.starts_with("https://")),
            idle: config.portal_idle,
            lifetime: config.portal_lifetime,
            forwarders: pim_runtime::grpc::Forwarders::from_config(config),
            public_origin: config.public_url.as_deref().map(origin_of),
        }
    }
}

/// `HTTPS://Portal.Example.com:443/base` → `https://portal.example.com`: the origin as a
/// browser sends it (lower case, no default port, no path).
fn origin_of(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_ascii_lowercase();
    };
    let scheme = scheme.to_ascii_lowercase();
    let host = rest
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    format!("{scheme}://{}", host.strip_suffix(default_port).unwrap_or(&host))
}

pub(crate) struct Inner {
    pub(crate) sessions: session::Sessions,
    pub(crate) upstreams: Upstreams,
    pub(crate) secure: bool,
    pub(crate) forwarders: pim_runtime::grpc::Forwarders,
    pub(crate) public_origin: Option<String>,
    /// Taken while a session's tokens are refreshed: a page loaded at the same moment waits
    /// and takes the new tokens, rather than showing the spent refresh token again (which
    /// identity takes for a stolen copy, and ends the session). One lock of
    /// [`REFRESH_LOCKS`] per session (by its id's hash): another session's slow refresh
    /// seldom holds it up, and the locks take no room per session.
    pub(crate) refreshing: Vec<tokio::sync::Mutex<()>>,
}

/// How many locks sessions' refreshes share.
const REFRESH_LOCKS: usize = 64;

impl Inner {
    /// The lock a session's refresh takes.
    pub(crate) fn refresh_lock(&self, session_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(session_id);
        &self.refreshing[(hash % self.refreshing.len() as u64) as usize]
    }
}

/// The portal's shared state: cheap to clone.
#[derive(Clone)]
pub struct Portal(pub(crate) Arc<Inner>);

impl Portal {
    pub fn new(upstreams: Upstreams, options: PortalOptions, clock: Arc<dyn Clock>) -> Self {
        Self(Arc::new(Inner {
            sessions: session::Sessions::new(clock, options.idle, options.lifetime),
            upstreams,
            secure: options.secure,
            forwarders: options.forwarders,
            public_origin: options.public_origin,
            refreshing: (0..REFRESH_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
        }))
    }

    /// Every page, with the security headers on every answer.
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/", get(roles::home))
            .route("/signin", get(signin::form).post(signin::password))
            .route("/signin/code", post(signin::code))
            .route("/signin/enrol", post(enrol::begin_at_sign_in))
            .route("/signin/enrol/confirm", post(enrol::confirm_at_sign_in))
            .route("/signin/passkey/begin", post(account::sign_in_begin))
            .route("/signin/passkey/finish", post(account::sign_in_finish))
            .route("/stepup/passkey/begin", post(account::step_up_begin))
            .route("/stepup/passkey/finish", post(account::step_up_finish))
            .route("/account", get(account::page))
            .route("/account/verify", post(account::verify))
            .route("/account/totp", post(enrol::begin))
            .route("/account/totp/confirm", post(enrol::confirm))
            .route("/account/recovery-codes", post(enrol::recovery_codes))
            .route("/account/methods/{id}/remove", post(account::remove))
            .route("/account/passkeys/begin", post(account::register_begin))
            .route("/account/passkeys/finish", post(account::register_finish))
            .route("/signout", post(signin::sign_out))
            .route("/signout/everywhere", post(signin::sign_out_everywhere))
            .route("/roles", get(roles::my_roles))
            .route("/roles/activate", post(roles::activate))
            .route("/roles/deactivate", post(roles::deactivate))
            .route("/roles/extend", post(roles::extend))
            .route("/requests", get(roles::my_requests))
            .route("/requests/{id}", get(roles::request))
            .route("/requests/{id}/status", get(roles::request_status))
            .route("/requests/{id}/cancel", post(roles::cancel))
            .route("/approvals", get(decide::approvals))
            .route("/approvals/{id}", get(decide::approval).post(decide::decide))
            .route("/reviews", get(decide::reviews).post(decide::start))
            // Mails link to a review by id: its items are on the reviews page.
            .route(
                "/reviews/{id}",
                get(|| async { axum::response::Redirect::to("/reviews") }),
            )
            .route("/reviews/items/{id}", post(decide::record))
            .route("/admin/alerts", get(admin::alerts))
            .route("/admin/policies", get(policies::page).post(policies::save))
            .route(
                "/admin/assignments",
                get(directory::assignments_page).post(directory::assign),
            )
            .route("/admin/assignments/remove", post(directory::remove))
            .route("/admin/directory", get(directory::directory_page))
            .route("/admin/users", post(directory::create_user))
            .route("/admin/users/{id}/{change}", post(directory::set_enabled))
            .route("/admin/passes/{id}", post(directory::enrolment_pass))
            .route("/admin/service-principals", post(directory::create_service_principal))
            .route(
                "/admin/service-principals/{id}/{change}",
                post(directory::change_service_principal),
            )
            .route("/admin/groups", post(groups::create))
            .route("/admin/groups/{id}", get(groups::page))
            .route("/admin/groups/{id}/{link}/{change}", post(groups::change))
            .route("/admin/audit", get(audit::page))
            .route("/admin/audit/verify", post(audit::verify))
            .route("/admin/audit/export", get(audit::export))
            .route("/admin/alerts/{id}", post(admin::change_alert))
            .route("/healthz", get(|| async { "ok" }))
            .route("/static/portal.css", get(web::stylesheet))
            .route("/static/portal.js", get(web::script))
            .fallback(web::not_found)
            .layer(axum::middleware::from_fn(web::page_status))
            .layer(axum::middleware::map_response(web::security_headers));
        // Reached over https (PIM_PUBLIC_URL): browsers keep to it for a year.
        let routes = if self.0.secure {
            routes.layer(axum::middleware::map_response(web::strict_transport))
        } else {
            routes
        };
        routes.with_state(self.clone())
    }

    /// Serves the portal on `listener` until `shutdown` completes
    /// ([`pim_runtime::listen::serve_http`]: no connection held open by a silent or slow client).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        pim_runtime::listen::serve_http(listener, self.router(), shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    #[test]
    fn the_public_origin_is_written_as_browsers_send_it() {
        assert_eq!(
            super::origin_of("HTTPS://Portal.Example.com:443/base/"),
            "https://portal.example.com"
        );
        assert_eq!(super::origin_of("http://localhost:8080"), "http://localhost:8080");
        assert_eq!(super::origin_of("http://pim.example:80?x"), "http://pim.example");
    }

    /// A portal reached over https tells browsers to keep to it; one over plain http cannot.
    #[tokio::test]
    async fn over_https_browsers_are_told_to_keep_to_it() {
        let portal = |secure| {
            let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
            super::Portal::new(
                super::Upstreams::all_at(channel),
                super::PortalOptions {
                    secure,
                    idle: std::time::Duration::from_secs(1800),
                    lifetime: std::time::Duration::from_secs(8 * 3600),
                    forwarders: Default::default(),
                    public_origin: None,
                },
                std::sync::Arc::new(pim_runtime::clock::SystemClock),
            )
        };
        for (secure, expected) in [(true, Some("max-age=31536000")), (false, None)] {
            let request = http::Request::get("/healthz")
                .body(axum::body::Body::empty())
                .expect("a request");
            let response = portal(secure).router().oneshot(request).await.expect("an answer");
            let hsts = response.headers().get("strict-transport-security");
            assert_eq!(hsts.and_then(|v| v.to_str().ok()), expected, "secure: {secure}");
        }
    }
}
