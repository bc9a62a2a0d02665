//! The frames of the live streams (contract §5) as types, which are also their schemas in the
//! OpenAPI and AsyncAPI documents: what a WebSocket client sends ([`ClientFrame`]), every frame
//! the broker writes on a socket ([`ServerFrame`]), and the data of the SSE `reset` message
//! ([`SseReset`]).
//!
//! The broker writes every socket frame by serializing a [`ServerFrame`], except `event`, which
//! `http::ws` splices from the event's stored JSON (one encoding per event), in the same shape
//! (its unit test holds the two equal). Client frames are read field by field by `http::ws`, so
//! that an error names the field at fault and echoes the frame's `id`; [`ClientFrame`] is what
//! that reading accepts (its unit tests hold the two to the same frames).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::event::Event;
use crate::http::wire::TypeGlob;
use cpod_proto::CloudEvent;

/// Why a stream restarted without replay: the `Last-Event-ID` it was given is unknown, belongs
/// to another organization, or has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    UnknownLastEventId,
}

/// The data of the SSE `event: reset` message: the stream goes on live without replay, so the
/// client should re-read history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"reason": "unknown_last_event_id", "lastEventId": "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60"}))]
pub struct SseReset {
    pub reason: ResetReason,
    /// The id the stream was asked to resume after, as given.
    pub last_event_id: String,
}

/// Type patterns in a WebSocket filter: a list, or one comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FilterTypes {
    #[schema(value_type = Vec<TypeGlob>)]
    List(Vec<String>),
    /// Comma-separated, e.g. `pod.*,job.failed`.
    Joined(String),
}

/// A WebSocket subscription's filter: the history filters, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamFilter {
    /// Required for admin keys (`*`: every organization); other keys may only name their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<FilterTypes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
}

/// A frame a WebSocket client sends: a JSON text frame whose `op` says what it asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum ClientFrame {
    /// Authenticates a socket opened without a header or ticket (within 10 seconds, or it is
    /// closed with 4401). Answered with `authenticated`.
    #[schema(title = "Auth", example = json!({"op": "auth", "token": "cpk_…"}))]
    Auth {
        /// A key (`cpk_…`) or a stream ticket (`cpt_…`).
        token: String,
    },
    /// Opens a subscription on this socket. Answered with `subscribed` (then `reset` if
    /// `lastEventId` cannot be resumed from), then an `event` frame per matching event: replay
    /// first, then live.
    #[serde(rename_all = "camelCase")]
    #[schema(title = "Subscribe", example = json!({"op": "subscribe", "id": "s1", "filter": {"types": ["pod.*"], "resourceType": "pod"}}))]
    Subscribe {
        /// The subscription's name on this socket: 1 to 128 characters.
        #[schema(min_length = 1, max_length = 128)]
        id: String,
        #[serde(default)]
        filter: Option<StreamFilter>,
        /// Replay after this event first (wins over `since`).
        #[serde(default)]
        last_event_id: Option<String>,
        /// Replay from this time (ISO 8601) first.
        #[serde(default)]
        #[schema(format = DateTime)]
        since: Option<String>,
        /// `cpod` (default) or `cloudevents`: the subscription's `event` frames then carry the
        /// event as a structured CloudEvent (`CloudEventFrame`).
        #[serde(default)]
        format: Option<cpod_proto::cloudevents::EventFormat>,
    },
    /// Ends a subscription. Answered with `unsubscribed`; no frame of it follows.
    #[schema(title = "Unsubscribe", example = json!({"op": "unsubscribe", "id": "s1"}))]
    Unsubscribe { id: String },
    /// Answered with `pong`.
    #[schema(title = "Ping", example = json!({"op": "ping"}))]
    Ping {},
}

/// A frame the broker writes on a WebSocket: a JSON text frame whose `op` says what it is.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum ServerFrame {
    /// The answer to `auth`: the socket acts for this key from now on.
    #[serde(rename_all = "camelCase")]
    #[schema(title = "Authenticated", example = json!({"op": "authenticated", "organizationId": "org-1"}))]
    Authenticated {
        /// The key's organization; `null` for an admin key.
        #[schema(required = true)]
        organization_id: Option<String>,
    },
    /// The answer to `subscribe`: the subscription is open.
    #[schema(title = "Subscribed", example = json!({"op": "subscribed", "id": "s1"}))]
    Subscribed { id: String },
    /// An event for a subscription.
    #[schema(title = "EventFrame", example = json!({"op": "event", "subscription": "s1", "event": {"id": "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60", "type": "pod.failed", "resourceId": "pod-7f9c", "resourceType": "pod", "organizationId": "org-1", "workspaceId": null, "payload": {"exitCode": 137}, "timestamp": "2026-05-01T12:00:00.123Z"}}))]
    Event { subscription: String, event: Event },
    /// An event for a subscription asked with `format=cloudevents`: the event as a CloudEvent.
    #[serde(rename = "event")]
    #[schema(title = "CloudEventFrame", example = json!({"op": "event", "subscription": "s1", "event": {"specversion": "1.0", "id": "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60", "source": "/organizations/org-1", "type": "pod.failed", "subject": "pod/pod-7f9c", "time": "2026-05-01T12:00:00.123Z", "datacontenttype": "application/json", "data": {"exitCode": 137}}}))]
    CloudEvent {
        subscription: String,
        event: CloudEvent,
    },
    /// After `subscribed`, when `lastEventId` cannot be resumed from: the subscription goes
    /// on live without replay, so the client should re-read history.
    #[schema(title = "Reset", example = json!({"op": "reset", "subscription": "s1", "reason": "unknown_last_event_id"}))]
    Reset {
        subscription: String,
        reason: ResetReason,
    },
    /// The answer to `unsubscribe`.
    #[schema(title = "Unsubscribed", example = json!({"op": "unsubscribed", "id": "s1"}))]
    Unsubscribed { id: String },
    /// The answer to `ping`.
    #[schema(title = "Pong", example = json!({"op": "pong"}))]
    Pong {},
    /// A refused frame (bad JSON, unknown op, binary frame, a filter naming another
    /// organization, …) or a subscription that failed; the socket stays open.
    #[schema(title = "Error", example = json!({"op": "error", "id": "s1", "code": "forbidden", "message": "this key may not read organization `org-2`"}))]
    Error {
        /// The refused frame's `id`, as sent (`null` when it had none).
        #[schema(value_type = Value, required = true)]
        id: Value,
        /// One of the contract's error codes (§7), e.g. `invalid_request`, `unauthorized`.
        code: String,
        message: String,
    },
}

impl ServerFrame {
    /// The frame as the text of a WebSocket message.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a frame serializes")
    }
}
