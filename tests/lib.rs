//! The test harness: starts PIM in-process on port 0, either on PostgreSQL (a fresh database
//! per service, dropped afterwards) + Redis (a unique stream prefix), or in the all-in-one
//! embedded default (SQLite files in a temporary directory, no Redis).

pub mod browser;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tonic::Request;
use tonic::transport::Channel;

use pim::{ServiceName, Suite, SuiteOptions};
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_runtime::Config;
use pim_runtime::clock::ManualClock;
use pim_runtime::testing::{TestDatabase, redis_url, unique};

pub use pim_runtime::testing::eventually;

/// A running suite and what it must clean up.
pub struct TestSuite {
    pub suite: Suite,
    pub channel: Channel,
    pub admin_user: String,
    pub admin_password: String,
    databases: Vec<TestDatabase>,
    data_dir: Option<PathBuf>,
    pub stream_prefix: String,
    pub config: Config,
    urls: BTreeMap<ServiceName, String>,
}

pub fn test_config(extra: &[(&str, String)]) -> anyhow::Result<Config> {
    let mut env = vec![
        ("PIM_LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("PIM_LOG_FORMAT".to_owned(), "pretty".to_owned()),
        // 32 bytes of 0x2a, base64: a fixed key for tests.
        (
            "PIM_SECRETS_KEY".to_owned(),
            "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".to_owned(),
        ),
        (
            "PIM_EVENT_SIGNING_KEYS".to_owned(),
            pim_runtime::testing::event_signing_keys(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Config::load(env)
}

/// The event keys of the test deployment (every service's signing key).
pub fn event_keys() -> pim_runtime::events::EventKeys {
    pim_runtime::events::EventKeys::parse(Some(&pim_runtime::testing::event_signing_keys()), None)
        .expect("the test event keys parse")
}

impl TestSuite {
    /// All five services on PostgreSQL + Redis (the production backends).
    pub async fn postgres() -> anyhow::Result<Self> {
        Self::postgres_with_clock(None).await
    }

    /// The same, with services reading a clock the test moves.
    pub async fn postgres_with_clock(clock: Option<ManualClock>) -> anyhow::Result<Self> {
        Self::postgres_with(clock, &[]).await
    }

    /// On PostgreSQL + Redis with extra settings.
    pub async fn postgres_with(clock: Option<ManualClock>, extra: &[(&str, String)]) -> anyhow::Result<Self> {
        let prefix = format!("{}:", unique("streams"));
        let mut settings = vec![
            ("PIM_REDIS_URL", redis_url()),
            ("PIM_STREAM_PREFIX", prefix.clone()),
            ("PIM_CLAIM_IDLE_MS", "200".into()),
        ];
        settings.extend_from_slice(extra);
        let config = test_config(&settings)?;
        let mut databases = Vec::new();
        let mut urls = BTreeMap::new();
        for service in ServiceName::ALL {
            let db = TestDatabase::create(service.as_str()).await?;
            urls.insert(service, db.url.clone());
            databases.push(db);
        }
        Self::start(config, urls, databases, None, prefix, clock).await
    }

    /// The all-in-one default: SQLite files, embedded delivery, no Redis.
    pub async fn embedded() -> anyhow::Result<Self> {
        Self::embedded_with(&[]).await
    }

    /// The all-in-one default with extra settings (e.g. TLS).
    pub async fn embedded_with(extra: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::embedded_with_clock(None, extra).await
    }

    /// The all-in-one default, its services reading a clock the test moves.
    pub async fn embedded_with_clock(clock: Option<ManualClock>, extra: &[(&str, String)]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("data"));
        std::fs::create_dir_all(&dir)?;
        let mut settings = vec![("PIM_DATA_DIR", dir.display().to_string())];
        settings.extend_from_slice(extra);
        let config = test_config(&settings)?;
        let urls = ServiceName::ALL
            .into_iter()
            .map(|s| (s, pim_runtime::db::sqlite_url(&dir.join(format!("{s}.db")))))
            .collect();
        Self::start(config, urls, Vec::new(), Some(dir), String::new(), clock).await
    }

    async fn start(
        config: Config,
        urls: BTreeMap<ServiceName, String>,
        databases: Vec<TestDatabase>,
        data_dir: Option<PathBuf>,
        stream_prefix: String,
        clock: Option<ManualClock>,
    ) -> anyhow::Result<Self> {
        pim_runtime::telemetry::init(false);
        let tls = config.tls.clone();
        let mut options = SuiteOptions::new(config.clone(), urls.clone());
        options.relay_poll = Duration::from_millis(50);
        if let Some(clock) = clock {
            options.clock = std::sync::Arc::new(clock);
        }
        let suite = Suite::start(options).await?;
        let (admin_user, admin_password) = suite
            .bootstrap()
            .await?
            .context("a fresh suite bootstraps its administrator")?;
        let channel = pim_runtime::grpc::channel(suite.url(), &tls)?;
        Ok(Self {
            suite,
            channel,
            admin_user,
            admin_password,
            databases,
            data_dir,
            stream_prefix,
            config,
            urls,
        })
    }

    /// The database URL of one service.
    pub fn database_url(&self, service: ServiceName) -> Option<&str> {
        self.urls.get(&service).map(String::as_str)
    }

    /// A restart whose configuration `change` alters first (an operator's new setting).
    pub async fn restart_with(mut self, change: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        change(&mut self.config);
        self.restart().await
    }

    /// Stops the suite and starts it again on the same databases (a restart of every service).
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        // Back on the same address, as a restarted server is: clients that kept their
        // channel reconnect to it.
        let address = self
            .suite
            .url()
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned();
        self.suite.stop().await?;
        let mut options = SuiteOptions::new(self.config.clone(), self.urls.clone());
        options.listener = Some(tokio::net::TcpListener::bind(&address).await?);
        options.relay_poll = Duration::from_millis(50);
        self.suite = Suite::start(options).await?;
        self.channel = pim_runtime::grpc::channel(self.suite.url(), &self.config.tls)?;
        Ok(self)
    }

    /// Creates user `name` (as `admin`) with the tests' password for it, [`password_of`].
    pub async fn create_user(&self, admin: &str, name: &str) -> Result<ipb::User, tonic::Status> {
        let request = ipb::CreateUserRequest {
            user_name: name.into(),
            password: password_of(name),
            ..Default::default()
        };
        Ok(
            pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(self.channel.clone())
                .create_user(authed(admin, request))
                .await?
                .into_inner(),
        )
    }

    /// Creates a service principal named `name`: its id and its client secret.
    pub async fn create_service_principal(&self, admin: &str, name: &str) -> Result<(String, String), tonic::Status> {
        let created =
            pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(self.channel.clone())
                .create_service_principal(authed(
                    admin,
                    ipb::CreateServicePrincipalRequest {
                        display_name: name.into(),
                    },
                ))
                .await?
                .into_inner();
        let id = created.service_principal.map(|sp| sp.id).unwrap_or_default();
        Ok((id, created.client_secret))
    }

    /// Signs in with a password and returns the access token.
    pub async fn sign_in(&self, user: &str, password: &str) -> Result<String, tonic::Status> {
        let r = AuthServiceClient::new(self.channel.clone())
            .sign_in(ipb::SignInRequest {
                user_name: user.to_owned(),
                password: password.to_owned(),
            })
            .await?;
        Ok(r.into_inner().access_token)
    }

    pub async fn admin_token(&self) -> anyhow::Result<String> {
        Ok(self.sign_in(&self.admin_user, &self.admin_password).await?)
    }

    /// A token for `principal_id` whose MFA succeeded at `mfa_at_ms` (what MfaService.Verify
    /// will hand out), signed by the suite's identity keys.
    pub fn stepped_up_token(&self, principal_id: &str, name: &str, mfa_at_ms: i64) -> anyhow::Result<String> {
        let keys = self.suite.identity().context("identity runs in this suite")?.keystore();
        let subject = pim_identity::TokenSubject {
            principal_id: principal_id.into(),
            kind: pim_proto::common::v1::PrincipalKind::User,
            name: name.into(),
            amr: vec!["pwd".into(), "otp".into()],
            session_id: "test-session".into(),
            mfa_at: Some(mfa_at_ms / 1000),
            pending: None,
        };
        let issued = keys.issue(&subject, Duration::from_secs(3600))?;
        Ok(issued.token)
    }

    /// Waits until every event written so far has been delivered and applied: no service has
    /// outbox rows waiting (embedded delivery deletes a row only once every consumer applied
    /// it) and, on Redis, every consumer group has read and acknowledged every entry. A
    /// deterministic point after which "nothing more will arrive" holds, whatever the
    /// machine's speed.
    pub async fn settle(&self) -> anyhow::Result<()> {
        use redis::AsyncCommands;
        let mut databases = Vec::new();
        for url in self.urls.values() {
            databases.push(pim_runtime::db::connect(url).await?);
        }
        let mut redis = match self.stream_prefix.is_empty() {
            true => None,
            false => Some(
                redis::Client::open(redis_url())?
                    .get_multiplexed_async_connection()
                    .await?,
            ),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut quiet = 0;
        while quiet < 2 {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "events were not all delivered within 60 s"
            );
            let mut busy = false;
            for db in &databases {
                let row =
                    pim_runtime::db::query_one(db, "SELECT COUNT(*) AS n FROM outbox WHERE status = 'pending'", vec![])
                        .await?;
                busy |= row
                    .map(|r| pim_runtime::db::col::<i64>(&r, "n"))
                    .transpose()?
                    .unwrap_or(0)
                    > 0;
            }
            if let Some(redis) = redis.as_mut() {
                for key in stream_keys(redis, &self.stream_prefix).await? {
                    let info: redis::streams::StreamInfoGroupsReply = redis.xinfo_groups(&key).await?;
                    busy |= info.groups.iter().any(|g| g.pending > 0 || g.lag != Some(0));
                }
            }
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet < 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for db in databases {
            db.close().await?;
        }
        Ok(())
    }

    /// The audit records `query` selects, read with `token`, every page.
    pub async fn audit_records(
        &self,
        token: &str,
        query: pim_proto::audit::v1::QueryEventsRequest,
    ) -> anyhow::Result<Vec<pim_proto::audit::v1::AuditRecord>> {
        let mut query = pim_proto::audit::v1::QueryEventsRequest {
            page_size: 500,
            ..query
        };
        let mut audit = pim_proto::audit::v1::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let mut records = Vec::new();
        loop {
            let page = audit.query_events(authed(token, query.clone())).await?.into_inner();
            records.extend(page.records);
            if page.next_page_token.is_empty() {
                return Ok(records);
            }
            query.page_token = page.next_page_token;
        }
    }

    /// The actions of the audit records about `target`.
    pub async fn audited_actions(&self, token: &str, target: &str) -> anyhow::Result<Vec<String>> {
        let query = pim_proto::audit::v1::QueryEventsRequest {
            target_id: target.into(),
            ..Default::default()
        };
        Ok(self
            .audit_records(token, query)
            .await?
            .into_iter()
            .map(|r| r.action)
            .collect())
    }

    /// Stops the embedded suite and keeps its files: their directory.
    pub async fn stop_keeping_files(self) -> anyhow::Result<PathBuf> {
        self.suite.stop().await?;
        self.data_dir
            .context("an embedded suite keeps its files in a data directory")
    }

    /// Stops the suite and removes its databases, streams or files.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.suite.stop().await?;
        for db in self.databases {
            db.drop_database().await?;
        }
        if !self.stream_prefix.is_empty() {
            drop_streams(&self.stream_prefix).await?;
        }
        if let Some(dir) = self.data_dir {
            std::fs::remove_dir_all(dir).ok();
        }
        Ok(())
    }
}

/// Every Redis key under a test's stream prefix.
pub async fn stream_keys(redis: &mut redis::aio::MultiplexedConnection, prefix: &str) -> anyhow::Result<Vec<String>> {
    use redis::AsyncCommands;
    let mut iter: redis::AsyncIter<String> = redis.scan_match(format!("{prefix}*")).await?;
    let mut keys = Vec::new();
    while let Some(key) = iter.next_item().await {
        keys.push(key?);
    }
    Ok(keys)
}

/// Deletes every Redis key under a test's stream prefix.
pub async fn drop_streams(prefix: &str) -> anyhow::Result<()> {
    use redis::AsyncCommands;
    let mut redis = redis::Client::open(pim_runtime::testing::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let keys = stream_keys(&mut redis, prefix).await?;
    if !keys.is_empty() {
        let _: () = redis.del(keys).await?;
    }
    Ok(())
}

/// Whom an access token is about (its `sub`), read without verifying it.
pub fn token_subject(token: &str) -> anyhow::Result<String> {
    token_claim(token, "sub")?
        .as_str()
        .map(str::to_owned)
        .context("a token names its subject")
}

/// A claim of a token, read without verifying it (null when absent).
pub fn token_claim(token: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1).context("a JWT has three parts")?;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    Ok(claims[name].take())
}

/// The password tests give user `name`.
pub fn password_of(name: &str) -> String {
    format!("{name}'s long passphrase")
}

/// A request carrying a bearer token.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    request
}

/// A request carrying a bearer header built once ([`bearer`]), as a long-lived client sends it:
/// no formatting or parsing per call.
pub fn with_bearer<T>(bearer: &tonic::metadata::AsciiMetadataValue, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", bearer.clone());
    request
}

/// The `authorization` header value for `token`.
pub fn bearer(token: &str) -> tonic::metadata::AsciiMetadataValue {
    format!("Bearer {token}").parse().expect("a token is ASCII")
}

/// The caller's request to activate `role` at `/` for one hour.
pub fn activate_for_an_hour(role: &str, justification: &str) -> pim_proto::assignment::v1::CreateRequestRequest {
    use pim_proto::assignment::v1 as apb;
    apb::CreateRequestRequest {
        action: apb::RequestAction::SelfActivate as i32,
        justification: justification.into(),
        ..assign_for_an_hour(apb::AssignmentKind::Active, "", role)
    }
}

/// An administrator's request to assign `role` to `principal` at `/` for one hour.
pub fn assign_for_an_hour(
    kind: pim_proto::assignment::v1::AssignmentKind,
    principal: &str,
    role: &str,
) -> pim_proto::assignment::v1::CreateRequestRequest {
    use pim_proto::assignment::v1 as apb;
    apb::CreateRequestRequest {
        action: apb::RequestAction::AdminAssign as i32,
        kind: kind as i32,
        principal_id: principal.into(),
        role_id: role.into(),
        scope: "/".into(),
        schedule: Some(apb::Schedule {
            start_time: None,
            expiration: Some(apb::schedule::Expiration::Duration(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            })),
        }),
        justification: "rota".into(),
        ..Default::default()
    }
}

