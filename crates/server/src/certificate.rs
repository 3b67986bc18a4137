//! The self-signed TLS certificate made at init, and certificate fingerprints (what an operator
//! gives to clients to pin). Serving TLS is the `carevault-http` crate's job.

use crate::config::Config;
use crate::error::{Error, Result};

/// Make a self-signed certificate for the listen address and localhost; returns its SHA-256
/// fingerprint (hex, colon-separated), which the operator gives to clients to pin.
pub fn generate_self_signed(config: &Config) -> Result<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = config.listen.ip().to_string();
    if !names.contains(&ip) && !config.listen.ip().is_unspecified() {
        names.push(ip);
    }
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Internal(format!("tls key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| Error::Internal(format!("tls params: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "CareVault self-signed");
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Internal(format!("tls cert: {e}")))?;
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

pub fn fingerprint(der: &[u8]) -> String {
    carevault_crypto::sha256(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
