//! TLS as an outside client sees it: the generated certificate's validity, the server's own
//! cipher-suite order, a certificate replaced without a restart, and testssl.sh (Debian package
//! `testssl.sh`, installed by `.ci/run`) finding nothing HIGH or CRITICAL beyond what a
//! self-signed certificate inherently draws.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use carevault_server::certificate;
use carevault_testkit::{Api, TestServer, wait_for};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::pg_tls::pki;
use crate::server;

#[test]
fn the_generated_certificate_is_valid_for_397_days_and_is_marked_as_generated() {
    let srv = server();
    let info = certificate::inspect(&srv.ca_pem()).unwrap();
    assert!(info.generated);
    assert_eq!(info.validity_days(), certificate::VALIDITY_DAYS);
    assert!(srv.output().contains(&info.fingerprint));
}

#[test]
fn the_server_chooses_the_cipher_suite_in_its_own_order() {
    let srv = server();
    let addr: SocketAddr = srv.base.trim_start_matches("https://").parse().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(srv.ca_pem()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    // A client that prefers ChaCha20 (as some mobile clients do): the server's first choice,
    // AES-256-GCM, must win.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let suite = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .unwrap();
        tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
    });
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
}

/// A client that trusts only `ca_pem` (written to a file of the test's own).
fn api_trusting(srv: &TestServer, ca_pem: &str) -> Api {
    let path = srv.tmp_dir().join("operator-ca.pem");
    std::fs::write(&path, ca_pem).unwrap();
    Api::new(&srv.base, &path)
}

#[test]
fn an_operators_certificate_is_served_after_sighup_and_a_broken_one_is_not() {
    let srv = server();
    let tls_dir = srv.ca_pem().parent().unwrap().to_path_buf();
    let operator = pki();
    let operator_api = api_trusting(&srv, &operator.ca_pem);

    std::fs::write(tls_dir.join("key.pem"), &operator.server_key_pem).unwrap();
    std::fs::write(tls_dir.join("cert.pem"), &operator.server_cert_pem).unwrap();
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &srv.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hangup();
    wait_for(
        "the operator's certificate",
        Duration::from_secs(20),
        || {
            operator_api
                .try_get("/healthz")
                .is_ok_and(|r| r.status == 200)
        },
    );
    let new_fp = certificate::inspect(&tls_dir.join("cert.pem"))
        .unwrap()
        .fingerprint;
    wait_for("the reload's log line", Duration::from_secs(10), || {
        srv.logs()
            .lines()
            .any(|l| l.contains("tls_certificate_reloaded") && l.contains(&new_fp))
    });

    // A key that does not parse (a copy caught half-way): the server keeps the certificate it
    // has, says so, and goes on serving.
    let truncated = &operator.server_key_pem[..operator.server_key_pem.len() / 2];
    std::fs::write(tls_dir.join("key.pem"), truncated).unwrap();
    hangup();
    wait_for(
        "the failed reload's log line",
        Duration::from_secs(20),
        || srv.logs().contains("tls_certificate_reload_failed"),
    );
    assert_eq!(operator_api.get("/healthz").status, 200);
    let key_body = truncated.lines().nth(1).unwrap();
    assert!(!srv.output().contains(key_body));
}

#[test]
fn testssl_finds_nothing_high_or_critical_beyond_the_self_signed_certificate() {
    let srv = server();
    let out = srv.tmp_dir().join("testssl.json");
    let authority = srv.base.trim_start_matches("https://").to_owned();
    let run = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "off", "--jsonfile"])
        .arg(&out)
        .arg(&authority)
        .output()
        .unwrap_or_else(|e| {
            panic!("testssl (Debian package testssl.sh; .ci/run installs it) did not run: {e}")
        });
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out).unwrap_or_else(|e| {
            panic!(
                "testssl wrote no report ({e}); it said: {}",
                String::from_utf8_lossy(&run.stdout)
            )
        }))
        .unwrap();
    let ids: BTreeSet<&str> = findings.iter().filter_map(|f| f["id"].as_str()).collect();
    // The scan really covered the two findings it reported before (no server cipher order, a
    // certificate valid for ~2,000 years).
    for covered in [
        "cipher_order",
        "cert_validityPeriod",
        "cert_expirationStatus",
    ] {
        assert!(ids.contains(covered), "testssl did not report {covered}");
    }
    // Inherent to a self-signed certificate: no chain of trust, and no CRL or OCSP URI.
    let inherent = ["cert_chain_of_trust", "cert_revocation"];
    let severe: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .filter(|f| !inherent.contains(&f["id"].as_str().unwrap_or_default()))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(severe.is_empty(), "testssl findings: {severe:#?}");
}
