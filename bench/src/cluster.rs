//! `cpod-bench cluster`: the broker on SQLite, on one PostgreSQL node and on three PostgreSQL
//! nodes, side by side in one run (BENCHMARKS.md, "Several nodes on PostgreSQL").
//!
//! - **Ingest**: closed-loop single events over `--connections` keep-alive connections, then
//!   batches of `--batch` over `--batch-connections`, on each deployment (a fresh database
//!   each time; on three nodes the connections are spread evenly over the nodes). Besides
//!   events/s and request latency it reads the nodes' CPU per event (from /proc), and on
//!   PostgreSQL the database's CPU per event (its backends serving the bench database plus the
//!   WAL writer, checkpointer and background writer, from /proc) and the WAL written per event
//!   (`pg_current_wal_lsn()` before and after the measured window). Every acknowledged event
//!   is checked to be stored.
//! - **Latency**: `--subscribers` SSE subscribers, `--rate` events/s published open-loop to one
//!   node; on three nodes the subscribers are spread over the nodes, and publish-to-receipt
//!   latency is reported for those on the publishing node (same-node) and the others
//!   (cross-node) separately, with the nodes' CPU per delivery and the database's CPU per
//!   event. Every subscriber must get every event once, in order.
//!
//! The WAL position and the background processes are the server's, not the bench database's:
//! anything else writing to the same server at the same time is counted too.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::time::Instant;
use tokio_postgres::NoTls;

use super::fanout::{self, Percentiles, Publishing, RequestShape, Transport};
use super::peer::Endpoint;
use super::{ADMIN_KEY, broker_binary, cpu_seconds, create_key};

#[derive(Args, Clone)]
pub struct ClusterArgs {
    /// The PostgreSQL server (its maintenance database); each deployment gets a fresh
    /// database on it, dropped afterwards.
    #[arg(
        long,
        env = "CPOD_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// Nodes of the multi-node deployment.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Connections posting single events.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Events per batch request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Connections posting batches.
    #[arg(long, default_value_t = 8)]
    batch_connections: usize,
    /// Measured time of each ingest measurement, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Live subscribers of the latency measurement, spread over the nodes.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Events per second published in the latency measurement.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long events are published in the latency measurement.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    latency_duration: Duration,
    /// Approximate size of each event's JSON, in bytes.
    #[arg(long, default_value_t = 300)]
    event_bytes: usize,
    /// HTTP worker threads of each node.
    #[arg(long)]
    workers: Option<usize>,
    /// Skip the ingest measurements.
    #[arg(long)]
    no_ingest: bool,
    /// Skip the latency measurements.
    #[arg(long)]
    no_latency: bool,
}

/// What a deployment stores its events in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A database made on the PostgreSQL server for one deployment, dropped with it.
struct BenchDatabase {
    server: String,
    name: String,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

impl BenchDatabase {
    async fn create(server: &str) -> anyhow::Result<BenchDatabase> {
        let name = format!("cpod_bench_{}", uuid::Uuid::new_v4().simple());
        connect(server)
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(BenchDatabase {
            server: server.to_owned(),
            name,
        })
    }

    fn url(&self) -> anyhow::Result<String> {
        let mut url = url::Url::parse(&self.server)?;
        url.set_path(&self.name);
        Ok(url.to_string())
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run on the runtime's threads: a runtime of its own, on a thread of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?
                .block_on(async {
                    connect(&server)
                        .await
                        .ok()?
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                        .ok()
                })
        })
        .join();
    }
}

/// A broker process of a deployment; stopped (SIGTERM) when dropped.
struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// One or more nodes on one database, with a service and a reader key.
struct Deployment {
    label: String,
    nodes: Vec<Node>,
    service: String,
    reader: String,
    /// Held for its `Drop` (SQLite's directory).
    _dir: tempfile::TempDir,
    database: Option<BenchDatabase>,
    /// A session on the bench database, for the WAL position and the backends' pids.
    session: Option<tokio_postgres::Client>,
}

