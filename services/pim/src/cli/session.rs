//! The client side every command shares: the session (server, TLS, stored token,
//! read-your-writes token), names for the ids a command prints, and where tokens live.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::Request;
use tonic::transport::Channel;

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_proto::common::v1::PrincipalKind;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::config::TlsConfig;

use super::as_code::Kind;
use super::{ClientArgs, Named, OUTPUT, explain, listings};

#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) channel: Channel,
    token: Option<String>,
    /// Where the consistency token of this client's latest write is kept.
    fresh_path: Option<PathBuf>,
}

/// How long after a write this client's reads still wait for it (read-your-writes from one
/// command to the next; an older token is dropped, so a reset deployment never blocks reads).
const FRESH_FOR_MS: i64 = 60_000;

impl Session {
    pub(crate) fn open(args: &ClientArgs, signed_in: bool) -> anyhow::Result<Self> {
        let _ = OUTPUT.set((args.output, args.ids));
        let (server, ca) = target(args);
        // Tokens carry who calls; a password in the address would only be kept beside the
        // token (and shown wherever the address is).
        if server
            .split_once("://")
            .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or_default().contains('@'))
        {
            anyhow::bail!(
                "--server takes no credentials in its address (user:password@): pim signs in with pim login; give the address alone"
            );
        }
        let tls = TlsConfig {
            ca,
            client_cert: args.client_cert.clone(),
            client_key: args.client_key.clone(),
            ..TlsConfig::default()
        };
        let channel = pim_runtime::grpc::channel(&server, &tls)?;
        let token = if signed_in { Some(read_token(args)?) } else { None };
        if let Some(token) = &token
            && args.server.is_none()
        {
            remembered_for(args, token)?;
        }
        let fresh_path = token_path(args).ok().map(|p| beside(&p, "fresh"));
        Ok(Self {
            channel,
            token,
            fresh_path,
        })
    }

    /// The same server, called with `token`.
    pub(crate) fn with_token(&self, token: &str) -> Self {
        Self {
            channel: self.channel.clone(),
            token: Some(token.to_owned()),
            fresh_path: self.fresh_path.clone(),
        }
    }

    /// Keeps the consistency token a write answered with (merged with the last one), so this
    /// client's next reads, on any replica, see the write. Returns the answer's body.
    pub(crate) fn remember<T>(&self, response: tonic::Response<T>) -> T {
        use pim_runtime::consistency::{ConsistencyToken, TOKEN_HEADER};
        let written = response
            .metadata()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| ConsistencyToken::parse(t).ok());
        if let (Some(written), Some(path)) = (written, &self.fresh_path) {
            let held = ConsistencyToken::parse(&self.at_least_as_fresh()).unwrap_or_default();
            let line = format!("{} {}", pim_runtime::db::now_ms(), held.merge(&written));
            // Best effort: without it the next read may be a moment stale, nothing worse.
            let _ = write_private(path, line.as_bytes());
        }
        response.into_inner()
    }

    /// Sends an assignment request, keeping its consistency token (see [`Self::remember`]);
    /// a refusal is explained.
    pub(crate) async fn create_request(
        &self,
        request: apb::CreateRequestRequest,
    ) -> anyhow::Result<apb::AssignmentRequest> {
        let answer = AssignmentServiceClient::new(self.channel.clone())
            .create_request(self.request(request)?)
            .await
            .map_err(super::explain)?;
        Ok(self.remember(answer))
    }

    /// The consistency token of this client's latest write, if recent; empty otherwise.
    pub(crate) fn at_least_as_fresh(&self) -> String {
        let Some(text) = self.fresh_path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) else {
            return String::new();
        };
        match text.trim().split_once(' ') {
            Some((at, token))
                if at
                    .parse::<i64>()
                    .is_ok_and(|at| pim_runtime::db::now_ms() - at < FRESH_FOR_MS) =>
            {
                token.to_owned()
            }
            _ => String::new(),
        }
    }

    pub(crate) fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        pim_runtime::telemetry::inject(&mut request);
        request.set_timeout(Duration::from_secs(30));
        if let Some(token) = &self.token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().context("stored token is malformed")?,
            );
        }
        Ok(request)
    }

    /// The stored token's claims (the server verifies them on every call).
    pub(crate) fn claims(&self) -> anyhow::Result<serde_json::Value> {
        use base64::Engine;
        let token = self.token.as_deref().context("not signed in: run pim login first")?;
        let payload = token.split('.').nth(1).context("stored token is malformed")?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .context("stored token is malformed")?;
        serde_json::from_slice(&bytes).context("stored token is malformed")
    }

    /// The signed-in principal's id (from the token's claims; the server verifies them).
    pub(crate) fn whoami(&self) -> anyhow::Result<String> {
        self.claims()?["sub"]
            .as_str()
            .map(str::to_owned)
            .context("stored token has no subject")
    }

    /// A principal id, a user name, or a group's or service principal's display name (or
    /// `user:NAME`, `group:NAME`, `service-principal:NAME` where a name alone is ambiguous)
    /// → the principal id.
    pub(crate) async fn principal_id(&self, reference: &str) -> anyhow::Result<String> {
        let reference = reference.trim();
        if uuid::Uuid::parse_str(reference).is_ok() {
            return Ok(reference.to_owned());
        }
        let (kind, name) = Kind::split(reference);
        // A lookup the caller may not make is a step to take differently, never an answer
        // such as "not allowed" (`pim check`'s exit code 1).
        let refused = |status: &str| {
            anyhow::Error::new(LookupRefused(format!(
                "you may not look principals up by name ({status}); give {name:?}'s id instead"
            )))
        };
        let mut found: Vec<(Kind, String)> = Vec::new();
        if kind.is_none_or(|k| k == Kind::User) {
            let user = DirectoryServiceClient::new(self.channel.clone())
                .get_user(self.request(ipb::GetUserRequest { user: name.to_owned() })?)
                .await;
            match user {
                // One's own name means oneself: nothing else is looked up (listings a user may
                // not make would only leave refusals in the audit log).
                Ok(user) if self.whoami().is_ok_and(|me| me == user.get_ref().id) => return Ok(user.into_inner().id),
                Ok(user) => found.push((Kind::User, user.into_inner().id)),
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) if status.code() == tonic::Code::PermissionDenied => return Err(refused(status.message())),
                Err(status) => return Err(explain(status)),
            }
        }
        // Where a user has the name, groups or service principals the caller may not list
        // leave it theirs.
        let listed = |listing: anyhow::Result<Vec<(Kind, String, String)>>, found: &[(Kind, String)]| match listing {
            Ok(listed) => Ok(listed),
            Err(err) if super::is_denied(&err) && found.iter().any(|(k, _)| *k == Kind::User) => Ok(Vec::new()),
            Err(err) if super::is_denied(&err) => Err(refused(&format!("{err:#}"))),
            Err(err) => Err(err),
        };
        if kind.is_none_or(|k| k == Kind::Group) {
            let groups = listings::groups(self)
                .await
                .map(|gs| gs.into_iter().map(|g| (Kind::Group, g.display_name, g.id)).collect());
            let groups = listed(groups, &found)?;
            found.extend(
                groups
                    .into_iter()
                    .filter(|(_, n, _)| n == name)
                    .map(|(k, _, id)| (k, id)),
            );
        }
        if kind.is_none_or(|k| k == Kind::ServicePrincipal) {
            let sps = listings::service_principals(self, name).await.map(|sps| {
                sps.into_iter()
                    .map(|sp| (Kind::ServicePrincipal, sp.display_name, sp.id))
                    .collect()
            });
            let sps = listed(sps, &found)?;
            found.extend(sps.into_iter().filter(|(_, n, _)| n == name).map(|(k, _, id)| (k, id)));
        }
        match found.as_slice() {
            [(_, id)] => Ok(id.clone()),
            [] => Err(super::answers::not_found(format!(
                "no user, group or service principal is named {name:?}"
            ))),
            [(first, _), ..] if found.iter().all(|(k, _)| k == first) => {
                // One kind, several of that name (held twice before names had to be unique): only an
                // id tells them apart.
                let ids: Vec<&str> = found.iter().map(|(_, id)| id.as_str()).collect();
                bail!(
                    "{reference:?} names {} {}s ({}); give the id",
                    found.len(),
                    first.prefix(),
                    ids.join(", ")
                )
            }
            _ => {
                let kinds: Vec<String> = found.iter().map(|(k, id)| format!("{} {id}", k.prefix())).collect();
                bail!(
                    "{reference:?} names several principals ({}); write user:{name}, group:{name} or service-principal:{name}, or give the id",
                    kinds.join(", ")
                )
            }
        }
    }

    pub(crate) async fn role_id(&self, name_or_id: &str) -> anyhow::Result<String> {
        let role = RoleServiceClient::new(self.channel.clone())
            .get_role_definition(self.request(apb::GetRoleDefinitionRequest {
                role: name_or_id.to_owned(),
            })?)
            .await
            .map_err(explain)?;
        Ok(role.into_inner().id)
    }
}

