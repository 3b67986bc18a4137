//! The environment's keyring: finds (or creates) the data key of a compartment, keeps unwrapped
//! data keys in a bounded cache, and seals/opens values with associated data that binds them to
//! the environment and their owner.
//!
//! Every data key belongs to one [`Compartment`] (a patient's, the environment's, the
//! credential secrets'; see [`crate::compartment`]). Named secrets (audit signing, audit HMAC, search-index keys) are data keys too, so they are
//! re-wrapped with every KEK rotation like a compartment's key.
//!
//! KEK versions, the minimum decryption version and the crypto-shred list are kept in
//! `keys/keyring.json` (mode 0600) beside the KEKs, not in the database: restoring an older
//! database file cannot undo a shred, because [`Keyring::reapply_shreds`] runs on every open.

mod data_keys;
mod data_rotation;
mod kek;
mod sealing;
mod shred;
mod state;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use carevault_crypto::{DataKeyCache, KeyProvider};
use carevault_store::Store;

use crate::clock::SharedClock;
use crate::compartment::Compartment;

pub use data_keys::NewDataKeys;
pub use data_rotation::ROTATED_COMPARTMENT_PREFIX;
pub use shred::ShredRecord;
pub use state::{KekVersionMeta, KeyringFile};
pub use status::{DataRotationStatus, KekVersionStatus, KeyStatus};

/// How many unwrapped data keys stay in memory.
const CACHE_CAPACITY: usize = 100_000;

pub struct Keyring {
    env_id: String,
    provider: Box<dyn KeyProvider>,
    store: Arc<dyn Store>,
    clock: SharedClock,
    keys: DataKeyCache,
    /// compartment -> data key id, so a hot compartment needs no database read.
    compartments: RwLock<HashMap<Compartment, u64>>,
    /// data key id -> compartment, to tell whose data a ciphertext is.
    names: RwLock<HashMap<u64, Compartment>>,
    /// KEK versions, minimum decryption version, shred list (persisted when `state_path` is set).
    state: RwLock<KeyringFile>,
    state_path: Option<PathBuf>,
    /// One administrative change (rotate, destroy, minimum version, shred) at a time.
    admin: tokio::sync::Mutex<()>,
    /// Wakes the re-wrap job after a rotation.
    rewrap_wake: tokio::sync::Notify,
    /// Data keys re-wrapped by this process (a metric).
    rewrapped: AtomicU64,
    /// Wakes the data-key rotation job after `rotate-data`.
    rotate_data_wake: tokio::sync::Notify,
    /// Resource versions re-sealed under new data keys by this process (a metric).
    resealed: AtomicU64,
    /// Dropped old data keys still in the memory cache, and when they were dropped: a read
    /// that fetched a row just before it was re-sealed can still open it for a short while.
    dropped: std::sync::Mutex<Vec<(u64, std::time::Instant)>>,
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
            state: RwLock::new(KeyringFile {
                min_decrypt_version: 1,
                ..KeyringFile::default()
            }),
            state_path: None,
            admin: tokio::sync::Mutex::new(()),
            rewrap_wake: tokio::sync::Notify::new(),
            rewrapped: AtomicU64::new(0),
            rotate_data_wake: tokio::sync::Notify::new(),
            resealed: AtomicU64::new(0),
            dropped: std::sync::Mutex::new(Vec::new()),
        }
        .with_provider_versions()
    }

    pub fn env_id(&self) -> &str {
        &self.env_id
    }

    pub fn provider_kind(&self) -> &'static str {
        self.provider.kind()
    }
}
