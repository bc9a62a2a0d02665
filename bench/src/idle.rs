//! Many idle SSE subscribers on one broker (`cpod-bench idle`, and the last of `compare`'s
//! scenarios on our broker alone): the broker's RSS in all and per subscriber, the time to open
//! the subscriptions, and the time one published event takes to reach all of them.
//!
//! Scale is the point (issue 14 asks for 100,000), and two limits stand in the way on the client
//! side, which this module owns:
//! - **open files**: one process holds at most its hard `RLIMIT_NOFILE` of sockets, and the hard
//!   limit cannot be raised from inside (not even by root in a container). The subscribers are
//!   therefore [`split`] over several client processes — this binary re-executed with the hidden
//!   `idle-client` subcommand — each of which raises its soft limit to the hard one.
//! - **ports**: one source address has ~28,000 ephemeral ports. Every client socket is bound to a
//!   [`source_address`] in 127.0.0.0/8 before it connects (at most [`PER_ADDRESS`] sockets per
//!   address, the port chosen at connect time), leaving 127.0.0.1 to the publisher.
//!
//! The broker has the same open-file limit. When it cannot take more, new connections wait in its
//! listen backlog unanswered: opening then stalls, and after [`STALL`] without a new subscriber
//! the harness stops opening, says how many the broker held and what its limit was (from `/proc`,
//! when this tool started it), and reports every figure at that count. Every phase is bounded in
//! time, and a client process whose parent is gone exits (its stdin closes).

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::BrokerArgs;
use super::fanout::{self, Percentiles, Publisher, new_histogram, read_delivery, sse_lines};
use super::peer::{Endpoint, Peer};
use super::table::number;

/// Client sockets bound to one source address, at most.
pub const PER_ADDRESS: usize = 64;
/// Source addresses: 127.0.b.c for b in 0..=255 and c in 1..=254 (no .0 or .255 host part),
/// without 127.0.0.1.
const ADDRESS_SLOTS: usize = 256 * 254 - 1;
/// Descriptors a client process keeps for itself (runtime, stdio, pipes) besides its sockets.
const RESERVED_FDS: u64 = 256;
/// Subscriptions being opened at once by one client process.
const OPENING_AT_ONCE: usize = 128;
/// How long one subscription may take to connect and get its answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Opening stops after this long without a new subscriber.
pub const STALL: Duration = Duration::from_secs(10);
/// Opening stops after this long in any case.
const OPENING_DEADLINE: Duration = Duration::from_secs(600);
/// How long the event may take to reach everyone.
const DRAIN: Duration = Duration::from_secs(30);
/// Read buffer of each client connection (hyper's default grows to 400 KiB).
const READ_BUFFER: usize = 4096;
/// The subscribers' `Authorization` header, handed to client processes out of their command
/// line (which any user can read).
const AUTH_ENV: &str = "CPOD_BENCH_IDLE_AUTH";

/// The source address of subscriber `index` (counted over all client processes): the first
/// [`PER_ADDRESS`] subscribers share 127.0.0.2, the next 127.0.0.3, and so on up to
/// 127.0.255.254, then round again.
pub fn source_address(index: usize) -> Ipv4Addr {
    // Slot 0 is grid cell 1: cell 0 would be 127.0.0.1.
    let cell = (index / PER_ADDRESS) % ADDRESS_SLOTS + 1;
    Ipv4Addr::new(127, 0, (cell / 254) as u8, (cell % 254 + 1) as u8)
}

/// Source addresses used by `subscribers` subscribers.
pub fn addresses_used(subscribers: usize) -> usize {
    subscribers.div_ceil(PER_ADDRESS).min(ADDRESS_SLOTS)
}

/// `n` subscribers over as few processes as hold them, `capacity` at most each, as evenly as
/// possible (shares differ by one at most).
pub fn split(n: usize, capacity: usize) -> Vec<usize> {
    assert!(capacity > 0, "a process holds at least one subscriber");
    let processes = n.div_ceil(capacity);
    (0..processes)
        .map(|i| n / processes + usize::from(i < n % processes))
        .collect()
}

