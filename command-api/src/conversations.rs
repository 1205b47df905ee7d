//! `/api/v1/conversations/*` and `/api/v1/messages/*`: conversations, membership, messages and
//! receipts. Messages are answered from the event just committed; conversation changes wait
//! for the read model (the same representation the queries serve).

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use domain::conversation::{
    ClientMessageId, Conversation, ConversationCommand, ConversationError, ConversationEvent,
    ConversationKind, ConversationServices, MessageBody, MessageFacts, MessageLookup, Title,
};
use domain::metadata::EventMetadata;
use domain::{ConversationId, MessageId, UserId};
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::Arc;
use store::{Committed, ExecuteError, StreamPosition};
use utoipa::ToSchema;
use uuid::Uuid;
use web::dto::Message;
use web::{ApiError, ApiJson, Caller, RequestId, consistency};

use crate::CommandState;
use crate::auth::{invalid, metadata};

/// The message index (`message_index`, kept by a trigger on `events`).
pub struct IndexedMessages {
    pub pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct FactsRow {
    message_id: Uuid,
    seq: i64,
    sender_id: Uuid,
    deleted: bool,
}

impl From<FactsRow> for MessageFacts {
    fn from(row: FactsRow) -> Self {
        Self {
            message_id: MessageId::from_uuid(row.message_id),
            seq: row.seq,
            sender_id: UserId::from_uuid(row.sender_id),
            deleted: row.deleted,
        }
    }
}

#[async_trait]
impl MessageLookup for IndexedMessages {
    async fn message(
        &self,
        conversation_id: ConversationId,
        message_id: MessageId,
    ) -> Result<Option<MessageFacts>, String> {
        sqlx::query_as::<_, FactsRow>(
            "SELECT message_id, seq, sender_id, deleted FROM message_index
              WHERE conversation_id = $1 AND message_id = $2",
        )
        .bind(conversation_id.as_uuid())
        .bind(message_id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map(|row| row.map(MessageFacts::from))
        .map_err(|error| error.to_string())
    }

    async fn by_client_message_id(
        &self,
        conversation_id: ConversationId,
        sender_id: UserId,
        client_message_id: &ClientMessageId,
    ) -> Result<Option<MessageFacts>, String> {
        sqlx::query_as::<_, FactsRow>(
            "SELECT message_id, seq, sender_id, deleted FROM message_index
              WHERE conversation_id = $1 AND sender_id = $2 AND client_message_id = $3",
        )
        .bind(conversation_id.as_uuid())
        .bind(sender_id.as_uuid())
        .bind(client_message_id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map(|row| row.map(MessageFacts::from))
        .map_err(|error| error.to_string())
    }
}

/// The lookups of one send. Its first decision takes the `client_message_id` as new without
/// asking the index: a retry of an earlier send then breaks the index's unique key when it
/// commits, and the store decides the command again, this time with the real lookup, which
/// finds the original. A send that is not a retry (nearly all) saves a query.
struct FirstSendAssumedNew {
    index: Arc<dyn MessageLookup>,
    first: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl MessageLookup for FirstSendAssumedNew {
    async fn message(
        &self,
        conversation_id: ConversationId,
        message_id: MessageId,
    ) -> Result<Option<MessageFacts>, String> {
        self.index.message(conversation_id, message_id).await
    }

    async fn by_client_message_id(
        &self,
        conversation_id: ConversationId,
        sender_id: UserId,
        client_message_id: &ClientMessageId,
    ) -> Result<Option<MessageFacts>, String> {
        if self.first.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        self.index
            .by_client_message_id(conversation_id, sender_id, client_message_id)
            .await
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CreateConversationRequest {
    Direct {
        user_id: Uuid,
    },
    Group {
        title: String,
        member_ids: Vec<Uuid>,
    },
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    pub title: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    pub user_id: Uuid,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    pub client_message_id: Option<String>,
    pub body: Option<String>,
    #[serde(default)]
    pub attachment_ids: Vec<Uuid>,
    pub reply_to_id: Option<Uuid>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessageRequest {
    pub body: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsRequest {
    pub delivered_seq: Option<i64>,
    pub read_seq: Option<i64>,
}

/// POST /api/v1/conversations
#[utoipa::path(post, path = "/api/v1/conversations", tag = "conversations", request_body = CreateConversationRequest,
    responses((status = 201, body = web::dto::Conversation), (status = 200, body = web::dto::Conversation, description = "the existing direct conversation"),
              (status = 400), (status = 404)), security(("bearer" = [])))]
pub async fn create_conversation(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    ApiJson(request): ApiJson<CreateConversationRequest>,
) -> Result<Response, ApiError> {
    let creator_id = UserId::from_uuid(caller.user_id);
    let (kind, member_ids, title) = match request {
        CreateConversationRequest::Direct { user_id } => {
            if user_id == caller.user_id {
                return Err(ApiError::bad_request(
                    "invalid_members",
                    "a direct conversation is with another user",
                ));
            }
            (ConversationKind::Direct, vec![user_id], None)
        }
        CreateConversationRequest::Group { title, member_ids } => (
            ConversationKind::Group,
            member_ids,
            Some(Title::parse(&title).map_err(invalid)?),
        ),
    };
    require_accounts(&state.pool, &member_ids).await?;
    let conversation_id = ConversationId::new();
    if kind == ConversationKind::Direct {
        let other = member_ids.first().copied().unwrap_or_default();
        match claim_direct_pair(&state.pool, caller.user_id, other, conversation_id).await? {
            DirectPair::Claimed => {}
            DirectPair::Existing(existing) => {
                let position = StreamPosition {
                    aggregate_type: "conversation".to_owned(),
                    aggregate_id: existing.to_string(),
                    sequence: 1,
                };
                return conversation_response(&state, &position, caller.user_id, StatusCode::OK)
                    .await;
            }
        }
    }
    let metadata = metadata(Some(creator_id), &request_id);
    let command = ConversationCommand::Create {
        conversation_id,
        kind,
        creator_id,
        member_ids: member_ids.into_iter().map(UserId::from_uuid).collect(),
        title,
        at: metadata.recorded_at,
    };
    let committed = execute(&state, conversation_id, command, &metadata).await?;
    conversation_response(
        &state,
        &committed.position,
        caller.user_id,
        StatusCode::CREATED,
    )
    .await
}

/// PATCH /api/v1/conversations/{id}
#[utoipa::path(patch, path = "/api/v1/conversations/{id}", tag = "conversations", params(("id" = Uuid, Path)), request_body = RenameRequest,
    responses((status = 200, body = web::dto::Conversation), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn rename(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RenameRequest>,
) -> Result<Response, ApiError> {
    let conversation_id = conversation_id(&id)?;
    let title = Title::parse(&request.title).map_err(invalid)?;
    let metadata = metadata(Some(UserId::from_uuid(caller.user_id)), &request_id);
    let command = ConversationCommand::Rename {
        by: UserId::from_uuid(caller.user_id),
        title,
        at: metadata.recorded_at,
    };
    let committed = execute(&state, conversation_id, command, &metadata).await?;
    conversation_response(&state, &committed.position, caller.user_id, StatusCode::OK).await
}

/// POST /api/v1/conversations/{id}/members
#[utoipa::path(post, path = "/api/v1/conversations/{id}/members", tag = "conversations", params(("id" = Uuid, Path)), request_body = AddMemberRequest,
    responses((status = 200, body = web::dto::Conversation), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn add_member(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<AddMemberRequest>,
) -> Result<Response, ApiError> {
    let conversation_id = conversation_id(&id)?;
    require_accounts(&state.pool, &[request.user_id]).await?;
    let metadata = metadata(Some(UserId::from_uuid(caller.user_id)), &request_id);
    let command = ConversationCommand::AddMember {
        by: UserId::from_uuid(caller.user_id),
        user_id: UserId::from_uuid(request.user_id),
        at: metadata.recorded_at,
    };
    let committed = execute(&state, conversation_id, command, &metadata).await?;
    conversation_response(&state, &committed.position, caller.user_id, StatusCode::OK).await
}

/// DELETE /api/v1/conversations/{id}/members/{user_id}
#[utoipa::path(delete, path = "/api/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn remove_member(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let conversation_id = conversation_id(&id)?;
    let user_id: Uuid = user_id
        .parse()
        .map_err(|_| ApiError::not_found("member_not_found", "no such member"))?;
    let metadata = metadata(Some(UserId::from_uuid(caller.user_id)), &request_id);
    let command = ConversationCommand::RemoveMember {
        by: UserId::from_uuid(caller.user_id),
        user_id: UserId::from_uuid(user_id),
        at: metadata.recorded_at,
    };
    let committed = execute(&state, conversation_id, command, &metadata).await?;
    Ok(consistency::no_content(&committed.position))
}

/// POST /api/v1/conversations/{id}/messages
#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "messages", params(("id" = Uuid, Path)), request_body = SendMessageRequest,
    responses((status = 201, body = Message), (status = 400), (status = 404), (status = 422)), security(("bearer" = [])))]
pub async fn send_message(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<SendMessageRequest>,
) -> Result<Response, ApiError> {
    let conversation_id = conversation_id(&id)?;
    // `Idempotency-Key` stands in for a missing client_message_id: one key, one message.
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (message, position) = send(
        &state,
        &request_id,
        caller.user_id,
        conversation_id,
        request,
        idempotency_key,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        [consistency::header(&position)],
        axum::Json(message),
    )
        .into_response())
}

/// Sends a message (REST and WebSocket alike) and returns it as the sender sees it.
pub async fn send(
    state: &CommandState,
    request_id: &RequestId,
    sender: Uuid,
    conversation_id: ConversationId,
    request: SendMessageRequest,
    idempotency_key: Option<String>,
) -> Result<(Message, StreamPosition), ApiError> {
    let client_message_id = request
        .client_message_id
        .or(idempotency_key)
        .as_deref()
        .map(ClientMessageId::parse)
        .transpose()
        .map_err(invalid)?;
    let body = request
        .body
        .as_deref()
        .map(MessageBody::parse)
        .transpose()
        .map_err(invalid)?;
    if request.attachment_ids.len() > domain::conversation::MAX_ATTACHMENTS {
        return Err(ApiError::bad_request(
            "invalid_attachments",
            "a message carries at most 10 attachments",
        ));
    }
    if let Err(retry_after) = state
        .send_limits
        .admit(sender)
        .await
        .map_err(ApiError::unavailable)?
    {
        return Err(ApiError::rate_limited(retry_after.0));
    }
    let sender_id = UserId::from_uuid(sender);
    let attachments = crate::media::owned_images(
        state,
        sender_id,
        &request.attachment_ids,
        "attachment_not_found",
    )
    .await?;
    let metadata = metadata(Some(sender_id), request_id);
    let command = ConversationCommand::SendMessage {
        message_id: MessageId::new(),
        sender_id,
        client_message_id: client_message_id.clone(),
        body,
        attachments,
        reply_to_id: request.reply_to_id.map(MessageId::from_uuid),
        at: metadata.recorded_at,
    };
    let services = ConversationServices {
        messages: Arc::new(FirstSendAssumedNew {
            index: state.conversation_services.messages.clone(),
            first: std::sync::atomic::AtomicBool::new(true),
        }),
    };
    let committed = state
        .conversations
        .execute(&conversation_id.to_string(), command, &services, &metadata)
        .await
        .map_err(conversation_error)?;
    let sent = match committed.events.into_iter().next() {
        Some(event) => event,
        None => original_send(&state.pool, conversation_id, sender_id, client_message_id).await?,
    };
    let mut message = Message::sent(conversation_id.as_uuid(), &sent, &state.uploads.links)
        .ok_or_else(|| ApiError::internal("a send produced no MessageSent"))?;
    message.status = Some("sent".to_owned());
    Ok((message, committed.position))
}

/// The `MessageSent` event of an earlier send with the same client_message_id.
async fn original_send(
    pool: &PgPool,
    conversation_id: ConversationId,
    sender_id: UserId,
    client_message_id: Option<ClientMessageId>,
) -> Result<ConversationEvent, ApiError> {
    let client_message_id = client_message_id
        .ok_or_else(|| ApiError::internal("a send wrote nothing without being a retry"))?;
    let message_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT message_id FROM message_index
          WHERE conversation_id = $1 AND sender_id = $2 AND client_message_id = $3",
    )
    .bind(conversation_id.as_uuid())
    .bind(sender_id.as_uuid())
    .bind(client_message_id.as_str())
    .fetch_optional(pool)
    .await?;
    let message_id =
        message_id.ok_or_else(|| ApiError::internal("the original send is not in the index"))?;
    sent_event(pool, conversation_id.as_uuid(), message_id)
        .await
        .map_err(ApiError::database)
}

/// The `MessageSent` event of a message, found through the message index.
pub async fn sent_event(
    executor: impl sqlx::PgExecutor<'_>,
    conversation_id: Uuid,
    message_id: Uuid,
) -> sqlx::Result<ConversationEvent> {
    let (event_version, payload): (String, serde_json::Value) = sqlx::query_as(
        "SELECT e.event_version, e.payload::jsonb FROM message_index i
           JOIN events e ON e.aggregate_type = 'conversation' AND e.aggregate_id = i.conversation_id::text
                        AND e.sequence = i.event_sequence
          WHERE i.message_id = $1 AND i.conversation_id = $2",
    )
    .bind(message_id)
    .bind(conversation_id)
    .fetch_one(executor)
    .await?;
    let payload =
        domain::upcasting::upcast_payload("conversation", "MessageSent", &event_version, payload);
    serde_json::from_value(payload).map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

/// PATCH /api/v1/messages/{id}
#[utoipa::path(patch, path = "/api/v1/messages/{id}", tag = "messages", params(("id" = Uuid, Path)), request_body = EditMessageRequest,
    responses((status = 200, body = Message), (status = 403), (status = 404), (status = 422)), security(("bearer" = [])))]
pub async fn edit_message(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<EditMessageRequest>,
) -> Result<Response, ApiError> {
    let (conversation_id, message_id) = locate_message(&state.pool, &id).await?;
    let body = MessageBody::parse(&request.body).map_err(invalid)?;
    let metadata = metadata(Some(UserId::from_uuid(caller.user_id)), &request_id);
    let command = ConversationCommand::EditMessage {
        message_id,
        editor_id: UserId::from_uuid(caller.user_id),
        body,
        at: metadata.recorded_at,
    };
    let committed = execute(&state, conversation_id, command, &metadata).await?;
    wait_for(&state.pool, &committed.position).await?;
    let message = query_api::conversations::load_message(
        &state.pool,
        &state.uploads.links,
        message_id.as_uuid(),
        caller.user_id,
    )
    .await?
    .ok_or_else(message_not_found)?;
    Ok((
        [consistency::header(&committed.position)],
        axum::Json(message),
    )
        .into_response())
}

/// DELETE /api/v1/messages/{id}
#[utoipa::path(delete, path = "/api/v1/messages/{id}", tag = "messages", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn delete_message(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (conversation_id, message_id) = locate_message(&state.pool, &id).await?;
    let metadata = metadata(Some(UserId::from_uuid(caller.user_id)), &request_id);
    let command = ConversationCommand::DeleteMessage {
        message_id,
        by: UserId::from_uuid(caller.user_id),
        at: metadata.recorded_at,
    };
    let committed = execute(&state, conversation_id, command, &metadata).await?;
    Ok(consistency::no_content(&committed.position))
}

/// POST /api/v1/conversations/{id}/receipts
#[utoipa::path(post, path = "/api/v1/conversations/{id}/receipts", tag = "messages", params(("id" = Uuid, Path)), request_body = ReceiptsRequest,
    responses((status = 204), (status = 400), (status = 404)), security(("bearer" = [])))]
