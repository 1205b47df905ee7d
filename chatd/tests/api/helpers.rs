//! `spawn_app()`: a `chatd` on port 0 with its own database and namespace, and a client with a
//! method per endpoint. Dropping it shuts the app down and deletes what it created.

use chatd::{App, Roles, Settings};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub settings: Settings,
    pub shutdown: CancellationToken,
    pub server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Whether dropping this app deletes its database and namespace (not for a second node).
    pub owns_resources: bool,
    /// A node running as its own `chatd` process (killed on drop).
    pub process: Option<tokio::process::Child>,
}

/// A fresh database name and namespace.
pub fn fresh_settings() -> Settings {
    let id = Uuid::now_v7().simple().to_string();
    Settings {
        database_url: format!("{POSTGRES}/chat_test_{id}"),
        redis_url: REDIS.to_owned(),
        amqp_url: AMQP.to_owned(),
        bind: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        namespace: format!("test_{id}"),
        jwt_secret: Some("test-secret-test-secret-test-secret!".to_owned()),
        allowed_origins: vec!["http://allowed.example".to_owned()],
        access_token_ttl_secs: 900,
        refresh_token_ttl_secs: 3600,
        jwt_issuer: "chatd".to_owned(),
        jwt_audience: "chatd-clients".to_owned(),
        db_max_connections: 10,
        password_hash_concurrency: 2,
        login_failures_per_account: 5,
        login_failures_per_address: 20,
        sends_per_10_seconds: 1000,
        ws_outbound_queue: 1024,
        ws_heartbeat_secs: 25,
        ws_direct_quiet_ms: 100,
        max_json_bytes: 64 * 1024,
        trusted_proxies: vec!["127.0.0.1".to_owned()],
        log_format: "text".to_owned(),
        media_store: std::env::temp_dir()
            .join(format!("chat_test_media_{id}"))
            .to_string_lossy()
            .into_owned(),
        media_max_bytes: 10 * 1024 * 1024,
        media_max_dimension: 8192,
        media_max_pixels: 40_000_000,
        media_decode_concurrency: 2,
        media_link_ttl_secs: 3600,
        public_url: String::new(),
        media_s3_options: Vec::new(),
        call_ring_timeout_secs: 45,
        stun_urls: Vec::new(),
        turn_urls: Vec::new(),
        turn_secret: None,
        turn_ttl_secs: 3600,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(fresh_settings(), Roles::ALL).await
}

pub async fn spawn_app_with(settings: Settings, roles: Roles) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    spawn_app_on(settings, roles, listener).await
}

/// Like [`spawn_app_with`], on a listener the test prepared (for example with small buffers).
pub async fn spawn_app_on(
    settings: Settings,
    roles: Roles,
    listener: tokio::net::TcpListener,
) -> TestApp {
    init_tracing();
    let app = App::start(settings.clone(), roles, true)
        .await
        .unwrap_or_else(|error| panic!("app did not start: {error:#}"));
    let pool = app.pool.clone();
    let address = listener
        .local_addr()
        .unwrap_or_else(|error| panic!("{error}"));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(listener, shutdown.clone()));
    TestApp {
        base: format!("http://{address}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_else(|error| panic!("{error}")),
        pool,
        settings,
        shutdown,
        server: Some(server),
        owns_resources: true,
        process: None,
    }
}

/// A second socket-push node of the same deployment, as its own `chatd socket-push`
/// process: same database, same namespace, its own port. Killed when dropped.
pub async fn spawn_node(app: &TestApp) -> TestApp {
    spawn_role(app, "socket-push", &[]).await
}

