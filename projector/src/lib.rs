//! Event consumers with exactly-once application, and the projector that builds the Postgres
//! read models with one.
//!
//! - [`Consumer`]: consumes a queue with manual acks; each batch is one transaction; an event
//!   is applied exactly once per `(aggregate_type, aggregate_id, sequence)` (positions kept
//!   in the handler's table, in the same transaction); a redelivery is a no-op; a gap in a
//!   stream is filled from the event store, never skipped. Tests drive it with
//!   [`Consumer::process_next_batch`]. What a consumer does is its [`Handler`].
//! - [`Projector`]: the consumer whose handler is [`views::ReadModels`].
//! - [`views`]: what each event does to the read models.

pub mod views;

use bus::{Backoff, EventMessage, Processed, Topology};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use sqlx::{PgPool, Postgres, Transaction};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct ProjectorOptions {
    pub amqp_url: String,
    pub topology: Topology,
    /// The most events applied in one transaction (and the consumer prefetch).
    pub batch_size: usize,
    /// For crash tests: once this many deliveries were handled, commit the batch in hand and
    /// fail before acking it, as a process killed at that point would.
    pub crash_after: Option<usize>,
}

/// What a consumer does with each event.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// What applying an event leaves to do before the batch commits (for example, pushes).
    type Output: Send;

    /// For logs and connection names.
    fn name(&self) -> &'static str;

    /// The queue this handler consumes.
    fn queue(&self, topology: &Topology) -> String;

    /// The table of stream positions (same shape as `projection_positions`).
    fn positions_table(&self) -> &'static str;

    /// Applies one event inside the batch transaction.
    async fn apply(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        event: &EventMessage,
    ) -> anyhow::Result<Vec<Self::Output>>;

    /// Applies several events in order inside the batch transaction, as [`Handler::apply`]
    /// one by one would; handlers override it to write runs of events with set-based
    /// statements.
    async fn apply_all(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        events: &[&EventMessage],
    ) -> anyhow::Result<Vec<Self::Output>> {
        let mut outputs = Vec::new();
        for event in events {
            outputs.extend(self.apply(transaction, event).await?);
        }
        Ok(outputs)
    }

    /// Runs after every event of the batch is applied and before the commit. If it fails the
    /// batch rolls back and is delivered again, so nothing it does is lost (at worst done
    /// twice after a failure).
    async fn before_commit(&self, outputs: Vec<Self::Output>) -> anyhow::Result<()>;
}

/// The projector: a consumer that builds the read models.
pub type Projector = Consumer<views::ReadModels>;

pub struct Consumer<H: Handler> {
    pool: PgPool,
    options: ProjectorOptions,
    handler: H,
    links: Option<Links>,
    /// Deliveries handled since start (for `crash_after`).
    handled: usize,
    /// Set by [`Consumer::run`]: a batch being retried gives up when it fires.
    stopping: CancellationToken,
}

struct Links {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

/// What happened to one event, or to one delivery (a message's run of events), inside the
/// batch transaction.
enum Outcome {
    Applied,
    Duplicate,
    /// Could not be parsed: dead-letter it at once.
    Unreadable,
    /// Applying (one of its events) failed: requeue; after the delivery limit the broker
    /// dead-letters it.
    Failed,
}

/// A delivery and the events its body carries (`None`: the body is not events).
struct Received {
    delivery: lapin::message::Delivery,
    events: Option<Vec<EventMessage>>,
}

impl Received {
    fn new(delivery: lapin::message::Delivery) -> Self {
        let events = match bus::decode_events(&delivery.data) {
            Ok(events) => Some(events),
            Err(error) => {
                tracing::error!(%error, "unreadable event message; dead-lettering it");
                None
            }
        };
        Self { delivery, events }
    }

    /// Events carried; an unreadable message counts as one.
    fn len(&self) -> usize {
        self.events.as_ref().map_or(1, Vec::len)
    }
}

impl Projector {
    pub fn new(pool: PgPool, options: ProjectorOptions) -> Self {
        Consumer::with_handler(pool, options, views::ReadModels)
    }
}

impl<H: Handler> Consumer<H> {
    pub fn with_handler(pool: PgPool, options: ProjectorOptions, handler: H) -> Self {
        Self {
            pool,
            options,
            handler,
            links: None,
            handled: 0,
            stopping: CancellationToken::new(),
        }
    }

    /// Waits up to `wait` for a delivery, then applies it and whatever else is already
    /// buffered (up to the batch size) in one transaction, and acks them.
    pub async fn process_next_batch(&mut self, wait: Duration) -> anyhow::Result<Processed> {
        if self.links.is_none() {
            self.links = Some(self.open_links().await?);
        }
        let result = self.process_with_links(wait).await;
        if result.is_err()
            && let Some(links) = self.links.take()
        {
            // Closing (not just dropping) hands every unacked delivery back to the broker.
            let _ = links
                .connection
                .close(320, "projector restarting".into())
                .await;
        }
        result
    }

