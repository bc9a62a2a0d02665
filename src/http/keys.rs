//! `/v1/keys`: create, list and revoke API keys (contract §2).
//!
//! Creating or revoking an organization's key stores a `credential.created` /
//! `credential.revoked` event in the same transaction, so the audit trail and the key table
//! never disagree. Another organization's key is 404, exactly as if it did not exist.

use actix_web::{HttpRequest, HttpResponse, web};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::event::{EventType, OrganizationId, format_timestamp, unix_now_ms};
use crate::http::state::AppState;
use crate::http::wire::{CreatedKey, KeyList, KeyView, NewKeyBody, parse_body};
use crate::http::{QueryParams, parse_id, read_body, require_json_content_type};
use crate::keys::{KeyRecord, NewKey, Role, credential_event, generate_key};

pub const MAX_NAME_LEN: usize = 200;
/// Key bodies are tiny; anything larger is a mistake.
const MAX_KEY_BODY: usize = 16 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/keys")
            .route(web::post().to(create_key))
            .route(web::get().to(list_keys))
            .default_service(crate::error::method_not_allowed("GET, POST")),
    )
    // Before `/v1/keys/{id}`, which would otherwise take `me` for an id.
    .service(
        web::resource("/v1/keys/me")
            .route(web::get().to(current_key))
            .default_service(crate::error::method_not_allowed("GET")),
    )
    .service(
        web::resource("/v1/keys/{id}")
            .route(web::delete().to(revoke_key))
            .default_service(crate::error::method_not_allowed("DELETE")),
    );
}

/// Create a key; the secret is in the answer and nowhere else.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body(content = NewKeyBody, content_type = "application/json"),
    responses(
        (status = 201, body = CreatedKey),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Not admin, or a service key asking for a service key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_key(
    req: HttpRequest,
    principal: Principal,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require(&[Role::Admin, Role::Service])?;
    require_json_content_type(&req)?;
    let body = read_body(&req, payload, MAX_KEY_BODY).await?;
    let request: NewKeyBody = parse_body(&body)?;
    let role = match request.role.parse::<Role>() {
        Ok(Role::Admin) => {
            return Err(ApiError::invalid(
                "role",
                "admin keys are not made through the API; set CPOD_ADMIN_KEY",
            ));
        }
        Ok(role) => role,
        Err(()) => {
            return Err(ApiError::invalid(
                "role",
                "role must be service, app or reader",
            ));
        }
    };
    let name = request.name;
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::invalid(
            "name",
            format!("name must be a non-empty string of at most {MAX_NAME_LEN} characters"),
        ));
    }
    let requested_org = request
        .organization_id
        .as_deref()
        .map(OrganizationId::parse)
        .transpose()?;
    let organization_id = principal.organization(requested_org.as_ref(), "organizationId")?;
    if !principal.role.may_manage(role) {
        return Err(ApiError::Forbidden(format!(
            "a {} key may not create {} keys",
            principal.role.as_str(),
            role.as_str()
        )));
    }

    let generated = generate_key();
    let record = KeyRecord {
        id: Uuid::now_v7(),
        organization_id: Some(organization_id.clone()),
        role,
        name,
        created_ms: unix_now_ms(),
        revoked_ms: None,
    };
    let event = credential_event(EventType::credential_created(), &record, &organization_id);
    state
        .store
        .create_key(
            NewKey {
                record: record.clone(),
                secret_hash: generated.hash,
            },
            Some(event),
        )
        .await?;
    tracing::info!(key_id = %record.id, organization = organization_id.as_str(), role = role.as_str(), "key created");
    Ok(HttpResponse::Created().json(CreatedKey {
        view: KeyView::from(&record),
        key: generated.secret,
    }))
}

/// List active keys (admin: every organization, or one with `organizationId`; service: its own).
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    params(("organizationId" = Option<String>, Query, description = "Admin only: one organization's keys")),
    responses(
        (status = 200, body = KeyList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_keys(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require(&[Role::Admin, Role::Service])?;
    let mut params = QueryParams::parse(&req)?;
    let requested = params
        .take_one("organizationId")?
        .map(|o| OrganizationId::parse(&o))
        .transpose()?;
    params.finish()?;
    let organization = match principal.role {
        Role::Admin => requested,
        _ => Some(principal.organization(requested.as_ref(), "organizationId")?),
    };
    let keys = state.store.active_keys(organization).await?;
    let data: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    Ok(HttpResponse::Ok().json(KeyList { data }))
}

/// The calling key itself (any role): its organization, role and name, never its secret. This is
/// how a client such as the dashboard learns what the key it was given may see and do.
#[utoipa::path(
    get, path = "/v1/keys/me", tag = "keys",
    responses(
        (status = 200, body = KeyView),
        (status = 401, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn current_key(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let record = state
        .store
        .active_key(principal.key_id)
        .await?
        // Revoked between authentication and this read.
        .ok_or_else(|| ApiError::Unauthorized("this key has been revoked".into()))?;
    Ok(HttpResponse::Ok().json(KeyView::from(&record)))
}

/// Revoke a key: it gets 401 from then on.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked", body = KeyView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    path: web::Path<String>,
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require(&[Role::Admin, Role::Service])?;
    let id = parse_id(&path, "key")?;
    let record = state
        .store
        .active_key(id)
        .await?
        .filter(|k| {
            principal.organization_id.is_none() || k.organization_id == principal.organization_id
        })
        .ok_or_else(|| ApiError::not_found("key"))?;
    if !principal.role.may_manage(record.role) {
        return Err(ApiError::Forbidden(format!(
            "a {} key may not revoke {} keys",
            principal.role.as_str(),
            record.role.as_str()
        )));
    }
    let event = record
        .organization_id
        .as_ref()
        .map(|org| credential_event(EventType::credential_revoked(), &record, org));
    state
        .store
        .revoke_key(id, event)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::not_found("key"),
            other => other.into(),
        })?;
    state.auth.evict(id);
    state.hub.revoke(id);
    tracing::info!(key_id = %id, "key revoked");
    let mut view = KeyView::from(&record);
    view.revoked_at = Some(format_timestamp(unix_now_ms()));
    Ok(HttpResponse::Ok().json(view))
}
