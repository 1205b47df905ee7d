//! Conversation and message reads. The loaders are public: the command side answers its
//! conversation commands with the same representation.

use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use domain::media::Attachment;
use serde::Deserialize;
use sqlx::PgPool;
use std::collections::HashMap;
use utoipa::IntoParams;
use uuid::Uuid;
use web::dto::{Conversation, ConversationMember, Message, MessagePage, Page, Receipt};
use web::{ApiError, Caller, MediaLinks};

use crate::QueryState;

#[derive(sqlx::FromRow)]
struct ConversationRow {
    id: Uuid,
    kind: String,
    title: Option<String>,
    owner_id: Uuid,
    last_seq: i64,
    created_at: DateTime<Utc>,
    last_activity_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow, Clone)]
struct MemberRow {
    conversation_id: Uuid,
    user_id: Uuid,
    role: String,
    joined_at: DateTime<Utc>,
    delivered_seq: i64,
    read_seq: i64,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    conversation_id: Uuid,
    seq: i64,
    sender_id: Uuid,
    kind: String,
    body: Option<String>,
    attachments: sqlx::types::Json<Vec<Attachment>>,
    reply_to_id: Option<Uuid>,
    system: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    edited_at: Option<DateTime<Utc>>,
    deleted: bool,
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, sender_id, kind, body, attachments, reply_to_id, system, created_at, edited_at, deleted";

/// The sender's view of a message: `read` once every other member's read watermark reached
/// it, `delivered` once every delivered watermark did, else `sent`. `None` for others.
fn status(row: &MessageRow, caller: Uuid, members: &[MemberRow]) -> Option<String> {
    if row.sender_id != caller || row.kind == "system" || row.kind == "call" {
        return None;
    }
    let others: Vec<&MemberRow> = members
        .iter()
        .filter(|member| member.user_id != caller)
        .collect();
    let all = |seen: fn(&MemberRow) -> i64| {
        !others.is_empty() && others.iter().all(|member| seen(member) >= row.seq)
    };
    let status = if all(|member| member.read_seq) {
        "read"
    } else if all(|member| member.delivered_seq) {
        "delivered"
    } else {
        "sent"
    };
    Some(status.to_owned())
}

fn to_message(row: MessageRow, caller: Uuid, members: &[MemberRow], links: &MediaLinks) -> Message {
    let status = status(&row, caller, members);
    let now = Utc::now();
    // The `system` column holds the details of system and call messages alike.
    let (system, call) = match row.kind.as_str() {
        "call" => (None, row.system),
        _ => (row.system, None),
    };
    Message {
        id: row.id,
        conversation_id: row.conversation_id,
        seq: row.seq,
        sender_id: row.sender_id,
        kind: row.kind,
        body: row.body,
        attachments: row
            .attachments
            .0
            .iter()
            .map(|attachment| links.media(attachment, now))
            .collect(),
        reply_to_id: row.reply_to_id,
        created_at: row.created_at,
        edited_at: row.edited_at,
        deleted: row.deleted,
        status,
        system,
        call,
    }
}

async fn members_of(pool: &PgPool, conversation_ids: &[Uuid]) -> sqlx::Result<Vec<MemberRow>> {
    sqlx::query_as(
        "SELECT conversation_id, user_id, role, joined_at, delivered_seq, read_seq
           FROM conversation_members WHERE conversation_id = ANY($1) ORDER BY joined_at, user_id",
    )
    .bind(conversation_ids)
    .fetch_all(pool)
    .await
}

async fn is_member(pool: &PgPool, conversation_id: Uuid, user_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2)",
    )
    .bind(conversation_id)
    .bind(user_id)
    .fetch_one(pool)
    .await
}

