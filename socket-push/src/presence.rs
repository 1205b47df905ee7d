//! Presence: a user is online while they have a live connection on any node. The first
//! connection and the last disconnection are announced (`presence` frames) to every user who
//! shares a conversation with them; `last_seen_at` is kept in Redis.

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;
use web::dto::rfc3339_string;

use crate::PushState;
use crate::delivery::Addressed;

/// Announces `user_id` online if this is their only live connection.
pub async fn came_online(state: &PushState, user_id: Uuid) -> anyhow::Result<()> {
    if state.delivery.user_map.live_connections(user_id).await? == 1 {
        announce(state, user_id, true, None).await?;
    }
    Ok(())
}

/// Announces `user_id` offline (with `last_seen_at`) if no live connection is left.
pub async fn went_offline(state: &PushState, user_id: Uuid) -> anyhow::Result<()> {
    if state.delivery.user_map.live_connections(user_id).await? > 0 {
        return Ok(());
    }
    let last_seen = rfc3339_string(&Utc::now());
    state
        .delivery
        .user_map
        .mark_last_seen(user_id, &last_seen)
        .await?;
    announce(state, user_id, false, Some(last_seen)).await
}

async fn announce(
    state: &PushState,
    user_id: Uuid,
    online: bool,
    last_seen_at: Option<String>,
) -> anyhow::Result<()> {
    let contacts: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT other.user_id FROM push_members me
           JOIN push_members other ON other.conversation_id = me.conversation_id
          WHERE me.user_id = $1 AND other.user_id <> $1",
    )
    .bind(user_id)
    .fetch_all(&state.commands.pool)
    .await?;
    let text: axum::extract::ws::Utf8Bytes = json!({"type": "presence", "user_id": user_id, "online": online, "last_seen_at": last_seen_at}).to_string().into();
    let frames = contacts
        .into_iter()
        .map(|contact| Addressed {
            user_id: contact,
            cursor: None,
            text: text.clone(),
        })
        .collect();
    state.delivery.deliver(frames).await
}
