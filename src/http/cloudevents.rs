//! CloudEvents requests and answers at the HTTP edge (README, "CloudEvents"): which form an
//! ingest body is in, reading structured, binary-mode and batch CloudEvents with the CNCF SDK,
//! the `format` parameter of the read endpoints, and a stored answer re-written as CloudEvents
//! when the client's `Accept` asks for it.
//!
//! Every attribute is checked before the SDK reads the event, so that each refusal names the
//! attribute at fault (400; 415 for data that is not JSON); the SDK's own errors, which name
//! none, are then never the answer to a mistake a client can make.

use actix_web::HttpRequest;
use actix_web::http::header;
use bytes::Bytes;
use chrono::DateTime;
use cloudevents::binding::http_0_2::to_event;
use serde_json::{Map, Value};

use crate::cloudevents::{
    BATCH_MEDIA_TYPE, CloudEventDraft, EventFormat, Refusal, STRUCTURED_MEDIA_TYPE, draft_of,
    encode, is_json_media_type,
};
use crate::error::ApiError;
use crate::http::QueryParams;

/// The form of an ingest body, from its `Content-Type` (and, for binary mode, `ce-specversion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// cPod's own JSON (`application/json`).
    Cpod,
    /// One CloudEvent, `application/cloudevents+json`.
    Structured,
    /// One CloudEvent as `ce-*` headers, its data the body.
    Binary,
    /// `application/cloudevents-batch+json`: a JSON array of structured CloudEvents.
    Batch,
}

impl BodyForm {
    /// Reads the request's form. As in the CloudEvents HTTP binding, a structured content type
    /// wins; otherwise a `ce-specversion` header makes it binary mode, whatever the content type
    /// (a non-JSON one is then refused as the event's `datacontenttype`).
    pub fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == STRUCTURED_MEDIA_TYPE {
            return Ok(Self::Structured);
        }
        if essence == BATCH_MEDIA_TYPE {
            return Ok(Self::Batch);
        }
        if req.headers().contains_key("ce-specversion") {
            return Ok(Self::Binary);
        }
        if essence == "application/json" {
            return Ok(Self::Cpod);
        }
        Err(ApiError::UnsupportedMediaType {
            message: format!(
                "the body must be sent as application/json (cPod's event), \
                 {STRUCTURED_MEDIA_TYPE}, {BATCH_MEDIA_TYPE} or a binary-mode CloudEvent \
                 (ce-* headers) (got `{content_type}`)"
            ),
            param: None,
        })
    }
}

/// A refusal as the contract's error; `index` is the event's place in a batch.
pub fn refusal_error(refusal: Refusal, index: Option<usize>) -> ApiError {
    let param = match index {
        Some(i) => format!("events[{i}].{}", refusal.attribute()),
        None => refusal.attribute().to_owned(),
    };
    let message = match index {
        Some(i) => format!("events[{i}]: {refusal}"),
        None => refusal.to_string(),
    };
    match refusal {
        Refusal::Invalid(_) => ApiError::invalid(param, message),
        Refusal::Unsupported(_) => ApiError::unsupported(param, message),
    }
}

/// The attributes of the CloudEvents 1.0 core the broker reads; any other is an extension,
/// accepted and ignored (as CloudEvents consumers do with extensions they do not know).
const CORE_ATTRIBUTES: [&str; 9] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "datacontenttype",
    "dataschema",
    "time",
    "data",
];

/// One structured CloudEvent (a JSON object), checked attribute by attribute and read by the
/// SDK.
fn structured_event(value: Value) -> Result<CloudEventDraft, Refusal> {
    let Value::Object(mut map) = value else {
        return Err(Refusal::invalid(
            "specversion",
            "a structured CloudEvent is a JSON object",
        ));
    };
    let text = |map: &Map<String, Value>, name: &'static str| -> Result<Option<String>, Refusal> {
        match map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Refusal::invalid(name, format!("{name} must be a string"))),
        }
    };
    if map.get("data_base64").is_some_and(|v| !v.is_null()) {
        return Err(Refusal::unsupported(
            "data_base64",
            "data_base64 (binary data) is not taken: cPod events carry JSON data",
        ));
    }
    check_attributes(|name| text(&map, name))?;
    if let Some(content_type) = text(&map, "datacontenttype")?
        && !is_json_media_type(&content_type)
    {
        return Err(Refusal::unsupported(
            "datacontenttype",
            format!("datacontenttype `{content_type}` is not JSON; cPod events carry JSON data"),
        ));
    }
    // Distributed tracing's extension attributes are read (strings, or absent); any other
    // extension is left to the SDK's ignorance.
    let traceparent = text(&map, "traceparent")?;
    let tracestate = text(&map, "tracestate")?;
    map.retain(|name, _| CORE_ATTRIBUTES.contains(&name.as_str()));
    let mut cloudevent: cloudevents::Event = serde_json::from_value(Value::Object(map))
        .map_err(|e| Refusal::invalid("specversion", format!("not a CloudEvent: {e}")))?;
    for (name, value) in [("traceparent", traceparent), ("tracestate", tracestate)] {
        if let Some(value) = value {
            cloudevent.set_extension(name, value);
        }
    }
    draft_of(&cloudevent, false)
}

