//! The HTTP edge: one module per area, each with its `configure`, and the strict readers of
//! bodies, headers and query strings they share (so every malformed input is a contract error).

pub mod dashboard;
pub mod drain;
pub mod history;
pub mod ingest;
pub mod keys;
pub mod ops;
pub mod sse;
pub mod state;
pub mod streams;
pub mod webhooks;
pub mod ws;

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde_json::Value;

use crate::error::{ApiError, payload_error};

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
        Err(ApiError::UnsupportedMediaType(format!(
            "the body must be sent as Content-Type: application/json (got `{content_type}`)"
        )))
    }
}

/// Reads the whole body, refusing (413) anything over `limit` bytes before reading it when
/// `Content-Length` tells, and as soon as it grows past it otherwise.
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
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(payload_error)?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON body, naming the position of a syntax error.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_body(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_body(format!("invalid JSON: {e}")))
}

/// Parses a body that must be a JSON object holding only the `allowed` fields (`what` names it
/// in the error: "a key", "a webhook"…).
pub fn parse_json_object(
    body: &[u8],
    allowed: &[&str],
    what: &str,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let Value::Object(object) = parse_json(body)? else {
        return Err(ApiError::invalid_body(format!(
            "{what} must be a JSON object"
        )));
    };
    if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid_body(format!(
            "unknown field `{unknown}`; {what} has {}",
            allowed.join(", ")
        )));
    }
    Ok(object)
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
