//! The audit log: admins only, read back with filters and paging, conversations rebuilt as
//! they stood at any time, and the operator commands.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

use crate::helpers::{TestApp, header, json_body, spawn_app};

fn chatd(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(args)
        .env("DATABASE_URL", &app.settings.database_url)
        .env("USER", "auditor")
        .output()
        .unwrap_or_else(|error| panic!("{error}"))
}

async fn all_events(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor
            .as_ref()
            .map(|cursor| format!("&after={cursor}"))
            .unwrap_or_default();
        let page = json_body(
            app.get(
                &format!("/api/v1/audit/events?limit=2{query}{after}"),
                Some(token),
                None,
            )
            .await,
        )
        .await;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

#[tokio::test]
async fn audit_routes_are_for_admins_granted_and_revoked_from_the_command_line() {
    let app = spawn_app().await;
    let auditor = app.register("auditor").await;
    for path in [
        "/api/v1/audit/events".to_owned(),
        format!("/api/v1/audit/conversations/{}/state", uuid::Uuid::now_v7()),
    ] {
        let response = app.get(&path, Some(&auditor.access_token), None).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(json_body(response).await["code"], "admin_required");
    }
    let granted = chatd(&app, &["admin", "grant", &auditor.username]);
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    assert!(String::from_utf8_lossy(&granted.stdout).contains("admin granted to"));
    let response = app
        .get("/api/v1/audit/events", Some(&auditor.access_token), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let log = all_events(
        &app,
        &auditor.access_token,
        &format!("&aggregate_id={}", auditor.id),
    )
    .await;
    let grant = log
        .iter()
        .find(|event| event["event_type"] == "AccountAdminGranted")
        .unwrap_or_else(|| panic!("no grant in {log:?}"));
    assert!(
        grant["payload"]["AdminGranted"]["by"]
            .as_str()
            .is_some_and(|by| by.starts_with("cli:auditor@")),
        "{grant}"
    );
    assert!(
        grant["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("cli-"))
    );

    let unknown = chatd(&app, &["admin", "grant", "nobody_at_all"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no user named nobody_at_all"));

    let revoked = chatd(&app, &["admin", "revoke", &auditor.username]);
    assert!(revoked.status.success());
    let response = app
        .get("/api/v1/audit/events", Some(&auditor.access_token), None)
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let types: Vec<String> = app
        .account_events(auditor.id)
        .await
        .into_iter()
        .map(|(event_type, _)| event_type)
        .collect();
    assert!(types.contains(&"AccountAdminRevoked".to_owned()));
}

#[tokio::test]
async fn the_log_reads_back_with_filters_paging_and_metadata() {
    let app = spawn_app().await;
    let admin = app.register("admin").await;
    assert!(
        chatd(&app, &["admin", "grant", &admin.username])
            .status
            .success()
    );
    let alice = app.register("alice").await;
    let conversation = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "direct", "user_id": admin.id}),
        )
        .await,
    )
    .await;
    let id = conversation["id"].as_str().unwrap_or_default().to_owned();
    let mut request_ids = Vec::new();
    for index in 0..3 {
        let response = app
            .post(
                &format!("/api/v1/conversations/{id}/messages"),
                Some(&alice.access_token),
                &json!({"body": format!("m{index}")}),
            )
            .await;
        request_ids.push(header(&response, "x-request-id").unwrap_or_default());
    }
    // A failed login is in the log too, with no actor.
    let failed = app.login(&alice.username, "wrong password").await;
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);

    let events = all_events(
        &app,
        &admin.access_token,
        &format!("&aggregate_type=conversation&aggregate_id={id}"),
    )
    .await;
    let types: Vec<&str> = events
        .iter()
        .map(|event| event["event_type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        types,
        [
            "ConversationCreated",
            "MessageSent",
            "MessageSent",
            "MessageSent"
        ]
    );
    let sequences: Vec<i64> = events
        .iter()
        .map(|event| event["sequence"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
    for (event, request_id) in events.iter().skip(1).zip(&request_ids) {
        assert_eq!(event["actor_id"], alice.id.to_string());
        assert_eq!(event["request_id"].as_str(), Some(request_id.as_str()));
        // MessageSent is at version 2.0 (attachments); the rest are at 1.0.
        let version = if event["event_type"] == "MessageSent" {
            "2.0"
        } else {
            "1.0"
        };
        assert_eq!(event["event_version"], version);
        assert!(
            event["recorded_at"]
                .as_str()
                .is_some_and(|time| time.ends_with('Z'))
        );
    }
    let by_alice = all_events(
        &app,
        &admin.access_token,
        &format!("&actor_id={}", alice.id),
    )
    .await;
    assert!(
        by_alice
            .iter()
            .all(|event| event["actor_id"] == alice.id.to_string())
    );
    assert!(
        by_alice.len() >= 6,
        "registration, login, conversation and messages: {}",
        by_alice.len()
    );
    let login_failures = crate::helpers::eventually(Duration::from_secs(5), || async {
        all_events(
            &app,
            &admin.access_token,
            &format!("&aggregate_id={}", alice.id),
        )
        .await
        .iter()
        .any(|event| event["event_type"] == "AccountLoginFailed")
    })
    .await;
    assert!(login_failures, "the failed login is not in the log");
    let future = all_events(&app, &admin.access_token, "&from=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let bad = app
        .get(
            "/api/v1/audit/events?after=xyz",
            Some(&admin.access_token),
            None,
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // The same events as JSON Lines from the command line.
    let export = chatd(&app, &["audit", "export", "--conversation", &id]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    assert_eq!(lines, events);
}

#[tokio::test]
async fn a_conversation_as_it_stood_around_an_edit_a_deletion_and_a_new_member() {
    let app = spawn_app().await;
    let admin = app.register("admin").await;
    assert!(
        chatd(&app, &["admin", "grant", &admin.username])
            .status
            .success()
    );
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let pause = || tokio::time::sleep(Duration::from_millis(30));
    let group = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "group", "title": "Past", "member_ids": [bob.id]}),
        )
        .await,
    )
    .await;
    let id = group["id"].as_str().unwrap_or_default().to_owned();
    let first = json_body(
        app.post(
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&alice.access_token),
            &json!({"body": "original"}),
        )
        .await,
    )
    .await;
    let first_id = first["id"].as_str().unwrap_or_default().to_owned();
    let second = json_body(
        app.post(
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&bob.access_token),
            &json!({"body": "to be deleted"}),
        )
        .await,
    )
    .await;
    let second_id = second["id"].as_str().unwrap_or_default().to_owned();
    pause().await;
    let before_edit = chrono::Utc::now();
    pause().await;
    assert_eq!(
        app.patch(
            &format!("/api/v1/messages/{first_id}"),
            &alice.access_token,
            &json!({"body": "edited"})
        )
        .await
        .status(),
        StatusCode::OK
    );
    pause().await;
    let before_delete = chrono::Utc::now();
    pause().await;

    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/messages/{second_id}")))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    pause().await;
    let before_member = chrono::Utc::now();
    pause().await;
    let added = app
        .post(
            &format!("/api/v1/conversations/{id}/members"),
            Some(&bob.access_token),
            &json!({"user_id": carol.id}),
        )
        .await;
    assert_eq!(added.status(), StatusCode::OK);
    pause().await;
    let after_all = chrono::Utc::now();

    let state_at = |time: chrono::DateTime<chrono::Utc>| {
        let url = format!(
            "/api/v1/audit/conversations/{id}/state?as_of={}",
            time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        let token = admin.access_token.clone();
        let app = &app;
        async move { json_body(app.get(&url, Some(&token), None).await).await }
    };
    let at_edit = state_at(before_edit).await;
    assert_eq!(at_edit["messages"][0]["body"], "original");
    assert_eq!(at_edit["messages"][0]["edited_at"], Value::Null);
    assert_eq!(at_edit["messages"][1]["body"], "to be deleted");
    let at_delete = state_at(before_delete).await;
    assert_eq!(at_delete["messages"][0]["body"], "edited");
    assert_eq!(at_delete["messages"][1]["deleted"], false);
    let at_member = state_at(before_member).await;
    assert_eq!(at_member["messages"][1]["deleted"], true);
    assert_eq!(at_member["messages"][1]["body"], Value::Null);
    assert_eq!(
        at_member["conversation"]["members"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(at_member["messages"].as_array().map(Vec::len), Some(2));
    let now = state_at(after_all).await;
    assert_eq!(
        now["conversation"]["members"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(now["messages"][2]["kind"], "system");
    assert_eq!(now["messages"][2]["system"]["action"], "member_added");
    assert_eq!(now["conversation"]["title"], "Past");

    let before_anything = app
        .get(
            &format!("/api/v1/audit/conversations/{id}/state?as_of=2000-01-01T00:00:00Z"),
            Some(&admin.access_token),
            None,
        )
        .await;
    assert_eq!(before_anything.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn replay_verifies_repairs_and_switches_while_the_app_runs() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let group = json_body(
        app.post(
            "/api/v1/conversations",
            Some(&alice.access_token),
            &json!({"type": "group", "title": "Replayed", "member_ids": [bob.id]}),
        )
        .await,
    )
    .await;
    let id = group["id"].as_str().unwrap_or_default().to_owned();
    let mut message_ids = Vec::new();
    for index in 0..5 {
        // One body with the characters a bulk load must escape.
        let body = if index == 4 {
            "tab\there\nnew line \\ backslash \\N".to_owned()
        } else {
            format!("m{index}")
        };
        let message = json_body(
            app.post(
                &format!("/api/v1/conversations/{id}/messages"),
                Some(&alice.access_token),
                &json!({"body": body}),
            )
            .await,
        )
        .await;
        message_ids.push(message["id"].as_str().unwrap_or_default().to_owned());
    }
    // An image, attached to a message and set as an avatar.
    let upload = |user: &crate::helpers::TestUser| {
        app.client
            .post(app.url("/api/v1/media"))
            .bearer_auth(user.access_token.clone())
            .multipart(reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(media::corpus::png(40, 30)).file_name("a.png"),
            ))
            .send()
    };
    let image = json_body(
        upload(&alice)
            .await
            .unwrap_or_else(|error| panic!("{error}")),
    )
    .await;
    let sent = app
        .post(
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&alice.access_token),
            &json!({"body": "with a picture", "attachment_ids": [image["id"]]}),
        )
        .await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    // A call, answered, with a media change, then ended.
    let call = json_body(
        app.post(
            &format!("/api/v1/conversations/{id}/calls"),
            Some(&alice.access_token),
            &json!({"media": "audio"}),
        )
        .await,
    )
    .await;
    let call_path = format!("/api/v1/calls/{}", call["id"].as_str().unwrap_or_default());
    for (user, action) in [(&bob, "accept"), (&alice, "end")] {
        let response = app
            .post(
                &format!("{call_path}/{action}"),
                Some(&user.access_token),
                &json!({}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{action}");
    }
    let avatar = json_body(upload(&bob).await.unwrap_or_else(|error| panic!("{error}"))).await;
    assert_eq!(
        app.patch(
            "/api/v1/users/me",
            &bob.access_token,
            &json!({"avatar_media_id": avatar["id"]})
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.patch(
            &format!("/api/v1/messages/{}", message_ids[0]),
            &alice.access_token,
            &json!({"body": "m0 edited"})
        )
        .await
        .status(),
        StatusCode::OK
    );
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/messages/{}", message_ids[1])))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let receipt = app
        .post(
            &format!("/api/v1/conversations/{id}/receipts"),
            Some(&bob.access_token),
            &json!({"read_seq": 3}),
        )
        .await;
    let consistency = header(&receipt, "x-consistency-token").unwrap_or_default();
    assert_eq!(
        app.patch(
            "/api/v1/users/me",
            &bob.access_token,
            &json!({"bio": "replay me"})
        )
        .await
        .status(),
        StatusCode::OK
    );
    // Everything projected before comparing.
    let newest = app
        .get(
            &format!("/api/v1/conversations/{id}"),
            Some(&bob.access_token),
            Some(&consistency),
        )
        .await;
    assert_eq!(newest.status(), StatusCode::OK);
    let settled = crate::helpers::eventually(Duration::from_secs(10), || async {
        let lag: i64 = store::projection::read_model_lag_ms(&app.pool)
            .await
            .unwrap_or(1);
        lag == 0
    })
    .await;
    assert!(settled, "the projector did not catch up");

    let verify = chatd(&app, &["replay", "--verify"]);
    assert!(
        verify.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("equal"));
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("replayed"),
        "progress lines: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // One corrupted row: verify names the table and the key, and fails.
    sqlx::query("UPDATE messages SET body = 'tampered' WHERE id = $1::uuid")
        .bind(&message_ids[2])
        .execute(&app.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let verify = chatd(&app, &["replay", "--verify"]);
    assert!(!verify.status.success());
    let report = String::from_utf8_lossy(&verify.stdout).to_string();
    assert!(
        report.contains("difference in messages") && report.contains(&message_ids[2]),
        "{report}"
    );

    // The rebuild and switch repairs it, and the app keeps working on the new tables, which
    // have every index and constraint the old ones had.
    let shape = || async {
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT tablename || ': ' || regexp_replace(indexdef, 'ON \\S+\\.', 'ON ') FROM pg_indexes
              WHERE schemaname = 'public' AND tablename IN ('users', 'conversations', 'conversation_members', 'messages', 'receipt_marks', 'projection_positions')
              ORDER BY 1",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        let constraints: Vec<String> = sqlx::query_scalar(
            "SELECT conrelid::regclass::text || ': ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
              WHERE connamespace = 'public'::regnamespace
                AND conrelid::regclass::text IN ('users', 'conversations', 'conversation_members', 'messages', 'receipt_marks', 'projection_positions')
              ORDER BY 1",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        (indexes, constraints)
    };
    let before = shape().await;
    assert!(before.0.len() >= 10 && before.1.len() >= 8, "{before:?}");
    assert!(
        before
            .1
            .iter()
            .any(|constraint| constraint.starts_with("conversation_members:")
                && constraint.contains("FOREIGN KEY")),
        "{before:?}"
    );
    let replay = chatd(&app, &["replay"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let repaired = json_body(
        app.get(
            &format!("/api/v1/messages/{}", message_ids[2]),
            Some(&bob.access_token),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(repaired["body"], "m2");
    let after = app
        .post(
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&bob.access_token),
            &json!({"body": "after the replay"}),
        )
        .await;
    assert_eq!(after.status(), StatusCode::CREATED);
    let consistency = header(&after, "x-consistency-token").unwrap_or_default();
    let page = json_body(
        app.get(
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&alice.access_token),
            Some(&consistency),
        )
        .await,
    )
    .await;
    let last = page["items"]
        .as_array()
        .and_then(|items| items.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["body"], "after the replay");
    let verify = chatd(&app, &["replay", "--verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
