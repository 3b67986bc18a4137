//! Data-key rotation (`key rotate-data`): patients' compartments get new data keys, their
//! resource versions are re-sealed in batches, and the old keys are dropped once unused.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use carevault_crypto::Cipher;
use carevault_crypto::{DataKey, envelope};
use carevault_store::WriteOp;
use zeroize::Zeroizing;

use super::Keyring;
use crate::compartment::Compartment;
use crate::error::{Error, Result};

/// Which compartments `rotate-data` gives new data keys: patients' (their data lives only in
/// resource versions, which the job re-seals). The environment's key also seals shred reasons
/// inside hash-chained audit events, the secrets compartment and named secrets are not
/// resource data, so they keep their keys (and are re-wrapped with every KEK rotation).
pub const ROTATED_COMPARTMENT_PREFIX: &str = crate::compartment::PATIENT_PREFIX;

/// How long a dropped old data key stays in the memory cache.
const DROPPED_KEY_GRACE: Duration = Duration::from_secs(10);

impl Keyring {
    /// `key rotate-data`: mark every patient compartment's data key for rotation; the
    /// background job gives each a new key, re-seals its resource versions under it and drops
    /// the old key. Returns how many compartments are marked (including any still pending).
    pub async fn rotate_data(&self) -> Result<u64> {
        let _one = self.admin.lock().await;
        self.store
            .write(vec![WriteOp::MarkDataKeysForRotation {
                compartment_prefix: ROTATED_COMPARTMENT_PREFIX.into(),
            }])
            .await?;
        self.rotate_data_wake.notify_one();
        Ok(self.store.data_rotation_progress().await?.keys_to_rotate)
    }

    /// One step of the data-key rotation, each part at most `limit` rows in one transaction:
    /// new keys for marked compartments, versions re-sealed from old keys to the live ones, old
    /// keys no version references any more dropped. Returns how much was done (0: nothing).
    pub async fn rotate_data_batch(&self, limit: u32) -> Result<usize> {
        self.evict_dropped(false);
        let rotated = self.rotate_marked_keys(limit).await?;
        let resealed = self.reseal_versions(limit).await?;
        let dropped = self.drop_unused_keys(limit).await?;
        Ok(rotated + resealed + dropped)
    }

    async fn rotate_marked_keys(&self, limit: u32) -> Result<usize> {
        let rows = self.store.data_keys_to_rotate(limit).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Under the admin lock: a shred records itself under it, so a compartment found not
        // shredded here cannot be shredded before this batch commits without its shred then
        // deleting the new key too (the shred deletes every key of the compartment).
        let _one = self.admin.lock().await;
        let mut ops = Vec::with_capacity(rows.len());
        let mut compartments = Vec::with_capacity(rows.len());
        for row in &rows {
            if self.is_shredded(&row.compartment) {
                continue;
            }
            let dek = DataKey::generate()?;
            let (kek_version, wrapped) =
                self.provider.wrap(&dek, &self.wrap_aad(&row.compartment))?;
            ops.push(WriteOp::RotateDataKey {
                old_id: row.id,
                compartment: row.compartment.clone(),
                wrapped,
                kek_version,
                created_at: self.clock.now_secs(),
            });
            compartments.push(Compartment::stored(row.compartment.as_str()));
        }
        if ops.is_empty() {
            return Ok(0);
        }
        self.store.write(ops).await?;
        for c in &compartments {
            self.forget_compartment(c);
        }
        Ok(rows.len())
    }

    async fn reseal_versions(&self, limit: u32) -> Result<usize> {
        let rows = self.store.versions_under_retiring_keys(limit).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // The live key of each compartment, read from the database (not the compartment
        // cache, which a request may have refilled with the old key just before the rotation).
        let mut live: HashMap<Compartment, Option<(u64, Arc<Cipher>)>> = HashMap::new();
        let mut ops = Vec::with_capacity(rows.len());
        for row in rows {
            let (old, compartment) = match self.key_by_id(row.dek_id).await {
                Ok(k) => k,
                // Shredded meanwhile: the shred deletes the version too.
                Err(Error::NotFound) => continue,
                Err(e) => return Err(e),
            };
            if !live.contains_key(&compartment) {
                let key = match self
                    .store
                    .data_key_by_compartment(compartment.as_str())
                    .await?
                {
                    Some(r) if !self.is_shredded(compartment.as_str()) => {
                        Some((r.id, self.unwrap_row(&r)?.0))
                    }
                    _ => None,
                };
                live.insert(compartment.clone(), key);
            }
            let Some(Some((new_id, new))) = live.get(&compartment) else {
                continue;
            };
            let aad = self.resource_aad(&row.rtype, &row.id, row.version);
            let plain = Zeroizing::new(envelope::open(&old, &aad, &row.body)?);
            let body = envelope::seal(new, *new_id, &aad, &plain)?;
            ops.push(WriteOp::ResealResourceVersion {
                rtype: row.rtype,
                id: row.id,
                version: row.version,
                from_dek_id: row.dek_id,
                dek_id: *new_id,
                body,
            });
        }
        let n = ops.len();
        if n > 0 {
            self.store.write(ops).await?;
            self.resealed.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }

    async fn drop_unused_keys(&self, limit: u32) -> Result<usize> {
        let ids = self.store.unused_retiring_keys(limit).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        self.store
            .write(
                ids.iter()
                    .map(|id| WriteOp::DropRetiredDataKey { id: *id })
                    .collect(),
            )
            .await?;
        let now = std::time::Instant::now();
        let mut dropped = 0;
        for id in ids {
            if self.store.data_key_by_id(id).await?.is_none() {
                dropped += 1;
                self.dropped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((id, now));
            }
        }
        Ok(dropped)
    }

    /// Forget dropped old data keys in memory (those dropped over [`DROPPED_KEY_GRACE`] ago,
    /// or all of them).
    fn evict_dropped(&self, all: bool) {
        let mut dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        dropped.retain(|(id, at)| {
            let due = all || at.elapsed() >= DROPPED_KEY_GRACE;
            if due {
                self.keys.remove(*id);
                self.names
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
            }
            !due
        });
    }

    /// The background data-key rotation job: runs whenever compartments are marked or old keys
    /// remain (at start, so an interrupted rotation resumes, and after every `rotate-data`),
    /// `batch` rows per step with `pause` between steps. `finished` is called when a rotation
    /// is complete, with the number of versions re-sealed.
    pub fn spawn_data_rotator<F, Fut>(
        self: &Arc<Self>,
        batch: u32,
        pause: Duration,
        finished: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let keyring = self.clone();
        tokio::spawn(async move {
            let mut busy = false;
            let resealed_at_start = |k: &Keyring| k.resealed.load(Ordering::Relaxed);
            let mut since = resealed_at_start(&keyring);
            loop {
                match keyring.rotate_data_batch(batch).await {
                    Ok(0) => {
                        if busy {
                            let n = resealed_at_start(&keyring) - since;
                            tracing::info!(event = "data_key_rotation_finished", versions = n);
                            finished(n).await;
                            busy = false;
                        }
                        let _ = tokio::time::timeout(
                            DROPPED_KEY_GRACE,
                            keyring.rotate_data_wake.notified(),
                        )
                        .await;
                        since = resealed_at_start(&keyring);
                    }
                    Ok(n) => {
                        busy = true;
                        tracing::debug!(event = "data_key_rotation_batch", rows = n);
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(event = "data_key_rotation_failed", error = %e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    }
}
