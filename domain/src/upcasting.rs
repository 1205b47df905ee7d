//! Event upcasters: how stored events of older versions become the current event types.
//!
//! Events are never edited once stored. When an event's shape changes, its `event_version`
//! goes up, a fixture of the new version is added under `domain/tests/fixtures/`, and an
//! upcaster here turns the older payloads into the new shape. The fixture test reads every
//! version's fixture through [`upcasters`] into the current types, so a shape changed without
//! a new version and an upcaster fails CI. (No event has a second version yet.)

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::Value;

/// Every upcaster, applied in order.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    Vec::new()
}

/// A stored payload in the current shape of its event type.
pub fn upcast_payload(
    aggregate_type: &str,
    event_type: &str,
    event_version: &str,
    payload: Value,
) -> Value {
    let mut event = SerializedEvent::new(
        String::new(),
        0,
        aggregate_type.to_owned(),
        event_type.to_owned(),
        event_version.to_owned(),
        payload,
        Value::Null,
    );
    for upcaster in upcasters() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    event.payload
}
