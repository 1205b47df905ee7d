//! Sessions: login, logout, refresh rotation and reuse, revocation durability, failing closed,
//! and every kind of bad token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatd::Roles;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

use crate::helpers::{
    PASSWORD, fresh_settings, header, json_body, session_user, spawn_app, spawn_app_with,
};
use crate::proxy::Proxy;

async fn status_of_me(app: &crate::helpers::TestApp, token: &str) -> (StatusCode, String) {
    let response = app.get("/api/v1/users/me", Some(token), None).await;
    let status = response.status();
    let code = if status == StatusCode::OK {
        String::new()
    } else {
        json_body(response).await["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (status, code)
}

#[tokio::test]
async fn login_by_username_or_email_and_wrong_passwords() {
    let app = spawn_app().await;
    let user = app.register_visible("login").await;
    for login in [user.username.clone(), user.email.to_uppercase()] {
        let response = app.login(&login, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{login}");
        assert!(header(&response, "x-consistency-token").is_some());
        let session = json_body(response).await;
        assert_eq!(session["user"]["id"], user.id.to_string());
        assert_eq!(session["user"]["email"], user.email);
    }
    let wrong = app.login(&user.username, "not the password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let wrong = json_body(wrong).await;
    let unknown = json_body(app.login("nobody_here", "not the password").await).await;
    assert_eq!(
        wrong, unknown,
        "the answer must not tell whether the account exists"
    );
    assert_eq!(wrong["code"], "invalid_credentials");

    // Login and the failed attempt are on the account's stream.
    let recorded = crate::helpers::eventually(Duration::from_secs(5), || async {
        let types: Vec<String> = app
            .account_events(user.id)
            .await
            .into_iter()
            .map(|(event_type, _)| event_type)
            .collect();
        types.contains(&"AccountLoginFailed".to_owned())
    })
    .await;
    assert!(recorded, "the failed login was not recorded");
    let types: Vec<String> = app
        .account_events(user.id)
        .await
        .into_iter()
        .map(|(event_type, _)| event_type)
        .collect();
    assert_eq!(
        types
            .iter()
            .filter(|event_type| *event_type == "AccountLoggedIn")
            .count(),
        3
    );
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_per_account() {
    let app = spawn_app().await;
    let user = app.register_visible("limited").await;
    for _ in 0..5 {
        assert_eq!(
            app.login(&user.username, "wrong password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = app.login(&user.username, PASSWORD).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(&limited, "retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    assert!(
        retry_after > 0 && retry_after <= 900,
        "Retry-After {retry_after}"
    );
    assert_eq!(json_body(limited).await["code"], "rate_limited");
    // Another account from the same address is still fine.
    let other = app.register_visible("unlimited").await;
    assert_eq!(
        app.login(&other.username, PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn logout_revokes_this_token_or_every_device() {
    let app = spawn_app().await;
    let user = app.register_visible("logout").await;
    let second = session_user(
        app.login(&user.username, PASSWORD).await,
        &user.username,
        &user.email,
    )
    .await;
    let third = session_user(
        app.login(&user.username, PASSWORD).await,
        &user.username,
        &user.email,
    )
    .await;

    let response = app
        .post("/api/v1/auth/logout", Some(&user.access_token), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of_me(&app, &user.access_token).await,
        (StatusCode::UNAUTHORIZED, "token_revoked".to_owned())
    );
    // Its refresh token died with it; other devices are untouched.
    let refresh = app
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": user.refresh_token}),
        )
        .await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_of_me(&app, &second.access_token).await.0,
        StatusCode::OK
    );

    let response = app
        .post(
            "/api/v1/auth/logout",
            Some(&second.access_token),
            &json!({"all_devices": true}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of_me(&app, &second.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of_me(&app, &third.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    let refresh = app
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": third.refresh_token}),
        )
        .await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);

    let types: Vec<String> = app
        .account_events(user.id)
        .await
        .into_iter()
        .map(|(event_type, _)| event_type)
        .collect();
    assert_eq!(
        types
            .iter()
            .filter(|event_type| *event_type == "AccountLoggedOut")
            .count(),
        2
    );
    // A logout without a body is this device only.
    let fourth = session_user(
        app.login(&user.username, PASSWORD).await,
        &user.username,
        &user.email,
    )
    .await;
    let response = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&fourth.access_token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of_me(&app, &fourth.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_app().await;
    let user = app.register_visible("rotate").await;
    let first = app
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": user.refresh_token}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let rotated = json_body(first).await;
    let new_refresh = rotated["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let new_access = rotated["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(new_refresh, user.refresh_token);
    assert_eq!(status_of_me(&app, &new_access).await.0, StatusCode::OK);

    // The spent token comes back: an attacker has it. The whole family dies.
    let reuse = app
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": user.refresh_token}),
        )
        .await;
    assert_eq!(reuse.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_body(reuse).await["code"], "refresh_token_reused");
    let successor = app
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": new_refresh}),
        )
        .await;
    assert_eq!(successor.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_of_me(&app, &new_access).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of_me(&app, &user.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );

    let garbage = app
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": "nope"}),
        )
        .await;
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);
    let types: Vec<String> = app
        .account_events(user.id)
        .await
        .into_iter()
        .map(|(event_type, _)| event_type)
        .collect();
    assert!(types.contains(&"AccountSessionRefreshed".to_owned()));
    assert!(types.contains(&"AccountRefreshTokenReused".to_owned()));
}

#[tokio::test]
async fn a_revoked_token_stays_revoked_after_redis_loses_everything() {
    let app = spawn_app().await;
    let user = app.register_visible("flush").await;
    let keeper = app.register_visible("keeper").await;
    let response = app
        .post("/api/v1/auth/logout", Some(&user.access_token), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Everything this instance had in Redis is gone, as after a restart or FLUSHALL (scoped
    // to the test's namespace so parallel tests keep their state).
    crate::helpers::delete_namespace(&app.settings).await;

    assert_eq!(
        status_of_me(&app, &user.access_token).await,
        (StatusCode::UNAUTHORIZED, "token_revoked".to_owned())
    );
    assert_eq!(
        status_of_me(&app, &keeper.access_token).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn authenticated_requests_fail_closed_when_redis_is_unreachable() {
    let redis = Proxy::start("127.0.0.1:6379").await;
    let mut settings = fresh_settings();
    settings.redis_url = format!("redis://{}", redis.address);
    let app = spawn_app_with(settings, Roles::ALL).await;
    let user = app.register_visible("closed").await;
    assert_eq!(
        status_of_me(&app, &user.access_token).await.0,
        StatusCode::OK
    );

    redis.go_down();
    let response = app
        .get("/api/v1/users/me", Some(&user.access_token), None)
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(header(&response, "retry-after").is_some());
    let problem = json_body(response).await;
    assert_eq!(problem["code"], "service_unavailable");
    assert!(
        !problem.to_string().contains("6379"),
        "no internals in {problem}"
    );
    let readiness = app.get("/readyz", None, None).await;
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json_body(readiness).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("redis")
    );

    redis.restore();
    let back = crate::helpers::eventually(Duration::from_secs(10), || async {
        status_of_me(&app, &user.access_token).await.0 == StatusCode::OK
    })
    .await;
    assert!(back, "requests did not recover after Redis came back");
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let app = spawn_app().await;
    let user = app.register_visible("forge").await;
    let parts: Vec<&str> = user.access_token.split('.').collect();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap_or_default())
            .unwrap_or_default();
    let secret = app.settings.jwt_secret.clone().unwrap_or_default();
    let sign = |claims: &serde_json::Value, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_default()
    };
    let now = chrono::Utc::now().timestamp();
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 4000);
    expired["exp"] = json!(now - 3600);
    let mut other_audience = claims.clone();
    other_audience["aud"] = json!("someone-else");
    let mut tampered_claims = claims.clone();
    tampered_claims["sub"] = json!(uuid::Uuid::now_v7());
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(tampered_claims.to_string()),
        parts[2]
    );
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let cases = [
        (tampered, "invalid_token"),
        (alg_none, "invalid_token"),
        (sign(&expired, &secret), "token_expired"),
        (sign(&other_audience, &secret), "invalid_token"),
        (
            sign(&claims, "a-different-secret-a-different-secret"),
            "invalid_token",
        ),
        ("not.a.jwt".to_owned(), "invalid_token"),
    ];
    for (token, code) in cases {
        assert_eq!(
            status_of_me(&app, &token).await,
            (StatusCode::UNAUTHORIZED, code.to_owned()),
            "{token}"
        );
    }
    let missing = app.get("/api/v1/users/me", None, None).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_body(missing).await["code"], "missing_token");
}

#[tokio::test]
async fn password_change_revokes_other_sessions() {
    let app = spawn_app().await;
    let user = app.register_visible("passwd").await;
    let other_device = session_user(
        app.login(&user.username, PASSWORD).await,
        &user.username,
        &user.email,
    )
    .await;
    let wrong = app
        .post(
            "/api/v1/users/me/password",
            Some(&user.access_token),
            &json!({"current_password": "nope nope", "new_password": "a brand new one"}),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let short = app
        .post(
            "/api/v1/users/me/password",
            Some(&user.access_token),
            &json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    assert_eq!(short.status(), StatusCode::BAD_REQUEST);
    let changed = app
        .post(
            "/api/v1/users/me/password",
            Some(&user.access_token),
            &json!({"current_password": PASSWORD, "new_password": "a brand new one"}),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of_me(&app, &user.access_token).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status_of_me(&app, &other_device.access_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&user.username, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&user.username, "a brand new one").await.status(),
        StatusCode::OK
    );
}