fn spawn_node(url: &str, workers: Option<usize>) -> anyhow::Result<Node> {
    use std::io::{BufRead, BufReader};
    let mut command = Command::new(broker_binary()?);
    command
        .env("CPOD_LISTEN", "127.0.0.1:0")
        .env("CPOD_DATABASE_URL", url)
        .env("CPOD_ADMIN_KEY", ADMIN_KEY)
        .env("CPOD_HEARTBEAT", "60s")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(workers) = workers {
        command.env("CPOD_WORKERS", workers.to_string());
    }
    let mut child = command.spawn().context("cannot start the broker")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let base = loop {
        let line = lines
            .next()
            .context("the broker exited before listening")??;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(Node { child, base })
}

impl Deployment {
    async fn start(args: &ClusterArgs, backend: Backend, nodes: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("cpod-bench-").tempdir()?;
        let (url, database) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("bench.db").display()),
                None,
            ),
            Backend::Postgres => {
                let database = BenchDatabase::create(&args.postgres).await?;
                (database.url()?, Some(database))
            }
        };
        let mut started = Vec::with_capacity(nodes);
        for _ in 0..nodes {
            started.push(spawn_node(&url, args.workers)?);
        }
        let service = create_key(&started[0].base, ADMIN_KEY, "service").await?;
        let reader = create_key(&started[0].base, ADMIN_KEY, "reader").await?;
        let session = match &database {
            Some(database) => Some(connect(&database.url()?).await?),
            None => None,
        };
        let label = match (backend, nodes) {
            (Backend::Sqlite, _) => "SQLite, 1 node".to_owned(),
            (Backend::Postgres, 1) => "PostgreSQL, 1 node".to_owned(),
            (Backend::Postgres, n) => format!("PostgreSQL, {n} nodes"),
        };
        Ok(Deployment {
            label,
            nodes: started,
            service,
            reader,
            _dir: dir,
            database,
            session,
        })
    }

    fn endpoint(&self, node: usize) -> Endpoint {
        Endpoint::cpod(&self.nodes[node].base, &self.service, &self.reader)
    }

    /// CPU seconds the nodes have used so far.
    fn node_cpu(&self) -> f64 {
        self.nodes
            .iter()
            .filter_map(|n| cpu_seconds(n.child.id()))
            .sum()
    }

    /// A reading of the database's counters (PostgreSQL only).
    async fn database_reading(&self) -> anyhow::Result<Option<DatabaseReading>> {
        let (Some(session), Some(database)) = (&self.session, &self.database) else {
            return Ok(None);
        };
        let wal: f64 = session
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8", &[])
            .await?
            .get(0);
        // This bench session's own backend is left out; the server's background processes that
        // write and flush WAL and pages for it are in.
        let pids: Vec<i32> = session
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE (datname = $1 AND pid <> pg_backend_pid()) \
                    OR backend_type IN ('walwriter', 'checkpointer', 'background writer')",
                &[&database.name],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let cpu = pids
            .iter()
            .filter_map(|&pid| Some((pid, cpu_seconds(pid as u32)?)))
            .collect();
        Ok(Some(DatabaseReading { wal, cpu }))
    }

    /// Bench events stored (`pod.*`).
    async fn stored(&self) -> anyhow::Result<u64> {
        match &self.session {
            Some(session) => {
                let count: i64 = session
                    .query_one("SELECT count(*) FROM events WHERE type LIKE 'pod.%'", &[])
                    .await?
                    .get(0);
                Ok(count as u64)
            }
            None => super::count_stored(&self.nodes[0].base, &self.service).await,
        }
    }
}

/// WAL position and the CPU seconds of each database process, at one moment.
struct DatabaseReading {
    wal: f64,
    cpu: Vec<(i32, f64)>,
}

