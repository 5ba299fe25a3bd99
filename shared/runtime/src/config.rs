//! Configuration: defaults, then an optional TOML file, then `PIM_*` environment variables,
//! validated into one typed struct. The loader takes the environment as an argument so tests
//! never mutate the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// A value that must never reach a log: `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// TLS material: PEM files for a server certificate and key, and optionally a CA that
/// clients use to verify servers; for mutual TLS, a CA whose client certificates the server
/// requires, and the certificate and key this process presents to its peers.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// Clients must present a certificate this CA signed (`PIM_TLS_CLIENT_CA`).
    pub client_ca: Option<PathBuf>,
    /// What this process presents when it calls a peer (`PIM_TLS_CLIENT_CERT`, `PIM_TLS_CLIENT_KEY`).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the gRPC server listens (`PIM_LISTEN_ADDR`).
    pub listen_addr: SocketAddr,
    /// Where `GET /metrics` is served (`PIM_ADMIN_ADDR`); unset: nowhere.
    pub admin_addr: Option<SocketAddr>,
    /// Where audit serves the Shared Signals transmitter over HTTP (`PIM_SSF_ADDR`); unset:
    /// nowhere (`pim up` serves it on the port after the gRPC one).
    pub ssf_addr: Option<SocketAddr>,
    /// Where the web portal listens (`PIM_PORTAL_ADDR`); unset: nowhere (`pim up` serves it
    /// on the port two after the gRPC one).
    pub portal_addr: Option<SocketAddr>,
    /// How long a portal session lasts without use (`PIM_PORTAL_IDLE_SECS`, default 30 min),
    /// and at most (`PIM_PORTAL_SESSION_SECS`, default 8 h).
    pub portal_idle: Duration,
    pub portal_lifetime: Duration,
    /// The transmitter's issuer: the URL receivers reach it at (`PIM_SSF_ISSUER`, e.g. behind
    /// a TLS proxy); default `http://` and the address it is served on.
    pub ssf_issuer: Option<String>,
    /// Which generation of the transmitter's signing key signs (`PIM_SSF_KEY_GENERATION`,
    /// default 1): raising it rotates the key; the one before stays published.
    pub ssf_key_generation: u32,
    /// Whether Shared Signals receivers may push to loopback, private and link-local addresses
    /// (`PIM_SSF_PRIVATE_RECEIVERS=on`; default off: a receiver is an app, and must not make
    /// PIM post into the network it runs in).
    pub ssf_private_receivers: bool,
    /// The service's own database (`PIM_DATABASE_URL`); `pim up` uses SQLite files instead.
    pub database_url: Option<Secret<String>>,
    /// Redis for the event streams (`PIM_REDIS_URL`); unset means embedded delivery.
    pub redis_url: Option<Secret<String>>,
    /// PEM files for TLS to Redis (`rediss://`): a CA to trust instead of the system's roots
    /// (`PIM_REDIS_TLS_CA`), and a client certificate and key (`PIM_REDIS_TLS_CERT`, `PIM_REDIS_TLS_KEY`).
    pub redis_tls_ca: Option<PathBuf>,
    pub redis_tls_cert: Option<PathBuf>,
    pub redis_tls_key: Option<PathBuf>,
    /// Prepended to every stream name (`PIM_STREAM_PREFIX`), so parallel runs share one Redis.
    pub stream_prefix: String,
    /// Where `pim up` keeps its SQLite files (`PIM_DATA_DIR`).
    pub data_dir: PathBuf,
    /// The identity service, for services hosted without it (`PIM_IDENTITY_URL`).
    pub identity_url: Option<String>,
    /// The assignment service, for services hosted without it (`PIM_ASSIGNMENT_URL`).
    pub assignment_url: Option<String>,
    /// The approval, alerting and audit services, for the gateway (`PIM_APPROVAL_URL`,
    /// `PIM_ALERTING_URL`, `PIM_AUDIT_URL`).
    pub approval_url: Option<String>,
    pub alerting_url: Option<String>,
    pub audit_url: Option<String>,
    /// Proxies whose `x-forwarded-for` is believed (`PIM_TRUSTED_PROXIES`: IP addresses or
    /// networks such as 10.244.0.0/16, comma separated), such as the gateway's: a call through
    /// them counts as coming from the address they forwarded for (sign-in limits, audit).
    /// Empty: the peer's address, always.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// What the portal `pim up` runs in its own process proves itself with to the services
    /// ([`crate::grpc::FORWARDER_KEY`]), so that its browsers' addresses are believed while
    /// another caller on the same host is not: a random key per process, never configured.
    pub forwarder_key: Option<Secret<String>>,
    pub tls: TlsConfig,
    /// Lifetime of access tokens (`PIM_ACCESS_TOKEN_TTL_SECS`).
    pub access_token_ttl: Duration,
    /// How long a CheckAccess answer may be reused (`PIM_ACCESS_CACHE_TTL_MS`).
    pub access_cache_ttl: Duration,
    /// Deliveries of one stream entry before it goes to the dead-letter stream.
    pub max_deliveries: u32,
    /// How long an entry stays pending with a silent consumer before another claims it.
    pub claim_idle: Duration,
    /// JSON log lines (`PIM_LOG_FORMAT=json`) or human-readable (`pretty`).
    pub log_json: bool,
    /// How many role-assignable groups may exist (`PIM_MAX_ROLE_ASSIGNABLE_GROUPS`; Entra: 500).
    pub max_role_assignable_groups: u64,
    /// How old the token signing key may get before identity rotates it (`PIM_SIGNING_KEY_ROTATION_DAYS`).
    pub signing_key_rotation: Duration,
    /// Seals secrets identity must read back (TOTP seeds): base64 of 32 random bytes
    /// (`PIM_SECRETS_KEY`; `pim up` keeps one in its data directory).
    pub secrets_key: Option<Secret<String>>,
    /// The keys `secrets_key` replaced, newest first, comma-separated
    /// (`PIM_SECRETS_KEY_PREVIOUS`): they open what they sealed; identity seals it again.
    pub secrets_key_previous: Option<Secret<String>>,
    /// Keys the HMAC under which audit keeps values it must correlate but not disclose
    /// (source addresses, user agents) (`PIM_AUDIT_HMAC_KEY`; `PIM_SECRETS_KEY` when unset).
    pub audit_hmac_key: Option<Secret<String>>,
    /// Where audit sends notification mail (`PIM_SMTP_URL`: `smtp://host:25` plain,
    /// `smtp://user:password@host:587?tls=required` with STARTTLS, `smtps://host:465` with TLS);
    /// unset: no mail.
    pub smtp_url: Option<Secret<String>>,
    /// The sender of notification mail (`PIM_SMTP_FROM`, e.g. `PIM <pim@example.com>`).
    pub smtp_from: String,
    /// Where people reach PIM (`PIM_PUBLIC_URL`): mails link to requests there.
    pub public_url: Option<String>,
    /// How long audit keeps records (`PIM_AUDIT_RETENTION_DAYS`; unset or 0: for ever).
    pub audit_retention: Option<Duration>,
    /// Whether sign-in needs MFA (`PIM_SIGNIN_MFA`: `off`, `when_enrolled`, `required`).
    pub signin_mfa: SigninMfa,
    /// How long after an administrator creates an account or resets its MFA the user may
    /// enrol a first method with the password alone (`PIM_MFA_ENROLLMENT_WINDOW_SECS`).
    pub mfa_enrollment_window: Duration,
    /// How long before an active role ends its holder is told (`PIM_EXPIRY_NOTICE_SECS`,
    /// 15 minutes; 0: never).
    pub expiry_notice: Duration,
    /// Whether assignment and approval work out who must hear of each change
    /// (`PIM_NOTIFICATIONS`: `on` or `off`; by default on where `PIM_SMTP_URL` is set, i.e. in
    /// `pim up` with mail; set it on assignment's and approval's processes in the distributed
    /// shape).
    pub notifications: bool,
    /// How recent an MFA must be to manage MFA methods or change a password
    /// (`PIM_MFA_STEP_UP_SECS`; the default policy's activation freshness, 10 minutes).
    pub mfa_step_up: Duration,
    /// The Ed25519 keys the hosted services sign their events with, `service:base64-seed`
    /// each (`PIM_EVENT_SIGNING_KEYS`; `pim up` keeps them in its data directory).
    pub event_signing_keys: Option<Secret<String>>,
    /// The public keys of every service whose events this process reads, `service:base64`
    /// each, several per service while a key rotates (`PIM_EVENT_VERIFYING_KEYS`).
    pub event_verifying_keys: Option<String>,
    /// How long published events stay in their producer's outbox so `pim events replay` can
    /// publish them again after Redis lost them (`PIM_EVENT_REPLAY_HOURS`; 0: not kept).
    pub event_replay_window: Duration,
}

