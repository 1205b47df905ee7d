//! `/api/v1/auth/*`: register, login, refresh, logout.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::account::{
    Account, AccountCommand, AccountError, DisplayName, Email, Password, Username, ValueError,
};
use domain::metadata::EventMetadata;
use domain::{SessionId, UserId};
use serde::Deserialize;
use store::{Committed, ExecuteError};
use utoipa::ToSchema;

use web::dto::Session;
use web::{ApiError, ApiJson, Caller, ClientAddress, RequestId, consistency};

use crate::credentials::{self, IdentityKind, RefreshToken, Rotation};
use crate::{CommandState, user_from_account};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub email: String,
    pub password: String,
    pub display_name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The username or the email.
    pub login: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Revoke every session of the user, not only this one.
    #[serde(default)]
    pub all_devices: bool,
}

/// POST /api/v1/auth/register
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = Session), (status = 400), (status = 409), (status = 413)))]
pub async fn register(
    State(state): State<CommandState>,
    request_id: RequestId,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let username = Username::parse(&request.username).map_err(invalid)?;
    let email = Email::parse(&request.email).map_err(invalid)?;
    let password = Password::parse(&request.password).map_err(invalid)?;
    let display_name = request
        .display_name
        .as_deref()
        .map(DisplayName::parse)
        .transpose()
        .map_err(invalid)?;

    let user_id = UserId::new();
    claim_identities(&state, user_id, &username, &email).await?;
    let result = register_claimed(
        &state,
        &request_id,
        user_id,
        username.clone(),
        email.clone(),
        display_name,
        &password,
    )
    .await;
    if result.is_err() {
        // Free the names again; a crash here is covered by the abandoned-claim takeover.
        for (kind, value) in [
            (IdentityKind::Username, username.as_str().to_owned()),
            (IdentityKind::Email, email.normalized()),
        ] {
            let _ =
                credentials::release_identity(&state.pool, kind, &value, user_id.as_uuid()).await;
        }
    }
    let (session, position) = result?;
    Ok((
        StatusCode::CREATED,
        [consistency::header(&position)],
        axum::Json(session),
    )
        .into_response())
}

async fn claim_identities(
    state: &CommandState,
    user_id: UserId,
    username: &Username,
    email: &Email,
) -> Result<(), ApiError> {
    let mut transaction = state.pool.begin().await?;
    let username_free = credentials::claim_identity(
        &mut transaction,
        IdentityKind::Username,
        username.as_str(),
        user_id.as_uuid(),
    )
    .await?;
    if !username_free {
        return Err(ApiError::conflict(
            "username_taken",
            "that username is taken",
        ));
    }
    let email_free = credentials::claim_identity(
        &mut transaction,
        IdentityKind::Email,
        &email.normalized(),
        user_id.as_uuid(),
    )
    .await?;
    if !email_free {
        return Err(ApiError::conflict(
            "email_taken",
            "that email is already registered",
        ));
    }
    transaction.commit().await?;
    Ok(())
}

async fn register_claimed(
    state: &CommandState,
    request_id: &RequestId,
    user_id: UserId,
    username: Username,
    email: Email,
    display_name: Option<DisplayName>,
    password: &Password,
) -> Result<(Session, store::StreamPosition), ApiError> {
    let hash = state
        .passwords
        .hash(password.expose())
        .await
        .map_err(ApiError::internal)?;
    let mut connection = state.pool.acquire().await?;
    credentials::set_password_hash(&mut connection, user_id.as_uuid(), &hash).await?;
    drop(connection);
    let metadata = metadata(Some(user_id), request_id);
    let command = AccountCommand::Register {
        user_id,
        username,
        email,
        display_name,
        at: metadata.recorded_at,
    };
    execute(state, user_id, command, &metadata).await?;
    start_session(state, user_id, &metadata).await
}

/// Opens a session for an authenticated user: refresh token, `LoggedIn` event, access token.
async fn start_session(
    state: &CommandState,
    user_id: UserId,
    metadata: &EventMetadata,
) -> Result<(Session, store::StreamPosition), ApiError> {
    let session_id = SessionId::new();
    let mut connection = state.pool.acquire().await?;
    let refresh_token = credentials::start_session(
        &mut connection,
        session_id.as_uuid(),
        user_id.as_uuid(),
        state.refresh_token_lifetime,
    )
    .await?;
    drop(connection);
    let committed = execute(
        state,
        user_id,
        AccountCommand::RecordLogin {
            session_id,
            at: metadata.recorded_at,
        },
        metadata,
    )
    .await?;
    let session = session_response(state, &committed.aggregate, session_id, refresh_token).await?;
    Ok((session, committed.position))
}

async fn session_response(
    state: &CommandState,
    account: &Account,
    session_id: SessionId,
    refresh_token: RefreshToken,
) -> Result<Session, ApiError> {
    let avatar = crate::media::avatar(state, account).await?;
    let user = user_from_account(account, avatar, true)
        .ok_or_else(|| ApiError::internal("account without a profile"))?;
    let access = state
        .authenticator
        .tokens
        .issue(user.id, session_id.as_uuid())
        .map_err(ApiError::internal)?;
    Ok(Session {
        user,
        access_token: access.token,
        token_type: "Bearer",
        expires_in: access.expires_in,
        refresh_token: refresh_token.token,
    })
}

