//! Conversations and messages over REST, end to end.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use uuid::Uuid;

use crate::helpers::{TestApp, TestUser, header, json_body, spawn_app};

async fn create_group(
    app: &TestApp,
    owner: &TestUser,
    title: &str,
    members: &[&TestUser],
) -> Value {
    let member_ids: Vec<String> = members.iter().map(|user| user.id.to_string()).collect();
    let response = app
        .post(
            "/api/v1/conversations",
            Some(&owner.access_token),
            &json!({"type": "group", "title": title, "member_ids": member_ids}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json_body(response).await
}

async fn send(
    app: &TestApp,
    user: &TestUser,
    conversation_id: &str,
    body: Value,
) -> reqwest::Response {
    app.post(
        &format!("/api/v1/conversations/{conversation_id}/messages"),
        Some(&user.access_token),
        &body,
    )
    .await
}

async fn history(
    app: &TestApp,
    user: &TestUser,
    conversation_id: &str,
    query: &str,
    consistency: Option<&str>,
) -> Value {
    let response = app
        .get(
            &format!("/api/v1/conversations/{conversation_id}/messages{query}"),
            Some(&user.access_token),
            consistency,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    json_body(response).await
}

#[tokio::test]
async fn direct_conversations_are_unique_per_pair() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let first = app
        .post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": bob.id}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_body(first).await;
    assert_eq!(first["type"], "direct");
    assert_eq!(first["members"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["last_message"], Value::Null);
    assert_eq!(first["unread_count"], 0);
    let again = app
        .post(
            "/api/v1/conversations",
            Some(&bob.access_token),
            &json!({"type": "direct", "user_id": alice.id}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(json_body(again).await["id"], first["id"]);

    let to_self = app
        .post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": alice.id}),
        )
        .await;
    assert_eq!(to_self.status(), StatusCode::BAD_REQUEST);
    let to_nobody = app
        .post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(to_nobody.status(), StatusCode::NOT_FOUND);
    let unknown_type = app
        .post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "channel", "user_id": bob.id}),
        )
        .await;
    assert_eq!(unknown_type.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_direct_chat_with_history_receipts_edit_and_delete() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let conversation = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": bob.id}),
        )
        .await,
    )
    .await;
    let id = conversation["id"].as_str().unwrap_or_default().to_owned();

    let mut last_consistency = String::new();
    let mut sent = Vec::new();
    for index in 1..=5 {
        let response = send(
            &app,
            &alice,
            &id,
            json!({"body": format!("  hello {index} "), "client_message_id": format!("m-{index}")}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        last_consistency = header(&response, "x-consistency-token").unwrap_or_default();
        let message = json_body(response).await;
        assert_eq!(message["seq"], index);
        assert_eq!(message["body"], format!("hello {index}"));
        assert_eq!(message["status"], "sent");
        assert_eq!(message["kind"], "text");
        sent.push(message);
    }
    // A retry with the same client_message_id returns the original and writes nothing.
    let retry = send(
        &app,
        &alice,
        &id,
        json!({"body": "different text", "client_message_id": "m-3"}),
    )
    .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    let retry = json_body(retry).await;
    assert_eq!(retry["id"], sent[2]["id"]);
    assert_eq!(retry["seq"], 3);
    assert_eq!(retry["body"], "hello 3");
    let consistency = last_consistency.clone();

    // Bob's view: five unread.
    let page = json_body(
        app.get(
            "/api/v1/conversations",
            Some(&bob.access_token),
            Some(&consistency),
        )
        .await,
    )
    .await;
    assert_eq!(page["items"][0]["id"], id);
    assert_eq!(page["items"][0]["unread_count"], 5);
    assert_eq!(page["items"][0]["last_message"]["seq"], 5);
    assert_eq!(page["items"][0]["last_seq"], 5);

    // Bob has 5 delivered and reads up to 3: Alice sees 1-3 read and 4-5 delivered.
    let receipt = app
        .post(
            &format!("/api/v1/conversations/{id}/receipts"),
            Some(&bob.access_token),
            &json!({"delivered_seq": 5, "read_seq": 3}),
        )
        .await;
    assert_eq!(receipt.status(), StatusCode::NO_CONTENT);
    let receipt_consistency = header(&receipt, "x-consistency-token").unwrap_or_default();
    let statuses = |page: &Value| {
        page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|message| message["status"].as_str().unwrap_or("null").to_owned())
            .collect::<Vec<_>>()
    };
    let alice_view = history(&app, &alice, &id, "", Some(&receipt_consistency)).await;
    assert_eq!(
        statuses(&alice_view),
        ["read", "read", "read", "delivered", "delivered"]
    );
    // Watermarks never move back.
    let back = app
        .post(
            &format!("/api/v1/conversations/{id}/receipts"),
            Some(&bob.access_token),
            &json!({"read_seq": 1}),
        )
        .await;
    assert_eq!(back.status(), StatusCode::NO_CONTENT);
    let back_consistency = header(&back, "x-consistency-token").unwrap_or_default();
    let bob_page = json_body(
        app.get(
            "/api/v1/conversations",
            Some(&bob.access_token),
            Some(&back_consistency),
        )
        .await,
    )
    .await;
    assert_eq!(bob_page["items"][0]["unread_count"], 2);
    let receipts_of = |index: usize| {
        format!(
            "/api/v1/messages/{}/receipts",
            sent[index]["id"].as_str().unwrap_or_default()
        )
    };
    let receipts = json_body(
        app.get(&receipts_of(2), Some(&alice.access_token), None)
            .await,
    )
    .await;
    assert_eq!(receipts[0]["user_id"], bob.id.to_string());
    assert!(
        receipts[0]["delivered_at"].is_string() && receipts[0]["read_at"].is_string(),
        "{receipts}"
    );
    let unread_receipts = json_body(
        app.get(&receipts_of(4), Some(&alice.access_token), None)
            .await,
    )
    .await;
    assert!(
        unread_receipts[0]["delivered_at"].is_string() && unread_receipts[0]["read_at"].is_null(),
        "{unread_receipts}"
    );

    // Idempotency-Key works like client_message_id.
    let keyed = || {
        app.client
            .post(app.url(&format!("/api/v1/conversations/{id}/messages")))
            .bearer_auth(&bob.access_token)
            .header("idempotency-key", "k-1")
            .json(&json!({"body": "from bob"}))
    };
    let first = json_body(
        keyed()
            .send()
            .await
            .unwrap_or_else(|error| panic!("{error}")),
    )
    .await;
    let second = json_body(
        keyed()
            .send()
            .await
            .unwrap_or_else(|error| panic!("{error}")),
    )
    .await;
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["seq"], 6);

    // A reply, in the same conversation only. Sending counts as having read what came before.
    let reply = send(
        &app,
        &bob,
        &id,
        json!({"body": "re", "reply_to_id": sent[0]["id"]}),
    )
    .await;
    assert_eq!(reply.status(), StatusCode::CREATED);
    let reply_consistency = header(&reply, "x-consistency-token").unwrap_or_default();
    let reply = json_body(reply).await;
    assert_eq!(reply["reply_to_id"], sent[0]["id"]);
    let bob_page = json_body(
        app.get(
            "/api/v1/conversations",
            Some(&bob.access_token),
            Some(&reply_consistency),
        )
        .await,
    )
    .await;
    assert_eq!(bob_page["items"][0]["unread_count"], 0);
    let alice_page = json_body(
        app.get("/api/v1/conversations", Some(&alice.access_token), None)
            .await,
    )
    .await;
    assert_eq!(alice_page["items"][0]["unread_count"], 2);
    assert_eq!(alice_page["items"][0]["last_message"]["seq"], 7);
    let alice_view = history(&app, &alice, &id, "", None).await;
    assert_eq!(
        statuses(&alice_view),
        ["read", "read", "read", "read", "read", "null", "null"]
    );

    // Edit: sender only; the old text stays in the event log.
    let message_id = sent[0]["id"].as_str().unwrap_or_default();
    let by_bob = app
        .patch(
            &format!("/api/v1/messages/{message_id}"),
            &bob.access_token,
            &json!({"body": "hijack"}),
        )
        .await;
    assert_eq!(by_bob.status(), StatusCode::FORBIDDEN);
    let edited = app
        .patch(
            &format!("/api/v1/messages/{message_id}"),
            &alice.access_token,
            &json!({"body": "hello, edited"}),
        )
        .await;
    assert_eq!(edited.status(), StatusCode::OK);
    let edited = json_body(edited).await;
    assert_eq!(edited["body"], "hello, edited");
    assert!(edited["edited_at"].is_string());
    let log: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM events WHERE aggregate_type = 'conversation' AND aggregate_id = $1 ORDER BY sequence")
        .bind(&id)
        .fetch_all(&app.pool)
        .await
        .unwrap_or_default();
    assert!(
        log.iter().any(|payload| payload.contains("hello 1")),
        "the first text is kept in the log"
    );

    // Delete: a tombstone with no body.
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/messages/{message_id}")))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let consistency = header(&deleted, "x-consistency-token").unwrap_or_default();
    let tombstone = json_body(
        app.get(
            &format!("/api/v1/messages/{message_id}"),
            Some(&bob.access_token),
            Some(&consistency),
        )
        .await,
    )
    .await;
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["body"], Value::Null);
    let edit_deleted = app
        .patch(
            &format!("/api/v1/messages/{message_id}"),
            &alice.access_token,
            &json!({"body": "again"}),
        )
        .await;
    assert_eq!(edit_deleted.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // History pages by seq.
    let newest = history(&app, &bob, &id, "?limit=3", None).await;
    let seqs = |page: &Value| {
        page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|message| message["seq"].as_i64().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&newest), [5, 6, 7]);
    assert_eq!(newest["has_more"], true);
    let older = history(&app, &bob, &id, "?before_seq=5&limit=3", None).await;
    assert_eq!(seqs(&older), [2, 3, 4]);
    let oldest = history(&app, &bob, &id, "?before_seq=2&limit=3", None).await;
    assert_eq!(seqs(&oldest), [1]);
    assert_eq!(oldest["has_more"], false);
    let after = history(&app, &bob, &id, "?after_seq=5", None).await;
    assert_eq!(seqs(&after), [6, 7]);
    assert_eq!(after["has_more"], false);
}

