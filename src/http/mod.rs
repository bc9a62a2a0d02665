//! The HTTP edge: one module per area, each with its `configure`, and the strict readers of
//! bodies, headers and query strings they share (so every malformed input is a contract error).

pub mod bodies;
pub mod closer;
pub mod cloudevents;
pub mod connection;
pub mod dashboard;
pub mod drain;
pub mod history;
pub mod ingest;
pub mod keys;
pub mod ops;
pub mod owned;
pub mod sse;
pub mod state;
pub mod streams;
pub mod webhooks;
pub mod wire;
pub mod ws;

use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, web};
use futures_util::StreamExt;

use crate::error::{ApiError, payload_error};
use crate::http::bodies::BodyOwner;
use crate::http::state::AppState;

/// Registers every route, and JSON answers for unknown paths.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // The stream routes come before `/v1/events/{id}`, which would otherwise take them.
    sse::configure(cfg);
    ws::configure(cfg);
    ingest::configure(cfg);
    history::configure(cfg);
    keys::configure(cfg);
    streams::configure(cfg);
    webhooks::configure(cfg);
    ops::configure(cfg);
    dashboard::configure(cfg);
}

/// Requires a JSON content type (`application/json`, parameters such as `charset` allowed).
pub fn require_json_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            message: format!(
                "the body must be sent as Content-Type: application/json (got `{content_type}`)"
            ),
            param: None,
        })
    }
}

/// Reads the whole body, refusing (413) anything over `limit` bytes before reading it when
/// `Content-Length` tells, and as soon as it grows past it otherwise. The bytes are committed
/// against the broker's body budget first ([`bodies`]: 429/503 when it is spent), and the body
/// must arrive within the body deadline (408 `request_timeout` otherwise).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("the request body is larger than {limit} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("AppState is not registered")))?;
    let owner = req
        .extensions()
        .get::<BodyOwner>()
        .copied()
        .unwrap_or(BodyOwner(uuid::Uuid::nil()));
    let capacity = declared.unwrap_or(1024).min(limit);
    let mut reservation = state.bodies.reserve(owner, capacity)?;
    let read = async {
        let mut body = web::BytesMut::with_capacity(capacity);
        let mut reserved = capacity;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(payload_error)?;
            let length = body.len() + chunk.len();
            if length > limit {
                return Err(too_large());
            }
            if length > reserved {
                reservation.grow(length - reserved)?;
                reserved = length;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    let timeout = state.limits.body_timeout;
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::RequestTimeout(format!(
            "the request body did not arrive within {}",
            humantime::format_duration(timeout)
        ))
    })?
}

/// The query string as name/value pairs, taken out one parameter at a time so that an unknown
/// parameter is refused at the end instead of silently ignored.
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    pub fn parse(req: &HttpRequest) -> Result<Self, ApiError> {
        Self::from_query(req.query_string())
    }

    /// Parses a query string (without its `?`).
    pub fn from_query(query: &str) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| ApiError::invalid_body(format!("the query string is malformed: {e}")))?;
        Ok(Self { pairs })
    }

    /// Every value of a parameter that may repeat.
    pub fn take_all(&mut self, name: &str) -> Vec<String> {
        let (taken, kept) = std::mem::take(&mut self.pairs)
            .into_iter()
            .partition(|(k, _)| k == name);
        self.pairs = kept;
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// The value of a parameter given at most once.
    pub fn take_one(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut values = self.take_all(name);
        if values.len() > 1 {
            return Err(ApiError::invalid(
                name,
                format!("{name} is given more than once"),
            ));
        }
        Ok(values.pop())
    }

    /// Refuses whatever parameter was not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.pairs.into_iter().next() {
            None => Ok(()),
            Some((name, _)) => Err(ApiError::invalid(
                name.clone(),
                format!("unknown query parameter `{name}`"),
            )),
        }
    }
}

/// Parses a UUID path segment; anything that is not one names nothing (404).
pub fn parse_id(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}