/// Whether the server requires MFA at sign-in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SigninMfa {
    /// A password alone signs in; MFA is asked only where a rule asks for it (step-up).
    Off,
    /// A user who has a method must verify a code before their token does anything.
    #[default]
    WhenEnrolled,
    /// As `WhenEnrolled`, and a user without a method must enrol one (with a pass) first.
    Required,
}

impl std::str::FromStr for SigninMfa {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "off" => Ok(Self::Off),
            "when_enrolled" => Ok(Self::WhenEnrolled),
            "required" => Ok(Self::Required),
            other => bail!("PIM_SIGNIN_MFA must be off, when_enrolled or required, not {other:?}"),
        }
    }
}

impl Config {
    /// Loads the configuration from `env` (e.g. `std::env::vars()`), reading the TOML file
    /// named by `PIM_CONFIG` first when there is one.
    pub fn load(env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("PIM_")).collect();
        let mut values = BTreeMap::new();
        let mut from_file = Vec::new();
        if let Some(path) = env.get("PIM_CONFIG") {
            let file = read_file(Path::new(path))?;
            from_file = file.keys().cloned().collect();
            values.extend(file);
        }
        values.extend(env);
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let config = Self::from_values(&values, &read)?;
        // A key the file names and nothing reads is a mistake (a misspelt setting would
        // silently keep its default).
        if let Some(unknown) = from_file.iter().find(|k| !read.borrow().contains(*k)) {
            let key = unknown.strip_prefix("PIM_").unwrap_or(unknown).to_ascii_lowercase();
            bail!(
                "config file {}: {key} is no setting (settings are the PIM_ variables without PIM_, e.g. listen_addr)",
                values.get("PIM_CONFIG").map(String::as_str).unwrap_or_default()
            );
        }
        Ok(config)
    }

    fn from_values(
        v: &BTreeMap<String, String>,
        read: &std::cell::RefCell<std::collections::BTreeSet<String>>,
    ) -> anyhow::Result<Self> {
        let get = |k: &str| {
            read.borrow_mut().insert(k.to_owned());
            v.get(k).filter(|s| !s.is_empty()).cloned()
        };
        let num = |k: &str, default: u64| -> anyhow::Result<u64> {
            match get(k) {
                Some(s) => s.parse().with_context(|| format!("{k} must be a whole number")),
                None => Ok(default),
            }
        };
        let listen_addr = get("PIM_LISTEN_ADDR")
            .unwrap_or_else(|| "127.0.0.1:50051".into())
            .parse()
            .context("PIM_LISTEN_ADDR must be host:port, e.g. 127.0.0.1:50051")?;
        let log_json = match get("PIM_LOG_FORMAT").as_deref() {
            None | Some("json") => true,
            Some("pretty") => false,
            Some(other) => bail!("PIM_LOG_FORMAT must be json or pretty, not {other:?}"),
        };
        let trusted_proxies = match get("PIM_TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.parse::<ipnet::IpNet>()
                        .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .with_context(|| {
                            format!("PIM_TRUSTED_PROXIES: {a:?} is not an IP address or network (e.g. 10.244.0.0/16)")
                        })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let config = Self {
            listen_addr,
            trusted_proxies,
            forwarder_key: None,
            admin_addr: match get("PIM_ADMIN_ADDR") {
                Some(a) => Some(
                    a.parse()
                        .with_context(|| format!("PIM_ADMIN_ADDR {a:?} is not host:port"))?,
                ),
                None => None,
            },
            ssf_addr: match get("PIM_SSF_ADDR") {
                Some(a) => Some(
                    a.parse()
                        .with_context(|| format!("PIM_SSF_ADDR {a:?} is not host:port"))?,
                ),
                None => None,
            },
            portal_addr: match get("PIM_PORTAL_ADDR") {
                Some(a) => Some(
                    a.parse()
                        .with_context(|| format!("PIM_PORTAL_ADDR {a:?} is not host:port"))?,
                ),
                None => None,
            },
            portal_idle: Duration::from_secs(num("PIM_PORTAL_IDLE_SECS", 30 * 60)?),
            portal_lifetime: Duration::from_secs(num("PIM_PORTAL_SESSION_SECS", 8 * 3600)?),
            ssf_issuer: match get("PIM_SSF_ISSUER") {
                Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                    Some(url.trim_end_matches('/').to_owned())
                }
                Some(url) => anyhow::bail!("PIM_SSF_ISSUER {url:?} is not an http(s):// URL"),
                None => None,
            },
            ssf_key_generation: match num("PIM_SSF_KEY_GENERATION", 1)? {
                n @ 1..=1_000_000 => n as u32,
                n => bail!("PIM_SSF_KEY_GENERATION must be 1 to 1000000, not {n}"),
            },
            ssf_private_receivers: match get("PIM_SSF_PRIVATE_RECEIVERS").as_deref() {
                None | Some("off" | "false") => false,
                Some("on" | "true") => true,
                Some(other) => bail!("PIM_SSF_PRIVATE_RECEIVERS must be on or off, not {other:?}"),
            },
            database_url: get("PIM_DATABASE_URL").map(Secret::new),
            redis_url: get("PIM_REDIS_URL").map(Secret::new),
            redis_tls_ca: get("PIM_REDIS_TLS_CA").map(PathBuf::from),
            redis_tls_cert: get("PIM_REDIS_TLS_CERT").map(PathBuf::from),
            redis_tls_key: get("PIM_REDIS_TLS_KEY").map(PathBuf::from),
            stream_prefix: get("PIM_STREAM_PREFIX").unwrap_or_default(),
            data_dir: get("PIM_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".pim")),
            identity_url: get("PIM_IDENTITY_URL"),
            assignment_url: get("PIM_ASSIGNMENT_URL"),
            approval_url: get("PIM_APPROVAL_URL"),
            alerting_url: get("PIM_ALERTING_URL"),
            audit_url: get("PIM_AUDIT_URL"),
            tls: TlsConfig {
                cert: get("PIM_TLS_CERT").map(PathBuf::from),
                key: get("PIM_TLS_KEY").map(PathBuf::from),
                ca: get("PIM_TLS_CA").map(PathBuf::from),
                client_ca: get("PIM_TLS_CLIENT_CA").map(PathBuf::from),
                client_cert: get("PIM_TLS_CLIENT_CERT").map(PathBuf::from),
                client_key: get("PIM_TLS_CLIENT_KEY").map(PathBuf::from),
            },
            access_token_ttl: Duration::from_secs(num("PIM_ACCESS_TOKEN_TTL_SECS", 3600)?),
            access_cache_ttl: Duration::from_millis(num("PIM_ACCESS_CACHE_TTL_MS", 2000)?),
            max_deliveries: u32::try_from(num("PIM_MAX_DELIVERIES", 5)?).context("PIM_MAX_DELIVERIES is too large")?,
            claim_idle: Duration::from_millis(num("PIM_CLAIM_IDLE_MS", 30_000)?),
            log_json,
            max_role_assignable_groups: num("PIM_MAX_ROLE_ASSIGNABLE_GROUPS", 500)?,
            signing_key_rotation: Duration::from_secs(
                num("PIM_SIGNING_KEY_ROTATION_DAYS", 30)?
                    .checked_mul(86_400)
                    .context("PIM_SIGNING_KEY_ROTATION_DAYS is too large")?,
            ),
            secrets_key: get("PIM_SECRETS_KEY").map(Secret::new),
            secrets_key_previous: get("PIM_SECRETS_KEY_PREVIOUS").map(Secret::new),
            audit_hmac_key: get("PIM_AUDIT_HMAC_KEY").map(Secret::new),
            smtp_url: match get("PIM_SMTP_URL") {
                Some(url) if url.starts_with("smtp://") || url.starts_with("smtps://") => Some(Secret::new(url)),
                Some(_) => anyhow::bail!("PIM_SMTP_URL must be an smtp:// or smtps:// URL"),
                None => None,
            },
            smtp_from: get("PIM_SMTP_FROM").unwrap_or_else(|| "PIM <pim@localhost>".to_owned()),
            public_url: get("PIM_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_owned()),
            audit_retention: match num("PIM_AUDIT_RETENTION_DAYS", 0)? {
                0 => None,
                // A cutoff beyond the epoch would read as one in the future, and prune all.
                days if days > MAX_RETENTION_DAYS => bail!(
                    "PIM_AUDIT_RETENTION_DAYS must be at most {MAX_RETENTION_DAYS} (100 years); 0 or unset keeps every record"
                ),
                days => Some(Duration::from_secs(days * 86_400)),
            },
            signin_mfa: get("PIM_SIGNIN_MFA")
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or_default(),
            mfa_enrollment_window: Duration::from_secs(num("PIM_MFA_ENROLLMENT_WINDOW_SECS", 24 * 3600)?),
            expiry_notice: Duration::from_secs(num("PIM_EXPIRY_NOTICE_SECS", 900)?),
            notifications: match get("PIM_NOTIFICATIONS").as_deref() {
                None => get("PIM_SMTP_URL").is_some(),
                Some("on" | "true") => true,
                Some("off" | "false") => false,
                Some(other) => bail!("PIM_NOTIFICATIONS must be on or off, not {other:?}"),
            },
            mfa_step_up: Duration::from_secs(num("PIM_MFA_STEP_UP_SECS", 600)?),
            event_signing_keys: get("PIM_EVENT_SIGNING_KEYS").map(Secret::new),
            event_verifying_keys: get("PIM_EVENT_VERIFYING_KEYS"),
            event_replay_window: Duration::from_secs(num("PIM_EVENT_REPLAY_HOURS", 24)?.saturating_mul(3600)),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("PIM_TLS_CERT and PIM_TLS_KEY must be set together");
        }
        if self.redis_tls_cert.is_some() != self.redis_tls_key.is_some() {
            bail!("PIM_REDIS_TLS_CERT and PIM_REDIS_TLS_KEY must be set together");
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            bail!("PIM_TLS_CLIENT_CERT and PIM_TLS_CLIENT_KEY must be set together");
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            bail!("PIM_TLS_CLIENT_CA (require client certificates) needs TLS: set PIM_TLS_CERT and PIM_TLS_KEY");
        }
        if self.access_token_ttl < Duration::from_secs(60) || self.access_token_ttl > Duration::from_secs(24 * 3600) {
            bail!("PIM_ACCESS_TOKEN_TTL_SECS must be between 60 and 86400");
        }
        if self.mfa_step_up < Duration::from_secs(60) || self.mfa_step_up > Duration::from_secs(24 * 3600) {
            bail!("PIM_MFA_STEP_UP_SECS must be between 60 and 86400");
        }
        if self.portal_idle < Duration::from_secs(60) || self.portal_idle > self.portal_lifetime {
            bail!("PIM_PORTAL_IDLE_SECS must be at least 60 and at most PIM_PORTAL_SESSION_SECS");
        }
        if self.portal_lifetime > Duration::from_secs(7 * 86_400) {
            bail!("PIM_PORTAL_SESSION_SECS must be at most 7 days (604800)");
        }
        if self.mfa_enrollment_window > Duration::from_secs(30 * 86_400) {
            bail!("PIM_MFA_ENROLLMENT_WINDOW_SECS must be at most 30 days (2592000)");
        }
        if self.event_replay_window > Duration::from_secs(7 * 24 * 3600) {
            // Consumers recognise a replayed event by their inbox, kept seven days.
            bail!("PIM_EVENT_REPLAY_HOURS must be at most 168 (the inbox remembers events for seven days)");
        }
        if self.signing_key_rotation.is_zero() {
            bail!("PIM_SIGNING_KEY_ROTATION_DAYS must be at least 1");
        }
        if self.claim_idle < Duration::from_millis(100) {
            // Sooner, a replica takes over entries another is still applying.
            bail!("PIM_CLAIM_IDLE_MS must be at least 100");
        }
        if self.max_deliveries == 0 {
            bail!("PIM_MAX_DELIVERIES must be at least 1");
        }
        if !self
            .stream_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
        {
            bail!("PIM_STREAM_PREFIX may hold only letters, digits and . _ - :");
        }
        self.event_keys()?;
        Ok(())
    }

    /// Redis, when configured, with the TLS material its settings name (files read now).
    pub fn redis(&self) -> anyhow::Result<Option<crate::events::RedisTarget>> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
        };
        let ca = self
            .redis_tls_ca
            .as_ref()
            .map(|p| read(p, "PIM_REDIS_TLS_CA"))
            .transpose()?;
        let client = match (&self.redis_tls_cert, &self.redis_tls_key) {
            (Some(cert), Some(key)) => Some((read(cert, "PIM_REDIS_TLS_CERT")?, read(key, "PIM_REDIS_TLS_KEY")?)),
            _ => None,
        };
        Ok(Some(crate::events::RedisTarget::new(url.expose().clone(), ca, client)))
    }

    /// The event signing and verifying keys (see [`crate::events::EventKeys::parse`]).
    pub fn event_keys(&self) -> anyhow::Result<crate::events::EventKeys> {
        crate::events::EventKeys::parse(
            self.event_signing_keys.as_ref().map(|s| s.expose().as_str()),
            self.event_verifying_keys.as_deref(),
        )
    }

    /// Whether a server certificate is configured.
    pub fn tls_enabled(&self) -> bool {
        self.tls.cert.is_some()
    }

    /// The URL scheme clients of this deployment use.
    pub fn scheme(&self) -> &'static str {
        if self.tls_enabled() || self.tls.ca.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// The longest audit retention there is (100 years).