/// `chatd <role>` as its own process of `app`'s deployment (same database and namespace, its
/// own port), with extra environment; killed when dropped.
pub async fn spawn_role(app: &TestApp, role: &str, env: &[(&str, &str)]) -> TestApp {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("{error}"));
    let settings = &app.settings;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg(role)
        .env("DATABASE_URL", &settings.database_url)
        .env("REDIS_URL", &settings.redis_url)
        .env("AMQP_URL", &settings.amqp_url)
        .env("CHAT_BIND", format!("127.0.0.1:{port}"))
        .env("CHAT_NAMESPACE", &settings.namespace)
        .env(
            "CHAT_JWT_SECRET",
            settings.jwt_secret.clone().unwrap_or_default(),
        )
        .env("CHAT_JWT_AUDIENCE", &settings.jwt_audience)
        .env("CHAT_ALLOWED_ORIGINS", settings.allowed_origins.join(","))
        .env("CHAT_MEDIA_STORE", &settings.media_store)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start chatd {role}: {error}"));
    let node = TestApp {
        base: format!("http://127.0.0.1:{port}"),
        client: app.client.clone(),
        pool: app.pool.clone(),
        settings: settings.clone(),
        shutdown: CancellationToken::new(),
        server: None,
        owns_resources: false,
        process: Some(child),
    };
    let up = eventually(Duration::from_secs(20), || async {
        node.client
            .get(node.url("/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    })
    .await;
    assert!(up, "chatd {role} did not become ready");
    node
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A registered user with a live session.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
    pub consistency_token: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .unwrap_or_else(|error| panic!("POST {path}: {error}"))
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|error| panic!("PATCH {path}: {error}"))
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.get("/metrics", None, None)
            .await
            .text()
            .await
            .unwrap_or_default()
    }

    /// A GET that waits for `consistency` (when given) before reading.
    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        consistency: Option<&str>,
    ) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(consistency) = consistency {
            request = request.header("x-consistency-token", consistency);
        }
        request
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path}: {error}"))
    }

    pub async fn register_response(&self, username: &str, email: &str, password: &str) -> Response {
        self.post(
            "/api/v1/auth/register",
            None,
            &json!({"username": username, "email": email, "password": password}),
        )
        .await
    }

    /// Registers a user with a unique name built from `prefix`.
    pub async fn register(&self, prefix: &str) -> TestUser {
        let suffix = &Uuid::now_v7().simple().to_string()[20..];
        let username = format!("{prefix}_{suffix}");
        let email = format!("{username}@example.com");
        let response = self.register_response(&username, &email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        session_user(response, &username, &email).await
    }

    /// Registers a user and waits, as a client would with the consistency token, until the
    /// read side knows the account (`/users/me` is a query: without the wait it races the
    /// projector).
    pub async fn register_visible(&self, prefix: &str) -> TestUser {
        let user = self.register(prefix).await;
        let response = self
            .get(
                "/api/v1/users/me",
                Some(&user.access_token),
                Some(&user.consistency_token),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        user
    }

    pub async fn login(&self, login: &str, password: &str) -> Response {
        self.post(
            "/api/v1/auth/login",
            None,
            &json!({"login": login, "password": password}),
        )
        .await
    }

    /// Events stored for one account, as (event_type, metadata).
    pub async fn account_events(&self, user_id: Uuid) -> Vec<(String, Value)> {
        sqlx::query_as::<_, (String, sqlx::types::Json<Value>)>(
            "SELECT event_type, metadata::jsonb FROM events
              WHERE aggregate_type = 'account' AND aggregate_id = $1 ORDER BY sequence",
        )
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .into_iter()
        .map(|(event_type, metadata)| (event_type, metadata.0))
        .collect()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

pub async fn session_user(response: Response, username: &str, email: &str) -> TestUser {
    let consistency_token = response
        .headers()
        .get("x-consistency-token")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    TestUser {
        id: body["user"]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no user id in {body}")),
        username: username.to_owned(),
        email: email.to_owned(),
        access_token: body["access_token"].as_str().unwrap_or_default().to_owned(),
        refresh_token: body["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        consistency_token,
    }
}

pub async fn json_body(response: Response) -> Value {
    response
        .json()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

pub fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Deletes the namespace's broker objects and drops the database, also when a test panicked.
impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(mut process) = self.process.take() {
            let _ = process.start_kill();
        }
        if !self.owns_resources {
            return;
        }
        let settings = self.settings.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            // A runtime of its own: the test's runtime is blocked in this drop. The pool's
            // connections are cut by DROP DATABASE ... WITH (FORCE).
            runtime.block_on(async move {
                delete_namespace(&settings).await;
                drop_database(&settings.database_url).await;
            });
        })
        .join();
    }
}

pub async fn delete_namespace(settings: &Settings) {
    let topology = bus::Topology::new(&settings.namespace);
    if let Ok(connection) = bus::connect(&settings.amqp_url, "test-cleanup").await
        && let Ok(channel) = connection.create_channel().await
    {
        let _ = topology.delete(&channel).await;
        let _ = connection.close(200, "cleanup".into()).await;
    }
    if let Ok(client) = redis::Client::open(settings.redis_url.as_str())
        && let Ok(mut connection) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", settings.namespace))
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut connection)
                .await;
        }
    }
}

pub async fn drop_database(database_url: &str) {
    use sqlx::Connection;
    let Some((_, name)) = database_url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut connection) = sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut connection)
            .await;
    }
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The three servers, each behind a proxy the test can cut.
pub struct Proxies {
    pub postgres: crate::proxy::Proxy,
    pub redis: crate::proxy::Proxy,
    pub rabbitmq: crate::proxy::Proxy,
}

/// An app that reaches Postgres, Redis and RabbitMQ only through [`Proxies`].
pub async fn spawn_app_behind_proxies() -> (TestApp, Proxies) {
    use crate::proxy::Proxy;
    let proxies = Proxies {
        postgres: Proxy::start("127.0.0.1:5432").await,
        redis: Proxy::start("127.0.0.1:6379").await,
        rabbitmq: Proxy::start("127.0.0.1:5672").await,
    };
    let mut settings = fresh_settings();
    let database = settings
        .database_url
        .rsplit_once('/')
        .map(|(_, name)| name.to_owned())
        .unwrap_or_default();
    settings.database_url = format!(
        "postgres://postgres@{}/{database}",
        proxies.postgres.address
    );
    settings.redis_url = format!("redis://{}", proxies.redis.address);
    settings.amqp_url = format!("amqp://guest:guest@{}/%2f", proxies.rabbitmq.address);
    (spawn_app_with(settings, Roles::ALL).await, proxies)
}

/// The DOM of `url` after headless Chromium has run its scripts (up to 10 s of virtual time).
pub async fn headless_dom(url: &str) -> String {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_ok()
        })
        .unwrap_or_else(|| {
            panic!("no Chromium found: scripts/test.sh installs it (apt-get install chromium)")
        });
    let profile = std::env::temp_dir().join(format!("chatd-browser-{}", Uuid::now_v7()));
    let output = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            url,
        ])
        .output()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&output.stdout).into_owned()
}
