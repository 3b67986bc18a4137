//! TLS: the rustls server configuration (TLS 1.2 and 1.3 only). Handshakes run in each
//! connection's own task under a timeout (see `serve`), so one slow client cannot stall the
//! accept loop.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use carevault_server::certificate::fingerprint;
use carevault_server::{Config, Error, Result};

/// Load the certificate chain and key and build the server configuration.
pub fn server_config(config: &Config) -> Result<(Arc<ServerConfig>, String)> {
    let cert_pem = std::fs::read(&config.tls_cert)
        .map_err(|e| Error::Unavailable(format!("cannot read tls.cert_path: {}", e.kind())))?;
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(&config.tls_key)
            .map_err(|e| Error::Unavailable(format!("cannot read tls.key_path: {}", e.kind())))?,
    );
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Unavailable("tls.cert_path is not a PEM certificate".into()))?;
    let first = certs
        .first()
        .ok_or_else(|| Error::Unavailable("tls.cert_path holds no certificate".into()))?;
    let fp = fingerprint(first.as_ref());
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::Unavailable("tls.key_path holds no private key".into()),
        _ => Error::Unavailable("tls.key_path is not a PEM private key".into()),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Internal(format!("tls versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|_| Error::Unavailable("the TLS certificate and key do not match".into()))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(server), fp))
}

/// The peer address of a connection, for per-IP limits (a request extension, as axum's
/// `ConnectInfo<ClientAddr>`).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);
