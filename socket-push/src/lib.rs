//! The WebSocket edge (`GET /api/v1/ws`): authenticates the connection (bearer header or
//! `access_token` query parameter), checks the `Origin` allow-list, sends `ready`, keeps the
//! link alive with heartbeats, and runs command frames (`message.send`, `receipt`, `ping`)
//! through the same code as their REST twins, answering each with `ack` or `error`.
//!
//! - [`frames`]: the client frames and how each is carried out.
//! - [`asyncapi`]: the protocol's AsyncAPI 3 document.
//! - [`delivery`]: frames to users on this node or any other.
//! - [`hub`]: this node's connections by user, with bounded outbound queues.
//! - [`presence`]: online/offline announcements to the users who share a conversation.
//! - [`push`]: the push router: recipients of each event, their inboxes (cursors), delivery.
//! - [`revocations`]: closes revoked connections (4001) as revocations are announced.
//! - [`node`]: this node's queue, through which routers on other nodes reach its connections.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use web::{ApiError, Authenticator, Caller};

pub mod asyncapi;
pub mod delivery;
pub mod frames;
pub mod hub;
pub mod node;
pub mod presence;
pub mod push;
pub mod revocations;

use hub::{Cursor, Hub, Outbound};

/// Frames above this close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
pub const HEARTBEAT: Duration = Duration::from_secs(25);
/// How long a kicked connection's close frame may wait behind buffered frames.
pub const CLOSE_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct PushState {
    pub authenticator: Arc<Authenticator>,
    /// Command frames run through the command side, as REST commands do.
    pub commands: command_api::CommandState,
    pub hub: Arc<Hub>,
    /// For the inboxes (resume) the push router fills.
    pub redis: redis::aio::ConnectionManager,
    pub namespace: String,
    /// Frames to users on any node (typing, presence); holds the user map.
    pub delivery: delivery::Delivery,
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
    /// The last cursor the client saw: resume from there.
    cursor: Option<String>,
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
        .on_upgrade(move |socket| serve_connection(socket, caller, state, query.cursor))
        .into_response())
}

async fn serve_connection(
    socket: WebSocket,
    caller: Caller,
    state: PushState,
    resume_from: Option<String>,
) {
    let user_id = caller.user_id;
    let registration = state
        .hub
        .register(user_id, caller.claims.jti, caller.claims.sid);
    let connection_id = registration.connection_id;
    if let Err(error) = run_connection(socket, &caller, &state, registration, resume_from).await {
        tracing::debug!(%error, %connection_id, "websocket closed");
    }
    state.hub.unregister(user_id, connection_id);
    if let Err(error) = state.delivery.user_map.remove(user_id, connection_id).await {
        tracing::warn!(%error, "could not remove a connection from the user map; it expires");
    }
    if let Err(error) = presence::went_offline(&state, user_id).await {
        tracing::warn!(error = %format!("{error:#}"), "could not announce presence");
    }
}

async fn send_text(socket: &mut WebSocket, text: &str) -> anyhow::Result<()> {
    socket.send(Message::Text(text.into())).await?;
    Ok(())
}

