//! The bytes a WebSocket client sends after the upgrade, arriving in chunks of any size: decoded
//! into frames by the same message stream the socket reads ([`client_messages`]: actix-ws with
//! the broker's frame limit), each message handled as [`incoming`] decides, each text frame
//! parsed as a client operation. Input: one byte of chunk size, then the stream.
#![no_main]

use actix_web::FromRequest;
use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::test::TestRequest;
use actix_web::web::{self, Bytes};
use cpod_events::http::ws::{Incoming, MAX_CLIENT_FRAME, client_messages, incoming};
use cpod_events_fuzz::{assert_error_frame, check_client_frame};
use futures_util::{FutureExt, StreamExt, stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let chunks: Vec<Result<Bytes, PayloadError>> = bytes
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let req = TestRequest::get()
        .insert_header((header::UPGRADE, "websocket"))
        .insert_header((header::CONNECTION, "Upgrade"))
        .insert_header((header::SEC_WEBSOCKET_VERSION, "13"))
        .insert_header((header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="))
        .to_http_request();
    let mut payload = Payload::Stream {
        payload: stream::iter(chunks).boxed_local(),
    };
    let body = web::Payload::from_request(&req, &mut payload)
        .now_or_never()
        .expect("a payload is ready")
        .unwrap_or_else(|e: actix_web::Error| unreachable!("{e}"));
    let (_response, _session, messages) =
        actix_ws::handle(&req, body).expect("a valid upgrade request");
    let mut messages = client_messages(messages);
    // Every chunk is ready at once: the stream ends (or the socket would) without waiting.
    loop {
        let next = messages
            .next()
            .now_or_never()
            .expect("the stream never waits on ready chunks");
        match incoming(next) {
            Incoming::End => break,
            Incoming::Pong(_) | Incoming::Ignore => {}
            Incoming::Text(text) => {
                assert!(text.len() <= MAX_CLIENT_FRAME);
                check_client_frame(&text);
            }
            Incoming::Refuse(answer) => assert_error_frame(&answer),
        }
    }
});
