//! The self-signed TLS certificate made at init, its renewal, and certificate fingerprints (what
//! an operator gives to clients to pin). Serving TLS is the `carevault-http` crate's job.
//!
//! A generated certificate is valid for [`VALIDITY_DAYS`] (the CA/Browser Forum's ceiling, which
//! outside TLS scanners hold every certificate to) and is renewed when it comes within
//! [`RENEW_BEFORE_DAYS`] of expiry: at start, by the server's daily check and by `doctor --fix`.
//! Renewal keeps the key pair, so a client that trusts the old certificate as its anchor (the
//! CLI's `--ca-cert`) still verifies the new one: the anchor is its subject and public key.
//! An operator's own certificate is never touched; it is only inspected.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_cert::der::asn1::{ObjectIdentifier, UintRef};
use x509_cert::der::{Decode, Reader, SliceReader};

use crate::config::Config;
use crate::error::{Error, Result};

pub mod ocsp;

/// How long a generated certificate is valid (CA/Browser Forum baseline requirements: 397 days).
pub const VALIDITY_DAYS: i64 = 397;
/// A generated certificate this close to expiry is renewed.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// The common name that marks a certificate CareVault made (and may therefore renew).
const GENERATED_COMMON_NAME: &str = "CareVault self-signed";
const DAY_SECS: i64 = 86_400;
/// A generated certificate starts an hour in the past, for clients whose clocks run behind.
const BACKDATE_SECS: i64 = 3_600;

/// What a certificate file says about itself (the first certificate of the chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// SHA-256 of the DER, hex, colon-separated.
    pub fingerprint: String,
    pub not_before_secs: i64,
    pub not_after_secs: i64,
    /// Made by CareVault (self-signed with CareVault's common name), so CareVault may renew it.
    pub generated: bool,
    /// `RSA 2048`, `ECDSA P-256`, `Ed25519`, ...
    pub key: String,
    /// False when the key is too weak (RSA under 2048 bits, an unknown curve or algorithm).
    pub key_ok: bool,
}

impl CertificateInfo {
    pub fn validity_days(&self) -> i64 {
        (self.not_after_secs - self.not_before_secs) / DAY_SECS
    }

    /// Due for renewal at `now_secs`: close to or past expiry, or valid for longer than a
    /// generated certificate may be (made by a version before the 397-day limit).
    pub fn renewal_due(&self, now_secs: i64) -> bool {
        self.not_after_secs - now_secs <= RENEW_BEFORE_DAYS * DAY_SECS
            || self.not_after_secs - self.not_before_secs
                > (VALIDITY_DAYS * DAY_SECS) + BACKDATE_SECS
    }
}

/// Make a self-signed certificate for the listen address and localhost, valid from now for
/// [`VALIDITY_DAYS`]; returns its SHA-256 fingerprint (hex, colon-separated), which the operator
/// gives to clients to pin.
pub fn generate_self_signed(config: &Config, now_secs: i64) -> Result<String> {
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Internal(format!("tls key: {e}")))?;
    let cert = sign(config, &key, now_secs)?;
    if let Some(parent) = config.tls_cert.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Unavailable(format!("tls dir: {}", e.kind())))?;
    }
    carevault_crypto::write_private_new(&config.tls_key, key.serialize_pem().as_bytes())
        .map_err(|e| Error::Unavailable(format!("tls key: {}", e.kind())))?;
    std::fs::write(&config.tls_cert, cert.pem())
        .map_err(|e| Error::Unavailable(format!("tls cert: {}", e.kind())))?;
    Ok(fingerprint(cert.der()))
}

/// Renew the generated certificate at `tls.cert_path` if [`CertificateInfo::renewal_due`],
/// keeping its key; returns the new fingerprint, or None when nothing was due (or the
/// certificate is the operator's own, which CareVault never replaces).
pub fn renew_if_due(config: &Config, now_secs: i64) -> Result<Option<String>> {
    let info = inspect(&config.tls_cert)?;
    if !info.generated || !info.renewal_due(now_secs) {
        return Ok(None);
    }
    renew(config, now_secs).map(Some)
}

/// Re-sign the generated certificate with its own key, valid from now; the file is replaced
/// atomically (a reader sees the old certificate or the new one, never half of one).
pub fn renew(config: &Config, now_secs: i64) -> Result<String> {
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(&config.tls_key)
            .map_err(|e| Error::Unavailable(format!("cannot read tls.key_path: {}", e.kind())))?,
    );
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|_| Error::Unavailable("tls.key_path is not a key CareVault can renew".into()))?;
    let cert = sign(config, &key, now_secs)?;
    write_atomic(&config.tls_cert, cert.pem().as_bytes())
        .map_err(|e| Error::Unavailable(format!("tls cert: {}", e.kind())))?;
    Ok(fingerprint(cert.der()))
}

