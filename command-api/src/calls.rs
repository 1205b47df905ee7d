//! Calls: start, accept, decline, leave, end, media flags (REST and WebSocket alike), and the
//! durable ring timeout.
//!
//! A call touches two streams. The conversation holds the one-active-call rule and the
//! timeline messages; the `Call` aggregate holds the call itself. Starting a call first posts
//! the start to the conversation (which refuses a second active call with 409
//! `call_active`), then starts the `Call`. Ending a call ends the `Call`, then posts the end to
//! the conversation. If a process dies between the two writes, the next start in that
//! conversation finds the active call ended (or never started) and posts its end first, so
//! the conversation is never stuck.
//!
//! The ring timeout is a row in `call_ring_timeouts`, written by a trigger in the same
//! transaction as the `CallStarted` event (so it exists exactly when the call does). Every
//! command-side process polls the due rows (`FOR UPDATE SKIP LOCKED`), sends the call a
//! `RingTimeout`, and deletes the row in the same transaction that locked it. A process that
//! dies mid-way leaves the row for the next poll, and a repeated `RingTimeout` changes
//! nothing, so each timeout takes effect exactly once, whatever restarts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::call::{Call, CallCommand, CallError, CallEvent, CallMedia, EndReason};
use domain::conversation::{ConversationCommand, ConversationError};
use domain::{CallId, ConversationId, UserId};
use serde::Deserialize;
use std::time::Duration;
use store::{Committed, ExecuteError, StreamPosition};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;
use web::dto::Call as CallDto;
use web::{ApiError, ApiJson, Caller, RequestId, consistency};

use crate::CommandState;
use crate::auth::metadata;
use crate::conversations::conversation_error;

/// A reservation of the active call older than this, whose call never started, was left by a
/// process that died between the two writes of a start.
const ABANDONED_START: Duration = Duration::from_secs(30);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCallRequest {
    /// `audio` or `video`.
    #[schema(value_type = String)]
    pub media: CallMedia,
}

/// What a participant does to a call.
#[derive(Clone, Copy, Debug)]
pub enum CallAction {
    Accept,
    Decline,
    Leave,
    End,
    Media {
        audio: bool,
        video: bool,
        screen: bool,
    },
}

/// POST /api/v1/conversations/{id}/calls
#[utoipa::path(post, path = "/api/v1/conversations/{id}/calls", tag = "calls", params(("id" = Uuid, Path)),
    request_body = StartCallRequest,
    responses((status = 201, body = web::dto::Call), (status = 404), (status = 409, description = "`call_active`"), (status = 422)),
    security(("bearer" = [])))]
pub async fn start_call(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<StartCallRequest>,
) -> Result<Response, ApiError> {
    let conversation_id: ConversationId = id.parse().map_err(|_| conversation_not_found())?;
    let (call, position) = start(
        &state,
        &request_id,
        caller.user_id,
        conversation_id,
        request.media,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        [consistency::header(&position)],
        axum::Json(call),
    )
        .into_response())
}

macro_rules! call_route {
    ($name:ident, $path:literal, $action:expr) => {
        #[utoipa::path(post, path = $path, tag = "calls", params(("id" = Uuid, Path)),
            responses((status = 200, body = web::dto::Call), (status = 403), (status = 404), (status = 409)),
            security(("bearer" = [])))]
        pub async fn $name(
            State(state): State<CommandState>,
            request_id: RequestId,
            caller: Caller,
            Path(id): Path<String>,
        ) -> Result<Response, ApiError> {
            let call_id: CallId = id.parse().map_err(|_| call_not_found())?;
            let (call, position) = act(&state, &request_id, caller.user_id, call_id, $action).await?;
            Ok(([consistency::header(&position)], axum::Json(call)).into_response())
        }
    };
}

call_route!(accept_call, "/api/v1/calls/{id}/accept", CallAction::Accept);
call_route!(
    decline_call,
    "/api/v1/calls/{id}/decline",
    CallAction::Decline
);
call_route!(leave_call, "/api/v1/calls/{id}/leave", CallAction::Leave);
call_route!(end_call, "/api/v1/calls/{id}/end", CallAction::End);

