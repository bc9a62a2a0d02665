//! Webhook endpoints and their durable delivery queue: the records the store keeps, whatever the
//! backend.
//!
//! A delivery is created in the **same transaction** that stores its event, so a crash can
//! neither lose a delivery for a stored event nor create one for an event that was not stored.
//! The worker (`webhooks::worker`) claims due deliveries **with a lease** (so that one node
//! attempts each at a time, and a dead node's claims are taken over when their lease runs out)
//! and records every attempt back; only the lease holder's record counts.

use bytes::Bytes;
use uuid::Uuid;

use crate::cloudevents::{ContentMode, EventFormat};
use crate::trace_context::TraceContext;

/// How an endpoint's deliveries are written: the event's JSON (the default), or a CloudEvent
/// in structured or binary content mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeliveryFormat {
    #[default]
    Cpod,
    CloudEvents(ContentMode),
}

impl DeliveryFormat {
    /// The stored form (a `format` column in both backends).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryFormat::Cpod => "cpod",
            DeliveryFormat::CloudEvents(ContentMode::Structured) => "cloudevents",
            DeliveryFormat::CloudEvents(ContentMode::Binary) => "cloudevents-binary",
        }
    }

    /// Reads the stored form; anything unknown (never written) is the default.
    pub fn from_stored(raw: &str) -> Self {
        match raw {
            "cloudevents" => DeliveryFormat::CloudEvents(ContentMode::Structured),
            "cloudevents-binary" => DeliveryFormat::CloudEvents(ContentMode::Binary),
            _ => DeliveryFormat::Cpod,
        }
    }

    pub fn event_format(self) -> EventFormat {
        match self {
            DeliveryFormat::Cpod => EventFormat::Cpod,
            DeliveryFormat::CloudEvents(_) => EventFormat::CloudEvents,
        }
    }

    pub fn content_mode(self) -> Option<ContentMode> {
        match self {
            DeliveryFormat::Cpod => None,
            DeliveryFormat::CloudEvents(mode) => Some(mode),
        }
    }
}

/// An endpoint as stored. Secrets are kept in clear: the broker must sign with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: Uuid,
    pub organization_id: String,
    pub url: String,
    pub types: Vec<String>,
    pub resource_type: Option<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_ms: Option<i64>,
    pub created_ms: i64,
    pub last_success_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    pub format: DeliveryFormat,
}

impl WebhookRecord {
    /// The secrets that sign at `now_ms`: the current one, and the previous one during the
    /// overlap after a rotation.
    pub fn active_secrets(&self, now_ms: i64) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) =
            (&self.previous_secret, self.previous_secret_expires_ms)
            && until > now_ms
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// A partial update; `Some(None)` clears an optional field.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub types: Option<Vec<String>>,
    pub resource_type: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub format: Option<DeliveryFormat>,
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One attempt, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: i64,
    pub response_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub attempted_ms: i64,
    /// At most 20,000 bytes of the answer.
    pub response_body: Option<String>,
}

/// A delivery with its attempts, for the log.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_ms: Option<i64>,
    pub created_ms: i64,
    pub attempt_log: Vec<AttemptRecord>,
}

/// A claim on a delivery: the node that attempts it, and until when no other node may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub owner: Uuid,
    pub until_ms: i64,
}

/// What a worker asks for when it claims due deliveries.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The claiming node: only it may record the attempts it claims.
    pub owner: Uuid,
    pub now_ms: i64,
    /// How long the claim holds; at least twice the request timeout, so that a live holder
    /// always records before its lease can be taken over.
    pub lease_ms: i64,
    pub limit: usize,
    /// Endpoints already sending all they may: their backlog must not hide other endpoints'.
    pub busy: Vec<Uuid>,
}

/// A delivery that is due, claimed, with all an attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: Uuid,
    pub lease: Lease,
    pub attempts: i64,
    pub event_id: Uuid,
    pub event_type: String,
    /// The stored event's JSON: the body, byte for byte the same on every attempt. `None` when
    /// the event has expired.
    pub body: Option<Bytes>,
    /// The trace context the event was stored with: each attempt is a span in its trace.
    pub trace: Option<TraceContext>,
    pub webhook: WebhookRecord,
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    RetryAt(i64),
    Succeeded,
    Failed,
}

/// The result of one attempt, to record.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub delivery_id: Uuid,
    /// The lease holder that made the attempt: a record by anyone else is refused.
    pub lease_owner: Uuid,
    pub webhook_id: Uuid,
    pub attempt: AttemptRecord,
    pub next: NextStep,
    /// Disable the endpoint.
    pub disable: Option<Disable>,
}

/// Why, and on what condition, an endpoint is disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disable {
    pub reason: String,
    /// Only if the endpoint has had no success since this time (checked when recording, so a
    /// success recorded meanwhile by another attempt wins).
    pub unless_success_since: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_format_reads_back_as_stored() {
        for format in [
            DeliveryFormat::Cpod,
            DeliveryFormat::CloudEvents(ContentMode::Structured),
            DeliveryFormat::CloudEvents(ContentMode::Binary),
        ] {
            assert_eq!(DeliveryFormat::from_stored(format.as_str()), format);
        }
        assert_eq!(DeliveryFormat::from_stored(""), DeliveryFormat::Cpod);
        assert_eq!(
            DeliveryFormat::CloudEvents(ContentMode::Binary).content_mode(),
            Some(ContentMode::Binary)
        );
        assert_eq!(DeliveryFormat::Cpod.content_mode(), None);
    }
}
