//! `/api/v1/audit/*` (role `admin`): the event log read back, and a conversation as it stood
//! at any time, rebuilt from the log. The functions are public: `chatd audit export` uses them.

use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::conversation::{Conversation, ConversationEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use web::dto::{ConversationMember, Message};
use web::{ApiError, Caller};

use crate::QueryState;

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct AuditEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub actor_id: Option<String>,
    pub request_id: Option<String>,
    pub recorded_at: Option<String>,
    /// The event's place in the whole log (the paging cursor).
    #[serde(skip)]
    pub log_position: i64,
}

/// Which events to read.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub actor_id: Option<String>,
    /// Recorded at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Recorded before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
    /// 1 to 200, default 50.
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

/// Events in log order after `after`, at most `limit`.
pub async fn read_events(
    pool: &PgPool,
    filter: &AuditFilter,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<AuditEvent>> {
    sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload::jsonb AS payload,
                metadata ->> 'actor_id' AS actor_id, metadata ->> 'request_id' AS request_id,
                metadata ->> 'recorded_at' AS recorded_at, log_position
           FROM events
          WHERE log_position > $1
            AND ($2::text IS NULL OR aggregate_type = $2)
            AND ($3::text IS NULL OR aggregate_id = $3)
            AND ($4::text IS NULL OR metadata ->> 'actor_id' = $4)
            AND ($5::timestamptz IS NULL OR (metadata ->> 'recorded_at')::timestamptz >= $5)
            AND ($6::timestamptz IS NULL OR (metadata ->> 'recorded_at')::timestamptz < $6)
          ORDER BY log_position
          LIMIT $7",
    )
    .bind(after)
    .bind(&filter.aggregate_type)
    .bind(&filter.aggregate_id)
    .bind(&filter.actor_id)
    .bind(filter.from)
    .bind(filter.to)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Whether the user holds the `admin` role: the last grant or revocation on their stream.
pub async fn is_admin(pool: &PgPool, user_id: Uuid) -> sqlx::Result<bool> {
    let last: Option<String> = sqlx::query_scalar(
        "SELECT event_type FROM events
          WHERE aggregate_type = 'account' AND aggregate_id = $1
            AND event_type IN ('AccountAdminGranted', 'AccountAdminRevoked')
          ORDER BY sequence DESC LIMIT 1",
    )
    .bind(user_id.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(last.as_deref() == Some("AccountAdminGranted"))
}

async fn require_admin(state: &QueryState, caller: &Caller) -> Result<(), ApiError> {
    if is_admin(&state.pool, caller.user_id).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "admin_required",
            "the audit log is for admins",
        ))
    }
}

/// GET /api/v1/audit/events
#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit", params(AuditFilter),
    responses((status = 200, body = AuditPage), (status = 403)), security(("bearer" = [])))]
