//! `GET /v1/events/stream`: Server-Sent Events (contract §5), written by hand.
//!
//! The stream opens with a jittered `retry:` at once (and an `event: reset` when the given
//! `Last-Event-ID` is unknown), then sends each event as `id:` + one-line `data:` JSON, with no
//! `event:` field, and a `: keep-alive` comment after each idle heartbeat interval. Frames come
//! pre-encoded from the hub (one encoding per event, shared by every subscriber); several
//! pending events go out in one write. The stream ends on shutdown, when its key is revoked, or
//! when the ticket that opened it expires — also when its client does not read: a response whose
//! socket does not drain is no longer polled, so a watcher closes its connection if the stream
//! has not ended [`UNREAD_STREAM_GRACE`] after it should have.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
use uuid::Uuid;

use crate::cloudevents::{EncodeError, EventFormat, encode};
use crate::error::ApiError;
use crate::http::QueryParams;
use crate::http::closer::ConnectionCloser;
use crate::http::state::AppState;
use crate::http::streams::{DeliveryCounter, StreamRequest, SubscriberGauge, open_stream};
use crate::http::wire::frames::{ResetReason, SseReset};
use crate::hub::Subscription;
use crate::store::StoredEvent;

/// The comment an idle stream sends after each heartbeat interval.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// The range of the opening `retry:` (milliseconds), jittered within it.
pub const RETRY_MS: std::ops::Range<u32> = 2000..5000;
/// How long a stream that should end gets to end by itself (its client reading the last bytes)
/// before its connection is closed under it.
pub const UNREAD_STREAM_GRACE: Duration = Duration::from_secs(1);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/events/stream")
            .route(web::get().to(stream_events))
            .default_service(crate::error::method_not_allowed("GET")),
    );
}

/// One event as an SSE message: `id: <id>\ndata: <json>\n\n`. The JSON is compact, so it is one
/// line (JSON strings cannot hold a raw newline).
/// An event's SSE message, encoded on first use and then shared by every subscriber.
pub fn frame_of(event: &StoredEvent) -> &Bytes {
    event
        .sse
        .get_or_init(|| event_frame(&event.id, &event.json))
}

pub fn event_frame(id: &Uuid, json: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(json.len() + 52);
    frame.put_slice(b"id: ");
    frame.put_slice(
        id.hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    frame.put_slice(b"\ndata: ");
    frame.put_slice(json);
    frame.put_slice(b"\n\n");
    frame.freeze()
}

/// The `event: reset` message for a `Last-Event-ID` the broker cannot resume from.
pub fn reset_frame(last_event_id: &str) -> Bytes {
    let data = SseReset {
        reason: ResetReason::UnknownLastEventId,
        last_event_id: last_event_id.to_owned(),
    };
    let data = serde_json::to_string(&data).expect("the reset data serializes");
    Bytes::from(format!("event: reset\ndata: {data}\n\n"))
}

/// The opening `retry:`, jittered between 2 and 5 seconds so that a restart does not bring
/// every client back in the same second.
pub fn retry_frame() -> Bytes {
    Bytes::from(format!("retry: {}\n\n", rand::random_range(RETRY_MS)))
}

/// An event's SSE message in `format`: the shared frame for cPod's JSON; a CloudEvent's is
/// encoded for this subscriber (same `id:`, so `Last-Event-ID` resumes either way).
pub fn frame_in(event: &StoredEvent, format: EventFormat) -> Result<Bytes, EncodeError> {
    match format {
        EventFormat::Cpod => Ok(frame_of(event).clone()),
        _ => Ok(event_frame(&event.id, &encode(&event.json, format)?)),
    }
}

/// Several events in one chunk, with how many (`None` for none); one event is its frame,
/// uncopied. Both stream paths write through this (`crate::http::owned` per subscriber).
pub fn frames<'a>(
    mut events: impl Iterator<Item = &'a StoredEvent>,
    format: EventFormat,
) -> Result<Option<(Bytes, usize)>, EncodeError> {
    let Some(first) = events.next() else {
        return Ok(None);
    };
    let Some(second) = events.next() else {
        return Ok(Some((frame_in(first, format)?, 1)));
    };
    let mut chunk = BytesMut::new();
    let mut count = 0;
    for event in [first, second].into_iter().chain(events) {
        chunk.put_slice(&frame_in(event, format)?);
        count += 1;
    }
    Ok(Some((chunk.freeze(), count)))
}

