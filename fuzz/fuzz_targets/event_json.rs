//! An ingestion body, as `POST /v1/events` and `POST /v1/events/batch` read it: whatever parses
//! as an event must serialize to the wire JSON of exactly that event, of the size announced.
#![no_main]

use cpod_events::event::{Event, EventDraft, NewEvent, OrganizationId};
use cpod_events::http::ingest::batch_items;
use cpod_events::http::parse_json;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use uuid::Uuid;

fuzz_target!(|body: &[u8]| {
    if let Ok(value) = parse_json(body) {
        check_event(value);
    }
    if let Ok(items) = batch_items(body) {
        assert!((1..=1000).contains(&items.len()));
        for item in items {
            check_event(item);
        }
    }
});

fn check_event(value: Value) {
    let Ok(draft) = EventDraft::from_json(value) else {
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
    assert_eq!(stored.id, id);
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
