//! `client.events()`: history (one page, or a stream over every page), emitting, in-process
//! subscriptions with [`Events::dispatch`], and the entry points of live streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::{Stream, TryStreamExt};
use reqwest::Method;
use serde::Deserialize;

use crate::api::{Api, check};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::model::{Emitted, EmittedBatch, Event, EventFormat, HistoryQuery, NewEvent, Page};
use crate::stream::{EventStream, StreamOptions, Transport};

/// Events of one broker. Get it with [`CpodClient::events`](crate::CpodClient::events).
///
/// ```
/// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
/// let events: cpod_sdk::Events = client.events();
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Events {
    pub(crate) api: Api,
    /// The client's (shared by its clones and every `Events` made from them).
    pub(crate) subscriptions: Arc<LocalSubscriptions>,
}

type Handler = Arc<dyn Fn(&Event) + Send + Sync>;

/// The in-process subscriptions of a client (shared by its clones).
#[derive(Default)]
pub(crate) struct LocalSubscriptions {
    next_id: AtomicU64,
    entries: Arc<Mutex<Vec<(u64, Filter, Handler)>>>,
}

impl std::fmt::Debug for LocalSubscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.entries.lock().map_or(0, |entries| entries.len());
        f.debug_struct("LocalSubscriptions")
            .field("count", &count)
            .finish_non_exhaustive()
    }
}

/// An in-process subscription made by [`Events::subscribe`]. It stays active until
/// [`Subscription::unsubscribe`] is called, also when this handle is dropped (as in cPod's
/// other SDKs).
///
/// ```
/// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
/// let subscription = client.events().subscribe(cpod_sdk::Filter::new(), |_| {});
/// assert!(subscription.is_active());
/// subscription.unsubscribe();
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    entries: Weak<Mutex<Vec<(u64, Filter, Handler)>>>,
}

impl Subscription {
    /// Stops delivery to this subscription's handler.
    ///
    /// ```
    /// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
    /// let subscription = client.events().subscribe(cpod_sdk::Filter::new(), |_| {});
    /// subscription.unsubscribe();
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn unsubscribe(self) {
        if let Some(entries) = self.entries.upgrade() {
            entries
                .lock()
                .expect("no handler runs under this lock")
                .retain(|(id, _, _)| *id != self.id);
        }
    }

    /// Whether the subscription still receives events.
    ///
    /// ```
    /// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
    /// let subscription = client.events().subscribe(cpod_sdk::Filter::new(), |_| {});
    /// assert!(subscription.is_active());
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn is_active(&self) -> bool {
        self.entries.upgrade().is_some_and(|entries| {
            entries
                .lock()
                .expect("no handler runs under this lock")
                .iter()
                .any(|(id, _, _)| *id == self.id)
        })
    }
}

