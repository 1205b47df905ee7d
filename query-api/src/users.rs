//! User reads.

use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use domain::media::Attachment;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;
use web::dto::{Page, User};
use web::{ApiError, Caller, MediaLinks};

use crate::QueryState;

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    username: String,
    email: String,
    display_name: String,
    bio: Option<String>,
    created_at: DateTime<Utc>,
    avatar: Option<sqlx::types::Json<Attachment>>,
}

impl UserRow {
    fn into_user(
        self,
        with_email: bool,
        presence: (bool, Option<String>),
        links: &MediaLinks,
    ) -> User {
        let (online, last_seen) = presence;
        User {
            id: self.id,
            username: self.username,
            display_name: self.display_name,
            bio: self.bio,
            avatar: self.avatar.map(|avatar| links.media(&avatar.0, Utc::now())),
            online,
            last_seen_at: last_seen
                .and_then(|time| DateTime::parse_from_rfc3339(&time).ok())
                .map(|time| time.with_timezone(&Utc)),
            created_at: self.created_at,
            email: with_email.then_some(self.email),
        }
    }
}

/// The user's columns, and their avatar as the `Attachment` a message would carry.
const COLUMNS: &str = "id, username, email, display_name, bio, created_at,
    (SELECT jsonb_build_object('media_id', m.id, 'image_type', m.content_type, 'size', m.size,
                               'width', m.width, 'height', m.height, 'uploaded_at', m.created_at)
       FROM media m WHERE m.id = users.avatar_media_id) AS avatar";

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListUsersQuery {
    /// Prefix of the username or the display name (case-insensitive).
    pub q: Option<String>,
    /// 1 to 200, default 50.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// GET /api/v1/users
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(ListUsersQuery),
    responses((status = 200, body = Page<User>)), security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<QueryState>,
    _caller: Caller,
    query: Result<Query<ListUsersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Page<User>>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
    let limit = crate::page_limit(query.limit)?;
    let after = match &query.cursor {
        None => String::new(),
        Some(cursor) => URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor is not one this server issued")
            })?,
    };
    let pattern = format!(
        "{}%",
        escape_like(&query.q.unwrap_or_default().trim().to_lowercase())
    );
    let rows: Vec<UserRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM users
          WHERE (username LIKE $1 OR display_name_lower LIKE $1) AND username > $2
          ORDER BY username LIMIT $3"
    ))
    .bind(&pattern)
    .bind(&after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    let rows: Vec<UserRow> = rows.into_iter().take(limit as usize).collect();
    let presence = presence_of(&state, &rows).await?;
    let items: Vec<User> = rows
        .into_iter()
        .zip(presence)
        .map(|(row, presence)| row.into_user(false, presence, &state.links))
        .collect();
    let next_cursor = has_more
        .then(|| {
            items
                .last()
                .map(|user| URL_SAFE_NO_PAD.encode(&user.username))
        })
        .flatten();
    Ok(axum::Json(Page { items, next_cursor }))
}

/// GET /api/v1/users/me
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users",
    responses((status = 200, body = User)), security(("bearer" = [])))]
pub async fn me(
    State(state): State<QueryState>,
    caller: Caller,
) -> Result<axum::Json<User>, ApiError> {
    find_user(&state, caller.user_id, true).await
}

/// GET /api/v1/users/{user_id}
#[utoipa::path(get, path = "/api/v1/users/{user_id}", tag = "users",
    params(("user_id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404)), security(("bearer" = [])))]
pub async fn get_user(
    State(state): State<QueryState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<axum::Json<User>, ApiError> {
    let user_id: Uuid = user_id.parse().map_err(|_| not_found())?;
    find_user(&state, user_id, user_id == caller.user_id).await
}

async fn find_user(
    state: &QueryState,
    user_id: Uuid,
    with_email: bool,
) -> Result<axum::Json<User>, ApiError> {
    let row: Option<UserRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
            .bind(user_id)
            .fetch_optional(&state.pool)
            .await?;
    let row = row.ok_or_else(not_found)?;
    let presence = presence_of(state, std::slice::from_ref(&row))
        .await?
        .pop()
        .unwrap_or_default();
    Ok(axum::Json(row.into_user(
        with_email,
        presence,
        &state.links,
    )))
}

/// Online flags and last-seen times from the user map; a Redis failure is a 503, as for
/// every authenticated request.
async fn presence_of(
    state: &QueryState,
    rows: &[UserRow],
) -> Result<Vec<(bool, Option<String>)>, ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    state
        .presence
        .presence(&ids)
        .await
        .map_err(ApiError::unavailable)
}

fn not_found() -> ApiError {
    ApiError::not_found("user_not_found", "no such user")
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}
