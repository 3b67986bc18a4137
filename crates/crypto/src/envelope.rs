//! AES-256-GCM envelopes with a small self-describing header.
//!
//! Layout: `format (1 byte) | dek_id (8 bytes, big endian) | nonce (12 bytes) | ciphertext+tag`.
//! The header bytes are part of the associated data, so the key id cannot be swapped without
//! the open failing; the caller's associated data (environment, resource type, id, version)
//! binds the ciphertext to its row.

use crate::keys::Cipher;
use aes_gcm::aead::{Aead, Payload};

use crate::CryptoError;
use crate::keys::random_bytes;

/// The only format written today. Key rotation adds formats without breaking old rows.
pub const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;
const TAG_LEN: usize = 16;

/// What the header of a sealed value says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub format: u8,
    pub dek_id: u64,
}

impl Header {
    /// Read the header without decrypting (to find which data key opens the value).
    pub fn parse(sealed: &[u8]) -> Result<Self, CryptoError> {
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::MalformedHeader);
        }
        let format = sealed[0];
        if format != FORMAT_V1 {
            return Err(CryptoError::MalformedHeader);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&sealed[1..9]);
        Ok(Self {
            format,
            dek_id: u64::from_be_bytes(id),
        })
    }
}

/// Seal `plaintext` under `cipher` (the data key `dek_id`) with a fresh random nonce.
pub fn seal(
    cipher: &Cipher,
    dek_id: u64,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce: [u8; NONCE_LEN] = random_bytes()?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    out.extend_from_slice(&dek_id.to_be_bytes());
    out.extend_from_slice(&nonce);
    let full_aad = full_aad(&out, aad);
    let ciphertext = cipher
        .0
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: &full_aad,
            },
        )
        .map_err(|_| CryptoError::Unauthentic)?;
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Open a value sealed by [`seal`] with the same associated data.
pub fn open(cipher: &Cipher, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    Header::parse(sealed)?;
    let (header, ciphertext) = sealed.split_at(HEADER_LEN);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&header[9..HEADER_LEN]);
    let full_aad = full_aad(header, aad);
    cipher
        .0
        .decrypt(
            &nonce.into(),
            Payload {
                msg: ciphertext,
                aad: &full_aad,
            },
        )
        .map_err(|_| CryptoError::Unauthentic)
}

fn full_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(HEADER_LEN + aad.len());
    full.extend_from_slice(&header[..HEADER_LEN]);
    full.extend_from_slice(aad);
    full
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataKey;

    #[test]
    fn round_trip_and_header() {
        let key = DataKey::generate().unwrap().cipher();
        let sealed = seal(&key, 7, b"aad", b"hello").unwrap();
        assert_eq!(
            Header::parse(&sealed).unwrap(),
            Header {
                format: 1,
                dek_id: 7
            }
        );
        assert_eq!(open(&key, b"aad", &sealed).unwrap(), b"hello");
    }

    #[test]
    fn nonces_are_fresh() {
        let key = DataKey::generate().unwrap().cipher();
        let a = seal(&key, 1, b"", b"same").unwrap();
        let b = seal(&key, 1, b"", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn every_flipped_byte_fails() {
        let key = DataKey::generate().unwrap().cipher();
        let sealed = seal(&key, 3, b"row", b"patient data").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&key, b"row", &bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn wrong_aad_wrong_key_and_truncation_fail() {
        let key = DataKey::generate().unwrap().cipher();
        let other = DataKey::generate().unwrap().cipher();
        let sealed = seal(&key, 3, b"row-1", b"x").unwrap();
        assert!(open(&key, b"row-2", &sealed).is_err());
        assert!(open(&other, b"row-1", &sealed).is_err());
        assert!(open(&key, b"row-1", &sealed[..sealed.len() - 1]).is_err());
        assert!(matches!(
            Header::parse(&sealed[..10]),
            Err(CryptoError::MalformedHeader)
        ));
        let mut unknown_format = sealed.clone();
        unknown_format[0] = 9;
        assert!(matches!(
            Header::parse(&unknown_format),
            Err(CryptoError::MalformedHeader)
        ));
    }
}
