//! The user map in Redis, shared by the roles (socket-push writes it, the push router and the
//! query side read it): for each user, the live connections on every node. One sorted set
//! per user, member `node_id|connection_id`, score = the entry's expiry (Unix ms). Heartbeats
//! push the expiry forward; a node that dies stops doing so, and its entries stop counting
//! when they expire (and are swept on the user's next connect). Every change is a single
//! atomic command: no `KEYS`, no read-modify-write.

use redis::aio::ConnectionManager;
use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// For each user key, the distinct nodes of its live entries: a fan-out to users with many
/// connections moves a few node ids out of Redis, not every entry.
const NODES_OF: &str = r"
local result = {}
for i, key in ipairs(KEYS) do
  local seen = {}
  local nodes = {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, ARGV[1], '+inf')) do
    local node = string.match(member, '^([^|]*)|')
    if node and not seen[node] then
      seen[node] = true
      nodes[#nodes + 1] = node
    end
  end
  result[i] = nodes
end
return result
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

    fn member(&self, connection_id: Uuid) -> String {
        format!("{}|{connection_id}", self.node_id)
    }

    /// Adds (or refreshes) a connection, and sweeps the user's expired entries.
    pub async fn touch(&self, user_id: Uuid, connection_id: Uuid) -> redis::RedisResult<()> {
        let key = self.key(user_id);
        let now = now_ms();
        let mut redis = self.redis.clone();
        redis::pipe()
            .cmd("ZADD")
            .arg(&key)
            .arg(now + ENTRY_TTL.as_millis() as u64)
            .arg(self.member(connection_id))
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ENTRY_TTL.as_millis() as u64)
            .ignore()
            .query_async(&mut redis)
            .await
    }

    pub async fn remove(&self, user_id: Uuid, connection_id: Uuid) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("ZREM")
            .arg(self.key(user_id))
            .arg(self.member(connection_id))
            .query_async(&mut redis)
            .await
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
        static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(NODES_OF));
        let mut invocation = SCRIPT.prepare_invoke();
        for user_id in user_ids {
            invocation.key(self.key(*user_id));
        }
        invocation.arg(now_ms());
        let mut redis = self.redis.clone();
        let nodes: Vec<Vec<String>> = invocation.invoke_async(&mut redis).await?;
        Ok(nodes
            .into_iter()
            .map(|nodes| nodes.iter().filter_map(|node| node.parse().ok()).collect())
            .collect())
    }
}