impl DatabaseReading {
    /// WAL bytes and database CPU seconds from `self` to `later` (processes seen at both).
    fn until(&self, later: &DatabaseReading) -> (f64, f64) {
        let cpu = later
            .cpu
            .iter()
            .filter_map(|(pid, after)| {
                let before = self.cpu.iter().find(|(p, _)| p == pid)?.1;
                Some(after - before)
            })
            .sum();
        (later.wal - self.wal, cpu)
    }
}

/// One ingest measurement's figures.
struct IngestRow {
    deployment: String,
    shape: String,
    events_per_s: f64,
    latency: Percentiles,
    errors: u64,
    node_cpu_us_per_event: f64,
    database_cpu_us_per_event: Option<f64>,
    wal_bytes_per_event: Option<f64>,
    commit_group: Option<f64>,
    /// Mean time of a commit group's transaction (on PostgreSQL: how long it holds the append
    /// lock, lock wait included), over the whole run.
    commit_ms: Option<f64>,
}

/// Closed-loop publishing on every node of `deployment` at once, `connections` spread over
/// them, reading CPU and WAL at the start and end of the measured window.
async fn ingest(
    args: &ClusterArgs,
    deployment: &Deployment,
    connections: usize,
    batch: usize,
) -> anyhow::Result<IngestRow> {
    let shape = super::ingest_shape(args.event_bytes, batch);
    let nodes = deployment.nodes.len();
    // The window's edges, signalled by the first node's publisher, read by this task.
    let (edges_tx, mut edges) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut runs = Vec::new();
    for node in 0..nodes {
        let share = connections / nodes + usize::from(node < connections % nodes);
        let (endpoint, shape, edges_tx) =
            (deployment.endpoint(node), shape.clone(), edges_tx.clone());
        let (warmup, duration) = (args.warmup, args.duration);
        // Lanes of different nodes must not share sequence numbers: offset each node's.
        let offset = node as u64 * 1_000_000_000;
        let shape = RequestShape {
            body: Arc::new(move |seq| (shape.body)(seq + offset)),
            ..shape
        };
        runs.push(tokio::spawn(async move {
            fanout::publish_closed_loop(&endpoint, share, warmup, duration, &shape, || {
                if node == 0 {
                    let _ = edges_tx.send(());
                }
            })
            .await
        }));
    }
    drop(edges_tx);
    edges
        .recv()
        .await
        .context("the measured window never started")?;
    let (cpu_before, db_before) = (deployment.node_cpu(), deployment.database_reading().await?);
    edges
        .recv()
        .await
        .context("the measured window never ended")?;
    let (cpu_after, db_after) = (deployment.node_cpu(), deployment.database_reading().await?);
    let mut events = 0;
    let mut acknowledged = 0;
    let mut errors = 0;
    let mut elapsed: f64 = 0.0;
    let mut latencies = fanout::new_histogram();
    for run in runs {
        let outcome = run.await??;
        events += outcome.events;
        acknowledged += outcome.acknowledged;
        errors += outcome.errors;
        elapsed = elapsed.max(outcome.elapsed);
        latencies.add(&outcome.latencies)?;
    }
    let stored = deployment.stored().await?;
    if stored < acknowledged {
        bail!(
            "{}: {} acknowledged events are missing",
            deployment.label,
            acknowledged - stored
        );
    }
    let per_event = |seconds: f64| seconds * 1e6 / events.max(1) as f64;
    let database = db_before.zip(db_after).map(|(b, a)| b.until(&a));
    let mut groups = Vec::new();
    let mut commit_ms = Vec::new();
    for node in &deployment.nodes {
        groups.extend(super::mean_commit_group(&node.base).await);
        commit_ms.extend(mean_commit_seconds(&node.base).await.map(|s| s * 1000.0));
    }
    Ok(IngestRow {
        deployment: deployment.label.clone(),
        shape: if batch > 1 {
            format!("batches of {batch}, {connections} conn.")
        } else {
            format!("single events, {connections} conn.")
        },
        events_per_s: events as f64 / elapsed,
        latency: Percentiles::of(&latencies),
        errors,
        node_cpu_us_per_event: per_event(cpu_after - cpu_before),
        database_cpu_us_per_event: database.map(|(_, cpu)| per_event(cpu)),
        wal_bytes_per_event: database.map(|(wal, _)| wal / events.max(1) as f64),
        commit_group: (!groups.is_empty())
            .then(|| groups.iter().sum::<f64>() / groups.len() as f64),
        commit_ms: (!commit_ms.is_empty())
            .then(|| commit_ms.iter().sum::<f64>() / commit_ms.len() as f64),
    })
}

