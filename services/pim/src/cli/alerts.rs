//! `pim alerts`: what the rules found, triage, and the rules' settings.

use clap::{Args, Subcommand, ValueEnum};

use pim_proto::alerting::v1 as pb;
use pim_proto::alerting::v1::alert_service_client::AlertServiceClient;
use pim_runtime::db::from_timestamp;

use super::{Cell, ClientArgs, Names, Session, explain, print_table, time};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SeverityArg {
    Low,
    Medium,
    High,
    Critical,
}

impl From<SeverityArg> for pb::Severity {
    fn from(s: SeverityArg) -> Self {
        match s {
            SeverityArg::Low => Self::Low,
            SeverityArg::Medium => Self::Medium,
            SeverityArg::High => Self::High,
            SeverityArg::Critical => Self::Critical,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum StatusArg {
    Open,
    Acknowledged,
    Dismissed,
    Resolved,
}

impl From<StatusArg> for pb::AlertStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Open => Self::Open,
            StatusArg::Acknowledged => Self::Acknowledged,
            StatusArg::Dismissed => Self::Dismissed,
            StatusArg::Resolved => Self::Resolved,
        }
    }
}

#[derive(Args)]
pub(crate) struct AlertsArgs {
    #[command(subcommand)]
    command: Option<AlertsCommand>,
    /// Keep running and print each alert change as it happens.
    #[arg(long)]
    watch: bool,
    /// Only alerts of at least this severity.
    #[arg(long, value_enum)]
    severity: Option<SeverityArg>,
    /// Only alerts in this status (the list; --watch follows every change).
    #[arg(long, value_enum, conflicts_with = "watch")]
    status: Option<StatusArg>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Acknowledge an alert (someone is on it).
    Ack(StatusArgs),
    /// Dismiss an alert (not a problem; say why).
    Dismiss(StatusArgs),
    /// Resolve an alert (dealt with; say how).
    Resolve(StatusArgs),
    /// The rules and their settings; `set` changes one.
    Rules {
        #[command(subcommand)]
        set: Option<RulesCommand>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct StatusArgs {
    /// The alert's id (see `pim alerts`).
    id: String,
    /// Why (kept with the alert and in the audit log; required to dismiss or resolve).
    #[arg(long, short = 'j', visible_alias = "justification", default_value = "")]
    reason: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Change a rule: --enabled true|false, --severity, --setting NAME=VALUE (repeatable).
    Set {
        /// The rule's id (see `pim alerts rules`).
        rule: String,
        /// Whether the rule runs (true or false).
        #[arg(long)]
        enabled: Option<bool>,
        /// The severity of the alerts it raises.
        #[arg(long, value_enum)]
        severity: Option<SeverityArg>,
        /// A setting of the rule as NAME=VALUE (repeatable; see `pim alerts rules`).
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
    },
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| "expected NAME=VALUE".to_owned())
}

fn severity_name(v: i32) -> String {
    pb::Severity::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("SEVERITY_").to_lowercase())
        .unwrap_or_default()
}

fn status_name(v: i32) -> String {
    pb::AlertStatus::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("ALERT_STATUS_").to_lowercase())
        .unwrap_or_default()
}

/// One alert as a table row, its principal and role by name.
async fn row(names: &mut Names<'_>, a: &pb::Alert) -> Vec<Cell> {
    let mut figures: Vec<String> = a.figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
    figures.sort();
    vec![
        a.id.clone().into(),
        severity_name(a.severity).into(),
        status_name(a.status).into(),
        a.rule_id.clone().into(),
        names.principal(&a.principal_id).await.into(),
        names.role(&a.role_id).await.into(),
        a.scope.clone().into(),
        Cell::Count(a.count),
        time(a.last_seen.as_ref().map(from_timestamp)).into(),
        figures.join(" ").into(),
    ]
}

const HEADERS: [&str; 10] = [
    "ID",
    "SEVERITY",
    "STATUS",
    "RULE",
    "PRINCIPAL",
    "ROLE",
    "SCOPE",
    "COUNT",
    "LAST SEEN",
    "FIGURES",
];

