//! `cpod-events`: parse the configuration, start the broker, run until SIGTERM/SIGINT.

/// mimalloc: glibc's allocator contends on its arena locks when the writer thread allocates
/// what HTTP workers free (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use clap::Parser;
use cpod_events::config::Cli;
use cpod_events::startup::{Application, cancel_on_signal};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Cli::try_parse() {
        Ok(cli) => cli.into_serve(),
        Err(error) => cpod_events::config::exit_explaining(error),
    };
    cpod_events::telemetry::init_logs(config.log_format == "json");
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpod-events: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: cpod_events::config::ServeConfig) -> anyhow::Result<()> {
    cpod_events::startup::raise_open_file_limit();
    let app = Application::build(config).await?;
    let url = format!("http://{}", app.address());
    println!("cPod Events {}", env!("CARGO_PKG_VERSION"));
    match app.generated_admin_key() {
        Some(key) => {
            println!("  admin key (shown only this once; keep it, or set CPOD_ADMIN_KEY): {key}");
        }
        None => println!("  admin key: the one from CPOD_ADMIN_KEY or printed on the first start"),
    }
    println!("  API reference: {url}/openapi.json");
    // Printed last: scripts and tests wait for this line.
    println!("cPod Events listening on {url}");
    tokio::spawn(cancel_on_signal(Arc::new(app.shutdown_token())));
    app.run_until_stopped().await?;
    println!("cPod Events stopped");
    Ok(())
}
