//! The CloudEvents 1.0 form of an event, both ways, and the names of the formats an event can
//! travel in.
//!
//! The mapping (README, "CloudEvents") is fixed here once, for the broker, the SDK and the CLI:
//!
//! | cPod | CloudEvents |
//! |---|---|
//! | `id` | `id` |
//! | `type` | `type` |
//! | `organizationId`, `workspaceId` | `source`: `/organizations/<org>` or `/organizations/<org>/workspaces/<ws>` |
//! | `resourceType`, `resourceId` | `subject`: `<resourceType>/<resourceId>` |
//! | `timestamp` | `time` |
//! | `payload` | `data`, with `datacontenttype: application/json` |
//! | `traceparent`, `tracestate` | the extension attributes of the same names (distributed tracing), when the event has them |
//!
//! [`to_cloudevent`] is the one conversion out; extension attributes are set in one place,
//! [`with_extensions`]. The CloudEvent itself is the CNCF SDK's ([`cloudevents::Event`]), which
//! also serializes it (structured mode) and reads it back. [`CloudEvent`] is its structured JSON
//! form as a plain type: the one `CloudEvent` schema of the OpenAPI and AsyncAPI documents.

use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Data, EventBuilder, EventBuilderV10};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Event;

/// The one CloudEvents version spoken.
pub const SPEC_VERSION: &str = "1.0";
/// The media type of one CloudEvent in structured mode.
pub const STRUCTURED_MEDIA_TYPE: &str = "application/cloudevents+json";
/// The media type of a batch of CloudEvents (a JSON array of structured ones).
pub const BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch+json";
/// The `datacontenttype` of every CloudEvent the broker emits.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// How events are written: cPod's own JSON (the default) or structured CloudEvents.
///
/// ```
/// use cpod_proto::cloudevents::EventFormat;
/// assert_eq!(EventFormat::parse("cloudevents"), Some(EventFormat::CloudEvents));
/// assert_eq!(EventFormat::CloudEvents.as_str(), "cloudevents");
/// assert_eq!(EventFormat::parse("xml"), None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "How events are written: `cpod` (the event's own JSON, the default) or `cloudevents` (CloudEvents 1.0)."
    )
)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// The event's own JSON (contract §1).
    #[default]
    Cpod,
    /// CloudEvents 1.0, structured mode (JSON).
    #[serde(rename = "cloudevents")]
    CloudEvents,
}

impl EventFormat {
    /// The names a `format` parameter takes.
    pub const NAMES: &'static str = "`cpod` or `cloudevents`";

    /// The format named `raw`, if it is one.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "cpod" => Some(Self::Cpod),
            "cloudevents" => Some(Self::CloudEvents),
            _ => None,
        }
    }

    /// The format's name, as a `format` parameter says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpod => "cpod",
            Self::CloudEvents => "cloudevents",
        }
    }
}

/// How a CloudEvent travels in an HTTP request (CloudEvents HTTP binding): the whole event as
/// the JSON body, or its attributes as `ce-*` headers and its data as the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "How a CloudEvents webhook delivery is written: `structured` (the CloudEvent as the JSON body) or `binary` (`ce-*` headers, the payload as the body)."
    )
)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// `Content-Type: application/cloudevents+json`, the whole CloudEvent as the body.
    #[default]
    Structured,
    /// `ce-*` headers and `Content-Type: application/json`, the payload as the body.
    Binary,
}

impl ContentMode {
    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Structured => "structured",
            Self::Binary => "binary",
        }
    }

    /// The mode named `raw`, if it is one.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "structured" => Some(Self::Structured),
            "binary" => Some(Self::Binary),
            _ => None,
        }
    }
}