    async fn process_with_links(&mut self, wait: Duration) -> anyhow::Result<Processed> {
        let Some(links) = self.links.as_mut() else {
            return Ok(Processed::Idle);
        };
        let first = match tokio::time::timeout(wait, links.consumer.next()).await {
            Err(_) => return Ok(Processed::Idle),
            Ok(None) => anyhow::bail!("the broker closed the consumer"),
            Ok(Some(delivery)) => delivery?,
        };
        // A message carries a run of events (ADR 0018); a batch is whole messages, as many as
        // are already here, until it holds `batch_size` events.
        let mut deliveries = vec![Received::new(first)];
        let mut events = deliveries[0].len();
        while events < self.options.batch_size {
            match links.consumer.next().now_or_never() {
                Some(Some(delivery)) => {
                    let received = Received::new(delivery?);
                    events += received.len();
                    deliveries.push(received);
                }
                Some(None) => anyhow::bail!("the broker closed the consumer"),
                None => break,
            }
        }

        // A failure here is the database or a downstream store being away, not the events:
        // the batch is tried again, its deliveries held unacked, so an outage never counts
        // against a message's delivery limit (which is for poison messages).
        let mut backoff = Backoff::default();
        let (applied, outcomes) = loop {
            match self.apply_and_commit(&deliveries).await {
                Ok(done) => break done,
                Err(error) if self.stopping.is_cancelled() => return Err(error),
                Err(error) => {
                    tracing::warn!(consumer = self.handler.name(), error = %format!("{error:#}"), "batch failed; retrying it");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_pause()) => {}
                        () = self.stopping.cancelled() => {}
                    }
                }
            }
        };

        self.handled += events;
        if let Some(limit) = self.options.crash_after
            && self.handled >= limit
        {
            anyhow::bail!("projector crashed on purpose after committing, before acking");
        }
        let all_done = outcomes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Applied | Outcome::Duplicate));
        if all_done && let Some(last) = deliveries.last() {
            // The usual case: one frame acks the whole batch (this channel carries only this
            // consumer's deliveries, all of them in the batch).
            last.delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
            metrics::counter!("chat_projector_applied_total").increment(applied as u64);
            return Ok(Processed::Events(events));
        }
        for (Received { delivery, .. }, outcome) in deliveries.iter().zip(&outcomes) {
            match outcome {
                Outcome::Applied | Outcome::Duplicate => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Outcome::Unreadable => {
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
                Outcome::Failed => {
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        })
                        .await?;
                }
            }
        }
        metrics::counter!("chat_projector_applied_total").increment(applied as u64);
        Ok(Processed::Events(events))
    }

    /// Applies a batch in one transaction, runs the handler's pre-commit step, and commits.
    /// First optimistically, every event straight in the transaction; if any event fails,
    /// the whole attempt is rolled back and the batch is applied again with a savepoint per
    /// event, so the failing one is set apart and the rest still commit. Returns how many
    /// events were applied (not duplicates) and each delivery's outcome.
    async fn apply_and_commit(
        &self,
        deliveries: &[Received],
    ) -> anyhow::Result<(usize, Vec<Outcome>)> {
        let readable: Option<Vec<&EventMessage>> = deliveries
            .iter()
            .map(|received| received.events.as_deref())
            .try_fold(Vec::new(), |mut all, events| {
                all.extend(events?);
                Some(all)
            });
        if let Some(messages) = readable {
            let mut transaction = self.pool.begin().await?;
            let mut outputs = Vec::new();
            match apply_batch(&self.handler, &mut transaction, &messages, &mut outputs).await {
                Ok(Some(outcomes)) => {
                    self.handler.before_commit(outputs).await?;
                    transaction.commit().await?;
                    let applied = outcomes
                        .iter()
                        .filter(|outcome| matches!(outcome, Outcome::Applied))
                        .count();
                    return Ok((
                        applied,
                        deliveries.iter().map(|_| Outcome::Applied).collect(),
                    ));
                }
                // A gap to fill, or an event that fails: the careful path sorts it out.
                Ok(None) | Err(_) => transaction.rollback().await?,
            }
        }
        self.apply_event_by_event(deliveries).await
    }

    /// The careful path: a savepoint per event, so a message with an event that fails is
    /// requeued (and an unreadable one dead-lettered) while the others commit. The events of
    /// a requeued message that did apply are duplicates when it comes back.
    async fn apply_event_by_event(
        &self,
        deliveries: &[Received],
    ) -> anyhow::Result<(usize, Vec<Outcome>)> {
        let mut transaction = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(deliveries.len());
        let mut outputs = Vec::new();
        let mut applied = 0;
        for received in deliveries {
            let Some(events) = &received.events else {
                outcomes.push(Outcome::Unreadable);
                continue;
            };
            let mut outcome = Outcome::Applied;
            for event in events {
                match apply_in_savepoint(&self.handler, &mut transaction, event, &mut outputs)
                    .await?
                {
                    Outcome::Applied => applied += 1,
                    Outcome::Failed => outcome = Outcome::Failed,
                    Outcome::Duplicate | Outcome::Unreadable => {}
                }
            }
            outcomes.push(outcome);
        }
        self.handler.before_commit(outputs).await?;
        transaction.commit().await?;
        Ok((applied, outcomes))
    }

    async fn open_links(&self) -> anyhow::Result<Links> {
        let name = format!("chatd-{}", self.handler.name());
        let connection = bus::connect(&self.options.amqp_url, &name).await?;
        let channel = connection.create_channel().await?;
        self.options.topology.declare(&channel).await?;
        let prefetch = u16::try_from(self.options.batch_size).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.handler.queue(&self.options.topology).into(),
                name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(consumer = self.handler.name(), "connected and consuming");
        Ok(Links {
            connection,
            channel,
            consumer,
        })
    }

    /// Messages waiting in the projector queue, for metrics.
    pub async fn queue_depth(&self) -> Option<u32> {
        let links = self.links.as_ref()?;
        Topology::queue_depth(&links.channel, &self.handler.queue(&self.options.topology))
            .await
            .ok()
    }

    /// Projects until `shutdown`, reconnecting with backoff. On shutdown the batch in hand is
    /// finished and acked before returning.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.stopping = shutdown.clone();
        let mut backoff = Backoff::default();
        let mut last_metrics = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            match self.process_next_batch(Duration::from_millis(250)).await {
                Ok(_) => backoff.reset(),
                Err(error) => {
                    tracing::warn!(consumer = self.handler.name(), error = %format!("{error:#}"), "consumer failed; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_pause()) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
            if last_metrics.elapsed() > Duration::from_secs(5) {
                last_metrics = tokio::time::Instant::now();
                if let Some(depth) = self.queue_depth().await {
                    metrics::gauge!("chat_queue_depth", "queue" => self.handler.name()).set(depth);
                }
            }
        }
    }
}

