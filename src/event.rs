//! The event (contract §1): its validated parts, the type catalogue and the wire JSON.
//!
//! Untrusted input becomes one of the newtypes here only through `parse`, so a value of type
//! [`EventType`] or [`ResourceType`] is valid by construction. Nothing here knows about HTTP or
//! SQL; the HTTP layer turns a [`FieldError`] into a 400 naming the field.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::trace_context::TraceContext;

/// The wire form itself, the type length bound and the refusal of a field are shared with every
/// client (`cpod-proto`).
pub use cpod_proto::error::FieldError;
pub use cpod_proto::event::{Event, MAX_TYPE_LEN};

/// The namespaces of the type catalogue, which decide who may emit a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    Person,
    Pod,
    Job,
    Credential,
    Custom,
}

/// A dot-namespaced, lowercase event type from the catalogue, e.g. `pod.failed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType {
    name: String,
    namespace: Namespace,
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

impl EventType {
    /// Parses a type: the grammar (segments of `[a-z0-9_-]`, at least two, at most 128
    /// characters) and then the catalogue (known namespaces and, outside `custom`, known names).
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let err = |m: String| FieldError::new("type", m);
        if raw.is_empty() {
            return Err(err("type must not be empty".into()));
        }
        if raw.len() > MAX_TYPE_LEN {
            return Err(err(format!(
                "type is longer than {MAX_TYPE_LEN} characters"
            )));
        }
        let segments: Vec<&str> = raw.split('.').collect();
        if segments.len() < 2 {
            return Err(err(format!(
                "type `{raw}` must have at least two dot-separated segments, e.g. `custom.report.generated`"
            )));
        }
        if segments
            .iter()
            .any(|s| s.is_empty() || !s.chars().all(is_segment_char))
        {
            return Err(err(format!(
                "type `{raw}` must be lowercase segments of [a-z0-9_-] separated by dots"
            )));
        }
        let known: &[&str] = match segments[0] {
            "person" => &["person.created", "person.updated", "person.deleted"],
            "pod" => &["pod.created", "pod.started", "pod.stopped", "pod.failed"],
            "job" => &["job.completed", "job.failed"],
            "credential" => &["credential.created", "credential.revoked"],
            "custom" => &[],
            other => {
                return Err(err(format!(
                    "unknown event namespace `{other}`; use one of person, pod, job, credential or custom"
                )));
            }
        };
        let namespace = match segments[0] {
            "person" => Namespace::Person,
            "pod" => Namespace::Pod,
            "job" => Namespace::Job,
            "credential" => Namespace::Credential,
            _ => Namespace::Custom,
        };
        if namespace != Namespace::Custom && !known.contains(&raw) {
            return Err(err(format!(
                "unknown event type `{raw}`; the {} namespace has {}",
                segments[0],
                known.join(", ")
            )));
        }
        Ok(Self {
            name: raw.to_owned(),
            namespace,
        })
    }

    /// The broker's own credential types, which no key may emit.
    pub fn credential_created() -> Self {
        Self {
            name: "credential.created".into(),
            namespace: Namespace::Credential,
        }
    }

    pub fn credential_revoked() -> Self {
        Self {
            name: "credential.revoked".into(),
            namespace: Namespace::Credential,
        }
    }

    pub fn namespace(&self) -> Namespace {
        self.namespace
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
}

