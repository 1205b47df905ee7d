//! The WebSocket endpoint with a real WebSocket client: the handshake's checks, `ready`,
//! `ping`, and command frames answered by `ack` or `error`.

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{TestApp, json_body, spawn_app};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(app: &TestApp, query: &str) -> String {
    format!(
        "{}/api/v1/ws{query}",
        app.base.replacen("http://", "ws://", 1)
    )
}

pub(crate) async fn connect(app: &TestApp, token: &str) -> Socket {
    let mut request = ws_url(app, "")
        .into_client_request()
        .unwrap_or_else(|error| panic!("{error}"));
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|error| panic!("{error}")),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    socket
}

/// The next JSON text frame, within 5 s.
pub(crate) async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within 5 s"));
        match frame {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|error| panic!("{error}: {text}"));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

pub(crate) async fn send_frame(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
}

#[tokio::test]
async fn handshake_checks_token_and_origin() {
    let app = spawn_app().await;
    let user = app.register("socket").await;
    // No token: 401 before any upgrade.
    let refused = tokio_tungstenite::connect_async(ws_url(&app, "")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // A foreign Origin: 403; an allowed one connects.
    for (origin, allowed) in [
        ("http://evil.example", false),
        ("http://allowed.example", true),
    ] {
        let mut request = ws_url(&app, &format!("?access_token={}", user.access_token))
            .into_client_request()
            .unwrap_or_else(|error| panic!("{error}"));
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_static(origin));
        let result = tokio_tungstenite::connect_async(request).await;
        match (result, allowed) {
            (Ok((mut socket, _)), true) => {
                assert_eq!(next_frame(&mut socket).await["type"], "ready")
            }
            (Err(tokio_tungstenite::tungstenite::Error::Http(response)), false) => {
                assert_eq!(response.status().as_u16(), 403)
            }
            (other, _) => panic!("{origin}: unexpected {:?}", other.map(|_| ())),
        }
    }
    // A revoked token cannot connect.
    let logout = app
        .post("/api/v1/auth/logout", Some(&user.access_token), &json!({}))
        .await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let revoked = tokio_tungstenite::connect_async(ws_url(
        &app,
        &format!("?access_token={}", user.access_token),
    ))
    .await;
    assert!(
        matches!(revoked, Err(tokio_tungstenite::tungstenite::Error::Http(ref response)) if response.status().as_u16() == 401)
    );
}

#[tokio::test]
async fn ready_ping_and_message_send_with_acks() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let outsider = app.register("outsider").await;
    let conversation = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": bob.id}),
        )
        .await,
    )
    .await;
    let conversation_id = conversation["id"].clone();

    let mut socket = connect(&app, &alice.access_token).await;
    let ready = next_frame(&mut socket).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["user_id"], alice.id.to_string());
    assert!(ready["heartbeat_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert!(ready["connection_id"].is_string());

    send_frame(&mut socket, json!({"type": "ping", "ref": "p1"})).await;
    assert_eq!(
        next_frame(&mut socket).await,
        json!({"type": "pong", "ref": "p1"})
    );

    let send = json!({"type": "message.send", "ref": 7, "conversation_id": conversation_id, "client_message_id": "ws-1", "body": "over the socket"});
    send_frame(&mut socket, send.clone()).await;
    let ack = next_frame(&mut socket).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], 7);
    assert_eq!(ack["result"]["seq"], 1);
    assert_eq!(ack["result"]["body"], "over the socket");
    assert_eq!(ack["result"]["sender_id"], alice.id.to_string());
    // The same client_message_id again: the same message, nothing new.
    send_frame(&mut socket, send).await;
    let again = next_frame(&mut socket).await;
    assert_eq!(again["result"]["id"], ack["result"]["id"]);
    // It is the same message REST shows.
    let message_id = ack["result"]["id"].as_str().unwrap_or_default();
    let over_rest = app
        .get(
            &format!("/api/v1/messages/{message_id}"),
            Some(&bob.access_token),
            None,
        )
        .await;
    let mut found = over_rest.status() == StatusCode::OK;
    for _ in 0..50 {
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = app
            .get(
                &format!("/api/v1/messages/{message_id}"),
                Some(&bob.access_token),
                None,
            )
            .await
            .status()
            == StatusCode::OK;
    }
    assert!(
        found,
        "the message sent over the socket is not readable over REST"
    );

    // The same validation as REST, answered with the ref.
    send_frame(&mut socket, json!({"type": "message.send", "ref": "e1", "conversation_id": conversation_id, "client_message_id": "ws-2", "body": "  "})).await;
    let refused = next_frame(&mut socket).await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["ref"].as_str(),
            refused["code"].as_str()
        ),
        (Some("error"), Some("e1"), Some("empty_body"))
    );
    send_frame(&mut socket, json!({"type": "message.send", "ref": "e2", "conversation_id": uuid::Uuid::now_v7(), "client_message_id": "ws-3", "body": "hi"})).await;
    assert_eq!(
        next_frame(&mut socket).await["code"],
        "conversation_not_found"
    );
    send_frame(&mut socket, json!({"type": "teleport", "ref": "e3"})).await;
    let unknown = next_frame(&mut socket).await;
    assert_eq!(
        (unknown["code"].as_str(), unknown["ref"].as_str()),
        (Some("invalid_frame"), Some("e3"))
    );
    socket
        .send(Message::Text("not json".into()))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(next_frame(&mut socket).await["code"], "malformed_frame");

    // A non-member's socket cannot send into the conversation.
    let mut intruder = connect(&app, &outsider.access_token).await;
    assert_eq!(next_frame(&mut intruder).await["type"], "ready");
    send_frame(&mut intruder, json!({"type": "message.send", "ref": 1, "conversation_id": conversation_id, "client_message_id": "x", "body": "hi"})).await;
    assert_eq!(
        next_frame(&mut intruder).await["code"],
        "conversation_not_found"
    );

    // Receipts over the socket move the watermark like REST.
    let mut bob_socket = connect(&app, &bob.access_token).await;
    assert_eq!(next_frame(&mut bob_socket).await["type"], "ready");
    send_frame(&mut bob_socket, json!({"type": "receipt", "ref": "r1", "conversation_id": conversation_id, "delivered_seq": 1, "read_seq": 1})).await;
    assert_eq!(
        next_frame(&mut bob_socket).await,
        json!({"type": "ack", "ref": "r1", "result": null})
    );
}

#[tokio::test]
async fn frames_over_64_kib_close_the_socket_with_1009() {
    let app = spawn_app().await;
    let user = app.register("big").await;
    let mut socket = connect(&app, &user.access_token).await;
    assert_eq!(next_frame(&mut socket).await["type"], "ready");
    let huge = json!({"type": "ping", "ref": "x".repeat(70 * 1024)});
    let _ = socket.send(Message::Text(huge.to_string().into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|frame| u16::from(frame.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the socket stayed open"));
    assert_eq!(closed, Some(1009));
}
