//! `pim`: the one binary (services, all-in-one, and the command line).

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = pim::cli::Cli::parse();
    match pim::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    }
}
