//! `chatd replay`: rebuilds every read model from the event log into fresh tables, then
//! switches to them atomically while live traffic goes on; `--verify` rebuilds into scratch
//! tables and compares them with the live ones instead.
//!
//! The rebuild runs the projector's own view code (`projector::views::apply_all`) with the
//! `search_path` pointed at a scratch schema, so the rebuilt tables are what the projector
//! would have built. The switch locks the live read models for a moment, applies what was
//! written since the rebuild began, and swaps the tables between schemas in one transaction.

use bus::EventMessage;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;
use uuid::Uuid;

/// The read models, with the columns that identify a row (for the difference report).
pub const READ_MODELS: &[(&str, &str)] = &[
    ("users", "id"),
    ("conversations", "id"),
    ("conversation_members", "conversation_id, user_id"),
    ("messages", "id"),
    ("media", "id"),
    ("calls", "id"),
    ("call_participants", "call_id, user_id"),
    (
        "receipt_marks",
        "conversation_id, user_id, delivered_seq, read_seq",
    ),
    ("projection_positions", "aggregate_type, aggregate_id"),
];

/// Columns that record when a row was written, not what it says: left out of comparisons.
const VOLATILE_COLUMNS: &[&str] = &["updated_at"];

const BATCH: i64 = 20_000;
/// Connections that write one batch of the rebuild together, each a share of the streams.
const WRITERS: usize = 2;

/// An event with its place in the log.
#[derive(sqlx::FromRow)]
struct PositionedEvent {
    log_position: i64,
    #[sqlx(flatten)]
    event: EventMessage,
}

/// One difference between the live and the rebuilt tables.
#[derive(Debug)]
pub struct Difference {
    pub table: &'static str,
    pub key: String,
    /// `live` or `rebuilt`: where the row is that the other side lacks (or has otherwise).
    pub only_in: &'static str,
    pub row: String,
}

pub struct Outcome {
    pub events: u64,
    pub seconds: f64,
    pub differences: Vec<Difference>,
}

/// Rebuilds into a scratch schema; with `verify`, compares and drops it, otherwise switches.
pub async fn run(
    pool: &PgPool,
    verify: bool,
    progress: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let schema = format!("replay_{}", Uuid::now_v7().simple());
    create_scratch_tables(pool, &schema).await?;
    let result = rebuild_and_finish(pool, &schema, verify, progress).await;
    if verify || result.is_err() {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(pool)
            .await?;
    }
    result
}

async fn rebuild_and_finish(
    pool: &PgPool,
    schema: &str,
    verify: bool,
    progress: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let mut reporter = Progress::new(total, progress);
    let mut after = 0i64;
    // The next batch is read on another connection while this one is written, and each batch
    // is written by WRITERS tasks on their own connections, each taking a share of the streams.
    // Every read-model row belongs to one stream, so streams can be applied in any order
    // relative to each other as long as each stream's events keep theirs. This way the
    // decoding in chatd and the writing in Postgres overlap and both cores stay busy.
    let mut next = tokio::spawn(read_batch(pool.clone(), after, BATCH));
    loop {
        let events = next.await??;
        let Some(last) = events.last().map(|row| row.log_position) else {
            break;
        };
        next = tokio::spawn(read_batch(pool.clone(), last, BATCH));
        let mut writers = tokio::task::JoinSet::new();
        for share in partition_by_stream(events, WRITERS) {
            let pool = pool.clone();
            let schema = schema.to_owned();
            writers.spawn(async move {
                let mut transaction = pool.begin().await?;
                let applied = write_batch(&mut transaction, &schema, share).await?;
                transaction.commit().await?;
                anyhow::Ok(applied)
            });
        }
        while let Some(applied) = writers.join_next().await {
            reporter.advance(applied??)?;
        }
        after = last;
    }
    finish_scratch_tables(pool, schema).await?;
    if verify {
        let differences = compare(pool, schema).await?;
        reporter.finish()?;
        return Ok(Outcome {
            events: reporter.done,
            seconds: started.elapsed().as_secs_f64(),
            differences,
        });
    }
    // The switch: read models locked (queries and the projector wait a moment), the rest of
    // the log applied, tables swapped.
    let mut transaction = pool.begin().await?;
    let tables: Vec<&str> = READ_MODELS.iter().map(|(table, _)| *table).collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        tables.join(", ")
    ))
    .execute(&mut *transaction)
    .await?;
    loop {
        let (applied, last) = apply_batch(&mut transaction, schema, after, BATCH).await?;
        if applied == 0 {
            break;
        }
        after = last;
        reporter.advance(applied)?;
    }
    let retired = format!("{schema}_retired");
    sqlx::query(&format!("CREATE SCHEMA {retired}"))
        .execute(&mut *transaction)
        .await?;
    for table in &tables {
        sqlx::query(&format!("ALTER TABLE public.{table} SET SCHEMA {retired}"))
            .execute(&mut *transaction)
            .await?;
        sqlx::query(&format!("ALTER TABLE {schema}.{table} SET SCHEMA public"))
            .execute(&mut *transaction)
            .await?;
    }
    sqlx::query(&format!("DROP SCHEMA {retired} CASCADE"))
        .execute(&mut *transaction)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    reporter.finish()?;
    Ok(Outcome {
        events: reporter.done,
        seconds: started.elapsed().as_secs_f64(),
        differences: Vec::new(),
    })
}

