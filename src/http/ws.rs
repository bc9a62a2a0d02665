//! `GET /v1/events/ws`: the WebSocket protocol of contract §5, on actix-ws.
//!
//! One task per socket reads the client's frames and writes every outgoing frame; each
//! subscription is its own task feeding that writer through a bounded channel. A client that
//! reads slowly fills the channel, its subscription tasks wait, their hub receivers lag, and
//! they catch up from the store ([`crate::hub`]): memory stays bounded and nothing is lost.
//!
//! Authentication: an `Authorization` header or `?ticket=` at the upgrade (a bad one is a plain
//! 401, before the upgrade), or a first `{"op":"auth"}` frame within 10 seconds (else close code
//! 4401). Errors are answered with `{"op":"error"}` frames and leave the socket open.
//!
//! Size: a frame, and a message assembled from fragments (RFC 6455 §5.4), is at most
//! [`MAX_MESSAGE_BYTES`]; beyond it the socket is closed with 1009. Frame heads are read as the
//! bytes arrive ([`FrameLimit`]), so an oversized frame is refused at its head, never buffered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Item, Message, ProtocolError, Session};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::cloudevents::{EncodeError, EventFormat, encode};
use crate::error::ApiError;
use crate::filter::{Filter, parse_type_list};
use crate::http::QueryParams;
use crate::http::state::AppState;
use crate::http::streams::{
    DeliveryCounter, Resume, SubscriberGauge, resolve_start, ticket_deadline,
};
use crate::http::wire::frames::{ResetReason, ServerFrame};
use crate::hub::Subscription;
use crate::store::StoredEvent;

/// Frames queued for one socket before its subscriptions must wait.
const OUTGOING_CAPACITY: usize = 256;
/// How long an unauthenticated socket may stay open.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Close code for "authenticate first" (contract §5).
const CLOSE_UNAUTHENTICATED: u16 = 4401;
/// Close code for a revoked key or an expired ticket.
const CLOSE_CREDENTIAL_ENDED: u16 = 4403;
/// Subscriptions one socket may hold.
const MAX_SUBSCRIPTIONS: usize = 100;
/// The largest frame, and the largest message assembled from fragments, a client may send.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/events/ws")
            .route(web::get().to(open_socket))
            .default_service(crate::error::method_not_allowed("GET")),
    );
}

/// Open a WebSocket carrying any number of subscriptions.
#[utoipa::path(
    get, path = "/v1/events/ws", tag = "streams",
    params(("ticket" = Option<String>, Query, description = "A stream ticket, when no Authorization header can be sent")),
    responses(
        (status = 101, description = "Switching protocols: JSON text frames, see the contract §5. A `subscribe` frame may add `\"format\": \"cloudevents\"`: its `event` frames then carry a structured CloudEvent"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad query parameter", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []), ("ticket" = []), ())
)]
pub async fn open_socket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut params = QueryParams::parse(&req)?;
    let ticket = params.take_one("ticket")?;
    params.finish()?;
    let authorization = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not ASCII".into()))?;
    let credential = if authorization.is_some() || ticket.is_some() {
        Some(
            state
                .auth
                .authenticate_stream(authorization.as_deref(), ticket.as_deref())
                .await?,
        )
    } else {
        None
    };
    let (response, session, messages) = client_socket(&req, body).await?;
    let socket = Socket::new(state.into_inner(), session, credential);
    actix_web::rt::spawn(socket.run(messages));
    Ok(response)
}

/// Upgrades the request: the handshake answer, the session to write with, and the client's
/// messages as the socket reads them ([`ClientMessages`]).
pub async fn client_socket(
    req: &HttpRequest,
    body: web::Payload,
) -> Result<(HttpResponse, Session, ClientMessages), ApiError> {
    let oversized = Arc::new(AtomicBool::new(false));
    let limited: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
        Box::pin(FrameLimit::new(body.into_inner(), oversized.clone()));
    let mut limited = actix_web::dev::Payload::Stream { payload: limited };
    let body = web::Payload::from_request(req, &mut limited)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the payload cannot be rewrapped: {e}")))?;
    let (response, session, messages) = actix_ws::handle(req, body)
        .map_err(|e| ApiError::invalid_body(format!("not a WebSocket upgrade: {e}")))?;
    let messages = ClientMessages {
        messages: messages.max_frame_size(MAX_MESSAGE_BYTES),
        fragments: Fragments::default(),
        oversized,
    };
    Ok((response, session, messages))
}

