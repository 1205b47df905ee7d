//! The node's upkeep of its connections, in batches. Every connection's user-map entry must be
//! refreshed, and its token checked against the revoked set (a revocation announced while
//! this node was not listening), once per heartbeat period. Done by each connection at its
//! own heartbeat, that was two Redis round trips per connection every 25 s: at 100,000
//! connections, 4,000 a second, and a broadcast to all of them arrived 100–150 ms later for
//! it (ADR 0020). A pass every second takes the connections that are due and does both for
//! a thousand at a time in one round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hub::{Hub, REVOKED, Upkeep};
use sessions::Revocations;
use sessions::user_map::UserMap;

/// How often a pass looks for connections that are due.
pub const PASS_EVERY: Duration = Duration::from_secs(1);
/// Connections refreshed in one round trip.
const CHUNK: usize = 1_000;

/// Runs a pass every [`PASS_EVERY`] until `shutdown`.
pub async fn run(
    hub: Arc<Hub>,
    user_map: UserMap,
    revocations: Revocations,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(PASS_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        pass(&hub, &user_map, &revocations, Instant::now()).await;
    }
}

/// One pass over the connections due at `now`: at most a tenth of the node's connections (and
/// at least [`CHUNK`]), so connections opened together spread over several passes instead of
/// coming due together every period. Returns how many were refreshed. A failure is logged and
/// the connections stay open: an entry outlives two missed periods
/// ([`sessions::user_map::ENTRY_TTL`]).
pub async fn pass(hub: &Hub, user_map: &UserMap, revocations: &Revocations, now: Instant) -> usize {
    let limit = (hub.connection_count() / 10).max(CHUNK);
    let due = hub.take_due(now, limit);
    for chunk in due.chunks(CHUNK) {
        refresh(hub, user_map, revocations, chunk).await;
    }
    due.len()
}

async fn refresh(hub: &Hub, user_map: &UserMap, revocations: &Revocations, chunk: &[Upkeep]) {
    let entries: Vec<(Uuid, Uuid)> = chunk
        .iter()
        .map(|upkeep| (upkeep.user_id, upkeep.connection_id))
        .collect();
    let tokens: Vec<(Uuid, Uuid)> = chunk
        .iter()
        .map(|upkeep| (upkeep.token_id, upkeep.session_id))
        .collect();
    // Both go out on the shared link together: one round trip.
    let (touched, revoked) = tokio::join!(
        user_map.touch_many(&entries),
        revocations.revoked_among(&tokens)
    );
    if let Err(error) = touched {
        tracing::warn!(%error, connections = chunk.len(), "could not refresh the user map");
    }
    match revoked {
        Ok(revoked) => {
            for (upkeep, revoked) in chunk.iter().zip(revoked) {
                if revoked {
                    hub.kick_connection(upkeep.user_id, upkeep.connection_id, REVOKED);
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, connections = chunk.len(), "could not check tokens for revocation");
        }
    }
    // A connection that closed while its entry was being refreshed has removed its entry
    // already, and the refresh put it back: take it out again.
    for upkeep in chunk {
        if !hub.is_registered(upkeep.user_id, upkeep.connection_id) {
            let last_here = !hub.is_connected(upkeep.user_id);
            if let Err(error) = user_map
                .remove(upkeep.user_id, upkeep.connection_id, last_here)
                .await
            {
                tracing::warn!(%error, "could not remove a closed connection from the user map; it expires");
            }
        }
    }
}