/// The checks every mode shares: `specversion` 1.0, the required attributes present and
/// non-empty, `time` and `dataschema` readable. `text` reads an attribute as text.
fn check_attributes(
    text: impl Fn(&'static str) -> Result<Option<String>, Refusal>,
) -> Result<(), Refusal> {
    match text("specversion")? {
        Some(version) if version == crate::cloudevents::SPEC_VERSION => {}
        Some(version) => {
            return Err(Refusal::invalid(
                "specversion",
                format!("specversion `{version}` is not supported; send 1.0"),
            ));
        }
        None => {
            return Err(Refusal::invalid(
                "specversion",
                "specversion is required (1.0)",
            ));
        }
    }
    for name in ["id", "source", "type", "subject"] {
        match text(name)? {
            Some(value) if !value.is_empty() => {}
            Some(_) => return Err(Refusal::invalid(name, format!("{name} must not be empty"))),
            None => return Err(Refusal::invalid(name, format!("{name} is required"))),
        }
    }
    if let Some(time) = text("time")?
        && DateTime::parse_from_rfc3339(&time).is_err()
    {
        return Err(Refusal::invalid(
            "time",
            format!("time `{time}` is not an RFC 3339 time"),
        ));
    }
    if let Some(schema) = text("dataschema")?
        && url::Url::parse(&schema).is_err()
    {
        return Err(Refusal::invalid(
            "dataschema",
            format!("dataschema `{schema}` is not an absolute URI"),
        ));
    }
    Ok(())
}

/// `application/cloudevents+json`: one CloudEvent.
pub fn parse_structured(body: &[u8]) -> Result<CloudEventDraft, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_body(format!("invalid JSON: {e}")))?;
    structured_event(value).map_err(|r| refusal_error(r, None))
}

/// `application/cloudevents-batch+json`: 1 to `max` structured CloudEvents in a JSON array.
pub fn parse_batch(body: &[u8], max: usize) -> Result<Vec<CloudEventDraft>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_body(format!("invalid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(ApiError::invalid_body(
            "a CloudEvents batch is a JSON array of CloudEvents",
        ));
    };
    if !(1..=max).contains(&items.len()) {
        return Err(ApiError::invalid(
            "events",
            format!("a batch holds 1 to {max} events, not {}", items.len()),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| structured_event(item).map_err(|r| refusal_error(r, Some(i))))
        .collect()
}

/// A binary-mode CloudEvent: its attributes are `ce-*` headers (percent-encoded), its data the
/// body, typed by `Content-Type`.
pub fn parse_binary(req: &HttpRequest, body: &Bytes) -> Result<CloudEventDraft, ApiError> {
    let headers = req.headers();
    let read = |name: &'static str| -> Result<Option<String>, Refusal> {
        let header = format!("ce-{name}");
        match headers.get(header.as_str()) {
            None => Ok(None),
            Some(value) => value.to_str().map(|v| Some(v.to_owned())).map_err(|_| {
                Refusal::invalid(
                    name,
                    format!("the {header} header must be ASCII (percent-encode the rest)"),
                )
            }),
        }
    };
    check_attributes(read).map_err(|r| refusal_error(r, None))?;
    // No Content-Type means no `datacontenttype`: the data is read as JSON, as structured mode
    // implies (Python's `cloudevents.conversion.to_binary` sends JSON data so).
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let content_type = content_type.to_str().unwrap_or("(not ASCII)");
        if !is_json_media_type(content_type) {
            return Err(ApiError::unsupported(
                "datacontenttype",
                format!(
                    "a binary-mode CloudEvent's data must be JSON (Content-Type: application/json), \
                     not `{content_type}`"
                ),
            ));
        }
    }
    // actix-http's header names and values are http 0.2's: the SDK reads them as they are.
    let mut map = http02::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        map.append(name.clone(), value.clone());
    }
    let cloudevent = to_event(&map, body.to_vec())
        .map_err(|e| ApiError::invalid_body(format!("not a CloudEvent: {e}")))?;
    draft_of(&cloudevent, true).map_err(|r| refusal_error(r, None))
}

