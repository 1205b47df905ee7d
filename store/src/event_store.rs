//! Running commands: load the aggregate, let it decide, commit its events with metadata.
//!
//! We drive the aggregate ourselves instead of through `CqrsFramework::execute`, because the
//! caller needs what was committed (the new stream position for the consistency token, and
//! the aggregate state to answer with) and `execute` returns nothing. cqrs-es's
//! `PersistedEventStore` loads aggregates (snapshot, events after it, upcasters); events are
//! written in postgres-es's table layout by the group commit ([`crate::group_commit`]), which
//! puts the events of concurrent commands in one transaction. Queries are not run in-process:
//! the outbox and the projector do that job durably.

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventStore};
use domain::metadata::EventMetadata;
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;

use crate::group_commit::{Append, AppendError, EventRow, GroupCommit, SnapshotRow};

/// How often a command is decided again after losing an optimistic-concurrency race.
const CONFLICT_RETRIES: usize = 30;

/// Where a stream stood after a command: the projector has caught up with the command once it
/// has applied `sequence` of this stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
}

/// What one command committed.
#[derive(Debug)]
pub struct Committed<A: Aggregate> {
    /// The aggregate after the command.
    pub aggregate: A,
    pub events: Vec<A::Event>,
    /// The stream's position after the command (unchanged if it emitted nothing).
    pub position: StreamPosition,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Domain(E),
    /// The event store failed (unreachable, or the stream is unreadable).
    #[error("event store: {0}")]
    Store(String),
}

/// Commands on one stream are serialized in-process by one of this many locks, so concurrent
/// writers on one node queue instead of failing on each other; conflicts remain only between
/// nodes, and those are decided again.
const STREAM_LOCKS: usize = 128;

/// Aggregates kept in memory after a command, per store (a bound, not a target: past it an
/// arbitrary entry makes room).
const CACHED_AGGREGATES: usize = 10_000;

/// The event store for one aggregate type.
pub struct AggregateStore<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// For the check that a cached aggregate is still the newest.
    pool: PgPool,
    /// Commits the events of concurrent commands together (ADR 0017).
    writer: GroupCommit,
    /// Snapshot every this many events (`None`: no snapshots), as the store does.
    snapshot_every: Option<usize>,
    /// Each stream's state after the last command this store committed to it; it saves reading
    /// and folding the snapshot and the events after it. A command decided on a stale entry
    /// (another node or store wrote since) cannot commit: its first event's position is taken,
    /// so it is decided again on the state read from the log. A refusal, or a command that
    /// emits nothing, is checked against the stream's last sequence before it is believed.
    cache: std::sync::Mutex<std::collections::HashMap<String, Cached<A>>>,
}

struct Cached<A> {
    aggregate: A,
    sequence: usize,
    snapshot: Option<usize>,
}

