//! `POST /v1/events` and `POST /v1/events/batch` (contract §3): the start of the data path.
//!
//! Checks run in the contract's order: key (401), content type (415), body size (413), JSON and
//! the event rules (400), then permission (403) and the stored size of each event (413). Only
//! then does the request reach the store, which answers once the events are committed.
//!
//! Either endpoint also takes CloudEvents (README, "CloudEvents"): the body's form
//! ([`BodyForm`]) picks the reader, and a CloudEvent becomes the same [`EventDraft`] under the
//! same rules, its `source` standing for `organizationId` and, when the request has no
//! `Idempotency-Key`, its source and id for one.
//!
//! Each request is an `ingest` span continuing the request's W3C trace context; the events are
//! stored with the context that span passes on (see `spans`). A CloudEvent's
//! `traceparent`/`tracestate` extension attributes are its trace context when the request has
//! no valid `traceparent` header (the header wins).

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};
use tracing::{Instrument, Span};

use crate::auth::Principal;
use crate::cloudevents::{
    BATCH_MEDIA_TYPE, CloudEventDraft, EventFormat, STRUCTURED_MEDIA_TYPE, derived_idempotency_key,
    request_hash,
};
use crate::error::{ApiError, ErrorBody};
use crate::event::{EventDraft, NewEvent, NewEventBody};
use crate::http::cloudevents::{
    BodyForm, accepts, cloudevents_list, encode_answer, parse_batch, parse_binary, parse_structured,
};
use crate::http::read_body;
use crate::http::state::AppState;
use crate::http::wire::{BatchBody, EventList, parse_body};
use crate::store::{AppendOutcome, AppendRequest, IdempotencyClaim, IngestEndpoint};
use crate::trace_context::TraceContext;
use cpod_proto::CloudEvent;

pub const MAX_BATCH: usize = 1000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/events/batch")
            .route(web::post().to(post_batch))
            .default_service(crate::error::method_not_allowed("POST")),
    );
}

/// The POST half of `/v1/events` (the GET half is history); registered by `history`.
pub fn post_route() -> actix_web::Route {
    web::post().to(post_event)
}