/// A client's messages: frames decoded by actix-ws (at most [`MAX_MESSAGE_BYTES`], heads read
/// by [`FrameLimit`]), fragments assembled, each turned into what the socket does next.
pub struct ClientMessages {
    messages: actix_ws::MessageStream,
    fragments: Fragments,
    oversized: Arc<AtomicBool>,
}

/// What the socket does with the client's next message.
#[derive(Debug)]
pub enum Incoming {
    /// The socket ends, closing with this reason if there is one to give.
    End(Option<CloseReason>),
    /// A ping, answered with this pong.
    Pong(Bytes),
    /// A pong, or a fragment of a message still incomplete: proof the client is alive.
    Alive,
    /// A whole text message: a client operation ([`parse_client_frame`]).
    Text(String),
    /// A whole binary message, refused with an `error` frame.
    Binary,
}

impl ClientMessages {
    /// Waits for the client's next message. Cancel-safe: nothing is consumed until a message
    /// is returned.
    pub async fn next(&mut self) -> Incoming {
        let message = self.messages.next().await;
        self.decide(message)
    }

    fn decide(&mut self, message: Option<Result<Message, ProtocolError>>) -> Incoming {
        let too_big = || {
            Incoming::End(Some(CloseReason {
                code: CloseCode::Size,
                description: Some(format!("a message is at most {MAX_MESSAGE_BYTES} bytes")),
            }))
        };
        let not_utf8 = || {
            Incoming::End(Some(CloseReason {
                code: CloseCode::Invalid,
                description: Some("a text message must be UTF-8".into()),
            }))
        };
        match message {
            None => Incoming::End(None),
            Some(Err(ProtocolError::Overflow)) => too_big(),
            Some(Err(_)) if self.oversized.load(Ordering::Relaxed) => too_big(),
            Some(Err(ProtocolError::Io(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
                not_utf8()
            }
            Some(Err(ProtocolError::Io(_))) => Incoming::End(None),
            Some(Err(e)) => Incoming::End(Some(CloseReason {
                code: CloseCode::Protocol,
                description: Some(e.to_string()),
            })),
            Some(Ok(Message::Close(_))) => Incoming::End(None),
            Some(Ok(Message::Ping(bytes))) => Incoming::Pong(bytes),
            Some(Ok(Message::Pong(_))) | Some(Ok(Message::Nop)) => Incoming::Alive,
            Some(Ok(Message::Text(text))) => Incoming::Text(text.to_string()),
            Some(Ok(Message::Continuation(item))) => match self.fragments.push(item) {
                Ok(None) => Incoming::Alive,
                Ok(Some(Assembled::Text(text))) => Incoming::Text(text),
                Ok(Some(Assembled::Binary)) => Incoming::Binary,
                Err(FragmentError::TooLarge) => too_big(),
                Err(FragmentError::NotUtf8) => not_utf8(),
            },
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
        }
    }
}

/// A frame a subscription task hands to the socket's writer.
enum Outgoing {
    /// An event for the subscription with this id and generation.
    Event(Arc<str>, u64, Arc<StoredEvent>),
    Text(String),
}

struct Socket {
    state: Arc<AppState>,
    session: Session,
    principal: Option<Principal>,
    deadline: Option<Instant>,
    /// Open subscriptions: their cancellation and generation. Frames queued by a subscription
    /// that has since been cancelled (or replaced under the same id) carry an old generation
    /// and are dropped, never written after `unsubscribed`.
    subscriptions: HashMap<String, (CancellationToken, u64, EventFormat)>,
    generations: u64,
    outgoing: mpsc::Sender<Outgoing>,
    queued: Option<mpsc::Receiver<Outgoing>>,
    closing: CancellationToken,
}

impl Socket {
    fn new(
        state: Arc<AppState>,
        session: Session,
        credential: Option<(Principal, Option<i64>)>,
    ) -> Self {
        let (outgoing, queued) = mpsc::channel(OUTGOING_CAPACITY);
        let (principal, expires) = match credential {
            Some((p, e)) => (Some(p), e),
            None => (None, None),
        };
        Self {
            closing: match &principal {
                Some(p) => state.hub.key_token(p.key_id).child_token(),
                None => state.shutdown.child_token(),
            },
            state,
            session,
            principal,
            deadline: ticket_deadline(expires),
            subscriptions: HashMap::new(),
            generations: 0,
            outgoing,
            queued: Some(queued),
        }
    }

    async fn run(mut self, mut messages: ClientMessages) {
        let mut queued = self.queued.take().expect("run once");
        let heartbeat = self.state.heartbeat;
        let opened = Instant::now();
        let mut last_seen = Instant::now();
        let mut last_ping = Instant::now();
        let close = loop {
            let auth_deadline = (self.principal.is_none()).then_some(opened + AUTH_TIMEOUT);
            let deadline = self.deadline;
            tokio::select! {
                biased;
                _ = self.closing.cancelled() => {
                    break Some(if self.state.shutdown.is_cancelled() {
                        CloseReason { code: CloseCode::Away, description: Some("the broker is shutting down".into()) }
                    } else {
                        CloseReason { code: CloseCode::Other(CLOSE_CREDENTIAL_ENDED), description: Some("the key was revoked".into()) }
                    });
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    break Some(CloseReason { code: CloseCode::Other(CLOSE_CREDENTIAL_ENDED), description: Some("the stream ticket expired".into()) });
                }
                _ = async { tokio::time::sleep_until(auth_deadline.expect("guarded")).await }, if auth_deadline.is_some() => {
                    break Some(CloseReason { code: CloseCode::Other(CLOSE_UNAUTHENTICATED), description: Some("authenticate first".into()) });
                }
                _ = tokio::time::sleep_until(last_seen + heartbeat * 2 + heartbeat / 2) => {
                    break Some(CloseReason { code: CloseCode::Policy, description: Some("no answer to two pings".into()) });
                }
                _ = tokio::time::sleep_until(last_ping + heartbeat) => {
                    if self.session.ping(b"").await.is_err() { break None; }
                    last_ping = Instant::now();
                }
                frame = queued.recv() => {
                    let Some(frame) = frame else { break None };
                    let text = match frame {
                        Outgoing::Event(subscription, generation, event) => {
                            let Some(&(_, current, format)) = self.subscriptions.get(&*subscription) else {
                                continue;
                            };
                            if current != generation {
                                continue;
                            }
                            match event_frame(&subscription, &event, format) {
                                Ok(text) => text,
                                Err(e) => {
                                    tracing::error!(error = %e, "a WebSocket event could not be encoded");
                                    error_frame(Some(Value::String(subscription.to_string())), "internal", "an event could not be encoded")
                                }
                            }
                        }
                        Outgoing::Text(text) => text,
                    };
                    if self.session.text(text).await.is_err() { break None; }
                }
                message = messages.next() => {
                    last_seen = Instant::now();
                    match message {
                        Incoming::End(reason) => break reason,
                        Incoming::Pong(bytes) => {
                            if self.session.pong(&bytes).await.is_err() { break None; }
                        }
                        Incoming::Alive => {}
                        Incoming::Text(text) => self.answer(&text).await,
                        Incoming::Binary => self.refuse_binary().await,
                    }
                }
            }
        };
        self.closing.cancel();
        let _ = self.session.close(close).await;
    }

    /// Handles one client message and writes the answers.
    async fn answer(&mut self, text: &str) {
        for answer in self.handle_text(text).await {
            if self.session.text(answer).await.is_err() {
                break;
            }
        }
    }

    async fn refuse_binary(&mut self) {
        let refusal = error_frame(None, "invalid_request", "send JSON text frames, not binary");
        let _ = self.session.text(refusal).await;
    }

    /// Handles one client frame; answers the frames to send back, in order.
    async fn handle_text(&mut self, text: &str) -> Vec<String> {
        let ClientFrame { request, id, op } = match parse_client_frame(text) {
            Ok(frame) => frame,
            Err(error) => return vec![error],
        };
        let op = op.as_str();
        if self.principal.is_none() && op != "auth" {
            return vec![error_frame(
                id,
                "unauthorized",
                "authenticate first: {\"op\":\"auth\",\"token\":\"cpk_…\"}",
            )];
        }
        let result = match op {
            "auth" => self.authenticate(&request).await,
            "ping" => Ok(vec![ServerFrame::Pong {}.to_text()]),
            "subscribe" => self.subscribe(&request).await,
            "unsubscribe" => self.unsubscribe(&request),
            "" => Err(ApiError::invalid("op", "a frame needs an op")),
            other => Err(ApiError::invalid(
                "op",
                format!("unknown op `{other}`: use auth, subscribe, unsubscribe or ping"),
            )),
        };
        result.unwrap_or_else(|e| vec![api_error_frame(id, &e)])
    }

    async fn authenticate(&mut self, request: &Value) -> Result<Vec<String>, ApiError> {
        let token = request
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::invalid("token", "auth needs a token: a key or a stream ticket")
            })?;
        let (principal, expires) = if token.starts_with(crate::tickets::TICKET_PREFIX) {
            self.state
                .auth
                .authenticate_stream(None, Some(token))
                .await?
        } else {
            self.state
                .auth
                .authenticate_stream(Some(&format!("Bearer {token}")), None)
                .await?
        };
        if let Some(current) = &self.principal
            && current.key_id != principal.key_id
        {
            return Err(ApiError::invalid(
                "token",
                "this socket is already authenticated with another key",
            ));
        }
        let organization = principal
            .organization_id
            .as_ref()
            .map(|o| o.as_str().to_owned());
        if self.principal.is_none() {
            // From now on the socket ends with this key (revocation) or with the broker.
            self.closing = self.state.hub.key_token(principal.key_id).child_token();
        }
        self.principal = Some(principal);
        self.deadline = ticket_deadline(expires);
        Ok(vec![
            ServerFrame::Authenticated {
                organization_id: organization,
            }
            .to_text(),
        ])
    }

