//! How far the read models have got. The projector writes `projection_positions`; the query
//! side only reads it, to honour consistency tokens and report lag.

use sqlx::PgPool;
use std::time::{Duration, Instant};

use crate::StreamPosition;

/// Whether the projector has applied the stream up to `position.sequence`.
pub async fn has_applied(pool: &PgPool, position: &StreamPosition) -> sqlx::Result<bool> {
    let applied: Option<i64> = sqlx::query_scalar(
        "SELECT last_sequence FROM projection_positions WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(&position.aggregate_type)
    .bind(&position.aggregate_id)
    .fetch_optional(pool)
    .await?;
    Ok(applied.is_some_and(|sequence| sequence >= position.sequence))
}

/// Waits until the projector has applied `position`, polling briefly. `Ok(false)` on timeout.
pub async fn wait_until_applied(
    pool: &PgPool,
    position: &StreamPosition,
    timeout: Duration,
) -> sqlx::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if has_applied(pool, position).await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// The age in milliseconds of the oldest committed event that the read models do not show yet;
/// 0 when they are up to date. Cheap: the relay prunes outbox rows once they are projected, so
/// the scan covers only what is still in flight.
pub async fn read_model_lag_ms(pool: &PgPool) -> sqlx::Result<i64> {
    let lag: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (clock_timestamp() - min(o.created_at)))::float8 * 1000
           FROM outbox o
           LEFT JOIN projection_positions p
             ON p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id
          WHERE p.last_sequence IS NULL OR p.last_sequence < o.sequence",
    )
    .fetch_one(pool)
    .await?;
    Ok(lag.map_or(0, |milliseconds| milliseconds.max(0.0) as i64))
}
