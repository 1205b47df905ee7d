//! Registration, profiles and passwords, end to end through the event store, the outbox,
//! RabbitMQ and the projector.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{PASSWORD, header, json_body, spawn_app};

#[tokio::test]
async fn register_reaches_the_read_model_through_the_bus() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/api/v1/auth/register",
            None,
            &json!({"username": "Alice_1", "email": "Alice@Example.com", "password": PASSWORD, "display_name": "Alice"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let request_id = header(&response, "x-request-id").unwrap_or_default();
    let consistency = header(&response, "x-consistency-token").unwrap_or_default();
    assert!(!consistency.is_empty());
    let session = json_body(response).await;
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);
    assert_eq!(session["user"]["username"], "alice_1");
    assert_eq!(session["user"]["display_name"], "Alice");
    assert_eq!(session["user"]["email"], "Alice@Example.com");
    assert!(
        !session.to_string().contains("argon2"),
        "no hash in {session}"
    );
    let user_id: Uuid = session["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .unwrap_or_default();

    // The events are in the store with their metadata.
    let events = app.account_events(user_id).await;
    let types: Vec<&str> = events
        .iter()
        .map(|(event_type, _)| event_type.as_str())
        .collect();
    assert_eq!(types, ["AccountRegistered", "AccountLoggedIn"]);
    for (_, metadata) in &events {
        assert_eq!(metadata["actor_id"], user_id.to_string());
        assert_eq!(metadata["request_id"], request_id);
        assert!(
            metadata["recorded_at"]
                .as_str()
                .is_some_and(|time| time.ends_with('Z'))
        );
    }

    // With the consistency token, the very next read sees the user, through RabbitMQ and the
    // projector, with no sleep.
    let token = session["access_token"].as_str().unwrap_or_default();
    let viewer = app.register("viewer").await;
    let response = app
        .get(
            &format!("/api/v1/users/{user_id}"),
            Some(&viewer.access_token),
            Some(&consistency),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "x-read-model-lag-ms").is_some());
    let user = json_body(response).await;
    assert_eq!(user["username"], "alice_1");
    assert_eq!(user["display_name"], "Alice");
    assert_eq!(user["online"], false);
    assert_eq!(user["avatar"], serde_json::Value::Null);
    assert!(
        user.get("email").is_none(),
        "email is only shown to its owner: {user}"
    );
    assert!(
        user["created_at"]
            .as_str()
            .is_some_and(|time| time.len() == 24 && time.ends_with('Z'))
    );

    let me = json_body(app.get("/api/v1/users/me", Some(token), None).await).await;
    assert_eq!(me["email"], "Alice@Example.com");
}

