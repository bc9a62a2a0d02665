//! `/v1/webhooks`: endpoints, secret rotation, test sends and the deliveries log (contract §6).
//!
//! Admin, service and app keys manage their organization's endpoints; another organization's
//! endpoint is 404. A secret appears only in the answers to creation and rotation.

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use uuid::Uuid;

use crate::auth::Principal;
use crate::cloudevents::{ContentMode, EventFormat};
use crate::error::{ApiError, ErrorBody};
use crate::event::{OrganizationId, ResourceType, format_timestamp, unix_now_ms};
use crate::filter::{MAX_TYPE_PATTERNS, OrgScope, TypePattern, check_type_count};
use crate::http::state::AppState;
use crate::http::wire::{
    AttemptView, CreatedWebhook, DeletedWebhook, DeliveryPage, DeliveryView, NewWebhookBody,
    QueuedDelivery, RotatedSecret, TestResult, WebhookList, WebhookPatchBody, WebhookView,
    parse_body,
};
use crate::http::{QueryParams, parse_id, read_body, require_json_content_type};
use crate::keys::Role;
use crate::store::webhooks::{
    DeliveryFormat, DeliveryRecord, DeliveryStatus, WebhookPatch, WebhookRecord,
};
use crate::webhooks::signing::generate_secret;
use crate::webhooks::url_guard;

const MAX_BODY: usize = 64 * 1024;
const MAX_DESCRIPTION: usize = 500;
const MAX_URL: usize = 2048;
/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;
const MANAGERS: [Role; 3] = [Role::Admin, Role::Service, Role::App];

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::error::method_not_allowed as not_allowed;
    cfg.service(
        web::resource("/v1/webhooks")
            .route(web::post().to(create_webhook))
            .route(web::get().to(list_webhooks))
            .default_service(not_allowed("GET, POST")),
    )
    .service(
        web::resource("/v1/webhooks/{id}")
            .route(web::get().to(get_webhook))
            .route(web::patch().to(update_webhook))
            .route(web::delete().to(delete_webhook))
            .default_service(not_allowed("GET, PATCH, DELETE")),
    )
    .service(
        web::resource("/v1/webhooks/{id}/rotate-secret")
            .route(web::post().to(rotate_secret))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/v1/webhooks/{id}/test")
            .route(web::post().to(test_webhook))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/v1/webhooks/{id}/deliveries")
            .route(web::get().to(list_deliveries))
            .default_service(not_allowed("GET")),
    )
    .service(
        web::resource("/v1/webhooks/{id}/deliveries/{delivery_id}/retry")
            .route(web::post().to(retry_delivery))
            .default_service(not_allowed("POST")),
    );
}

/// A URL from a body, checked for form and length (reachability is checked separately).
fn checked_url(url: String) -> Result<String, ApiError> {
    if url.len() > MAX_URL {
        return Err(ApiError::invalid(
            "url",
            format!("url is longer than {MAX_URL} characters"),
        ));
    }
    url_guard::parse(&url).map_err(|e| ApiError::invalid("url", e.to_string()))?;
    Ok(url)
}

/// Type patterns from a body: 1 to 100 valid ones.
fn checked_types(types: Vec<String>) -> Result<Vec<String>, ApiError> {
    if types.is_empty() || check_type_count(types.len()).is_err() {
        return Err(ApiError::invalid(
            "types",
            format!("types must be a list of 1 to {MAX_TYPE_PATTERNS} type patterns"),
        ));
    }
    for pattern in &types {
        TypePattern::parse(pattern)?;
    }
    Ok(types)
}

fn checked_resource_type(resource_type: String) -> Result<String, ApiError> {
    Ok(ResourceType::parse(&resource_type)?.as_str().to_owned())
}

