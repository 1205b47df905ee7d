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

use futures::future::join_all;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use sqlx::postgres::PgListener;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::{Backoff, EventMessage, Topology};

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
        let rows: Vec<(i64, sqlx::types::Json<EventMessage>)> = sqlx::query_as(
            "SELECT o.id, json_build_object(
                        'aggregate_type', e.aggregate_type, 'aggregate_id', e.aggregate_id,
                        'sequence', e.sequence, 'event_type', e.event_type,
                        'event_version', e.event_version, 'payload', e.payload,
                        'metadata', e.metadata)
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
        let mut pending = Vec::with_capacity(rows.len());
        for (index, (_, message)) in rows.iter().enumerate() {
            if self.options.crash_after == Some(index) {
                anyhow::bail!("relay crashed on purpose after {index} publishes");
            }
            let body = serde_json::to_vec(&message.0)?;
            let confirm = links
                .channel
                .basic_publish(
                    exchange.as_str().into(),
                    message.routing_key().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties(&message.0),
                )
                .await?;
            pending.push(confirm);
        }
        let confirmations = join_all(pending).await;
        // Only the confirmed prefix counts: what follows a refused message waits for the next
        // batch, so a stream never overtakes itself.
        let mut published = Vec::with_capacity(rows.len());
        for ((id, message), confirmation) in rows.iter().zip(confirmations) {
            match confirmation? {
                Confirmation::Ack(None) | Confirmation::NotRequested => published.push(*id),
                Confirmation::Ack(Some(_)) => {
                    tracing::warn!(message_id = %message.message_id(), "broker returned an unroutable event; will retry");
                    break;
                }
                Confirmation::Nack(_) => {
                    tracing::warn!(message_id = %message.message_id(), "broker refused an event; will retry");
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
        let mut database = PgConnection::connect(&self.options.database_url).await?;
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
        let mut last_prune = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if listener.is_none() {
                listener = listen(&pool).await;
            }
            let outcome = self.publish_next_batch().await;
            // Pruned on a timer whether busy or idle, so a steady load does not grow the outbox.
            if last_prune.elapsed() > Duration::from_secs(2) {
                last_prune = tokio::time::Instant::now();
                if let Err(error) = Self::prune(&pool).await {
                    tracing::warn!(%error, "pruning the outbox failed");
                }
            }
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
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen("outbox").await.ok()?;
    Some(listener)
}

fn properties(message: &EventMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("aggregate_type"),
        AMQPValue::LongString(LongString::from(message.aggregate_type.as_str())),
    );
    headers.insert(
        ShortString::from("aggregate_id"),
        AMQPValue::LongString(LongString::from(message.aggregate_id.as_str())),
    );
    headers.insert(
        ShortString::from("sequence"),
        AMQPValue::LongLongInt(message.sequence),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.message_id().into())
        .with_type(message.event_type.as_str().into())
        .with_headers(headers)
}
