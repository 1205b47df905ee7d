//! Every event type has a JSON fixture per version under `tests/fixtures/<EventType>/<version>.json`
//! (the payload as stored). Each one must deserialize, through the upcasters, into the current
//! event type at its current version; and every current type and version must have a fixture.
//! Changing an event's shape without a new version and an upcaster makes this fail.

use cqrs_es::DomainEvent;
use domain::account::AccountEvent;
use domain::call::CallEvent;
use domain::conversation::ConversationEvent;
use domain::upcasting::upcast_payload;
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The aggregate type of an event type, and its current version.
fn current(event_type: &str) -> Option<(&'static str, &'static str)> {
    let find = |types: &'static [(&'static str, &'static str)]| {
        types
            .iter()
            .find(|(name, _)| *name == event_type)
            .map(|(_, version)| *version)
    };
    find(AccountEvent::TYPES)
        .map(|version| ("account", version))
        .or_else(|| find(ConversationEvent::TYPES).map(|version| ("conversation", version)))
        .or_else(|| find(CallEvent::TYPES).map(|version| ("call", version)))
}

/// Deserializes an (upcast) payload and returns the event's type and version.
fn read(aggregate_type: &str, payload: Value) -> Result<(String, String), serde_json::Error> {
    match aggregate_type {
        "account" => serde_json::from_value::<AccountEvent>(payload)
            .map(|event| (event.event_type(), event.event_version())),
        "call" => serde_json::from_value::<CallEvent>(payload)
            .map(|event| (event.event_type(), event.event_version())),
        _ => serde_json::from_value::<ConversationEvent>(payload)
            .map(|event| (event.event_type(), event.event_version())),
    }
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
        let (aggregate_type, current_version) = current(&event_type)
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
            let (read_type, read_version) = read(aggregate_type, upcast)
                .unwrap_or_else(|error| panic!("{event_type} {version} no longer reads: {error} (a new version needs an upcaster)"));
            assert_eq!(read_type, event_type);
            assert_eq!(read_version, current_version, "{event_type} {version}");
            checked += 1;
        }
    }
    assert!(checked >= 26, "only {checked} fixtures");
}

#[test]
fn every_current_event_type_and_version_has_a_fixture() {
    for (event_type, version) in AccountEvent::TYPES
        .iter()
        .chain(ConversationEvent::TYPES)
        .chain(CallEvent::TYPES)
    {
        let path = fixtures().join(event_type).join(format!("{version}.json"));
        assert!(path.exists(), "missing fixture {}", path.display());
    }
}

#[test]
fn current_fixtures_round_trip_unchanged() {
    // A fixture at the current version must be exactly what the code writes today: a field
    // renamed or added without a version change shows up here.
    for (event_type, version) in AccountEvent::TYPES
        .iter()
        .chain(ConversationEvent::TYPES)
        .chain(CallEvent::TYPES)
    {
        let path = fixtures().join(event_type).join(format!("{version}.json"));
        let stored: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let (aggregate_type, _) = current(event_type).unwrap_or_else(|| panic!("{event_type}"));
        let written = match aggregate_type {
            "account" => serde_json::from_value::<AccountEvent>(stored.clone())
                .and_then(serde_json::to_value),
            "call" => {
                serde_json::from_value::<CallEvent>(stored.clone()).and_then(serde_json::to_value)
            }
            _ => serde_json::from_value::<ConversationEvent>(stored.clone())
                .and_then(serde_json::to_value),
        }
        .unwrap_or_else(|error| panic!("{event_type}: {error}"));
        assert_eq!(
            written, stored,
            "{event_type} {version} changed shape without a new version"
        );
    }
}
