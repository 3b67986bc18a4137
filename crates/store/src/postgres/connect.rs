//! Connection options: the URL, `sslmode`/`sslrootcert`, and TLS to the database.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::StoreError;

/// TLS to the database, as libpq's `sslmode` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain TCP (only sensible on loopback or a private network).
    Disable,
    /// TLS, without checking the server's certificate (protects against passive eavesdropping).
    Require,
    /// TLS, the certificate checked against `sslrootcert` and the host name.
    VerifyFull,
}

/// Where and how to connect. `Debug` never shows the password.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/db?sslmode=...&sslrootcert=...`; a password in it is accepted
    /// (when it came from the environment) but `password` wins.
    pub url: String,
    pub password: Option<String>,
    pub pool_size: usize,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Check the URL (syntax, `sslmode`, `sslrootcert`) without connecting.
    pub fn check(&self) -> Result<(), StoreError> {
        let (url, _, _) = split_tls(&self.url)?;
        tokio_postgres::Config::from_str(&url)
            .map(|_| ())
            .map_err(|_| StoreError::Backend("not a valid PostgreSQL URL".into()))
    }
}

/// The URL without its password (for messages and logs).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let tail = tail.split('?').next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// True when the URL carries a password (`user:password@`, or `password=` in its query, which
/// tokio-postgres accepts as well).
pub fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = rest.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("password"))
    });
    in_userinfo || in_query
}

/// Split `sslmode` and `sslrootcert` off the URL's query (tokio-postgres knows neither
/// `verify-full` nor root certificate files); the rest is for tokio-postgres.
pub(super) fn split_tls(url: &str) -> Result<(String, SslMode, Option<String>), StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = SslMode::Disable;
    let mut root = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = match v {
                    "disable" => SslMode::Disable,
                    "require" => SslMode::Require,
                    "verify-full" => SslMode::VerifyFull,
                    _ => {
                        return Err(StoreError::Backend(
                            "sslmode must be disable, require or verify-full".into(),
                        ));
                    }
                }
            }
            "sslrootcert" => root = Some(percent_decode(v)?),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    match (mode, &root) {
        (SslMode::VerifyFull, None) => Err(StoreError::Backend(
            "sslmode=verify-full needs sslrootcert=PATH (the CA certificate, PEM)".into(),
        )),
        // libpq checks the certificate against sslrootcert under `require` (as `verify-ca`);
        // we would not, and silently checking less than the operator asked for is worse than
        // refusing.
        (SslMode::Require | SslMode::Disable, Some(_)) => Err(StoreError::Backend(
            "sslrootcert is only used with sslmode=verify-full (require does not check the \
             server's certificate)"
                .into(),
        )),
        _ => Ok((url, mode, root)),
    }
}

/// Decode `%XX` escapes in a URL query value (a path such as `/etc/db%20ca.pem`).
pub(super) fn percent_decode(value: &str) -> Result<String, StoreError> {
    let bad = || StoreError::Backend("sslrootcert: invalid %-escape".into());
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
            let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

pub(super) fn tls_connector(
    mode: SslMode,
    root: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS setup: {e}")))?;
    let config = match (mode, root) {
        (SslMode::VerifyFull, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Backend(format!("cannot read sslrootcert: {}", e.kind()))
            })?;
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|_| {
                    StoreError::Backend("sslrootcert holds no valid PEM certificate".into())
                })?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Backend(format!("sslrootcert: {e}")))?;
            }
            if roots.is_empty() {
                return Err(StoreError::Backend(
                    "sslrootcert holds no certificate".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode=require`: encrypted, the certificate not checked (libpq's meaning of `require`).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
