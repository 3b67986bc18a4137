//! Alert delivery to a syslog collector: RFC 5424 messages over TCP with TLS (RFC 5425,
//! octet-counted framing), to `detection.syslog_address`, trusting only the CA in
//! `detection.syslog_ca_file`. Like the webhook, raising only queues the message (bounded); one
//! background task keeps a connection, reconnects after a failure with doubling pauses, and gives
//! up on a message after [`ATTEMPTS`] (a dead letter, counted).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::alerts::AlertInput;
use super::rules::Severity;
use super::webhook::{ATTEMPTS, DeliveryStats, delivery_queue};
use crate::config::ConfigError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection unused this long is reopened before the next message: a collector may have
/// closed it meanwhile, and a write to a closed TCP connection still "succeeds" locally.
const MAX_IDLE: Duration = Duration::from_secs(30);
/// RFC 5424 facility `authpriv` (security/authorization messages).
const FACILITY_AUTHPRIV: u8 = 10;
/// The structured-data id: CareVault's parameters, under the documentation enterprise number.
const SD_ID: &str = "carevault@32473";

/// `detection.syslog_*`, validated at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogTarget {
    /// `host:port` of the collector's TLS listener (RFC 5425's port is 6514).
    pub host: String,
    pub port: u16,
    /// The CA (PEM) the collector's certificate must chain to.
    pub ca_file: PathBuf,
}

impl SyslogTarget {
    pub fn from_keys(
        address: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(address) = address else {
            if ca_file.is_some() {
                return Err(ConfigError::new(
                    "detection.syslog_address",
                    "required with detection.syslog_ca_file",
                ));
            }
            return Ok(None);
        };
        let bad = || ConfigError::new("detection.syslog_address", "expected host:port");
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || ServerName::try_from(host.to_owned()).is_err() {
            return Err(bad());
        }
        let ca_file = ca_file.ok_or_else(|| {
            ConfigError::new(
                "detection.syslog_ca_file",
                "required with detection.syslog_address (alerts leave the server only over TLS)",
            )
        })?;
        Ok(Some(Self {
            host: host.to_owned(),
            port,
            ca_file: ca_file.to_path_buf(),
        }))
    }
}

/// The sending half: where raised alerts are queued.
pub struct Syslog {
    queue: mpsc::Sender<Vec<u8>>,
    hostname: String,
    pub stats: Arc<DeliveryStats>,
}

/// The delivering half, run by [`SyslogDeliverer::spawn`].
pub struct SyslogDeliverer {
    receiver: mpsc::Receiver<Vec<u8>>,
    connector: TlsConnector,
    target: SyslogTarget,
    stats: Arc<DeliveryStats>,
}

impl Syslog {
    /// Read the CA now, so that a bad file stops the start naming its key. `hostname` is the
    /// message's HOSTNAME field (the node id).
    pub fn open(target: &SyslogTarget, hostname: &str) -> crate::Result<(Self, SyslogDeliverer)> {
        let roots = crate::certificate::ca_roots("detection.syslog_ca_file", &target.ca_file)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::Error::Internal(format!("tls versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (queue, receiver, stats) = delivery_queue();
        Ok((
            Self {
                queue,
                hostname: hostname.to_owned(),
                stats: stats.clone(),
            },
            SyslogDeliverer {
                receiver,
                connector: TlsConnector::from(Arc::new(config)),
                target: target.clone(),
                stats,
            },
        ))
    }

    /// Queue one alert; never waits (a full queue drops it, counted).
    pub fn offer(&self, id: &str, input: &AlertInput, time: &str) {
        let message = message(&self.hostname, id, input, time);
        if self.queue.try_send(message).is_err() {
            self.stats.record_drop();
        }
    }
}

impl SyslogDeliverer {
    /// Deliver queued alerts in order until the server stops.
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut connection: Option<TlsStream<TcpStream>> = None;
            let mut last_used = std::time::Instant::now();
            while let Some(message) = self.receiver.recv().await {
                if last_used.elapsed() > MAX_IDLE {
                    connection = None;
                }
                let frame = frame(&message);
                self.deliver(&mut connection, &frame).await;
                last_used = std::time::Instant::now();
            }
        })
    }

    async fn deliver(&self, connection: &mut Option<TlsStream<TcpStream>>, frame: &[u8]) {
        for attempt in 1..=ATTEMPTS {
            self.stats.pause_before(attempt).await;
            if connection.is_none() {
                match self.connect().await {
                    Ok(c) => *connection = Some(c),
                    Err(error) => {
                        tracing::warn!(event = "alert_syslog_failed", attempt, error = %error);
                        continue;
                    }
                }
            }
            if let Some(stream) = connection.as_mut() {
                match write(stream, frame).await {
                    Ok(()) => {
                        self.stats.record_delivery();
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(event = "alert_syslog_failed", attempt, error = %error);
                        *connection = None;
                    }
                }
            }
        }
        self.stats.record_dead_letter();
        tracing::error!(
            event = "alert_syslog_dead_letter",
            attempts = ATTEMPTS,
            "an alert was not delivered to syslog; it stays in the audit trail and GET /alerts"
        );
    }

    async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let timeout = |_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.target.host.as_str(), self.target.port)),
        )
        .await
        .map_err(timeout)??;
        let name = ServerName::try_from(self.target.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tokio::time::timeout(CONNECT_TIMEOUT, self.connector.connect(name, tcp))
            .await
            .map_err(timeout)?
    }
}