pub async fn move_receipts(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ReceiptsRequest>,
) -> Result<Response, ApiError> {
    let conversation_id = conversation_id(&id)?;
    let position = receipts(
        &state,
        &request_id,
        caller.user_id,
        conversation_id,
        request,
    )
    .await?;
    Ok(consistency::no_content(&position))
}

/// Moves the caller's watermarks (REST and WebSocket alike).
pub async fn receipts(
    state: &CommandState,
    request_id: &RequestId,
    user: Uuid,
    conversation_id: ConversationId,
    request: ReceiptsRequest,
) -> Result<StreamPosition, ApiError> {
    if request.delivered_seq.is_none() && request.read_seq.is_none() {
        return Err(ApiError::bad_request(
            "invalid_receipt",
            "give delivered_seq, read_seq or both",
        ));
    }
    if request.delivered_seq.is_some_and(|seq| seq < 0)
        || request.read_seq.is_some_and(|seq| seq < 0)
    {
        return Err(ApiError::bad_request(
            "invalid_receipt",
            "seq values are not negative",
        ));
    }
    let user_id = UserId::from_uuid(user);
    let metadata = metadata(Some(user_id), request_id);
    let command = ConversationCommand::MoveReceipts {
        user_id,
        delivered_seq: request.delivered_seq,
        read_seq: request.read_seq,
        at: metadata.recorded_at,
    };
    Ok(execute(state, conversation_id, command, &metadata)
        .await?
        .position)
}

