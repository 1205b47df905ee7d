//! The WebSocket endpoint with a real WebSocket client: the handshake's checks, `ready`,
//! `ping`, and command frames answered by `ack` or `error`.

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{TestApp, TestUser, json_body, spawn_app};

pub(crate) type Socket =
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

/// The next frame that is not a pushed `event` (an ack, error, pong, ready or resumed).
pub(crate) async fn next_reply(socket: &mut Socket) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] != "event" {
            return frame;
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
    let ready = next_reply(&mut socket).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["user_id"], alice.id.to_string());
    assert!(ready["heartbeat_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert!(ready["connection_id"].is_string());

    send_frame(&mut socket, json!({"type": "ping", "ref": "p1"})).await;
    assert_eq!(
        next_reply(&mut socket).await,
        json!({"type": "pong", "ref": "p1"})
    );

    let send = json!({"type": "message.send", "ref": 7, "conversation_id": conversation_id, "client_message_id": "ws-1", "body": "over the socket"});
    send_frame(&mut socket, send.clone()).await;
    let ack = next_reply(&mut socket).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], 7);
    assert_eq!(ack["result"]["seq"], 1);
    assert_eq!(ack["result"]["body"], "over the socket");
    assert_eq!(ack["result"]["sender_id"], alice.id.to_string());
    // The same client_message_id again: the same message, nothing new.
    send_frame(&mut socket, send).await;
    let again = next_reply(&mut socket).await;
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
    let refused = next_reply(&mut socket).await;
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
        next_reply(&mut socket).await["code"],
        "conversation_not_found"
    );
    send_frame(&mut socket, json!({"type": "teleport", "ref": "e3"})).await;
    let unknown = next_reply(&mut socket).await;
    assert_eq!(
        (unknown["code"].as_str(), unknown["ref"].as_str()),
        (Some("invalid_frame"), Some("e3"))
    );
    socket
        .send(Message::Text("not json".into()))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(next_reply(&mut socket).await["code"], "malformed_frame");

    // A non-member's socket cannot send into the conversation.
    let mut intruder = connect(&app, &outsider.access_token).await;
    assert_eq!(next_reply(&mut intruder).await["type"], "ready");
    send_frame(&mut intruder, json!({"type": "message.send", "ref": 1, "conversation_id": conversation_id, "client_message_id": "x", "body": "hi"})).await;
    assert_eq!(
        next_reply(&mut intruder).await["code"],
        "conversation_not_found"
    );

    // Receipts over the socket move the watermark like REST.
    let mut bob_socket = connect(&app, &bob.access_token).await;
    assert_eq!(next_reply(&mut bob_socket).await["type"], "ready");
    send_frame(&mut bob_socket, json!({"type": "receipt", "ref": "r1", "conversation_id": conversation_id, "delivered_seq": 1, "read_seq": 1})).await;
    assert_eq!(
        next_reply(&mut bob_socket).await,
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
    let closed = close_code(&mut socket, Duration::from_secs(5)).await;
    assert_eq!(closed, Some(1009));
}

/// The next `event` frame (skipping others), within 5 s.
pub(crate) async fn next_event(socket: &mut Socket) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] == "event" {
            return frame;
        }
    }
}

pub(crate) async fn ready(socket: &mut Socket) -> Value {
    let frame = next_frame(socket).await;
    assert_eq!(frame["type"], "ready", "{frame}");
    frame
}