fn checked_description(description: String) -> Result<String, ApiError> {
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::invalid(
            "description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(description)
}

/// An endpoint's delivery format after a request naming `format` and/or `contentMode` (absent:
/// as `current`). A content mode only goes with CloudEvents; switching to CloudEvents without
/// one keeps the current mode, structured by default.
fn delivery_format(
    current: DeliveryFormat,
    format: Option<EventFormat>,
    content_mode: Option<ContentMode>,
) -> Result<DeliveryFormat, ApiError> {
    match (format.unwrap_or(current.event_format()), content_mode) {
        (EventFormat::Cpod, Some(_)) => Err(ApiError::invalid(
            "contentMode",
            "contentMode applies only to format `cloudevents`",
        )),
        (EventFormat::Cpod, None) => Ok(DeliveryFormat::Cpod),
        (EventFormat::CloudEvents, mode) => Ok(DeliveryFormat::CloudEvents(
            mode.or(current.content_mode()).unwrap_or_default(),
        )),
    }
}

/// Refuses (400) a URL whose host is not public, unless the broker allows private ones.
async fn check_reachable(state: &AppState, url: &str) -> Result<(), ApiError> {
    let parsed = url_guard::parse(url).map_err(|e| ApiError::invalid("url", e.to_string()))?;
    url_guard::check(&parsed, state.deliverer.settings.allow_private)
        .await
        .map_err(|e| ApiError::invalid("url", e.to_string()))
}

/// The endpoint `id` if this principal may see it; 404 otherwise, as if it did not exist.
async fn visible_webhook(
    state: &AppState,
    principal: &Principal,
    raw_id: &str,
) -> Result<WebhookRecord, ApiError> {
    principal.require(&MANAGERS)?;
    let id = parse_id(raw_id, "webhook")?;
    let webhook = state
        .store
        .webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    match &principal.organization_id {
        Some(own) if own.as_str() != webhook.organization_id => Err(ApiError::not_found("webhook")),
        _ => Ok(webhook),
    }
}

/// Create an endpoint; the answer carries its secret, shown this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    request_body(content = NewWebhookBody, content_type = "application/json"),
    responses((status = 201, body = CreatedWebhook),
        (status = 400, description = "A broken rule, or a URL that is not public; `param` names the field", body = ErrorBody),
        (status = 403, description = "A reader key, or another organization named", body = ErrorBody),
        (status = 409, description = "The organization has as many endpoints as it may (`CPOD_MAX_WEBHOOKS_PER_ORGANIZATION`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_webhook(
    req: HttpRequest,
    principal: Principal,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require(&MANAGERS)?;
    require_json_content_type(&req)?;
    let body = read_body(&req, payload, MAX_BODY).await?;
    let request: NewWebhookBody = parse_body(&body)?;
    let requested_org = request
        .organization_id
        .as_deref()
        .map(OrganizationId::parse)
        .transpose()?;
    let url = checked_url(request.url)?;
    let types = request.types.map(checked_types).transpose()?;
    let resource_type = request
        .resource_type
        .map(checked_resource_type)
        .transpose()?;
    let description = request.description.map(checked_description).transpose()?;
    let format = delivery_format(DeliveryFormat::Cpod, request.format, request.content_mode)?;
    let organization = principal.organization(requested_org.as_ref(), "organizationId")?;
    check_reachable(&state, &url).await?;
    let webhook = WebhookRecord {
        id: Uuid::now_v7(),
        organization_id: organization.as_str().to_owned(),
        url,
        types: types.unwrap_or_else(|| vec!["*".to_owned()]),
        resource_type,
        description,
        enabled: true,
        secret: generate_secret(),
        previous_secret: None,
        previous_secret_expires_ms: None,
        created_ms: unix_now_ms(),
        last_success_ms: None,
        disabled_reason: None,
        format,
    };
    let limit = state.limits.max_webhooks_per_organization;
    state
        .store
        .create_webhook(webhook.clone(), limit)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::LimitReached(limit) => ApiError::Conflict(format!(
                "this organization already has {limit} webhook endpoints, the most it may have \
                 (CPOD_MAX_WEBHOOKS_PER_ORGANIZATION); delete one first"
            )),
            other => other.into(),
        })?;
    tracing::info!(webhook = %webhook.id, organization = webhook.organization_id.as_str(), "webhook created");
    Ok(HttpResponse::Created().json(CreatedWebhook {
        webhook: WebhookView::from(&webhook),
        secret: webhook.secret,
    }))
}

