//! `cpod-bench compare`: our broker and nchan side by side, in one run, on the same machine,
//! under the same load. Both servers are started fresh on loopback; every scenario runs on both,
//! alternating which goes first from pass to pass, and the tables show each figure's median over
//! the passes with the ratio ours ÷ nchan. Scenarios nchan cannot run (it has no durable store)
//! run on ours alone (see `solo`). Results: tables on stdout, `compare.json`, `compare.md` and
//! SVG charts in `--out` (default `bench/results/`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use super::BrokerArgs;
use super::charts::{self, Series};
use super::fanout::{
    self, FanoutFigures, FanoutSpec, Percentiles, RequestShape, Transport, open_subscribers,
    publish_closed_loop,
};
use super::idle;
use super::peer::{Peer, nchan_installation};
use super::solo::{self, SoloFigures};
use super::table::number;

#[derive(Args, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Passes over every scenario, alternating which server goes first; tables show medians.
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// How long each fan-out scenario publishes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Measured window of the publish-throughput scenarios (after a 1 s warm-up).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    publish_duration: Duration,
    /// Only the scenarios whose id contains one of these words (comma-separated), e.g.
    /// `saturation,publish`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the scenarios that run on our broker alone.
    #[arg(long)]
    no_solo: bool,
    /// How far back the replay scenario reconnects, in events.
    #[arg(long, default_value_t = 1_000_000)]
    replay_events: u64,
    /// Subscribers of the idle-connections scenario on our broker alone (issue 14's 100,000;
    /// spread over client processes and source addresses, see `idle`). When the broker cannot
    /// hold them all, the figures are at the count it held, and the limit is reported.
    #[arg(long, default_value_t = IDLE_TARGET)]
    idle_subscribers: usize,
    /// Where the JSON, Markdown and SVG results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

#[derive(Clone)]
enum Load {
    Fanout(FanoutSpec),
    /// Closed-loop single-event publishing from 64 connections, with subscribers attached.
    Publish {
        subscribers: usize,
    },
    /// Memory per idle subscriber, on a freshly started server (memory an earlier scenario
    /// freed would otherwise be reused and hide the cost).
    Idle {
        subscribers: usize,
        transport: Transport,
    },
}

struct Scenario {
    id: String,
    title: String,
    load: Load,
}

/// One pass's figures of one server.
#[derive(Serialize, Clone, Debug)]
#[serde(untagged)]
enum Figures {
    Fanout(FanoutFigures),
    Publish(PublishFigures),
    Idle(IdleFigures),
}

#[derive(Serialize, Clone, Debug)]
struct IdleFigures {
    rss_fresh_mib: f64,
    rss_with_subscribers_mib: f64,
    kb_per_subscriber: f64,
}

#[derive(Serialize, Clone, Debug)]
struct PublishFigures {
    events_per_s: f64,
    request_latency_ms: Percentiles,
    errors: u64,
    cpu_us_per_event: f64,
    /// Deliveries the attached subscribers missed, duplicated or got out of order.
    missed: u64,
    duplicated: u64,
    out_of_order: u64,
    subscriber_errors: usize,
}

#[derive(Serialize)]
struct ScenarioResult {
    id: String,
    title: String,
    cpod: Vec<Figures>,
    nchan: Vec<Figures>,
    /// Medians over the passes (correctness counts are sums).
    cpod_median: Figures,
    nchan_median: Figures,
    /// ours ÷ nchan of the medians.
    ratios: BTreeMap<&'static str, f64>,
}

#[derive(Serialize)]
struct Report {
    started_at: String,
    command: String,
    passes: usize,
    machine: String,
    scenarios: Vec<ScenarioResult>,
    solo: Option<SoloFigures>,
    targets: Vec<TargetCheck>,
}

#[derive(Serialize)]
struct TargetCheck {
    target: String,
    ratio: Option<f64>,
    /// The figure of a target that is not a ratio.
    measured: Option<String>,
    met: bool,
}

impl TargetCheck {
    /// The ratio, or the measured figure, for a table.
    fn figure(&self) -> String {
        match (&self.ratio, &self.measured) {
            (Some(ratio), _) => format!("{ratio:.2}"),
            (None, Some(measured)) => measured.clone(),
            (None, None) => "—".to_owned(),
        }
    }
}

/// Idle SSE subscribers issue 14's absolute targets speak of.
const IDLE_TARGET: usize = 100_000;