/// A node's mean commit time so far, in seconds, from its metrics.
async fn mean_commit_seconds(base: &str) -> Option<f64> {
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
    Some(value("cpod_store_commit_seconds_sum")? / value("cpod_store_commit_seconds_count")?)
}

/// One latency measurement's figures, per group of subscribers.
struct LatencyRow {
    deployment: String,
    group: String,
    subscribers: usize,
    latency: Percentiles,
    missed: u64,
    duplicated: u64,
    out_of_order: u64,
    errors: usize,
}

/// The nodes' CPU per delivery and the database's per event, over a latency measurement.
struct LatencyCost {
    deployment: String,
    node_cpu_us_per_delivery: f64,
    database_cpu_us_per_event: Option<f64>,
    /// The database's CPU over the measurement, in cores (its fixed cost shows at a low rate).
    database_cores: Option<f64>,
    wal_bytes_per_event: Option<f64>,
}

/// `args.subscribers` SSE subscribers spread over the nodes, events published to node 0 at
/// `args.rate`; latency for node 0's subscribers (same-node) and the others' (cross-node).
async fn latency(
    args: &ClusterArgs,
    deployment: &Deployment,
) -> anyhow::Result<(Vec<LatencyRow>, LatencyCost)> {
    let nodes = deployment.nodes.len();
    let publishers = 8;
    let channel = "latency";
    let mut groups = Vec::new();
    for node in 0..nodes {
        let count = args.subscribers / nodes + usize::from(node < args.subscribers % nodes);
        let endpoint = deployment.endpoint(node).channel(channel);
        groups.push((
            node,
            count,
            fanout::open_subscribers(&endpoint, Transport::Sse, count, publishers as u64).await?,
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = (args.rate * args.latency_duration.as_secs_f64()).round() as u64;
    let (cpu_before, db_before) = (deployment.node_cpu(), deployment.database_reading().await?);
    let started = Instant::now();
    fanout::publish(
        &deployment.endpoint(0).channel(channel),
        &Publishing {
            rate: args.rate,
            total,
            connections: publishers,
            event_bytes: args.event_bytes,
        },
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    for (_, _, group) in &groups {
        group.wait_for(total, deadline).await;
    }
    let (cpu_after, db_after) = (deployment.node_cpu(), deployment.database_reading().await?);
    let elapsed = started.elapsed().as_secs_f64();
    // Node 0's subscribers alone, and every other node's together.
    let mut rows: Vec<(LatencyRow, hdrhistogram::Histogram<u64>)> = Vec::new();
    let mut deliveries = 0;
    for (node, count, group) in groups {
        let seen = group.finish().await?;
        deliveries += seen.received;
        let name = if nodes == 1 {
            "one node"
        } else if node == 0 {
            "same-node (node 0)"
        } else {
            "cross-node (nodes 1+)"
        };
        let missed = (total * count as u64).saturating_sub(seen.unique);
        match rows.iter_mut().find(|(row, _)| row.group == name) {
            Some((row, latencies)) => {
                row.subscribers += count;
                latencies.add(&seen.latencies)?;
                row.missed += missed;
                row.duplicated += seen.duplicates;
                row.out_of_order += seen.out_of_order;
                row.errors += seen.errors;
            }
            None => rows.push((
                LatencyRow {
                    deployment: deployment.label.clone(),
                    group: name.to_owned(),
                    subscribers: count,
                    latency: Percentiles::default(),
                    missed,
                    duplicated: seen.duplicates,
                    out_of_order: seen.out_of_order,
                    errors: seen.errors,
                },
                seen.latencies,
            )),
        }
    }
    let rows = rows
        .into_iter()
        .map(|(row, latencies)| LatencyRow {
            latency: Percentiles::of(&latencies),
            ..row
        })
        .collect();
    let database = db_before.zip(db_after).map(|(b, a)| b.until(&a));
    let cost = LatencyCost {
        deployment: deployment.label.clone(),
        node_cpu_us_per_delivery: (cpu_after - cpu_before) * 1e6 / deliveries.max(1) as f64,
        database_cpu_us_per_event: database.map(|(_, cpu)| cpu * 1e6 / total as f64),
        database_cores: database.map(|(_, cpu)| cpu / elapsed),
        wal_bytes_per_event: database.map(|(wal, _)| wal / total as f64),
    };
    Ok((rows, cost))
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let deployments = [
        (Backend::Sqlite, 1),
        (Backend::Postgres, 1),
        (Backend::Postgres, args.nodes),
    ];
    let mut ingest_rows = Vec::new();
    if !args.no_ingest {
        for &(backend, nodes) in &deployments {
            for (connections, batch) in
                [(args.connections, 1), (args.batch_connections, args.batch)]
            {
                // A fresh database for each measurement: no run inherits another's table.
                let deployment = Deployment::start(&args, backend, nodes).await?;
                let row = ingest(&args, &deployment, connections, batch).await?;
                print_ingest(&row);
                ingest_rows.push(row);
            }
        }
    }
    if !args.no_latency {
        for &(backend, nodes) in &deployments {
            if backend == Backend::Postgres && nodes == 1 && args.nodes > 1 {
                continue;
            }
            let deployment = Deployment::start(&args, backend, nodes).await?;
            let (rows, cost) = latency(&args, &deployment).await?;
            for row in &rows {
                print_latency(row);
            }
            print_cost(&cost);
        }
    }
    Ok(())
}

fn print_ingest(row: &IngestRow) {
    let optional =
        |v: Option<f64>, unit: &str| v.map_or("—".to_owned(), |v| format!("{v:.1} {unit}"));
    println!(
        "ingest   {:<22} {:<30} {:>9.0} events/s   p50 {:>7.2} ms  p99 {:>7.2} ms   node CPU {:>6.1} µs/event   database CPU {}   WAL {}   group {}   commit {}   errors {}",
        row.deployment,
        row.shape,
        row.events_per_s,
        row.latency.p50,
        row.latency.p99,
        row.node_cpu_us_per_event,
        optional(row.database_cpu_us_per_event, "µs/event"),
        optional(row.wal_bytes_per_event, "B/event"),
        optional(row.commit_group, "events/commit"),
        row.commit_ms
            .map_or("—".to_owned(), |ms| format!("{ms:.2} ms")),
        row.errors
    );
}

fn print_latency(row: &LatencyRow) {
    println!(
        "latency  {:<22} {:<24} {:>5} subscribers   p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms   missed {} duplicated {} out of order {} errors {}",
        row.deployment,
        row.group,
        row.subscribers,
        row.latency.p50,
        row.latency.p99,
        row.latency.max,
        row.missed,
        row.duplicated,
        row.out_of_order,
        row.errors
    );
}

fn print_cost(cost: &LatencyCost) {
    let optional =
        |v: Option<f64>, unit: &str| v.map_or("—".to_owned(), |v| format!("{v:.1} {unit}"));
    println!(
        "cost     {:<22} node CPU {:.2} µs/delivery   database CPU {} ({})   WAL {}",
        cost.deployment,
        cost.node_cpu_us_per_delivery,
        optional(cost.database_cpu_us_per_event, "µs/event"),
        cost.database_cores
            .map_or("—".to_owned(), |c| format!("{:.1}% of a core", c * 100.0)),
        optional(cost.wal_bytes_per_event, "B/event"),
    );
}
