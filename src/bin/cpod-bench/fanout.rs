//! `cpod-bench fanout`: N subscribers (SSE or WebSocket) on one organization, events published
//! open-loop at a fixed rate (each scheduled on an absolute time, so a slow broker cannot slow
//! the offered load). Reports deliveries/s, publish-to-receipt latency, missed, duplicated and
//! out-of-order deliveries, the broker's CPU per delivery and its RSS per idle subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use super::{BrokerArgs, broker_for, cpu_seconds, create_key, rss_kib};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Sse,
    Ws,
}

#[derive(Args, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Subscribers, all on one organization.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
    /// Events published per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How long events are published.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Approximate size of each event's JSON, in bytes.
    #[arg(long, default_value_t = 300)]
    event_bytes: usize,
    /// Concurrent publishing connections.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// How long to wait after publishing for the last deliveries.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64
}

#[derive(Deserialize)]
pub struct Delivered {
    pub id: Uuid,
    pub payload: Payload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub seq: u64,
    pub sent_us: u64,
}

/// What one subscriber saw.
struct Tally {
    latencies: Histogram<u64>,
    seen: Vec<u64>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    last_id: Option<Uuid>,
}

impl Tally {
    fn new(total: u64) -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            seen: vec![0; (total as usize).div_ceil(64)],
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            last_id: None,
        }
    }

    fn record(&mut self, data: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Delivered>(data) else {
            return;
        };
        let now = now_us();
        let _ = self
            .latencies
            .record(now.saturating_sub(event.payload.sent_us).max(1));
        let (word, bit) = ((event.payload.seq / 64) as usize, event.payload.seq % 64);
        if let Some(slot) = self.seen.get_mut(word) {
            if *slot & (1 << bit) != 0 {
                self.duplicates += 1;
            }
            *slot |= 1 << bit;
        }
        // Event ids are UUIDv7 given in commit order: a delivery must never go backwards.
        if self.last_id.is_some_and(|last| event.id <= last) {
            self.out_of_order += 1;
        }
        self.last_id = Some(event.id);
        self.received += 1;
    }

    fn unique(&self) -> u64 {
        self.seen.iter().map(|w| w.count_ones() as u64).sum()
    }
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let (broker, base, admin) = broker_for(&args.broker)?;
    let publisher_key = create_key(&base, &admin, "service").await?;
    let reader_key = create_key(&base, &admin, "reader").await?;
    let authority = base.trim_start_matches("http://").to_owned();
    let pid = broker.as_ref().map(|b| b.child.id());
    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    if total == 0 {
        bail!("--rate × --duration publishes nothing");
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = pid.and_then(rss_kib);
    let ready = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for _ in 0..args.subscribers {
        let (authority, key, ready, done) = (
            authority.clone(),
            reader_key.clone(),
            ready.clone(),
            done.clone(),
        );
        let transport = args.transport;
        subscribers.push(tokio::spawn(async move {
            let mut tally = Tally::new(total);
            let result = match transport {
                Transport::Sse => subscribe_sse(&authority, &key, &ready, &mut tally, total).await,
                Transport::Ws => subscribe_ws(&authority, &key, &ready, &mut tally, total).await,
            };
            done.fetch_add(1, Ordering::Relaxed);
            result.map(|()| tally)
        }));
    }
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < args.subscribers {
        if Instant::now() > open_deadline {
            bail!(
                "only {} of {} subscribers connected",
                ready.load(Ordering::Relaxed),
                args.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = pid.and_then(rss_kib);

    let cpu_before = pid.and_then(cpu_seconds);
    let started = Instant::now();
    publish(&Publishing {
        authority: authority.clone(),
        key: publisher_key.clone(),
        rate: args.rate,
        total,
        connections: args.publishers,
        event_bytes: args.event_bytes,
    })
    .await?;
    let published_in = started.elapsed();
    let drain_deadline = Instant::now() + args.drain;
    while done.load(Ordering::Relaxed) < args.subscribers && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_in = started.elapsed();
    let cpu_after = pid.and_then(cpu_seconds);
    for subscriber in &subscribers {
        subscriber.abort();
    }

    let mut latencies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut received, mut unique, mut duplicates, mut out_of_order) = (0u64, 0u64, 0u64, 0u64);
    let mut failed = 0;
    for subscriber in subscribers {
        match subscriber.await {
            Ok(Ok(tally)) => {
                latencies.add(&tally.latencies)?;
                received += tally.received;
                unique += tally.unique();
                duplicates += tally.duplicates;
                out_of_order += tally.out_of_order;
            }
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("a subscriber failed: {e:#}");
            }
            Err(_) => failed += 1, // still waiting at the end of the drain: counted as missed
        }
    }
    let expected = total * args.subscribers as u64;
    let transport = match args.transport {
        Transport::Sse => "SSE",
        Transport::Ws => "WebSocket",
    };
    println!(
        "scenario      fanout: {} {transport} subscribers, {} events/s for {:?}, ~{} B per event",
        args.subscribers, args.rate, args.duration, args.event_bytes
    );
    println!(
        "published     {total} events in {:.2} s",
        published_in.as_secs_f64()
    );
    println!(
        "deliveries/s  {:.0}",
        received as f64 / delivered_in.as_secs_f64().max(published_in.as_secs_f64())
    );
    println!(
        "latency       p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        latencies.value_at_quantile(0.50) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0
    );
    println!(
        "correctness   missed {}   duplicated {duplicates}   out of order {out_of_order}   (subscribers cut off by the drain timeout: {failed})",
        expected.saturating_sub(unique)
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "broker CPU    {:.2} µs per delivery",
            (after - before) * 1e6 / received.max(1) as f64
        );
    }
    if let (Some(before), Some(idle)) = (rss_before, rss_idle) {
        println!(
            "broker RSS    {:.1} MiB idle with subscribers; {:.1} KB per idle subscriber",
            idle as f64 / 1024.0,
            (idle.saturating_sub(before)) as f64 * 1.024 / args.subscribers as f64
        );
    }
    drop(broker);
    Ok(())
}