/// Starts a call in a conversation (REST and WebSocket alike).
pub async fn start(
    state: &CommandState,
    request_id: &RequestId,
    caller: Uuid,
    conversation_id: ConversationId,
    media: CallMedia,
) -> Result<(CallDto, StreamPosition), ApiError> {
    let initiator = UserId::from_uuid(caller);
    let conversation = state
        .conversations
        .load(&conversation_id.to_string())
        .await
        .map_err(conversation_error)?
        .filter(|conversation| conversation.is_member(initiator))
        .ok_or_else(conversation_not_found)?;
    if conversation.members.len() < 2 {
        return Err(call_error(CallError::NoOneToCall));
    }
    let call_id = CallId::new();
    let metadata = metadata(Some(initiator), request_id);
    let at = metadata.recorded_at;
    let reserve = || ConversationCommand::PostCallStarted {
        call_id,
        initiator_id: initiator,
        media,
        at,
    };
    let reserved = state
        .conversations
        .execute(
            &conversation_id.to_string(),
            reserve(),
            &state.conversation_services,
            &metadata,
        )
        .await;
    match reserved {
        Ok(_) => {}
        Err(ExecuteError::Domain(ConversationError::CallActive(active))) => {
            // Free the conversation if its active call is over or was never started, then try
            // once more; a call that is really going on stays a 409.
            if !settle_active_call(state, conversation_id, active, request_id).await? {
                return Err(ApiError::conflict(
                    "call_active",
                    "the conversation already has an active call",
                ));
            }
            state
                .conversations
                .execute(
                    &conversation_id.to_string(),
                    reserve(),
                    &state.conversation_services,
                    &metadata,
                )
                .await
                .map_err(|error| match error {
                    ExecuteError::Domain(ConversationError::CallActive(_)) => ApiError::conflict(
                        "call_active",
                        "the conversation already has an active call",
                    ),
                    other => conversation_error(other),
                })?;
        }
        Err(other) => return Err(conversation_error(other)),
    }
    let ring_timeout =
        chrono::Duration::from_std(state.ring_timeout).unwrap_or(chrono::Duration::seconds(45));
    let command = CallCommand::Start {
        call_id,
        conversation_id,
        direct: conversation.kind == Some(domain::conversation::ConversationKind::Direct),
        initiator,
        members: conversation.members.keys().copied().collect(),
        media,
        at,
        rings_until: at + ring_timeout,
    };
    let started = state
        .calls
        .execute(&call_id.to_string(), command, &(), &metadata)
        .await;
    match started {
        Ok(committed) => respond(&committed),
        Err(error) => {
            // The conversation must not keep a call that never started.
            let _ = post_end(
                state,
                conversation_id,
                call_id,
                initiator,
                EndReason::Cancelled,
                None,
                &metadata,
            )
            .await;
            Err(execute_error(error))
        }
    }
}

/// Does `action` as `caller` (REST and WebSocket alike).
pub async fn act(
    state: &CommandState,
    request_id: &RequestId,
    caller: Uuid,
    call_id: CallId,
    action: CallAction,
) -> Result<(CallDto, StreamPosition), ApiError> {
    let user = UserId::from_uuid(caller);
    let call = load(state, call_id).await?.ok_or_else(call_not_found)?;
    let conversation_id = call.conversation_id().ok_or_else(call_not_found)?;
    let member = state
        .conversations
        .load(&conversation_id.to_string())
        .await
        .map_err(conversation_error)?
        .is_some_and(|conversation| conversation.is_member(user));
    // Who is neither a member nor on the call may not learn that it exists.
    if !member && call.participant(user).is_none() {
        return Err(call_not_found());
    }
    let metadata = metadata(Some(user), request_id);
    let at = metadata.recorded_at;
    let command = match action {
        CallAction::Accept => CallCommand::Accept {
            user,
            member_of_conversation: member,
            at,
        },
        CallAction::Decline => CallCommand::Decline { user, at },
        CallAction::Leave => CallCommand::Leave { user, at },
        CallAction::End => CallCommand::End { user, at },
        CallAction::Media {
            audio,
            video,
            screen,
        } => CallCommand::SetMedia {
            user,
            audio,
            video,
            screen,
        },
    };
    let committed = state
        .calls
        .execute(&call_id.to_string(), command, &(), &metadata)
        .await
        .map_err(execute_error)?;
    post_end_if_ended(state, &committed, &metadata).await?;
    respond(&committed)
}

