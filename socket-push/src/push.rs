//! The push router: consumes every event (one node at a time, so in order), works out who must
//! hear of it (the conversation's members at that event), appends the frame to each
//! recipient's inbox (a Redis stream, whose ids are the cursors clients resume from) and hands
//! it to their connections.

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use bus::{EventMessage, Topology};
use cqrs_es::Aggregate;
use domain::UserId;
use domain::account::{Account, AccountEvent};
use domain::conversation::{Conversation, ConversationEvent};
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};
use std::collections::HashMap;
use std::sync::Arc;
use store::AggregateStore;
use uuid::Uuid;
use web::dto::{Message, rfc3339_string};

use crate::delivery::{Addressed, Delivery};

/// How many events a user's inbox keeps for resuming (approximately; Redis trims lazily).
pub const INBOX_LENGTH: usize = 10_000;

/// One event for some users: the `event` frame without its cursor (each recipient's inbox
/// gives its own).
pub struct Push {
    pub recipients: Vec<Uuid>,
    pub frame: Value,
    /// The sender of a message sees its `status`.
    pub sender_id: Option<Uuid>,
    /// The event this push comes from (`aggregate_type:aggregate_id`, sequence): a batch
    /// delivered again after a crash is not pushed twice.
    pub stream: String,
    pub sequence: i64,
}

pub struct PushRouter {
    pub redis: ConnectionManager,
    pub namespace: String,
    pub conversations: Arc<AggregateStore<Conversation>>,
    pub accounts: Arc<AggregateStore<Account>>,
    pub delivery: Delivery,
    /// Mints the media links in pushed messages and avatars.
    pub links: web::MediaLinks,
}

pub fn inbox_key(namespace: &str, user_id: Uuid) -> String {
    format!("{namespace}:inbox:{user_id}")
}

#[async_trait]
impl projector::Handler for PushRouter {
    type Output = Push;

