//! Group commit: the events of concurrent commands go to Postgres in one transaction.
//!
//! Every command used to pay for its own transaction: three round trips and a WAL flush each.
//! Here a command hands its rows to the writers and waits; a writer takes everything that is
//! queued (up to [`MAX_BATCH`] commands), writes it with one multi-row `INSERT` and commits
//! once, then answers each waiting command. Nothing waits on purpose: a batch is what piled up
//! while the previous one was committing, so a lone command is written at once and a busy
//! server writes many per flush. The commit is as durable as before (`synchronous_commit`
//! stays on): no command is answered before its transaction has committed.
//!
//! A batch that fails (one command lost an optimistic-concurrency race, or a row breaks a
//! constraint) is rolled back and each of its commands is written again alone, so one
//! command's conflict never fails another's.

use serde_json::Value;
use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Commands written per transaction, at most.
pub const MAX_BATCH: usize = 256;
/// Transactions in flight at once: while one commits, the next batch gathers and is written.
const WRITERS: usize = 2;
/// Commands waiting for a writer, at most; further commands wait to be queued.
const QUEUE: usize = 4096;

/// One event row, as postgres-es stores it (payload and metadata as JSON text).
pub struct EventRow {
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
}

/// The aggregate's snapshot written with a command's events.
pub struct SnapshotRow {
    pub payload: Value,
    pub last_sequence: i64,
    /// The snapshot's version: 1 inserts it, a later one replaces version − 1.
    pub version: i64,
}

/// What one command writes.
pub struct Append {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub events: Vec<EventRow>,
    pub snapshot: Option<SnapshotRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer got to one of these stream positions (or the snapshot) first.
    #[error("the stream moved on: optimistic concurrency conflict")]
    Conflict,
    #[error("event store: {0}")]
    Failed(String),
}

struct Queued {
    append: Append,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// The writers for one pool. They start with the first command and stop when this is dropped.
pub struct GroupCommit {
    pool: PgPool,
    queue: OnceLock<mpsc::Sender<Queued>>,
}

impl GroupCommit {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            queue: OnceLock::new(),
        }
    }

    /// Writes `append` in the next transaction and returns once that has committed.
    pub async fn append(&self, append: Append) -> Result<(), AppendError> {
        let (done, answer) = oneshot::channel();
        self.queue()
            .send(Queued { append, done })
            .await
            .map_err(|_| AppendError::Failed("the event writers have stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| AppendError::Failed("the event writer went away".to_owned()))?
    }

    fn queue(&self) -> &mpsc::Sender<Queued> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            let receiver = Arc::new(Mutex::new(receiver));
            for _ in 0..WRITERS {
                tokio::spawn(write_batches(self.pool.clone(), receiver.clone()));
            }
            sender
        })
    }
}

/// One writer: takes whatever is queued, writes it, answers, and again.
async fn write_batches(pool: PgPool, queue: Arc<Mutex<mpsc::Receiver<Queued>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut queue = queue.lock().await;
            if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        let appends: Vec<&Append> = batch.iter().map(|queued| &queued.append).collect();
        metrics::histogram!("chat_event_commit_batch_size").record(appends.len() as f64);
        match write(&pool, &appends).await {
            Ok(()) => {
                for queued in batch.drain(..) {
                    let _ = queued.done.send(Ok(()));
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(queued) = batch.pop() {
                    let _ = queued.done.send(Err(error));
                }
            }
            Err(error) => {
                // Find the command at fault: each is written again on its own.
                metrics::counter!("chat_event_commit_batches_split_total").increment(1);
                tracing::debug!(%error, commands = batch.len(), "a group commit failed; writing its commands one by one");
                for queued in batch.drain(..) {
                    let result = write(&pool, &[&queued.append]).await;
                    let _ = queued.done.send(result);
                }
            }
        }
    }
}

/// Writes every append's events (one `INSERT`) and snapshots in one transaction.
async fn write(pool: &PgPool, appends: &[&Append]) -> Result<(), AppendError> {
    let rows: usize = appends.iter().map(|append| append.events.len()).sum();
    let mut aggregate_types = Vec::with_capacity(rows);
    let mut aggregate_ids = Vec::with_capacity(rows);
    let mut sequences = Vec::with_capacity(rows);
    let mut event_types = Vec::with_capacity(rows);
    let mut event_versions = Vec::with_capacity(rows);
    let mut payloads = Vec::with_capacity(rows);
    let mut metadata = Vec::with_capacity(rows);
    for append in appends {
        for event in &append.events {
            aggregate_types.push(append.aggregate_type);
            aggregate_ids.push(append.aggregate_id.as_str());
            sequences.push(event.sequence);
            event_types.push(event.event_type.as_str());
            event_versions.push(event.event_version.as_str());
            payloads.push(event.payload.as_str());
            metadata.push(event.metadata.as_str());
        }
    }
    let mut tx = pool.begin().await.map_err(failed)?;
    // Rows go in the order given, so one stream's events are inserted in sequence order.
    // Payloads travel as text and are stored as `json` as they are: no detour through jsonb.
    sqlx::query(
        "INSERT INTO events
              (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                              $6::text[]::json[], $7::text[]::json[])",
    )
    .bind(&aggregate_types)
    .bind(&aggregate_ids)
    .bind(&sequences)
    .bind(&event_types)
    .bind(&event_versions)
    .bind(&payloads)
    .bind(&metadata)
    .execute(&mut *tx)
    .await
    .map_err(from_sqlx)?;
    for append in appends {
        let Some(snapshot) = &append.snapshot else {
            continue;
        };
        let written = if snapshot.version == 1 {
            sqlx::query(
                "INSERT INTO snapshots
                      (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(append.aggregate_type)
            .bind(&append.aggregate_id)
            .bind(snapshot.last_sequence)
            .bind(snapshot.version)
            .bind(&snapshot.payload)
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "UPDATE snapshots SET last_sequence = $3, current_snapshot = $4, payload = $5
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $6",
            )
            .bind(append.aggregate_type)
            .bind(&append.aggregate_id)
            .bind(snapshot.last_sequence)
            .bind(snapshot.version)
            .bind(&snapshot.payload)
            .bind(snapshot.version - 1)
            .execute(&mut *tx)
            .await
        }
        .map_err(from_sqlx)?;
        if written.rows_affected() != 1 {
            return Err(AppendError::Conflict);
        }
    }
    tx.commit().await.map_err(failed)
}

fn failed(error: sqlx::Error) -> AppendError {
    AppendError::Failed(error.to_string())
}

/// A duplicate stream position (the primary key) is a lost race, not a failure.
fn from_sqlx(error: sqlx::Error) -> AppendError {
    match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => AppendError::Conflict,
        _ => failed(error),
    }
}
