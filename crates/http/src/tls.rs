//! TLS: the rustls server configuration (TLS 1.2 and 1.3 only, the server's cipher-suite order)
//! and its certificate, which is reloaded without a restart: on SIGHUP, when the certificate or
//! key file changes, and after the daily renewal of a generated certificate. A certificate that
//! names an OCSP responder is served with its status stapled (`crate::stapling`). Handshakes run in
//! each connection's own task under a timeout (see `serve`), so one slow client cannot stall the
//! accept loop.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use carevault_server::audit::{Audit, AuditAction, AuditScope};
use carevault_server::certificate::{self, fingerprint};
use carevault_server::clock::SharedClock;
use carevault_server::detection::Alerts;
use carevault_server::{Config, Error, Result};

/// How often the certificate files are looked at for a change.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How often a generated certificate's expiry is checked (it is renewed 30 days before).
const RENEWAL_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// Build the server configuration around a [`ServedCertificate`] loaded from the configured
/// files.
pub fn server_config(config: &Config) -> Result<(Arc<ServerConfig>, Arc<ServedCertificate>)> {
    let served = Arc::new(ServedCertificate::load(config)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Internal(format!("tls versions: {e}")))?;
    let builder = match &config.tls_client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(served.clone());
    // The server's order of cipher suites wins over the client's: the strongest suite both
    // support (AEAD only, forward-secret only; the provider offers nothing else).
    server.ignore_client_order = true;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(server), served))
}

/// Client certificates verified against `tls.client_ca` (read once, at start). Presenting one
/// is optional: browsers and people's CLIs have none, and an API key says whether it needs one.
/// A certificate that is presented must chain to those CAs (and be valid now, for client
/// authentication), or the handshake fails.
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let roots = carevault_server::client_certificate::client_ca_roots(path)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| {
            Error::Unavailable(format!(
                "configuration error in `tls.client_ca`: no client verifier: {e}"
            ))
        })
}

/// The certificate and key being served, swapped in place when the files change.
pub struct ServedCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
    /// Signalled after each successful reload (the stapler asks about the new certificate).
    reloaded: tokio::sync::Notify,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    fingerprint: String,
    stamp: FileStamp,
    /// The stapled OCSP response's `nextUpdate`, when one is stapled and says.
    staple_until: Option<i64>,
}

/// What tells a changed file from an unchanged one without reading it: modification time and
/// length, and the inode (a file replaced by rename within one clock tick of the last write
/// keeps neither apart, but it is a new inode).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    cert: Option<(SystemTime, u64, u64)>,
    key: Option<(SystemTime, u64, u64)>,
}

impl FileStamp {
    fn of(cert: &Path, key: &Path) -> Self {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
        };
        Self {
            cert: stamp(cert),
            key: stamp(key),
        }
    }
}

impl std::fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCertificate")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().key.clone())
    }
}

impl ServedCertificate {
    fn load(config: &Config) -> Result<Self> {
        let loaded = load(&config.tls_cert, &config.tls_key)?;
        Ok(Self {
            cert_path: config.tls_cert.clone(),
            key_path: config.tls_key.clone(),
            current: RwLock::new(loaded),
            reloaded: tokio::sync::Notify::new(),
        })
    }

    /// The chain being served and its fingerprint.
    pub(crate) fn chain(&self) -> (Vec<CertificateDer<'static>>, String) {
        let loaded = self.read();
        (loaded.key.cert.clone(), loaded.fingerprint.clone())
    }

    /// Serve `staple` (an OCSP response, valid until `until`) with the certificate whose
    /// fingerprint is `fingerprint`, or no staple when None. A certificate reloaded since the
    /// response was fetched keeps its own.
    pub(crate) fn staple(&self, fingerprint: &str, staple: Option<(Vec<u8>, Option<i64>)>) {
        let mut loaded = self.current.write().unwrap_or_else(|p| p.into_inner());
        if loaded.fingerprint != fingerprint {
            return;
        }
        let mut key = CertifiedKey::clone(&loaded.key);
        (key.ocsp, loaded.staple_until) = match staple {
            Some((der, until)) => (Some(der), until),
            None => (None, None),
        };
        loaded.key = Arc::new(key);
    }

