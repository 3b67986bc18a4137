//! The audit trail end to end: one event per request on every route, fail-closed writes,
//! offline verification that names each kind of tampering, search by auditors, no PHI.

use std::process::Command;

use carevault_testkit::{Api, TestServer, output_text, wait_for};
use rusqlite::Connection;
use serde_json::json;

use crate::{bin, observation, patient, server};

fn events(srv: &TestServer) -> i64 {
    srv.query_i64("SELECT COUNT(*) FROM audit_event")
}

/// Run `carevault` against `srv`'s database (the data directory is given in `args`).
fn carevault(srv: &TestServer, args: &[&str]) -> (bool, String) {
    let out = srv.command(bin()).args(args).output().unwrap();
    (out.status.success(), output_text(&out))
}

pub(crate) fn public_key(srv: &TestServer) -> String {
    let line = srv
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("audit public key: ").map(str::to_owned));
    line.expect("init prints the audit public key")
}

#[test]
fn every_route_writes_exactly_one_event_per_request() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.route", &["clinician"], Some("org-a"));
    let writer = srv.user(&admin, "dr.upload", &["clinician"], Some("org-a"));
    let id = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Route", "Walker"))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let concrete = |template: &str| {
        template
            .replace("{rtype}", "Patient")
            .replace("{id}", &id)
            .replace("{vid}", "1")
            .replace("{name}", "nobody")
    };
    let check = |api: &Api, method: &str, path: &str, body: Option<&[u8]>| {
        let before = events(&srv);
        let r = api.request(
            method,
            path,
            &[("Content-Type", "application/fhir+json")],
            body,
        );
        let after = events(&srv);
        assert_eq!(
            after - before,
            1,
            "{method} {path} answered {} and wrote {} events",
            r.status,
            after - before
        );
        r.status
    };
    let mut statuses = std::collections::BTreeSet::new();
    // The route table is the router's source of truth: every route, authenticated and not.
    // Logging out ends the session the walk uses: that route goes last.
    let mut table: Vec<_> = carevault_http::ROUTE_TABLE.iter().collect();
    table.sort_by_key(|route| route.action == carevault_server::audit::AuditAction::Logout);
    for route in table {
        let method = &route.method;
        let path = concrete(route.path);
        let body = if *method == "GET" || *method == "DELETE" {
            None
        } else {
            Some(br#"{"resourceType":"Patient","managingOrganization":{"reference":"Organization/org-a"}}"#.as_slice())
        };
        statuses.insert(check(&clin.api, method.as_str(), &path, body));
        statuses.insert(check(&srv.api(), method.as_str(), &path, body));
    }
    statuses.insert(check(&clin.api, "GET", "/no/such/route", None));
    // A conditional patch is not served: a method the route does not take.
    statuses.insert(check(&clin.api, "PATCH", "/fhir/Patient?name=x", None));
    let mut big = b"{\"resourceType\":\"Patient\",\"x\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 5 * 1024 * 1024));
    big.extend(b"\"}");
    let before = events(&srv);
    let file = srv.data_dir.parent().unwrap().join("big.json");
    std::fs::write(&file, &big).unwrap();
    assert_eq!(srv.curl_post(&srv.api(), "/fhir/Patient", &file).0, 401);
    assert_eq!(
        events(&srv) - before,
        1,
        "the refused upload is audited once"
    );
    let before = events(&srv);
    assert_eq!(srv.curl_post(&writer.api, "/fhir/Patient", &file).0, 413);
    assert_eq!(
        events(&srv) - before,
        1,
        "the oversized upload is audited once"
    );
    for expected in [200, 201, 204, 400, 401, 403, 404, 405] {
        assert!(
            statuses.contains(&expected),
            "no request answered {expected}: {statuses:?}"
        );
    }
}

