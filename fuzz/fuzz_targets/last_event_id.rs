//! `Last-Event-ID` / `lastEventId`: an id resolves to that event or to none, and the `reset`
//! message that echoes an unknown one stays one well-formed SSE message whatever it holds.
#![no_main]

use cpod_events::http::sse::reset_frame;
use cpod_events::http::streams::last_event_id;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(id) = last_event_id(raw) {
        assert_eq!(last_event_id(&id.to_string()), Some(id));
    }
    let frame = reset_frame(raw);
    let text = std::str::from_utf8(&frame).expect("UTF-8");
    let data = text
        .strip_prefix("event: reset\ndata: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .expect("one reset message");
    assert!(
        !data.contains(['\n', '\r']),
        "the data line is one line: {text:?}"
    );
    let data: Value = serde_json::from_str(data).expect("JSON data");
    assert_eq!(data["lastEventId"], raw);
    assert_eq!(data["reason"], "unknown_last_event_id");
});