/// The distributed shape with replicated assignment: identity and `assignment_replicas`
/// hosts of assignment (as `pim serve identity` and several `pim serve assignment` run
/// them), the replicas on one PostgreSQL database, all sharing Redis.
pub struct Replicas {
    suites: Vec<Suite>,
    /// Identity's URL, then each assignment replica's.
    pub urls: Vec<String>,
    /// A Global Administrator's access token.
    pub admin: String,
    databases: Vec<TestDatabase>,
    pub stream_prefix: String,
}

impl Replicas {
    pub async fn start(assignment_replicas: usize) -> anyhow::Result<Self> {
        Self::start_with(assignment_replicas, false).await
    }

    /// The same, the last replica on a stream prefix of its own: it hears none of the others'
    /// events, as if Redis had lost every one of them (what it publishes, nobody hears).
    pub async fn start_with_last_unheard(assignment_replicas: usize) -> anyhow::Result<Self> {
        Self::start_with(assignment_replicas, true).await
    }

    async fn start_with(assignment_replicas: usize, last_unheard: bool) -> anyhow::Result<Self> {
        let stream_prefix = format!("{}:", unique("replicas"));
        let mut listeners = Vec::new();
        for _ in 0..=assignment_replicas {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
        }
        let urls: Vec<String> = listeners
            .iter()
            .map(|l| Ok(format!("http://{}", l.local_addr()?)))
            .collect::<anyhow::Result<_>>()?;
        let databases = vec![
            TestDatabase::create("identity").await?,
            TestDatabase::create("assignment").await?,
        ];
        let mut suites = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (service, database) = match i {
                0 => (ServiceName::Identity, &databases[0]),
                _ => (ServiceName::Assignment, &databases[1]),
            };
            let prefix = match last_unheard && i == assignment_replicas && i > 1 {
                true => format!("{stream_prefix}unheard:"),
                false => stream_prefix.clone(),
            };
            let config = test_config(&[
                ("PIM_REDIS_URL", redis_url()),
                ("PIM_STREAM_PREFIX", prefix),
                ("PIM_IDENTITY_URL", urls[0].clone()),
                ("PIM_ASSIGNMENT_URL", urls[1].clone()),
                // No host here serves approval: identity's questions to it find nobody.
                ("PIM_APPROVAL_URL", "http://127.0.0.1:9".into()),
            ])?;
            let mut options = SuiteOptions::new(config, BTreeMap::from([(service, database.url.clone())]));
            options.listener = Some(listener);
            options.relay_poll = Duration::from_millis(50);
            suites.push(Suite::start(options).await?);
        }
        let identity = suites[0].identity().context("identity runs in the first host")?;
        let assignment = suites[1].assignment().context("assignment runs in the second host")?;
        let (admin, password) = pim::bootstrap::run(identity, assignment)
            .await?
            .context("a fresh deployment bootstraps")?;
        let channel = Channel::from_shared(urls[0].clone())?.connect().await?;
        let admin = AuthServiceClient::new(channel)
            .sign_in(ipb::SignInRequest {
                user_name: admin,
                password,
            })
            .await?
            .into_inner()
            .access_token;
        Ok(Self {
            suites,
            urls,
            admin,
            databases,
            stream_prefix,
        })
    }

    /// A channel to identity.
    pub async fn identity(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.urls[0].clone())?.connect().await?)
    }

    /// Waits (at most `within`) until assignment replica `n` holds the administrator's own
    /// role, made as the replicas started (asking about oneself is never refused, so the wait
    /// spends none of the administrator's denials).
    pub async fn until_replica_knows_the_administrator(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        use pim_proto::assignment::v1 as apb;
        let (channel, admin_id) = (self.assignment(n).await?, token_subject(&self.admin)?);
        eventually(within, "the replica to know the administrator", || async {
            let asked = apb::CheckAccessRequest {
                principal_id: admin_id.clone(),
                target: Some(apb::check_access_request::Target::RoleId("Global Administrator".into())),
                scope: "/".into(),
                ..Default::default()
            };
            let answer = apb::access_service_client::AccessServiceClient::new(channel.clone())
                .check_access(authed(&self.admin, asked))
                .await?;
            Ok(answer.into_inner().allowed.then_some(()))
        })
        .await
    }

    /// A channel to assignment replica `n` (from 0).
    pub async fn assignment(&self, n: usize) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.urls[n + 1].clone())?.connect().await?)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        for suite in self.suites {
            suite.stop().await?;
        }
        for db in self.databases {
            db.drop_database().await?;
        }
        drop_streams(&self.stream_prefix).await
    }
}
