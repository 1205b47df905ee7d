//! Event upcasters: how stored events of older versions become the current event types.
//!
//! Events are never edited once stored. When an event's shape changes, its `event_version`
//! goes up, a fixture of the new version is added under `domain/tests/fixtures/`, and an
//! upcaster here turns the older payloads into the new shape. The fixture test reads every
//! version's fixture through [`upcasters`] into the current types, so a shape changed without
//! a new version and an upcaster fails CI.
//!
//! - `MessageSent` 1.0 → 2.0: bare `attachment_ids` became `attachments` carrying each image's
//!   type, size and dimensions. Version 1.0 was written while uploads did not exist and the API
//!   refused every attachment, so its lists are always empty and become empty lists.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::Value;

/// Every upcaster, applied in order.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(MessageSentAttachments)]
}

/// `MessageSent` 1.0 → 2.0.
struct MessageSentAttachments;

impl EventUpcaster for MessageSentAttachments {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == "MessageSent" && event_version == "1.0"
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        if let Some(fields) = event
            .payload
            .get_mut("MessageSent")
            .and_then(Value::as_object_mut)
        {
            fields.remove("attachment_ids");
            fields.insert("attachments".to_owned(), Value::Array(Vec::new()));
        }
        event.event_version = "2.0".to_owned();
        event
    }
}

/// The upcasters, built once (readers call [`upcast_payload`] for every event they read).
static UPCASTERS: std::sync::LazyLock<Vec<Box<dyn EventUpcaster>>> =
    std::sync::LazyLock::new(upcasters);

/// A stored payload in the current shape of its event type.
pub fn upcast_payload(
    aggregate_type: &str,
    event_type: &str,
    event_version: &str,
    payload: Value,
) -> Value {
    if !UPCASTERS
        .iter()
        .any(|upcaster| upcaster.can_upcast(event_type, event_version))
    {
        return payload;
    }
    let mut event = SerializedEvent::new(
        String::new(),
        0,
        aggregate_type.to_owned(),
        event_type.to_owned(),
        event_version.to_owned(),
        payload,
        Value::Null,
    );
    for upcaster in UPCASTERS.iter() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    event.payload
}
