//! `carevault doctor`: a fresh environment passes (warnings aside) and its JSON and SARIF
//! validate; each deliberately broken deployment fails its check; `--fix` repairs what is safe,
//! audited; bad input (a broken configuration, a missing directory, a server that is down)
//! is a failed check with its fix, never a crash.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use carevault_testkit::{TestServer, output_text};
use serde_json::{Value, json};

use crate::{bin, server};

/// `carevault doctor ARGS` against `srv`'s data directory and listener, with `env` added.
fn doctor(srv: &TestServer, args: &[&str], env: &[(&str, &str)]) -> Output {
    let listen = srv.base.trim_start_matches("https://");
    let mut cmd = srv.command(bin());
    cmd.arg("doctor")
        .args([
            "--data-dir",
            srv.data_dir.to_str().unwrap(),
            "--listen",
            listen,
        ])
        .args(args)
        .envs(env.iter().copied());
    cmd.output().unwrap()
}

/// The findings of `doctor --output json`, by check id: (status, found).
fn findings(out: &Output) -> std::collections::BTreeMap<String, (String, String)> {
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(out)));
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                (
                    f["status"].as_str().unwrap().to_owned(),
                    f["found"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

fn status_of(out: &Output, id: &str) -> String {
    findings(out)
        .get(id)
        .unwrap_or_else(|| panic!("no finding {id}: {}", output_text(out)))
        .0
        .clone()
}

fn assert_no_crash(out: &Output) {
    let text = output_text(out);
    assert!(!text.contains("panicked"), "{text}");
    assert!(!text.contains("RUST_BACKTRACE"), "{text}");
}

fn report_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!(
        "../../../../vendor/posture/report.schema.json"
    ))
    .unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// The OASIS SARIF 2.1.0 schema (draft-04; `vendor/sarif/README.md` says where it comes from).
fn sarif_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!(
        "../../../../vendor/sarif/sarif-schema-2.1.0.json"
    ))
    .unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn a_fresh_environment_passes_and_its_json_and_sarif_validate() {
    let mut srv = server();
    let text = doctor(&srv, &[], &[]);
    assert!(text.status.success(), "{}", output_text(&text));
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(!out.lines().any(|l| l.starts_with("fail")), "{out}");
    assert!(out.contains("HIPAA 164.312(b)"), "{out}");

    let json_out = doctor(&srv, &["--output", "json"], &[]);
    assert!(json_out.status.success(), "{}", output_text(&json_out));
    let report: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    let validator = report_schema();
    let errors = schema_errors(&validator, &report);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(report["summary"]["fail"], 0, "{report:#}");
    // The schema refuses what the command must never print.
    let mut broken = report.clone();
    broken["findings"][0]["status"] = json!("maybe");
    assert!(!validator.is_valid(&broken));
    for id in [
        "files.data_dir",
        "files.keys",
        // (tls.certificate warns until generated certificates are valid at most 397 days.)
        "tls.key",
        "keys.kek_age",
        "policies.breadth",
        "audit.chain",
        "server.reachable",
    ] {
        assert_eq!(status_of(&json_out, id), "pass", "{id}: {report:#}");
    }

    let sarif_out = doctor(&srv, &["--output", "sarif"], &[]);
    let sarif: Value = serde_json::from_slice(&sarif_out.stdout).unwrap();
    let sarif_validator = sarif_schema();
    let errors = schema_errors(&sarif_validator, &sarif);
    assert!(errors.is_empty(), "{errors:?}");
    // The schema refuses what a SARIF consumer would reject.
    let mut broken = sarif.clone();
    broken["runs"][0]["results"][0]["level"] = json!("fatal");
    assert!(!sarif_validator.is_valid(&broken));
    let mut broken = sarif.clone();
    broken["runs"][0]["tool"]["driver"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    assert!(!sarif_validator.is_valid(&broken));
    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), report["findings"].as_array().unwrap().len());
    for r in results {
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], r["ruleId"]);
        let (kind, level) = (r["kind"].as_str().unwrap(), r["level"].as_str().unwrap());
        assert!(
            matches!(
                (kind, level),
                ("pass", "none") | ("fail", "warning" | "error")
            ),
            "{r}"
        );
        assert!(!r["message"]["text"].as_str().unwrap().is_empty());
    }

    // process.memory looks at the running server (found by the lock it holds on the data
    // directory), not at the doctor's own process.
    let server_pid = format!("running server (pid {})", srv.pid());
    let (status, found) = findings(&json_out)["process.memory"].clone();
    assert!(found.contains(&server_pid), "{found}");
    assert_ne!(status, "fail", "{found}");
    if srv.is_postgres() {
        // The test suite's role is the superuser `postgres`: a deployment's broken fixture.
        let (status, found) = findings(&json_out)["database.role"].clone();
        assert_eq!(status, "warn", "{found}");
        assert!(found.contains("SUPERUSER"), "{found}");
    }
    // A server whose memory is not locked fails the check although the doctor's own
    // configuration (and process) would lock (development tier: a warning).
    srv.stop();
    srv.restart(&[("CAREVAULT_KEY_LOCK_MEMORY", "off")]);
    let out = doctor(
        &srv,
        &["--output", "json", "--offline"],
        &[("CAREVAULT_KEY_LOCK_MEMORY", "auto")],
    );
    let (status, found) = findings(&out)["process.memory"].clone();
    assert_eq!(status, "warn", "{found}");
    assert!(
        found.contains(&format!(
            "running server (pid {}) has no memory locked",
            srv.pid()
        )),
        "{found}"
    );
}