/// A name the caller may not look up: a step to take differently (give the id; exit 2), and
/// for `pim check` a question it could not answer (exit 5).
#[derive(Debug)]
pub(crate) struct LookupRefused(String);

impl std::fmt::Display for LookupRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LookupRefused {}

/// Names for the ids a command prints, each looked up once: principals by their user name
/// (a group or service principal by its display name), roles by name. An id that cannot be
/// looked up is printed as it is.
pub(crate) struct Names<'a> {
    session: &'a Session,
    principals: BTreeMap<String, String>,
    roles: Option<BTreeMap<String, String>>,
}

impl<'a> Names<'a> {
    pub(crate) fn new(session: &'a Session) -> Self {
        Self {
            session,
            principals: BTreeMap::new(),
            roles: None,
        }
    }

    pub(crate) async fn principal(&mut self, id: &str) -> Named {
        if id.is_empty() {
            return Named::default();
        }
        if let Some(name) = self.principals.get(id) {
            return named(name, id);
        }
        let found = match self.session.request(ipb::GetPrincipalRequest {
            principal_id: id.to_owned(),
        }) {
            Ok(request) => DirectoryServiceClient::new(self.session.channel.clone())
                .get_principal(request)
                .await
                .ok()
                .map(|p| p.into_inner()),
            Err(_) => None,
        };
        // An app may be named as a person (`admin`): it is said to be an app, as the audit
        // names it.
        let name = found
            .map(|p| match (p.user_name.is_empty(), p.kind()) {
                (false, _) => p.user_name,
                (true, PrincipalKind::ServicePrincipal) if !p.display_name.is_empty() => {
                    format!("{} (app)", p.display_name)
                }
                (true, _) => p.display_name,
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id.to_owned());
        self.principals.insert(id.to_owned(), name.clone());
        named(&name, id)
    }

    pub(crate) async fn role(&mut self, id: &str) -> Named {
        if id.is_empty() {
            return Named::default();
        }
        if self.roles.is_none() {
            let listed = match self.session.request(apb::ListRoleDefinitionsRequest {}) {
                Ok(request) => RoleServiceClient::new(self.session.channel.clone())
                    .list_role_definitions(request)
                    .await
                    .map(|r| r.into_inner().roles)
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            self.roles = Some(listed.into_iter().map(|r| (r.id, r.name)).collect());
        }
        let name = self
            .roles
            .as_ref()
            .and_then(|roles| roles.get(id).cloned())
            .unwrap_or_else(|| id.to_owned());
        named(&name, id)
    }
}

fn named(name: &str, id: &str) -> Named {
    Named {
        name: name.to_owned(),
        id: id.to_owned(),
    }
}

pub(crate) fn token_path(args: &ClientArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.token_file {
        return Ok(p.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --token-file")?;
    Ok(PathBuf::from(home).join(".config/pim/token"))
}

pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// The file beside the token file that `suffix` names: `token.server` beside `token`,
/// `ci.prod.server` beside `ci.prod`. The whole name is kept, so two token files never share
/// one (`ci.prod` and `ci.stage` once shared `ci.server`, and one's token went to the other's
/// server).
pub(crate) fn beside(token_file: &Path, suffix: &str) -> PathBuf {
    let mut name = token_file.file_name().map(std::ffi::OsString::from).unwrap_or_default();
    name.push(format!(".{suffix}"));
    token_file.with_file_name(name)
}

/// What `pim login` remembered beside a token: the server it was signed in at, the CA trusted
/// then, and which token it was (a fingerprint; none in files older versions wrote).
struct Remembered {
    server: String,
    ca: Option<PathBuf>,
    fingerprint: Option<String>,
}

fn remembered(args: &ClientArgs) -> Option<Remembered> {
    let text = std::fs::read_to_string(beside(&token_path(args).ok()?, "server")).ok()?;
    let mut lines = text.lines().map(str::trim);
    let server = lines.next().filter(|s| !s.is_empty())?.to_owned();
    let ca = lines.next().filter(|l| !l.is_empty()).map(PathBuf::from);
    let fingerprint = lines.next().and_then(|l| l.strip_prefix("token ")).map(str::to_owned);
    Some(Remembered {
        server,
        ca,
        fingerprint,
    })
}

/// Which token a server file belongs to: enough of its SHA-256 to tell tokens apart (a token
/// file replaced, by a copy from elsewhere, leaves a server file that is not its own).
fn fingerprint(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.trim().as_bytes())[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Refuses to send `token` to a server it was not signed in at: without `--server`, the
/// server file beside the token must be there and belong to this token.
fn remembered_for(args: &ClientArgs, token: &str) -> anyhow::Result<()> {
    let path = token_path(args)?;
    let server_file = beside(&path, "server");
    let again = "pass --server (or set PIM_SERVER), or sign in again with pim login";
    match remembered(args) {
        None => bail!(
            "which server the token in {} was signed in at is not known (no {}): {again}",
            path.display(),
            server_file.display()
        ),
        Some(Remembered {
            fingerprint: Some(f), ..
        }) if f != fingerprint(token) => bail!(
            "{} names the server of another token than the one in {} (was the token file replaced?): {again}",
            server_file.display(),
            path.display()
        ),
        Some(_) => Ok(()),
    }
}

/// Where the CLI calls: `--server` (or PIM_SERVER) with `--ca`; else the server the token was
/// signed in at, with the CA trusted then; else the local default.
pub(crate) fn target(args: &ClientArgs) -> (String, Option<PathBuf>) {
    if let Some(server) = &args.server {
        return (server.clone(), args.ca.clone());
    }
    match remembered(args) {
        Some(r) => (r.server, args.ca.clone().or(r.ca)),
        None => (DEFAULT_SERVER.to_owned(), args.ca.clone()),
    }
}

/// Writes `contents` to `path` as a file of its own that only its owner may read (0600), put
/// in place by a rename: whatever was there (a file of another mode or owner, a link to
/// elsewhere) is replaced, never written through, and a reader never sees half a token.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().context("a token file needs a file name")?;
    let temporary = path.with_file_name(format!(".{}.{}", name.to_string_lossy(), uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&temporary)
        .and_then(|mut file| file.write_all(contents))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn read_token(args: &ClientArgs) -> anyhow::Result<String> {
    let path = token_path(args)?;
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("not signed in (no token at {}): run pim login first", path.display()))?;
    Ok(token.trim().to_owned())
}

pub(crate) fn write_token(args: &ClientArgs, token: &str) -> anyhow::Result<PathBuf> {
    let path = token_path(args)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // The token's server (and the CA trusted for it), so later commands need no --server,
    // first: a token is never left beside another token's server.
    let (server, ca) = target(args);
    let ca = ca
        .map(|ca| std::path::absolute(&ca).unwrap_or(ca).display().to_string())
        .unwrap_or_default();
    let remembered = format!("{server}\n{ca}\ntoken {}\n", fingerprint(token));
    write_private(&beside(&path, "server"), remembered.as_bytes())?;
    write_private(&path, token.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    /// A write's token is kept for the next command, merged with the one before, and
    /// forgotten once old.
    #[tokio::test]
    async fn the_client_passes_its_last_writes_token_to_its_next_reads() {
        use pim_runtime::consistency::TOKEN_HEADER;
        let dir = std::env::temp_dir().join(format!(
            "pim-cli-fresh-{}-{}",
            std::process::id(),
            pim_runtime::db::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let fresh = dir.join("token.fresh");
        let session = super::Session {
            channel: tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
            token: None,
            fresh_path: Some(fresh.clone()),
        };
        assert_eq!(session.at_least_as_fresh(), "");
        let written = |token: &str| {
            let mut response = tonic::Response::new(());
            response.metadata_mut().insert(TOKEN_HEADER, token.parse().unwrap());
            response
        };
        session.remember(written("v1;pim.identity.events=5-0"));
        session.remember(written("v1;pim.assignment.events=7-1;pim.identity.events=4-0"));
        assert_eq!(
            session.at_least_as_fresh(),
            "v1;pim.assignment.events=7-1;pim.identity.events=5-0"
        );
        session.remember(tonic::Response::new(()));
        assert_ne!(
            session.at_least_as_fresh(),
            "",
            "an answer without a token keeps the last"
        );
        let old = pim_runtime::db::now_ms() - super::FRESH_FOR_MS - 1;
        std::fs::write(&fresh, format!("{old} v1;pim.identity.events=5-0")).unwrap();
        assert_eq!(session.at_least_as_fresh(), "", "an old token is dropped");
        std::fs::remove_dir_all(dir).ok();
    }
}
