//! Key providers: who holds the key-encryption key (KEK) and wraps data keys with it.
//!
//! The `file` provider keeps each KEK version in its own file (`kek-v1.key`, mode 0600) in a
//! directory of mode 0700. An HSM provider (PKCS#11) implements the same trait.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;

use crate::keys::DataKey;
use crate::{CryptoError, envelope};

/// Wraps and unwraps data keys under a versioned key-encryption key.
pub trait KeyProvider: Send + Sync {
    /// Short name for status output and logs (`file`, `pkcs11`).
    fn kind(&self) -> &'static str;
    /// The KEK version new wraps use.
    fn active_version(&self) -> u32;
    /// Wrap `dek` under the active KEK version. `aad` binds the wrapped key to its owner
    /// (environment and compartment), so a wrapped key copied to another row fails to unwrap.
    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<(u32, Vec<u8>), CryptoError>;
    fn unwrap(&self, kek_version: u32, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, CryptoError>;
}

/// KEKs in files under one directory.
pub struct FileKeyProvider {
    dir: PathBuf,
    keks: BTreeMap<u32, Aes256Gcm>,
}

const KEK_PREFIX: &str = "kek-v";
const KEK_SUFFIX: &str = ".key";

impl FileKeyProvider {
    /// Create the key directory (0700) with a fresh KEK version 1 (0600). Refuses to touch a
    /// directory that already holds a KEK.
    pub fn create(dir: &Path) -> Result<Self, CryptoError> {
        fs::create_dir_all(dir).map_err(|e| key_store("cannot create key directory", &e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| key_store("cannot restrict key directory", &e))?;
        if !list_versions(dir)?.is_empty() {
            return Err(CryptoError::KeyStore(
                "key directory already holds a key-encryption key".into(),
            ));
        }
        write_kek(dir, 1, &DataKey::generate()?)?;
        Self::open(dir)
    }

    /// Load every KEK version from `dir`. Refuses keys readable by anyone but the owner.
    pub fn open(dir: &Path) -> Result<Self, CryptoError> {
        let meta = fs::metadata(dir).map_err(|e| key_store("cannot read key directory", &e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CryptoError::KeyStore(
                "key directory is accessible to other users; it must be mode 0700".into(),
            ));
        }
        let mut keks = BTreeMap::new();
        for version in list_versions(dir)? {
            let path = kek_path(dir, version);
            let meta = fs::metadata(&path).map_err(|e| key_store("cannot read key file", &e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(CryptoError::KeyStore(format!(
                    "key file {KEK_PREFIX}{version}{KEK_SUFFIX} is accessible to other users; it must be mode 0600"
                )));
            }
            let bytes = zeroize::Zeroizing::new(
                fs::read(&path).map_err(|e| key_store("cannot read key file", &e))?,
            );
            let key = DataKey::from_bytes(&bytes).map_err(|_| {
                CryptoError::KeyStore(format!(
                    "key file {KEK_PREFIX}{version}{KEK_SUFFIX} is not a 256-bit key"
                ))
            })?;
            keks.insert(version, key.cipher());
        }
        if keks.is_empty() {
            return Err(CryptoError::KeyStore("no key-encryption key found".into()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            keks,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keks.keys().copied().collect()
    }
}

impl KeyProvider for FileKeyProvider {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn active_version(&self) -> u32 {
        // `open` refuses an empty key directory, so there is always a last version.
        self.keks.keys().next_back().copied().unwrap_or(1)
    }

    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<(u32, Vec<u8>), CryptoError> {
        let version = self.active_version();
        let kek = self
            .keks
            .get(&version)
            .ok_or(CryptoError::UnknownKekVersion(version))?;
        let wrapped = envelope::seal(kek, u64::from(version), aad, dek.expose())?;
        Ok((version, wrapped))
    }

    fn unwrap(&self, kek_version: u32, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, CryptoError> {
        let kek = self
            .keks
            .get(&kek_version)
            .ok_or(CryptoError::UnknownKekVersion(kek_version))?;
        if envelope::Header::parse(wrapped)?.dek_id != u64::from(kek_version) {
            return Err(CryptoError::Unauthentic);
        }
        let bytes = zeroize::Zeroizing::new(envelope::open(kek, aad, wrapped)?);
        DataKey::from_bytes(&bytes)
    }
}

fn kek_path(dir: &Path, version: u32) -> PathBuf {
    dir.join(format!("{KEK_PREFIX}{version}{KEK_SUFFIX}"))
}

fn list_versions(dir: &Path) -> Result<Vec<u32>, CryptoError> {
    let mut versions = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| key_store("cannot list key directory", &e))? {
        let entry = entry.map_err(|e| key_store("cannot list key directory", &e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(v) = name
            .strip_prefix(KEK_PREFIX)
            .and_then(|rest| rest.strip_suffix(KEK_SUFFIX))
            .and_then(|v| v.parse::<u32>().ok())
        {
            versions.push(v);
        }
    }
    versions.sort_unstable();
    Ok(versions)
}

fn write_kek(dir: &Path, version: u32, key: &DataKey) -> Result<(), CryptoError> {
    let path = kek_path(dir, version);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| key_store("cannot create key file", &e))?;
    file.write_all(key.expose())
        .and_then(|()| file.sync_all())
        .map_err(|e| key_store("cannot write key file", &e))?;
    Ok(())
}

fn key_store(what: &str, err: &std::io::Error) -> CryptoError {
    // The io error kind is enough to act on; paths stay out of client-facing messages.
    CryptoError::KeyStore(format!("{what}: {}", err.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_writes_private_files_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let provider = FileKeyProvider::create(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("kek-v1.key")), 0o600);
        assert_eq!(provider.active_version(), 1);

        let dek = DataKey::generate().unwrap();
        let (version, wrapped) = provider.wrap(&dek, b"env\0Patient/1").unwrap();
        assert_eq!(version, 1);
        assert!(!wrapped.windows(32).any(|w| w == dek.expose()));

        let reopened = FileKeyProvider::open(&dir).unwrap();
        let back = reopened.unwrap(1, &wrapped, b"env\0Patient/1").unwrap();
        assert_eq!(back.expose(), dek.expose());
        assert!(reopened.unwrap(1, &wrapped, b"env\0Patient/2").is_err());
        assert!(matches!(
            reopened.unwrap(2, &wrapped, b"env\0Patient/1"),
            Err(CryptoError::UnknownKekVersion(2))
        ));
    }

    #[test]
    fn refuses_world_readable_keys_and_double_create() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        FileKeyProvider::create(&dir).unwrap();
        assert!(FileKeyProvider::create(&dir).is_err());
        fs::set_permissions(dir.join("kek-v1.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileKeyProvider::open(&dir).err().unwrap().to_string();
        assert!(err.contains("0600"), "{err}");
        fs::set_permissions(dir.join("kek-v1.key"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(FileKeyProvider::open(&dir).is_err());
    }

    #[test]
    fn refuses_empty_or_truncated_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(FileKeyProvider::open(&dir).is_err());
        let path = dir.join("kek-v1.key");
        fs::write(&path, [1u8; 16]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(FileKeyProvider::open(&dir).is_err());
    }
}
