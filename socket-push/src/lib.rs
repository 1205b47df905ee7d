//! The WebSocket edge (`GET /api/v1/ws`): authenticates the connection (bearer header or
//! `access_token` query parameter), checks the `Origin` allow-list, sends `ready`, keeps the
//! link alive with heartbeats, and runs command frames (`message.send`, `receipt`, `ping`)
//! through the same code as their REST twins, answering each with `ack` or `error`.
//!
//! - [`frames`]: the client frames and how each is carried out.
//! - [`asyncapi`]: the protocol's AsyncAPI 3 document.
//! - [`delivery`]: frames to users on this node or any other.
//! - [`direct`]: frames the fan-out writes straight into idle connections' sockets.
//! - [`hub`]: this node's connections by user, with bounded outbound queues.
//! - [`presence`]: online/offline announcements to the users who share a conversation.
//! - [`push`]: the push router: recipients of each event, their inboxes (cursors), delivery.
//! - [`revocations`]: closes revoked connections (4001) as revocations are announced.
//! - [`upkeep`]: refreshes the connections' user-map entries and checks their tokens, in
//!   batches, once per heartbeat period.
//! - [`node`]: this node's queue, through which routers on other nodes reach its connections.

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use web::socket::Peer;
use web::{ApiError, Authenticator, Caller};

pub mod asyncapi;
pub mod delivery;
pub mod direct;
pub mod frames;
pub mod hub;
pub mod node;
pub mod presence;
pub mod push;
pub mod revocations;
pub mod upkeep;
pub mod wakes;

use hub::{Cursor, Hub, Outbound};

/// Frames above this close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// A connection's read buffer (grown while a larger frame is read).
pub const READ_BUFFER_BYTES: usize = 1024;
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
    peer: Option<Extension<ConnectInfo<Peer>>>,
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
    let writer = peer.map(|Extension(ConnectInfo(peer))| peer.writer);
    Ok(upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        // Client frames are small; a larger one grows the buffer while it is read. Every idle
        // connection holds this buffer, so it is kept to 1 KiB (measured in `loadgen idle`).
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| serve_connection(socket, caller, state, query.cursor, writer))
        .into_response())
}

async fn serve_connection(
    socket: WebSocket,
    caller: Caller,
    state: PushState,
    resume_from: Option<String>,
    writer: Option<Arc<web::socket::Writer>>,
) {
    let user_id = caller.user_id;
    // hyper has written the upgrade's response: from here on the connection writes WebSocket
    // frames, and the writer keeps direct frames out of them and from after a close.
    if let Some(writer) = &writer {
        writer.watch_frames();
    }
    let registration = state
        .hub
        .register(user_id, caller.claims.jti, caller.claims.sid, writer);
    let connection_id = registration.connection_id;
    let direct = registration.direct.clone();
    if let Err(error) = run_connection(socket, &caller, &state, registration, resume_from).await {
        tracing::debug!(%error, %connection_id, "websocket closed");
    }
    direct.close();
    // Once per connection, not per frame: whether the fan-out's straight path is taken.
    metrics::counter!("chat_ws_frames_written_straight_total").increment(direct.written_straight());
    state.hub.unregister(user_id, connection_id);
    let last_here = !state.hub.is_connected(user_id);
    if let Err(error) = Box::pin(
        state
            .delivery
            .user_map
            .remove(user_id, connection_id, last_here),
    )
    .await
    {
        tracing::warn!(%error, "could not remove a connection from the user map; it expires");
    }
    if let Err(error) = Box::pin(presence::went_offline(&state, user_id)).await {
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
    Box::pin(
        state
            .delivery
            .user_map
            .touch(caller.user_id, registration.connection_id),
    )
    .await?;
    Box::pin(presence::came_online(state, caller.user_id)).await?;
    // Registered before the inbox is read, so nothing can fall between the two: frames that
    // arrive meanwhile wait in the queue and are dropped there if already sent.
    let newest: Option<String> = Box::pin(NEWEST_ID.key(&inbox).invoke_async(&mut redis)).await?;
    let mut sent_up_to = newest
        .as_deref()
        .and_then(Cursor::parse)
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
        "heartbeat_ms": state.hub.heartbeat().as_millis() as u64,
    });
    send_text(&mut socket, &ready.to_string()).await?;
    if let Some(from) = resume_from {
        let (recovered, last) = Box::pin(replay(&mut socket, &mut redis, &inbox, &from)).await?;
        if recovered {
            sent_up_to = sent_up_to.max(last);
        }
        let resumed =
            json!({"type": "resumed", "recovered": recovered, "cursor": sent_up_to.to_string()});
        send_text(&mut socket, &resumed.to_string()).await?;
    }

    // A ping goes out after a heartbeat period in which nothing else went out: the frames
    // themselves keep the link alive and show a dead peer as well (ADR 0021).
    let heartbeat_every = state.hub.heartbeat();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.tick().await;
    let last_sent = tokio::time::Instant::now();
    // Each tick is due a period after the last frame, not on a grid of its own: a tick a
    // moment before `last_sent + period` would only re-arm itself and wake the task again.
    heartbeat.reset();
    let wakes = wakes::Wakes::default();
    // From here on the fan-out may write frames straight into the socket (ADR 0022); the
    // path closes before any close frame, and in `serve_connection` once this returns.
    registration
        .direct
        .open(sent_up_to, wakes.waker(wakes::Source::Flush));
    serve_frames(
        &mut socket,
        caller,
        state,
        &mut registration,
        &wakes,
        heartbeat,
        last_sent,
    )
    .await
}