/// An event in CloudEvents' structured JSON form (`application/cloudevents+json`): what the
/// broker emits where `format=cloudevents` is asked for (built by [`to_cloudevent`], so every
/// attribute is set), and what it takes as a structured CloudEvent (README, "CloudEvents"),
/// where `time`, `datacontenttype` and `data` may be left out.
///
/// Other extension attributes may be added in later versions, so readers should not refuse
/// unknown ones (CloudEvents requires consumers to tolerate them).
///
/// ```
/// let ce: cpod_proto::CloudEvent = serde_json::from_str(r#"{"specversion": "1.0",
///     "id": "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60", "source": "/organizations/org-1",
///     "type": "pod.failed", "subject": "pod/pod-7f9c", "time": "2026-05-01T12:00:00.123Z",
///     "datacontenttype": "application/json", "data": {"exitCode": 137}}"#)?;
/// assert_eq!(ce.subject, "pod/pod-7f9c");
/// assert_eq!(ce.traceparent, None);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "A cPod event as a CloudEvent 1.0 in structured JSON form (`application/cloudevents+json`, README \"CloudEvents\"): what the broker emits where `format=cloudevents` is asked for (every attribute but the trace context always set), and what it takes as a structured CloudEvent."
    )
)]
pub struct CloudEvent {
    /// Always `1.0`.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^1\.0$"))]
    pub specversion: String,
    /// The event's id (a UUID) on the way out; any non-empty string on the way in (with
    /// `source`, it identifies repeats: see `Idempotency-Key`).
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub id: String,
    /// `/organizations/<organizationId>`, or
    /// `/organizations/<organizationId>/workspaces/<workspaceId>` when the event has a workspace.
    /// On the way in, any other source is taken as the key's organization (not for admin keys).
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub source: String,
    /// The event's type, e.g. `pod.failed`.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(min_length = 3, max_length = 128))]
    pub event_type: String,
    /// `<resourceType>/<resourceId>`, e.g. `pod/pod-7f9c` (split at the first `/`).
    #[cfg_attr(feature = "openapi", schema(min_length = 3))]
    pub subject: String,
    /// The event's timestamp: ISO 8601 UTC with milliseconds. A producer's `time` is not kept
    /// (the broker stamps every event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub time: Option<String>,
    /// `application/json` on the way out (any JSON media type on the way in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The event's payload; always an object (absent or `null` on the way in means `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub data: Option<Map<String, Value>>,
    /// W3C `traceparent` of the event (distributed-tracing extension), when it has one. On the
    /// way in, the request's `traceparent` header wins over it; an invalid one is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the event, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// Why a CloudEvent cannot be read as a cPod event: the attribute at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CloudEventError {
    /// The CloudEvents attribute at fault, e.g. `subject`.
    pub attribute: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl CloudEventError {
    fn new(attribute: &'static str, message: impl Into<String>) -> Self {
        Self {
            attribute,
            message: message.into(),
        }
    }
}

/// The `source` of an organization's (and optionally a workspace's) events.
///
/// ```
/// use cpod_proto::cloudevents::source_of;
/// assert_eq!(source_of("org-1", None), "/organizations/org-1");
/// assert_eq!(source_of("org-1", Some("ws-42")), "/organizations/org-1/workspaces/ws-42");
/// ```
pub fn source_of(organization_id: &str, workspace_id: Option<&str>) -> String {
    match workspace_id {
        Some(workspace) => format!("/organizations/{organization_id}/workspaces/{workspace}"),
        None => format!("/organizations/{organization_id}"),
    }
}

/// What a `source` says about where an event belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    /// `/organizations/<organization>[/workspaces/<workspace>]`.
    Organization {
        /// The organization's id, as written.
        organization: &'a str,
        /// The workspace's id, as written, when the source names one.
        workspace: Option<&'a str>,
    },
    /// Any other source: it names no organization.
    Foreign,
}

/// Reads a `source`. One that starts with `/organizations/` must be exactly one of the two cPod
/// forms (an error otherwise: a typo must not silently file an event elsewhere); any other source
/// is [`Source::Foreign`].
///
/// ```
/// use cpod_proto::cloudevents::{Source, parse_source};
/// assert_eq!(parse_source("/organizations/o/workspaces/w").unwrap(),
///            Source::Organization { organization: "o", workspace: Some("w") });
/// assert_eq!(parse_source("https://example.com/ci").unwrap(), Source::Foreign);
/// assert!(parse_source("/organizations/o/teams/t").is_err());
/// ```
pub fn parse_source(source: &str) -> Result<Source<'_>, CloudEventError> {
    let Some(rest) = source.strip_prefix("/organizations/") else {
        return Ok(Source::Foreign);
    };
    let malformed = || {
        CloudEventError::new(
            "source",
            format!(
                "source `{source}` must be /organizations/<organizationId> or \
                 /organizations/<organizationId>/workspaces/<workspaceId>"
            ),
        )
    };
    let (organization, workspace) = match rest.split_once('/') {
        None => (rest, None),
        Some((organization, tail)) => {
            let workspace = tail.strip_prefix("workspaces/").ok_or_else(malformed)?;
            (organization, Some(workspace))
        }
    };
    if organization.is_empty() || workspace.is_some_and(|w| w.is_empty() || w.contains('/')) {
        return Err(malformed());
    }
    Ok(Source::Organization {
        organization,
        workspace,
    })
}

