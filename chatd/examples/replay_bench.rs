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
    let conversations: i64 = 1000;
    let seeding = Instant::now();
    // Conversation c (0..1000) is created by user A_c with member B_c; then messages.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'conversation', c.id::text, 1, 'ConversationCreated', '1.0',
                json_build_object('Created', json_build_object(
                    'conversation_id', c.id, 'kind', 'group', 'title', 'bench', 'owner_id', c.owner,
                    'members', json_build_array(json_build_array(c.owner, 'owner'), json_build_array(c.member, 'member')),
                    'at', '2026-11-24T10:00:00Z')),
                json_build_object('actor_id', c.owner, 'request_id', 'bench', 'recorded_at', '2026-11-24T10:00:00Z')
           FROM (SELECT gen_random_uuid() AS id, gen_random_uuid() AS owner, gen_random_uuid() AS member, n
                   FROM generate_series(1, $1) AS n) c",
    )
    .bind(conversations)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'conversation', c.aggregate_id, m.seq + 1, 'MessageSent', '1.0',
                json_build_object('MessageSent', json_build_object(
                    'message_id', gen_random_uuid(), 'seq', m.seq, 'sender_id', c.payload -> 'Created' -> 'owner_id',
                    'client_message_id', null, 'body', 'a message of ordinary length, about sixty characters long',
                    'attachment_ids', json_build_array(), 'reply_to_id', null, 'at', '2026-11-24T10:00:01Z')),
                json_build_object('actor_id', c.payload -> 'Created' -> 'owner_id', 'request_id', 'bench', 'recorded_at', '2026-11-24T10:00:01Z')
           FROM events c
           CROSS JOIN LATERAL generate_series(1, ($1 - $2) / $2) AS m(seq)
          WHERE c.event_type = 'ConversationCreated'",
    )
    .bind(events)
    .bind(conversations)
    .execute(pool)
    .await?;
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
