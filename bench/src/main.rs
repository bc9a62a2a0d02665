//! `cpod-bench`: the load generator for whole-system figures (not a test; see BENCHMARKS.md).
//!
//! `cpod-bench ingest` starts a fresh broker (the `cpod-events` binary next to this one, on a
//! temporary SQLite database, default durability) unless `--url` points at one, then drives
//! `POST /v1/events` (or `/v1/events/batch` with `--batch N`) from `--connections` keep-alive
//! HTTP/1.1 connections for `--duration`, after a warm-up. It reports events/s, request latency
//! percentiles, the broker's CPU time per 1,000 events (from /proc, when it started the broker),
//! and checks that every acknowledged event is in history.
//!
//! `cpod-bench fanout` and `cpod-bench webhooks` measure live delivery; `cpod-bench idle` holds
//! many idle SSE subscribers (100,000 by default) on one broker (see `idle`); `cpod-bench
//! compare` runs our broker and nchan side by side (see `compare`).

/// mimalloc: glibc's allocator contends on its arena locks when the writer thread allocates
/// what HTTP workers free (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

mod charts;
mod cluster;
mod compare;
mod fanout;
mod idle;
mod peer;
mod solo;
mod table;
mod webhooks;

#[derive(Parser)]
#[command(name = "cpod-bench", about = "Load generator for cPod Events")]
struct Cli {
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Durable ingestion throughput and latency.
    Ingest(IngestArgs),
    /// Fan-out: N stream subscribers, events published at a fixed rate.
    Fanout(fanout::FanoutArgs),
    /// Webhook delivery to a local receiver.
    Webhooks(webhooks::WebhookArgs),
    /// SQLite, one PostgreSQL node and several side by side: ingest, cross-node latency,
    /// the database's CPU and WAL per event.
    Cluster(cluster::ClusterArgs),
    /// Our broker and nchan side by side, every scenario on both; writes bench/results/.
    Compare(compare::CompareArgs),
    /// Many idle SSE subscribers on one broker: its memory, and one event to all of them.
    Idle(idle::IdleArgs),
    /// One of `idle`'s client processes (started by it).
    #[command(hide = true)]
    IdleClient(idle::ClientArgs),
}

/// Which broker to drive: a fresh one started by this tool, or `--url`.
#[derive(Args, Clone)]
struct BrokerArgs {
    /// An already running broker; without it, a fresh one is started.
    #[arg(long, requires = "admin_key")]
    url: Option<String>,
    /// The admin key of `--url`'s broker.
    #[arg(long)]
    admin_key: Option<String>,
    /// Durability of the broker this tool starts (full, normal, off).
    #[arg(long, default_value = "full")]
    sqlite_sync: String,
    /// HTTP worker threads of the broker this tool starts.
    #[arg(long)]
    workers: Option<usize>,
    /// Set by scenarios whose receiver is on loopback.
    #[arg(skip)]
    allow_private_webhooks: bool,
}

#[derive(Args, Clone)]
struct IngestArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Events per request: 1 posts to /v1/events, more to /v1/events/batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Approximate size of each event's JSON, in bytes.
    #[arg(long, default_value_t = 300)]
    event_bytes: usize,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Scenario::Ingest(args) => ingest(args).await,
        Scenario::Fanout(args) => fanout::run(args).await,
        Scenario::Webhooks(args) => webhooks::run(args).await,
        Scenario::Compare(args) => compare::run(args).await,
        Scenario::Cluster(args) => cluster::run(args).await,
        Scenario::Idle(args) => idle::run(args).await,
        Scenario::IdleClient(args) => idle::client(args).await,
    }
}

