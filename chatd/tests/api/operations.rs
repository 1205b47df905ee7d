//! Health, readiness, metrics, the OpenAPI document, the reference page, request ids,
//! graceful shutdown, and the compose file.

use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;

use crate::helpers::{header, headless_dom, json_body, spawn_app};

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/healthz", None, None).await.status(),
        StatusCode::OK
    );
    let ready = app.get("/readyz", None, None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready = json_body(ready).await;
    assert_eq!(
        (
            ready["postgres"].as_str(),
            ready["redis"].as_str(),
            ready["rabbitmq"].as_str()
        ),
        (Some("ok"), Some("ok"), Some("ok"))
    );

    app.register("metered").await;
    let metrics = app.metrics().await;
    for name in [
        "chat_http_requests_total",
        "chat_http_request_duration_seconds",
        "chat_outbox_backlog",
        "chat_outbox_lag_seconds",
        "chat_read_model_lag_ms",
        "chat_queue_depth",
        "chat_event_commit_batch_size",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(metrics.contains("route=\"/api/v1/auth/register\""));
}

#[tokio::test]
async fn request_ids_are_returned_and_kept() {
    let app = spawn_app().await;
    let generated = app.get("/healthz", None, None).await;
    assert!(header(&generated, "x-request-id").is_some_and(|id| id.len() == 36));
    let supplied = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        header(&supplied, "x-request-id").as_deref(),
        Some("client-chosen-42")
    );
    let problem = app.get("/api/v1/users/me", None, None).await;
    assert!(
        header(&problem, "x-request-id").is_some(),
        "errors carry request ids too"
    );
}

#[tokio::test]
async fn openapi_document_lists_every_route_and_docs_are_served_offline() {
    let app = spawn_app().await;
    let document = json_body(app.get("/api/v1/openapi.json", None, None).await).await;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.1")),
        "{}",
        document["openapi"]
    );
    let mut routes = BTreeSet::new();
    if let Some(paths) = document["paths"].as_object() {
        for (path, operations) in paths {
            for method in operations
                .as_object()
                .map(|methods| methods.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                routes.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    for expected in [
        "GET /healthz",
        "GET /readyz",
        "POST /api/v1/auth/register",
        "POST /api/v1/auth/login",
        "POST /api/v1/auth/refresh",
        "POST /api/v1/auth/logout",
        "GET /api/v1/users",
        "GET /api/v1/users/{user_id}",
        "GET /api/v1/users/me",
        "PATCH /api/v1/users/me",
        "POST /api/v1/users/me/password",
        "POST /api/v1/conversations",
        "GET /api/v1/conversations",
        "GET /api/v1/conversations/{id}",
        "PATCH /api/v1/conversations/{id}",
        "POST /api/v1/conversations/{id}/members",
        "DELETE /api/v1/conversations/{id}/members/{user_id}",
        "POST /api/v1/conversations/{id}/messages",
        "GET /api/v1/conversations/{id}/messages",
        "GET /api/v1/messages/{id}",
        "PATCH /api/v1/messages/{id}",
        "DELETE /api/v1/messages/{id}",
        "GET /api/v1/messages/{id}/receipts",
        "POST /api/v1/conversations/{id}/receipts",
        "GET /api/v1/audit/events",
        "GET /api/v1/audit/conversations/{id}/state",
    ] {
        assert!(
            routes.contains(expected),
            "{expected} missing; have {routes:?}"
        );
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());

    let page = app.get("/docs/", None, None).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap_or_default();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("cdn."), "the page must not load from a CDN");
    let script = app.get("/docs/swagger-ui-bundle.js", None, None).await;
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.text().await.unwrap_or_default().len() > 100_000,
        "the bundle is embedded"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_stops_listening() {
    let mut app = spawn_app().await;
    app.register("leaving").await;
    let server = app.server.take();
    app.shutdown.cancel();
    let finished = tokio::time::timeout(std::time::Duration::from_secs(10), async move {
        match server {
            Some(server) => server.await.map(|result| result.is_ok()).unwrap_or(false),
            None => false,
        }
    })
    .await;
    assert_eq!(finished.ok(), Some(true), "the app did not stop cleanly");
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "still listening after shutdown"
    );
}

#[test]
fn compose_file_parses_and_names_only_services_it_defines() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml"))
        .unwrap_or_else(|error| panic!("compose.yaml: {error}"));
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|error| panic!("compose.yaml does not parse: {error}"));
    // Compose resolves `<<: *anchor` merge keys; so must we before looking at services.
    yaml.apply_merge()
        .unwrap_or_else(|error| panic!("compose.yaml merge keys: {error}"));
    let compose: Value = serde_json::to_value(&yaml).unwrap_or_else(|error| panic!("{error}"));
    let services = compose["services"]
        .as_object()
        .unwrap_or_else(|| panic!("no services"));
    for required in [
        "postgres",
        "redis",
        "rabbitmq",
        "command-api",
        "query-api",
        "projector",
        "socket-push",
        "minio",
        "minio-bucket",
        "coturn",
        "edge",
    ] {
        assert!(
            services.contains_key(required),
            "compose.yaml lacks {required}"
        );
    }
    for (name, service) in services {
        let depends_on: Vec<String> = match &service["depends_on"] {
            Value::Array(list) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for dependency in depends_on {
            assert!(
                services.contains_key(&dependency),
                "{name} depends on undefined {dependency}"
            );
        }
        assert!(
            service["image"].is_string()
                || service["build"].is_object()
                || service["build"].is_string(),
            "{name} has no image"
        );
    }
    for role in ["command-api", "query-api", "projector", "socket-push"] {
        let command = services[role]["command"].to_string();
        assert!(
            command.contains(role),
            "{role} does not run its role: {command}"
        );
    }
    let edge_config =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf"))
            .unwrap_or_else(|error| panic!("deploy/nginx.conf: {error}"));
    for upstream in ["command-api", "query-api", "socket-push", "/api/v1/ws"] {
        assert!(
            edge_config.contains(upstream),
            "the edge does not route {upstream}"
        );
    }
}

