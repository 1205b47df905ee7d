//! The wire format of events on the bus: each stored event as JSON, with its stream
//! coordinates, and one AMQP message carrying a run of them (a JSON array, in outbox order).
//! Consumers identify an event by `(aggregate_type, aggregate_id, sequence)`.

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

/// The routing key of every message the relay publishes: a message carries events of many
/// streams and types, so consumers bind `#` and look at each event (ADR 0018).
pub const EVENTS_ROUTING_KEY: &str = "events";

/// The events of one AMQP message body: a JSON array of events (what the relay publishes), or
/// a single event object (what relays before ADR 0018 published, still readable so a rolling
/// upgrade loses nothing, and what an operator may publish by hand).
pub fn decode_events(body: &[u8]) -> serde_json::Result<Vec<EventMessage>> {
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body),
        _ => serde_json::from_slice::<EventMessage>(body).map(|event| vec![event]),
    }
}

impl EventMessage {
    /// `account:{id}:3`: the event's identity, for logs.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(sequence: i64) -> Value {
        json!({
            "aggregate_type": "account", "aggregate_id": "a", "sequence": sequence,
            "event_type": "AccountRegistered", "event_version": "1.0",
            "payload": {"k": sequence}, "metadata": {}
        })
    }

    #[test]
    fn a_body_is_a_run_of_events_or_a_single_one() {
        let run = serde_json::to_vec(&json!([event(1), event(2)])).unwrap_or_default();
        let decoded = decode_events(&run).unwrap_or_default();
        assert_eq!(
            decoded.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
        let single = serde_json::to_vec(&event(7)).unwrap_or_default();
        let decoded = decode_events(&single).unwrap_or_default();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].payload, json!({"k": 7}));
        assert!(decode_events(b"  [").is_err());
        assert!(decode_events(b"not json").is_err());
        assert!(decode_events(b"[{\"sequence\": 1}]").is_err());
    }
}