/// POST /api/v1/auth/login
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = Session), (status = 401), (status = 429)))]
pub async fn login(
    State(state): State<CommandState>,
    request_id: RequestId,
    ClientAddress(address): ClientAddress,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let login = request.login.trim().to_lowercase();
    if let Err(retry_after) = state
        .login_limits
        .check(&login, &address)
        .await
        .map_err(ApiError::unavailable)?
    {
        return Err(ApiError::rate_limited(retry_after.0));
    }
    let user_id = credentials::find_account(&state.pool, &login).await?;
    let hash = match user_id {
        Some(user_id) => credentials::password_hash(&state.pool, user_id).await?,
        None => None,
    };
    let valid = state
        .passwords
        .verify(&request.password, hash.as_deref())
        .await
        .map_err(ApiError::internal)?;
    let (Some(user_id), true) = (user_id, valid) else {
        state
            .login_limits
            .record_failure(&login, &address)
            .await
            .map_err(ApiError::unavailable)?;
        if let Some(user_id) = user_id {
            // Recorded off the response path, so that a wrong password for an existing
            // account is answered in the same time as one for no account at all.
            let state = state.clone();
            let metadata = metadata(None, &request_id);
            tokio::spawn(async move {
                let command = AccountCommand::RecordFailedLogin {
                    at: metadata.recorded_at,
                };
                if let Err(error) =
                    execute(&state, UserId::from_uuid(user_id), command, &metadata).await
                {
                    tracing::warn!(?error, "could not record a failed login");
                }
            });
        }
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "wrong login or password",
        ));
    };
    state
        .login_limits
        .record_success(&login)
        .await
        .map_err(ApiError::unavailable)?;
    let user_id = UserId::from_uuid(user_id);
    let (session, position) =
        start_session(&state, user_id, &metadata(Some(user_id), &request_id)).await?;
    Ok(([consistency::header(&position)], axum::Json(session)).into_response())
}

/// POST /api/v1/auth/refresh
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = Session), (status = 401)))]
pub async fn refresh(
    State(state): State<CommandState>,
    request_id: RequestId,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let rotation = credentials::rotate_refresh_token(
        &state.pool,
        &request.refresh_token,
        state.refresh_token_lifetime,
    )
    .await?;
    match rotation {
        Rotation::Invalid => Err(ApiError::unauthorized(
            "invalid_refresh_token",
            "the refresh token is invalid or expired",
        )),
        Rotation::Reused {
            user_id,
            session_id,
        } => {
            state
                .authenticator
                .revocations
                .publish_revoked_sessions(&[session_id])
                .await
                .map_err(ApiError::unavailable)?;
            let user_id = UserId::from_uuid(user_id);
            let command = AccountCommand::RecordRefreshReuse {
                session_id: SessionId::from_uuid(session_id),
            };
            execute(&state, user_id, command, &metadata(None, &request_id)).await?;
            Err(ApiError::unauthorized(
                "refresh_token_reused",
                "the refresh token was already used; the session has been revoked",
            ))
        }
        Rotation::Rotated {
            user_id,
            session_id,
            token,
        } => {
            let user_id = UserId::from_uuid(user_id);
            let session_id = SessionId::from_uuid(session_id);
            let committed = execute(
                &state,
                user_id,
                AccountCommand::RecordRefresh { session_id },
                &metadata(Some(user_id), &request_id),
            )
            .await?;
            let session = session_response(&state, &committed.aggregate, session_id, token).await?;
            Ok((
                [consistency::header(&committed.position)],
                axum::Json(session),
            )
                .into_response())
        }
    }
}

/// POST /api/v1/auth/logout
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body(content = Option<LogoutRequest>),
    responses((status = 204), (status = 401)), security(("bearer" = [])))]
pub async fn logout(
    State(state): State<CommandState>,
    request_id: RequestId,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: an empty one means this device only.
    let request: LogoutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request("invalid_body", error.to_string()))?
    };
    let revocations = &state.authenticator.revocations;
    revocations
        .revoke_token(&caller.claims)
        .await
        .map_err(ApiError::unavailable)?;
    let sessions = if request.all_devices {
        credentials::revoke_user_sessions(&state.pool, caller.user_id, None).await?
    } else {
        credentials::revoke_session(&state.pool, caller.claims.sid).await?
    };
    revocations
        .publish_revoked_sessions(&sessions)
        .await
        .map_err(ApiError::unavailable)?;
    let user_id = UserId::from_uuid(caller.user_id);
    let command = AccountCommand::Logout {
        session_id: SessionId::from_uuid(caller.claims.sid),
        all_devices: request.all_devices,
    };
    let committed = execute(
        &state,
        user_id,
        command,
        &metadata(Some(user_id), &request_id),
    )
    .await?;
    Ok(consistency::no_content(&committed.position))
}

/// The metadata of the events one request causes.
pub(crate) fn metadata(actor_id: Option<UserId>, request_id: &RequestId) -> EventMetadata {
    EventMetadata {
        actor_id,
        request_id: request_id.0.clone(),
        recorded_at: Utc::now(),
    }
}

pub(crate) async fn execute(
    state: &CommandState,
    user_id: UserId,
    command: AccountCommand,
    metadata: &EventMetadata,
) -> Result<Committed<Account>, ApiError> {
    state
        .accounts
        .execute(&user_id.to_string(), command, &(), metadata)
        .await
        .map_err(account_error)
}

pub(crate) fn account_error(error: ExecuteError<AccountError>) -> ApiError {
    match error {
        ExecuteError::Domain(AccountError::AlreadyRegistered) => {
            ApiError::conflict("account_exists", "the account already exists")
        }
        ExecuteError::Domain(AccountError::NotRegistered) => {
            ApiError::not_found("user_not_found", "the account does not exist")
        }
        ExecuteError::Store(cause) => ApiError::unavailable(cause),
    }
}

pub(crate) fn invalid(error: ValueError) -> ApiError {
    ApiError::bad_request(error.code, error.message)
}
