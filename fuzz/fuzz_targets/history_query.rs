//! A whole `GET /v1/events` query string (filters, types, since/until, limit, order, cursor),
//! for an admin key and an organization's reader: whatever parses is within the contract's
//! bounds, and a reader never gets another organization.
#![no_main]

use cpod_events::filter::OrgScope;
use cpod_events::http::QueryParams;
use cpod_events::http::history::parse_history_query;
use cpod_events_fuzz::principals;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    for principal in principals() {
        let Ok(params) = QueryParams::from_query(query) else {
            return;
        };
        let Ok(parsed) = parse_history_query(&principal, params) else {
            continue;
        };
        assert!((1..=1000).contains(&parsed.limit));
        assert!(parsed.after_position.is_none_or(|p| p >= 0));
        if let Some(own) = &principal.organization_id {
            assert_eq!(parsed.filter.organization, OrgScope::One(own.clone()));
        }
    }
});
