//! The command side's own tables: unique identities, password hashes, login sessions and
//! refresh tokens. None of this enters the event log (it holds secrets); the events record
//! that a login, refresh or logout happened.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// Which kind of identity a claim is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    Username,
    Email,
}

impl IdentityKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Username => "username",
            Self::Email => "email",
        }
    }
}

/// A claim left behind by a registration that crashed before its event was stored is taken
/// over after this long.
const ABANDONED_CLAIM_AGE_SECONDS: f64 = 30.0;

/// Claims `value` (already normalized) for `user_id`. `false` when another account holds it.
pub async fn claim_identity(
    connection: &mut PgConnection,
    kind: IdentityKind,
    value: &str,
    user_id: Uuid,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO account_identities (kind, value, user_id) VALUES ($1, $2, $3)
         ON CONFLICT (kind, value) DO NOTHING",
    )
    .bind(kind.as_str())
    .bind(value)
    .bind(user_id)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(true);
    }
    let taken_over = sqlx::query(
        "UPDATE account_identities SET user_id = $3, claimed_at = now()
          WHERE kind = $1 AND value = $2 AND user_id <> $3
            AND claimed_at < now() - make_interval(secs => $4)
            AND NOT EXISTS (SELECT 1 FROM events
                             WHERE aggregate_type = 'account'
                               AND aggregate_id = account_identities.user_id::text)",
    )
    .bind(kind.as_str())
    .bind(value)
    .bind(user_id)
    .bind(ABANDONED_CLAIM_AGE_SECONDS)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if taken_over == 1 {
        return Ok(true);
    }
    let owner: Option<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM account_identities WHERE kind = $1 AND value = $2")
            .bind(kind.as_str())
            .bind(value)
            .fetch_optional(&mut *connection)
            .await?;
    Ok(owner == Some(user_id))
}

pub async fn release_identity(
    pool: &PgPool,
    kind: IdentityKind,
    value: &str,
    user_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM account_identities WHERE kind = $1 AND value = $2 AND user_id = $3")
        .bind(kind.as_str())
        .bind(value)
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The account a username or email belongs to.
pub async fn find_account(pool: &PgPool, login: &str) -> sqlx::Result<Option<Uuid>> {
    let kind = if login.contains('@') {
        IdentityKind::Email
    } else {
        IdentityKind::Username
    };
    sqlx::query_scalar("SELECT user_id FROM account_identities WHERE kind = $1 AND value = $2")
        .bind(kind.as_str())
        .bind(login.trim().to_lowercase())
        .fetch_optional(pool)
        .await
}

pub async fn password_hash(pool: &PgPool, user_id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT password_hash FROM account_credentials WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

pub async fn set_password_hash(
    connection: &mut PgConnection,
    user_id: Uuid,
    password_hash: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO account_credentials (user_id, password_hash) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = now()",
    )
    .bind(user_id)
    .bind(password_hash)
    .execute(connection)
    .await?;
    Ok(())
}

/// A fresh refresh token: 32 random bytes, URL-safe base64. Only its SHA-256 is stored.
pub struct RefreshToken {
    pub token: String,
    hash: Vec<u8>,
}

impl RefreshToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let hash = hash_token(&token);
        Self { token, hash }
    }
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Starts a login session with its first refresh token.
pub async fn start_session(
    connection: &mut PgConnection,
    session_id: Uuid,
    user_id: Uuid,
    lifetime: Duration,
) -> sqlx::Result<RefreshToken> {
    sqlx::query("INSERT INTO auth_sessions (session_id, user_id) VALUES ($1, $2)")
        .bind(session_id)
        .bind(user_id)
        .execute(&mut *connection)
        .await?;
    add_refresh_token(connection, session_id, lifetime).await
}

async fn add_refresh_token(
    connection: &mut PgConnection,
    session_id: Uuid,
    lifetime: Duration,
) -> sqlx::Result<RefreshToken> {
    let token = RefreshToken::generate();
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(&token.hash)
    .bind(session_id)
    .bind(lifetime.as_secs_f64())
    .execute(connection)
    .await?;
    Ok(token)
}

/// What presenting a refresh token led to.
pub enum Rotation {
    /// The token was live: it is now spent and this one replaces it.
    Rotated {
        user_id: Uuid,
        session_id: Uuid,
        token: RefreshToken,
    },
    /// The token was already spent: its whole session is now revoked.
    Reused { user_id: Uuid, session_id: Uuid },
    /// Unknown, expired, or of a revoked session.
    Invalid,
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    user_id: Uuid,
    session_id: Uuid,
    expires_at: DateTime<Utc>,
    spent_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// Spends a refresh token and issues its successor, in one transaction. Concurrent uses of
/// one token are serialized by the row lock: the second one counts as reuse.
pub async fn rotate_refresh_token(
    pool: &PgPool,
    token: &str,
    lifetime: Duration,
) -> sqlx::Result<Rotation> {
    let mut transaction = pool.begin().await?;
    let row: Option<RefreshRow> = sqlx::query_as(
        "SELECT s.user_id, r.session_id, r.expires_at, r.spent_at, s.revoked_at
               FROM refresh_tokens r JOIN auth_sessions s USING (session_id)
              WHERE r.token_hash = $1
                FOR UPDATE OF r, s",
    )
    .bind(hash_token(token))
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(RefreshRow {
        user_id,
        session_id,
        expires_at,
        spent_at,
        revoked_at,
    }) = row
    else {
        return Ok(Rotation::Invalid);
    };
    if revoked_at.is_some() {
        return Ok(Rotation::Invalid);
    }
    if spent_at.is_some() {
        revoke_session_rows(&mut transaction, &[session_id]).await?;
        transaction.commit().await?;
        return Ok(Rotation::Reused {
            user_id,
            session_id,
        });
    }
    if expires_at <= Utc::now() {
        return Ok(Rotation::Invalid);
    }
    sqlx::query("UPDATE refresh_tokens SET spent_at = now() WHERE token_hash = $1")
        .bind(hash_token(token))
        .execute(&mut *transaction)
        .await?;
    let successor = add_refresh_token(&mut transaction, session_id, lifetime).await?;
    transaction.commit().await?;
    Ok(Rotation::Rotated {
        user_id,
        session_id,
        token: successor,
    })
}

async fn revoke_session_rows(
    connection: &mut PgConnection,
    session_ids: &[Uuid],
) -> sqlx::Result<()> {
    sqlx::query("UPDATE auth_sessions SET revoked_at = now() WHERE session_id = ANY($1) AND revoked_at IS NULL")
        .bind(session_ids)
        .execute(connection)
        .await?;
    Ok(())
}

/// Revokes one session. Returns its id for publishing to Redis.
pub async fn revoke_session(pool: &PgPool, session_id: Uuid) -> sqlx::Result<Vec<Uuid>> {
    let mut connection = pool.acquire().await?;
    revoke_session_rows(&mut connection, &[session_id]).await?;
    Ok(vec![session_id])
}

/// Revokes every live session of a user except `keep`; returns the revoked ids.
pub async fn revoke_user_sessions(
    pool: &PgPool,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "UPDATE auth_sessions SET revoked_at = now()
          WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR session_id <> $2)
          RETURNING session_id",
    )
    .bind(user_id)
    .bind(keep)
    .fetch_all(pool)
    .await
}