/// Options of an emit request, sent as headers: `Idempotency-Key`, and the W3C trace context
/// (`traceparent`, `tracestate`) the stored events continue. The broker ignores an invalid
/// trace context, as the W3C spec says (the events are then stored without one).
///
/// ```
/// let options = cpod_sdk::EmitOptions::new()
///     .idempotency_key("nightly-2026-05-01")
///     .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .tracestate("rojo=00f067aa0ba902b7");
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmitOptions {
    idempotency_key: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl EmitOptions {
    /// No options: what [`Events::emit`] sends.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most once per key (24 hours, per organization); see [`Events::emit_idempotent`].
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The `traceparent` header, e.g. the current span's in an instrumented service.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The `tracestate` header that goes with the `traceparent`.
    pub fn tracestate(mut self, tracestate: impl Into<String>) -> Self {
        self.tracestate = Some(tracestate.into());
        self
    }

    fn apply(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        for (name, value) in [
            ("Idempotency-Key", &self.idempotency_key),
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
        ] {
            if let Some(value) = value {
                request = request.header(name, value);
            }
        }
        request
    }
}

#[derive(Deserialize)]
struct BatchAnswer {
    data: Vec<Event>,
}

impl Events {
    /// One page of history.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let query = cpod_sdk::HistoryQuery::new().resource_type("pod").since("2026-05-01T00:00:00Z").limit(50);
    /// let page = client.events().get_history(&query).await?;
    /// for event in &page.data {
    ///     println!("{} {} {}", event.timestamp, event.event_type, event.resource_id);
    /// }
    /// if let Some(cursor) = page.next_cursor {
    ///     let next = client.events().get_history(&query.clone().cursor(cursor)).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_history(&self, query: &HistoryQuery) -> Result<Page<Event>> {
        let request = self
            .api
            .request(Method::GET, "/v1/events")
            .query(&query.to_pairs());
        self.api.send(request).await
    }

    /// One page of history as CloudEvents (`format=cloudevents`), read by the CloudEvents SDK;
    /// [`cpod_proto::cloudevents::from_cloudevent`] maps one back to its [`Event`].
    ///
    /// ```no_run
    /// use cloudevents::AttributesReader;
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let page = client.events().get_history_cloudevents(&cpod_sdk::HistoryQuery::new()).await?;
    /// for cloudevent in &page.data {
    ///     println!("{} {} {:?}", cloudevent.ty(), cloudevent.source(), cloudevent.subject());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_history_cloudevents(
        &self,
        query: &HistoryQuery,
    ) -> Result<Page<cloudevents::Event>> {
        let mut query = query.clone();
        query.format = Some(EventFormat::CloudEvents);
        let request = self
            .api
            .request(Method::GET, "/v1/events")
            .query(&query.to_pairs());
        self.api.send(request).await
    }

    /// One event by id, as a CloudEvent (`format=cloudevents`).
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let cloudevent = client.events().get_cloudevent("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_cloudevent(&self, id: &str) -> Result<cloudevents::Event> {
        let mut url = self.api.url("/v1/events");
        url.path_segments_mut()
            .map_err(|()| Error::Config("the base URL cannot hold a path".into()))?
            .push(id);
        url.query_pairs_mut()
            .append_pair("format", EventFormat::CloudEvents.as_str());
        self.api.send(self.api.request_url(Method::GET, url)).await
    }

    /// Every event of a history query, page after page, following cursors (the query's own
    /// `limit` is the page size; 1000 when unset). Pages never repeat or skip an event, even
    /// while new ones arrive.
    ///
    /// ```no_run
    /// use futures_util::TryStreamExt;
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let failures: Vec<cpod_sdk::Event> = client
    ///     .events()
    ///     .history(cpod_sdk::HistoryQuery::new().types(["*.failed"]))
    ///     .try_collect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn history(
        &self,
        query: HistoryQuery,
    ) -> impl Stream<Item = Result<Event>> + Send + 'static {
        let mut query = query;
        query.limit.get_or_insert(1000);
        let events = self.clone();
        let pages = futures_util::stream::try_unfold(Some(query), move |next| {
            let events = events.clone();
            async move {
                let Some(query) = next else {
                    return Ok(None);
                };
                let page = events.get_history(&query).await?;
                let next = page
                    .next_cursor
                    .clone()
                    .filter(|_| page.has_more)
                    .map(|cursor| query.cursor(cursor));
                Ok::<_, Error>(Some((page.data, next)))
            }
        });
        pages
            .map_ok(|data| futures_util::stream::iter(data.into_iter().map(Ok)))
            .try_flatten()
    }

    /// One event by id.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let event = client.events().get("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, id: &str) -> Result<Event> {
        let mut url = self.api.url("/v1/events");
        url.path_segments_mut()
            .map_err(|()| Error::Config("the base URL cannot hold a path".into()))?
            .push(id);
        self.api.send(self.api.request_url(Method::GET, url)).await
    }

    /// Stores one event; answers it as stored, once it is durable.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let event = client
    ///     .events()
    ///     .emit(&cpod_sdk::NewEvent::new("custom.report.generated", "report", "r-9")
    ///         .payload(serde_json::json!({"rows": 1240})))
    ///     .await?;
    /// println!("stored {}", event.id);
    /// # Ok(()) }
    /// ```
    pub async fn emit(&self, event: &NewEvent) -> Result<Event> {
        Ok(self.emit_with(event, &EmitOptions::new()).await?.event)
    }

    /// Stores one event with request options: an idempotency key, the W3C trace context the
    /// event continues (`traceparent`, `tracestate`; the stored event's `traceparent` then has
    /// the same trace-id, under the broker's ingest span).
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let options = cpod_sdk::EmitOptions::new()
    ///     .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// let new = cpod_sdk::NewEvent::new("custom.report.generated", "report", "r-9");
    /// let stored = client.events().emit_with(&new, &options).await?;
    /// assert!(stored.event.traceparent.unwrap().contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    /// # Ok(()) }
    /// ```
    pub async fn emit_with(&self, event: &NewEvent, options: &EmitOptions) -> Result<Emitted> {
        let request = self.api.request(Method::POST, "/v1/events").json(event);
        let (event, replayed) = self.send_replayable(options.apply(request)).await?;
        Ok(Emitted { event, replayed })
    }

    /// Stores one event at most once per `idempotency_key` (24 hours, per organization): a
    /// repeat with the same body answers the first result with `replayed: true`; the same key
    /// with another body is a `conflict` error.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let new = cpod_sdk::NewEvent::new("pod.failed", "pod", "pod-7f9c");
    /// let first = client.events().emit_idempotent(&new, "pod-7f9c-oom-1").await?;
    /// let again = client.events().emit_idempotent(&new, "pod-7f9c-oom-1").await?;
    /// assert!(again.replayed && again.event.id == first.event.id);
    /// # Ok(()) }
    /// ```
    pub async fn emit_idempotent(
        &self,
        event: &NewEvent,
        idempotency_key: &str,
    ) -> Result<Emitted> {
        self.emit_with(event, &EmitOptions::new().idempotency_key(idempotency_key))
            .await
    }

    /// Stores one CloudEvent, sent in structured mode (`application/cloudevents+json`); answers
    /// the stored event. Its `source` (`/organizations/<org>[/workspaces/<ws>]`, or any other
    /// for the key's own organization) and `subject` (`<resourceType>/<resourceId>`) place it;
    /// without an idempotency key, the broker keys it by its source and id.
    ///
    /// ```no_run
    /// use cloudevents::{EventBuilder, EventBuilderV10};
    /// # async fn run(client: cpod_sdk::CpodClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let cloudevent = EventBuilderV10::new()
    ///     .id("run-42")
    ///     .source("/organizations/org-1")
    ///     .ty("custom.report.generated")
    ///     .subject("report/r-9")
    ///     .data("application/json", serde_json::json!({"rows": 1240}))
    ///     .build()?;
    /// let stored = client.events().emit_cloudevent(&cloudevent, None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn emit_cloudevent(
        &self,
        cloudevent: &cloudevents::Event,
        idempotency_key: Option<&str>,
    ) -> Result<Emitted> {
        let body = serde_json::to_vec(cloudevent)
            .map_err(|e| Error::Protocol(format!("the CloudEvent does not serialize: {e}")))?;
        let mut request = self
            .api
            .request(Method::POST, "/v1/events")
            .header(
                reqwest::header::CONTENT_TYPE,
                cpod_proto::cloudevents::STRUCTURED_MEDIA_TYPE,
            )
            .body(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let (event, replayed) = self.send_replayable(request).await?;
        Ok(Emitted { event, replayed })
    }

    /// Stores 1 to 1000 events atomically: all or none (an error names `events[i]`).
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let stored = client.events().emit_batch(&[
    ///     cpod_sdk::NewEvent::new("job.completed", "job", "job-1"),
    ///     cpod_sdk::NewEvent::new("custom.report.generated", "report", "r-9"),
    /// ]).await?;
    /// assert_eq!(stored.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn emit_batch(&self, events: &[NewEvent]) -> Result<Vec<Event>> {
        Ok(self
            .emit_batch_with(events, &EmitOptions::new())
            .await?
            .events)
    }

    /// [`Events::emit_batch`] at most once per `idempotency_key`.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let batch = [cpod_sdk::NewEvent::new("job.completed", "job", "job-1")];
    /// let answer = client.events().emit_batch_idempotent(&batch, "nightly-2026-05-01").await?;
    /// # Ok(()) }
    /// ```
    pub async fn emit_batch_idempotent(
        &self,
        events: &[NewEvent],
        idempotency_key: &str,
    ) -> Result<EmittedBatch> {
        self.emit_batch_with(events, &EmitOptions::new().idempotency_key(idempotency_key))
            .await
    }

    /// [`Events::emit_batch`] with request options; a trace context applies to every event.
    pub async fn emit_batch_with(
        &self,
        events: &[NewEvent],
        options: &EmitOptions,
    ) -> Result<EmittedBatch> {
        let request = self
            .api
            .request(Method::POST, "/v1/events/batch")
            .json(&serde_json::json!({ "events": events }));
        let (answer, replayed) = self
            .send_replayable::<BatchAnswer>(options.apply(request))
            .await?;
        Ok(EmittedBatch {
            events: answer.data,
            replayed,
        })
    }

    async fn send_replayable<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(T, bool)> {
        let response = check(request.send().await?).await?;
        let replayed = response
            .headers()
            .get("Idempotent-Replayed")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let bytes = response.bytes().await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok((value, replayed))
    }

    /// Calls `handler` for every event later given to [`Events::dispatch`] (on this client or
    /// a clone) that `filter` matches — by the broker's glob rules. Nothing is fetched: feed
    /// it from a stream, a webhook or anywhere else.
    ///
    /// ```
    /// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
    /// let subscription = client.events().subscribe(
    ///     cpod_sdk::Filter::new().types(["pod.failed", "pod.stopped"]),
    ///     |event| println!("pod event: {} {} {:?}", event.event_type, event.resource_id, event.payload),
    /// );
    /// # let incoming: cpod_sdk::Event = serde_json::from_str(r#"{"id": "x", "type": "pod.failed",
    /// #   "resourceId": "p1", "resourceType": "pod", "organizationId": "org-1",
    /// #   "workspaceId": null, "payload": {}, "timestamp": "2026-05-01T12:00:00.000Z"}"#).unwrap();
    /// assert_eq!(client.events().dispatch(&incoming), 1);
    /// subscription.unsubscribe();
    /// assert_eq!(client.events().dispatch(&incoming), 0);
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn subscribe<F>(&self, filter: Filter, handler: F) -> Subscription
    where
        F: Fn(&Event) + Send + Sync + 'static,
    {
        let local = &self.subscriptions;
        let id = local.next_id.fetch_add(1, Ordering::Relaxed);
        local
            .entries
            .lock()
            .expect("no handler runs under this lock")
            .push((id, filter, Arc::new(handler)));
        Subscription {
            id,
            entries: Arc::downgrade(&local.entries),
        }
    }

    /// Delivers `event` to every local subscription whose filter matches it, in the order they
    /// were made; answers how many handlers ran. Handlers run outside any lock, so they may
    /// subscribe and unsubscribe.
    ///
    /// ```
    /// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
    /// # let event: cpod_sdk::Event = serde_json::from_str(r#"{"id": "x", "type": "job.failed",
    /// #   "resourceId": "j1", "resourceType": "job", "organizationId": "org-1",
    /// #   "workspaceId": null, "payload": {}, "timestamp": "2026-05-01T12:00:00.000Z"}"#).unwrap();
    /// let delivered = client.events().dispatch(&event);
    /// assert_eq!(delivered, 0); // no subscription yet
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn dispatch(&self, event: &Event) -> usize {
        let matching: Vec<Handler> = self
            .subscriptions
            .entries
            .lock()
            .expect("no handler runs under this lock")
            .iter()
            .filter(|(_, filter, _)| filter.matches(event))
            .map(|(_, _, handler)| handler.clone())
            .collect();
        for handler in &matching {
            handler(event);
        }
        matching.len()
    }

    /// A live stream over Server-Sent Events of every matching event stored from now on. It
    /// reconnects by itself (capped exponential backoff with jitter, starting from the
    /// broker's `retry:`), resumes after the last event it yielded, and never yields an event
    /// twice. See [`EventStream`].
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let mut stream = client.events().stream(cpod_sdk::Filter::new().types(["pod.*"]));
    /// while let Some(item) = stream.next().await {
    ///     match item? {
    ///         cpod_sdk::StreamItem::Event(event) => println!("{}", event.event_type),
    ///         cpod_sdk::StreamItem::Reset { .. } => println!("resume point lost: re-read history"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream(&self, filter: Filter) -> EventStream {
        self.stream_with(filter, StreamOptions::default())
    }

    /// [`Events::stream`] starting after an event id or from a time.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) {
    /// let stream = client.events().stream_with(
    ///     cpod_sdk::Filter::new(),
    ///     cpod_sdk::StreamOptions::new().last_event_id("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60"),
    /// );
    /// # }
    /// ```
    pub fn stream_with(&self, filter: Filter, options: StreamOptions) -> EventStream {
        EventStream::spawn(self.api.clone(), Transport::Sse, filter, options)
    }

    /// The same stream over the WebSocket endpoint (one subscription per socket).
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let mut stream = client.events().stream_ws(cpod_sdk::Filter::new().types(["job.*"]));
    /// while let Some(item) = stream.next().await {
    ///     if let cpod_sdk::StreamItem::Event(event) = item? {
    ///         println!("{}", event.event_type);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream_ws(&self, filter: Filter) -> EventStream {
        self.stream_ws_with(filter, StreamOptions::default())
    }

    /// [`Events::stream_ws`] starting after an event id or from a time.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) {
    /// let stream = client.events().stream_ws_with(
    ///     cpod_sdk::Filter::new(),
    ///     cpod_sdk::StreamOptions::new().since("2026-05-01T00:00:00Z"),
    /// );
    /// # }
    /// ```
    pub fn stream_ws_with(&self, filter: Filter, options: StreamOptions) -> EventStream {
        EventStream::spawn(self.api.clone(), Transport::WebSocket, filter, options)
    }
}
