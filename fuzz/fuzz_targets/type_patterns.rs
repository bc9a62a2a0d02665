//! Type patterns as `types=` carries them (comma-separated), and the exact-field filters: a
//! pattern that parses matches exactly what the contract's glob says it matches.
#![no_main]

use cpod_events::filter::{EventKey, Filter, MAX_TYPE_PATTERNS, OrgScope, parse_type_list};
use cpod_events_fuzz::reference_glob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Line 1: the `types` value; line 2: an event type to match; lines 3-5: resource type,
    // resource id, workspace id filters.
    let mut lines = text.split('\n');
    let types = lines.next().unwrap_or("");
    let event_type = lines.next().unwrap_or("");
    let (resource_type, resource_id, workspace_id) = (lines.next(), lines.next(), lines.next());
    let Ok(patterns) = parse_type_list([types]) else {
        return;
    };
    assert!(patterns.len() <= MAX_TYPE_PATTERNS);
    for pattern in &patterns {
        if event_type.len() <= 256 {
            assert_eq!(
                pattern.matches(event_type),
                reference_glob(pattern.as_str().as_bytes(), event_type.as_bytes()),
                "pattern {:?} on {event_type:?}",
                pattern.as_str()
            );
        }
    }
    let Ok(filter) = Filter::new(
        OrgScope::All,
        patterns,
        resource_type,
        resource_id,
        workspace_id,
    ) else {
        return;
    };
    let key = EventKey {
        organization_id: "org-fuzz",
        event_type,
        resource_type: resource_type.unwrap_or("thing"),
        resource_id: resource_id.unwrap_or("thing-1"),
        workspace_id,
    };
    let expected = filter.types.is_empty() || filter.types.iter().any(|p| p.matches(event_type));
    assert_eq!(filter.matches(&key), expected);
});
