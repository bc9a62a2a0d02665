//! `/v1/webhooks`: endpoints, secret rotation, test sends and the deliveries log (contract §6).
//!
//! Admin, service and app keys manage their organization's endpoints; another organization's
//! endpoint is 404. A secret appears only in the answers to creation and rotation.

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::event::{OrganizationId, ResourceType, format_timestamp, unix_now_ms};
use crate::filter::{MAX_TYPE_PATTERNS, OrgScope, TypePattern, check_type_count};
use crate::http::state::AppState;
use crate::http::{QueryParams, parse_id, parse_json_object, read_body, require_json_content_type};
use crate::keys::Role;
use crate::store::webhooks::{DeliveryRecord, DeliveryStatus, WebhookPatch, WebhookRecord};
use crate::webhooks::signing::generate_secret;
use crate::webhooks::url_guard;

const MAX_BODY: usize = 64 * 1024;
const MAX_DESCRIPTION: usize = 500;
const MAX_URL: usize = 2048;
/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;
const MANAGERS: [Role; 3] = [Role::Admin, Role::Service, Role::App];

pub fn configure(cfg: &mut web::ServiceConfig) {
    let not_allowed = || web::to(crate::error::method_not_allowed);
    cfg.service(
        web::resource("/v1/webhooks")
            .route(web::post().to(create_webhook))
            .route(web::get().to(list_webhooks))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/webhooks/{id}")
            .route(web::get().to(get_webhook))
            .route(web::patch().to(update_webhook))
            .route(web::delete().to(delete_webhook))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/webhooks/{id}/rotate-secret")
            .route(web::post().to(rotate_secret))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/webhooks/{id}/test")
            .route(web::post().to(test_webhook))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/webhooks/{id}/deliveries")
            .route(web::get().to(list_deliveries))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/webhooks/{id}/deliveries/{delivery_id}/retry")
            .route(web::post().to(retry_delivery))
            .default_service(not_allowed()),
    );
}

/// An endpoint as shown: never its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub id: Uuid,
    pub organization_id: String,
    pub url: String,
    pub types: Vec<String>,
    pub resource_type: Option<String>,
    pub description: Option<String>,
    pub enabled: bool,
    /// Why the broker disabled it (410 Gone, or days without success).
    pub disabled_reason: Option<String>,
    pub created_at: String,
}

impl From<&WebhookRecord> for WebhookView {
    fn from(w: &WebhookRecord) -> Self {
        Self {
            id: w.id,
            organization_id: w.organization_id.clone(),
            url: w.url.clone(),
            types: w.types.clone(),
            resource_type: w.resource_type.clone(),
            description: w.description.clone(),
            enabled: w.enabled,
            disabled_reason: w.disabled_reason.clone(),
            created_at: format_timestamp(w.created_ms),
        }
    }
}

/// A new endpoint: the view and its secret, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub view: WebhookView,
    /// `whsec_…`: verify signatures with it.
    pub secret: String,
}

/// The fields of a create or update body, each checked.
struct WebhookFields {
    organization_id: Option<OrganizationId>,
    url: Option<String>,
    types: Option<Vec<String>>,
    resource_type: Option<Option<String>>,
    description: Option<Option<String>>,
    enabled: Option<bool>,
}

fn parse_fields(body: &[u8], allowed: &[&str]) -> Result<WebhookFields, ApiError> {
    let mut object = parse_json_object(body, allowed, "a webhook")?;
    let string =
        |object: &mut Map<String, Value>, name: &str| -> Result<Option<Option<String>>, ApiError> {
            match object.remove(name) {
                None => Ok(None),
                Some(Value::Null) => Ok(Some(None)),
                Some(Value::String(s)) => Ok(Some(Some(s))),
                Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
            }
        };
    let organization_id = string(&mut object, "organizationId")?
        .flatten()
        .map(|o| OrganizationId::parse(&o))
        .transpose()?;
    let url = match string(&mut object, "url")? {
        None => None,
        Some(None) => return Err(ApiError::invalid("url", "url must be an http or https URL")),
        Some(Some(url)) => {
            if url.len() > MAX_URL {
                return Err(ApiError::invalid(
                    "url",
                    format!("url is longer than {MAX_URL} characters"),
                ));
            }
            url_guard::parse(&url).map_err(|e| ApiError::invalid("url", e.to_string()))?;
            Some(url)
        }
    };
    let types = match object.remove("types") {
        None => None,
        Some(Value::Array(items)) if !items.is_empty() && check_type_count(items.len()).is_ok() => {
            Some(
                items
                    .iter()
                    .map(|v| {
                        let pattern = v
                            .as_str()
                            .ok_or_else(|| ApiError::invalid("types", "types must be strings"))?;
                        TypePattern::parse(pattern).map_err(ApiError::from)?;
                        Ok(pattern.to_owned())
                    })
                    .collect::<Result<Vec<_>, ApiError>>()?,
            )
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "types",
                format!("types must be a list of 1 to {MAX_TYPE_PATTERNS} type patterns"),
            ));
        }
    };
    let resource_type = string(&mut object, "resourceType")?
        .map(|r| {
            r.map(|r| ResourceType::parse(&r).map(|t| t.as_str().to_owned()))
                .transpose()
        })
        .transpose()?;
    let description = string(&mut object, "description")?;
    if description
        .as_ref()
        .and_then(|d| d.as_ref())
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Err(ApiError::invalid(
            "description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    let enabled = match object.remove("enabled") {
        None => None,
        Some(Value::Bool(b)) => Some(b),
        Some(_) => {
            return Err(ApiError::invalid(
                "enabled",
                "enabled must be true or false",
            ));
        }
    };
    Ok(WebhookFields {
        organization_id,
        url,
        types,
        resource_type,
        description,
        enabled,
    })
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
    request_body(content = crate::openapi::NewWebhookBody, content_type = "application/json"),
    responses((status = 201, body = CreatedWebhook), (status = 400, body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody),
        (status = 409, description = "The organization has as many endpoints as it may", body = crate::openapi::ErrorBody)),
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
    let fields = parse_fields(
        &body,
        &[
            "organizationId",
            "url",
            "types",
            "resourceType",
            "description",
        ],
    )?;
    let organization = principal.organization(fields.organization_id.as_ref(), "organizationId")?;
    let url = fields
        .url
        .ok_or_else(|| ApiError::invalid("url", "url is required"))?;
    check_reachable(&state, &url).await?;
    let webhook = WebhookRecord {
        id: Uuid::now_v7(),
        organization_id: organization.as_str().to_owned(),
        url,
        types: fields.types.unwrap_or_else(|| vec!["*".to_owned()]),
        resource_type: fields.resource_type.flatten(),
        description: fields.description.flatten(),
        enabled: true,
        secret: generate_secret(),
        previous_secret: None,
        previous_secret_expires_ms: None,
        created_ms: unix_now_ms(),
        last_success_ms: None,
        disabled_reason: None,
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
        view: WebhookView::from(&webhook),
        secret: webhook.secret,
    }))
}

