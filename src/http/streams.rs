//! What SSE and WebSocket streams share: reading a stream request (credential, filters, start),
//! opening its gapless subscription, stream tickets (`POST /v1/stream-tickets`), and the
//! subscriber gauge.

use actix_web::{HttpRequest, HttpResponse, web};
use tokio::time::Instant;

use crate::auth::Principal;
use crate::cloudevents::EventFormat;
use crate::error::ApiError;
use crate::event::{format_timestamp, unix_now_ms};
use crate::filter::{Filter, OrgScope};
use crate::http::cloudevents::take_format;
use crate::http::history::{parse_filter, parse_time};
use crate::http::state::AppState;
use crate::http::wire::{TicketBody, TicketRequest, parse_body};
use crate::http::{QueryParams, read_body};
use crate::hub::{Start, Subscription};
use crate::tickets::{DEFAULT_TTL_SECS, MAX_TTL_SECS};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/stream-tickets")
            .route(web::post().to(create_ticket))
            .default_service(crate::error::method_not_allowed("POST")),
    );
}

/// Where a stream asked to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    Now,
    AfterEvent(String),
    Since(i64),
}

/// A parsed stream request: who, what, from where.
pub struct StreamRequest {
    pub principal: Principal,
    pub ticket_expires_ms: Option<i64>,
    pub filter: Filter,
    pub resume: Resume,
    /// How its events are written (`format`): cPod's JSON or structured CloudEvents.
    pub format: EventFormat,
}

impl StreamRequest {
    /// Reads the credential (the `Authorization` header's raw value, else `?ticket=`), the
    /// filters and the start. A `Last-Event-ID` header wins over `lastEventId`, which wins over
    /// `since`. `format` says how events are written. Takes raw header bytes so that streams served outside actix-web
    /// ([`crate::http::owned`]) read a request exactly as the actix route does.
    pub async fn parse(
        authorization: Option<&[u8]>,
        last_event_id_header: Option<&[u8]>,
        params: &mut QueryParams,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let ticket = params.take_one("ticket")?;
        let authorization = authorization
            .map(|v| {
                visible_ascii(v).ok_or_else(|| {
                    ApiError::Unauthorized("the Authorization header is not ASCII".into())
                })
            })
            .transpose()?;
        let last_event_id_header = last_event_id_header
            .map(|v| {
                visible_ascii(v)
                    // The documented pattern: printable ASCII, no tab.
                    .filter(|id| !id.contains('\t'))
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ApiError::invalid("Last-Event-ID", "Last-Event-ID must be printable ASCII")
                    })
            })
            .transpose()?;
        let (principal, ticket_expires_ms) = state
            .auth
            .authenticate_stream(authorization, ticket.as_deref())
            .await?;
        let filter = parse_filter(&principal, params)?;
        let last_event_id = last_event_id_header.or(params.take_one("lastEventId")?);
        // Checked even where a Last-Event-ID wins over it: a bad parameter is a 400, never
        // silently ignored.
        let since = params
            .take_one("since")?
            .map(|since| parse_time("since", &since))
            .transpose()?;
        let resume = match (last_event_id, since) {
            (Some(id), _) => Resume::AfterEvent(id),
            (None, Some(since)) => Resume::Since(since),
            (None, None) => Resume::Now,
        };
        let format = take_format(params)?;
        Ok(Self {
            principal,
            ticket_expires_ms,
            filter,
            resume,
            format,
        })
    }
}

/// A header value as text, when it is visible ASCII (and tabs), as `HeaderValue::to_str` asks.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).expect("ASCII is UTF-8"))
}

/// An open stream's subscription and what the transport must tell the client first.
pub struct OpenedStream {
    pub principal: Principal,
    pub subscription: Subscription,
    /// The `Last-Event-ID` that could not be resumed from, for the `reset` message.
    pub reset: Option<String>,
    /// When the ticket that opened the stream expires.
    pub deadline: Option<Instant>,
}

/// Resolves the start and subscribes (before anything is sent, so nothing stored from now on
/// can be missed).
pub async fn open_stream(
    state: &AppState,
    request: StreamRequest,
) -> Result<OpenedStream, ApiError> {
    let (start, reset) = resolve_start(state, &request.filter.organization, request.resume).await?;
    let subscription = Subscription::new(&state.hub, &state.store, request.filter, start);
    let deadline = ticket_deadline(request.ticket_expires_ms);
    Ok(OpenedStream {
        principal: request.principal,
        subscription,
        reset,
        deadline,
    })
}

