//! Client frames. Each command frame does exactly what its REST twin does (the same function
//! in `command-api`), and is answered with `ack` (the REST representation) or `error` (the
//! problem's `code` and `detail`), carrying the client's `ref`.

use crate::PushState;
use crate::delivery::Addressed;
use axum::extract::ws::Utf8Bytes;
use command_api::calls::CallAction;
use command_api::conversations::{ReceiptsRequest, SendMessageRequest};
use domain::call::CallMedia;
use domain::{CallId, ConversationId};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use web::{ApiError, Caller, RequestId};

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ClientFrame {
    #[serde(rename = "ping")]
    Ping {
        #[serde(rename = "ref")]
        reference: Option<Value>,
    },
    #[serde(rename = "message.send")]
    MessageSend {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        conversation_id: Uuid,
        client_message_id: String,
        body: Option<String>,
        #[serde(default)]
        attachment_ids: Vec<Uuid>,
        reply_to_id: Option<Uuid>,
    },
    #[serde(rename = "typing")]
    Typing {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        conversation_id: Uuid,
    },
    #[serde(rename = "receipt")]
    Receipt {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        conversation_id: Uuid,
        delivered_seq: Option<i64>,
        read_seq: Option<i64>,
    },
    #[serde(rename = "call.start")]
    CallStart {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        conversation_id: Uuid,
        media: CallMedia,
    },
    #[serde(rename = "call.accept")]
    CallAccept {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        call_id: Uuid,
    },
    #[serde(rename = "call.decline")]
    CallDecline {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        call_id: Uuid,
    },
    #[serde(rename = "call.leave")]
    CallLeave {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        call_id: Uuid,
    },
    #[serde(rename = "call.end")]
    CallEnd {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        call_id: Uuid,
    },
    #[serde(rename = "call.media")]
    CallMediaFlags {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        call_id: Uuid,
        audio: bool,
        video: bool,
        screen: bool,
    },
    /// Opaque WebRTC signalling (SDP offer or answer, ICE candidate, renegotiation) for one
    /// other participant of the same call.
    #[serde(rename = "call.signal")]
    CallSignal {
        #[serde(rename = "ref")]
        reference: Option<Value>,
        call_id: Uuid,
        to_user_id: Uuid,
        signal: Value,
    },
}

pub fn error(reference: Value, code: &str, detail: &str) -> Value {
    json!({"type": "error", "ref": reference, "code": code, "detail": detail})
}

fn ack(reference: Value, result: Value) -> Value {
    json!({"type": "ack", "ref": reference, "result": result})
}

fn problem(reference: Value, error: &ApiError) -> Value {
    json!({"type": "error", "ref": reference, "code": error.code, "detail": error.detail})
}

/// Carries out one text frame and returns the reply to send, if any.
pub async fn handle(state: &PushState, caller: &Caller, text: &str) -> Option<Value> {
    let commands = &state.commands;
    let raw: Value = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(_) => {
            return Some(error(
                Value::Null,
                "malformed_frame",
                "a frame is a JSON object with a type",
            ));
        }
    };
    let reference = raw.get("ref").cloned().unwrap_or(Value::Null);
    let frame: ClientFrame = match serde_json::from_value(raw) {
        Ok(frame) => frame,
        Err(cause) => return Some(error(reference, "invalid_frame", &cause.to_string())),
    };
    let request_id = RequestId(Uuid::now_v7().to_string());
    match frame {
        ClientFrame::Ping { reference } => {
            Some(json!({"type": "pong", "ref": reference.unwrap_or(Value::Null)}))
        }
        ClientFrame::MessageSend {
            reference,
            conversation_id,
            client_message_id,
            body,
            attachment_ids,
            reply_to_id,
        } => {
            let reference = reference.unwrap_or(Value::Null);
            let request = SendMessageRequest {
                client_message_id: Some(client_message_id),
                body,
                attachment_ids,
                reply_to_id,
            };
            let conversation_id = ConversationId::from_uuid(conversation_id);
            match command_api::conversations::send(
                commands,
                &request_id,
                caller.user_id,
                conversation_id,
                request,
                None,
            )
            .await
            {
                Ok((message, _)) => Some(ack(
                    reference,
                    serde_json::to_value(message).unwrap_or(Value::Null),
                )),
                Err(failure) => Some(problem(reference, &failure)),
            }
        }
        ClientFrame::Typing {
            reference,
            conversation_id,
        } => match relay_typing(state, caller.user_id, conversation_id).await {
            Ok(()) => None,
            Err(failure) => Some(problem(reference.unwrap_or(Value::Null), &failure)),
        },
        ClientFrame::Receipt {
            reference,
            conversation_id,
            delivered_seq,
            read_seq,
        } => {
            let request = ReceiptsRequest {
                delivered_seq,
                read_seq,
            };
            let conversation_id = ConversationId::from_uuid(conversation_id);
            let outcome = command_api::conversations::receipts(
                commands,
                &request_id,
                caller.user_id,
                conversation_id,
                request,
            )
            .await;
            // A receipt without a ref is fire-and-forget: only failures are answered.
            match (outcome, reference) {
                (Ok(_), Some(reference)) => Some(ack(reference, Value::Null)),
                (Ok(_), None) => None,
                (Err(failure), reference) => {
                    Some(problem(reference.unwrap_or(Value::Null), &failure))
                }
            }
        }
        ClientFrame::CallStart {
            reference,
            conversation_id,
            media,
        } => {
            let outcome = command_api::calls::start(
                commands,
                &request_id,
                caller.user_id,
                ConversationId::from_uuid(conversation_id),
                media,
            )
            .await;
            Some(answer(reference, outcome))
        }
        ClientFrame::CallAccept { reference, call_id } => Some(
            call_action(
                state,
                caller,
                &request_id,
                reference,
                call_id,
                CallAction::Accept,
            )
            .await,
        ),
        ClientFrame::CallDecline { reference, call_id } => Some(
            call_action(
                state,
                caller,
                &request_id,
                reference,
                call_id,
                CallAction::Decline,
            )
            .await,
        ),
        ClientFrame::CallLeave { reference, call_id } => Some(
            call_action(
                state,
                caller,
                &request_id,
                reference,
                call_id,
                CallAction::Leave,
            )
            .await,
        ),
        ClientFrame::CallEnd { reference, call_id } => Some(
            call_action(
                state,
                caller,
                &request_id,
                reference,
                call_id,
                CallAction::End,
            )
            .await,
        ),
        ClientFrame::CallMediaFlags {
            reference,
            call_id,
            audio,
            video,
            screen,
        } => {
            let action = CallAction::Media {
                audio,
                video,
                screen,
            };
            Some(call_action(state, caller, &request_id, reference, call_id, action).await)
        }
        // A relayed signal is not acknowledged; a refused one is answered without the ref, as
        // the contract says, whatever the client sent.
        ClientFrame::CallSignal {
            call_id,
            to_user_id,
            signal,
            ..
        } => relay_signal(state, caller.user_id, call_id, to_user_id, signal)
            .await
            .err()
            .map(
                |failure| json!({"type": "error", "code": failure.code, "detail": failure.detail}),
            ),
    }
}