    /// Stop stapling a response that is past its `nextUpdate` (a client would reject it).
    pub(crate) fn drop_stale_staple(&self, now_secs: i64) -> bool {
        let stale = {
            let loaded = self.read();
            loaded.key.ocsp.is_some() && loaded.staple_until.is_some_and(|t| now_secs >= t)
        };
        if stale {
            let fingerprint = self.read().fingerprint.clone();
            self.staple(&fingerprint, None);
        }
        stale
    }

    /// The OCSP response being stapled, if any.
    pub fn stapled(&self) -> Option<Vec<u8>> {
        self.read().key.ocsp.clone()
    }

    /// Completes after the next successful reload.
    pub(crate) async fn reloaded(&self) {
        self.reloaded.notified().await;
    }

    /// The SHA-256 fingerprint of the certificate being served.
    pub fn fingerprint(&self) -> String {
        self.read().fingerprint.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // A panic while holding the lock cannot leave a half-written value: the swap is one
        // assignment. So a poisoned lock still holds a whole certificate.
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn changed_on_disk(&self) -> bool {
        FileStamp::of(&self.cert_path, &self.key_path) != self.read().stamp
    }

    /// Load the files again; on success serve them from the next handshake on and return the
    /// new fingerprint. On failure (a half-copied file, a key that does not match) the old
    /// certificate stays in service.
    pub fn reload(&self) -> Result<String> {
        let mut loaded = load(&self.cert_path, &self.key_path)?;
        let fp = loaded.fingerprint.clone();
        {
            let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
            // The same certificate again (SIGHUP with nothing changed, a key file touched):
            // its staple still answers for it.
            if current.fingerprint == fp {
                let mut key = CertifiedKey::clone(&loaded.key);
                key.ocsp.clone_from(&current.key.ocsp);
                loaded.key = Arc::new(key);
                loaded.staple_until = current.staple_until;
            }
            *current = loaded;
        }
        self.reloaded.notify_one();
        Ok(fp)
    }

    /// Watch for SIGHUP, for changed files and for a generated certificate's renewal, and keep
    /// an OCSP response stapled when the certificate names a responder, until the task is
    /// aborted.
    pub fn spawn_reloader(
        self: Arc<Self>,
        config: Config,
        audit: Arc<Audit>,
        alerts: Arc<Alerts>,
        clock: SharedClock,
    ) -> tokio::task::JoinHandle<()> {
        let stapler = crate::stapling::keep_stapled(self.clone(), alerts, clock.clone());
        // The handler is installed now, before the server says it is serving: installed in the
        // task, a SIGHUP that came before the task first ran took the default action and ended
        // the process (a test that reloads right after start saw it under load).
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::spawn(async move {
            tokio::join!(self.watch(config, audit, clock, hangup), stapler);
        })
    }

    async fn watch(
        &self,
        config: Config,
        audit: Arc<Audit>,
        clock: SharedClock,
        mut hangup: Option<tokio::signal::unix::Signal>,
    ) {
        let mut files = tokio::time::interval(FILE_CHECK_INTERVAL);
        let mut renewal = tokio::time::interval(RENEWAL_CHECK_INTERVAL);
        // Both intervals fire at once; start has just renewed and loaded.
        files.tick().await;
        renewal.tick().await;
        loop {
            let cause = tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "sighup",
                _ = files.tick() => {
                    if !self.changed_on_disk() { continue; }
                    "file-change"
                }
                _ = renewal.tick() => {
                    match renew_generated(&config, &audit, &clock).await {
                        Some(_) => "renewal",
                        None => continue,
                    }
                }
            };
            self.reload_and_record(cause, &audit).await;
        }
    }

    async fn reload_and_record(&self, cause: &'static str, audit: &Arc<Audit>) {
        match self.reload() {
            Ok(fp) => {
                tracing::info!(event = "tls_certificate_reloaded", cause, fingerprint = %fp);
                let scope = AuditScope::local(audit.clone(), AuditAction::TlsCertificateReloaded);
                scope.add_detail("cause", cause.to_owned());
                scope.add_detail("fingerprint", fp);
                if let Err(e) = scope.finish(200).await {
                    tracing::error!(event = "audit_write_failed", error = %e);
                }
            }
            Err(e) => {
                // Note the stamp is not updated: the next check tries again, so a certificate
                // copied in two steps is picked up once both halves are there.
                tracing::error!(event = "tls_certificate_reload_failed", cause, error = %e,
                    "still serving the previous certificate");
            }
        }
    }
}

