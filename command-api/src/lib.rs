//! The command side of the REST API: every route that changes something. Handlers parse the
//! body into domain values, let an aggregate decide, and answer with the new state and an
//! `X-Consistency-Token`. Events reach the read models through the outbox, never from here.
//!
//! - [`auth`]: register, login, refresh, logout (`/api/v1/auth/*`).
//! - [`calls`]: starting and answering calls, and the durable ring timeout.
//! - [`conversations`]: conversations, members, messages and receipts, and the message index
//!   the `Conversation` aggregate consults.
//! - [`media`]: image uploads, and the ownership checks for attachments and avatars.
//! - [`profile`]: profile and password changes (`/api/v1/users/me`).
//! - [`credentials`]: the command side's own tables: identities, password hashes, sessions
//!   and refresh tokens.
//! - [`passwords`]: Argon2id hashing, bounded so a login flood cannot exhaust memory.
//! - [`rate_limits`]: failed-login counters per account and per address, and per-user send
//!   limits, in Redis.

pub mod auth;
pub mod calls;
pub mod conversations;
pub mod credentials;
pub mod media;
pub mod passwords;
pub mod profile;
pub mod rate_limits;

use axum::extract::FromRef;
use domain::account::Account;
use domain::conversation::{Conversation, ConversationServices};
use std::sync::Arc;
use std::time::Duration;
use store::AggregateStore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use web::Authenticator;

pub use passwords::PasswordHasher;
pub use rate_limits::{LoginLimits, SendLimits};

/// Everything the command handlers share.
#[derive(Clone)]
pub struct CommandState {
    pub pool: sqlx::PgPool,
    pub accounts: Arc<AggregateStore<Account>>,
    pub conversations: Arc<AggregateStore<Conversation>>,
    pub conversation_services: ConversationServices,
    pub authenticator: Arc<Authenticator>,
    pub passwords: Arc<PasswordHasher>,
    pub login_limits: LoginLimits,
    pub send_limits: SendLimits,
    pub refresh_token_lifetime: Duration,
    pub media: Arc<AggregateStore<domain::media::Media>>,
    pub calls: Arc<AggregateStore<domain::call::Call>>,
    /// How long a call rings before it ends as missed.
    pub ring_timeout: Duration,
    pub uploads: media::Uploads,
}

impl FromRef<CommandState> for Arc<Authenticator> {
    fn from_ref(state: &CommandState) -> Self {
        state.authenticator.clone()
    }
}

/// Every command route, with its OpenAPI description.
pub fn router() -> OpenApiRouter<CommandState> {
    OpenApiRouter::new()
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(profile::update_profile))
        .routes(routes!(profile::change_password))
        .routes(routes!(conversations::create_conversation))
        .routes(routes!(conversations::rename))
        .routes(routes!(conversations::add_member))
        .routes(routes!(conversations::remove_member))
        .routes(routes!(conversations::send_message))
        .routes(routes!(conversations::edit_message))
        .routes(routes!(conversations::delete_message))
        .routes(routes!(conversations::move_receipts))
        .routes(routes!(calls::start_call))
        .routes(routes!(calls::accept_call))
        .routes(routes!(calls::decline_call))
        .routes(routes!(calls::leave_call))
        .routes(routes!(calls::end_call))
        .merge(
            // The upload reads its body itself, counting against its own limit.
            OpenApiRouter::new()
                .routes(routes!(media::upload))
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
}

/// The `User` representation of an account, from the aggregate's state.
pub fn user_from_account(
    account: &Account,
    avatar: Option<web::dto::Media>,
    with_email: bool,
) -> Option<web::dto::User> {
    Some(web::dto::User {
        id: account.user_id?.as_uuid(),
        username: account.username.as_ref()?.as_str().to_owned(),
        display_name: account.display_name.as_ref()?.as_str().to_owned(),
        bio: account.bio.as_ref().map(|bio| bio.as_str().to_owned()),
        avatar,
        online: false,
        last_seen_at: None,
        created_at: account.created_at?,
        email: if with_email {
            account
                .email
                .as_ref()
                .map(|email| email.as_str().to_owned())
        } else {
            None
        },
    })
}