async fn execute(
    state: &CommandState,
    conversation_id: ConversationId,
    command: ConversationCommand,
    metadata: &EventMetadata,
) -> Result<Committed<Conversation>, ApiError> {
    state
        .conversations
        .execute(
            &conversation_id.to_string(),
            command,
            &state.conversation_services,
            metadata,
        )
        .await
        .map_err(conversation_error)
}

/// Waits for the projector, then answers with the conversation as the caller now sees it.
async fn conversation_response(
    state: &CommandState,
    position: &StreamPosition,
    caller: Uuid,
    status: StatusCode,
) -> Result<Response, ApiError> {
    wait_for(&state.pool, position).await?;
    let conversation_id: Uuid = position.aggregate_id.parse().map_err(ApiError::internal)?;
    let conversation = query_api::conversations::load_conversation(
        &state.pool,
        &state.uploads.links,
        conversation_id,
        caller,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("conversation_not_found", "no such conversation"))?;
    Ok((
        status,
        [consistency::header(position)],
        axum::Json(conversation),
    )
        .into_response())
}

async fn wait_for(pool: &PgPool, position: &StreamPosition) -> Result<(), ApiError> {
    if store::projection::wait_until_applied(pool, position, consistency::WAIT_LIMIT).await? {
        Ok(())
    } else {
        Err(ApiError {
            retry_after_seconds: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "consistency_timeout",
                "the change is saved but not yet visible; read it again shortly",
            )
        })
    }
}

