//! Connection hygiene (#27): clients that are slow at each step (headers, body, silence) are cut
//! at their configured timeouts, one address cannot hold more than its share of connections,
//! and a flood of idle connections under a low descriptor limit does not keep other clients out.
//!
//! These tests speak raw HTTP over TLS (tokio-rustls), from chosen loopback source addresses
//! (127.0.0.2 and up stand for other clients), with timeouts set to a few seconds. Every wait
//! has a deadline well beyond the timeout it checks, so a slow machine does not fail them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carevault_testkit::{Account, Api, TestServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{bin, patient};

/// How long past a timeout the server may take to act on it (a loaded 2-core machine).
const MARGIN: Duration = Duration::from_secs(5);
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// `srv`'s own `host:port`: a request naming any other host answers 421.
fn authority(srv: &TestServer) -> String {
    srv.base.split("://").nth(1).unwrap_or_default().to_owned()
}

/// `GET /fhir/metadata`, addressed to `srv`.
fn metadata(srv: &TestServer) -> Vec<u8> {
    format!(
        "GET /fhir/metadata HTTP/1.1\r\nHost: {}\r\n\r\n",
        authority(srv)
    )
    .into_bytes()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Opens connections to a test server from a chosen source address.
#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    tls: TlsConnector,
}

impl Client {
    fn new(srv: &TestServer, alpn: &[u8]) -> Self {
        let addr: SocketAddr = srv.base.trim_start_matches("https://").parse().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(srv.ca_pem()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Self {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    async fn tcp_from(&self, source: IpAddr) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(self.addr).await
    }

    async fn tls_from(&self, source: IpAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp_from(source).await?;
        self.tls
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await
    }
}

/// Read until the server closes the connection (end of stream or reset); what it sent, or None
/// if the connection is still open after `limit`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Vec<u8>> {
    tokio::time::timeout(limit, async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()
}

/// Send one HTTP/1.1 request and read its response (headers and a Content-Length body); the
/// status code.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, request: &[u8]) -> u16 {
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response");
        got.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while got.len() < head_end + length {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed in the response body");
        got.extend_from_slice(&chunk[..n]);
    }
    head[9..12].parse().unwrap()
}

const GOAWAY: u8 = 7;

/// The types of the HTTP/2 frames in `bytes` (each: a 3-byte length, the type, flags, stream).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// An auditor's view of the server's /metrics.
fn metrics_reader(srv: &TestServer, admin: &Account) -> Api {
    srv.user(admin, "aud.metrics", &["auditor"], None).api
}

/// The value of one sample in the server's /metrics.
fn metric(auditor: &Api, sample: &str) -> u64 {
    let text = auditor.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{text}"))
}

#[test]
fn slow_headers_are_cut_at_the_header_timeout() {
    let srv = TestServer::start_with(bin(), &[("CAREVAULT_HTTP_HEADER_TIMEOUT_SECS", "2")]);
    let client = Client::new(&srv, b"http/1.1");
    let elapsed = runtime().block_on(async {
        let tls = client.tls_from(LOCAL).await.unwrap();
        let (mut reader, mut writer) = tokio::io::split(tls);
        let started = Instant::now();
        // Half a request line, then the rest of it and one header line a second.
        let trickle = tokio::spawn(async move {
            writer.write_all(b"GET /fhir/meta").await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer.write_all(b"data HTTP/1.1\r\n").await?;
            for i in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                writer
                    .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                    .await?;
            }
            std::io::Result::Ok(())
        });
        let closed = closed_within(&mut reader, Duration::from_secs(2) + MARGIN).await;
        trickle.abort();
        assert!(
            closed.is_some(),
            "a client sending one header line a second still held its connection after {:?}",
            started.elapsed()
        );
        started.elapsed()
    });
    assert!(
        elapsed >= Duration::from_secs(1),
        "closed too early: {elapsed:?}"
    );
    let auditor = metrics_reader(&srv, &srv.admin());
    assert!(metric(&auditor, "carevault_http_timeouts_total{kind=\"header\"}") >= 1);
}

