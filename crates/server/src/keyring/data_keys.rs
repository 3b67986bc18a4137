//! Data keys: found (or created) per compartment, unwrapped under the KEK, cached in memory.
//!
//! A compartment's first key is made while its first write is prepared and inserted in that
//! write's own transaction ([`NewDataKeys`]): a write that fails or is refused leaves no key.

use std::sync::{Arc, Mutex};

use carevault_crypto::Cipher;
use carevault_crypto::DataKey;
use carevault_store::{DataKeyRow, StoreError, WriteOp};

use super::Keyring;
use crate::compartment::Compartment;
use crate::error::{Error, Result};

/// Data keys made while one write was prepared, for compartments that had none. Their rows go
/// into the same store transaction as the data sealed under them ([`NewDataKeys::ops`], before
/// that data); the keyring learns them only once that transaction has committed
/// ([`Keyring::adopt`]). If it fails, [`NewDataKeys::clear`] drops them: a retry seals under the
/// key a concurrent write gave the compartment, or makes a new one.
#[derive(Default)]
pub struct NewDataKeys {
    keys: Mutex<Vec<NewKey>>,
}

struct NewKey {
    id: u64,
    compartment: Compartment,
    dek: DataKey,
    cipher: Arc<Cipher>,
    wrapped: Vec<u8>,
    kek_version: u32,
    created_at: i64,
}

impl NewDataKeys {
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The inserts of the new keys, to commit before the writes sealed under them.
    pub fn ops(&self) -> Vec<WriteOp> {
        self.lock()
            .iter()
            .map(|k| WriteOp::InsertDataKey {
                id: k.id,
                compartment: k.compartment.to_string(),
                wrapped: k.wrapped.clone(),
                kek_version: k.kek_version,
                created_at: k.created_at,
            })
            .collect()
    }

    /// `ops` after the inserts of the new keys (the data sealed under them refers to them): the
    /// write to commit, then to [`Keyring::settle`].
    pub fn before(&self, ops: Vec<WriteOp>) -> Vec<WriteOp> {
        let mut all = self.ops();
        all.extend(ops);
        all
    }

