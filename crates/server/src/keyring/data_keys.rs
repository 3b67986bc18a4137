//! Data keys: found (or created) per compartment, unwrapped under the KEK, cached in memory.

use std::sync::Arc;

use carevault_crypto::Cipher;
use carevault_crypto::DataKey;
use carevault_store::{DataKeyRow, StoreError, WriteOp};

use super::Keyring;
use crate::error::{Error, Result};

impl Keyring {
    pub(super) fn check_decryptable(&self, row: &DataKeyRow) -> Result<()> {
        if self.is_shredded(&row.compartment) {
            return Err(Error::NotFound);
        }
        let min = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .min_decrypt_version;
        if row.kek_version < min {
            return Err(Error::Unavailable(format!(
                "key provider: data key {} is wrapped under retired KEK version v{}",
                row.id, row.kek_version
            )));
        }
        Ok(())
    }

    pub(super) async fn key_for_compartment(
        &self,
        compartment: &str,
    ) -> Result<(u64, Arc<Cipher>)> {
        let known = self
            .compartments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(compartment)
            .copied();
        if let Some(id) = known {
            return Ok((id, self.key_by_id(id).await?.0));
        }
        let row = self.data_key_row(compartment).await?;
        let (cipher, _) = self.unwrap_row(&row)?;
        self.compartments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(compartment.to_owned(), row.id);
        Ok((row.id, cipher))
    }

    /// The wrapped key of a compartment, created on first use. If a concurrent request
    /// created it first, the insert is ignored and both use the winner's key.
    pub(super) async fn data_key_row(&self, compartment: &str) -> Result<DataKeyRow> {
        if let Some(row) = self.store.data_key_by_compartment(compartment).await? {
            return Ok(row);
        }
        if self.is_shredded(compartment) {
            // A shredded patient's compartment never gets a new key: writes into it answer 410.
            return Err(Error::Gone);
        }
        let dek = DataKey::generate()?;
        let mut attempts = 0;
        loop {
            let (kek_version, wrapped) = self.provider.wrap(&dek, &self.wrap_aad(compartment))?;
            let inserted = self
                .store
                .write(vec![WriteOp::InsertDataKeyIfAbsent {
                    compartment: compartment.to_owned(),
                    wrapped,
                    kek_version,
                    created_at: self.clock.now_secs(),
                }])
                .await;
            match inserted {
                Ok(()) => break,
                // The KEK version was retired from wrapping (a destroy is under way) after our
                // wrap: wrap again under the version that is active now.
                Err(StoreError::StaleKey) if attempts < 2 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
        self.store
            .data_key_by_compartment(compartment)
            .await?
            .ok_or_else(|| Error::Internal("data key vanished after insert".into()))
    }

    pub(super) async fn key_by_id(&self, id: u64) -> Result<(Arc<Cipher>, Arc<str>)> {
        if let Some(cipher) = self.keys.get(id) {
            let name = self
                .names
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned();
            if let Some(name) = name {
                return Ok((cipher, name));
            }
        }
        let Some(row) = self.store.data_key_by_id(id).await? else {
            let shredded = self
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .shredded
                .iter()
                .any(|r| r.data_key_id == id || r.shared_key_ids.contains(&id));
            // A version sealed under a shredded key (one that raced the shred) reads as absent.
            return Err(if shredded {
                Error::NotFound
            } else {
                Error::Integrity("data key referenced by a ciphertext does not exist".into())
            });
        };
        self.unwrap_row(&row)
    }

    pub(super) fn unwrap_row(&self, row: &DataKeyRow) -> Result<(Arc<Cipher>, Arc<str>)> {
        let name: Arc<str> = Arc::from(row.compartment.as_str());
        self.names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.id, name.clone());
        if let Some(cipher) = self.keys.get(row.id) {
            return Ok((cipher, name));
        }
        self.check_decryptable(row)?;
        let dek = self.provider.unwrap(
            row.kek_version,
            &row.wrapped,
            &self.wrap_aad(&row.compartment),
        )?;
        Ok((self.keys.insert(row.id, dek.cipher()), name))
    }

    /// Forget which data key a compartment uses (it was rotated, perhaps by another node): the
    /// next seal reads the live key from the database.
    /// Forget the compartments whose cached data key is one of `dek_ids` (a commit found one of
    /// them rotated), so that the next seal looks the live key up again.
    pub fn forget_data_keys(&self, dek_ids: &[u64]) {
        self.compartments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, id| !dek_ids.contains(id));
    }

    pub fn forget_compartment(&self, compartment: &str) {
        self.compartments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(compartment);
    }

    pub(super) fn wrap_aad(&self, compartment: &str) -> Vec<u8> {
        format!("carevault-dek\0{}\0{}", self.env_id, compartment).into_bytes()
    }
}
