//! The HTTP/1.1 of a stream the broker serves itself: reading its request head (with
//! `httparse`, into a buffer that is freed once the head is parsed) and writing the raw answers
//! — an error as the same response actix-web would send (built by [`ApiError`]'s one mapping,
//! then written out), or the event stream's head.
//!
//! The stream's body is delimited by the connection's close (`Connection: close`, no length, no
//! chunking), so that an event's frame goes to every subscriber as the same bytes.

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::rt::net::TcpStream;
use actix_web::{HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use cpod_proto::{ErrorBody, ErrorCode};
use tokio::time::Instant;

use crate::error::ApiError;

/// At most this much request line and headers, as actix-http allows.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// At most this many headers, as actix-http allows.
pub const MAX_HEADERS: usize = 96;

/// What a stream request carries that the broker reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamHead {
    /// The query string, without its `?`.
    pub query: String,
    pub authorization: Option<Vec<u8>>,
    pub last_event_id: Option<Vec<u8>>,
}

/// Why a head could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error(
        "the request's head is too large: at most 32 KiB of request line and headers, and at most 96 headers"
    )]
    TooLarge,
    #[error("the request is not valid HTTP/1.1 and was refused before it was read")]
    Malformed,
    #[error("the request's head did not arrive in time")]
    TimedOut,
    #[error("the client closed the connection")]
    Closed,
}

impl HeadError {
    /// The status and the answer to send, if the client is still there to read one.
    pub fn answer(&self) -> Option<(u16, Bytes)> {
        let error = match self {
            HeadError::TooLarge => {
                // No handler answers 431, so it is not one of ApiError's cases: the body is the
                // contract's, as for actix-http's own refusal (`crate::http::connection`).
                let code = ErrorCode::RequestHeadersTooLarge;
                let body = ErrorBody::new(code, self.to_string(), None);
                let mut response = HttpResponse::build(
                    actix_web::http::StatusCode::from_u16(code.status())
                        .expect("the code table holds valid statuses"),
                );
                return Some((code.status(), response_bytes(response.json(body))));
            }
            HeadError::Malformed => ApiError::invalid_body(self.to_string()),
            HeadError::TimedOut => ApiError::RequestTimeout(self.to_string()),
            HeadError::Closed => return None,
        };
        Some((error.kind().status(), error_answer(&error)))
    }
}

/// Reads the request head within `timeout`. Bytes after the head (a pipelined request) are
/// read and dropped: a stream's connection carries no other request.
pub async fn read_head(tcp: &TcpStream, timeout: Duration) -> Result<StreamHead, HeadError> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match tokio::time::timeout_at(deadline, tcp.readable()).await {
            Err(_) => return Err(HeadError::TimedOut),
            Ok(Err(_)) => return Err(HeadError::Closed),
            Ok(Ok(())) => {}
        }
        buf.reserve(1024);
        match tcp.try_read_buf(&mut buf) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(HeadError::Closed),
        }
        if let Some(head) = parse_head(&buf)? {
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The head in `buf`, once it is complete.
pub fn parse_head(buf: &[u8]) -> Result<Option<StreamHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
        Ok(httparse::Status::Complete(length)) => {
            if length > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            let path = request.path.unwrap_or_default();
            let query = path.split_once('?').map_or("", |(_, query)| query);
            // The first of a repeated header counts, as actix's `headers().get()` answers.
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.to_vec())
            };
            Ok(Some(StreamHead {
                query: query.to_owned(),
                authorization: header("authorization"),
                last_event_id: header("last-event-id"),
            }))
        }
    }
}

/// `error` as the whole HTTP response actix-web would send for it (status, headers such as
/// `Retry-After` and `WWW-Authenticate`, the contract's JSON body), closing the connection.
pub fn error_answer(error: &ApiError) -> Bytes {
    response_bytes(error.error_response())
}

/// A response with a complete body, as bytes, with `Connection: close`.
fn response_bytes(response: HttpResponse) -> Bytes {
    let status = response.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = response
        .into_body()
        .try_into_bytes()
        .unwrap_or_else(|_| Bytes::new());
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// The head of the event stream's response: the contract's headers, the body running until the
/// connection closes.
pub const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: text/event-stream\r\n\
cache-control: no-cache\r\n\
x-accel-buffering: no\r\n\
content-encoding: identity\r\n\
connection: close\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_complete_with_its_query_and_first_headers() {
        let raw = b"GET /v1/events/stream?types=pod.*&ticket=t HTTP/1.1\r\nHost: x\r\n\
authorization: Bearer a\r\nAuthorization: Bearer b\r\nLast-Event-ID: 42\r\n\r\nGET / HTTP/1.1\r\n";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.query, "types=pod.*&ticket=t");
        assert_eq!(head.authorization.as_deref(), Some(&b"Bearer a"[..]));
        assert_eq!(head.last_event_id.as_deref(), Some(&b"42"[..]));
        assert_eq!(parse_head(&raw[..30]).unwrap(), None);
        let bare = parse_head(b"GET /v1/events/stream HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(bare, StreamHead::default());
    }

    #[test]
    fn broken_and_oversized_heads_are_refused_with_the_contract_json() {
        assert_eq!(
            parse_head(b"GET /v1/events/stream HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("GET /v1/events/stream HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(raw.as_bytes()), Err(HeadError::TooLarge));
        let (status, answer) = HeadError::TooLarge.answer().unwrap();
        assert_eq!(status, 431);
        let text = std::str::from_utf8(&answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "request_headers_too_large");
        assert!(HeadError::Closed.answer().is_none());
    }

    #[test]
    fn an_error_answer_keeps_the_headers_of_the_one_mapping() {
        let answer = error_answer(&ApiError::Unauthorized("no key".into()));
        let text = std::str::from_utf8(&answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("www-authenticate: Bearer"), "{text}");
        let answer = error_answer(&ApiError::Unavailable);
        assert!(
            std::str::from_utf8(&answer)
                .unwrap()
                .contains("retry-after: ")
        );
    }
}
