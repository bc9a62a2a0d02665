//! CloudEvents 1.0 in the broker: a stored event written in the format a reader asked for (the
//! one function every transport calls, [`encode`]), a webhook's binary-mode message, and a
//! received CloudEvent read into an event draft ([`draft_of`]) under the same rules as cPod's
//! own ingestion body.
//!
//! The mapping itself (source, subject, data…) is `cpod_proto::cloudevents`, shared with the SDK
//! and the CLI. Nothing here knows HTTP requests or SQL.

use bytes::Bytes;
use cloudevents::AttributesReader;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use cpod_proto::cloudevents::{
    BATCH_MEDIA_TYPE, CloudEventError, ContentMode, EventFormat, SPEC_VERSION,
    STRUCTURED_MEDIA_TYPE, Source, is_json_media_type,
};
use cpod_proto::cloudevents::{
    extension_text, json_data, parse_source, split_subject, to_cloudevent,
};

use crate::event::{
    Event, EventDraft, EventType, FieldError, OrganizationId, ResourceId, ResourceType, WorkspaceId,
};
use crate::trace_context::TraceContext;

/// A stored event's JSON that does not read back as an event: a broken invariant, never input.
#[derive(Debug, thiserror::Error)]
#[error("a stored event's JSON does not read as an event: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// A stored event's JSON in `format`: what an SSE `data:` line, a WebSocket `event` frame, a
/// history page and a structured webhook body carry. The cPod format is the stored bytes as
/// they are (no copy).
pub fn encode(json: &Bytes, format: EventFormat) -> Result<Bytes, EncodeError> {
    match format {
        EventFormat::Cpod => Ok(json.clone()),
        EventFormat::CloudEvents => {
            let event: Event = serde_json::from_slice(json)?;
            Ok(Bytes::from(serde_json::to_vec(&to_cloudevent(&event))?))
        }
    }
}

/// A CloudEvent in binary mode: `ce-*` headers (and `content-type`), and the payload as the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMessage {
    /// Header names in lower case, values percent-encoded where the HTTP binding asks.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// What the CloudEvents HTTP binding (3.1.3.2) percent-encodes in a header value: space, `"`,
/// `%` and everything outside printable ASCII.
const HEADER_VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// A stored event as a binary-mode CloudEvent. The attributes come from the SDK's CloudEvent
/// (so extensions set there travel too); their header values are written here because the SDK
/// does not percent-encode them, and a resource id or workspace outside ASCII would otherwise
/// make the request unsendable.
pub fn binary_message(json: &Bytes) -> Result<BinaryMessage, EncodeError> {
    let event: Event = serde_json::from_slice(json)?;
    let cloudevent = to_cloudevent(&event);
    let mut headers = Vec::new();
    for (name, value) in cloudevent.iter() {
        // The distributed-tracing extension travels as the `traceparent`/`tracestate` HTTP
        // headers in binary mode (the webhook worker writes them), never as `ce-*` headers.
        if matches!(name, "traceparent" | "tracestate") {
            continue;
        }
        let text = match value {
            // RFC 3339 with `Z`, as the event's own timestamp is written.
            cloudevents::event::AttributeValue::Time(time) => {
                time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }
            other => other.to_string(),
        };
        let header = match name {
            "datacontenttype" => "content-type".to_owned(),
            other => format!("ce-{other}"),
        };
        headers.push((
            header,
            utf8_percent_encode(&text, HEADER_VALUE_ESCAPES).to_string(),
        ));
    }
    let body = serde_json::to_vec(&event.payload)?;
    Ok(BinaryMessage {
        headers,
        body: Bytes::from(body),
    })
}

/// Why a received CloudEvent is refused: a broken rule (400) or data that is not JSON (415),
/// naming the attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(CloudEventError),
    #[error("{0}")]
    Unsupported(CloudEventError),
}

impl Refusal {
    pub fn invalid(attribute: &'static str, message: impl Into<String>) -> Self {
        Refusal::Invalid(CloudEventError {
            attribute,
            message: message.into(),
        })
    }

    pub fn unsupported(attribute: &'static str, message: impl Into<String>) -> Self {
        Refusal::Unsupported(CloudEventError {
            attribute,
            message: message.into(),
        })
    }

    pub fn attribute(&self) -> &'static str {
        match self {
            Refusal::Invalid(e) | Refusal::Unsupported(e) => e.attribute,
        }
    }
}

/// A received CloudEvent, read as an event draft.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEventDraft {
    pub draft: EventDraft,
    /// Its `source` names no organization (see [`Source::Foreign`]): the key's organization
    /// is meant, and an admin key, which has none, is refused.
    pub foreign_source: bool,
    /// `source` and `id`, which identify a CloudEvent (and its repeats).
    pub source: String,
    pub id: String,
    /// What a repeat must carry to be the same request: SHA-256 of source, id, type, subject
    /// and data (the attributes kept), whichever mode it came in.
    pub content_hash: [u8; 32],
    /// Its distributed-tracing extension attributes (`traceparent`, `tracestate`) read by the
    /// W3C rules: an invalid `traceparent` means none (ignored, never refused, as for the
    /// headers), an invalid `tracestate` is dropped. The request's headers win over it.
    pub trace: Option<TraceContext>,
}