#[test]
fn audit_write_failure_fails_the_request_closed_and_recovers() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.faulty", &["clinician"], Some("org-a"));
    let id = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Fault", "Tolerant"))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let versions = || srv.query_i64("SELECT COUNT(*) FROM resource_version");
    let before = versions();
    // The audit table refuses every insert, as a full disk would.
    srv.refuse_inserts("audit_event");
    let create = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Never", "Written"));
    assert_eq!(create.status, 503, "{}", create.text());
    assert_eq!(create.json()["resourceType"], "OperationOutcome");
    let mut changed = clin.api.get(&format!("/fhir/Patient/{id}")).json();
    assert_eq!(
        changed["resourceType"], "OperationOutcome",
        "a read whose event cannot be written is not served"
    );
    changed = patient("Fault", "Changed");
    changed["id"] = json!(id);
    assert_eq!(
        clin.api
            .put_fhir(&format!("/fhir/Patient/{id}"), &changed, &[])
            .status,
        503
    );
    assert_eq!(clin.api.delete(&format!("/fhir/Patient/{id}")).status, 503);
    assert_eq!(srv.api().get("/fhir/metadata").status, 503);
    assert_eq!(
        versions(),
        before,
        "nothing was written while the trail was unwritable"
    );
    assert!(srv.logs().contains("audit trail not writable"));

    srv.allow_inserts("audit_event");
    let read = clin.api.get(&format!("/fhir/Patient/{id}"));
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["meta"]["versionId"], "1");
    assert_eq!(
        clin.api
            .post_fhir("/fhir/Patient", &patient("Now", "Written"))
            .status,
        201
    );
}

/// Generous: this bounds a hang, it does not measure anything.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The gauge `name` in a Prometheus text scrape.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{metrics}"))
}

#[test]
fn checkpoint_failures_are_logged_once_with_their_cause_measured_and_fail_readiness() {
    let srv = TestServer::start_with(bin(), &[("CAREVAULT_AUDIT_MAX_UNSIGNED_SECS", "30")]);
    let admin = srv.admin();
    let auditor = srv.user(&admin, "aud.signing", &["auditor"], None);
    // Checkpoints are refused; events are still written (and chained).
    srv.refuse_inserts("audit_checkpoint");
    // A checkpoint is due 10 s after the last; wait for the failure to be logged.
    wait_for("a failed checkpoint to be logged", WITHIN, || {
        assert_eq!(auditor.api.get("/fhir/metadata").status, 200);
        srv.logs().contains("audit_checkpoint_failed")
    });
    let metrics = auditor.api.get("/metrics").text();
    assert!(
        gauge(
            &metrics,
            "carevault_audit_oldest_unsigned_event_age_seconds"
        ) >= 5.0,
        "{metrics}"
    );
    assert!(gauge(&metrics, "carevault_audit_checkpoint_failures_total") >= 1.0);
    // A few more failed attempts (one every half second) are not logged again within a minute.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let logs = srv.logs();
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("audit_checkpoint_failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let cause = if srv.is_postgres() {
        "SQLSTATE 53100"
    } else {
        "a trigger refused the write"
    };
    assert!(failed[0].contains(cause), "the real cause: {}", failed[0]);
    assert!(!failed[0].contains("already exists"), "{}", failed[0]);
    assert!(failed[0].contains("oldest_unsigned_secs"), "{}", failed[0]);

    // Once the oldest unsigned event is older than audit.max_unsigned_secs, the node is not
    // ready; the log says why.
    assert_eq!(auditor.api.get("/readyz").status, 200);
    wait_for("/readyz to fail", WITHIN, || {
        auditor.api.get("/readyz").status == 503
    });
    let line = srv.wait_for_log(r#""event":"not_ready""#);
    assert!(line.contains("audit_signing"), "{line}");

    srv.allow_inserts("audit_checkpoint");
    srv.wait_for_log("audit_checkpoint_recovered");
    let metrics = auditor.api.get("/metrics").text();
    assert!(
        gauge(
            &metrics,
            "carevault_audit_oldest_unsigned_event_age_seconds"
        ) < 5.0,
        "{metrics}"
    );
    assert_eq!(auditor.api.get("/readyz").status, 200);
}

#[test]
fn offline_verification_names_every_kind_of_tampering() {
    let mut srv = server();
    let key = public_key(&srv);
    write_a_patient_and_thirty_observations(&srv);
    srv.stop();
    // The database to verify: the SQLite file, or the PostgreSQL database's URL.
    let db_path = match &srv.database {
        Some(db) => std::path::PathBuf::from(&db.url),
        None => srv.db_path(),
    };
    verify_public_key_intact_trail_export_and_wrong_key(&srv, &db_path, &key);
    verify_names_each_tampering(&srv, &db_path, &key);
}

fn write_a_patient_and_thirty_observations(srv: &TestServer) {
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.verify", &["clinician"], Some("org-a"));
    let id = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Chain", "Link"))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..30 {
        assert_eq!(
            clin.api
                .post_fhir("/fhir/Observation", &observation(&id, &format!("n{i}")))
                .status,
            201
        );
    }
}