/// A broker started for the run, stopped when dropped.
struct SpawnedBroker {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedBroker {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn broker_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("cpod-events");
    if !path.exists() {
        bail!(
            "{} not found: build it first (`cargo build --release` at the workspace root builds both binaries)",
            path.display()
        );
    }
    Ok(path)
}

const ADMIN_KEY: &str = "cpk_bench_admin_key_0000000000000000000000000";

fn spawn_broker(args: &BrokerArgs) -> anyhow::Result<(SpawnedBroker, String)> {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::Builder::new().prefix("cpod-bench-").tempdir()?;
    let mut command = Command::new(broker_binary()?);
    command
        .env("CPOD_LISTEN", "127.0.0.1:0")
        .env(
            "CPOD_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("bench.db").display()),
        )
        .env("CPOD_ADMIN_KEY", ADMIN_KEY)
        .env("CPOD_SQLITE_SYNC", &args.sqlite_sync)
        .env("CPOD_HEARTBEAT", "60s")
        .env(
            "CPOD_WEBHOOK_ALLOW_PRIVATE",
            args.allow_private_webhooks.to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(workers) = args.workers {
        command.env("CPOD_WORKERS", workers.to_string());
    }
    let mut child = command.spawn().context("cannot start the broker")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let address = loop {
        let line = lines
            .next()
            .context("the broker exited before listening")??;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((SpawnedBroker { child, _dir: dir }, address))
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Starts a broker unless `--url` names one; answers it (if started), its base URL and an
/// admin key.
fn broker_for(args: &BrokerArgs) -> anyhow::Result<(Option<SpawnedBroker>, String, String)> {
    match (&args.url, &args.admin_key) {
        (Some(url), Some(admin)) => Ok((None, url.trim_end_matches('/').to_owned(), admin.clone())),
        _ => {
            let (broker, address) = spawn_broker(args)?;
            Ok((Some(broker), address, ADMIN_KEY.to_owned()))
        }
    }
}

async fn create_key(base: &str, admin: &str, role: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/v1/keys"))
        .bearer_auth(admin)
        .json(&json!({"organizationId": "bench", "role": role, "name": "cpod-bench"}))
        .send()
        .await?;
    let body: Value = response.json().await?;
    body["key"]
        .as_str()
        .map(str::to_owned)
        .context("no key in the answer")
}

/// One `pod.started` event of about `size` bytes once stored; each has its own resource.
fn event_body(size: usize, seq: u64) -> Value {
    let filler = "x".repeat(size.saturating_sub(250));
    json!({
        "type": "pod.started",
        "resourceId": format!("pod-{seq}"),
        "resourceType": "pod",
        "workspaceId": "ws-bench",
        "payload": {"seq": seq, "node": "node-1", "filler": filler},
    })
}

/// Durable ingestion requests: single events of about `size` bytes to `/v1/events`, or batches
/// of `batch` of them to `/v1/events/batch`.
fn ingest_shape(size: usize, batch: usize) -> fanout::RequestShape {
    fanout::RequestShape {
        path: if batch > 1 {
            "/v1/events/batch"
        } else {
            "/v1/events"
        }
        .into(),
        events: batch as u64,
        body: Arc::new(move |seq| {
            let body = if batch > 1 {
                let events: Vec<Value> = (0..batch as u64)
                    .map(|i| event_body(size, seq + i))
                    .collect();
                json!({ "events": events })
            } else {
                event_body(size, seq)
            };
            Bytes::from(body.to_string())
        }),
    }
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let (broker, base, admin) = broker_for(&args.broker)?;
    let key = create_key(&base, &admin, "service").await?;
    let endpoint = peer::Endpoint::cpod(&base, &key, &key);
    let (size, batch) = (args.event_bytes, args.batch);
    let shape = ingest_shape(size, batch);
    let pid = broker.as_ref().map(|b| b.child.id());
    let mut cpu = Vec::new();
    let outcome = fanout::publish_closed_loop(
        &endpoint,
        args.connections,
        args.warmup,
        args.duration,
        &shape,
        || cpu.extend(pid.and_then(cpu_seconds)),
    )
    .await?;
    let (events, latencies) = (outcome.events, &outcome.latencies);
    let elapsed = outcome.elapsed;
    println!(
        "scenario      ingest: {} connections, {} event(s) per request, ~{} B per event, sync={}",
        args.connections, args.batch, args.event_bytes, args.broker.sqlite_sync
    );
    println!("events/s      {:.0}", events as f64 / elapsed);
    println!("requests/s    {:.0}", latencies.len() as f64 / elapsed);
    println!(
        "latency       p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        latencies.value_at_quantile(0.50) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0
    );
    println!("errors        {}", outcome.errors);
    if let [before, after] = cpu[..] {
        println!(
            "broker CPU    {:.1} ms per 1,000 events ({:.0}% of one core)",
            (after - before) * 1e6 / events.max(1) as f64,
            (after - before) / elapsed * 100.0
        );
    }
    if let Some(pid) = pid
        && let Some(rss) = rss_kib(pid)
    {
        println!("broker RSS    {:.1} MiB", rss as f64 / 1024.0);
    }
    if let Some(mean) = mean_commit_group(&base).await {
        println!("commit groups {mean:.1} events per commit on average");
    }
    if broker.is_some() {
        let acknowledged = outcome.acknowledged;
        let stored = count_stored(&base, &key).await?;
        println!("stored        {stored} events of {acknowledged} acknowledged (warm-up included)");
        if stored < acknowledged {
            bail!("{} acknowledged events are missing", acknowledged - stored);
        }
    }
    drop(broker);
    Ok(())
}

/// The broker's average group-commit size so far, from its metrics.
async fn mean_commit_group(base: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    };
    Some(
        value("cpod_store_commit_group_events_sum")?
            / value("cpod_store_commit_group_events_count")?,
    )
}

/// Counts the stored `pod.*` events by paging through history.
async fn count_stored(base: &str, key: &str) -> anyhow::Result<u64> {
    let client = reqwest::Client::new();
    let mut count = 0;
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(format!("{base}/v1/events?types=pod.*&limit=1000{cursor}"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        count += page["data"].as_array().map_or(0, Vec::len) as u64;
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return Ok(count),
        }
    }
}