/// Creates the scratch tables with the live tables' columns and primary keys only: the
/// other indexes and constraints are built once the rows are in ([`finish_scratch_tables`]),
/// which is much cheaper than maintaining them row by row.
async fn create_scratch_tables(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
    let mut transaction = pool.begin().await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut *transaction)
        .await?;
    for (table, _) in READ_MODELS {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL EXCLUDING INDEXES)"
        ))
        .execute(&mut *transaction)
        .await?;
        for (name, definition) in constraints(&mut transaction, table, &["p"]).await? {
            sqlx::query(&format!(
                "ALTER TABLE {schema}.{table} ADD CONSTRAINT {name} {definition}"
            ))
            .execute(&mut *transaction)
            .await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// Adds the live tables' unique and foreign-key constraints and their other indexes to the
/// scratch tables, so that what is switched in is the same shape as what it replaces.
async fn finish_scratch_tables(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
    let mut transaction = pool.begin().await?;
    // Definitions are read with the default search path, so they name the tables they refer
    // to unqualified; they are then run with the scratch schema first, so a foreign key
    // refers to the scratch table, not the live one.
    let mut statements = Vec::new();
    for (table, _) in READ_MODELS {
        for (name, definition) in constraints(&mut transaction, table, &["u", "f"]).await? {
            statements.push(format!(
                "ALTER TABLE {schema}.{table} ADD CONSTRAINT {name} {definition}"
            ));
        }
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT i.indexdef FROM pg_indexes i
              WHERE i.schemaname = 'public' AND i.tablename = $1
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                                 WHERE c.conrelid = ('public.' || $1)::regclass
                                   AND c.conindid = ('public.' || quote_ident(i.indexname))::regclass)",
        )
        .bind(table)
        .fetch_all(&mut *transaction)
        .await?;
        statements.extend(
            indexes
                .into_iter()
                .map(|definition| definition.replacen(" ON public.", &format!(" ON {schema}."), 1)),
        );
    }
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(&mut *transaction)
        .await?;
    for statement in statements {
        sqlx::query(&statement).execute(&mut *transaction).await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// The live table's constraints of the given kinds (`p`rimary, `u`nique, `f`oreign), as
/// (name, definition).
async fn constraints(
    transaction: &mut Transaction<'_, Postgres>,
    table: &str,
    kinds: &[&str],
) -> anyhow::Result<Vec<(String, String)>> {
    let kinds: Vec<String> = kinds.iter().map(|kind| (*kind).to_owned()).collect();
    Ok(sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = ('public.' || $1)::regclass AND contype::text = ANY($2)
          ORDER BY conname",
    )
    .bind(table)
    .bind(&kinds)
    .fetch_all(&mut **transaction)
    .await?)
}

/// Applies up to `limit` events after `after` (log order) to the scratch tables, with the
/// projector's view code, and records the stream positions. Returns (count, last position).
async fn apply_batch(
    transaction: &mut Transaction<'_, Postgres>,
    schema: &str,
    after: i64,
    limit: i64,
) -> anyhow::Result<(u64, i64)> {
    let rows = read_events(&mut **transaction, after, limit).await?;
    let last = rows.last().map_or(after, |row| row.log_position);
    let applied = write_batch(transaction, schema, rows).await?;
    Ok((applied, last))
}