fn scenarios(args: &CompareArgs) -> Vec<Scenario> {
    let fanout = |id: &str, subscribers: usize, transport, rate: f64, publishers: usize| {
        let title = format!(
            "{subscribers} {} subscribers, {rate} events/s offered for {:?}",
            match transport {
                Transport::Sse => "SSE",
                Transport::Ws => "WebSocket",
            },
            args.duration
        );
        Scenario {
            id: id.to_owned(),
            title,
            load: Load::Fanout(FanoutSpec {
                subscribers,
                transport,
                rate,
                duration: args.duration,
                event_bytes: 300,
                publishers,
                // A saturated server is slow, not lossy: give it time to deliver the backlog.
                drain: Duration::from_secs(if id.starts_with("saturation") { 40 } else { 15 }),
                channel: id.replace('-', "_"),
            }),
        }
    };
    let all = vec![
        fanout("fanout-sse-100", 100, Transport::Sse, 10.0, 8),
        fanout("fanout-sse-1000", 1000, Transport::Sse, 10.0, 8),
        fanout("fanout-sse-5000", 5000, Transport::Sse, 10.0, 8),
        fanout("fanout-ws-1000", 1000, Transport::Ws, 10.0, 8),
        fanout("fanout-sse-1000-at-100", 1000, Transport::Sse, 100.0, 8),
        // Saturation: more offered than either server delivers.
        fanout("saturation-sse-100", 100, Transport::Sse, 4000.0, 32),
        fanout("saturation-sse-1000", 1000, Transport::Sse, 500.0, 16),
        fanout("saturation-sse-5000", 5000, Transport::Sse, 100.0, 16),
        Scenario {
            id: "idle-sse-1000".into(),
            title: "memory: 1000 idle SSE subscribers on a fresh server".into(),
            load: Load::Idle {
                subscribers: 1000,
                transport: Transport::Sse,
            },
        },
        Scenario {
            id: "idle-ws-1000".into(),
            title: "memory: 1000 idle WebSocket subscribers on a fresh server".into(),
            load: Load::Idle {
                subscribers: 1000,
                transport: Transport::Ws,
            },
        },
        Scenario {
            id: "publish-0".into(),
            title: format!(
                "publish throughput: single-event POSTs from 64 connections for {:?}, no subscribers",
                args.publish_duration
            ),
            load: Load::Publish { subscribers: 0 },
        },
        Scenario {
            id: "publish-100".into(),
            title: format!(
                "publish throughput: single-event POSTs from 64 connections for {:?}, 100 SSE subscribers",
                args.publish_duration
            ),
            load: Load::Publish { subscribers: 100 },
        },
    ];
    all.into_iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|w| s.id.contains(w.as_str())))
        .collect()
}

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    if args.broker.url.is_some() {
        bail!("compare starts both servers itself; --url is not for it");
    }
    if args.passes == 0 {
        bail!("--passes must be at least 1");
    }
    nchan_installation()?;
    super::broker_binary()?;
    // A thousand subscribers are a thousand sockets, on both servers and here.
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-file limit")?;
    std::fs::create_dir_all(&args.out)?;
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cpod = Peer::start_cpod(&args.broker).await?;
    let nchan = Peer::start_nchan().await?;
    println!(
        "cPod at {}, nchan at {}; {} pass(es), alternating which server goes first",
        cpod.base_url(),
        nchan.base_url(),
        args.passes
    );

    let mut results = Vec::new();
    for (index, scenario) in scenarios(&args).into_iter().enumerate() {
        println!("\n== {}: {} ==", scenario.id, scenario.title);
        let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
        for pass in 0..args.passes {
            // A/B, B/A, A/B…, and the other way round in every other scenario, so that whatever
            // the first run of a scenario pays (the load generator's own warm-up) falls on each
            // server as often.
            let order = if (pass + index) % 2 == 0 {
                [0, 1]
            } else {
                [1, 0]
            };
            for which in order {
                let peer = [&cpod, &nchan][which];
                let channel_pass = format!("p{pass}");
                let figures = run_load(peer, &scenario, &channel_pass, &args).await?;
                println!(
                    "   pass {} {:<5} {}",
                    pass + 1,
                    peer.endpoint.name,
                    brief(&figures)
                );
                runs[which].push(figures);
            }
        }
        let [cpod_runs, nchan_runs] = runs;
        let result = summarise(&scenario, cpod_runs, nchan_runs);
        print_table(&result, args.passes);
        results.push(result);
    }
    drop(nchan);

    let solo = if args.no_solo {
        None
    } else {
        println!("\n== on our broker alone ==");
        Some(
            solo::run(
                &cpod,
                &args.broker,
                args.replay_events,
                args.idle_subscribers,
            )
            .await?,
        )
    };
    drop(cpod);

    let targets = check_targets(&results, solo.as_ref());
    println!("\n== targets (ours ÷ nchan, medians) ==");
    for t in &targets {
        let verdict = if t.met { "met" } else { "NOT met" };
        println!("   {:<80} {:>6}  {verdict}", t.target, t.figure());
    }
    let report = Report {
        started_at,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        passes: args.passes,
        machine: machine_description(),
        scenarios: results,
        solo,
        targets,
    };
    write_outputs(&args.out, &report)?;
    println!(
        "\nwritten: {}/compare.json, compare.md, latency.svg, deliveries.svg",
        args.out.display()
    );
    Ok(())
}

