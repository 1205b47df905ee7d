//! Extractors: strict JSON bodies, the request id, and the authenticated caller.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sessions::{AccessClaims, RevocationError, Revocations, TokenError, Tokens};
use std::sync::Arc;
use uuid::Uuid;

use crate::ApiError;

/// A JSON body; every way it can be wrong becomes a problem document with a stable code.
/// Request types use `#[serde(deny_unknown_fields)]`, so unknown fields are refused too.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(error) => {
            ApiError::bad_request("invalid_body", error.body_text())
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("malformed_json", "the body is not valid JSON")
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be application/json",
        ),
        JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is too large",
            )
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// The request id: the client's `X-Request-Id` when it is sane, a fresh UUIDv7 otherwise.
/// Set by [`crate::middleware::request_id`].
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(Uuid::now_v7().to_string())))
    }
}

/// What every role needs to check a caller: token verification and the revoked set.
#[derive(Clone)]
pub struct Authenticator {
    pub tokens: Tokens,
    pub revocations: Revocations,
}

impl Authenticator {
    /// Verifies a bearer token and checks it is not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        let claims = self.tokens.verify(token).map_err(|error| match error {
            TokenError::Expired => {
                ApiError::unauthorized("token_expired", "the access token has expired")
            }
            TokenError::Invalid => {
                ApiError::unauthorized("invalid_token", "the access token is invalid")
            }
        })?;
        self.revocations
            .check(&claims)
            .await
            .map_err(|error| match error {
                RevocationError::Revoked => {
                    ApiError::unauthorized("token_revoked", "the access token has been revoked")
                }
                RevocationError::Unavailable(cause) => ApiError::unavailable(cause),
            })?;
        Ok(Caller {
            user_id: claims.sub,
            claims,
        })
    }
}

/// An authenticated caller. Extracting it refuses the request with 401 (no, bad, expired or
/// revoked token) or 503 (the session service cannot answer: fail closed).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: Uuid,
    pub claims: AccessClaims,
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Authenticator>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let authenticator = Arc::<Authenticator>::from_ref(state);
        let token = bearer_token(parts).ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "an Authorization: Bearer token is required",
            )
        })?;
        authenticator.authenticate(token).await
    }
}

fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

/// The client's IP address: set by [`crate::middleware::client_address`] (which honours
/// `X-Forwarded-For` from trusted proxies), else the TCP peer, else `"unknown"`.
#[derive(Clone, Debug)]
pub struct ClientAddress(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(address) = parts.extensions.get::<ClientAddress>() {
            return Ok(address.clone());
        }
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<crate::socket::Peer>>()
            .map_or_else(
                || "unknown".to_owned(),
                |info| info.0.address.ip().to_string(),
            );
        Ok(Self(address))
    }
}