/// List endpoints (admin: `organizationId` names the organization, `*` all of them).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    params(("organizationId" = Option<String>, Query, description = "Required for admin keys")),
    responses((status = 200, body = crate::openapi::WebhookList), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)),
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
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = WebhookView), (status = 404, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub async fn get_webhook(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let webhook = visible_webhook(&state, &principal, &path).await?;
    Ok(HttpResponse::Ok().json(WebhookView::from(&webhook)))
}

/// Change an endpoint's url, types, resourceType, description or enabled.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body(content = crate::openapi::WebhookPatchBody, content_type = "application/json"),
    responses((status = 200, body = WebhookView), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
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
    let fields = parse_fields(
        &body,
        &["url", "types", "resourceType", "description", "enabled"],
    )?;
    if let Some(url) = &fields.url {
        check_reachable(&state, url).await?;
    }
    let patch = WebhookPatch {
        url: fields.url,
        types: fields.types,
        resource_type: fields.resource_type,
        description: fields.description,
        enabled: fields.enabled,
    };
    let updated = state.store.update_webhook(webhook.id, patch).await?;
    Ok(HttpResponse::Ok().json(WebhookView::from(&updated)))
}

/// Delete an endpoint and its queued deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, description = "`{id, deleted: true}`"), (status = 404, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_webhook(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let webhook = visible_webhook(&state, &principal, &path).await?;
    let id = webhook.id;
    state.store.delete_webhook(id).await?;
    Ok(HttpResponse::Ok().json(json!({"id": id, "deleted": true})))
}

/// A new secret; the previous one keeps signing beside it for 24 hours.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = crate::openapi::RotatedSecret), (status = 404, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
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
    Ok(HttpResponse::Ok()
        .json(json!({"secret": secret, "previousSecretExpiresAt": format_timestamp(expires)})))
}

/// Send a signed, unstored `webhook.test` event now; answers 200 whatever the outcome.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = crate::openapi::TestResult), (status = 404, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
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
        .send(&webhook, &id.to_string(), "webhook.test", body)
        .await;
    Ok(HttpResponse::Ok().json(json!({
        "success": result.succeeded(),
        "responseStatus": result.status,
        "error": result.error,
        "durationMs": result.duration_ms,
    })))
}

fn delivery_json(d: &DeliveryRecord) -> Value {
    json!({
        "id": d.id,
        "eventId": d.event_id,
        "eventType": d.event_type,
        "status": d.status.as_str(),
        "nextAttemptAt": d.next_attempt_ms.filter(|_| d.status == DeliveryStatus::Pending).map(format_timestamp),
        "createdAt": format_timestamp(d.created_ms),
        "attempts": d.attempt_log.iter().map(|a| json!({
            "attempt": a.attempt,
            "responseStatus": a.response_status,
            "error": a.error,
            "durationMs": a.duration_ms,
            "attemptedAt": format_timestamp(a.attempted_ms),
            "responseBody": a.response_body,
        })).collect::<Vec<_>>(),
    })
}

/// The deliveries log, newest first, with every attempt.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), ("status" = Option<String>, Query, description = "pending, succeeded or failed"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 20"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = crate::openapi::DeliveryPage), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
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
    Ok(HttpResponse::Ok().json(json!({
        "data": deliveries.iter().map(delivery_json).collect::<Vec<_>>(),
        "hasMore": has_more,
        "nextCursor": next_cursor,
    })))
}

/// One more attempt of a delivery, now.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{deliveryId}/retry", tag = "webhooks",
    params(("id" = String, Path), ("deliveryId" = String, Path)),
    responses((status = 202, description = "Queued for one more attempt"), (status = 404, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
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
    Ok(HttpResponse::Accepted().json(json!({"id": delivery_id, "status": "pending"})))
}
