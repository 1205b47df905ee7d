//! The outbox relay: publishes committed events to RabbitMQ, then marks them published.
//!
//! Guarantees:
//! - A row is marked published only after the broker confirmed it (persistent, `mandatory`,
//!   publisher confirms). A crash in between re-sends it: delivery is at least once, and
//!   consumers deduplicate by stream position.
//! - Rows are read by "not yet published" and in id order, never by a high-water mark, so a
//!   transaction that commits late is not skipped.
//! - One relay publishes at a time (a Postgres advisory lock held on the relay's own
//!   connection), so the events of one stream leave in sequence order.
//! - Confirms are pipelined: a whole batch is published, then its confirms awaited together.
//! - A message carries a run of events (up to [`EVENTS_PER_MESSAGE`]), so the broker's
//!   per-message cost is shared (ADR 0018).

use futures::future::join_all;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use sqlx::postgres::PgListener;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::{Backoff, Topology};

/// The advisory-lock key that elects the one active relay of a database.
const RELAY_LOCK_KEY: i64 = 0x0c4a_7d00_0001;

#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub database_url: String,
    pub amqp_url: String,
    pub topology: Topology,
    pub batch_size: i64,
    /// For crash tests: publish this many rows of a batch, then fail as a killed process would.
    pub crash_after: Option<usize>,
}

/// What one unit of work did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processed {
    /// This many events were handled.
    Events(usize),
    /// Nothing was waiting.
    Idle,
}

pub struct OutboxRelay {
    options: RelayOptions,
    links: Option<Links>,
}

/// The live connections; dropped as a whole on any error and rebuilt on the next batch.
struct Links {
    database: PgConnection,
    amqp: Connection,
    channel: Channel,
}

impl OutboxRelay {
    pub fn new(options: RelayOptions) -> Self {
        Self {
            options,
            links: None,
        }
    }

    /// Publishes the next batch of unpublished outbox rows. Returns `Idle` when there were none,
    /// or when another relay holds the lock.
    pub async fn publish_next_batch(&mut self) -> anyhow::Result<Processed> {
        if self.links.is_none() {
            match self.open_links().await? {
                Some(links) => self.links = Some(links),
                None => return Ok(Processed::Idle),
            }
        }
        let result = self.publish_with_links().await;
        if result.is_err()
            && let Some(links) = self.links.take()
        {
            // Whatever broke, start again from fresh connections (and re-take the lock).
            let _ = links.amqp.close(320, "relay restarting".into()).await;
            let _ = links.database.close().await;
        }
        result
    }

    async fn publish_with_links(&mut self) -> anyhow::Result<Processed> {
        let Some(links) = self.links.as_mut() else {
            return Ok(Processed::Idle);
        };
        // Each event comes out of Postgres as the JSON text it is sent as: the relay splices
        // texts into message bodies and never parses an event.
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT o.id, json_build_object(
                        'aggregate_type', e.aggregate_type, 'aggregate_id', e.aggregate_id,
                        'sequence', e.sequence, 'event_type', e.event_type,
                        'event_version', e.event_version, 'payload', e.payload,
                        'metadata', e.metadata)::text
               FROM (SELECT id, aggregate_type, aggregate_id, sequence FROM outbox
                      WHERE published_at IS NULL ORDER BY id LIMIT $1) o
               JOIN events e USING (aggregate_type, aggregate_id, sequence)
              ORDER BY o.id",
        )
        .bind(self.options.batch_size)
        .fetch_all(&mut links.database)
        .await?;
        if rows.is_empty() {
            return Ok(Processed::Idle);
        }
        let exchange = self.options.topology.events_exchange();
        let runs = runs(&rows, self.options.crash_after);
        let mut pending = Vec::with_capacity(runs.len());
        for run in &runs {
            if self.options.crash_after == Some(run.start) {
                anyhow::bail!("relay crashed on purpose after {} publishes", run.start);
            }
            let events = &rows[run.clone()];
            let confirm = links
                .channel
                .basic_publish(
                    exchange.as_str().into(),
                    crate::EVENTS_ROUTING_KEY.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body(events),
                    properties(events),
                )
                .await?;
            pending.push(confirm);
        }
        let confirmations = join_all(pending).await;
        // Only the confirmed prefix counts: what follows a refused message waits for the next
        // batch, so a stream never overtakes itself.
        let mut published = Vec::with_capacity(rows.len());
        for (run, confirmation) in runs.iter().zip(confirmations) {
            let events = &rows[run.clone()];
            match confirmation? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {
                    published.extend(events.iter().map(|(id, _)| *id));
                }
                Confirmation::Ack(Some(_)) => {
                    tracing::warn!(message_id = %message_id(events), "broker returned an unroutable message; will retry");
                    break;
                }
                Confirmation::Nack(_) => {
                    tracing::warn!(message_id = %message_id(events), "broker refused a message; will retry");
                    break;
                }
            }
        }
        sqlx::query("UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut links.database)
            .await?;
        metrics::counter!("chat_outbox_published_total").increment(published.len() as u64);
        Ok(Processed::Events(published.len()))
    }

    /// Connects to both servers and takes the relay lock; `None` when another relay has it.
    async fn open_links(&self) -> anyhow::Result<Option<Links>> {
        let mut database =
            PgConnection::connect_with(&store::connect_options(&self.options.database_url)?)
                .await?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut database)
            .await?;
        if !leader {
            tracing::debug!("another outbox relay holds the lock");
            return Ok(None);
        }
        let amqp = crate::connect(&self.options.amqp_url, "chatd-relay").await?;
        let channel = amqp.create_channel().await?;
        self.options.topology.declare(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        tracing::info!("outbox relay connected; this process publishes");
        Ok(Some(Links {
            database,
            amqp,
            channel,
        }))
    }

    /// Deletes rows that are published and already applied by the projector, so the outbox
    /// holds only what is in flight.
    pub async fn prune(pool: &PgPool) -> sqlx::Result<u64> {
        let result = sqlx::query(
            "DELETE FROM outbox o USING projection_positions p
              WHERE o.published_at IS NOT NULL
                AND p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id
                AND p.last_sequence >= o.sequence",
        )
        .execute(pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Publishes until `shutdown`: on a notification from the outbox trigger, or every
    /// 500 ms; reconnects with backoff after any failure.
    pub async fn run(mut self, pool: PgPool, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut listener: Option<PgListener> = None;
        // Pruned beside publishing, not between two batches: a prune under load takes tens of
        // milliseconds, and every event committed meanwhile waited for it.
        let pruning = tokio::spawn(prune_until(pool.clone(), shutdown.clone()));
        while !shutdown.is_cancelled() {
            if listener.is_none() {
                listener = listen(&pool).await;
            }
            let outcome = self.publish_next_batch().await;
            match outcome {
                Ok(Processed::Events(_)) => {
                    backoff.reset();
                    continue;
                }
                Ok(Processed::Idle) => backoff.reset(),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "outbox relay failed; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_pause()) => {}
                        () = shutdown.cancelled() => {}
                    }
                    continue;
                }
            }
            let wait = async {
                match listener.as_mut() {
                    Some(listening) => {
                        if listening.try_recv().await.is_err() {
                            listener = None;
                        }
                    }
                    None => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            };
            tokio::select! {
                () = wait => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = shutdown.cancelled() => {}
            }
        }
        let _ = pruning.await;
    }
}

