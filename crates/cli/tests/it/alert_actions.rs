//! Alerts delivered to a real webhook receiver over HTTPS (a TLS listener of the test's own, with
//! a certificate from a test CA given as `detection.webhook_ca_file`): the body is signed with
//! HMAC-SHA-256 over the timestamp and the body, a receiver that answers 503 is retried, and
//! neither the payload's canary nor the secret appears in the delivery or the server's output.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carevault_testkit::{TestServer, wait_for};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::pg_tls::pki;
use crate::{bin, urlencode};

const CANARY: &str = "QZXWEBHOOKCANARY2291";
const SECRET: &str = "webhook-secret-for-the-test-only-7c1e";

/// One delivery as the receiver saw it: the signature header and the body.
type Delivery = (String, Vec<u8>);

fn server_tls(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    )
}

type TlsConn = rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

/// A TLS listener on a port of its own; `serve` handles each connection in turn.
fn tls_listener(
    cert_pem: &str,
    key_pem: &str,
    mut serve: impl FnMut(&mut TlsConn) + Send + 'static,
) -> SocketAddr {
    let config = server_tls(cert_pem, key_pem);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            serve(&mut rustls::StreamOwned::new(conn, tcp));
        }
    });
    addr
}

/// A syslog-over-TLS listener: every octet-counted message it receives.
fn syslog_listener(cert_pem: &str, key_pem: &str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let addr = tls_listener(cert_pem, key_pem, move |tls| {
        // MSG-LEN SP SYSLOG-MSG, repeated, until the sender closes.
        loop {
            let mut len = String::new();
            let mut byte = [0u8; 1];
            while tls.read_exact(&mut byte).is_ok() && byte[0] != b' ' {
                len.push(char::from(byte[0]));
            }
            let Ok(n) = len.parse::<usize>() else { break };
            let mut message = vec![0u8; n];
            if tls.read_exact(&mut message).is_err() {
                break;
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&message).into_owned());
        }
    });
    (addr, got)
}