    async fn subscribe(&mut self, request: &Value) -> Result<Vec<String>, ApiError> {
        let principal = self.principal.clone().expect("checked by the caller");
        let id = parse_subscription_id(request)?;
        if self.subscriptions.contains_key(&id) {
            return Err(ApiError::invalid(
                "id",
                format!("subscription `{id}` already exists"),
            ));
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return Err(ApiError::invalid(
                "id",
                format!("a socket holds at most {MAX_SUBSCRIPTIONS} subscriptions"),
            ));
        }
        let (filter, resume) = parse_subscription(&principal, request)?;
        let format = parse_subscription_format(request)?;
        let (start, reset) = resolve_start(&self.state, &filter.organization, resume).await?;
        let subscription = Subscription::new(&self.state.hub, &self.state.store, filter, start);
        let cancel = self.closing.child_token();
        self.generations += 1;
        let generation = self.generations;
        self.subscriptions
            .insert(id.clone(), (cancel.clone(), generation, format));
        let mut answers = vec![ServerFrame::Subscribed { id: id.clone() }.to_text()];
        if reset.is_some() {
            answers.push(
                ServerFrame::Reset {
                    subscription: id.clone(),
                    reason: ResetReason::UnknownLastEventId,
                }
                .to_text(),
            );
        }
        // The task starts after the answers are written: the caller sends them first, in this
        // task, and the subscription's events only reach the socket through the queue.
        actix_web::rt::spawn(run_subscription(
            (Arc::from(id.as_str()), generation),
            subscription,
            self.outgoing.clone(),
            cancel,
        ));
        Ok(answers)
    }