/// Applies one event in a savepoint: a failure rolls back only this event.
async fn apply_in_savepoint<H: Handler>(
    handler: &H,
    transaction: &mut Transaction<'_, Postgres>,
    message: &EventMessage,
    outputs: &mut Vec<H::Output>,
) -> anyhow::Result<Outcome> {
    let mut savepoint = sqlx::Acquire::begin(&mut **transaction).await?;
    match apply_once(handler, &mut savepoint, message, outputs).await {
        Ok(outcome) => {
            savepoint.commit().await?;
            Ok(outcome)
        }
        Err(error) => {
            tracing::error!(
                error = %format!("{error:#}"),
                aggregate_type = %message.aggregate_type,
                aggregate_id = %message.aggregate_id,
                sequence = message.sequence,
                event_type = %message.event_type,
                "applying an event failed; requeueing it"
            );
            savepoint.rollback().await?;
            Ok(Outcome::Failed)
        }
    }
}

/// The exactly-once rule for a whole batch, in set-based statements: every stream position
/// the batch touches is read (and locked) in one query and written back in one; events at or
/// below their position are duplicates, and the rest go to [`Handler::apply_all`] together.
/// `None` when an event is not its stream's next (a gap, which [`apply_once`] fills from the
/// event store).
async fn apply_batch<H: Handler>(
    handler: &H,
    transaction: &mut Transaction<'_, Postgres>,
    messages: &[&EventMessage],
    outputs: &mut Vec<H::Output>,
) -> anyhow::Result<Option<Vec<Outcome>>> {
    let positions = handler.positions_table();
    // A live batch touches a few rows of tables that grow without bound: index lookups always
    // win, but for a batch joined to `unnest(...)` the planner, which cannot see its size,
    // picks a sequential scan of the whole table (measured: most of the consumers' Postgres
    // time under load).
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut **transaction)
        .await?;
    let mut streams: Vec<(&str, &str)> = messages
        .iter()
        .map(|message| {
            (
                message.aggregate_type.as_str(),
                message.aggregate_id.as_str(),
            )
        })
        .collect();
    streams.sort_unstable();
    streams.dedup();
    let (types, ids): (Vec<&str>, Vec<&str>) = streams.iter().copied().unzip();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        "SELECT p.aggregate_type, p.aggregate_id, p.last_sequence
           FROM {positions} p
           JOIN unnest($1::text[], $2::text[]) AS s(aggregate_type, aggregate_id)
             ON p.aggregate_type = s.aggregate_type AND p.aggregate_id = s.aggregate_id
          ORDER BY p.aggregate_type, p.aggregate_id
          FOR UPDATE OF p"
    ))
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut **transaction)
    .await?;
    let mut last: std::collections::HashMap<(String, String), i64> = rows
        .into_iter()
        .map(|(aggregate_type, aggregate_id, sequence)| ((aggregate_type, aggregate_id), sequence))
        .collect();
    let mut applied: std::collections::HashMap<(String, String), i64> =
        std::collections::HashMap::new();
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut to_apply = Vec::with_capacity(messages.len());
    for message in messages {
        let key = (message.aggregate_type.clone(), message.aggregate_id.clone());
        let current = last.get(&key).copied().unwrap_or(0);
        if message.sequence <= current {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        if message.sequence > current + 1 {
            return Ok(None);
        }
        to_apply.push(*message);
        last.insert(key.clone(), message.sequence);
        *applied.entry(key).or_default() += 1;
        outcomes.push(Outcome::Applied);
    }
    outputs.extend(handler.apply_all(transaction, &to_apply).await?);
    let moved = applied.into_iter().map(|(key, count)| {
        let sequence = last.get(&key).copied().unwrap_or(0);
        (key.0, key.1, sequence, count)
    });
    advance_positions(&mut **transaction, positions, moved).await?;
    Ok(Some(outcomes))
}

