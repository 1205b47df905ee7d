//! The query side of the REST API: reads the read models, never writes. Every response carries
//! `X-Read-Model-Lag-Ms`; a request with `X-Consistency-Token` waits for that write first.
//!
//! - [`users`]: `GET /api/v1/users`, `/users/{id}`, `/users/me`.
//! - [`calls`]: calls, a conversation's call history, and ICE servers with TURN credentials.
//! - [`audit`]: the event log and conversations as they stood, for admins.
//! - [`conversations`]: conversations, message history, messages and receipts.
//! - [`media`]: `GET /api/v1/media/{id}` and the signed links that serve the bytes.
//! - [`read_consistency`]: the middleware that does the waiting and the lag header.

pub mod audit;
pub mod calls;
pub mod conversations;
pub mod media;
pub mod users;

use axum::extract::{FromRef, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use web::{Authenticator, consistency};

#[derive(Clone)]
pub struct QueryState {
    pub pool: sqlx::PgPool,
    pub authenticator: Arc<Authenticator>,
    /// Who is online, and when each user was last seen.
    pub presence: sessions::user_map::UserMap,
    /// Mints and checks media links.
    pub links: web::MediaLinks,
    /// Where the uploaded images are read from.
    pub media_store: ::media::MediaStore,
    /// STUN and TURN servers handed to callers.
    pub ice: calls::IceConfig,
}

impl FromRef<QueryState> for Arc<Authenticator> {
    fn from_ref(state: &QueryState) -> Self {
        state.authenticator.clone()
    }
}

/// Every query route, with its OpenAPI description. Install [`read_consistency`] around them.
pub fn router() -> OpenApiRouter<QueryState> {
    OpenApiRouter::new()
        .routes(routes!(users::list_users))
        .routes(routes!(users::me))
        .routes(routes!(users::get_user))
        .routes(routes!(conversations::list_conversations))
        .routes(routes!(conversations::get_conversation))
        .routes(routes!(conversations::history))
        .routes(routes!(conversations::get_message))
        .routes(routes!(conversations::receipts))
        .routes(routes!(media::get_media))
        .routes(routes!(calls::ice_servers))
        .routes(routes!(calls::get_call))
        .routes(routes!(calls::conversation_calls))
        .routes(routes!(audit::events))
        .routes(routes!(audit::conversation_state))
}

/// A list's `limit`: 1 to 200, 50 when absent (400 `invalid_limit` otherwise).
pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, web::ApiError> {
    match limit {
        None => Ok(50),
        Some(limit) if (1..=200).contains(&limit) => Ok(limit),
        Some(_) => Err(web::ApiError::bad_request(
            "invalid_limit",
            "limit must be 1 to 200",
        )),
    }
}

/// The bytes behind signed media links. Kept out of [`read_consistency`]: an image fetch
/// reads no read model, so it neither waits for a token nor pays for the lag query.
pub fn media_router() -> OpenApiRouter<QueryState> {
    OpenApiRouter::new().routes(routes!(media::serve))
}

/// Waits for the request's consistency token, runs the query, and reports the lag.
pub async fn read_consistency(
    State(state): State<QueryState>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(error) = consistency::wait_for_request_token(&state.pool, request.headers()).await {
        return error.into_response();
    }
    let mut response = next.run(request).await;
    match store::projection::read_model_lag_ms(&state.pool).await {
        Ok(lag) => {
            response.headers_mut().insert(
                HeaderName::from_static(consistency::READ_MODEL_LAG),
                HeaderValue::from(lag),
            );
            metrics::gauge!("chat_read_model_lag_ms").set(lag as f64);
        }
        Err(error) => tracing::warn!(%error, "could not measure the read-model lag"),
    }
    response
}