const MAX_RETENTION_DAYS: u64 = 36_500;

/// Reads a TOML file of `key = value` pairs; `listen_addr` in the file stands for `PIM_LISTEN_ADDR`.
fn read_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing config file {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "config key {key}: expected a string, number or boolean, found {}",
                other.type_str()
            ),
        };
        out.insert(format!("PIM_{}", key.to_ascii_uppercase()), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks_and_nothing_else() {
        let c = Config::load(env(&[("PIM_TRUSTED_PROXIES", "10.0.0.5, 10.244.0.0/16")])).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.trusted_proxies[1].contains(&"10.244.3.7".parse::<std::net::IpAddr>().unwrap()));
        let err = Config::load(env(&[("PIM_TRUSTED_PROXIES", "gateway")])).unwrap_err();
        assert!(format!("{err:#}").contains("PIM_TRUSTED_PROXIES"), "{err:#}");
        assert!(Config::load(env(&[])).unwrap().trusted_proxies.is_empty());
    }

    #[test]
    fn defaults_apply_without_any_variable() {
        let c = Config::load(env(&[])).unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:50051");
        assert!(c.redis_url.is_none());
        assert_eq!(c.max_deliveries, 5);
        assert_eq!(c.signin_mfa, SigninMfa::WhenEnrolled);
        assert_eq!(c.mfa_step_up, Duration::from_secs(600));
    }

    #[test]
    fn env_overrides_file_and_bad_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("pim-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pim.toml");
        std::fs::write(&file, "listen_addr = \"0.0.0.0:9000\"\nmax_deliveries = 7\n").unwrap();
        let c = Config::load(env(&[
            ("PIM_CONFIG", file.to_str().unwrap()),
            ("PIM_MAX_DELIVERIES", "9"),
        ]))
        .unwrap();
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.max_deliveries, 9);
        // A misspelt key is refused, naming it, rather than leaving its setting at the default.
        let typo = dir.join("typo.toml");
        std::fs::write(&typo, "signin_mfa_mode = \"required\"\n").unwrap();
        let refused = Config::load(env(&[("PIM_CONFIG", typo.to_str().unwrap())])).unwrap_err();
        assert!(
            format!("{refused:#}").contains("signin_mfa_mode is no setting"),
            "{refused:#}"
        );
        std::fs::write(&typo, "pim_listen_addr = \"0.0.0.0:9000\"\n").unwrap();
        let refused = Config::load(env(&[("PIM_CONFIG", typo.to_str().unwrap())])).unwrap_err();
        assert!(
            format!("{refused:#}").contains("pim_listen_addr is no setting"),
            "{refused:#}"
        );
        // Out of range rather than quietly adjusted, or read as a cutoff in the future.
        for (key, value) in [
            ("PIM_AUDIT_RETENTION_DAYS", "200000000000"),
            ("PIM_AUDIT_RETENTION_DAYS", "36501"),
            ("PIM_SIGNING_KEY_ROTATION_DAYS", "0"),
            ("PIM_CLAIM_IDLE_MS", "0"),
        ] {
            let refused = Config::load(env(&[(key, value)])).expect_err(key);
            assert!(format!("{refused:#}").contains(key), "{refused:#}");
        }
        assert_eq!(
            Config::load(env(&[("PIM_AUDIT_RETENTION_DAYS", "36500")]))
                .unwrap()
                .audit_retention,
            Some(Duration::from_secs(36_500 * 86_400))
        );
        assert!(Config::load(env(&[("PIM_LISTEN_ADDR", "nope")])).is_err());
        assert!(Config::load(env(&[("PIM_TLS_CERT", "/x.pem")])).is_err());
        assert!(Config::load(env(&[("PIM_TLS_CLIENT_CERT", "/x.pem")])).is_err());
        assert!(Config::load(env(&[("PIM_TLS_CLIENT_CA", "/ca.pem")])).is_err());
        assert!(Config::load(env(&[("PIM_STREAM_PREFIX", "a b")])).is_err());
        assert!(Config::load(env(&[("PIM_SIGNIN_MFA", "sometimes")])).is_err());
        assert_eq!(
            Config::load(env(&[("PIM_SIGNIN_MFA", "required")])).unwrap().signin_mfa,
            SigninMfa::Required
        );
        assert_eq!(Config::load(env(&[])).unwrap().ssf_key_generation, 1);
        assert_eq!(
            Config::load(env(&[("PIM_SSF_KEY_GENERATION", "2")]))
                .unwrap()
                .ssf_key_generation,
            2
        );
        assert!(Config::load(env(&[("PIM_SSF_KEY_GENERATION", "0")])).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::load(env(&[("PIM_DATABASE_URL", "postgres://u:hunter2@h/db")])).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
