//! The `pim` command line: run the suite (`up`, `serve`, `bootstrap`) and talk to it (sign
//! in, users, roles, assign, check, audit). Every client command talks to one address
//! (`--server`, or `PIM_SERVER`), as an ingress gives in production and `pim up` gives locally.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::transport::Channel;
use tonic::{Request, Status};

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_proto::audit::v1 as aupb;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;
use pim_runtime::Config;
use pim_runtime::config::TlsConfig;
use pim_runtime::db::{from_timestamp, now_ms, sqlite_url, to_timestamp};
use pim_runtime::events::{EventKeys, PUBLISHERS};

use crate::host::{ServiceName, Suite, SuiteOptions};

mod alerts;
mod approvals;
mod as_code;
mod groups;
mod listings;
mod mfa;
mod requests;
mod reviews;
mod roles;
mod users;

use users::{UsersCommand, users};

#[derive(Parser)]
#[command(
    name = "pim",
    version,
    about = "Privileged Identity Management: just-in-time, approved, audited access to privileged roles"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub(crate) struct ClientArgs {
    /// The PIM address (one address serves every service) [default: the server of the last
    /// `pim login`, else http://127.0.0.1:50051].
    #[arg(long, env = "PIM_SERVER", global = true)]
    server: Option<String>,
    /// Where `pim login` keeps the access token [default: ~/.config/pim/token].
    #[arg(long, env = "PIM_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https:// server.
    #[arg(long, env = "PIM_TLS_CA", global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to a server that requires one (mutual TLS).
    #[arg(long, env = "PIM_TLS_CLIENT_CERT", global = true, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "PIM_TLS_CLIENT_KEY", global = true, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// How lists and records are printed: a table, or JSON lines (one object per row, the
    /// table's columns as lowercase fields, times in RFC 3339).
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: Output,
}

/// How this command prints (set once, from its `--output`, when it opens its session).
static OUTPUT: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