impl<A> AggregateStore<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    pub fn new(pool: PgPool) -> Self {
        let repository = PostgresEventRepository::new(pool.clone());
        Self::with_store(
            PersistedEventStore::new_event_store(repository)
                .with_upcasters(domain::upcasting::upcasters()),
            pool,
            None,
        )
    }

    /// A store that snapshots the aggregate every `every` events, so loading reads one
    /// snapshot and fewer than `every` events however long the stream is.
    pub fn with_snapshots(pool: PgPool, every: usize) -> Self {
        let repository = PostgresEventRepository::new(pool.clone());
        Self::with_store(
            PersistedEventStore::new_snapshot_store(repository, every)
                .with_upcasters(domain::upcasting::upcasters()),
            pool,
            Some(every.max(1)),
        )
    }

    fn with_store(
        store: PersistedEventStore<PostgresEventRepository, A>,
        pool: PgPool,
        snapshot_every: Option<usize>,
    ) -> Self {
        Self {
            store,
            locks: (0..STREAM_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            writer: GroupCommit::new(pool.clone()),
            pool,
            snapshot_every,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The stream's context for a command: the cached state (`true`) if there is one,
    /// otherwise loaded from the store. The entry leaves the cache either way; only a
    /// committed command puts it back.
    async fn context(
        &self,
        aggregate_id: &str,
    ) -> Result<(EventStoreAggregateContext<A>, bool), Attempt<A::Error>> {
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|mut cache| cache.remove(aggregate_id));
        if let Some(cached) = cached {
            return Ok((
                EventStoreAggregateContext {
                    aggregate_id: aggregate_id.to_owned(),
                    aggregate: cached.aggregate,
                    current_sequence: cached.sequence,
                    current_snapshot: cached.snapshot,
                },
                true,
            ));
        }
        let context = self
            .store
            .load_aggregate(aggregate_id)
            .await
            .map_err(Attempt::from_aggregate_error)?;
        Ok((context, false))
    }

    /// Whether the stream's last sequence is still `sequence` (one index lookup).
    async fn is_current(
        &self,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<bool, Attempt<A::Error>> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|error| Attempt::Failed(ExecuteError::Store(error.to_string())))?;
        Ok(last.unwrap_or(0) == i64::try_from(sequence).unwrap_or(i64::MAX))
    }

    /// Keeps `aggregate` as the state at `sequence` (snapshot version `snapshot`).
    fn remember(&self, aggregate_id: &str, cached: Cached<A>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHED_AGGREGATES
            && !cache.contains_key(aggregate_id)
            && let Some(evicted) = cache.keys().next().cloned()
        {
            cache.remove(&evicted);
        }
        cache.insert(aggregate_id.to_owned(), cached);
    }

    /// The snapshot version after committing `events` on top of `context`, as the store
    /// computes it: a new version whenever the commit crosses a multiple of `every`.
    fn snapshot_after(
        &self,
        current_snapshot: Option<usize>,
        sequence_before: usize,
        events: usize,
    ) -> Option<usize> {
        match self.snapshot_every {
            Some(every) if events > 0 && events >= every - sequence_before % every => {
                Some(current_snapshot.map_or(1, |version| version + 1))
            }
            _ => current_snapshot,
        }
    }

    fn lock_for(&self, aggregate_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        aggregate_id.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % STREAM_LOCKS as u64).unwrap_or(0);
        &self.locks[index]
    }

    /// Decides `command` on the current state and commits the events. A concurrent writer to
    /// the same stream makes the commit fail on the primary key; the command is then decided
    /// again on the new state, so callers never see the conflict.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &EventMetadata,
    ) -> Result<Committed<A>, ExecuteError<A::Error>> {
        let _serialized = self.lock_for(aggregate_id).lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .try_execute(aggregate_id, command.clone(), services, metadata)
                .await
            {
                Err(Attempt::Conflict) if attempt < CONFLICT_RETRIES => {
                    // Another node wrote this stream meanwhile. Two nodes that keep writing
                    // one stream would keep beating each other; a random pause, longer each
                    // time, lets one of them through.
                    let ceiling_us = 1_000 * u64::try_from(attempt.min(10)).unwrap_or(10);
                    let random = u64::from_le_bytes(
                        uuid::Uuid::new_v4().as_bytes()[..8]
                            .try_into()
                            .unwrap_or([0; 8]),
                    );
                    tokio::time::sleep(std::time::Duration::from_micros(random % ceiling_us)).await;
                    continue;
                }
                Err(Attempt::Conflict) => {
                    return Err(ExecuteError::Store(format!(
                        "{} {aggregate_id}: still conflicting after {attempt} attempts",
                        A::TYPE
                    )));
                }
                Err(Attempt::Failed(error)) => return Err(error),
                Ok(committed) => return Ok(committed),
            }
        }
    }

    async fn try_execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &EventMetadata,
    ) -> Result<Committed<A>, Attempt<A::Error>> {
        let (mut context, cached) = self.context(aggregate_id).await?;
        let sequence_before = context.current_sequence;
        let sink: EventSink<A> = EventSink::default();
        let decided = context.aggregate.handle(command, services, &sink).await;
        let events = sink.collect().await;
        // A refusal, or nothing to do, on a cached state counts only if that state is current.
        if cached
            && (decided.is_err() || events.is_empty())
            && !self.is_current(aggregate_id, sequence_before).await?
        {
            return Err(Attempt::Conflict);
        }
        decided.map_err(|error| Attempt::Failed(ExecuteError::Domain(error)))?;
        // The sink applied each event to the aggregate as it was written.
        let aggregate = context.aggregate;
        let sequence = sequence_before + events.len();
        let position = StreamPosition {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
        };
        let snapshot = self.snapshot_after(context.current_snapshot, sequence_before, events.len());
        if !events.is_empty() {
            let append = self.append(
                aggregate_id,
                &aggregate,
                sequence_before,
                &events,
                metadata,
                (snapshot != context.current_snapshot)
                    .then_some(snapshot)
                    .flatten(),
            )?;
            self.writer
                .append(append)
                .await
                .map_err(|error| match error {
                    AppendError::Conflict => Attempt::Conflict,
                    AppendError::Failed(error) => Attempt::Failed(ExecuteError::Store(error)),
                })?;
        }
        self.remember(
            aggregate_id,
            Cached {
                aggregate: aggregate.clone(),
                sequence,
                snapshot,
            },
        );
        Ok(Committed {
            aggregate,
            events,
            position,
        })
    }

    /// The rows for `events` committed after `sequence_before`, with the aggregate's snapshot
    /// (as it stands after all of them) when `snapshot` names a new version.
    fn append(
        &self,
        aggregate_id: &str,
        aggregate: &A,
        sequence_before: usize,
        events: &[A::Event],
        metadata: &EventMetadata,
        snapshot: Option<usize>,
    ) -> Result<Append, Attempt<A::Error>> {
        let store_error = |error: String| Attempt::Failed(ExecuteError::Store(error));
        let metadata = serde_json::to_string(&metadata.to_map())
            .map_err(|error| store_error(error.to_string()))?;
        let mut rows = Vec::with_capacity(events.len());
        for (event, sequence) in events.iter().zip(sequence_before + 1..) {
            rows.push(EventRow {
                sequence: i64::try_from(sequence)
                    .map_err(|error| store_error(error.to_string()))?,
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: serde_json::to_string(event)
                    .map_err(|error| store_error(error.to_string()))?,
                metadata: metadata.clone(),
            });
        }
        let snapshot = match snapshot {
            Some(version) => Some(SnapshotRow {
                payload: serde_json::to_value(aggregate)
                    .map_err(|error| store_error(error.to_string()))?,
                last_sequence: i64::try_from(sequence_before + events.len())
                    .map_err(|error| store_error(error.to_string()))?,
                version: i64::try_from(version).map_err(|error| store_error(error.to_string()))?,
            }),
            None => None,
        };
        Ok(Append {
            aggregate_type: A::TYPE,
            aggregate_id: aggregate_id.to_owned(),
            events: rows,
            snapshot,
        })
    }

    /// The current state of one aggregate, `None` when its stream is empty.
    pub async fn load(&self, aggregate_id: &str) -> Result<Option<A>, ExecuteError<A::Error>> {
        let context = self
            .store
            .load_aggregate(aggregate_id)
            .await
            .map_err(|error| ExecuteError::Store(error.to_string()))?;
        Ok((context.current_sequence > 0).then_some(context.aggregate))
    }
}

