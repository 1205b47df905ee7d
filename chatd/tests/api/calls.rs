//! Calls end to end: the lifecycle over REST and WebSocket frames, pushes, timeline messages,
//! history, the durable ring timeout across a process restart, signalling between
//! participants only, and ICE servers with TURN credentials.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

use crate::helpers::{
    TestApp, TestUser, eventually, fresh_settings, header, json_body, spawn_app, spawn_app_with,
    spawn_role,
};
use crate::websocket::{connect, next_event, next_frame, next_reply, ready, send_frame};

async fn direct(app: &TestApp, from: &TestUser, to: &TestUser) -> String {
    let response = app
        .post(
            "/api/v1/conversations",
            Some(&from.access_token),
            &json!({"type": "direct", "user_id": to.id}),
        )
        .await;
    assert!(response.status().is_success());
    json_body(response).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn group(app: &TestApp, owner: &TestUser, members: &[&TestUser]) -> String {
    let member_ids: Vec<Uuid> = members.iter().map(|user| user.id).collect();
    let response = app
        .post(
            "/api/v1/conversations",
            Some(&owner.access_token),
            &json!({"type": "group", "title": "call us", "member_ids": member_ids}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json_body(response).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn start(app: &TestApp, user: &TestUser, conversation_id: &str) -> reqwest::Response {
    app.post(
        &format!("/api/v1/conversations/{conversation_id}/calls"),
        Some(&user.access_token),
        &json!({"media": "video"}),
    )
    .await
}

async fn act(app: &TestApp, user: &TestUser, call_id: &str, action: &str) -> reqwest::Response {
    app.post(
        &format!("/api/v1/calls/{call_id}/{action}"),
        Some(&user.access_token),
        &json!({}),
    )
    .await
}

fn participant<'a>(call: &'a Value, user: &TestUser) -> &'a Value {
    call["participants"]
        .as_array()
        .and_then(|participants| {
            participants
                .iter()
                .find(|participant| participant["user_id"] == user.id.to_string())
        })
        .unwrap_or_else(|| panic!("{} is not in {call}", user.username))
}

/// The next frame that answers or reaches this client directly (not a pushed event, presence
/// or typing notice).
async fn next_direct(socket: &mut crate::websocket::Socket) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if !["event", "presence", "typing"].contains(&frame["type"].as_str().unwrap_or_default()) {
            return frame;
        }
    }
}

/// The next event frame named `name` (skipping others), within 5 s each.
async fn event_named(socket: &mut crate::websocket::Socket, name: &str) -> Value {
    for _ in 0..20 {
        let event = next_event(socket).await;
        if event["event"] == name {
            return event;
        }
    }
    panic!("no {name} event");
}

