//! An ingestion body, as `POST /v1/events` and `POST /v1/events/batch` read it: whatever parses
//! as an event must serialize to the wire JSON of exactly that event, of the size announced.
#![no_main]

use cpod_events::event::{Event, EventDraft, NewEvent, NewEventBody, OrganizationId};
use cpod_events::http::ingest::{MAX_BATCH, batch_events};
use cpod_events::http::wire::parse_body;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|body: &[u8]| {
    if let Ok(event) = parse_body::<NewEventBody>(body) {
        check_event(event);
    }
    if let Ok(events) = batch_events(body) {
        assert!((1..=MAX_BATCH).contains(&events.len()));
        for event in events {
            check_event(event);
        }
    }
});

fn check_event(body: NewEventBody) {
    let Ok(draft) = EventDraft::from_body(body) else {
        return;
    };
    let organization = draft
        .organization_id
        .clone()
        .unwrap_or_else(|| OrganizationId::parse("org-fuzz").unwrap());
    let event = NewEvent::new(
        draft.event_type.clone(),
        draft.resource_id.clone(),
        draft.resource_type.clone(),
        organization.clone(),
        draft.workspace_id.clone(),
        &draft.payload,
    );
    let id = Uuid::from_u128(0x0193_6f0e_8c1a_7b3e_9a51_3f1c_2d4e_5f60);
    let json = event.stamp(&id, 1_777_636_800_123);
    assert_eq!(
        json.len(),
        event.json_len(),
        "the stored size is the announced size"
    );
    let stored: Event = serde_json::from_slice(&json).expect("the wire JSON is an event");
    assert_eq!(stored.id, id.to_string());
    assert_eq!(stored.event_type, draft.event_type.as_str());
    assert_eq!(stored.resource_id, draft.resource_id.as_str());
    assert_eq!(stored.resource_type, draft.resource_type.as_str());
    assert_eq!(stored.organization_id, organization.as_str());
    assert_eq!(
        stored.workspace_id.as_deref(),
        draft.workspace_id.as_ref().map(|w| w.as_str())
    );
    assert_eq!(stored.payload, draft.payload);
    assert_eq!(stored.timestamp, "2026-05-01T12:00:00.123Z");
    assert!(
        !json.contains(&b'\n'),
        "the wire JSON is one line (one SSE data line)"
    );
}
