//! The scenarios nchan cannot run (it keeps no durable store and replays only its in-memory
//! buffer), run on our broker alone and reported as absolute figures:
//! - replay: a subscriber reconnects with a `Last-Event-ID` N events back (default 1,000,000);
//!   time to the first event and events/s until it is live again;
//! - a slow subscriber beside fast ones: the fast ones' latency with and without slow consumers
//!   that stop reading, the server's peak memory, and whether the slow ones, once they read
//!   again, get every event in order;
//! - many idle subscribers (default 100,000, over several client processes; see `idle`) on a
//!   fresh broker: memory per connection, the time to open them, and one delivery to all.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::BrokerArgs;
use super::fanout::{
    self, Percentiles, Publisher, Publishing, Tally, Transport, open_subscribers_held, sse_lines,
};
use super::idle::{self, IdleFigures};
use super::peer::Peer;
use super::table::number;

#[derive(Serialize)]
pub struct SoloFigures {
    pub replay: ReplayFigures,
    pub slow_subscriber: SlowFigures,
    pub idle: IdleFigures,
}

#[derive(Serialize)]
pub struct ReplayFigures {
    pub events_back: u64,
    pub fill_events_per_s: f64,
    pub time_to_first_event_ms: f64,
    pub events_per_s: f64,
    pub missed: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// CPU of this load generator while reading, in % of one core: near 100 % means the reader,
    /// not the broker, is the limit.
    pub reader_cpu_percent: f64,
}

#[derive(Serialize)]
pub struct SlowFigures {
    pub fast_subscribers: usize,
    pub slow_subscribers: usize,
    pub rate: f64,
    pub event_bytes: usize,
    pub seconds: f64,
    pub fast_alone_ms: Percentiles,
    pub fast_beside_slow_ms: Percentiles,
    pub fast_missed: u64,
    pub peak_rss_alone_mib: f64,
    pub peak_rss_beside_slow_mib: f64,
    pub slow_catch_up_seconds: f64,
    pub slow_missed: u64,
    pub slow_duplicated: u64,
    pub slow_out_of_order: u64,
}

impl SoloFigures {
    /// Missed, duplicated and out-of-order deliveries in every solo scenario.
    pub fn faults(&self) -> u64 {
        let r = &self.replay;
        let s = &self.slow_subscriber;
        r.missed
            + r.duplicated
            + r.out_of_order
            + s.fast_missed
            + s.slow_missed
            + s.slow_duplicated
            + s.slow_out_of_order
            + self.idle.faults()
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from("\nOn our broker alone (nchan cannot run these):\n\n");
        let r = &self.replay;
        let _ = writeln!(
            md,
            "- **Replay** of {} events (reconnect with a `Last-Event-ID` that far back): first \
             event after {:.1} ms, {} events/s until live (reader at {:.0} % of a core); \
             missed {} / duplicated {} / out of order {}. (Filled at {} events/s in batches.)",
            number(r.events_back as f64),
            r.time_to_first_event_ms,
            number(r.events_per_s),
            r.reader_cpu_percent,
            r.missed,
            r.duplicated,
            r.out_of_order,
            number(r.fill_events_per_s)
        );
        let s = &self.slow_subscriber;
        let _ = writeln!(
            md,
            "- **Slow subscribers**: {} fast SSE subscribers at {} events/s of ~{} B for {:.0} s; \
             fast p50 / p99 {:.1} / {:.1} ms alone, {:.1} / {:.1} ms beside {} subscribers that \
             stop reading; peak RSS {:.0} MiB alone, {:.0} MiB beside them; the slow ones then \
             caught up in {:.1} s with missed {} / duplicated {} / out of order {} (fast missed {}).",
            s.fast_subscribers,
            s.rate,
            s.event_bytes,
            s.seconds,
            s.fast_alone_ms.p50,
            s.fast_alone_ms.p99,
            s.fast_beside_slow_ms.p50,
            s.fast_beside_slow_ms.p99,
            s.slow_subscribers,
            s.peak_rss_alone_mib,
            s.peak_rss_beside_slow_mib,
            s.slow_catch_up_seconds,
            s.slow_missed,
            s.slow_duplicated,
            s.slow_out_of_order,
            s.fast_missed
        );
        let i = &self.idle;
        let _ = writeln!(
            md,
            "- **{} idle SSE subscribers** requested, {} held (over {} client processes and {} \
             source addresses, opened in {:.1} s): {:.2} KB RSS each ({:.0} MiB in all); one event \
             to all of them: p50 / p99 / max {:.1} / {:.1} / {:.1} ms, missed {} / duplicated {}.",
            number(i.requested as f64),
            number(i.subscribers as f64),
            i.client_processes,
            number(i.source_addresses as f64),
            i.opening_seconds,
            i.kb_per_subscriber.unwrap_or(f64::NAN),
            i.rss_mib.unwrap_or(f64::NAN),
            i.delivery_ms.p50,
            i.delivery_ms.p99,
            i.delivery_ms.max,
            i.missed,
            i.duplicated
        );
        if let Some(shortfall) = &i.shortfall {
            let _ = writeln!(md, "  **Limit:** {shortfall}.");
        }
        md
    }
}