/// List endpoints (admin: `organizationId` names the organization, `*` all of them).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    params(("organizationId" = Option<String>, Query, description = "Required for admin keys (`*`: every organization)", min_length = 1, max_length = 128, pattern = r"^(\*|[\x21-\x29\x2B\x2D-\x7E]+)$")),
    responses((status = 200, body = WebhookList), (status = 403, description = "A reader key, or another organization named", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_webhooks(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require(&MANAGERS)?;
    let mut params = QueryParams::parse(&req)?;
    let scope = principal.read_scope(params.take_one("organizationId")?.as_deref())?;
    params.finish()?;
    let organization = match scope {
        OrgScope::One(org) => Some(org),
        OrgScope::All => None,
    };
    let webhooks = state.store.webhooks(organization).await?;
    let data: Vec<WebhookView> = webhooks.iter().map(WebhookView::from).collect();
    Ok(HttpResponse::Ok().json(WebhookList { data }))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookView), (status = 403, description = "A reader key (webhooks are managed by admin, service and app keys)", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_webhook(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let webhook = visible_webhook(&state, &principal, &path).await?;
    Ok(HttpResponse::Ok().json(WebhookView::from(&webhook)))
}

/// Change an endpoint's url, types, resourceType, description, enabled, format or contentMode.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    request_body(content = WebhookPatchBody, content_type = "application/json"),
    responses((status = 200, body = WebhookView), (status = 403, description = "A reader key (webhooks are managed by admin, service and app keys)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_webhook(
    req: HttpRequest,
    path: web::Path<String>,
    principal: Principal,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let webhook = visible_webhook(&state, &principal, &path).await?;
    require_json_content_type(&req)?;
    let body = read_body(&req, payload, MAX_BODY).await?;
    let request: WebhookPatchBody = parse_body(&body)?;
    let patch = WebhookPatch {
        url: request.url.map(checked_url).transpose()?,
        types: request.types.map(checked_types).transpose()?,
        resource_type: request
            .resource_type
            .map(|r| r.map(checked_resource_type).transpose())
            .transpose()?,
        description: request
            .description
            .map(|d| d.map(checked_description).transpose())
            .transpose()?,
        enabled: request.enabled,
        format: (request.format.is_some() || request.content_mode.is_some())
            .then(|| delivery_format(webhook.format, request.format, request.content_mode))
            .transpose()?,
    };
    if let Some(url) = &patch.url {
        check_reachable(&state, url).await?;
    }
    let updated = state.store.update_webhook(webhook.id, patch).await?;
    Ok(HttpResponse::Ok().json(WebhookView::from(&updated)))
}

/// Delete an endpoint and its queued deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, description = "Deleted", body = DeletedWebhook), (status = 403, description = "A reader key (webhooks are managed by admin, service and app keys)", body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_webhook(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let webhook = visible_webhook(&state, &principal, &path).await?;
    let id = webhook.id;
    state.store.delete_webhook(id).await?;
    Ok(HttpResponse::Ok().json(DeletedWebhook { id, deleted: true }))
}

/// A new secret; the previous one keeps signing beside it for 24 hours.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, body = RotatedSecret), (status = 403, description = "A reader key (webhooks are managed by admin, service and app keys)", body = ErrorBody)), security(("bearer" = [])))]
pub async fn rotate_secret(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let webhook = visible_webhook(&state, &principal, &path).await?;
    let secret = generate_secret();
    let expires = unix_now_ms() + ROTATION_OVERLAP_MS;
    state
        .store
        .rotate_webhook_secret(webhook.id, secret.clone(), expires)
        .await?;
    Ok(HttpResponse::Ok().json(RotatedSecret {
        secret,
        previous_secret_expires_at: format_timestamp(expires),
    }))
}

/// Send a signed, unstored `webhook.test` event now; answers 200 whatever the outcome.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, body = TestResult), (status = 403, description = "A reader key (webhooks are managed by admin, service and app keys)", body = ErrorBody)), security(("bearer" = [])))]
pub async fn test_webhook(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let webhook = visible_webhook(&state, &principal, &path).await?;
    let id = Uuid::now_v7();
    let event = json!({
        "id": id, "type": "webhook.test", "resourceId": webhook.id, "resourceType": "webhook",
        "organizationId": webhook.organization_id, "workspaceId": null,
        "payload": {"message": "a test delivery from cPod Events"},
        "timestamp": format_timestamp(unix_now_ms()),
    });
    let body = bytes::Bytes::from(serde_json::to_vec(&event).expect("JSON serializes"));
    let result = state
        .deliverer
        .send(&webhook, &id.to_string(), "webhook.test", body, None)
        .await;
    Ok(HttpResponse::Ok().json(TestResult {
        success: result.succeeded(),
        response_status: result.status,
        error: result.error,
        duration_ms: result.duration_ms,
    }))
}

impl From<&DeliveryRecord> for DeliveryView {
    fn from(d: &DeliveryRecord) -> Self {
        Self {
            id: d.id.to_string(),
            event_id: d.event_id.to_string(),
            event_type: d.event_type.clone(),
            status: d.status.as_str().to_owned(),
            next_attempt_at: d
                .next_attempt_ms
                .filter(|_| d.status == DeliveryStatus::Pending)
                .map(format_timestamp),
            created_at: format_timestamp(d.created_ms),
            attempts: d
                .attempt_log
                .iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    response_status: a.response_status,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                    attempted_at: format_timestamp(a.attempted_ms),
                    response_body: a.response_body.clone(),
                })
                .collect(),
        }
    }
}

/// The deliveries log, newest first, with every attempt.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path), ("status" = Option<String>, Query, description = "pending, succeeded or failed", pattern = "^(pending|succeeded|failed)$"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 20", minimum = 1, maximum = 100), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = DeliveryPage), (status = 403, description = "A reader key (webhooks are managed by admin, service and app keys)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_deliveries(
    req: HttpRequest,
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let webhook = visible_webhook(&state, &principal, &path).await?;
    let mut params = QueryParams::parse(&req)?;
    let status = params
        .take_one("status")?
        .map(|s| {
            DeliveryStatus::parse(&s).ok_or_else(|| {
                ApiError::invalid("status", "status must be pending, succeeded or failed")
            })
        })
        .transpose()?;
    let limit = match params.take_one("limit")? {
        None => 20,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "limit must be an integer from 1 to 100"))?,
    };
    let before = params
        .take_one("cursor")?
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(&c)
                .ok()
                .and_then(|b| Uuid::from_slice(&b).ok())
                .ok_or_else(|| {
                    ApiError::invalid("cursor", "cursor is not a nextCursor this broker gave")
                })
        })
        .transpose()?;
    params.finish()?;
    let (deliveries, has_more) = state
        .store
        .deliveries(webhook.id, status, before, limit)
        .await?;
    let next_cursor = has_more
        .then(|| {
            deliveries
                .last()
                .map(|d| URL_SAFE_NO_PAD.encode(d.id.as_bytes()))
        })
        .flatten();
    Ok(HttpResponse::Ok().json(DeliveryPage {
        data: deliveries.iter().map(DeliveryView::from).collect(),
        has_more,
        next_cursor,
    }))
}

/// One more attempt of a delivery, now.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{deliveryId}/retry", tag = "webhooks",
    params(("id" = Uuid, Path), ("deliveryId" = Uuid, Path)),
    responses((status = 202, description = "Queued for one more attempt", body = QueuedDelivery), (status = 403, description = "A reader key (webhooks are managed by admin, service and app keys)", body = ErrorBody)), security(("bearer" = [])))]
pub async fn retry_delivery(
    path: web::Path<(String, String)>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (raw_webhook, raw_delivery) = path.into_inner();
    let webhook = visible_webhook(&state, &principal, &raw_webhook).await?;
    let delivery_id = parse_id(&raw_delivery, "delivery")?;
    state
        .store
        .retry_delivery(webhook.id, delivery_id)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::not_found("delivery"),
            other => other.into(),
        })?;
    Ok(HttpResponse::Accepted().json(QueuedDelivery {
        id: delivery_id,
        status: "pending",
    }))
}