/// Reads a parsed CloudEvent into an event draft. `percent_encoded` says its attributes came
/// as binary-mode header values, which the HTTP binding percent-encodes. Attribute rules are
/// the event's (`type` as `type`, `subject` halves as `resourceType`/`resourceId`), each error
/// naming the CloudEvents attribute.
pub fn draft_of(
    cloudevent: &cloudevents::Event,
    percent_encoded: bool,
) -> Result<CloudEventDraft, Refusal> {
    let decoded = |attribute: &'static str, raw: &str| -> Result<String, Refusal> {
        if !percent_encoded {
            return Ok(raw.to_owned());
        }
        percent_decode_str(raw)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| {
                Refusal::invalid(
                    attribute,
                    format!("{attribute} is not UTF-8 once percent-decoded"),
                )
            })
    };
    let renamed = |attribute: &'static str| {
        move |e: FieldError| Refusal::invalid(attribute, format!("{attribute}: {}", e.message))
    };
    let id = decoded("id", cloudevent.id())?;
    if id.is_empty() {
        return Err(Refusal::invalid("id", "id must not be empty"));
    }
    let source = decoded("source", cloudevent.source())?;
    if source.is_empty() {
        return Err(Refusal::invalid("source", "source must not be empty"));
    }
    let event_type = EventType::parse(cloudevent.ty())?;
    let subject = match cloudevent.subject() {
        Some(subject) => decoded("subject", subject)?,
        None => {
            return Err(Refusal::invalid(
                "subject",
                "subject is required: <resourceType>/<resourceId>",
            ));
        }
    };
    let (resource_type, resource_id) = split_subject(&subject).map_err(Refusal::Invalid)?;
    let resource_type = ResourceType::parse(resource_type).map_err(renamed("subject"))?;
    let resource_id = ResourceId::parse(resource_id).map_err(renamed("subject"))?;
    let (organization_id, workspace_id, foreign_source) =
        match parse_source(&source).map_err(Refusal::Invalid)? {
            Source::Organization {
                organization,
                workspace,
            } => (
                Some(OrganizationId::parse(organization).map_err(renamed("source"))?),
                workspace
                    .map(WorkspaceId::parse)
                    .transpose()
                    .map_err(renamed("source"))?,
                false,
            ),
            Source::Foreign => (None, None, true),
        };
    let payload = json_data(cloudevent).map_err(|e| match e.attribute {
        "datacontenttype" => Refusal::Unsupported(e),
        _ => Refusal::Invalid(e),
    })?;
    let traceparent = extension_text(cloudevent, "traceparent");
    let tracestate = extension_text(cloudevent, "tracestate");
    let (trace, _ignored) = TraceContext::from_headers(
        traceparent.as_deref().as_slice(),
        tracestate.as_deref().as_slice(),
    );
    let content = json!([source, id, event_type.as_str(), subject, payload]);
    let content_hash =
        Sha256::digest(serde_json::to_vec(&content).expect("JSON serializes")).into();
    Ok(CloudEventDraft {
        draft: EventDraft {
            event_type,
            resource_id,
            resource_type,
            organization_id,
            workspace_id,
            payload,
        },
        foreign_source,
        source,
        id,
        content_hash,
        trace,
    })
}

impl From<FieldError> for Refusal {
    /// The event's own field errors: only `type` is both an event field and an attribute.
    fn from(e: FieldError) -> Self {
        Refusal::Invalid(CloudEventError {
            attribute: "type",
            message: e.message,
        })
    }
}

/// The idempotency key of a CloudEvents request sent without `Idempotency-Key`: derived from
/// the `source` and `id` of its events (in order, for a batch), which identify a CloudEvent
/// and its repeats. Printable ASCII of fixed length, like any key.
pub fn derived_idempotency_key(events: &[CloudEventDraft]) -> String {
    let mut hash = Sha256::new();
    for event in events {
        // Lengths first, so that no two lists of (source, id) hash alike.
        hash.update((event.source.len() as u64).to_be_bytes());
        hash.update(event.source.as_bytes());
        hash.update((event.id.len() as u64).to_be_bytes());
        hash.update(event.id.as_bytes());
    }
    format!("cloudevents:{}", hex::encode(hash.finalize()))
}

