//! Argon2id password hashing (m = 19456 KiB, t = 2, p = 1, PHC strings). Hashing runs on a
//! fixed pool of `concurrency` threads of its own, so a flood of logins queues instead of
//! allocating 19 MiB per request without bound. Not the runtime's blocking pool: its threads
//! come and go by the hundred, and the allocator keeps each one's freed 19 MiB (one arena
//! per thread); a few long-lived threads reuse theirs, so the memory stays at
//! `concurrency` × 19 MiB (measured: 400 registrations grew the process by 1 GiB before).

use argon2::{Algorithm, Argon2, Params, Version};
use argon2::{PasswordHasher as _, PasswordVerifier};
use std::sync::{Arc, Mutex, mpsc};

type Job = Box<dyn FnOnce() + Send>;

pub struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
    /// Verified against when the account does not exist, so the answer takes the same time.
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> anyhow::Result<Self> {
        let dummy_hash = hash_blocking("not-a-real-password-0000")?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..concurrency.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            // Every hasher is gone: the thread ends.
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { jobs, dummy_hash })
    }

    /// Runs `work` on the hashing threads and waits for its answer.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = answer.send(work());
            }))
            .map_err(|_| anyhow::anyhow!("the password hashing threads are gone"))?;
        answered.await?
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let password = password.to_owned();
        self.run(move || hash_blocking(&password)).await
    }

    /// Checks `password` against `phc`, or against a dummy hash when `phc` is `None`
    /// (always `false` then), taking the same time either way.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> anyhow::Result<bool> {
        let password = password.to_owned();
        let exists = phc.is_some();
        let phc = phc.unwrap_or(&self.dummy_hash).to_owned();
        let matches = self
            .run(move || {
                Ok(argon2()?
                    .verify_password(password.as_bytes(), phc.as_str())
                    .is_ok())
            })
            .await?;
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
