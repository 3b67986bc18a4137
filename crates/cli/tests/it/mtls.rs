//! Client certificates (mutual TLS) for API keys, as curl sees them: a server with
//! `tls.client_ca`, a service key bound to one client certificate with `carevault key create
//! --client-cert`, and that key presented with its certificate, with none, with another
//! certificate of the same CA and with one of an unknown CA; an unbound key beside it; the
//! refusals in the audit trail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use carevault_server::certificate::fingerprint;
use carevault_testkit::{Account, Api, TestServer, wait_for};
use serde_json::{Value, json};

use crate::pg_tls::{ca, serve_fails};
use crate::{bin, server};

/// A client certificate and its key, as PEM files, and the certificate's fingerprint.
struct ClientCert {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

fn client_cert(
    dir: &Path,
    name: &str,
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
) -> ClientCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    ClientCert {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
    }
}

/// `GET path` with curl, bearing `key`, presenting `cert` if given: the HTTP status, or the
/// curl exit code as an error when there was no HTTP answer (a failed handshake).
fn curl_get(
    srv: &TestServer,
    key: &str,
    cert: Option<&ClientCert>,
    path: &str,
) -> Result<u16, i32> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(srv.ca_pem())
        .arg("-H")
        .arg(format!("Authorization: Bearer {key}"));
    if let Some(c) = cert {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    let out = cmd
        .arg(format!("{}{path}", srv.base))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("curl is needed for this test: {e}"));
    if !out.status.success() {
        return Err(out.status.code().unwrap_or(-1));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

/// `carevault ARGS` with a saved session for `admin`; stdout, or stderr as the error.
fn cli(srv: &TestServer, admin: &Account, args: &[&str]) -> Result<String, String> {
    let dir = srv.tmp_dir().join("cli-mtls");
    std::fs::create_dir_all(&dir).unwrap();
    let session = json!({
        "server": srv.base,
        "ca_cert": srv.ca_pem(),
        "access_token": admin.api.token.clone().unwrap(),
    });
    std::fs::write(dir.join("session.json"), session.to_string()).unwrap();
    let out = Command::new(bin())
        .args(args)
        .env("CAREVAULT_CLI_CONFIG_DIR", &dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

fn service_key(admin: &Api, name: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"name": name, "scopes": ["system/Patient.rs"], "expires_in_days": 1});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let r = admin.post_json("/admin/api-keys", &body);
    (r.status, r.json())
}

/// Audit events of refusals whose detail names `key` and `refused` = `why`.
fn refusals(auditor: &Api, key: &str, why: &str) -> usize {
    let events = auditor.get("/audit/events?_count=100").json();
    let detail = |e: &Value, ty: &str| -> Option<String> {
        e["entity"]
            .as_array()?
            .iter()
            .flat_map(|en| en["detail"].as_array().into_iter().flatten())
            .find(|d| d["type"] == ty)
            .and_then(|d| d["valueString"].as_str().map(str::to_owned))
    };
    events["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|e| {
            detail(e, "refused").as_deref() == Some(why)
                && detail(e, "target_principal").as_deref() == Some(&format!("apikey:{key}"))
        })
        .count()
}