#[tokio::test]
async fn groups_membership_rename_and_system_messages() {
    let app = spawn_app().await;
    let owner = app.register("owner").await;
    let member = app.register("member").await;
    let newcomer = app.register("newcomer").await;
    let outsider = app.register("outsider").await;
    let group = create_group(&app, &owner, "Team", &[&member]).await;
    let id = group["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(group["owner_id"], owner.id.to_string());
    let roles: BTreeSet<String> = group["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["role"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        roles,
        BTreeSet::from(["owner".to_owned(), "member".to_owned()])
    );

    // Outsiders learn nothing.
    for path in [
        format!("/api/v1/conversations/{id}"),
        format!("/api/v1/conversations/{id}/messages"),
    ] {
        let response = app.get(&path, Some(&outsider.access_token), None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json_body(response).await["code"], "conversation_not_found");
    }
    assert_eq!(
        send(&app, &outsider, &id, json!({"body": "let me in"}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // Any member may add; only the owner renames.
    let added = app
        .post(
            &format!("/api/v1/conversations/{id}/members"),
            Some(&member.access_token),
            &json!({"user_id": newcomer.id}),
        )
        .await;
    assert_eq!(added.status(), StatusCode::OK);
    assert_eq!(
        json_body(added).await["members"].as_array().map(Vec::len),
        Some(3)
    );
    let twice = app
        .post(
            &format!("/api/v1/conversations/{id}/members"),
            Some(&member.access_token),
            &json!({"user_id": newcomer.id}),
        )
        .await;
    assert_eq!(twice.status(), StatusCode::CONFLICT);
    let renamed_by_member = app
        .patch(
            &format!("/api/v1/conversations/{id}"),
            &member.access_token,
            &json!({"title": "Mine"}),
        )
        .await;
    assert_eq!(renamed_by_member.status(), StatusCode::FORBIDDEN);
    let renamed = app
        .patch(
            &format!("/api/v1/conversations/{id}"),
            &owner.access_token,
            &json!({"title": "Team 2"}),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(json_body(renamed).await["title"], "Team 2");

    // A member removes no one; the owner does; the removed member loses access at once.
    let by_member = app
        .client
        .delete(app.url(&format!("/api/v1/conversations/{id}/members/{}", owner.id)))
        .bearer_auth(&member.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(by_member.status(), StatusCode::FORBIDDEN);
    let removed = app
        .client
        .delete(app.url(&format!(
            "/api/v1/conversations/{id}/members/{}",
            newcomer.id
        )))
        .bearer_auth(&owner.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let consistency = header(&removed, "x-consistency-token").unwrap_or_default();
    let history_after = app
        .get(
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&newcomer.access_token),
            Some(&consistency),
        )
        .await;
    assert_eq!(history_after.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        send(&app, &newcomer, &id, json!({"body": "still here?"}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // The timeline shows the changes as system messages.
    let timeline = history(&app, &owner, &id, "", Some(&consistency)).await;
    let actions: Vec<&str> = timeline["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|message| {
            assert_eq!(message["kind"], "system");
            message["system"]["action"].as_str().unwrap_or_default()
        })
        .collect();
    assert_eq!(actions, ["member_added", "renamed", "member_removed"]);

    // The owner leaves: the group passes on.
    let left = app
        .client
        .delete(app.url(&format!("/api/v1/conversations/{id}/members/{}", owner.id)))
        .bearer_auth(&owner.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(left.status(), StatusCode::NO_CONTENT);
    let consistency = header(&left, "x-consistency-token").unwrap_or_default();
    let after = json_body(
        app.get(
            &format!("/api/v1/conversations/{id}"),
            Some(&member.access_token),
            Some(&consistency),
        )
        .await,
    )
    .await;
    assert_eq!(after["owner_id"], member.id.to_string());
}

#[tokio::test]
async fn bad_messages_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let group = create_group(&app, &alice, "Solo", &[]).await;
    let id = group["id"].as_str().unwrap_or_default().to_owned();
    let events_before = app.event_count().await;
    let cases = [
        (json!({}), StatusCode::BAD_REQUEST, "empty_message"),
        (
            json!({"body": "   "}),
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        (
            json!({"body": "x".repeat(4001)}),
            StatusCode::BAD_REQUEST,
            "body_too_long",
        ),
        (
            json!({"body": "hi", "color": "red"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"body": "hi", "reply_to_id": Uuid::now_v7()}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "reply_not_found",
        ),
        (
            json!({"body": "hi", "attachment_ids": [Uuid::now_v7()]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "attachment_not_found",
        ),
        (
            json!({"body": "hi", "client_message_id": "has spaces"}),
            StatusCode::BAD_REQUEST,
            "invalid_client_message_id",
        ),
    ];
    for (body, status, code) in cases {
        let response = send(&app, &alice, &id, body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(json_body(response).await["code"], code, "{body}");
    }
    let missing = send(
        &app,
        &alice,
        &Uuid::now_v7().to_string(),
        json!({"body": "hi"}),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let receipt = app
        .post(
            &format!("/api/v1/conversations/{id}/receipts"),
            Some(&alice.access_token),
            &json!({"read_seq": -1}),
        )
        .await;
    assert_eq!(receipt.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        app.event_count().await,
        events_before,
        "bad input wrote events"
    );
}

#[tokio::test]
async fn concurrent_senders_get_gapless_sequence_numbers() {
    let app = spawn_app().await;
    let owner = app.register("owner").await;
    let mut senders = Vec::new();
    for index in 0..20 {
        senders.push(app.register(&format!("sender{index}")).await);
    }
    let refs: Vec<&TestUser> = senders.iter().collect();
    let group = create_group(&app, &owner, "Busy", &refs).await;
    let id = group["id"].as_str().unwrap_or_default().to_owned();
    let tasks: Vec<_> = senders
        .iter()
        .map(|sender| {
            let client = app.client.clone();
            let url = app.url(&format!("/api/v1/conversations/{id}/messages"));
            let token = sender.access_token.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for index in 0..50 {
                    let response = client.post(&url).bearer_auth(&token).json(&json!({"body": format!("message {index}"), "client_message_id": format!("c-{index}")})).send().await;
                    statuses.push(response.map(|response| response.status().as_u16()).unwrap_or(0));
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap_or_default());
    }
    assert_eq!(statuses.len(), 1000);
    assert!(
        statuses.iter().all(|status| *status == 201),
        "every send is accepted: {:?}",
        statuses
            .iter()
            .filter(|status| **status != 201)
            .collect::<Vec<_>>()
    );
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM message_index WHERE conversation_id = $1::uuid ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap_or_default();
    assert_eq!(seqs, (1..=1000).collect::<Vec<i64>>());
}

#[tokio::test]
async fn sends_are_rate_limited_per_user_over_rest_and_websocket() {
    let mut settings = crate::helpers::fresh_settings();
    settings.sends_per_10_seconds = 3;
    let app = crate::helpers::spawn_app_with(settings, chatd::Roles::ALL).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let group = create_group(&app, &alice, "Chatty", &[&bob]).await;
    let id = group["id"].as_str().unwrap_or_default().to_owned();
    for index in 0..3 {
        assert_eq!(
            send(&app, &alice, &id, json!({"body": format!("m{index}")}))
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    let limited = send(&app, &alice, &id, json!({"body": "one too many"})).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(&limited, "retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    assert!((1..=10).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(json_body(limited).await["code"], "rate_limited");
    // The socket shares the allowance and says so in an error frame.
    let mut socket = crate::websocket::connect(&app, &alice.access_token).await;
    assert_eq!(
        crate::websocket::next_frame(&mut socket).await["type"],
        "ready"
    );
    crate::websocket::send_frame(&mut socket, json!({"type": "message.send", "ref": "r", "conversation_id": id, "client_message_id": "over", "body": "hi"})).await;
    let frame = crate::websocket::next_reply(&mut socket).await;
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["code"].as_str(),
            frame["ref"].as_str()
        ),
        (Some("error"), Some("rate_limited"), Some("r"))
    );
    // Bob has his own allowance.
    assert_eq!(
        send(&app, &bob, &id, json!({"body": "my turn"}))
            .await
            .status(),
        StatusCode::CREATED
    );
    // Nothing of the refused send was written.
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM message_index WHERE conversation_id = $1::uuid ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap_or_default();
    assert_eq!(seqs, [1, 2, 3, 4]);
}
