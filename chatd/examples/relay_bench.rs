//! Outbox relay throughput: seeds N events in a fresh database (the trigger fills the outbox),
//! then times the relay publishing them all to RabbitMQ with publisher confirms.
//!
//! ```text
//! cargo run --release -p chatd --example relay_bench -- [events=100000] [batch=500]
//! ```
//!
//! Needs the local Postgres, RabbitMQ (and nothing else); cleans up after itself.

use bus::{OutboxRelay, Processed, RelayOptions, Topology};
use std::time::Instant;
use uuid::Uuid;

mod scratch;
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut arguments = std::env::args().skip(1);
    let events: i64 = arguments
        .next()
        .map(|text| text.parse())
        .transpose()?
        .unwrap_or(100_000);
    let batch_size: i64 = arguments
        .next()
        .map(|text| text.parse())
        .transpose()?
        .unwrap_or(500);
    let namespace = format!("bench_{}", Uuid::now_v7().simple());
    let topology = Topology::new(&namespace);
    let (database_url, pool) = scratch::database().await?;
    let result = run(&pool, &database_url, &topology, events, batch_size).await;
    if let Ok(connection) = bus::connect(AMQP, "bench-cleanup").await
        && let Ok(channel) = connection.create_channel().await
    {
        let _ = topology.delete(&channel).await;
    }
    scratch::drop(&database_url, pool).await;
    result
}

async fn run(
    pool: &sqlx::PgPool,
    database_url: &str,
    topology: &Topology,
    events: i64,
    batch_size: i64,
) -> anyhow::Result<()> {
    let seeding = Instant::now();
    // 100 streams, each with consecutive sequences, with a payload the size of a chat event.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'bench', 'stream-' || (n % 100), n / 100 + 1, 'BenchHappened', '1.0',
                json_build_object('BenchHappened', json_build_object('body', repeat('x', 120), 'n', n)),
                json_build_object('actor_id', gen_random_uuid(), 'request_id', gen_random_uuid(), 'recorded_at', now())
           FROM generate_series(0, $1 - 1) AS n",
    )
    .bind(events)
    .execute(pool)
    .await?;
    println!(
        "seeded {events} events in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let mut relay = OutboxRelay::new(RelayOptions {
        database_url: database_url.to_owned(),
        amqp_url: AMQP.to_owned(),
        topology: topology.clone(),
        batch_size,
        crash_after: None,
    });
    // Connect (and take the lock) before the clock starts.
    let warm_up = relay.publish_next_batch().await?;
    let mut published = match warm_up {
        Processed::Events(count) => count,
        Processed::Idle => 0,
    };
    let started = Instant::now();
    let mut timed = 0usize;
    while let Processed::Events(count) = relay.publish_next_batch().await? {
        timed += count;
    }
    let seconds = started.elapsed().as_secs_f64();
    published += timed;
    let rate = timed as f64 / seconds;
    println!(
        "relay: {timed} events in {seconds:.2} s = {rate:.0} events/s (batch {batch_size}, outbox → broker confirm; {published} published in all)"
    );
    anyhow::ensure!(
        published as i64 == events,
        "published {published} of {events}"
    );
    Ok(())
}
