//! `carevault seed` and `carevault import`: synthetic and independently generated data load
//! through the API path; bad entries are reported and skipped; an interrupted import resumes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use carevault_testkit::{Account, Api, TestServer};
use serde_json::{Value, json};

use crate::{bin, server};

fn shared_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/carebundle")
        .join(name)
}

/// A service key allowed to create and update every type (and to read, for checking).
fn importer(srv: &TestServer, admin: &Account, dir: &Path) -> (PathBuf, Api) {
    let key = admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "importer", "scopes": ["system/*.crus"]}),
    );
    assert_eq!(key.status, 201, "{}", key.text());
    let key = key.json()["key"].as_str().unwrap().to_owned();
    let file = dir.join("import.key");
    std::fs::write(&file, &key).unwrap();
    (file, srv.api().with_token(&key))
}

fn import(srv: &TestServer, key: &Path, cli_dir: &Path, path: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .arg("import")
        .arg(path)
        .arg("--api-key-file")
        .arg(key)
        .args(["--server", &srv.base])
        .arg("--ca-cert")
        .arg(srv.ca_pem())
        .args(extra)
        .env("CAREVAULT_CLI_CONFIG_DIR", cli_dir)
        .output()
        .unwrap()
}

/// The progress bar's last line (on standard error; one line per draw when it is not a
/// terminal) shows all `total` entries done, the rate and the rejections; the summary on
/// standard output gives the rate too.
fn assert_progress(out: &Output, total: usize, rejected: usize) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .unwrap_or_else(|| panic!("no progress line: {stderr}"));
    assert!(
        last.contains(&format!("] 100% {total}/{total} resources, "))
            && last.ends_with(&format!("/s, {rejected} rejected")),
        "{last}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(" resources/s); ") && stdout.contains(&format!("; {rejected} rejected;")),
        "{stdout}"
    );
}