/// The connection's life after `ready`: frames out and in, heartbeats, the kick.
async fn serve_frames(
    socket: &mut WebSocket,
    caller: &Caller,
    state: &PushState,
    registration: &mut hub::Registration,
    wakes: &wakes::Wakes,
    mut heartbeat: tokio::time::Interval,
    mut last_sent: tokio::time::Instant,
) -> anyhow::Result<()> {
    let heartbeat_every = state.hub.heartbeat();
    let kick = registration.kick.clone();
    let direct = registration.direct.clone();
    loop {
        match next_wake(wakes, &kick, &mut heartbeat, registration, socket).await {
            Wake::Kicked => {
                direct.close();
                let code = registration.close_code();
                let reason = if code == hub::REVOKED {
                    "token revoked"
                } else {
                    "too slow: reconnect with your cursor"
                };
                // The close goes out after whatever is still buffered; a client that never
                // reads again is dropped after the grace period.
                let close = socket.send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })));
                let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
                return Ok(());
            }
            Wake::Heartbeat => {
                if let Some(last_frame) = direct.last_frame() {
                    last_sent = last_sent.max(last_frame);
                }
                let quiet_until = last_sent + heartbeat_every;
                if tokio::time::Instant::now() < quiet_until {
                    heartbeat.reset_at(quiet_until);
                } else {
                    // The user-map entry and the revocation check are the node's upkeep,
                    // batched over its connections (`upkeep`).
                    socket.send(Message::Ping(Vec::new().into())).await?;
                    last_sent = tokio::time::Instant::now();
                    heartbeat.reset();
                }
            }
            Wake::Outbound(None) => return Ok(()),
            Wake::Outbound(Some(first)) => {
                let mut sending = std::pin::pin!(send_queued(
                    socket,
                    first,
                    &mut registration.outbound,
                    &direct
                ));
                // Most sends complete at once; only one that waits for the client races the
                // kick (a client that stops reading blocks it, and the kick must get through).
                if let std::task::Poll::Ready(sent) = futures::poll!(sending.as_mut()) {
                    sent?;
                } else {
                    tokio::select! {
                        sent = &mut sending => sent?,
                        // Kicked: the next turn of the loop closes the socket.
                        () = kick.kicked() => {}
                    }
                    // The kick's waker was the task's meanwhile: poll it with its own again.
                    wakes.mark(wakes::Source::Kick);
                }
                last_sent = tokio::time::Instant::now();
            }
            Wake::Flush => {
                // A frame the fan-out wrote straight to the socket did not go out whole:
                // finish it, racing the kick as a send does.
                let mut flushing = std::pin::pin!(futures::SinkExt::flush(socket));
                tokio::select! {
                    flushed = &mut flushing => flushed?,
                    () = kick.kicked() => {}
                }
                wakes.mark(wakes::Source::Kick);
            }
            Wake::Frame(frame) => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        if is_too_big(error) {
                            direct.close();
                            let close = CloseFrame {
                                code: close_code::SIZE,
                                reason: "frames are limited to 64 KiB".into(),
                            };
                            let _ = socket.send(Message::Close(Some(close))).await;
                        }
                        return Ok(());
                    }
                    None => return Ok(()),
                };
                let reply = match frame {
                    // Boxed, as every rarely taken await here: a connection's task keeps the
                    // size of its largest state while it idles, so only the small ones inline.
                    Message::Text(text) => Box::pin(frames::handle(state, caller, &text)).await,
                    Message::Binary(_) => Some(frames::error(
                        Value::Null,
                        "unsupported_frame",
                        "frames are JSON text",
                    )),
                    Message::Close(_) => return Ok(()),
                    _ => None,
                };
                if let Some(reply) = reply {
                    send_text(socket, &reply.to_string()).await?;
                    last_sent = tokio::time::Instant::now();
                }
            }
        }
    }
}

