//! Live streams that survive the network: one background task per [`EventStream`] connects
//! (SSE or WebSocket), resumes after the last event it yielded, backs off between attempts, and
//! drops any event it has already yielded.
//!
//! Reconnection policy: the first delay is at least the broker's `retry:` (jittered by the
//! broker), each failure after that doubles it up to [`StreamOptions::max_backoff`], and every
//! delay is drawn uniformly from `[bound, 1.5 · bound]` (jitter, never below the bound and never
//! above `max_backoff`), so that many clients of a restarted broker do not come back in the same
//! instant. The doubling starts over only once a connection has delivered an event or stayed up
//! for [`STABLE_AFTER`]: a broker that accepts and at once closes is not hammered. A
//! `Retry-After` is honoured. Errors that will not go away by retrying (a revoked key, a filter
//! the broker refuses) end the stream with that error.
//!
//! Resume point: after the last event yielded (`Last-Event-ID`); before the first one, the time
//! the broker accepted the stream (its `Date`, else the local clock) less [`RESUME_MARGIN`], as
//! `since`, so that events stored while a quiet stream was reconnecting are still yielded (the
//! few seconds of overlap are dropped as duplicates, or are events stored just before the start).

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cpod_proto::cloudevents::EventFormat;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::api::Api;
use crate::connection::{Connection, Incoming, Resume, accepted_since, decode_event};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::model::Event;

pub use crate::connection::RESUME_MARGIN;

/// The first reconnect delay until the broker sends its `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(2);
/// How many recent event ids are remembered to drop duplicates.
const DEDUPE_WINDOW: usize = 4096;
/// A connection up this long counts as working even without an event: the next failure starts
/// the backoff over.
///
/// ```
/// assert_eq!(cpod_sdk::stream::STABLE_AFTER.as_secs(), 30);
/// ```
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What a live stream yields.
///
/// ```
/// # fn handle(item: cpod_sdk::StreamItem) {
/// match item {
///     cpod_sdk::StreamItem::Event(event) => println!("{}", event.event_type),
///     cpod_sdk::StreamItem::Reset { reason, .. } => println!("re-read history: {reason}"),
///     cpod_sdk::StreamItem::Reconnecting { delay, error, .. } => eprintln!("retrying in {delay:?}: {error}"),
///     _ => {}
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// Nearly every item is an `Event`: boxing it (to shrink the rare `Reset`) would cost an
// allocation per event, and would change the variant every caller matches on.
#[allow(clippy::large_enum_variant)]
pub enum StreamItem {
    /// A matching event, in store order, never one already yielded.
    Event(Event),
    /// The resume point is gone (unknown, another organization's or expired): the stream went
    /// on live from here, and events in between must be read from history.
    Reset {
        /// The broker's reason, e.g. `unknown_last_event_id`.
        reason: String,
        /// The id the stream tried to resume after.
        last_event_id: Option<String>,
    },
    /// The connection failed or ended; the stream tries again after `delay`.
    Reconnecting {
        /// 1 for the first attempt after a failure, then 2, 3, …
        attempt: u32,
        /// How long the stream waits before trying.
        delay: Duration,
        /// Why the last connection ended.
        error: String,
    },
}

/// Where a stream starts.
///
/// ```
/// let options = cpod_sdk::StreamOptions::new()
///     .last_event_id("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60")
///     .max_backoff(std::time::Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct StreamOptions {
    last_event_id: Option<String>,
    since: Option<String>,
    format: EventFormat,
    max_backoff: Duration,
    idle_timeout: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            last_event_id: None,
            since: None,
            format: EventFormat::Cpod,
            max_backoff: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

impl StreamOptions {
    /// Live from now, reconnecting with at most 30 s between attempts.
    ///
    /// ```
    /// let options = cpod_sdk::StreamOptions::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Replay every matching event stored after this one first (it wins over `since`).
    ///
    /// ```
    /// let options = cpod_sdk::StreamOptions::new().last_event_id("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60");
    /// ```
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = Some(id.into());
        self
    }

    /// Replay every matching event stored at or after this ISO 8601 time first.
    ///
    /// ```
    /// let options = cpod_sdk::StreamOptions::new().since("2026-05-01T00:00:00Z");
    /// ```
    pub fn since(mut self, since: impl Into<String>) -> Self {
        self.since = Some(since.into());
        self
    }

    /// The format the broker writes events in (`format=`): its own JSON (the default) or
    /// structured CloudEvents, which the stream reads back into [`Event`]s with the one
    /// mapping of `cpod_proto::cloudevents`.
    ///
    /// ```
    /// let options = cpod_sdk::StreamOptions::new().format(cpod_sdk::EventFormat::CloudEvents);
    /// ```
    pub fn format(mut self, format: EventFormat) -> Self {
        self.format = format;
        self
    }

    /// The longest wait between reconnection attempts (default 30 s).
    ///
    /// ```
    /// let options = cpod_sdk::StreamOptions::new().max_backoff(std::time::Duration::from_secs(5));
    /// ```
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max.max(Duration::from_millis(1));
        self
    }

    /// A connection that carries nothing (no event, no keep-alive, no ping) for this long is
    /// taken as dead and replaced (default 45 s: three of the broker's default heartbeats).
    ///
    /// ```
    /// let options = cpod_sdk::StreamOptions::new().idle_timeout(std::time::Duration::from_secs(90));
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.max(Duration::from_millis(1));
        self
    }
}