fn count(api: &Api, query: &str) -> u64 {
    let sep = if query.contains('?') { '&' } else { '?' };
    let r = api.get(&format!("/fhir/{query}{sep}_summary=count"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["total"].as_u64().unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn seeded_population_imports_and_clinicians_see_their_organization() {
    let tmp = tempfile::tempdir().unwrap();
    let seed_dir = tmp.path().join("seed");
    let out = Command::new(bin())
        .args([
            "seed",
            "--patients",
            "24",
            "--organizations",
            "2",
            "--seed",
            "5",
            "--out",
        ])
        .arg(&seed_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srv = server();
    let admin = srv.admin();
    let (key, service) = importer(&srv, &admin, tmp.path());
    let out = import(
        &srv,
        &key,
        &tmp.path().join("cli"),
        &seed_dir,
        &["--batch", "50"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total: usize = std::fs::read_dir(&seed_dir)
        .unwrap()
        .map(|e| lines(&e.unwrap().path()).len())
        .sum();
    assert!(
        stdout.starts_with(&format!("imported {total} resources")),
        "{stdout}"
    );

    // Ids are kept, so references between files hold.
    let patients = lines(&seed_dir.join("Patient.ndjson"));
    let first = patients[0]["id"].as_str().unwrap();
    let observations = lines(&seed_dir.join("Observation.ndjson"));
    let of_first = observations
        .iter()
        .filter(|o| o["subject"]["reference"] == format!("Patient/{first}"))
        .count() as u64;
    assert!(of_first > 0);
    assert_eq!(
        count(&service, &format!("Observation?patient={first}")),
        of_first
    );

    // `$everything` of a seeded patient: every seeded resource that refers to them, the Patient
    // itself, and nothing else.
    let mut expected: Vec<String> = std::fs::read_dir(&seed_dir)
        .unwrap()
        .flat_map(|e| lines(&e.unwrap().path()))
        .filter(|r| r["id"] == first || r.to_string().contains(&format!("\"Patient/{first}\"")))
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    expected.sort();
    let everything = service.get(&format!("/fhir/Patient/{first}/$everything?_count=1000"));
    assert_eq!(everything.status, 200, "{}", everything.text());
    let mut found: Vec<String> = everything.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    found.sort();
    assert!(expected.len() > 2, "{expected:?}");
    assert_eq!(found, expected);

    // A clinician of org-1 sees exactly org-1's patients.
    let clinician = srv.user(&admin, "dr.one", &["clinician"], Some("org-1"));
    let in_org_1 = patients
        .iter()
        .filter(|p| p["managingOrganization"]["reference"] == "Organization/org-1")
        .count() as u64;
    assert_eq!(count(&clinician.api, "Patient"), in_org_1);

    // Imported writes are audited like any other.
    // The database: the SQLite file, or the PostgreSQL database's URL.
    let db = match &srv.database {
        Some(db) => PathBuf::from(&db.url),
        None => srv.db_path(),
    };
    let events = srv
        .command(bin())
        .args([
            "audit",
            "verify",
            "--public-key",
            &crate::audit::public_key(&srv),
            "--db",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        events.status.success(),
        "{}",
        String::from_utf8_lossy(&events.stderr)
    );

    // Running it again finds everything done and sends nothing.
    let again = import(
        &srv,
        &key,
        &tmp.path().join("cli"),
        &seed_dir,
        &["--batch", "50"],
    );
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        again.starts_with("imported 0 resources")
            && again.contains(&format!("{total} already imported")),
        "{again}"
    );
}

#[test]
fn independent_ndjson_imports_and_bad_entries_are_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server();
    let (key, service) = importer(&srv, &srv.admin(), tmp.path());
    let source = shared_data("ndjson-300");
    let out = import(&srv, &key, &tmp.path().join("cli"), &source, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("imported 13502 resources"), "{stdout}");
    assert_progress(&out, 13502, 0);
    assert_eq!(count(&service, "Patient"), 300);
    assert_eq!(count(&service, "Observation"), 10_200);

    // A file with a good line, a broken line, an invalid resource and an unknown type.
    let canary = "Zyxcanary";
    let mixed = tmp.path().join("mixed.ndjson");
    std::fs::write(
        &mixed,
        [
            json!({"resourceType": "Patient", "id": "good-1", "name": [{"family": "Importable"}]}).to_string(),
            format!("{{\"resourceType\": \"Patient\", \"name\": [{{\"family\": \"{canary}\""),
            json!({"resourceType": "Patient", "id": "bad-1", "gender": "sometimes", "name": [{"family": canary}]}).to_string(),
            json!({"resourceType": "Spaceship", "id": "x"}).to_string(),
            json!({"resourceType": "Patient", "id": "good-2"}).to_string(),
        ]
        .join("\n"),
    )
    .unwrap();
    let out = import(&srv, &key, &tmp.path().join("cli"), &mixed, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rejections make the exit status non-zero"
    );
    assert!(stdout.starts_with("imported 2 resources"), "{stdout}");
    assert_progress(&out, 5, 3);
    for line in [2, 3, 4] {
        assert!(
            stderr.contains(&format!("rejected mixed.ndjson line {line}: ")),
            "line {line}: {stderr}"
        );
    }
    assert!(
        !stderr.contains(canary) && !stdout.contains(canary),
        "{stderr}"
    );
    assert_eq!(service.get("/fhir/Patient/good-2").status, 200);
    assert_eq!(service.get("/fhir/Patient/bad-1").status, 404);
}

#[test]
fn an_interrupted_import_resumes_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let mut srv = server();
    let (key, service) = importer(&srv, &srv.admin(), tmp.path());
    let source = tmp.path().join("obs.ndjson");
    let patient = service.post_fhir(
        "/fhir/Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Resume"}]}),
    );
    let pid = patient.json()["id"].as_str().unwrap().to_owned();
    // No ids: each line is a create, so a line sent twice would make a duplicate.
    let text: Vec<String> = (0..400)
        .map(|i| {
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{pid}")},
                "valueQuantity": {"value": i, "unit": "/min"}})
            .to_string()
        })
        .collect();
    std::fs::write(&source, text.join("\n")).unwrap();
    let cli = tmp.path().join("cli");

    // Start an import, and stop the server under it once some batches are in.
    let child = Command::new(bin())
        .arg("import")
        .arg(&source)
        .arg("--api-key-file")
        .arg(&key)
        .args(["--server", &srv.base])
        .arg("--ca-cert")
        .arg(srv.ca_pem())
        .args(["--batch", "10", "--concurrency", "1"])
        .env("CAREVAULT_CLI_CONFIG_DIR", &cli)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(&service, &format!("Observation?patient={pid}")) < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the import made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    srv.stop();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the import reports the lost server");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run the same command again to resume"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    srv.restart(&[]);
    let out = import(
        &srv,
        &key,
        &cli,
        &source,
        &["--batch", "10", "--concurrency", "1"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("already imported earlier"), "{stdout}");
    assert_eq!(count(&service, &format!("Observation?patient={pid}")), 400);
}