/// An HTTPS receiver answering 503 to the first `fail_first` deliveries, then 200.
fn receiver(
    cert_pem: &str,
    key_pem: &str,
    fail_first: usize,
) -> (SocketAddr, Arc<Mutex<Vec<Delivery>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let addr = tls_listener(cert_pem, key_pem, move |tls| {
        let Some(delivery) = read_request(tls) else {
            return;
        };
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(delivery);
            seen.len()
        };
        let status = if n <= fail_first {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let _ = tls.write_all(
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let _ = tls.flush();
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    (addr, got)
}

/// The signature header and the body of one HTTP/1.1 request.
fn read_request(s: &mut impl Read) -> Option<Delivery> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((header("x-carevault-signature").unwrap_or_default(), body))
}

/// Check `t=<secs>,v1=<hex>` against the secret, as a receiver would.
fn signature_verifies(signature: &str, body: &[u8]) -> bool {
    let Some((t, v1)) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let mac = carevault_crypto::hmac_sha256(SECRET.as_bytes(), &signed);
    data_encoding::HEXLOWER.encode(&mac) == v1
}

#[test]
fn an_alert_reaches_the_webhook_signed_and_retried_and_syslog_as_rfc5424() {
    let operator = pki();
    let (addr, got) = receiver(&operator.server_cert_pem, &operator.server_key_pem, 1);
    let (syslog_addr, syslog) =
        syslog_listener(&operator.server_cert_pem, &operator.server_key_pem);
    let syslog_address = format!("127.0.0.1:{}", syslog_addr.port());
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("webhook-secret");
    let ca = dir.path().join("webhook-ca.pem");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let mut perms = std::fs::metadata(&secret).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&secret, perms).unwrap();
    std::fs::write(&ca, &operator.ca_pem).unwrap();
    let url = format!("https://127.0.0.1:{}/carevault-alerts", addr.port());
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_DETECTION_WEBHOOK_URL", url.as_str()),
            (
                "CAREVAULT_DETECTION_WEBHOOK_SECRET_FILE",
                secret.to_str().unwrap(),
            ),
            ("CAREVAULT_DETECTION_WEBHOOK_CA_FILE", ca.to_str().unwrap()),
            (
                "CAREVAULT_DETECTION_SYSLOG_ADDRESS",
                syslog_address.as_str(),
            ),
            ("CAREVAULT_DETECTION_SYSLOG_CA_FILE", ca.to_str().unwrap()),
        ],
    );

    // An anonymous SQL injection probe: refused (401), alerted all the same.
    let probe = format!("{CANARY}' UNION SELECT password FROM credential--");
    let r = srv
        .api()
        .get(&format!("/fhir/Patient?name={}", urlencode(&probe)));
    assert_eq!(r.status, 401);

    wait_for("a retried delivery", Duration::from_secs(30), || {
        got.lock().unwrap().len() >= 2
    });
    let deliveries = got.lock().unwrap().clone();
    let (_, first_body) = &deliveries[0];
    for (signature, body) in &deliveries {
        assert_eq!(body, first_body, "a retry sends the same alert");
        assert!(signature_verifies(signature, body), "{signature}");
        assert!(!signature_verifies(signature, b"{\"rule\":\"forged\"}"));
    }
    let alert: serde_json::Value = serde_json::from_slice(first_body).unwrap();
    assert_eq!(alert["rule"], "injection.sql");
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["principal"], "anonymous");
    assert!(alert["digest"].as_str().is_some_and(|d| !d.is_empty()));
    let text = String::from_utf8_lossy(first_body);
    assert!(!text.contains(CANARY), "{text}");

    wait_for("the syslog message", Duration::from_secs(30), || {
        !syslog.lock().unwrap().is_empty()
    });
    let message = syslog.lock().unwrap()[0].clone();
    // authpriv (10) * 8 + err (3): a high-severity alert.
    assert!(message.starts_with("<83>1 "), "{message}");
    assert!(
        message.contains(&format!("id=\"{}\"", alert["id"].as_str().unwrap())),
        "{message}"
    );
    assert!(message.contains("rule=\"injection.sql\""), "{message}");
    assert!(
        message.ends_with("security alert injection.sql"),
        "{message}"
    );
    assert!(!message.contains(CANARY), "{message}");

    wait_for("the 503 in the log", Duration::from_secs(10), || {
        srv.logs().contains("alert_webhook_failed")
    });
    let output = srv.output();
    assert!(!output.contains(CANARY));
    assert!(!output.contains(SECRET));
}

#[test]
fn a_webhook_secret_readable_by_others_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let mut perms = std::fs::metadata(&secret).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&secret, perms).unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env(
            "CAREVAULT_DETECTION_WEBHOOK_URL",
            "https://127.0.0.1:9/hook",
        )
        .env("CAREVAULT_DETECTION_WEBHOOK_SECRET_FILE", &secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = carevault_testkit::output_text(&out);
    assert!(text.contains("detection.webhook_secret_file"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[test]
fn with_blocking_configured_a_stuffing_address_is_refused_and_others_are_not() {
    use std::net::{IpAddr, Ipv4Addr};
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_DETECTION_BLOCK_STUFFING_MINUTES", "5"),
            ("CAREVAULT_DETECTION_STUFFING_ACCOUNTS_PER_IP", "3"),
        ],
    );
    let attacker = srv
        .api()
        .from_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)));
    let bystander = srv
        .api()
        .from_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12)));
    assert_eq!(attacker.get("/fhir/metadata").status, 200);
    for i in 0..3 {
        let r = attacker.post_json(
            "/auth/login",
            &serde_json::json!({"username": format!("{CANARY}user{i}"), "password": "wrong", "totp_code": "123456"}),
        );
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // The third account crossed the threshold: the address is refused from the next request on,
    // whatever it asks for, and told when to come back.
    let refused = attacker.get("/fhir/metadata");
    assert_eq!(refused.status, 429, "{}", refused.text());
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((240..=301).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.json()["resourceType"], "OperationOutcome");
    assert_eq!(bystander.get("/fhir/metadata").status, 200);
    wait_for("the response in the log", Duration::from_secs(10), || {
        srv.logs().contains("\"response\":\"block-address\"")
    });
    assert!(!srv.output().contains(CANARY));
}