#[tokio::test]
async fn readiness_names_each_dependency_that_is_down() {
    let (app, proxies) = crate::helpers::spawn_app_behind_proxies().await;
    assert_eq!(
        app.get("/readyz", None, None).await.status(),
        StatusCode::OK
    );
    for (name, proxy) in [
        ("postgres", &proxies.postgres),
        ("redis", &proxies.redis),
        ("rabbitmq", &proxies.rabbitmq),
    ] {
        proxy.go_down();
        let response = app.get("/readyz", None, None).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{name} down"
        );
        assert!(header(&response, "retry-after").is_some());
        let detail = json_body(response).await["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(detail, format!("unavailable: {name}"));
        proxy.restore();
        let back = crate::helpers::eventually(std::time::Duration::from_secs(15), || async {
            app.get("/readyz", None, None).await.status() == StatusCode::OK
        })
        .await;
        assert!(back, "not ready again after {name} came back");
    }
}

#[test]
fn an_unreachable_dependency_is_a_one_line_error_naming_it() {
    let binary = env!("CARGO_BIN_EXE_chatd");
    let database_url = crate::helpers::fresh_settings().database_url;
    let cases = [
        (
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f",
        ),
        (
            "--redis-url",
            "redis://127.0.0.1:1",
            "cannot connect to Redis at redis://127.0.0.1:1",
        ),
        (
            "--database-url",
            "postgres://postgres@127.0.0.1:1/chat",
            "cannot reach Postgres at postgres://postgres@127.0.0.1:1/chat",
        ),
    ];
    for (flag, url, expected) in cases {
        let output = std::process::Command::new(binary)
            .args(["serve", "--bind", "127.0.0.1:0", flag, url])
            .env("DATABASE_URL", &database_url)
            .env("CHAT_JWT_SECRET", "test-secret-test-secret-test-secret!")
            .output()
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(!output.status.success(), "{flag}: chatd started anyway");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{flag}: {stderr}");
        assert!(
            lines[0].starts_with("chatd: ") && lines[0].contains(expected),
            "{flag}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let split = std::process::Command::new(binary)
        .args(["query-api", "--bind", "127.0.0.1:0"])
        .env_remove("CHAT_JWT_SECRET")
        .env("DATABASE_URL", &database_url)
        .output()
        .unwrap_or_else(|error| panic!("{error}"));
    if let Ok(runtime) = tokio::runtime::Runtime::new() {
        runtime.block_on(crate::helpers::drop_database(&database_url));
    }
    assert!(!split.status.success());
    assert!(String::from_utf8_lossy(&split.stderr).contains("CHAT_JWT_SECRET is required"));
}

/// The reference page renders in a real browser from embedded assets: Swagger UI fetches the
/// OpenAPI document and lists the operations. The browser may reach nothing but the app.
#[tokio::test]
async fn the_docs_page_renders_in_a_headless_browser() {
    let app = spawn_app().await;
    let dom = headless_dom(&app.url("/docs/")).await;
    assert!(
        dom.contains("swagger-ui"),
        "no Swagger UI in the page: {dom}"
    );
    for operation in ["/api/v1/auth/register", "/api/v1/users/me", "/readyz"] {
        assert!(
            dom.contains(operation),
            "{operation} not rendered; the page's script or the document failed to load"
        );
    }
}
