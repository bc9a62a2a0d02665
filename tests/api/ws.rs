//! The WebSocket protocol (contract §5): authentication three ways, subscriptions with replay,
//! unsubscribe, ping, errors that keep the socket open, pings from the broker, and closing.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{TestApp, custom, json_of, spawn_app, spawn_app_with};

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(app: &TestApp, key: Option<&str>, query: &str) -> Socket {
    let url = format!(
        "{}/v1/events/ws{query}",
        app.address.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade succeeds")
        .0
}

pub async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON text frame (skipping pings), or panics after a few seconds.
pub async fn recv(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn subscribe(socket: &mut Socket, id: &str, filter: Value) {
    send(
        socket,
        json!({"op": "subscribe", "id": id, "filter": filter}),
    )
    .await;
    assert_eq!(recv(socket).await, json!({"op": "subscribed", "id": id}));
}

#[tokio::test]
async fn a_subscription_delivers_matching_events_as_event_frames() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut socket = connect(&app, Some(&service), "").await;
    subscribe(
        &mut socket,
        "s1",
        json!({"types": ["pod.*"], "resourceType": "pod"}),
    )
    .await;
    app.emit(&service, &custom("ignored")).await;
    let pod = app
        .emit(
            &service,
            &json!({"type": "pod.failed", "resourceId": "p", "resourceType": "pod"}),
        )
        .await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "event", "subscription": "s1", "event": pod})
    );
}

#[tokio::test]
async fn a_socket_without_credentials_must_authenticate_with_a_first_frame() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut socket = connect(&app, None, "").await;
    send(&mut socket, json!({"op": "subscribe", "id": "s1"})).await;
    let error = recv(&mut socket).await;
    assert_eq!(
        (error["op"].as_str(), error["code"].as_str(), &error["id"]),
        (Some("error"), Some("unauthorized"), &json!("s1"))
    );
    send(
        &mut socket,
        json!({"op": "auth", "token": "cpk_wrong_wrong_wrong_wrong_wrong_wrong_00"}),
    )
    .await;
    assert_eq!(recv(&mut socket).await["code"], "unauthorized");
    send(&mut socket, json!({"op": "auth", "token": service})).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "authenticated", "organizationId": "org-a"})
    );
    subscribe(&mut socket, "s1", json!({})).await;
    let event = app.emit(&service, &custom("x")).await;
    assert_eq!(recv(&mut socket).await["event"], event);
}

#[tokio::test]
async fn a_ticket_authenticates_in_the_query_or_the_auth_frame() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let ticket_of = || async {
        let body = json_of(
            app.client
                .post(app.url("/v1/stream-tickets"))
                .bearer_auth(&service)
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        body["ticket"].as_str().unwrap().to_owned()
    };
    let mut by_query = connect(&app, None, &format!("?ticket={}", ticket_of().await)).await;
    subscribe(&mut by_query, "q", json!({"types": "custom.*"})).await;
    let mut by_frame = connect(&app, None, "").await;
    send(
        &mut by_frame,
        json!({"op": "auth", "token": ticket_of().await}),
    )
    .await;
    assert_eq!(recv(&mut by_frame).await["op"], "authenticated");
    subscribe(&mut by_frame, "f", json!({"types": ["custom.*"]})).await;
    let event = app.emit(&service, &custom("t")).await;
    assert_eq!(recv(&mut by_query).await["event"], event);
    assert_eq!(recv(&mut by_frame).await["event"], event);
}