async fn run_load(
    peer: &Peer,
    scenario: &Scenario,
    channel_suffix: &str,
    args: &CompareArgs,
) -> anyhow::Result<Figures> {
    match &scenario.load {
        Load::Fanout(spec) => {
            let mut spec = spec.clone();
            spec.channel = format!("{}_{channel_suffix}", spec.channel);
            let figures = fanout::measure(&peer.endpoint, Some(peer), &spec).await?;
            // Let the server settle (closing sockets, freeing buffers) before the next run.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(Figures::Fanout(figures))
        }
        Load::Idle {
            subscribers,
            transport,
        } => {
            let fresh = match peer.endpoint.name {
                "cpod" => Peer::start_cpod(&args.broker).await?,
                _ => Peer::start_nchan().await?,
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = fresh.rss_kib();
            let endpoint = fresh.endpoint.channel(&format!("idle_{channel_suffix}"));
            let open = open_subscribers(&endpoint, *transport, *subscribers, 1).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = fresh.rss_kib();
            open.finish().await?;
            Ok(Figures::Idle(IdleFigures {
                rss_fresh_mib: before as f64 / 1024.0,
                rss_with_subscribers_mib: after as f64 / 1024.0,
                kb_per_subscriber: after.saturating_sub(before) as f64 * 1.024
                    / *subscribers as f64,
            }))
        }
        Load::Publish { subscribers } => {
            let channel = format!("{}_{channel_suffix}", scenario.id.replace('-', "_"));
            let endpoint = peer.endpoint.channel(&channel);
            let connections = 64;
            let attached = if *subscribers > 0 {
                Some(
                    open_subscribers(&endpoint, Transport::Sse, *subscribers, connections as u64)
                        .await?,
                )
            } else {
                None
            };
            let mut cpu = Vec::new();
            let outcome = publish_closed_loop(
                &endpoint,
                connections,
                Duration::from_secs(1),
                args.publish_duration,
                &RequestShape::single(&endpoint, 300),
                || cpu.push(peer.cpu_seconds()),
            )
            .await?;
            let seen = match attached {
                Some(attached) => {
                    attached
                        .wait_for(
                            outcome.acknowledged,
                            Instant::now() + Duration::from_secs(30),
                        )
                        .await;
                    Some(attached.finish().await?)
                }
                None => None,
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            let expected = outcome.acknowledged * *subscribers as u64;
            Ok(Figures::Publish(PublishFigures {
                events_per_s: outcome.events as f64 / outcome.elapsed,
                request_latency_ms: Percentiles::of(&outcome.latencies),
                errors: outcome.errors,
                cpu_us_per_event: (cpu[1] - cpu[0]) * 1e6 / outcome.events.max(1) as f64,
                missed: seen
                    .as_ref()
                    .map_or(0, |s| expected.saturating_sub(s.unique)),
                duplicated: seen.as_ref().map_or(0, |s| s.duplicates),
                out_of_order: seen.as_ref().map_or(0, |s| s.out_of_order),
                subscriber_errors: seen.as_ref().map_or(0, |s| s.errors),
            }))
        }
    }
}

fn brief(figures: &Figures) -> String {
    match figures {
        Figures::Fanout(f) => format!(
            "{:>9.0} deliveries/s  p50 {:>7.2} ms  p99 {:>7.2} ms  CPU {:>5.2} µs/delivery  missed {} dup {} order {}",
            f.deliveries_per_s,
            f.latency_ms.p50,
            f.latency_ms.p99,
            f.cpu_us_per_delivery.unwrap_or(f64::NAN),
            f.missed,
            f.duplicated,
            f.out_of_order
        ),
        Figures::Publish(p) => format!(
            "{:>9.0} events/s  p50 {:>7.2} ms  p99 {:>7.2} ms  CPU {:>5.1} µs/event  missed {} dup {} order {}",
            p.events_per_s,
            p.request_latency_ms.p50,
            p.request_latency_ms.p99,
            p.cpu_us_per_event,
            p.missed,
            p.duplicated,
            p.out_of_order
        ),
        Figures::Idle(i) => format!(
            "{:.1} KB per idle subscriber ({:.1} → {:.1} MiB)",
            i.kb_per_subscriber, i.rss_fresh_mib, i.rss_with_subscribers_mib
        ),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn median_percentiles(all: &[Percentiles]) -> Percentiles {
    let m = |f: fn(&Percentiles) -> f64| median(all.iter().map(f).collect());
    Percentiles {
        p50: m(|p| p.p50),
        p90: m(|p| p.p90),
        p99: m(|p| p.p99),
        p999: m(|p| p.p999),
        max: m(|p| p.max),
    }
}

/// Per-field medians over the passes; correctness counts are summed.
fn median_figures(runs: &[Figures]) -> Figures {
    let idles: Vec<&IdleFigures> = runs
        .iter()
        .filter_map(|f| match f {
            Figures::Idle(i) => Some(i),
            _ => None,
        })
        .collect();
    if !idles.is_empty() {
        let m = |f: fn(&IdleFigures) -> f64| median(idles.iter().map(|x| f(x)).collect());
        return Figures::Idle(IdleFigures {
            rss_fresh_mib: m(|i| i.rss_fresh_mib),
            rss_with_subscribers_mib: m(|i| i.rss_with_subscribers_mib),
            kb_per_subscriber: m(|i| i.kb_per_subscriber),
        });
    }
    let fanouts: Vec<&FanoutFigures> = runs
        .iter()
        .filter_map(|f| match f {
            Figures::Fanout(f) => Some(f),
            _ => None,
        })
        .collect();
    if !fanouts.is_empty() {
        let m = |f: fn(&FanoutFigures) -> Option<f64>| {
            let values: Vec<f64> = fanouts.iter().filter_map(|x| f(x)).collect();
            (!values.is_empty()).then(|| median(values))
        };
        return Figures::Fanout(FanoutFigures {
            published: fanouts.iter().map(|f| f.published).sum(),
            deliveries_per_s: m(|f| Some(f.deliveries_per_s)).unwrap_or(f64::NAN),
            latency_ms: median_percentiles(
                &fanouts.iter().map(|f| f.latency_ms).collect::<Vec<_>>(),
            ),
            missed: fanouts.iter().map(|f| f.missed).sum(),
            duplicated: fanouts.iter().map(|f| f.duplicated).sum(),
            out_of_order: fanouts.iter().map(|f| f.out_of_order).sum(),
            subscriber_errors: fanouts.iter().map(|f| f.subscriber_errors).sum(),
            cpu_us_per_delivery: m(|f| f.cpu_us_per_delivery),
            rss_idle_mib: m(|f| f.rss_idle_mib),
            rss_kb_per_idle_subscriber: m(|f| f.rss_kb_per_idle_subscriber),
        });
    }
    let publishes: Vec<&PublishFigures> = runs
        .iter()
        .filter_map(|f| match f {
            Figures::Publish(p) => Some(p),
            _ => None,
        })
        .collect();
    let m = |f: fn(&PublishFigures) -> f64| median(publishes.iter().map(|x| f(x)).collect());
    Figures::Publish(PublishFigures {
        events_per_s: m(|p| p.events_per_s),
        request_latency_ms: median_percentiles(
            &publishes
                .iter()
                .map(|p| p.request_latency_ms)
                .collect::<Vec<_>>(),
        ),
        errors: publishes.iter().map(|p| p.errors).sum(),
        cpu_us_per_event: m(|p| p.cpu_us_per_event),
        missed: publishes.iter().map(|p| p.missed).sum(),
        duplicated: publishes.iter().map(|p| p.duplicated).sum(),
        out_of_order: publishes.iter().map(|p| p.out_of_order).sum(),
        subscriber_errors: publishes.iter().map(|p| p.subscriber_errors).sum(),
    })
}

/// The rows of a scenario's table: name, ours, nchan, and whether a ratio means anything.
fn rows(ours: &Figures, theirs: &Figures) -> Vec<(&'static str, f64, f64, bool)> {
    match (ours, theirs) {
        (Figures::Fanout(a), Figures::Fanout(b)) => vec![
            ("deliveries/s", a.deliveries_per_s, b.deliveries_per_s, true),
            ("latency p50 (ms)", a.latency_ms.p50, b.latency_ms.p50, true),
            ("latency p99 (ms)", a.latency_ms.p99, b.latency_ms.p99, true),
            (
                "latency p99.9 (ms)",
                a.latency_ms.p999,
                b.latency_ms.p999,
                true,
            ),
            ("latency max (ms)", a.latency_ms.max, b.latency_ms.max, true),
            (
                "server CPU per delivery (µs)",
                a.cpu_us_per_delivery.unwrap_or(f64::NAN),
                b.cpu_us_per_delivery.unwrap_or(f64::NAN),
                true,
            ),
            (
                "missed (all passes)",
                a.missed as f64,
                b.missed as f64,
                false,
            ),
            (
                "duplicated",
                a.duplicated as f64,
                b.duplicated as f64,
                false,
            ),
            (
                "out of order",
                a.out_of_order as f64,
                b.out_of_order as f64,
                false,
            ),
            (
                "subscriber errors",
                a.subscriber_errors as f64,
                b.subscriber_errors as f64,
                false,
            ),
        ],
        (Figures::Publish(a), Figures::Publish(b)) => vec![
            ("events/s", a.events_per_s, b.events_per_s, true),
            (
                "request latency p50 (ms)",
                a.request_latency_ms.p50,
                b.request_latency_ms.p50,
                true,
            ),
            (
                "request latency p99 (ms)",
                a.request_latency_ms.p99,
                b.request_latency_ms.p99,
                true,
            ),
            (
                "server CPU per event (µs)",
                a.cpu_us_per_event,
                b.cpu_us_per_event,
                true,
            ),
            (
                "errors (all passes)",
                a.errors as f64,
                b.errors as f64,
                false,
            ),
            ("deliveries missed", a.missed as f64, b.missed as f64, false),
            (
                "duplicated",
                a.duplicated as f64,
                b.duplicated as f64,
                false,
            ),
            (
                "out of order",
                a.out_of_order as f64,
                b.out_of_order as f64,
                false,
            ),
        ],
        (Figures::Idle(a), Figures::Idle(b)) => vec![
            (
                "RSS per idle subscriber (KB)",
                a.kb_per_subscriber,
                b.kb_per_subscriber,
                true,
            ),
            ("RSS fresh (MiB)", a.rss_fresh_mib, b.rss_fresh_mib, true),
            (
                "RSS with the subscribers (MiB)",
                a.rss_with_subscribers_mib,
                b.rss_with_subscribers_mib,
                true,
            ),
        ],
        _ => Vec::new(),
    }
}

fn summarise(scenario: &Scenario, cpod: Vec<Figures>, nchan: Vec<Figures>) -> ScenarioResult {
    let cpod_median = median_figures(&cpod);
    let nchan_median = median_figures(&nchan);
    let mut ratios = BTreeMap::new();
    for (name, ours, theirs, ratio) in rows(&cpod_median, &nchan_median) {
        if ratio && theirs > 0.0 && ours.is_finite() && theirs.is_finite() {
            ratios.insert(name, ours / theirs);
        }
    }
    ScenarioResult {
        id: scenario.id.clone(),
        title: scenario.title.clone(),
        cpod,
        nchan,
        cpod_median,
        nchan_median,
        ratios,
    }
}

fn print_table(result: &ScenarioResult, passes: usize) {
    println!("   medians of {passes} pass(es):");
    println!(
        "   {:<32} {:>12} {:>12} {:>14}",
        "", "cPod", "nchan", "cPod ÷ nchan"
    );
    for (name, ours, theirs, _) in rows(&result.cpod_median, &result.nchan_median) {
        let ratio = result
            .ratios
            .get(name)
            .map_or(String::new(), |r| format!("{r:.2}"));
        println!(
            "   {name:<32} {:>12} {:>12} {ratio:>14}",
            number(ours),
            number(theirs)
        );
    }
}

fn ratio_of(results: &[ScenarioResult], id: &str, row: &str) -> Option<f64> {
    results
        .iter()
        .find(|r| r.id == id)?
        .ratios
        .get(row)
        .copied()
}

/// Issue 14's targets (ours ÷ nchan of the medians, and the absolute ones of the idle
/// subscribers on our broker alone), with the earlier durable-ingest bound.
fn check_targets(results: &[ScenarioResult], solo: Option<&SoloFigures>) -> Vec<TargetCheck> {
    let ratio = |target: &str, id: &str, row: &str, met: &dyn Fn(f64) -> bool| {
        let ratio = ratio_of(results, id, row);
        TargetCheck {
            target: target.to_owned(),
            ratio,
            measured: None,
            met: ratio.is_some_and(met),
        }
    };
    let mut checks = vec![
        ratio(
            "RSS per idle SSE subscriber (1,000, fresh server) ≤ 0.5×",
            "idle-sse-1000",
            "RSS per idle subscriber (KB)",
            &|r| r <= 0.5,
        ),
        ratio(
            "RSS per idle WebSocket subscriber (1,000, fresh server) ≤ 0.75×",
            "idle-ws-1000",
            "RSS per idle subscriber (KB)",
            &|r| r <= 0.75,
        ),
        ratio(
            "p99 publish-to-receipt, 1,000 SSE × 100 events/s ≤ 0.5×",
            "fanout-sse-1000-at-100",
            "latency p99 (ms)",
            &|r| r <= 0.5,
        ),
        ratio(
            "p99 publish-to-receipt, 5,000 SSE × 10 events/s ≤ 0.7×",
            "fanout-sse-5000",
            "latency p99 (ms)",
            &|r| r <= 0.7,
        ),
        ratio(
            "server CPU per delivery, 1,000 SSE × 10 events/s ≤ 0.7×",
            "fanout-sse-1000",
            "server CPU per delivery (µs)",
            &|r| r <= 0.7,
        ),
        ratio(
            "saturation deliveries/s, 1,000 SSE subscribers ≥ 2×",
            "saturation-sse-1000",
            "deliveries/s",
            &|r| r >= 2.0,
        ),
        ratio(
            "publish with 100 SSE subscribers attached ≥ 3×",
            "publish-100",
            "events/s",
            &|r| r >= 3.0,
        ),
        ratio(
            "durable ingest, no subscribers ≥ 0.5× nchan's publish rate (earlier target)",
            "publish-0",
            "events/s",
            &|r| r >= 0.5,
        ),
    ];
    let idle = solo.map(|s| &s.idle);
    // Met only at the full count: figures at fewer subscribers are reported, not extrapolated.
    let at_full_count = idle.filter(|i| i.subscribers >= IDLE_TARGET);
    let held = |i: &idle::IdleFigures| {
        if i.subscribers >= IDLE_TARGET {
            String::new()
        } else {
            format!(" (only {} held)", number(i.subscribers as f64))
        }
    };
    checks.push(TargetCheck {
        target: "100,000 idle SSE subscribers held by one broker in ≤ 0.5 GiB RSS".into(),
        ratio: None,
        measured: idle.map(|i| format!("{:.0} MiB{}", i.rss_mib.unwrap_or(f64::NAN), held(i))),
        met: at_full_count.is_some_and(|i| i.rss_mib.is_some_and(|mib| mib <= 512.0)),
    });
    checks.push(TargetCheck {
        target: "one event reaches 100,000 idle SSE subscribers with p99 ≤ 1 s".into(),
        ratio: None,
        measured: idle.map(|i| format!("{:.0} ms{}", i.delivery_ms.p99, held(i))),
        met: at_full_count.is_some_and(|i| i.delivery_ms.p99 <= 1000.0),
    });
    let faults: u64 = results
        .iter()
        .flat_map(|r| [&r.cpod_median, &r.nchan_median])
        .map(|f| match f {
            Figures::Fanout(f) => f.missed + f.duplicated + f.out_of_order,
            Figures::Publish(p) => p.missed + p.duplicated + p.out_of_order,
            Figures::Idle(_) => 0,
        })
        .sum::<u64>()
        + solo.map_or(0, SoloFigures::faults);
    checks.push(TargetCheck {
        target: format!("zero missed, duplicated or out-of-order deliveries (found {faults})"),
        ratio: None,
        measured: None,
        met: faults == 0,
    });
    checks
}

fn machine_description() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores, {model}; load generator on the same cores")
}

fn write_outputs(out: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::write(
        out.join("compare.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    std::fs::write(out.join("compare.md"), markdown(report))?;
    draw_charts(out, &report.scenarios)
}

/// The summary BENCHMARKS.md shows: one row per scenario and figure.
fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run of {} ({}; medians of {} passes, alternating A/B). `{}`\n",
        report.started_at, report.machine, report.passes, report.command
    );
    let _ = writeln!(md, "| scenario | figure | cPod | nchan | cPod ÷ nchan |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for result in &report.scenarios {
        for (name, ours, theirs, _) in rows(&result.cpod_median, &result.nchan_median) {
            let ratio = result
                .ratios
                .get(name)
                .map_or(String::new(), |r| format!("{r:.2}"));
            let _ = writeln!(
                md,
                "| {} | {name} | {} | {} | {ratio} |",
                result.id,
                number(ours),
                number(theirs)
            );
        }
    }
    let _ = writeln!(
        md,
        "\n| target | ours ÷ nchan, or measured | |\n|---|---|---|"
    );
    for t in &report.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            t.target,
            t.figure(),
            if t.met { "met" } else { "**not met**" }
        );
    }
    if let Some(solo) = &report.solo {
        md.push_str(&solo.markdown());
    }
    md
}

fn draw_charts(out: &Path, results: &[ScenarioResult]) -> anyhow::Result<()> {
    let points = |prefix: &str, pick: &dyn Fn(&FanoutFigures) -> f64, nchan: bool| {
        results
            .iter()
            .filter(|r| {
                r.id.strip_prefix(prefix)
                    .is_some_and(|n| n.parse::<usize>().is_ok())
            })
            .filter_map(|r| {
                let subscribers: f64 = r.id.strip_prefix(prefix)?.parse().ok()?;
                match if nchan {
                    &r.nchan_median
                } else {
                    &r.cpod_median
                } {
                    Figures::Fanout(f) => Some((subscribers, pick(f))),
                    _ => None,
                }
            })
            .collect::<Vec<_>>()
    };
    let series =
        |name: &str, color, prefix: &str, pick: &dyn Fn(&FanoutFigures) -> f64, nchan| Series {
            name: name.to_owned(),
            color,
            points: points(prefix, pick, nchan),
        };
    let latency = [
        series(
            "cPod p99",
            charts::CPOD,
            "fanout-sse-",
            &|f| f.latency_ms.p99,
            false,
        ),
        series(
            "cPod p50",
            charts::CPOD_LIGHT,
            "fanout-sse-",
            &|f| f.latency_ms.p50,
            false,
        ),
        series(
            "nchan p99",
            charts::NCHAN,
            "fanout-sse-",
            &|f| f.latency_ms.p99,
            true,
        ),
        series(
            "nchan p50",
            charts::NCHAN_LIGHT,
            "fanout-sse-",
            &|f| f.latency_ms.p50,
            true,
        ),
    ];
    if latency.iter().all(|s| !s.points.is_empty()) {
        charts::subscribers_chart(
            &out.join("latency.svg"),
            "Publish-to-receipt latency, SSE, 10 events/s",
            "milliseconds",
            &latency,
        )?;
    }
    let deliveries = [
        series(
            "cPod",
            charts::CPOD,
            "saturation-sse-",
            &|f| f.deliveries_per_s,
            false,
        ),
        series(
            "nchan",
            charts::NCHAN,
            "saturation-sse-",
            &|f| f.deliveries_per_s,
            true,
        ),
    ];
    if deliveries.iter().all(|s| !s.points.is_empty()) {
        charts::subscribers_chart(
            &out.join("deliveries.svg"),
            "Saturation fan-out, SSE: deliveries per second",
            "deliveries/s",
            &deliveries,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fanout(deliveries: f64, p99: f64, missed: u64) -> Figures {
        Figures::Fanout(FanoutFigures {
            published: 10,
            deliveries_per_s: deliveries,
            latency_ms: Percentiles {
                p99,
                ..Percentiles::default()
            },
            missed,
            duplicated: 0,
            out_of_order: 0,
            subscriber_errors: 0,
            cpu_us_per_delivery: None,
            rss_idle_mib: None,
            rss_kb_per_idle_subscriber: None,
        })
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn figures_take_medians_but_faults_add_up_over_passes() {
        let runs = [
            fanout(100.0, 9.0, 0),
            fanout(300.0, 1.0, 2),
            fanout(200.0, 5.0, 1),
        ];
        let Figures::Fanout(m) = median_figures(&runs) else {
            panic!("fan-out figures")
        };
        assert_eq!(m.deliveries_per_s, 200.0);
        assert_eq!(m.latency_ms.p99, 5.0);
        assert_eq!(m.missed, 3);
        assert_eq!(m.published, 30);
    }

    #[test]
    fn ratios_are_ours_over_theirs_and_a_fault_fails_the_targets() {
        let scenario = Scenario {
            id: "saturation-sse-1000".into(),
            title: String::new(),
            load: Load::Publish { subscribers: 0 },
        };
        let result = summarise(
            &scenario,
            vec![fanout(400.0, 10.0, 0)],
            vec![fanout(200.0, 40.0, 1)],
        );
        assert_eq!(result.ratios["deliveries/s"], 2.0);
        assert_eq!(result.ratios["latency p99 (ms)"], 0.25);
        let targets = check_targets(&[result], None);
        let saturation = targets
            .iter()
            .find(|t| t.target.starts_with("saturation"))
            .unwrap();
        assert!(saturation.met, "2× saturation");
        assert!(!targets.last().unwrap().met, "nchan missed one delivery");
    }

    /// `compare`'s arguments at their defaults.
    fn default_args() -> CompareArgs {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: CompareArgs,
        }
        <Command as clap::Parser>::parse_from(["compare"]).args
    }

    /// Every scenario's results, ours `scale` × nchan's in every figure.
    fn all_results(scale: f64) -> Vec<ScenarioResult> {
        scenarios(&default_args())
            .iter()
            .map(|scenario| {
                let figures = |k: f64| match scenario.load {
                    Load::Fanout(_) => {
                        let mut figures = fanout(100.0 * k, 10.0 * k, 0);
                        if let Figures::Fanout(f) = &mut figures {
                            f.cpu_us_per_delivery = Some(k);
                        }
                        figures
                    }
                    Load::Idle { .. } => Figures::Idle(IdleFigures {
                        rss_fresh_mib: 20.0 * k,
                        rss_with_subscribers_mib: 30.0 * k,
                        kb_per_subscriber: 10.0 * k,
                    }),
                    Load::Publish { .. } => Figures::Publish(PublishFigures {
                        events_per_s: 1000.0 * k,
                        request_latency_ms: Percentiles::default(),
                        errors: 0,
                        cpu_us_per_event: 10.0 * k,
                        missed: 0,
                        duplicated: 0,
                        out_of_order: 0,
                        subscriber_errors: 0,
                    }),
                };
                summarise(scenario, vec![figures(scale)], vec![figures(1.0)])
            })
            .collect()
    }

    #[test]
    fn every_ratio_target_finds_its_scenario_and_figure() {
        let targets = check_targets(&all_results(1.0), None);
        let ratios: Vec<&TargetCheck> = targets.iter().filter(|t| t.ratio.is_some()).collect();
        assert_eq!(ratios.len(), 8, "issue 14's seven and durable ingest");
        for target in [
            "RSS per idle SSE subscriber",
            "RSS per idle WebSocket subscriber",
            "p99 publish-to-receipt, 1,000 SSE × 100",
            "p99 publish-to-receipt, 5,000 SSE × 10",
            "server CPU per delivery, 1,000 SSE × 10",
            "saturation deliveries/s, 1,000",
            "publish with 100 SSE subscribers",
        ] {
            assert!(
                ratios.iter().any(|t| t.target.starts_with(target)),
                "{target} has a ratio"
            );
        }
        // Equal servers meet the ratio targets with a bound of at least 1 only.
        let met: Vec<&str> = ratios
            .iter()
            .filter(|t| t.met)
            .map(|t| t.target.as_str())
            .collect();
        assert_eq!(met.len(), 1, "{met:?}");
        assert!(met[0].starts_with("durable ingest"));
    }

    #[test]
    fn the_bounds_are_issue_14s() {
        // Ours at 0.5× in every figure: the "at most" targets are met (their bounds are 0.5 or
        // more), the "at least" ones are not.
        let half = check_targets(&all_results(0.5), None);
        let met = |targets: &[TargetCheck], name: &str| {
            targets
                .iter()
                .find(|t| t.target.starts_with(name))
                .unwrap()
                .met
        };
        assert!(met(&half, "RSS per idle SSE subscriber"));
        assert!(met(&half, "p99 publish-to-receipt, 1,000 SSE × 100"));
        assert!(!met(&half, "saturation"));
        // Just above 0.5×: only the 0.7× and 0.75× bounds hold.
        let above = check_targets(&all_results(0.55), None);
        assert!(!met(&above, "RSS per idle SSE subscriber"));
        assert!(met(&above, "RSS per idle WebSocket subscriber"));
        assert!(!met(&above, "p99 publish-to-receipt, 1,000 SSE × 100"));
        assert!(met(&above, "p99 publish-to-receipt, 5,000 SSE × 10"));
        assert!(met(&above, "server CPU per delivery"));
        // 2.5×: saturation (≥ 2×) is met, publishing with subscribers (≥ 3×) is not.
        let more = check_targets(&all_results(2.5), None);
        assert!(met(&more, "saturation"));
        assert!(!met(&more, "publish with 100 SSE subscribers"));
        assert!(met(
            &check_targets(&all_results(3.0), None),
            "publish with 100"
        ));
    }

    #[test]
    fn the_5000_subscriber_latency_target_runs_at_10_events_per_s_and_old_ids_remain() {
        let all = scenarios(&default_args());
        let Load::Fanout(spec) = &all.iter().find(|s| s.id == "fanout-sse-5000").unwrap().load
        else {
            panic!("a fan-out")
        };
        assert_eq!((spec.subscribers, spec.rate), (5000, 10.0));
        for id in [
            "fanout-sse-100",
            "fanout-sse-1000",
            "fanout-sse-5000",
            "fanout-ws-1000",
            "fanout-sse-1000-at-100",
            "saturation-sse-100",
            "saturation-sse-1000",
            "saturation-sse-5000",
            "idle-sse-1000",
            "idle-ws-1000",
            "publish-0",
            "publish-100",
        ] {
            assert!(all.iter().any(|s| s.id == id), "{id}");
        }
    }
}
