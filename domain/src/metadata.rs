//! Event metadata: every stored event records who caused it, in which request, and when.

use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashMap;

use crate::UserId;

pub const ACTOR_ID: &str = "actor_id";
pub const REQUEST_ID: &str = "request_id";
pub const RECORDED_AT: &str = "recorded_at";

/// The metadata attached to each event of one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMetadata {
    /// The user who caused the event; `None` for anonymous requests (a failed login) and
    /// for the system itself.
    pub actor_id: Option<UserId>,
    pub request_id: String,
    pub recorded_at: DateTime<Utc>,
}

impl EventMetadata {
    /// The string map the event store keeps next to each event.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(3);
        if let Some(actor_id) = self.actor_id {
            map.insert(ACTOR_ID.to_owned(), actor_id.to_string());
        }
        map.insert(REQUEST_ID.to_owned(), self.request_id.clone());
        map.insert(
            RECORDED_AT.to_owned(),
            self.recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_carries_every_field() {
        let actor_id = UserId::new();
        let metadata = EventMetadata {
            actor_id: Some(actor_id),
            request_id: "req-1".to_owned(),
            recorded_at: DateTime::parse_from_rfc3339("2026-11-24T10:00:00.123Z")
                .map(|time| time.with_timezone(&Utc))
                .unwrap_or_default(),
        };
        let map = metadata.to_map();
        assert_eq!(map.get(ACTOR_ID), Some(&actor_id.to_string()));
        assert_eq!(map.get(REQUEST_ID).map(String::as_str), Some("req-1"));
        assert_eq!(
            map.get(RECORDED_AT).map(String::as_str),
            Some("2026-11-24T10:00:00.123000Z")
        );
    }
}
