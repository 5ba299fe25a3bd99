//! `pim-approval-bot`: the example approval bot (see `pim::approval_bot`). It signs in as a
//! service principal and approves what its rule allows, e.g.
//!
//! ```text
//! PIM_CLIENT_SECRET=... pim-approval-bot --client-id <id> --ticket-pattern 'INC*' --max-duration 1h
//! ```

use std::time::Duration;

use clap::Parser;

use pim::approval_bot::{Bot, Rule};
use pim_runtime::config::TlsConfig;

#[derive(Parser)]
#[command(
    name = "pim-approval-bot",
    about = "Approves PIM requests whose ticket matches a pattern and whose duration is short enough"
)]
struct Args {
    /// The PIM address.
    #[arg(long, env = "PIM_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// CA certificate to trust for an https server.
    #[arg(long, env = "PIM_TLS_CA")]
    ca: Option<std::path::PathBuf>,
    /// The bot's service principal (name it as an approver in the role's policy).
    #[arg(long, env = "PIM_CLIENT_ID")]
    client_id: String,
    /// Ticket numbers to approve, as a glob (`*`, `?`), e.g. `INC*`.
    #[arg(long)]
    ticket_pattern: String,
    /// The longest activation to approve.
    #[arg(long, value_parser = pim_runtime::format::parse_duration, default_value = "1h")]
    max_duration: Duration,
}

#[tokio::main]
async fn main() {
    pim_runtime::telemetry::init(false);
    let args = Args::parse();
    let Ok(client_secret) = std::env::var("PIM_CLIENT_SECRET") else {
        eprintln!("error: set PIM_CLIENT_SECRET to the service principal's secret");
        std::process::exit(2);
    };
    let tls = TlsConfig {
        ca: args.ca,
        ..TlsConfig::default()
    };
    let channel = match pim_runtime::grpc::channel(&args.server, &tls) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    };
    let bot = Bot {
        channel,
        client_id: args.client_id,
        client_secret,
        rule: Rule {
            ticket_pattern: args.ticket_pattern,
            max_duration: args.max_duration,
        },
    };
    if let Err(err) = bot.run().await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
