//! Call reads: one call, a conversation's call history, and the ICE servers (STUN, and TURN
//! with credentials in the TURN REST API scheme that coturn's `use-auth-secret` accepts).

use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sqlx::PgPool;
use std::collections::HashMap;
use utoipa::IntoParams;
use uuid::Uuid;
use web::dto::{Call, CallParticipant, IceServer, IceServers, Page};
use web::{ApiError, Caller};

use crate::QueryState;

/// What the ICE-server answer is made of (from configuration).
#[derive(Clone, Default)]
pub struct IceConfig {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    /// coturn's `static-auth-secret`; TURN URLs are only handed out with credentials.
    pub turn_secret: Option<String>,
    pub ttl_secs: u64,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("IceConfig")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// TURN REST API credentials: the username is `expiry:user_id` (Unix seconds), the credential
/// the base64 HMAC-SHA1 of the username under the shared secret.
pub fn turn_credentials(secret: &str, user_id: Uuid, expires: i64) -> (String, String) {
    let username = format!("{expires}:{user_id}");
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(username.as_bytes());
    let credential = STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

/// GET /api/v1/calls/ice-servers
#[utoipa::path(get, path = "/api/v1/calls/ice-servers", tag = "calls",
    responses((status = 200, body = IceServers)), security(("bearer" = [])))]
pub async fn ice_servers(
    State(state): State<QueryState>,
    caller: Caller,
) -> axum::Json<IceServers> {
    let config = &state.ice;
    let mut ice_servers = Vec::new();
    let stun: Vec<String> = nonempty(&config.stun_urls);
    if !stun.is_empty() {
        ice_servers.push(IceServer {
            urls: stun,
            username: None,
            credential: None,
        });
    }
    let turn = nonempty(&config.turn_urls);
    if let Some(secret) = config
        .turn_secret
        .as_deref()
        .filter(|secret| !secret.is_empty())
        && !turn.is_empty()
    {
        let expires = Utc::now().timestamp() + i64::try_from(config.ttl_secs).unwrap_or(86_400);
        let (username, credential) = turn_credentials(secret, caller.user_id, expires);
        ice_servers.push(IceServer {
            urls: turn,
            username: Some(username),
            credential: Some(credential),
        });
    }
    axum::Json(IceServers {
        ice_servers,
        ttl_seconds: config.ttl_secs,
    })
}

fn nonempty(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect()
}

#[derive(sqlx::FromRow)]
struct CallRow {
    id: Uuid,
    conversation_id: Uuid,
    initiator_id: Uuid,
    media: String,
    state: String,
    end_reason: Option<String>,
    started_at: DateTime<Utc>,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct ParticipantRow {
    call_id: Uuid,
    user_id: Uuid,
    state: String,
    joined_at: Option<DateTime<Utc>>,
    left_at: Option<DateTime<Utc>>,
    audio: bool,
    video: bool,
    screen: bool,
}

const CALL_COLUMNS: &str = "c.id, c.conversation_id, c.initiator_id, c.media, c.state, c.end_reason, c.started_at, c.answered_at, c.ended_at, c.duration_ms";

/// The calls of `rows` with their participants, in one more query.
async fn assemble(pool: &PgPool, rows: Vec<CallRow>) -> sqlx::Result<Vec<Call>> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let participants: Vec<ParticipantRow> = sqlx::query_as(
        "SELECT call_id, user_id, state, joined_at, left_at, audio, video, screen
           FROM call_participants WHERE call_id = ANY($1) ORDER BY call_id, position",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_call: HashMap<Uuid, Vec<CallParticipant>> = HashMap::new();
    for row in participants {
        by_call
            .entry(row.call_id)
            .or_default()
            .push(CallParticipant {
                user_id: row.user_id,
                state: row.state,
                joined_at: row.joined_at,
                left_at: row.left_at,
                audio: row.audio,
                video: row.video,
                screen: row.screen,
            });
    }
    Ok(rows
        .into_iter()
        .map(|row| Call {
            participants: by_call.remove(&row.id).unwrap_or_default(),
            id: row.id,
            conversation_id: row.conversation_id,
            initiator_id: row.initiator_id,
            media: row.media,
            state: row.state,
            end_reason: row.end_reason,
            started_at: row.started_at,
            answered_at: row.answered_at,
            ended_at: row.ended_at,
            duration_ms: row.duration_ms,
        })
        .collect())
}

/// GET /api/v1/calls/{id}: for members of its conversation (404 for everyone else).
#[utoipa::path(get, path = "/api/v1/calls/{id}", tag = "calls", params(("id" = Uuid, Path)),
    responses((status = 200, body = Call), (status = 404)), security(("bearer" = [])))]
