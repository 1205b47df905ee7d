//! Frames for this node's connections, sent by the push router on another node: each
//! socket-push node consumes its own exclusive queue `{ns}.node.{node_id}`, which disappears
//! with the node. What is lost with a node its clients get back by resuming.

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hub::{Hub, Outbound};
use axum::extract::ws::Utf8Bytes;

/// One batch of frames for the connections of one node: each distinct text once (a message
/// to a 1,000-member group is one text and 1,000 cursors, not 1,000 copies of it).
#[derive(Serialize, Deserialize, Default)]
pub struct NodeBatch {
    /// The frames' texts, without cursors.
    pub texts: Vec<String>,
    pub frames: Vec<NodeFrame>,
}

#[derive(Serialize, Deserialize)]
pub struct NodeFrame {
    pub user_id: Uuid,
    /// The user's inbox id, for `event` frames: spliced into the text for this user.
    pub cursor: Option<String>,
    /// Index into `NodeBatch::texts`.
    pub text: usize,
}

pub fn queue_name(namespace: &str, node_id: Uuid) -> String {
    format!("{namespace}.node.{node_id}")
}

/// Consumes this node's queue until `shutdown`, reconnecting with backoff.
pub async fn run(
    amqp_url: String,
    namespace: String,
    node_id: Uuid,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    let mut backoff = bus::Backoff::default();
    while !shutdown.is_cancelled() {
        let outcome = tokio::select! {
            outcome = consume(&amqp_url, &namespace, node_id, &hub) => outcome,
            () = shutdown.cancelled() => return,
        };
        if let Err(error) = outcome {
            tracing::warn!(error = %format!("{error:#}"), "node queue consumer failed; reconnecting");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_pause().max(Duration::from_millis(100))) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn consume(amqp_url: &str, namespace: &str, node_id: Uuid, hub: &Hub) -> anyhow::Result<()> {
    let connection = bus::connect(amqp_url, "chatd-node").await?;
    let channel = connection.create_channel().await?;
    let queue = queue_name(namespace, node_id);
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), options, FieldTable::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "chatd-node".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tracing::info!(%node_id, "consuming this node's frames");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let Ok(batch) = serde_json::from_slice::<NodeBatch>(&delivery.data) else {
            tracing::error!("unreadable node batch dropped");
            continue;
        };
        let texts: Vec<Utf8Bytes> = batch.texts.into_iter().map(Utf8Bytes::from).collect();
        for frame in batch.frames {
            let Some(text) = texts.get(frame.text) else {
                tracing::error!("a node frame names a text its batch does not hold; dropped");
                continue;
            };
            hub.deliver(frame.user_id, || {
                Outbound::for_user(text, frame.cursor.as_deref())
            });
        }
    }
    anyhow::bail!("the broker closed this node's queue")
}