async fn write(stream: &mut TlsStream<TcpStream>, frame: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        stream.write_all(frame).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

/// RFC 5425 octet counting: `MSG-LEN SP SYSLOG-MSG`.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message);
    out
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME carevault PROCID alert [SD] MSG`.
pub fn message(hostname: &str, id: &str, input: &AlertInput, time: &str) -> Vec<u8> {
    let severity = match input.severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
    };
    let pri = FACILITY_AUTHPRIV * 8 + severity;
    let count = input.count.to_string();
    let mut params = vec![
        ("id", id),
        ("rule", input.rule.id()),
        ("severity", input.severity.as_str()),
        ("principal", input.principal.as_str()),
        ("source_ip", input.source_ip.as_str()),
        ("count", count.as_str()),
    ];
    if let Some(digest) = &input.digest {
        params.push(("digest", digest.as_str()));
    }
    let sd: String = params
        .iter()
        .map(|(k, v)| format!(" {k}=\"{}\"", sd_escape(v)))
        .collect();
    format!(
        "<{pri}>1 {time} {} carevault {} alert [{SD_ID}{sd}] security alert {}",
        header_field(hostname),
        std::process::id(),
        input.rule.id()
    )
    .into_bytes()
}

/// RFC 5424 PARAM-VALUE escaping: `"`, `\` and `]`.
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most 255 characters; `-` if empty.
fn header_field(value: &str) -> String {
    let field: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::Rule;

    #[test]
    fn a_message_is_rfc5424_with_escaped_structured_data() {
        let mut input =
            AlertInput::new(Rule::CredentialStuffing, "anon\"ymous]", "203.0.113.7", 12);
        input.digest = Some("ab12".into());
        let m = String::from_utf8(message(
            "node 1",
            "id-1",
            &input,
            "2026-12-05T22:41:07.123456Z",
        ))
        .unwrap();
        // authpriv (10) * 8 + err (3) for a high-severity alert.
        assert!(
            m.starts_with("<83>1 2026-12-05T22:41:07.123456Z node1 carevault "),
            "{m}"
        );
        assert!(
            m.contains(" alert [carevault@32473 id=\"id-1\" rule=\"credential.stuffing\""),
            "{m}"
        );
        assert!(m.contains("principal=\"anon\\\"ymous\\]\""), "{m}");
        assert!(
            m.contains("digest=\"ab12\"] security alert credential.stuffing"),
            "{m}"
        );
        assert_eq!(frame(b"abc"), b"3 abc");
    }

    #[test]
    fn the_keys_are_checked_naming_the_key() {
        let ca = Path::new("/etc/carevault/syslog-ca.pem");
        assert_eq!(SyslogTarget::from_keys(None, None).unwrap(), None);
        for (address, ca_file, expected) in [
            (None, Some(ca), "detection.syslog_address"),
            (Some("collector.example.org"), Some(ca), "host:port"),
            (Some("collector.example.org:0"), Some(ca), "host:port"),
            (
                Some("collector.example.org:6514"),
                None,
                "detection.syslog_ca_file",
            ),
        ] {
            let err = SyslogTarget::from_keys(address, ca_file)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{address:?}: {err}");
        }
        let t = SyslogTarget::from_keys(Some("[::1]:6514"), Some(ca))
            .unwrap()
            .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 6514));
    }
}