#[tokio::test]
async fn a_bad_credential_at_the_upgrade_is_a_plain_401() {
    let app = spawn_app().await;
    for (key, query) in [
        (Some("cpk_nope_nope_nope_nope_nope_nope_nope_000"), ""),
        (None, "?ticket=cpt_forged"),
    ] {
        let url = format!(
            "{}/v1/events/ws{query}",
            app.address.replace("http://", "ws://")
        );
        let mut request = url.into_client_request().unwrap();
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401)
            }
            other => panic!("expected a 401, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let reader = app.key("org-a", "reader").await;
    let mut socket = connect(&app, Some(&reader), "").await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "invalid_request"),
        (Message::text("[1,2]"), "invalid_request"),
        (Message::text(r#"{"op":"dance"}"#), "invalid_request"),
        (Message::text(r#"{"id":"x"}"#), "invalid_request"),
        (Message::binary(vec![1u8, 2, 3]), "invalid_request"),
        (Message::text(r#"{"op":"subscribe"}"#), "invalid_request"),
        (
            Message::text(r#"{"op":"subscribe","id":"s","filter":{"types":["Pod"]}}"#),
            "invalid_request",
        ),
        (
            Message::text(r#"{"op":"subscribe","id":"s","filter":{"colour":"red"}}"#),
            "invalid_request",
        ),
        (
            Message::text(r#"{"op":"subscribe","id":"s","filter":{"organizationId":"org-b"}}"#),
            "forbidden",
        ),
        (
            Message::text(r#"{"op":"unsubscribe","id":"never"}"#),
            "not_found",
        ),
    ];
    for (frame, code) in cases {
        let shown = format!("{frame:?}");
        socket.send(frame).await.unwrap();
        let error = recv(&mut socket).await;
        assert_eq!(error["op"], "error", "{shown}: {error}");
        assert_eq!(error["code"], code, "{shown}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    send(&mut socket, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut socket).await, json!({"op": "pong"}));
    subscribe(&mut socket, "s", json!({})).await;
    send(&mut socket, json!({"op": "subscribe", "id": "s"})).await;
    assert_eq!(
        recv(&mut socket).await["code"],
        "invalid_request",
        "a duplicate id"
    );
}

#[tokio::test]
async fn one_socket_carries_several_subscriptions_and_unsubscribes_one() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut socket = connect(&app, Some(&service), "").await;
    subscribe(&mut socket, "pods", json!({"types": ["pod.*"]})).await;
    subscribe(&mut socket, "all", json!({})).await;
    let pod = app
        .emit(
            &service,
            &json!({"type": "pod.started", "resourceId": "p", "resourceType": "pod"}),
        )
        .await;
    let mut got = vec![recv(&mut socket).await, recv(&mut socket).await];
    got.sort_by_key(|f| f["subscription"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        vec![
            json!({"op": "event", "subscription": "all", "event": pod}),
            json!({"op": "event", "subscription": "pods", "event": pod})
        ]
    );
    send(&mut socket, json!({"op": "unsubscribe", "id": "pods"})).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "unsubscribed", "id": "pods"})
    );
    let next = app
        .emit(
            &service,
            &json!({"type": "pod.stopped", "resourceId": "p", "resourceType": "pod"}),
        )
        .await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "event", "subscription": "all", "event": next})
    );
    let other = app.emit(&service, &custom("after")).await;
    assert_eq!(
        recv(&mut socket).await["event"],
        other,
        "nothing more came for the unsubscribed one"
    );
}

#[tokio::test]
async fn a_subscription_replays_after_last_event_id_or_resets() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let first = app.emit(&service, &custom("1")).await;
    let second = app.emit(&service, &custom("2")).await;
    let mut socket = connect(&app, Some(&service), "").await;
    send(&mut socket, json!({"op": "subscribe", "id": "r", "filter": {"types": ["custom.*"]}, "lastEventId": first["id"]})).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "subscribed", "id": "r"})
    );
    assert_eq!(recv(&mut socket).await["event"], second);
    send(&mut socket, json!({"op": "subscribe", "id": "u", "filter": {"types": ["custom.*"]}, "lastEventId": "00000000-0000-0000-0000-000000000000"})).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "subscribed", "id": "u"})
    );
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "reset", "subscription": "u", "reason": "unknown_last_event_id"})
    );
    let live = app.emit(&service, &custom("3")).await;
    let mut got = vec![recv(&mut socket).await, recv(&mut socket).await];
    got.sort_by_key(|f| f["subscription"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        vec![
            json!({"op": "event", "subscription": "r", "event": live}),
            json!({"op": "event", "subscription": "u", "event": live})
        ]
    );
}