#[test]
fn a_key_bound_to_a_client_certificate_works_only_with_that_certificate() {
    let mut srv = server();
    let admin = srv.admin();
    let auditor = srv.user(&admin, "auditor.mtls", &["auditor"], None);
    let dir = srv.tmp_dir().join("mtls");
    std::fs::create_dir_all(&dir).unwrap();
    let hospital_ca = ca("Hospital services CA");
    let stranger_ca = ca("Someone else's CA");
    let lab = client_cert(&dir, "lab-feed", &hospital_ca);
    let other = client_cert(&dir, "billing", &hospital_ca);
    let stranger = client_cert(&dir, "lab-feed-forged", &stranger_ca);

    // Without tls.client_ca no certificate is ever asked for: a bound key is refused, clearly.
    let (status, refused) = service_key(
        &admin.api,
        "too-early",
        json!({"client_cert_sha256": lab.fingerprint}),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("tls.client_ca"), "{refused}");

    let ca_file = dir.join("client-ca.pem");
    std::fs::write(&ca_file, hospital_ca.pem()).unwrap();
    srv.stop();
    srv.restart(&[("CAREVAULT_TLS_CLIENT_CA", ca_file.to_str().unwrap())]);

    // Bound with the CLI, which fingerprints the certificate file locally.
    let created = cli(
        &srv,
        &admin,
        &[
            "key",
            "create",
            "lab-feed",
            "--service",
            "--scope",
            "system/Patient.rs",
            "--expires-in-days",
            "1",
            "--client-cert",
            lab.cert.to_str().unwrap(),
        ],
    )
    .unwrap();
    let bound_key = created
        .split_whitespace()
        .find(|w| w.starts_with("cvk_"))
        .unwrap_or_else(|| panic!("no key in {created}"))
        .to_owned();
    let (status, unbound) = service_key(&admin.api, "nightly-report", json!({}));
    assert_eq!(status, 201, "{unbound}");
    let unbound_key = unbound["key"].as_str().unwrap().to_owned();
    // A malformed fingerprint is refused by the server, and by the CLI before it asks.
    let (status, bad) = service_key(&admin.api, "bad-fp", json!({"client_cert_sha256": "AB:CD"}));
    assert_eq!(status, 400, "{bad}");
    let err = cli(
        &srv,
        &admin,
        &[
            "key",
            "create",
            "bad-fp",
            "--service",
            "--scope",
            "system/Patient.rs",
            "--client-cert-sha256",
            "not-a-fingerprint",
        ],
    )
    .unwrap_err();
    assert!(err.contains("--client-cert-sha256"), "{err}");

    // The listing shows the binding (a fingerprint is not a secret).
    let listed = admin.api.get("/admin/api-keys").json();
    let binding = |name: &str| {
        listed["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .map(|k| k["client_cert_sha256"].clone())
    };
    assert_eq!(binding("lab-feed"), Some(json!(lab.fingerprint)));
    assert_eq!(binding("nightly-report"), Some(Value::Null));
    let text = cli(&srv, &admin, &["key", "list", "--service"]).unwrap();
    assert!(text.contains(&lab.fingerprint), "{text}");

    let read = "/fhir/Patient?_count=1";
    assert_eq!(curl_get(&srv, &bound_key, Some(&lab), read), Ok(200));
    // Without its certificate, or with another one the CA issued: a 401 like any wrong key.
    assert_eq!(curl_get(&srv, &bound_key, None, read), Ok(401));
    assert_eq!(curl_get(&srv, &bound_key, Some(&other), read), Ok(401));
    // A certificate of a CA the server does not trust fails the handshake itself: no HTTP
    // answer at all. (curl's exit code depends on when the server's alert arrives: 35 in the
    // handshake, 55 or 56 once curl has started sending its request under TLS 1.3.)
    let forged = curl_get(&srv, &bound_key, Some(&stranger), read);
    assert!(forged.is_err(), "{forged:?}");
    // Clients without certificates and unbound keys work as before.
    assert_eq!(curl_get(&srv, &unbound_key, None, read), Ok(200));
    assert_eq!(curl_get(&srv, &unbound_key, Some(&other), read), Ok(200));
    assert_eq!(admin.api.get("/auth/whoami").status, 200);

    // The auditor learns which key came without its certificate (twice: none, then another).
    wait_for(
        "the refusals in the audit trail",
        Duration::from_secs(10),
        || refusals(&auditor.api, "lab-feed", "client-certificate") == 2,
    );
    assert_eq!(
        refusals(&auditor.api, "nightly-report", "client-certificate"),
        0
    );
    // And the security officer is alerted, under the key.
    let alert = crate::detection::wait_for_rule(&auditor.api, "access.client-certificate");
    assert_eq!(
        crate::detection::ext(&alert, "principal"),
        "apikey:lab-feed"
    );
}

#[test]
fn an_unusable_client_ca_file_stops_the_start_naming_the_key_not_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client-ca.pem");
    std::fs::write(&path, "canary-client-ca-content\n").unwrap();
    let out = serve_fails(&[("CAREVAULT_TLS_CLIENT_CA", path.to_str().unwrap())]);
    assert!(
        out.contains("tls.client_ca") && out.contains("holds no certificate"),
        "{out}"
    );
    assert!(!out.contains("canary-client-ca-content"), "{out}");
    let out = serve_fails(&[(
        "CAREVAULT_TLS_CLIENT_CA",
        dir.path().join("missing.pem").to_str().unwrap(),
    )]);
    assert!(out.contains("tls.client_ca"), "{out}");
}