#[test]
fn a_trickling_body_is_cut_at_its_deadline() {
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_HTTP_BODY_TIMEOUT_SECS", "2"),
            ("CAREVAULT_HTTP_BODY_MIN_BYTES_PER_SEC", "1000"),
        ],
    );
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.slow", &["clinician"], Some("org-a"));
    let token = clin.api.token.clone().unwrap();
    let body = patient("Slow", "Body").to_string();
    let host = authority(&srv);
    let client = Client::new(&srv, b"http/1.1");
    let got = runtime().block_on(async {
        let tls = client.tls_from(LOCAL).await.unwrap();
        let (mut reader, mut writer) = tokio::io::split(tls);
        let head = format!(
            "POST /fhir/Patient HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let started = Instant::now();
        // Authenticated headers at once, then the body at one byte a second.
        let trickle = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await?;
            for byte in body.bytes() {
                writer.write_all(&[byte]).await?;
                writer.flush().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            std::io::Result::Ok(())
        });
        let closed = closed_within(&mut reader, Duration::from_secs(2) + MARGIN).await;
        trickle.abort();
        let Some(got) = closed else {
            panic!(
                "a body arriving at one byte a second was still being read after {:?}",
                started.elapsed()
            );
        };
        got
    });
    // The server answers 408 and closes; a reset may swallow the answer, but not the count.
    let answer = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    let auditor = metrics_reader(&srv, &admin);
    assert_eq!(
        metric(&auditor, "carevault_http_timeouts_total{kind=\"body\"}"),
        1
    );
    let versions = srv.query_i64("SELECT COUNT(*) FROM resource_version");
    assert_eq!(versions, 0, "nothing is written from a body that was cut");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let srv = TestServer::start_with(bin(), &[("CAREVAULT_HTTP_IDLE_TIMEOUT_SECS", "2")]);
    let h1 = Client::new(&srv, b"http/1.1");
    let h2 = Client::new(&srv, b"h2");
    let limit = Duration::from_secs(2) + MARGIN;
    runtime().block_on(async {
        // HTTP/1.1 kept alive after a request (the header timeout, 20 s, is not what closes it).
        let mut kept = h1.tls_from(LOCAL).await.unwrap();
        assert_eq!(exchange(&mut kept, &metadata(&srv)).await, 200);
        let answered = Instant::now();
        // HTTP/2: the preface and empty settings, then nothing.
        let mut quiet_h2 = h2.tls_from(LOCAL).await.unwrap();
        quiet_h2
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        // TLS, then not a byte.
        let mut silent = h1.tls_from(LOCAL).await.unwrap();
        let (kept, quiet_h2, silent) = tokio::join!(
            closed_within(&mut kept, limit),
            closed_within(&mut quiet_h2, limit),
            closed_within(&mut silent, limit),
        );
        assert!(kept.is_some(), "an idle HTTP/1.1 connection stayed open");
        assert!(
            answered.elapsed() >= Duration::from_secs(1),
            "closed before the idle timeout: {:?}",
            answered.elapsed()
        );
        let frames = quiet_h2.expect("an idle HTTP/2 connection stayed open");
        assert!(frame_types(&frames).contains(&GOAWAY), "{frames:?}");
        assert!(silent.is_some(), "a silent TLS connection stayed open");
    });
    let auditor = metrics_reader(&srv, &srv.admin());
    assert!(metric(&auditor, "carevault_http_timeouts_total{kind=\"idle\"}") >= 3);
}

#[test]
fn connections_beyond_the_per_address_cap_are_closed_at_once() {
    let srv = TestServer::start_with(bin(), &[("CAREVAULT_HTTP_MAX_CONNECTIONS_PER_IP", "4")]);
    let client = Client::new(&srv, b"http/1.1");
    runtime().block_on(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(client.tls_from(ELSEWHERE).await.unwrap());
        }
        assert_eq!(exchange(&mut held[0], &metadata(&srv)).await, 200);
        for _ in 0..3 {
            let refused = tokio::time::timeout(MARGIN, client.tls_from(ELSEWHERE)).await;
            assert!(
                matches!(refused, Ok(Err(_))),
                "a fifth connection from one address was not closed at once"
            );
        }
        // The connections already held, and other addresses, are served as before.
        assert_eq!(exchange(&mut held[0], &metadata(&srv)).await, 200);
        assert_eq!(exchange(&mut held[3], &metadata(&srv)).await, 200);
        let mut other = client.tls_from(LOCAL).await.unwrap();
        assert_eq!(exchange(&mut other, &metadata(&srv)).await, 200);
    });
    let auditor = metrics_reader(&srv, &srv.admin());
    assert_eq!(
        metric(
            &auditor,
            "carevault_http_connections_refused_total{cap=\"per_ip\"}"
        ),
        3
    );
}