/// The `subject` of an event about a resource.
pub fn subject_of(resource_type: &str, resource_id: &str) -> String {
    format!("{resource_type}/{resource_id}")
}

/// Splits a `subject` at its first `/` into resource type and resource id.
///
/// ```
/// use cpod_proto::cloudevents::split_subject;
/// assert_eq!(split_subject("pod/ns/pod-7f9c").unwrap(), ("pod", "ns/pod-7f9c"));
/// assert!(split_subject("pod").is_err());
/// ```
pub fn split_subject(subject: &str) -> Result<(&str, &str), CloudEventError> {
    subject.split_once('/').ok_or_else(|| {
        CloudEventError::new(
            "subject",
            format!("subject `{subject}` must be <resourceType>/<resourceId>"),
        )
    })
}

/// Whether a `datacontenttype` (or a binary-mode `Content-Type`) is JSON: `application/json`,
/// `text/json` or any `…+json`, parameters allowed.
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The event as a CloudEvent: the one conversion every party uses.
///
/// ```
/// use cloudevents::AttributesReader;
/// let event: cpod_proto::Event = serde_json::from_str(r#"{
///     "id": "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60", "type": "pod.failed",
///     "resourceId": "pod-7f9c", "resourceType": "pod", "organizationId": "org-1",
///     "workspaceId": "ws-42", "payload": {"exitCode": 137}, "timestamp": "2026-05-01T12:00:00.123Z"
/// }"#)?;
/// let ce = cpod_proto::cloudevents::to_cloudevent(&event);
/// assert_eq!(ce.source(), "/organizations/org-1/workspaces/ws-42");
/// assert_eq!(ce.subject(), Some("pod/pod-7f9c"));
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn to_cloudevent(event: &Event) -> cloudevents::Event {
    let mut builder = EventBuilderV10::new()
        .id(event.id.as_str())
        .source(source_of(
            &event.organization_id,
            event.workspace_id.as_deref(),
        ))
        .ty(event.event_type.as_str())
        .subject(subject_of(&event.resource_type, &event.resource_id))
        .data(DATA_CONTENT_TYPE, Value::Object(event.payload.clone()));
    // The broker writes every timestamp in RFC 3339; an unreadable one (never written by the
    // broker) is left out rather than failing the whole event.
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(&event.timestamp) {
        builder = builder.time(time.with_timezone(&chrono::Utc));
    }
    builder = with_extensions(builder, event);
    builder
        .build()
        .expect("id, source, type and specversion are always set")
}

/// The extension attributes an event carries as a CloudEvent: the one place they are set.
/// Distributed tracing's `traceparent` and `tracestate`, when the event was ingested with a
/// trace context.
fn with_extensions(mut builder: EventBuilderV10, event: &Event) -> EventBuilderV10 {
    if let Some(traceparent) = &event.traceparent {
        builder = builder.extension("traceparent", traceparent.as_str());
    }
    if let Some(tracestate) = &event.tracestate {
        builder = builder.extension("tracestate", tracestate.as_str());
    }
    builder
}

/// The event as a structured-mode CloudEvent (JSON).
pub fn to_structured_json(event: &Event) -> Value {
    serde_json::to_value(to_cloudevent(event)).expect("a CloudEvent serializes")
}

