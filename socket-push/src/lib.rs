//! The WebSocket edge (`GET /api/v1/ws`): authenticates the connection (bearer header or
//! `access_token` query parameter), checks the `Origin` allow-list, sends `ready`, keeps the
//! link alive with heartbeats, and runs command frames (`message.send`, `receipt`, `ping`)
//! through the same code as their REST twins, answering each with `ack` or `error`.
//!
//! - [`frames`]: the client frames and how each is carried out.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
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

pub mod frames;

/// Frames above this close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
pub const HEARTBEAT: Duration = Duration::from_secs(25);

#[derive(Clone)]
pub struct PushState {
    pub authenticator: Arc<Authenticator>,
    /// Command frames run through the command side, as REST commands do.
    pub commands: command_api::CommandState,
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
        .on_upgrade(move |socket| serve_connection(socket, caller, state))
        .into_response())
}

async fn serve_connection(mut socket: WebSocket, caller: Caller, state: PushState) {
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
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        if is_too_big(error) {
                            let close = CloseFrame { code: close_code::SIZE, reason: "frames are limited to 64 KiB".into() };
                            let _ = socket.send(Message::Close(Some(close))).await;
                        }
                        return;
                    }
                    None => return,
                };
                let reply = match frame {
                    Message::Text(text) => frames::handle(&state.commands, &caller, &text).await,
                    Message::Binary(_) => Some(frames::error(Value::Null, "unsupported_frame", "frames are JSON text")),
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

/// Whether a read failed because the frame was over the size limit.
fn is_too_big(error: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(
        error.into_inner().downcast::<Error>().map(|error| *error),
        Ok(Error::Capacity(_))
    )
}
