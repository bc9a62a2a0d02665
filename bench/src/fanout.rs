//! Fan-out measurement, for any server with an [`Endpoint`]: N subscribers (SSE or WebSocket)
//! on one channel, events published open-loop at a fixed rate (each scheduled on an absolute
//! time, so a slow server cannot slow the offered load) or closed-loop as fast as the server
//! answers. Every subscriber counts its deliveries, latency (publish to receipt), and missed,
//! duplicated and out-of-order ones; the run reads the server's CPU per delivery and its RSS per
//! idle subscriber. `cpod-bench fanout` runs one such measurement against our broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::BrokerArgs;
use super::peer::{Endpoint, Peer, WsFraming};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Sse,
    Ws,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::Ws => "WebSocket",
        }
    }
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

/// The part of a delivered event (or of nchan's raw message, which is the posted body) that the
/// webhook receiver reads.
#[derive(Deserialize)]
pub struct Delivered {
    pub payload: Payload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub seq: u64,
    pub sent_us: u64,
}

/// What [`Tally::record`] reads of a delivery.
#[derive(Debug, PartialEq)]
pub struct DeliveryMark {
    pub id: Option<Uuid>,
    pub seq: u64,
    pub sent_us: u64,
}

/// Reads `seq`, `sentUs` and (cPod's events begin with it) `id` out of a delivered event without
/// parsing the whole JSON: at hundreds of thousands of deliveries per second, the load
/// generator's own parsing would otherwise take the CPU both servers compete for. The bench
/// bodies hold no other `"seq":` or `"sentUs":` (the filler is all `x`).
pub fn read_delivery(data: &[u8]) -> Option<DeliveryMark> {
    fn number_after(data: &[u8], key: &[u8]) -> Option<u64> {
        let at = memchr::memmem::find(data, key)? + key.len();
        let digits = data[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&data[at..at + digits])
            .ok()?
            .parse()
            .ok()
    }
    let id = data
        .strip_prefix(b"{\"id\":\"")
        .and_then(|rest| rest.get(..36))
        .and_then(|uuid| Uuid::try_parse_ascii(uuid).ok());
    Some(DeliveryMark {
        id,
        seq: number_after(data, b"\"seq\":")?,
        sent_us: number_after(data, b"\"sentUs\":")?,
    })
}

/// The body published for event `seq`: the same bytes go to every server.
pub fn bench_event(event_type: &str, seq: u64, filler: &str) -> Bytes {
    Bytes::from(
        json!({
            "type": event_type, "resourceId": "bench", "resourceType": "bench",
            "payload": {"seq": seq, "sentUs": now_us(), "filler": filler},
        })
        .to_string(),
    )
}

