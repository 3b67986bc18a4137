//! The keyring: KEK rotation under load, re-wrap that survives a kill, destruction of old
//! versions, and crypto-shredding a patient with a second admin's approval, including after a
//! restore of an earlier database file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use carevault_testkit::{Account, Api, Reply, TestServer, key_provider, output_text};
use serde_json::{Value, json};

use crate::{bin, observation, patient};

/// Run the CLI with a saved session for `api` (its server and token) in its own config dir.
fn cli(srv: &TestServer, who: &str, api: &Api, args: &[&str]) -> Output {
    let dir = srv.tmp_dir().join(format!("cli-{who}"));
    std::fs::create_dir_all(&dir).unwrap();
    let session = json!({
        "server": srv.base,
        "ca_cert": srv.ca_pem(),
        "access_token": api.token.clone().unwrap(),
    });
    std::fs::write(dir.join("session.json"), session.to_string()).unwrap();
    Command::new(bin())
        .args(args)
        .env("CAREVAULT_CLI_CONFIG_DIR", &dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// With the `file` provider, KEK version `v` is a file; with `pkcs11`, an HSM object (whose
/// presence `status` reports from the token itself).
fn kek_exists(srv: &TestServer, api: &Api, v: u64) -> bool {
    if key_provider() == "file" {
        srv.data_dir.join(format!("keys/kek-v{v}.key")).exists()
    } else {
        !["destroyed", "missing"].contains(&version_state(&status(api), v).0.as_str())
    }
}

fn status(api: &Api) -> Value {
    let r = api.get("/admin/keys");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn version_state(status: &Value, v: u64) -> (String, u64) {
    let entry = status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["version"] == v)
        .unwrap_or_else(|| panic!("no v{v} in {status}"));
    (
        entry["state"].as_str().unwrap().to_owned(),
        entry["data_keys"].as_u64().unwrap(),
    )
}

fn wait_for_rewrap(api: &Api) -> Value {
    for _ in 0..1200 {
        let s = status(api);
        if s["rewrap_remaining"] == 0 {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("re-wrap did not finish: {}", status(api));
}

fn create(api: &Api, path: &str, body: &Value) -> String {
    let r = api.post_fhir(path, body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

#[test]
fn kek_rotation_under_load_then_destroying_the_old_version() {
    let srv = TestServer::start(bin());
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.rotate", &["clinician"], Some("org-a"));
    let auditor = srv.user(&admin, "aud.rotate", &["auditor"], None);
    let written = write_ten_patients_with_an_observation(&clin);
    version_one_is_active_and_only_admins_manage_keys(&admin, &clin, &auditor);
    let everything = rotate_the_kek_under_load(&srv, &admin, &clin, &written);
    rewrap_completes_and_is_a_metric(&srv, &admin, &auditor);
    bad_key_commands_change_nothing(&srv, &admin);
    destroy_the_old_version(&srv, &admin, &clin, &everything);
    let mut srv = srv;
    srv.stop();
    srv.restart(&[]);
    everything_reads_and_is_audited_after_a_restart(&srv, &admin, &clin, &auditor, &everything);
}

/// Returns the paths of what it wrote.
fn write_ten_patients_with_an_observation(clin: &Account) -> Vec<String> {
    let mut written: Vec<String> = Vec::new();
    for i in 0..10 {
        let pid = create(
            &clin.api,
            "/fhir/Patient",
            &patient(&format!("Rot{i}"), "Ann"),
        );
        let oid = create(&clin.api, "/fhir/Observation", &observation(&pid, "before"));
        written.push(format!("/fhir/Patient/{pid}"));
        written.push(format!("/fhir/Observation/{oid}"));
    }
    written
}

fn version_one_is_active_and_only_admins_manage_keys(
    admin: &Account,
    clin: &Account,
    auditor: &Account,
) {
    let before = status(&admin.api);
    assert_eq!(before["provider"], key_provider());
    assert_eq!(before["active_version"], 1);
    assert_eq!(version_state(&before, 1).0, "active");

    // Only admins manage keys.
    assert_eq!(
        clin.api.post_json("/admin/keys/rotate", &json!({})).status,
        403
    );
    assert_eq!(auditor.api.get("/admin/keys").status, 403);
}

/// Rotates the KEK with the CLI while workers read, write and search; returns the paths of
/// everything written (before and during the rotation).
fn rotate_the_kek_under_load(
    srv: &TestServer,
    admin: &Account,
    clin: &Account,
    written: &[String],
) -> Vec<String> {
    // A workload of reads, writes and searches while the KEK rotates and data keys re-wrap.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (api, stop, failures, done, created) = (
            clin.api.clone(),
            stop.clone(),
            failures.clone(),
            done.clone(),
            created.clone(),
        );
        let reads = written.to_vec();
        workers.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) || n < 6 {
                let (what, r) = match n % 3 {
                    0 => {
                        let r =
                            api.post_fhir("/fhir/Patient", &patient(&format!("Load{w}x{n}"), "Bo"));
                        if r.status == 201 {
                            let id = r.json()["id"].as_str().unwrap().to_owned();
                            created.lock().unwrap().push(format!("/fhir/Patient/{id}"));
                        }
                        ("create", r)
                    }
                    1 => ("read", api.get(&reads[n % reads.len()])),
                    _ => ("search", api.get("/fhir/Observation?code=8867-4")),
                };
                if !(200..300).contains(&r.status) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{what}: {} {}", r.status, r.text()));
                }
                n += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    while done.load(Ordering::SeqCst) < 10 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let rotated = cli(srv, "admin", &admin.api, &["key", "rotate", "--wait"]);
    assert!(rotated.status.success(), "{}", output_text(&rotated));
    assert!(
        output_text(&rotated).contains("v2 is active"),
        "{}",
        output_text(&rotated)
    );
    assert!(
        output_text(&rotated).contains("re-wrap complete"),
        "{}",
        output_text(&rotated)
    );
    let during = done.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(during >= 10);
    let mut everything = written.to_vec();
    everything.extend(created.lock().unwrap().iter().cloned());
    everything
}

fn rewrap_completes_and_is_a_metric(srv: &TestServer, admin: &Account, auditor: &Account) {
    let after = wait_for_rewrap(&admin.api);
    assert_eq!(after["active_version"], 2);
    assert_eq!(version_state(&after, 1), ("decrypt-only".to_owned(), 0));
    let (state2, keys2) = version_state(&after, 2);
    assert_eq!(state2, "active");
    assert!(keys2 >= 12, "{after}");
    let shown = cli(srv, "admin", &admin.api, &["key", "status"]);
    assert!(shown.status.success(), "{}", output_text(&shown));
    let shown = output_text(&shown);
    assert!(
        shown.contains("v1") && shown.contains("decrypt-only"),
        "{shown}"
    );
    assert!(shown.contains("re-wrap: complete"), "{shown}");

    // Progress is a metric.
    let metrics = auditor.api.get("/metrics").text();
    assert!(
        metrics.contains("carevault_kek_active_version 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("carevault_kek_rewrap_remaining 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("carevault_kek_data_keys{version=\"1\"} 0"),
        "{metrics}"
    );
}

fn bad_key_commands_change_nothing(srv: &TestServer, admin: &Account) {
    // Bad input changes nothing, with a clear error.
    for (args, expect) in [
        (&["key", "destroy", "v2"][..], "active"),
        (&["key", "destroy", "v9"][..], "404"),
        (&["key", "destroy", "vx"][..], "v1, v2"),
        (&["key", "min-version", "v3"][..], "between"),
    ] {
        let out = cli(srv, "admin", &admin.api, args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            output_text(&out).contains(expect),
            "{args:?}: {}",
            output_text(&out)
        );
    }
    assert!(kek_exists(srv, &admin.api, 1));
    assert_eq!(status(&admin.api)["active_version"], 2);
}

fn destroy_the_old_version(
    srv: &TestServer,
    admin: &Account,
    clin: &Account,
    everything: &[String],
) {
    // The old version is destroyed for good; everything still reads, before and after a restart.
    let destroyed = cli(srv, "admin", &admin.api, &["key", "destroy", "v1"]);
    assert!(destroyed.status.success(), "{}", output_text(&destroyed));
    assert!(!kek_exists(srv, &admin.api, 1), "the v1 key must be gone");
    assert!(kek_exists(srv, &admin.api, 2));
    let again = cli(srv, "admin", &admin.api, &["key", "destroy", "v1"]);
    assert!(
        output_text(&again).contains("already destroyed"),
        "{}",
        output_text(&again)
    );
    let min = cli(srv, "admin", &admin.api, &["key", "min-version", "v2"]);
    assert!(min.status.success(), "{}", output_text(&min));
    let s = status(&admin.api);
    assert_eq!(version_state(&s, 1).0, "destroyed");
    assert_eq!(s["min_decrypt_version"], 2);
    for path in everything {
        let r = clin.api.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

fn everything_reads_and_is_audited_after_a_restart(
    srv: &TestServer,
    admin: &Account,
    clin: &Account,
    auditor: &Account,
    everything: &[String],
) {
    let clin_api = clin.api.rebased(&srv.base);
    for path in everything {
        assert_eq!(clin_api.get(path).status, 200, "{path} after restart");
    }
    // Every action above is in the audit trail.
    let admin_api = admin.api.rebased(&srv.base);
    assert_eq!(status(&admin_api)["active_version"], 2);
    // Read back from the provider itself (the key directory or the HSM token).
    assert!(!kek_exists(srv, &admin_api, 1));
    assert!(kek_exists(srv, &admin_api, 2));
    let auditor_api = auditor.api.rebased(&srv.base);
    assert_audited(
        &auditor_api,
        &[
            "admin.kek.rotate",
            "admin.kek.destroy",
            "admin.kek.min-version",
            "key.rewrap.finished",
        ],
    );
}

/// Each action has at least one event in the trail. Asked for by action, since the load a
/// test drives can push an early event past any fixed page of the newest events.
fn assert_audited(auditor_api: &Api, actions: &[&str]) {
    for action in actions {
        let trail = auditor_api.get(&format!("/audit/events?action={action}&_count=1"));
        assert_eq!(trail.status, 200, "{}", trail.text());
        let entries = trail.json()["entry"].as_array().map_or(0, Vec::len);
        assert_eq!(entries, 1, "{action} not audited");
    }
}

#[test]
fn an_interrupted_rewrap_resumes_after_a_restart() {
    let slow = [
        ("CAREVAULT_KEY_REWRAP_BATCH_SIZE", "1"),
        ("CAREVAULT_KEY_REWRAP_PAUSE_MS", "400"),
    ];
    let mut srv = TestServer::start_with(bin(), &slow);
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.resume", &["clinician"], Some("org-a"));
    let mut paths = Vec::new();
    for i in 0..12 {
        let pid = create(
            &clin.api,
            "/fhir/Patient",
            &patient(&format!("Res{i}"), "Cy"),
        );
        paths.push(format!("/fhir/Patient/{pid}"));
    }
    let r = admin.api.post_json("/admin/keys/rotate", &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let total = status(&admin.api)["data_keys_total"].as_u64().unwrap();
    assert!(total >= 12);
    // Kill the process once the job is clearly under way and clearly not done.
    let mut killed_at = None;
    for _ in 0..2000 {
        let remaining = status(&admin.api)["rewrap_remaining"].as_u64().unwrap();
        if remaining <= total - 2 && remaining >= 6 {
            killed_at = Some(remaining);
            srv.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = killed_at.expect("the re-wrap never got under way");

    // Restarted with a long pause: one batch runs at start, then the job waits. The progress
    // made before the kill is kept; the rest is still to do.
    srv.restart(&[("CAREVAULT_KEY_REWRAP_PAUSE_MS", "60000")]);
    let admin_api = admin.api.rebased(&srv.base);
    let resumed = status(&admin_api);
    let remaining = resumed["rewrap_remaining"].as_u64().unwrap();
    assert!(remaining < total, "progress was lost: {resumed}");
    assert!(
        remaining > 0 && remaining <= killed_at,
        "{resumed} (killed at {killed_at})"
    );
    assert_eq!(resumed["active_version"], 2);
    // The old version is still needed: destroying it is refused.
    let refused = admin_api.delete("/admin/keys/v1");
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(
        refused.diagnostics().contains("still wraps"),
        "{}",
        refused.text()
    );
    assert!(kek_exists(&srv, &admin_api, 1));

    // At full speed it runs to completion.
    srv.stop();
    srv.restart(&[("CAREVAULT_KEY_REWRAP_PAUSE_MS", "0")]);
    let admin_api = admin.api.rebased(&srv.base);
    let finished = wait_for_rewrap(&admin_api);
    assert_eq!(version_state(&finished, 1).1, 0);
    assert_eq!(admin_api.delete("/admin/keys/v1").status, 204);
    assert!(!kek_exists(&srv, &admin_api, 1));
    let clin_api = clin.api.rebased(&srv.base);
    for path in &paths {
        assert_eq!(clin_api.get(path).status, 200, "{path}");
    }
}

fn copy_db(from_dir: &Path, to_dir: &Path) {
    std::fs::create_dir_all(to_dir).unwrap();
    for name in ["carevault.db", "carevault.db-wal", "carevault.db-shm"] {
        let _ = std::fs::remove_file(to_dir.join(name));
        if from_dir.join(name).exists() {
            std::fs::copy(from_dir.join(name), to_dir.join(name)).unwrap();
        }
    }
}

fn db_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["carevault.db", "carevault.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            all.extend(b);
        }
    }
    all
}

fn ids_in(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn crypto_shred_needs_a_second_admin_and_survives_a_database_restore() {
    let mut srv = TestServer::start(bin());
    let admin = srv.admin();
    let second = srv.user(&admin, "admin2", &["admin"], None);
    let clin = srv.user(&admin, "dr.shred", &["clinician"], Some("org-a"));
    let case = write_a_patient_to_shred_and_one_to_keep(&clin);
    let (backup, backup_db) = back_up_the_database(&mut srv);
    let a = admin.api.rebased(&srv.base);
    let b = second.api.rebased(&srv.base);
    let c = clin.api.rebased(&srv.base);
    assert_eq!(c.get(&format!("/fhir/Patient/{}", case.gone)).status, 200);

    let reason = "erasure request ticket 4711 from Ida Shredwell";
    bad_shred_requests_change_nothing(&a, &b, &c, &case, reason);
    the_second_admin_approves_and_the_first_shreds(&srv, &a, &b, &case, reason);
    assert_shredded(&c, &case);
    the_compartment_stays_closed_and_the_reason_is_not_in_clear(&srv, &c, &case, reason);
    restore_the_backup(&mut srv, &backup, backup_db);
    assert!(srv.logs().contains("shreds_reapplied"), "{}", srv.logs());
    assert_shredded(&clin.api.rebased(&srv.base), &case);
}

/// The ids of a patient to shred (with two versions and an observation) and of one to keep.
struct ShredCase {
    gone: String,
    kept: String,
    gone_obs: String,
    kept_obs: String,
}

fn write_a_patient_to_shred_and_one_to_keep(clin: &Account) -> ShredCase {
    let gone = create(&clin.api, "/fhir/Patient", &patient("Shredwell", "Ida"));
    let kept = create(&clin.api, "/fhir/Patient", &patient("Keepsake", "Una"));
    let mut updated = patient("Shredwell", "Ida");
    updated["id"] = json!(gone);
    assert_eq!(
        clin.api
            .put_fhir(&format!("/fhir/Patient/{gone}"), &updated, &[])
            .status,
        200
    );
    let gone_obs = create(
        &clin.api,
        "/fhir/Observation",
        &observation(&gone, "shred me"),
    );
    let kept_obs = create(
        &clin.api,
        "/fhir/Observation",
        &observation(&kept, "keep me"),
    );
    ShredCase {
        gone,
        kept,
        gone_obs,
        kept_obs,
    }
}

/// Returns the copy: the SQLite files' folder, and on PostgreSQL the database.
fn back_up_the_database(
    srv: &mut TestServer,
) -> (PathBuf, Option<carevault_testkit::TestDatabase>) {
    // A copy of the database from before the shred (taken while the server is stopped): the
    // SQLite files, or on PostgreSQL a database made from this one as a template.
    let backup = srv.tmp_dir().join("backup");
    srv.stop();
    copy_db(&srv.data_dir, &backup);
    let backup_db = srv
        .database
        .as_deref()
        .map(carevault_testkit::TestDatabase::create_from);
    srv.restart(&[]);
    (backup, backup_db)
}

fn restore_the_backup(
    srv: &mut TestServer,
    backup: &Path,
    backup_db: Option<carevault_testkit::TestDatabase>,
) {
    // Restore the database copy from before the shred: the shred is applied again at start.
    srv.stop();
    match backup_db {
        Some(db) => srv.database = Some(std::sync::Arc::new(db)),
        None => {
            copy_db(backup, &srv.data_dir);
            assert!(
                !db_bytes(&srv.data_dir).is_empty(),
                "the restored database must be in place"
            );
        }
    }
    srv.restart(&[]);
}

fn shred(api: &Api, id: &str, reason: &str, approval: &str) -> Reply {
    api.post_json(
        &format!("/admin/patients/{id}/shred"),
        &json!({"reason": reason, "approval": approval}),
    )
}

fn bad_shred_requests_change_nothing(a: &Api, b: &Api, c: &Api, case: &ShredCase, reason: &str) {
    let ShredCase { gone, kept, .. } = case;
    // Bad input changes nothing.
    assert_eq!(
        b.post_json("/admin/patients/no-such-patient/shred-approval", &json!({}))
            .status,
        404
    );
    assert_eq!(
        c.post_json(
            &format!("/admin/patients/{gone}/shred-approval"),
            &json!({})
        )
        .status,
        403
    );
    let wrong = shred(a, gone, reason, "cva_not-a-real-approval");
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert!(wrong.diagnostics().contains("approval"), "{}", wrong.text());
    let own = a
        .post_json(
            &format!("/admin/patients/{gone}/shred-approval"),
            &json!({}),
        )
        .json()["approval_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = shred(a, gone, reason, &own);
    assert_eq!(r.status, 400);
    assert!(r.diagnostics().contains("second admin"), "{}", r.text());
    let for_kept = b
        .post_json(
            &format!("/admin/patients/{kept}/shred-approval"),
            &json!({}),
        )
        .json()["approval_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(shred(a, gone, reason, &for_kept).status, 400);
    let missing = shred(a, "no-such-patient", reason, &for_kept);
    assert_eq!(missing.status, 404);
    assert_eq!(c.get(&format!("/fhir/Patient/{gone}")).status, 200);
}

fn the_second_admin_approves_and_the_first_shreds(
    srv: &TestServer,
    a: &Api,
    b: &Api,
    case: &ShredCase,
    reason: &str,
) {
    let gone = &case.gone;
    // The second admin approves with the CLI; the first shreds with it.
    let approved = cli(
        srv,
        "admin2",
        b,
        &["patient", "approve-shred", &format!("Patient/{gone}")],
    );
    assert!(approved.status.success(), "{}", output_text(&approved));
    let token = output_text(&approved)
        .lines()
        .find_map(|l| {
            l.split(": ")
                .nth(1)
                .filter(|t| t.starts_with("cva_"))
                .map(str::to_owned)
        })
        .unwrap();
    let too_short = cli(
        srv,
        "admin",
        a,
        &[
            "patient",
            "shred",
            &format!("Patient/{gone}"),
            "--reason",
            "x",
            "--approval",
            &token,
        ],
    );
    assert!(!too_short.status.success());
    assert!(
        output_text(&too_short).contains("reason"),
        "{}",
        output_text(&too_short)
    );
    let done = cli(
        srv,
        "admin",
        a,
        &[
            "patient",
            "shred",
            &format!("Patient/{gone}"),
            "--reason",
            reason,
            "--approval",
            &token,
        ],
    );
    assert!(done.status.success(), "{}", output_text(&done));
    // One use only.
    assert_ne!(shred(a, gone, reason, &token).status, 200);
}

/// Nothing of the shredded patient reads or is found any more; the other patient is untouched.
fn assert_shredded(c: &Api, case: &ShredCase) {
    let ShredCase {
        gone,
        kept,
        gone_obs,
        kept_obs,
    } = case;
    for path in [
        format!("/fhir/Patient/{gone}"),
        format!("/fhir/Patient/{gone}/_history/1"),
        format!("/fhir/Patient/{gone}/_history/2"),
        format!("/fhir/Observation/{gone_obs}"),
    ] {
        let r = c.get(&path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    let hist = c.get(&format!("/fhir/Patient/{gone}/_history"));
    assert!(
        hist.status == 404 || ids_in(&hist.json()).is_empty(),
        "{}",
        hist.text()
    );
    let type_hist = c.get("/fhir/Patient/_history?_count=100").json();
    assert!(!ids_in(&type_hist).contains(gone));
    assert!(ids_in(&type_hist).contains(kept));
    let found = c.get("/fhir/Patient?family=Shredwell").json();
    assert!(ids_in(&found).is_empty(), "{found}");
    let obs = c
        .get(&format!("/fhir/Observation?patient=Patient/{gone}"))
        .json();
    assert!(ids_in(&obs).is_empty(), "{obs}");
    let all_obs = c.get("/fhir/Observation?code=8867-4").json();
    assert_eq!(ids_in(&all_obs), vec![kept_obs.clone()]);
    // Other patients are untouched.
    assert_eq!(c.get(&format!("/fhir/Patient/{kept}")).status, 200);
    assert_eq!(c.get(&format!("/fhir/Observation/{kept_obs}")).status, 200);
    let kept_found = c.get("/fhir/Patient?family=Keepsake").json();
    assert_eq!(ids_in(&kept_found), vec![kept.clone()]);
}

fn the_compartment_stays_closed_and_the_reason_is_not_in_clear(
    srv: &TestServer,
    c: &Api,
    case: &ShredCase,
    reason: &str,
) {
    let gone = &case.gone;
    // The shredded compartment never gets a new key.
    let mut revive = patient("Shredwell", "Ida");
    revive["id"] = json!(gone);
    let r = c.put_fhir(&format!("/fhir/Patient/{gone}"), &revive, &[]);
    assert_eq!(r.status, 410, "{}", r.text());
    // The reason is audited, never in clear.
    for (place, bytes) in srv.at_rest() {
        assert!(
            !bytes.windows(reason.len()).any(|w| w == reason.as_bytes()),
            "the shred reason is readable in {place}"
        );
    }
    let keyring = std::fs::read_to_string(srv.data_dir.join("keys/keyring.json")).unwrap();
    assert!(keyring.contains(&format!("Patient/{gone}")));
    assert!(!keyring.contains("Shredwell"));
}

#[test]
fn kek_files_sealed_under_a_passphrase_and_a_wrong_one_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    if key_provider() != "file" {
        return; // a property of the file provider
    }
    let tmp = tempfile::tempdir().unwrap();
    let pass_file = tmp.path().join("kek-passphrase");
    let passphrase = format!("pass-{}", uuid_like());
    std::fs::write(&pass_file, format!("{passphrase}\n")).unwrap();
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pass_env = pass_file.to_str().unwrap().to_owned();
    let mut srv = TestServer::start_with(bin(), &[("CAREVAULT_KEY_PASSPHRASE_FILE", &pass_env)]);
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.sealed", &["clinician"], Some("org-a"));
    let pid = create(&clin.api, "/fhir/Patient", &patient("Sealed", "Sue"));
    assert_eq!(
        admin.api.post_json("/admin/keys/rotate", &json!({})).status,
        201
    );
    wait_for_rewrap(&admin.api);
    for v in [1, 2] {
        let bytes = std::fs::read(srv.data_dir.join(format!("keys/kek-v{v}.key"))).unwrap();
        assert!(bytes.starts_with(b"CVKEKS01"), "kek-v{v} is not sealed");
    }

    // A wrong passphrase: a clear error, and the server does not start.
    srv.stop();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not-the-right-passphrase\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&srv.data_dir)
        .env("CAREVAULT_KEY_PASSPHRASE_FILE", &wrong)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = output_text(&out);
    assert!(said.contains("wrong passphrase"), "{said}");
    assert!(!said.contains("not-the-right") && !said.contains(&passphrase));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
    // Without one: refused too.
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&srv.data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("key.passphrase_file"),
        "{}",
        output_text(&out)
    );

    // The right one: everything reads.
    srv.restart(&[]);
    let c = clin.api.rebased(&srv.base);
    assert_eq!(c.get(&format!("/fhir/Patient/{pid}")).status, 200);
}

/// A value unique to this run (not a secret; only makes the passphrase distinct).
#[allow(clippy::disallowed_methods)]
fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn an_unreachable_hsm_or_a_wrong_pin_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let env = carevault_testkit::softhsm_token(tmp.path());
    let serve = |data: &Path, overrides: &[(&str, String)]| {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env_remove("CAREVAULT_TEST_KEY_PROVIDER")
            .stdin(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        for (k, v) in overrides {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let wrong_pin = tmp.path().join("wrong-pin");
    std::fs::write(&wrong_pin, "000000\n").unwrap();
    std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases = [
        (
            (
                "CAREVAULT_KEY_PKCS11_MODULE",
                "/nonexistent/libpkcs11.so".to_owned(),
            ),
            "cannot load the PKCS#11 module",
        ),
        (
            (
                "CAREVAULT_KEY_PKCS11_TOKEN_LABEL",
                "no-such-token".to_owned(),
            ),
            "no token has the configured label",
        ),
        (
            (
                "CAREVAULT_KEY_PKCS11_PIN_FILE",
                wrong_pin.display().to_string(),
            ),
            "login failed",
        ),
    ];
    for ((key, value), expect) in cases {
        let data = tmp.path().join(format!("data-{key}"));
        let out = serve(&data, &[(key, value)]);
        assert!(!out.status.success(), "{key}: the server must not start");
        let said = output_text(&out);
        assert!(said.contains(expect), "{key}: {said}");
        assert!(!said.contains("listening on"));
        assert!(!said.contains("000000"));
        assert!(
            !data.join("environment.json").exists(),
            "{key}: nothing initialized"
        );
    }
}

/// The ids of the live patient data keys.
fn patient_dek_ids(srv: &TestServer) -> Vec<i64> {
    let n = srv.query_i64("SELECT COUNT(*) FROM data_key WHERE compartment LIKE 'Patient/%'");
    (0..n)
        .map(|i| {
            srv.query_i64(&format!(
                "SELECT id FROM data_key WHERE compartment LIKE 'Patient/%' ORDER BY id LIMIT 1 OFFSET {i}"
            ))
        })
        .collect()
}

fn id_list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// No row and no resource version refers to any of `old` any more.
fn assert_old_deks_gone(srv: &TestServer, old: &[i64]) {
    let list = id_list(old);
    assert_eq!(
        srv.query_i64(&format!(
            "SELECT COUNT(*) FROM data_key WHERE id IN ({list})"
        )),
        0,
        "old data keys are still in the database"
    );
    assert_eq!(
        srv.query_i64(&format!(
            "SELECT COUNT(*) FROM resource_version WHERE dek_id IN ({list})"
        )),
        0,
        "versions still sealed under old data keys"
    );
}

fn wait_for_data_rotation(api: &Api) -> Value {
    for _ in 0..1200 {
        let s = status(api);
        if s["data_rotation"]["complete"] == true {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("data-key rotation did not finish: {}", status(api));
}

#[test]
fn data_keys_rotate_under_load_and_an_interrupted_rotation_resumes() {
    let slow = [
        ("CAREVAULT_KEY_REWRAP_BATCH_SIZE", "2"),
        ("CAREVAULT_KEY_REWRAP_PAUSE_MS", "50"),
    ];
    let mut srv = TestServer::start_with(bin(), &slow);
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.rekey", &["clinician"], Some("org-a"));
    let auditor = srv.user(&admin, "aud.rekey", &["auditor"], None);
    let (paths, patients) = write_eight_patients_with_two_versions(&clin);
    let old = patient_dek_ids(&srv);
    assert_eq!(old.len(), 8);

    // Only admins rotate data keys.
    assert_eq!(
        clin.api
            .post_json("/admin/keys/rotate-data", &json!({}))
            .status,
        403
    );

    let written = rotate_data_keys_under_load(&srv, &admin, &clin, &paths, &patients);
    let mut everything = paths;
    everything.extend(written);
    every_old_data_key_is_gone_and_everything_reads(
        &srv,
        &admin,
        &clin,
        &auditor,
        &old,
        &everything,
    );
    an_interrupted_rotation_resumes(&mut srv, &admin, &clin, &auditor, &everything);
}

/// Returns the paths to read back (each patient, its first version and its observation) and
/// the patients' ids.
fn write_eight_patients_with_two_versions(clin: &Account) -> (Vec<String>, Vec<String>) {
    let mut paths = Vec::new();
    let mut patients = Vec::new();
    for i in 0..8 {
        let pid = create(
            &clin.api,
            "/fhir/Patient",
            &patient(&format!("Rekey{i}"), "Di"),
        );
        let oid = create(&clin.api, "/fhir/Observation", &observation(&pid, "before"));
        // A second version, so history is re-sealed too.
        let mut p = patient(&format!("Rekey{i}"), "Dee");
        p["id"] = json!(pid);
        let r = clin.api.put_fhir(&format!("/fhir/Patient/{pid}"), &p, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        paths.push(format!("/fhir/Patient/{pid}"));
        paths.push(format!("/fhir/Patient/{pid}/_history/1"));
        paths.push(format!("/fhir/Observation/{oid}"));
        patients.push(pid);
    }
    (paths, patients)
}

/// Rotates the data keys with the CLI while workers read, write and search; returns the paths
/// the workers wrote.
fn rotate_data_keys_under_load(
    srv: &TestServer,
    admin: &Account,
    clin: &Account,
    paths: &[String],
    patients: &[String],
) -> Vec<String> {
    // A workload of reads, writes into the rotating compartments, new patients and searches.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (api, stop, failures, done, written) = (
            clin.api.clone(),
            stop.clone(),
            failures.clone(),
            done.clone(),
            written.clone(),
        );
        let (reads, patients) = (paths.to_vec(), patients.to_vec());
        workers.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) || n < 8 {
                let (what, r) = rekey_workload_request(&api, w, n, &reads, &patients, &written);
                if !(200..300).contains(&r.status) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{what}: {} {}", r.status, r.text()));
                }
                n += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    while done.load(Ordering::SeqCst) < 8 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let rotated = cli(srv, "admin", &admin.api, &["key", "rotate-data", "--wait"]);
    assert!(rotated.status.success(), "{}", output_text(&rotated));
    assert!(
        output_text(&rotated).contains("data keys to rotate"),
        "{}",
        output_text(&rotated)
    );
    assert!(
        output_text(&rotated).contains("data-key rotation complete"),
        "{}",
        output_text(&rotated)
    );
    let during = done.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(during >= 8);
    written.lock().unwrap().clone()
}

/// Worker `w`'s `n`th request: the kinds take turns. Records the paths it writes in `written`.
fn rekey_workload_request(
    api: &Api,
    w: usize,
    n: usize,
    reads: &[String],
    patients: &[String],
    written: &std::sync::Mutex<Vec<String>>,
) -> (&'static str, Reply) {
    match n % 5 {
        0 => {
            let pid = &patients[(n / 4 + w) % patients.len()];
            let r = api.post_fhir("/fhir/Observation", &observation(pid, "during"));
            if r.status == 201 {
                let id = r.json()["id"].as_str().unwrap().to_owned();
                written
                    .lock()
                    .unwrap()
                    .push(format!("/fhir/Observation/{id}"));
            }
            ("write into a rotating compartment", r)
        }
        1 => ("read", api.get(&reads[(n + w) % reads.len()])),
        2 => {
            let r = api.post_fhir("/fhir/Patient", &patient(&format!("New{w}x{n}"), "Ed"));
            if r.status == 201 {
                let id = r.json()["id"].as_str().unwrap().to_owned();
                written.lock().unwrap().push(format!("/fhir/Patient/{id}"));
            }
            ("create", r)
        }
        3 => ("search", api.get("/fhir/Observation?code=8867-4")),
        _ => {
            // A transaction sealed under a key that the rotation may retire before
            // it commits: prepared again, never a failure.
            // One entry into every compartment, so that any of them being
            // rotated meanwhile retires a key it was sealed under.
            let entries: Vec<Value> = patients
                .iter()
                .map(|pid| {
                    json!({
                        "resource": observation(pid, "in a transaction"),
                        "request": {"method": "POST", "url": "Observation"}
                    })
                })
                .collect();
            let bundle = json!({
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": entries
            });
            let r = api.post_fhir("/fhir", &bundle);
            if r.status == 200 {
                for e in r.json()["entry"].as_array().unwrap() {
                    let location = e["response"]["location"].as_str().unwrap();
                    let path = location.split("/_history").next().unwrap();
                    written.lock().unwrap().push(format!("/fhir/{path}"));
                }
            }
            ("transaction into a rotating compartment", r)
        }
    }
}

fn every_old_data_key_is_gone_and_everything_reads(
    srv: &TestServer,
    admin: &Account,
    clin: &Account,
    auditor: &Account,
    old: &[i64],
    everything: &[String],
) {
    // Every old key is gone, every compartment has a new one, everything reads.
    let after = wait_for_data_rotation(&admin.api);
    assert_eq!(after["data_rotation"]["versions_remaining"], 0, "{after}");
    assert_old_deks_gone(srv, old);
    let new = patient_dek_ids(srv);
    assert!(new.len() >= 8 && new.iter().all(|id| !old.contains(id)));
    for path in everything {
        let r = clin.api.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let found = clin.api.get("/fhir/Observation?code=8867-4&_count=100");
    assert_eq!(found.status, 200, "{}", found.text());
    let hits = found.json()["entry"].as_array().map_or(0, Vec::len);
    assert!(hits >= 8, "{}", found.text());
    let shown = output_text(&cli(srv, "admin", &admin.api, &["key", "status"]));
    assert!(
        shown.contains("data-key rotation: none under way"),
        "{shown}"
    );
    let metrics = auditor.api.get("/metrics").text();
    assert!(
        metrics.contains("carevault_dek_rotation_remaining_versions 0"),
        "{metrics}"
    );
    let resealed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("carevault_dek_resealed_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(resealed >= 24, "{resealed} versions re-sealed");
}

fn an_interrupted_rotation_resumes(
    srv: &mut TestServer,
    admin: &Account,
    clin: &Account,
    auditor: &Account,
    everything: &[String],
) {
    // A second rotation, killed mid-way: the progress is in the database and resumes.
    srv.stop();
    srv.restart(&[
        ("CAREVAULT_KEY_REWRAP_BATCH_SIZE", "1"),
        ("CAREVAULT_KEY_REWRAP_PAUSE_MS", "300"),
    ]);
    let admin_api = admin.api.rebased(&srv.base);
    let old = patient_dek_ids(srv);
    let r = admin_api.post_json("/admin/keys/rotate-data", &json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    let total = r.json()["data_rotation"]["versions_remaining"]
        .as_u64()
        .unwrap();
    assert!(total >= 24, "{}", r.text());
    let mut killed_at = None;
    for _ in 0..2000 {
        let left = status(&admin_api)["data_rotation"]["versions_remaining"]
            .as_u64()
            .unwrap();
        if left <= total - 3 && left >= 6 {
            killed_at = Some(left);
            srv.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = killed_at.expect("the rotation never got under way");
    let marked_or_retiring =
        srv.query_i64("SELECT COUNT(*) FROM data_key WHERE state IN ('rotate', 'retiring')");
    assert!(marked_or_retiring > 0, "the job's state is in the database");
    srv.restart(&[("CAREVAULT_KEY_REWRAP_PAUSE_MS", "60000")]);
    let admin_api = admin.api.rebased(&srv.base);
    let resumed = status(&admin_api)["data_rotation"].clone();
    let left = resumed["versions_remaining"].as_u64().unwrap();
    assert!(
        left > 0 && left <= killed_at,
        "{resumed} (killed at {killed_at})"
    );
    srv.stop();
    srv.restart(&[("CAREVAULT_KEY_REWRAP_PAUSE_MS", "0")]);
    let admin_api = admin.api.rebased(&srv.base);
    wait_for_data_rotation(&admin_api);
    assert_old_deks_gone(srv, &old);
    let clin_api = clin.api.rebased(&srv.base);
    for path in everything {
        let r = clin_api.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let auditor_api = auditor.api.rebased(&srv.base);
    assert_audited(
        &auditor_api,
        &["admin.dek.rotate", "key.rotate-data.finished"],
    );
}

/// The HSM goes away while the server runs: requests that need it answer 503 with an
/// OperationOutcome and write nothing; once it is back, the server logs in again by itself.
/// Always on a SoftHSM2 token of its own (the `file` provider has nothing to fail at run time).
#[test]
fn an_hsm_that_fails_at_run_time_answers_503_and_recovers() {
    let hsm_dir = tempfile::tempdir().unwrap();
    let env = carevault_testkit::softhsm_token(hsm_dir.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut srv = TestServer::start_with(bin(), &env);
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.hsm", &["clinician"], Some("org-a"));
    let before = create(&clin.api, "/fhir/Patient", &patient("Hsm", "Before"));
    assert_eq!(status(&admin.api)["provider"], "pkcs11");

    // The token disappears (its directory is moved away).
    let tokens = hsm_dir.path().join("softhsm/tokens");
    let away = hsm_dir.path().join("softhsm/tokens-away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    for attempt in 0..3 {
        let mut body = patient("Hsm", "During");
        let id = format!("hsm-down-{attempt}");
        body["id"] = json!(id);
        let r = clin
            .api
            .put_fhir(&format!("/fhir/Patient/{id}"), &body, &[]);
        assert_eq!(r.status, 503, "{}", r.text());
        let outcome = r.json();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
        assert_eq!(outcome["issue"][0]["code"], "transient", "{outcome}");
        assert!(
            !r.text().contains("HSM"),
            "no internal detail: {}",
            r.text()
        );
        // Nothing was written: no version, no data key.
        assert_eq!(
            srv.query_i64(&format!(
                "SELECT COUNT(*) FROM resource_version WHERE id = '{id}'"
            )),
            0
        );
        assert_eq!(
            srv.query_i64(&format!(
                "SELECT COUNT(*) FROM data_key WHERE compartment = 'Patient/{id}'"
            )),
            0
        );
        assert_eq!(clin.api.get(&format!("/fhir/Patient/{id}")).status, 404);
    }

    // The token comes back: the next requests succeed without a restart.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    let mut body = patient("Hsm", "After");
    body["id"] = json!("hsm-back");
    let mut last = None;
    for _ in 0..50 {
        let r = clin.api.put_fhir("/fhir/Patient/hsm-back", &body, &[]);
        if r.status == 201 {
            last = None;
            break;
        }
        last = Some(format!("{} {}", r.status, r.text()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last.is_none(), "the server did not recover: {last:?}");
    assert_eq!(clin.api.get("/fhir/Patient/hsm-back").status, 200);
    assert_eq!(clin.api.get(&format!("/fhir/Patient/{before}")).status, 200);
    create(&clin.api, "/fhir/Patient", &patient("Hsm", "Later"));
    // Rotation (a new HSM object) works on the new session too.
    let r = admin.api.post_json("/admin/keys/rotate", &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    wait_for_rewrap(&admin.api);
    create(&clin.api, "/fhir/Patient", &patient("Hsm", "Rotated"));
    let pin = std::fs::read_to_string(hsm_dir.path().join("softhsm/pin")).unwrap();
    srv.stop();
    assert!(
        !srv.logs().contains(pin.trim()),
        "the PIN leaked into the logs"
    );
}

/// This (test) process's effective capability set, from `/proc/self/status`.
fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap()
}

/// Whether this (test) process could lock all its memory: `CAP_IPC_LOCK` in its effective set,
/// or no limit on locked memory. Servers started from here inherit both.
fn can_lock_memory() -> bool {
    let caps = effective_capabilities();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let unlimited = limits
        .lines()
        .any(|l| l.starts_with("Max locked memory") && l.contains("unlimited"));
    caps & (1 << 14) != 0 || unlimited
}

/// `VmLck` of a process, in kB.
fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn unsealed_keys_are_locked_in_memory_where_the_os_allows() {
    let srv = crate::server();
    let admin = srv.admin();
    let auditor = srv.user(&admin, "aud.memory", &["auditor"], None);
    let metrics = auditor.api.get("/metrics").text();
    if can_lock_memory() {
        assert!(locked_kib(srv.pid()) > 0, "no memory locked");
        assert!(metrics.contains("carevault_memory_locked 1"), "{metrics}");
        assert!(srv.logs().contains("\"memory_locked\""), "{}", srv.logs());
    } else {
        assert_eq!(locked_kib(srv.pid()), 0);
        assert!(metrics.contains("carevault_memory_locked 0"), "{metrics}");
        assert!(srv.logs().contains("memory_not_locked"), "{}", srv.logs());
    }

    // Turned off, nothing is locked, and the metric says so.
    let off = TestServer::start_with(crate::bin(), &[("CAREVAULT_KEY_LOCK_MEMORY", "off")]);
    let admin = off.admin();
    let auditor = off.user(&admin, "aud.memory", &["auditor"], None);
    assert_eq!(locked_kib(off.pid()), 0);
    let metrics = auditor.api.get("/metrics").text();
    assert!(metrics.contains("carevault_memory_locked 0"), "{metrics}");
}

/// `carevault serve` where the OS forbids locking: a 64 KiB `RLIMIT_MEMLOCK` and, for root,
/// `CAP_IPC_LOCK` dropped from the bounding and inheritable sets (which is what root's
/// capabilities come from after exec).
fn serve_without_lock_permission(data_dir: &Path, mode: &str) -> Command {
    let caps = effective_capabilities();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--memlock=65536:65536");
    if caps & (1 << 14) != 0 {
        cmd.args([
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
        ]);
    }
    cmd.arg("--")
        .arg(crate::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("CAREVAULT_DATABASE_URL")
        .env_remove("CAREVAULT_TEST_BACKEND")
        .env("CAREVAULT_KEY_LOCK_MEMORY", mode)
        .env("CAREVAULT_CLI_CONFIG_DIR", data_dir.with_extension("cli"))
        .stdin(Stdio::null());
    cmd
}

#[test]
fn lock_memory_required_refuses_to_start_where_the_os_forbids_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let out = serve_without_lock_permission(&data_dir, "required")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", output_text(&out));
    let said = output_text(&out);
    assert!(
        said.contains("key.lock_memory") && said.contains("CAP_IPC_LOCK"),
        "{said}"
    );
    // It stopped before creating anything, keys included.
    assert!(!data_dir.exists(), "{said}");

    // `auto` starts anyway, unlocked, and says why.
    let mut child = serve_without_lock_permission(&data_dir, "auto")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("listening on "))
    });
    let listening = reader.join().unwrap_or(false);
    let locked = locked_kib(child.id());
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(listening, "{logs}");
    assert_eq!(locked, 0);
    assert!(logs.contains("memory_not_locked"), "{logs}");
}