    fn name(&self) -> &'static str {
        "push"
    }

    fn queue(&self, topology: &Topology) -> String {
        topology.push_queue()
    }

    fn positions_table(&self) -> &'static str {
        "push_positions"
    }

    async fn apply(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        event: &EventMessage,
    ) -> anyhow::Result<Vec<Push>> {
        let mut pushes = match event.aggregate_type.as_str() {
            Conversation::TYPE => {
                let (conversation_id, payload) = conversation_event(event)?;
                self.route(transaction, conversation_id, payload).await?
            }
            Account::TYPE => {
                let user_id: Uuid = event.aggregate_id.parse()?;
                let payload: AccountEvent =
                    serde_json::from_value(domain::upcasting::upcast_payload(
                        &event.aggregate_type,
                        &event.event_type,
                        &event.event_version,
                        event.payload.clone(),
                    ))?;
                self.route_account(transaction, user_id, payload).await?
            }
            domain::call::Call::TYPE => {
                let call_id: Uuid = event.aggregate_id.parse()?;
                self.route_call(transaction, call_id, event).await?
            }
            _ => Vec::new(),
        };
        for push in &mut pushes {
            push.stream = format!("{}:{}", event.aggregate_type, event.aggregate_id);
            push.sequence = event.sequence;
        }
        Ok(pushes)
    }

    /// Runs of `MessageSent` events (the bulk of the traffic) share one members query; every
    /// other event is routed on its own, in order. A message changes no membership, so the
    /// members read for a run are those at each of its events.
    async fn apply_all(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        events: &[&EventMessage],
    ) -> anyhow::Result<Vec<Push>> {
        let is_message = |event: &EventMessage| {
            event.aggregate_type == Conversation::TYPE && event.event_type == "MessageSent"
        };
        let mut pushes = Vec::new();
        let mut rest = events;
        while let Some(first) = rest.first() {
            if !is_message(first) {
                pushes.extend(self.apply(transaction, first).await?);
                rest = &rest[1..];
                continue;
            }
            let length = rest
                .iter()
                .position(|event| !is_message(event))
                .unwrap_or(rest.len());
            let (run, after) = rest.split_at(length);
            pushes.extend(self.route_messages(transaction, run).await?);
            rest = after;
        }
        Ok(pushes)
    }

    async fn before_commit(&self, pushes: Vec<Push>) -> anyhow::Result<()> {
        let pushes = self.not_yet_pushed(pushes).await?;
        if pushes.is_empty() {
            return Ok(());
        }
        // Every frame goes into each recipient's inbox first (one pipeline for the batch);
        // the stream id it gets is the cursor the frame carries. A frame is serialised once
        // per push (twice when the sender, who sees its `status`, is among the recipients);
        // each recipient's copy only has its cursor spliced in.
        let mut pipeline = redis::pipe();
        let mut frames: Vec<(Uuid, Utf8Bytes)> = Vec::new();
        for push in &pushes {
            let text = Utf8Bytes::from(push.frame.to_string());
            let sender_text = push
                .sender_id
                .filter(|sender| push.recipients.contains(sender))
                .and_then(|_| {
                    let mut frame = push.frame.clone();
                    let data = frame.get_mut("data")?;
                    if data.get("kind").is_none_or(|kind| kind == "system") {
                        return None;
                    }
                    data["status"] = json!("sent");
                    Some(Utf8Bytes::from(frame.to_string()))
                });
            for recipient in &push.recipients {
                let text = match &sender_text {
                    Some(sender_text) if push.sender_id == Some(*recipient) => sender_text,
                    _ => &text,
                };
                pipeline
                    .cmd("XADD")
                    .arg(inbox_key(&self.namespace, *recipient))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(INBOX_LENGTH)
                    .arg("*")
                    .arg("f")
                    .arg(text.as_str().as_bytes());
                frames.push((*recipient, text.clone()));
            }
        }
        // Recorded with the frames, in the same pipeline: what is in an inbox is marked pushed.
        let mut pushed: HashMap<&str, i64> = HashMap::new();
        for push in &pushes {
            let entry = pushed.entry(push.stream.as_str()).or_insert(push.sequence);
            *entry = (*entry).max(push.sequence);
        }
        for (stream, sequence) in &pushed {
            pipeline
                .cmd("HSET")
                .arg(self.pushed_key())
                .arg(*stream)
                .arg(*sequence)
                .ignore();
        }
        let mut redis = self.redis.clone();
        let ids: Vec<String> = pipeline.query_async(&mut redis).await?;
        let addressed = frames
            .into_iter()
            .zip(ids)
            .map(|((user_id, text), id)| Addressed {
                user_id,
                text,
                cursor: Some(id),
            })
            .collect();
        self.delivery.deliver(addressed).await
    }
}

impl PushRouter {
    fn pushed_key(&self) -> String {
        format!("{}:pushed", self.namespace)
    }

