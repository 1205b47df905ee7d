//! Client frames. Each command frame does exactly what its REST twin does (the same function
//! in `command-api`), and is answered with `ack` (the REST representation) or `error` (the
//! problem's `code` and `detail`), carrying the client's `ref`.

use crate::PushState;
use crate::delivery::Addressed;
use command_api::conversations::{ReceiptsRequest, SendMessageRequest};
use domain::ConversationId;
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
    }
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
    let text = json!({"type": "typing", "conversation_id": conversation_id, "user_id": user_id})
        .to_string();
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