pub async fn run(
    peer: &Peer,
    broker: &BrokerArgs,
    replay_events: u64,
    idle: usize,
) -> anyhow::Result<SoloFigures> {
    let replay = replay(peer, replay_events).await.context("replay")?;
    println!(
        "   replay: {} events back, first after {:.1} ms, {:.0} events/s, missed {} dup {} order {}",
        replay.events_back,
        replay.time_to_first_event_ms,
        replay.events_per_s,
        replay.missed,
        replay.duplicated,
        replay.out_of_order
    );
    let slow_subscriber = slow_beside_fast(peer).await.context("slow subscribers")?;
    println!(
        "   slow subscribers: fast p99 {:.1} ms alone, {:.1} ms beside slow; peak RSS {:.0} → {:.0} MiB; slow missed {} dup {} order {}",
        slow_subscriber.fast_alone_ms.p99,
        slow_subscriber.fast_beside_slow_ms.p99,
        slow_subscriber.peak_rss_alone_mib,
        slow_subscriber.peak_rss_beside_slow_mib,
        slow_subscriber.slow_missed,
        slow_subscriber.slow_duplicated,
        slow_subscriber.slow_out_of_order
    );
    // A fresh broker: memory an earlier scenario freed would otherwise be reused and hide the
    // cost.
    println!(
        "   {} idle SSE subscribers on a fresh broker:",
        number(idle as f64)
    );
    let fresh = Peer::start_cpod(broker).await?;
    let idle = idle::measure(&fresh.endpoint, Some(&fresh), idle)
        .await
        .context("idle subscribers")?;
    drop(fresh);
    println!(
        "   {} of {} idle subscribers held: {:.2} KB each; one event p99 {:.1} ms, missed {}",
        idle.subscribers,
        idle.requested,
        idle.kb_per_subscriber.unwrap_or(f64::NAN),
        idle.delivery_ms.p99,
        idle.missed
    );
    if let Some(shortfall) = &idle.shortfall {
        println!("   LIMIT: {shortfall}");
    }
    Ok(SoloFigures {
        replay,
        slow_subscriber,
        idle,
    })
}

