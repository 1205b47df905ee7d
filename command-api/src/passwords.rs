//! Argon2id password hashing (m = 19456 KiB, t = 2, p = 1, PHC strings). Hashing runs on the
//! blocking pool, at most `concurrency` at a time, so a flood of logins queues instead of
//! allocating 19 MiB per request without bound.

use argon2::{Algorithm, Argon2, Params, Version};
use argon2::{PasswordHasher as _, PasswordVerifier};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Verified against when the account does not exist, so the answer takes the same time.
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> anyhow::Result<Self> {
        let dummy_hash = hash_blocking("not-a-real-password-0000")?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash,
        })
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_blocking(&password)).await?
    }

    /// Checks `password` against `phc`, or against a dummy hash when `phc` is `None`
    /// (always `false` then), taking the same time either way.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let password = password.to_owned();
        let exists = phc.is_some();
        let phc = phc.unwrap_or(&self.dummy_hash).to_owned();
        let matches = tokio::task::spawn_blocking(move || {
            Ok::<bool, anyhow::Error>(
                argon2()?
                    .verify_password(password.as_bytes(), phc.as_str())
                    .is_ok(),
            )
        })
        .await??;
        Ok(exists && matches)
    }
}

fn argon2() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(19_456, 2, 1, None).map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let mut salt_bytes = [0u8; 16];
    rand::fill(&mut salt_bytes);
    let hash = argon2()?
        .hash_password_with_salt(password.as_bytes(), &salt_bytes)
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(2)?;
        let hash = hasher.hash("correct horse").await?;
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(hasher.verify("correct horse", Some(&hash)).await?);
        assert!(!hasher.verify("wrong horse", Some(&hash)).await?);
        assert!(!hasher.verify("correct horse", None).await?);
        Ok(())
    }
}
