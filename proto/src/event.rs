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
}