#[test]
fn an_idle_flood_under_a_low_descriptor_limit_does_not_keep_others_out() {
    // 256 descriptors; no per-address cap in the way: the flood comes from eight addresses,
    // 400 connections in all, TLS completed where the server lets it, then idle.
    let srv = TestServer::start_with_fd_limit(
        bin(),
        &[("CAREVAULT_HTTP_MAX_CONNECTIONS_PER_IP", "100000")],
        256,
    );
    let client = Client::new(&srv, b"http/1.1");
    let slowest = runtime().block_on(async {
        let mut flood = tokio::task::JoinSet::new();
        for i in 0..400u16 {
            let client = client.clone();
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % 8) as u8));
            flood.spawn(async move {
                let tcp = client.tcp_from(source).await.ok()?;
                let name = ServerName::IpAddress(client.addr.ip().into());
                let tls =
                    tokio::time::timeout(Duration::from_secs(3), client.tls.connect(name, tcp));
                // Hold the connection whether or not the handshake completed.
                Some(tls.await)
            });
        }
        let mut held = Vec::new();
        while let Some(joined) = flood.join_next().await {
            held.push(joined.unwrap());
        }
        // A normal client keeps getting answers, each on a new connection, each within a
        // deadline far beyond its usual few milliseconds.
        let mut slowest = Duration::ZERO;
        let request = metadata(&srv);
        for i in 0..10 {
            let started = Instant::now();
            let answered = tokio::time::timeout(MARGIN, async {
                let mut tls = client.tls_from(LOCAL).await?;
                std::io::Result::Ok(exchange(&mut tls, &request).await)
            })
            .await;
            assert!(
                matches!(answered, Ok(Ok(200))),
                "request {i} during the flood: {answered:?}"
            );
            slowest = slowest.max(started.elapsed());
        }
        drop(held);
        slowest
    });
    eprintln!("slowest answer during the flood: {slowest:?}");
    let logs = srv.logs();
    let paused = logs.matches("accept_paused").count();
    assert!(
        paused <= 3,
        "accept failures logged {paused} times:\n{logs}"
    );
    let auditor = metrics_reader(&srv, &srv.admin());
    assert!(metric(&auditor, "carevault_http_connections_shed_total") > 0);
}

#[test]
fn plain_http_on_loopback_is_served_under_the_same_limits() {
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_ALLOW_PLAIN_HTTP", "true"),
            ("CAREVAULT_HTTP_IDLE_TIMEOUT_SECS", "2"),
        ],
    );
    let addr: SocketAddr = srv
        .base
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not plain HTTP: {}", srv.base))
        .parse()
        .unwrap();
    runtime().block_on(async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        assert_eq!(exchange(&mut tcp, &metadata(&srv)).await, 200);
        assert!(
            closed_within(&mut tcp, Duration::from_secs(2) + MARGIN)
                .await
                .is_some(),
            "an idle plain HTTP connection stayed open"
        );
    });
    // Enrollment and login (whose rate limit reads the client's address) work as over TLS.
    let auditor = metrics_reader(&srv, &srv.admin());
    assert!(metric(&auditor, "carevault_http_timeouts_total{kind=\"idle\"}") >= 1);
}

#[test]
fn http2_advertises_its_configured_stream_and_header_limits() {
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_HTTP_H2_MAX_CONCURRENT_STREAMS", "7"),
            ("CAREVAULT_HTTP_H2_MAX_HEADER_LIST_BYTES", "12345"),
        ],
    );
    let h2 = Client::new(&srv, b"h2");
    let settings = runtime().block_on(async {
        let mut tls = h2.tls_from(LOCAL).await.unwrap();
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        // The server's first frame is its SETTINGS: a 9-byte header, then 6 bytes a setting.
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if got.len() >= 9 {
                let len =
                    usize::from(got[0]) << 16 | usize::from(got[1]) << 8 | usize::from(got[2]);
                if got.len() >= 9 + len {
                    assert_eq!(got[3], 4, "the first frame is SETTINGS");
                    break got[9..9 + len].to_vec();
                }
            }
            let n = tokio::time::timeout(MARGIN, tls.read(&mut chunk))
                .await
                .expect("the server sends its settings")
                .unwrap();
            assert!(n > 0, "closed before its settings");
            got.extend_from_slice(&chunk[..n]);
        }
    });
    let advertised: Vec<(u16, u32)> = settings
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) and SETTINGS_MAX_HEADER_LIST_SIZE (0x6).
    assert!(advertised.contains(&(3, 7)), "{advertised:?}");
    assert!(advertised.contains(&(6, 12345)), "{advertised:?}");
}
