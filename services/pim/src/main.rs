//! `pim`: the one binary (services, all-in-one, and the command line).

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = pim::cli::Cli::parse();
    let result = pim::cli::run(cli).await;
    // Spans still buffered go out before the process ends.
    pim_runtime::telemetry::shutdown();
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            // The server's words may quote what someone else wrote: shown, never obeyed.
            let lines: Vec<String> = format!("{err:#}").lines().map(pim::cli::printable).collect();
            eprintln!("error: {}", lines.join("\n"));
            std::process::exit(pim::cli::exit_status(&err));
        }
    }
}