/// Filler that makes [`bench_event`] about `event_bytes` long once stored.
pub fn filler(event_bytes: usize) -> String {
    "x".repeat(event_bytes.saturating_sub(260))
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What one subscriber saw. Sequence numbers are given out per publishing lane (`seq % lanes`),
/// and a lane publishes its next event only once the previous one was acknowledged, so within a
/// lane delivery order must follow `seq`; cPod's ids must also never go backwards.
pub struct Tally {
    pub latencies: Histogram<u64>,
    seen: Vec<u64>,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    last_id: Option<Uuid>,
    lane_last: Vec<Option<u64>>,
}

impl Tally {
    pub fn new(lanes: u64) -> Self {
        Self {
            latencies: new_histogram(),
            seen: Vec::new(),
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            last_id: None,
            lane_last: vec![None; lanes.max(1) as usize],
        }
    }

    pub fn record(&mut self, data: &[u8]) {
        let Some(event) = read_delivery(data) else {
            return;
        };
        let seq = event.seq;
        let _ = self
            .latencies
            .record(now_us().saturating_sub(event.sent_us).max(1));
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        }
        self.seen[word] |= 1 << bit;
        let lanes = self.lane_last.len() as u64;
        let lane = &mut self.lane_last[(seq % lanes) as usize];
        let mut backwards = lane.is_some_and(|last| seq <= last);
        *lane = Some(seq);
        if let Some(id) = event.id {
            backwards |= self.last_id.is_some_and(|last| id <= last);
            self.last_id = Some(id);
        }
        self.out_of_order += backwards as u64;
        self.received += 1;
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.seen.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// A set of running subscribers on one endpoint.
pub struct Subscribers {
    handles: Vec<tokio::task::JoinHandle<anyhow::Result<Tally>>>,
    /// How many events each subscriber must receive; `u64::MAX` until known.
    expected: Arc<AtomicU64>,
    done: Arc<AtomicUsize>,
    stop: CancellationToken,
}

/// Opens `count` subscribers and waits until every one of them is subscribed.
pub async fn open_subscribers(
    endpoint: &Endpoint,
    transport: Transport,
    count: usize,
    lanes: u64,
) -> anyhow::Result<Subscribers> {
    open_subscribers_held(endpoint, transport, count, lanes, None).await
}

/// As [`open_subscribers`]; with `hold`, SSE subscribers with a small receive buffer that read
/// nothing after subscribing until `hold` is cancelled (slow consumers).
pub async fn open_subscribers_held(
    endpoint: &Endpoint,
    transport: Transport,
    count: usize,
    lanes: u64,
    hold: Option<CancellationToken>,
) -> anyhow::Result<Subscribers> {
    let ready = Arc::new(AtomicUsize::new(0));
    let subscribers = Subscribers {
        handles: Vec::with_capacity(count),
        expected: Arc::new(AtomicU64::new(u64::MAX)),
        done: Arc::new(AtomicUsize::new(0)),
        stop: CancellationToken::new(),
    };
    let mut subscribers = subscribers;
    let failed = Arc::new(AtomicBool::new(false));
    for _ in 0..count {
        let endpoint = endpoint.clone();
        let (ready, expected, done, stop, failed, hold) = (
            ready.clone(),
            subscribers.expected.clone(),
            subscribers.done.clone(),
            subscribers.stop.clone(),
            failed.clone(),
            hold.clone(),
        );
        subscribers.handles.push(tokio::spawn(async move {
            let mut tally = Tally::new(lanes);
            let watch = Watch {
                ready: &ready,
                expected: &expected,
                done: &done,
                stop: &stop,
                hold: hold.as_ref(),
            };
            let result = match transport {
                Transport::Sse => subscribe_sse(&endpoint, &watch, &mut tally).await,
                Transport::Ws => subscribe_ws(&endpoint, &watch, &mut tally).await,
            };
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result.map(|()| tally)
        }));
        // Connection storms are part of no scenario: open a few hundred at a time.
        if subscribers.handles.len().is_multiple_of(250) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < count {
        if failed.load(Ordering::Relaxed) || Instant::now() > deadline {
            let opened = ready.load(Ordering::Relaxed);
            let error = subscribers.stop_and_first_error().await;
            bail!("only {opened} of {count} subscribers subscribed: {error}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(subscribers)
}

/// Everything the subscribers saw, together.
pub struct Seen {
    pub latencies: Histogram<u64>,
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub errors: usize,
}

impl Subscribers {
    /// Each subscriber is to receive `total` events; answers once all have or at `deadline`.
    pub async fn wait_for(&self, total: u64, deadline: Instant) {
        self.expected.store(total, Ordering::Relaxed);
        // Subscribers that already had everything when `total` became known count themselves on
        // their next check; poll them.
        while self.done.load(Ordering::Relaxed) < self.handles.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every subscriber and adds up what they saw.
    pub async fn finish(self) -> anyhow::Result<Seen> {
        self.stop.cancel();
        let mut seen = Seen {
            latencies: new_histogram(),
            received: 0,
            unique: 0,
            duplicates: 0,
            out_of_order: 0,
            errors: 0,
        };
        for handle in self.handles {
            match handle.await? {
                Ok(tally) => {
                    seen.latencies.add(&tally.latencies)?;
                    seen.received += tally.received;
                    seen.unique += tally.unique();
                    seen.duplicates += tally.duplicates;
                    seen.out_of_order += tally.out_of_order;
                }
                Err(e) => {
                    if seen.errors == 0 {
                        eprintln!("a subscriber failed: {e:#}");
                    }
                    seen.errors += 1;
                }
            }
        }
        Ok(seen)
    }

    async fn stop_and_first_error(self) -> String {
        self.stop.cancel();
        for handle in self.handles {
            if let Ok(Err(e)) = handle.await {
                return format!("{e:#}");
            }
        }
        "timed out".to_owned()
    }
}

/// What a subscriber task watches besides its socket.
struct Watch<'a> {
    ready: &'a AtomicUsize,
    expected: &'a AtomicU64,
    done: &'a AtomicUsize,
    stop: &'a CancellationToken,
    hold: Option<&'a CancellationToken>,
}

impl Watch<'_> {
    /// Counts the subscriber done (once) when it has every expected event.
    fn check_done(&self, tally: &Tally, counted: &mut bool) {
        if !*counted && tally.unique() >= self.expected.load(Ordering::Relaxed) {
            *counted = true;
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Hands each line of every complete SSE message in `buffer` to `on_line`, and leaves the
/// incomplete rest in `buffer`.
pub fn sse_lines(
    buffer: &mut BytesMut,
    mut on_line: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut start = 0;
    while let Some(end) = memchr::memmem::find(&buffer[start..], b"\n\n") {
        for line in buffer[start..start + end].split(|&b| b == b'\n') {
            on_line(line)?;
        }
        start += end + 2;
    }
    let _ = buffer.split_to(start);
    Ok(())
}

async fn subscribe_sse(
    endpoint: &Endpoint,
    watch: &Watch<'_>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if watch.hold.is_some() {
        // A slow consumer: a small window, so the server sees it fall behind at once.
        socket.set_recv_buffer_size(8 * 1024)?;
    }
    let stream = socket.connect(endpoint.authority.parse()?).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::get(&endpoint.sse_path)
        .header("host", &endpoint.authority)
        .header("accept", "text/event-stream");
    if let Some(auth) = &endpoint.subscribe_auth {
        request = request.header("authorization", auth);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await?;
    if response.status() != 200 {
        bail!("the stream answered {}", response.status());
    }
    watch.ready.fetch_add(1, Ordering::Relaxed);
    if let Some(hold) = watch.hold {
        tokio::select! {
            _ = hold.cancelled() => {}
            _ = watch.stop.cancelled() => return Ok(()),
        }
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    let mut counted = false;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = watch.stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                watch.check_done(tally, &mut counted);
                continue;
            }
        };
        let Ok(chunk) = frame.context("the stream ended")??.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&chunk);
        sse_lines(&mut buffer, |line| {
            if let Some(data) = line.strip_prefix(b"data: ") {
                tally.record(data);
            }
            Ok(())
        })?;
        watch.check_done(tally, &mut counted);
    }
}

async fn subscribe_ws(
    endpoint: &Endpoint,
    watch: &Watch<'_>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request =
        format!("ws://{}{}", endpoint.authority, endpoint.ws_path).into_client_request()?;
    if let Some(auth) = &endpoint.subscribe_auth {
        request.headers_mut().insert("authorization", auth.parse()?);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    if let Some(frame) = endpoint.ws_subscribe_frame() {
        socket.send(Message::text(frame)).await?;
        // {"op":"subscribed",…} comes first.
        loop {
            let message = socket.next().await.context("the socket closed")??;
            if let Message::Text(text) = message {
                if text.contains("\"subscribed\"") {
                    break;
                }
                bail!("unexpected first frame: {text}");
            }
        }
    }
    watch.ready.fetch_add(1, Ordering::Relaxed);
    let mut counted = false;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = watch.stop.cancelled() => break,
            _ = tick.tick() => {
                watch.check_done(tally, &mut counted);
                continue;
            }
        };
        let Message::Text(text) = message.context("the socket closed")?? else {
            continue;
        };
        match endpoint.ws_framing {
            WsFraming::Raw => tally.record(text.as_bytes()),
            // {"op":"event","subscription":"b","event":{…}}: the event starts after `"event":`.
            WsFraming::CpodEnvelope => {
                let bytes = text.as_bytes();
                if let Some(at) = bytes.windows(8).position(|w| w == b"\"event\":") {
                    let mut event = &bytes[at + 8..];
                    if event.last() == Some(&b'}') {
                        event = &event[..event.len() - 1];
                    }
                    tally.record(event);
                }
            }
        }
        watch.check_done(tally, &mut counted);
    }
    let _ = socket.close(None).await;
    Ok(())
}

/// One keep-alive HTTP/1.1 connection that publishes to an endpoint.
pub struct Publisher {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    endpoint: Endpoint,
}

impl Publisher {
    pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<Publisher> {
        let stream = tokio::net::TcpStream::connect(&endpoint.authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("a publishing connection failed: {e}");
            }
        });
        Ok(Publisher {
            sender,
            endpoint: endpoint.clone(),
        })
    }

    /// POSTs one body; answers whether the server acknowledged it (2xx).
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<bool> {
        let mut request = Request::post(path)
            .header("host", &self.endpoint.authority)
            .header("content-type", "application/json");
        if let Some(auth) = &self.endpoint.publish_auth {
            request = request.header("authorization", auth);
        }
        let status = self.send(request.body(Full::new(body))?).await?;
        Ok(status.is_success())
    }

    /// GETs `path` (e.g. to keep the connection from its idle timeout); answers the status.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<hyper::StatusCode> {
        let request = Request::get(path)
            .header("host", &self.endpoint.authority)
            .body(Full::new(Bytes::new()))?;
        self.send(request).await
    }

    /// Sends one request and reads its whole answer.
    async fn send(
        &mut self,
        mut request: Request<Full<Bytes>>,
    ) -> anyhow::Result<hyper::StatusCode> {
        // hyper can find the connection not ready yet right after a large response; the
        // request is then handed back unsent, and sent again once it is.
        let response = loop {
            self.sender.ready().await?;
            match self.sender.try_send_request(request).await {
                Ok(response) => break response,
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        request = unsent;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    None => return Err(error.into_error().into()),
                },
            }
        };
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }

    pub async fn publish(&mut self, body: Bytes) -> anyhow::Result<bool> {
        let path = self.endpoint.publish_path.clone();
        self.post(&path, body).await
    }
}