/// Reads a CloudEvent the broker emitted back into the event it came from (the inverse of
/// [`to_cloudevent`]): what the SDK and the CLI do with `format=cloudevents`.
pub fn from_cloudevent(cloudevent: &cloudevents::Event) -> Result<Event, CloudEventError> {
    let (organization_id, workspace_id) = match parse_source(cloudevent.source())? {
        Source::Organization {
            organization,
            workspace,
        } => (organization.to_owned(), workspace.map(str::to_owned)),
        Source::Foreign => {
            return Err(CloudEventError::new(
                "source",
                format!("source `{}` names no organization", cloudevent.source()),
            ));
        }
    };
    let subject = cloudevent
        .subject()
        .ok_or_else(|| CloudEventError::new("subject", "subject is required"))?;
    let (resource_type, resource_id) = split_subject(subject)?;
    let timestamp = cloudevent
        .time()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .ok_or_else(|| CloudEventError::new("time", "time is required"))?;
    Ok(Event {
        id: cloudevent.id().to_owned(),
        event_type: cloudevent.ty().to_owned(),
        resource_id: resource_id.to_owned(),
        resource_type: resource_type.to_owned(),
        organization_id,
        workspace_id,
        payload: json_data(cloudevent)?,
        timestamp,
        traceparent: extension_text(cloudevent, "traceparent"),
        tracestate: extension_text(cloudevent, "tracestate"),
    })
}

/// A CloudEvent's data as a cPod payload: a JSON object (absent or `null`: `{}`). Data that is
/// not JSON is refused naming `datacontenttype`; JSON that is not an object, naming `data`.
pub fn json_data(cloudevent: &cloudevents::Event) -> Result<Map<String, Value>, CloudEventError> {
    if let Some(content_type) = cloudevent.datacontenttype()
        && !is_json_media_type(content_type)
    {
        return Err(CloudEventError::new(
            "datacontenttype",
            format!("datacontenttype `{content_type}` is not JSON; cPod events carry JSON data"),
        ));
    }
    let value = match cloudevent.data() {
        None => return Ok(Map::new()),
        Some(Data::Json(value)) => value.clone(),
        // Binary mode hands the body over as bytes, structured mode JSON data given as a string.
        Some(Data::Binary(bytes)) if bytes.iter().all(u8::is_ascii_whitespace) => Value::Null,
        Some(Data::Binary(bytes)) => serde_json::from_slice(bytes)
            .map_err(|e| CloudEventError::new("data", format!("data is not valid JSON: {e}")))?,
        Some(Data::String(text)) => serde_json::from_str(text)
            .map_err(|e| CloudEventError::new("data", format!("data is not valid JSON: {e}")))?,
    };
    match value {
        Value::Null => Ok(Map::new()),
        Value::Object(map) => Ok(map),
        _ => Err(CloudEventError::new(
            "data",
            "data must be a JSON object (or absent)",
        )),
    }
}