    fn unsubscribe(&mut self, request: &Value) -> Result<Vec<String>, ApiError> {
        let id = request
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid("id", "unsubscribe needs the subscription's id"))?;
        let (cancel, _, _) = self
            .subscriptions
            .remove(id)
            .ok_or_else(|| ApiError::NotFound(format!("no subscription `{id}` on this socket")))?;
        cancel.cancel();
        Ok(vec![
            ServerFrame::Unsubscribed { id: id.to_owned() }.to_text(),
        ])
    }
}

/// A message being assembled from its fragments.
#[derive(Default)]
struct Fragments {
    text: bool,
    buffer: BytesMut,
}

/// A message whose fragments are all in.
enum Assembled {
    Text(String),
    Binary,
}

enum FragmentError {
    TooLarge,
    NotUtf8,
}

impl Fragments {
    /// Takes one fragment; answers the whole message once its last fragment is in (binary
    /// messages are refused, so their bytes are not kept). The codec has already refused
    /// fragments out of sequence.
    fn push(&mut self, item: Item) -> Result<Option<Assembled>, FragmentError> {
        let (bytes, last) = match item {
            Item::FirstText(bytes) => {
                self.text = true;
                self.buffer.clear();
                (bytes, false)
            }
            Item::FirstBinary(bytes) => {
                self.text = false;
                self.buffer.clear();
                (bytes, false)
            }
            Item::Continue(bytes) => (bytes, false),
            Item::Last(bytes) => (bytes, true),
        };
        if self.text {
            if self.buffer.len() + bytes.len() > MAX_MESSAGE_BYTES {
                self.buffer = BytesMut::new();
                return Err(FragmentError::TooLarge);
            }
            self.buffer.extend_from_slice(&bytes);
        }
        if !last {
            return Ok(None);
        }
        if !self.text {
            return Ok(Some(Assembled::Binary));
        }
        let text = std::mem::take(&mut self.buffer);
        String::from_utf8(text.to_vec())
            .map(|t| Some(Assembled::Text(t)))
            .map_err(|_| FragmentError::NotUtf8)
    }
}