enum DirectPair {
    Claimed,
    Existing(Uuid),
}

/// Claims the pair for a new conversation, or finds the conversation it already has. A claim
/// whose conversation was never created (a crash in between) is taken over after 30 s.
async fn claim_direct_pair(
    pool: &PgPool,
    one: Uuid,
    other: Uuid,
    conversation_id: ConversationId,
) -> Result<DirectPair, ApiError> {
    let (low, high) = if one < other {
        (one, other)
    } else {
        (other, one)
    };
    let claimed = sqlx::query(
        "INSERT INTO direct_pairs (user_low, user_high, conversation_id) VALUES ($1, $2, $3)
         ON CONFLICT (user_low, user_high) DO UPDATE SET conversation_id = EXCLUDED.conversation_id, claimed_at = now()
          WHERE direct_pairs.claimed_at < now() - interval '30 seconds'
            AND NOT EXISTS (SELECT 1 FROM events WHERE aggregate_type = 'conversation'
                                                   AND aggregate_id = direct_pairs.conversation_id::text)",
    )
    .bind(low)
    .bind(high)
    .bind(conversation_id.as_uuid())
    .execute(pool)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(DirectPair::Claimed);
    }
    let existing: Uuid = sqlx::query_scalar(
        "SELECT conversation_id FROM direct_pairs WHERE user_low = $1 AND user_high = $2",
    )
    .bind(low)
    .bind(high)
    .fetch_one(pool)
    .await?;
    Ok(DirectPair::Existing(existing))
}

