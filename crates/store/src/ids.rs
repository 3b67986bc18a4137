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

use crate::StoreError;

/// How many ids one reservation takes: a first write to a new compartment reads the database
/// for an id once per this many new keys.
pub(crate) const BLOCK: u32 = 256;

/// The ids this store holds in reserve.
#[derive(Default)]
pub(crate) struct IdPool {
    /// Unused reserved ids, the next one last.
    free: tokio::sync::Mutex<Vec<u64>>,
}

impl IdPool {
    /// The next reserved id, reserving a new block (`reserve`) when none is left. Concurrent
    /// callers wait for one reservation rather than each making its own.
    pub(crate) async fn next<F, Fut>(&self, reserve: F) -> Result<u64, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u64>, StoreError>>,
    {
        let mut free = self.free.lock().await;
        if free.is_empty() {
            let mut block = reserve().await?;
            if block.is_empty() {
                return Err(StoreError::Backend("no data key id was reserved".into()));
            }
            block.sort_unstable_by(|a, b| b.cmp(a));
            *free = block;
        }
        free.pop()
            .ok_or_else(|| StoreError::Backend("no data key id was reserved".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_come_from_reserved_blocks_in_order_and_once() {
        let pool = IdPool::default();
        let mut calls = 0;
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(
                pool.next(|| {
                    calls += 1;
                    let base = calls * 100;
                    async move { Ok(vec![base + 2, base, base + 1]) }
                })
                .await
                .unwrap(),
            );
        }
        assert_eq!(got, vec![100, 101, 102, 200, 201]);
        assert_eq!(calls, 2);
        let empty = pool.next(|| async { Ok(Vec::new()) }).await;
        assert_eq!(
            empty.unwrap(),
            202,
            "a reserve is only asked for when the pool is empty"
        );
        let pool = IdPool::default();
        assert!(pool.next(|| async { Ok(Vec::new()) }).await.is_err());
    }
}