fn respond(committed: &Committed<Call>) -> Result<(CallDto, StreamPosition), ApiError> {
    let call = CallDto::from_state(&committed.aggregate)
        .ok_or_else(|| ApiError::internal("a call without its start"))?;
    Ok((call, committed.position.clone()))
}

/// One call's state from the event store.
pub async fn load(state: &CommandState, call_id: CallId) -> Result<Option<Call>, ApiError> {
    state
        .calls
        .load(&call_id.to_string())
        .await
        .map_err(execute_error)
}

/// When `committed` ended the call, puts the end into the conversation's timeline.
async fn post_end_if_ended(
    state: &CommandState,
    committed: &Committed<Call>,
    metadata: &domain::metadata::EventMetadata,
) -> Result<(), ApiError> {
    let ended = committed.events.iter().find_map(|event| match event {
        CallEvent::Ended {
            reason,
            duration_ms,
            ..
        } => Some((*reason, *duration_ms)),
        _ => None,
    });
    let Some((reason, duration_ms)) = ended else {
        return Ok(());
    };
    let call = &committed.aggregate;
    let (Some(call_id), Some(conversation_id), Some(initiator)) =
        (call.id(), call.conversation_id(), call.initiator())
    else {
        return Err(ApiError::internal("an ended call without its start"));
    };
    post_end(
        state,
        conversation_id,
        call_id,
        initiator,
        reason,
        duration_ms,
        metadata,
    )
    .await
}

async fn post_end(
    state: &CommandState,
    conversation_id: ConversationId,
    call_id: CallId,
    initiator_id: UserId,
    reason: EndReason,
    duration_ms: Option<i64>,
    metadata: &domain::metadata::EventMetadata,
) -> Result<(), ApiError> {
    state
        .conversations
        .execute(
            &conversation_id.to_string(),
            ConversationCommand::PostCallEnded {
                call_id,
                initiator_id,
                reason,
                duration_ms,
                at: metadata.recorded_at,
            },
            &state.conversation_services,
            metadata,
        )
        .await
        .map_err(conversation_error)?;
    Ok(())
}

/// Posts the end of a conversation's active call if that call is over, or if it never
/// started and its start was abandoned; true when the conversation is free now.
async fn settle_active_call(
    state: &CommandState,
    conversation_id: ConversationId,
    active: CallId,
    request_id: &RequestId,
) -> Result<bool, ApiError> {
    let call = load(state, active).await?;
    let metadata = metadata(None, request_id);
    match call {
        Some(call) if call.ended_at().is_some() => {
            let initiator = call
                .initiator()
                .ok_or_else(|| ApiError::internal("an ended call without its start"))?;
            post_end(
                state,
                conversation_id,
                active,
                initiator,
                call.end_reason().unwrap_or(EndReason::Cancelled),
                call.duration_ms(),
                &metadata,
            )
            .await?;
            Ok(true)
        }
        Some(_) => Ok(false),
        None => {
            let conversation = state
                .conversations
                .load(&conversation_id.to_string())
                .await
                .map_err(conversation_error)?;
            let Some((_, since)) = conversation.and_then(|conversation| conversation.active_call)
            else {
                return Ok(true);
            };
            let abandoned = Utc::now() - since
                > chrono::Duration::from_std(ABANDONED_START).unwrap_or_default();
            if abandoned {
                // The end message names whoever posted the start.
                let initiator = initiator_of_reservation(state, conversation_id, active).await?;
                post_end(
                    state,
                    conversation_id,
                    active,
                    initiator,
                    EndReason::Cancelled,
                    None,
                    &metadata,
                )
                .await?;
            }
            Ok(abandoned)
        }
    }
}

