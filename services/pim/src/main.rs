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
            eprintln!("error: {err:#}");
            std::process::exit(pim::cli::exit_status(&err));
        }
    }
}
