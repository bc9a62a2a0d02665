//! `cpod-events`: parse the command line; run the broker until SIGTERM/SIGINT (`serve`, the
//! default), or one client command (`tail`, `emit`, `history`, `keys`, `webhooks`).

/// mimalloc: glibc's allocator contends on its arena locks when the writer thread allocates
/// what HTTP workers free (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use clap::Parser;
use cpod_events::config::{Cli, Command};
use cpod_events::shutdown::cancel_on_signal;
use cpod_events::spans::SpanExport;
use cpod_events::startup::Application;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let command = match Cli::try_parse() {
        Ok(cli) => cli.into_command(),
        Err(error) => cpod_events::config::exit_explaining(error),
    };
    let config = match command {
        Command::Serve(config) => config,
        Command::Client(command) => return cpod_events::cli::run(command).await,
    };
    // Made before the log subscriber, whose layer it is; flushed by the application at stop.
    let spans = match config
        .otlp_endpoint
        .as_ref()
        .map(SpanExport::start)
        .transpose()
    {
        Ok(spans) => spans,
        Err(e) => {
            eprintln!("cpod-events: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    cpod_events::telemetry::init_logs(config.log_format == "json", spans.as_ref());
    match run(config, spans).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpod-events: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(
    config: cpod_events::config::ServeConfig,
    spans: Option<SpanExport>,
) -> anyhow::Result<()> {
    cpod_events::startup::raise_open_file_limit();
    let demo = config.demo.then_some(config.demo_rate);
    let app = Application::build(config).await?.exporting_spans(spans);
    let url = format!("http://{}", app.address());
    println!("cPod Events {}", env!("CARGO_PKG_VERSION"));
    match app.generated_admin_key() {
        Some(key) => {
            println!("  admin key (shown only this once; keep it, or set CPOD_ADMIN_KEY): {key}");
        }
        None => println!("  admin key: the one from CPOD_ADMIN_KEY or printed on the first start"),
    }
    println!("  node id: {}", app.node_id());
    println!("  dashboard: {url}/");
    println!("  API reference: {url}/openapi.json");
    if let Some(rate) = demo {
        let keys = cpod_events::demo::prepare(app.store()).await?;
        println!(
            "  demo: organization `{}`, {rate} events/s",
            cpod_events::demo::ORGANIZATION
        );
        println!("  demo reader key (dashboard, tail): {}", keys.reader);
        println!("  demo service key (emit): {}", keys.service);
        println!(
            "  try: CPOD_BASE_URL={url} CPOD_API_KEY={} cpod-events tail",
            keys.reader
        );
        tokio::spawn(cpod_events::demo::run(
            url.clone(),
            keys.service,
            rate,
            app.shutdown_token(),
        ));
    }
    // Printed last: scripts and tests wait for this line.
    println!("cPod Events listening on {url}");
    tokio::spawn(cancel_on_signal(Arc::new(app.shutdown_token())));
    app.run_until_stopped().await?;
    println!("cPod Events stopped");
    Ok(())
}
