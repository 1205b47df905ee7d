//! The AsyncAPI 3 document of the WebSocket protocol, served at `/api/v1/asyncapi.json`. The
//! lists here are the protocol: a test checks that every frame type and event name the code
//! sends or accepts is one of them.

use serde_json::{Map, Value, json};

/// Frames the server sends.
pub const SERVER_FRAMES: &[&str] = &[
    "ready",
    "event",
    "resumed",
    "ack",
    "error",
    "typing",
    "presence",
    "call.signal",
    "pong",
];

/// Frames the server accepts.
pub const CLIENT_FRAMES: &[&str] = &[
    "message.send",
    "receipt",
    "typing",
    "call.start",
    "call.accept",
    "call.decline",
    "call.leave",
    "call.end",
    "call.media",
    "call.signal",
    "ping",
];

/// The `event` names of `event` frames.
pub const EVENTS: &[&str] = &[
    "conversation.created",
    "conversation.updated",
    "member.added",
    "member.removed",
    "message.created",
    "message.edited",
    "message.deleted",
    "receipt.updated",
    "call.ringing",
    "call.updated",
    "call.ended",
    "user.updated",
];

fn string() -> Value {
    json!({"type": "string"})
}

fn object(properties: &[(&str, Value)], required: &[&str]) -> Value {
    let properties: Map<String, Value> = properties
        .iter()
        .map(|(name, schema)| ((*name).to_owned(), schema.clone()))
        .collect();
    json!({"type": "object", "properties": properties, "required": required})
}

fn frame_schema(kind: &str) -> Value {
    let type_field = ("type", json!({"const": kind}));
    let reference = (
        "ref",
        json!({"description": "chosen by the client, echoed back"}),
    );
    let uuid = json!({"type": "string", "format": "uuid"});
    let seq = json!({"type": "integer", "minimum": 0});
    match kind {
        "ready" => object(
            &[
                type_field,
                ("connection_id", uuid.clone()),
                ("user_id", uuid),
                ("cursor", string()),
                (
                    "heartbeat_ms",
                    json!({"type": "integer", "minimum": 1, "description": "the server sends a WebSocket ping when it has sent nothing else for this long"}),
                ),
            ],
            &["type", "connection_id", "user_id", "cursor", "heartbeat_ms"],
        ),
        "event" => object(
            &[
                type_field,
                ("event", json!({"enum": EVENTS})),
                ("cursor", string()),
                ("conversation_id", uuid),
                ("seq", seq),
                (
                    "data",
                    json!({"type": "object", "description": "the REST representation (Message, Conversation, ...)"}),
                ),
            ],
            &["type", "event", "cursor", "data"],
        ),
        "resumed" => object(
            &[
                type_field,
                ("recovered", json!({"type": "boolean"})),
                ("cursor", string()),
            ],
            &["type", "recovered", "cursor"],
        ),
        "ack" => object(
            &[
                type_field,
                reference,
                (
                    "result",
                    json!({"description": "the REST representation the command produced"}),
                ),
            ],
            &["type", "ref", "result"],
        ),
        "error" => object(
            &[
                type_field,
                reference,
                ("code", string()),
                ("detail", string()),
            ],
            &["type", "code", "detail"],
        ),
        "typing" if SERVER_FRAMES.contains(&kind) => object(
            &[
                type_field,
                ("conversation_id", uuid.clone()),
                ("user_id", uuid),
            ],
            &["type", "conversation_id"],
        ),
        "presence" => object(
            &[
                type_field,
                ("user_id", uuid),
                ("online", json!({"type": "boolean"})),
                (
                    "last_seen_at",
                    json!({"type": ["string", "null"], "format": "date-time"}),
                ),
            ],
            &["type", "user_id", "online"],
        ),
        "message.send" => object(
            &[
                type_field,
                reference,
                ("conversation_id", uuid.clone()),
                ("client_message_id", string()),
                ("body", string()),
                (
                    "attachment_ids",
                    json!({"type": "array", "items": uuid.clone()}),
                ),
                ("reply_to_id", uuid),
            ],
            &["type", "conversation_id", "client_message_id"],
        ),
        "receipt" => object(
            &[
                type_field,
                reference,
                ("conversation_id", uuid),
                ("delivered_seq", seq.clone()),
                ("read_seq", seq),
            ],
            &["type", "conversation_id"],
        ),
        "call.start" => object(
            &[
                type_field,
                reference,
                ("conversation_id", uuid),
                ("media", json!({"enum": ["audio", "video"]})),
            ],
            &["type", "conversation_id", "media"],
        ),
        "call.accept" | "call.decline" | "call.leave" | "call.end" => object(
            &[type_field, reference, ("call_id", uuid)],
            &["type", "call_id"],
        ),
        "call.media" => object(
            &[
                type_field,
                reference,
                ("call_id", uuid),
                ("audio", json!({"type": "boolean"})),
                ("video", json!({"type": "boolean"})),
                ("screen", json!({"type": "boolean"})),
            ],
            &["type", "call_id", "audio", "video", "screen"],
        ),
        // Client to server it names the recipient; server to client, the sender.
        "call.signal" => object(
            &[
                type_field,
                ("call_id", uuid.clone()),
                ("to_user_id", uuid.clone()),
                ("from_user_id", uuid),
                (
                    "signal",
                    json!({"description": "opaque WebRTC signalling: SDP offer or answer, ICE candidate, renegotiation"}),
                ),
            ],
            &["type", "call_id", "signal"],
        ),
        _ => object(&[type_field, reference], &["type"]),
    }
}

/// The whole document.
pub fn document() -> Value {
    let mut messages = Map::new();
    let mut server = Vec::new();
    let mut client = Vec::new();
    for (direction, kinds, list) in [
        ("server", SERVER_FRAMES, &mut server),
        ("client", CLIENT_FRAMES, &mut client),
    ] {
        for kind in kinds {
            let name = format!("{direction}.{kind}");
            messages.insert(name.clone(), json!({"name": kind, "title": kind, "contentType": "application/json", "payload": frame_schema(kind)}));
            list.push(json!({"$ref": format!("#/channels/socket/messages/{name}")}));
        }
    }
    let channel_messages: Map<String, Value> = messages
        .keys()
        .map(|name| {
            (
                name.clone(),
                json!({"$ref": format!("#/components/messages/{name}")}),
            )
        })
        .collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "chatd WebSocket protocol",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "JSON text frames with a `type`. Command frames carry a client-chosen `ref` and are answered by `ack` or `error` with the same `ref`. Reconnect with `?cursor=<last cursor>` to resume."
        },
        "servers": {
            "chatd": {"host": "localhost:8080", "protocol": "ws", "pathname": "/api/v1/ws",
                      "description": "Token in the Authorization header or the access_token query parameter."}
        },
        "channels": {"socket": {"address": "/api/v1/ws", "messages": channel_messages}},
        "operations": {
            "receive": {"action": "receive", "channel": {"$ref": "#/channels/socket"}, "messages": server},
            "send": {"action": "send", "channel": {"$ref": "#/channels/socket"}, "messages": client}
        },
        "components": {"messages": messages}
    })
}