/// At start: renew a generated certificate that is due (an operator's own is only reported when
/// it is close to expiry). Errors reading the certificate are left to the loader, which names
/// them.
pub async fn renew_at_start(config: &Config, audit: &Arc<Audit>, clock: &SharedClock) {
    renew_generated(config, audit, clock).await;
}

async fn renew_generated(
    config: &Config,
    audit: &Arc<Audit>,
    clock: &SharedClock,
) -> Option<String> {
    let now = clock.now_secs();
    let info = certificate::inspect(&config.tls_cert).ok()?;
    if !info.generated {
        let days_left = (info.not_after_secs - now) / 86_400;
        if days_left <= certificate::RENEW_BEFORE_DAYS {
            tracing::warn!(
                event = "tls_certificate_expiring",
                days_left,
                "the operator's TLS certificate expires soon; replace it (it is reloaded without a restart)"
            );
        }
        return None;
    }
    match certificate::renew_if_due(config, now) {
        Ok(Some(fp)) => {
            tracing::info!(event = "tls_certificate_renewed", fingerprint = %fp,
                valid_days = certificate::VALIDITY_DAYS);
            let scope = AuditScope::local(audit.clone(), AuditAction::TlsCertificateRenewed);
            scope.add_detail("fingerprint", fp.clone());
            if let Err(e) = scope.finish(200).await {
                tracing::error!(event = "audit_write_failed", error = %e);
            }
            Some(fp)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(event = "tls_certificate_renewal_failed", error = %e);
            None
        }
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Loaded> {
    // The stamp is taken before reading, so a change during the read is seen next time.
    let stamp = FileStamp::of(cert_path, key_path);
    let cert_pem = std::fs::read(cert_path)
        .map_err(|e| Error::Unavailable(format!("cannot read tls.cert_path: {}", e.kind())))?;
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(key_path)
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
    let provider = rustls::crypto::ring::default_provider();
    let mismatch = || Error::Unavailable("the TLS certificate and key do not match".into());
    let certified = CertifiedKey::from_der(certs, key, &provider).map_err(|_| mismatch())?;
    Ok(Loaded {
        key: Arc::new(certified),
        fingerprint: fp,
        stamp,
        staple_until: None,
    })
}

/// The peer address of a connection, for per-IP limits (a request extension, as axum's
/// `ConnectInfo<ClientAddr>`).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The SHA-256 fingerprint of the client certificate the connection presented (verified against
/// `tls.client_ca` in the handshake), or None; a request extension on every request of the
/// connection, for API keys bound to a certificate.
#[derive(Clone, Debug, Default)]
pub struct ClientCertificate(pub Option<Arc<str>>);

impl ClientCertificate {
    /// The leaf (first) certificate of a completed handshake's peer chain.
    pub(crate) fn of_connection(conn: &rustls::ServerConnection) -> Self {
        Self(
            conn.peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| Arc::from(fingerprint(leaf.as_ref()))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000;

    #[test]
    fn a_changed_certificate_file_is_noticed_and_loaded_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_data_dir(dir.path());
        let first = certificate::generate_self_signed(&config, NOW).unwrap();
        let served = ServedCertificate::load(&config).unwrap();
        assert_eq!(served.fingerprint(), first);
        assert!(!served.changed_on_disk());

        let renewed = certificate::renew(&config, NOW + 86_400).unwrap();
        assert!(served.changed_on_disk());
        assert_eq!(served.reload().unwrap(), renewed);
        assert!(!served.changed_on_disk());

        std::fs::write(&config.tls_cert, "half a certificate").unwrap();
        assert!(served.changed_on_disk());
        let err = served.reload().unwrap_err().to_string();
        assert!(err.contains("tls.cert_path"), "{err}");
        assert_eq!(served.fingerprint(), renewed);
        // Still changed: the next check tries again.
        assert!(served.changed_on_disk());
    }
}
