//! The bytes a WebSocket client sends after the upgrade, arriving in chunks of any size, read
//! exactly as the socket reads them ([`client_socket`]: the frame-head limit, actix-ws's codec
//! with the broker's frame limit, fragments assembled into messages), each message turned into
//! what the socket does next, each text message parsed as a client operation. Input: one byte
//! of chunk size, then the stream.
#![no_main]

use actix_web::FromRequest;
use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::test::TestRequest;
use actix_web::web::{self, Bytes};
use actix_ws::CloseCode;
use cpod_events::http::ws::{Incoming, MAX_MESSAGE_BYTES, client_socket};
use cpod_events_fuzz::check_client_frame;
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
        .expect("a payload is always there");
    let (_response, _session, mut messages) = client_socket(&req, body)
        .now_or_never()
        .expect("the upgrade does not wait")
        .expect("a valid upgrade request");
    // Every chunk is ready at once: the socket never waits for its next message.
    loop {
        let next = messages
            .next()
            .now_or_never()
            .expect("the stream never waits on ready chunks");
        match next {
            Incoming::End(reason) => {
                if let Some(reason) = reason {
                    assert!(
                        matches!(
                            reason.code,
                            CloseCode::Size | CloseCode::Invalid | CloseCode::Protocol
                        ),
                        "{reason:?}"
                    );
                }
                break;
            }
            Incoming::Pong(_) | Incoming::Alive | Incoming::Binary => {}
            Incoming::Text(text) => {
                assert!(text.len() <= MAX_MESSAGE_BYTES);
                check_client_frame(&text);
            }
        }
    }
});
