//! Key providers: who holds the key-encryption key (KEK) and wraps data keys with it.
//!
//! The `file` provider keeps each KEK version in its own file (`kek-v1.key`, mode 0600) in a
//! directory of mode 0700. An HSM provider (PKCS#11) implements the same trait.
//!
//! KEKs are versioned: [`KeyProvider::add_version`] makes a new version that every later wrap
//! uses at once; older versions keep unwrapping until [`KeyProvider::destroy_version`] removes
//! them for good. Which versions may be destroyed (nothing still wrapped under them) is the
//! caller's decision: the provider only refuses to destroy the active version.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::keys::{Cipher, DataKey};
use crate::private_file::{write_private_atomic, write_private_new};
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
    /// The KEK versions held, oldest first.
    fn versions(&self) -> Vec<u32>;
    /// Create KEK `version` (greater than every version ever made); it becomes the active one.
    fn add_version(&self, version: u32) -> Result<(), CryptoError>;
    /// Destroy KEK `version` for good. Refuses the active version.
    fn destroy_version(&self, version: u32) -> Result<(), CryptoError>;
}

/// KEKs in files under one directory.
pub struct FileKeyProvider {
    dir: PathBuf,
    keks: RwLock<BTreeMap<u32, Cipher>>,
    /// When set, KEK files are sealed under a key derived from a passphrase.
    sealer: Option<Sealer>,
}

/// A passphrase that seals KEK files. Zeroized when dropped; never printed.
pub struct Passphrase(zeroize::Zeroizing<Vec<u8>>);

impl Passphrase {
    pub fn new(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() < 12 {
            return Err(CryptoError::KeyStore(
                "the key passphrase must be at least 12 bytes".into(),
            ));
        }
        Ok(Self(zeroize::Zeroizing::new(bytes.to_vec())))
    }

    /// Read a passphrase file (its first line; mode 0600 or stricter).
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let meta =
            fs::metadata(path).map_err(|e| key_store("cannot read the passphrase file", &e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CryptoError::KeyStore(
                "the passphrase file is accessible to other users; it must be mode 0600".into(),
            ));
        }
        let text = zeroize::Zeroizing::new(
            fs::read(path).map_err(|e| key_store("cannot read the passphrase file", &e))?,
        );
        let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Self::new(line)
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// A sealed KEK file: `MAGIC | m_cost u32 | t_cost u32 | p_cost u32 (big endian) | salt (16) |
/// envelope`, where the envelope (AES-256-GCM, key id = the KEK version, associated data naming
/// the version) holds the 32 key bytes, under Argon2id(passphrase, salt).
const SEALED_MAGIC: &[u8; 8] = b"CVKEKS01";
const SALT_LEN: usize = 16;
const SEALED_HEADER: usize = 8 + 12 + SALT_LEN;
/// OWASP's Argon2id profile (19 MiB, 2 passes, 1 lane).
const KDF_PARAMS: KdfParams = (19_456, 2, 1);
/// Argon2id memory (KiB), passes, lanes.
type KdfParams = (u32, u32, u32);

struct Sealer {
    passphrase: Passphrase,
    /// The salt and parameters new files are sealed with, and the key they derive.
    salt: [u8; SALT_LEN],
    params: KdfParams,
    key: Cipher,
}

impl Sealer {
    fn new(passphrase: Passphrase) -> Result<Self, CryptoError> {
        let salt: [u8; SALT_LEN] = crate::keys::random_bytes()?;
        let key = derive(&passphrase, &salt, KDF_PARAMS)?;
        Ok(Self {
            passphrase,
            salt,
            params: KDF_PARAMS,
            key,
        })
    }

    fn seal(&self, version: u32, key: &DataKey) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(SEALED_HEADER + 64);
        out.extend_from_slice(SEALED_MAGIC);
        for n in [self.params.0, self.params.1, self.params.2] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&envelope::seal(
            &self.key,
            u64::from(version),
            &sealed_aad(version),
            key.expose(),
        )?);
        Ok(out)
    }
}

fn sealed_aad(version: u32) -> Vec<u8> {
    format!("carevault-kek\0v{version}").into_bytes()
}

fn derive(
    passphrase: &Passphrase,
    salt: &[u8],
    (m, t, p): KdfParams,
) -> Result<Cipher, CryptoError> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|_| CryptoError::KeyStore("sealed key file has invalid parameters".into()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(&passphrase.0, salt, out.as_mut())
        .map_err(|_| CryptoError::KeyStore("cannot derive the key-file sealing key".into()))?;
    Ok(DataKey::from_bytes(out.as_ref())?.cipher())
}

