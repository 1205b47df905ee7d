//! `/api/v1/users/me`: profile and password changes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::UserId;
use domain::account::{AccountCommand, Bio, DisplayName, Email, Password, ProfileChanges};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;
use uuid::Uuid;
use web::dto::User;
use web::{ApiError, ApiJson, Caller, RequestId, consistency};

use crate::auth::{execute, invalid, metadata};
use crate::credentials::{self, IdentityKind};
use crate::{CommandState, user_from_account};

/// Absent fields stay as they are; `null` clears `bio` and `avatar_media_id`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub avatar_media_id: Option<Option<Uuid>>,
    pub email: Option<String>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// PATCH /api/v1/users/me
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", request_body = UpdateProfileRequest,
    responses((status = 200, body = User), (status = 400), (status = 409), (status = 422)), security(("bearer" = [])))]
pub async fn update_profile(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    ApiJson(request): ApiJson<UpdateProfileRequest>,
) -> Result<Response, ApiError> {
    let changes = ProfileChanges {
        display_name: request
            .display_name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()
            .map_err(invalid)?,
        bio: request
            .bio
            .map(|bio| bio.as_deref().map(Bio::parse).transpose())
            .transpose()
            .map_err(invalid)?,
        avatar_media_id: request.avatar_media_id,
        email: request
            .email
            .as_deref()
            .map(Email::parse)
            .transpose()
            .map_err(invalid)?,
    };
    let user_id = UserId::from_uuid(caller.user_id);
    if let Some(Some(media_id)) = changes.avatar_media_id {
        crate::media::owned_images(&state, user_id, &[media_id], "media_not_found").await?;
    }
    let current = state
        .accounts
        .load(&user_id.to_string())
        .await
        .map_err(crate::auth::account_error)?;
    let old_email = current
        .and_then(|account| account.email)
        .map(|email| email.normalized());
    let new_email = changes
        .email
        .as_ref()
        .map(Email::normalized)
        .filter(|email| Some(email) != old_email.as_ref());
    if let Some(new_email) = &new_email {
        let mut connection = state.pool.acquire().await?;
        if !credentials::claim_identity(
            &mut connection,
            IdentityKind::Email,
            new_email,
            caller.user_id,
        )
        .await?
        {
            return Err(ApiError::conflict(
                "email_taken",
                "that email is already registered",
            ));
        }
    }
    let metadata = metadata(Some(user_id), &request_id);
    let result = execute(
        &state,
        user_id,
        AccountCommand::UpdateProfile {
            changes,
            at: metadata.recorded_at,
        },
        &metadata,
    )
    .await;
    // Exactly one of the two addresses stays claimed: the new one if the change committed.
    let released = match (&result, &new_email, &old_email) {
        (Ok(_), Some(_), Some(old)) => Some(old),
        (Err(_), Some(new), _) => Some(new),
        _ => None,
    };
    if let Some(email) = released {
        credentials::release_identity(&state.pool, IdentityKind::Email, email, caller.user_id)
            .await?;
    }
    let committed = result?;
    let avatar = crate::media::avatar(&state, &committed.aggregate).await?;
    let user = user_from_account(&committed.aggregate, avatar, true)
        .ok_or_else(|| ApiError::internal("account without a profile"))?;
    Ok(([consistency::header(&committed.position)], axum::Json(user)).into_response())
}

/// POST /api/v1/users/me/password
#[utoipa::path(post, path = "/api/v1/users/me/password", tag = "users", request_body = ChangePasswordRequest,
    responses((status = 204), (status = 400), (status = 403)), security(("bearer" = [])))]
pub async fn change_password(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    ApiJson(request): ApiJson<ChangePasswordRequest>,
) -> Result<Response, ApiError> {
    let new_password = Password::parse(&request.new_password).map_err(invalid)?;
    let hash = credentials::password_hash(&state.pool, caller.user_id).await?;
    let valid = state
        .passwords
        .verify(&request.current_password, hash.as_deref())
        .await
        .map_err(ApiError::internal)?;
    if !valid {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_credentials",
            "the current password is wrong",
        ));
    }
    let new_hash = state
        .passwords
        .hash(new_password.expose())
        .await
        .map_err(ApiError::internal)?;
    let mut connection = state.pool.acquire().await?;
    credentials::set_password_hash(&mut connection, caller.user_id, &new_hash).await?;
    drop(connection);
    let revoked =
        credentials::revoke_user_sessions(&state.pool, caller.user_id, Some(caller.claims.sid))
            .await?;
    state
        .authenticator
        .revocations
        .publish_revoked_sessions(&revoked)
        .await
        .map_err(ApiError::unavailable)?;
    let user_id = UserId::from_uuid(caller.user_id);
    let metadata = metadata(Some(user_id), &request_id);
    let command = AccountCommand::ChangePassword {
        kept_session_id: domain::SessionId::from_uuid(caller.claims.sid),
        at: metadata.recorded_at,
    };
    let committed = execute(&state, user_id, command, &metadata).await?;
    Ok(consistency::no_content(&committed.position))
}