/// An open-loop publishing plan.
pub struct Publishing {
    pub rate: f64,
    pub total: u64,
    pub connections: usize,
    pub event_bytes: usize,
}

/// Publishes `total` events, event i at `start + i / rate`, from several connections (lane
/// `i % connections`); each carries its `seq` and its send time (`sentUs`) in the payload.
pub async fn publish(endpoint: &Endpoint, plan: &Publishing) -> anyhow::Result<()> {
    let start = Instant::now() + Duration::from_millis(100);
    let filler = filler(plan.event_bytes);
    let total = plan.total;
    let mut tasks = Vec::new();
    for lane in 0..plan.connections as u64 {
        let (endpoint, filler, rate, lanes) = (
            endpoint.clone(),
            filler.clone(),
            plan.rate,
            plan.connections as u64,
        );
        tasks.push(tokio::spawn(async move {
            let mut publisher = Publisher::connect(&endpoint).await?;
            let mut seq = lane;
            while seq < total {
                tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
                if !publisher
                    .publish(bench_event(&endpoint.event_type, seq, &filler))
                    .await?
                {
                    bail!("{} refused a publish", endpoint.name);
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

/// What closed-loop publishing achieved.
pub struct ClosedLoop {
    /// Events acknowledged in the measured window.
    pub events: u64,
    /// Events acknowledged in any phase, warm-up included.
    pub acknowledged: u64,
    /// Requests refused in the measured window.
    pub errors: u64,
    pub elapsed: f64,
    /// Request latencies in the measured window.
    pub latencies: Histogram<u64>,
}

impl Default for ClosedLoop {
    fn default() -> Self {
        Self {
            events: 0,
            acknowledged: 0,
            errors: 0,
            elapsed: 0.0,
            latencies: new_histogram(),
        }
    }
}

/// What each closed-loop request posts: `path`, and a body of `events` events made from the
/// lane's next sequence number.
#[derive(Clone)]
pub struct RequestShape {
    pub path: String,
    pub events: u64,
    pub body: Arc<dyn Fn(u64) -> Bytes + Send + Sync>,
}

impl RequestShape {
    /// One bench event per request to the endpoint's publishing path.
    pub fn single(endpoint: &Endpoint, event_bytes: usize) -> RequestShape {
        let (event_type, filler) = (endpoint.event_type.clone(), filler(event_bytes));
        RequestShape {
            path: endpoint.publish_path.clone(),
            events: 1,
            body: Arc::new(move |seq| bench_event(&event_type, seq, &filler)),
        }
    }
}

/// Publishes as fast as the server acknowledges, from `connections` keep-alive connections, for
/// `warmup` then a measured `duration`. `on_window` runs at the start and end of the measured
/// window (e.g. to read the server's CPU time). Events count as acknowledged on a 2xx.
pub async fn publish_closed_loop(
    endpoint: &Endpoint,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    shape: &RequestShape,
    mut on_window: impl FnMut(),
) -> anyhow::Result<ClosedLoop> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for lane in 0..connections as u64 {
        let (endpoint, measuring, stop, shape) = (
            endpoint.clone(),
            measuring.clone(),
            stop.clone(),
            shape.clone(),
        );
        let lanes = connections as u64;
        tasks.push(tokio::spawn(async move {
            let mut publisher = Publisher::connect(&endpoint).await?;
            let mut result = ClosedLoop::default();
            // Lane `lane` numbers its requests lane, lane + lanes, …; request r carries the
            // events r × events up to (r + 1) × events − 1, so no two lanes share a number.
            let mut seq = lane * shape.events;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = publisher.post(&shape.path, (shape.body)(seq)).await?;
                seq += lanes * shape.events;
                result.acknowledged += ok as u64 * shape.events;
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        result.events += shape.events;
                        let _ = result
                            .latencies
                            .record((started.elapsed().as_micros() as u64).max(1));
                    } else {
                        result.errors += 1;
                    }
                }
            }
            anyhow::Ok(result)
        }));
    }
    tokio::time::sleep(warmup).await;
    on_window();
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    on_window();
    stop.store(true, Ordering::Relaxed);
    let mut total = ClosedLoop {
        elapsed,
        ..ClosedLoop::default()
    };
    for task in tasks {
        let lane = task.await??;
        total.events += lane.events;
        total.acknowledged += lane.acknowledged;
        total.errors += lane.errors;
        total.latencies.add(&lane.latencies)?;
    }
    Ok(total)
}

/// Latency percentiles, in milliseconds.
#[derive(Serialize, Clone, Copy, Default, Debug)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// One fan-out measurement's settings.
#[derive(Clone)]
pub struct FanoutSpec {
    pub subscribers: usize,
    pub transport: Transport,
    pub rate: f64,
    pub duration: Duration,
    pub event_bytes: usize,
    pub publishers: usize,
    pub drain: Duration,
    /// Isolates this measurement's messages from earlier ones on the same server.
    pub channel: String,
}

/// One fan-out measurement's figures.
#[derive(Serialize, Clone, Debug)]
pub struct FanoutFigures {
    pub published: u64,
    pub deliveries_per_s: f64,
    pub latency_ms: Percentiles,
    pub missed: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub subscriber_errors: usize,
    /// Server CPU time per delivery, when this tool started the server.
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_idle_mib: Option<f64>,
    pub rss_kb_per_idle_subscriber: Option<f64>,
}

/// Runs one fan-out measurement on `endpoint`; `server` (if this tool started it) gives CPU
/// time and memory.
pub async fn measure(
    endpoint: &Endpoint,
    server: Option<&Peer>,
    spec: &FanoutSpec,
) -> anyhow::Result<FanoutFigures> {
    let endpoint = endpoint.channel(&spec.channel);
    let total = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    if total == 0 {
        bail!("the rate × the duration publishes nothing");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = server.map(Peer::rss_kib);
    let subscribers = open_subscribers(
        &endpoint,
        spec.transport,
        spec.subscribers,
        spec.publishers as u64,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = server.map(Peer::rss_kib);

    let cpu_before = server.map(Peer::cpu_seconds);
    let started = Instant::now();
    publish(
        &endpoint,
        &Publishing {
            rate: spec.rate,
            total,
            connections: spec.publishers,
            event_bytes: spec.event_bytes,
        },
    )
    .await?;
    let published_in = started.elapsed();
    subscribers
        .wait_for(total, Instant::now() + spec.drain)
        .await;
    let delivered_in = started.elapsed();
    let cpu_after = server.map(Peer::cpu_seconds);
    let seen = subscribers.finish().await?;
    let expected = total * spec.subscribers as u64;
    Ok(FanoutFigures {
        published: total,
        deliveries_per_s: seen.received as f64
            / delivered_in.as_secs_f64().max(published_in.as_secs_f64()),
        latency_ms: Percentiles::of(&seen.latencies),
        missed: expected.saturating_sub(seen.unique),
        duplicated: seen.duplicates,
        out_of_order: seen.out_of_order,
        subscriber_errors: seen.errors,
        cpu_us_per_delivery: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| (after - before) * 1e6 / seen.received.max(1) as f64),
        rss_idle_mib: rss_idle.map(|kib| kib as f64 / 1024.0),
        rss_kb_per_idle_subscriber: rss_before.zip(rss_idle).map(|(before, idle)| {
            idle.saturating_sub(before) as f64 * 1.024 / spec.subscribers as f64
        }),
    })
}

/// `cpod-bench fanout`: one measurement against our broker.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let peer;
    let (endpoint, server) = match (&args.broker.url, &args.broker.admin_key) {
        (Some(url), Some(admin)) => {
            let base = url.trim_end_matches('/');
            let service = super::create_key(base, admin, "service").await?;
            let reader = super::create_key(base, admin, "reader").await?;
            (Endpoint::cpod(base, &service, &reader), None)
        }
        _ => {
            peer = Peer::start_cpod(&args.broker).await?;
            (peer.endpoint.clone(), Some(&peer))
        }
    };
    let spec = FanoutSpec {
        subscribers: args.subscribers,
        transport: args.transport,
        rate: args.rate,
        duration: args.duration,
        event_bytes: args.event_bytes,
        publishers: args.publishers,
        drain: args.drain,
        channel: "bench".into(),
    };
    let figures = measure(&endpoint, server, &spec).await?;
    println!(
        "scenario      fanout: {} {} subscribers, {} events/s for {:?}, ~{} B per event",
        args.subscribers,
        args.transport.label(),
        args.rate,
        args.duration,
        args.event_bytes
    );
    print_figures(&figures);
    Ok(())
}

pub fn print_figures(figures: &FanoutFigures) {
    println!("published     {} events", figures.published);
    println!("deliveries/s  {:.0}", figures.deliveries_per_s);
    let l = figures.latency_ms;
    println!(
        "latency       p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
        l.p50, l.p99, l.p999, l.max
    );
    println!(
        "correctness   missed {}   duplicated {}   out of order {}   (subscriber errors: {})",
        figures.missed, figures.duplicated, figures.out_of_order, figures.subscriber_errors
    );
    if let Some(cpu) = figures.cpu_us_per_delivery {
        println!("server CPU    {cpu:.2} µs per delivery");
    }
    if let (Some(idle), Some(per)) = (figures.rss_idle_mib, figures.rss_kb_per_idle_subscriber) {
        println!(
            "server RSS    {idle:.1} MiB idle with subscribers; {per:.1} KB per idle subscriber"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64, id: Option<&str>) -> Vec<u8> {
        // cPod's events begin with their id.
        let payload = json!({"seq": seq, "sentUs": now_us()});
        match id {
            Some(id) => json!({"id": id, "payload": payload}),
            None => json!({"payload": payload}),
        }
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_tally_counts_distinct_events_and_duplicates() {
        let mut tally = Tally::new(2);
        for seq in [0, 1, 2, 2, 3, 1] {
            tally.record(&delivery(seq, None));
        }
        assert_eq!(tally.received, 6);
        assert_eq!(tally.unique(), 4);
        assert_eq!(tally.duplicates, 2);
    }

    #[test]
    fn order_is_checked_within_each_publishing_lane() {
        // Lanes 0 (even) and 1 (odd) interleave freely; within a lane, seq must grow.
        let mut tally = Tally::new(2);
        for seq in [1, 0, 3, 2, 5, 4] {
            tally.record(&delivery(seq, None));
        }
        assert_eq!(tally.out_of_order, 0);
        tally.record(&delivery(6, None));
        tally.record(&delivery(200, None)); // far ahead: a gap, not disorder
        tally.record(&delivery(8, None)); // lane 0 went back from 200
        assert_eq!(tally.out_of_order, 1);
        assert_eq!(tally.unique(), 9);
    }

    #[test]
    fn cpod_ids_must_never_go_backwards() {
        let mut tally = Tally::new(4);
        tally.record(&delivery(0, Some("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f62")));
        tally.record(&delivery(1, Some("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f61")));
        assert_eq!(tally.out_of_order, 1);
    }

    #[test]
    fn the_quick_reader_agrees_with_a_json_parser() {
        // A delivery as the broker writes it: the wire form itself, so that a change of its
        // field order (the quick reader expects `id` first) fails here.
        let cpod = serde_json::to_vec(&cpod_proto::Event {
            id: "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f62".into(),
            event_type: "custom.bench".into(),
            resource_id: "bench".into(),
            resource_type: "bench".into(),
            organization_id: "bench".into(),
            workspace_id: None,
            payload: json!({"seq": 42, "sentUs": 1764370000123456u64, "filler": "xxxx"})
                .as_object()
                .cloned()
                .unwrap(),
            timestamp: "2026-11-28T22:31:40.717Z".into(),
            traceparent: None,
            tracestate: None,
        })
        .unwrap();
        let nchan = br#"{"type":"custom.bench","resourceId":"bench","resourceType":"bench","payload":{"seq":7,"sentUs":99,"filler":"xx"}}"#;
        for body in [&cpod[..], &nchan[..]] {
            let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(
                read_delivery(body).unwrap(),
                DeliveryMark {
                    id: parsed["id"].as_str().map(|id| Uuid::parse_str(id).unwrap()),
                    seq: parsed["payload"]["seq"].as_u64().unwrap(),
                    sent_us: parsed["payload"]["sentUs"].as_u64().unwrap(),
                }
            );
        }
        assert!(read_delivery(&cpod).unwrap().id.is_some());
    }

    #[test]
    fn sse_lines_come_only_from_whole_messages_across_chunks() {
        let mut buffer = BytesMut::new();
        let mut lines = Vec::new();
        for chunk in ["retry: 3000\n\nid: a\nda", "ta: {}\n\nid: b\n", "data: x\n"] {
            buffer.extend_from_slice(chunk.as_bytes());
            sse_lines(&mut buffer, |line| {
                lines.push(String::from_utf8(line.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(lines, ["retry: 3000", "id: a", "data: {}"]);
        assert_eq!(
            &buffer[..],
            b"id: b\ndata: x\n",
            "the unfinished message waits"
        );
    }

    #[test]
    fn what_is_not_a_bench_event_is_ignored() {
        let mut tally = Tally::new(1);
        tally.record(b"{\"hello\":1}");
        tally.record(b"not json");
        assert_eq!(tally.received, 0);
    }
}
