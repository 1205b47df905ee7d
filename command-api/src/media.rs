//! `POST /api/v1/media`: image uploads, and the lookups messages and avatars make of them.
//!
//! The upload is read part by part and refused with 413 the moment it passes the limit (or at
//! once when its `Content-Length` already does), so nothing beyond the limit is read or held.
//! The bytes alone decide the type; the `media` crate reads the dimensions from the header,
//! refuses oversized images before decoding, then decodes with limits on a blocking thread
//! (at most `upload_concurrency` at a time), re-encodes and thumbnails. Both objects are stored
//! before the `MediaUploaded` event is written, so an event never names missing bytes.

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::media::{Attachment, Media, MediaCommand, MediaError, StoredImage};
use domain::{MediaId, UserId};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use store::{ExecuteError, StreamPosition};
use tokio::sync::Semaphore;
use uuid::Uuid;
use web::dto::Media as MediaDto;
use web::{ApiError, Caller, MediaLinks, RequestId, consistency};

use crate::CommandState;
use crate::auth::metadata;

/// What uploads may be and where they go.
#[derive(Clone)]
pub struct Uploads {
    pub store: media::MediaStore,
    pub links: MediaLinks,
    pub limits: media::Limits,
    pub max_bytes: u64,
    /// Bounds the decodes running at once (each holds up to the pixel budget in memory).
    pub decoding: Arc<Semaphore>,
}

/// Multipart framing (boundaries, part headers) allowed on top of the file itself.
const MULTIPART_OVERHEAD: u64 = 16 * 1024;

/// POST /api/v1/media
#[utoipa::path(post, path = "/api/v1/media", tag = "media",
    request_body(content_type = "multipart/form-data", description = "one part named `file`: a PNG, JPEG, GIF or WebP image"),
    responses((status = 201, body = web::dto::Media), (status = 400), (status = 413), (status = 415), (status = 422)),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let uploads = &state.uploads;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > uploads.max_bytes + MULTIPART_OVERHEAD) {
        return Err(too_large(uploads.max_bytes));
    }
    let owner_id = UserId::from_uuid(caller.user_id);
    let idempotency_key = idempotency_key(&headers)?;
    if let Some(key) = &idempotency_key
        && let Some(media_id) = earlier_upload(&state.pool, owner_id, key).await?
    {
        let media = load(&state, media_id)
            .await?
            .ok_or_else(|| ApiError::internal("an idempotent upload has no event"))?;
        let position = StreamPosition {
            aggregate_type: "media".to_owned(),
            aggregate_id: media_id.to_string(),
            sequence: 1,
        };
        return created(uploads, &media, &position);
    }
    let mut multipart = multipart
        .map_err(|rejection| ApiError::bad_request("invalid_multipart", rejection.body_text()))?;
    let bytes = read_file_part(&mut multipart, uploads.max_bytes).await?;

    let permit = uploads
        .decoding
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let limits = uploads.limits.clone();
    let processed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        media::process(&bytes, &limits)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(rejected)?;

    let media_id = MediaId::new();
    let image_type = processed.format;
    let content_hash = hex::encode(Sha256::digest(&processed.original));
    let image = StoredImage {
        size: i64::try_from(processed.original.len()).unwrap_or(i64::MAX),
        width: processed.width,
        height: processed.height,
    };
    let thumbnail = StoredImage {
        size: i64::try_from(processed.thumbnail.len()).unwrap_or(i64::MAX),
        width: processed.thumbnail_width,
        height: processed.thumbnail_height,
    };
    let id = media_id.as_uuid();
    let (original, thumbnail_bytes) = (processed.original, processed.thumbnail);
    tokio::try_join!(
        uploads.store.put(id, "original", image_type, original),
        uploads
            .store
            .put(id, "thumbnail", image_type, thumbnail_bytes),
    )
    .map_err(ApiError::unavailable)?;

    let metadata = metadata(Some(owner_id), &request_id);
    let committed = state
        .media
        .execute(
            &media_id.to_string(),
            MediaCommand::Upload {
                media_id,
                owner_id,
                image_type,
                content_hash,
                image,
                thumbnail,
                at: metadata.recorded_at,
            },
            &(),
            &metadata,
        )
        .await
        .map_err(media_error)?;
    if let Some(key) = &idempotency_key {
        remember_upload(&state.pool, owner_id, key, media_id).await?;
    }
    created(uploads, &committed.aggregate, &committed.position)
}

