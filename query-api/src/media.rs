//! Media reads: `GET /api/v1/media/{id}` (who may see an image gets its `Media` with fresh
//! links) and the signed links themselves, which serve the stored bytes to anyone holding an
//! unexpired, untampered link: an `<img>` tag sends no header.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::MediaId;
use domain::media::{Attachment, ImageType};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;
use web::dto::Media;
use web::media_links::{LinkError, Variant};
use web::{ApiError, Caller};

use crate::QueryState;

#[derive(sqlx::FromRow)]
struct MediaRow {
    id: Uuid,
    content_type: String,
    size: i64,
    width: i32,
    height: i32,
    created_at: DateTime<Utc>,
}

/// GET /api/v1/media/{id}
///
/// Its uploader, members of a conversation where it is attached, and (for an avatar) anyone
/// may see an image; everyone else gets 404, as if it did not exist.
#[utoipa::path(get, path = "/api/v1/media/{id}", tag = "media", params(("id" = Uuid, Path)),
    responses((status = 200, body = Media), (status = 404)), security(("bearer" = [])))]
pub async fn get_media(
    State(state): State<QueryState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Media>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let row: Option<MediaRow> = sqlx::query_as(
        "SELECT m.id, m.content_type, m.size, m.width, m.height, m.created_at FROM media m
          WHERE m.id = $1
            AND (m.owner_id = $2
                 OR EXISTS (SELECT 1 FROM users u WHERE u.avatar_media_id = m.id)
                 OR EXISTS (SELECT 1 FROM messages msg
                              JOIN conversation_members cm
                                ON cm.conversation_id = msg.conversation_id AND cm.user_id = $2
                             WHERE msg.attachment_ids @> ARRAY[m.id]))",
    )
    .bind(id)
    .bind(caller.user_id)
    .fetch_optional(&state.pool)
    .await?;
    let row = row.ok_or_else(not_found)?;
    let attachment = Attachment {
        media_id: MediaId::from_uuid(row.id),
        image_type: ImageType::from_content_type(&row.content_type)
            .ok_or_else(|| ApiError::internal("a stored image of an unknown type"))?,
        size: row.size,
        width: u32::try_from(row.width).unwrap_or(0),
        height: u32::try_from(row.height).unwrap_or(0),
        uploaded_at: row.created_at,
    };
    Ok(axum::Json(state.links.media(&attachment, Utc::now())))
}

#[derive(Deserialize, IntoParams)]
pub struct LinkQuery {
    /// Unix seconds after which the link no longer works.
    pub expires: i64,
    pub signature: String,
}

/// GET /api/v1/media/{id}/{file}: the bytes behind a signed link (`file` is `original.{ext}`
/// or `thumbnail.{ext}`). No bearer token: the signature is the authorisation.
#[utoipa::path(get, path = "/api/v1/media/{id}/{file}", tag = "media",
    params(("id" = Uuid, Path), ("file" = String, Path, description = "`original.{ext}` or `thumbnail.{ext}`"), LinkQuery),
    responses((status = 200, description = "the image", content_type = "image/*"), (status = 304), (status = 403), (status = 404)))]
pub async fn serve(
    State(state): State<QueryState>,
    Path((id, file)): Path<(String, String)>,
    query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|_| forbidden(LinkError::BadSignature))?;
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let (variant, image_type) = file
        .split_once('.')
        .and_then(|(variant, extension)| {
            Some((
                Variant::parse(variant)?,
                ImageType::from_extension(extension)?,
            ))
        })
        .ok_or_else(not_found)?;
    let now = Utc::now();
    state
        .links
        .verify(
            id,
            variant,
            image_type,
            query.expires,
            &query.signature,
            now,
        )
        .map_err(forbidden)?;

    // Stored objects never change, so the id and variant make a strong validator.
    let etag = format!("\"{id}-{}\"", variant.as_str());
    let max_age = (query.expires - now.timestamp()).max(0);
    let common = [
        (header::ETAG, etag.clone()),
        (
            header::CACHE_CONTROL,
            format!("private, max-age={max_age}, immutable"),
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
    ];
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let object = state
        .media_store
        .get(id, variant.as_str(), image_type)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(not_found)?;
    let mut response = (common, Body::from_stream(object.bytes)).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(image_type.content_type()),
    );
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(object.size));
    // Served bytes are never a document: no scripts, no plugins, even if opened directly.
    response_headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "inline; filename=\"{id}-{}.{}\"",
        variant.as_str(),
        image_type.extension()
    )) {
        response_headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

fn forbidden(error: LinkError) -> ApiError {
    match error {
        LinkError::BadSignature => ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_signature",
            "the link's signature is not valid",
        ),
        LinkError::Expired => ApiError::new(
            StatusCode::FORBIDDEN,
            "link_expired",
            "the link has expired; fetch the media again for a fresh one",
        ),
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("media_not_found", "no such media")
}