/// Prunes the outbox every 2 s until `shutdown`, whether busy or idle, so a steady load does
/// not grow it.
async fn prune_until(pool: PgPool, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(error) = OutboxRelay::prune(&pool).await {
            tracing::warn!(%error, "pruning the outbox failed");
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen("outbox").await.ok()?;
    Some(listener)
}

/// The most events one message carries, and about the most bytes: enough that the broker's
/// per-message work (two quorum queues, their logs, deliveries and acks) is shared by many
/// events, small enough that a consumer's prefetch stays a bounded amount of memory.
const EVENTS_PER_MESSAGE: usize = 128;
const BYTES_PER_MESSAGE: usize = 512 * 1024;

/// Splits a batch of rows into the runs that go out as one message each, in order. A crash
/// test's `crash_after` point starts a run, so the crash falls between two messages.
fn runs(rows: &[(i64, String)], crash_after: Option<usize>) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, (_, text)) in rows.iter().enumerate() {
        let full = index - start == EVENTS_PER_MESSAGE || bytes + text.len() > BYTES_PER_MESSAGE;
        if index > start && (full || crash_after == Some(index)) {
            runs.push(start..index);
            (start, bytes) = (index, 0);
        }
        bytes += text.len() + 1;
    }
    runs.push(start..rows.len());
    runs
}

/// A JSON array of the events' texts.
fn body(events: &[(i64, String)]) -> Vec<u8> {
    let length = events.iter().map(|(_, text)| text.len() + 1).sum::<usize>() + 1;
    let mut body = Vec::with_capacity(length);
    body.push(b'[');
    for (index, (_, text)) in events.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(text.as_bytes());
    }
    body.push(b']');
    body
}

/// `outbox:17-42`: the outbox rows a message carries, for broker-side tracing.
fn message_id(events: &[(i64, String)]) -> String {
    let first = events.first().map_or(0, |(id, _)| *id);
    let last = events.last().map_or(0, |(id, _)| *id);
    format!("outbox:{first}-{last}")
}

fn properties(events: &[(i64, String)]) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("events"),
        AMQPValue::LongLongInt(i64::try_from(events.len()).unwrap_or(i64::MAX)),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id(events).into())
        .with_type("events".into())
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(count: usize, size: usize) -> Vec<(i64, String)> {
        (0..count)
            .map(|index| (index as i64 + 1, "x".repeat(size)))
            .collect()
    }

    #[test]
    fn a_batch_goes_out_in_runs_bounded_by_count_and_bytes() {
        assert_eq!(runs(&rows(3, 10), None), vec![(0..3)]);
        assert_eq!(
            runs(&rows(300, 10), None),
            [0..EVENTS_PER_MESSAGE, 128..256, 256..300]
        );
        // 200 KiB events: two fit under the byte bound, a third would not.
        assert_eq!(runs(&rows(5, 200 * 1024), None), [0..2, 2..4, 4..5]);
        // An event larger than the bound still goes, alone.
        assert_eq!(runs(&rows(2, 600 * 1024), None), [0..1, 1..2]);
        assert_eq!(runs(&rows(12, 10), Some(5)), [0..5, 5..12]);
    }

    #[test]
    fn a_body_is_the_json_array_of_the_event_texts() {
        let events = vec![(7, "{\"a\":1}".to_owned()), (9, "{\"b\":2}".to_owned())];
        assert_eq!(body(&events), br#"[{"a":1},{"b":2}]"#);
        assert_eq!(message_id(&events), "outbox:7-9");
    }
}
