//! The spine under failure: crashes mid-batch, transactions that commit out of order, poison
//! messages, and links cut under a running app.

use bus::{EventMessage, OutboxRelay, Processed, RelayOptions, Topology};
use chatd::Roles;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use projector::{Projector, ProjectorOptions};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

use crate::helpers::{
    PASSWORD, TestApp, eventually, fresh_settings, header, spawn_app, spawn_app_behind_proxies,
    spawn_app_with,
};
use crate::proxy::Proxy;

/// HTTP on, relay and projector off: the test drives them.
const HTTP_ONLY: Roles = Roles {
    command: true,
    relay: false,
    query: true,
    projector: false,
    push: false,
};

fn relay(app: &TestApp, crash_after: Option<usize>) -> OutboxRelay {
    OutboxRelay::new(RelayOptions {
        database_url: app.settings.database_url.clone(),
        amqp_url: app.settings.amqp_url.clone(),
        topology: Topology::new(&app.settings.namespace),
        batch_size: 500,
        crash_after,
    })
}

fn projector(app: &TestApp, crash_after: Option<usize>) -> Projector {
    Projector::new(
        app.pool.clone(),
        ProjectorOptions {
            amqp_url: app.settings.amqp_url.clone(),
            topology: Topology::new(&app.settings.namespace),
            batch_size: 4,
            crash_after,
        },
    )
}

async fn drain_relay(relay: &mut OutboxRelay) -> usize {
    let mut total = 0;
    loop {
        match relay.publish_next_batch().await {
            Ok(Processed::Events(count)) => total += count,
            Ok(Processed::Idle) => return total,
            Err(error) => panic!("relay failed: {error:#}"),
        }
    }
}

/// Runs the projector until every one of `streams` streams has reached sequence `last`, then
/// until it is idle (so redelivered duplicates are consumed too).
async fn drain_projector(projector: &mut Projector, app: &TestApp, streams: i64, last: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let outcome = projector
            .process_next_batch(Duration::from_millis(500))
            .await
            .unwrap_or_else(|error| panic!("projector failed: {error:#}"));
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_positions WHERE last_sequence >= $1",
        )
        .bind(last)
        .fetch_one(&app.pool)
        .await
        .unwrap_or_default();
        if done >= streams && outcome == Processed::Idle {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector did not catch up"
        );
    }
}

/// A channel on its own connection to the app's broker (keep the connection alive with it).
async fn broker_channel(app: &TestApp, name: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = bus::connect(&app.settings.amqp_url, name)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let channel = connection
        .create_channel()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    (connection, channel)
}

