//! The `Conversation` aggregate: a direct or group conversation, its members and their roles,
//! its messages (each numbered by `seq`, 1, 2, 3 … with no gap), and each member's delivered
//! and read watermarks.
//!
//! The state stays small (members and counters, never the messages), so snapshots keep a long
//! conversation as cheap to write to as a new one. What a decision needs to know about one
//! message (who sent it, whether it is deleted, which `client_message_id` it had) comes from
//! the [`MessageLookup`] service, an index the event store maintains in the same transaction
//! as the events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

use crate::account::ValueError;
use crate::call::{CallMedia, EndReason};
use crate::media::Attachment;
use crate::{CallId, ConversationId, MediaId, MessageId, UserId};

/// The most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// The most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    fn moderates(self) -> bool {
        matches!(self, Self::Owner | Self::Admin)
    }
}

/// A group title: 1 to 100 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Title(String);

impl Title {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let trimmed = text.trim();
        let length = trimmed.chars().count();
        if !(1..=100).contains(&length) || trimmed.chars().any(char::is_control) {
            return Err(ValueError::new(
                "invalid_title",
                "title must be 1 to 100 printable characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message text: 1 to 4,000 characters after trimming.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let trimmed = text.trim();
        let length = trimmed.chars().count();
        if length == 0 {
            return Err(ValueError::new("empty_body", "body must not be blank"));
        }
        if length > 4000 {
            return Err(ValueError::new(
                "body_too_long",
                "body must be at most 4000 characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client's idempotency key for a send: 1 to 100 printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientMessageId(String);

impl ClientMessageId {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        if text.is_empty() || text.len() > 100 || !text.bytes().all(|byte| byte.is_ascii_graphic())
        {
            return Err(ValueError::new(
                "invalid_client_message_id",
                "client_message_id must be 1 to 100 printable ASCII characters",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The kind of a sent message: `image` when it has attachments and no text, else `text`.
pub fn sent_message_kind(body: Option<&MessageBody>, attachments: &[Attachment]) -> &'static str {
    if body.is_none() && !attachments.is_empty() {
        "image"
    } else {
        "text"
    }
}

/// The id of the system message at `seq` (member changes, renames): derived from its place in
/// the timeline, so every view of the log gives it the same id.
pub fn system_message_id(conversation_id: ConversationId, seq: i64) -> Uuid {
    Uuid::new_v5(
        &conversation_id.as_uuid(),
        format!("system:{seq}").as_bytes(),
    )
}

/// The `kind: "call"` timeline message of a call start or end: where it is, who started the
/// call, and its details (`action`: `call_started` or `call_ended`, `call_id`, `media`, and
/// for an end `end_reason` and `duration_ms`).
#[derive(Clone, Debug, PartialEq)]
pub struct CallMessage {
    pub seq: i64,
    pub initiator_id: UserId,
    pub details: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// The call message `event` puts in the timeline; `None` for every other event.
pub fn call_message(event: &ConversationEvent) -> Option<CallMessage> {
    match event {
        ConversationEvent::CallStarted {
            call_id,
            seq,
            initiator_id,
            media,
            at,
        } => Some(CallMessage {
            seq: *seq,
            initiator_id: *initiator_id,
            details: serde_json::json!({
                "action": "call_started", "call_id": call_id, "media": media.as_str(),
            }),
            at: *at,
        }),
        ConversationEvent::CallEnded {
            call_id,
            seq,
            initiator_id,
            reason,
            duration_ms,
            at,
        } => Some(CallMessage {
            seq: *seq,
            initiator_id: *initiator_id,
            details: serde_json::json!({
                "action": "call_ended", "call_id": call_id, "end_reason": reason.as_str(),
                "duration_ms": duration_ms,
            }),
            at: *at,
        }),
        _ => None,
    }
}

/// What a decision needs to know about one stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFacts {
    pub message_id: MessageId,
    pub seq: i64,
    pub sender_id: UserId,
    pub deleted: bool,
}

/// The message index, as the aggregate sees it.
#[async_trait]
pub trait MessageLookup: Send + Sync {
    async fn message(
        &self,
        conversation_id: ConversationId,
        message_id: MessageId,
    ) -> Result<Option<MessageFacts>, String>;

    async fn by_client_message_id(
        &self,
        conversation_id: ConversationId,
        sender_id: UserId,
        client_message_id: &ClientMessageId,
    ) -> Result<Option<MessageFacts>, String>;
}

/// The services a conversation decision may call.
#[derive(Clone)]
pub struct ConversationServices {
    pub messages: Arc<dyn MessageLookup>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub role: Role,
    pub joined_at: DateTime<Utc>,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

#[derive(Clone, Debug)]
pub enum ConversationCommand {
    Create {
        conversation_id: ConversationId,
        kind: ConversationKind,
        creator_id: UserId,
        /// The other members (for a direct conversation, exactly one).
        member_ids: Vec<UserId>,
        title: Option<Title>,
        at: DateTime<Utc>,
    },
    Rename {
        by: UserId,
        title: Title,
        at: DateTime<Utc>,
    },
    AddMember {
        by: UserId,
        user_id: UserId,
        at: DateTime<Utc>,
    },
    RemoveMember {
        by: UserId,
        user_id: UserId,
        at: DateTime<Utc>,
    },
    SendMessage {
        message_id: MessageId,
        sender_id: UserId,
        client_message_id: Option<ClientMessageId>,
        body: Option<MessageBody>,
        attachments: Vec<Attachment>,
        reply_to_id: Option<MessageId>,
        at: DateTime<Utc>,
    },
    EditMessage {
        message_id: MessageId,
        editor_id: UserId,
        body: MessageBody,
        at: DateTime<Utc>,
    },
    DeleteMessage {
        message_id: MessageId,
        by: UserId,
        at: DateTime<Utc>,
    },
    MoveReceipts {
        user_id: UserId,
        delivered_seq: Option<i64>,
        read_seq: Option<i64>,
        at: DateTime<Utc>,
    },
    /// Puts a call's start into the timeline and makes it the conversation's one active call.
    /// Posting the same call again writes nothing.
    PostCallStarted {
        call_id: CallId,
        initiator_id: UserId,
        media: CallMedia,
        at: DateTime<Utc>,
    },
    /// Puts the active call's end into the timeline and frees the conversation for the next
    /// call. For any call but the active one it writes nothing (it was posted already).
    PostCallEnded {
        call_id: CallId,
        initiator_id: UserId,
        reason: EndReason,
        duration_ms: Option<i64>,
        at: DateTime<Utc>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ConversationEvent {
    Created {
        conversation_id: ConversationId,
        kind: ConversationKind,
        title: Option<Title>,
        owner_id: UserId,
        /// Every member with their role, the creator included.
        members: Vec<(UserId, Role)>,
        at: DateTime<Utc>,
    },
    /// `seq` is the system message this change puts in the timeline.
    Renamed {
        by: UserId,
        title: Title,
        seq: i64,
        at: DateTime<Utc>,
    },
    MemberAdded {
        by: UserId,
        user_id: UserId,
        role: Role,
        seq: i64,
        at: DateTime<Utc>,
    },
    MemberRemoved {
        by: UserId,
        user_id: UserId,
        /// Set when the owner left and ownership passed on.
        new_owner_id: Option<UserId>,
        seq: i64,
        at: DateTime<Utc>,
    },
    MessageSent {
        message_id: MessageId,
        seq: i64,
        sender_id: UserId,
        client_message_id: Option<ClientMessageId>,
        body: Option<MessageBody>,
        /// Version 2.0: each image as uploaded (1.0 had bare `attachment_ids`, always empty).
        attachments: Vec<Attachment>,
        reply_to_id: Option<MessageId>,
        at: DateTime<Utc>,
    },
    /// The earlier text stays in the earlier `MessageSent` or `MessageEdited` event.
    MessageEdited {
        message_id: MessageId,
        seq: i64,
        body: MessageBody,
        at: DateTime<Utc>,
    },
    MessageDeleted {
        message_id: MessageId,
        seq: i64,
        by: UserId,
        at: DateTime<Utc>,
    },
    /// The member's watermarks after the move (never lower than before).
    ReceiptsMoved {
        user_id: UserId,
        delivered_seq: i64,
        read_seq: i64,
        at: DateTime<Utc>,
    },
    /// A call started: a `kind: "call"` message at `seq`; the call is the active one.
    CallStarted {
        call_id: CallId,
        seq: i64,
        initiator_id: UserId,
        media: CallMedia,
        at: DateTime<Utc>,
    },
    /// The active call ended: a `kind: "call"` message at `seq`.
    CallEnded {
        call_id: CallId,
        seq: i64,
        initiator_id: UserId,
        reason: EndReason,
        duration_ms: Option<i64>,
        at: DateTime<Utc>,
    },
}

impl ConversationEvent {
    /// Every event type of this aggregate with its current version; pinned by a test.
    pub const TYPES: &'static [(&'static str, &'static str)] = &[
        ("ConversationCreated", "1.0"),
        ("ConversationRenamed", "1.0"),
        ("ConversationMemberAdded", "1.0"),
        ("ConversationMemberRemoved", "1.0"),
        ("MessageSent", "2.0"),
        ("MessageEdited", "1.0"),
        ("MessageDeleted", "1.0"),
        ("ReceiptsMoved", "1.0"),
        ("ConversationCallStarted", "1.0"),
        ("ConversationCallEnded", "1.0"),
    ];
}

impl DomainEvent for ConversationEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::Created { .. } => "ConversationCreated",
            Self::Renamed { .. } => "ConversationRenamed",
            Self::MemberAdded { .. } => "ConversationMemberAdded",
            Self::MemberRemoved { .. } => "ConversationMemberRemoved",
            Self::MessageSent { .. } => "MessageSent",
            Self::MessageEdited { .. } => "MessageEdited",
            Self::MessageDeleted { .. } => "MessageDeleted",
            Self::ReceiptsMoved { .. } => "ReceiptsMoved",
            Self::CallStarted { .. } => "ConversationCallStarted",
            Self::CallEnded { .. } => "ConversationCallEnded",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        let event_type = self.event_type();
        Self::TYPES
            .iter()
            .find(|(name, _)| *name == event_type)
            .map_or("1.0", |(_, version)| version)
            .to_owned()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    /// The conversation does not exist, or the caller is not a member (they may not know).
    #[error("no such conversation")]
    NotFound,
    #[error("the conversation already exists")]
    AlreadyExists,
    #[error("{0}")]
    InvalidMembers(&'static str),
    #[error("only groups can do that")]
    NotAGroup,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the user is already a member")]
    AlreadyMember,
    #[error("the user is not a member")]
    NotAMember,
    #[error("no such message")]
    MessageNotFound,
    #[error("the message was deleted")]
    MessageDeleted,
    #[error("the replied-to message is not in this conversation")]
    ReplyNotFound,
    #[error("a message needs a body or an attachment")]
    EmptyMessage,
    #[error("{0}")]
    InvalidAttachments(&'static str),
    #[error("the conversation already has an active call")]
    CallActive(CallId),
    #[error("message lookup failed: {0}")]
    Lookup(String),
}

/// The state decisions need: kind, title, members with roles and watermarks, counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: Option<ConversationId>,
    pub kind: Option<ConversationKind>,
    pub title: Option<Title>,
    pub owner_id: Option<UserId>,
    pub members: BTreeMap<UserId, Member>,
    /// The `seq` of the newest timeline message (0 when there is none).
    pub last_seq: i64,
    pub created_at: Option<DateTime<Utc>>,
    pub last_activity_at: Option<DateTime<Utc>>,
    /// The call going on in this conversation (at most one), and since when.
    #[serde(default)]
    pub active_call: Option<(CallId, DateTime<Utc>)>,
}

impl Conversation {
    pub fn is_member(&self, user_id: UserId) -> bool {
        self.members.contains_key(&user_id)
    }

    fn id(&self) -> Result<ConversationId, ConversationError> {
        self.id.ok_or(ConversationError::NotFound)
    }

    /// Non-members get `NotFound`: they may not learn that the conversation exists.
    fn member(&self, user_id: UserId) -> Result<&Member, ConversationError> {
        self.members
            .get(&user_id)
            .ok_or(ConversationError::NotFound)
    }

    fn require_group(&self) -> Result<(), ConversationError> {
        match self.kind {
            Some(ConversationKind::Group) => Ok(()),
            Some(ConversationKind::Direct) => Err(ConversationError::NotAGroup),
            None => Err(ConversationError::NotFound),
        }
    }

    fn next_seq(&self) -> i64 {
        self.last_seq + 1
    }

    async fn emit(&mut self, sink: &EventSink<Self>, event: ConversationEvent) {
        sink.write(event, self).await;
    }
}

impl Aggregate for Conversation {
    const TYPE: &'static str = "conversation";
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;
    type Services = ConversationServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ConversationCommand::Create {
                conversation_id,
                kind,
                creator_id,
                member_ids,
                title,
                at,
            } => {
                let event =
                    self.create(conversation_id, kind, creator_id, member_ids, title, at)?;
                self.emit(sink, event).await;
            }
            ConversationCommand::Rename { by, title, at } => {
                self.require_group()?;
                if !self.member(by)?.role.moderates() {
                    return Err(ConversationError::Forbidden(
                        "only the owner or an admin may rename the group",
                    ));
                }
                if self.title.as_ref() != Some(&title) {
                    let seq = self.next_seq();
                    self.emit(sink, ConversationEvent::Renamed { by, title, seq, at })
                        .await;
                }
            }
            ConversationCommand::AddMember { by, user_id, at } => {
                self.require_group()?;
                self.member(by)?;
                if self.is_member(user_id) {
                    return Err(ConversationError::AlreadyMember);
                }
                if self.members.len() >= MAX_GROUP_MEMBERS {
                    return Err(ConversationError::InvalidMembers("the group is full"));
                }
                let event = ConversationEvent::MemberAdded {
                    by,
                    user_id,
                    role: Role::Member,
                    seq: self.next_seq(),
                    at,
                };
                self.emit(sink, event).await;
            }
            ConversationCommand::RemoveMember { by, user_id, at } => {
                let event = self.remove(by, user_id, at)?;
                self.emit(sink, event).await;
            }
            ConversationCommand::SendMessage {
                message_id,
                sender_id,
                client_message_id,
                body,
                attachments,
                reply_to_id,
                at,
            } => {
                let conversation_id = self.id()?;
                self.member(sender_id)?;
                if let Some(client_message_id) = &client_message_id {
                    let earlier = services
                        .messages
                        .by_client_message_id(conversation_id, sender_id, client_message_id)
                        .await
                        .map_err(ConversationError::Lookup)?;
                    if earlier.is_some() {
                        // A retry: the original stands, nothing new is written.
                        return Ok(());
                    }
                }
                if body.is_none() && attachments.is_empty() {
                    return Err(ConversationError::EmptyMessage);
                }
                if attachments.len() > MAX_ATTACHMENTS {
                    return Err(ConversationError::InvalidAttachments(
                        "a message carries at most 10 attachments",
                    ));
                }
                let mut ids: Vec<MediaId> = attachments.iter().map(|a| a.media_id).collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() != attachments.len() {
                    return Err(ConversationError::InvalidAttachments(
                        "an image is attached at most once per message",
                    ));
                }
                if let Some(reply_to_id) = reply_to_id {
                    let replied = services
                        .messages
                        .message(conversation_id, reply_to_id)
                        .await
                        .map_err(ConversationError::Lookup)?;
                    if replied.is_none() {
                        return Err(ConversationError::ReplyNotFound);
                    }
                }
                let event = ConversationEvent::MessageSent {
                    message_id,
                    seq: self.next_seq(),
                    sender_id,
                    client_message_id,
                    body,
                    attachments,
                    reply_to_id,
                    at,
                };
                self.emit(sink, event).await;
            }
            ConversationCommand::EditMessage {
                message_id,
                editor_id,
                body,
                at,
            } => {
                self.member(editor_id)?;
                let facts = self.message(services, message_id).await?;
                if facts.sender_id != editor_id {
                    return Err(ConversationError::Forbidden(
                        "only the sender may edit a message",
                    ));
                }
                if facts.deleted {
                    return Err(ConversationError::MessageDeleted);
                }
                let event = ConversationEvent::MessageEdited {
                    message_id,
                    seq: facts.seq,
                    body,
                    at,
                };
                self.emit(sink, event).await;
            }
            ConversationCommand::DeleteMessage { message_id, by, at } => {
                let role = self.member(by)?.role;
                let facts = self.message(services, message_id).await?;
                let moderator = self.kind == Some(ConversationKind::Group) && role.moderates();
                if facts.sender_id != by && !moderator {
                    return Err(ConversationError::Forbidden(
                        "only the sender or a group owner or admin may delete a message",
                    ));
                }
                // Deleting twice is not an error, and writes nothing the second time.
                if !facts.deleted {
                    let event = ConversationEvent::MessageDeleted {
                        message_id,
                        seq: facts.seq,
                        by,
                        at,
                    };
                    self.emit(sink, event).await;
                }
            }
            ConversationCommand::MoveReceipts {
                user_id,
                delivered_seq,
                read_seq,
                at,
            } => {
                let member = self.member(user_id)?;
                // Watermarks only move forward, never past the newest message, and what is
                // read has been delivered.
                let read = read_seq
                    .unwrap_or(0)
                    .min(self.last_seq)
                    .max(member.read_seq);
                let delivered = delivered_seq
                    .unwrap_or(0)
                    .min(self.last_seq)
                    .max(member.delivered_seq)
                    .max(read);
                if delivered != member.delivered_seq || read != member.read_seq {
                    let event = ConversationEvent::ReceiptsMoved {
                        user_id,
                        delivered_seq: delivered,
                        read_seq: read,
                        at,
                    };
                    self.emit(sink, event).await;
                }
            }
            ConversationCommand::PostCallStarted {
                call_id,
                initiator_id,
                media,
                at,
            } => {
                self.member(initiator_id)?;
                match self.active_call {
                    Some((active, _)) if active == call_id => {}
                    Some((active, _)) => return Err(ConversationError::CallActive(active)),
                    None => {
                        let event = ConversationEvent::CallStarted {
                            call_id,
                            seq: self.next_seq(),
                            initiator_id,
                            media,
                            at,
                        };
                        self.emit(sink, event).await;
                    }
                }
            }
            ConversationCommand::PostCallEnded {
                call_id,
                initiator_id,
                reason,
                duration_ms,
                at,
            } => {
                self.id()?;
                if self
                    .active_call
                    .is_some_and(|(active, _)| active == call_id)
                {
                    let event = ConversationEvent::CallEnded {
                        call_id,
                        seq: self.next_seq(),
                        initiator_id,
                        reason,
                        duration_ms,
                        at,
                    };
                    self.emit(sink, event).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ConversationEvent::Created {
                conversation_id,
                kind,
                title,
                owner_id,
                members,
                at,
            } => {
                self.id = Some(conversation_id);
                self.kind = Some(kind);
                self.title = title;
                self.owner_id = Some(owner_id);
                self.members = members
                    .into_iter()
                    .map(|(user_id, role)| (user_id, new_member(role, at)))
                    .collect();
                self.created_at = Some(at);
                self.last_activity_at = Some(at);
            }
            ConversationEvent::Renamed { title, seq, at, .. } => {
                self.title = Some(title);
                self.timeline_advanced(seq, at);
            }
            ConversationEvent::MemberAdded {
                user_id,
                role,
                seq,
                at,
                ..
            } => {
                self.members.insert(user_id, new_member(role, at));
                self.timeline_advanced(seq, at);
            }
            ConversationEvent::MemberRemoved {
                user_id,
                new_owner_id,
                seq,
                at,
                ..
            } => {
                self.members.remove(&user_id);
                if let Some(new_owner_id) = new_owner_id {
                    self.owner_id = Some(new_owner_id);
                    if let Some(member) = self.members.get_mut(&new_owner_id) {
                        member.role = Role::Owner;
                    }
                }
                self.timeline_advanced(seq, at);
            }
            ConversationEvent::MessageSent {
                seq, sender_id, at, ..
            } => {
                self.timeline_advanced(seq, at);
                // Sending implies having read everything up to one's own message.
                if let Some(member) = self.members.get_mut(&sender_id) {
                    member.read_seq = seq;
                    member.delivered_seq = seq;
                }
            }
            ConversationEvent::MessageEdited { .. } | ConversationEvent::MessageDeleted { .. } => {}
            ConversationEvent::CallStarted {
                call_id, seq, at, ..
            } => {
                self.timeline_advanced(seq, at);
                self.active_call = Some((call_id, at));
            }
            ConversationEvent::CallEnded { seq, at, .. } => {
                self.timeline_advanced(seq, at);
                self.active_call = None;
            }
            ConversationEvent::ReceiptsMoved {
                user_id,
                delivered_seq,
                read_seq,
                ..
            } => {
                if let Some(member) = self.members.get_mut(&user_id) {
                    member.delivered_seq = delivered_seq;
                    member.read_seq = read_seq;
                }
            }
        }
    }
}

fn new_member(role: Role, at: DateTime<Utc>) -> Member {
    Member {
        role,
        joined_at: at,
        delivered_seq: 0,
        read_seq: 0,
    }
}

impl Conversation {
    fn timeline_advanced(&mut self, seq: i64, at: DateTime<Utc>) {
        self.last_seq = self.last_seq.max(seq);
        self.last_activity_at = Some(at);
    }

    fn create(
        &self,
        conversation_id: ConversationId,
        kind: ConversationKind,
        creator_id: UserId,
        member_ids: Vec<UserId>,
        title: Option<Title>,
        at: DateTime<Utc>,
    ) -> Result<ConversationEvent, ConversationError> {
        if self.id.is_some() {
            return Err(ConversationError::AlreadyExists);
        }
        let mut others: Vec<UserId> = member_ids
            .into_iter()
            .filter(|user_id| *user_id != creator_id)
            .collect();
        others.sort();
        others.dedup();
        let title = match kind {
            ConversationKind::Direct => {
                if others.len() != 1 {
                    return Err(ConversationError::InvalidMembers(
                        "a direct conversation is with exactly one other user",
                    ));
                }
                None
            }
            ConversationKind::Group => {
                if others.len() + 1 > MAX_GROUP_MEMBERS {
                    return Err(ConversationError::InvalidMembers(
                        "a group has at most 1000 members",
                    ));
                }
                Some(title.ok_or(ConversationError::InvalidMembers("a group needs a title"))?)
            }
        };
        let mut members = vec![(
            creator_id,
            match kind {
                ConversationKind::Direct => Role::Member,
                ConversationKind::Group => Role::Owner,
            },
        )];
        members.extend(others.into_iter().map(|user_id| (user_id, Role::Member)));
        Ok(ConversationEvent::Created {
            conversation_id,
            kind,
            title,
            owner_id: creator_id,
            members,
            at,
        })
    }

    fn remove(
        &self,
        by: UserId,
        user_id: UserId,
        at: DateTime<Utc>,
    ) -> Result<ConversationEvent, ConversationError> {
        self.require_group()?;
        let remover = self.member(by)?.role;
        let removed = self
            .members
            .get(&user_id)
            .ok_or(ConversationError::NotAMember)?
            .role;
        if by != user_id {
            let allowed = match remover {
                Role::Owner => true,
                Role::Admin => removed == Role::Member,
                Role::Member => false,
            };
            if !allowed {
                return Err(ConversationError::Forbidden(
                    "only the owner or an admin may remove other members",
                ));
            }
        }
        // An owner who leaves hands the group to the longest-standing admin, else member.
        let new_owner_id = if removed == Role::Owner {
            self.members
                .iter()
                .filter(|(candidate, _)| **candidate != user_id)
                .min_by_key(|(_, member)| (member.role, member.joined_at))
                .map(|(candidate, _)| *candidate)
        } else {
            None
        };
        Ok(ConversationEvent::MemberRemoved {
            by,
            user_id,
            new_owner_id,
            seq: self.next_seq(),
            at,
        })
    }

    async fn message(
        &self,
        services: &ConversationServices,
        message_id: MessageId,
    ) -> Result<MessageFacts, ConversationError> {
        services
            .messages
            .message(self.id()?, message_id)
            .await
            .map_err(ConversationError::Lookup)?
            .ok_or(ConversationError::MessageNotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use std::sync::Mutex;

    /// The message index as the tests set it up.
    #[derive(Default)]
    struct KnownMessages(Mutex<Vec<(MessageFacts, Option<String>)>>);

    #[async_trait]
    impl MessageLookup for KnownMessages {
        async fn message(
            &self,
            _conversation_id: ConversationId,
            message_id: MessageId,
        ) -> Result<Option<MessageFacts>, String> {
            let known = self.0.lock().map_err(|error| error.to_string())?;
            Ok(known
                .iter()
                .find(|(facts, _)| facts.message_id == message_id)
                .map(|(facts, _)| facts.clone()))
        }

        async fn by_client_message_id(
            &self,
            _conversation_id: ConversationId,
            sender_id: UserId,
            client_message_id: &ClientMessageId,
        ) -> Result<Option<MessageFacts>, String> {
            let known = self.0.lock().map_err(|error| error.to_string())?;
            Ok(known
                .iter()
                .find(|(facts, client)| {
                    facts.sender_id == sender_id
                        && client.as_deref() == Some(client_message_id.as_str())
                })
                .map(|(facts, _)| facts.clone()))
        }
    }

    fn services(known: Vec<(MessageFacts, Option<String>)>) -> ConversationServices {
        ConversationServices {
            messages: Arc::new(KnownMessages(Mutex::new(known))),
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default()
    }

    fn title(text: &str) -> Title {
        Title::parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    fn body(text: &str) -> MessageBody {
        MessageBody::parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    struct Group {
        id: ConversationId,
        owner: UserId,
        member: UserId,
        other: UserId,
    }

    impl Group {
        fn new() -> Self {
            Self {
                id: ConversationId::new(),
                owner: UserId::new(),
                member: UserId::new(),
                other: UserId::new(),
            }
        }

        fn created(&self) -> ConversationEvent {
            ConversationEvent::Created {
                conversation_id: self.id,
                kind: ConversationKind::Group,
                title: Some(title("team")),
                owner_id: self.owner,
                members: vec![(self.owner, Role::Owner), (self.member, Role::Member)],
                at: at(),
            }
        }

        fn sent(&self, message_id: MessageId, seq: i64, sender_id: UserId) -> ConversationEvent {
            ConversationEvent::MessageSent {
                message_id,
                seq,
                sender_id,
                client_message_id: None,
                body: Some(body("hi")),
                attachments: vec![],
                reply_to_id: None,
                at: at(),
            }
        }
    }

    fn send(sender_id: UserId, message_id: MessageId) -> ConversationCommand {
        ConversationCommand::SendMessage {
            message_id,
            sender_id,
            client_message_id: ClientMessageId::parse("c-1").ok(),
            body: Some(body("hi")),
            attachments: vec![],
            reply_to_id: None,
            at: at(),
        }
    }

    #[test]
    fn a_group_is_created_with_its_creator_as_owner() {
        let group = Group::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given_no_previous_events()
            .when(ConversationCommand::Create {
                conversation_id: group.id,
                kind: ConversationKind::Group,
                creator_id: group.owner,
                member_ids: vec![group.member, group.owner, group.member],
                title: Some(title("team")),
                at: at(),
            })
            .then_expect_events(vec![group.created()]);
    }

    #[test]
    fn a_direct_conversation_needs_exactly_one_other_user() {
        let user = UserId::new();
        for member_ids in [vec![], vec![user], vec![UserId::new(), UserId::new()]] {
            TestFramework::<Conversation>::with(services(vec![]))
                .given_no_previous_events()
                .when(ConversationCommand::Create {
                    conversation_id: ConversationId::new(),
                    kind: ConversationKind::Direct,
                    creator_id: user,
                    member_ids,
                    title: None,
                    at: at(),
                })
                .then_expect_error(ConversationError::InvalidMembers(
                    "a direct conversation is with exactly one other user",
                ));
        }
    }

    #[test]
    fn messages_are_numbered_after_the_last_seq() {
        let group = Group::new();
        let first = MessageId::new();
        let second = MessageId::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created(), group.sent(first, 1, group.owner)])
            .when(send(group.member, second))
            .then_expect_events(vec![ConversationEvent::MessageSent {
                message_id: second,
                seq: 2,
                sender_id: group.member,
                client_message_id: ClientMessageId::parse("c-1").ok(),
                body: Some(body("hi")),
                attachments: vec![],
                reply_to_id: None,
                at: at(),
            }]);
    }

    #[test]
    fn a_retried_send_writes_nothing() {
        let group = Group::new();
        let first = MessageId::new();
        let facts = MessageFacts {
            message_id: first,
            seq: 1,
            sender_id: group.member,
            deleted: false,
        };
        TestFramework::<Conversation>::with(services(vec![(facts, Some("c-1".to_owned()))]))
            .given(vec![group.created(), group.sent(first, 1, group.member)])
            .when(send(group.member, MessageId::new()))
            .then_expect_events(vec![]);
    }

    #[test]
    fn non_members_cannot_send_or_learn_the_conversation_exists() {
        let group = Group::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(send(group.other, MessageId::new()))
            .then_expect_error(ConversationError::NotFound);
        TestFramework::<Conversation>::with(services(vec![]))
            .given_no_previous_events()
            .when(send(group.owner, MessageId::new()))
            .then_expect_error(ConversationError::NotFound);
    }

    #[test]
    fn empty_messages_and_foreign_replies_are_refused() {
        let group = Group::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(ConversationCommand::SendMessage {
                message_id: MessageId::new(),
                sender_id: group.owner,
                client_message_id: None,
                body: None,
                attachments: vec![],
                reply_to_id: None,
                at: at(),
            })
            .then_expect_error(ConversationError::EmptyMessage);
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(ConversationCommand::SendMessage {
                message_id: MessageId::new(),
                sender_id: group.owner,
                client_message_id: None,
                body: Some(body("re")),
                attachments: vec![],
                reply_to_id: Some(MessageId::new()),
                at: at(),
            })
            .then_expect_error(ConversationError::ReplyNotFound);
    }

    #[test]
    fn only_the_sender_edits_and_not_after_deletion() {
        let group = Group::new();
        let message_id = MessageId::new();
        let facts = |deleted| MessageFacts {
            message_id,
            seq: 1,
            sender_id: group.member,
            deleted,
        };
        let edit = |editor_id| ConversationCommand::EditMessage {
            message_id,
            editor_id,
            body: body("fixed"),
            at: at(),
        };
        TestFramework::<Conversation>::with(services(vec![(facts(false), None)]))
            .given(vec![group.created()])
            .when(edit(group.member))
            .then_expect_events(vec![ConversationEvent::MessageEdited {
                message_id,
                seq: 1,
                body: body("fixed"),
                at: at(),
            }]);
        TestFramework::<Conversation>::with(services(vec![(facts(false), None)]))
            .given(vec![group.created()])
            .when(edit(group.owner))
            .then_expect_error(ConversationError::Forbidden(
                "only the sender may edit a message",
            ));
        TestFramework::<Conversation>::with(services(vec![(facts(true), None)]))
            .given(vec![group.created()])
            .when(edit(group.member))
            .then_expect_error(ConversationError::MessageDeleted);
    }

    #[test]
    fn the_owner_may_delete_anyones_message_and_twice_is_quiet() {
        let group = Group::new();
        let message_id = MessageId::new();
        let facts = |deleted| MessageFacts {
            message_id,
            seq: 1,
            sender_id: group.member,
            deleted,
        };
        let delete = ConversationCommand::DeleteMessage {
            message_id,
            by: group.owner,
            at: at(),
        };
        TestFramework::<Conversation>::with(services(vec![(facts(false), None)]))
            .given(vec![group.created()])
            .when(delete.clone())
            .then_expect_events(vec![ConversationEvent::MessageDeleted {
                message_id,
                seq: 1,
                by: group.owner,
                at: at(),
            }]);
        TestFramework::<Conversation>::with(services(vec![(facts(true), None)]))
            .given(vec![group.created()])
            .when(delete)
            .then_expect_events(vec![]);
    }

    #[test]
    fn members_add_anyone_but_only_moderators_remove_others() {
        let group = Group::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(ConversationCommand::AddMember {
                by: group.member,
                user_id: group.other,
                at: at(),
            })
            .then_expect_events(vec![ConversationEvent::MemberAdded {
                by: group.member,
                user_id: group.other,
                role: Role::Member,
                seq: 1,
                at: at(),
            }]);
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(ConversationCommand::RemoveMember {
                by: group.member,
                user_id: group.owner,
                at: at(),
            })
            .then_expect_error(ConversationError::Forbidden(
                "only the owner or an admin may remove other members",
            ));
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(ConversationCommand::RemoveMember {
                by: group.member,
                user_id: group.member,
                at: at(),
            })
            .then_expect_events(vec![ConversationEvent::MemberRemoved {
                by: group.member,
                user_id: group.member,
                new_owner_id: None,
                seq: 1,
                at: at(),
            }]);
    }

    #[test]
    fn an_owner_who_leaves_hands_the_group_on() {
        let group = Group::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(ConversationCommand::RemoveMember {
                by: group.owner,
                user_id: group.owner,
                at: at(),
            })
            .then_expect_events(vec![ConversationEvent::MemberRemoved {
                by: group.owner,
                user_id: group.owner,
                new_owner_id: Some(group.member),
                seq: 1,
                at: at(),
            }]);
    }

    #[test]
    fn direct_conversations_have_no_membership_changes() {
        let user = UserId::new();
        let other = UserId::new();
        let created = ConversationEvent::Created {
            conversation_id: ConversationId::new(),
            kind: ConversationKind::Direct,
            title: None,
            owner_id: user,
            members: vec![(user, Role::Member), (other, Role::Member)],
            at: at(),
        };
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![created.clone()])
            .when(ConversationCommand::AddMember {
                by: user,
                user_id: UserId::new(),
                at: at(),
            })
            .then_expect_error(ConversationError::NotAGroup);
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![created])
            .when(ConversationCommand::Rename {
                by: user,
                title: title("x"),
                at: at(),
            })
            .then_expect_error(ConversationError::NotAGroup);
    }

    #[test]
    fn receipts_move_forward_only_and_never_past_the_last_message() {
        let group = Group::new();
        let history = vec![
            group.created(),
            group.sent(MessageId::new(), 1, group.owner),
            group.sent(MessageId::new(), 2, group.owner),
            ConversationEvent::ReceiptsMoved {
                user_id: group.member,
                delivered_seq: 1,
                read_seq: 1,
                at: at(),
            },
        ];
        TestFramework::<Conversation>::with(services(vec![]))
            .given(history.clone())
            .when(ConversationCommand::MoveReceipts {
                user_id: group.member,
                delivered_seq: None,
                read_seq: Some(99),
                at: at(),
            })
            .then_expect_events(vec![ConversationEvent::ReceiptsMoved {
                user_id: group.member,
                delivered_seq: 2,
                read_seq: 2,
                at: at(),
            }]);
        TestFramework::<Conversation>::with(services(vec![]))
            .given(history)
            .when(ConversationCommand::MoveReceipts {
                user_id: group.member,
                delivered_seq: Some(0),
                read_seq: Some(0),
                at: at(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn renames_are_for_moderators_and_go_in_the_timeline() {
        let group = Group::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(ConversationCommand::Rename {
                by: group.owner,
                title: title("new name"),
                at: at(),
            })
            .then_expect_events(vec![ConversationEvent::Renamed {
                by: group.owner,
                title: title("new name"),
                seq: 1,
                at: at(),
            }]);
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(ConversationCommand::Rename {
                by: group.member,
                title: title("mine now"),
                at: at(),
            })
            .then_expect_error(ConversationError::Forbidden(
                "only the owner or an admin may rename the group",
            ));
    }

    #[test]
    fn bodies_titles_and_client_ids_are_checked() {
        assert!(MessageBody::parse("   ").is_err());
        assert!(MessageBody::parse(&"x".repeat(4001)).is_err());
        assert_eq!(MessageBody::parse(" hi ").map(|b| b.0), Ok("hi".to_owned()));
        assert!(Title::parse("").is_err());
        assert!(ClientMessageId::parse("has space").is_err());
    }

    #[test]
    fn event_types_and_versions_are_pinned() {
        let group = Group::new();
        let message_id = MessageId::new();
        let samples = [
            group.created(),
            ConversationEvent::Renamed {
                by: group.owner,
                title: title("t"),
                seq: 1,
                at: at(),
            },
            ConversationEvent::MemberAdded {
                by: group.owner,
                user_id: group.other,
                role: Role::Member,
                seq: 2,
                at: at(),
            },
            ConversationEvent::MemberRemoved {
                by: group.owner,
                user_id: group.other,
                new_owner_id: None,
                seq: 3,
                at: at(),
            },
            group.sent(message_id, 4, group.owner),
            ConversationEvent::MessageEdited {
                message_id,
                seq: 4,
                body: body("b"),
                at: at(),
            },
            ConversationEvent::MessageDeleted {
                message_id,
                seq: 4,
                by: group.owner,
                at: at(),
            },
            ConversationEvent::ReceiptsMoved {
                user_id: group.member,
                delivered_seq: 4,
                read_seq: 4,
                at: at(),
            },
            call_started(&group, CallId::new(), 5),
            ConversationEvent::CallEnded {
                call_id: CallId::new(),
                seq: 6,
                initiator_id: group.owner,
                reason: EndReason::Missed,
                duration_ms: None,
                at: at(),
            },
        ];
        let seen: Vec<(String, String)> = samples
            .iter()
            .map(|event| (event.event_type(), event.event_version()))
            .collect();
        let pinned: Vec<(String, String)> = ConversationEvent::TYPES
            .iter()
            .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
            .collect();
        assert_eq!(seen, pinned);
    }

    fn call_started(group: &Group, call_id: CallId, seq: i64) -> ConversationEvent {
        ConversationEvent::CallStarted {
            call_id,
            seq,
            initiator_id: group.owner,
            media: CallMedia::Video,
            at: at(),
        }
    }

    fn post_started(call_id: CallId, by: UserId) -> ConversationCommand {
        ConversationCommand::PostCallStarted {
            call_id,
            initiator_id: by,
            media: CallMedia::Video,
            at: at(),
        }
    }

    fn post_ended(group: &Group, call_id: CallId) -> ConversationCommand {
        ConversationCommand::PostCallEnded {
            call_id,
            initiator_id: group.owner,
            reason: EndReason::Completed,
            duration_ms: Some(61_000),
            at: at(),
        }
    }

    #[test]
    fn a_call_start_goes_into_the_timeline_and_becomes_the_active_call() {
        let group = Group::new();
        let call_id = CallId::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(post_started(call_id, group.owner))
            .then_expect_events(vec![call_started(&group, call_id, 1)]);
        let mut conversation = Conversation::default();
        conversation.apply(group.created());
        conversation.apply(call_started(&group, call_id, 1));
        assert_eq!(conversation.active_call, Some((call_id, at())));
        assert_eq!(conversation.last_seq, 1);
    }

    #[test]
    fn a_second_call_is_refused_while_one_is_active_and_a_retry_writes_nothing() {
        let group = Group::new();
        let (first, second) = (CallId::new(), CallId::new());
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created(), call_started(&group, first, 1)])
            .when(post_started(second, group.member))
            .then_expect_error(ConversationError::CallActive(first));
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created(), call_started(&group, first, 1)])
            .when(post_started(first, group.owner))
            .then_expect_events(vec![]);
    }

    #[test]
    fn only_members_start_calls() {
        let group = Group::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created()])
            .when(post_started(CallId::new(), group.other))
            .then_expect_error(ConversationError::NotFound);
    }

    #[test]
    fn the_end_of_the_active_call_goes_into_the_timeline_once() {
        let group = Group::new();
        let call_id = CallId::new();
        let ended = ConversationEvent::CallEnded {
            call_id,
            seq: 2,
            initiator_id: group.owner,
            reason: EndReason::Completed,
            duration_ms: Some(61_000),
            at: at(),
        };
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![group.created(), call_started(&group, call_id, 1)])
            .when(post_ended(&group, call_id))
            .then_expect_events(vec![ended.clone()]);
        // Posted already (or never active): nothing more.
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![
                group.created(),
                call_started(&group, call_id, 1),
                ended.clone(),
            ])
            .when(post_ended(&group, call_id))
            .then_expect_events(vec![]);
        // After the end, the next call may start.
        let next = CallId::new();
        TestFramework::<Conversation>::with(services(vec![]))
            .given(vec![
                group.created(),
                call_started(&group, call_id, 1),
                ended,
            ])
            .when(post_started(next, group.member))
            .then_expect_events(vec![ConversationEvent::CallStarted {
                call_id: next,
                seq: 3,
                initiator_id: group.member,
                media: CallMedia::Video,
                at: at(),
            }]);
    }
}