/// The `format` query parameter of history and the SSE stream (default `cpod`).
pub fn take_format(params: &mut QueryParams) -> Result<EventFormat, ApiError> {
    match params.take_one("format")? {
        None => Ok(EventFormat::Cpod),
        Some(raw) => parse_format(&raw),
    }
}

/// A `format` value, or a 400 naming `format`.
pub fn parse_format(raw: &str) -> Result<EventFormat, ApiError> {
    EventFormat::parse(raw).ok_or_else(|| {
        ApiError::invalid(
            "format",
            format!("format must be {}, not `{raw}`", EventFormat::NAMES),
        )
    })
}

/// Whether the client's `Accept` asks for `media_type` (a CloudEvents answer) by name.
pub fn accepts(req: &HttpRequest, media_type: &str) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(media_type))
        })
}

/// One stored event's JSON in `format`, for an HTTP answer (a broken stored event is a 500).
pub fn encode_answer(json: &Bytes, format: EventFormat) -> Result<Bytes, ApiError> {
    encode(json, format).map_err(|e| ApiError::Internal(e.into()))
}

/// The events of a `{"data": [...]}` answer body as a JSON array of structured CloudEvents.
pub fn cloudevents_list(body: &Bytes) -> Result<Bytes, ApiError> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<crate::event::Event>,
    }
    let list: List =
        serde_json::from_slice(body).map_err(|e| ApiError::Internal(anyhow::Error::from(e)))?;
    let cloudevents: Vec<cloudevents::Event> = list
        .data
        .iter()
        .map(cpod_proto::cloudevents::to_cloudevent)
        .collect();
    Ok(Bytes::from(
        serde_json::to_vec(&cloudevents).map_err(|e| ApiError::Internal(e.into()))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attribute_of(value: Value) -> (&'static str, bool) {
        match structured_event(value).unwrap_err() {
            Refusal::Invalid(e) => (e.attribute, false),
            Refusal::Unsupported(e) => (e.attribute, true),
        }
    }

    fn valid() -> Value {
        json!({"specversion": "1.0", "id": "a-1", "source": "/organizations/o",
               "type": "custom.report.generated", "subject": "report/r-1", "data": {"a": 1}})
    }

    fn with(name: &str, value: Value) -> Value {
        let mut event = valid();
        event[name] = value;
        event
    }

    fn without(name: &str) -> Value {
        let mut event = valid();
        event.as_object_mut().unwrap().remove(name);
        event
    }

    #[test]
    fn a_structured_cloudevent_with_extensions_is_read() {
        let draft = structured_event(with("myext", json!({"nested": [1.5]}))).unwrap();
        assert_eq!(draft.draft.payload["a"], 1);
        assert_eq!(draft.id, "a-1");
        let timed = structured_event(with("time", json!("2026-05-01T12:00:00+02:00")));
        assert!(timed.is_ok());
    }

    #[test]
    fn every_missing_or_broken_attribute_is_named() {
        for name in ["specversion", "id", "source", "type", "subject"] {
            assert_eq!(attribute_of(without(name)), (name, false), "{name}");
            assert_eq!(attribute_of(with(name, json!(""))).0, name, "{name}");
            assert_eq!(attribute_of(with(name, json!(7))), (name, false), "{name}");
        }
        assert_eq!(
            attribute_of(with("specversion", json!("0.3"))),
            ("specversion", false)
        );
        assert_eq!(
            attribute_of(with("time", json!("yesterday"))),
            ("time", false)
        );
        assert_eq!(
            attribute_of(with("dataschema", json!("not a uri"))),
            ("dataschema", false)
        );
        assert_eq!(attribute_of(with("data", json!("text"))), ("data", false));
        assert_eq!(
            attribute_of(with("datacontenttype", json!("text/plain"))),
            ("datacontenttype", true)
        );
        assert_eq!(
            attribute_of(with("data_base64", json!("aGk="))),
            ("data_base64", true)
        );
        assert_eq!(attribute_of(json!([1])).0, "specversion");
    }

    #[test]
    fn a_batch_names_the_event_by_its_index() {
        let body = serde_json::to_vec(&json!([valid(), without("subject")])).unwrap();
        match parse_batch(&body, 1000).unwrap_err() {
            ApiError::InvalidRequest { param, .. } => {
                assert_eq!(param.as_deref(), Some("events[1].subject"))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_batch(b"[]", 1000).is_err());
        assert!(parse_batch(b"{}", 1000).is_err());
        assert_eq!(
            parse_batch(&serde_json::to_vec(&json!([valid()])).unwrap(), 1000)
                .unwrap()
                .len(),
            1
        );
    }
}
