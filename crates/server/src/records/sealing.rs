//! Opening sealed rows: each version is sealed under its compartment's data key, bound to its
//! environment, type, id and version number.

use carevault_fhir::{ResourceId, ResourceType};
use carevault_store::ResourceRow;

use super::{Records, Version};
use crate::error::{Error, Result};

impl Records {
    pub(super) async fn open_row(
        &self,
        rtype: ResourceType,
        id: &ResourceId,
        row: ResourceRow,
    ) -> Result<Version> {
        let aad = self.aad(rtype, id, row.version);
        let (json, compartment) = match self.keyring.open_with_compartment(&aad, &row.body).await {
            Ok(opened) => opened,
            // `key rotate-data` may have re-sealed this version and dropped the key it named
            // between our fetch and now (from another node, which keeps no grace copy of the
            // dropped key): the stored row then holds another ciphertext, which opens. A row
            // that is unchanged fails as before (tampering or corruption).
            Err(Error::Integrity(e)) => {
                let fresh = self
                    .store
                    .resource_version(rtype.as_str(), id.as_str(), row.version)
                    .await?;
                match fresh {
                    Some(fresh) if fresh.body != row.body => {
                        self.keyring
                            .open_with_compartment(&aad, &fresh.body)
                            .await?
                    }
                    _ => return Err(Error::Integrity(e)),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Version {
            rtype,
            id: id.clone(),
            version: row.version,
            last_updated_us: row.last_updated_us,
            deleted: row.deleted,
            json: if row.deleted { Vec::new() } else { json },
            compartment,
        })
    }

    /// Associated data binding a version to its environment, type, id and version number.
    pub(super) fn aad(&self, rtype: ResourceType, id: &ResourceId, version: u32) -> Vec<u8> {
        self.keyring
            .resource_aad(rtype.as_str(), id.as_str(), version)
    }
}
