//! The middleware that turns requests away while the broker shuts down: 503 `unavailable` with
//! `Retry-After` and `Connection: close`, for every request read after the signal (see
//! [`crate::shutdown::Drain`]). Requests admitted before it run to their end; their answers
//! close the connection too, so that no client sends another request on a connection the
//! server is about to drop.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};

use crate::error::ApiError;
use crate::http::state::AppState;

pub async fn refuse_while_draining(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let drain = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.drain.clone());
    let Some(drain) = drain else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let Some(_in_flight) = drain.admit() else {
        tracing::debug!(path = req.path(), "shutting down: request refused");
        let mut response = ApiError::Unavailable.error_response();
        response
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        return Ok(req.into_response(response).map_into_right_body());
    };
    let mut response = next.call(req).await?;
    if drain.is_draining() {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response.map_into_left_body())
}
