//! `pim`: the one binary (services, all-in-one, and the command line).

use clap::Parser;

/// The exit status of a command whose reader went away (`pim audit | head`): quiet, as a Unix
/// tool killed by SIGPIPE ends (128 + 13).
const READER_GONE: i32 = 141;

/// Output cut short by its reader ends the command quietly instead of with a panic: Rust
/// ignores SIGPIPE, so printing to a closed pipe panics with std's "failed printing to
/// stdout" and the write's error.
fn quiet_when_the_reader_goes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(READER_GONE);
        }
        report(info)
    }));
}

#[tokio::main]
async fn main() {
    let cli = pim::cli::Cli::parse();
    // A service shuts down in order, whatever happens to its output.
    if !cli.serves() {
        quiet_when_the_reader_goes();
    }
    let result = pim::cli::run(cli).await;
    // Spans still buffered go out before the process ends.
    pim_runtime::telemetry::shutdown();
    match result {
        Ok(code) => std::process::exit(code),
        Err(err)
            if err
                .chain()
                .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::exit(READER_GONE)
        }
        Err(err) => {
            // The server's words may quote what someone else wrote: shown, never obeyed.
            let lines: Vec<String> = format!("{err:#}").lines().map(pim::cli::printable).collect();
            eprintln!("error: {}", lines.join("\n"));
            std::process::exit(pim::cli::exit_status(&err));
        }
    }
}