/// Up to `limit` events after `after`, in log order.
async fn read_events(
    executor: impl sqlx::PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<PositionedEvent>> {
    sqlx::query_as(
        // The payload as stored (json), parsed once here; the views never read metadata, so
        // it is not read at all (`replay --verify` would show a view that needed it).
        "SELECT log_position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload, 'null'::jsonb AS metadata
           FROM public.events WHERE log_position > $1 ORDER BY log_position LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

async fn read_batch(pool: PgPool, after: i64, limit: i64) -> sqlx::Result<Vec<PositionedEvent>> {
    read_events(&pool, after, limit).await
}

/// Splits a batch into `shares` lists by stream, each in log order.
fn partition_by_stream(rows: Vec<PositionedEvent>, shares: usize) -> Vec<Vec<PositionedEvent>> {
    use std::hash::{Hash, Hasher};
    let shares = shares.max(1);
    let mut split: Vec<Vec<PositionedEvent>> = (0..shares)
        .map(|_| Vec::with_capacity(rows.len() / shares + 1))
        .collect();
    for row in rows {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&row.event.aggregate_type, &row.event.aggregate_id).hash(&mut hasher);
        let share = usize::try_from(hasher.finish() % shares as u64).unwrap_or(0);
        split[share].push(row);
    }
    split.retain(|share| !share.is_empty());
    split
}

/// Applies `rows` to the scratch tables with the projector's view code and records the
/// stream positions; returns how many were applied.
async fn write_batch(
    transaction: &mut Transaction<'_, Postgres>,
    schema: &str,
    rows: Vec<PositionedEvent>,
) -> anyhow::Result<u64> {
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(&mut **transaction)
        .await?;
    let events: Vec<EventMessage> = rows.into_iter().map(|row| row.event).collect();
    projector::views::apply_all(transaction, &events).await?;
    let mut positions: HashMap<(String, String), (i64, i64)> = HashMap::new();
    for event in &events {
        let entry = positions
            .entry((event.aggregate_type.clone(), event.aggregate_id.clone()))
            .or_insert((0, 0));
        entry.0 = entry.0.max(event.sequence);
        entry.1 += 1;
    }
    // One statement for every stream the batch touched (the scratch table, by search_path).
    let moved = positions
        .into_iter()
        .map(|((aggregate_type, aggregate_id), (sequence, count))| {
            (aggregate_type, aggregate_id, sequence, count)
        });
    projector::advance_positions(&mut **transaction, "projection_positions", moved).await?;
    Ok(events.len() as u64)
}

/// The first differences between the live read models and the rebuilt ones, by table and key.
async fn compare(pool: &PgPool, schema: &str) -> anyhow::Result<Vec<Difference>> {
    let mut differences = Vec::new();
    for (table, key) in READ_MODELS {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(pool)
        .await?;
        let columns: Vec<String> = columns
            .into_iter()
            .filter(|column| !VOLATILE_COLUMNS.contains(&column.as_str()))
            .collect();
        let list = columns.join(", ");
        for (only_in, left, right) in [("live", "public", schema), ("rebuilt", schema, "public")] {
            let rows: Vec<(String, String)> = sqlx::query_as(&format!(
                "SELECT concat_ws(', ', {key})::text, row_to_json(d)::text FROM
                   (SELECT {list} FROM {left}.{table} EXCEPT SELECT {list} FROM {right}.{table}) d
                  LIMIT 5"
            ))
            .fetch_all(pool)
            .await?;
            differences.extend(rows.into_iter().map(|(key, row)| Difference {
                table,
                key,
                only_in,
                row,
            }));
        }
    }
    Ok(differences)
}

/// A progress bar on a terminal, plain lines otherwise.
struct Progress<'a, W: Write> {
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    terminal: bool,
    out: &'a mut W,
}

impl<'a, W: Write> Progress<'a, W> {
    fn new(total: i64, out: &'a mut W) -> Self {
        Self {
            total: u64::try_from(total).unwrap_or(0),
            done: 0,
            started: Instant::now(),
            last_line: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            out,
        }
    }

    fn advance(&mut self, events: u64) -> std::io::Result<()> {
        self.done += events;
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / seconds;
        let remaining = self.total.saturating_sub(self.done) as f64 / rate.max(1.0);
        if self.terminal {
            let width = 30usize;
            let filled = if self.total == 0 {
                width
            } else {
                (self.done.min(self.total) as usize * width) / self.total as usize
            };
            write!(
                self.out,
                "\r[{}{}] {}/{} events, {rate:.0} events/s, ETA {remaining:.0} s ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.done,
                self.total
            )?;
        } else if self.last_line.elapsed().as_secs() >= 1 || self.done >= self.total {
            self.last_line = Instant::now();
            writeln!(
                self.out,
                "replayed {}/{} events ({rate:.0} events/s, ETA {remaining:.0} s)",
                self.done, self.total
            )?;
        }
        self.out.flush()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = self.done as f64 / seconds.max(0.001);
        if self.terminal {
            writeln!(self.out)?;
        }
        writeln!(
            self.out,
            "replayed {} events in {seconds:.2} s ({rate:.0} events/s)",
            self.done
        )
    }
}
