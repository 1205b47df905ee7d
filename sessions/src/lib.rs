//! Access tokens and their revocation: the session service every role uses to check a caller.
//!
//! - [`tokens`]: issuing and verifying HS256 JWTs (algorithm pinned, every claim checked).
//! - [`revocation`]: the revoked set in Redis, backed durably by Postgres and reloaded from it
//!   whenever Redis has lost it; checks fail closed when Redis is unreachable.
//! - [`user_map`]: which node holds each user's WebSocket connections, and presence.
//! - [`redis_connect`]: a Redis connection manager with short timeouts.

pub mod revocation;
pub mod tokens;
pub mod user_map;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

pub use revocation::{RevocationError, Revocations};
pub use tokens::{AccessClaims, IssuedToken, JwtSecret, TokenError, Tokens};

/// A Redis connection that reconnects by itself and answers within two seconds or fails, so a
/// dead Redis turns into a quick 503 rather than a hung request.
pub async fn redis_connect(redis_url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(redis_url)
        .with_context(|| format!("REDIS_URL is not a valid Redis URL: {redis_url}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let connecting = client.get_connection_manager_with_config(config);
    tokio::time::timeout(Duration::from_secs(3), connecting)
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|result| result.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot connect to Redis at {}", redact(redis_url)))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