/// Defines a validated string newtype with a length bound and an optional character rule.
macro_rules! bounded_string {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $allowed:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, FieldError> {
                if raw.is_empty() {
                    return Err(FieldError::new($field, concat!($field, " must not be empty")));
                }
                if raw.chars().count() > Self::MAX_LEN {
                    return Err(FieldError::new(
                        $field,
                        format!(concat!($field, " is longer than {} characters"), Self::MAX_LEN),
                    ));
                }
                let allowed: fn(char) -> bool = $allowed;
                if !raw.chars().all(allowed) {
                    return Err(FieldError::new($field, concat!($field, " must be ", $rule)));
                }
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

bounded_string!(
    /// The affected resource's id: any non-empty string of at most 256 characters.
    ResourceId, "resourceId", 256, |c| !c.is_control(), "a string without control characters"
);
bounded_string!(
    /// The resource kind: `[a-z0-9_-]`, at most 64 characters.
    ResourceType, "resourceType", 64, is_segment_char, "lowercase [a-z0-9_-]"
);
bounded_string!(
    /// A workspace inside an organization.
    WorkspaceId, "workspaceId", 256, |c| !c.is_control(), "a string without control characters"
);
bounded_string!(
    /// An organization's id. `*` (every organization) and `,` (list separator) are reserved.
    OrganizationId,
    "organizationId",
    128,
    |c| c.is_ascii_graphic() && c != '*' && c != ',',
    "printable ASCII without `*` or `,`"
);

/// An event as a client asked for it, validated, before the broker gives it an id, a time and
/// a position.
///
/// Its wire JSON is serialized here, on the HTTP worker that parsed it, with placeholders of
/// fixed width for the id and the timestamp; the store's single writer thread only copies the
/// real id and time into place ([`NewEvent::stamp`]). That keeps serialization off the writer
/// and makes the stored size known before the event is accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: EventType,
    pub resource_id: ResourceId,
    pub resource_type: ResourceType,
    pub organization_id: OrganizationId,
    pub workspace_id: Option<WorkspaceId>,
    /// The W3C trace context stored with the event (and written into its JSON), if any.
    pub trace: Option<TraceContext>,
    template: Vec<u8>,
    /// Where the timestamp placeholder ends in `template`.
    timestamp_end: usize,
}

/// `{"id":"` precedes the id in the wire JSON.
const ID_OFFSET: usize = 7;
const ID_LEN: usize = 36;
/// The timestamp is the last field but the optional trace fields:
/// `…"timestamp":"2026-05-01T12:00:00.123Z"}`.
const TIMESTAMP_LEN: usize = 24;
const TIMESTAMP_TAIL: usize = 2;

/// The fields of an ingestion body, parsed but not yet given an organization.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    pub event_type: EventType,
    pub resource_id: ResourceId,
    pub resource_type: ResourceType,
    /// The `organizationId` the body named, if any; who may name one is the caller's rule.
    pub organization_id: Option<OrganizationId>,
    pub workspace_id: Option<WorkspaceId>,
    pub payload: Map<String, Value>,
}

/// The body of `POST /v1/events` (and each item of a batch), as sent: unknown fields, wrong JSON
/// types and missing fields are refused by its deserializer; [`EventDraft::from_body`] then
/// applies the event rules. Its schema in the OpenAPI document states the same rules.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEventBody {
    /// A type from the catalogue, e.g. `pod.failed`, `custom.report.generated`: the
    /// person, pod, job and credential types by name, or `custom.` and one or more segments
    /// of `[a-z0-9_-]`.
    #[serde(rename = "type")]
    #[schema(
        min_length = 3,
        max_length = 128,
        pattern = r"^(person\.(created|updated|deleted)|pod\.(created|started|stopped|failed)|job\.(completed|failed)|credential\.(created|revoked)|custom(\.[a-z0-9_-]+)+)$"
    )]
    pub event_type: String,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub resource_id: String,
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_-]+$")]
    pub resource_type: String,
    /// Admin keys only (and required there); other keys may only name their own.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[\x21-\x29\x2B\x2D-\x7E]+$"
    )]
    pub organization_id: Option<String>,
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub workspace_id: Option<String>,
    /// A JSON object; absent or null means `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Map<String, Value>>,
}

