//! Alert delivery to a webhook: each alert, as JSON, POSTed over HTTPS to
//! `detection.webhook_url`, its body signed with HMAC-SHA-256 under the secret in
//! `detection.webhook_secret_file`:
//!
//! `X-CareVault-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>`
//!
//! (the timestamp is signed too, so a receiver can refuse replays). Raising an alert only puts
//! the body on a bounded queue; one background task delivers in order, retrying a failed or
//! non-2xx delivery with doubling pauses, and counts what it delivered, what it gave up on (dead
//! letters) and what a full queue dropped. A slow or dead receiver never holds up a request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use ureq::tls::{PemItem, RootCerts, TlsConfig};

use crate::clock::SharedClock;
use crate::config::ConfigError;

/// Alerts waiting for delivery; beyond it new ones are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 256;
/// Attempts per alert before it becomes a dead letter.
pub const ATTEMPTS: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest secret accepted (bytes of its first line).
const MIN_SECRET_LEN: usize = 16;

/// `detection.webhook_*`, validated at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: url::Url,
    pub secret_file: PathBuf,
    /// Trust only this CA (PEM) for the receiver; unset: the public web PKI.
    pub ca_file: Option<PathBuf>,
}

impl WebhookTarget {
    /// From the three keys: all unset is no webhook; a URL needs a secret file.
    pub fn from_keys(
        url: Option<&str>,
        secret_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(url) = url else {
            if secret_file.is_some() || ca_file.is_some() {
                return Err(ConfigError::new(
                    "detection.webhook_url",
                    "required with detection.webhook_secret_file or detection.webhook_ca_file",
                ));
            }
            return Ok(None);
        };
        let url = url::Url::parse(url)
            .map_err(|_| ConfigError::new("detection.webhook_url", "not a URL"))?;
        if url.scheme() != "https" || url.host().is_none() {
            return Err(ConfigError::new(
                "detection.webhook_url",
                "must be an https:// URL (alerts leave the server only over TLS)",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(
                "detection.webhook_url",
                "must not hold credentials; the body is signed with detection.webhook_secret_file",
            ));
        }
        let secret_file = secret_file.ok_or_else(|| {
            ConfigError::new(
                "detection.webhook_secret_file",
                "required with detection.webhook_url",
            )
        })?;
        Ok(Some(Self {
            url,
            secret_file: secret_file.to_path_buf(),
            ca_file: ca_file.map(Path::to_path_buf),
        }))
    }
}

/// Delivery counters of one target (`carevault_alert_deliveries_total{target,outcome}`).
#[derive(Default)]
pub struct DeliveryStats {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_letters: AtomicU64,
    dropped: AtomicU64,
}

/// The metric family's header, written once before every target's lines.
pub fn deliveries_family(out: &mut String) {
    crate::metrics::family(
        out,
        "carevault_alert_deliveries_total",
        "counter",
        "Alert deliveries by target (webhook, syslog): delivered, retried (attempts after a failure), dead_letter (given up after every attempt), dropped (queue full).",
    );
}

impl DeliveryStats {
    pub(crate) fn record_delivery(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Before attempt `attempt` (from 1): nothing for the first, else count a retry and wait,
    /// the pause doubling from [`FIRST_PAUSE`].
    pub(crate) async fn pause_before(&self, attempt: u32) {
        if attempt > 1 {
            self.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(FIRST_PAUSE.saturating_mul(1 << (attempt - 2).min(16))).await;
        }
    }

    pub(crate) fn record_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// This target's lines (`target` is a fixed name: `webhook` or `syslog`).
    pub fn metrics_text(&self, target: &str, out: &mut String) {
        use std::fmt::Write;
        for (outcome, n) in [
            ("delivered", &self.delivered),
            ("retried", &self.retried),
            ("dead_letter", &self.dead_letters),
            ("dropped", &self.dropped),
        ] {
            let _ = writeln!(
                out,
                "carevault_alert_deliveries_total{{target=\"{target}\",outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// A delivery target's bounded queue and its counters.
pub(crate) fn delivery_queue() -> (
    mpsc::Sender<Vec<u8>>,
    mpsc::Receiver<Vec<u8>>,
    Arc<DeliveryStats>,
) {
    let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
    (queue, receiver, Arc::new(DeliveryStats::default()))
}

/// The sending half: where raised alerts are queued.
pub struct Webhook {
    queue: mpsc::Sender<Vec<u8>>,
    pub stats: Arc<DeliveryStats>,
}

/// The delivering half, run by [`Deliverer::spawn`].
pub struct Deliverer {
    receiver: mpsc::Receiver<Vec<u8>>,
    agent: ureq::Agent,
    url: String,
    secret: zeroize::Zeroizing<Vec<u8>>,
    stats: Arc<DeliveryStats>,
    clock: SharedClock,
}

impl Webhook {
    /// Read the secret and the CA now, so that a bad file stops the start naming its key.
    pub fn open(target: &WebhookTarget, clock: SharedClock) -> crate::Result<(Self, Deliverer)> {
        let secret = read_secret(&target.secret_file)?;
        let roots = match &target.ca_file {
            Some(path) => RootCerts::Specific(Arc::new(read_ca(path)?)),
            None => RootCerts::WebPki,
        };
        let agent = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            // A redirect would send the signed alert somewhere the operator did not name.
            .max_redirects(0)
            .build()
            .new_agent();
        let (queue, receiver, stats) = delivery_queue();
        Ok((
            Self {
                queue,
                stats: stats.clone(),
            },
            Deliverer {
                receiver,
                agent,
                url: target.url.to_string(),
                secret,
                stats,
                clock,
            },
        ))
    }

    /// Queue one alert's JSON body; never waits (a full queue drops it, counted).
    pub fn offer(&self, body: Vec<u8>) {
        if self.queue.try_send(body).is_err() {
            self.stats.record_drop();
        }
    }
}

impl Deliverer {
    /// Deliver queued alerts in order until the server stops.
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(body) = self.receiver.recv().await {
                self.deliver(body).await;
            }
        })
    }

    async fn deliver(&self, body: Vec<u8>) {
        let body = Arc::new(body);
        for attempt in 1..=ATTEMPTS {
            self.stats.pause_before(attempt).await;
            let signature = signature(&self.secret, self.clock.now_secs(), &body);
            let agent = self.agent.clone();
            let url = self.url.clone();
            let sent = body.clone();
            // ureq blocks: the attempt runs on the blocking pool, never on a request's thread.
            let outcome = tokio::task::spawn_blocking(move || {
                agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("X-CareVault-Signature", &signature)
                    .send(&sent[..])
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string())
            })
            .await;
            match outcome {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    self.stats.record_delivery();
                    return;
                }
                Ok(Ok(status)) => {
                    tracing::warn!(event = "alert_webhook_failed", attempt, status);
                }
                Ok(Err(error)) => {
                    tracing::warn!(event = "alert_webhook_failed", attempt, error = %error);
                }
                Err(e) => tracing::error!(event = "alert_webhook_failed", attempt, error = %e),
            }
        }
        self.stats.record_dead_letter();
        tracing::error!(
            event = "alert_webhook_dead_letter",
            attempts = ATTEMPTS,
            "an alert was not delivered to the webhook; it stays in the audit trail and GET /alerts"
        );
    }
}

/// `t=<secs>,v1=<hex HMAC-SHA-256(secret, "<secs>.<body>")>`.
pub fn signature(secret: &[u8], secs: i64, body: &[u8]) -> String {
    let mut signed = format!("{secs}.").into_bytes();
    signed.extend_from_slice(body);
    let mac = carevault_crypto::hmac_sha256(secret, &signed);
    format!("t={secs},v1={}", hex::encode(mac))
}

fn read_secret(path: &Path) -> crate::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::os::unix::fs::PermissionsExt;
    let refuse = |what: String| {
        crate::Error::Unavailable(format!(
            "configuration error in `detection.webhook_secret_file`: {what}"
        ))
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| refuse(format!("cannot read {}: {}", path.display(), e.kind())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "{} is readable by others; chmod 600 it",
            path.display()
        )));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| refuse(format!("cannot read {}: {}", path.display(), e.kind())))?,
    );
    let line = text.lines().next().unwrap_or_default().trim();
    if line.len() < MIN_SECRET_LEN {
        return Err(refuse(format!(
            "its first line must hold at least {MIN_SECRET_LEN} bytes"
        )));
    }
    Ok(zeroize::Zeroizing::new(line.as_bytes().to_vec()))
}

