//! Rate limits counted in Redis, so every node sees the same counts: failed logins per account
//! and per client address, and message sends per user. A window starts at the first counted
//! attempt and lasts `window`.

use redis::aio::ConnectionManager;
use std::time::Duration;

#[derive(Clone)]
pub struct LoginLimits {
    redis: ConnectionManager,
    namespace: String,
    pub per_account: u32,
    pub per_address: u32,
    pub window: Duration,
}

/// Seconds until another attempt is allowed.
#[derive(Debug, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl LoginLimits {
    pub fn new(redis: ConnectionManager, namespace: &str) -> Self {
        Self {
            redis,
            namespace: namespace.to_owned(),
            per_account: 5,
            per_address: 20,
            window: Duration::from_secs(15 * 60),
        }
    }

    fn account_key(&self, login: &str) -> String {
        format!(
            "{}:login-failures:account:{}",
            self.namespace,
            login.to_lowercase()
        )
    }

    fn address_key(&self, address: &str) -> String {
        format!("{}:login-failures:address:{address}", self.namespace)
    }

    /// `Err(RetryAfter)` when either counter is at its limit.
    pub async fn check(
        &self,
        login: &str,
        address: &str,
    ) -> redis::RedisResult<Result<(), RetryAfter>> {
        let keys = [self.account_key(login), self.address_key(address)];
        let limits = [self.per_account, self.per_address];
        let mut redis = self.redis.clone();
        let mut pipeline = redis::pipe();
        for key in &keys {
            pipeline.cmd("GET").arg(key).cmd("TTL").arg(key);
        }
        let answers: (Option<u32>, i64, Option<u32>, i64) =
            pipeline.query_async(&mut redis).await?;
        let counts = [(answers.0, answers.1), (answers.2, answers.3)];
        for ((count, ttl), limit) in counts.into_iter().zip(limits) {
            if count.unwrap_or(0) >= limit {
                return Ok(Err(RetryAfter(u64::try_from(ttl).unwrap_or(1).max(1))));
            }
        }
        Ok(Ok(()))
    }

    /// Counts one failure against both the account and the address.
    pub async fn record_failure(&self, login: &str, address: &str) -> redis::RedisResult<()> {
        let window = self.window.as_secs().max(1);
        let mut redis = self.redis.clone();
        let mut pipeline = redis::pipe();
        for key in [self.account_key(login), self.address_key(address)] {
            pipeline
                .cmd("INCR")
                .arg(&key)
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(window)
                .arg("NX")
                .ignore();
        }
        pipeline.query_async(&mut redis).await
    }

    /// A successful login clears the account's count (not the address's).
    pub async fn record_success(&self, login: &str) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("DEL")
            .arg(self.account_key(login))
            .query_async(&mut redis)
            .await
    }
}

/// Message sends per user (REST and WebSocket together).
#[derive(Clone)]
pub struct SendLimits {
    redis: ConnectionManager,
    namespace: String,
    pub per_window: u32,
    pub window: Duration,
}

impl SendLimits {
    pub fn new(redis: ConnectionManager, namespace: &str, per_window: u32) -> Self {
        Self {
            redis,
            namespace: namespace.to_owned(),
            per_window,
            window: Duration::from_secs(10),
        }
    }

    /// Counts one send; `Err(RetryAfter)` when the user is over the limit (the send is not
    /// counted then, so waiting is enough to get through).
    pub async fn admit(&self, user_id: uuid::Uuid) -> redis::RedisResult<Result<(), RetryAfter>> {
        let key = format!("{}:send-rate:{user_id}", self.namespace);
        let mut redis = self.redis.clone();
        let (count, ttl): (u32, i64) = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(self.window.as_secs().max(1))
            .arg("NX")
            .ignore()
            .cmd("TTL")
            .arg(&key)
            .query_async(&mut redis)
            .await?;
        if count > self.per_window {
            let _: i64 = redis::cmd("DECR").arg(&key).query_async(&mut redis).await?;
            return Ok(Err(RetryAfter(u64::try_from(ttl).unwrap_or(1).max(1))));
        }
        Ok(Ok(()))
    }
}