    /// Drops the pushes of events already pushed (a batch redelivered after a crash).
    async fn not_yet_pushed(&self, pushes: Vec<Push>) -> anyhow::Result<Vec<Push>> {
        if pushes.is_empty() {
            return Ok(pushes);
        }
        let mut streams: Vec<&str> = pushes.iter().map(|push| push.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let mut redis = self.redis.clone();
        let done: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(self.pushed_key())
            .arg(&streams)
            .query_async(&mut redis)
            .await?;
        let done: HashMap<String, i64> = streams
            .into_iter()
            .zip(done)
            .filter_map(|(stream, sequence)| sequence.map(|sequence| (stream.to_owned(), sequence)))
            .collect();
        Ok(pushes
            .into_iter()
            .filter(|push| {
                done.get(&push.stream)
                    .is_none_or(|last| push.sequence > *last)
            })
            .collect())
    }

    /// Profile changes reach the user's other devices and everyone who shares a conversation.
    async fn route_account(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        user_id: Uuid,
        event: AccountEvent,
    ) -> anyhow::Result<Vec<Push>> {
        if !matches!(event, AccountEvent::ProfileUpdated { .. }) {
            return Ok(Vec::new());
        }
        let Some(account) = self
            .accounts
            .load(&user_id.to_string())
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?
        else {
            return Ok(Vec::new());
        };
        let mut recipients: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT other.user_id FROM push_members me
               JOIN push_members other ON other.conversation_id = me.conversation_id
              WHERE me.user_id = $1",
        )
        .bind(user_id)
        .fetch_all(&mut **transaction)
        .await?;
        if !recipients.contains(&user_id) {
            recipients.push(user_id);
        }
        let online = self.delivery.user_map.live_connections(user_id).await? > 0;
        let avatar = match account.avatar_media_id {
            Some(media_id) => command_api::media::attachment_from_log(&mut **transaction, media_id)
                .await?
                .map(|attachment| self.links.media(&attachment, chrono::Utc::now())),
            None => None,
        };
        let user = json!({
            "id": user_id,
            "username": account.username.as_ref().map(|name| name.as_str()),
            "display_name": account.display_name.as_ref().map(|name| name.as_str()),
            "bio": account.bio.as_ref().map(|bio| bio.as_str()),
            "avatar": avatar,
            "online": online,
            "last_seen_at": null,
            "created_at": account.created_at.as_ref().map(rfc3339_string),
        });
        let frame = json!({"type": "event", "event": "user.updated", "data": user});
        Ok(vec![Push {
            recipients,
            frame,
            sender_id: None,
            stream: String::new(),
            sequence: 0,
        }])
    }

    /// Every change of a call reaches every member of its conversation (all their devices):
    /// `call.ringing` at the start, `call.ended` at the end, `call.updated` in between, each
    /// with the call as it stood after that change.
    async fn route_call(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        call_id: Uuid,
        event: &EventMessage,
    ) -> anyhow::Result<Vec<Push>> {
        let name = match event.event_type.as_str() {
            "CallStarted" => "call.ringing",
            "CallEnded" => "call.ended",
            _ => "call.updated",
        };
        let Some(call) =
            command_api::calls::call_at(&mut **transaction, call_id, event.sequence).await?
        else {
            return Ok(Vec::new());
        };
        let data = web::dto::Call::from_state(&call)
            .ok_or_else(|| anyhow::anyhow!("call {call_id} has no start"))?;
        let conversation_id = data.conversation_id;
        let members = Self::members(transaction, conversation_id).await?;
        let frame = json!({"type": "event", "event": name, "conversation_id": conversation_id, "data": data});
        Ok(vec![Push {
            recipients: members,
            frame,
            sender_id: None,
            stream: String::new(),
            sequence: 0,
        }])
    }

    /// `MessageSent` events, with the members of all their conversations read in one query.
    async fn route_messages(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        run: &[&EventMessage],
    ) -> anyhow::Result<Vec<Push>> {
        let mut sent = Vec::with_capacity(run.len());
        for event in run {
            let (conversation_id, payload) = conversation_event(event)?;
            sent.push((conversation_id, payload, *event));
        }
        let mut conversations: Vec<Uuid> = sent.iter().map(|(id, _, _)| *id).collect();
        conversations.sort_unstable();
        conversations.dedup();
        // One row per conversation: a 1,000-member group is one array, not 1,000 rows to decode.
        let members: HashMap<Uuid, Vec<Uuid>> = sqlx::query_as::<_, (Uuid, Vec<Uuid>)>(
            "SELECT conversation_id, array_agg(user_id ORDER BY user_id) FROM push_members
              WHERE conversation_id = ANY($1) GROUP BY conversation_id",
        )
        .bind(&conversations)
        .fetch_all(&mut **transaction)
        .await?
        .into_iter()
        .collect();
        let mut pushes = Vec::with_capacity(sent.len());
        for (conversation_id, payload, event) in sent {
            let recipients = members.get(&conversation_id).cloned().unwrap_or_default();
            if recipients.is_empty() {
                continue;
            }
            let mut push = self.message_push(conversation_id, &payload, recipients)?;
            push.stream = format!("{}:{}", event.aggregate_type, event.aggregate_id);
            push.sequence = event.sequence;
            pushes.push(push);
        }
        Ok(pushes)
    }

