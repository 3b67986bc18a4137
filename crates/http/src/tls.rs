//! TLS: the rustls server configuration (TLS 1.2 and 1.3 only), and a listener that completes handshakes concurrently so one slow client cannot
//! stall the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use carevault_server::certificate::fingerprint;
use carevault_server::{Config, Error, Result};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The peer address of a connection, for per-IP limits.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Accepts TCP connections and runs each TLS handshake in its own task.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(event = "accept_failed", error = %e.kind());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                if tx.is_closed() {
                    break;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(event = "tls_handshake_failed", error = %e),
                        Err(_) => tracing::debug!(event = "tls_handshake_timeout"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accept task only ends when this listener is gone; wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}
