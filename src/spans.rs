//! The broker's own spans along an event's path — `ingest` (one request), `commit` (its wait
//! for the group commit), `fan_out` (one traced event published to the live streams) and
//! `webhook_attempt` (one delivery attempt) — their W3C trace context, and their export over
//! OTLP/HTTP ([`SpanExport`]).
//!
//! A span continues the trace it is given (the request's `traceparent`, or the one stored with
//! the event) and answers the context to pass on: the same trace-id, with **its own** span id as
//! the parent-id. That context is what an event is stored with (the ingest span's) and what a
//! webhook attempt sends (the attempt span's), so the spans form one tree in the exported trace:
//! the client's span → `ingest` → `commit`, and `ingest` → `fan_out` / `webhook_attempt`.
//!
//! With an exporter ([`SpanExport`], `CPOD_OTLP_ENDPOINT`), the span ids are the exported spans'
//! (read back through `tracing-opentelemetry`); without one, no OpenTelemetry layer is installed
//! and a span's id is drawn here, so that what is stored and sent is the same either way. Every
//! span records `trace_id` (and `span_id`) as fields, so the log lines inside it carry them.
//! Events ingested without a valid `traceparent` have no trace: their ingest span is a root
//! (exported as such), and no `fan_out` span or `traceparent` header is made for them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState as OtelTraceState,
    TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{Layer, Registry};
use uuid::Uuid;

use crate::store::{AppendOutcome, AppendRequest, Store, StoreError, StoredEvent};
use crate::trace_context::TraceContext;

/// The target of every span made here: the exporter's layer takes these and nothing else.
pub const TARGET: &str = module_path!();

/// The span of one ingest request (`route`: which endpoint). With an incoming context, the span
/// continues it, and the answer is the context to store with the request's events.
pub fn ingest(
    route: &'static str,
    incoming: Option<&TraceContext>,
) -> (Span, Option<TraceContext>) {
    let span =
        tracing::info_span!(target: TARGET, "ingest", route, trace_id = Empty, span_id = Empty);
    let context = match incoming {
        Some(parent) => Some(continue_trace(&span, parent)),
        None => {
            record_own_trace(&span);
            None
        }
    };
    (span, context)
}

/// Appends `request` inside a `commit` span (a child of the current, ingest, span) covering the
/// request's wait for its group commit.
pub async fn commit(store: &Store, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
    let span = tracing::info_span!(
        target: TARGET, "commit",
        events = request.events.len(), position = Empty
    );
    let outcome = store.append(request).instrument(span.clone()).await?;
    if let Some(last) = outcome.events.last() {
        span.record("position", last.position);
    }
    span.in_scope(|| tracing::debug!(replayed = outcome.replayed, "committed"));
    Ok(outcome)
}

/// Publishes a commit's events with `publish`, in order, each traced event alone inside its
/// `fan_out` span (a child of the span it was stored with); untraced runs go out together.
pub fn fan_out(events: &[Arc<StoredEvent>], mut publish: impl FnMut(&[Arc<StoredEvent>])) {
    let mut start = 0;
    for (i, event) in events.iter().enumerate() {
        let Some(trace) = &event.trace else { continue };
        publish(&events[start..i]);
        let span = tracing::info_span!(
            target: TARGET, parent: None, "fan_out",
            event_id = %event.id, event_type = event.event_type.as_str(),
            trace_id = Empty, span_id = Empty
        );
        continue_trace(&span, trace);
        span.in_scope(|| {
            publish(&events[i..=i]);
            tracing::debug!(position = event.position, "published to the live streams");
        });
        start = i + 1;
    }
    publish(&events[start..]);
}

/// The span of one webhook delivery attempt, continuing the trace its event was stored with;
/// answers the context its request sends (`traceparent` with this span's id).
pub fn webhook_attempt(
    trace: Option<&TraceContext>,
    delivery: Uuid,
    event: Uuid,
    attempt: i64,
) -> (Span, Option<TraceContext>) {
    let span = tracing::info_span!(
        target: TARGET, parent: None, "webhook_attempt",
        %delivery, %event, attempt, status = Empty, trace_id = Empty, span_id = Empty
    );
    let context = match trace {
        Some(parent) => Some(continue_trace(&span, parent)),
        None => {
            record_own_trace(&span);
            None
        }
    };
    (span, context)
}