    /// The `message.created` push of a `MessageSent` event.
    fn message_push(
        &self,
        conversation_id: Uuid,
        sent: &ConversationEvent,
        recipients: Vec<Uuid>,
    ) -> anyhow::Result<Push> {
        let ConversationEvent::MessageSent { seq, sender_id, .. } = sent else {
            anyhow::bail!("a message push for an event that sends no message");
        };
        let message = Message::sent(conversation_id, sent, &self.links)
            .ok_or_else(|| anyhow::anyhow!("MessageSent without a message"))?;
        let frame = json!({"type": "event", "event": "message.created", "conversation_id": conversation_id, "seq": seq, "data": serde_json::to_value(message)?});
        Ok(Push {
            recipients,
            frame,
            sender_id: Some(sender_id.as_uuid()),
            stream: String::new(),
            sequence: 0,
        })
    }

    async fn members(
        transaction: &mut Transaction<'_, Postgres>,
        conversation_id: Uuid,
    ) -> anyhow::Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT user_id FROM push_members WHERE conversation_id = $1 ORDER BY user_id",
        )
        .bind(conversation_id)
        .fetch_all(&mut **transaction)
        .await?)
    }

    async fn add_members(
        transaction: &mut Transaction<'_, Postgres>,
        conversation_id: Uuid,
        user_ids: &[Uuid],
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO push_members (conversation_id, user_id) SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(conversation_id)
        .bind(user_ids)
        .execute(&mut **transaction)
        .await?;
        Ok(())
    }

    /// The conversation as its aggregate now stands, in the REST shape (without the
    /// caller-specific `last_message` and `unread_count`, which REST gives).
    async fn conversation(&self, conversation_id: Uuid) -> anyhow::Result<Value> {
        let state = self
            .conversations
            .load(&conversation_id.to_string())
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?
            .unwrap_or_default();
        let members: Vec<Value> = state
            .members
            .iter()
            .map(|(user_id, member)| json!({"user_id": user_id, "role": member.role.as_str(), "joined_at": rfc3339_string(&member.joined_at)}))
            .collect();
        Ok(json!({
            "id": conversation_id,
            "type": state.kind.map(|kind| serde_json::to_value(kind).unwrap_or(Value::Null)),
            "title": state.title.as_ref().map(|title| title.as_str()),
            "owner_id": state.owner_id,
            "members": members,
            "last_message": null,
            "unread_count": 0,
            "last_seq": state.last_seq,
            "created_at": state.created_at.as_ref().map(rfc3339_string),
            "last_activity_at": state.last_activity_at.as_ref().map(rfc3339_string),
        }))
    }

    async fn route(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        conversation_id: Uuid,
        event: ConversationEvent,
    ) -> anyhow::Result<Vec<Push>> {
        let frame = |name: &str, seq: Option<i64>, data: Value| {
            let mut frame = json!({"type": "event", "event": name, "conversation_id": conversation_id, "data": data});
            if let Some(seq) = seq {
                frame["seq"] = json!(seq);
            }
            frame
        };
        let push = |recipients: Vec<Uuid>, frame: Value| Push {
            recipients,
            frame,
            sender_id: None,
            stream: String::new(),
            sequence: 0,
        };
        let pushes = match event {
            ConversationEvent::Created { members, .. } => {
                let user_ids: Vec<Uuid> = members
                    .iter()
                    .map(|(user_id, _)| user_id.as_uuid())
                    .collect();
                Self::add_members(transaction, conversation_id, &user_ids).await?;
                vec![push(
                    user_ids,
                    frame(
                        "conversation.created",
                        None,
                        self.conversation(conversation_id).await?,
                    ),
                )]
            }
            ConversationEvent::Renamed { by, title, seq, at } => {
                let members = Self::members(transaction, conversation_id).await?;
                let system = system_message(
                    conversation_id,
                    seq,
                    by,
                    json!({"action": "renamed", "actor_id": by, "title": title.as_str()}),
                    at,
                );
                vec![
                    push(
                        members.clone(),
                        frame(
                            "conversation.updated",
                            None,
                            self.conversation(conversation_id).await?,
                        ),
                    ),
                    push(members, frame("message.created", Some(seq), system)),
                ]
            }
            ConversationEvent::MemberAdded {
                by,
                user_id,
                role,
                seq,
                at,
            } => {
                Self::add_members(transaction, conversation_id, &[user_id.as_uuid()]).await?;
                let members = Self::members(transaction, conversation_id).await?;
                let system = system_message(
                    conversation_id,
                    seq,
                    by,
                    json!({"action": "member_added", "actor_id": by, "user_id": user_id}),
                    at,
                );
                vec![
                    push(
                        vec![user_id.as_uuid()],
                        frame(
                            "conversation.created",
                            None,
                            self.conversation(conversation_id).await?,
                        ),
                    ),
                    push(
                        members.clone(),
                        frame(
                            "member.added",
                            None,
                            json!({"conversation_id": conversation_id, "user_id": user_id, "role": role.as_str(), "by": by}),
                        ),
                    ),
                    push(members, frame("message.created", Some(seq), system)),
                ]
            }
            ConversationEvent::MemberRemoved {
                by,
                user_id,
                new_owner_id,
                seq,
                at,
            } => {
                let before = Self::members(transaction, conversation_id).await?;
                sqlx::query("DELETE FROM push_members WHERE conversation_id = $1 AND user_id = $2")
                    .bind(conversation_id)
                    .bind(user_id.as_uuid())
                    .execute(&mut **transaction)
                    .await?;
                let after: Vec<Uuid> = before
                    .iter()
                    .copied()
                    .filter(|member| *member != user_id.as_uuid())
                    .collect();
                let action = if by == user_id {
                    "member_left"
                } else {
                    "member_removed"
                };
                let system = system_message(
                    conversation_id,
                    seq,
                    by,
                    json!({"action": action, "actor_id": by, "user_id": user_id, "new_owner_id": new_owner_id}),
                    at,
                );
                vec![
                    push(
                        before,
                        frame(
                            "member.removed",
                            None,
                            json!({"conversation_id": conversation_id, "user_id": user_id, "by": by, "new_owner_id": new_owner_id}),
                        ),
                    ),
                    push(after, frame("message.created", Some(seq), system)),
                ]
            }
            sent @ ConversationEvent::MessageSent { .. } => {
                let members = Self::members(transaction, conversation_id).await?;
                vec![self.message_push(conversation_id, &sent, members)?]
            }
            ConversationEvent::MessageEdited {
                message_id,
                seq,
                body,
                at,
            } => {
                let members = Self::members(transaction, conversation_id).await?;
                let mut message = original_message(
                    transaction,
                    &self.links,
                    conversation_id,
                    message_id.as_uuid(),
                )
                .await?;
                message["body"] = json!(body.as_str());
                message["edited_at"] = json!(rfc3339_string(&at));
                vec![push(members, frame("message.edited", Some(seq), message))]
            }
            ConversationEvent::MessageDeleted {
                message_id, seq, ..
            } => {
                let members = Self::members(transaction, conversation_id).await?;
                let mut message = original_message(
                    transaction,
                    &self.links,
                    conversation_id,
                    message_id.as_uuid(),
                )
                .await?;
                message["body"] = Value::Null;
                message["attachments"] = json!([]);
                message["deleted"] = json!(true);
                vec![push(members, frame("message.deleted", Some(seq), message))]
            }
            event @ (ConversationEvent::CallStarted { .. }
            | ConversationEvent::CallEnded { .. }) => {
                let members = Self::members(transaction, conversation_id).await?;
                let message = Message::call(conversation_id, &event)
                    .ok_or_else(|| anyhow::anyhow!("a call event without its message"))?;
                let seq = message.seq;
                vec![push(
                    members,
                    frame("message.created", Some(seq), serde_json::to_value(message)?),
                )]
            }
            ConversationEvent::ReceiptsMoved {
                user_id,
                delivered_seq,
                read_seq,
                ..
            } => {
                let members = Self::members(transaction, conversation_id).await?;
                let data = json!({"conversation_id": conversation_id, "user_id": user_id, "delivered_seq": delivered_seq, "read_seq": read_seq});
                vec![push(members, frame("receipt.updated", None, data))]
            }
        };
        Ok(pushes
            .into_iter()
            .filter(|push| !push.recipients.is_empty())
            .collect())
    }
}