/// 404 `user_not_found` unless every id names a registered account (from the event store,
/// which is authoritative, not from a read model that may lag).
async fn require_accounts(pool: &PgPool, user_ids: &[Uuid]) -> Result<(), ApiError> {
    let ids: Vec<String> = user_ids.iter().map(Uuid::to_string).collect();
    let found: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'account' AND sequence = 1 AND aggregate_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    if found as usize == distinct.len() {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "user_not_found",
            "a user in the request does not exist",
        ))
    }
}

async fn locate_message(pool: &PgPool, id: &str) -> Result<(ConversationId, MessageId), ApiError> {
    let message_id: Uuid = id.parse().map_err(|_| message_not_found())?;
    let conversation_id: Option<Uuid> =
        sqlx::query_scalar("SELECT conversation_id FROM message_index WHERE message_id = $1")
            .bind(message_id)
            .fetch_optional(pool)
            .await?;
    let conversation_id = conversation_id.ok_or_else(message_not_found)?;
    Ok((
        ConversationId::from_uuid(conversation_id),
        MessageId::from_uuid(message_id),
    ))
}

fn conversation_id(id: &str) -> Result<ConversationId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found("conversation_not_found", "no such conversation"))
}

fn message_not_found() -> ApiError {
    ApiError::not_found("message_not_found", "no such message")
}

