//! The WebSocket edge (`GET /api/v1/ws`). For now it authenticates the connection (bearer
//! header or `access_token` query parameter), checks the `Origin` allow-list, sends `ready`,
//! answers `ping`, and keeps the link alive with heartbeats. Fan-out of events arrives with
//! the messaging feature.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use web::{ApiError, Authenticator, Caller};

/// Frames above this close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
pub const HEARTBEAT: Duration = Duration::from_secs(25);

#[derive(Clone)]
pub struct PushState {
    pub authenticator: Arc<Authenticator>,
    /// Browser origins allowed to connect; requests without `Origin` are always allowed.
    pub allowed_origins: Arc<Vec<String>>,
}

impl FromRef<PushState> for Arc<Authenticator> {
    fn from_ref(state: &PushState) -> Self {
        state.authenticator.clone()
    }
}

pub fn router() -> axum::Router<PushState> {
    axum::Router::new().route("/api/v1/ws", get(connect))
}

#[derive(Deserialize)]
pub struct ConnectQuery {
    access_token: Option<String>,
}

/// GET /api/v1/ws
pub async fn connect(
    State(state): State<PushState>,
    headers: HeaderMap,
    Query(query): Query<ConnectQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if let Some(origin) = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        && !state
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this Origin may not open a WebSocket",
        ));
    }
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let token = header_token.or(query.access_token).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "a bearer token or access_token is required",
        )
    })?;
    let caller = state.authenticator.authenticate(&token).await?;
    Ok(upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| serve_connection(socket, caller))
        .into_response())
}

async fn serve_connection(mut socket: WebSocket, caller: Caller) {
    let ready = json!({
        "type": "ready",
        "connection_id": Uuid::now_v7(),
        "user_id": caller.user_id,
        "cursor": "0",
        "heartbeat_ms": HEARTBEAT.as_millis() as u64,
    });
    if socket
        .send(Message::Text(ready.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            frame = socket.recv() => {
                let Some(Ok(frame)) = frame else { return };
                let reply = match frame {
                    Message::Text(text) => reply_to(&text),
                    Message::Close(_) => return,
                    _ => None,
                };
                if let Some(reply) = reply
                    && socket.send(Message::Text(reply.to_string().into())).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

fn reply_to(text: &str) -> Option<Value> {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return Some(
            json!({"type": "error", "ref": null, "code": "malformed_frame", "detail": "frames are JSON objects with a type"}),
        );
    };
    let reference = frame.get("ref").cloned().unwrap_or(Value::Null);
    match frame.get("type").and_then(Value::as_str) {
        Some("ping") => Some(json!({"type": "pong", "ref": reference})),
        _ => Some(
            json!({"type": "error", "ref": reference, "code": "unsupported_frame", "detail": "this frame type is not supported yet"}),
        ),
    }
}
