//! `cpod-bench webhooks`: deliveries per second to a local receiver that answers 200 at once,
//! with several endpoints, and the delay from ingestion (just before the POST) to delivery.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::bail;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

use super::fanout::{Delivered, Publishing, new_histogram, now_us, publish};
use super::peer::Endpoint;
use super::{BrokerArgs, broker_for, cpu_seconds, create_key};

#[derive(Args, Clone)]
pub struct WebhookArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Webhook endpoints, all on the local receiver, each getting every event.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Events published per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 300)]
    event_bytes: usize,
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

#[derive(Default)]
struct Received {
    count: u64,
    latencies: Option<Histogram<u64>>,
    seen: std::collections::HashSet<(usize, u64)>,
    duplicates: u64,
}

async fn receive(
    path: web::Path<usize>,
    body: web::Bytes,
    state: web::Data<Mutex<Received>>,
) -> HttpResponse {
    let now = now_us();
    if let Ok(event) = serde_json::from_slice::<Delivered>(&body) {
        let mut received = state.lock().expect("receiver lock");
        received.count += 1;
        if !received.seen.insert((*path, event.payload.seq)) {
            received.duplicates += 1;
        }
        if let Some(h) = received.latencies.as_mut() {
            let _ = h.record(now.saturating_sub(event.payload.sent_us).max(1));
        }
    }
    HttpResponse::Ok().finish()
}

pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let mut broker_args = args.broker.clone();
    broker_args.allow_private_webhooks = true;
    let (broker, base, admin) = broker_for(&broker_args)?;
    let key = create_key(&base, &admin, "service").await?;
    let endpoint = Endpoint::cpod(&base, &key, &key);
    let pid = broker.as_ref().map(|b| b.child.id());

    let state = web::Data::new(Mutex::new(Received {
        latencies: Some(new_histogram()),
        ..Received::default()
    }));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let receiver_url = format!("http://{}", listener.local_addr()?);
    let data = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/hook/{n}", web::post().to(receive))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);

    let client = reqwest::Client::new();
    for n in 0..args.endpoints {
        let response = client
            .post(format!("{base}/v1/webhooks"))
            .bearer_auth(&key)
            .json(&json!({"url": format!("{receiver_url}/hook/{n}"), "types": ["custom.bench"]}))
            .send()
            .await?;
        if response.status() != 201 {
            bail!(
                "creating a webhook answered {}: {}",
                response.status(),
                response.text().await?
            );
        }
    }
    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let expected = total * args.endpoints as u64;
    let cpu_before = pid.and_then(cpu_seconds);
    let started = Instant::now();
    publish(
        &endpoint,
        &Publishing {
            rate: args.rate,
            total,
            connections: args.publishers,
            event_bytes: args.event_bytes,
        },
    )
    .await?;
    let deadline = Instant::now() + args.drain;
    while state.lock().expect("receiver lock").count < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = pid.and_then(cpu_seconds);
    handle.stop(false).await;
    let received = state.lock().expect("receiver lock");
    let latencies = received.latencies.as_ref().expect("histogram");
    println!(
        "scenario      webhooks: {} endpoints, {} events/s for {:?}, ~{} B per event, receiver answers 200 at once",
        args.endpoints, args.rate, args.duration, args.event_bytes
    );
    println!(
        "deliveries    {} of {expected} ({} duplicated)",
        received.count, received.duplicates
    );
    println!("deliveries/s  {:.0}", received.count as f64 / elapsed);
    println!(
        "ingest→deliver p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "broker CPU    {:.1} µs per delivery",
            (after - before) * 1e6 / received.count.max(1) as f64
        );
    }
    drop(broker);
    Ok(())
}
