//! Operations endpoints (contract §8): liveness, readiness, Prometheus metrics, the OpenAPI and
//! AsyncAPI documents.

use crate::http::wire::Health;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::http::state::AppState;
use crate::store::StoreError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    let get_only = |path: &str, route: actix_web::Route| {
        web::resource(path)
            .route(route)
            .default_service(crate::error::method_not_allowed("GET"))
    };
    cfg.service(get_only("/healthz", web::get().to(healthz)))
        .service(get_only("/readyz", web::get().to(readyz)))
        .service(get_only("/metrics", web::get().to(metrics)))
        .service(get_only("/openapi.json", web::get().to(openapi_json)))
        .service(get_only("/asyncapi.json", web::get().to(asyncapi_json)));
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The store answers queries and takes writes.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Health),
    (status = 503, description = "Shutting down, the store does not answer, or its disk is full", body = crate::error::ErrorBody)
))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.store.ping().await {
        Ok(()) => Ok(HttpResponse::Ok().json(Health { status: "ready" })),
        Err(StoreError::StorageFull) => Err(ApiError::NotReady(
            "the storage is full; writes are refused until space is freed".into(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::NotReady("the store does not answer".into()))
        }
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        ))
        .body(crate::telemetry::prometheus().render())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(state.openapi.clone())
}

/// The AsyncAPI 3.0 document of the live side: the SSE stream, the WebSocket protocol and webhook
/// deliveries, on this document's schemas.
#[utoipa::path(get, path = "/asyncapi.json", tag = "operations", responses((status = 200, description = "AsyncAPI 3.0", content_type = "application/json")))]
pub async fn asyncapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(state.asyncapi.clone())
}