#[tokio::test]
async fn an_unauthenticated_socket_is_closed_with_4401_after_ten_seconds() {
    let app = spawn_app().await;
    let mut socket = connect(&app, None, "").await;
    let started = std::time::Instant::now();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("closed within 15 s")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.expect("a close code").code, CloseCode::from(4401));
    assert!(started.elapsed() >= Duration::from_secs(9));
}

#[tokio::test]
async fn the_broker_pings_and_closes_sockets_of_revoked_keys() {
    let app = spawn_app_with(&["--heartbeat", "300ms"]).await;
    let service = app.key("org-a", "service").await;
    let created = app.created_key(&service, "reader", "r").await;
    let mut socket = connect(&app, created["key"].as_str(), "").await;
    let ping = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = socket.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no ping from the broker");
    app.revoke(&service, &created).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket outlived its key by 5 s");
}

#[tokio::test]
async fn a_socket_that_answers_no_pings_is_closed() {
    let app = spawn_app_with(&["--heartbeat", "200ms"]).await;
    let reader = app.key("org-a", "reader").await;
    let mut socket = connect(&app, Some(&reader), "").await;
    // Not reading means not answering the broker's pings (tungstenite answers while reading).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the socket was closed");
    assert!(matches!(ended, None | Some(CloseCode::Policy)), "{ended:?}");
}

#[tokio::test]
async fn a_slow_websocket_reader_still_gets_every_event_in_order() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut socket = connect(&app, Some(&service), "").await;
    subscribe(&mut socket, "slow", json!({"types": ["custom.*"]})).await;
    const TOTAL: usize = 6000;
    // ~14 MB in all: more than the socket buffers, the socket's queue and the hub channel hold,
    // so the subscription must fall behind and catch up from the store.
    let blob = "x".repeat(2000);
    for chunk in 0..TOTAL / 500 {
        let events: Vec<Value> = (0..500)
            .map(|i| {
                let mut event = custom(&format!("{}", chunk * 500 + i));
                event["payload"] = json!({"blob": blob});
                event
            })
            .collect();
        let response = app
            .post_json(&service, "/v1/events/batch", &json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    for expected in 0..TOTAL {
        let frame = recv(&mut socket).await;
        assert_eq!(frame["event"]["resourceId"], expected.to_string());
    }
}

#[tokio::test]
async fn a_socket_authenticated_by_its_first_frame_closes_when_that_key_is_revoked() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let created = app.created_key(&service, "reader", "r").await;
    let mut socket = connect(&app, None, "").await;
    send(&mut socket, json!({"op": "auth", "token": created["key"]})).await;
    assert_eq!(recv(&mut socket).await["op"], "authenticated");
    subscribe(&mut socket, "s", json!({})).await;
    let revoke = app
        .client
        .delete(app.url(&format!("/v1/keys/{}", created["id"].as_str().unwrap())));
    json_of(
        revoke.bearer_auth(&service).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the socket outlived its key by 5 s");
    assert_eq!(closed, Some(CloseCode::from(4403)));
}

#[tokio::test]
async fn after_unsubscribed_no_event_of_that_subscription_arrives() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut socket = connect(&app, Some(&service), "").await;
    subscribe(&mut socket, "gone", json!({"types": ["custom.*"]})).await;
    let events: Vec<Value> = (0..300).map(|i| custom(&format!("{i}"))).collect();
    json_of(
        app.post_json(&service, "/v1/events/batch", &json!({"events": events}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    send(&mut socket, json!({"op": "unsubscribe", "id": "gone"})).await;
    loop {
        let frame = recv(&mut socket).await;
        if frame["op"] == "unsubscribed" {
            break;
        }
        assert_eq!(frame["subscription"], "gone");
    }
    send(&mut socket, json!({"op": "ping"})).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "pong"}),
        "an event came after unsubscribed"
    );
}
