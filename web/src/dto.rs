//! Wire representations shared by the roles, and the contract's time format: RFC 3339, UTC,
//! millisecond precision.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;
use uuid::Uuid;

/// Serializes a time as `2026-11-24T10:00:00.123Z`.
pub fn rfc3339_millis<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Like [`rfc3339_millis`], for optional times.
pub fn rfc3339_millis_option<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => rfc3339_millis(time, serializer),
        None => serializer.serialize_none(),
    }
}

/// An uploaded image; `url` and `thumbnail_url` are signed, time-limited links.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Media {
    pub id: Uuid,
    pub content_type: String,
    pub size: i64,
    pub width: i32,
    pub height: i32,
    pub url: String,
    pub thumbnail_url: String,
    #[serde(serialize_with = "rfc3339_millis")]
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub display_name: String,
    pub bio: Option<String>,
    pub avatar: Option<Media>,
    pub online: bool,
    #[serde(serialize_with = "rfc3339_millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Only on the caller's own account (`GET /users/me` and session responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Session {
    pub user: User,
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
}

/// A keyset-paginated list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConversationMember {
    pub user_id: Uuid,
    /// `owner`, `admin` or `member`.
    pub role: String,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Conversation {
    pub id: Uuid,
    /// `direct` or `group`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: Option<String>,
    pub owner_id: Uuid,
    pub members: Vec<ConversationMember>,
    pub last_message: Option<Message>,
    pub unread_count: i64,
    pub last_seq: i64,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub last_activity_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub sender_id: Uuid,
    /// `text`, `image`, `call` or `system`.
    pub kind: String,
    pub body: Option<String>,
    pub attachments: Vec<Media>,
    pub reply_to_id: Option<Uuid>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted: bool,
    /// On the caller's own messages: `sent`, `delivered` or `read`; otherwise null.
    pub status: Option<String>,
    /// On system messages: what happened (`action`, `actor_id`, `user_id`, `title`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub system: Option<serde_json::Value>,
    /// On call messages: `action` (`call_started` or `call_ended`), `call_id`, `media`, and for
    /// an end `end_reason` and `duration_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub call: Option<serde_json::Value>,
}

impl Message {
    /// The system message at `seq` (a member change or a rename): `body` is the action,
    /// `system` the details.
    pub fn system(
        conversation_id: Uuid,
        seq: i64,
        actor_id: Uuid,
        system: serde_json::Value,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: domain::conversation::system_message_id(
                domain::ConversationId::from_uuid(conversation_id),
                seq,
            ),
            conversation_id,
            seq,
            sender_id: actor_id,
            kind: "system".to_owned(),
            body: system["action"].as_str().map(str::to_owned),
            attachments: Vec::new(),
            reply_to_id: None,
            created_at: at,
            edited_at: None,
            deleted: false,
            status: None,
            system: Some(system),
            call: None,
        }
    }

    /// A message as its `MessageSent` event describes it (`None` for any other event): not
    /// edited, not deleted, no `status` (the caller sets it for the sender).
    pub fn sent(
        conversation_id: Uuid,
        event: &domain::conversation::ConversationEvent,
        links: &crate::MediaLinks,
    ) -> Option<Self> {
        let domain::conversation::ConversationEvent::MessageSent {
            message_id,
            seq,
            sender_id,
            body,
            attachments,
            reply_to_id,
            at,
            ..
        } = event
        else {
            return None;
        };
        Some(Self {
            id: message_id.as_uuid(),
            conversation_id,
            seq: *seq,
            sender_id: sender_id.as_uuid(),
            kind: domain::conversation::sent_message_kind(body.as_ref(), attachments).to_owned(),
            body: body.as_ref().map(|body| body.as_str().to_owned()),
            attachments: {
                let now = Utc::now();
                attachments
                    .iter()
                    .map(|attachment| links.media(attachment, now))
                    .collect()
            },
            reply_to_id: reply_to_id.map(|id| id.as_uuid()),
            created_at: *at,
            edited_at: None,
            deleted: false,
            status: None,
            system: None,
            call: None,
        })
    }

    /// The `kind: "call"` message a call start or end puts in the timeline (`None` for any
    /// other event); its id, like a system message's, comes from its `seq`.
    pub fn call(
        conversation_id: Uuid,
        event: &domain::conversation::ConversationEvent,
    ) -> Option<Self> {
        let domain::conversation::CallMessage {
            seq,
            initiator_id,
            details,
            at,
        } = domain::conversation::call_message(event)?;
        Some(Self {
            id: domain::conversation::system_message_id(
                domain::ConversationId::from_uuid(conversation_id),
                seq,
            ),
            conversation_id,
            seq,
            sender_id: initiator_id.as_uuid(),
            kind: "call".to_owned(),
            body: details["action"].as_str().map(str::to_owned),
            attachments: Vec::new(),
            reply_to_id: None,
            created_at: at,
            edited_at: None,
            deleted: false,
            status: None,
            system: None,
            call: Some(details),
        })
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub items: Vec<Message>,
    pub has_more: bool,
}

#[derive(Clone, Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Receipt {
    pub user_id: Uuid,
    #[serde(serialize_with = "rfc3339_millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub read_at: Option<DateTime<Utc>>,
}

/// A time as the contract writes it, for JSON built by hand.
pub fn rfc3339_string(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CallParticipant {
    pub user_id: Uuid,
    /// `ringing`, `joined`, `declined`, `left` or `missed`.
    pub state: String,
    #[serde(serialize_with = "rfc3339_millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub joined_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub left_at: Option<DateTime<Utc>>,
    pub audio: bool,
    pub video: bool,
    pub screen: bool,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Call {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub initiator_id: Uuid,
    /// `audio` or `video`.
    pub media: String,
    /// `ringing`, `active` or `ended`.
    pub state: String,
    /// `completed`, `missed`, `declined` or `cancelled` once ended.
    pub end_reason: Option<String>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<DateTime<Utc>>,
    /// From answer to end; null while it goes on or when nobody answered.
    pub duration_ms: Option<i64>,
    pub participants: Vec<CallParticipant>,
}

impl Call {
    /// The representation of a call's state; `None` before it started.
    pub fn from_state(call: &domain::call::Call) -> Option<Self> {
        Some(Self {
            id: call.id()?.as_uuid(),
            conversation_id: call.conversation_id()?.as_uuid(),
            initiator_id: call.initiator()?.as_uuid(),
            media: call.media()?.as_str().to_owned(),
            state: call.state()?.as_str().to_owned(),
            end_reason: call.end_reason().map(|reason| reason.as_str().to_owned()),
            started_at: call.started_at()?,
            answered_at: call.answered_at(),
            ended_at: call.ended_at(),
            duration_ms: call.duration_ms(),
            participants: call
                .participants()
                .iter()
                .map(|participant| CallParticipant {
                    user_id: participant.user_id().as_uuid(),
                    state: participant.state().as_str().to_owned(),
                    joined_at: participant.joined_at(),
                    left_at: participant.left_at(),
                    audio: participant.audio(),
                    video: participant.video(),
                    screen: participant.screen(),
                })
                .collect(),
        })
    }
}

/// `GET /api/v1/calls/ice-servers`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct IceServers {
    pub ice_servers: Vec<IceServer>,
    /// How long the TURN credentials stay valid.
    pub ttl_seconds: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}