/// An open-loop publishing plan.
pub struct Publishing {
    pub authority: String,
    pub key: String,
    pub rate: f64,
    pub total: u64,
    pub connections: usize,
    pub event_bytes: usize,
}

/// Publishes `total` `custom.bench` events, event i at `start + i / rate`, from several
/// connections; each carries its `seq` and its send time (`sentUs`) in the payload.
pub async fn publish(plan: &Publishing) -> anyhow::Result<()> {
    let start = Instant::now() + Duration::from_millis(100);
    let filler = "x".repeat(plan.event_bytes.saturating_sub(260));
    let total = plan.total;
    let mut tasks = Vec::new();
    for lane in 0..plan.connections as u64 {
        let (authority, key, filler, rate, lanes) = (
            plan.authority.clone(),
            plan.key.clone(),
            filler.clone(),
            plan.rate,
            plan.connections as u64,
        );
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&authority).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut seq = lane;
            while seq < total {
                tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
                let body = json!({
                    "type": "custom.bench", "resourceId": "bench", "resourceType": "bench",
                    "payload": {"seq": seq, "sentUs": now_us(), "filler": filler},
                });
                let request = Request::post("/v1/events")
                    .header("host", &authority)
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                if status != 201 {
                    bail!("publishing answered {status}");
                }
                seq += lanes;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn subscribe_sse(
    authority: &str,
    key: &str,
    ready: &AtomicUsize,
    tally: &mut Tally,
    total: u64,
) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get("/v1/events/stream?types=custom.bench")
        .header("host", authority)
        .header("authorization", format!("Bearer {key}"))
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if response.status() != 200 {
        bail!("the stream answered {}", response.status());
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    let mut counted_ready = false;
    while tally.received < total {
        let frame = body.frame().await.context("the stream ended")??;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if !counted_ready {
            ready.fetch_add(1, Ordering::Relaxed);
            counted_ready = true;
        }
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let message = buffer.split_to(end + 2);
            for line in message[..].split(|&b| b == b'\n') {
                if let Some(data) = line.strip_prefix(b"data: ") {
                    tally.record(data);
                }
            }
        }
    }
    Ok(())
}

async fn subscribe_ws(
    authority: &str,
    key: &str,
    ready: &AtomicUsize,
    tally: &mut Tally,
    total: u64,
) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{authority}/v1/events/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    socket
        .send(Message::text(
            json!({"op": "subscribe", "id": "b", "filter": {"types": ["custom.bench"]}})
                .to_string(),
        ))
        .await?;
    let mut counted_ready = false;
    while tally.received < total {
        let message = socket.next().await.context("the socket closed")??;
        let Message::Text(text) = message else {
            continue;
        };
        if !counted_ready {
            ready.fetch_add(1, Ordering::Relaxed);
            counted_ready = true;
            continue; // {"op":"subscribed"}
        }
        // {"op":"event","subscription":"b","event":{…}}: the event starts after `"event":`.
        let bytes = text.as_bytes();
        if let Some(at) = bytes.windows(8).position(|w| w == b"\"event\":") {
            let mut event = &bytes[at + 8..];
            if event.last() == Some(&b'}') {
                event = &event[..event.len() - 1];
            }
            tally.record(event);
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}
