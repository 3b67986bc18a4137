//! Crypto-shredding in the keyring: the shred list (kept in the keyring's state file, so
//! restoring an older database cannot undo a shred) and forgetting a shredded patient's keys.
//! The two-admin approval around it is [`crate::shred`].

use carevault_store::WriteOp;
use serde::{Deserialize, Serialize};

use super::Keyring;
use crate::compartment::Compartment;
use crate::error::{Error, Result};

/// One crypto-shred, as kept in the keyring directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShredRecord {
    pub compartment: String,
    pub data_key_id: u64,
    pub at_us: i64,
    pub requested_by: String,
    pub approved_by: String,
    /// The keys of resources naming several patients, this one among them, shredded with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_key_ids: Vec<u64>,
}

impl Keyring {
    /// Whether `compartment` names a shredded patient (any one of several is enough).
    pub(super) fn is_shredded(&self, compartment: &str) -> bool {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if state.shredded.is_empty() {
            return false;
        }
        crate::compartment::patients(compartment)
            .any(|p| state.shredded.iter().any(|r| r.compartment == p))
    }

    /// The data key of a patient compartment exists (it can be shredded).
    pub async fn compartment_has_key(&self, compartment: &Compartment) -> Result<bool> {
        if self.is_shredded(compartment.as_str()) {
            return Ok(false);
        }
        Ok(self
            .store
            .data_key_by_compartment(compartment.as_str())
            .await?
            .is_some())
    }

    /// Crypto-shred `compartment`: record it in the keyring's shred list (durably, first), forget
    /// its key in memory, and return the store operation that deletes the wrapped key and every
    /// version sealed under it (commit it with the audit event).
    pub async fn shred(
        &self,
        compartment: &Compartment,
        requested_by: &str,
        approved_by: &str,
    ) -> Result<WriteOp> {
        let _one = self.admin.lock().await;
        // The store and the shred list keep the name as text.
        let compartment = compartment.as_str();
        if self.is_shredded(compartment) {
            return Err(Error::NotFound);
        }
        let row = self
            .store
            .data_key_by_compartment(compartment)
            .await?
            .ok_or(Error::NotFound)?;
        // Recorded so that a version sealed under one of them that raced the shred reads as
        // absent, not as damaged. A resource naming this patient among others sealed after this
        // read cannot exist: the shred is recorded before the keyring's lock is released, and
        // new keys are refused for shredded patients from then on.
        let shared_key_ids: Vec<u64> = self
            .store
            .data_keys_naming(compartment)
            .await?
            .into_iter()
            .filter(|id| *id != row.id)
            .collect();
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .shredded
            .push(ShredRecord {
                compartment: compartment.to_owned(),
                data_key_id: row.id,
                at_us: self.clock.now_us(),
                requested_by: requested_by.to_owned(),
                approved_by: approved_by.to_owned(),
                shared_key_ids: shared_key_ids.clone(),
            });
        if let Err(e) = self.save_state() {
            self.state
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .shredded
                .retain(|r| r.compartment != compartment);
            return Err(e);
        }
        for id in std::iter::once(row.id).chain(shared_key_ids) {
            self.keys.remove(id);
            self.names
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        self.compartments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| !crate::compartment::names_patient(name.as_str(), compartment));
        Ok(WriteOp::ShredCompartment {
            compartment: compartment.to_owned(),
            data_key_id: row.id,
        })
    }

    /// Apply every recorded shred to the database (after a restore, or a crash between the
    /// keyring and the database). Returns how many compartments still had a key in the database.
    pub async fn reapply_shreds(&self) -> Result<usize> {
        let shredded = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .shredded
            .clone();
        let mut applied = 0;
        for r in shredded {
            if self
                .store
                .data_key_by_compartment(&r.compartment)
                .await?
                .is_some()
            {
                applied += 1;
            }
            self.store
                .write(vec![WriteOp::ShredCompartment {
                    compartment: r.compartment.clone(),
                    data_key_id: r.data_key_id,
                }])
                .await?;
        }
        Ok(applied)
    }
}
