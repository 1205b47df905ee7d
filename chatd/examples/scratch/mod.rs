//! A throwaway database for a benchmark: created and migrated, dropped afterwards.

use sqlx::Connection;
use uuid::Uuid;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// A fresh, migrated database; returns its URL and a pool on it.
pub async fn database() -> anyhow::Result<(String, sqlx::PgPool)> {
    let database_url = format!("{POSTGRES}/chat_bench_{}", Uuid::now_v7().simple());
    store::create_database_if_missing(&database_url).await?;
    let pool = store::connect(&database_url, 4).await?;
    store::migrate(&pool).await?;
    Ok((database_url, pool))
}

/// Closes the pool and drops the database, ignoring failures (it is scratch).
pub async fn drop(database_url: &str, pool: sqlx::PgPool) {
    pool.close().await;
    if let Some((_, name)) = database_url.rsplit_once('/')
        && let Ok(mut connection) =
            sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres")).await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut connection)
            .await;
    }
}
