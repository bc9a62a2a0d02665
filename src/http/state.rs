//! What every handler shares ([`AppState`]), and the [`Principal`] extractor that authenticates a
//! request through it.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use futures_util::future::LocalBoxFuture;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Principal};
use crate::error::ApiError;
use crate::http::bodies::{BodyBudget, BodyOwner};
use crate::hub::Hub;
use crate::shutdown::Drain;
use crate::store::Store;
use crate::webhooks::worker::Deliverer;

/// Limits on what a request may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_body_bytes: usize,
    /// Webhook endpoints one organization may have.
    pub max_webhooks_per_organization: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
}

/// What every handler shares.
pub struct AppState {
    pub store: Store,
    pub hub: Hub,
    /// Cancelled once on shutdown: every stream and worker listens to it.
    pub shutdown: CancellationToken,
    /// Requests in flight; refuses new ones once shutdown has begun.
    pub drain: Drain,
    /// Keep-alive interval of idle streams.
    pub heartbeat: Duration,
    pub auth: Arc<Authenticator>,
    pub limits: Limits,
    /// Memory committed to request bodies in flight.
    pub bodies: BodyBudget,
    /// The OpenAPI document, rendered once.
    pub openapi: String,
    /// The AsyncAPI document, rendered once.
    pub asyncapi: String,
    /// Sends webhook requests (the worker and `POST /v1/webhooks/{id}/test`).
    pub deliverer: Arc<Deliverer>,
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let authorization = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| v.to_str().map(str::to_owned));
        Box::pin(async move {
            let state: Arc<AppState> = state
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("AppState is not registered")))?
                .into_inner();
            let authorization = authorization.transpose().map_err(|_| {
                ApiError::Unauthorized("the Authorization header is not ASCII".into())
            })?;
            let principal = state.auth.authenticate(authorization.as_deref()).await?;
            // The body that follows is counted against this key.
            req.extensions_mut().insert(BodyOwner(principal.key_id));
            Ok(principal)
        })
    }
}
