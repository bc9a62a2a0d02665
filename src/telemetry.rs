//! Logs and metrics: the `tracing` subscriber (with the span exporter's layer when there is
//! one, `crate::spans`), the process-wide Prometheus recorder and the
//! middleware that counts HTTP requests by route pattern (never by raw path or query, which
//! could carry ids or credentials).

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::spans::SpanExport;

/// Installs the log subscriber: `RUST_LOG` filters (default `info`), text or JSON lines.
/// Requests refused by actix-http before any handler (malformed HTTP) are logged at debug and
/// counted ([`ProtocolErrors`]), not at ERROR: any client could flood the log with them.
/// With `spans`, the broker's spans (`crate::spans`) are also exported, whatever `RUST_LOG`
/// says of them.
pub fn init_logs(json: bool, spans: Option<&SpanExport>) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if spans.is_some() {
        // At least info (the spans' level) for the spans' target, and as verbose as the log
        // is anywhere (so that `RUST_LOG=debug` still shows its debug lines).
        let level = filter
            .max_level_hint()
            .unwrap_or(LevelFilter::INFO)
            .max(LevelFilter::INFO);
        filter = filter.add_directive(
            format!("{}={level}", crate::spans::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    }
    let format = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    let format: Box<dyn Layer<_> + Send + Sync> = if json {
        Box::new(format.json())
    } else {
        Box::new(format)
    };
    let _ = tracing_subscriber::registry()
        .with(spans.map(SpanExport::layer))
        .with(filter)
        .with(ProtocolErrors)
        .with(format)
        .try_init();
}

/// Turns actix-http's ERROR for a request it could not parse into a debug line and a count in
/// `cpod_http_protocol_errors_total`. Other errors of actix-http pass unchanged.
pub struct ProtocolErrors;

impl ProtocolErrors {
    const PREFIX: &'static str = "stream error: request parse error";
}

/// The `message` of an event.
#[derive(Default)]
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for ProtocolErrors {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let metadata = event.metadata();
        if *metadata.level() != tracing::Level::ERROR
            || !metadata.target().starts_with("actix_http")
        {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        if !message.0.starts_with(Self::PREFIX) {
            return true;
        }
        metrics::counter!("cpod_http_protocol_errors_total").increment(1);
        let reason = message.0[Self::PREFIX.len()..].trim_start_matches([':', ' ']);
        tracing::debug!(reason, "refused a request that is not valid HTTP/1.1");
        false
    }
}

/// The Prometheus recorder, installed on first use (once per process: tests start many brokers
/// in one process, and they share it).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1.0,
        ];
        let sizes = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_events".into()), &sizes))
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// The method as a metric label: one of the standard methods, else `other`. Any token is a
/// legal HTTP method, so a raw method as a label would let each client mint series without end.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts every request by method, route pattern and status, and times it. Every label comes
/// from a closed set: [`method_label`], the pattern of the route that matched (never the raw
/// path) or `unmatched`, and the status code.
pub async fn record_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let result = next.call(req).await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    count_request(method, route, status.as_u16(), started.elapsed());
    result
}

/// Counts and times one request (also for the streams served below actix-web,
/// `crate::http::owned`).
pub fn count_request(
    method: &'static str,
    route: impl Into<String>,
    status: u16,
    elapsed: std::time::Duration,
) {
    let route: String = route.into();
    metrics::counter!(
        "cpod_http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("cpod_http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;

    use super::method_label;

    #[test]
    fn method_labels_are_the_standard_methods_or_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for raw in ["BREW", "get", "PROPFIND", &"X".repeat(4000)] {
            let method = Method::from_bytes(raw.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{raw}");
        }
    }
}