#[derive(Args, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Idle SSE subscribers to open (fewer are reported if the broker cannot hold them).
    #[arg(long, default_value_t = 100_000)]
    idle_subscribers: usize,
}

/// The hidden subcommand a client process runs.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The broker's `host:port`.
    #[arg(long)]
    authority: String,
    /// The stream's path and query.
    #[arg(long)]
    path: String,
    /// Index of this process's first subscriber among all of them (picks its source addresses).
    #[arg(long)]
    first: usize,
    /// Subscribers this process opens.
    #[arg(long)]
    count: usize,
}

/// What a client process has seen so far; its progress lines and its report carry it.
#[derive(Serialize, Deserialize, Default, Clone, PartialEq, Debug)]
pub struct Progress {
    pub subscribed: usize,
    pub failed: usize,
    /// Still unanswered when opening was halted, or never tried.
    pub abandoned: usize,
    /// Subscribed, then the stream ended or failed.
    pub ended: usize,
    pub received: usize,
    pub duplicated: u64,
    pub first_error: Option<String>,
}

impl Progress {
    fn add(&mut self, other: &Progress) {
        self.subscribed += other.subscribed;
        self.failed += other.failed;
        self.abandoned += other.abandoned;
        self.ended += other.ended;
        self.received += other.received;
        self.duplicated += other.duplicated;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// One line of a client process's stdout.
#[derive(Serialize, Deserialize)]
enum ClientMessage {
    Progress(Progress),
    /// The last line: receipt latencies in µs, one per subscriber that got the event.
    Report {
        progress: Progress,
        latencies_us: Vec<u64>,
    },
}

#[derive(Serialize, Clone, Debug)]
pub struct IdleFigures {
    pub requested: usize,
    /// Subscribers the broker held (answered and still open when the event was published).
    pub subscribers: usize,
    pub failed: usize,
    pub abandoned: usize,
    pub first_error: Option<String>,
    /// Why fewer than requested, if so.
    pub shortfall: Option<String>,
    pub client_processes: usize,
    /// Source addresses given to the requested subscribers.
    pub source_addresses: usize,
    /// From the first connection to the last subscriber answered.
    pub opening_seconds: f64,
    /// The broker's open descriptors with the subscribers held, and its limit (when this tool
    /// started it).
    pub broker_open_files: Option<u64>,
    pub broker_open_file_limit: Option<u64>,
    pub rss_fresh_mib: Option<f64>,
    pub rss_mib: Option<f64>,
    pub kb_per_subscriber: Option<f64>,
    /// Publish to receipt of the one event, over the subscribers that got it.
    pub delivery_ms: Percentiles,
    pub received: usize,
    pub missed: usize,
    pub duplicated: u64,
}

impl IdleFigures {
    pub fn faults(&self) -> u64 {
        self.missed as u64 + self.duplicated
    }

    /// Several lines for a terminal.
    pub fn print(&self) {
        println!(
            "subscribers   {} held of {} requested ({} failed, {} unanswered when opening stopped), over {} client process(es) and {} source addresses",
            number(self.subscribers as f64),
            number(self.requested as f64),
            self.failed,
            self.abandoned,
            self.client_processes,
            number(self.source_addresses as f64)
        );
        if let Some(shortfall) = &self.shortfall {
            println!("LIMIT         {shortfall}");
        }
        println!(
            "opening       {:.1} s ({}/s)",
            self.opening_seconds,
            number(self.subscribers as f64 / self.opening_seconds.max(1e-3))
        );
        if let (Some(rss), Some(per)) = (self.rss_mib, self.kb_per_subscriber) {
            println!(
                "broker RSS    {rss:.1} MiB with the subscribers ({:.1} MiB fresh): {per:.2} KB per subscriber",
                self.rss_fresh_mib.unwrap_or(f64::NAN)
            );
        }
        if let (Some(open), Some(limit)) = (self.broker_open_files, self.broker_open_file_limit) {
            println!("broker fds    {open} open, limit {limit}");
        }
        let d = self.delivery_ms;
        println!(
            "one event     reached {} of {}: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms; missed {}, duplicated {}",
            number(self.received as f64),
            number(self.subscribers as f64),
            d.p50,
            d.p99,
            d.max,
            self.missed,
            self.duplicated
        );
    }
}

/// `cpod-bench idle`: the measurement on a fresh broker (or `--url`'s, without its memory).
pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let peer;
    let (endpoint, server) = match (&args.broker.url, &args.broker.admin_key) {
        (Some(url), Some(admin)) => {
            let base = url.trim_end_matches('/');
            let service = super::create_key(base, admin, "service").await?;
            let reader = super::create_key(base, admin, "reader").await?;
            (Endpoint::cpod(base, &service, &reader), None)
        }
        _ => {
            // The broker inherits the raised limit; it raises its own too.
            rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-file limit")?;
            peer = Peer::start_cpod(&args.broker).await?;
            (peer.endpoint.clone(), Some(&peer))
        }
    };
    println!(
        "scenario      {} idle SSE subscribers on one broker, then one event to all of them",
        number(args.idle_subscribers as f64)
    );
    let figures = measure(&endpoint, server, args.idle_subscribers).await?;
    figures.print();
    Ok(())
}

/// A running client process (its pipes are read and written by plain threads: they carry a
/// few lines a second).
struct Client {
    child: Child,
    stdin: ChildStdin,
}

/// What the parent knows of each client process.
#[derive(Default)]
struct Seen {
    progress: Progress,
    latencies_us: Option<Vec<u64>>,
    exited: bool,
}

struct Clients {
    clients: Vec<Client>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Clients {
    /// Starts one client process per share, reading their lines as they come.
    fn start(endpoint: &Endpoint, shares: &[usize]) -> anyhow::Result<Clients> {
        let me = std::env::current_exe()?;
        let seen = Arc::new(Mutex::new(
            shares.iter().map(|_| Seen::default()).collect::<Vec<_>>(),
        ));
        let mut clients = Vec::new();
        let mut first = 0;
        for (i, &count) in shares.iter().enumerate() {
            let mut command = Command::new(&me);
            command
                .args(["idle-client", "--authority", &endpoint.authority])
                .args(["--path", &endpoint.sse_path])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if let Some(auth) = &endpoint.subscribe_auth {
                command.env(AUTH_ENV, auth);
            }
            let mut child = command.spawn().context("cannot start a client process")?;
            let stdin = child.stdin.take().context("piped stdin")?;
            let lines =
                std::io::BufReader::new(child.stdout.take().context("piped stdout")?).lines();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let mut all = seen.lock().expect("not poisoned");
                    match serde_json::from_str(&line) {
                        Ok(ClientMessage::Progress(progress)) => all[i].progress = progress,
                        Ok(ClientMessage::Report {
                            progress,
                            latencies_us,
                        }) => {
                            all[i].progress = progress;
                            all[i].latencies_us = Some(latencies_us);
                        }
                        Err(e) => eprintln!("client process {i}: unreadable line ({e}): {line}"),
                    }
                }
                seen.lock().expect("not poisoned")[i].exited = true;
            });
            clients.push(Client { child, stdin });
            first += count;
        }
        Ok(Clients { clients, seen })
    }

    fn total(&self) -> Progress {
        let mut total = Progress::default();
        for s in self.seen.lock().expect("not poisoned").iter() {
            total.add(&s.progress);
        }
        total
    }

    /// Fails if a client process exited before its report.
    fn check_alive(&self) -> anyhow::Result<()> {
        let seen = self.seen.lock().expect("not poisoned");
        if let Some(i) = seen
            .iter()
            .position(|s| s.exited && s.latencies_us.is_none())
        {
            bail!("client process {i} exited before its report (see its error above)");
        }
        Ok(())
    }

    fn tell(&mut self, command: &str) -> anyhow::Result<()> {
        for client in &mut self.clients {
            writeln!(client.stdin, "{command}").context("a client process is gone")?;
            client.stdin.flush()?;
        }
        Ok(())
    }

    /// Asks every client process for its report and waits for them to exit.
    async fn reports(mut self) -> anyhow::Result<(Progress, Vec<u64>)> {
        self.tell("report")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for client in &mut self.clients {
            while client.child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    bail!("a client process did not report within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // The readers have the last lines once the pipes close.
        while !self
            .seen
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|s| s.exited)
        {
            if Instant::now() > deadline {
                bail!("a client process's output did not end");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = std::mem::take(&mut *self.seen.lock().expect("not poisoned"));
        let mut total = Progress::default();
        let mut latencies = Vec::new();
        for (i, s) in seen.into_iter().enumerate() {
            total.add(&s.progress);
            latencies.extend(
                s.latencies_us
                    .with_context(|| format!("client process {i} exited without its report"))?,
            );
        }
        Ok((total, latencies))
    }
}

impl Drop for Clients {
    /// Client processes end with the run, whichever way it ends.
    fn drop(&mut self) {
        for client in &mut self.clients {
            if client.child.try_wait().is_ok_and(|status| status.is_none()) {
                let _ = client.child.kill();
                let _ = client.child.wait();
            }
        }
    }
}

/// Opens `requested` idle SSE subscribers on `endpoint` (on the `idle` event type), publishes
/// one event, and measures; `server`, if this tool started it, gives memory and descriptors.
pub async fn measure(
    endpoint: &Endpoint,
    server: Option<&Peer>,
    requested: usize,
) -> anyhow::Result<IdleFigures> {
    if requested == 0 {
        bail!("--idle-subscribers must be at least 1");
    }
    let endpoint = endpoint.channel("idle");
    let limit =
        rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-file limit")?;
    let capacity = limit
        .checked_sub(RESERVED_FDS)
        .filter(|c| *c > 0)
        .with_context(|| {
            format!(
                "the open-file limit ({limit}) leaves no room for subscribers in a client process"
            )
        })?;
    let shares = split(requested, capacity.min(usize::MAX as u64) as usize);
    println!(
        "   {} subscribers over {} client process(es) of up to {} (open-file limit {limit}), from {} source addresses",
        number(requested as f64),
        shares.len(),
        number(capacity as f64),
        number(addresses_used(requested) as f64)
    );

    // The publisher connects first (a broker at its limit accepts no new connection) and is
    // kept busy so that the broker's keep-alive timeout does not close it.
    let mut publisher = Publisher::connect(&endpoint).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_fresh = server.map(Peer::rss_kib);

    let started = Instant::now();
    let mut clients = Clients::start(&endpoint, &shares)?;
    let mut last_count = 0;
    let mut last_gain = started;
    let mut last_print = started;
    let mut last_ping = started;
    let stopped_because = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        clients.check_alive()?;
        let total = clients.total();
        let now = Instant::now();
        if total.subscribed > last_count {
            (last_count, last_gain) = (total.subscribed, now);
        }
        if now - last_print >= Duration::from_secs(2) {
            last_print = now;
            println!(
                "   {:>5.1} s: {} subscribed, {} failed",
                (now - started).as_secs_f64(),
                number(total.subscribed as f64),
                total.failed
            );
        }
        if now - last_ping >= Duration::from_secs(1) {
            last_ping = now;
            publisher
                .get("/healthz")
                .await
                .context("the publisher's connection failed while the subscribers were opening")?;
        }
        if total.subscribed + total.failed + total.abandoned >= requested {
            break None;
        }
        if now - last_gain >= STALL {
            break Some(format!("no new subscriber for {} s", STALL.as_secs()));
        }
        if now - started >= OPENING_DEADLINE {
            break Some(format!(
                "opening took longer than {} s",
                OPENING_DEADLINE.as_secs()
            ));
        }
    };
    let opening_seconds = (last_gain - started).as_secs_f64();
    if let Some(reason) = &stopped_because {
        println!("   opening stopped: {reason}");
        clients.tell("halt")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let total = clients.total();
            if total.subscribed + total.failed + total.abandoned >= requested
                || Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    publisher.get("/healthz").await?;
    let rss = server.map(Peer::rss_kib);
    let descriptors = server.and_then(Peer::open_files);
    let held = clients.total();

    let published = Instant::now();
    let body = fanout::bench_event(&endpoint.event_type, 0, &fanout::filler(300));
    if !publisher
        .publish(body)
        .await
        .context("publishing the event to the idle subscribers")?
    {
        bail!("the broker refused the event for the idle subscribers");
    }
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        clients.check_alive()?;
        let total = clients.total();
        if total.received + total.ended >= total.subscribed || published.elapsed() >= DRAIN {
            break;
        }
    }
    let (total, latencies_us) = clients.reports().await?;

    let mut histogram = new_histogram();
    for latency in &latencies_us {
        let _ = histogram.record((*latency).max(1));
    }
    let subscribers = held.subscribed - held.ended;
    let shortfall = (subscribers < requested).then(|| {
        let mut why = format!(
            "the broker held {} of the {} subscribers requested ({} failed, {} unanswered when opening stopped, {} ended{})",
            number(subscribers as f64),
            number(requested as f64),
            held.failed,
            held.abandoned,
            held.ended,
            stopped_because
                .as_ref()
                .map_or(String::new(), |r| format!(": {r}"))
        );
        match descriptors {
            Some((open, limit)) if open + 64 >= limit => why.push_str(&format!(
                "; it is at its open-file limit: {open} descriptors open, limit {limit} (raise the broker's hard `ulimit -n` to hold more)"
            )),
            Some((open, limit)) => {
                why.push_str(&format!("; the broker has {open} descriptors open, limit {limit}"))
            }
            None => why.push_str("; the broker's descriptors are unknown (not started by this tool)"),
        }
        if let Some(error) = &held.first_error {
            why.push_str(&format!("; first error: {error}"));
        }
        why
    });
    let kib_per = |fresh: u64, with: u64| {
        with.saturating_sub(fresh) as f64 * 1.024 / subscribers.max(1) as f64
    };
    Ok(IdleFigures {
        requested,
        subscribers,
        failed: held.failed,
        abandoned: held.abandoned,
        first_error: held.first_error.clone(),
        shortfall,
        client_processes: shares.len(),
        source_addresses: addresses_used(requested),
        opening_seconds,
        broker_open_files: descriptors.map(|d| d.0),
        broker_open_file_limit: descriptors.map(|d| d.1),
        rss_fresh_mib: rss_fresh.map(|kib| kib as f64 / 1024.0),
        rss_mib: rss.map(|kib| kib as f64 / 1024.0),
        kb_per_subscriber: rss_fresh.zip(rss).map(|(fresh, with)| kib_per(fresh, with)),
        delivery_ms: Percentiles::of(&histogram),
        received: total.received,
        missed: subscribers.saturating_sub(total.received),
        duplicated: total.duplicated,
    })
}

/// A client process's counters, shared by its subscriber tasks.
#[derive(Default)]
struct ClientState {
    subscribed: AtomicUsize,
    failed: AtomicUsize,
    abandoned: AtomicUsize,
    ended: AtomicUsize,
    received: AtomicUsize,
    duplicated: AtomicU64,
    first_error: Mutex<Option<String>>,
    latencies_us: Mutex<Vec<u64>>,
}

impl ClientState {
    fn progress(&self) -> Progress {
        Progress {
            subscribed: self.subscribed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            ended: self.ended.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            first_error: self.first_error.lock().expect("not poisoned").clone(),
        }
    }

    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .expect("not poisoned")
            .get_or_insert(error);
    }
}

