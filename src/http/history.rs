//! `GET /v1/events` and `GET /v1/events/{id}` (contract §4).
//!
//! A cursor is the position of the last event of a page plus the page's direction, opaque to
//! clients. Positions only grow, so "after position p" (ascending) and "before position p"
//! (descending) never repeat or skip an event however many arrive between pages.

use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate};

use crate::auth::Principal;
use crate::cloudevents::{EventFormat, STRUCTURED_MEDIA_TYPE};
use crate::error::ApiError;
use crate::filter::{Filter, parse_type_list};
use crate::http::cloudevents::{encode_answer, take_format};
use crate::http::state::AppState;
use crate::http::{QueryParams, parse_id};
use crate::store::{HistoryQuery, Order};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/events")
            .route(web::get().to(list_events))
            .route(crate::http::ingest::post_route())
            .default_service(crate::error::method_not_allowed("GET, POST")),
    )
    .service(
        web::resource("/v1/events/{id}")
            .route(web::get().to(get_event))
            .default_service(crate::error::method_not_allowed("GET")),
    );
}

/// Page through stored events.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(crate::http::wire::HistoryParams),
    responses(
        (status = 200, description = "One page (with `format=cloudevents`, of CloudEvents)", content(
            (crate::http::wire::HistoryPageSchema = "application/json"),
        )),
        (status = 400, description = "A parameter is invalid; `param` names it", body = crate::error::ErrorBody),
        (status = 403, description = "The key may not read this organization (another one, or `*` without an admin key)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_events(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut params = QueryParams::parse(&req)?;
    let format = take_format(&mut params)?;
    let query = parse_history_query(&principal, params)?;
    let order = query.order;
    let page = state.store.history(query).await?;
    let next_cursor = match (page.has_more, page.last_position) {
        (true, Some(position)) => Some(Cursor { position, order }.encode()),
        _ => None,
    };
    let mut body =
        BytesMut::with_capacity(page.events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 64);
    body.put_slice(b"{\"data\":[");
    for (i, event) in page.events.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(&encode_answer(&event.json, format)?);
    }
    body.put_slice(b"],\"hasMore\":");
    body.put_slice(if page.has_more { b"true" } else { b"false" });
    body.put_slice(b",\"nextCursor\":");
    match next_cursor {
        Some(cursor) => body.put_slice(
            serde_json::to_string(&cursor)
                .expect("a string serializes")
                .as_bytes(),
        ),
        None => body.put_slice(b"null"),
    }
    body.put_u8(b'}');
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(body.freeze()))
}

/// A history query string as a query: filters, time bounds, limit, order and cursor; every
/// parameter must be known.
pub fn parse_history_query(
    principal: &Principal,
    mut params: QueryParams,
) -> Result<HistoryQuery, ApiError> {
    let filter = parse_filter(principal, &mut params)?;
    let since_ms = params
        .take_one("since")?
        .map(|v| parse_time("since", &v))
        .transpose()?;
    let until_ms = params
        .take_one("until")?
        .map(|v| parse_time("until", &v))
        .transpose()?;
    let limit = match params.take_one("limit")? {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let order = match params.take_one("order")?.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(_) => return Err(ApiError::invalid("order", "order must be `asc` or `desc`")),
    };
    let after_position = params
        .take_one("cursor")?
        .map(|c| Cursor::decode(&c))
        .transpose()?
        .map(|cursor| {
            if cursor.order == order {
                Ok(cursor.position)
            } else {
                Err(ApiError::invalid(
                    "cursor",
                    "this cursor belongs to the other order",
                ))
            }
        })
        .transpose()?;
    params.finish()?;
    Ok(HistoryQuery {
        filter,
        since_ms,
        until_ms,
        after_position,
        order,
        limit,
    })
}

