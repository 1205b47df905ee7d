//! Operations routes: `/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json`, `/docs`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_swagger_ui::SwaggerUi;
use web::ApiError;

#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub amqp: Arc<bus::SharedConnection>,
    pub namespace: String,
    pub metrics: PrometheusHandle,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "chatd", description = "Event-sourced real-time chat backend: REST API. The WebSocket protocol is at /api/v1/ws."),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

impl ApiDoc {
    pub fn openapi_base() -> utoipa::openapi::OpenApi {
        Self::openapi()
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The process-wide Prometheus recorder (installed once, shared by every app in a test binary).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn router(state: OpsState, openapi: utoipa::openapi::OpenApi) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/asyncapi.json", get(asyncapi))
        .with_state(state)
        .merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", openapi))
}

/// GET /api/v1/asyncapi.json: the WebSocket protocol.
async fn asyncapi() -> impl IntoResponse {
    axum::Json(socket_push::asyncapi::document())
}

/// GET /healthz
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process runs")))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// GET /readyz
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Postgres, Redis and RabbitMQ answer"), (status = 503, description = "a dependency is down; the problem names it")))]
pub async fn readyz(State(state): State<OpsState>) -> Response {
    let limit = Duration::from_secs(2);
    let postgres = tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&state.pool)).await;
    let postgres_ok = matches!(postgres, Ok(Ok(_)));
    let mut redis = state.redis.clone();
    let ping =
        tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut redis)).await;
    let redis_ok = matches!(ping, Ok(Ok(_)));
    let rabbitmq_ok = match tokio::time::timeout(limit, state.amqp.channel()).await {
        Ok(Ok(channel)) => {
            let _ = channel.close(200, "readiness check".into()).await;
            true
        }
        _ => false,
    };
    let failing: Vec<&str> = [
        ("postgres", postgres_ok),
        ("redis", redis_ok),
        ("rabbitmq", rabbitmq_ok),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| name)
    .collect();
    if failing.is_empty() {
        return axum::Json(
            json!({"status": "ready", "postgres": "ok", "redis": "ok", "rabbitmq": "ok"}),
        )
        .into_response();
    }
    ApiError {
        retry_after_seconds: Some(5),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("unavailable: {}", failing.join(", ")),
        )
    }
    .into_response()
}

/// GET /metrics: Prometheus text. Outbox and read-model lag are measured at scrape time.
async fn metrics_text(State(state): State<OpsState>) -> Response {
    let outbox: Result<(i64, Option<f64>), sqlx::Error> = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8
           FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(&state.pool)
    .await;
    if let Ok((backlog, age)) = outbox {
        metrics::gauge!("chat_outbox_backlog").set(backlog as f64);
        metrics::gauge!("chat_outbox_lag_seconds").set(age.unwrap_or(0.0));
    }
    if let Ok(lag) = store::projection::read_model_lag_ms(&state.pool).await {
        metrics::gauge!("chat_read_model_lag_ms").set(lag as f64);
    }
    if let Ok(channel) = state.amqp.channel().await {
        let topology = bus::Topology::new(&state.namespace);
        for (label, queue) in [
            ("projector", topology.projector_queue()),
            ("projector.dlq", topology.projector_dead_letter_queue()),
        ] {
            // A failed passive declare closes the channel, so each queue is asked in turn.
            if let Ok(depth) = bus::Topology::queue_depth(&channel, &queue).await {
                metrics::gauge!("chat_queue_depth", "queue" => label).set(depth);
            }
        }
        let _ = channel.close(200, "metrics scraped".into()).await;
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
