//! `pim audit`: read the audit log (newest first), verify its hash chain, export it.

use std::io::Write;

use clap::{Args, Subcommand};

use pim_proto::audit::v1 as aupb;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
use pim_runtime::db::{from_timestamp, to_timestamp};

use super::{ClientArgs, Output, Session, explain, print_table, time};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AuditArgs {
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
    /// Only events since then: how long ago (24h) or an RFC 3339 time (2026-12-02T10:00:00Z).
    #[arg(long, value_parser = super::parse_moment_or_ago, allow_hyphen_values = true)]
    since: Option<i64>,
    /// Only events before then: how long ago (1h) or an RFC 3339 time.
    #[arg(long, value_parser = super::parse_moment_or_ago, allow_hyphen_values = true)]
    until: Option<i64>,
    /// How many records (the newest, unless --oldest-first), 1 to 1000. When more match, a
    /// note on standard error says so.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
    limit: i32,
    /// Every matching record, page after page (--limit is then the page size).
    #[arg(long)]
    all: bool,
    /// Start from the oldest matching record instead of the newest.
    #[arg(long)]
    oldest_first: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain (exit code 0 if intact, 1 with the first broken record).
    Verify {
        /// The first sequence to check (0: from the start of the chain).
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// The last sequence to check (0: to the head).
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
        /// Only events since then: how long ago (24h) or an RFC 3339 time; with the last
        /// export's end as the next one's start, nothing is missed or exported twice.
        #[arg(long, value_parser = super::parse_moment_or_ago, allow_hyphen_values = true)]
        since: Option<i64>,
        /// Only events before then: how long ago (1h) or an RFC 3339 time.
        #[arg(long, value_parser = super::parse_moment_or_ago, allow_hyphen_values = true)]
        until: Option<i64>,
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
        AuditCommand::Export {
            format,
            since,
            until,
            client,
        } => {
            let session = Session::open(&client, true)?;
            let filter = (since.is_some() || until.is_some()).then(|| aupb::QueryEventsRequest {
                since: since.map(to_timestamp),
                until: until.map(to_timestamp),
                ..Default::default()
            });
            let mut chunks = AuditServiceClient::new(session.channel.clone())
                .export_events(session.request(aupb::ExportEventsRequest { filter, format })?)
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

pub(crate) async fn audit(args: AuditArgs) -> anyhow::Result<i32> {
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
        since: args.since.map(to_timestamp),
        until: args.until.map(to_timestamp),
        page_size: args.limit,
        newest_first: !args.oldest_first,
        ..Default::default()
    };
    let mut audit = AuditServiceClient::new(session.channel.clone());
    let mut records = Vec::new();
    let mut request = request;
    loop {
        let page = audit
            .query_events(session.request(request.clone())?)
            .await
            .map_err(explain)?
            .into_inner();
        records.extend(page.records);
        match page.next_page_token {
            // A token answered twice would keep a faulty server's caller asking for ever.
            more if more.is_empty() || more == request.page_token => break,
            more if args.all => request.page_token = more,
            _ => {
                eprintln!(
                    "({} records shown; more match: pass --all, a larger --limit (up to 1000), or a narrower --since/--until)",
                    records.len()
                );
                break;
            }
        }
    }
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
                    let why = why(&r);
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
                        why,
                    ]
                })
                .collect();
            print_table(
                &["TIME", "ACTION", "ACTOR", "TARGET", "ROLE", "SCOPE", "OUTCOME", "WHY"],
                rows,
            );
        }
    }
    Ok(0)
}

/// Why it happened, as a person reads it: the justification given, else the reason the record
/// keeps (a refusal's rules and message, an expiry's or a revocation's reason).
fn why(r: &aupb::AuditRecord) -> String {
    if !r.justification.is_empty() {
        return r.justification.clone();
    }
    let payload: serde_json::Value = serde_json::from_str(&r.payload_json).unwrap_or_default();
    let reason = payload["reason"].as_str().unwrap_or_default();
    let rules: Vec<&str> = payload["rules"]
        .as_array()
        .map(|rules| rules.iter().filter_map(|rule| rule.as_str()).collect())
        .unwrap_or_default();
    if rules.is_empty() {
        reason.to_owned()
    } else {
        format!("[{}] {reason}", rules.join(", "))
    }
}