fn answer(
    reference: Option<Value>,
    outcome: Result<(web::dto::Call, store::StreamPosition), ApiError>,
) -> Value {
    let reference = reference.unwrap_or(Value::Null);
    match outcome {
        Ok((call, _)) => ack(reference, serde_json::to_value(call).unwrap_or(Value::Null)),
        Err(failure) => problem(reference, &failure),
    }
}

async fn call_action(
    state: &PushState,
    caller: &Caller,
    request_id: &RequestId,
    reference: Option<Value>,
    call_id: Uuid,
    action: CallAction,
) -> Value {
    let outcome = command_api::calls::act(
        &state.commands,
        request_id,
        caller.user_id,
        CallId::from_uuid(call_id),
        action,
    )
    .await;
    answer(reference, outcome)
}

/// Relays a signal between two participants (ringing or joined) of the same call, to every
/// connection of the recipient on any node. Nothing of it is stored or logged.
async fn relay_signal(
    state: &PushState,
    from: Uuid,
    call_id: Uuid,
    to: Uuid,
    signal: Value,
) -> Result<(), ApiError> {
    let not_a_participant = || {
        ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "not_a_participant",
            "signals go between participants of the same call",
        )
    };
    let call = command_api::calls::load(&state.commands, CallId::from_uuid(call_id))
        .await?
        .ok_or_else(not_a_participant)?;
    let participant = |user: Uuid| call.is_participant(domain::UserId::from_uuid(user));
    if from == to || !participant(from) || !participant(to) {
        return Err(not_a_participant());
    }
    let text: Utf8Bytes =
        json!({"type": "call.signal", "call_id": call_id, "from_user_id": from, "signal": signal})
            .to_string()
            .into();
    metrics::counter!("chat_call_signals_total").increment(1);
    state
        .delivery
        .deliver(vec![Addressed {
            user_id: to,
            cursor: None,
            text,
        }])
        .await
        .map_err(ApiError::unavailable)
}

/// Typing never touches the event log: it goes straight to the other members' connections,
/// at most once a second per user and conversation (more are dropped quietly).
async fn relay_typing(
    state: &PushState,
    user_id: Uuid,
    conversation_id: Uuid,
) -> Result<(), ApiError> {
    let members: Vec<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM push_members WHERE conversation_id = $1")
            .bind(conversation_id)
            .fetch_all(&state.commands.pool)
            .await?;
    if !members.contains(&user_id) {
        return Err(ApiError::not_found(
            "conversation_not_found",
            "no such conversation",
        ));
    }
    let mut redis = state.redis.clone();
    let admitted: Option<String> = redis::cmd("SET")
        .arg(format!(
            "{}:typing:{user_id}:{conversation_id}",
            state.namespace
        ))
        .arg(1)
        .arg("PX")
        .arg(1000)
        .arg("NX")
        .query_async(&mut redis)
        .await
        .map_err(ApiError::unavailable)?;
    if admitted.is_none() {
        return Ok(());
    }
    let text: Utf8Bytes =
        json!({"type": "typing", "conversation_id": conversation_id, "user_id": user_id})
            .to_string()
            .into();
    let frames = members
        .into_iter()
        .filter(|member| *member != user_id)
        .map(|member| Addressed {
            user_id: member,
            cursor: None,
            text: text.clone(),
        })
        .collect();
    state
        .delivery
        .deliver(frames)
        .await
        .map_err(ApiError::unavailable)
}