#[tokio::test]
async fn events_reach_every_device_of_every_member_in_order() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut bob_phone = connect(&app, &bob.access_token).await;
    let mut bob_laptop = connect(&app, &bob.access_token).await;
    let mut alice_tab = connect(&app, &alice.access_token).await;
    for socket in [&mut bob_phone, &mut bob_laptop, &mut alice_tab] {
        ready(socket).await;
    }
    let conversation = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": bob.id}),
        )
        .await,
    )
    .await;
    let id = conversation["id"].clone();
    for socket in [&mut bob_phone, &mut bob_laptop, &mut alice_tab] {
        let created = next_event(socket).await;
        assert_eq!(created["event"], "conversation.created");
        assert_eq!(created["data"]["id"], id);
        assert_eq!(created["data"]["members"].as_array().map(Vec::len), Some(2));
    }
    for index in 1..=5 {
        let response = app
            .post(
                &format!(
                    "/api/v1/conversations/{}/messages",
                    id.as_str().unwrap_or_default()
                ),
                Some(&alice.access_token),
                &json!({"body": format!("m{index}")}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    for socket in [&mut bob_phone, &mut bob_laptop] {
        let mut cursors = Vec::new();
        for index in 1..=5 {
            let event = next_event(socket).await;
            assert_eq!(event["event"], "message.created");
            assert_eq!(event["conversation_id"], id);
            assert_eq!(event["seq"], index);
            assert_eq!(event["data"]["body"], format!("m{index}"));
            assert_eq!(event["data"]["status"], Value::Null);
            cursors.push(event["cursor"].as_str().unwrap_or_default().to_owned());
        }
        let mut sorted = cursors.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "cursors are distinct: {cursors:?}");
    }
    let own = next_event(&mut alice_tab).await;
    assert_eq!(
        (own["seq"].as_i64(), own["data"]["status"].as_str()),
        (Some(1), Some("sent"))
    );

    // Edits, deletions and receipts are pushed too.
    send_frame(
        &mut bob_phone,
        json!({"type": "receipt", "conversation_id": id, "delivered_seq": 5, "read_seq": 2}),
    )
    .await;
    let receipt = next_event(&mut bob_laptop).await;
    assert_eq!(receipt["event"], "receipt.updated");
    assert_eq!(
        (
            receipt["data"]["delivered_seq"].as_i64(),
            receipt["data"]["read_seq"].as_i64()
        ),
        (Some(5), Some(2))
    );
    let message_id = own["data"]["id"].as_str().unwrap_or_default().to_owned();
    let edited = app
        .patch(
            &format!("/api/v1/messages/{message_id}"),
            &alice.access_token,
            &json!({"body": "m1 fixed"}),
        )
        .await;
    assert_eq!(edited.status(), StatusCode::OK);
    let edit = next_event(&mut bob_laptop).await;
    assert_eq!(
        (edit["event"].as_str(), edit["data"]["body"].as_str()),
        (Some("message.edited"), Some("m1 fixed"))
    );
    assert!(edit["data"]["edited_at"].is_string());
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/messages/{message_id}")))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let deletion = next_event(&mut bob_laptop).await;
    assert_eq!(
        (
            deletion["event"].as_str(),
            deletion["data"]["deleted"].as_bool()
        ),
        (Some("message.deleted"), Some(true))
    );
    assert_eq!(deletion["data"]["body"], Value::Null);
}

#[tokio::test]
async fn a_removed_member_stops_receiving_at_once() {
    let app = spawn_app().await;
    let owner = app.register("owner").await;
    let member = app.register("member").await;
    let mut socket = connect(&app, &member.access_token).await;
    ready(&mut socket).await;
    let group = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&owner.access_token),
            &json!({"type": "group", "title": "G", "member_ids": [member.id]}),
        )
        .await,
    )
    .await;
    let id = group["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        next_event(&mut socket).await["event"],
        "conversation.created"
    );
    let removed = app
        .client
        .delete(app.url(&format!("/api/v1/conversations/{id}/members/{}", member.id)))
        .bearer_auth(&owner.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let removal = next_event(&mut socket).await;
    assert_eq!(
        (
            removal["event"].as_str(),
            removal["data"]["user_id"].as_str()
        ),
        (Some("member.removed"), Some(member.id.to_string().as_str()))
    );
    let after = app
        .post(
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&owner.access_token),
            &json!({"body": "secret"}),
        )
        .await;
    assert_eq!(after.status(), StatusCode::CREATED);
    // Give the router time to (wrongly) deliver, then check nothing came.
    send_frame(&mut socket, json!({"type": "ping", "ref": "probe"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frame = next_frame(&mut socket).await;
    assert_eq!(
        frame,
        json!({"type": "pong", "ref": "probe"}),
        "a removed member got {frame}"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(700), socket.next()).await;
    if let Ok(Some(Ok(Message::Text(text)))) = nothing {
        panic!("a removed member got {text}");
    }
}

#[tokio::test]
async fn reconnecting_with_a_cursor_delivers_exactly_the_missed_events_in_order() {
    let app = spawn_app().await;
    let reader = app.register("reader").await;
    let mut writers = Vec::new();
    for index in 0..5 {
        writers.push(app.register(&format!("writer{index}")).await);
    }
    let mut conversations = Vec::new();
    for writer in &writers {
        let conversation = json_body(
            app.post(
                "/api/v1/conversations",
                Some(&writer.access_token),
                &json!({"type": "direct", "user_id": reader.id}),
            )
            .await,
        )
        .await;
        conversations.push(conversation["id"].as_str().unwrap_or_default().to_owned());
    }
    // Connected until all five conversations were pushed; the last cursor seen is kept.
    let mut socket = connect(&app, &reader.access_token).await;
    ready(&mut socket).await;
    let mut cursor;
    let first = app
        .post(
            &format!("/api/v1/conversations/{}/messages", conversations[0]),
            Some(&writers[0].access_token),
            &json!({"body": "before"}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    loop {
        let event = next_event(&mut socket).await;
        cursor = event["cursor"].as_str().unwrap_or_default().to_owned();
        if event["event"] == "message.created" {
            break;
        }
    }
    drop(socket);

    // Offline: 50 messages across the 5 conversations.
    for round in 0..10 {
        for (writer, conversation) in writers.iter().zip(&conversations) {
            let response = app
                .post(
                    &format!("/api/v1/conversations/{conversation}/messages"),
                    Some(&writer.access_token),
                    &json!({"body": format!("r{round}")}),
                )
                .await;
            assert_eq!(response.status(), StatusCode::CREATED);
        }
    }
    // Wait until the router has put them all in the inbox (a fresh connection's ready cursor).
    let mut settled = false;
    for _ in 0..100 {
        let mut probe = connect(&app, &reader.access_token).await;
        let newest = ready(&mut probe).await["cursor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let length: i64 = {
            let client = redis::Client::open(app.settings.redis_url.as_str())
                .unwrap_or_else(|error| panic!("{error}"));
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .unwrap_or_else(|error| panic!("{error}"));
            redis::cmd("XLEN")
                .arg(format!("{}:inbox:{}", app.settings.namespace, reader.id))
                .query_async(&mut connection)
                .await
                .unwrap_or(0)
        };
        // 5 conversation.created + 1 before + 50 missed.
        if length >= 56 && newest != cursor {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "the router did not deliver the 50 messages");

    let url = format!(
        "{}?cursor={cursor}&access_token={}",
        ws_url(&app, ""),
        reader.access_token
    );
    let (mut resumed, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    // `ready` names the resume point, so a client that keeps the last cursor it saw and
    // drops during the replay resumes from there again, skipping nothing.
    let greeting = ready(&mut resumed).await;
    assert_eq!(greeting["cursor"].as_str(), Some(cursor.as_str()));
    let mut per_conversation: std::collections::HashMap<String, Vec<i64>> =
        std::collections::HashMap::new();
    let mut last_cursor = String::new();
    loop {
        let frame = next_frame(&mut resumed).await;
        if frame["type"] == "resumed" {
            assert_eq!(frame["recovered"], true);
            assert_eq!(frame["cursor"].as_str(), Some(last_cursor.as_str()));
            break;
        }
        assert_eq!(frame["event"], "message.created", "{frame}");
        last_cursor = frame["cursor"].as_str().unwrap_or_default().to_owned();
        per_conversation
            .entry(
                frame["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default()
            .push(frame["seq"].as_i64().unwrap_or(0));
    }
    assert_eq!(
        per_conversation.values().map(Vec::len).sum::<usize>(),
        50,
        "{per_conversation:?}"
    );
    for (index, conversation) in conversations.iter().enumerate() {
        let expected: Vec<i64> = if index == 0 {
            (2..=11).collect()
        } else {
            (1..=10).collect()
        };
        assert_eq!(
            per_conversation.get(conversation),
            Some(&expected),
            "conversation {index}"
        );
    }
    // Live events follow the replay, once.
    let live = app
        .post(
            &format!("/api/v1/conversations/{}/messages", conversations[1]),
            Some(&writers[1].access_token),
            &json!({"body": "live"}),
        )
        .await;
    assert_eq!(live.status(), StatusCode::CREATED);
    let event = next_event(&mut resumed).await;
    assert_eq!(
        (event["seq"].as_i64(), event["data"]["body"].as_str()),
        (Some(11), Some("live"))
    );

    // A cursor that cannot be served: recovered false, at once.
    for bad in ["not-a-cursor", "99999999999999-0"] {
        let url = format!(
            "{}?cursor={bad}&access_token={}",
            ws_url(&app, ""),
            reader.access_token
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        ready(&mut socket).await;
        let frame = next_frame(&mut socket).await;
        assert_eq!(
            (frame["type"].as_str(), frame["recovered"].as_bool()),
            (Some("resumed"), Some(false)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn users_on_two_nodes_talk_and_every_device_hears_everything() {
    let first = spawn_app().await;
    let second = crate::helpers::spawn_node(&first).await;
    let alice = first.register("alice").await;
    let bob = first.register("bob").await;
    // Alice on the first node; Bob with one device on each node.
    let mut alice_socket = connect(&first, &alice.access_token).await;
    let mut bob_first = connect(&first, &bob.access_token).await;
    let mut bob_second = connect(&second, &bob.access_token).await;
    for socket in [&mut alice_socket, &mut bob_first, &mut bob_second] {
        ready(socket).await;
    }
    let conversation = json_body(
        first
            .post(
                "/api/v1/conversations",
                Some(&bob.access_token),
                &json!({"type": "direct", "user_id": alice.id}),
            )
            .await,
    )
    .await;
    let id = conversation["id"].clone();
    for socket in [&mut alice_socket, &mut bob_first, &mut bob_second] {
        assert_eq!(next_event(socket).await["event"], "conversation.created");
    }
    // Alice sends over her socket on node one, Bob answers over REST.
    for index in 1..=10 {
        send_frame(&mut alice_socket, json!({"type": "message.send", "ref": index, "conversation_id": id, "client_message_id": format!("a{index}"), "body": format!("from alice {index}")})).await;
    }
    for index in 1..=10 {
        let response = first
            .post(
                &format!(
                    "/api/v1/conversations/{}/messages",
                    id.as_str().unwrap_or_default()
                ),
                Some(&bob.access_token),
                &json!({"body": format!("from bob {index}")}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    // Every device sees all 20 messages, each conversation's in seq order, once.
    for socket in [&mut bob_first, &mut bob_second, &mut alice_socket] {
        let mut seqs = Vec::new();
        while seqs.len() < 20 {
            let event = next_event(socket).await;
            if event["event"] == "message.created" {
                seqs.push(event["seq"].as_i64().unwrap_or(0));
            }
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
    }
}

/// Waits for the socket to close and returns the close code.
async fn close_code(socket: &mut Socket, within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|frame| u16::from(frame.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the socket stayed open"))
}

#[tokio::test]
async fn logout_closes_the_sockets_of_that_token_on_every_node_with_4001() {
    let first = spawn_app().await;
    let second = crate::helpers::spawn_node(&first).await;
    let bob = first.register("bob").await;
    let other_session = crate::helpers::session_user(
        first.login(&bob.username, crate::helpers::PASSWORD).await,
        &bob.username,
        &bob.email,
    )
    .await;
    let mut on_first = connect(&first, &bob.access_token).await;
    let mut on_second = connect(&second, &bob.access_token).await;
    let mut other_device = connect(&second, &other_session.access_token).await;
    for socket in [&mut on_first, &mut on_second, &mut other_device] {
        ready(socket).await;
    }
    let logout = first
        .post("/api/v1/auth/logout", Some(&bob.access_token), &json!({}))
        .await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        close_code(&mut on_first, Duration::from_secs(1)).await,
        Some(4001)
    );
    assert_eq!(
        close_code(&mut on_second, Duration::from_secs(1)).await,
        Some(4001)
    );
    // The other session's socket stays open until every device is logged out.
    send_frame(&mut other_device, json!({"type": "ping", "ref": "still"})).await;
    assert_eq!(next_reply(&mut other_device).await["type"], "pong");
    let all = first
        .post(
            "/api/v1/auth/logout",
            Some(&other_session.access_token),
            &json!({"all_devices": true}),
        )
        .await;
    assert_eq!(all.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        close_code(&mut other_device, Duration::from_secs(1)).await,
        Some(4001)
    );
}

/// The next frame of `kind`, skipping others, within 5 s.
async fn next_of_type(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

#[tokio::test]
async fn typing_is_relayed_never_stored_and_presence_follows_connections() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let outsider = app.register("outsider").await;
    let mut bob_socket = connect(&app, &bob.access_token).await;
    ready(&mut bob_socket).await;
    let conversation = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&bob.access_token),
            &json!({"type": "direct", "user_id": alice.id}),
        )
        .await,
    )
    .await;
    let id = conversation["id"].clone();
    assert_eq!(
        next_event(&mut bob_socket).await["event"],
        "conversation.created"
    );

    // Alice comes online: Bob, who shares a conversation with her, is told.
    let mut alice_socket = connect(&app, &alice.access_token).await;
    ready(&mut alice_socket).await;
    let online = next_of_type(&mut bob_socket, "presence").await;
    assert_eq!(
        (online["user_id"].as_str(), online["online"].as_bool()),
        (Some(alice.id.to_string().as_str()), Some(true))
    );

    let events_before = app.event_count().await;
    send_frame(
        &mut alice_socket,
        json!({"type": "typing", "conversation_id": id}),
    )
    .await;
    let typing = next_of_type(&mut bob_socket, "typing").await;
    assert_eq!(
        typing,
        json!({"type": "typing", "conversation_id": id, "user_id": alice.id})
    );
    assert_eq!(
        app.event_count().await,
        events_before,
        "typing is never stored"
    );
    // A second one within the second is dropped; a ping shows nothing else came.
    send_frame(
        &mut alice_socket,
        json!({"type": "typing", "conversation_id": id}),
    )
    .await;
    send_frame(&mut alice_socket, json!({"type": "message.send", "ref": "after", "conversation_id": id, "client_message_id": "t1", "body": "hi"})).await;
    loop {
        let frame = next_frame(&mut bob_socket).await;
        assert_ne!(
            frame["type"], "typing",
            "a second typing within a second was relayed"
        );
        if frame["type"] == "event" && frame["event"] == "message.created" {
            break;
        }
    }
    // Outsiders cannot type into it.
    let mut intruder = connect(&app, &outsider.access_token).await;
    ready(&mut intruder).await;
    send_frame(
        &mut intruder,
        json!({"type": "typing", "ref": "t", "conversation_id": id}),
    )
    .await;
    assert_eq!(
        next_reply(&mut intruder).await["code"],
        "conversation_not_found"
    );

    // Alice's last connection closes: Bob sees her offline, with a last-seen time.
    alice_socket
        .close(None)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let offline = next_of_type(&mut bob_socket, "presence").await;
    assert_eq!(
        (offline["user_id"].as_str(), offline["online"].as_bool()),
        (Some(alice.id.to_string().as_str()), Some(false))
    );
    assert!(
        offline["last_seen_at"]
            .as_str()
            .is_some_and(|time| time.ends_with('Z'))
    );
}

/// The quoted names that follow `marker` in `source` (whitespace allowed in between).
fn names_after(source: &str, marker: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (index, _) in source.match_indices(marker) {
        let rest = source[index + marker.len()..].trim_start();
        if let Some(rest) = rest.strip_prefix('"')
            && let Some(end) = rest.find('"')
        {
            names.push(rest[..end].to_owned());
        }
    }
    names
}

#[tokio::test]
async fn the_asyncapi_document_covers_every_frame_the_code_sends_or_accepts() {
    let app = spawn_app().await;
    let document = json_body(app.get("/api/v1/asyncapi.json", None, None).await).await;
    assert_eq!(document["asyncapi"], "3.0.0");
    let messages = document["components"]["messages"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let documented =
        |direction: &str, kind: &str| messages.contains_key(&format!("{direction}.{kind}"));
    let source_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../socket-push/src");
    let mut sent = std::collections::BTreeSet::new();
    let mut events = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(source_dir).unwrap_or_else(|error| panic!("{error}")) {
        let path = entry.unwrap_or_else(|error| panic!("{error}")).path();
        if path.file_name().is_some_and(|name| name == "asyncapi.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap_or_default();
        sent.extend(names_after(&source, "\"type\":"));
        events.extend(names_after(&source, "frame("));
    }
    assert!(sent.len() >= 8, "found {sent:?}");
    for kind in &sent {
        assert!(
            documented("server", kind),
            "the server sends `{kind}` frames the document does not describe"
        );
    }
    let frames_source =
        std::fs::read_to_string(format!("{source_dir}/frames.rs")).unwrap_or_default();
    let accepted: Vec<String> = names_after(&frames_source, "#[serde(rename =")
        .into_iter()
        .filter(|name| name != "ref")
        .collect();
    assert!(accepted.len() >= 4, "found {accepted:?}");
    for kind in &accepted {
        assert!(
            documented("client", kind),
            "the server accepts `{kind}` frames the document does not describe"
        );
    }
    let event_enum = document["components"]["messages"]["server.event"]["payload"]["properties"]["event"]["enum"].clone();
    let documented_events: Vec<String> = serde_json::from_value(event_enum).unwrap_or_default();
    assert!(events.len() >= 8, "found {events:?}");
    for event in &events {
        assert!(
            documented_events.contains(event),
            "the server pushes `{event}` events the document does not list"
        );
    }
}

/// The direct conversation of `from` and `to`, opened by `from`: its id.
async fn direct_conversation(app: &TestApp, from: &TestUser, to: &TestUser) -> String {
    let conversation = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&from.access_token),
            &json!({"type": "direct", "user_id": to.id}),
        )
        .await,
    )
    .await;
    conversation["id"].as_str().unwrap_or_default().to_owned()
}

/// Sends each body to conversation `id` as `from`, one after another, over REST.
async fn post_messages(
    app: &TestApp,
    from: &TestUser,
    id: &str,
    bodies: impl IntoIterator<Item = String>,
) {
    for body in bodies {
        let response = app
            .post(
                &format!("/api/v1/conversations/{id}/messages"),
                Some(&from.access_token),
                &json!({"body": body}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}

/// An app whose sockets have small kernel send buffers, so that a client that stops reading
/// fills them after a few frames instead of after megabytes.
async fn app_with_small_socket_buffers(settings: chatd::Settings) -> TestApp {
    let listener = tokio::net::TcpSocket::new_v4().unwrap_or_else(|error| panic!("{error}"));
    listener
        .set_send_buffer_size(4096)
        .unwrap_or_else(|error| panic!("{error}"));
    listener
        .bind(
            "127.0.0.1:0"
                .parse()
                .unwrap_or_else(|error| panic!("{error}")),
        )
        .unwrap_or_else(|error| panic!("{error}"));
    let listener = listener
        .listen(128)
        .unwrap_or_else(|error| panic!("{error}"));
    crate::helpers::spawn_app_on(settings, chatd::Roles::ALL, listener).await
}

/// A client socket with a small receive buffer, read by nobody until the test reads it.
async fn connect_with_small_receive_buffer(app: &TestApp, token: &str) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|error| panic!("{error}"));
    socket
        .set_recv_buffer_size(4096)
        .unwrap_or_else(|error| panic!("{error}"));
    let address = app
        .base
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|error| panic!("{error}"));
    let stream = socket
        .connect(address)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let request = ws_url(app, &format!("?access_token={token}"))
        .into_client_request()
        .unwrap_or_else(|error| panic!("{error}"));
    let (socket, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    socket
}

#[tokio::test]
async fn a_connection_that_cannot_keep_up_is_closed_with_4008_and_resumes() {
    let mut settings = crate::helpers::fresh_settings();
    settings.ws_outbound_queue = 8;
    let app = app_with_small_socket_buffers(settings).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    // Bob's client reads nothing, through a small receive buffer.
    let mut slow = connect_with_small_receive_buffer(&app, &bob.access_token).await;
    let cursor = ready(&mut slow).await["cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let id = direct_conversation(&app, &alice, &bob).await;
    post_messages(&app, &alice, &id, (0..100).map(|_| "x".repeat(3900))).await;
    // Reading now: frames, then the close with 4008 (never a silent gap).
    let code = close_code(&mut slow, Duration::from_secs(20)).await;
    assert_eq!(code, Some(4008));
    // Resuming from the cursor it had gets everything, in order.
    let url = format!(
        "{}?cursor={cursor}&access_token={}",
        ws_url(&app, ""),
        bob.access_token
    );
    let (mut resumed, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    ready(&mut resumed).await;
    let mut seqs = Vec::new();
    let mut resumed_seen = false;
    // The replay, `resumed`, then live events (the router may still be catching up): together
    // every message once, in order.
    while seqs.len() < 100 || !resumed_seen {
        let frame = next_frame(&mut resumed).await;
        if frame["type"] == "resumed" {
            assert_eq!(frame["recovered"], true);
            resumed_seen = true;
        }
        if frame["event"] == "message.created" {
            seqs.push(frame["seq"].as_i64().unwrap_or(0));
        }
    }
    assert_eq!(seqs, (1..=100).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_client_that_pauses_reading_gets_every_frame_whole_and_in_order() {
    // While bob's client reads nothing, the fan-out writes frames straight into his socket
    // until it takes one only in part (ADR 0022): the rest of that frame, then the frames
    // queued behind it, go out once he reads again. Small frames (one joined buffer) and
    // large ones (written from their parts) alternate. Every frame may go straight in (no
    // quiet time asked), as at the start of a broadcast.
    let mut settings = crate::helpers::fresh_settings();
    settings.ws_direct_quiet_ms = 0;
    let app = app_with_small_socket_buffers(settings).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut paused = connect_with_small_receive_buffer(&app, &bob.access_token).await;
    ready(&mut paused).await;
    let id = direct_conversation(&app, &alice, &bob).await;
    let body = |index: usize| {
        let fill = if index.is_multiple_of(2) {
            1_000
        } else {
            3_000
        };
        format!("{index}:{}", "x".repeat(fill))
    };
    post_messages(&app, &alice, &id, (0..200).map(body)).await;
    let mut seqs = Vec::new();
    while seqs.len() < 200 {
        let event = next_event(&mut paused).await;
        if event["event"] == "message.created" {
            assert_eq!(event["data"]["body"], body(seqs.len()));
            seqs.push(event["seq"].as_i64().unwrap_or(0));
        }
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_quiet_connection_is_written_straight_and_its_frames_arrive() {
    // The fan-out writes a frame for a connection that was quiet straight into its socket
    // (ADR 0022), past the WebSocket frames the connection's task wrote before (its `ready`):
    // the writer follows those, and would refuse every straight write if it lost its place.
    // The count reaches /metrics when the connection ends.
    let app = crate::helpers::spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let id = direct_conversation(&app, &alice, &bob).await;
    let mut socket = connect(&app, &bob.access_token).await;
    ready(&mut socket).await;
    // Past the quiet time (100 ms), with nothing sent to bob meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_messages(&app, &alice, &id, ["straight in".to_owned()]).await;
    loop {
        let event = next_event(&mut socket).await;
        if event["event"] == "message.created" {
            assert_eq!(event["data"]["body"], "straight in");
            break;
        }
    }
    socket
        .close(None)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let straight = app
            .metrics()
            .await
            .lines()
            .find(|line| line.starts_with("chat_ws_frames_written_straight_total "))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|count| count.parse::<f64>().ok())
            .unwrap_or(0.0);
        if straight >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no frame was written straight into the quiet connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_push_router_that_crashes_mid_batch_pushes_each_event_once_in_order() {
    use bus::Processed;
    let roles = chatd::Roles {
        push: false,
        ..chatd::Roles::ALL
    };
    let app = crate::helpers::spawn_app_with(crate::helpers::fresh_settings(), roles).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let id = direct_conversation(&app, &alice, &bob).await;
    post_messages(&app, &alice, &id, (1..=12).map(|index| format!("m{index}"))).await;
    let redis = sessions::redis_connect(&app.settings.redis_url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let router = |crash_after| {
        let hub = std::sync::Arc::new(socket_push::hub::Hub::default());
        let delivery = socket_push::delivery::Delivery {
            hub,
            user_map: sessions::user_map::UserMap {
                redis: redis.clone(),
                namespace: app.settings.namespace.clone(),
                node_id: uuid::Uuid::now_v7(),
            },
            amqp: std::sync::Arc::new(bus::SharedConnection::new(
                &app.settings.amqp_url,
                "test-push",
            )),
            namespace: app.settings.namespace.clone(),
        };
        let handler = socket_push::push::PushRouter {
            redis: redis.clone(),
            namespace: app.settings.namespace.clone(),
            conversations: std::sync::Arc::new(store::AggregateStore::with_snapshots(
                app.pool.clone(),
                100,
            )),
            accounts: std::sync::Arc::new(store::AggregateStore::new(app.pool.clone())),
            delivery,
            links: web::MediaLinks::new([0; 32], 3600, ""),
        };
        let options = projector::ProjectorOptions {
            amqp_url: app.settings.amqp_url.clone(),
            topology: bus::Topology::new(&app.settings.namespace),
            batch_size: 4,
            crash_after,
        };
        projector::Consumer::with_handler(app.pool.clone(), options, handler)
    };
    // The first router crashes after pushing a batch, before committing or acking it.
    let mut crashing = router(Some(6));
    let mut crashed = false;
    for _ in 0..20 {
        if crashing
            .process_next_batch(Duration::from_millis(1500))
            .await
            .is_err()
        {
            crashed = true;
            break;
        }
    }
    assert!(crashed, "the router was meant to crash");
    drop(crashing);
    let mut restarted = router(None);
    let inbox = format!("{}:inbox:{}", app.settings.namespace, bob.id);
    let mut connection = redis.clone();
    let mut seqs: Vec<i64> = Vec::new();
    for _ in 0..60 {
        let outcome = restarted
            .process_next_batch(Duration::from_millis(500))
            .await
            .unwrap_or_else(|error| panic!("{error:#}"));
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&inbox)
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        seqs = entries
            .iter()
            .filter_map(|(_, fields)| fields.iter().find(|(name, _)| name == "f"))
            .filter_map(|(_, text)| serde_json::from_str::<Value>(text).ok())
            .filter(|frame| frame["event"] == "message.created")
            .map(|frame| frame["seq"].as_i64().unwrap_or(0))
            .collect();
        if seqs.len() >= 12 && outcome == Processed::Idle {
            break;
        }
    }
    assert_eq!(
        seqs,
        (1..=12).collect::<Vec<i64>>(),
        "each message once, in order, in Bob's inbox"
    );
}

/// The node's upkeep, on the real Redis and Postgres: one pass refreshes the user-map entry
/// and node of every connection due, closes (4001) the ones whose session was revoked while
/// nobody announced it to this node, and leaves the rest alone until a period later.
#[tokio::test]
async fn the_upkeep_refreshes_connections_and_closes_the_revoked_ones() {
    use socket_push::hub::{Hub, REVOKED};
    use std::collections::HashSet;
    use std::time::Instant;
    use uuid::Uuid;
    let app = spawn_app().await;
    let redis = sessions::redis_connect(&app.settings.redis_url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let revocations = sessions::Revocations::new(
        redis.clone(),
        app.pool.clone(),
        &app.settings.namespace,
        Duration::from_secs(900),
    );
    let node_id = Uuid::now_v7();
    let user_map = sessions::user_map::UserMap {
        redis,
        namespace: app.settings.namespace.clone(),
        node_id,
    };
    let period = Duration::from_secs(3600);
    let hub = Hub::default().with_heartbeat(period);
    let user_id = Uuid::now_v7();
    let (kept_session, revoked_session) = (Uuid::now_v7(), Uuid::now_v7());
    let kept = hub.register(user_id, Uuid::now_v7(), kept_session, None);
    let revoked = hub.register(user_id, Uuid::now_v7(), revoked_session, None);
    // Revoked in Redis; this hub hears no announcement (it has no listener).
    revocations
        .publish_revoked_sessions(&[revoked_session])
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let live = |user_map: sessions::user_map::UserMap| async move {
        user_map
            .live_connections(user_id)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    };
    assert_eq!(live(user_map.clone()).await, 0, "nothing was written yet");

    // Not due yet: a pass now does nothing.
    let pass = |at: Instant| socket_push::upkeep::pass(&hub, &user_map, &revocations, at);
    assert_eq!(pass(Instant::now()).await, 0);
    assert!(!revoked.kick.is_kicked());

    let due_at = Instant::now() + period;
    assert_eq!(pass(due_at).await, 2);
    assert!(
        revoked.kick.is_kicked(),
        "the revoked session's socket is kicked"
    );
    assert_eq!(revoked.close_code(), REVOKED);
    assert!(!kept.kick.is_kicked(), "the other session's socket stays");
    assert_eq!(live(user_map.clone()).await, 2);
    let nodes = user_map
        .nodes_of(&[user_id])
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(nodes, vec![HashSet::from([node_id])]);
    // Each is due again a period after its refresh, not before.
    assert_eq!(pass(due_at).await, 0);

    // The user's nodes follow the connections: the node stays while one is left here.
    hub.unregister(user_id, revoked.connection_id);
    user_map
        .remove(user_id, revoked.connection_id, true)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let nodes_now = || async {
        user_map
            .nodes_of(&[user_id])
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    };
    assert_eq!(
        nodes_now().await,
        vec![HashSet::from([node_id])],
        "Redis still holds a live entry of this node, so the node stays"
    );
    hub.unregister(user_id, kept.connection_id);
    user_map
        .remove(user_id, kept.connection_id, true)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(nodes_now().await, vec![HashSet::new()]);
    assert_eq!(live(user_map.clone()).await, 0);
}

/// Counts the WebSocket pings `socket` gets until `until`, and the text frames besides.
async fn count_pings(socket: &mut Socket, until: tokio::time::Instant) -> (usize, usize) {
    let (mut pings, mut texts) = (0, 0);
    while let Ok(frame) = tokio::time::timeout_at(until, socket.next()).await {
        match frame {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Text(_))) => texts += 1,
            Some(Ok(_)) => {}
            other => panic!("the connection ended: {other:?}"),
        }
    }
    (pings, texts)
}

#[tokio::test]
async fn a_connection_is_pinged_after_a_heartbeat_in_which_nothing_went_out() {
    let mut settings = crate::helpers::fresh_settings();
    settings.ws_heartbeat_secs = 1;
    let app = crate::helpers::spawn_app_with(settings, chatd::Roles::ALL).await;
    let quiet = app.register("quiet").await;
    let busy = app.register("busy").await;
    let mut quiet_socket = connect(&app, &quiet.access_token).await;
    let mut busy_socket = connect(&app, &busy.access_token).await;
    assert_eq!(next_frame(&mut quiet_socket).await["heartbeat_ms"], 1000);
    assert_eq!(next_frame(&mut busy_socket).await["type"], "ready");

    // For 3.5 s the busy connection gets a `pong` every 100 ms and the quiet one nothing.
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    let quiet_reader =
        tokio::spawn(async move { (count_pings(&mut quiet_socket, until).await, quiet_socket) });
    let mut busy_pings = 0;
    let mut reference = 0;
    let mut last_pong = tokio::time::Instant::now();
    while tokio::time::Instant::now() < until {
        reference += 1;
        send_frame(&mut busy_socket, json!({"type": "ping", "ref": reference})).await;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), busy_socket.next())
                .await
                .unwrap_or_else(|_| panic!("no pong within 5 s"));
            match frame {
                Some(Ok(Message::Ping(_))) => busy_pings += 1,
                Some(Ok(Message::Text(text))) => {
                    let reply: Value =
                        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}"));
                    if reply["type"] == "pong" && reply["ref"] == reference {
                        last_pong = tokio::time::Instant::now();
                        break;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the busy connection ended: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ((quiet_pings, quiet_texts), mut quiet_socket) =
        quiet_reader.await.unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        quiet_texts, 0,
        "nothing but pings went to the quiet connection"
    );
    assert!(
        (2..=4).contains(&quiet_pings),
        "the quiet connection is pinged once a second: {quiet_pings} pings in 3.5 s"
    );
    assert_eq!(
        busy_pings, 0,
        "a connection that got a frame within the last heartbeat is not pinged"
    );

    // Once the busy connection falls quiet, its next frame is a ping, a heartbeat later.
    let next = tokio::time::timeout(Duration::from_secs(5), busy_socket.next())
        .await
        .unwrap_or_else(|_| panic!("no ping within 5 s of falling quiet"));
    assert!(
        matches!(next, Some(Ok(Message::Ping(_)))),
        "expected a ping, got {next:?}"
    );
    // The server wrote the pong a little before it arrived here: half a period of slack.
    let waited = last_pong.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "the ping came {waited:?} after the last pong, before a heartbeat had passed"
    );
    // Both connections still work.
    send_frame(
        &mut quiet_socket,
        json!({"type": "ping", "ref": "still here"}),
    )
    .await;
    assert_eq!(next_reply(&mut quiet_socket).await["ref"], "still here");
}