#[tokio::test]
async fn bad_registrations_get_problems_and_change_nothing() {
    let app = spawn_app().await;
    let taken = app.register("taken").await;
    let events_before = app.event_count().await;
    let cases = [
        (
            json!({"username": "abc", "email": "a@b.co"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"username": "abc", "email": "a@b.co", "password": PASSWORD, "admin": true}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"username": "ab", "email": "a@b.co", "password": PASSWORD}),
            StatusCode::BAD_REQUEST,
            "invalid_username",
        ),
        (
            json!({"username": "bad name", "email": "a@b.co", "password": PASSWORD}),
            StatusCode::BAD_REQUEST,
            "invalid_username",
        ),
        (
            json!({"username": "good_name", "email": "not-an-email", "password": PASSWORD}),
            StatusCode::BAD_REQUEST,
            "invalid_email",
        ),
        (
            json!({"username": "good_name", "email": "a@b.co", "password": "short"}),
            StatusCode::BAD_REQUEST,
            "invalid_password",
        ),
        (
            json!({"username": taken.username.to_uppercase(), "email": "new@b.co", "password": PASSWORD}),
            StatusCode::CONFLICT,
            "username_taken",
        ),
        (
            json!({"username": "fresh_name", "email": taken.email.to_uppercase(), "password": PASSWORD}),
            StatusCode::CONFLICT,
            "email_taken",
        ),
    ];
    for (body, status, code) in cases {
        let response = app.post("/api/v1/auth/register", None, &body).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some("application/problem+json")
        );
        let problem = json_body(response).await;
        assert_eq!(problem["code"], code, "{body}: {problem}");
        assert_eq!(problem["status"], status.as_u16());
    }

    let malformed = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_body(malformed).await["code"], "malformed_json");

    let huge = json!({"username": "huge", "email": "h@b.co", "password": "x".repeat(70 * 1024)});
    let response = app.post("/api/v1/auth/register", None, &huge).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(response).await["code"], "payload_too_large");

    assert_eq!(
        app.event_count().await,
        events_before,
        "bad input wrote events"
    );
    // The names refused for another reason are still free.
    let response = app.register_response("good_name", "a@b.co", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn profile_updates_are_events_and_reach_the_read_model() {
    let app = spawn_app().await;
    let user = app.register("prof").await;
    let other = app.register("other").await;
    let response = app
        .patch(
            "/api/v1/users/me",
            &user.access_token,
            &json!({"display_name": "  New Name ", "bio": "hello there", "email": "fresh@example.com"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let consistency = header(&response, "x-consistency-token").unwrap_or_default();
    let updated = json_body(response).await;
    assert_eq!(updated["display_name"], "New Name");
    assert_eq!(updated["bio"], "hello there");
    assert_eq!(updated["email"], "fresh@example.com");

    let seen = json_body(
        app.get(
            "/api/v1/users/me",
            Some(&user.access_token),
            Some(&consistency),
        )
        .await,
    )
    .await;
    assert_eq!(seen["display_name"], "New Name");
    assert_eq!(seen["email"], "fresh@example.com");

    // The old email is free again, the new one is taken.
    let response = app
        .register_response("grab_old", &user.email, PASSWORD)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = app
        .patch(
            "/api/v1/users/me",
            &other.access_token,
            &json!({"email": "FRESH@example.com"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(json_body(response).await["code"], "email_taken");

    // null clears the bio; bad values change nothing.
    let response = app
        .patch(
            "/api/v1/users/me",
            &user.access_token,
            &json!({"bio": null}),
        )
        .await;
    assert_eq!(json_body(response).await["bio"], serde_json::Value::Null);
    let before = app.account_events(user.id).await.len();
    for body in [
        json!({"display_name": ""}),
        json!({"nickname": "x"}),
        json!({"bio": "x".repeat(501)}),
    ] {
        let response = app
            .patch("/api/v1/users/me", &user.access_token, &body)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let response = app
        .patch(
            "/api/v1/users/me",
            &user.access_token,
            &json!({"avatar_media_id": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.account_events(user.id).await.len(), before);
    let types: Vec<String> = app
        .account_events(user.id)
        .await
        .into_iter()
        .map(|(event_type, _)| event_type)
        .collect();
    assert!(types.contains(&"AccountProfileUpdated".to_owned()));
    assert!(types.contains(&"AccountEmailChanged".to_owned()));
}

#[tokio::test]
async fn user_search_pages_by_prefix() {
    let app = spawn_app().await;
    let mut last = None;
    for index in 0..5 {
        last = Some(app.register(&format!("zed{index}")).await);
    }
    let searcher = app.register("finder").await;
    let last = last.unwrap_or_else(|| unreachable!());
    // Wait for the last registration to be projected.
    app.get(
        "/api/v1/users/me",
        Some(&last.access_token),
        Some(&last.consistency_token),
    )
    .await;
    let first_page = json_body(
        app.get(
            "/api/v1/users?q=ZED&limit=3",
            Some(&searcher.access_token),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(first_page["items"].as_array().map(Vec::len), Some(3));
    let cursor = first_page["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!cursor.is_empty());
    let second_page = json_body(
        app.get(
            &format!("/api/v1/users?q=zed&limit=3&cursor={cursor}"),
            Some(&searcher.access_token),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(second_page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(second_page["next_cursor"], serde_json::Value::Null);
    assert!(second_page["items"][0].get("email").is_none());
    let response = app
        .get(
            "/api/v1/users?limit=500",
            Some(&searcher.access_token),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .get(
            "/api/v1/users/not-a-uuid",
            Some(&searcher.access_token),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = app.get("/api/v1/users", None, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