/// Store one event: cPod's JSON, a structured CloudEvent (`application/cloudevents+json`) or a
/// binary-mode CloudEvent (`ce-*` headers, the payload as an `application/json` body).
#[utoipa::path(
    post, path = "/v1/events", tag = "events",
    request_body(description = "cPod's event, or a CloudEvent 1.0 (README, \"CloudEvents\"); in binary mode, the `ce-*` headers carry the attributes and the body is the data", content(
        (NewEventBody = "application/json"),
        (CloudEvent = "application/cloudevents+json"),
    )),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 hours (a CloudEvent without it is keyed by its source and id)", min_length = 1, max_length = 255, pattern = r"^[\x20-\x7E]+$"),
        ("ce-specversion" = Option<String>, Header, description = "Binary-mode CloudEvent: `1.0`; with it, `ce-id`, `ce-source`, `ce-type` and `ce-subject` are required and the body is the data", pattern = r"^1\.0$"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context (version 00: `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`): the events are stored with this trace, the broker's ingest span as parent-id. An invalid value is ignored (the events have no trace), never refused.", example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate" = Option<String>, Header, description = "W3C Trace Context vendor state, kept with the traceparent (at most 32 members, cut to 512 characters); ignored when invalid or without a valid traceparent.", example = "rojo=00f067aa0ba902b7"),
    ),
    responses(
        (status = 201, description = "Stored (durable); a CloudEvent when the request's `Accept` names `application/cloudevents+json`", content(
            (crate::event::Event = "application/json"),
            (CloudEvent = "application/cloudevents+json"),
        )),
        (status = 400, description = "Invalid event", body = ErrorBody),
        (status = 403, description = "The key's role may not emit this type, or it (or a CloudEvent's `source`) names another organization", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 413, description = "The body, or the event's JSON, is larger than the broker takes", body = ErrorBody),
        (status = 507, description = "The broker's disk is full: nothing stored; retry after `Retry-After`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn post_event(
    req: HttpRequest,
    principal: Principal,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (span, trace) = ingest_span(&req, IngestEndpoint::Single);
    async move {
        let form = BodyForm::of(&req)?;
        if form == BodyForm::Batch {
            return Err(ApiError::UnsupportedMediaType {
                message: format!("a {BATCH_MEDIA_TYPE} body goes to POST /v1/events/batch"),
                param: None,
            });
        }
        let body = read_body(&req, payload, state.limits.max_body_bytes).await?;
        let max = state.limits.max_event_bytes;
        let (event, idempotency) = match form {
            BodyForm::Cpod => {
                let idempotency =
                    idempotency_claim(&req, &principal, None, Sha256::digest(&body).into())?;
                let draft = EventDraft::from_body(parse_body::<NewEventBody>(&body)?)?;
                let event = admit(&principal, draft, max, "organizationId", trace.as_ref())
                    .map_err(|e| e.into_api_error(None))?;
                (event, idempotency)
            }
            _ => {
                let cloudevent = match form {
                    BodyForm::Binary => parse_binary(&req, &body)?,
                    _ => parse_structured(&body)?,
                };
                let drafts = std::slice::from_ref(&cloudevent);
                let idempotency = idempotency_claim(
                    &req,
                    &principal,
                    Some(derived_idempotency_key(drafts)),
                    request_hash(drafts),
                )?;
                let event = admit_cloudevent(&principal, cloudevent, max, trace.as_ref())
                    .map_err(|e| e.into_api_error(None))?;
                (event, idempotency)
            }
        };
        let request = AppendRequest {
            endpoint: IngestEndpoint::Single,
            events: vec![event],
            idempotency,
        };
        let outcome = crate::spans::commit(&state.store, request).await?;
        created(&req, outcome, IngestEndpoint::Single)
    }
    .instrument(span)
    .await
}

/// Store up to 1,000 events atomically: `{"events": [...]}`, or a JSON array of structured
/// CloudEvents (`application/cloudevents-batch+json`).
#[utoipa::path(
    post, path = "/v1/events/batch", tag = "events",
    request_body(content(
        (BatchBody = "application/json"),
        (Vec<CloudEvent> = "application/cloudevents-batch+json"),
    )),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 hours (a CloudEvents batch without it is keyed by its events' sources and ids)", min_length = 1, max_length = 255, pattern = r"^[\x20-\x7E]+$"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context (version 00: `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`): the events are stored with this trace, the broker's ingest span as parent-id. An invalid value is ignored (the events have no trace), never refused.", example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate" = Option<String>, Header, description = "W3C Trace Context vendor state, kept with the traceparent (at most 32 members, cut to 512 characters); ignored when invalid or without a valid traceparent.", example = "rojo=00f067aa0ba902b7"),
    ),
    responses(
        (status = 201, description = "All stored, in order; CloudEvents when the request's `Accept` names `application/cloudevents-batch+json`", content(
            (EventList = "application/json"),
            (Vec<CloudEvent> = "application/cloudevents-batch+json"),
        )),
        (status = 400, description = "An event is invalid; `param` names its index", body = ErrorBody),
        (status = 403, description = "The key's role may not emit one of the types, or it names another organization", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 413, description = "The body, or an event's JSON, is larger than the broker takes", body = ErrorBody),
        (status = 507, description = "The broker's disk is full: nothing stored; retry after `Retry-After`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn post_batch(
    req: HttpRequest,
    principal: Principal,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (span, trace) = ingest_span(&req, IngestEndpoint::Batch);
    async move {
        let form = BodyForm::of(&req)?;
        if matches!(form, BodyForm::Structured | BodyForm::Binary) {
            return Err(ApiError::UnsupportedMediaType {
                message: format!(
                    "a batch of CloudEvents is sent as {BATCH_MEDIA_TYPE}; one CloudEvent goes to POST /v1/events"
                ),
                param: None,
            });
        }
        let body = read_body(&req, payload, state.limits.max_body_bytes).await?;
        let max = state.limits.max_event_bytes;
        let mut events = Vec::new();
        // The request's trace context applies to every event of the batch.
        let idempotency = if form == BodyForm::Batch {
            let drafts = parse_batch(&body, MAX_BATCH)?;
            let idempotency = idempotency_claim(
                &req,
                &principal,
                Some(derived_idempotency_key(&drafts)),
                request_hash(&drafts),
            )?;
            for (i, draft) in drafts.into_iter().enumerate() {
                events.push(
                    admit_cloudevent(&principal, draft, max, trace.as_ref())
                        .map_err(|e| e.into_api_error(Some(i)))?,
                );
            }
            idempotency
        } else {
            let idempotency =
                idempotency_claim(&req, &principal, None, Sha256::digest(&body).into())?;
            // Validity of every event first (400), then permissions and sizes (403, 413).
            let drafts = batch_events(&body)?
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    EventDraft::from_body(item).map_err(|e| ApiError::invalid_at("events", i, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (i, draft) in drafts.into_iter().enumerate() {
                events.push(
                    admit(&principal, draft, max, "organizationId", trace.as_ref())
                        .map_err(|e| e.into_api_error(Some(i)))?,
                );
            }
            idempotency
        };
        metrics::histogram!("cpod_ingest_batch_events").record(events.len() as f64);
        let request = AppendRequest {
            endpoint: IngestEndpoint::Batch,
            events,
            idempotency,
        };
        let outcome = crate::spans::commit(&state.store, request).await?;
        created(&req, outcome, IngestEndpoint::Batch)
    }
    .instrument(span)
    .await
}

/// The ingest span of a request and the trace context its events are stored with: the
/// request's `traceparent`/`tracestate` continued by the broker's span, or none. Invalid trace
/// headers are ignored, as W3C Trace Context says (never a 400); the debug log says why.
fn ingest_span(req: &HttpRequest, endpoint: IngestEndpoint) -> (Span, Option<TraceContext>) {
    let values = |name: &str| -> Vec<&str> {
        req.headers()
            .get_all(name)
            // A value that is not visible ASCII is malformed: kept as "", which fails to parse.
            .map(|v| v.to_str().unwrap_or(""))
            .collect()
    };
    let (incoming, ignored) =
        TraceContext::from_headers(&values("traceparent"), &values("tracestate"));
    let (span, trace) = crate::spans::ingest(endpoint.as_str(), incoming.as_ref());
    if let Some(error) = ignored {
        span.in_scope(|| tracing::debug!(%error, "ignored an invalid trace context header"));
    }
    (span, trace)
}

/// The events of a batch body, 1 to 1,000 of them, deserialized but not yet checked as events.
pub fn batch_events(body: &[u8]) -> Result<Vec<NewEventBody>, ApiError> {
    let batch: BatchBody = parse_body(body)?;
    if !(1..=MAX_BATCH).contains(&batch.events.len()) {
        return Err(ApiError::invalid(
            "events",
            format!(
                "a batch holds 1 to {MAX_BATCH} events, not {}",
                batch.events.len()
            ),
        ));
    }
    Ok(batch.events)
}

/// Why an event that parsed may still not be stored.
enum Refusal {
    Forbidden(String),
    TooLarge(usize, usize),
    Api(ApiError),
}

impl Refusal {
    fn into_api_error(self, index: Option<usize>) -> ApiError {
        let at = |m: String| match index {
            Some(i) => format!("events[{i}]: {m}"),
            None => m,
        };
        match (self, index) {
            (Refusal::Forbidden(m), _) => ApiError::Forbidden(at(m)),
            (Refusal::TooLarge(size, max), _) => ApiError::PayloadTooLarge(at(format!(
                "the event's JSON is {size} bytes; the limit is {max}"
            ))),
            (Refusal::Api(ApiError::InvalidRequest { message, param }), Some(i)) => {
                ApiError::InvalidRequest {
                    message: at(message),
                    param: param.map(|p| format!("events[{i}].{p}")),
                }
            }
            (Refusal::Api(ApiError::Forbidden(m)), _) => ApiError::Forbidden(at(m)),
            (Refusal::Api(other), _) => other,
        }
    }
}

/// Gives a parsed event its organization and checks that this key may store it.
/// `organization_param` is where the request names an organization (`organizationId`, or a
/// CloudEvent's `source`).
fn admit(
    principal: &Principal,
    draft: EventDraft,
    max_event_bytes: usize,
    organization_param: &str,
    trace: Option<&TraceContext>,
) -> Result<NewEvent, Refusal> {
    let organization_id = principal
        .organization(draft.organization_id.as_ref(), organization_param)
        .map_err(Refusal::Api)?;
    if !principal.role.may_emit(&draft.event_type) {
        return Err(Refusal::Forbidden(format!(
            "a {} key may not emit {}",
            principal.role.as_str(),
            draft.event_type.as_str()
        )));
    }
    let event = NewEvent::new(
        draft.event_type,
        draft.resource_id,
        draft.resource_type,
        organization_id,
        draft.workspace_id,
        &draft.payload,
    );
    let event = match trace {
        Some(trace) => event.with_trace(trace.clone()),
        None => event,
    };
    if event.json_len() > max_event_bytes {
        return Err(Refusal::TooLarge(event.json_len(), max_event_bytes));
    }
    Ok(event)
}

/// A CloudEvent admitted as an event: its `source` names the organization, and its trace
/// context is the request's, else its `traceparent`/`tracestate` extension attributes'. A source that names
/// none means the key's own organization; an admin key, which has none, must name one.
fn admit_cloudevent(
    principal: &Principal,
    cloudevent: CloudEventDraft,
    max_event_bytes: usize,
    request_trace: Option<&TraceContext>,
) -> Result<NewEvent, Refusal> {
    if cloudevent.foreign_source && principal.organization_id.is_none() {
        return Err(Refusal::Api(ApiError::invalid(
            "source",
            format!(
                "an admin key must send source /organizations/<organizationId>[/workspaces/<workspaceId>], not `{}`",
                cloudevent.source
            ),
        )));
    }
    // The request's `traceparent` header wins over the CloudEvent's own extension attribute.
    let trace = request_trace.or(cloudevent.trace.as_ref());
    admit(
        principal,
        cloudevent.draft,
        max_event_bytes,
        "source",
        trace,
    )
}

/// The request's idempotency claim: its `Idempotency-Key`, else the key `derived` from its
/// content (CloudEvents' source and id), else none. `request_hash` is what a repeat must match.
fn idempotency_claim(
    req: &HttpRequest,
    principal: &Principal,
    derived: Option<String>,
    request_hash: [u8; 32],
) -> Result<Option<IdempotencyClaim>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(derived.map(|key| IdempotencyClaim {
            scope: principal.idempotency_scope(),
            key,
            request_hash,
        }));
    };
    let param = "Idempotency-Key";
    // `to_str` lets a tab through; a key is printable ASCII (spaces allowed) only.
    let key = value
        .to_str()
        .ok()
        .filter(|k| k.bytes().all(|b| (0x20..=0x7E).contains(&b)))
        .ok_or_else(|| ApiError::invalid(param, "Idempotency-Key must be printable ASCII"))?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::invalid(
            param,
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
        ));
    }
    Ok(Some(IdempotencyClaim {
        scope: principal.idempotency_scope(),
        key: key.to_owned(),
        request_hash,
    }))
}

/// The 201: the stored event (or `{"data": [...]}`), as cPod JSON, or as CloudEvents when the
/// client's `Accept` names `application/cloudevents+json` (one event) or
/// `application/cloudevents-batch+json` (a batch), whatever form the request came in.
fn created(
    req: &HttpRequest,
    outcome: AppendOutcome,
    endpoint: IngestEndpoint,
) -> Result<HttpResponse, ApiError> {
    let (content_type, body) = match endpoint {
        IngestEndpoint::Single if accepts(req, STRUCTURED_MEDIA_TYPE) => (
            STRUCTURED_MEDIA_TYPE,
            encode_answer(&outcome.body, EventFormat::CloudEvents)?,
        ),
        IngestEndpoint::Batch if accepts(req, BATCH_MEDIA_TYPE) => {
            (BATCH_MEDIA_TYPE, cloudevents_list(&outcome.body)?)
        }
        _ => ("application/json", outcome.body),
    };
    let mut response = HttpResponse::build(StatusCode::CREATED);
    response.insert_header((CONTENT_TYPE, HeaderValue::from_static(content_type)));
    if outcome.replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(response.body(body))
}
