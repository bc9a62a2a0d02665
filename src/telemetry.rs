//! Logs and metrics: the `tracing` subscriber, the process-wide Prometheus recorder and the
//! middleware that counts HTTP requests by route pattern (never by raw path or query, which
//! could carry ids or credentials).

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber: `RUST_LOG` filters (default `info`), text or JSON lines.
pub fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
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
    metrics::counter!(
        "cpod_http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("cpod_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    result
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