/// The client's bytes on their way to the WebSocket codec, with each frame's head read as it
/// passes: a frame longer than [`MAX_MESSAGE_BYTES`] ends the stream at its head (and sets
/// `oversized`), where the codec would first buffer the whole frame, however long it claims to
/// be.
struct FrameLimit<S> {
    inner: S,
    oversized: Arc<AtomicBool>,
    /// The head of the frame being read, while incomplete.
    head: Vec<u8>,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
}

impl<S> FrameLimit<S> {
    fn new(inner: S, oversized: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            oversized,
            head: Vec::with_capacity(14),
            remaining: 0,
        }
    }

    /// The length of a complete frame head and its payload length, once `head` holds one.
    fn parse_head(head: &[u8]) -> Option<(usize, u64)> {
        let [_, second, ..] = *head else { return None };
        let masked = if second & 0x80 != 0 { 4 } else { 0 };
        let (extended, length) = match second & 0x7f {
            126 => (
                2,
                u64::from(u16::from_be_bytes(head.get(2..4)?.try_into().ok()?)),
            ),
            127 => (8, u64::from_be_bytes(head.get(2..10)?.try_into().ok()?)),
            short => (0, u64::from(short)),
        };
        let size = 2 + extended + masked;
        (head.len() >= size).then_some((size, length))
    }

    /// Follows frame boundaries through `chunk`; `false` when a frame is too long.
    fn follow(&mut self, mut chunk: &[u8]) -> bool {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip =
                    usize::try_from(self.remaining).map_or(chunk.len(), |r| r.min(chunk.len()));
                chunk = &chunk[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            self.head.push(chunk[0]);
            chunk = &chunk[1..];
            if let Some((_, length)) = Self::parse_head(&self.head) {
                if length > MAX_MESSAGE_BYTES as u64 {
                    return false;
                }
                self.head.clear();
                self.remaining = length;
            }
        }
        true
    }
}

impl<S> Stream for FrameLimit<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.oversized.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled
            && !self.follow(chunk)
        {
            self.oversized.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(PayloadError::Overflow)));
        }
        polled
    }
}

