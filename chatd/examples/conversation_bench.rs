//! Writing to a long conversation costs what writing to a short one does: appends messages to
//! one conversation through the event store (snapshots every 100 events, as `chatd` runs it)
//! and prints the append latency near the start and near the end.
//!
//! ```text
//! cargo run --release -p chatd --example conversation_bench -- [messages=100000]
//! ```
//!
//! Needs the local Postgres; creates and drops its own database.

use chrono::Utc;
use command_api::conversations::IndexedMessages;
use domain::conversation::{
    Conversation, ConversationCommand, ConversationKind, ConversationServices, MessageBody,
};
use domain::metadata::EventMetadata;
use domain::{ConversationId, MessageId, UserId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::AggregateStore;

mod scratch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: usize = std::env::args()
        .nth(1)
        .map(|text| text.parse())
        .transpose()?
        .unwrap_or(100_000);
    let (database_url, pool) = scratch::database().await?;
    let result = run(&pool, messages).await;
    scratch::drop(&database_url, pool).await;
    result
}

async fn run(pool: &sqlx::PgPool, messages: usize) -> anyhow::Result<()> {
    let with_snapshots = AggregateStore::<Conversation>::with_snapshots(pool.clone(), 100);
    let services = ConversationServices {
        messages: Arc::new(IndexedMessages { pool: pool.clone() }),
    };
    let (alice, bob) = (UserId::new(), UserId::new());
    let conversation_id = ConversationId::new();
    let metadata = || EventMetadata {
        actor_id: Some(alice),
        request_id: "bench".to_owned(),
        recorded_at: Utc::now(),
    };
    let create = ConversationCommand::Create {
        conversation_id,
        kind: ConversationKind::Direct,
        creator_id: alice,
        member_ids: vec![bob],
        title: None,
        at: Utc::now(),
    };
    with_snapshots
        .execute(&conversation_id.to_string(), create, &services, &metadata())
        .await?;
    let body = MessageBody::parse("a message of ordinary length, about sixty characters long")?;
    let window = 200.min(messages / 2).max(1);
    let mut early = Vec::new();
    let mut late = Vec::new();
    let started = Instant::now();
    for index in 1..=messages {
        let command = ConversationCommand::SendMessage {
            message_id: MessageId::new(),
            sender_id: if index % 2 == 0 { alice } else { bob },
            client_message_id: None,
            body: Some(body.clone()),
            attachments: vec![],
            reply_to_id: None,
            at: Utc::now(),
        };
        let began = Instant::now();
        with_snapshots
            .execute(
                &conversation_id.to_string(),
                command,
                &services,
                &metadata(),
            )
            .await?;
        let took = began.elapsed();
        if (10..10 + window).contains(&index) {
            early.push(took);
        }
        if index > messages - window {
            late.push(took);
        }
        if index % 10_000 == 0 {
            println!(
                "{index} messages appended ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "append latency, messages 10..{}: median {:.2} ms, p90 {:.2} ms",
        10 + window - 1,
        percentile(&mut early, 0.5),
        percentile(&mut early, 0.9)
    );
    println!(
        "append latency, messages {}..{messages}: median {:.2} ms, p90 {:.2} ms",
        messages - window + 1,
        percentile(&mut late, 0.5),
        percentile(&mut late, 0.9)
    );
    println!(
        "{messages} appends in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn percentile(samples: &mut [Duration], quantile: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
    samples
        .get(index)
        .map_or(0.0, |duration| duration.as_secs_f64() * 1000.0)
}
