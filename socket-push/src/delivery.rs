//! Getting frames to users wherever they are connected: this node's connections directly,
//! other nodes' through their queues (found in the user map).

use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

use crate::hub::{Hub, Outbound};
use crate::node::{NodeBatch, NodeFrame, queue_name};
use sessions::user_map::UserMap;

#[derive(Clone)]
pub struct Delivery {
    pub hub: Arc<Hub>,
    pub user_map: UserMap,
    /// Publishes frames to other nodes' queues (with confirms).
    pub amqp: Arc<bus::SharedConnection>,
    pub namespace: String,
}

/// One frame for one user. Frames that are the same for many users share one text; on an
/// `event` frame `cursor` is the user's inbox id, spliced into their copy as it is handed to
/// their connections (here, or on the node that holds them: the text crosses once per node).
pub struct Addressed {
    pub user_id: Uuid,
    pub cursor: Option<String>,
    pub text: Utf8Bytes,
}

impl Delivery {
    /// Delivers every frame, in order per user: one message per other node holding a
    /// recipient, confirmed by the broker, and locally. A node whose queue is gone has died;
    /// its clients resume from their cursors.
    ///
    /// The other nodes' messages are published before the local connections are handed their
    /// frames: once they are, this node's runtime is busy with those connections' writes, and
    /// a publish queued behind them would leave the other nodes idle until they are done.
    pub async fn deliver(&self, frames: Vec<Addressed>) -> anyhow::Result<()> {
        let mut recipients: Vec<Uuid> = frames.iter().map(|frame| frame.user_id).collect();
        recipients.sort();
        recipients.dedup();
        let nodes = self.user_map.nodes_of(&recipients).await?;
        let nodes: HashMap<Uuid, _> = recipients.into_iter().zip(nodes).collect();
        let mut remote: HashMap<Uuid, RemoteBatch> = HashMap::new();
        for frame in &frames {
            for node in nodes.get(&frame.user_id).into_iter().flatten() {
                if *node != self.user_map.node_id {
                    remote.entry(*node).or_default().push(frame);
                }
            }
        }
        let forwarded = self.forward(remote).await?;
        for frame in &frames {
            self.hub.deliver(frame.user_id, || {
                Outbound::for_user(&frame.text, frame.cursor.as_deref())
            });
        }
        forwarded.confirmed().await
    }

    /// Publishes each node's batch; what it returns waits for the broker's confirms.
    async fn forward(&self, remote: HashMap<Uuid, RemoteBatch>) -> anyhow::Result<Forwarded> {
        if remote.is_empty() {
            return Ok(Forwarded::default());
        }
        let channel = self.amqp.confirm_channel().await?;
        let mut confirms = Vec::with_capacity(remote.len());
        for (node, batch) in remote {
            let body = serde_json::to_vec(&batch.batch)?;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue_name(&self.namespace, node).into(),
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    lapin::BasicProperties::default(),
                )
                .await?;
            confirms.push(confirm);
        }
        Ok(Forwarded { confirms })
    }
}

/// One node's frames, each distinct text once.
#[derive(Default)]
struct RemoteBatch {
    batch: NodeBatch,
    /// Where each text (by address: frames that share one share its allocation) is in
    /// `batch.texts`.
    texts: HashMap<usize, usize>,
}

impl RemoteBatch {
    fn push(&mut self, frame: &Addressed) {
        let texts = &mut self.batch.texts;
        let text = *self
            .texts
            .entry(frame.text.as_str().as_ptr() as usize)
            .or_insert_with(|| {
                texts.push(frame.text.as_str().to_owned());
                texts.len() - 1
            });
        self.batch.frames.push(NodeFrame {
            user_id: frame.user_id,
            cursor: frame.cursor.clone(),
            text,
        });
    }
}

/// Batches published to other nodes, not yet confirmed.
#[derive(Default)]
struct Forwarded {
    confirms: Vec<lapin::PublisherConfirm>,
}

impl Forwarded {
    async fn confirmed(self) -> anyhow::Result<()> {
        for confirm in self.confirms {
            confirm.await?;
        }
        Ok(())
    }
}