pub fn conversation_error(error: ExecuteError<ConversationError>) -> ApiError {
    let domain = match error {
        ExecuteError::Store(cause) => return ApiError::unavailable(cause),
        ExecuteError::Domain(domain) => domain,
    };
    let detail = domain.to_string();
    match domain {
        ConversationError::NotFound => ApiError::not_found("conversation_not_found", detail),
        ConversationError::AlreadyExists => ApiError::conflict("conversation_exists", detail),
        ConversationError::InvalidMembers(_) => ApiError::bad_request("invalid_members", detail),
        ConversationError::NotAGroup => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_a_group", detail)
        }
        ConversationError::Forbidden(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
        }
        ConversationError::AlreadyMember => ApiError::conflict("already_member", detail),
        ConversationError::NotAMember => ApiError::not_found("member_not_found", detail),
        ConversationError::MessageNotFound => ApiError::not_found("message_not_found", detail),
        ConversationError::MessageDeleted => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "message_deleted", detail)
        }
        ConversationError::ReplyNotFound => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reply_not_found", detail)
        }
        ConversationError::EmptyMessage => ApiError::bad_request("empty_message", detail),
        ConversationError::InvalidAttachments(_) => {
            ApiError::bad_request("invalid_attachments", detail)
        }
        ConversationError::CallActive(_) => ApiError::conflict("call_active", detail),
        ConversationError::Lookup(cause) => ApiError::unavailable(cause),
    }
}
