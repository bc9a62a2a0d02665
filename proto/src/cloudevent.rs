//! The structured JSON form of a CloudEvent (CNCF CloudEvents 1.0, JSON event format) as the
//! broker emits it where `format=cloudevents` is asked for: the same event as [`crate::Event`],
//! with its fields under CloudEvents' attribute names.
//!
//! | CloudEvents attribute | from the event |
//! |---|---|
//! | `specversion` | always `1.0` |
//! | `id` | `id` |
//! | `source` | `/organizations/<organizationId>`, or `/organizations/<organizationId>/workspaces/<workspaceId>` when `workspaceId` is set |
//! | `type` | `type` |
//! | `subject` | `<resourceType>/<resourceId>` |
//! | `time` | `timestamp` |
//! | `datacontenttype` | always `application/json` |
//! | `data` | `payload` |
//! | `traceparent`, `tracestate` | the W3C trace context the event was ingested with, when it was (the distributed-tracing extension) |
//!
//! Only the shape lives here; the conversion is the broker's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The CloudEvents version the broker speaks.
pub const SPEC_VERSION: &str = "1.0";

/// The `datacontenttype` of every CloudEvent the broker emits: `data` is always a JSON object.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// An event in CloudEvents' structured JSON form (`application/cloudevents+json`).
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
        description = "An event in CloudEvents 1.0 structured JSON form (`application/cloudevents+json`), as the broker emits it where `format=cloudevents` is asked for."
    )
)]
pub struct CloudEvent {
    /// Always `1.0`.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^1\.0$"))]
    pub specversion: String,
    /// The event's id (a UUID).
    #[cfg_attr(feature = "openapi", schema(format = Uuid))]
    pub id: String,
    /// `/organizations/<organizationId>`, or
    /// `/organizations/<organizationId>/workspaces/<workspaceId>` when the event has a workspace.
    #[cfg_attr(
        feature = "openapi",
        schema(format = "uri-reference", pattern = "^/organizations/.+$")
    )]
    pub source: String,
    /// The event's type, e.g. `pod.failed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `<resourceType>/<resourceId>`, e.g. `pod/pod-7f9c`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9_-]+/.+$"))]
    pub subject: String,
    /// The event's timestamp: ISO 8601 UTC with milliseconds.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub time: String,
    /// Always `application/json`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^application/json$"))]
    pub datacontenttype: String,
    /// The event's payload; always an object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Map<String, Value>,
    /// W3C `traceparent` of the ingest request (distributed-tracing extension), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the ingest request, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub tracestate: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structured_form_keeps_the_attribute_order_and_omits_absent_trace_context() {
        let wire = r#"{"specversion":"1.0","id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","source":"/organizations/org-1/workspaces/ws-42","type":"pod.failed","subject":"pod/pod-7f9c","time":"2026-05-01T12:00:00.123Z","datacontenttype":"application/json","data":{"exitCode":137}}"#;
        let event: CloudEvent = serde_json::from_str(wire).unwrap();
        assert_eq!(event.specversion, SPEC_VERSION);
        assert_eq!(event.datacontenttype, DATA_CONTENT_TYPE);
        assert_eq!(serde_json::to_string(&event).unwrap(), wire);
        let traced = wire.replace(
            "}}",
            r#"},"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"k=v"}"#,
        );
        let event: CloudEvent = serde_json::from_str(&traced).unwrap();
        assert_eq!(event.tracestate.as_deref(), Some("k=v"));
        assert_eq!(serde_json::to_string(&event).unwrap(), traced);
    }
}