/// The value of an extension attribute as text, if it is set.
pub fn extension_text(cloudevent: &cloudevents::Event, name: &str) -> Option<String> {
    cloudevent.extension(name).map(|value| match value {
        ExtensionValue::String(s) => s.clone(),
        ExtensionValue::Boolean(b) => b.to_string(),
        ExtensionValue::Integer(i) => i.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(workspace: Option<&str>) -> Event {
        Event {
            id: "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60".into(),
            event_type: "pod.failed".into(),
            resource_id: "ns/pod-7f9c".into(),
            resource_type: "pod".into(),
            organization_id: "org-1".into(),
            workspace_id: workspace.map(str::to_owned),
            payload: serde_json::from_str(r#"{"exitCode":137,"reason":"OOMKilled"}"#).unwrap(),
            timestamp: "2026-05-01T12:00:00.123Z".into(),
            traceparent: None,
            tracestate: None,
        }
    }

    fn traced(workspace: Option<&str>) -> Event {
        Event {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("rojo=00f067aa0ba902b7".into()),
            ..event(workspace)
        }
    }

    #[test]
    fn a_traced_event_carries_the_distributed_tracing_extension_both_ways() {
        let json = to_structured_json(&traced(None));
        assert_eq!(
            json["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(json["tracestate"], "rojo=00f067aa0ba902b7");
        assert!(
            to_structured_json(&event(None))
                .get("traceparent")
                .is_none()
        );
        let parsed: cloudevents::Event = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(from_cloudevent(&parsed).unwrap(), traced(None));
        // The plain structured type reads the SDK's JSON, extension included.
        let plain: CloudEvent = serde_json::from_value(json).unwrap();
        assert_eq!(plain.tracestate.as_deref(), Some("rojo=00f067aa0ba902b7"));
        assert_eq!(plain.subject, "pod/ns/pod-7f9c");
    }

    #[test]
    fn an_event_becomes_the_agreed_structured_cloudevent() {
        let json = to_structured_json(&event(Some("ws-42")));
        assert_eq!(
            json,
            serde_json::json!({
                "specversion": "1.0",
                "id": "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60",
                "source": "/organizations/org-1/workspaces/ws-42",
                "type": "pod.failed",
                "subject": "pod/ns/pod-7f9c",
                "time": "2026-05-01T12:00:00.123Z",
                "datacontenttype": "application/json",
                "data": {"exitCode": 137, "reason": "OOMKilled"},
            })
        );
        let without = to_structured_json(&event(None));
        assert_eq!(without["source"], "/organizations/org-1");
    }

    #[test]
    fn the_structured_form_keeps_the_attribute_order_and_omits_absent_trace_context() {
        let wire = r#"{"specversion":"1.0","id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","source":"/organizations/org-1/workspaces/ws-42","type":"pod.failed","subject":"pod/pod-7f9c","time":"2026-05-01T12:00:00.123Z","datacontenttype":"application/json","data":{"exitCode":137}}"#;
        let event: CloudEvent = serde_json::from_str(wire).unwrap();
        assert_eq!(event.specversion, SPEC_VERSION);
        assert_eq!(event.datacontenttype.as_deref(), Some(DATA_CONTENT_TYPE));
        assert_eq!(serde_json::to_string(&event).unwrap(), wire);
        let traced = wire.replace(
            "}}",
            r#"},"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"k=v"}"#,
        );
        let event: CloudEvent = serde_json::from_str(&traced).unwrap();
        assert_eq!(event.tracestate.as_deref(), Some("k=v"));
        assert_eq!(serde_json::to_string(&event).unwrap(), traced);
    }

    #[test]
    fn a_cloudevent_the_broker_wrote_reads_back_as_the_same_event() {
        for workspace in [None, Some("ws-42")] {
            let original = event(workspace);
            let text = serde_json::to_string(&to_cloudevent(&original)).unwrap();
            let parsed: cloudevents::Event = serde_json::from_str(&text).unwrap();
            assert_eq!(from_cloudevent(&parsed).unwrap(), original);
        }
    }

    #[test]
    fn sources_are_one_of_the_two_forms_or_foreign() {
        assert_eq!(
            parse_source("/organizations/o").unwrap(),
            Source::Organization {
                organization: "o",
                workspace: None
            }
        );
        assert_eq!(parse_source("urn:ci").unwrap(), Source::Foreign);
        assert_eq!(parse_source("/orgs/o").unwrap(), Source::Foreign);
        for bad in [
            "/organizations/",
            "/organizations//workspaces/w",
            "/organizations/o/",
            "/organizations/o/workspaces/",
            "/organizations/o/workspaces/w/x",
            "/organizations/o/x/w",
        ] {
            assert_eq!(parse_source(bad).unwrap_err().attribute, "source", "{bad}");
        }
    }

    #[test]
    fn data_must_be_a_json_object_and_json_typed() {
        let with = |content_type: &str, data: Data| {
            let mut ce = to_cloudevent(&event(None));
            ce.set_data(content_type, data);
            json_data(&ce)
        };
        assert!(
            with("application/json", Data::Json(Value::Null))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            with(
                "application/vnd.x+json; charset=utf-8",
                Data::Binary(b"{\"a\":1}".to_vec())
            )
            .unwrap()["a"],
            1
        );
        assert!(
            with("application/json", Data::Binary(b" ".to_vec()))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            with("text/plain", Data::String("x".into()))
                .unwrap_err()
                .attribute,
            "datacontenttype"
        );
        assert_eq!(
            with("application/json", Data::Json(serde_json::json!([1])))
                .unwrap_err()
                .attribute,
            "data"
        );
        assert_eq!(
            with("application/json", Data::Binary(b"{".to_vec()))
                .unwrap_err()
                .attribute,
            "data"
        );
    }
}