async fn run_connection(
    mut socket: WebSocket,
    caller: &Caller,
    state: &PushState,
    mut registration: hub::Registration,
    resume_from: Option<String>,
) -> anyhow::Result<()> {
    let inbox = push::inbox_key(&state.namespace, caller.user_id);
    let mut redis = state.redis.clone();
    state
        .delivery
        .user_map
        .touch(caller.user_id, registration.connection_id)
        .await?;
    presence::came_online(state, caller.user_id).await?;
    // Registered before the inbox is read, so nothing can fall between the two: frames that
    // arrive meanwhile wait in the queue and are dropped there if already sent.
    let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(&inbox)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await?;
    let mut sent_up_to = newest
        .first()
        .and_then(|(id, _)| Cursor::parse(id))
        .unwrap_or(Cursor::ZERO);
    // On a resume, `ready` names where the client resumes from, not the newest event: a
    // client that keeps the last cursor of any frame must not skip the replay if it drops
    // before the replay ends (`resumed` names the newest once the replay is through).
    let ready_cursor = resume_from
        .as_deref()
        .and_then(Cursor::parse)
        .filter(|cursor| *cursor <= sent_up_to)
        .unwrap_or(sent_up_to);
    let ready = json!({
        "type": "ready",
        "connection_id": registration.connection_id,
        "user_id": caller.user_id,
        "cursor": ready_cursor.to_string(),
        "heartbeat_ms": HEARTBEAT.as_millis() as u64,
    });
    send_text(&mut socket, &ready.to_string()).await?;
    if let Some(from) = resume_from {
        let (recovered, last) = replay(&mut socket, &mut redis, &inbox, &from).await?;
        if recovered {
            sent_up_to = sent_up_to.max(last);
        }
        let resumed =
            json!({"type": "resumed", "recovered": recovered, "cursor": sent_up_to.to_string()});
        send_text(&mut socket, &resumed.to_string()).await?;
    }

    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            // A kick wins over everything else that is ready.
            biased;
            () = registration.kicked.cancelled() => {
                let code = registration.close_code();
                let reason = if code == hub::REVOKED { "token revoked" } else { "too slow: reconnect with your cursor" };
                // The close goes out after whatever is still buffered; a client that never
                // reads again is dropped after the grace period.
                let close = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() })));
                let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
                return Ok(());
            }
            _ = heartbeat.tick() => {
                // A revocation announced while this node was not listening is caught here.
                if let Err(sessions::RevocationError::Revoked) = state.authenticator.revocations.check(&caller.claims).await {
                    let close = CloseFrame { code: hub::REVOKED, reason: "token revoked".into() };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return Ok(());
                }
                socket.send(Message::Ping(Vec::new().into())).await?;
                state.delivery.user_map.touch(caller.user_id, registration.connection_id).await?;
            }
            outbound = registration.outbound.recv() => {
                let Some(Outbound { cursor, text }) = outbound else { return Ok(()) };
                if let Some(cursor) = cursor {
                    if cursor <= sent_up_to {
                        continue;
                    }
                    sent_up_to = cursor;
                }
                // A client that stops reading blocks this send; the kick must still get through.
                tokio::select! {
                    sent = send_text(&mut socket, &text) => sent?,
                    () = registration.kicked.cancelled() => {}
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
                        return Ok(());
                    }
                    None => return Ok(()),
                };
                let reply = match frame {
                    Message::Text(text) => frames::handle(state, caller, &text).await,
                    Message::Binary(_) => Some(frames::error(Value::Null, "unsupported_frame", "frames are JSON text")),
                    Message::Close(_) => return Ok(()),
                    _ => None,
                };
                if let Some(reply) = reply {
                    send_text(&mut socket, &reply.to_string()).await?;
                }
            }
        }
    }
}

/// Sends every inbox entry after `from`, in order. `(false, _)` when that cannot be done
/// exactly: the cursor does not parse, or entries after it were trimmed or lost.
async fn replay(
    socket: &mut WebSocket,
    redis: &mut redis::aio::ConnectionManager,
    inbox: &str,
    from: &str,
) -> anyhow::Result<(bool, Cursor)> {
    let Some(from) = Cursor::parse(from) else {
        return Ok((false, Cursor::ZERO));
    };
    let info: Option<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(inbox)
        .query_async(redis)
        .await
        .ok();
    let stream_value = |name: &str| -> Option<Cursor> {
        match info.as_ref()?.get(name)? {
            redis::Value::BulkString(bytes) => Cursor::parse(std::str::from_utf8(bytes).ok()?),
            redis::Value::SimpleString(text) => Cursor::parse(text),
            _ => None,
        }
    };
    let Some(last_generated) = stream_value("last-generated-id") else {
        // No inbox at all: fine only for a client that has seen nothing.
        return Ok((from == Cursor::ZERO, Cursor::ZERO));
    };
    let trimmed_past = stream_value("max-deleted-entry-id").unwrap_or(Cursor::ZERO);
    if from < trimmed_past || from > last_generated {
        return Ok((false, Cursor::ZERO));
    }
    let mut after = from;
    loop {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(inbox)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(500)
            .query_async(redis)
            .await?;
        if entries.is_empty() {
            return Ok((true, after));
        }
        for (id, fields) in entries {
            let Some(cursor) = Cursor::parse(&id) else {
                continue;
            };
            if let Some((_, text)) = fields.into_iter().find(|(name, _)| name == "f") {
                let mut frame: Value = serde_json::from_str(&text)?;
                frame["cursor"] = json!(id);
                send_text(socket, &frame.to_string()).await?;
            }
            after = cursor;
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