/// Feeds one subscription's events to the socket until it is cancelled or the socket is gone.
async fn run_subscription(
    (id, generation): (Arc<str>, u64),
    mut subscription: Subscription,
    outgoing: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
) {
    let _gauge = SubscriberGauge::new("ws");
    let mut delivered = DeliveryCounter::new("ws");
    loop {
        let events = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            next = subscription.next() => match next {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "a WebSocket subscription ends: its subscription failed");
                    let _ = outgoing.send(Outgoing::Text(error_frame(Some(Value::String(id.to_string())), "internal", "the subscription failed; subscribe again"))).await;
                    return;
                }
            },
        };
        delivered.add(events.len());
        for event in events {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                sent = outgoing.send(Outgoing::Event(id.clone(), generation, event)) => if sent.is_err() { return },
            }
        }
    }
}

/// `{"op":"event","subscription":"s1","event":{…}}` in the subscription's format. cPod's is
/// [`ServerFrame::Event`] with the event's stored JSON spliced in rather than parsed and
/// serialized again; a CloudEvent's is [`ServerFrame::CloudEvent`] holding the event's one
/// CloudEvents conversion (`crate::cloudevents::encode`).
fn event_frame(
    subscription: &str,
    event: &StoredEvent,
    format: EventFormat,
) -> Result<String, EncodeError> {
    match format {
        EventFormat::Cpod => {
            let json = std::str::from_utf8(&event.json).expect("stored JSON is UTF-8");
            let id = serde_json::to_string(subscription).expect("a string serializes");
            Ok(format!(
                "{{\"op\":\"event\",\"subscription\":{id},\"event\":{json}}}"
            ))
        }
        EventFormat::CloudEvents => {
            let event: cpod_proto::CloudEvent =
                serde_json::from_slice(&encode(&event.json, format)?)?;
            Ok(ServerFrame::CloudEvent {
                subscription: subscription.to_owned(),
                event,
            }
            .to_text())
        }
    }
}

/// A subscribe frame's `format`: `cpod` (absent or null) or `cloudevents`.
pub fn parse_subscription_format(request: &Value) -> Result<EventFormat, ApiError> {
    match request.get("format") {
        None | Some(Value::Null) => Ok(EventFormat::Cpod),
        Some(Value::String(raw)) => crate::http::cloudevents::parse_format(raw),
        Some(_) => Err(ApiError::invalid(
            "format",
            format!("format must be {}", EventFormat::NAMES),
        )),
    }
}

pub fn error_frame(id: Option<Value>, code: &str, message: &str) -> String {
    ServerFrame::Error {
        id: id.unwrap_or(Value::Null),
        code: code.to_owned(),
        message: message.to_owned(),
    }
    .to_text()
}

pub fn api_error_frame(id: Option<Value>, error: &ApiError) -> String {
    if let ApiError::Internal(cause) = error {
        tracing::error!(
            error = format!("{cause:#}"),
            "internal error on a WebSocket"
        );
    }
    // An internal error's message says nothing of internals (see `ApiError`'s Display).
    error_frame(id, error.code(), &error.to_string())
}

/// A client's text frame, parsed: a JSON object with its `id` (any JSON, echoed in errors) and
/// `op` (empty when missing or not a string).
pub struct ClientFrame {
    pub request: Value,
    pub id: Option<Value>,
    pub op: String,
}

/// Parses a client's text frame; an error is the `error` frame to answer.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    let request: Value = match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => {
            return Err(error_frame(
                None,
                "invalid_request",
                "a frame must be a JSON object",
            ));
        }
        Err(e) => {
            return Err(error_frame(
                None,
                "invalid_request",
                &format!("invalid JSON: {e}"),
            ));
        }
    };
    let id = request.get("id").cloned();
    let op = request
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Ok(ClientFrame { request, id, op })
}

/// A subscribe frame's `id`: a string of 1 to 128 characters.
pub fn parse_subscription_id(request: &Value) -> Result<String, ApiError> {
    match request.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => Ok(id.clone()),
        _ => Err(ApiError::invalid(
            "id",
            "subscribe needs an id: a string of 1 to 128 characters",
        )),
    }
}