pub async fn get_call(
    State(state): State<QueryState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Call>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| call_not_found())?;
    let row: Option<CallRow> = sqlx::query_as(&format!(
        "SELECT {CALL_COLUMNS} FROM calls c
           JOIN conversation_members m ON m.conversation_id = c.conversation_id AND m.user_id = $2
          WHERE c.id = $1"
    ))
    .bind(id)
    .bind(caller.user_id)
    .fetch_optional(&state.pool)
    .await?;
    let row = row.ok_or_else(call_not_found)?;
    assemble(&state.pool, vec![row])
        .await?
        .pop()
        .map(axum::Json)
        .ok_or_else(call_not_found)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CallsQuery {
    /// 1 to 200, default 50.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// GET /api/v1/conversations/{id}/calls: the conversation's calls, newest first.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/calls", tag = "calls",
    params(("id" = Uuid, Path), CallsQuery),
    responses((status = 200, body = Page<Call>), (status = 404)), security(("bearer" = [])))]
pub async fn conversation_calls(
    State(state): State<QueryState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Page<Call>>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
    let conversation_id: Uuid = id.parse().map_err(|_| conversation_not_found())?;
    let member: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2)",
    )
    .bind(conversation_id)
    .bind(caller.user_id)
    .fetch_one(&state.pool)
    .await?;
    if !member {
        return Err(conversation_not_found());
    }
    let limit = crate::page_limit(query.limit)?;
    // The cursor is the last call of the previous page (ids are time-ordered UUIDv7s).
    let before = match &query.cursor {
        None => Uuid::max(),
        Some(cursor) => URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|bytes| Uuid::from_slice(&bytes).ok())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor is not one this server issued")
            })?,
    };
    let rows: Vec<CallRow> = sqlx::query_as(&format!(
        "SELECT {CALL_COLUMNS} FROM calls c
          WHERE c.conversation_id = $1 AND c.id < $2
          ORDER BY c.id DESC LIMIT $3"
    ))
    .bind(conversation_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    let rows: Vec<CallRow> = rows.into_iter().take(limit as usize).collect();
    let next_cursor = has_more
        .then(|| {
            rows.last()
                .map(|row| URL_SAFE_NO_PAD.encode(row.id.as_bytes()))
        })
        .flatten();
    let items = assemble(&state.pool, rows).await?;
    Ok(axum::Json(Page { items, next_cursor }))
}

fn call_not_found() -> ApiError {
    ApiError::not_found("call_not_found", "no such call")
}

fn conversation_not_found() -> ApiError {
    ApiError::not_found("conversation_not_found", "no such conversation")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked against a value computed independently:
    /// `printf %s '1600000000:00000000-…' | openssl dgst -sha1 -hmac north -binary | base64`.
    #[test]
    fn turn_credentials_follow_the_turn_rest_scheme() {
        let user_id = Uuid::nil();
        let (username, credential) = turn_credentials("north", user_id, 1_600_000_000);
        assert_eq!(username, format!("1600000000:{user_id}"));
        assert_eq!(credential, OPENSSL_EXPECTED);
    }

    const OPENSSL_EXPECTED: &str = "UjLeNldyDiXxpa6i8mJahsP7ByY=";
}