#[test]
fn broken_files_keys_policies_and_audit_fail_their_checks_and_fix_repairs_the_modes() {
    let srv = server();
    let admin = srv.admin();
    let data = &srv.data_dir;
    let set_mode = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // Loose modes.
    set_mode(data, 0o755);
    set_mode(&data.join("keys").join("keyring.json"), 0o644);
    set_mode(&data.join("tls").join("key.pem"), 0o640);
    // A policy that permits everyone everything it names, without a condition.
    let broad = admin.api.post_json(
        "/admin/policies",
        &json!({"name": "everyone-reads", "policy": "permit (principal, action in CareVault::Action::\"fhir-read\", resource);"}),
    );
    assert_eq!(broad.status, 201, "{}", broad.text());

    let out = doctor(&srv, &["--output", "json"], &[]);
    assert!(!out.status.success());
    assert_no_crash(&out);
    assert_eq!(status_of(&out, "files.data_dir"), "fail");
    assert_eq!(status_of(&out, "files.keys"), "fail");
    assert_eq!(status_of(&out, "files.tls_key"), "fail");
    // The environment refuses to open a directory others can reach.
    assert_eq!(status_of(&out, "environment.open"), "fail");

    // --fix tightens the modes (and audits each), never widening anything.
    let fixed = doctor(&srv, &["--fix", "--yes", "--output", "json"], &[]);
    assert_no_crash(&fixed);
    let stderr = String::from_utf8_lossy(&fixed.stderr);
    assert!(stderr.contains("repaired files.data_dir"), "{stderr}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(data), 0o700);
    assert_eq!(mode(&data.join("keys").join("keyring.json")), 0o600);
    assert_eq!(mode(&data.join("tls").join("key.pem")), 0o600);
    for id in [
        "files.data_dir",
        "files.keys",
        "files.tls_key",
        "environment.open",
    ] {
        assert_eq!(status_of(&fixed, id), "pass", "{id}");
    }
    assert_eq!(
        srv.query_i64("SELECT COUNT(*) FROM audit_event WHERE action = 'admin.posture.repair'"),
        3
    );
    // The broad policy is found (and left alone: --fix never changes policies).
    let (status, found) = findings(&fixed)["policies.breadth"].clone();
    assert_eq!(status, "fail");
    assert!(found.contains("everyone-reads"), "{found}");

    // A KEK past the rotation period.
    let state_path = data.join("keys").join("keyring.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["versions"][0]["created_at_us"] = json!(1_000_000);
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    // An account unused for years.
    srv.execute("UPDATE principal SET created_at = 1000 WHERE username = 'admin'");
    srv.execute("UPDATE audit_event SET time_us = 1000000 WHERE action = 'auth.login'");
    let out = doctor(&srv, &["--output", "json"], &[]);
    assert_eq!(status_of(&out, "keys.kek_age"), "warn");
    // The login events were rewritten behind the chain's back: the trail does not verify.
    assert_eq!(status_of(&out, "audit.chain"), "fail");
    assert_eq!(status_of(&out, "accounts.inactive"), "warn");

    // --fix --yes disables the inactive account, audited as a disable.
    let fixed = doctor(&srv, &["--fix", "--yes", "--offline"], &[]);
    assert_no_crash(&fixed);
    let stderr = String::from_utf8_lossy(&fixed.stderr);
    assert!(
        stderr.contains("repaired accounts.inactive: disabled admin"),
        "{stderr}"
    );
    assert_eq!(
        srv.query_i64(
            "SELECT COUNT(*) FROM principal WHERE username = 'admin' AND disabled = true"
        ),
        1
    );
    assert_eq!(
        srv.query_i64("SELECT COUNT(*) FROM audit_event WHERE action = 'admin.user.disable'"),
        1
    );
}

#[test]
fn an_expired_certificate_a_production_tier_and_bad_input_fail_with_their_fix() {
    let mut srv = server();
    // Production: plain KEK files and a root-owned data directory fail; --fix wants --yes.
    let prod = [("CAREVAULT_POSTURE_TIER", "production")];
    let out = doctor(&srv, &["--output", "json"], &prod);
    assert!(!out.status.success());
    let protection = if carevault_testkit::key_provider() == "pkcs11" {
        "pass"
    } else {
        "fail"
    };
    assert_eq!(status_of(&out, "keys.protection"), protection);
    let uid = std::fs::metadata(&srv.data_dir).unwrap();
    if std::os::unix::fs::MetadataExt::uid(&uid) == 0 {
        assert_eq!(status_of(&out, "process.root"), "fail");
    }
    let refused = doctor(&srv, &["--fix"], &prod);
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("without --yes"),
        "{}",
        output_text(&refused)
    );

    // An expired certificate (the running server keeps the one it loaded).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let other_cert = srv.data_dir.join("expired.pem");
    std::fs::write(&other_cert, cert.pem()).unwrap();
    let out = doctor(
        &srv,
        &["--output", "json", "--offline"],
        &[("CAREVAULT_TLS_CERT_PATH", other_cert.to_str().unwrap())],
    );
    let (status, found) = findings(&out)["tls.certificate"].clone();
    assert_eq!(status, "fail");
    assert!(found.contains("expired"), "{found}");

    // A weak key: RSA 1024 (made by openssl: rcgen makes no RSA keys).
    let (weak_cert, weak_key) = (srv.data_dir.join("weak.pem"), srv.data_dir.join("weak.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&weak_key)
        .arg("-out")
        .arg(&weak_cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", output_text(&made));
    let out = doctor(
        &srv,
        &["--output", "json", "--offline"],
        &[
            ("CAREVAULT_TLS_CERT_PATH", weak_cert.to_str().unwrap()),
            ("CAREVAULT_TLS_KEY_PATH", weak_key.to_str().unwrap()),
        ],
    );
    assert_no_crash(&out);
    let (status, found) = findings(&out)["tls.key"].clone();
    assert_eq!(status, "fail", "{found}");
    assert_eq!(found, "RSA 1024 key");
    assert_eq!(findings(&out)["tls.certificate"].0, "pass");

    // A configuration with errors.
    let out = doctor(
        &srv,
        &["--output", "json"],
        &[("CAREVAULT_BODY_LIMIT_BYTES", "lots")],
    );
    assert!(!out.status.success());
    assert_no_crash(&out);
    let (status, found) = findings(&out)["config.valid"].clone();
    assert_eq!(status, "fail");
    assert!(found.contains("CAREVAULT_BODY_LIMIT_BYTES"), "{found}");

    // The server down.
    srv.stop();
    let out = doctor(&srv, &["--output", "json"], &[]);
    assert_no_crash(&out);
    assert_eq!(status_of(&out, "server.reachable"), "fail");

    // A missing data directory.
    let mut cmd = srv.command(bin());
    let missing = srv.data_dir.with_file_name("nowhere");
    let out = cmd
        .args([
            "doctor",
            "--offline",
            "--data-dir",
            missing.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_no_crash(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("fail") && l.contains("files.data_dir") && l.contains("fix:")),
        "{text}"
    );
}

/// One advisory database file: `crates/NAME/ID.md`.
fn advisory(db: &Path, id: &str, package: &str, versions: &str) {
    let dir = db.join("crates").join(package);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{id}.md")),
        format!(
            "```toml\n[advisory]\nid = \"{id}\"\npackage = \"{package}\"\ndate = \"2026-01-01\"\n\n[versions]\n{versions}\n```\n\n# Test advisory {id}\n"
        ),
    )
    .unwrap();
}

#[test]
fn version_check_lists_the_advisories_that_apply_to_compiled_in_versions() {
    // serde_json's version as compiled in, from the binary's own list.
    let deps = std::process::Command::new(bin())
        .args(["version", "--deps"])
        .output()
        .unwrap();
    let deps = String::from_utf8(deps.stdout).unwrap();
    let serde_json_version = deps
        .lines()
        .find_map(|l| l.strip_prefix("serde_json "))
        .unwrap()
        .to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path();
    // Applies: patched only in a version far ahead.
    advisory(
        db,
        "RUSTSEC-2099-0001",
        "serde_json",
        "patched = [\">= 999.0.0\"]",
    );
    // Does not apply: the compiled-in version is patched.
    advisory(
        db,
        "RUSTSEC-2099-0002",
        "serde_json",
        &format!("patched = [\">= {serde_json_version}\"]"),
    );
    // Does not apply: the compiled-in version is in the unaffected range.
    advisory(
        db,
        "RUSTSEC-2099-0003",
        "serde_json",
        "patched = [\">= 999.0.0\"]\nunaffected = [\"< 999.0.0\"]",
    );
    // A crate that is not compiled in.
    advisory(
        db,
        "RUSTSEC-2099-0004",
        "not-a-carevault-dependency",
        "patched = []",
    );

    let out = std::process::Command::new(bin())
        .args(["version", "--check", "--advisory-db", db.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a vulnerability applies: {}",
        output_text(&out)
    );
    assert!(
        text.contains(&format!(
            "RUSTSEC-2099-0001 serde_json {serde_json_version}"
        )),
        "{text}"
    );
    for id in [
        "RUSTSEC-2099-0002",
        "RUSTSEC-2099-0003",
        "RUSTSEC-2099-0004",
    ] {
        assert!(!text.contains(id), "{id}: {text}");
    }
    assert!(text.contains("1 advisories apply"), "{text}");

    // Without the one that applies: success.
    std::fs::remove_file(db.join("crates/serde_json/RUSTSEC-2099-0001.md")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["version", "--check", "--advisory-db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn fix_renews_an_overlong_generated_certificate_with_its_own_key() {
    let srv = server();
    let tls = srv.ca_pem().parent().unwrap().to_path_buf();
    // A generated certificate as versions before the 397-day limit made them: same key, CareVault's
    // common name, rcgen's default validity (1975 to 4096).
    let key_pem = std::fs::read_to_string(tls.join("key.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "CareVault self-signed");
    std::fs::write(
        tls.join("cert.pem"),
        params.self_signed(&key).unwrap().pem(),
    )
    .unwrap();

    let before = doctor(&srv, &["--output", "json", "--offline"], &[]);
    let (status, found) = findings(&before)["tls.certificate"].clone();
    assert_eq!(status, "warn", "{found}");

    let fixed = doctor(&srv, &["--fix", "--yes", "--offline"], &[]);
    assert_no_crash(&fixed);
    assert!(
        output_text(&fixed).contains("repaired tls.certificate"),
        "{}",
        output_text(&fixed)
    );
    let info = carevault_server::certificate::inspect(&tls.join("cert.pem")).unwrap();
    assert!(info.generated);
    assert_eq!(
        info.validity_days(),
        carevault_server::certificate::VALIDITY_DAYS
    );
    assert_eq!(
        std::fs::read_to_string(tls.join("key.pem")).unwrap(),
        key_pem
    );
    let after = doctor(&srv, &["--output", "json", "--offline"], &[]);
    assert_eq!(findings(&after)["tls.certificate"].0, "pass");
}