fn created(
    uploads: &Uploads,
    media: &Media,
    position: &StreamPosition,
) -> Result<Response, ApiError> {
    let attachment = media
        .attachment()
        .ok_or_else(|| ApiError::internal("an upload without its facts"))?;
    Ok((
        StatusCode::CREATED,
        [consistency::header(position)],
        axum::Json(uploads.links.media(&attachment, Utc::now())),
    )
        .into_response())
}

/// Reads the one `file` part, counting as it goes: past `max_bytes` the upload is refused
/// without reading further.
async fn read_file_part(multipart: &mut Multipart, max_bytes: u64) -> Result<Vec<u8>, ApiError> {
    let mut file: Option<Vec<u8>> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            return Err(ApiError::bad_request(
                "unexpected_part",
                "the upload takes exactly one part, named `file`",
            ));
        }
        if file.is_some() {
            return Err(ApiError::bad_request(
                "unexpected_part",
                "the upload takes exactly one part, named `file`",
            ));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large(max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        file = Some(bytes);
    }
    file.ok_or_else(|| {
        ApiError::bad_request("missing_file", "the upload needs a part named `file`")
    })
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::bad_request("invalid_multipart", error.body_text())
}

fn too_large(max_bytes: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("uploads are limited to {max_bytes} bytes"),
    )
}

fn rejected(rejection: media::Rejection) -> ApiError {
    let detail = rejection.to_string();
    match rejection {
        media::Rejection::Unsupported => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, rejection.code(), detail)
        }
        media::Rejection::Invalid(_) => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, rejection.code(), detail)
        }
        media::Rejection::TooLarge { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.code(), detail)
        }
    }
}

fn media_error(error: ExecuteError<MediaError>) -> ApiError {
    match error {
        ExecuteError::Domain(MediaError::AlreadyUploaded) => {
            ApiError::internal("a fresh media id was already taken")
        }
        ExecuteError::Store(cause) => ApiError::unavailable(cause),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 200 => Ok(Some(key.to_owned())),
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        )),
    }
}

async fn earlier_upload(
    pool: &sqlx::PgPool,
    owner_id: UserId,
    key: &str,
) -> Result<Option<MediaId>, ApiError> {
    let media_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT media_id FROM upload_idempotency WHERE owner_id = $1 AND idempotency_key = $2",
    )
    .bind(owner_id.as_uuid())
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(media_id.map(MediaId::from_uuid))
}

async fn remember_upload(
    pool: &sqlx::PgPool,
    owner_id: UserId,
    key: &str,
    media_id: MediaId,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO upload_idempotency (owner_id, idempotency_key, media_id) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(owner_id.as_uuid())
    .bind(key)
    .bind(media_id.as_uuid())
    .execute(pool)
    .await?;
    Ok(())
}

/// One upload's state from the event store (never the read model, which may lag behind).
pub async fn load(state: &CommandState, media_id: MediaId) -> Result<Option<Media>, ApiError> {
    state
        .media
        .load(&media_id.to_string())
        .await
        .map_err(media_error)
}

/// The images `ids` name, each checked to be an upload of `owner_id`'s; `code` names the
/// refusal (`attachment_not_found`, `media_not_found`).
pub async fn owned_images(
    state: &CommandState,
    owner_id: UserId,
    ids: &[Uuid],
    code: &'static str,
) -> Result<Vec<Attachment>, ApiError> {
    let mut attachments = Vec::with_capacity(ids.len());
    for id in ids {
        let media = load(state, MediaId::from_uuid(*id)).await?;
        let attachment = media
            .filter(|media| media.owner_id == Some(owner_id))
            .and_then(|media| media.attachment())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    code,
                    format!("{id} does not name an image you uploaded"),
                )
            })?;
        attachments.push(attachment);
    }
    Ok(attachments)
}

/// The `Media` an account shows as its avatar, with fresh links; `None` without one.
pub async fn avatar(
    state: &CommandState,
    account: &domain::account::Account,
) -> Result<Option<MediaDto>, ApiError> {
    let Some(media_id) = account.avatar_media_id else {
        return Ok(None);
    };
    let media = load(state, MediaId::from_uuid(media_id)).await?;
    Ok(media
        .and_then(|media| media.attachment())
        .map(|attachment| state.uploads.links.media(&attachment, Utc::now())))
}

/// What a message would carry of an upload, read straight from the log (for processes that
/// hold no `AggregateStore<Media>`); `None` when no such upload exists.
pub async fn attachment_from_log(
    executor: impl sqlx::PgExecutor<'_>,
    media_id: Uuid,
) -> anyhow::Result<Option<Attachment>> {
    let media: Option<Media> = store::fold(executor, &media_id.to_string(), None).await?;
    Ok(media.and_then(|media| media.attachment()))
}
