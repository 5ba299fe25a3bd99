//! The `pim` command line: run the suite (`up`, `serve`, `bootstrap`) and talk to it (sign
//! in, users, roles, assign, check, audit). Every client command talks to one address
//! (`--server`, or `PIM_SERVER`), as an ingress gives in production and `pim up` gives locally.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use pim_proto::assignment::v1 as apb;

use crate::host::ServiceName;

mod alerts;
mod answers;
mod approvals;
mod as_code;
mod assignments;
mod audit;
mod groups;
mod listings;
mod mfa;
mod notifications;
mod operate;
mod policy;
mod print;
mod service_principals;
mod session;
mod signin;

pub use answers::{Answered, exit_status};
pub(crate) use answers::{Unanswered, answered, connection_cause, explain, is_denied, watch_opened};
use assignments::{AssignArgs, CheckArgs, ListAssignmentsArgs, assign, check, list_assignments};
pub(crate) use listings::all_pages;
use operate::{Served, bootstrap, event_keys, health, load_config, replay, serve, up};
pub use print::printable;
pub(crate) use print::{Cell, Named, OUTPUT, Output, json_wanted, print_made, print_table, snake_case, time};
pub(crate) use session::{Names, Session, token_path, write_token};
mod requests;
mod reviews;
mod roles;
mod users;
mod webhooks;

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
    /// Print each principal's, role's and group's id beside its name in tables (JSON always
    /// has both: `principal` and `principal_id`).
    #[arg(long, global = true)]
    ids: bool,
}

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
    /// PIM_APPROVAL_URL, PIM_ALERTING_URL, PIM_AUDIT_URL) for the CLI and apps, or the web
    /// portal (PIM_PORTAL_ADDR and the same URL settings).
    Serve {
        /// identity, assignment, approval, alerting, audit, gateway or portal
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
    Login(signin::LoginArgs),
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
        /// End every session of yours (other terminals', browsers', apps'), not only this one.
        #[arg(long)]
        everywhere: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage service principals (apps and bots).
    #[command(subcommand, name = "service-principals", alias = "sp")]
    ServicePrincipals(service_principals::SpCommand),
    /// Your roles: eligible and active (scheduled ones too, FROM when), including those through
    /// groups (--definitions: every role definition; create, update, delete: custom roles).
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
    /// Cancel a request of yours that waits for approval, or for its scheduled start.
    Cancel(requests::CancelArgs),
    /// Approvals waiting for your decision, with those you decided and those of your own
    /// requests (which you follow, not decide); --watch follows what you may decide, --id
    /// shows one in full.
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
    Policy(policy::PolicyCommand),
    /// Who hears of a role's assignments and activations by email (its notification rules).
    #[command(subcommand)]
    Notifications(notifications::NotificationsCommand),
    /// Show, as a diff, what `pim apply -f FILE` would change (custom roles, groups and their
    /// members, role and group policies with their notification rules, assignments of roles
    /// and of group access). Nothing changes. The file's format is
    /// deploy/pim.schema.json; `pim export` writes one.
    Plan(as_code::PlanArgs),
    /// Make the server match a configuration file: every error in it is listed, with its line,
    /// before anything changes; a second apply changes nothing.
    Apply(as_code::ApplyArgs),
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
    /// Grants target systems reported that PIM did not make (standing access outside PIM).
    Unmanaged {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask whether a principal holds a role or permission at a scope (exit code 0 if it does, 1
    /// if not, 5 if the question could not be answered: refused to you, throttled, or naming
    /// no one).
    Check(CheckArgs),
    /// Read the audit log.
    Audit(audit::AuditArgs),
    /// Push what audit records to a URL, signed (Standard Webhooks): subscriptions and their
    /// deliveries.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Shared Signals (SSF/CAEP): the streams apps receive session and role changes on.
    #[command(subcommand)]
    Ssf(webhooks::SsfCommand),
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

/// Why a request is made: the same flags on every command that makes one.
#[derive(Args, Clone, Default)]
pub(crate) struct Why {
    /// Why (the role's policy may require it).
    #[arg(long, short = 'j', default_value = "")]
    pub(crate) justification: String,
    /// A ticket as SYSTEM:NUMBER, e.g. ServiceNow:INC0012345 (the role's policy may require one).
    #[arg(long, value_parser = parse_ticket)]
    pub(crate) ticket: Option<pim_proto::common::v1::Ticket>,
}

fn parse_ticket(text: &str) -> Result<pim_proto::common::v1::Ticket, String> {
    match text.split_once(':') {
        Some((system, number)) if !system.trim().is_empty() && !number.trim().is_empty() => {
            Ok(pim_proto::common::v1::Ticket {
                system: system.trim().to_owned(),
                number: number.trim().to_owned(),
            })
        }
        _ => Err("expected SYSTEM:NUMBER, e.g. ServiceNow:INC0012345".to_owned()),
    }
}

/// A role, named the same way by every command: as the first argument or with `--role`.
#[derive(Args, Clone)]
pub(crate) struct RoleRef {
    /// Role name (e.g. "Exchange Administrator") or id; or give it with --role.
    #[arg(value_name = "ROLE", conflicts_with = "role_flag")]
    role_arg: Option<String>,
    /// Role name or id (the same as the first argument).
    #[arg(long = "role", value_name = "ROLE")]
    role_flag: Option<String>,
}

impl RoleRef {
    /// The role named, if one was.
    pub(crate) fn given(&self) -> Option<&str> {
        self.role_arg.as_deref().or(self.role_flag.as_deref())
    }

    /// The role named, or a usage error saying how to name one.
    pub(crate) fn required(&self) -> anyhow::Result<&str> {
        self.given()
            .context("name a role: as the first argument (\"Exchange Administrator\") or with --role")
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum KindArg {
    Eligible,
    Active,
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

impl Cli {
    /// Whether the command runs PIM's services (`pim up`, `pim serve`) rather than a command
    /// that ends when its work is done.
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Up | Command::Serve { .. })
    }
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
        Command::Serve {
            service: Served::Portal,
        } => operate::serve_portal().await,
        Command::EventKeys { services } => Ok(event_keys(services)),
        Command::Events(EventsCommand::Replay { since, databases }) => replay(&since, databases).await,
        Command::Bootstrap {
            identity_database,
            assignment_database,
        } => bootstrap(identity_database, assignment_database).await,
        Command::Login(args) => signin::login(args).await,
        Command::Logout { everywhere, client } => signin::logout(client, everywhere).await,
        Command::Whoami { client } => signin::whoami(client).await,
        Command::Groups(cmd) => groups::run(cmd).await,
        Command::Users(cmd) => users(cmd).await,
        Command::ServicePrincipals(cmd) => service_principals::service_principals(cmd).await,
        Command::Roles { manage: Some(cmd), .. } => roles::manage(cmd).await,
        Command::Roles {
            definitions: true,
            client,
            ..
        } => roles::definitions(client).await,
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
        Command::Policy(cmd) => policy::policy(cmd).await,
        Command::Notifications(cmd) => notifications::notifications(cmd).await,
        Command::Plan(args) => as_code::plan(args).await,
        Command::Apply(args) => as_code::apply(args).await,
        Command::Export(args) => as_code::export(args).await,
        Command::Mfa(cmd) => mfa::run(cmd).await,
        Command::Password(args) => mfa::change_password(args).await,
        Command::Assign(args) => assign(args).await,
        Command::Assignments(args) => list_assignments(args).await,
        Command::Unmanaged { client } => assignments::unmanaged(client).await,
        Command::Check(args) => check(args).await,
        Command::Audit(args) => audit::audit(args).await,
        Command::Webhooks(cmd) => webhooks::run(cmd).await,
        Command::Ssf(cmd) => webhooks::run_ssf(cmd).await,
        Command::Health { service, client } => health(service, client).await,
    }
}

/// A duration as people write it (`30m`, `8h`, `14d`, `1h 30m`), at least a second; a
/// mistake says what to write instead (a usage error, exit 2).
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration_or_zero(text)?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("must be at least 1s: {WRITE_A_DURATION}"));
    }
    Ok(d)
}