impl EventDraft {
    /// Applies the event rules to a body that deserialized, naming the field at fault.
    pub fn from_body(body: NewEventBody) -> Result<Self, FieldError> {
        Ok(Self {
            event_type: EventType::parse(&body.event_type)?,
            resource_id: ResourceId::parse(&body.resource_id)?,
            resource_type: ResourceType::parse(&body.resource_type)?,
            organization_id: body
                .organization_id
                .as_deref()
                .map(OrganizationId::parse)
                .transpose()?,
            workspace_id: body
                .workspace_id
                .as_deref()
                .map(WorkspaceId::parse)
                .transpose()?,
            payload: body.payload.unwrap_or_default(),
        })
    }
}

/// The JSON kind of a value, for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn unix_now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Formats broker time as the contract's timestamp: ISO 8601 UTC, milliseconds, `Z`.
pub fn format_timestamp(unix_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Borrowed form of [`Event`] (field for field, in its order) so that a new event is serialized
/// without copying it; the test below holds the two to the same JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventJson<'a> {
    id: &'a Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    resource_id: &'a str,
    resource_type: &'a str,
    organization_id: &'a str,
    workspace_id: Option<&'a str>,
    payload: &'a Map<String, Value>,
    timestamp: &'a str,
}

impl NewEvent {
    pub fn new(
        event_type: EventType,
        resource_id: ResourceId,
        resource_type: ResourceType,
        organization_id: OrganizationId,
        workspace_id: Option<WorkspaceId>,
        payload: &Map<String, Value>,
    ) -> Self {
        let placeholder_time = format_timestamp(0);
        let json = EventJson {
            id: &Uuid::nil(),
            event_type: event_type.as_str(),
            resource_id: resource_id.as_str(),
            resource_type: resource_type.as_str(),
            organization_id: organization_id.as_str(),
            workspace_id: workspace_id.as_ref().map(WorkspaceId::as_str),
            payload,
            timestamp: &placeholder_time,
        };
        let template = serde_json::to_vec(&json).expect("an event always serializes");
        Self {
            event_type,
            resource_id,
            resource_type,
            organization_id,
            workspace_id,
            trace: None,
            timestamp_end: template.len() - TIMESTAMP_TAIL,
            template,
        }
    }

