//! Every event type has a JSON fixture per version under `tests/fixtures/<EventType>/<version>.json`
//! (the payload as stored). Each one must deserialize, through the upcasters, into the current
//! event type at its current version; and every current type and version must have a fixture.
//! Changing an event's shape without a new version and an upcaster makes this fail.
//!
//! A new aggregate's events are covered by adding one line to [`AGGREGATES`].

use cqrs_es::DomainEvent;
use domain::account::AccountEvent;
use domain::call::CallEvent;
use domain::conversation::ConversationEvent;
use domain::media::MediaEvent;
use domain::upcasting::upcast_payload;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;

/// A payload read as an aggregate's event: its type, its version, and how it writes back.
type Reader = fn(Value) -> Result<(String, String, Value), serde_json::Error>;

fn reader<E: DomainEvent + Serialize + DeserializeOwned>(
    payload: Value,
) -> Result<(String, String, Value), serde_json::Error> {
    let event: E = serde_json::from_value(payload)?;
    Ok((
        event.event_type(),
        event.event_version(),
        serde_json::to_value(&event)?,
    ))
}

/// Event types with their current versions (an aggregate's `TYPES`).
type EventTypes = &'static [(&'static str, &'static str)];

/// Every aggregate type: its event types with their current versions, and its reader.
const AGGREGATES: &[(&str, EventTypes, Reader)] = &[
    ("account", AccountEvent::TYPES, reader::<AccountEvent>),
    (
        "conversation",
        ConversationEvent::TYPES,
        reader::<ConversationEvent>,
    ),
    ("media", MediaEvent::TYPES, reader::<MediaEvent>),
    ("call", CallEvent::TYPES, reader::<CallEvent>),
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The aggregate of an event type, its current version, and the reader of its aggregate.
fn current(event_type: &str) -> Option<(&'static str, &'static str, Reader)> {
    AGGREGATES.iter().find_map(|(aggregate_type, types, read)| {
        types
            .iter()
            .find(|(name, _)| *name == event_type)
            .map(|(_, version)| (*aggregate_type, *version, *read))
    })
}

fn every_current_type() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    AGGREGATES.iter().flat_map(|(_, types, _)| types.iter())
}

#[test]
fn every_fixture_reads_into_the_current_type() {
    let mut checked = 0;
    for type_dir in std::fs::read_dir(fixtures()).unwrap_or_else(|error| panic!("{error}")) {
        let type_dir = type_dir.unwrap_or_else(|error| panic!("{error}")).path();
        let event_type = type_dir
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_owned();
        let (aggregate_type, current_version, read) = current(&event_type)
            .unwrap_or_else(|| panic!("fixture for unknown event type {event_type}"));
        for file in std::fs::read_dir(&type_dir).unwrap_or_else(|error| panic!("{error}")) {
            let file = file.unwrap_or_else(|error| panic!("{error}")).path();
            let version = file
                .file_stem()
                .and_then(|name| name.to_str())
                .unwrap_or_default()
                .to_owned();
            let text = std::fs::read_to_string(&file).unwrap_or_else(|error| panic!("{error}"));
            let payload: Value = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
            let upcast = upcast_payload(aggregate_type, &event_type, &version, payload);
            let (read_type, read_version, _) = read(upcast)
                .unwrap_or_else(|error| panic!("{event_type} {version} no longer reads: {error} (a new version needs an upcaster)"));
            assert_eq!(read_type, event_type);
            assert_eq!(read_version, current_version, "{event_type} {version}");
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} fixtures");
}

#[test]
fn every_current_event_type_and_version_has_a_fixture() {
    for (event_type, version) in every_current_type() {
        let path = fixtures().join(event_type).join(format!("{version}.json"));
        assert!(path.exists(), "missing fixture {}", path.display());
    }
}

#[test]
fn current_fixtures_round_trip_unchanged() {
    // A fixture at the current version must be exactly what the code writes today: a field
    // renamed or added without a version change shows up here.
    for (event_type, version) in every_current_type() {
        let path = fixtures().join(event_type).join(format!("{version}.json"));
        let stored: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let (_, _, read) = current(event_type).unwrap_or_else(|| panic!("{event_type}"));
        let (_, _, written) =
            read(stored.clone()).unwrap_or_else(|error| panic!("{event_type}: {error}"));
        assert_eq!(
            written, stored,
            "{event_type} {version} changed shape without a new version"
        );
    }
}
