//! The environment's keyring: finds (or creates) the data key of a compartment, keeps unwrapped
//! data keys in a bounded cache, and seals/opens values with associated data that binds them to
//! the environment and their owner.
//!
//! Compartments: `Patient/<id>` for a patient's data, [`ENVIRONMENT_COMPARTMENT`] for resources
//! outside any patient compartment, [`SECRETS_COMPARTMENT`] for credential secrets (TOTP).
//! Named secrets (audit signing, audit HMAC, search-index keys) are data keys too, so they are
//! re-wrapped with every KEK rotation like a compartment's key.
//!
//! KEK versions, the minimum decryption version and the crypto-shred list are kept in
//! `keys/keyring.json` (mode 0600) beside the KEKs, not in the database: restoring an older
//! database file cannot undo a shred, because [`Keyring::reapply_shreds`] runs on every open.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use carevault_crypto::Cipher;
use carevault_crypto::{DataKey, DataKeyCache, KeyProvider, envelope};
use carevault_store::{DataKeyRow, Store, StoreError, WriteOp};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock::SharedClock;
use crate::error::{Error, Result};

pub const ENVIRONMENT_COMPARTMENT: &str = crate::compartment::ENVIRONMENT;
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

/// Which compartments `rotate-data` gives new data keys: patients' (their data lives only in
/// resource versions, which the job re-seals). The environment's key also seals shred reasons
/// inside hash-chained audit events, the secrets compartment and named secrets are not
/// resource data, so they keep their keys (and are re-wrapped with every KEK rotation).
pub const ROTATED_COMPARTMENT_PREFIX: &str = "Patient/";

/// How long a dropped old data key stays in the memory cache.
const DROPPED_KEY_GRACE: Duration = Duration::from_secs(10);

/// `keys/keyring.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    versions: Vec<KekVersionMeta>,
    /// Unwrapping under an older KEK version is refused.
    min_decrypt_version: u32,
    shredded: Vec<ShredRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KekVersionMeta {
    version: u32,
    created_at_us: i64,
    destroyed_at_us: Option<i64>,
}

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

/// The state of one KEK version.
#[derive(Clone, Debug, Serialize)]
pub struct KekVersionStatus {
    pub version: u32,
    /// `active`, `decrypt-only`, `retired` (below the minimum decryption version), `destroyed`,
    /// or `missing` (recorded but not held by the provider).
    pub state: &'static str,
    pub created_at: String,
    pub destroyed_at: Option<String>,
    /// How many data keys it still wraps.
    pub data_keys: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyStatus {
    pub provider: &'static str,
    pub active_version: u32,
    pub min_decrypt_version: u32,
    pub versions: Vec<KekVersionStatus>,
    /// Data keys not yet wrapped under the active version.
    pub rewrap_remaining: u64,
    pub data_keys_total: u64,
    pub shredded_compartments: usize,
    /// Progress of `key rotate-data` (all zero when none is under way).
    pub data_rotation: DataRotationStatus,
}

/// How far a data-key rotation has come.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DataRotationStatus {
    /// Compartments still waiting for their new data key.
    pub keys_to_rotate: u64,
    /// Old data keys not yet dropped.
    pub keys_retiring: u64,
    /// Resource versions still sealed under an old (or to-be-rotated) data key.
    pub versions_remaining: u64,
    /// Nothing left to do.
    pub complete: bool,
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

