//! TLS to PostgreSQL against a real server: a PostgreSQL instance of the test's own that accepts
//! TCP connections only over TLS (`hostnossl ... reject`), with a certificate issued by a test
//! CA for `localhost` and `127.0.0.1`, and a role whose password is a canary that must never
//! appear in CareVault's output.
//!
//! Like `outage.rs` it runs whichever backend the rest of the suite runs on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use carevault_testkit::{PgInstance, PgTls, TestServer, psql};

use crate::{bin, patient};

/// A CA (its certificate, PEM) and a server certificate it issued, with the server's key.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    pub(crate) server_cert_pem: String,
    pub(crate) server_key_pem: String,
}

pub(crate) fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

pub(crate) fn pki() -> Pki {
    let ca = ca("CareVault test database CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

/// A password that must never show up in output, unique per run.
#[allow(clippy::disallowed_methods)] // only makes the value unique per run
fn canary() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("canary-pg-pw-{}-{nanos}", std::process::id())
}

/// A TLS-only PostgreSQL server with a `carevault` role (password `password`, SCRAM) owning
/// the databases `names`.
fn tls_server(pki: &Pki, password: &str, names: &[&str]) -> PgInstance {
    let pg = PgInstance::start_tls(&PgTls {
        cert_pem: &pki.server_cert_pem,
        key_pem: &pki.server_key_pem,
    });
    psql(
        &pg.admin_url(),
        &format!("CREATE ROLE carevault LOGIN PASSWORD '{password}'"),
    );
    for name in names {
        psql(
            &pg.admin_url(),
            &format!("CREATE DATABASE {name} OWNER carevault"),
        );
    }
    pg
}

/// `psql` as the superuser on database `db` of `pg` (over TLS: nothing else is accepted).
fn sql(pg: &PgInstance, db: &str, query: &str) -> String {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{db}?sslmode=require",
        pg.port
    );
    psql(&url, query).trim().to_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Run `carevault serve` on a fresh data directory, expecting it to give up; its output.
pub(crate) fn serve_fails(env: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env_remove("CAREVAULT_LISTEN")
        .env_remove("CAREVAULT_DATA_DIR")
        .env_remove("CAREVAULT_DATABASE_URL")
        .env_remove("CAREVAULT_DATABASE_PASSWORD")
        .env_remove("CAREVAULT_TEST_BACKEND")
        .env("CAREVAULT_CLI_CONFIG_DIR", tmp.path().join("cli"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Generous: this bounds a hang (a server that started after all), it measures nothing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "carevault serve did not give up:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "serve succeeded:\n{text}");
    assert!(!text.contains("listening on"), "{text}");
    text
}

/// Create a patient over HTTPS as a clinician and read it back; its id.
fn create_and_read(srv: &TestServer, family: &str) -> String {
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.tls", &["clinician"], Some("org-a"));
    let created = clin
        .api
        .post_fhir("/fhir/Patient", &patient(family, "Tess"));
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let read = clin.api.get(&format!("/fhir/Patient/{id}"));
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["name"][0]["family"], family);
    id
}

/// CareVault's connections to `db`: (over TLS, without TLS).
fn carevault_connections(pg: &PgInstance, db: &str) -> (i64, i64) {
    let row = sql(
        pg,
        "postgres",
        &format!(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = '{db}' AND a.usename = 'carevault'
               AND a.application_name = 'carevault'"
        ),
    );
    let (tls, plain) = row.split_once('|').unwrap();
    (tls.parse().unwrap(), plain.parse().unwrap())
}

#[test]
fn pg_tls_verify_full_and_require_serve_from_a_tls_only_database() {
    let pki = pki();
    let password = canary();
    let pg = tls_server(&pki, &password, &["cv_full", "cv_req"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "db-ca.pem", &pki.ca_pem);
    let password_file = write(dir.path(), "db-password", &format!("{password}\n"));
    // Kept apart from the URL text so that the source holds no `user:password@` pattern.
    let userinfo = format!("carevault:{password}");

    // verify-full by host name; the password from database.password_file.
    let url = format!(
        "postgres://carevault@localhost:{}/cv_full?sslmode=verify-full&sslrootcert={}",
        pg.port,
        ca_file.display()
    );
    let mut srv = TestServer::start_on(
        bin(),
        &[
            ("CAREVAULT_DATABASE_URL", &url),
            (
                "CAREVAULT_DATABASE_PASSWORD_FILE",
                password_file.to_str().unwrap(),
            ),
            ("CAREVAULT_LOG_LEVEL", "debug"),
        ],
        None,
    );
    let key = srv
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("audit public key: ").map(str::to_owned))
        .unwrap();
    let id = create_and_read(&srv, "Verified");
    // The record is in the TLS server's database, and every connection CareVault holds there
    // is encrypted.
    assert_eq!(
        sql(
            &pg,
            "cv_full",
            &format!(
                "SELECT count(*) FROM resource_current WHERE rtype = 'Patient' AND id = '{id}'"
            )
        ),
        "1"
    );
    let (tls, plain) = carevault_connections(&pg, "cv_full");
    assert!(tls >= 1 && plain == 0, "tls {tls}, plain {plain}");
    let output = srv.output();
    assert!(output.contains("database_opened"), "{output}");
    assert!(!output.contains(&password), "the password is in the output");
    srv.stop();

    // verify-full by IP address (the certificate's IP SAN), the password inside a URL given
    // on the command line: an offline audit verification over TLS.
    let with_password = format!(
        "postgres://{userinfo}@127.0.0.1:{}/cv_full?sslmode=verify-full&sslrootcert={}",
        pg.port,
        ca_file.display()
    );
    let out = Command::new(bin())
        .env_remove("CAREVAULT_DATABASE_URL")
        .env_remove("CAREVAULT_DATABASE_PASSWORD")
        .env_remove("CAREVAULT_TEST_BACKEND")
        .args([
            "audit",
            "verify",
            "--db",
            &with_password,
            "--public-key",
            &key,
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(&password), "the password is in: {text}");

    // require: encrypted without checking the certificate; the password from
    // CAREVAULT_DATABASE_PASSWORD.
    let url = format!(
        "postgres://carevault@127.0.0.1:{}/cv_req?sslmode=require",
        pg.port
    );
    let srv = TestServer::start_on(
        bin(),
        &[
            ("CAREVAULT_DATABASE_URL", &url),
            ("CAREVAULT_DATABASE_PASSWORD", &password),
        ],
        None,
    );
    let id = create_and_read(&srv, "Required");
    assert_eq!(
        sql(
            &pg,
            "cv_req",
            &format!(
                "SELECT count(*) FROM resource_current WHERE rtype = 'Patient' AND id = '{id}'"
            )
        ),
        "1"
    );
    let (tls, plain) = carevault_connections(&pg, "cv_req");
    assert!(tls >= 1 && plain == 0, "tls {tls}, plain {plain}");
    assert!(!srv.output().contains(&password));
}

#[test]
fn pg_tls_refuses_a_wrong_ca_a_wrong_name_and_plain_tcp_without_leaking_the_password() {
    let pki = pki();
    let password = canary();
    let pg = tls_server(&pki, &password, &["cv_refused"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "db-ca.pem", &pki.ca_pem);
    let other_ca = write(dir.path(), "other-ca.pem", &ca("Some other CA").pem());
    let password_file = write(dir.path(), "db-password", &format!("{password}\n"));
    // Kept apart from the URL text so that the source holds no `user:password@` pattern.
    let userinfo = format!("carevault:{password}");
    let pw_file = password_file.to_str().unwrap();
    let port = pg.port;

    // A certificate from a CA we do not trust (the password in the URL this time).
    let out = serve_fails(&[(
        "CAREVAULT_DATABASE_URL",
        &format!(
            "postgres://{userinfo}@127.0.0.1:{port}/cv_refused?sslmode=verify-full&sslrootcert={}",
            other_ca.display()
        ),
    )]);
    assert!(
        out.contains("TLS handshake") && out.contains("UnknownIssuer"),
        "{out}"
    );
    assert!(!out.contains(&password), "the password is in: {out}");

    // The right CA, but the name we connect by is not in the certificate.
    let out = serve_fails(&[
        (
            "CAREVAULT_DATABASE_URL",
            &format!(
                "postgres://carevault@db.wrong.example:{port}/cv_refused?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
                ca_file.display()
            ),
        ),
        ("CAREVAULT_DATABASE_PASSWORD_FILE", pw_file),
    ]);
    assert!(
        out.contains("TLS handshake") && out.contains("db.wrong.example"),
        "{out}"
    );
    assert!(!out.contains(&password), "the password is in: {out}");

    // No TLS at all: the server's pg_hba.conf turns it away, and the error says why.
    let out = serve_fails(&[
        (
            "CAREVAULT_DATABASE_URL",
            &format!("postgres://carevault@127.0.0.1:{port}/cv_refused?sslmode=disable"),
        ),
        ("CAREVAULT_DATABASE_PASSWORD_FILE", pw_file),
    ]);
    assert!(
        out.contains("refused the connection") && out.contains("no encryption"),
        "{out}"
    );
    assert!(!out.contains(&password), "the password is in: {out}");

    // None of them got as far as creating the schema.
    assert_eq!(
        sql(
            &pg,
            "cv_refused",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'carevault_schema'"
        ),
        "0"
    );
}
