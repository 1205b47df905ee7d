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
