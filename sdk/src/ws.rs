//! The WebSocket protocol of `GET /v1/events/ws` (contract §5), for one subscription per socket:
//! the key travels in the upgrade's `Authorization` header, a `subscribe` frame carries the
//! filter and the resume point, and `event`, `reset` and `error` frames come back.

use cpod_proto::ErrorCode;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::api::Api;
use crate::connection::{Connection, Incoming, Resume, accepted_since, decode_event};
use crate::error::{ApiError, Error, Result};
use crate::filter::Filter;
use cpod_proto::cloudevents::EventFormat;

/// The subscription's id on its socket.
const SUBSCRIPTION: &str = "s1";

/// Opens a socket, subscribes, and answers the socket's reports.
pub(crate) async fn connect(
    api: &Api,
    filter: &Filter,
    resume: &Resume,
    format: EventFormat,
) -> Result<(Connection, String)> {
    let mut url = api.url("/v1/events/ws");
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| Error::Config("the base URL cannot become a WebSocket URL".into()))?;
    let mut request = url.as_str().into_client_request()?;
    let authorization = format!("Bearer {}", api.api_key())
        .parse()
        .map_err(|_| Error::Config("the API key cannot travel in a header".into()))?;
    request.headers_mut().insert("Authorization", authorization);
    let (mut socket, response) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        // A refused upgrade carries the broker's JSON error.
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            return Err(Error::Api(crate::api::decode_error(status, &body, None)));
        }
        Err(e) => return Err(e.into()),
    };
    let accepted = accepted_since(response.headers().get("date").and_then(|v| v.to_str().ok()));
    let mut subscribe =
        json!({"op": "subscribe", "id": SUBSCRIPTION, "filter": filter.to_ws_json()});
    match (&resume.last_event_id, &resume.since) {
        (Some(id), _) => subscribe["lastEventId"] = Value::from(id.as_str()),
        (None, Some(since)) => subscribe["since"] = Value::from(since.as_str()),
        (None, None) => {}
    }
    if format != EventFormat::Cpod {
        subscribe["format"] = Value::from(format.as_str());
    }
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    let incoming = socket.filter_map(move |message| async move {
        match message {
            Err(e) => Some(Err(Error::from(e))),
            Ok(Message::Text(text)) => Some(frame_to_incoming(&text, format)),
            Ok(Message::Close(_)) => None,
            // Pings (answered by tungstenite), pongs and binary frames show life.
            Ok(_) => Some(Ok(Incoming::Alive)),
        }
    });
    Ok((Box::pin(incoming), accepted))
}

/// One text frame from the broker.
fn frame_to_incoming(text: &str, format: EventFormat) -> Result<Incoming> {
    let frame: Value = serde_json::from_str(text)
        .map_err(|e| Error::Protocol(format!("a frame that is not JSON ({e}): {text}")))?;
    match frame.get("op").and_then(Value::as_str) {
        Some("event") => {
            decode_event(&frame["event"].to_string(), format).map(|e| Incoming::Event(Box::new(e)))
        }
        Some("reset") => Ok(Incoming::Reset {
            reason: frame["reason"]
                .as_str()
                .unwrap_or("unknown_last_event_id")
                .to_owned(),
        }),
        Some("error") => {
            let code = frame["code"].as_str().unwrap_or("internal").to_owned();
            Err(Error::Api(ApiError {
                // A frame carries no status: the contract's table pairs one with each code.
                status: ErrorCode::parse(&code).map_or(500, ErrorCode::status),
                message: frame["message"].as_str().unwrap_or(&code).to_owned(),
                param: frame["param"].as_str().map(str::to_owned),
                code,
                retry_after: None,
            }))
        }
        // `subscribed`, `pong`, and ops this SDK does not know yet.
        _ => Ok(Incoming::Alive),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_become_events_resets_and_typed_errors() {
        let event = frame_to_incoming(
            r#"{"op":"event","subscription":"s1","event":{"id":"1","type":"job.failed","resourceId":"j","resourceType":"job","organizationId":"o","workspaceId":null,"payload":{},"timestamp":"t"}}"#,
            EventFormat::Cpod,
        );
        assert!(matches!(event, Ok(Incoming::Event(e)) if e.event_type == "job.failed"));
        let reset = frame_to_incoming(
            r#"{"op":"reset","subscription":"s1","reason":"unknown_last_event_id"}"#,
            EventFormat::Cpod,
        );
        assert!(
            matches!(reset, Ok(Incoming::Reset { reason }) if reason == "unknown_last_event_id")
        );
        let error = frame_to_incoming(
            r#"{"op":"error","id":"s1","code":"forbidden","message":"another organization"}"#,
            EventFormat::Cpod,
        )
        .unwrap_err();
        assert_eq!(error.code(), Some("forbidden"));
        assert!(!error.is_transient());
        assert!(matches!(
            frame_to_incoming(r#"{"op":"subscribed","id":"s1"}"#, EventFormat::Cpod),
            Ok(Incoming::Alive)
        ));
    }
}