/// Makes `span` a child of `parent` and answers the context that continues from it.
fn continue_trace(span: &Span, parent: &TraceContext) -> TraceContext {
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.parent.trace_id()),
        SpanId::from_bytes(parent.parent.parent_id()),
        TraceFlags::new(parent.parent.flags() & TraceFlags::SAMPLED.to_u8()),
        true,
        parent
            .state
            .as_ref()
            .and_then(|s| s.as_str().parse::<OtelTraceState>().ok())
            .unwrap_or_default(),
    );
    // Fails only where no OpenTelemetry layer takes this span: then the id is drawn below.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    let own = span.context().span().span_context().clone();
    let own_id = own.span_id().to_bytes();
    let exported = own.is_valid()
        && own.trace_id().to_bytes() == parent.parent.trace_id()
        && own_id != parent.parent.parent_id();
    let span_id = if exported { own_id } else { random_span_id() };
    let passed_on = parent
        .parent
        .with_parent(span_id)
        .expect("a span id is never zero");
    span.record("trace_id", passed_on.trace_id_hex());
    span.record("span_id", hex::encode(span_id));
    TraceContext {
        parent: passed_on,
        state: parent.state.clone(),
    }
}

/// Records the trace a root span starts, when it is exported (else it has none to record).
fn record_own_trace(span: &Span) {
    let own = span.context().span().span_context().clone();
    if own.is_valid() {
        span.record("trace_id", hex::encode(own.trace_id().to_bytes()));
        span.record("span_id", hex::encode(own.span_id().to_bytes()));
    }
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// The OTLP/HTTP exporter of the broker's spans: an OpenTelemetry tracer provider with a batch
/// processor (its own thread, exporting every 5 s or 512 spans) that posts protobuf to
/// `<endpoint>/v1/traces`. Flushed and stopped by [`SpanExport::shutdown`], which startup
/// calls last.
pub struct SpanExport {
    provider: SdkTracerProvider,
}

impl SpanExport {
    /// How long the last export at shutdown may take.
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

    /// Starts the exporter for the collector at `endpoint` (`http://host:4318`, with or
    /// without a path prefix; `/v1/traces` is appended as the OTLP/HTTP specification says).
    pub fn start(endpoint: &url::Url) -> anyhow::Result<Self> {
        let traces = traces_url(endpoint);
        // The exporter makes its own reqwest blocking client (rustls: the crate's features are
        // unified with the broker's), on a thread of its own, so building it here in the
        // runtime is safe.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces.as_str())
            .with_timeout(Duration::from_secs(10))
            .build()
            .with_context(|| {
                format!("cannot set up the OTLP exporter for {traces} (CPOD_OTLP_ENDPOINT)")
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("cpod-events")
                    .build(),
            )
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns this module's spans (and no others) into exported spans.
    pub fn layer(&self) -> impl Layer<Registry> + Send + Sync + 'static {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("cpod-events"))
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO))
    }

    /// Exports what is still buffered and stops the processor. Blocks (up to 10 s): call it
    /// off the async threads.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Self::SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}

/// The OTLP/HTTP traces URL of a collector's base URL.
fn traces_url(endpoint: &url::Url) -> String {
    format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming() -> TraceContext {
        TraceContext::from_headers(
            &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
            &["rojo=1"],
        )
        .0
        .unwrap()
    }

    #[test]
    fn a_span_passes_on_the_trace_with_an_id_of_its_own() {
        let parent = incoming();
        let (_span, context) = ingest("POST /v1/events", Some(&parent));
        let context = context.unwrap();
        assert_eq!(context.parent.trace_id(), parent.parent.trace_id());
        assert_ne!(context.parent.parent_id(), parent.parent.parent_id());
        assert_eq!(context.parent.flags(), parent.parent.flags());
        assert_eq!(context.state, parent.state);
        let (_span, attempt) = webhook_attempt(Some(&context), Uuid::nil(), Uuid::nil(), 1);
        let attempt = attempt.unwrap();
        assert_eq!(attempt.parent.trace_id(), parent.parent.trace_id());
        assert_ne!(attempt.parent.parent_id(), context.parent.parent_id());
        assert_eq!(ingest("POST /v1/events", None).1, None);
    }

    #[test]
    fn the_traces_url_is_the_endpoint_with_the_standard_path() {
        for (endpoint, traces) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "https://otel.example/prefix/",
                "https://otel.example/prefix/v1/traces",
            ),
        ] {
            assert_eq!(traces_url(&url::Url::parse(endpoint).unwrap()), traces);
        }
    }
}
