//! Client certificates (mutual TLS) for API keys: the CAs a client certificate must chain to
//! (`tls.client_ca`), and the fingerprint that binds a key to one certificate.
//!
//! Presenting a certificate is optional in the handshake (browsers and people's CLIs have none);
//! a certificate that is presented must chain to a configured CA, or the handshake fails. What
//! a certificate is good for is decided per API key: a key bound to a fingerprint is accepted
//! only on a connection that presented that certificate.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::certificate::fingerprint;
use crate::error::{Error, Result};

/// The configuration key naming the CA file, as errors name it.
const CLIENT_CA_KEY: &str = "tls.client_ca";

/// The SHA-256 fingerprint of a client certificate's DER, in the form `certificate::fingerprint`
/// writes (`AB:CD:...`, 32 upper-case hex pairs). Parsed from what a person may paste: upper or
/// lower case, with or without colons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFingerprint(String);

impl CertFingerprint {
    pub fn parse(text: &str) -> Result<Self> {
        let hex: String = text.trim().chars().filter(|c| *c != ':').collect();
        let well_formed = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        // With colons, they must separate every pair (`AB:CD`, not `ABC:D`).
        let colons_ok = !text.contains(':') || text.trim().split(':').all(|p| p.len() == 2);
        if !well_formed || !colons_ok {
            return Err(Error::BadRequest(
                "client_cert_sha256 must be a SHA-256 fingerprint: 64 hex digits, optionally \
                 colon-separated pairs"
                    .into(),
            ));
        }
        let upper = hex.to_ascii_uppercase();
        let pairs: Vec<&str> = (0..32)
            .filter_map(|i| upper.get(i * 2..i * 2 + 2))
            .collect();
        Ok(Self(pairs.join(":")))
    }

    /// The fingerprint of a certificate's DER.
    pub fn of_der(der: &[u8]) -> Self {
        Self(fingerprint(der))
    }

    /// The fingerprint of the first certificate in a PEM file's bytes.
    pub fn of_pem(pem: &[u8]) -> Result<Self> {
        let first = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or_else(|| Error::BadRequest("the file holds no PEM certificate".into()))?
            .map_err(|_| Error::BadRequest("the file is not a PEM certificate".into()))?;
        Ok(Self::of_der(first.as_ref()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The CAs of `tls.client_ca`: one or more PEM certificates. A file that cannot be read, is not
/// PEM, holds no certificate or an unusable one stops the start; the error names the key and
/// the path, never the file's content.
pub fn client_ca_roots(path: &Path) -> Result<RootCertStore> {
    crate::certificate::ca_roots(CLIENT_CA_KEY, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_parsed_in_any_common_spelling_and_kept_in_one() {
        let canonical = ["AB"; 32].join(":");
        for spelling in [
            canonical.clone(),
            canonical.to_lowercase(),
            "ab".repeat(32),
            format!("  {}\n", "AB".repeat(32)),
        ] {
            assert_eq!(
                CertFingerprint::parse(&spelling).unwrap().as_str(),
                canonical,
                "{spelling}"
            );
        }
        for bad in [
            String::new(),
            "AB".repeat(31),
            "AB".repeat(33),
            format!("{}ZZ", "AB".repeat(31)),
            // Colons in the wrong places.
            format!("A:B{}", "AB".repeat(31)),
            ["ABC"; 21].join(":") + "A",
            // A SHA-1 fingerprint is not accepted as a SHA-256 one.
            ["AB"; 20].join(":"),
        ] {
            assert!(CertFingerprint::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_certificates_fingerprint_is_the_servers_format() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let fp = CertFingerprint::of_pem(cert.pem().as_bytes()).unwrap();
        assert_eq!(fp.as_str(), fingerprint(cert.der()));
        assert_eq!(CertFingerprint::parse(fp.as_str()).unwrap(), fp);
        assert!(CertFingerprint::of_pem(b"not a certificate").is_err());
    }

    #[test]
    fn a_bad_client_ca_file_names_the_key_and_not_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let err = client_ca_roots(&path).unwrap_err().to_string();
        assert!(
            err.contains("tls.client_ca") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::write(&path, "secret-looking-content\n").unwrap();
        let err = client_ca_roots(&path).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        assert!(!err.contains("secret-looking-content"), "{err}");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_ca_roots(&path).unwrap_err().to_string();
        assert!(
            err.contains("tls.client_ca") && err.contains("unusable"),
            "{err}"
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(&path, format!("{}{}", ca.pem(), ca.pem())).unwrap();
        assert_eq!(client_ca_roots(&path).unwrap().len(), 2);
    }
}