fn read_ca(path: &Path) -> crate::Result<Vec<ureq::tls::Certificate<'static>>> {
    let refuse = |what: String| {
        crate::Error::Unavailable(format!(
            "configuration error in `detection.webhook_ca_file`: {what}"
        ))
    };
    let pem = std::fs::read(path)
        .map_err(|e| refuse(format!("cannot read {}: {}", path.display(), e.kind())))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|_| refuse("not valid PEM".into()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(refuse(format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        let secret = b"0123456789abcdef";
        let a = signature(secret, 1_796_000_000, b"{\"rule\":\"x\"}");
        assert!(a.starts_with("t=1796000000,v1="));
        assert_eq!(a.len(), "t=1796000000,v1=".len() + 64);
        assert_ne!(a, signature(secret, 1_796_000_001, b"{\"rule\":\"x\"}"));
        assert_ne!(a, signature(secret, 1_796_000_000, b"{\"rule\":\"y\"}"));
        assert_ne!(
            a,
            signature(b"another secret!!", 1_796_000_000, b"{\"rule\":\"x\"}")
        );
    }

    #[test]
    fn the_keys_are_checked_naming_the_key() {
        let f = Path::new("/etc/carevault/webhook-secret");
        assert_eq!(WebhookTarget::from_keys(None, None, None).unwrap(), None);
        let cases: [(Option<&str>, Option<&Path>, &str); 5] = [
            (None, Some(f), "detection.webhook_url"),
            (Some("http://alerts.example.org/hook"), Some(f), "https://"),
            (Some("not a url"), Some(f), "not a URL"),
            (
                Some("https://alerts.example.org/hook"),
                None,
                "detection.webhook_secret_file",
            ),
            (
                Some("https://u:p@alerts.example.org/hook"),
                Some(f),
                "credentials",
            ),
        ];
        for (url, secret, expected) in cases {
            let err = WebhookTarget::from_keys(url, secret, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{url:?}: {err}");
        }
        let ok = WebhookTarget::from_keys(Some("https://alerts.example.org/hook"), Some(f), None)
            .unwrap()
            .unwrap();
        assert_eq!(ok.url.as_str(), "https://alerts.example.org/hook");
    }

    #[test]
    fn a_short_or_readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("at least 16 bytes"), "{err}");
        std::fs::write(&path, "a long enough webhook secret\n").unwrap();
        assert_eq!(
            &read_secret(&path).unwrap()[..],
            b"a long enough webhook secret"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
        assert!(!err.contains("a long enough"));
    }
}