/// A moment typed as an RFC 3339 time with its offset (2026-12-02T10:00:00Z) or as how long
/// ago (2h), in epoch milliseconds.
pub(crate) fn parse_moment_or_ago(text: &str) -> Result<i64, String> {
    match pim_runtime::format::parse_moment(text) {
        Ok(at) => Ok(at.max(0)),
        // A time without a zone says so; anything else may be a length.
        Err(why) if why.contains("no time zone") => Err(why),
        Err(_) => {
            let ago = pim_runtime::format::parse_duration(text.trim()).map_err(|_| {
                format!("{text:?} is neither an RFC 3339 time (2026-12-02T10:00:00Z) nor how long ago (2h)")
            })?;
            Ok(pim_runtime::db::now_ms().saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)))
        }
    }
}

/// The same where none at all is a setting too (a policy's MFA freshness may be 0s).
pub(crate) fn parse_duration_or_zero(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('-') {
        // Values may start with '-' (so that -5m is answered here); a flag is not one.
        return Err(if rest.starts_with(|c: char| c.is_ascii_digit()) {
            format!("a duration is never negative: {WRITE_A_DURATION}")
        } else {
            format!("the duration is missing ({text} is a flag): {WRITE_A_DURATION}")
        });
    }
    pim_runtime::format::parse_duration(text).map_err(|why| format!("{why}: {WRITE_A_DURATION}"))
}

