//! Client frames. Each command frame does exactly what its REST twin does (the same function
//! in `command-api`), and is answered with `ack` (the REST representation) or `error` (the
//! problem's `code` and `detail`), carrying the client's `ref`.

use command_api::CommandState;
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
pub async fn handle(commands: &CommandState, caller: &Caller, text: &str) -> Option<Value> {
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