    /// Keep the keyring's state in `dir/keyring.json` (created on first use). Versions the
    /// provider holds but the file does not know are recorded as created now.
    pub fn with_state_dir(mut self, dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let file: KeyringFile = serde_json::from_slice(&bytes).map_err(|_| {
                    Error::Unavailable(format!("key store: {STATE_FILE} is damaged"))
                })?;
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = file;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "key store: cannot read {STATE_FILE}: {}",
                    e.kind()
                )));
            }
        }
        self.state_path = Some(path);
        self = self.with_provider_versions();
        self.save_state()?;
        Ok(self)
    }

    fn with_provider_versions(self) -> Self {
        {
            let now = self.clock.now_us();
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            for v in self.provider.versions() {
                if !state.versions.iter().any(|m| m.version == v) {
                    state.versions.push(KekVersionMeta {
                        version: v,
                        created_at_us: now,
                        destroyed_at_us: None,
                    });
                }
            }
            state.versions.sort_by_key(|m| m.version);
            state.min_decrypt_version = state.min_decrypt_version.max(1);
        }
        self
    }

    fn save_state(&self) -> Result<()> {
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        let bytes = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec_pretty(&*state).map_err(|e| Error::Internal(e.to_string()))?
        };
        let io = |what: &str, e: std::io::Error| {
            Error::Unavailable(format!("key store: {what} {STATE_FILE}: {}", e.kind()))
        };
        let tmp = path.with_extension("json.tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create", e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("cannot write", e))?;
        fs::rename(&tmp, path).map_err(|e| io("cannot replace", e))?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("cannot sync the directory of", e))?;
        }
        Ok(())
    }

    /// Whether `compartment` names a shredded patient (any one of several is enough).
    fn is_shredded(&self, compartment: &str) -> bool {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if state.shredded.is_empty() {
            return false;
        }
        crate::compartment::patients(compartment)
            .any(|p| state.shredded.iter().any(|r| r.compartment == p))
    }

    fn check_decryptable(&self, row: &DataKeyRow) -> Result<()> {
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

    /// The compartment whose data key sealed `sealed`, without opening it.
    pub async fn compartment_of_sealed(&self, sealed: &[u8]) -> Result<Arc<str>> {
        let header = envelope::Header::parse(sealed)?;
        Ok(self.key_by_id(header.dek_id).await?.1)
    }

    /// A named 256-bit secret held in the keyring (wrapped by the KEK like a data key), for
    /// keys that are not AES data keys: the audit signing seed, HMAC keys.
    pub async fn secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>> {
        let row = self.data_key_row(&format!("secret:{name}")).await?;
        self.check_decryptable(&row)?;
        let dek = self.provider.unwrap(
            row.kek_version,
            &row.wrapped,
            &self.wrap_aad(&row.compartment),
        )?;
        Ok(Zeroizing::new(*dek.expose()))
    }

    async fn key_for_compartment(&self, compartment: &str) -> Result<(u64, Arc<Cipher>)> {
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

    async fn key_by_id(&self, id: u64) -> Result<(Arc<Cipher>, Arc<str>)> {
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

    fn unwrap_row(&self, row: &DataKeyRow) -> Result<(Arc<Cipher>, Arc<str>)> {
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

    /// Associated data binding a resource version's ciphertext to its environment, type, id
    /// and version number (the envelope header adds the data key id).
    pub fn resource_aad(&self, rtype: &str, id: &str, version: u32) -> Vec<u8> {
        format!(
            "carevault-resource\0{}\0{rtype}\0{id}\0{version}",
            self.env_id
        )
        .into_bytes()
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

    fn wrap_aad(&self, compartment: &str) -> Vec<u8> {
        format!("carevault-dek\0{}\0{}", self.env_id, compartment).into_bytes()
    }

    pub fn provider_kind(&self) -> &'static str {
        self.provider.kind()
    }

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

    pub async fn status(&self) -> Result<KeyStatus> {
        let counts: HashMap<u32, u64> = self.store.data_key_counts().await?.into_iter().collect();
        let rotation = self.store.data_rotation_progress().await?;
        let active = self.provider.active_version();
        let held = self.provider.versions();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        let versions = state
            .versions
            .iter()
            .map(|m| KekVersionStatus {
                version: m.version,
                state: if m.destroyed_at_us.is_some() {
                    // Still held by the provider: the destruction did not complete.
                    if held.contains(&m.version) {
                        "destroy-failed"
                    } else {
                        "destroyed"
                    }
                } else if !held.contains(&m.version) {
                    "missing"
                } else if m.version == active {
                    "active"
                } else if m.version < state.min_decrypt_version {
                    "retired"
                } else {
                    "decrypt-only"
                },
                created_at: crate::clock::fhir_instant(m.created_at_us),
                destroyed_at: m.destroyed_at_us.map(crate::clock::fhir_instant),
                data_keys: counts.get(&m.version).copied().unwrap_or(0),
            })
            .collect();
        Ok(KeyStatus {
            provider: self.provider.kind(),
            active_version: active,
            min_decrypt_version: state.min_decrypt_version,
            versions,
            rewrap_remaining: counts
                .iter()
                .filter(|(v, _)| **v != active)
                .map(|(_, n)| n)
                .sum(),
            data_keys_total: counts.values().sum(),
            shredded_compartments: state.shredded.len(),
            data_rotation: DataRotationStatus {
                keys_to_rotate: rotation.keys_to_rotate,
                keys_retiring: rotation.keys_retiring,
                versions_remaining: rotation.versions_remaining,
                complete: rotation == carevault_store::DataRotationProgress::default(),
            },
        })
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
            compartments.push(row.compartment.as_str());
        }
        if ops.is_empty() {
            return Ok(0);
        }
        self.store.write(ops).await?;
        for c in compartments {
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
        let mut live: HashMap<Arc<str>, Option<(u64, Arc<Cipher>)>> = HashMap::new();
        let mut ops = Vec::with_capacity(rows.len());
        for row in rows {
            let (old, compartment) = match self.key_by_id(row.dek_id).await {
                Ok(k) => k,
                // Shredded meanwhile: the shred deletes the version too.
                Err(Error::NotFound) => continue,
                Err(e) => return Err(e),
            };
            if !live.contains_key(&compartment) {
                let key = match self.store.data_key_by_compartment(&compartment).await? {
                    Some(r) if !self.is_shredded(&compartment) => {
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

    /// Prometheus text for the keyring: active version, data keys per version, re-wrap backlog.
    pub async fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let Ok(status) = self.status().await else {
            return out;
        };
        crate::metrics::single(
            &mut out,
            "carevault_kek_active_version",
            "gauge",
            "The key-encryption key version new wraps use.",
            status.active_version,
        );
        crate::metrics::single(
            &mut out,
            "carevault_kek_rewrap_remaining",
            "gauge",
            "Data keys not yet re-wrapped under the active key-encryption key.",
            status.rewrap_remaining,
        );
        crate::metrics::family(
            &mut out,
            "carevault_kek_data_keys",
            "gauge",
            "Data keys wrapped under each key-encryption key version.",
        );
        for v in &status.versions {
            let _ = writeln!(
                out,
                "carevault_kek_data_keys{{version=\"{}\"}} {}",
                v.version, v.data_keys
            );
        }
        crate::metrics::single(
            &mut out,
            "carevault_kek_rewrapped_total",
            "counter",
            "Data keys re-wrapped by this process.",
            self.rewrapped.load(Ordering::Relaxed),
        );
        crate::metrics::single(
            &mut out,
            "carevault_dek_rotation_remaining_versions",
            "gauge",
            "Resource versions still sealed under a data key that is being rotated.",
            status.data_rotation.versions_remaining,
        );
        crate::metrics::single(
            &mut out,
            "carevault_dek_rotation_pending_keys",
            "gauge",
            "Data keys marked for rotation that have no new generation yet.",
            status.data_rotation.keys_to_rotate,
        );
        crate::metrics::single(
            &mut out,
            "carevault_dek_rotation_retiring_keys",
            "gauge",
            "Old data keys not yet dropped.",
            status.data_rotation.keys_retiring,
        );
        crate::metrics::single(
            &mut out,
            "carevault_dek_resealed_total",
            "counter",
            "Resource versions re-sealed under new data keys by this process.",
            self.resealed.load(Ordering::Relaxed),
        );
        out
    }

    /// The data key of a patient compartment exists (it can be shredded).
    pub async fn compartment_has_key(&self, compartment: &str) -> Result<bool> {
        if self.is_shredded(compartment) {
            return Ok(false);
        }
        Ok(self
            .store
            .data_key_by_compartment(compartment)
            .await?
            .is_some())
    }

    /// Crypto-shred `compartment`: record it in the keyring's shred list (durably, first), forget
    /// its key in memory, and return the store operation that deletes the wrapped key and every
    /// version sealed under it (commit it with the audit event).
    pub async fn shred(
        &self,
        compartment: &str,
        requested_by: &str,
        approved_by: &str,
    ) -> Result<WriteOp> {
        let _one = self.admin.lock().await;
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
            .retain(|name, _| !crate::compartment::names_patient(name, compartment));
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

const STATE_FILE: &str = "keyring.json";