/// Stream events as Server-Sent Events.
#[utoipa::path(
    get, path = "/v1/events/stream", tag = "streams",
    params(
        crate::http::wire::StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (wins over lastEventId and since)", pattern = r"^[\x20-\x7E]*$"),
    ),
    responses(
        (status = 200, description = "text/event-stream: `retry:`, then `id:`/`data:` messages, `: keep-alive` comments, `event: reset`", content_type = "text/event-stream"),
        (status = 403, description = "The key may not read this organization (another one, or `*` without an admin key)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []), ("ticket" = []))
)]
pub async fn stream_events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut params = QueryParams::parse(&req)?;
    let header = |name| req.headers().get(name).map(|v| v.as_bytes());
    let request = StreamRequest::parse(
        header(header::AUTHORIZATION),
        header(header::HeaderName::from_static("last-event-id")),
        &mut params,
        &state,
    )
    .await?;
    params.finish()?;
    let format = request.format;
    let opened = open_stream(&state, request).await?;

    let mut pending = VecDeque::from([retry_frame()]);
    if let Some(unknown) = &opened.reset {
        pending.push_back(reset_frame(unknown));
    }
    let heartbeat = state.heartbeat;
    let ended = state.hub.key_token(opened.principal.key_id);
    let finished = CancellationToken::new();
    if let Some(closer) = req.conn_data::<ConnectionCloser>() {
        actix_web::rt::spawn(close_if_unread(
            closer.clone(),
            ended.clone(),
            opened.deadline,
            finished.clone(),
        ));
    }
    let stream = SseStream {
        subscription: opened.subscription,
        format,
        pending,
        ended: Box::pin(ended.cancelled_owned()),
        deadline: opened
            .deadline
            .map(|d| Box::pin(tokio::time::sleep_until(d))),
        _finished: finished.drop_guard(),
        heartbeat,
        heartbeat_timer: Box::pin(tokio::time::sleep(heartbeat)),
        last_sent: Instant::now(),
        delivered: DeliveryCounter::new("sse"),
        _gauge: SubscriberGauge::new("sse"),
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, actix_web::Error>(chunk), stream))
    });
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header((
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        ))
        .streaming(body))
}

/// Closes the stream's connection when the stream should have ended (`ended`: revocation or
/// shutdown; `deadline`: the ticket's expiry) but has not within [`UNREAD_STREAM_GRACE`] —
/// its client is not reading, so the response is not polled and cannot notice by itself.
async fn close_if_unread(
    closer: ConnectionCloser,
    ended: CancellationToken,
    deadline: Option<Instant>,
    finished: CancellationToken,
) {
    let expiry = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = finished.cancelled() => return,
        _ = ended.cancelled() => {}
        _ = expiry => {}
    }
    tokio::select! {
        _ = finished.cancelled() => {}
        _ = tokio::time::sleep(UNREAD_STREAM_GRACE) => {
            tracing::debug!("an SSE stream's client is not reading: its connection is closed");
            closer.close();
        }
    }
}

/// One open SSE response. The futures it waits on besides the subscription are created once
/// and kept (pinned) for its whole life: per delivery, only the subscription is polled anew.
struct SseStream {
    subscription: Subscription,
    format: EventFormat,
    pending: VecDeque<Bytes>,
    /// Resolves when the key is revoked or the broker shuts down.
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    /// When the ticket that opened the stream expires.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Tells the watcher ([`close_if_unread`]) that the stream is gone.
    _finished: DropGuard,
    heartbeat: Duration,
    /// Fires at most once per heartbeat; a keep-alive goes out only if nothing else did since.
    heartbeat_timer: Pin<Box<Sleep>>,
    last_sent: Instant,
    delivered: DeliveryCounter,
    _gauge: SubscriberGauge,
}

impl SseStream {
    /// The next bytes to write, or `None` to end the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(chunk) = self.pending.pop_front() {
            return Some(chunk);
        }
        loop {
            let deadline = async {
                match self.deadline.as_mut() {
                    Some(sleep) => sleep.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.ended.as_mut() => return None,
                _ = deadline => return None,
                _ = self.heartbeat_timer.as_mut() => {
                    self.delivered.flush();
                    let due = self.last_sent + self.heartbeat;
                    if Instant::now() >= due {
                        self.last_sent = Instant::now();
                        self.heartbeat_timer.as_mut().reset(self.last_sent + self.heartbeat);
                        return Some(Bytes::from_static(KEEP_ALIVE));
                    }
                    self.heartbeat_timer.as_mut().reset(due);
                }
                next = self.subscription.next() => match next {
                    Ok(events) => {
                        self.last_sent = Instant::now();
                        self.delivered.add(events.len());
                        match frames(events.iter().map(|e| &**e), self.format) {
                            Ok(chunk) => return chunk.map(|(chunk, _)| chunk),
                            Err(e) => {
                                tracing::error!(error = %e, "an SSE stream ends: an event could not be encoded");
                                return None;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "an SSE stream ends: its subscription failed");
                        return None;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_sse_message_with_id_and_one_data_line() {
        let id = Uuid::parse_str("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60").unwrap();
        let json = br#"{"id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","payload":{"text":"a\nb"}}"#;
        let frame = event_frame(&id, json);
        let text = std::str::from_utf8(&frame).unwrap();
        assert_eq!(
            text,
            "id: 01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60\ndata: {\"id\":\"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60\",\"payload\":{\"text\":\"a\\nb\"}}\n\n"
        );
        assert_eq!(
            text.matches('\n').count(),
            3,
            "id line, data line, blank line"
        );
        assert!(!text.contains("event:"));
    }

    #[test]
    fn reset_and_retry_have_the_contract_shape() {
        assert_eq!(
            &reset_frame("abc\"x")[..],
            b"event: reset\ndata: {\"reason\":\"unknown_last_event_id\",\"lastEventId\":\"abc\\\"x\"}\n\n"
        );
        for _ in 0..100 {
            let retry = retry_frame();
            let text = std::str::from_utf8(&retry).unwrap();
            let ms: u32 = text.trim_start_matches("retry: ").trim().parse().unwrap();
            assert!(RETRY_MS.contains(&ms));
            assert!(text.ends_with("\n\n"));
        }
    }
}
