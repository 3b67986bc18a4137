//! Sealing and opening values under a compartment's data key, with associated data that binds
//! them to the environment and their owner.

use carevault_crypto::envelope;
use carevault_store::StoreError;
use zeroize::Zeroizing;

use super::{Keyring, NewDataKeys};
use crate::compartment::Compartment;
use crate::error::{Error, Result};

/// How often [`Keyring::seal`] makes a new key again after losing a race for it.
const NEW_KEY_ATTEMPTS: usize = 3;

impl Keyring {
    /// Seal `plaintext` under the data key of `compartment`; returns the key id and the
    /// envelope. A compartment without a key gets one in `new_keys`: the caller commits
    /// [`NewDataKeys::ops`] in the same transaction as the envelope, then calls
    /// [`Keyring::adopt`] (or [`NewDataKeys::clear`] if the write failed).
    pub async fn seal_in(
        &self,
        new_keys: &NewDataKeys,
        compartment: &Compartment,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<(u64, Vec<u8>)> {
        let (dek_id, cipher) = self.key_for_compartment(compartment, new_keys).await?;
        let sealed = envelope::seal(&cipher, dek_id, aad, plaintext)?;
        Ok((dek_id, sealed))
    }

    /// [`Keyring::seal_in`] for a caller that writes the envelope later in a transaction of
    /// its own (the compartment upgrade when the server opens): a new key is committed first,
    /// alone.
    pub async fn seal(
        &self,
        compartment: &Compartment,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<(u64, Vec<u8>)> {
        for _ in 0..NEW_KEY_ATTEMPTS {
            let new_keys = NewDataKeys::default();
            let sealed = self.seal_in(&new_keys, compartment, aad, plaintext).await?;
            if new_keys.is_empty() {
                return Ok(sealed);
            }
            let written = self.store.write(new_keys.before(Vec::new())).await;
            self.settle(&new_keys, &written);
            match written {
                Ok(()) => return Ok(sealed),
                // A concurrent write gave the compartment its key first, or the KEK version we
                // wrapped under was retired meanwhile: seal again.
                Err(StoreError::StaleKey) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(
            "key provider: the data key kept changing while it was made".into(),
        ))
    }

    /// Open an envelope; the data key is found from its header.
    pub async fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        Ok(self.open_with_compartment(aad, sealed).await?.0)
    }

    /// Open an envelope and say which compartment's key sealed it (a patient's, or not).
    pub async fn open_with_compartment(
        &self,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<(Vec<u8>, Compartment)> {
        let header = envelope::Header::parse(sealed)?;
        let (cipher, compartment) = self.key_by_id(header.dek_id).await?;
        Ok((envelope::open(&cipher, aad, sealed)?, compartment))
    }

    /// The compartment whose data key sealed `sealed`, without opening it.
    pub async fn compartment_of_sealed(&self, sealed: &[u8]) -> Result<Compartment> {
        let header = envelope::Header::parse(sealed)?;
        Ok(self.key_by_id(header.dek_id).await?.1)
    }

    /// A named 256-bit secret held in the keyring (wrapped by the KEK like a data key), for
    /// keys that are not AES data keys: the audit signing seed, HMAC keys.
    pub async fn secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>> {
        let row = self.data_key_row(&Compartment::secret(name)).await?;
        self.check_decryptable(&row)?;
        let dek = self.provider.unwrap(
            row.kek_version,
            &row.wrapped,
            &self.wrap_aad(&row.compartment),
        )?;
        Ok(Zeroizing::new(*dek.expose()))
    }

    /// Associated data binding a resource version's ciphertext to its environment, type, id
    /// and version number (the envelope header adds the data key id).
    pub fn resource_aad(&self, rtype: &str, id: &str, version: u32) -> Vec<u8> {
        format!(
            "carevault-resource\0{}\0{rtype}\0{id}\0{version}",
            self.env_id
        )
        .into_bytes()
    }
}