/// `frame` (a serialised JSON object) with `"cursor": cursor` added as its last member.
/// Cursors are Redis stream ids (`digits-digits`), which need no escaping.
pub fn with_cursor(frame: &str, cursor: &str) -> String {
    debug_assert!(
        frame.ends_with('}')
            && cursor
                .bytes()
                .all(|byte| byte.is_ascii_digit() || byte == b'-')
    );
    let body = frame.trim_end().strip_suffix('}').unwrap_or(frame);
    let separator = if body.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    let mut text = String::with_capacity(body.len() + cursor.len() + 14);
    text.push_str(body);
    text.push_str(separator);
    text.push_str("\"cursor\":\"");
    text.push_str(cursor);
    text.push_str("\"}");
    text
}

/// A conversation event off the wire, upcast to its current shape, with its conversation.
fn conversation_event(event: &EventMessage) -> anyhow::Result<(Uuid, ConversationEvent)> {
    let payload = domain::upcasting::upcast_payload(
        &event.aggregate_type,
        &event.event_type,
        &event.event_version,
        event.payload.clone(),
    );
    Ok((
        event.aggregate_id.parse()?,
        serde_json::from_value(payload)?,
    ))
}

fn system_message(
    conversation_id: Uuid,
    seq: i64,
    actor: UserId,
    system: Value,
    at: chrono::DateTime<chrono::Utc>,
) -> Value {
    let message = Message::system(conversation_id, seq, actor.as_uuid(), system, at);
    serde_json::to_value(message).unwrap_or(Value::Null)
}

