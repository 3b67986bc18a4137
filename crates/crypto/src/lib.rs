//! CareVault's cryptography: envelope encryption of resource versions, key providers that hold
//! the environment's key-encryption key (KEK), data keys (DEKs) and their in-memory cache.
//!
//! Nothing here knows HTTP or SQL. Every primitive comes from RustCrypto (`aes-gcm`, `hmac`,
//! `sha2`); this crate only arranges them, and is the only crate of the server that names them:
//! the rest of CareVault sees a [`Cipher`], [`hmac_sha256`], [`sha256`] and the private-file
//! writers.
//!
//! The shape of one sealed resource version:
//!
//! ```
//! use carevault_crypto::{DataKey, envelope};
//!
//! let dek = DataKey::generate().unwrap();
//! let cipher = dek.cipher();
//! let aad = b"env-1\0Patient\0123\01";
//! let sealed = envelope::seal(&cipher, 42, aad, b"{\"resourceType\":\"Patient\"}").unwrap();
//! assert_eq!(envelope::Header::parse(&sealed).unwrap().dek_id, 42);
//! assert_eq!(envelope::open(&cipher, aad, &sealed).unwrap(), b"{\"resourceType\":\"Patient\"}");
//! // Any other associated data (another row, version or environment) fails to open.
//! assert!(envelope::open(&cipher, b"env-2\0Patient\0123\01", &sealed).is_err());
//! ```
#![forbid(unsafe_code)]

pub mod envelope;
mod keys;
mod pkcs11;
mod private_file;
mod provider;

pub use keys::{
    Cipher, DataKey, DataKeyCache, Sha256Stream, hmac_sha256, random_bytes, random_token, sha256,
    sha256_hex,
};
pub use pkcs11::{Pkcs11KeyProvider, Pkcs11Settings};
pub use private_file::{write_private_atomic, write_private_new};
pub use provider::{FileKeyProvider, KeyProvider, Passphrase};

/// Everything that can go wrong in this crate. Messages never contain key material, plaintext
/// or associated data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication failed: wrong key, tampered ciphertext, or the ciphertext belongs to
    /// another row, version or environment.
    #[error("ciphertext failed authentication")]
    Unauthentic,
    /// The sealed value is too short or carries an unknown format version.
    #[error("malformed ciphertext header")]
    MalformedHeader,
    /// The operating system's random source failed.
    #[error("random number generator unavailable")]
    Rng,
    /// The requested KEK version is not held by the provider.
    #[error("key-encryption key version v{0} is not available")]
    UnknownKekVersion(u32),
    /// A key file or directory could not be used.
    #[error("key store: {0}")]
    KeyStore(String),
}