/// Moves many streams' positions in one statement: each `(aggregate_type, aggregate_id,
/// last_sequence, applied)` sets the stream's last sequence and adds `applied` to its count.
/// The live consumers and the rebuild (`chatd replay`) share it.
pub async fn advance_positions(
    executor: impl sqlx::PgExecutor<'_>,
    table: &str,
    moved: impl IntoIterator<Item = (String, String, i64, i64)>,
) -> sqlx::Result<()> {
    let (mut types, mut ids, mut sequences, mut counts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (aggregate_type, aggregate_id, sequence, count) in moved {
        types.push(aggregate_type);
        ids.push(aggregate_id);
        sequences.push(sequence);
        counts.push(count);
    }
    if types.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO {table} (aggregate_type, aggregate_id, last_sequence, applied_count)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = EXCLUDED.last_sequence,
                applied_count = {table}.applied_count + EXCLUDED.applied_count,
                updated_at = now()"
    ))
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(&counts)
    .execute(executor)
    .await?;
    Ok(())
}

/// The exactly-once rule: skip what the stream position says is done, fill a gap from the
/// event store, then apply and move the position, all in the caller's transaction.
async fn apply_once<H: Handler>(
    handler: &H,
    transaction: &mut Transaction<'_, Postgres>,
    message: &EventMessage,
    outputs: &mut Vec<H::Output>,
) -> anyhow::Result<Outcome> {
    let positions = handler.positions_table();
    let applied: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT last_sequence FROM {positions}
          WHERE aggregate_type = $1 AND aggregate_id = $2 FOR UPDATE"
    ))
    .bind(&message.aggregate_type)
    .bind(&message.aggregate_id)
    .fetch_optional(&mut **transaction)
    .await?;
    let last = applied.unwrap_or(0);
    if message.sequence <= last {
        return Ok(Outcome::Duplicate);
    }
    let mut to_apply = Vec::new();
    if message.sequence > last + 1 {
        let missing = EventMessage::load_range(
            &mut **transaction,
            &message.aggregate_type,
            &message.aggregate_id,
            last + 1,
            message.sequence - 1,
        )
        .await?;
        let expected = usize::try_from(message.sequence - 1 - last).unwrap_or(usize::MAX);
        anyhow::ensure!(
            missing.len() == expected,
            "the event store lacks events {}..{} of this stream",
            last + 1,
            message.sequence - 1
        );
        to_apply.extend(missing);
    }
    to_apply.push(message.clone());
    let mut produced = Vec::new();
    for event in &to_apply {
        produced.extend(handler.apply(transaction, event).await?);
    }
    let count = i64::try_from(to_apply.len()).unwrap_or(i64::MAX);
    sqlx::query(&format!(
        "INSERT INTO {positions} (aggregate_type, aggregate_id, last_sequence, applied_count)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = EXCLUDED.last_sequence,
                applied_count = {positions}.applied_count + EXCLUDED.applied_count,
                updated_at = now()"
    ))
    .bind(&message.aggregate_type)
    .bind(&message.aggregate_id)
    .bind(message.sequence)
    .bind(count)
    .execute(&mut **transaction)
    .await?;
    // Only once the savepoint is sure to stand do its outputs count.
    outputs.extend(produced);
    Ok(Outcome::Applied)
}