/// Who posted the start of `call_id` to the conversation (from its `ConversationCallStarted`).
async fn initiator_of_reservation(
    state: &CommandState,
    conversation_id: ConversationId,
    call_id: CallId,
) -> Result<UserId, ApiError> {
    let initiator: Option<String> = sqlx::query_scalar(
        "SELECT payload::jsonb -> 'CallStarted' ->> 'initiator_id' FROM events
          WHERE aggregate_type = 'conversation' AND aggregate_id = $1
            AND event_type = 'ConversationCallStarted'
            AND payload::jsonb -> 'CallStarted' ->> 'call_id' = $2",
    )
    .bind(conversation_id.to_string())
    .bind(call_id.to_string())
    .fetch_optional(&state.pool)
    .await?
    .flatten();
    initiator
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| ApiError::internal("an active call without its start in the timeline"))
}

/// Fires every ring timeout that is due; returns how many fired. Each row is locked, fired
/// and deleted in one transaction, so concurrent processes never fire the same one.
pub async fn fire_due_ring_timeouts(state: &CommandState) -> anyhow::Result<usize> {
    let mut transaction = state.pool.begin().await?;
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT call_id FROM call_ring_timeouts WHERE due_at <= now()
          ORDER BY due_at LIMIT 50 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *transaction)
    .await?;
    for call_id in &due {
        let call_id = CallId::from_uuid(*call_id);
        let metadata = domain::metadata::EventMetadata {
            actor_id: None,
            request_id: format!("ring-timeout:{call_id}"),
            recorded_at: Utc::now(),
        };
        let fired = state
            .calls
            .execute(
                &call_id.to_string(),
                CallCommand::RingTimeout {
                    at: metadata.recorded_at,
                },
                &(),
                &metadata,
            )
            .await;
        match fired {
            Ok(committed) => {
                post_end_if_ended(state, &committed, &metadata)
                    .await
                    .map_err(|error| anyhow::anyhow!("posting a missed call's end: {error:?}"))?;
            }
            // A timer whose call never started has nothing to time out.
            Err(ExecuteError::Domain(CallError::NotFound)) => {}
            Err(error) => anyhow::bail!("firing the ring timeout of {call_id}: {error}"),
        }
        sqlx::query("DELETE FROM call_ring_timeouts WHERE call_id = $1")
            .bind(call_id.as_uuid())
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(due.len())
}

/// Polls for due ring timeouts until `shutdown`.
pub async fn run_ring_timeouts(state: CommandState, every: Duration, shutdown: CancellationToken) {
    loop {
        match fire_due_ring_timeouts(&state).await {
            Ok(fired) if fired > 0 => {
                metrics::counter!("chat_call_ring_timeouts_total").increment(fired as u64);
                continue;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "ring timeouts"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// A call as it stood after its event at `sequence`, folded from the log (for pushes, which
/// show each change in turn).
pub async fn call_at(
    executor: impl sqlx::PgExecutor<'_>,
    call_id: Uuid,
    sequence: i64,
) -> anyhow::Result<Option<Call>> {
    store::fold(executor, &call_id.to_string(), Some(sequence)).await
}

/// When the next ring timeout is due, for tests and metrics.
pub async fn next_ring_timeout(pool: &sqlx::PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(due_at) FROM call_ring_timeouts")
        .fetch_one(pool)
        .await
}

fn execute_error(error: ExecuteError<CallError>) -> ApiError {
    match error {
        ExecuteError::Domain(error) => call_error(error),
        ExecuteError::Store(cause) => ApiError::unavailable(cause),
    }
}

pub fn call_error(error: CallError) -> ApiError {
    let detail = error.to_string();
    let code = error.code();
    match error {
        CallError::NotFound => ApiError::not_found(code, detail),
        CallError::AlreadyExists
        | CallError::Ended
        | CallError::AlreadyJoined
        | CallError::NotRinging
        | CallError::NotJoined => ApiError::conflict(code, detail),
        CallError::NotAllowed | CallError::NotAParticipant => {
            ApiError::new(StatusCode::FORBIDDEN, code, detail)
        }
        CallError::NoOneToCall => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail),
    }
}

fn conversation_not_found() -> ApiError {
    ApiError::not_found("conversation_not_found", "no such conversation")
}

fn call_not_found() -> ApiError {
    ApiError::not_found("call_not_found", "no such call")
}