enum Attempt<E: std::error::Error> {
    Conflict,
    Failed(ExecuteError<E>),
}

impl<E: std::error::Error> Attempt<E> {
    fn from_aggregate_error(error: AggregateError<E>) -> Self {
        match error {
            AggregateError::AggregateConflict => Self::Conflict,
            AggregateError::UserError(error) => Self::Failed(ExecuteError::Domain(error)),
            other => Self::Failed(ExecuteError::Store(other.to_string())),
        }
    }
}

/// One aggregate as it stood after its event at `up_to` (its latest state when `None`),
/// folded from the log through the upcasters on the caller's connection or transaction.
/// `None` when the stream has no events that far. For readers that hold no
/// [`AggregateStore`], or need a past state (a push shows each change in turn).
pub async fn fold<A: Aggregate>(
    executor: impl sqlx::PgExecutor<'_>,
    aggregate_id: &str,
    up_to: Option<i64>,
) -> anyhow::Result<Option<A>> {
    let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_type, event_version, payload::jsonb FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence <= $3
          ORDER BY sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(up_to.unwrap_or(i64::MAX))
    .fetch_all(executor)
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut aggregate = A::default();
    for (event_type, event_version, payload) in rows {
        let payload =
            domain::upcasting::upcast_payload(A::TYPE, &event_type, &event_version, payload);
        aggregate.apply(serde_json::from_value(payload)?);
    }
    Ok(Some(aggregate))
}
