//! `since=` and `until=`: a time that parses is a real instant, and the broker's own timestamp
//! of that instant parses back to it.
#![no_main]

use cpod_events::event::format_timestamp;
use cpod_events::http::history::parse_time;
use libfuzzer_sys::fuzz_target;

/// 0001-01-01 and 9999-12-31T23:59:59.999Z: the years a timestamp writes with four digits.
const FIRST_MS: i64 = -62_135_596_800_000;
const LAST_MS: i64 = 253_402_300_799_999;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ms) = parse_time("since", raw) else {
        return;
    };
    if (FIRST_MS..=LAST_MS).contains(&ms) {
        let timestamp = format_timestamp(ms);
        assert_eq!(
            parse_time("until", &timestamp).unwrap(),
            ms,
            "{raw:?} → {timestamp}"
        );
    }
});