/// Stores `events` events after a marker, then reads them all with `Last-Event-ID` = marker.
async fn replay(peer: &Peer, events: u64) -> anyhow::Result<ReplayFigures> {
    let service = peer.service_key.as_deref().context("a cPod service key")?;
    let base = peer.base_url();
    let marker: Value = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(service)
        .json(&json!({"type": "custom.replay_marker", "resourceId": "m", "resourceType": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let marker = marker["id"].as_str().context("the marker's id")?.to_owned();

    // One connection, batches of 1,000 in order: `seq` then follows commit order.
    let filler = fanout::filler(300);
    let mut publisher = Publisher::connect(&peer.endpoint).await?;
    let fill_started = Instant::now();
    let mut seq = 0;
    while seq < events {
        let batch: Vec<Value> = (seq..events.min(seq + 1000))
            .map(|s| {
                json!({"type": "custom.replay", "resourceId": "bench", "resourceType": "bench",
                       "payload": {"seq": s, "sentUs": 0, "filler": filler}})
            })
            .collect();
        seq += batch.len() as u64;
        let body = Bytes::from(json!({ "events": batch }).to_string());
        if !publisher
            .post("/v1/events/batch", body)
            .await
            .with_context(|| format!("filling the replay at {seq}"))?
        {
            bail!("the broker refused a batch while filling the replay");
        }
    }
    let fill_events_per_s = events as f64 / fill_started.elapsed().as_secs_f64();

    let reader_cpu = super::cpu_seconds(std::process::id());
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(&peer.endpoint.authority).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get("/v1/events/stream?types=custom.replay")
        .header("host", &peer.endpoint.authority)
        .header("accept", "text/event-stream")
        .header("last-event-id", &marker)
        .header(
            "authorization",
            peer.endpoint.subscribe_auth.as_deref().unwrap_or_default(),
        )
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .context("opening the replay stream")?;
    if response.status() != 200 {
        bail!("the replay stream answered {}", response.status());
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    let mut tally = Tally::new(1);
    let mut first = None;
    let deadline = started + Duration::from_secs(300);
    while tally.received < events {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .context("the replay took more than 5 minutes")?
            .context("the replay stream ended")??;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&chunk);
        sse_lines(&mut buffer, |line| {
            if let Some(data) = line.strip_prefix(b"data: ") {
                first.get_or_insert_with(|| started.elapsed());
                tally.record(data);
            }
            if line.starts_with(b"event: reset") {
                bail!("the broker answered the replay with a reset");
            }
            Ok(())
        })?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reader_cpu = super::cpu_seconds(std::process::id())
        .zip(reader_cpu)
        .map_or(f64::NAN, |(after, before)| {
            (after - before) / elapsed * 100.0
        });
    Ok(ReplayFigures {
        events_back: events,
        fill_events_per_s,
        time_to_first_event_ms: first.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        events_per_s: events as f64 / elapsed,
        missed: events.saturating_sub(tally.unique()),
        duplicated: tally.duplicates,
        out_of_order: tally.out_of_order,
        reader_cpu_percent: reader_cpu,
    })
}

/// Fast subscribers' latency and the server's peak memory, alone and beside slow consumers.
async fn slow_beside_fast(peer: &Peer) -> anyhow::Result<SlowFigures> {
    const FAST: usize = 100;
    const SLOW: usize = 5;
    const RATE: f64 = 500.0;
    const EVENT_BYTES: usize = 2000;
    const SECONDS: u64 = 8;
    const PUBLISHERS: usize = 8;
    let total = (RATE * SECONDS as f64) as u64;

    let mut runs = Vec::new();
    for with_slow in [false, true] {
        let channel = if with_slow {
            "slow_beside"
        } else {
            "slow_alone"
        };
        let endpoint = peer.endpoint.channel(channel);
        let fast =
            open_subscribers_held(&endpoint, Transport::Sse, FAST, PUBLISHERS as u64, None).await?;
        let hold = CancellationToken::new();
        let slow = if with_slow {
            Some(
                open_subscribers_held(
                    &endpoint,
                    Transport::Sse,
                    SLOW,
                    PUBLISHERS as u64,
                    Some(hold.clone()),
                )
                .await?,
            )
        } else {
            None
        };
        let sampling = CancellationToken::new();
        let sampler = {
            let sampling = sampling.clone();
            let mut peak = peer.rss_kib();
            async move {
                while !sampling.is_cancelled() {
                    peak = peak.max(peer.rss_kib());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                peak
            }
        };
        let (published, peak) = tokio::join!(
            async {
                let result = fanout::publish(
                    &endpoint,
                    &Publishing {
                        rate: RATE,
                        total,
                        connections: PUBLISHERS,
                        event_bytes: EVENT_BYTES,
                    },
                )
                .await;
                fast.wait_for(total, Instant::now() + Duration::from_secs(20))
                    .await;
                sampling.cancel();
                result
            },
            sampler
        );
        published?;
        let fast_seen = fast.finish().await?;
        let mut catch_up = None;
        let mut slow_seen = None;
        if let Some(slow) = slow {
            let started = Instant::now();
            hold.cancel();
            slow.wait_for(total, Instant::now() + Duration::from_secs(60))
                .await;
            catch_up = Some(started.elapsed().as_secs_f64());
            slow_seen = Some(slow.finish().await?);
        }
        runs.push((fast_seen, peak, catch_up, slow_seen));
    }
    let [
        (alone, peak_alone, _, _),
        (beside, peak_beside, catch_up, slow),
    ] = <[_; 2]>::try_from(runs).map_err(|_| anyhow::anyhow!("two runs"))?;
    let slow = slow.context("the slow subscribers' figures")?;
    let expected_fast = total * FAST as u64;
    let expected_slow = total * SLOW as u64;
    Ok(SlowFigures {
        fast_subscribers: FAST,
        slow_subscribers: SLOW,
        rate: RATE,
        event_bytes: EVENT_BYTES,
        seconds: SECONDS as f64,
        fast_alone_ms: Percentiles::of(&alone.latencies),
        fast_beside_slow_ms: Percentiles::of(&beside.latencies),
        fast_missed: expected_fast.saturating_sub(alone.unique)
            + expected_fast.saturating_sub(beside.unique),
        peak_rss_alone_mib: peak_alone as f64 / 1024.0,
        peak_rss_beside_slow_mib: peak_beside as f64 / 1024.0,
        slow_catch_up_seconds: catch_up.unwrap_or(f64::NAN),
        slow_missed: expected_slow.saturating_sub(slow.unique),
        slow_duplicated: slow.duplicates,
        slow_out_of_order: slow.out_of_order,
    })
}
