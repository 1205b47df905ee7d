//! Listens to the revocation announcements (Redis pub/sub) and closes the matching
//! connections of this node with 4001, within a moment of the logout on any node.

use futures::StreamExt;
use serde::Deserialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hub::Hub;

#[derive(Deserialize)]
struct Announcement {
    jti: Option<Uuid>,
    sid: Option<Uuid>,
}

/// Runs until `shutdown`, resubscribing with backoff when the link drops.
pub async fn run(redis_url: String, channel: String, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut backoff = bus::Backoff::default();
    while !shutdown.is_cancelled() {
        let outcome = tokio::select! {
            outcome = listen(&redis_url, &channel, &hub) => outcome,
            () = shutdown.cancelled() => return,
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, "revocation listener failed; resubscribing");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_pause()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn listen(redis_url: &str, channel: &str, hub: &Hub) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let payload: String = message.get_payload()?;
        match serde_json::from_str::<Announcement>(&payload) {
            Ok(announcement) => hub.revoke(announcement.jti, announcement.sid),
            Err(error) => tracing::warn!(%error, "unreadable revocation announcement"),
        }
    }
    anyhow::bail!("the revocation subscription ended")
}
