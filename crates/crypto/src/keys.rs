//! Data keys, their cache, and the small helpers every caller needs (randomness, hashing).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use aes_gcm::{Aes256Gcm, KeyInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::CryptoError;

/// A 256-bit data-encryption key. The bytes are zeroized when dropped and never printed.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|_| CryptoError::Rng)?;
        Ok(Self(key))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::Unauthentic)?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// The AES-256-GCM instance for this key (its key schedule is zeroized on drop).
    pub fn cipher(&self) -> Cipher {
        let bytes: &[u8; 32] = &self.0;
        Cipher(Aes256Gcm::new(bytes.into()))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// AES-256-GCM under one key: what [`crate::envelope::seal`] and [`crate::envelope::open`] take.
/// Opaque outside this crate; its key schedule is zeroized when dropped.
pub struct Cipher(pub(crate) Aes256Gcm);

/// HMAC-SHA-256 of `data` under `key` (keys of any length; CareVault's are 32 bytes).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Unwrapped data keys by id, so the request path never waits for the key provider.
///
/// Bounded: when full, the oldest entry is evicted; its cipher (and key schedule) is zeroized
/// once the last request still using it lets go.
pub struct DataKeyCache {
    capacity: usize,
    inner: RwLock<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<u64, Arc<Cipher>>,
    order: VecDeque<u64>,
}

impl DataKeyCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: RwLock::new(CacheInner::default()),
        }
    }

    pub fn get(&self, dek_id: u64) -> Option<Arc<Cipher>> {
        let inner = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.map.get(&dek_id).cloned()
    }

    pub fn insert(&self, dek_id: u64, cipher: Cipher) -> Arc<Cipher> {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = inner.map.get(&dek_id) {
            return existing.clone();
        }
        while inner.map.len() >= self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
        let cipher = Arc::new(cipher);
        inner.map.insert(dek_id, cipher.clone());
        inner.order.push_back(dek_id);
        cipher
    }

    /// Forget one key (after it is destroyed or re-wrapped).
    pub fn remove(&self, dek_id: u64) {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.map.remove(&dek_id);
        inner.order.retain(|id| *id != dek_id);
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| CryptoError::Rng)?;
    Ok(out)
}

/// A 256-bit random token, URL-safe base64 without padding, behind a short prefix that names
/// its kind (so a leaked token is recognizable by secret scanners).
pub fn random_token(prefix: &str) -> Result<String, CryptoError> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 32] = random_bytes()?;
    let mut out = String::with_capacity(prefix.len() + 43);
    out.push_str(prefix);
    // 32 bytes = 256 bits = 42 full sextets + 4 bits.
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 0x3f) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 0x3f) as usize] as char);
    }
    Ok(out)
}

/// SHA-256 over data that arrives in pieces (a backup's parts, hashed as they stream).
#[derive(Clone, Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish_hex(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    let digest = sha256(data);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_evicts_oldest() {
        let cache = DataKeyCache::new(2);
        cache.insert(1, DataKey::generate().unwrap().cipher());
        cache.insert(2, DataKey::generate().unwrap().cipher());
        cache.insert(3, DataKey::generate().unwrap().cipher());
        assert_eq!(cache.len(), 2);
        assert!(cache.get(1).is_none());
        assert!(cache.get(2).is_some() && cache.get(3).is_some());
        cache.remove(2);
        assert!(cache.get(2).is_none());
    }

    #[test]
    fn tokens_are_long_distinct_and_url_safe() {
        let a = random_token("cvs_").unwrap();
        let b = random_token("cvs_").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 43);
        assert!(
            a[4..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_does_not_print_key() {
        let key = DataKey::from_bytes(&[0xAB; 32]).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab"));
    }
}