/// The message as first sent (from its `MessageSent` event), in the REST shape.
async fn original_message(
    transaction: &mut Transaction<'_, Postgres>,
    links: &web::MediaLinks,
    conversation_id: Uuid,
    message_id: Uuid,
) -> anyhow::Result<Value> {
    let sent =
        command_api::conversations::sent_event(&mut **transaction, conversation_id, message_id)
            .await?;
    let message = Message::sent(conversation_id, &sent, links).ok_or_else(|| {
        anyhow::anyhow!("message {message_id} is not indexed to a MessageSent event")
    })?;
    Ok(serde_json::to_value(message)?)
}

#[cfg(test)]
mod tests {
    use super::with_cursor;
    use serde_json::{Value, json};

    #[test]
    fn the_cursor_is_spliced_into_the_serialised_frame() {
        let frame = json!({"type": "event", "event": "message.created", "data": {"body": "}\"{"}});
        let text = with_cursor(&frame.to_string(), "1732000000000-7");
        let parsed: Value =
            serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"));
        let mut expected = frame;
        expected["cursor"] = json!("1732000000000-7");
        assert_eq!(parsed, expected);
        let empty: Value = serde_json::from_str(&with_cursor("{}", "0-1"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(empty, json!({"cursor": "0-1"}));
    }
}