/// Read the first certificate of a PEM file.
pub fn inspect(path: &Path) -> Result<CertificateInfo> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Unavailable(format!("cannot read tls.cert_path: {}", e.kind())))?;
    let der = first_certificate_der(&pem)
        .ok_or_else(|| Error::Unavailable("tls.cert_path holds no PEM certificate".into()))?;
    let cert = x509_cert::Certificate::from_der(&der)
        .map_err(|_| Error::Unavailable("tls.cert_path holds an unreadable certificate".into()))?;
    let tbs = &cert.tbs_certificate;
    let secs = |t: x509_cert::time::Time| i64::try_from(t.to_unix_duration().as_secs());
    let not_before_secs = secs(tbs.validity.not_before)
        .map_err(|_| Error::Unavailable("tls.cert_path: validity out of range".into()))?;
    let not_after_secs = secs(tbs.validity.not_after)
        .map_err(|_| Error::Unavailable("tls.cert_path: validity out of range".into()))?;
    let generated = tbs.subject == tbs.issuer
        && tbs.subject.to_string() == format!("CN={GENERATED_COMMON_NAME}");
    let (key, key_ok) = key_kind(&tbs.subject_public_key_info);
    Ok(CertificateInfo {
        fingerprint: fingerprint(&der),
        not_before_secs,
        not_after_secs,
        generated,
        key,
        key_ok,
    })
}

pub fn fingerprint(der: &[u8]) -> String {
    carevault_crypto::sha256(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The CA certificates of a PEM file the configuration names under `key` (one or more), as
/// trust anchors. A file that cannot be read, is not PEM, or holds no usable certificate is an
/// error naming the key and the path, never the file's content.
pub fn ca_roots(key: &str, path: &Path) -> Result<rustls::RootCertStore> {
    let refuse =
        |what: String| Error::Unavailable(format!("configuration error in `{key}`: {what}"));
    let pem = std::fs::read(path)
        .map_err(|e| refuse(format!("cannot read {}: {}", path.display(), e.kind())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| refuse(format!("{} is not valid PEM", path.display())))?;
        roots
            .add(cert)
            .map_err(|_| refuse(format!("{} holds an unusable certificate", path.display())))?;
    }
    if roots.is_empty() {
        return Err(refuse(format!("{} holds no certificate", path.display())));
    }
    Ok(roots)
}

fn sign(config: &Config, key: &rcgen::KeyPair, now_secs: i64) -> Result<rcgen::Certificate> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = config.listen.ip().to_string();
    if !names.contains(&ip) && !config.listen.ip().is_unspecified() {
        names.push(ip);
    }
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| Error::Internal(format!("tls params: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, GENERATED_COMMON_NAME);
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| Error::Internal(format!("tls validity: {e}")))
    };
    params.not_before = at(now_secs - BACKDATE_SECS)?;
    params.not_after = at(now_secs + VALIDITY_DAYS * DAY_SECS - BACKDATE_SECS)?;
    params
        .self_signed(key)
        .map_err(|e| Error::Internal(format!("tls cert: {e}")))
}

const RSA: &str = "1.2.840.113549.1.1.1";
const EC: &str = "1.2.840.10045.2.1";
const ED25519: &str = "1.3.101.112";

fn key_kind(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> (String, bool) {
    let oid = spki.algorithm.oid.to_string();
    match oid.as_str() {
        RSA => match rsa_bits(spki.subject_public_key.raw_bytes()) {
            Some(bits) => (format!("RSA {bits}"), bits >= 2048),
            None => ("RSA (unreadable modulus)".to_owned(), false),
        },
        EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .map(|o| o.to_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => ("ECDSA P-256".to_owned(), true),
                Some("1.3.132.0.34") => ("ECDSA P-384".to_owned(), true),
                Some("1.3.132.0.35") => ("ECDSA P-521".to_owned(), true),
                other => (format!("ECDSA on curve {}", other.unwrap_or("?")), false),
            }
        }
        ED25519 => ("Ed25519".to_owned(), true),
        other => (format!("key algorithm {other}"), false),
    }
}

/// The modulus size of a DER RSAPublicKey (SEQUENCE { modulus, exponent }).
fn rsa_bits(der: &[u8]) -> Option<usize> {
    let mut reader = SliceReader::new(der).ok()?;
    let modulus = reader
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            let _e = UintRef::decode(r)?;
            Ok(n.as_bytes().to_vec())
        })
        .ok()?;
    let first = *modulus.first()?;
    Some(modulus.len() * 8 - first.leading_zeros() as usize)
}

fn first_certificate_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = text.find(begin)? + begin.len();
    let end = start + text[start..].find("-----END CERTIFICATE-----")?;
    let body: String = text[start..end].split_whitespace().collect();
    data_encoding::BASE64.decode(body.as_bytes()).ok()
}

/// Replace a public file atomically: a temporary file beside it, synced, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