/// The conversations of `caller` among `rows`, assembled with members, last message and
/// unread count in three more queries whatever the page size.
async fn assemble(
    pool: &PgPool,
    links: &MediaLinks,
    rows: Vec<ConversationRow>,
    caller: Uuid,
) -> sqlx::Result<Vec<Conversation>> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let members = members_of(pool, &ids).await?;
    let last_messages: Vec<MessageRow> = sqlx::query_as(&format!(
        "SELECT DISTINCT ON (conversation_id) {MESSAGE_COLUMNS} FROM messages
          WHERE conversation_id = ANY($1) ORDER BY conversation_id, seq DESC"
    ))
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let unread: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT m.conversation_id, count(*) FROM messages m
           JOIN conversation_members me ON me.conversation_id = m.conversation_id AND me.user_id = $2
          WHERE m.conversation_id = ANY($1) AND m.seq > me.read_seq AND m.sender_id <> $2
            AND NOT m.deleted AND m.kind <> 'system'
          GROUP BY m.conversation_id",
    )
    .bind(&ids)
    .bind(caller)
    .fetch_all(pool)
    .await?;
    let unread: HashMap<Uuid, i64> = unread.into_iter().collect();
    let mut members_by_conversation: HashMap<Uuid, Vec<MemberRow>> = HashMap::new();
    for member in members {
        members_by_conversation
            .entry(member.conversation_id)
            .or_default()
            .push(member);
    }
    let mut last_by_conversation: HashMap<Uuid, MessageRow> = last_messages
        .into_iter()
        .map(|row| (row.conversation_id, row))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| {
            let members = members_by_conversation.remove(&row.id).unwrap_or_default();
            let last_message = last_by_conversation
                .remove(&row.id)
                .map(|message| to_message(message, caller, &members, links));
            Conversation {
                id: row.id,
                kind: row.kind,
                title: row.title,
                owner_id: row.owner_id,
                members: members
                    .iter()
                    .map(|member| ConversationMember {
                        user_id: member.user_id,
                        role: member.role.clone(),
                        joined_at: member.joined_at,
                    })
                    .collect(),
                last_message,
                unread_count: unread.get(&row.id).copied().unwrap_or(0),
                last_seq: row.last_seq,
                created_at: row.created_at,
                last_activity_at: row.last_activity_at,
            }
        })
        .collect())
}

/// One conversation as `caller` sees it; `None` when it does not exist or they are not a member.
pub async fn load_conversation(
    pool: &PgPool,
    links: &MediaLinks,
    conversation_id: Uuid,
    caller: Uuid,
) -> sqlx::Result<Option<Conversation>> {
    let row: Option<ConversationRow> = sqlx::query_as(
        "SELECT c.id, c.kind, c.title, c.owner_id, c.last_seq, c.created_at, c.last_activity_at
           FROM conversations c JOIN conversation_members me ON me.conversation_id = c.id AND me.user_id = $2
          WHERE c.id = $1",
    )
    .bind(conversation_id)
    .bind(caller)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => Ok(assemble(pool, links, vec![row], caller).await?.pop()),
        None => Ok(None),
    }
}

/// One message as `caller` sees it; `None` unless they are a member of its conversation.
pub async fn load_message(
    pool: &PgPool,
    links: &MediaLinks,
    message_id: Uuid,
    caller: Uuid,
) -> sqlx::Result<Option<Message>> {
    let row: Option<MessageRow> = sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
    ))
    .bind(message_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let members = members_of(pool, &[row.conversation_id]).await?;
    if !members.iter().any(|member| member.user_id == caller) {
        return Ok(None);
    }
    Ok(Some(to_message(row, caller, &members, links)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1 to 200, default 50.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

fn conversation_not_found() -> ApiError {
    ApiError::not_found("conversation_not_found", "no such conversation")
}

fn message_not_found() -> ApiError {
    ApiError::not_found("message_not_found", "no such message")
}

/// GET /api/v1/conversations
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations", params(ListQuery),
    responses((status = 200, body = Page<Conversation>)), security(("bearer" = [])))]
pub async fn list_conversations(
    State(state): State<QueryState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Page<Conversation>>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let limit = crate::page_limit(query.limit)?;
    let (before_time, before_id) = match &query.cursor {
        None => (DateTime::<Utc>::MAX_UTC, Uuid::max()),
        Some(cursor) => decode_cursor(cursor).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this server issued")
        })?,
    };
    let rows: Vec<ConversationRow> = sqlx::query_as(
        "SELECT c.id, c.kind, c.title, c.owner_id, c.last_seq, c.created_at, c.last_activity_at
           FROM conversation_members me JOIN conversations c ON c.id = me.conversation_id
          WHERE me.user_id = $1 AND (c.last_activity_at, c.id) < ($2, $3)
          ORDER BY c.last_activity_at DESC, c.id DESC LIMIT $4",
    )
    .bind(caller.user_id)
    .bind(before_time)
    .bind(before_id)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    let rows: Vec<ConversationRow> = rows.into_iter().take(limit as usize).collect();
    let next_cursor = if has_more {
        rows.last()
            .map(|row| encode_cursor(row.last_activity_at, row.id))
    } else {
        None
    };
    let items = assemble(&state.pool, &state.links, rows, caller.user_id).await?;
    Ok(axum::Json(Page { items, next_cursor }))
}

