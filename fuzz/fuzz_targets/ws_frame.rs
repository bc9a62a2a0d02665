//! A WebSocket client's text frame (contract §5): parsed as the socket parses it, up to the
//! subscription it asks for, for an admin key and an organization's reader; every error answer
//! is a JSON `error` frame.
#![no_main]

use cpod_events_fuzz::check_client_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_client_frame(text);
    }
});