/// Where and how a client process's subscribers subscribe.
struct ClientSpec {
    target: SocketAddr,
    authority: String,
    path: String,
    auth: Option<String>,
}

/// `cpod-bench idle-client`: opens `--count` subscribers, prints its [`Progress`] as JSON lines
/// (when it changes, every 100 ms), and on `report` from stdin prints the [`ClientMessage::Report`]
/// and exits; `halt` stops opening; the end of stdin ends it.
pub async fn client(args: ClientArgs) -> anyhow::Result<()> {
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-file limit")?;
    let (first, count) = (args.first, args.count);
    let spec = Arc::new(ClientSpec {
        target: args.authority.parse().context("--authority is host:port")?,
        authority: args.authority,
        path: args.path,
        auth: std::env::var(AUTH_ENV).ok(),
    });
    let state = Arc::new(ClientState::default());
    let halt = CancellationToken::new();
    {
        let (spec, state, halt) = (spec.clone(), state.clone(), halt.clone());
        let slots = Arc::new(Semaphore::new(OPENING_AT_ONCE));
        tokio::spawn(async move {
            for index in first..first + count {
                let permit = tokio::select! {
                    permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                    _ = halt.cancelled() => {
                        let untried = first + count - index;
                        state.abandoned.fetch_add(untried, Ordering::Relaxed);
                        break;
                    }
                };
                tokio::spawn(hold_one(
                    index,
                    spec.clone(),
                    state.clone(),
                    permit,
                    halt.clone(),
                ));
            }
        });
    }
    // Commands come from a thread reading stdin; its end (the parent is gone) closes the channel.
    let (send, mut commands) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let say = |message: &ClientMessage| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(message)?)?;
        Ok(out.flush()?)
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last = None;
    loop {
        tokio::select! {
            command = commands.recv() => match command.as_deref() {
                Some("halt") => halt.cancel(),
                Some("report") => {
                    let latencies_us = std::mem::take(&mut *state.latencies_us.lock().expect("not poisoned"));
                    return say(&ClientMessage::Report { progress: state.progress(), latencies_us });
                }
                Some(other) => bail!("unknown command {other:?}"),
                // The parent is gone.
                None => return Ok(()),
            },
            _ = tick.tick() => {
                let progress = state.progress();
                if last.as_ref() != Some(&progress) {
                    say(&ClientMessage::Progress(progress.clone()))?;
                    last = Some(progress);
                }
            }
        }
    }
}