    /// Drop the new keys: their write did not commit.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn get(&self, compartment: &Compartment) -> Option<(u64, Arc<Cipher>)> {
        self.lock()
            .iter()
            .find(|k| k.compartment == *compartment)
            .map(|k| (k.id, k.cipher.clone()))
    }

    /// Add a key, unless one for its compartment was added meanwhile: the key to use.
    fn add(&self, key: NewKey) -> (u64, Arc<Cipher>) {
        let mut keys = self.lock();
        if let Some(k) = keys.iter().find(|k| k.compartment == key.compartment) {
            return (k.id, k.cipher.clone());
        }
        let used = (key.id, key.cipher.clone());
        keys.push(key);
        used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<NewKey>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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

    /// The live key of `compartment`: cached, made earlier for the same write (`new_keys`),
    /// stored, or else made now and added to `new_keys` (nothing is written here).
    pub(super) async fn key_for_compartment(
        &self,
        compartment: &Compartment,
        new_keys: &NewDataKeys,
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
        if let Some(new) = new_keys.get(compartment) {
            return Ok(new);
        }
        if let Some(row) = self
            .store
            .data_key_by_compartment(compartment.as_str())
            .await?
        {
            let (cipher, _) = self.unwrap_row(&row)?;
            self.compartments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(compartment.clone(), row.id);
            return Ok((row.id, cipher));
        }
        if self.is_shredded(compartment.as_str()) {
            // A shredded patient's compartment never gets a new key: writes into it answer 410.
            return Err(Error::Gone);
        }
        let id = self.store.reserve_data_key_id().await?;
        let dek = DataKey::generate()?;
        let (kek_version, wrapped) = self
            .provider
            .wrap(&dek, &self.wrap_aad(compartment.as_str()))?;
        Ok(new_keys.add(NewKey {
            id,
            compartment: compartment.clone(),
            cipher: Arc::new(dek.cipher()),
            dek,
            wrapped,
            kek_version,
            created_at: self.clock.now_secs(),
        }))
    }

    /// After the write of [`NewDataKeys::before`]: learn its new keys if it committed, drop
    /// them if it did not.
    pub fn settle<T, E>(&self, new_keys: &NewDataKeys, written: &std::result::Result<T, E>) {
        match written {
            Ok(_) => self.adopt(new_keys),
            Err(_) => new_keys.clear(),
        }
    }

    /// Learn the keys of a write that committed (and forget them in `new_keys`).
    pub fn adopt(&self, new_keys: &NewDataKeys) {
        for key in new_keys.lock().drain(..) {
            self.keys.insert(key.id, key.dek.cipher());
            self.names
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.id, key.compartment.clone());
            self.compartments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.compartment, key.id);
        }
    }

    /// The wrapped key of a named secret, created on first use (when the server opens, never
    /// by a request). If a concurrent opening created it first, the insert is ignored and both
    /// use the winner's key.
    pub(super) async fn data_key_row(&self, compartment: &Compartment) -> Result<DataKeyRow> {
        let compartment = compartment.as_str();
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

    pub(super) async fn key_by_id(&self, id: u64) -> Result<(Arc<Cipher>, Compartment)> {
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

    pub(super) fn unwrap_row(&self, row: &DataKeyRow) -> Result<(Arc<Cipher>, Compartment)> {
        let name = Compartment::stored(row.compartment.as_str());
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

    /// Forget the compartments whose cached data key is one of `dek_ids` (a commit found one of
    /// them rotated), so that the next seal looks the live key up again.
    pub fn forget_data_keys(&self, dek_ids: &[u64]) {
        self.compartments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, id| !dek_ids.contains(id));
    }

    /// Forget which data key a compartment uses (it was rotated, perhaps by another node): the
    /// next seal reads the live key from the database.
    pub fn forget_compartment(&self, compartment: &Compartment) {
        self.compartments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(compartment);
    }

    pub(super) fn wrap_aad(&self, compartment: &str) -> Vec<u8> {
        format!("carevault-dek\0{}\0{}", self.env_id, compartment).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use carevault_crypto::FileKeyProvider;
    use carevault_store::{NewResourceVersion, ResourceRow, SqliteStore, Store};

    use super::*;
    use crate::clock::ManualClock;

    fn put(id: &str, dek_id: u64, body: Vec<u8>) -> WriteOp {
        WriteOp::PutResource(NewResourceVersion {
            row: ResourceRow {
                rtype: "Patient".into(),
                id: id.into(),
                version: 1,
                last_updated_us: 1,
                deleted: false,
                dek_id,
                body,
            },
            expected_current: None,
        })
    }

    /// Two nodes (or two processes' stores over one SQLite file) prepare the first write of
    /// one new compartment at once: one key commits, with its write; the other write is stale,
    /// seals again under the winner's key and commits too. Neither node learns a key that did
    /// not commit.
    async fn first_writes_race(a_store: Arc<dyn Store>, b_store: Arc<dyn Store>, keys: &Path) {
        let clock = Arc::new(ManualClock::at_secs(1_800_000_000));
        let a = Keyring::new(
            "env-test".into(),
            Box::new(FileKeyProvider::create(keys).unwrap()),
            a_store.clone(),
            clock.clone(),
        );
        let b = Keyring::new(
            "env-test".into(),
            Box::new(FileKeyProvider::open(keys).unwrap()),
            b_store.clone(),
            clock,
        );
        let aad = |id: &str| a.resource_aad("Patient", id, 1);
        let patient_p = Compartment::stored("Patient/p");
        let (ka, kb) = (NewDataKeys::default(), NewDataKeys::default());
        let (ida, sa) = a.seal_in(&ka, &patient_p, &aad("x"), b"a").await.unwrap();
        let (idb, sb) = b.seal_in(&kb, &patient_p, &aad("y"), b"b").await.unwrap();
        assert_ne!(ida, idb);
        // Sealing wrote nothing, and the keyring knows no key before its write commits.
        assert_eq!(
            a_store.data_key_by_compartment("Patient/p").await.unwrap(),
            None
        );
        assert!(a.open(&aad("x"), &sa).await.is_err());

        let mut ops = ka.ops();
        ops.push(put("x", ida, sa));
        a_store.write(ops).await.unwrap();
        a.adopt(&ka);
        assert!(ka.is_empty());
        let mut ops = kb.ops();
        ops.push(put("y", idb, sb));
        assert!(matches!(
            b_store.write(ops).await,
            Err(StoreError::StaleKey)
        ));
        kb.clear();
        assert!(
            b.key_by_id(idb).await.is_err(),
            "the loser's key is not kept"
        );
        let (again, sb) = b.seal_in(&kb, &patient_p, &aad("y"), b"b").await.unwrap();
        assert_eq!(again, ida, "sealed again under the winner's key");
        assert!(kb.is_empty());
        b_store.write(vec![put("y", again, sb)]).await.unwrap();

        for node in [&a, &b] {
            for (id, plain) in [("x", b"a"), ("y", b"b")] {
                let row = b_store
                    .resource_current("Patient", id)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(node.open(&aad(id), &row.body).await.unwrap(), plain);
            }
        }
        let keys: u64 = a_store
            .data_key_counts()
            .await
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(keys, 1);
    }

    /// Two processes' stores on one SQLite file.
    #[tokio::test]
    async fn the_loser_of_a_first_write_race_seals_again_under_the_winners_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        first_writes_race(a, b, &dir.path().join("keys")).await;
    }

    /// Two nodes on one PostgreSQL database.
    #[tokio::test]
    async fn the_loser_of_a_first_write_race_seals_again_on_postgres() {
        let db = crate::test_postgres::TestPostgres::create("dekrace");
        let dir = tempfile::tempdir().unwrap();
        let a: Arc<dyn Store> = Arc::new(db.store().await);
        let b: Arc<dyn Store> = Arc::new(db.store().await);
        first_writes_race(a, b, &dir.path().join("keys")).await;
    }
}