/// `pim up --help`: the settings it reads (the README's table has them all).
const UP_SETTINGS: &str = "Settings (environment):
  PIM_DATA_DIR           where the SQLite files, the secrets key and the event keys live [.pim]
  PIM_LISTEN_ADDR        the gRPC address [127.0.0.1:50051]
  PIM_REDIS_URL          publish events on Redis streams (rediss:// for TLS) [embedded delivery]
  PIM_STREAM_PREFIX      prefix of every stream name []
  PIM_TLS_CERT, PIM_TLS_KEY   serve TLS with this PEM certificate and key [plaintext]
  PIM_TLS_CLIENT_CA      require client certificates this CA signed (mutual TLS)
  PIM_ADMIN_ADDR         serve GET /metrics here [nowhere]
  PIM_SIGNIN_MFA         when_enrolled, required or off [when_enrolled]
  PIM_ACCESS_TOKEN_TTL_SECS   access token lifetime [3600]
  PIM_AUDIT_RETENTION_DAYS    prune older audit records behind a checkpoint; 0 keeps all [0]
  PIM_LOG_FORMAT         pretty or json [pretty]
  OTEL_EXPORTER_OTLP_ENDPOINT export traces over OTLP/gRPC [no export]
The README's settings table lists every setting.";

#[derive(Subcommand)]
enum Command {
    /// Run all five services in one process on one address (SQLite files under PIM_DATA_DIR;
    /// Redis when PIM_REDIS_URL is set). Prints the address and, on first start, the
    /// break-glass administrator's credentials.
    #[command(after_help = UP_SETTINGS)]
    Up,
    /// Run one service (production shape: PIM_DATABASE_URL for PostgreSQL, PIM_REDIS_URL), or
    /// the gateway: one address in front of the five (PIM_IDENTITY_URL, PIM_ASSIGNMENT_URL,
    /// PIM_APPROVAL_URL, PIM_ALERTING_URL, PIM_AUDIT_URL) for the CLI and apps.
    Serve {
        /// identity, assignment, approval, alerting, audit or gateway
        service: Served,
    },
    /// Make the Ed25519 keys services sign their events with (the production shape; `pim up`
    /// makes its own). Prints each service's secret signing key and the public keys every
    /// service needs.
    #[command(name = "event-keys")]
    EventKeys {
        /// The services to make keys for (default: all five; name one to rotate its key).
        services: Vec<ServiceName>,
    },
    /// Operate the event streams (an operator's command, run beside the services' databases).
    #[command(subcommand)]
    Events(EventsCommand),
    /// Create the first Global Administrator when there is none (production; `pim up` does it itself).
    Bootstrap {
        /// The identity service's database.
        #[arg(long, env = "PIM_IDENTITY_DATABASE_URL")]
        identity_database: String,
        /// The assignment service's database.
        #[arg(long, env = "PIM_ASSIGNMENT_DATABASE_URL")]
        assignment_database: String,
    },
    /// Sign in and keep the access token for the next commands.
    Login(LoginArgs),
    /// Who the stored token says you are, and until when.
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Groups: create (--role-assignable), members, owners.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// End this session everywhere and forget its token.
    Logout {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage service principals (apps and bots).
    #[command(subcommand, name = "service-principals", alias = "sp")]
    ServicePrincipals(SpCommand),
    /// Your roles: eligible and active, including those through groups (--definitions: every
    /// role definition; create, update, delete: custom roles).
    #[command(args_conflicts_with_subcommands = true)]
    Roles {
        /// List role definitions instead.
        #[arg(long)]
        definitions: bool,
        #[command(subcommand)]
        manage: Option<roles::RolesCommand>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Activate a role you are eligible for, then follow the request until it is active or refused.
    Activate(requests::ActivateArgs),
    /// End your activation of a role now.
    Deactivate(requests::DeactivateArgs),
    /// Remove an eligible or active assignment (an administrator's adminRemove request).
    Unassign(requests::UnassignArgs),
    /// Give an assignment a new end (adminExtend, adminUpdate with --update, adminRenew with
    /// --renew); without --principal, ask for your own (selfExtend / selfRenew, approved by others).
    Extend(requests::ExtendArgs),
    /// List requests (yours, or anyone's for readers of assignments).
    Requests(requests::RequestsArgs),
    /// Cancel a request of yours that waits for approval.
    Cancel(requests::CancelArgs),
    /// Approvals waiting for your decision (--watch to follow them, --id to see one in full).
    Approvals(approvals::ApprovalsArgs),
    /// Approve a request waiting for your decision.
    Approve(approvals::DecideArgs),
    /// Deny a request waiting for your decision (this ends it).
    Deny(approvals::DecideArgs),
    /// Alerts the rules raised (--watch to follow them); ack, dismiss, resolve; rules.
    Alerts(alerts::AlertsArgs),
    /// Access reviews: create, list, your items, decide, stop.
    #[command(subcommand)]
    Reviews(reviews::ReviewsCommand),
    /// Show or change a role's policy at a scope.
    #[command(subcommand)]
    Policy(requests::PolicyCommand),
    /// Show, as a diff, what `pim apply -f FILE` would change (custom roles, groups and their
    /// members, role policies, assignments). Nothing changes. The file's format is
    /// deploy/pim.schema.json; `pim export` writes one.
    Plan(as_code::FileArgs),
    /// Make the server match a configuration file: every error in it is listed, with its line,
    /// before anything changes; a second apply changes nothing.
    Apply(as_code::FileArgs),
    /// Write the server's configuration as a file for `pim plan` and `pim apply`.
    Export(as_code::ExportArgs),
    /// Multi-factor authentication: enrol an authenticator app, step up, recovery codes,
    /// enrolment passes and resets.
    #[command(subcommand)]
    Mfa(mfa::MfaCommand),
    /// Change your own password (asks for a code when you have MFA).
    Password(mfa::PasswordArgs),
    /// Assign a role to a principal (an administrator's adminAssign request).
    Assign(AssignArgs),
    /// List assignments in force.
    Assignments(ListAssignmentsArgs),
    /// Ask whether a principal holds a role or permission at a scope (exit code 0 if it does, 1 if not).
    Check(CheckArgs),
    /// Read the audit log.
    Audit(AuditArgs),
    /// Show each service's health.
    Health {
        /// Check only this service (identity, assignment, approval, alerting or audit), as a
        /// probe of a `pim serve` process does; `gateway`: only the gateway itself.
        #[arg(long)]
        service: Option<Served>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct LoginArgs {
    /// User name (password from --password-stdin, PIM_PASSWORD, or a prompt).
    #[arg(long, conflicts_with = "client_id")]
    user: Option<String>,
    /// Service principal client id (secret from --password-stdin or PIM_CLIENT_SECRET).
    #[arg(long)]
    client_id: Option<String>,
    /// Read the password or client secret from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The authenticator code, to step up at once when you have MFA (otherwise asked on a terminal).
    #[arg(long, env = "PIM_MFA_CODE")]
    code: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum SpCommand {
    /// Create a service principal; its client secret is shown once.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A new client secret (shown once; the old one stops working).
    Rotate {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable: no more sign-ins, and its tokens stop working.
    Disable {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List service principals (with their client ids and whether they may sign in).
    List {
        /// Only those whose name contains this text.
        #[arg(long, default_value = "")]
        filter: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum KindArg {
    Eligible,
    Active,
}

#[derive(Args)]
struct AssignArgs {
    /// User name, or principal id.
    #[arg(long)]
    principal: String,
    /// Role name (e.g. "Exchange Administrator") or id.
    #[arg(long)]
    role: String,
    #[arg(long, default_value = "/")]
    scope: String,
    #[arg(long, value_enum, default_value = "eligible")]
    kind: KindArg,
    /// How long it lasts, e.g. 1h, 30d (default: the policy's maximum, or permanent where allowed).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "permanent")]
    duration: Option<Duration>,
    /// Never expires (where the role's policy allows it).
    #[arg(long)]
    permanent: bool,
    #[arg(long, default_value = "")]
    justification: String,
    #[arg(long, default_value = "", requires = "ticket_number")]
    ticket_system: String,
    #[arg(long, default_value = "")]
    ticket_number: String,
    /// Check everything, change nothing.
    #[arg(long)]
    validate_only: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct ListAssignmentsArgs {
    /// Only this principal (user name or id).
    #[arg(long)]
    principal: Option<String>,
    /// Only this role (name or id).
    #[arg(long)]
    role: Option<String>,
    #[arg(long, value_enum, default_value = "active")]
    kind: KindArg,
    /// Only mine.
    #[arg(long)]
    mine: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct CheckArgs {
    /// User name or principal id.
    #[arg(
        long = "principal",
        value_name = "PRINCIPAL",
        required_unless_present = "principal_arg"
    )]
    principal_flag: Option<String>,
    /// Role name or id.
    #[arg(long = "role", value_name = "ROLE", conflicts_with = "permission")]
    role_flag: Option<String>,
    /// The principal, as a positional argument: `pim check lee "Exchange Administrator"`.
    #[arg(conflicts_with = "principal_flag")]
    principal_arg: Option<String>,
    /// The role, as a positional argument.
    #[arg(conflicts_with_all = ["role_flag", "permission"])]
    role_arg: Option<String>,
    /// A permission, e.g. pim.assignments.manage.
    #[arg(long)]
    permission: Option<String>,
    #[arg(long, default_value = "/")]
    scope: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Who acted (user name or principal id).
    #[arg(long)]
    actor: Option<String>,
    /// Who was acted on (user name or principal id).
    #[arg(long)]
    target: Option<String>,
    /// Role name or id.
    #[arg(long)]
    role: Option<String>,
    /// Event type, e.g. ActiveAssignmentGranted.
    #[arg(long)]
    action: Option<String>,
    /// Only refused or failed attempts (failure), or only what succeeded (success).
    #[arg(long, value_parser = ["success", "failure"])]
    outcome: Option<String>,
    /// Only events of the last DURATION, e.g. 24h.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// How many records (the newest, unless --oldest-first).
    #[arg(long, default_value_t = 100)]
    limit: i32,
    /// Start from the oldest matching record instead of the newest.
    #[arg(long)]
    oldest_first: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Publish again the events written since a moment, after Redis lost events it had not
    /// delivered (restarted empty, a failover without persistence). Services keep published
    /// events for PIM_EVENT_REPLAY_HOURS (24); their relays publish the marked events within
    /// a moment, and consumers skip those they had applied already.
    Replay {
        /// Replay events written since this moment: RFC 3339 (2026-12-02T10:00:00Z) or a
        /// duration ago (90m, 2h).
        #[arg(long)]
        since: String,
        /// A service database to replay from (repeat for several; default PIM_DATABASE_URL,
        /// else the five SQLite files of `pim up` in PIM_DATA_DIR).
        #[arg(long = "database")]
        databases: Vec<String>,
    },
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    if matches!(
        cli.command,
        Command::Up
            | Command::Serve { .. }
            | Command::Bootstrap { .. }
            | Command::EventKeys { .. }
            | Command::Events(_)
    ) {
        return run_command(cli).await;
    }
    // A client command starts the trace its calls join (exported only with
    // OTEL_EXPORTER_OTLP_ENDPOINT set).
    pim_runtime::telemetry::init_client();
    let name = std::env::args().nth(1).unwrap_or_default();
    let span = tracing::info_span!("cli", otel.name = %format!("pim {name}"), otel.kind = "client");
    tracing::Instrument::instrument(run_command(cli), span).await
}

async fn run_command(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up => up().await,
        Command::Serve {
            service: Served::Gateway,
        } => {
            crate::gateway::run(load_config(false)?).await?;
            Ok(0)
        }
        Command::Serve {
            service: Served::Service(service),
        } => serve(service).await,
        Command::EventKeys { services } => Ok(event_keys(services)),
        Command::Events(EventsCommand::Replay { since, databases }) => replay(&since, databases).await,
        Command::Bootstrap {
            identity_database,
            assignment_database,
        } => bootstrap(identity_database, assignment_database).await,
        Command::Login(args) => login(args).await,
        Command::Logout { client } => logout(client).await,
        Command::Whoami { client } => whoami(client).await,
        Command::Groups(cmd) => groups::run(cmd).await,
        Command::Users(cmd) => users(cmd).await,
        Command::ServicePrincipals(cmd) => service_principals(cmd).await,
        Command::Roles { manage: Some(cmd), .. } => roles::manage(cmd).await,
        Command::Roles {
            definitions: true,
            client,
            ..
        } => roles(client).await,
        Command::Roles {
            definitions: false,
            client,
            ..
        } => requests::my_roles(client).await,
        Command::Activate(args) => requests::activate(args).await,
        Command::Deactivate(args) => requests::deactivate(args).await,
        Command::Unassign(args) => requests::unassign(args).await,
        Command::Extend(args) => requests::extend(args).await,
        Command::Requests(args) => requests::list(args).await,
        Command::Cancel(args) => requests::cancel(args).await,
        Command::Approvals(args) => approvals::list(args).await,
        Command::Approve(args) => approvals::decide(args, true).await,
        Command::Deny(args) => approvals::decide(args, false).await,
        Command::Reviews(cmd) => reviews::run(cmd).await,
        Command::Alerts(args) => alerts::run(args).await,
        Command::Policy(cmd) => requests::policy(cmd).await,
        Command::Plan(args) => as_code::plan(args).await,
        Command::Apply(args) => as_code::apply(args).await,
        Command::Export(args) => as_code::export(args).await,
        Command::Mfa(cmd) => mfa::run(cmd).await,
        Command::Password(args) => mfa::change_password(args).await,
        Command::Assign(args) => assign(args).await,
        Command::Assignments(args) => list_assignments(args).await,
        Command::Check(args) => check(args).await,
        Command::Audit(args) => audit(args).await,
        Command::Health { service, client } => health(service, client).await,
    }
}

fn load_config(default_pretty: bool) -> anyhow::Result<Config> {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    if default_pretty {
        env.entry("PIM_LOG_FORMAT".into()).or_insert_with(|| "pretty".into());
    }
    let config = Config::load(env)?;
    pim_runtime::telemetry::init(config.log_json);
    Ok(config)
}

/// The all-in-one: five services, one address, one SQLite file each.
async fn up() -> anyhow::Result<i32> {
    let mut config = load_config(true)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    // Only the owner may read what the suite keeps (password hashes, sealed seeds, audit).
    owner_only(&config.data_dir, 0o700)?;
    if config.secrets_key.is_none() {
        let key = data_dir_secret(&config.data_dir, "secrets.key", pim_identity::Sealer::new_key)?;
        config.secrets_key = Some(pim_runtime::config::Secret::new(key));
    }
    if config.event_signing_keys.is_none() {
        // The five services sign their events (checked when they cross Redis) with keys kept
        // beside the data, so events published before a restart still verify after it.
        let keys = data_dir_secret(&config.data_dir, "event-signing.keys", || {
            EventKeys::generate(&PUBLISHERS).signing_setting()
        })?;
        config.event_signing_keys = Some(pim_runtime::config::Secret::new(keys));
        config.event_keys()?;
    }
    let databases = ServiceName::ALL
        .into_iter()
        .map(|s| (s, sqlite_url(&config.data_dir.join(format!("{s}.db")))))
        .collect();
    let suite = Suite::start(SuiteOptions::new(config.clone(), databases)).await?;
    for entry in std::fs::read_dir(&config.data_dir)? {
        let path = entry?.path();
        if path.is_file() {
            owner_only(&path, 0o600)?;
        }
    }
    println!("PIM is up at {}", suite.url());
    println!(
        "  data: {}  events: {}",
        config.data_dir.display(),
        if config.redis_url.is_some() {
            "Redis"
        } else {
            "embedded"
        }
    );
    if let Some((user, password)) = suite.bootstrap().await? {
        println!();
        println!("Break-glass Global Administrator created (shown once; store it safely):");
        println!("  user name: {user}");
        println!("  password:  {password}");
        println!("Sign in with: pim login --server {} --user {user}", suite.url());
    }
    std::io::stdout().flush().ok();
    suite.run_until(pim_runtime::grpc::shutdown_signal()).await?;
    Ok(0)
}

/// Narrows a path's permissions to its owner (`mode`: 0700 for a directory, 0600 for a file).
fn owner_only(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("restricting {} to its owner", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// One of the all-in-one's own secrets (the key for secrets at rest, the event signing keys):
/// file `name` in the data directory (mode 0600), made by `make` on first start.
fn data_dir_secret(dir: &std::path::Path, name: &str, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    let path = dir.join(name);
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_owned());
    }
    let key = make();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.as_bytes())?;
    Ok(key)
}

/// `pim event-keys`: new signing keys, and the public halves to add to every service.
fn event_keys(services: Vec<ServiceName>) -> i32 {
    let names: Vec<&str> = match services.is_empty() {
        true => PUBLISHERS.to_vec(),
        false => services.iter().map(|s| s.as_str()).collect(),
    };
    let keys = EventKeys::generate(&names);
    println!("# Each service's own signing key: secret, give it to that service only.");
    for entry in keys.signing_setting().split(',') {
        let service = entry.split(':').next().unwrap_or_default();
        println!("# {service}\nPIM_EVENT_SIGNING_KEYS={entry}");
    }
    println!();
    println!("# Public keys: every service that reads these services' streams (all of them).");
    println!("# When rotating, append them to the keys already there; remove the old ones");
    println!("# once the services sign with the new keys and their backlog is consumed.");
    println!("PIM_EVENT_VERIFYING_KEYS={}", keys.verifying_setting());
    0
}

/// `pim events replay`: marks the events written since `since` for publication again.
async fn replay(since: &str, databases: Vec<String>) -> anyhow::Result<i32> {
    let since_ms = match humantime::parse_rfc3339_weak(since) {
        Ok(at) => at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        Err(_) => {
            let ago = humantime::parse_duration(since).map_err(|_| {
                anyhow::anyhow!(
                    "--since {since:?} is neither an RFC 3339 time (2026-12-02T10:00:00Z) nor a duration (2h)"
                )
            })?;
            now_ms().saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
        }
    };
    let config = load_config(true)?;
    let databases: Vec<(String, String)> = match (databases.is_empty(), &config.database_url) {
        (false, _) => databases.into_iter().map(|d| (redacted(&d), d)).collect(),
        (true, Some(url)) => vec![(redacted(url.expose()), url.expose().clone())],
        (true, None) => ServiceName::ALL
            .into_iter()
            .map(|s| config.data_dir.join(format!("{s}.db")))
            .filter(|path| path.exists())
            .map(|path| (path.display().to_string(), sqlite_url(&path)))
            .collect(),
    };
    if databases.is_empty() {
        bail!(
            "no database to replay from: give --database, set PIM_DATABASE_URL, or point PIM_DATA_DIR at pim up's data ({})",
            config.data_dir.display()
        );
    }
    let since_text = time(Some(since_ms));
    for (name, url) in databases {
        let db = pim_runtime::db::connect(&url)
            .await
            .with_context(|| format!("opening {name}"))?;
        let marked = pim_runtime::events::replay(&db, since_ms)
            .await
            .with_context(|| format!("marking events in {name}"))?;
        println!("{name}: {marked} events written since {since_text} will be published again");
        db.close().await.ok();
    }
    Ok(0)
}

/// A database URL without its password, to print.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Query parameters may carry a password too: leave them out.
    let rest = rest.split('?').next().unwrap_or_default();
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

/// What `pim serve` runs: one service, or the gateway in front of all five.
#[derive(Clone, Copy, Debug)]
enum Served {
    Service(ServiceName),
    Gateway,
}

impl std::str::FromStr for Served {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "gateway" => Ok(Self::Gateway),
            _ => s.parse().map(Self::Service).map_err(|_| {
                anyhow::anyhow!(
                    "unknown service {s:?}: expected identity, assignment, approval, alerting, audit or gateway"
                )
            }),
        }
    }
}

async fn serve(service: ServiceName) -> anyhow::Result<i32> {
    let config = load_config(false)?;
    let database = config
        .database_url
        .clone()
        .context("PIM_DATABASE_URL is required for pim serve (e.g. postgres://pim@db/pim_identity)")?;
    if config.redis_url.is_none() {
        bail!("PIM_REDIS_URL is required for pim serve: separate processes exchange events through Redis");
    }
    let databases = BTreeMap::from([(service, database.expose().clone())]);
    let suite = Suite::start(SuiteOptions::new(config, databases)).await?;
    suite.run_until(pim_runtime::grpc::shutdown_signal()).await?;
    Ok(0)
}

async fn bootstrap(identity_database: String, assignment_database: String) -> anyhow::Result<i32> {
    let config = load_config(true)?;
    let channel = pim_runtime::grpc::channel("http://127.0.0.1:1", &TlsConfig::default())?;
    let access: std::sync::Arc<dyn pim_runtime::access::AccessCheck> =
        std::sync::Arc::new(pim_runtime::access::RemoteAccess::new(channel.clone()));
    let deps = |db| pim_runtime::host::Deps {
        config: config.clone(),
        db,
        access: access.clone(),
        identity: channel.clone(),
        assignment: channel.clone(),
        clock: std::sync::Arc::new(pim_runtime::clock::SystemClock),
    };
    let identity = pim_identity::Identity::build(deps(pim_runtime::db::connect(&identity_database).await?)).await?;
    let assignment =
        pim_assignment::Assignment::build(deps(pim_runtime::db::connect(&assignment_database).await?)).await?;
    match crate::bootstrap::run(&identity, &assignment).await? {
        Some((user, password)) => {
            println!("Break-glass Global Administrator created (shown once; store it safely):");
            println!("  user name: {user}");
            println!("  password:  {password}");
        }
        None => println!("A permanent Global Administrator exists already; nothing to do."),
    }
    Ok(0)
}

// ---- client side ----

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
        let _ = OUTPUT.set(args.output);
        let (server, ca) = target(args);
        let tls = TlsConfig {
            ca,
            client_cert: args.client_cert.clone(),
            client_key: args.client_key.clone(),
            ..TlsConfig::default()
        };
        let channel = pim_runtime::grpc::channel(&server, &tls)?;
        let token = if signed_in { Some(read_token(args)?) } else { None };
        let fresh_path = token_path(args).ok().map(|p| p.with_extension("fresh"));
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
            let _ = std::fs::write(path, line);
        }
        response.into_inner()
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
    fn claims(&self) -> anyhow::Result<serde_json::Value> {
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
        let (kind, name) = match reference.split_once(':') {
            Some((kind @ ("user" | "group" | "service-principal"), name)) => (Some(kind), name),
            _ => (None, reference),
        };
        let mut found: Vec<(&str, String)> = Vec::new();
        if kind.is_none_or(|k| k == "user") {
            let user = DirectoryServiceClient::new(self.channel.clone())
                .get_user(self.request(ipb::GetUserRequest { user: name.to_owned() })?)
                .await;
            match user {
                Ok(user) => found.push(("user", user.into_inner().id)),
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(explain(status)),
            }
        }
        if kind.is_none_or(|k| k == "group") {
            let groups = listings::groups(self).await?;
            found.extend(
                groups
                    .into_iter()
                    .filter(|g| g.display_name == name)
                    .map(|g| ("group", g.id)),
            );
        }
        if kind.is_none_or(|k| k == "service-principal") {
            let sps = listings::service_principals(self, name).await?;
            found.extend(
                sps.into_iter()
                    .filter(|sp| sp.display_name == name)
                    .map(|sp| ("service-principal", sp.id)),
            );
        }
        match found.as_slice() {
            [(_, id)] => Ok(id.clone()),
            [] => bail!("no user, group or service principal is named {name:?}"),
            _ => {
                let kinds: Vec<String> = found.iter().map(|(k, id)| format!("{k} {id}")).collect();
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

    pub(crate) async fn principal(&mut self, id: &str) -> String {
        if id.is_empty() {
            return String::new();
        }
        if let Some(name) = self.principals.get(id) {
            return name.clone();
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
        let name = found
            .map(|p| {
                if p.user_name.is_empty() {
                    p.display_name
                } else {
                    p.user_name
                }
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id.to_owned());
        self.principals.insert(id.to_owned(), name.clone());
        name
    }

    pub(crate) async fn role(&mut self, id: &str) -> String {
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
        self.roles
            .as_ref()
            .and_then(|roles| roles.get(id).cloned())
            .unwrap_or_else(|| id.to_owned())
    }
}

fn token_path(args: &ClientArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.token_file {
        return Ok(p.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --token-file")?;
    Ok(PathBuf::from(home).join(".config/pim/token"))
}

const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Where the CLI calls: `--server` (or PIM_SERVER) with `--ca`; else the server the token was
/// signed in at, with the CA trusted then; else the local default.
fn target(args: &ClientArgs) -> (String, Option<PathBuf>) {
    if let Some(server) = &args.server {
        return (server.clone(), args.ca.clone());
    }
    let remembered = token_path(args)
        .ok()
        .and_then(|p| std::fs::read_to_string(p.with_extension("server")).ok());
    let mut lines = remembered.as_deref().unwrap_or_default().lines();
    match lines.next().map(str::trim).filter(|s| !s.is_empty()) {
        Some(server) => {
            let ca = args
                .ca
                .clone()
                .or_else(|| lines.next().filter(|l| !l.is_empty()).map(PathBuf::from));
            (server.to_owned(), ca)
        }
        None => (DEFAULT_SERVER.to_owned(), args.ca.clone()),
    }
}

fn read_token(args: &ClientArgs) -> anyhow::Result<String> {
    let path = token_path(args)?;
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("not signed in (no token at {}): run pim login first", path.display()))?;
    Ok(token.trim().to_owned())
}

pub(crate) fn write_token(args: &ClientArgs, token: &str) -> anyhow::Result<PathBuf> {
    let path = token_path(args)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    // The token's server (and the CA trusted for it), so later commands need no --server.
    let (server, ca) = target(args);
    let ca = ca
        .map(|ca| std::path::absolute(&ca).unwrap_or(ca).display().to_string())
        .unwrap_or_default();
    std::fs::write(path.with_extension("server"), format!("{server}\n{ca}\n"))
        .with_context(|| format!("writing {}", path.with_extension("server").display()))?;
    Ok(path)
}

/// What the server answered when it did not do what was asked, in words a person can act on;
/// its code decides the exit status ([`exit_status`]).
#[derive(Debug)]
pub struct Answered {
    pub code: tonic::Code,
    text: String,
}

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Answered {}

/// The exit status of a command that failed: 1 refused (by a permission, a policy rule or
/// the state of things; `pim check` also answers 1 for "not allowed"), 2 a usage mistake (bad
/// flags or input, not signed in), 3 PIM unreachable, 4 a fault on the server's side.
pub fn exit_status(err: &anyhow::Error) -> i32 {
    use tonic::Code as C;
    for cause in err.chain() {
        if let Some(answered) = cause.downcast_ref::<Answered>() {
            return match answered.code {
                // Not signed in (or no longer): a step the user left out, not a refusal.
                C::InvalidArgument | C::OutOfRange | C::Unauthenticated => 2,
                C::Unavailable | C::DeadlineExceeded => 3,
                C::Internal | C::Unknown | C::DataLoss | C::Unimplemented => 4,
                _ => 1,
            };
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            return 3;
        }
    }
    2
}

/// A gRPC error in words a person can act on.
pub(crate) fn explain(status: Status) -> anyhow::Error {
    let rules = pim_runtime::grpc::violated_rules(&status);
    let hint = match status.code() {
        tonic::Code::Unauthenticated => " (run pim login)",
        tonic::Code::PermissionDenied => " (your roles do not allow this)",
        tonic::Code::Unavailable => " (is PIM running at --server, or the server of the last pim login?)",
        _ => "",
    };
    let rules = if rules.is_empty() {
        String::new()
    } else {
        format!(" [rules: {}]", rules.join(", "))
    };
    anyhow::Error::new(Answered {
        code: status.code(),
        text: format!("{:?}: {}{rules}{hint}", status.code(), status.message()),
    })
}

pub(crate) fn secret_from(stdin_flag: bool, env_var: &str, prompt: &str) -> anyhow::Result<String> {
    if stdin_flag {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if let Ok(v) = std::env::var(env_var) {
        return Ok(v);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no secret given: use --password-stdin or {env_var}");
    }
    Ok(rpassword::prompt_password(prompt)?)
}

/// A status as every command prints it: lower case with underscores (`InProgress` →
/// `in_progress`, as `pending_approval`).
pub(crate) fn snake_case(status: &str) -> String {
    let mut out = String::with_capacity(status.len() + 4);
    for (i, c) in status.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

pub(crate) fn time(ms: Option<i64>) -> String {
    match ms {
        None => "permanent".to_owned(),
        Some(ms) => humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
            .to_string(),
    }
}

/// Every item of a paged listing: `page` fetches the page after a token (empty: the first)
/// and answers its items and the next token (empty: the last page).
pub(crate) async fn all_pages<T, F, Fut>(mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

/// Prints rows under `headers`: a table, or with `--output json` one JSON object per row
/// whose fields are the headers in lowercase (spaces and dashes as underscores).
pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    if matches!(OUTPUT.get(), Some(Output::Json)) {
        let keys: Vec<String> = headers
            .iter()
            .map(|h| h.to_lowercase().replace([' ', '-'], "_"))
            .collect();
        for row in rows {
            let object: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .cloned()
                .zip(row.into_iter().map(serde_json::Value::String))
                .collect();
            println!("{}", serde_json::Value::Object(object));
        }
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

async fn login(args: LoginArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, false)?;
    let mut auth = AuthServiceClient::new(session.channel.clone());
    let response = match (&args.user, &args.client_id) {
        (Some(user), None) => {
            let password = secret_from(args.password_stdin, "PIM_PASSWORD", "Password: ")?;
            auth.sign_in(session.request(ipb::SignInRequest {
                user_name: user.clone(),
                password,
            })?)
            .await
        }
        (None, Some(client_id)) => {
            let client_secret = secret_from(args.password_stdin, "PIM_CLIENT_SECRET", "Client secret: ")?;
            auth.sign_in_service_principal(session.request(ipb::SignInServicePrincipalRequest {
                client_id: client_id.clone(),
                client_secret,
            })?)
            .await
        }
        _ => bail!("pass --user NAME or --client-id ID"),
    }
    .map_err(explain)?
    .into_inner();
    let mut response = response;
    if response.mfa_pending {
        // The server holds the sign-in until a code is verified: the token can do nothing else.
        let code = match (&args.code, std::io::stdin().is_terminal()) {
            (Some(code), _) => code.clone(),
            (None, true) => rpassword::prompt_password("Authenticator code (or a recovery code): ")?,
            (None, false) => {
                bail!("this account has MFA: pass --code (or PIM_MFA_CODE) with a code from the authenticator")
            }
        };
        let pending = session.with_token(&response.access_token);
        response = MfaServiceClient::new(session.channel.clone())
            .verify(pending.request(ipb::VerifyRequest { code })?)
            .await
            .map_err(explain)?
            .into_inner();
        mfa::warn_if_recovery_code(&response);
    } else if response.enrollment_required {
        let path = write_token(&args.client, &response.access_token)?;
        println!(
            "Password accepted. This directory requires MFA and you have no authenticator yet: \
             run `pim mfa enroll --pass PASS` within 5 minutes, with the enrolment pass an administrator gave you \
             (sign-in token in {})",
            path.display()
        );
        return Ok(0);
    } else if args.user.is_some()
        && let Some(code) = &args.code
    {
        // MFA is not asked at sign-in here; a code given anyway steps the session up.
        let signed_in = session.with_token(&response.access_token);
        response = MfaServiceClient::new(session.channel.clone())
            .verify(signed_in.request(ipb::VerifyRequest { code: code.clone() })?)
            .await
            .map_err(explain)?
            .into_inner();
    }
    let path = write_token(&args.client, &response.access_token)?;
    let who = Names::new(&session.with_token(&response.access_token))
        .principal(&response.principal_id)
        .await;
    println!(
        "Signed in as {who} ({}) until {} (token in {})",
        response.principal_id,
        time(response.expires_at.as_ref().map(from_timestamp)),
        path.display()
    );
    Ok(0)
}

async fn whoami(client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    let id = session.whoami()?;
    // Asking the server checks the token is still good (not expired, not signed out).
    let principal = DirectoryServiceClient::new(session.channel.clone())
        .get_principal(session.request(ipb::GetPrincipalRequest {
            principal_id: id.clone(),
        })?)
        .await
        .map_err(explain)?
        .into_inner();
    let name = if principal.user_name.is_empty() {
        principal.display_name
    } else {
        principal.user_name
    };
    let until = session.claims()?["exp"].as_i64().map(|exp| time(Some(exp * 1000)));
    match until {
        Some(until) => println!("{name} ({id}), signed in until {until}"),
        None => println!("{name} ({id})"),
    }
    Ok(0)
}

async fn logout(client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    AuthServiceClient::new(session.channel.clone())
        .sign_out(session.request(ipb::SignOutRequest {
            refresh_token: String::new(),
        })?)
        .await
        .map_err(explain)?;
    let path = token_path(&client)?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    println!("Signed out; the session's tokens no longer work.");
    Ok(0)
}

async fn service_principals(cmd: SpCommand) -> anyhow::Result<i32> {
    match cmd {
        SpCommand::Create { name, client } => {
            let session = Session::open(&client, true)?;
            let r = DirectoryServiceClient::new(session.channel.clone())
                .create_service_principal(session.request(ipb::CreateServicePrincipalRequest { display_name: name })?)
                .await
                .map_err(explain)?
                .into_inner();
            let sp = r.service_principal.unwrap_or_default();
            println!("Created service principal {} ({})", sp.display_name, sp.id);
            println!("  client id:     {}", sp.client_id);
            println!("  client secret: {} (shown once)", r.client_secret);
        }
        SpCommand::List { filter, client } => {
            let session = Session::open(&client, true)?;
            let found = listings::service_principals(&session, &filter).await?;
            let rows = found
                .into_iter()
                .map(|sp| {
                    vec![
                        sp.id,
                        sp.display_name,
                        if sp.enabled { "enabled" } else { "disabled" }.to_owned(),
                        time(sp.created_at.as_ref().map(from_timestamp)),
                    ]
                })
                .collect();
            print_table(&["CLIENT ID", "NAME", "STATE", "CREATED"], rows);
        }
        SpCommand::Rotate { id, client } => {
            let session = Session::open(&client, true)?;
            let r = DirectoryServiceClient::new(session.channel.clone())
                .rotate_service_principal_secret(session.request(ipb::GetServicePrincipalRequest {
                    service_principal_id: id.clone(),
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!("New client secret for {id}: {} (shown once)", r.client_secret);
        }
        SpCommand::Disable { id, client } => {
            let session = Session::open(&client, true)?;
            // Its next `pim check` sees the service principal's access gone.
            session.remember(
                DirectoryServiceClient::new(session.channel.clone())
                    .disable_service_principal(session.request(ipb::GetServicePrincipalRequest {
                        service_principal_id: id.clone(),
                    })?)
                    .await
                    .map_err(explain)?,
            );
            println!("Service principal {id} disabled");
        }
    }
    Ok(0)
}

async fn roles(client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    let roles = RoleServiceClient::new(session.channel.clone())
        .list_role_definitions(session.request(apb::ListRoleDefinitionsRequest {})?)
        .await
        .map_err(explain)?
        .into_inner()
        .roles;
    let rows = roles
        .into_iter()
        .map(|r| {
            vec![
                r.id,
                r.name,
                if r.privileged { "yes" } else { "" }.into(),
                r.permissions.join(" "),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "PRIVILEGED", "PERMISSIONS"], rows);
    Ok(0)
}

pub(crate) fn kind_pb(kind: KindArg) -> apb::AssignmentKind {
    match kind {
        KindArg::Eligible => apb::AssignmentKind::Eligible,
        KindArg::Active => apb::AssignmentKind::Active,
    }
}

async fn assign(args: AssignArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let principal_id = session.principal_id(&args.principal).await?;
    let role_id = session.role_id(&args.role).await?;
    let expiration = if args.permanent {
        Some(apb::schedule::Expiration::Permanent(true))
    } else {
        args.duration.map(|d| {
            apb::schedule::Expiration::Duration(prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: 0,
            })
        })
    };
    let ticket = (!args.ticket_number.is_empty()).then(|| pim_proto::common::v1::Ticket {
        system: args.ticket_system.clone(),
        number: args.ticket_number.clone(),
    });
    let request = apb::CreateRequestRequest {
        action: apb::RequestAction::AdminAssign as i32,
        kind: kind_pb(args.kind) as i32,
        principal_id,
        role_id,
        scope: args.scope,
        schedule: Some(apb::Schedule {
            start_time: None,
            expiration,
        }),
        justification: args.justification,
        ticket,
        validate_only: args.validate_only,
    };
    let r = AssignmentServiceClient::new(session.channel.clone())
        .create_request(session.request(request)?)
        .await
        .map_err(explain)?;
    let r = session.remember(r);
    let status = apb::RequestStatus::try_from(r.status)
        .map(|s| s.as_str_name().trim_start_matches("REQUEST_STATUS_").to_lowercase())
        .unwrap_or_default();
    if args.validate_only {
        println!(
            "Valid: would be {status}, from {} until {}",
            time(r.start_time.as_ref().map(from_timestamp)),
            time(r.end_time.as_ref().map(from_timestamp))
        );
    } else {
        println!(
            "Request {} {status}: assignment {} from {} until {}",
            r.id,
            r.assignment_id,
            time(r.start_time.as_ref().map(from_timestamp)),
            time(r.end_time.as_ref().map(from_timestamp))
        );
    }
    Ok(0)
}

async fn list_assignments(args: ListAssignmentsArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let principal_id = match &args.principal {
        Some(p) => session.principal_id(p).await?,
        None => String::new(),
    };
    let request = apb::ListAssignmentsRequest {
        principal_id,
        role_id: args.role.clone().unwrap_or_default(),
        scope: String::new(),
        mine: args.mine,
    };
    let mut client = AssignmentServiceClient::new(session.channel.clone());
    let response = match args.kind {
        KindArg::Active => client.list_active_assignments(session.request(request)?).await,
        KindArg::Eligible => client.list_eligible_assignments(session.request(request)?).await,
    }
    .map_err(explain)?
    .into_inner();
    let mut names = Names::new(&session);
    let mut rows = Vec::new();
    for a in response.assignments {
        rows.push(vec![
            a.id,
            names.principal(&a.principal_id).await,
            a.role_name,
            a.scope,
            time(a.end_time.as_ref().map(from_timestamp)),
        ]);
    }
    print_table(&["ID", "PRINCIPAL", "ROLE", "SCOPE", "UNTIL"], rows);
    Ok(0)
}

async fn check(args: CheckArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let principal = args.principal_flag.or(args.principal_arg).unwrap_or_default();
    let role = args.role_flag.or(args.role_arg);
    let principal_id = session.principal_id(&principal).await?;
    let target = match (&role, &args.permission) {
        (Some(role), _) => apb::check_access_request::Target::RoleId(session.role_id(role).await?),
        (None, Some(p)) => apb::check_access_request::Target::Permission(p.clone()),
        (None, None) => bail!("pass --role or --permission"),
    };
    let r = AccessServiceClient::new(session.channel.clone())
        .check_access(session.request(apb::CheckAccessRequest {
            principal_id,
            target: Some(target),
            scope: args.scope.clone(),
            at_least_as_fresh: session.at_least_as_fresh(),
        })?)
        .await
        .map_err(explain)?
        .into_inner();
    let what = role.or(args.permission).unwrap_or_default();
    if r.allowed {
        // Through which role, assignment and group, where: the grants behind the answer.
        let through: Vec<String> = r
            .grants
            .iter()
            .map(|g| {
                let group = if g.via_group_id.is_empty() {
                    String::new()
                } else {
                    format!(" via group {}", g.via_group_id)
                };
                format!(
                    "{} at {} until {} (assignment {}{group})",
                    g.role_name,
                    g.scope,
                    time(g.end_time.as_ref().map(from_timestamp)),
                    g.assignment_id
                )
            })
            .collect();
        println!(
            "allowed: {principal} holds {what} at {} until {}",
            args.scope,
            time(r.expires_at.as_ref().map(from_timestamp))
        );
        for grant in through {
            println!("  through {grant}");
        }
        Ok(0)
    } else {
        println!("denied: {principal} does not hold {what} at {}", args.scope);
        Ok(1)
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain (exit code 0 if intact, 1 with the first broken record).
    Verify {
        #[arg(long, default_value_t = 0)]
        from: i64,
        #[arg(long, default_value_t = 0)]
        to: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The chain head (sequence and hash), to keep somewhere else.
    Head {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write every record you may read to standard output: JSON lines with the chain's
    /// hashes, or OCSF 1.1.0 events (Account Change and API Activity) for a SIEM.
    Export {
        /// jsonl or ocsf
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

async fn audit_command(command: AuditCommand) -> anyhow::Result<i32> {
    match command {
        AuditCommand::Verify { from, to, client } => {
            let session = Session::open(&client, true)?;
            let r = AuditServiceClient::new(session.channel.clone())
                .verify_chain(session.request(aupb::VerifyChainRequest {
                    from_sequence: from,
                    to_sequence: to,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            if r.ok {
                println!("intact: {} records checked", r.checked);
                Ok(0)
            } else {
                println!(
                    "BROKEN at record {} ({} checked before it)",
                    r.first_broken_sequence, r.checked
                );
                Ok(1)
            }
        }
        AuditCommand::Head { client } => {
            let session = Session::open(&client, true)?;
            let head = AuditServiceClient::new(session.channel.clone())
                .get_chain_head(session.request(aupb::GetChainHeadRequest {})?)
                .await
                .map_err(explain)?
                .into_inner();
            let hash: String = head.hash.iter().map(|b| format!("{b:02x}")).collect();
            println!("{} {hash}", head.sequence);
            Ok(0)
        }
        AuditCommand::Export { format, client } => {
            let session = Session::open(&client, true)?;
            let mut chunks = AuditServiceClient::new(session.channel.clone())
                .export_events(session.request(aupb::ExportEventsRequest { filter: None, format })?)
                .await
                .map_err(explain)?
                .into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = chunks.message().await.map_err(explain)? {
                out.write_all(&chunk.data)?;
            }
            out.flush()?;
            Ok(0)
        }
    }
}

async fn audit(args: AuditArgs) -> anyhow::Result<i32> {
    if let Some(command) = args.command {
        return audit_command(command).await;
    }
    let session = Session::open(&args.client, true)?;
    let actor_id = match &args.actor {
        Some(a) => session.principal_id(a).await?,
        None => String::new(),
    };
    let target_id = match &args.target {
        Some(t) => session.principal_id(t).await?,
        None => String::new(),
    };
    let role_id = match &args.role {
        Some(r) => session.role_id(r).await?,
        None => String::new(),
    };
    let request = aupb::QueryEventsRequest {
        actor_id,
        target_id,
        role_id,
        action: args.action.clone().unwrap_or_default(),
        outcome: args.outcome.clone().unwrap_or_default(),
        since: args.since.map(|d| to_timestamp(now_ms() - d.as_millis() as i64)),
        page_size: args.limit,
        newest_first: !args.oldest_first,
        ..Default::default()
    };
    let records = AuditServiceClient::new(session.channel.clone())
        .query_events(session.request(request)?)
        .await
        .map_err(explain)?
        .into_inner()
        .records;
    match args.client.output {
        Output::Json => {
            for r in records {
                let line = serde_json::json!({
                    "sequence": r.sequence, "event_id": r.event_id, "time": time(r.time.as_ref().map(from_timestamp)),
                    "source": r.source, "action": r.action, "actor_id": r.actor_id, "actor_name": r.actor_name,
                    "target_id": r.target_id, "target_name": r.target_name, "role_id": r.role_id, "role_name": r.role_name,
                    "scope": r.scope, "justification": r.justification, "ticket": r.ticket, "outcome": r.outcome,
                    "trace_id": r.trace_id, "payload": serde_json::from_str::<serde_json::Value>(&r.payload_json).unwrap_or_default(),
                });
                println!("{line}");
            }
        }
        Output::Table => {
            let rows = records
                .into_iter()
                .map(|r| {
                    vec![
                        time(r.time.as_ref().map(from_timestamp)),
                        r.action.rsplit('.').next().unwrap_or_default().to_owned(),
                        if r.actor_name.is_empty() {
                            r.actor_id
                        } else {
                            r.actor_name
                        },
                        if r.target_name.is_empty() {
                            r.target_id
                        } else {
                            r.target_name
                        },
                        r.role_name,
                        r.scope,
                        r.outcome,
                        r.justification,
                    ]
                })
                .collect();
            print_table(
                &[
                    "TIME",
                    "ACTION",
                    "ACTOR",
                    "TARGET",
                    "ROLE",
                    "SCOPE",
                    "OUTCOME",
                    "JUSTIFICATION",
                ],
                rows,
            );
        }
    }
    Ok(0)
}

async fn health(only: Option<Served>, client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, false)?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(session.channel.clone());
    let mut all_serving = true;
    let names = [
        pim_proto::service_names::IDENTITY,
        pim_proto::service_names::ASSIGNMENT,
        pim_proto::service_names::APPROVAL,
        pim_proto::service_names::ALERTING,
        pim_proto::service_names::AUDIT,
    ];
    let mut rows = Vec::new();
    let asked: Vec<&str> = match only {
        // The server itself (grpc.health.v1's empty name): the gateway answers for itself.
        Some(Served::Gateway) => vec![""],
        Some(Served::Service(s)) => {
            let package = format!("pim.{s}.");
            names.concat().into_iter().filter(|n| n.starts_with(&package)).collect()
        }
        None => names.concat(),
    };
    for name in asked {
        let status = match health
            .check(session.request(tonic_health::pb::HealthCheckRequest {
                service: name.to_owned(),
            })?)
            .await
        {
            Ok(r) => format!("{:?}", r.into_inner().status()),
            Err(s) => format!("{:?}", s.code()),
        };
        all_serving &= status == "Serving";
        rows.push(vec![
            if name.is_empty() { "(the server)" } else { name }.to_owned(),
            status,
        ]);
    }
    print_table(&["SERVICE", "STATUS"], rows);
    Ok(if all_serving { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn database_urls_print_without_passwords_and_odd_ones_do_not_panic() {
        use super::redacted;
        assert_eq!(
            redacted("postgres://pim:s3cret@db:5432/pim"),
            "postgres://pim@db:5432/pim"
        );
        assert_eq!(redacted("postgres://db/pim?password=s3cret"), "postgres://db/pim");
        assert_eq!(redacted("sqlite:///data/pim.db"), "sqlite:///data/pim.db");
        for odd in ["a@b://c", "://@", "@", "x://a:b@c@d"] {
            assert!(!redacted(odd).contains("s3cret"));
        }
        assert_eq!(redacted("x://a:b@c@d"), "x://a@d");
    }

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

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