    /// The event with a trace context: `traceparent` and `tracestate` (when there is one) are
    /// appended to its JSON after the timestamp, in the order of [`Event`]'s fields.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        let closing = self.template.pop();
        debug_assert_eq!(closing, Some(b'}'));
        let traceparent = trace.parent.to_string();
        let mut field = |name: &str, value: &str| {
            self.template.extend_from_slice(b",\"");
            self.template.extend_from_slice(name.as_bytes());
            self.template.extend_from_slice(b"\":");
            serde_json::to_writer(&mut self.template, value).expect("a string serializes");
        };
        field("traceparent", &traceparent);
        if let Some(state) = &trace.state {
            field("tracestate", state.as_str());
        }
        self.template.push(b'}');
        self.trace = Some(trace);
        self
    }

    /// The size of the event's wire JSON in bytes.
    pub fn json_len(&self) -> usize {
        self.template.len()
    }

    /// The event's wire JSON with its id and time: one line, compact.
    pub fn stamp(&self, id: &Uuid, unix_ms: i64) -> Vec<u8> {
        let mut json = self.template.clone();
        let mut id_buf = Uuid::encode_buffer();
        let id_text = id.hyphenated().encode_lower(&mut id_buf);
        json[ID_OFFSET..ID_OFFSET + ID_LEN].copy_from_slice(id_text.as_bytes());
        let timestamp = format_timestamp(unix_ms);
        debug_assert_eq!(timestamp.len(), TIMESTAMP_LEN);
        let end = self.timestamp_end;
        json[end - TIMESTAMP_LEN..end].copy_from_slice(timestamp.as_bytes());
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catalogue_types_and_custom_types_parse() {
        for t in [
            "person.created",
            "person.updated",
            "person.deleted",
            "pod.created",
            "pod.started",
            "pod.stopped",
            "pod.failed",
            "job.completed",
            "job.failed",
            "credential.created",
            "credential.revoked",
            "custom.x",
            "custom.report.generated",
            "custom.a-b_c.9",
        ] {
            assert!(EventType::parse(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn types_outside_the_grammar_or_catalogue_are_refused() {
        let long = format!("custom.{}", "a".repeat(MAX_TYPE_LEN));
        for t in [
            "",
            "custom",
            "pod",
            "Pod.failed",
            "pod..failed",
            "pod.failed.",
            ".pod.failed",
            "pod.exploded",
            "job.started",
            "billing.paid",
            "custom.",
            "custom.Report",
            "custom.a b",
            "custom.ü",
            long.as_str(),
        ] {
            let err = EventType::parse(t).unwrap_err();
            assert_eq!(err.field, "type", "{t}");
        }
    }

    #[test]
    fn namespaces_are_recognised() {
        assert_eq!(
            EventType::parse("pod.failed").unwrap().namespace(),
            Namespace::Pod
        );
        assert_eq!(
            EventType::parse("custom.a.b").unwrap().namespace(),
            Namespace::Custom
        );
        assert_eq!(
            EventType::parse("credential.revoked").unwrap().namespace(),
            Namespace::Credential
        );
    }

    #[test]
    fn resource_fields_have_their_bounds() {
        assert!(ResourceId::parse("pod-7f9c").is_ok());
        assert!(ResourceId::parse(&"x".repeat(256)).is_ok());
        assert!(ResourceId::parse(&"x".repeat(257)).is_err());
        assert!(ResourceId::parse("").is_err());
        assert!(ResourceType::parse("pod").is_ok());
        assert!(ResourceType::parse("Pod").is_err());
        assert!(ResourceType::parse(&"a".repeat(65)).is_err());
        assert!(OrganizationId::parse("b2c3d4e5-0000-4000-8000-000000000001").is_ok());
        assert!(OrganizationId::parse("*").is_err());
        assert!(OrganizationId::parse("a,b").is_err());
    }

    #[test]
    fn a_draft_applies_the_event_rules() {
        let body = |value: Value| serde_json::from_value::<NewEventBody>(value).unwrap();
        let ok = EventDraft::from_body(body(json!({
            "type": "pod.failed", "resourceId": "p1", "resourceType": "pod",
            "payload": {"exitCode": 137}, "workspaceId": null
        })))
        .unwrap();
        assert_eq!(ok.payload["exitCode"], 137);
        assert_eq!(ok.workspace_id, None);

        let no_payload = EventDraft::from_body(body(
            json!({"type": "custom.a", "resourceId": "r", "resourceType": "r", "payload": null}),
        ))
        .unwrap();
        assert!(no_payload.payload.is_empty());

        let cases = [
            (
                json!({"type": "Custom.A", "resourceId": "r", "resourceType": "r"}),
                "type",
            ),
            (
                json!({"type": "custom.a", "resourceId": "", "resourceType": "r"}),
                "resourceId",
            ),
            (
                json!({"type": "custom.a", "resourceId": "r", "resourceType": "R"}),
                "resourceType",
            ),
            (
                json!({"type": "custom.a", "resourceId": "r", "resourceType": "r", "workspaceId": "a\u{1}"}),
                "workspaceId",
            ),
            (
                json!({"type": "custom.a", "resourceId": "r", "resourceType": "r", "organizationId": "*"}),
                "organizationId",
            ),
        ];
        for (value, field) in cases {
            let err = EventDraft::from_body(body(value.clone())).unwrap_err();
            assert_eq!(err.field, field, "{value}");
        }
    }

    /// A `pod.failed` event of `org-1` with this payload.
    fn pod_failed(payload: Value) -> NewEvent {
        NewEvent::new(
            EventType::parse("pod.failed").unwrap(),
            ResourceId::parse("pod-7f9c").unwrap(),
            ResourceType::parse("pod").unwrap(),
            OrganizationId::parse("org-1").unwrap(),
            None,
            payload.as_object().unwrap(),
        )
    }

    #[test]
    fn the_wire_json_has_the_contract_shape() {
        let event = pod_failed(json!({"b": 1, "a": 2}));
        let id = Uuid::parse_str("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60").unwrap();
        let json = String::from_utf8(event.stamp(&id, 1_777_636_800_123)).unwrap();
        assert_eq!(json.len(), event.json_len());
        assert_eq!(
            json,
            r#"{"id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","type":"pod.failed","resourceId":"pod-7f9c","resourceType":"pod","organizationId":"org-1","workspaceId":null,"payload":{"b":1,"a":2},"timestamp":"2026-05-01T12:00:00.123Z"}"#
        );
        let parsed: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.timestamp, "2026-05-01T12:00:00.123Z");

        // Fields with characters JSON must escape do not move the placeholders.
        let escaped = NewEvent::new(
            EventType::parse("custom.a").unwrap(),
            ResourceId::parse("quote\"back\\slash").unwrap(),
            ResourceType::parse("r").unwrap(),
            OrganizationId::parse("org-1").unwrap(),
            Some(WorkspaceId::parse("ws \"1\"").unwrap()),
            json!({"text": "line\nbreak \u{1}"}).as_object().unwrap(),
        );
        let parsed: Event = serde_json::from_slice(&escaped.stamp(&id, 0)).unwrap();
        assert_eq!(parsed.id, id.to_string());
        assert_eq!(parsed.resource_id, "quote\"back\\slash");
        assert_eq!(parsed.timestamp, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_traced_event_carries_its_context_after_the_timestamp() {
        let trace = crate::trace_context::TraceContext::from_headers(
            &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
            &["v=\"q\\"],
        )
        .0
        .unwrap();
        let event = pod_failed(json!({"a": 1})).with_trace(trace.clone());
        let id = Uuid::parse_str("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60").unwrap();
        let json = String::from_utf8(event.stamp(&id, 1_777_636_800_123)).unwrap();
        assert_eq!(json.len(), event.json_len());
        assert_eq!(
            json,
            r#"{"id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","type":"pod.failed","resourceId":"pod-7f9c","resourceType":"pod","organizationId":"org-1","workspaceId":null,"payload":{"a":1},"timestamp":"2026-05-01T12:00:00.123Z","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"v=\"q\\"}"#
        );
        let parsed: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.tracestate.as_deref(), Some("v=\"q\\"));
        assert_eq!(event.trace, Some(trace));
    }

    /// Found by `fuzz/event_json`: serde_json's default float parser may land one unit off the
    /// nearest double, so the number stored (and what readers parse from it) was not the number
    /// the client sent, nor the one the broker acknowledged.
    #[test]
    fn a_payload_number_is_stored_as_the_number_sent() {
        let numbers = [
            "16666666666666666666666666666637",
            "1.666666666666666666666666666637e31",
            "0.30000000000000004",
            "2.2250738585072011e-308",
            "9007199254740993",
        ];
        for number in numbers {
            let body = format!(
                r#"{{"type":"custom.a","resourceId":"r","resourceType":"r","payload":{{"n":{number}}}}}"#
            );
            let draft = EventDraft::from_body(serde_json::from_str(&body).unwrap()).unwrap();
            let event = NewEvent::new(
                draft.event_type.clone(),
                draft.resource_id.clone(),
                draft.resource_type.clone(),
                OrganizationId::parse("org-1").unwrap(),
                None,
                &draft.payload,
            );
            let stored: Event = serde_json::from_slice(&event.stamp(&Uuid::nil(), 0)).unwrap();
            let sent: f64 = number.parse().unwrap();
            assert_eq!(
                draft.payload["n"].as_f64(),
                Some(sent),
                "{number} as parsed"
            );
            assert_eq!(
                stored.payload["n"].as_f64(),
                Some(sent),
                "{number} as stored"
            );
        }
    }
}