pub async fn events(
    State(state): State<QueryState>,
    caller: Caller,
    query: Result<Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    require_admin(&state, &caller).await?;
    let Query(filter) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
    let limit = crate::page_limit(filter.limit)?;
    let after = match &filter.after {
        None => 0,
        Some(cursor) => cursor.parse().map_err(|_| {
            ApiError::bad_request("invalid_cursor", "after is not a cursor this server issued")
        })?,
    };
    let mut items = read_events(&state.pool, &filter, after, limit + 1).await?;
    let has_more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if has_more {
        items.last().map(|event| event.log_position.to_string())
    } else {
        None
    };
    Ok(axum::Json(AuditPage { items, next_cursor }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AsOfQuery {
    /// RFC 3339; default now.
    pub as_of: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationState {
    pub conversation: web::dto::Conversation,
    pub messages: Vec<Message>,
}

/// GET /api/v1/audit/conversations/{id}/state
#[utoipa::path(get, path = "/api/v1/audit/conversations/{id}/state", tag = "audit", params(("id" = Uuid, Path), AsOfQuery),
    responses((status = 200, body = ConversationState), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn conversation_state(
    State(state): State<QueryState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<AsOfQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<ConversationState>, ApiError> {
    require_admin(&state, &caller).await?;
    let Query(query) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
    let not_found = || {
        ApiError::not_found(
            "conversation_not_found",
            "no such conversation at that time",
        )
    };
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let as_of = query.as_of.unwrap_or_else(Utc::now);
    rebuild_conversation(&state.pool, &state.links, id, as_of)
        .await?
        .map(axum::Json)
        .ok_or_else(not_found)
}

/// The conversation, its members and its messages exactly as they stood at `as_of`, from the
/// log alone: later events are not applied, so later edits, deletions and members are absent.
pub async fn rebuild_conversation(
    pool: &PgPool,
    links: &web::MediaLinks,
    conversation_id: Uuid,
    as_of: DateTime<Utc>,
) -> sqlx::Result<Option<ConversationState>> {
    let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_type, event_version, payload::jsonb FROM events
          WHERE aggregate_type = 'conversation' AND aggregate_id = $1
            AND (metadata ->> 'recorded_at')::timestamptz <= $2
          ORDER BY sequence",
    )
    .bind(conversation_id.to_string())
    .bind(as_of)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut conversation = Conversation::default();
    let mut messages: BTreeMap<i64, Message> = BTreeMap::new();
    for (event_type, event_version, payload) in rows {
        let payload =
            domain::upcasting::upcast_payload("conversation", &event_type, &event_version, payload);
        let event: ConversationEvent = serde_json::from_value(payload)
            .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        match &event {
            ConversationEvent::MessageSent { seq, .. } => {
                if let Some(message) = Message::sent(conversation_id, &event, links) {
                    messages.insert(*seq, message);
                }
            }
            ConversationEvent::CallStarted { seq, .. }
            | ConversationEvent::CallEnded { seq, .. } => {
                if let Some(message) = Message::call(conversation_id, &event) {
                    messages.insert(*seq, message);
                }
            }
            ConversationEvent::MessageEdited { seq, body, at, .. } => {
                if let Some(message) = messages.get_mut(seq) {
                    message.body = Some(body.as_str().to_owned());
                    message.edited_at = Some(*at);
                }
            }
            ConversationEvent::MessageDeleted { seq, .. } => {
                if let Some(message) = messages.get_mut(seq) {
                    message.deleted = true;
                    message.body = None;
                }
            }
            ConversationEvent::Renamed { by, title, seq, at } => {
                let system = json!({"action": "renamed", "actor_id": by, "title": title.as_str()});
                messages.insert(
                    *seq,
                    Message::system(conversation_id, *seq, by.as_uuid(), system, *at),
                );
            }
            ConversationEvent::MemberAdded {
                by,
                user_id,
                seq,
                at,
                ..
            } => {
                let system = json!({"action": "member_added", "actor_id": by, "user_id": user_id});
                messages.insert(
                    *seq,
                    Message::system(conversation_id, *seq, by.as_uuid(), system, *at),
                );
            }
            ConversationEvent::MemberRemoved {
                by,
                user_id,
                new_owner_id,
                seq,
                at,
            } => {
                let action = if by == user_id {
                    "member_left"
                } else {
                    "member_removed"
                };
                let system = json!({"action": action, "actor_id": by, "user_id": user_id, "new_owner_id": new_owner_id});
                messages.insert(
                    *seq,
                    Message::system(conversation_id, *seq, by.as_uuid(), system, *at),
                );
            }
            ConversationEvent::Created { .. } | ConversationEvent::ReceiptsMoved { .. } => {}
        }
        conversation.apply(event);
    }
    let (Some(owner_id), Some(created_at)) = (conversation.owner_id, conversation.created_at)
    else {
        return Ok(None);
    };
    let kind = match conversation.kind {
        Some(domain::conversation::ConversationKind::Direct) => "direct",
        Some(domain::conversation::ConversationKind::Group) | None => "group",
    };
    let state = web::dto::Conversation {
        id: conversation_id,
        kind: kind.to_owned(),
        title: conversation
            .title
            .as_ref()
            .map(|title| title.as_str().to_owned()),
        owner_id: owner_id.as_uuid(),
        members: conversation
            .members
            .iter()
            .map(|(user_id, member)| ConversationMember {
                user_id: user_id.as_uuid(),
                role: member.role.as_str().to_owned(),
                joined_at: member.joined_at,
            })
            .collect(),
        last_message: messages.values().next_back().cloned(),
        unread_count: 0,
        last_seq: conversation.last_seq,
        created_at,
        last_activity_at: conversation.last_activity_at.unwrap_or(created_at),
    };
    Ok(Some(ConversationState {
        conversation: state,
        messages: messages.into_values().collect(),
    }))
}
