//! RabbitMQ: connections, the topology every role declares, the event message format, and the
//! outbox relay that moves committed events from Postgres to the broker.
//!
//! - [`topology`]: exchange and queue names under the namespace, declared idempotently.
//! - [`message`]: `EventMessage`, the one wire format of an event on the bus, and the
//!   message bodies that carry runs of them.
//! - [`relay`]: `OutboxRelay`, publishing outbox rows with pipelined publisher confirms.
//! - [`connect`]: a connection with a bounded timeout and a one-line error.

pub mod message;
pub mod relay;
pub mod topology;

use anyhow::Context;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

pub use message::{EVENTS_ROUTING_KEY, EventMessage, decode_events};
pub use relay::{OutboxRelay, Processed, RelayOptions};
pub use topology::Topology;

/// Opens an AMQP connection, failing within `timeout` instead of hanging on a dead address.
pub async fn connect(amqp_url: &str, connection_name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let connecting = Connection::connect(amqp_url, properties);
    let connection = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|result| result.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot connect to RabbitMQ at {}", store::redact(amqp_url)))?;
    Ok(connection)
}

/// One long-lived connection for occasional checks (readiness, metrics), reopened when it has
/// dropped, so a probe every few seconds does not open a connection each time.
pub struct SharedConnection {
    amqp_url: String,
    name: String,
    connection: tokio::sync::Mutex<Option<Connection>>,
    /// A channel in confirm mode kept open for publishing (see [`Self::confirm_channel`]).
    publishing: tokio::sync::Mutex<Option<lapin::Channel>>,
}

impl SharedConnection {
    pub fn new(amqp_url: &str, name: &str) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            name: name.to_owned(),
            connection: tokio::sync::Mutex::new(None),
            publishing: tokio::sync::Mutex::new(None),
        }
    }

    /// The shared channel in confirm mode, opened on first use and again after it broke:
    /// publishing on it costs no channel open, confirm-select and close round trips per use.
    /// Publishes from many tasks may share it; each awaits its own confirm.
    pub async fn confirm_channel(&self) -> anyhow::Result<lapin::Channel> {
        let mut publishing = self.publishing.lock().await;
        if let Some(channel) = publishing.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.channel().await?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        *publishing = Some(channel.clone());
        Ok(channel)
    }

    /// A fresh channel on the shared connection; close it when done.
    pub async fn channel(&self) -> anyhow::Result<lapin::Channel> {
        let mut connection = self.connection.lock().await;
        if let Some(open) = connection.as_ref()
            && open.status().connected()
            && let Ok(channel) = open.create_channel().await
        {
            return Ok(channel);
        }
        let opened = connect(&self.amqp_url, &self.name).await?;
        let channel = opened.create_channel().await?;
        *connection = Some(opened);
        Ok(channel)
    }
}

/// Exponential backoff for reconnect loops: 100 ms doubling up to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        pause
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}
