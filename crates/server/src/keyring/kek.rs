//! KEK administration: rotation (with the background re-wrap of data keys), the minimum
//! decryption version, and destroying old versions.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use carevault_store::WriteOp;

use super::Keyring;
use super::state::KekVersionMeta;
use crate::error::{Error, Result};

impl Keyring {
    /// Add a KEK version; every wrap from now on uses it, and the re-wrap job is woken to move
    /// existing data keys under it. Returns the new version.
    pub async fn rotate(&self) -> Result<u32> {
        let _one = self.admin.lock().await;
        let next = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            let recorded = state.versions.iter().map(|m| m.version).max();
            let held = self.provider.versions().into_iter().max();
            recorded.max(held).unwrap_or(0) + 1
        };
        self.provider.add_version(next)?;
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .versions
            .push(KekVersionMeta {
                version: next,
                created_at_us: self.clock.now_us(),
                destroyed_at_us: None,
            });
        self.save_state()?;
        self.rewrap_wake.notify_one();
        Ok(next)
    }

    /// Refuse unwrapping under any KEK version older than `version` from now on. Only once no
    /// data key is wrapped under an older version; never lowered.
    pub async fn set_min_decrypt_version(&self, version: u32) -> Result<()> {
        let _one = self.admin.lock().await;
        let active = self.provider.active_version();
        let current = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .min_decrypt_version;
        if version == 0 || version > active {
            return Err(Error::BadRequest(format!(
                "the minimum decryption version must be between v1 and the active version v{active}"
            )));
        }
        if version < current {
            return Err(Error::Conflict(format!(
                "the minimum decryption version is already v{current} and is never lowered"
            )));
        }
        let in_use: u64 = self
            .store
            .data_key_counts()
            .await?
            .into_iter()
            .filter(|(v, _)| *v < version)
            .map(|(_, n)| n)
            .sum();
        if in_use > 0 {
            return Err(Error::Conflict(format!(
                "{in_use} data keys are still wrapped under versions older than v{version}; wait for re-wrap to finish"
            )));
        }
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .min_decrypt_version = version;
        self.save_state()
    }

    /// Destroy KEK `version` for good (its file or HSM object is gone). Refused for the active
    /// version, an unknown or already destroyed one, and while any data key is wrapped under it.
    pub async fn destroy(&self, version: u32) -> Result<()> {
        let _one = self.admin.lock().await;
        let known = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .versions
            .iter()
            .find(|m| m.version == version)
            .map(|m| m.destroyed_at_us.is_some());
        match known {
            None => return Err(Error::NotFound),
            Some(true) => {
                return Err(Error::Conflict(format!("v{version} is already destroyed")));
            }
            Some(false) => {}
        }
        let active = self.provider.active_version();
        if version == active {
            return Err(Error::Conflict(format!(
                "v{version} is the active key-encryption key; rotate first"
            )));
        }
        // First retire every version older than the active one from wrapping, in the database:
        // a data key wrapped under `version` by a request that raced the rotation can no longer
        // be inserted (the insert checks the floor, and on PostgreSQL holds it share-locked, so
        // this waits for inserts in flight), and the count below sees every key that was.
        self.store
            .write(vec![WriteOp::SetMeta {
                key: carevault_store::META_KEK_WRAP_FLOOR.into(),
                value: active.to_string(),
            }])
            .await?;
        let in_use = self
            .store
            .data_key_counts()
            .await?
            .into_iter()
            .find(|(v, _)| *v == version)
            .map_or(0, |(_, n)| n);
        if in_use > 0 {
            return Err(Error::Conflict(format!(
                "v{version} still wraps {in_use} data keys; wait for re-wrap to finish"
            )));
        }
        if self.provider.versions().contains(&version) {
            self.provider.destroy_version(version)?;
        }
        let now = self.clock.now_us();
        if let Some(m) = self
            .state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .versions
            .iter_mut()
            .find(|m| m.version == version)
        {
            m.destroyed_at_us = Some(now);
        }
        self.save_state()
    }

    /// Re-wrap up to `limit` data keys that are not under the active KEK version; returns how
    /// many were found (0: nothing left).
    pub async fn rewrap_batch(&self, limit: u32) -> Result<usize> {
        let active = self.provider.active_version();
        let rows = self.store.data_keys_not_under(active, limit).await?;
        let mut ops = Vec::with_capacity(rows.len());
        for row in &rows {
            let aad = self.wrap_aad(&row.compartment);
            let dek = self.provider.unwrap(row.kek_version, &row.wrapped, &aad)?;
            let (kek_version, wrapped) = self.provider.wrap(&dek, &aad)?;
            ops.push(WriteOp::RewrapDataKey {
                id: row.id,
                from_kek_version: row.kek_version,
                wrapped,
                kek_version,
            });
        }
        if !ops.is_empty() {
            self.store.write(ops).await?;
            self.rewrapped
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
        Ok(rows.len())
    }

    /// The background re-wrap job: runs whenever data keys are not under the active version
    /// (at start, so an interrupted re-wrap resumes, and after every rotation), `batch` keys per
    /// transaction with `pause` between batches. `finished` is called when a backlog is drained.
    pub fn spawn_rewrapper<F, Fut>(
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
            let mut done_in_backlog: u64 = 0;
            loop {
                match keyring.rewrap_batch(batch).await {
                    Ok(0) => {
                        if done_in_backlog > 0 {
                            tracing::info!(
                                event = "kek_rewrap_finished",
                                data_keys = done_in_backlog
                            );
                            finished(done_in_backlog).await;
                            done_in_backlog = 0;
                        }
                        // A rotation wakes the job; the timeout also catches keys wrapped under
                        // the old version by requests that raced the rotation.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(30),
                            keyring.rewrap_wake.notified(),
                        )
                        .await;
                    }
                    Ok(n) => {
                        done_in_backlog += n as u64;
                        tracing::debug!(event = "kek_rewrap_batch", data_keys = n);
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(event = "kek_rewrap_failed", error = %e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    }
}