fn encode_cursor(time: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", time.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

/// GET /api/v1/conversations/{id}
#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations", params(("id" = Uuid, Path)),
    responses((status = 200, body = Conversation), (status = 404)), security(("bearer" = [])))]
pub async fn get_conversation(
    State(state): State<QueryState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Conversation>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| conversation_not_found())?;
    load_conversation(&state.pool, &state.links, id, caller.user_id)
        .await?
        .map(axum::Json)
        .ok_or_else(conversation_not_found)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub before_seq: Option<i64>,
    pub after_seq: Option<i64>,
    /// 1 to 200, default 50.
    pub limit: Option<i64>,
}

/// GET /api/v1/conversations/{id}/messages
#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", tag = "messages",
    params(("id" = Uuid, Path), HistoryQuery),
    responses((status = 200, body = MessagePage), (status = 404)), security(("bearer" = [])))]
pub async fn history(
    State(state): State<QueryState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<MessagePage>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let limit = crate::page_limit(query.limit)?;
    let id: Uuid = id.parse().map_err(|_| conversation_not_found())?;
    if !is_member(&state.pool, id, caller.user_id).await? {
        return Err(conversation_not_found());
    }
    // Without `after_seq` the page is the newest one (below `before_seq`, if given), read
    // backwards; with it, the page just after `after_seq`, read forwards.
    let forwards = query.after_seq.is_some();
    let after = query.after_seq.unwrap_or(0);
    let before = query.before_seq.unwrap_or(i64::MAX);
    let order = if forwards { "ASC" } else { "DESC" };
    let mut rows: Vec<MessageRow> = sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
          WHERE conversation_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq {order} LIMIT $4"
    ))
    .bind(id)
    .bind(after)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    if !forwards {
        rows.reverse();
    }
    let members = members_of(&state.pool, &[id]).await?;
    let items = rows
        .into_iter()
        .map(|row| to_message(row, caller.user_id, &members, &state.links))
        .collect();
    Ok(axum::Json(MessagePage { items, has_more }))
}

/// GET /api/v1/messages/{id}
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", params(("id" = Uuid, Path)),
    responses((status = 200, body = Message), (status = 404)), security(("bearer" = [])))]
pub async fn get_message(
    State(state): State<QueryState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Message>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| message_not_found())?;
    load_message(&state.pool, &state.links, id, caller.user_id)
        .await?
        .map(axum::Json)
        .ok_or_else(message_not_found)
}

/// GET /api/v1/messages/{id}/receipts
#[utoipa::path(get, path = "/api/v1/messages/{id}/receipts", tag = "messages", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<Receipt>), (status = 404)), security(("bearer" = [])))]
pub async fn receipts(
    State(state): State<QueryState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Vec<Receipt>>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| message_not_found())?;
    let message = load_message(&state.pool, &state.links, id, caller.user_id)
        .await?
        .ok_or_else(message_not_found)?;
    let rows: Vec<Receipt> = sqlx::query_as(
        "SELECT cm.user_id,
                (SELECT min(r.at) FROM receipt_marks r
                  WHERE r.conversation_id = cm.conversation_id AND r.user_id = cm.user_id AND r.delivered_seq >= $3) AS delivered_at,
                (SELECT min(r.at) FROM receipt_marks r
                  WHERE r.conversation_id = cm.conversation_id AND r.user_id = cm.user_id AND r.read_seq >= $3) AS read_at
           FROM conversation_members cm
          WHERE cm.conversation_id = $1 AND cm.user_id <> $2
          ORDER BY cm.joined_at, cm.user_id",
    )
    .bind(message.conversation_id)
    .bind(message.sender_id)
    .bind(message.seq)
    .fetch_all(&state.pool)
    .await?;
    Ok(axum::Json(rows))
}
