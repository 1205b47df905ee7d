//! The revoked-token set.
//!
//! Postgres is the durable record (`revoked_access_tokens`, `auth_sessions.revoked_at`);
//! Redis holds the same set with TTLs for the per-request check. A marker key says that Redis
//! holds the whole set: when Redis restarts or is flushed the marker is gone, and the next
//! check reloads every revocation still in force from Postgres before answering, so a revoked
//! token never comes back. When Redis cannot be reached the check fails closed.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

use crate::AccessClaims;
use crate::tokens::LEEWAY_SECONDS;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("the token has been revoked")]
    Revoked,
    /// Redis or Postgres could not answer: the caller must refuse the request (503).
    #[error("the session service is unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for RevocationError {
    fn from(error: redis::RedisError) -> Self {
        Self::Unavailable(format!("redis: {error}"))
    }
}

impl From<sqlx::Error> for RevocationError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(format!("postgres: {error}"))
    }
}

#[derive(Clone)]
pub struct Revocations {
    redis: ConnectionManager,
    pool: PgPool,
    namespace: String,
    /// How long a session revocation must be remembered: the longest an access token of that
    /// session can still be valid.
    session_memory: Duration,
}

impl Revocations {
    pub fn new(
        redis: ConnectionManager,
        pool: PgPool,
        namespace: &str,
        access_token_lifetime: Duration,
    ) -> Self {
        Self {
            redis,
            pool,
            namespace: namespace.to_owned(),
            session_memory: access_token_lifetime + Duration::from_secs(LEEWAY_SECONDS),
        }
    }

    /// The pub/sub channel on which every revocation is announced, so WebSocket nodes close
    /// the revoked connections at once. Messages: `{"jti": ...}` or `{"sid": ...}`.
    pub fn channel(&self) -> String {
        format!("{}:revocations", self.namespace)
    }

    fn loaded_key(&self) -> String {
        format!("{}:revoked:loaded", self.namespace)
    }

    fn token_key(&self, jti: Uuid) -> String {
        format!("{}:revoked:jti:{jti}", self.namespace)
    }

    fn session_key(&self, session_id: Uuid) -> String {
        format!("{}:revoked:sid:{session_id}", self.namespace)
    }

    /// Refuses a token that was revoked, alone or with its whole session. One round trip.
    pub async fn check(&self, claims: &AccessClaims) -> Result<(), RevocationError> {
        let revoked = self.revoked_among(&[(claims.jti, claims.sid)]).await?;
        if revoked.first().copied().unwrap_or(false) {
            return Err(RevocationError::Revoked);
        }
        Ok(())
    }

    /// Which of these tokens (`(jti, sid)` pairs) were revoked, alone or with their session:
    /// [`Self::check`] for many connections in one round trip.
    pub async fn revoked_among(
        &self,
        tokens: &[(Uuid, Uuid)],
    ) -> Result<Vec<bool>, RevocationError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(1 + 2 * tokens.len());
        keys.push(self.loaded_key());
        for (jti, sid) in tokens {
            keys.push(self.token_key(*jti));
            keys.push(self.session_key(*sid));
        }
        let mut found = self.read_keys(&keys).await?;
        if found.first().is_none_or(Option::is_none) {
            self.reload().await?;
            found = self.read_keys(&keys).await?;
        }
        Ok(found
            .get(1..)
            .unwrap_or_default()
            .chunks(2)
            .map(|pair| pair.iter().any(Option::is_some))
            .collect())
    }

    /// One MGET. A read is safe to repeat, so a link that broke since the last command (the
    /// connection manager reconnects on the next one) costs a retry, not a failed request.
    async fn read_keys(&self, keys: &[String]) -> Result<Vec<Option<String>>, RevocationError> {
        let mut redis = self.redis.clone();
        let first: redis::RedisResult<Vec<Option<String>>> =
            redis::cmd("MGET").arg(keys).query_async(&mut redis).await;
        match first {
            Err(error) if error.is_io_error() || error.is_connection_dropped() => {
                Ok(redis::cmd("MGET").arg(keys).query_async(&mut redis).await?)
            }
            other => Ok(other?),
        }
    }

    /// Revokes one access token: durably first, then in Redis.
    pub async fn revoke_token(&self, claims: &AccessClaims) -> Result<(), RevocationError> {
        sqlx::query(
            "INSERT INTO revoked_access_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(claims.jti)
        .bind(claims.sub)
        .bind(claims.expires_at())
        .execute(&self.pool)
        .await?;
        let ttl = remaining(claims.expires_at());
        let mut redis = self.redis.clone();
        let announcement = serde_json::json!({"jti": claims.jti}).to_string();
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(self.token_key(claims.jti))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.channel())
            .arg(announcement)
            .ignore()
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    /// Marks sessions revoked in Redis. The caller has already set `auth_sessions.revoked_at`
    /// in Postgres (in the same transaction as the rest of its change).
    pub async fn publish_revoked_sessions(
        &self,
        session_ids: &[Uuid],
    ) -> Result<(), RevocationError> {
        if session_ids.is_empty() {
            return Ok(());
        }
        let ttl = self.session_memory.as_secs().max(1);
        let mut pipeline = redis::pipe();
        for session_id in session_ids {
            pipeline
                .cmd("SET")
                .arg(self.session_key(*session_id))
                .arg(1)
                .arg("EX")
                .arg(ttl)
                .ignore()
                .cmd("PUBLISH")
                .arg(self.channel())
                .arg(serde_json::json!({"sid": session_id}).to_string())
                .ignore();
        }
        let mut redis = self.redis.clone();
        let _: () = pipeline.query_async(&mut redis).await?;
        Ok(())
    }

    /// Copies every revocation still in force from Postgres into Redis, then sets the marker.
    pub async fn reload(&self) -> Result<(), RevocationError> {
        let tokens: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT jti, expires_at FROM revoked_access_tokens
              WHERE expires_at > now() - make_interval(secs => $1)",
        )
        .bind(LEEWAY_SECONDS as f64)
        .fetch_all(&self.pool)
        .await?;
        let sessions: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT session_id, revoked_at FROM auth_sessions
              WHERE revoked_at > now() - make_interval(secs => $1)",
        )
        .bind(self.session_memory.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let mut pipeline = redis::pipe();
        for (jti, expires_at) in tokens {
            pipeline
                .cmd("SET")
                .arg(self.token_key(jti))
                .arg(1)
                .arg("EX")
                .arg(remaining(expires_at))
                .ignore();
        }
        let memory = chrono::Duration::from_std(self.session_memory).unwrap_or_default();
        for (session_id, revoked_at) in sessions {
            pipeline
                .cmd("SET")
                .arg(self.session_key(session_id))
                .arg(1)
                .arg("EX")
                .arg(remaining(revoked_at + memory))
                .ignore();
        }
        pipeline.cmd("SET").arg(self.loaded_key()).arg(1).ignore();
        let mut redis = self.redis.clone();
        let _: () = pipeline.query_async(&mut redis).await?;
        Ok(())
    }

    /// Whether Redis answers (for readiness).
    pub async fn ping(&self) -> Result<(), RevocationError> {
        let mut redis = self.redis.clone();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(())
    }
}

/// Seconds until `until` plus the verification leeway, at least 1 (Redis refuses `EX 0`).
fn remaining(until: DateTime<Utc>) -> u64 {
    let seconds = (until - Utc::now()).num_seconds().max(0);
    u64::try_from(seconds).unwrap_or(0) + LEEWAY_SECONDS
}
