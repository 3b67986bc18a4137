//! The environment's keyring: finds (or creates) the data key of a compartment, keeps unwrapped
//! data keys in a bounded cache, and seals/opens values with associated data that binds them to
//! the environment and their owner.
//!
//! Compartments: `Patient/<id>` for a patient's data, [`ENVIRONMENT_COMPARTMENT`] for resources
//! outside any patient compartment, [`SECRETS_COMPARTMENT`] for credential secrets (TOTP).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aes_gcm::Aes256Gcm;
use carevault_crypto::{DataKey, DataKeyCache, KeyProvider, envelope};
use carevault_store::{DataKeyRow, Store, WriteOp};
use zeroize::Zeroizing;

use crate::clock::SharedClock;
use crate::error::{Error, Result};

pub const ENVIRONMENT_COMPARTMENT: &str = "environment";
pub const SECRETS_COMPARTMENT: &str = "secrets";

/// How many unwrapped data keys stay in memory.
const CACHE_CAPACITY: usize = 100_000;

pub struct Keyring {
    env_id: String,
    provider: Box<dyn KeyProvider>,
    store: Arc<dyn Store>,
    clock: SharedClock,
    keys: DataKeyCache,
    /// compartment -> data key id, so a hot compartment needs no database read.
    compartments: RwLock<HashMap<String, u64>>,
    /// data key id -> compartment, to tell whose data a ciphertext is.
    names: RwLock<HashMap<u64, Arc<str>>>,
}

impl Keyring {
    pub fn new(
        env_id: String,
        provider: Box<dyn KeyProvider>,
        store: Arc<dyn Store>,
        clock: SharedClock,
    ) -> Self {
        Self {
            env_id,
            provider,
            store,
            clock,
            keys: DataKeyCache::new(CACHE_CAPACITY),
            compartments: RwLock::new(HashMap::new()),
            names: RwLock::new(HashMap::new()),
        }
    }

    pub fn env_id(&self) -> &str {
        &self.env_id
    }

    /// Seal `plaintext` under the data key of `compartment`; returns the key id and the envelope.
    pub async fn seal(
        &self,
        compartment: &str,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<(u64, Vec<u8>)> {
        let (dek_id, cipher) = self.key_for_compartment(compartment).await?;
        let sealed = envelope::seal(&cipher, dek_id, aad, plaintext)?;
        Ok((dek_id, sealed))
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
    ) -> Result<(Vec<u8>, Arc<str>)> {
        let header = envelope::Header::parse(sealed)?;
        let (cipher, compartment) = self.key_by_id(header.dek_id).await?;
        Ok((envelope::open(&cipher, aad, sealed)?, compartment))
    }

    /// A named 256-bit secret held in the keyring (wrapped by the KEK like a data key), for
    /// keys that are not AES data keys: the audit signing seed, HMAC keys.
    pub async fn secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>> {
        let row = self.data_key_row(&format!("secret:{name}")).await?;
        let dek = self.provider.unwrap(
            row.kek_version,
            &row.wrapped,
            &self.wrap_aad(&row.compartment),
        )?;
        Ok(Zeroizing::new(*dek.expose()))
    }

    async fn key_for_compartment(&self, compartment: &str) -> Result<(u64, Arc<Aes256Gcm>)> {
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
    async fn data_key_row(&self, compartment: &str) -> Result<DataKeyRow> {
        if let Some(row) = self.store.data_key_by_compartment(compartment).await? {
            return Ok(row);
        }
        let dek = DataKey::generate()?;
        let (kek_version, wrapped) = self.provider.wrap(&dek, &self.wrap_aad(compartment))?;
        self.store
            .write(vec![WriteOp::InsertDataKeyIfAbsent {
                compartment: compartment.to_owned(),
                wrapped,
                kek_version,
                created_at: self.clock.now_secs(),
            }])
            .await?;
        self.store
            .data_key_by_compartment(compartment)
            .await?
            .ok_or_else(|| Error::Internal("data key vanished after insert".into()))
    }

    async fn key_by_id(&self, id: u64) -> Result<(Arc<Aes256Gcm>, Arc<str>)> {
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
        let row = self.store.data_key_by_id(id).await?.ok_or_else(|| {
            Error::Integrity("data key referenced by a ciphertext does not exist".into())
        })?;
        self.unwrap_row(&row)
    }

    fn unwrap_row(&self, row: &DataKeyRow) -> Result<(Arc<Aes256Gcm>, Arc<str>)> {
        let name: Arc<str> = Arc::from(row.compartment.as_str());
        self.names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.id, name.clone());
        if let Some(cipher) = self.keys.get(row.id) {
            return Ok((cipher, name));
        }
        let dek = self.provider.unwrap(
            row.kek_version,
            &row.wrapped,
            &self.wrap_aad(&row.compartment),
        )?;
        Ok((self.keys.insert(row.id, dek.cipher()), name))
    }

    fn wrap_aad(&self, compartment: &str) -> Vec<u8> {
        format!("carevault-dek\0{}\0{}", self.env_id, compartment).into_bytes()
    }
}