/// One event by id.
#[utoipa::path(
    get, path = "/v1/events/{id}", tag = "events",
    params(("id" = uuid::Uuid, Path, description = "The event's id"), crate::http::wire::EventFormatParam),
    responses(
        (status = 200, description = "The event; with `format=cloudevents`, as a structured CloudEvent", content(
            (crate::event::Event = "application/json"),
            (cpod_proto::CloudEvent = "application/cloudevents+json"),
        )),
        (status = 400, description = "`format` is neither `cpod` nor `cloudevents`", body = crate::error::ErrorBody),
        (status = 404, description = "No such event in this organization (or not a UUID, or expired)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_event(
    req: HttpRequest,
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Only `format` is read here; other parameters are ignored, as they always were.
    let format = take_format(&mut QueryParams::parse(&req)?)?;
    let id = parse_id(&path, "event")?;
    // An admin key sees every organization's events by id; other keys only their own.
    let scope = match &principal.organization_id {
        Some(org) => crate::filter::OrgScope::One(org.clone()),
        None => crate::filter::OrgScope::All,
    };
    let json = state
        .store
        .event_json(id, scope)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let content_type = match format {
        EventFormat::Cpod => "application/json",
        EventFormat::CloudEvents => STRUCTURED_MEDIA_TYPE,
    };
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .body(encode_answer(&json, format)?))
}

/// The filter parameters shared by history and streams.
pub fn parse_filter(principal: &Principal, params: &mut QueryParams) -> Result<Filter, ApiError> {
    let organization = principal.read_scope(params.take_one("organizationId")?.as_deref())?;
    let types = params.take_all("types");
    let types = parse_type_list(types.iter().map(String::as_str))?;
    let resource_type = params.take_one("resourceType")?;
    let resource_id = params.take_one("resourceId")?;
    let workspace_id = params.take_one("workspaceId")?;
    Ok(Filter::new(
        organization,
        types,
        resource_type.as_deref(),
        resource_id.as_deref(),
        workspace_id.as_deref(),
    )?)
}

/// An ISO 8601 time: RFC 3339 with any offset, or a bare date (midnight UTC). A `+` offset
/// that arrived unencoded (decoded as a space) is read as `+`.
pub fn parse_time(param: &str, raw: &str) -> Result<i64, ApiError> {
    let text = raw.trim().replace(' ', "+");
    if let Ok(time) = DateTime::parse_from_rfc3339(&text) {
        return Ok(time.timestamp_millis());
    }
    if let Ok(date) = NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis());
    }
    Err(ApiError::invalid(
        param,
        format!("{param} must be an ISO 8601 time such as 2026-05-01T12:00:00Z"),
    ))
}

/// The opaque `nextCursor`: a position and the direction it was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub position: i64,
    pub order: Order,
}

impl Cursor {
    pub fn encode(self) -> String {
        let direction = match self.order {
            Order::Asc => 'a',
            Order::Desc => 'd',
        };
        URL_SAFE_NO_PAD.encode(format!("v1.{direction}.{}", self.position))
    }

    pub fn decode(raw: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::invalid("cursor", "cursor is not a nextCursor this broker gave");
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.split('.');
        let (Some("v1"), Some(direction), Some(position), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let order = match direction {
            "a" => Order::Asc,
            "d" => Order::Desc,
            _ => return Err(invalid()),
        };
        let position = position
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(invalid)?;
        Ok(Self { position, order })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        for cursor in [
            Cursor {
                position: 0,
                order: Order::Asc,
            },
            Cursor {
                position: 123_456_789,
                order: Order::Desc,
            },
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
        for bad in [
            "",
            "!!",
            "djEuYS4",
            "eHl6",
            &URL_SAFE_NO_PAD.encode("v1.x.5"),
            &URL_SAFE_NO_PAD.encode("v1.a.-5"),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_parse_in_the_usual_iso_forms() {
        assert_eq!(
            parse_time("since", "2026-05-01T12:00:00.123Z").unwrap(),
            1_777_636_800_123
        );
        assert_eq!(
            parse_time("since", "2026-05-01T14:00:00+02:00").unwrap(),
            1_777_636_800_000
        );
        assert_eq!(
            parse_time("since", "2026-05-01T14:00:00 02:00").unwrap(),
            1_777_636_800_000
        );
        assert_eq!(
            parse_time("since", "2026-05-01").unwrap(),
            1_777_593_600_000
        );
        assert!(matches!(
            parse_time("until", "yesterday"),
            Err(ApiError::InvalidRequest { param: Some(p), .. }) if p == "until"
        ));
    }
}