/// A subscribe frame's filter and start (`lastEventId` wins over `since`).
pub fn parse_subscription(
    principal: &Principal,
    request: &Value,
) -> Result<(Filter, Resume), ApiError> {
    let filter = parse_filter_object(principal, request.get("filter"))?;
    let resume = match (request.get("lastEventId"), request.get("since")) {
        (Some(Value::String(last)), _) => Resume::AfterEvent(last.clone()),
        (Some(Value::Null) | None, Some(Value::String(since))) => {
            Resume::Since(crate::http::history::parse_time("since", since)?)
        }
        (Some(Value::Null) | None, None | Some(Value::Null)) => Resume::Now,
        (Some(_), _) => {
            return Err(ApiError::invalid(
                "lastEventId",
                "lastEventId must be a string",
            ));
        }
        (_, Some(_)) => return Err(ApiError::invalid("since", "since must be a string")),
    };
    Ok((filter, resume))
}

/// A subscribe frame's `filter`: the history filters as JSON (`types` a list or a
/// comma-separated string).
fn parse_filter_object(principal: &Principal, filter: Option<&Value>) -> Result<Filter, ApiError> {
    let empty = Map::new();
    let object = match filter {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::invalid("filter", "filter must be an object")),
    };
    const FIELDS: [&str; 5] = [
        "organizationId",
        "types",
        "resourceType",
        "resourceId",
        "workspaceId",
    ];
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            "filter",
            format!("unknown filter field `{unknown}`"),
        ));
    }
    let text = |name: &str| -> Result<Option<&str>, ApiError> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
        }
    };
    let organization = principal.read_scope(text("organizationId")?)?;
    let types = match object.get("types") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(list)) => parse_type_list([list.as_str()])?,
        Some(Value::Array(items)) => {
            let names = items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| ApiError::invalid("types", "types must be strings"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            parse_type_list(names)?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "types",
                "types must be a list of patterns",
            ));
        }
    };
    Ok(Filter::new(
        organization,
        types,
        text("resourceType")?,
        text("resourceId")?,
        text("workspaceId")?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A masked client frame head for a payload of `length` bytes (the payload itself follows).
    fn head(length: u64) -> Vec<u8> {
        let mut head = vec![0x81];
        match length {
            0..=125 => head.push(0x80 | length as u8),
            126..=65535 => {
                head.push(0x80 | 126);
                head.extend_from_slice(&(length as u16).to_be_bytes());
            }
            _ => {
                head.push(0x80 | 127);
                head.extend_from_slice(&length.to_be_bytes());
            }
        }
        head.extend_from_slice(&[1, 2, 3, 4]);
        head
    }

    #[test]
    fn the_frame_limit_follows_frames_split_anywhere_and_stops_an_oversized_head() {
        let mut allowed = Vec::new();
        for length in [0, 5, 125, 126, 300, MAX_MESSAGE_BYTES as u64] {
            allowed.extend(head(length));
            allowed.extend(std::iter::repeat_n(b'x', length as usize));
        }
        for split in [1, 2, 3, 7, 1000, allowed.len()] {
            let mut limit = FrameLimit::new((), Arc::new(AtomicBool::new(false)));
            assert!(allowed.chunks(split).all(|c| limit.follow(c)), "{split}");
            assert_eq!((limit.remaining, limit.head.len()), (0, 0));
        }
        for length in [MAX_MESSAGE_BYTES as u64 + 1, 10 << 20, u64::MAX] {
            let mut bytes = allowed.clone();
            bytes.extend(head(length));
            for split in [1, 9, bytes.len()] {
                let mut limit = FrameLimit::new((), Arc::new(AtomicBool::new(false)));
                assert!(
                    !bytes.chunks(split).all(|c| limit.follow(c)),
                    "{length}/{split}"
                );
            }
        }
    }

    #[test]
    fn the_spliced_event_frame_is_the_typed_frame_byte_for_byte() {
        let event: crate::event::Event = serde_json::from_value(json!({
            "id": "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60", "type": "pod.failed",
            "resourceId": "pod-7f9c", "resourceType": "pod", "organizationId": "org-1",
            "workspaceId": null, "payload": {"exitCode": 137, "text": "a\"b"},
            "timestamp": "2026-05-01T12:00:00.123Z"
        }))
        .unwrap();
        let stored = StoredEvent {
            position: 1,
            id: uuid::Uuid::parse_str(&event.id).unwrap(),
            organization_id: event.organization_id.clone(),
            event_type: event.event_type.clone(),
            resource_type: event.resource_type.clone(),
            resource_id: event.resource_id.clone(),
            workspace_id: None,
            json: serde_json::to_vec(&event).unwrap().into(),
            sse: Default::default(),
            trace: None,
        };
        let typed = ServerFrame::Event {
            subscription: "s\"1".into(),
            event,
        };
        assert_eq!(
            event_frame("s\"1", &stored, EventFormat::Cpod).unwrap(),
            typed.to_text()
        );
    }

    #[test]
    fn a_cloudevents_frame_holds_the_events_one_cloudevent_with_its_trace_context() {
        let json = br#"{"id":"01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60","type":"pod.failed","resourceId":"pod-7f9c","resourceType":"pod","organizationId":"org-1","workspaceId":null,"payload":{"exitCode":137},"timestamp":"2026-05-01T12:00:00.123Z","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
        let event = StoredEvent {
            position: 1,
            id: uuid::Uuid::parse_str("01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60").unwrap(),
            organization_id: "org-1".into(),
            event_type: "pod.failed".into(),
            resource_type: "pod".into(),
            resource_id: "pod-7f9c".into(),
            workspace_id: None,
            trace: None,
            json: bytes::Bytes::from_static(json),
            sse: Default::default(),
        };
        let frame = event_frame("s1", &event, EventFormat::CloudEvents).unwrap();
        let cloudevent = encode(&event.json, EventFormat::CloudEvents).unwrap();
        let parsed: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            parsed,
            json!({"op": "event", "subscription": "s1",
                   "event": serde_json::from_slice::<Value>(&cloudevent).unwrap()})
        );
        assert_eq!(
            parsed["event"]["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(parsed["event"]["specversion"], "1.0");
    }

    #[test]
    fn the_typed_frames_keep_the_bytes_of_the_contract_shapes() {
        let cases = [
            (ServerFrame::Pong {}.to_text(), r#"{"op":"pong"}"#),
            (
                ServerFrame::Authenticated {
                    organization_id: None,
                }
                .to_text(),
                r#"{"op":"authenticated","organizationId":null}"#,
            ),
            (
                ServerFrame::Subscribed { id: "s1".into() }.to_text(),
                r#"{"op":"subscribed","id":"s1"}"#,
            ),
            (
                ServerFrame::Reset {
                    subscription: "s1".into(),
                    reason: ResetReason::UnknownLastEventId,
                }
                .to_text(),
                r#"{"op":"reset","subscription":"s1","reason":"unknown_last_event_id"}"#,
            ),
            (
                ServerFrame::Unsubscribed { id: "s1".into() }.to_text(),
                r#"{"op":"unsubscribed","id":"s1"}"#,
            ),
            (
                error_frame(None, "invalid_request", "m"),
                r#"{"op":"error","id":null,"code":"invalid_request","message":"m"}"#,
            ),
            (
                error_frame(Some(json!({"a": 1})), "forbidden", "m"),
                r#"{"op":"error","id":{"a":1},"code":"forbidden","message":"m"}"#,
            ),
        ];
        for (frame, wire) in cases {
            assert_eq!(frame, wire);
        }
    }

    #[test]
    fn an_event_frame_splices_the_stored_json() {
        let event = StoredEvent {
            position: 1,
            id: uuid::Uuid::nil(),
            organization_id: "o".into(),
            event_type: "custom.a".into(),
            resource_type: "r".into(),
            resource_id: "r".into(),
            workspace_id: None,
            trace: None,
            json: bytes::Bytes::from_static(br#"{"id":"x"}"#),
            sse: Default::default(),
        };
        let frame: Value =
            serde_json::from_str(&event_frame("s\"1", &event, EventFormat::Cpod).unwrap()).unwrap();
        assert_eq!(
            frame,
            json!({"op": "event", "subscription": "s\"1", "event": {"id": "x"}})
        );
    }
}