/// What a connection's task woke for, in the order it is taken: a kick wins over everything
/// else that is ready.
enum Wake {
    Kicked,
    Heartbeat,
    /// The fan-out left part of a frame for the task to write.
    Flush,
    Outbound(Option<Arc<Outbound>>),
    Frame(Option<Result<Message, axum::Error>>),
}

/// Waits for the next thing the connection must do. The outbound queue is polled at every
/// wakeup; the kick, the heartbeat and the socket only once they have woken the task
/// ([`wakes`]): a frame sent does not poll the socket's read path.
async fn next_wake(
    wakes: &wakes::Wakes,
    kick: &hub::Kick,
    heartbeat: &mut tokio::time::Interval,
    registration: &mut hub::Registration,
    socket: &mut WebSocket,
) -> Wake {
    use futures::Stream;
    use std::task::Poll;
    use wakes::Source;
    std::future::poll_fn(|context| {
        let woken = wakes.take(context);
        let wake = if woken.contains(Source::Kick)
            && kick
                .poll_kicked(&mut wakes.context(Source::Kick))
                .is_ready()
        {
            Wake::Kicked
        } else if woken.contains(Source::Heartbeat)
            && heartbeat
                .poll_tick(&mut wakes.context(Source::Heartbeat))
                .is_ready()
        {
            Wake::Heartbeat
        } else if woken.contains(Source::Flush) {
            // Nothing to poll again: the flush itself is the task's to do.
            wakes.keep(woken.without(Source::Flush));
            return Poll::Ready(Wake::Flush);
        } else if let Poll::Ready(frame) = registration.outbound.poll_recv(context) {
            Wake::Outbound(frame)
        } else if woken.contains(Source::Socket)
            && let Poll::Ready(frame) =
                std::pin::Pin::new(&mut *socket).poll_next(&mut wakes.context(Source::Socket))
        {
            Wake::Frame(frame)
        } else {
            return Poll::Pending;
        };
        // The source that was ready registers again at its next poll, and those not polled
        // this time are still to be polled.
        wakes.keep(woken);
        Poll::Ready(wake)
    })
    .await
}

/// The id of a stream's newest entry, without the entry: an inbox entry can be large (a
/// group's `conversation.created` lists every member), and a connection must not carry one.
static NEWEST_ID: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if entries[1] then return entries[1][1] end
return false
",
    )
});

/// A stream's last generated id and the newest id trimmed from it, without `XINFO`'s copies
/// of its first and last entries; nil when there is no stream.
static STREAM_BOUNDS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local bounds = {false, false}
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then bounds[1] = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then bounds[2] = info[i + 1] end
end
return bounds
",
    )
});

/// Most frames written before one flush (one write to the socket, as far as its buffer goes).
const FRAMES_PER_FLUSH: usize = 64;

/// Sends `first` and whatever else is already queued (up to [`FRAMES_PER_FLUSH`]) with one
/// flush, skipping event frames at or before the newest sent (a resume's replay or the
/// fan-out sent them). The fan-out writes to the socket again once all are written.
async fn send_queued(
    socket: &mut WebSocket,
    first: Arc<Outbound>,
    queue: &mut tokio::sync::mpsc::Receiver<Arc<Outbound>>,
    direct: &direct::Direct,
) -> anyhow::Result<()> {
    use futures::SinkExt;
    let mut next = Some(first);
    let mut written = 0;
    let mut taken = 0;
    let mut sent_up_to = direct.sent_up_to();
    while let Some(frame) = next.take() {
        taken += 1;
        let Outbound { cursor, text } = frame.as_ref().clone();
        let fresh = match (cursor, sent_up_to) {
            (Some(cursor), Some(sent)) if cursor <= sent => false,
            (Some(cursor), _) => {
                sent_up_to = Some(cursor);
                true
            }
            (None, _) => true,
        };
        if fresh {
            // The text is shared with every other connection it goes to: no copy here.
            socket.feed(Message::Text(text)).await?;
            written += 1;
        }
        if written < FRAMES_PER_FLUSH {
            next = queue.try_recv().ok();
        }
    }
    if written > 0 {
        socket.flush().await?;
    }
    direct.written(taken, sent_up_to);
    Ok(())
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
    let bounds: Option<Vec<Option<String>>> = STREAM_BOUNDS.key(inbox).invoke_async(redis).await?;
    let bound = |index: usize| -> Option<Cursor> {
        Cursor::parse(bounds.as_ref()?.get(index)?.as_deref()?)
    };
    let Some(last_generated) = bound(0) else {
        // No inbox at all: fine only for a client that has seen nothing.
        return Ok((from == Cursor::ZERO, Cursor::ZERO));
    };
    let trimmed_past = bound(1).unwrap_or(Cursor::ZERO);
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
                send_text(socket, &push::with_cursor(&text, &id)).await?;
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