/// Publishes `body` to the events exchange, persistent, and waits for the broker to take it.
async fn publish_raw(
    channel: &lapin::Channel,
    topology: &Topology,
    routing_key: &str,
    body: &[u8],
) {
    channel
        .basic_publish(
            topology.events_exchange().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
}

/// A well-formed event of a type no handler knows: applying it always fails.
fn unappliable_event() -> serde_json::Value {
    json!({
        "aggregate_type": "account", "aggregate_id": Uuid::now_v7().to_string(), "sequence": 1,
        "event_type": "AccountExploded", "event_version": "1.0",
        "payload": {"Exploded": {}}, "metadata": {}
    })
}

#[tokio::test]
async fn relay_and_projector_crashing_mid_batch_apply_every_event_exactly_once() {
    let app = spawn_app_with(fresh_settings(), HTTP_ONLY).await;
    let mut users = Vec::new();
    for index in 0..3 {
        let user = app.register(&format!("crash{index}")).await;
        for _ in 0..2 {
            assert_eq!(
                app.login(&user.username, PASSWORD).await.status(),
                StatusCode::OK
            );
        }
        users.push(user);
    }
    let stored = app.event_count().await;
    assert_eq!(stored, 12);

    // The relay dies after publishing 5 of 12 events, before marking any published.
    let crashed = relay(&app, Some(5)).publish_next_batch().await;
    assert!(crashed.is_err());
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap_or_default();
    assert_eq!(
        unpublished, 12,
        "nothing may count as published before it is confirmed"
    );
    // Restarted, it sends everything, so 5 events reach the broker twice.
    assert_eq!(drain_relay(&mut relay(&app, None)).await, 12);

    // The projector dies after committing a batch, before acking it.
    let mut crashing = projector(&app, Some(6));
    let mut crashed = false;
    for _ in 0..10 {
        if crashing
            .process_next_batch(Duration::from_millis(1500))
            .await
            .is_err()
        {
            crashed = true;
            break;
        }
    }
    assert!(crashed, "the projector was meant to crash");
    drop(crashing);
    // Restarted, it gets the unacked batch again plus the rest, and the duplicates.
    drain_projector(&mut projector(&app, None), &app, 3, 4).await;

    for user in &users {
        let (last, applied): (i64, i64) = sqlx::query_as(
            "SELECT last_sequence, applied_count FROM projection_positions WHERE aggregate_type = 'account' AND aggregate_id = $1",
        )
        .bind(user.id.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!((last, applied), (4, 4), "every event applied exactly once");
        let logins: i64 = sqlx::query_scalar("SELECT login_count FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&app.pool)
            .await
            .unwrap_or_default();
        assert_eq!(logins, 3);
    }
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_still_published() {
    let app = spawn_app_with(fresh_settings(), HTTP_ONLY).await;
    let (_connection, channel) = broker_channel(&app, "test-observer").await;
    let observer = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    channel
        .queue_bind(
            observer.name().clone(),
            Topology::new(&app.settings.namespace)
                .events_exchange()
                .into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"));

    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                  VALUES ('probe', $1, 1, 'ProbeHappened', '1.0', '{}', '{}')";
    // A takes its outbox id first and holds its transaction open...
    let mut held_open = app
        .pool
        .begin()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    sqlx::query(insert)
        .bind("A")
        .execute(&mut *held_open)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    // ...while B, with a larger id, commits and is published.
    sqlx::query(insert)
        .bind("B")
        .execute(&app.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let mut relay = relay(&app, None);
    assert_eq!(
        relay.publish_next_batch().await.ok(),
        Some(Processed::Events(1))
    );
    assert_eq!(relay.publish_next_batch().await.ok(), Some(Processed::Idle));
    // A commits late. A high-water mark would now skip it.
    held_open
        .commit()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        relay.publish_next_batch().await.ok(),
        Some(Processed::Events(1))
    );

    let mut consumer = channel
        .basic_consume(
            observer.name().clone(),
            "observer".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await;
        let Ok(Some(Ok(delivery))) = delivery else {
            panic!("missing a published event; saw {seen:?}")
        };
        let messages: Vec<EventMessage> =
            bus::decode_events(&delivery.data).unwrap_or_else(|error| panic!("{error}"));
        seen.extend(messages.into_iter().map(|message| message.aggregate_id));
    }
    assert_eq!(seen, ["B", "A"]);
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_without_blocking_the_queue() {
    let app = spawn_app().await;
    let topology = Topology::new(&app.settings.namespace);
    let (_connection, channel) = broker_channel(&app, "test-poisoner").await;
    // One message that is not an event at all, one that is an event nobody can apply.
    let unreadable = b"this is not json".to_vec();
    let unappliable = unappliable_event().to_string().into_bytes();
    for body in [unreadable, unappliable] {
        publish_raw(&channel, &topology, "account.Poison", &body).await;
    }
    // Real traffic behind them still flows.
    app.register_visible("after_poison").await;

    let dead_lettered = eventually(Duration::from_secs(20), || async {
        Topology::queue_depth(&channel, &topology.projector_dead_letter_queue())
            .await
            .unwrap_or(0)
            == 2
    })
    .await;
    assert!(
        dead_lettered,
        "both poison messages should end in the dead-letter queue"
    );
}

#[tokio::test]
async fn every_link_reconnects_after_it_is_cut() {
    let (app, proxies) = spawn_app_behind_proxies().await;
    let before = app.register("before_cut").await;
    assert_eq!(
        app.get(
            "/api/v1/users/me",
            Some(&before.access_token),
            Some(&before.consistency_token)
        )
        .await
        .status(),
        StatusCode::OK
    );

    for proxy in [&proxies.postgres, &proxies.redis, &proxies.rabbitmq] {
        proxy.cut();
    }

    // Writes work again once the pools and the broker links are back...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut registered = None;
    while registered.is_none() && tokio::time::Instant::now() < deadline {
        let name = format!("after_{}", &Uuid::now_v7().simple().to_string()[20..]);
        let response = app
            .register_response(&name, &format!("{name}@example.com"), PASSWORD)
            .await;
        if response.status() == StatusCode::CREATED {
            let consistency = header(&response, "x-consistency-token").unwrap_or_default();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            registered = Some((
                body["access_token"].as_str().unwrap_or_default().to_owned(),
                consistency,
            ));
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let recovered = registered.is_some();
    assert!(
        recovered,
        "registration did not recover after the links were cut"
    );
    // ...and the event travels the relay, RabbitMQ and the projector again. Each try waits up
    // to 5 s on the consistency token; a 503 is what a client would retry.
    let (token, consistency) = registered.unwrap_or_default();
    let caught_up = eventually(Duration::from_secs(30), || async {
        app.get("/api/v1/users/me", Some(&token), Some(&consistency))
            .await
            .status()
            == StatusCode::OK
    })
    .await;
    assert!(caught_up, "the read model did not catch up after the cut");
}

#[tokio::test]
async fn a_database_outage_holds_the_batch_and_dead_letters_nothing() {
    let app = spawn_app_with(fresh_settings(), HTTP_ONLY).await;
    for index in 0..3 {
        app.register(&format!("outage{index}")).await;
    }
    assert_eq!(drain_relay(&mut relay(&app, None)).await, 6);
    // The projector reaches Postgres through a proxy that goes down before its first batch.
    let postgres = Proxy::start("127.0.0.1:5432").await;
    let database = app
        .settings
        .database_url
        .rsplit_once('/')
        .map(|(_, name)| name.to_owned())
        .unwrap_or_default();
    let pool = store::connect(
        &format!("postgres://postgres@{}/{database}", postgres.address),
        4,
    )
    .await
    .unwrap_or_else(|error| panic!("{error:#}"));
    let mut projector = Projector::new(
        pool,
        ProjectorOptions {
            amqp_url: app.settings.amqp_url.clone(),
            topology: Topology::new(&app.settings.namespace),
            batch_size: 10,
            crash_after: None,
        },
    );
    postgres.go_down();
    let batch = tokio::spawn(async move {
        let outcome = projector.process_next_batch(Duration::from_secs(5)).await;
        (projector, outcome.map_err(|error| format!("{error:#}")))
    });
    // Longer than five redeliveries would take if each failure gave the messages back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    postgres.restore();
    let (mut projector, outcome) = tokio::time::timeout(Duration::from_secs(30), batch)
        .await
        .unwrap_or_else(|_| panic!("the batch never completed"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(matches!(outcome, Ok(Processed::Events(_))), "{outcome:?}");
    while let Ok(Processed::Events(_)) = projector
        .process_next_batch(Duration::from_millis(500))
        .await
    {}
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap_or_default();
    assert_eq!(applied, 3);
    let (_connection, channel) = broker_channel(&app, "test-dlq").await;
    let dead = Topology::queue_depth(
        &channel,
        &Topology::new(&app.settings.namespace).projector_dead_letter_queue(),
    )
    .await
    .unwrap_or(99);
    assert_eq!(dead, 0, "an outage must not dead-letter events");
}

/// Two stores write to one conversation in turns (as two nodes would): each decides every
/// command on the newest state, whatever it last cached, and snapshots keep their versions.
#[tokio::test]
async fn a_store_decides_on_the_newest_state_when_another_wrote_since_it_cached() {
    use domain::conversation::{
        Conversation, ConversationCommand, ConversationKind, ConversationServices, MessageBody,
    };
    use domain::metadata::EventMetadata;
    use domain::{ConversationId, MessageId, UserId};
    use store::AggregateStore;

    let app = spawn_app_with(fresh_settings(), HTTP_ONLY).await;
    let services = ConversationServices {
        messages: std::sync::Arc::new(command_api::conversations::IndexedMessages {
            pool: app.pool.clone(),
        }),
    };
    // Snapshots every 3 events, so the turns cross snapshot versions many times.
    let first = AggregateStore::<Conversation>::with_snapshots(app.pool.clone(), 3);
    let second = AggregateStore::<Conversation>::with_snapshots(app.pool.clone(), 3);
    let (alice, bob) = (UserId::new(), UserId::new());
    let conversation_id = ConversationId::new();
    let id = conversation_id.to_string();
    let metadata = || EventMetadata {
        actor_id: Some(alice),
        request_id: "cache-test".to_owned(),
        recorded_at: chrono::Utc::now(),
    };
    let create = ConversationCommand::Create {
        conversation_id,
        kind: ConversationKind::Group,
        creator_id: alice,
        member_ids: vec![bob],
        title: Some(
            domain::conversation::Title::parse("turns").unwrap_or_else(|error| panic!("{error}")),
        ),
        at: chrono::Utc::now(),
    };
    first
        .execute(&id, create, &services, &metadata())
        .await
        .unwrap_or_else(|error| panic!("created: {error:?}"));
    let send = |sender: UserId| ConversationCommand::SendMessage {
        message_id: MessageId::new(),
        sender_id: sender,
        client_message_id: None,
        body: Some(MessageBody::parse("hello").unwrap_or_else(|error| panic!("a body: {error:?}"))),
        attachments: vec![],
        reply_to_id: None,
        at: chrono::Utc::now(),
    };
    // Turns of one, two and three commands per store.
    let mut expected_seq = 0;
    for turn in 0..12 {
        let store = if turn % 2 == 0 { &first } else { &second };
        for _ in 0..(turn % 3 + 1) {
            let committed = store
                .execute(&id, send(alice), &services, &metadata())
                .await
                .unwrap_or_else(|error| panic!("sent: {error:?}"));
            expected_seq += 1;
            assert_eq!(committed.aggregate.last_seq, expected_seq);
        }
    }
    // Bob leaves through the first store, which then holds him as a non-member; the second
    // adds him back. The first must accept his message: a refusal commits nothing, so only
    // the check of its cache against the log can catch that it is stale.
    let leave = ConversationCommand::RemoveMember {
        by: bob,
        user_id: bob,
        at: chrono::Utc::now(),
    };
    first
        .execute(&id, leave, &services, &metadata())
        .await
        .unwrap_or_else(|error| panic!("left: {error:?}"));
    let add = ConversationCommand::AddMember {
        by: alice,
        user_id: bob,
        at: chrono::Utc::now(),
    };
    second
        .execute(&id, add, &services, &metadata())
        .await
        .unwrap_or_else(|error| panic!("added back: {error:?}"));
    let committed = first
        .execute(&id, send(bob), &services, &metadata())
        .await
        .unwrap_or_else(|error| panic!("a member's message was refused: {error:?}"));
    assert_eq!(committed.aggregate.last_seq, expected_seq + 3);
    let loaded = AggregateStore::<Conversation>::with_snapshots(app.pool.clone(), 3)
        .load(&id)
        .await
        .unwrap_or_else(|error| panic!("loaded: {error:?}"))
        .unwrap_or_else(|| panic!("the conversation does not exist"));
    assert_eq!(loaded.last_seq, expected_seq + 3);
    assert!(loaded.members.contains_key(&bob));
}

#[tokio::test]
async fn concurrent_commands_share_commits_and_a_lost_race_fails_only_itself() {
    use domain::conversation::{
        Conversation, ConversationCommand, ConversationKind, ConversationServices, MessageBody,
    };
    use domain::metadata::EventMetadata;
    use domain::{ConversationId, MessageId, UserId};
    use std::sync::Arc;
    use store::AggregateStore;

    let app = spawn_app_with(fresh_settings(), HTTP_ONLY).await;
    let services = ConversationServices {
        messages: Arc::new(command_api::conversations::IndexedMessages {
            pool: app.pool.clone(),
        }),
    };
    // Two stores stand for two nodes: each caches what it wrote, so on a stream the other
    // wrote since, its next command loses the race on the primary key, inside a batch of
    // others that must commit regardless.
    let stores = [
        Arc::new(AggregateStore::<Conversation>::with_snapshots(
            app.pool.clone(),
            5,
        )),
        Arc::new(AggregateStore::<Conversation>::with_snapshots(
            app.pool.clone(),
            5,
        )),
    ];
    let alice = UserId::new();
    let metadata = || EventMetadata {
        actor_id: Some(alice),
        request_id: "group-commit-test".to_owned(),
        recorded_at: chrono::Utc::now(),
    };
    let conversation_ids: Vec<ConversationId> = (0..8).map(|_| ConversationId::new()).collect();
    let conversations: Vec<String> = conversation_ids.iter().map(ToString::to_string).collect();
    for (id, conversation_id) in conversations.iter().zip(&conversation_ids) {
        let create = ConversationCommand::Create {
            conversation_id: *conversation_id,
            kind: ConversationKind::Group,
            creator_id: alice,
            member_ids: vec![UserId::new()],
            title: Some(
                domain::conversation::Title::parse("batch")
                    .unwrap_or_else(|error| panic!("{error}")),
            ),
            at: chrono::Utc::now(),
        };
        stores[0]
            .execute(id, create, &services, &metadata())
            .await
            .unwrap_or_else(|error| panic!("created: {error:?}"));
    }
    const SENDS: usize = 60;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, id) in conversations.iter().enumerate() {
        for turn in 0..SENDS {
            let store = stores[(index + turn) % 2].clone();
            let services = services.clone();
            let id = id.clone();
            let metadata = metadata();
            tasks.spawn(async move {
                let send = ConversationCommand::SendMessage {
                    message_id: MessageId::new(),
                    sender_id: alice,
                    client_message_id: None,
                    body: Some(
                        MessageBody::parse(&format!("turn {turn}"))
                            .unwrap_or_else(|error| panic!("{error:?}")),
                    ),
                    attachments: vec![],
                    reply_to_id: None,
                    at: chrono::Utc::now(),
                };
                store.execute(&id, send, &services, &metadata).await
            });
        }
    }
    while let Some(result) = tasks.join_next().await {
        result
            .unwrap_or_else(|error| panic!("{error}"))
            .unwrap_or_else(|error| panic!("a send failed: {error:?}"));
    }

    let expected = i64::try_from(SENDS + 1).unwrap_or(i64::MAX);
    for (id, conversation_id) in conversations.iter().zip(&conversation_ids) {
        let sequences: Vec<i64> = sqlx::query_scalar(
            "SELECT sequence FROM events WHERE aggregate_type = 'conversation'
               AND aggregate_id = $1 ORDER BY sequence",
        )
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(sequences, (1..=expected).collect::<Vec<_>>(), "stream {id}");
        // The outbox has each event once, in sequence order, for the relay.
        let outboxed: Vec<i64> = sqlx::query_scalar(
            "SELECT sequence FROM outbox WHERE aggregate_type = 'conversation'
               AND aggregate_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(outboxed, sequences, "outbox of {id}");
        let indexed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM message_index WHERE conversation_id = $1")
                .bind(conversation_id.as_uuid())
                .fetch_one(&app.pool)
                .await
                .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(indexed, i64::try_from(SENDS).unwrap_or(0));
        // What a store loads from the snapshot and the log is what was committed.
        let loaded = AggregateStore::<Conversation>::with_snapshots(app.pool.clone(), 5)
            .load(id)
            .await
            .unwrap_or_else(|error| panic!("{error:?}"))
            .unwrap_or_else(|| panic!("{id} does not exist"));
        assert_eq!(loaded.last_seq, i64::try_from(SENDS).unwrap_or(0));
    }
    // One snapshot per stream. (A load that read the snapshot before another store's first
    // snapshot and the events after it once let a second first snapshot in beside it; every
    // later snapshot update then matched two rows and its command never committed.)
    let snapshots: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, count(*) FROM snapshots GROUP BY aggregate_id HAVING count(*) > 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        snapshots.is_empty(),
        "streams with two snapshots: {snapshots:?}"
    );
    // Rows inserted by one transaction share its xmin: fewer transactions than commands.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM events
          WHERE aggregate_type = 'conversation' AND sequence > 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    let commands = i64::try_from(conversations.len() * SENDS).unwrap_or(0);
    assert!(
        transactions < commands,
        "{commands} sends took {transactions} transactions: nothing was grouped"
    );
}

#[tokio::test]
async fn a_batch_with_a_taken_position_commits_everything_else() {
    use store::group_commit::{Append, AppendError, EventRow, GroupCommit};

    let app = spawn_app_with(fresh_settings(), HTTP_ONLY).await;
    let row = |sequence: i64| EventRow {
        sequence,
        event_type: "Tested".to_owned(),
        event_version: "1.0".to_owned(),
        payload: json!({"Tested": {"n": sequence}}).to_string(),
        metadata: json!({"request_id": "batch"}).to_string(),
    };
    let append = |id: &str, sequence: i64| Append {
        aggregate_type: "batch_test",
        aggregate_id: id.to_owned(),
        events: vec![row(sequence)],
        snapshot: None,
    };
    let writer = GroupCommit::new(app.pool.clone());
    writer
        .append(append("taken", 1))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    // Queued together before the writers first run, so they meet in one batch.
    let streams: Vec<String> = (0..6).map(|n| format!("free-{n}")).collect();
    let mut appends: Vec<_> = streams
        .iter()
        .map(|id| writer.append(append(id, 1)))
        .collect();
    appends.insert(3, writer.append(append("taken", 1)));
    let results = futures::future::join_all(appends).await;
    for (index, result) in results.iter().enumerate() {
        if index == 3 {
            assert!(
                matches!(result, Err(AppendError::Conflict)),
                "the taken position: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "append {index}: {result:?}");
        }
    }
    let written: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'batch_test' ORDER BY aggregate_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    let mut expected = streams.clone();
    expected.push("taken".to_owned());
    assert_eq!(written, expected);
    let outboxed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_type = 'batch_test'")
            .fetch_one(&app.pool)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(outboxed, 7);
}

#[tokio::test]
async fn a_run_with_a_poison_event_applies_the_rest_once_and_is_dead_lettered_whole() {
    let app = spawn_app_with(fresh_settings(), HTTP_ONLY).await;
    let user = app.register("in_a_run").await;
    // The user's first event as the relay sends it, and an event nobody can apply, in one run.
    let registered: String = sqlx::query_scalar(
        "SELECT json_build_object(
                    'aggregate_type', aggregate_type, 'aggregate_id', aggregate_id,
                    'sequence', sequence, 'event_type', event_type,
                    'event_version', event_version, 'payload', payload, 'metadata', metadata)::text
           FROM events WHERE aggregate_type = 'account' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(user.id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    let poison = unappliable_event();
    let body = format!("[{registered},{poison}]");
    assert_eq!(
        bus::decode_events(body.as_bytes())
            .map(|run| run.len())
            .ok(),
        Some(2)
    );

    let topology = Topology::new(&app.settings.namespace);
    let (_connection, channel) = broker_channel(&app, "test-run").await;
    topology
        .declare(&channel)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    publish_raw(
        &channel,
        &topology,
        bus::EVENTS_ROUTING_KEY,
        body.as_bytes(),
    )
    .await;

    // Each delivery applies the good event (once: later ones are duplicates) and requeues the
    // run for its poison; after the delivery limit the broker dead-letters the whole run.
    let mut projector = projector(&app, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut dead = 0;
    while dead == 0 && tokio::time::Instant::now() < deadline {
        projector
            .process_next_batch(Duration::from_millis(300))
            .await
            .unwrap_or_else(|error| panic!("projector failed: {error:#}"));
        dead = Topology::queue_depth(&channel, &topology.projector_dead_letter_queue())
            .await
            .unwrap_or(0);
    }
    assert_eq!(
        dead, 1,
        "the run should end in the dead-letter queue, whole"
    );
    let depth = Topology::queue_depth(&channel, &topology.projector_queue())
        .await
        .unwrap_or(u32::MAX);
    assert_eq!(depth, 0, "nothing is left to redeliver");
    let (last, applied): (i64, i64) = sqlx::query_as(
        "SELECT last_sequence, applied_count FROM projection_positions
          WHERE aggregate_type = 'account' AND aggregate_id = $1",
    )
    .bind(user.id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        (last, applied),
        (1, 1),
        "the good event applied exactly once"
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap_or_default();
    assert_eq!(users, 1);
    let poisoned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_positions WHERE aggregate_id = $1")
            .bind(poison["aggregate_id"].as_str().unwrap_or_default())
            .fetch_one(&app.pool)
            .await
            .unwrap_or_default();
    assert_eq!(poisoned, 0, "the poison moved no position");
}

/// The relay prunes the outbox beside publishing (every 2 s): once everything is published and
/// projected the outbox is empty, and events that arrive after a prune still travel.
#[tokio::test]
async fn the_outbox_is_pruned_beside_publishing_and_events_keep_flowing() {
    let app = spawn_app().await;
    let outboxed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
            .fetch_one(&app.pool)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    };
    for round in 0..2 {
        let mut users = Vec::new();
        for index in 0..5 {
            users.push(app.register(&format!("pruned_{round}_{index}")).await);
        }
        // Each user reads itself through the query side: its event was published and projected.
        for user in &users {
            let response = app
                .get(
                    "/api/v1/users/me",
                    Some(&user.access_token),
                    Some(&user.consistency_token),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK, "round {round}");
        }
        let pruned = eventually(Duration::from_secs(10), || async { outboxed().await == 0 }).await;
        assert!(
            pruned,
            "round {round}: the outbox still holds {} rows",
            outboxed().await
        );
    }
    assert!(app.event_count().await >= 10);
}