/// Parse a sealed file's header: (params, salt, envelope).
fn parse_sealed(bytes: &[u8]) -> Option<(KdfParams, &[u8], &[u8])> {
    let rest = bytes.strip_prefix(SEALED_MAGIC.as_slice())?;
    if rest.len() < 12 + SALT_LEN {
        return None;
    }
    let (nums, rest) = rest.split_at(12);
    let n = |i: usize| -> Option<u32> {
        nums.get(i * 4..i * 4 + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    let (salt, sealed) = rest.split_at(SALT_LEN);
    Some(((n(0)?, n(1)?, n(2)?), salt, sealed))
}

const KEK_PREFIX: &str = "kek-v";
const KEK_SUFFIX: &str = ".key";

impl FileKeyProvider {
    /// Create the key directory (0700) with a fresh KEK version 1 (0600). Refuses to touch a
    /// directory that already holds a KEK.
    pub fn create(dir: &Path) -> Result<Self, CryptoError> {
        Self::create_with(dir, None)
    }

    /// Like [`Self::create`]; with a passphrase, the KEK file is sealed under it.
    pub fn create_with(dir: &Path, passphrase: Option<Passphrase>) -> Result<Self, CryptoError> {
        fs::create_dir_all(dir).map_err(|e| key_store("cannot create key directory", &e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| key_store("cannot restrict key directory", &e))?;
        if !list_versions(dir)?.is_empty() {
            return Err(CryptoError::KeyStore(
                "key directory already holds a key-encryption key".into(),
            ));
        }
        let sealer = passphrase.map(Sealer::new).transpose()?;
        write_kek(dir, 1, &DataKey::generate()?, sealer.as_ref())?;
        Self::open_with(dir, sealer.map(|s| s.passphrase))
    }

    /// Load every KEK version from `dir`. Refuses keys readable by anyone but the owner.
    pub fn open(dir: &Path) -> Result<Self, CryptoError> {
        Self::open_with(dir, None)
    }

    /// Load every KEK version from `dir`, unsealing them with `passphrase` when given. Files
    /// still in the clear are sealed in place when a passphrase is given; sealed files without
    /// one, or with the wrong one, are refused.
    pub fn open_with(dir: &Path, passphrase: Option<Passphrase>) -> Result<Self, CryptoError> {
        let meta = fs::metadata(dir).map_err(|e| key_store("cannot read key directory", &e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CryptoError::KeyStore(
                "key directory is accessible to other users; it must be mode 0700".into(),
            ));
        }
        let mut keks = BTreeMap::new();
        let mut sealer: Option<Sealer> = None;
        let mut passphrase = passphrase;
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
            let name = format!("{KEK_PREFIX}{version}{KEK_SUFFIX}");
            let key = if let Some((params, salt, sealed)) = parse_sealed(&bytes) {
                if sealer.is_none() {
                    let Some(p) = passphrase.take() else {
                        return Err(CryptoError::KeyStore(format!(
                            "key file {name} is sealed under a passphrase; set key.passphrase_file"
                        )));
                    };
                    let salt_arr: [u8; SALT_LEN] = salt.try_into().map_err(|_| {
                        CryptoError::KeyStore(format!("key file {name} is damaged"))
                    })?;
                    let key = derive(&p, salt, params)?;
                    sealer = Some(Sealer {
                        passphrase: p,
                        salt: salt_arr,
                        params,
                        key,
                    });
                }
                let Some(active) = sealer.as_ref() else {
                    return Err(CryptoError::KeyStore(format!("key file {name} is damaged")));
                };
                let other;
                let cipher = if active.salt.as_slice() == salt && active.params == params {
                    &active.key
                } else {
                    other = derive(&active.passphrase, salt, params)?;
                    &other
                };
                let header = envelope::Header::parse(sealed);
                let plain = match header {
                    Ok(h) if h.dek_id == u64::from(version) => {
                        envelope::open(cipher, &sealed_aad(version), sealed).ok()
                    }
                    _ => None,
                };
                let plain = zeroize::Zeroizing::new(plain.ok_or_else(|| {
                    CryptoError::KeyStore(format!(
                        "cannot unseal key file {name}: wrong passphrase or damaged file"
                    ))
                })?);
                DataKey::from_bytes(&plain)
                    .map_err(|_| CryptoError::KeyStore(format!("key file {name} is damaged")))?
            } else {
                let key = DataKey::from_bytes(&bytes).map_err(|_| {
                    CryptoError::KeyStore(format!("key file {name} is not a 256-bit key"))
                })?;
                if sealer.is_none()
                    && let Some(p) = passphrase.take()
                {
                    sealer = Some(Sealer::new(p)?);
                }
                if let Some(sealer) = &sealer {
                    // A clear file under a passphrase-protected keyring: seal it in place.
                    replace_kek(dir, version, &sealer.seal(version, &key)?)?;
                }
                key
            };
            keks.insert(version, key.cipher());
        }
        if keks.is_empty() {
            return Err(CryptoError::KeyStore("no key-encryption key found".into()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            keks: RwLock::new(keks),
            sealer,
        })
    }

    /// True when KEK files are sealed under a passphrase.
    pub fn is_sealed(&self) -> bool {
        self.sealer.is_some()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, Cipher>> {
        self.keks.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u32, Cipher>> {
        self.keks.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyProvider for FileKeyProvider {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn active_version(&self) -> u32 {
        // `open` refuses an empty key directory and the active version cannot be destroyed,
        // so there is always a last version.
        self.read().keys().next_back().copied().unwrap_or(1)
    }

    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<(u32, Vec<u8>), CryptoError> {
        let keks = self.read();
        let (version, kek) = keks
            .iter()
            .next_back()
            .ok_or(CryptoError::UnknownKekVersion(0))?;
        let wrapped = envelope::seal(kek, u64::from(*version), aad, dek.expose())?;
        Ok((*version, wrapped))
    }

    fn unwrap(&self, kek_version: u32, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, CryptoError> {
        let keks = self.read();
        let kek = keks
            .get(&kek_version)
            .ok_or(CryptoError::UnknownKekVersion(kek_version))?;
        if envelope::Header::parse(wrapped)?.dek_id != u64::from(kek_version) {
            return Err(CryptoError::Unauthentic);
        }
        let bytes = zeroize::Zeroizing::new(envelope::open(kek, aad, wrapped)?);
        DataKey::from_bytes(&bytes)
    }

    fn versions(&self) -> Vec<u32> {
        self.read().keys().copied().collect()
    }

    fn add_version(&self, version: u32) -> Result<(), CryptoError> {
        let mut keks = self.write();
        if keks.keys().next_back().is_some_and(|last| *last >= version) {
            return Err(CryptoError::KeyStore(format!(
                "key-encryption key version v{version} is not newer than the active one"
            )));
        }
        let key = DataKey::generate()?;
        write_kek(&self.dir, version, &key, self.sealer.as_ref())?;
        sync_dir(&self.dir)?;
        keks.insert(version, key.cipher());
        Ok(())
    }

    fn destroy_version(&self, version: u32) -> Result<(), CryptoError> {
        let mut keks = self.write();
        if keks.keys().next_back() == Some(&version) {
            return Err(CryptoError::KeyStore(
                "the active key-encryption key cannot be destroyed".into(),
            ));
        }
        if !keks.contains_key(&version) {
            return Err(CryptoError::UnknownKekVersion(version));
        }
        let path = kek_path(&self.dir, version);
        // Overwrite before unlinking (best effort: journaling and copy-on-write file systems
        // may keep old blocks), then make the removal durable.
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(&path) {
            let _ = f.write_all(&[0u8; 32]).and_then(|()| f.sync_all());
        }
        fs::remove_file(&path).map_err(|e| key_store("cannot remove key file", &e))?;
        sync_dir(&self.dir)?;
        // Dropping the cipher zeroizes its key schedule.
        keks.remove(&version);
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), CryptoError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| key_store("cannot sync key directory", &e))
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

fn write_kek(
    dir: &Path,
    version: u32,
    key: &DataKey,
    sealer: Option<&Sealer>,
) -> Result<(), CryptoError> {
    let sealed;
    let bytes: &[u8] = match sealer {
        Some(s) => {
            sealed = s.seal(version, key)?;
            &sealed
        }
        None => key.expose(),
    };
    write_new(&kek_path(dir, version), bytes)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), CryptoError> {
    write_private_new(path, bytes).map_err(|e| key_store("cannot write key file", &e))
}

/// Atomically replace a KEK file (a new file renamed over it, the directory synced).
fn replace_kek(dir: &Path, version: u32, bytes: &[u8]) -> Result<(), CryptoError> {
    write_private_atomic(&kek_path(dir, version), bytes)
        .map_err(|e| key_store("cannot replace key file", &e))
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
    fn new_versions_wrap_at_once_old_ones_unwrap_until_destroyed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let provider = FileKeyProvider::create(&dir).unwrap();
        let dek = DataKey::generate().unwrap();
        let (v1, old) = provider.wrap(&dek, b"a").unwrap();
        assert_eq!(v1, 1);
        assert!(provider.add_version(1).is_err(), "versions only grow");
        provider.add_version(2).unwrap();
        assert_eq!(provider.active_version(), 2);
        assert_eq!(provider.versions(), vec![1, 2]);
        let (v2, new) = provider.wrap(&dek, b"a").unwrap();
        assert_eq!(v2, 2);
        assert_eq!(
            provider.unwrap(1, &old, b"a").unwrap().expose(),
            dek.expose()
        );
        // A v1 envelope is not accepted as v2 (the header names its version).
        assert!(provider.unwrap(2, &old, b"a").is_err());
        assert!(provider.destroy_version(2).is_err(), "active version");
        assert!(provider.destroy_version(7).is_err(), "unknown version");
        provider.destroy_version(1).unwrap();
        assert!(!dir.join("kek-v1.key").exists());
        assert!(matches!(
            provider.unwrap(1, &old, b"a"),
            Err(CryptoError::UnknownKekVersion(1))
        ));
        let reopened = FileKeyProvider::open(&dir).unwrap();
        assert_eq!(reopened.versions(), vec![2]);
        assert_eq!(
            reopened.unwrap(2, &new, b"a").unwrap().expose(),
            dek.expose()
        );
    }

    fn pass(p: &str) -> Passphrase {
        Passphrase::new(p.as_bytes()).unwrap()
    }

    #[test]
    fn sealed_key_files_need_the_right_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let provider =
            FileKeyProvider::create_with(&dir, Some(pass("correct horse battery"))).unwrap();
        assert!(provider.is_sealed());
        provider.add_version(2).unwrap();
        let dek = DataKey::generate().unwrap();
        let (_, wrapped) = provider.wrap(&dek, b"a").unwrap();
        for v in [1, 2] {
            let bytes = fs::read(dir.join(format!("kek-v{v}.key"))).unwrap();
            assert!(bytes.starts_with(SEALED_MAGIC));
            assert!(bytes.len() > 32);
        }
        let err = FileKeyProvider::open_with(&dir, Some(pass("wrong horse battery")))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("wrong passphrase"), "{err}");
        assert!(!err.contains("horse"));
        let err = FileKeyProvider::open(&dir).err().unwrap().to_string();
        assert!(err.contains("passphrase"), "{err}");
        let reopened =
            FileKeyProvider::open_with(&dir, Some(pass("correct horse battery"))).unwrap();
        assert_eq!(
            reopened.unwrap(2, &wrapped, b"a").unwrap().expose(),
            dek.expose()
        );
        // A sealed file renamed to another version does not unseal.
        fs::rename(dir.join("kek-v1.key"), dir.join("kek-v3.key")).unwrap();
        assert!(FileKeyProvider::open_with(&dir, Some(pass("correct horse battery"))).is_err());
        assert!(Passphrase::new(b"short").is_err());
    }

    #[test]
    fn clear_key_files_are_sealed_in_place_when_a_passphrase_is_set() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let provider = FileKeyProvider::create(&dir).unwrap();
        let dek = DataKey::generate().unwrap();
        let (_, wrapped) = provider.wrap(&dek, b"a").unwrap();
        let clear = fs::read(dir.join("kek-v1.key")).unwrap();
        assert_eq!(clear.len(), 32);
        let sealed = FileKeyProvider::open_with(&dir, Some(pass("a long passphrase"))).unwrap();
        assert_eq!(
            sealed.unwrap(1, &wrapped, b"a").unwrap().expose(),
            dek.expose()
        );
        let now = fs::read(dir.join("kek-v1.key")).unwrap();
        assert!(now.starts_with(SEALED_MAGIC));
        assert!(!now.windows(32).any(|w| w == clear.as_slice()));
        let mode = fs::metadata(dir.join("kek-v1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
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