#[tokio::test]
async fn a_direct_call_rings_is_answered_and_ends_in_the_timeline() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let conversation_id = direct(&app, &alice, &bob).await;
    let mut bob_socket = connect(&app, &bob.access_token).await;
    ready(&mut bob_socket).await;
    let mut alice_socket = connect(&app, &alice.access_token).await;
    ready(&mut alice_socket).await;

    let response = start(&app, &alice, &conversation_id).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let call = json_body(response).await;
    let call_id = call["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(call["state"], "ringing");
    assert_eq!(call["media"], "video");
    assert_eq!(call["initiator_id"], alice.id.to_string());
    assert_eq!(call["end_reason"], Value::Null);
    assert_eq!(participant(&call, &alice)["state"], "joined");
    assert_eq!(participant(&call, &alice)["video"], true);
    assert_eq!(participant(&call, &bob)["state"], "ringing");

    // The timeline shows the call (the conversation's event comes first), and Bob's phone rings.
    let message = next_event(&mut bob_socket).await;
    assert_eq!(message["event"], "message.created", "{message}");
    assert_eq!(message["data"]["kind"], "call");
    assert_eq!(message["data"]["call"]["action"], "call_started");
    assert_eq!(message["data"]["call"]["call_id"], call_id.as_str());
    let ringing = next_event(&mut bob_socket).await;
    assert_eq!(ringing["event"], "call.ringing", "{ringing}");
    assert_eq!(ringing["data"]["id"], call_id.as_str());
    assert_eq!(ringing["conversation_id"], conversation_id.as_str());

    // Bob answers over the socket.
    send_frame(
        &mut bob_socket,
        json!({"type": "call.accept", "ref": "a1", "call_id": call_id}),
    )
    .await;
    let ack = next_reply(&mut bob_socket).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "a1");
    assert_eq!(ack["result"]["state"], "active");
    assert!(ack["result"]["answered_at"].is_string());
    let updated = event_named(&mut alice_socket, "call.updated").await;
    assert_eq!(participant(&updated["data"], &bob)["state"], "joined");

    // Bob shares his screen; Alice sees it.
    send_frame(
        &mut bob_socket,
        json!({"type": "call.media", "ref": "m1", "call_id": call_id, "audio": true, "video": false, "screen": true}),
    )
    .await;
    let ack = next_reply(&mut bob_socket).await;
    assert_eq!(participant(&ack["result"], &bob)["screen"], true, "{ack}");
    let updated = event_named(&mut alice_socket, "call.updated").await;
    assert_eq!(participant(&updated["data"], &bob)["screen"], true);

    // Alice hangs up: a direct call ends when either side leaves.
    let response = act(&app, &alice, &call_id, "leave").await;
    assert_eq!(response.status(), StatusCode::OK);
    let consistency = header(&response, "x-consistency-token");
    let ended = json_body(response).await;
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["end_reason"], "completed");
    assert!(ended["duration_ms"].as_i64().is_some_and(|ms| ms >= 0));
    assert_eq!(participant(&ended, &bob)["state"], "left");
    let pushed = event_named(&mut bob_socket, "call.ended").await;
    assert_eq!(pushed["data"]["end_reason"], "completed");
    let message = next_event(&mut bob_socket).await;
    assert_eq!(message["event"], "message.created", "{message}");
    assert_eq!(message["data"]["call"]["action"], "call_ended");
    assert_eq!(message["data"]["call"]["end_reason"], "completed");

    // The read side agrees.
    let response = app
        .get(
            &format!("/api/v1/calls/{call_id}"),
            Some(&bob.access_token),
            consistency.as_deref(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let read = json_body(response).await;
    assert_eq!(read["state"], "ended");
    assert_eq!(read["participants"], ended["participants"]);
    let history = eventually(Duration::from_secs(5), || async {
        let response = app
            .get(
                &format!("/api/v1/conversations/{conversation_id}/messages"),
                Some(&bob.access_token),
                None,
            )
            .await;
        let items = json_body(response).await["items"].clone();
        items.as_array().is_some_and(|items| {
            items.len() == 2
                && items[0]["kind"] == "call"
                && items[1]["call"]["end_reason"] == "completed"
        })
    })
    .await;
    assert!(history, "the call messages are not in the history");
    // Outsiders learn nothing.
    let carol = app.register("carol").await;
    let response = app
        .get(
            &format!("/api/v1/calls/{call_id}"),
            Some(&carol.access_token),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        act(&app, &carol, &call_id, "accept").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn one_call_at_a_time_and_illegal_moves_are_refused() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let conversation_id = direct(&app, &alice, &bob).await;
    let call = json_body(start(&app, &alice, &conversation_id).await).await;
    let call_id = call["id"].as_str().unwrap_or_default().to_owned();

    let before = app.event_count().await;
    let second = start(&app, &bob, &conversation_id).await;
    assert_eq!(second.status(), StatusCode::CONFLICT);
    assert_eq!(json_body(second).await["code"], "call_active");
    // Leaving a call you are not in, accepting your own call.
    let response = act(&app, &bob, &call_id, "leave").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(json_body(response).await["code"], "not_joined");
    let response = act(&app, &alice, &call_id, "accept").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(json_body(response).await["code"], "already_joined");
    assert_eq!(app.event_count().await, before, "refusals write nothing");

    // Bob declines: a direct call ends at once.
    let response = act(&app, &bob, &call_id, "decline").await;
    assert_eq!(response.status(), StatusCode::OK);
    let declined = json_body(response).await;
    assert_eq!(declined["state"], "ended");
    assert_eq!(declined["end_reason"], "declined");
    assert_eq!(declined["duration_ms"], Value::Null);
    for action in ["accept", "decline", "end"] {
        let response = act(&app, &bob, &call_id, action).await;
        assert_eq!(response.status(), StatusCode::CONFLICT, "{action}");
        assert_eq!(json_body(response).await["code"], "call_ended");
    }
    // The conversation is free again.
    let response = start(&app, &bob, &conversation_id).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let second_call = json_body(response).await;
    let response = act(
        &app,
        &bob,
        second_call["id"].as_str().unwrap_or_default(),
        "end",
    )
    .await;
    assert_eq!(json_body(response).await["end_reason"], "cancelled");
    let consistency = header(
        &start(&app, &alice, &conversation_id).await,
        "x-consistency-token",
    );
    let response = app
        .get(
            &format!("/api/v1/conversations/{conversation_id}/calls"),
            Some(&alice.access_token),
            consistency.as_deref(),
        )
        .await;
    let calls = json_body(response).await;
    let items = calls["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 3, "{calls}");
    assert_eq!(items[0]["state"], "ringing", "newest first");
    assert_eq!(items[2]["id"], call_id.as_str());

    // A bad body and an unknown conversation.
    let response = app
        .post(
            &format!("/api/v1/conversations/{conversation_id}/calls"),
            Some(&alice.access_token),
            &json!({"media": "hologram"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = start(&app, &alice, &Uuid::now_v7().to_string()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_group_call_goes_on_until_the_last_participant_leaves() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let conversation_id = group(&app, &alice, &[&bob, &carol, &dave]).await;
    let call = json_body(start(&app, &alice, &conversation_id).await).await;
    let call_id = call["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(call["participants"].as_array().map(Vec::len), Some(4));

    assert_eq!(
        act(&app, &bob, &call_id, "accept").await.status(),
        StatusCode::OK
    );
    let response = act(&app, &carol, &call_id, "decline").await;
    let call = json_body(response).await;
    assert_eq!(call["state"], "active");
    assert_eq!(participant(&call, &carol)["state"], "declined");
    // Only the initiator ends a group call for everyone.
    let response = act(&app, &bob, &call_id, "end").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_body(response).await["code"], "not_allowed");
    // Carol changes her mind and joins after all.
    let call = json_body(act(&app, &carol, &call_id, "accept").await).await;
    assert_eq!(participant(&call, &carol)["state"], "joined");
    assert_eq!(
        act(&app, &alice, &call_id, "leave").await.status(),
        StatusCode::OK
    );
    let call = json_body(act(&app, &bob, &call_id, "leave").await).await;
    assert_eq!(call["state"], "active", "Carol is still in it");
    let call = json_body(act(&app, &carol, &call_id, "leave").await).await;
    assert_eq!(call["state"], "ended");
    assert_eq!(call["end_reason"], "completed");
    // Dave never answered: missed.
    assert_eq!(participant(&call, &dave)["state"], "missed");
}

#[tokio::test]
async fn signals_pass_only_between_participants_of_the_call() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let conversation_id = direct(&app, &alice, &bob).await;
    let mut alice_socket = connect(&app, &alice.access_token).await;
    ready(&mut alice_socket).await;
    let mut bob_socket = connect(&app, &bob.access_token).await;
    ready(&mut bob_socket).await;
    let mut carol_socket = connect(&app, &carol.access_token).await;
    ready(&mut carol_socket).await;
    let call = json_body(start(&app, &alice, &conversation_id).await).await;
    let call_id = call["id"].as_str().unwrap_or_default().to_owned();
    event_named(&mut bob_socket, "call.ringing").await;

    // Carol is no participant: her signal is refused and reaches nobody.
    let offer = json!({"type": "offer", "sdp": "v=0 carol"});
    send_frame(
        &mut carol_socket,
        json!({"type": "call.signal", "ref": "s1", "call_id": call_id, "to_user_id": bob.id, "signal": offer}),
    )
    .await;
    let refused = next_direct(&mut carol_socket).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "not_a_participant");
    assert!(refused.get("ref").is_none(), "{refused}");
    // Nor may Alice signal Carol.
    send_frame(
        &mut alice_socket,
        json!({"type": "call.signal", "call_id": call_id, "to_user_id": carol.id, "signal": offer}),
    )
    .await;
    let refused = next_direct(&mut alice_socket).await;
    assert_eq!(refused["code"], "not_a_participant", "{refused}");

    // Alice's offer reaches Bob (ringing counts), as she sent it.
    let offer = json!({"type": "offer", "sdp": "v=0 alice\r\n"});
    send_frame(
        &mut alice_socket,
        json!({"type": "call.signal", "call_id": call_id, "to_user_id": bob.id, "signal": offer}),
    )
    .await;
    let relayed = next_direct(&mut bob_socket).await;
    assert_eq!(relayed["type"], "call.signal", "{relayed}");
    assert_eq!(relayed["call_id"], call_id.as_str());
    assert_eq!(relayed["from_user_id"], alice.id.to_string());
    assert_eq!(relayed["signal"], offer);
    // Nothing of Carol's attempt ever reached Bob or Alice.
    send_frame(&mut bob_socket, json!({"type": "ping", "ref": "p"})).await;
    let pong = next_direct(&mut bob_socket).await;
    assert_eq!(pong["type"], "pong", "{pong}");

    // After the call, nobody signals.
    act(&app, &bob, &call_id, "decline").await;
    send_frame(
        &mut alice_socket,
        json!({"type": "call.signal", "call_id": call_id, "to_user_id": bob.id, "signal": offer}),
    )
    .await;
    let refused = next_direct(&mut alice_socket).await;
    assert_eq!(refused["code"], "not_a_participant", "{refused}");
    // Signals are never stored.
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%v=0 alice%'")
            .fetch_one(&app.pool)
            .await
            .unwrap_or(-1);
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn an_unanswered_call_ends_as_missed_once_across_a_restart_of_the_timer_process() {
    // The in-process app reads and pushes; the command side (and with it the ring timers)
    // runs as its own `chatd command-api` process, which is killed and replaced mid-ring.
    let app = spawn_app_with(
        fresh_settings(),
        chatd::app::Roles {
            query: true,
            projector: true,
            push: true,
            ..chatd::app::Roles::NONE
        },
    )
    .await;
    let timeout = [("CHAT_CALL_RING_TIMEOUT_SECS", "3")];
    let mut commands = spawn_role(&app, "command-api", &timeout).await;
    let alice = commands.register("alice").await;
    let bob = commands.register("bob").await;
    let conversation_id = direct(&commands, &alice, &bob).await;
    let response = start(&commands, &alice, &conversation_id).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let call_id = json_body(response).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let due = command_api::calls::next_ring_timeout(&app.pool)
        .await
        .unwrap_or(None);
    assert!(due.is_some(), "the timer is in the database with the call");

    // The process that owns the timer dies before it fires (SIGKILL: no graceful anything).
    if let Some(child) = commands.process.as_mut() {
        child.kill().await.unwrap_or_else(|error| panic!("{error}"));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // (The killed process may not have relayed its last events: ask the log, not a read model.)
    let fired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'call' AND aggregate_id = $1 AND event_type = 'CallEnded'",
    )
    .bind(&call_id)
    .fetch_one(&app.pool)
    .await
    .unwrap_or(-1);
    assert_eq!(fired, 0, "nobody fired it while no process ran");

    // A new process fires it, late but exactly once.
    let _replacement = spawn_role(&app, "command-api", &timeout).await;
    let missed = eventually(Duration::from_secs(15), || async {
        let response = app
            .get(
                &format!("/api/v1/calls/{call_id}"),
                Some(&alice.access_token),
                None,
            )
            .await;
        json_body(response).await["end_reason"] == "missed"
    })
    .await;
    assert!(missed, "the call did not end as missed");
    let response = app
        .get(
            &format!("/api/v1/calls/{call_id}"),
            Some(&bob.access_token),
            None,
        )
        .await;
    let call = json_body(response).await;
    assert_eq!(participant(&call, &bob)["state"], "missed");
    // Give a duplicate firing every chance, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ends: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE (aggregate_type = 'call' AND aggregate_id = $1 AND event_type = 'CallEnded')
            OR (aggregate_type = 'conversation' AND aggregate_id = $2 AND event_type = 'ConversationCallEnded')",
    )
    .bind(&call_id)
    .bind(&conversation_id)
    .fetch_one(&app.pool)
    .await
    .unwrap_or(-1);
    assert_eq!(ends, 2, "one CallEnded and one timeline end");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM call_ring_timeouts")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    assert_eq!(left, 0);
    let history = eventually(Duration::from_secs(5), || async {
        let response = app
            .get(
                &format!("/api/v1/conversations/{conversation_id}/messages"),
                Some(&bob.access_token),
                None,
            )
            .await;
        let items = json_body(response).await["items"].clone();
        items
            .as_array()
            .is_some_and(|items| items.len() == 2 && items[1]["call"]["end_reason"] == "missed")
    })
    .await;
    assert!(history, "the missed call is not in the timeline");
}

#[tokio::test]
async fn ice_servers_carry_turn_rest_credentials() {
    let mut settings = fresh_settings();
    settings.stun_urls = vec!["stun:127.0.0.1:3478".to_owned()];
    settings.turn_urls = vec![
        "turn:127.0.0.1:3478?transport=udp".to_owned(),
        "turn:127.0.0.1:3478?transport=tcp".to_owned(),
    ];
    settings.turn_secret = Some("coturn-shared-secret".to_owned());
    settings.turn_ttl_secs = 600;
    let app = spawn_app_with(settings, chatd::app::Roles::ALL).await;
    let alice = app.register("alice").await;
    let response = app
        .get("/api/v1/calls/ice-servers", Some(&alice.access_token), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_body(response).await;
    assert_eq!(body["ttl_seconds"], 600);
    let servers = body["ice_servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 2, "{body}");
    assert_eq!(servers[0]["urls"], json!(["stun:127.0.0.1:3478"]));
    assert!(servers[0].get("username").is_none());
    let username = servers[1]["username"].as_str().unwrap_or_default();
    let (expiry, user) = username.split_once(':').unwrap_or_default();
    assert_eq!(user, alice.id.to_string());
    let expiry: i64 = expiry.parse().unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "{expiry} vs {now}"
    );
    let (_, expected) =
        query_api::calls::turn_credentials("coturn-shared-secret", alice.id, expiry);
    assert_eq!(servers[1]["credential"], expected);
    let anonymous = app.get("/api/v1/calls/ice-servers", None, None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

/// Trickles `peer`'s candidates to `to` and applies every `call.signal` that arrives, until
/// the data channel is open or `limit` passes.
async fn negotiate(
    peer: &crate::webrtc_peer::Peer,
    socket: &mut crate::websocket::Socket,
    call_id: &str,
    to: Uuid,
    limit: Duration,
) {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + limit;
    let mut gathering = true;
    while peer.wait_open(Duration::from_millis(1)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no data channel within {limit:?}"
        );
        tokio::select! {
            candidate = peer.next_candidate(Duration::from_secs(2)), if gathering => match candidate {
                Some(signal) => {
                    send_frame(socket, json!({"type": "call.signal", "call_id": call_id, "to_user_id": to, "signal": signal})).await;
                }
                None => gathering = false,
            },
            frame = tokio::time::timeout(Duration::from_millis(200), socket.next()) => {
                let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) = frame else {
                    continue;
                };
                let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                assert_ne!(frame["type"], "error", "{frame}");
                if frame["type"] == "call.signal"
                    && let Some(reply) = peer.handle(frame["signal"].clone()).await
                {
                    send_frame(socket, json!({"type": "call.signal", "call_id": call_id, "to_user_id": to, "signal": reply})).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn two_webrtc_peers_connect_through_chatd_signalling_on_two_nodes() {
    let app = spawn_app().await;
    let node = crate::helpers::spawn_node(&app).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let conversation_id = direct(&app, &alice, &bob).await;
    // Alice is on this node, Bob on the other process.
    let mut alice_socket = connect(&app, &alice.access_token).await;
    ready(&mut alice_socket).await;
    let mut bob_socket = connect(&node, &bob.access_token).await;
    ready(&mut bob_socket).await;

    let call = json_body(start(&app, &alice, &conversation_id).await).await;
    let call_id = call["id"].as_str().unwrap_or_default().to_owned();
    event_named(&mut bob_socket, "call.ringing").await;
    send_frame(
        &mut bob_socket,
        json!({"type": "call.accept", "ref": 1, "call_id": call_id}),
    )
    .await;
    assert_eq!(next_direct(&mut bob_socket).await["type"], "ack");

    // Both take their ICE servers from the API (none configured: loopback host candidates).
    let ice = |user: &TestUser| {
        let app = &app;
        let token = user.access_token.clone();
        async move {
            let response = app
                .get("/api/v1/calls/ice-servers", Some(&token), None)
                .await;
            json_body(response).await["ice_servers"].clone()
        }
    };
    let alice_peer = crate::webrtc_peer::Peer::new(&ice(&alice).await, false).await;
    let bob_peer = crate::webrtc_peer::Peer::new(&ice(&bob).await, false).await;

    // Alice offers; everything else goes through call.signal frames only.
    let offer = alice_peer.offer().await;
    send_frame(
        &mut alice_socket,
        json!({"type": "call.signal", "call_id": call_id, "to_user_id": bob.id, "signal": offer}),
    )
    .await;
    let limit = Duration::from_secs(20);
    tokio::join!(
        negotiate(&alice_peer, &mut alice_socket, &call_id, bob.id, limit),
        negotiate(&bob_peer, &mut bob_socket, &call_id, alice.id, limit),
    );
    bob_peer
        .wait_open(limit)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    alice_peer
        .send("hello from alice")
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let received = bob_peer
        .recv(limit)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(received, "hello from alice");
    bob_peer
        .send("hello from bob")
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let received = alice_peer
        .recv(limit)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(received, "hello from bob");
    alice_peer.close().await;
    bob_peer.close().await;
}

#[tokio::test]
async fn coturn_grants_a_relay_candidate_for_the_issued_credentials() {
    let secret = format!("turn-secret-{}", Uuid::now_v7());
    let coturn = crate::webrtc_peer::Coturn::start(&secret)
        .await
        .unwrap_or_else(|| panic!("turnserver missing: scripts/test.sh installs coturn"));
    let mut settings = fresh_settings();
    settings.turn_urls = vec![format!("turn:127.0.0.1:{}?transport=udp", coturn.port)];
    settings.turn_secret = Some(secret);
    let app = spawn_app_with(settings, chatd::app::Roles::ALL).await;
    let alice = app.register("alice").await;
    let response = app
        .get("/api/v1/calls/ice-servers", Some(&alice.access_token), None)
        .await;
    let ice_servers = json_body(response).await["ice_servers"].clone();
    let peer = crate::webrtc_peer::Peer::new(&ice_servers, true).await;
    let types = peer.gathered_candidate_types(Duration::from_secs(15)).await;
    peer.close().await;
    assert!(
        types.iter().any(|kind| kind == "relay"),
        "no relay candidate: {types:?}\n{}",
        coturn.log()
    );
    // A tampered credential gets nothing from coturn.
    let mut forged = ice_servers.clone();
    forged[0]["credential"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let peer = crate::webrtc_peer::Peer::new(&forged, true).await;
    let types = peer.gathered_candidate_types(Duration::from_secs(5)).await;
    peer.close().await;
    assert!(types.is_empty(), "{types:?}");
}
