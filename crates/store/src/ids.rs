//! Data key ids handed out before the key is written ([`crate::Store::reserve_data_key_id`]).
//!
//! A new compartment's key is inserted in the same transaction as the first data sealed under
//! it, and the ciphertext names its key by id, so the id must be known before that transaction.
//! Each backend reserves a block of ids from the database's key sequence (SQLite's
//! `AUTOINCREMENT` counter, PostgreSQL's `data_key_id_seq`): the database never gives those ids
//! to anyone else, on any node or in any process, and no id is ever handed out twice, so a key
//! id is never reused (not even one of a shredded key). Ids of keys that were never written
//! (their write failed or was refused) are simply skipped, as a sequence skips values.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::StoreError;

/// Ids reserved at a time on PostgreSQL (a sequence: reserving does not wait for a lock).
pub(crate) const BLOCK: u32 = 1024;
/// Ids reserved at a time on SQLite. A reservation there is a transaction of its own, which
/// takes the database's one write lock, so the writer (every request's commit) waits for it:
/// at 1,024 ids a block, a benchmark of creates (each a new patient, so a new key) showed
/// those waits in its p99. Gaps in key ids are harmless.
pub(crate) const SQLITE_BLOCK: u32 = 65_536;
/// Reserved ids not yet handed out, smallest first. When fewer than half a block are left, the
/// next block is reserved in the background, so that first writes do not wait for it.
pub(crate) struct IdPool {
    state: Arc<PoolState>,
    low_water: usize,
}

#[derive(Default)]
struct PoolState {
    /// Descending, so that `pop` takes the smallest.
    free: Mutex<Vec<u64>>,
    refilling: AtomicBool,
}

impl PoolState {
    fn add(&self, block: Vec<u64>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.extend(block);
        free.sort_unstable_by(|a, b| b.cmp(a));
    }
}

impl IdPool {
    /// A pool refilled `block` ids at a time.
    pub(crate) fn new(block: u32) -> Self {
        Self {
            state: Arc::default(),
            low_water: block as usize / 2,
        }
    }

    /// The next id. `reserve` reserves a block in the database: in the background when the pool
    /// runs low, and in the caller's time only when it is empty.
    pub(crate) async fn next<F, Fut>(&self, reserve: F) -> Result<u64, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Vec<u64>, StoreError>> + Send + 'static,
    {
        loop {
            let (id, low) = {
                let mut free = self.state.free.lock().unwrap_or_else(|p| p.into_inner());
                let id = free.pop();
                (id, free.len() < self.low_water)
            };
            if low && !self.state.refilling.swap(true, Ordering::SeqCst) {
                let state = self.state.clone();
                let refill = reserve();
                tokio::spawn(async move {
                    match refill.await {
                        Ok(block) => state.add(block),
                        // The next caller tries again (in its own time if the pool is empty).
                        Err(e) => tracing::warn!(event = "data_key_ids_not_reserved", error = %e),
                    }
                    state.refilling.store(false, Ordering::SeqCst);
                });
            }
            if let Some(id) = id {
                return Ok(id);
            }
            let block = reserve().await?;
            if block.is_empty() {
                return Err(StoreError::Backend("no data key id was reserved".into()));
            }
            self.state.add(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_are_handed_out_once_smallest_first_and_refilled_ahead() {
        let pool = IdPool::new(BLOCK);
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reserve = || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let base = n * 10_000;
                Ok((base..base + u64::from(BLOCK)).rev().collect())
            }
        };
        let mut got = Vec::new();
        for _ in 0..(3 * BLOCK) {
            got.push(pool.next(reserve).await.unwrap());
            tokio::task::yield_now().await;
        }
        let mut unique = got.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), got.len(), "no id twice");
        assert_eq!(got[0], 10_000, "the first block's smallest first");
        assert!(
            calls.load(Ordering::SeqCst) >= 3,
            "blocks were reserved as the pool ran low"
        );

        let failing = IdPool::new(BLOCK);
        assert!(failing.next(|| async { Ok(Vec::new()) }).await.is_err());
    }
}