/// When a stream opened with a ticket expiring at `expires_ms` must end.
pub fn ticket_deadline(expires_ms: Option<i64>) -> Option<Instant> {
    expires_ms.map(|expires| {
        let left = u64::try_from(expires - unix_now_ms()).unwrap_or(0);
        Instant::now() + std::time::Duration::from_millis(left)
    })
}

/// The position to replay after; an unknown, foreign or expired `Last-Event-ID` means "now"
/// plus a reset.
pub async fn resolve_start(
    state: &AppState,
    scope: &OrgScope,
    resume: Resume,
) -> Result<(Start, Option<String>), ApiError> {
    Ok(match resume {
        Resume::Now => (Start::Now, None),
        Resume::Since(ms) => (
            Start::After(state.store.position_before_time(ms).await?),
            None,
        ),
        Resume::AfterEvent(raw) => {
            let position = match last_event_id(&raw) {
                Some(id) => state.store.position_of(id, scope.clone()).await?,
                None => None,
            };
            match position {
                Some(position) => (Start::After(position), None),
                None => (Start::Now, Some(raw)),
            }
        }
    })
}

/// The event a `Last-Event-ID` (or `lastEventId`) names, if it is an event id at all.
pub fn last_event_id(raw: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(raw.trim()).ok()
}

/// Counts a live subscriber for as long as it exists.
pub struct SubscriberGauge(&'static str);

impl SubscriberGauge {
    pub fn new(transport: &'static str) -> Self {
        metrics::gauge!("cpod_subscribers", "transport" => transport).increment(1.0);
        Self(transport)
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!("cpod_subscribers", "transport" => self.0).decrement(1.0);
    }
}

/// Counts a subscriber's deliveries in `cpod_events_delivered_total`, adding to the shared
/// counter once [`DeliveryCounter::BATCH`] events or a second have gone by, on
/// [`flush`](DeliveryCounter::flush) and when dropped: an atomic add on a counter every worker
/// thread shares would otherwise cost each delivery (1.4 % of the broker's CPU at 100 events/s ×
/// 1,000 subscribers, perf).
pub struct DeliveryCounter {
    counter: metrics::Counter,
    pending: u64,
    flushed_at: std::time::Instant,
}

impl DeliveryCounter {
    const BATCH: u64 = 256;
    const PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new(transport: &'static str) -> Self {
        Self {
            counter: metrics::counter!("cpod_events_delivered_total", "transport" => transport),
            pending: 0,
            flushed_at: std::time::Instant::now(),
        }
    }

    pub fn add(&mut self, events: usize) {
        self.pending += events as u64;
        if self.pending >= Self::BATCH || self.flushed_at.elapsed() >= Self::PERIOD {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.pending > 0 {
            self.counter.increment(std::mem::take(&mut self.pending));
            self.flushed_at = std::time::Instant::now();
        }
    }
}

impl Drop for DeliveryCounter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Create a stream ticket for this key: read-only, for `?ticket=` on the stream endpoints.
#[utoipa::path(
    post, path = "/v1/stream-tickets", tag = "streams",
    request_body(content = Option<TicketRequest>, content_type = "application/json", description = "Optional"),
    responses(
        (status = 201, body = TicketBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_ticket(
    req: HttpRequest,
    principal: Principal,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, 16 * 1024).await?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        TicketRequest::default()
    } else {
        crate::http::require_json_content_type(&req)?;
        parse_body::<TicketRequest>(&body)?
    };
    let ttl = match request.ttl_seconds {
        None => DEFAULT_TTL_SECS,
        Some(ttl) if (1..=MAX_TTL_SECS).contains(&ttl) => ttl,
        Some(_) => {
            return Err(ApiError::invalid(
                "ttlSeconds",
                format!("ttlSeconds must be an integer from 1 to {MAX_TTL_SECS}"),
            ));
        }
    };
    let expires_ms = unix_now_ms() + (ttl as i64) * 1000;
    let ticket = state.auth.issue_ticket(&principal, expires_ms);
    Ok(HttpResponse::Created().json(TicketBody {
        ticket,
        expires_at: format_timestamp(expires_ms),
    }))
}
