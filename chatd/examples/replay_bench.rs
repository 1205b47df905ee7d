//! Rebuild rate: seeds N events (1,000 group conversations, each created once, the rest
//! messages) straight into a fresh event store, then times `chatd replay`
//! (events applied to scratch read models, then switched in).
//!
//! ```text
//! cargo run --release -p chatd --example replay_bench -- [events=1000000]
//! ```
//!
//! Needs the local Postgres; creates and drops its own database.

use std::time::Instant;

mod scratch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: i64 = std::env::args()
        .nth(1)
        .map(|text| text.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let (database_url, pool) = scratch::database().await?;
    let result = run(&pool, events).await;
    scratch::drop(&database_url, pool).await;
    result
}

async fn run(pool: &sqlx::PgPool, events: i64) -> anyhow::Result<()> {
    let seeding = Instant::now();
    // Conversation c (0..1000) is created by user A_c with member B_c; then messages.
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT set_config('replay.events', $1, true)")
        .bind(events.to_string())
        .execute(&mut *transaction)
        .await?;
    sqlx::raw_sql(include_str!("replay_seed.sql"))
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    println!(
        "seeded {stored} events in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let mut quiet = std::io::sink();
    let outcome = chatd::replay::run(pool, false, &mut quiet).await?;
    println!(
        "rebuild: {} events in {:.1} s = {:.0} events/s ({} differences)",
        outcome.events,
        outcome.seconds,
        outcome.events as f64 / outcome.seconds,
        outcome.differences.len()
    );
    Ok(())
}