fn verify_public_key_intact_trail_export_and_wrong_key(
    srv: &TestServer,
    db_path: &std::path::Path,
    key: &str,
) {
    let d = srv.data_dir.to_str().unwrap().to_owned();

    // The running server's public key is the one `audit public-key` prints, as its last word.
    let (ok, out) = carevault(srv, &["audit", "public-key", "--data-dir", &d]);
    assert!(ok, "{out}");
    assert_eq!(out.split_whitespace().last().unwrap(), key);

    let (ok, out) = carevault(
        srv,
        &[
            "audit",
            "verify",
            "--db",
            db_path.to_str().unwrap(),
            "--public-key",
            key,
        ],
    );
    assert!(ok, "an intact trail verifies: {out}");
    assert!(out.contains("audit trail verified"));
    let export = srv.data_dir.parent().unwrap().join("trail.jsonl");
    let (ok, out) = carevault(
        srv,
        &[
            "audit",
            "export",
            "--data-dir",
            &d,
            "--out",
            export.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = carevault(
        srv,
        &[
            "audit",
            "verify",
            "--export",
            export.to_str().unwrap(),
            "--public-key",
            key,
        ],
    );
    assert!(ok, "an export verifies alone: {out}");
    let (ok, out) = carevault(
        srv,
        &[
            "audit",
            "verify",
            "--db",
            db_path.to_str().unwrap(),
            "--public-key",
            &"ab".repeat(32),
        ],
    );
    assert!(!ok, "a wrong key does not verify: {out}");
}

fn verify_names_each_tampering(srv: &TestServer, db_path: &std::path::Path, key: &str) {
    // Each tampering is done on a copy of the database: a copied file, or on PostgreSQL a new
    // database made from the stopped server's as a template.
    let copies = std::cell::RefCell::new(Vec::new());
    let tamper = |name: &str, sql: &str, expect: &str| {
        let copy = match &srv.database {
            Some(db) => {
                let copy = carevault_testkit::TestDatabase::create_from(db);
                copy.sql(&sql.replace(
                    "replace(body, '\"status\":201', '\"status\":200')",
                    "convert_to(replace(convert_from(body, 'UTF8'), '\"status\":201', '\"status\":200'), 'UTF8')",
                ));
                let url = std::path::PathBuf::from(&copy.url);
                copies.borrow_mut().push(copy);
                url
            }
            None => {
                let copy = srv.data_dir.parent().unwrap().join(format!("{name}.db"));
                std::fs::copy(db_path, &copy).unwrap();
                // The newest events may still be in the write-ahead log.
                let wal = db_path.with_extension("db-wal");
                if wal.exists() {
                    std::fs::copy(&wal, copy.with_extension("db-wal")).unwrap();
                }
                let conn = Connection::open(&copy).unwrap();
                conn.execute_batch(sql).unwrap();
                drop(conn);
                copy
            }
        };
        let (ok, out) = carevault(
            srv,
            &[
                "audit",
                "verify",
                "--db",
                copy.to_str().unwrap(),
                "--public-key",
                key,
            ],
        );
        assert!(!ok, "{name}: tampering went unnoticed: {out}");
        assert!(
            out.contains(expect),
            "{name}: expected '{expect}' in: {out}"
        );
    };
    tamper(
        "edit",
        "UPDATE audit_event SET body = replace(body, '\"status\":201', '\"status\":200') WHERE seq = 20",
        "event 20 was altered",
    );
    tamper(
        "delete",
        "DELETE FROM audit_event WHERE seq = 12",
        "event 12 is missing",
    );
    tamper(
        "swap",
        "UPDATE audit_event SET seq = -1 WHERE seq = 15; UPDATE audit_event SET seq = 15 WHERE seq = 16; UPDATE audit_event SET seq = 16 WHERE seq = -1;",
        "out of order",
    );
    tamper(
        "truncate",
        "DELETE FROM audit_event WHERE seq > (SELECT MAX(seq) - 3 FROM audit_event)",
        "truncated",
    );
    tamper(
        "forge",
        "UPDATE audit_checkpoint SET last_seq = last_seq - 1 WHERE last_seq = (SELECT MAX(last_seq) FROM audit_checkpoint)",
        "bad signature",
    );
    tamper(
        "rehash",
        "DELETE FROM audit_checkpoint WHERE first_seq = 1",
        "does not follow the previous checkpoint",
    );
}

#[test]
fn auditors_search_the_trail_and_it_holds_no_phi() {
    let mut srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.search", &["clinician"], Some("org-a"));
    let auditor = srv.user(&admin, "ann.auditor", &["auditor"], None);
    let canary = "CANARYAUDITNAME4417";
    let mut p = patient(canary, "Q");
    p["telecom"] = json!([{"system": "phone", "value": "555-CANARY-7788"}]);
    let id = clin.api.post_fhir("/fhir/Patient", &p).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(clin.api.get(&format!("/fhir/Patient/{id}")).status, 200);
    assert_eq!(
        clin.api
            .get(&format!(
                "/fhir/Patient/_history?_since=2020-01-01T00:00:00Z&{canary}=1"
            ))
            .status,
        400
    );
    let failed = srv.api().post_json(
        "/auth/login",
        &json!({"username": canary, "password": "x", "totp_code": "1"}),
    );
    assert_eq!(failed.status, 401);

    // Only auditors read the trail.
    assert_eq!(clin.api.get("/audit/events").status, 403);
    assert_eq!(admin.api.get("/audit/events").status, 403);
    let by_patient = auditor.api.get(&format!("/audit/events?patient={id}"));
    assert_eq!(by_patient.status, 200, "{}", by_patient.text());
    let bundle = by_patient.json();
    let actions: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["subtype"][0]["code"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"create") && actions.contains(&"read"),
        "{actions:?}"
    );
    assert_eq!(bundle["entry"][0]["resource"]["resourceType"], "AuditEvent");
    let whoami = clin.api.get("/auth/whoami").json();
    assert_eq!(whoami["username"], "dr.search");
    let page = auditor
        .api
        .get("/audit/events?action=auth.login&outcome=success&_count=1");
    assert_eq!(page.json()["entry"].as_array().unwrap().len(), 1);
    let links = page.json()["link"].clone();
    let next = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next link");
    assert!(next["url"].as_str().unwrap().contains("_cursor="));
    // The next page starts after the first one.
    let url = next["url"].as_str().unwrap();
    let path = &url[url.find("/audit/").unwrap()..];
    let second = auditor.api.get(path).json();
    assert_ne!(
        second["entry"][0]["resource"]["id"],
        page.json()["entry"][0]["resource"]["id"]
    );
    // Reading the trail is itself audited.
    let reads = auditor.api.get("/audit/events?action=audit.read").json();
    assert!(!reads["entry"].as_array().unwrap().is_empty());

    // The same search from the CLI, logged in as the auditor.
    let cfg = tempfile::tempdir().unwrap();
    let mut auditor = auditor;
    let mut login = Command::new(bin())
        .args([
            "login",
            "--server",
            &srv.base,
            "--ca-cert",
            srv.ca_pem().to_str().unwrap(),
            "--username",
            "ann.auditor",
        ])
        .env("CAREVAULT_CLI_CONFIG_DIR", cfg.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = login.stdin.take().unwrap();
        writeln!(
            stdin,
            "{}\n{}",
            carevault_testkit::TEST_PASSWORD,
            auditor.auth.fresh_code()
        )
        .unwrap();
    }
    assert!(login.wait().unwrap().success());
    let search = Command::new(bin())
        .args(["audit", "search", "--patient", &id, "--action", "read"])
        .env("CAREVAULT_CLI_CONFIG_DIR", cfg.path())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&search.stdout);
    assert!(search.status.success(), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.contains(" read ") && l.contains(&format!("Patient/{id}"))),
        "{listed}"
    );

    // "Who tried to log in as <name>?" is answerable with the digest, never the name.
    srv.stop();
    let d = srv.data_dir.to_str().unwrap().to_owned();
    let (ok, digest) = carevault(&srv, &["audit", "hash", canary, "--data-dir", &d]);
    assert!(ok, "{digest}");
    let digest = digest.trim().to_owned();
    assert_eq!(digest.len(), 64);
    let (ok, export) = carevault(&srv, &["audit", "export", "--data-dir", &d]);
    assert!(ok);
    assert!(
        export.contains(&digest),
        "the failed login's username is recorded as its digest"
    );
    for c in [
        canary,
        "555-CANARY-7788",
        "dr.search\"",
        "x\"",
        "2020-01-01",
    ] {
        assert!(!export.contains(c), "the audit trail holds {c} in clear");
    }
}