/// The hash a repeat of a CloudEvents request must match: its events' contents, in order.
pub fn request_hash(events: &[CloudEventDraft]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for event in events {
        hash.update(event.content_hash);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{AttributesWriter, EventBuilder, EventBuilderV10};

    const STORED: &str = r#"{"id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","type":"pod.failed","resourceId":"pod 7f9c/é","resourceType":"pod","organizationId":"org-1","workspaceId":null,"payload":{"exitCode":137},"timestamp":"2026-05-01T12:00:00.123Z"}"#;

    fn cloudevent(
        source: &str,
        subject: Option<&str>,
        data: serde_json::Value,
    ) -> cloudevents::Event {
        let mut builder = EventBuilderV10::new()
            .id("a-1")
            .source(source)
            .ty("custom.report.generated")
            .data("application/json", data);
        if let Some(subject) = subject {
            builder = builder.subject(subject);
        }
        builder.build().unwrap()
    }

    #[test]
    fn the_cpod_format_is_the_stored_bytes_and_cloudevents_the_agreed_shape() {
        let json = Bytes::from_static(STORED.as_bytes());
        assert_eq!(encode(&json, EventFormat::Cpod).unwrap(), json);
        let ce: serde_json::Value =
            serde_json::from_slice(&encode(&json, EventFormat::CloudEvents).unwrap()).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["subject"], "pod/pod 7f9c/é");
        assert_eq!(ce["source"], "/organizations/org-1");
        assert_eq!(ce["data"]["exitCode"], 137);
    }

    #[test]
    fn a_binary_message_percent_encodes_header_values_and_sends_the_payload() {
        let message = binary_message(&Bytes::from_static(STORED.as_bytes())).unwrap();
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("ce-specversion"), Some("1.0"));
        assert_eq!(header("ce-subject"), Some("pod/pod%207f9c/%C3%A9"));
        assert_eq!(header("ce-time"), Some("2026-05-01T12:00:00.123Z"));
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(&message.body[..], br#"{"exitCode":137}"#);
        // Percent-decoding on the way in gives the subject back.
        let parsed = cloudevent("/organizations/org-1", header("ce-subject"), json!({}));
        let draft = draft_of(&parsed, true).unwrap();
        assert_eq!(draft.draft.resource_id.as_str(), "pod 7f9c/é");
    }

    #[test]
    fn source_and_subject_give_organization_workspace_and_resource() {
        let draft = draft_of(
            &cloudevent(
                "/organizations/o/workspaces/w",
                Some("report/r-1/x"),
                json!({"a": 1}),
            ),
            false,
        )
        .unwrap();
        assert_eq!(draft.draft.organization_id.unwrap().as_str(), "o");
        assert_eq!(draft.draft.workspace_id.unwrap().as_str(), "w");
        assert_eq!(draft.draft.resource_type.as_str(), "report");
        assert_eq!(draft.draft.resource_id.as_str(), "r-1/x");
        assert!(!draft.foreign_source);
        let foreign = draft_of(
            &cloudevent("https://ci.example/x", Some("a/b"), json!(null)),
            false,
        )
        .unwrap();
        assert!(foreign.foreign_source && foreign.draft.organization_id.is_none());
        assert!(foreign.draft.payload.is_empty());
    }

    #[test]
    fn each_broken_rule_names_its_attribute() {
        let attribute = |ce: cloudevents::Event| draft_of(&ce, false).unwrap_err().attribute();
        assert_eq!(
            attribute(cloudevent("/organizations/o", None, json!({}))),
            "subject"
        );
        assert_eq!(
            attribute(cloudevent("/organizations/o", Some("pod"), json!({}))),
            "subject"
        );
        assert_eq!(
            attribute(cloudevent("/organizations/o", Some("POD/x"), json!({}))),
            "subject"
        );
        assert_eq!(
            attribute(cloudevent("/organizations/o", Some("pod/"), json!({}))),
            "subject"
        );
        assert_eq!(
            attribute(cloudevent("/organizations/o*", Some("a/b"), json!({}))),
            "source"
        );
        assert_eq!(
            attribute(cloudevent("/organizations/o/x", Some("a/b"), json!({}))),
            "source"
        );
        assert_eq!(
            attribute(cloudevent("/organizations/o", Some("a/b"), json!([1]))),
            "data"
        );
        let mut ce = cloudevent("/organizations/o", Some("a/b"), json!({}));
        ce.set_type("nope");
        assert_eq!(attribute(ce), "type");
        let mut ce = cloudevent("/organizations/o", Some("a/b"), json!({}));
        ce.set_data("text/plain", "hello");
        assert!(
            matches!(draft_of(&ce, false), Err(Refusal::Unsupported(e)) if e.attribute == "datacontenttype")
        );
    }

    #[test]
    fn repeats_share_key_and_hash_and_changed_content_changes_only_the_hash() {
        let one = draft_of(
            &cloudevent("/organizations/o", Some("a/b"), json!({"x": 1})),
            false,
        )
        .unwrap();
        let again = draft_of(
            &cloudevent("/organizations/o", Some("a/b"), json!({"x": 1})),
            false,
        )
        .unwrap();
        let changed = draft_of(
            &cloudevent("/organizations/o", Some("a/b"), json!({"x": 2})),
            false,
        )
        .unwrap();
        let key = derived_idempotency_key(std::slice::from_ref(&one));
        assert!(key.len() <= 255 && key.is_ascii());
        assert_eq!(key, derived_idempotency_key(std::slice::from_ref(&again)));
        assert_eq!(key, derived_idempotency_key(std::slice::from_ref(&changed)));
        assert_eq!(
            request_hash(std::slice::from_ref(&one)),
            request_hash(&[again])
        );
        assert_ne!(request_hash(&[one]), request_hash(&[changed]));
    }
}
