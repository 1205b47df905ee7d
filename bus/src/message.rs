//! The wire format of an event on the bus: the stored event, as JSON, with its stream
//! coordinates. Consumers identify an event by `(aggregate_type, aggregate_id, sequence)`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct EventMessage {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
}

impl EventMessage {
    /// `account.AccountRegistered`: consumers bind by aggregate type or event type.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.aggregate_type, self.event_type)
    }

    /// A stable id for broker-side tracing and deduplication.
    pub fn message_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }

    /// Loads events `from..=to` of one stream from the event store (to fill a gap).
    pub async fn load_range(
        executor: impl sqlx::PgExecutor<'_>,
        aggregate_type: &str,
        aggregate_id: &str,
        from: i64,
        to: i64,
    ) -> sqlx::Result<Vec<Self>> {
        sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload::jsonb AS payload, metadata::jsonb AS metadata
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence BETWEEN $3 AND $4
              ORDER BY sequence",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(from)
        .bind(to)
        .fetch_all(executor)
        .await
    }
}