const WRITE_A_DURATION: &str = "write a length such as 30m, 8h or 14d (units: s, m, h, d)";

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
        if env_var == "PIM_MFA_CODE" {
            bail!("a code is needed: pass --code (or set PIM_MFA_CODE) with a code from your authenticator");
        }
        bail!("no secret given: use --password-stdin or {env_var}");
    }
    Ok(rpassword::prompt_password(prompt)?)
}

pub(crate) fn kind_pb(kind: KindArg) -> apb::AssignmentKind {
    match kind {
        KindArg::Eligible => apb::AssignmentKind::Eligible,
        KindArg::Active => apb::AssignmentKind::Active,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn database_urls_print_without_passwords_and_odd_ones_do_not_panic() {
        use super::operate::redacted;
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

    #[test]
    fn durations_are_positive_lengths_and_a_mistake_says_what_to_write() {
        use super::{parse_duration, parse_duration_or_zero};
        use std::time::Duration;
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
        for (bad, says) in [
            ("-5m", "never negative"),
            ("abc", "is not a length"),
            ("0m", "at least 1s"),
            ("1ms", "units are one letter"),
            ("1M", "not a unit"),
            ("90", "without its unit"),
            ("--justification", "the duration is missing"),
            ("-j", "the duration is missing"),
        ] {
            let said = parse_duration(bad).expect_err(bad);
            assert!(said.contains(says) && said.contains("30m, 8h or 14d"), "{bad}: {said}");
        }
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
    }

    /// A call that never reached PIM says what went wrong under tonic's "transport error",
    /// and what to change; PIM's own answers read as before.
    #[tokio::test]
    async fn a_connection_that_failed_says_why_and_what_to_change() {
        use super::answers::tls_hint;
        use super::{exit_status, explain};
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        async fn health(url: &str) -> tonic::Status {
            let channel = pim_runtime::grpc::channel(url, &Default::default()).unwrap();
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .expect_err("nothing serves health there")
        }
        // Nothing listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = explain(health(&format!("http://127.0.0.1:{port}")).await);
        let said = refused.to_string();
        assert!(
            said.contains("Connection refused") && said.contains("is PIM running"),
            "{said}"
        );
        assert_eq!(exit_status(&refused), 3);
        // https:// to a server that does not speak TLS.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = plain.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut socket, _)) = plain.accept().await {
                let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let said = explain(health(&format!("https://127.0.0.1:{port}")).await).to_string();
        assert!(
            said.contains("InvalidContentType") && said.contains("use http://"),
            "{said}"
        );
        // PIM's own answer.
        let answered = explain(tonic::Status::unavailable(
            "access decisions are unavailable; try again",
        ));
        assert_eq!(
            answered.to_string(),
            "Unavailable: access decisions are unavailable; try again \
             (is PIM running at --server, or the server of the last pim login?)"
        );
        for (cause, hint) in [
            ("invalid peer certificate: UnknownIssuer", "--ca or PIM_TLS_CA"),
            ("invalid peer certificate: NotValidForName", "does not name the host"),
            (
                "received fatal alert: CertificateRequired",
                "--client-cert and --client-key",
            ),
            (
                "received fatal alert: CertificateUnknown",
                "refused the client certificate",
            ),
            ("http2 error: frame with invalid size", "use https://"),
            (
                "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
                "without the mark",
            ),
            (
                "stream closed because of a broken pipe",
                "may require a client certificate",
            ),
            ("invalid peer certificate: Expired", "out of its validity period"),
            // A plain connection that waited too long is not a certificate's fault.
            ("transport error: Timeout expired", "did not answer in time"),
        ] {
            assert!(tls_hint(cause).contains(hint), "{cause}: {}", tls_hint(cause));
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every flag and argument of every command says what it is for in `--help`.
    #[test]
    fn every_flag_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut cli = Cli::command();
        cli.build();
        walk(&cli, "pim", &mut missing);
        assert!(missing.is_empty(), "flags without help:\n{}", missing.join("\n"));
    }
}
