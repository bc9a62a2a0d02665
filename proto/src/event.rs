//! The event's wire form (contract §1): one JSON object, the same in history, on both streams and
//! in webhook deliveries, with its fields in this order.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest event type (and type pattern), in characters.
pub const MAX_TYPE_LEN: usize = 128;

/// The wire representation of a stored event, identical in history, streams and webhooks.
///
/// Unknown fields are refused: the wire form is closed (the OpenAPI document says
/// `additionalProperties: false`), so a field that is not the contract's is a bug, not news.
///
/// ```
/// let event: cpod_proto::Event = serde_json::from_str(r#"{
///     "id": "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60", "type": "pod.failed",
///     "resourceId": "pod-7f9c", "resourceType": "pod", "organizationId": "org-1",
///     "workspaceId": null, "payload": {"exitCode": 137}, "timestamp": "2026-05-01T12:00:00.123Z"
/// }"#)?;
/// assert_eq!(event.event_type, "pod.failed");
/// assert_eq!(event.payload["exitCode"], 137);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "The wire representation of a stored event, identical in history, streams and webhooks."
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    /// A UUID (v7: time-ordered), unique.
    #[cfg_attr(feature = "openapi", schema(format = Uuid))]
    pub id: String,
    /// Dot-namespaced, e.g. `pod.failed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The affected resource, e.g. `pod-7f9c`.
    pub resource_id: String,
    /// The resource kind, e.g. `pod`.
    pub resource_type: String,
    /// The organization that owns the event.
    pub organization_id: String,
    /// The workspace inside the organization, if any.
    pub workspace_id: Option<String>,
    /// Event-specific data; always an object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Map<String, Value>,
    /// ISO 8601 UTC with milliseconds, e.g. `2026-05-01T12:00:00.123Z`.
    pub timestamp: String,
    /// W3C Trace Context: present when the event was ingested with a valid `traceparent`
    /// header. The same trace-id, with the broker's ingest span as the parent-id, so that a
    /// consumer continuing the trace hangs under the broker's span; always version `00`.
    /// Absent from the JSON when the event has no trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            nullable = false,
            pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            min_length = 55,
            max_length = 55
        )
    )]
    pub traceparent: Option<String>,
    /// W3C Trace Context: the `tracestate` that came with the `traceparent` (validated, at
    /// most 32 members and 512 characters). Absent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(nullable = false, min_length = 1, max_length = 512)
    )]
    pub tracestate: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_keeps_the_contract_order_and_refuses_strangers() {
        let wire = r#"{"id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","type":"pod.failed","resourceId":"pod-7f9c","resourceType":"pod","organizationId":"org-1","workspaceId":null,"payload":{"b":1,"a":2},"timestamp":"2026-05-01T12:00:00.123Z"}"#;
        let event: Event = serde_json::from_str(wire).unwrap();
        assert_eq!(serde_json::to_string(&event).unwrap(), wire);
        let stranger = wire.replace("\"payload\"", "\"extra\":1,\"payload\"");
        assert!(serde_json::from_str::<Event>(&stranger).is_err());
        let without_payload = wire.replace(r#""payload":{"b":1,"a":2},"#, "");
        assert!(serde_json::from_str::<Event>(&without_payload).is_err());
    }

    #[test]
    fn trace_fields_are_optional_and_absent_when_unset() {
        let wire = r#"{"id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","type":"pod.failed","resourceId":"pod-7f9c","resourceType":"pod","organizationId":"org-1","workspaceId":null,"payload":{},"timestamp":"2026-05-01T12:00:00.123Z","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"rojo=1"}"#;
        let event: Event = serde_json::from_str(wire).unwrap();
        assert_eq!(event.tracestate.as_deref(), Some("rojo=1"));
        assert_eq!(serde_json::to_string(&event).unwrap(), wire);
        let untraced = Event {
            traceparent: None,
            tracestate: None,
            ..event
        };
        let json = serde_json::to_string(&untraced).unwrap();
        assert!(!json.contains("trace"), "{json}");
    }
}
