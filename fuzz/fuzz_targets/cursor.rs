//! `cursor=`: anything decodes to a cursor the broker could have given, or is refused; a cursor
//! survives its own round trip.
#![no_main]

use cpod_events::http::history::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cursor) = Cursor::decode(raw) {
        assert!(cursor.position >= 0);
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
    }
});