pub(crate) async fn run(args: AlertsArgs) -> anyhow::Result<i32> {
    match args.command {
        Some(AlertsCommand::Ack(s)) => status(s, "acknowledged").await,
        Some(AlertsCommand::Dismiss(s)) => status(s, "dismissed").await,
        Some(AlertsCommand::Resolve(s)) => status(s, "resolved").await,
        Some(AlertsCommand::Rules { set, client }) => rules(set, client).await,
        None => list(args.watch, args.severity, args.status, args.client).await,
    }
}

async fn list(
    watch: bool,
    severity: Option<SeverityArg>,
    status: Option<StatusArg>,
    client: ClientArgs,
) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    let mut api = AlertServiceClient::new(session.channel.clone());
    let min_severity = severity.map(|s| pb::Severity::from(s) as i32).unwrap_or(0);
    if !watch {
        let status = status.map(|s| pb::AlertStatus::from(s) as i32).unwrap_or(0);
        let alerts = super::all_pages(|page_token| {
            let mut api = api.clone();
            let request = session.request(pb::ListAlertsRequest {
                min_severity,
                status,
                page_size: 500,
                page_token,
            });
            async move {
                let page = api.list_alerts(request?).await.map_err(explain)?.into_inner();
                Ok((page.alerts, page.next_page_token))
            }
        })
        .await?;
        let mut names = Names::new(&session);
        let mut rows = Vec::new();
        for a in &alerts {
            rows.push(row(&mut names, a).await);
        }
        print_table(&HEADERS, rows);
        return Ok(0);
    }
    let mut cursor = String::new();
    let mut names = Names::new(&session);
    eprintln!("following alerts (Ctrl-C to stop)");
    loop {
        let mut request = session.request(pb::StreamAlertsRequest {
            min_severity,
            cursor: cursor.clone(),
        })?;
        request.set_timeout(std::time::Duration::from_secs(365 * 24 * 3600));
        let Some(mut stream) = super::watch_opened(api.stream_alerts(request).await).await? else {
            continue;
        };
        loop {
            match stream.message().await {
                Ok(Some(update)) => {
                    cursor = update.cursor;
                    if let Some(a) = update.alert {
                        let cells: Vec<String> = row(&mut names, &a).await.into_iter().map(Cell::shown).collect();
                        println!("{}", cells.join("\t"));
                    }
                }
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::Unavailable => break,
                Err(status) => return Err(explain(status)),
            }
        }
        eprintln!("connection lost; resuming");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn status(args: StatusArgs, to: &str) -> anyhow::Result<i32> {
    if to != "acknowledged" && args.reason.trim().is_empty() {
        anyhow::bail!("say why the alert is {to}: pass --reason (or -j) \"...\"");
    }
    let session = Session::open(&args.client, true)?;
    let mut api = AlertServiceClient::new(session.channel.clone());
    let request = session.request(pb::AlertStatusRequest {
        alert_id: args.id.trim().to_owned(),
        reason: args.reason,
    })?;
    let alert = match to {
        "acknowledged" => api.acknowledge_alert(request).await,
        "dismissed" => api.dismiss_alert(request).await,
        _ => api.resolve_alert(request).await,
    }
    .map_err(explain)?
    .into_inner();
    println!("alert {} is {}", alert.id, status_name(alert.status));
    Ok(0)
}

async fn rules(set: Option<RulesCommand>, client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    let mut api = AlertServiceClient::new(session.channel.clone());
    if let Some(RulesCommand::Set {
        rule,
        enabled,
        severity,
        settings,
    }) = set
    {
        let r = api
            .update_rule_settings(session.request(pb::UpdateRuleSettingsRequest {
                rule_id: rule,
                enabled,
                severity: severity.map(|s| pb::Severity::from(s) as i32).unwrap_or(0),
                settings: settings.into_iter().collect(),
            })?)
            .await
            .map_err(explain)?
            .into_inner();
        println!("rule {} updated", r.id);
    }
    let rules = api
        .list_rules(session.request(pb::ListRulesRequest {})?)
        .await
        .map_err(explain)?
        .into_inner()
        .rules;
    let rows = rules
        .into_iter()
        .map(|r| {
            let mut settings: Vec<String> = r.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
            settings.sort();
            vec![
                Cell::from(r.id),
                Cell::Flag(r.enabled),
                severity_name(r.severity).into(),
                settings.join(" ").into(),
                r.description.into(),
            ]
        })
        .collect();
    print_table(&["RULE", "ENABLED", "SEVERITY", "SETTINGS", "DESCRIPTION"], rows);
    Ok(0)
}
