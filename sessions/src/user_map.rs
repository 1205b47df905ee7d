//! The user map in Redis, shared by the roles (socket-push writes it, the push router and the
//! query side read it): for each user, the live connections on every node. One sorted set
//! per user, member `node_id|connection_id`, score = the entry's expiry (Unix ms). Heartbeats
//! push the expiry forward; a node that dies stops doing so, and its entries stop counting
//! when they expire (and are swept on the user's next connect). Every change is a single
//! atomic command or script: no `KEYS`, no read-modify-write across round trips.
//!
//! Beside it, the user's nodes: a sorted set per user, member `node_id`, score = the latest
//! expiry of that node's entries. A fan-out reads this one, a handful of members per user,
//! not every connection (a user with 100 connections made the fan-out to a 1,000-member
//! group read 100,000 entries: 63 ms of Redis on the path of every frame, ADR 0020).

use redis::aio::ConnectionManager;
use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Removes a connection's entry and, when it was its node's last live entry of the user,
/// the node from the user's nodes. One script: a connection of the same user registering on
/// the same node meanwhile either has its entry seen here or adds the node back after.
/// KEYS: the user's entries, the user's nodes; ARGV: the member, the node id, now (ms).
const REMOVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
local prefix = ARGV[2] .. '|'
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')) do
  if string.sub(member, 1, #prefix) == prefix then return 0 end
end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";

/// How long an entry counts without a heartbeat.
pub const ENTRY_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct UserMap {
    pub redis: ConnectionManager,
    pub namespace: String,
    pub node_id: Uuid,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl UserMap {
    fn key(&self, user_id: Uuid) -> String {
        format!("{}:user:{user_id}", self.namespace)
    }

    fn nodes_key(&self, user_id: Uuid) -> String {
        format!("{}:user-nodes:{user_id}", self.namespace)
    }

    fn member(&self, connection_id: Uuid) -> String {
        format!("{}|{connection_id}", self.node_id)
    }

    /// Adds (or refreshes) a connection and its node, and sweeps the user's expired entries.
    pub async fn touch(&self, user_id: Uuid, connection_id: Uuid) -> redis::RedisResult<()> {
        self.touch_many(&[(user_id, connection_id)]).await
    }

    /// Refreshes connections of this node (the periodic upkeep does many at once): one
    /// pipeline, each user's keys swept and extended once.
    pub async fn touch_many(&self, connections: &[(Uuid, Uuid)]) -> redis::RedisResult<()> {
        if connections.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let expiry = now + ENTRY_TTL.as_millis() as u64;
        let mut by_user: std::collections::HashMap<Uuid, Vec<Uuid>> =
            std::collections::HashMap::new();
        for (user_id, connection_id) in connections {
            by_user.entry(*user_id).or_default().push(*connection_id);
        }
        let mut pipeline = redis::pipe();
        for (user_id, connection_ids) in by_user {
            // The entries before the node: `REMOVE` for another connection of this node sees
            // them, or runs before the node is added back.
            let key = self.key(user_id);
            let add = pipeline.cmd("ZADD").arg(&key);
            for connection_id in connection_ids {
                add.arg(expiry).arg(self.member(connection_id));
            }
            add.ignore();
            let nodes_key = self.nodes_key(user_id);
            pipeline
                .cmd("ZADD")
                .arg(&nodes_key)
                .arg("GT")
                .arg(expiry)
                .arg(self.node_id.to_string())
                .ignore();
            for key in [key, nodes_key] {
                pipeline
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ENTRY_TTL.as_millis() as u64)
                    .ignore();
            }
        }
        let mut redis = self.redis.clone();
        pipeline.query_async(&mut redis).await
    }

    /// Removes a connection. `last_here`: this node holds no other connection of the user, so
    /// the node may leave the user's nodes (if Redis agrees: the check is atomic there).
    pub async fn remove(
        &self,
        user_id: Uuid,
        connection_id: Uuid,
        last_here: bool,
    ) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        if !last_here {
            return redis::cmd("ZREM")
                .arg(self.key(user_id))
                .arg(self.member(connection_id))
                .query_async(&mut redis)
                .await;
        }
        static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REMOVE));
        SCRIPT
            .key(self.key(user_id))
            .key(self.nodes_key(user_id))
            .arg(self.member(connection_id))
            .arg(self.node_id.to_string())
            .arg(now_ms())
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }

    /// How many live connections the user has on all nodes.
    pub async fn live_connections(&self, user_id: Uuid) -> redis::RedisResult<u64> {
        let mut redis = self.redis.clone();
        redis::cmd("ZCOUNT")
            .arg(self.key(user_id))
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut redis)
            .await
    }

    /// Whether each user is online (a live connection anywhere) and when each was last seen
    /// (set when their last connection closed), in one round trip.
    pub async fn presence(
        &self,
        user_ids: &[Uuid],
    ) -> redis::RedisResult<Vec<(bool, Option<String>)>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipeline = redis::pipe();
        for user_id in user_ids {
            pipeline
                .cmd("ZCOUNT")
                .arg(self.key(*user_id))
                .arg(now)
                .arg("+inf")
                .cmd("GET")
                .arg(self.last_seen_key(*user_id));
        }
        let mut redis = self.redis.clone();
        let answers: Vec<redis::Value> = pipeline.query_async(&mut redis).await?;
        let mut presence = Vec::with_capacity(user_ids.len());
        for pair in answers.chunks(2) {
            let online = match pair.first() {
                Some(redis::Value::Int(count)) => *count > 0,
                _ => false,
            };
            let last_seen = match pair.get(1) {
                Some(redis::Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
                _ => None,
            };
            presence.push((online, last_seen));
        }
        Ok(presence)
    }

    fn last_seen_key(&self, user_id: Uuid) -> String {
        format!("{}:last-seen:{user_id}", self.namespace)
    }

    /// Records that the user's last connection closed now; returns the time (RFC 3339).
    pub async fn mark_last_seen(&self, user_id: Uuid, at: &str) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(self.last_seen_key(user_id))
            .arg(at)
            .query_async(&mut redis)
            .await
    }

    /// The nodes holding live connections of each user, in one round trip.
    pub async fn nodes_of(&self, user_ids: &[Uuid]) -> redis::RedisResult<Vec<HashSet<Uuid>>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipeline = redis::pipe();
        for user_id in user_ids {
            pipeline
                .cmd("ZRANGEBYSCORE")
                .arg(self.nodes_key(*user_id))
                .arg(now)
                .arg("+inf");
        }
        let mut redis = self.redis.clone();
        let nodes: Vec<Vec<String>> = pipeline.query_async(&mut redis).await?;
        Ok(nodes
            .into_iter()
            .map(|nodes| nodes.iter().filter_map(|node| node.parse().ok()).collect())
            .collect())
    }
}
