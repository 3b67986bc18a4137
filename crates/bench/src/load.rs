//! The load generator: many HTTPS/1.1 keep-alive connections, each a task that sends its next
//! request as soon as the previous answer is read (closed loop), recording every latency.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One request a workload wants sent.
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Bytes>,
}

/// Makes each connection's requests; `task` tells connections apart (and picks their account).
pub trait Workload: Send + Sync + 'static {
    fn token(&self, task: usize) -> Option<String>;
    fn next(&self, task: usize, rng: &mut u64) -> Call;
}

#[derive(Default, Clone)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    /// Statuses that were not 2xx (status, count), and transport failures as status 0.
    pub error_statuses: Vec<(u16, u64)>,
    pub latencies_us: Vec<u32>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn total(&self) -> u64 {
        self.ok + self.errors
    }

    /// Successful (2xx) answers per second: a server that answers errors fast is not fast.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The q-quantile latency in milliseconds (latencies must be sorted).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        for (status, n) in other.error_statuses {
            match self.error_statuses.iter_mut().find(|(s, _)| *s == status) {
                Some(slot) => slot.1 += n,
                None => self.error_statuses.push((status, n)),
            }
        }
        self.latencies_us.extend(other.latencies_us);
    }

    fn fail(&mut self, status: u16) {
        self.errors += 1;
        match self.error_statuses.iter_mut().find(|(s, _)| *s == status) {
            Some(slot) => slot.1 += 1,
            None => self.error_statuses.push((status, 1)),
        }
    }
}

pub fn tls_connector(ca_pem: &Path) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("cannot read {}", ca_pem.display()))?
    {
        roots.add(cert.context("bad certificate PEM")?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn connect(addr: SocketAddr, tls: &TlsConnector) -> Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tls.connect(name, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Drive `workload` from `connections` connections: `warmup` unmeasured, then `duration`.
pub async fn run(
    addr: SocketAddr,
    tls: TlsConnector,
    workload: Arc<dyn Workload>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Outcome {
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut tasks = Vec::with_capacity(connections);
    for task in 0..connections {
        let tls = tls.clone();
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            connection_loop(addr, tls, workload, task, measure_from, stop_at).await
        }));
    }
    let mut total = Outcome::default();
    for t in tasks {
        if let Ok(outcome) = t.await {
            total.merge(outcome);
        }
    }
    total.elapsed = duration;
    total.latencies_us.sort_unstable();
    total
}

async fn connection_loop(
    addr: SocketAddr,
    tls: TlsConnector,
    workload: Arc<dyn Workload>,
    task: usize,
    measure_from: Instant,
    stop_at: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (task as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let token = workload.token(task);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        let measured = now >= measure_from;
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(addr, &tls).await {
                Ok(s) => sender.insert(s),
                Err(_) => {
                    if measured {
                        outcome.fail(0);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let call = workload.next(task, &mut rng);
        let mut req = Request::builder()
            .method(call.method)
            .uri(&call.path)
            .header("host", addr.to_string())
            .header("accept", "application/fhir+json");
        if let Some(t) = &token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if call.body.is_some() {
            req = req.header("content-type", "application/fhir+json");
        }
        let Ok(req) = req.body(Full::new(call.body.unwrap_or_default())) else {
            outcome.fail(0);
            continue;
        };
        let sent = Instant::now();
        let result = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        }
        .await;
        let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        match result {
            Ok(status) if (200..300).contains(&status) => {
                if measured && Instant::now() <= stop_at {
                    outcome.ok += 1;
                    outcome.latencies_us.push(micros);
                }
            }
            Ok(status) => {
                if measured {
                    outcome.fail(status);
                    outcome.latencies_us.push(micros);
                }
            }
            Err(_) => {
                if measured {
                    outcome.fail(0);
                }
                sender = None;
            }
        }
    }
    outcome
}

/// A step of SplitMix64, for picking requests (not for security).
pub fn next_u64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn pick<'a, T>(state: &mut u64, items: &'a [T]) -> &'a T {
    &items[(next_u64(state) % items.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_counts_successes_and_quantiles_read_the_sorted_latencies() {
        let mut o = Outcome {
            ok: 30,
            elapsed: Duration::from_secs(2),
            latencies_us: (1..=100).map(|ms| ms * 1000).collect(),
            ..Outcome::default()
        };
        for _ in 0..10 {
            o.fail(503);
        }
        o.fail(0);
        assert_eq!(o.total(), 41);
        assert_eq!(o.throughput(), 15.0);
        assert_eq!(o.error_statuses, [(503, 10), (0, 1)]);
        assert_eq!(o.quantile_ms(0.5), 51.0);
        assert_eq!(o.quantile_ms(0.99), 99.0);
        assert_eq!(o.quantile_ms(1.0), 100.0);
        assert_eq!(Outcome::default().quantile_ms(0.5), 0.0);
    }
}