/// The two wire protocols of a live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Sse,
    WebSocket,
}

/// A live stream of [`StreamItem`]s; see [`Events::stream`](crate::Events::stream). It ends only
/// with an error no retry can cure (yielded last), and stops its connection when dropped.
///
/// It connects on its first poll (inside a Tokio runtime) and is live from the moment the
/// broker accepts it: to include events stored before that, start it with
/// [`StreamOptions::last_event_id`] or [`StreamOptions::since`].
///
/// ```no_run
/// use futures_util::StreamExt;
/// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
/// let mut stream: cpod_sdk::EventStream = client.events().stream(cpod_sdk::Filter::new());
/// if let Some(item) = stream.next().await {
///     println!("{:?}", item?);
/// }
/// # Ok(()) }
/// ```
pub struct EventStream {
    /// What the task needs, until the first poll starts it.
    setup: Option<Box<(Api, Transport, Filter, StreamOptions)>>,
    items: Option<mpsc::Receiver<Result<StreamItem>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("started", &self.task.is_some())
            .finish_non_exhaustive()
    }
}

impl EventStream {
    pub(crate) fn spawn(
        api: Api,
        transport: Transport,
        filter: Filter,
        options: StreamOptions,
    ) -> Self {
        Self {
            setup: Some(Box::new((api, transport, filter, options))),
            items: None,
            task: None,
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Stream for EventStream {
    type Item = Result<StreamItem>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(setup) = self.setup.take() {
            let (api, transport, filter, options) = *setup;
            let (items_tx, items) = mpsc::channel(64);
            self.items = Some(items);
            self.task = Some(tokio::spawn(run(api, transport, filter, options, items_tx)));
        }
        match &mut self.items {
            Some(items) => items.poll_recv(cx),
            None => Poll::Ready(None),
        }
    }
}

/// Remembers the last [`DEDUPE_WINDOW`] event ids.
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Records `id`; false when it was seen already.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == DEDUPE_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// The delay before reconnection attempt `attempt` (1, 2, …): the bound `base · 2^(attempt-1)`,
/// drawn uniformly from `[bound, 1.5 · bound]`. The result never exceeds `max` (near it, the bound
/// is lowered to `max / 1.5` so that jitter remains) and is never below `base` (the broker's
/// `retry:`) unless `base` itself exceeds `max`.
pub(crate) fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
    let bound = exponential.min(max.mul_f64(2.0 / 3.0));
    let drawn = bound + bound.mul_f64(rand::random::<f64>() * 0.5);
    drawn.max(base.min(max)).min(max)
}

async fn run(
    api: Api,
    transport: Transport,
    filter: Filter,
    options: StreamOptions,
    items: mpsc::Sender<Result<StreamItem>>,
) {
    let mut resume = Resume {
        last_event_id: options.last_event_id.clone(),
        since: options.since.clone(),
    };
    let mut seen = Seen::default();
    let mut retry_base = DEFAULT_RETRY;
    let mut attempt = 0u32;
    loop {
        // A broker that accepts the connection but never answers counts as a failed attempt.
        let attempt_connect = tokio::time::timeout(
            options.idle_timeout,
            connect(&api, transport, &filter, &resume, options.format),
        );
        let connected = tokio::select! {
            _ = items.closed() => return,
            connected = attempt_connect => connected.unwrap_or_else(|_| Err(Error::Timeout(options.idle_timeout))),
        };
        let mut not_before = None;
        let failure = match connected {
            Err(error) if !error.is_transient() => {
                let _ = items.send(Err(error)).await;
                return;
            }
            Err(error) => {
                if let Error::Api(api) = &error {
                    not_before = api.retry_after;
                }
                crate::error::with_causes(&error)
            }
            Ok((mut connection, accepted)) => {
                // Nothing yielded yet: what is stored from now on must survive a reconnection.
                if resume.last_event_id.is_none() && resume.since.is_none() {
                    resume.since = Some(accepted.clone());
                }
                let connected_at = Instant::now();
                let mut delivered = false;
                let failure = loop {
                    let next = tokio::select! {
                        _ = items.closed() => return,
                        next = tokio::time::timeout(options.idle_timeout, connection.next()) => next,
                    };
                    let item = match next {
                        Err(_) => break format!("nothing received for {:?}", options.idle_timeout),
                        Ok(None) => break "the broker closed the stream".to_owned(),
                        Ok(Some(Err(error))) if !error.is_transient() => {
                            let _ = items.send(Err(error)).await;
                            return;
                        }
                        Ok(Some(Err(error))) => break crate::error::with_causes(&error),
                        Ok(Some(Ok(item))) => item,
                    };
                    let yielded = match item {
                        Incoming::Event(event) => {
                            delivered = true;
                            if !seen.insert(&event.id) {
                                continue;
                            }
                            resume.last_event_id = Some(event.id.clone());
                            StreamItem::Event(*event)
                        }
                        Incoming::Reset { reason } => {
                            // Live from this connection's start: resuming from the lost point
                            // (or the original `since`) again would only repeat the reset or
                            // the replay, and resuming from nothing would lose what is stored
                            // while reconnecting.
                            let last_event_id = resume.last_event_id.take();
                            resume.since = Some(accepted.clone());
                            StreamItem::Reset {
                                reason,
                                last_event_id,
                            }
                        }
                        Incoming::Retry(delay) => {
                            retry_base = delay.max(Duration::from_millis(100));
                            continue;
                        }
                        Incoming::Alive => continue,
                    };
                    if items.send(Ok(yielded)).await.is_err() {
                        return;
                    }
                };
                // Only a connection that worked starts the backoff over.
                if delivered || connected_at.elapsed() >= STABLE_AFTER {
                    attempt = 0;
                }
                failure
            }
        };
        attempt = attempt.saturating_add(1);
        let mut delay = backoff(retry_base, attempt, options.max_backoff);
        if let Some(at_least) = not_before {
            delay = delay.max(at_least);
        }
        let notice = StreamItem::Reconnecting {
            attempt,
            delay,
            error: failure,
        };
        if items.send(Ok(notice)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = items.closed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn connect(
    api: &Api,
    transport: Transport,
    filter: &Filter,
    resume: &Resume,
    format: EventFormat,
) -> Result<(Connection, String)> {
    match transport {
        Transport::Sse => connect_sse(api, filter, resume, format).await,
        Transport::WebSocket => crate::ws::connect(api, filter, resume, format).await,
    }
}

/// Opens an SSE stream; answers it and the `since` of its acceptance ([`accepted_since`]).
async fn connect_sse(
    api: &Api,
    filter: &Filter,
    resume: &Resume,
    format: EventFormat,
) -> Result<(Connection, String)> {
    let mut pairs = filter.to_pairs();
    if format != EventFormat::Cpod {
        pairs.push(("format", format.as_str().to_owned()));
    }
    let mut request = api
        .stream_request("/v1/events/stream")
        .header(reqwest::header::ACCEPT, "text/event-stream");
    match (&resume.last_event_id, &resume.since) {
        (Some(id), _) => request = request.header("Last-Event-ID", id),
        (None, Some(since)) => pairs.push(("since", since.clone())),
        (None, None) => {}
    }
    let response = crate::api::check(request.query(&pairs).send().await?).await?;
    let is_sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        return Err(Error::Protocol(
            "the stream endpoint did not answer text/event-stream".into(),
        ));
    }
    let accepted = accepted_since(
        response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok()),
    );
    let mut decoder = crate::sse::Decoder::default();
    let incoming = response.bytes_stream().flat_map(move |chunk| {
        let mut items: Vec<Result<Incoming>> = Vec::new();
        match chunk
            .map_err(Error::Http)
            .and_then(|bytes| decoder.feed(&bytes))
        {
            Err(e) => items.push(Err(e)),
            Ok(messages) => {
                for message in messages {
                    message_to_incoming(message, format, &mut items);
                }
                // A chunk with no complete message (a keep-alive comment) still shows life.
                items.push(Ok(Incoming::Alive));
            }
        }
        futures_util::stream::iter(items)
    });
    Ok((Box::pin(incoming), accepted))
}

/// What one SSE message reports: its `retry:` (in whichever message it comes), then its event
/// or reset.
fn message_to_incoming(
    message: crate::sse::Message,
    format: EventFormat,
    out: &mut Vec<Result<Incoming>>,
) {
    if let Some(ms) = message.retry {
        out.push(Ok(Incoming::Retry(Duration::from_millis(ms))));
    }
    let Some(data) = message.data else {
        if message.retry.is_none() {
            out.push(Ok(Incoming::Alive));
        }
        return;
    };
    out.push(match message.event.as_deref() {
        None | Some("message") => decode_event(&data, format).map(|e| Incoming::Event(Box::new(e))),
        Some("reset") => {
            let reason = serde_json::from_str::<serde_json::Value>(&data)
                .ok()
                .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "reset".to_owned());
            Ok(Incoming::Reset { reason })
        }
        // A type this SDK does not know yet: ignore it rather than end the stream.
        Some(_) => Ok(Incoming::Alive),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_never_goes_below_the_retry_hint() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(30);
        for _ in 0..200 {
            let first = backoff(base, 1, max);
            assert!(
                first >= base && first <= Duration::from_secs(3),
                "{first:?}"
            );
            let third = backoff(base, 3, max);
            assert!(third >= Duration::from_secs(8) && third <= Duration::from_secs(12));
            let late = backoff(base, 40, max);
            assert!(late >= Duration::from_secs(20) && late <= max, "{late:?}");
            // `retry: 4000` is a floor, not a ceiling.
            let hinted = backoff(Duration::from_secs(4), 1, max);
            assert!(
                hinted >= Duration::from_secs(4) && hinted <= Duration::from_secs(6),
                "{hinted:?}"
            );
            // A hint above the cap is cut to the cap.
            assert_eq!(backoff(Duration::from_secs(60), 1, max), max);
        }
        let draws: HashSet<Duration> = (0..20).map(|_| backoff(base, 2, max)).collect();
        assert!(draws.len() > 1, "the delay is jittered");
        let capped: HashSet<Duration> = (0..20).map(|_| backoff(base, 40, max)).collect();
        assert!(capped.len() > 1, "the delay is jittered at the cap too");
    }

    #[test]
    fn seen_ids_are_refused_within_the_window() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..DEDUPE_WINDOW {
            assert!(seen.insert(&i.to_string()));
        }
        assert!(seen.insert("a"), "the oldest id leaves the window");
    }

    #[test]
    fn sse_messages_become_events_resets_and_retry_hints() {
        let decode = |wire: &[u8]| {
            let mut out = Vec::new();
            for message in crate::sse::Decoder::default().feed(wire).unwrap() {
                message_to_incoming(message, EventFormat::Cpod, &mut out);
            }
            out
        };
        let items = decode(
            b"retry: 3100\n\nevent: reset\ndata: {\"reason\":\"unknown_last_event_id\",\"lastEventId\":\"x\"}\n\nid: 1\ndata: {\"id\":\"1\",\"type\":\"pod.failed\",\"resourceId\":\"p\",\"resourceType\":\"pod\",\"organizationId\":\"o\",\"workspaceId\":null,\"payload\":{},\"timestamp\":\"t\"}\n\n",
        );
        assert!(matches!(items[0], Ok(Incoming::Retry(d)) if d == Duration::from_millis(3100)));
        assert!(
            matches!(&items[1], Ok(Incoming::Reset { reason }) if reason == "unknown_last_event_id")
        );
        assert!(matches!(&items[2], Ok(Incoming::Event(e)) if e.event_type == "pod.failed"));
        let bad = decode(b"data: [1]\n\n");
        assert!(matches!(bad[0], Err(Error::Protocol(_))));
        // A `retry:` sharing a message with an event counts as well.
        let both = decode(
            b"retry: 4000\nid: 2\ndata: {\"id\":\"2\",\"type\":\"pod.failed\",\"resourceId\":\"p\",\"resourceType\":\"pod\",\"organizationId\":\"o\",\"workspaceId\":null,\"payload\":{},\"timestamp\":\"t\"}\n\n",
        );
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(matches!(both[0], Ok(Incoming::Retry(d)) if d == Duration::from_millis(4000)));
        assert!(matches!(&both[1], Ok(Incoming::Event(e)) if e.id == "2"));
    }

    #[test]
    fn a_cloudevent_data_line_reads_back_as_its_event() {
        let event: Event = serde_json::from_str(r#"{"id":"1","type":"pod.failed","resourceId":"p/1","resourceType":"pod","organizationId":"o","workspaceId":"w","payload":{"a":1},"timestamp":"2026-05-01T12:00:00.123Z"}"#).unwrap();
        let data = cpod_proto::cloudevents::to_structured_json(&event).to_string();
        let mut out = Vec::new();
        let wire = format!("id: 1\ndata: {data}\n\n");
        for message in crate::sse::Decoder::default()
            .feed(wire.as_bytes())
            .unwrap()
        {
            message_to_incoming(message, EventFormat::CloudEvents, &mut out);
        }
        assert!(
            matches!(&out[0], Ok(Incoming::Event(e)) if **e == event),
            "{out:?}"
        );
    }
}