/// A socket bound to `source`, its port to be chosen when it connects.
fn client_socket(source: Ipv4Addr) -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    // Without IP_BIND_ADDRESS_NO_PORT, bind() reserves a port of the address for any
    // destination; with it, the port is chosen at connect() for the whole 4-tuple.
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads the `c_int` it is given (the option's type) during the call, on
    // a socket this function owns.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(SocketAddr::new(source.into(), 0))?;
    Ok(socket)
}

/// One subscriber: opens its stream (holding an opening slot until answered), then reads it
/// until the process ends, recording the first bench event's latency.
async fn hold_one(
    index: usize,
    spec: Arc<ClientSpec>,
    state: Arc<ClientState>,
    permit: OwnedSemaphorePermit,
    halt: CancellationToken,
) {
    let opening = async {
        let stream = client_socket(source_address(index))?
            .connect(spec.target)
            .await?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .read_buf_exact_size(Some(READ_BUFFER))
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await?;
        let mut connection = Box::pin(connection);
        let mut request = Request::get(&spec.path)
            .header("host", &spec.authority)
            .header("accept", "text/event-stream");
        if let Some(auth) = &spec.auth {
            request = request.header("authorization", auth);
        }
        let response = tokio::select! {
            response = sender.send_request(request.body(Empty::new())?) => response?,
            closed = &mut connection => {
                closed?;
                bail!("the connection closed before the answer")
            }
        };
        if response.status() != 200 {
            bail!("the stream answered {}", response.status());
        }
        anyhow::Ok((sender, connection, response.into_body()))
    };
    let opened = tokio::select! {
        opened = tokio::time::timeout(OPEN_TIMEOUT, opening) => opened,
        _ = halt.cancelled() => {
            state.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    drop(permit);
    let (_sender, mut connection, mut body) = match opened {
        Err(_) => return state.fail(format!("no answer within {} s", OPEN_TIMEOUT.as_secs())),
        Ok(Err(e)) => return state.fail(format!("{e:#}")),
        Ok(Ok(parts)) => parts,
    };
    state.subscribed.fetch_add(1, Ordering::Relaxed);
    let mut buffer = BytesMut::new();
    let mut got = false;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = &mut connection => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&chunk);
        let _ = sse_lines(&mut buffer, |line| {
            if let Some(mark) = line.strip_prefix(b"data: ").and_then(read_delivery) {
                if got {
                    state.duplicated.fetch_add(1, Ordering::Relaxed);
                } else {
                    got = true;
                    let latency = fanout::now_us().saturating_sub(mark.sent_us);
                    state
                        .latencies_us
                        .lock()
                        .expect("not poisoned")
                        .push(latency);
                    state.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        });
    }
    state.ended.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn source_addresses_are_distinct_hosts_of_127_and_leave_127_0_0_1_alone() {
        let mut seen = HashSet::new();
        for slot in 0..ADDRESS_SLOTS {
            let address = source_address(slot * PER_ADDRESS);
            let [a, _, _, d] = address.octets();
            assert_eq!(a, 127, "{address} is loopback");
            assert!(
                d != 0 && d != 255,
                "{address}: no network or broadcast host part"
            );
            assert_ne!(
                address,
                Ipv4Addr::new(127, 0, 0, 1),
                "kept for the publisher"
            );
            assert!(seen.insert(address), "{address} given twice");
        }
        assert_eq!(seen.len(), ADDRESS_SLOTS);
        assert_eq!(source_address(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(
            source_address(ADDRESS_SLOTS * PER_ADDRESS - 1),
            Ipv4Addr::new(127, 0, 255, 254)
        );
    }

    #[test]
    fn each_address_serves_at_most_per_address_subscribers() {
        let mut per_address = std::collections::HashMap::<Ipv4Addr, usize>::new();
        for index in 0..100_000 {
            *per_address.entry(source_address(index)).or_default() += 1;
        }
        assert_eq!(per_address.len(), addresses_used(100_000));
        assert_eq!(per_address.len(), 1563);
        assert!(per_address.values().all(|&n| n <= PER_ADDRESS));
        // Beyond every slot the addresses come round again, still within the host range.
        assert_eq!(
            source_address(ADDRESS_SLOTS * PER_ADDRESS),
            source_address(0)
        );
        assert_eq!(addresses_used(usize::MAX / 2), ADDRESS_SLOTS);
    }

    #[test]
    fn subscribers_are_split_evenly_over_as_few_processes_as_hold_them() {
        let shares = split(100_000, 19_744);
        assert_eq!(shares.len(), 6);
        assert_eq!(shares.iter().sum::<usize>(), 100_000);
        assert!(shares.iter().all(|&s| s <= 19_744));
        let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        assert!(max - min <= 1, "{shares:?}");
        assert_eq!(split(19_000, 19_744), [19_000]);
        assert_eq!(split(19_745, 19_744), [9_873, 9_872]);
        assert_eq!(split(7, 2), [2, 2, 2, 1]);
        assert!(split(0, 10).is_empty());
    }

    #[test]
    fn progress_adds_up_and_keeps_the_first_error() {
        let mut total = Progress::default();
        for (subscribed, error) in [(3, None), (4, Some("refused")), (5, Some("later"))] {
            total.add(&Progress {
                subscribed,
                received: subscribed - 1,
                first_error: error.map(str::to_owned),
                ..Progress::default()
            });
        }
        assert_eq!(total.subscribed, 12);
        assert_eq!(total.received, 9);
        assert_eq!(total.first_error.as_deref(), Some("refused"));
    }
}
