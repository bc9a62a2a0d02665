//! Streams the broker serves itself, below actix-web: `GET /v1/events/stream` asked for as the
//! first request of a connection.
//!
//! Every new connection is looked at before actix-http sees it ([`sniff`]: its first bytes,
//! peeked, so they stay in the socket for whoever reads it). A stream request is then read
//! ([`head`]), authenticated and resolved exactly as the actix route does it (the same
//! [`StreamRequest`], errors from the same mapping), and answered on the raw socket; from then on
//! the connection is a [`subscriber::Subscriber`] of its worker's [`shard::Shard`] — a socket, a
//! filter, a position and a few flags — with no HTTP dispatcher, no per-connection buffers and
//! no task woken per event: the shard writes each event's shared frame into the socket. Every
//! other connection, and a stream asked for later on a keep-alive connection, goes to actix-web
//! (`crate::http::sse`), which serves the same contract.

pub mod head;
pub mod shard;
mod subscriber;
mod task;
mod wheel;

use std::rc::Rc;
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::filter::Filter;
use crate::http::QueryParams;
use crate::http::sse::{reset_frame, retry_frame};
use crate::http::streams::{StreamRequest, resolve_start, ticket_deadline};
use crate::hub::Start;

pub use shard::Shard;
use subscriber::Subscriber;

/// The request line a directly served stream starts with (then a space or `?`).
const STREAM_REQUEST: &[u8] = b"GET /v1/events/stream";
/// How long a new connection gets to send its request line, and a stream request its head (as
/// actix-http's client request timeout).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused stream's connection stays open for its client to read the answer.
const LINGER: Duration = Duration::from_secs(1);
/// The route label of the stream in the request metrics.
const ROUTE: &str = "/v1/events/stream";

/// Who serves a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A stream request: served here.
    Stream,
    /// Anything else: actix-web.
    Http,
}

/// Peeks at a new connection's first bytes to choose who serves it; a connection that sends
/// nothing in time, or closes, goes to actix-http, whose own timeouts answer it.
pub async fn sniff(tcp: &TcpStream) -> Route {
    let started = Instant::now();
    let mut seen = [0u8; STREAM_REQUEST.len() + 1];
    let mut pause = Duration::from_millis(1);
    loop {
        let peeked = tokio::time::timeout_at(started + REQUEST_TIMEOUT, tcp.peek(&mut seen)).await;
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Route::Http,
        };
        let common = n.min(STREAM_REQUEST.len());
        if seen[..common] != STREAM_REQUEST[..common] {
            return Route::Http;
        }
        if n == seen.len() {
            return if matches!(seen[STREAM_REQUEST.len()], b' ' | b'?') {
                Route::Stream
            } else {
                Route::Http
            };
        }
        // The request line is still arriving; peeking again at once would spin on the same
        // bytes.
        if started.elapsed() >= REQUEST_TIMEOUT {
            return Route::Http;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Serves a stream request on `tcp` until the stream ends.
pub async fn serve_stream(tcp: TcpStream, shard: Shard) {
    let started = Instant::now();
    // Boxed: reading and authenticating the request needs far more state than the stream
    // afterwards, and a task's future is as large as its largest state.
    let opened = Box::pin(open(&tcp, &shard)).await;
    let status = match &opened {
        Ok(_) => 200,
        Err(Refusal::Answer(status, _)) => *status,
        Err(Refusal::Gone) => 0,
    };
    if status != 0 {
        crate::telemetry::count_request("GET", ROUTE, status, started.elapsed());
    }
    let opened = match opened {
        Ok(opened) => opened,
        Err(Refusal::Answer(_, answer)) => return refuse(tcp, answer).await,
        Err(Refusal::Gone) => return,
    };
    let Some(subscriber) = register(tcp, &shard, opened) else {
        return;
    };
    task::run(subscriber, shard.0).await;
}

/// A stream request, read and resolved, before it is registered.
struct Opened {
    filter: Filter,
    format: crate::cloudevents::EventFormat,
    ended: tokio_util::sync::CancellationToken,
    deadline: Option<Instant>,
    start: Start,
    reset: Option<String>,
}

enum Refusal {
    /// An HTTP status and the whole answer to write.
    Answer(u16, Bytes),
    /// The client went away.
    Gone,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal::Answer(error.kind().status(), head::error_answer(&error))
    }
}

async fn open(tcp: &TcpStream, shard: &Shard) -> Result<Opened, Refusal> {
    let state = shard.state();
    let request = match head::read_head(tcp, REQUEST_TIMEOUT).await {
        Ok(request) => request,
        Err(error) => {
            return Err(match error.answer() {
                Some((status, answer)) => Refusal::Answer(status, answer),
                None => Refusal::Gone,
            });
        }
    };
    // As `crate::http::drain` does for actix's requests.
    if state.drain.admit().is_none() {
        return Err(ApiError::Unavailable.into());
    }
    let mut params = QueryParams::from_query(&request.query)?;
    let stream = StreamRequest::parse(
        request.authorization.as_deref(),
        request.last_event_id.as_deref(),
        &mut params,
        state,
    )
    .await?;
    params.finish()?;
    let (start, reset) =
        resolve_start(state, &stream.filter.organization, stream.resume.clone()).await?;
    Ok(Opened {
        ended: state.hub.key_token(stream.principal.key_id),
        deadline: ticket_deadline(stream.ticket_expires_ms),
        filter: stream.filter,
        format: stream.format,
        start,
        reset,
    })
}

/// Answers the stream and adds it to the shard, with no await in between: its position is the
/// shard's view of now, or the resumed one. `None` when the connection is already gone.
fn register(tcp: TcpStream, shard: &Shard, opened: Opened) -> Option<Rc<Subscriber>> {
    let (position, live) = match opened.start {
        // Everything after the hub's last position reaches the shard after this.
        Start::Now => (shard.0.hub().last_published(), true),
        Start::After(position) => (position, false),
    };
    let subscriber = Rc::new(Subscriber::new(
        tcp,
        opened.filter,
        opened.format,
        opened.ended,
        opened.deadline,
        position,
    ));
    let mut opening = BytesMut::from(head::STREAM_HEAD);
    opening.extend_from_slice(&retry_frame());
    if let Some(unknown) = &opened.reset {
        opening.extend_from_slice(&reset_frame(unknown));
    }
    // Live from the start unless it replays; a head that does not go out whole leaves it to its
    // task, as any blocked write does.
    subscriber.live.set(live);
    if subscriber.write_now(opening.freeze()) == subscriber::Written::Failed {
        return None;
    }
    if !live {
        subscriber.wake();
    }
    // A key revoked while the request was read: the stream opens and ends at once.
    if subscriber.ended.is_cancelled() {
        subscriber.close();
    }
    shard.0.insert(&subscriber);
    Some(subscriber)
}

/// Writes a refusal, then closes the connection once the client has read it (or after
/// [`LINGER`]).
async fn refuse(tcp: TcpStream, answer: Bytes) {
    let write = async {
        let mut rest = &answer[..];
        while !rest.is_empty() {
            tcp.writable().await?;
            match tcp.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        socket2::SockRef::from(&tcp).shutdown(std::net::Shutdown::Write)?;
        // Until the client closes: closing with unread bytes would reset the connection and
        // could destroy the answer before it is read.
        let mut scratch = [0u8; 512];
        loop {
            tcp.readable().await?;
            match tcp.try_read(&mut scratch) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, write).await;
}
