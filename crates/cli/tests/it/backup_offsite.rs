//! Off-site copies and scheduled verification of scheduled backups, against a real
//! S3-compatible server (`moto_server` from PyPI, started here on a free port): the bucket and
//! an off-site directory get the same bytes and are pruned by `backup.keep`; a target that is
//! down is retried, counted and alerted while the local copy stays and the server serves; no
//! credential reaches a log, the status or an error. Scheduled verification passes, then
//! catches a flipped byte. A scheduled backup that fails raises `operational.backup-failed`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carevault_testkit::{Account, Api, TestServer, output_text, wait_for};

use crate::backup::AgeKey;
use crate::backup_schedule::backups;
use crate::{bin, patient};

const KEY_ID: &str = "AKIACANARYKEYID7Q2W";
const SECRET: &str = "CANARYSECRETs3Zx9Vb7Nm2Lk4Jh6Gf8Dd0";
const BUCKET: &str = "carevault-backups";
const PREFIX: &str = "site-a/";

/// `moto_server` on a free port, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server is needed (pip install 'moto[server]'; .ci/run does): {e}")
            });
        let url = format!("http://127.0.0.1:{port}");
        let moto = Self { child, url };
        wait_for("moto_server to listen", Duration::from_secs(60), || {
            ureq::get(&moto.url).call().is_ok()
        });
        let made = ureq::put(&format!("{}/{BUCKET}", moto.url))
            .send_empty()
            .unwrap();
        assert_eq!(made.status().as_u16(), 200);
        moto
    }

    fn put(&self, key: &str, body: &[u8]) {
        let r = ureq::put(&format!("{}/{BUCKET}/{key}", self.url))
            .send(body)
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut r = ureq::get(&format!("{}/{BUCKET}/{key}", self.url))
            .call()
            .ok()?;
        Some(
            r.body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_vec()
                .unwrap(),
        )
    }

    /// Every key in the bucket.
    fn keys(&self) -> Vec<String> {
        let xml = ureq::get(&format!("{}/{BUCKET}?list-type=2", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sha256(bytes: &[u8]) -> String {
    let mut h = carevault_crypto::Sha256Stream::default();
    h.update(bytes);
    h.finish_hex()
}

fn status(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join(".carevault-backup-status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// [`wait_for`], but on giving up the panic shows the server's log and the status file.
fn wait_showing(
    srv: &TestServer,
    dir: &Path,
    what: &str,
    secs: u64,
    mut done: impl FnMut() -> bool,
) {
    let shown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(what, Duration::from_secs(secs), &mut done);
    }));
    if shown.is_err() {
        panic!(
            "gave up waiting for {what}\nstatus: {}\nlog:\n{}",
            status(dir),
            srv.logs()
        );
    }
}

fn as_env(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// An API key with the `metrics` scope, and one sample's value.
fn metric(srv: &TestServer, admin: &Account, sample: &str) -> f64 {
    let reply = admin.api.post_json(
        "/admin/api-keys",
        &serde_json::json!({"name": format!("prom-{}", free_port()), "scopes": ["metrics"], "expires_in_days": 1}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let token = reply.json()["key"].as_str().unwrap().to_owned();
    let text = srv.api().with_token(&token).get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{sample} ")))
        .unwrap_or_else(|| panic!("{sample} missing:\n{text}"))
        .parse()
        .unwrap()
}

/// The rule ids of the alerts an auditor reads.
fn alert_rules(auditor: &Api) -> Vec<String> {
    crate::detection::alerts(auditor)
        .into_iter()
        .map(|(rule, _, _)| rule)
        .collect()
}

fn no_canary(what: &str, text: &str) {
    for c in [KEY_ID, SECRET] {
        assert!(!text.contains(c), "a credential in {what}:\n{text}");
    }
}

#[test]
fn scheduled_backups_land_in_the_bucket_and_the_directory_with_the_same_bytes_and_are_pruned() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = AgeKey::new(tmp.path(), "backup.agekey");
    let creds = tmp.path().join("s3.credentials");
    std::fs::write(
        &creds,
        format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let offsite = tmp.path().join("nas");
    std::fs::create_dir(&offsite).unwrap();
    // Older backups on both targets (pruned by "1 last") and other files (never touched).
    let old = "carevault-20200101T000000Z.age";
    moto.put(&format!("{PREFIX}{old}"), b"an old backup");
    moto.put(&format!("{PREFIX}notes.txt"), b"not a backup");
    moto.put(&format!("elsewhere/{old}"), b"outside the prefix");
    std::fs::write(offsite.join(old), b"an old backup").unwrap();
    std::fs::write(offsite.join("notes.txt"), b"not a backup").unwrap();

    let dir = tmp.path().join("backups");
    let env = vec![
        ("CAREVAULT_BACKUP_SCHEDULE".to_owned(), "1h".to_owned()),
        (
            "CAREVAULT_BACKUP_DIR".to_owned(),
            dir.to_str().unwrap().to_owned(),
        ),
        ("CAREVAULT_BACKUP_RECIPIENTS".to_owned(), key.recipient()),
        ("CAREVAULT_BACKUP_KEEP".to_owned(), "1 last".to_owned()),
        (
            "CAREVAULT_BACKUP_VERIFY_SCHEDULE".to_owned(),
            "7d".to_owned(),
        ),
        (
            "CAREVAULT_BACKUP_OFFSITE_DIR".to_owned(),
            offsite.to_str().unwrap().to_owned(),
        ),
        ("CAREVAULT_BACKUP_S3_ENDPOINT".to_owned(), moto.url.clone()),
        ("CAREVAULT_BACKUP_S3_BUCKET".to_owned(), BUCKET.to_owned()),
        ("CAREVAULT_BACKUP_S3_PREFIX".to_owned(), PREFIX.to_owned()),
        (
            "CAREVAULT_BACKUP_S3_CREDENTIALS_FILE".to_owned(),
            creds.to_str().unwrap().to_owned(),
        ),
    ];
    let srv = TestServer::start_with(bin(), &as_env(&env));
    wait_showing(&srv, &dir, "both off-site copies", 120, || {
        let s = status(&dir);
        s["offsite"]["s3"]["last_copy"].is_object() && s["offsite"]["dir"]["last_copy"].is_object()
    });
    let files = backups(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let local = std::fs::read(&files[0]).unwrap();
    let in_bucket = moto.get(&format!("{PREFIX}{name}")).expect("the object");
    assert_eq!(sha256(&in_bucket), sha256(&local));
    assert_eq!(
        sha256(&std::fs::read(offsite.join(&name)).unwrap()),
        sha256(&local)
    );

    // Retention on both targets: the old backup is gone, everything else is left alone.
    let mut keys = moto.keys();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("elsewhere/{old}"),
            format!("{PREFIX}{name}"),
            format!("{PREFIX}notes.txt"),
        ]
    );
    let mut left: Vec<String> = std::fs::read_dir(&offsite)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec![name.clone(), "notes.txt".to_owned()]);

    // Scheduled verification without the identity: the file's hash and age header.
    wait_for(
        "the scheduled verification",
        Duration::from_secs(60),
        || status(&dir)["last_verify"].is_object(),
    );
    let s = status(&dir);
    assert_eq!(s["last_verify"]["level"], "integrity", "{s}");
    assert_eq!(s["last_verify"]["passed"], true, "{s}");
    assert_eq!(s["last_verify"]["file"], name.as_str());

    let admin = srv.admin();
    assert_eq!(
        metric(
            &srv,
            &admin,
            "carevault_backup_offsite_total{target=\"s3\",outcome=\"copied\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &srv,
            &admin,
            "carevault_backup_offsite_total{target=\"dir\",outcome=\"copied\"}"
        ),
        1.0
    );
    let shown = srv
        .command(bin())
        .args(["backup", "status"])
        .output()
        .unwrap();
    let shown = output_text(&shown);
    assert!(shown.contains("off-site s3: last copy"), "{shown}");
    assert!(shown.contains("(integrity): passed"), "{shown}");
    no_canary("the status", &shown);
    no_canary("the status file", &status(&dir).to_string());
    no_canary("the server's log", &srv.logs());
}

#[test]
fn a_target_that_is_down_is_retried_counted_and_alerted_and_the_local_copy_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let key = AgeKey::new(tmp.path(), "backup.agekey");
    let dir = tmp.path().join("backups");
    // Nothing listens on this port; the credentials come from the environment.
    let down = format!("http://127.0.0.1:{}", free_port());
    let env = vec![
        ("CAREVAULT_BACKUP_SCHEDULE".to_owned(), "1h".to_owned()),
        (
            "CAREVAULT_BACKUP_DIR".to_owned(),
            dir.to_str().unwrap().to_owned(),
        ),
        ("CAREVAULT_BACKUP_RECIPIENTS".to_owned(), key.recipient()),
        ("CAREVAULT_BACKUP_S3_ENDPOINT".to_owned(), down),
        ("CAREVAULT_BACKUP_S3_BUCKET".to_owned(), BUCKET.to_owned()),
        ("AWS_ACCESS_KEY_ID".to_owned(), KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), SECRET.to_owned()),
    ];
    let srv = TestServer::start_with(bin(), &as_env(&env));
    wait_showing(&srv, &dir, "the failed off-site copy", 120, || {
        status(&dir)["offsite"]["s3"]["failures"] == 1
    });
    // The local backup is kept and the server serves.
    assert_eq!(backups(&dir).len(), 1);
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.offsite", &["clinician"], Some("org-a"));
    let created = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Offsite", "Ada"));
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        metric(
            &srv,
            &admin,
            "carevault_backup_offsite_total{target=\"s3\",outcome=\"retried\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &srv,
            &admin,
            "carevault_backup_offsite_total{target=\"s3\",outcome=\"failed\"}"
        ),
        1.0
    );
    let auditor = srv.user(&admin, "aud.offsite", &["auditor"], None);
    wait_for("the offsite-failed alert", Duration::from_secs(20), || {
        alert_rules(&auditor.api).contains(&"operational.offsite-failed".to_owned())
    });
    let logs = srv.logs();
    assert_eq!(logs.matches("backup_offsite_retry").count(), 2, "{logs}");
    assert!(logs.contains("backup_offsite_failed"), "{logs}");
    let shown = srv
        .command(bin())
        .args(["backup", "status", "--output", "json"])
        .output()
        .unwrap();
    let shown = output_text(&shown);
    assert!(shown.contains("connection"), "{shown}");
    no_canary("the status", &shown);
    no_canary("the status file", &status(&dir).to_string());
    no_canary("the server's log", &logs);
}

#[test]
fn an_s3_secret_in_the_configuration_file_is_refused_without_echoing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("carevault.toml");
    for (line, key) in [
        (
            format!("s3_secret_access_key = \"{SECRET}\""),
            "backup.s3_secret_access_key",
        ),
        (
            // Built at run time: a literal URL with a password is what the secrets check refuses.
            format!(
                "s3_endpoint = \"https://{KEY_ID}{}{SECRET}@s3.example.org\"",
                ':'
            ),
            "backup.s3_endpoint",
        ),
    ] {
        std::fs::write(&config, format!("[backup]\nschedule = \"6h\"\n{line}\n")).unwrap();
        let out = Command::new(bin())
            .args(["backup", "status", "--config", config.to_str().unwrap()])
            .env_remove("CAREVAULT_TEST_BACKEND")
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains(key) && text.contains("s3_credentials_file"),
            "{text}"
        );
        no_canary("the error", &text);
    }
}

#[test]
fn scheduled_verification_passes_then_catches_a_flipped_byte_and_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("backup.pass");
    std::fs::write(&pass, "a long enough backup passphrase\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dir = tmp.path().join("backups");
    let env = vec![
        ("CAREVAULT_BACKUP_SCHEDULE".to_owned(), "1h".to_owned()),
        (
            "CAREVAULT_BACKUP_DIR".to_owned(),
            dir.to_str().unwrap().to_owned(),
        ),
        (
            "CAREVAULT_BACKUP_PASSPHRASE_FILE".to_owned(),
            pass.to_str().unwrap().to_owned(),
        ),
        (
            "CAREVAULT_BACKUP_VERIFY_SCHEDULE".to_owned(),
            "7d".to_owned(),
        ),
    ];
    let mut srv = TestServer::start_with(bin(), &as_env(&env));
    wait_showing(&srv, &dir, "the first verification", 180, || {
        status(&dir)["last_verify"].is_object()
    });
    let s = status(&dir);
    // SQLite: the whole `backup verify`; PostgreSQL: the archive (no scratch database).
    let level = if srv.is_postgres() { "archive" } else { "full" };
    assert_eq!(s["last_verify"]["level"], level, "{s}");
    assert_eq!(s["last_verify"]["passed"], true, "{s}");
    let admin = srv.admin();
    assert!(
        metric(
            &srv,
            &admin,
            "carevault_backup_last_verify_success_timestamp_seconds"
        ) > 1.7e9
    );
    assert_eq!(
        metric(
            &srv,
            &admin,
            "carevault_backup_verifications_total{outcome=\"passed\"}"
        ),
        1.0
    );

    // The same backup with one byte flipped, in a directory of its own: not due for a backup
    // (it is minutes old), due for verification (never verified there).
    srv.stop();
    let files = backups(&dir);
    let damaged_dir = tmp.path().join("damaged");
    std::fs::create_dir(&damaged_dir).unwrap();
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    let damaged = damaged_dir.join(files[0].file_name().unwrap());
    std::fs::write(&damaged, &bytes).unwrap();
    srv.restart(&[("CAREVAULT_BACKUP_DIR", damaged_dir.to_str().unwrap())]);
    wait_showing(&srv, &damaged_dir, "the failed verification", 120, || {
        status(&damaged_dir)["last_verify"]["passed"] == false
    });
    let s = status(&damaged_dir);
    let error = s["last_verify"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("damaged"), "{s}");
    assert_eq!(backups(&damaged_dir).len(), 1, "no backup was due");
    assert_eq!(
        metric(
            &srv,
            &admin,
            "carevault_backup_verifications_total{outcome=\"failed\"}"
        ),
        1.0
    );
    let auditor = srv.user(&admin, "aud.verify", &["auditor"], None);
    wait_for("the verify-failed alert", Duration::from_secs(20), || {
        alert_rules(&auditor.api).contains(&"operational.backup-verify-failed".to_owned())
    });
    let shown = srv
        .command(bin())
        .args(["backup", "status"])
        .env("CAREVAULT_BACKUP_DIR", &damaged_dir)
        .output()
        .unwrap();
    let shown = output_text(&shown);
    assert!(
        shown.contains("(full): FAILED") || shown.contains("(archive): FAILED"),
        "{shown}"
    );
}

#[test]
fn a_scheduled_backup_that_fails_raises_the_backup_failed_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let key = AgeKey::new(tmp.path(), "backup.agekey");
    let dir = tmp.path().join("backups");
    let env = vec![
        ("CAREVAULT_BACKUP_SCHEDULE".to_owned(), "1m".to_owned()),
        (
            "CAREVAULT_BACKUP_DIR".to_owned(),
            dir.to_str().unwrap().to_owned(),
        ),
        ("CAREVAULT_BACKUP_RECIPIENTS".to_owned(), key.recipient()),
    ];
    let srv = TestServer::start_with(bin(), &as_env(&env));
    wait_for("the first backup", Duration::from_secs(120), || {
        status(&dir)["last_success"].is_object()
    });
    let admin = srv.admin();
    let auditor = srv.user(&admin, "aud.backup", &["auditor"], None);
    assert!(!alert_rules(&auditor.api).contains(&"operational.backup-failed".to_owned()));
    // The next backup (a minute later) cannot be written: the backup directory has become a
    // file (running as root, permissions would not stop it).
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    wait_for("the backup-failed alert", Duration::from_secs(150), || {
        alert_rules(&auditor.api).contains(&"operational.backup-failed".to_owned())
    });
    assert!(srv.logs().contains("backup_schedule_failed") || srv.logs().contains("backup_failed"));
    let clin = srv.user(&admin, "dr.failing", &["clinician"], Some("org-a"));
    let created = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Failing", "Ada"));
    assert_eq!(
        created.status,
        201,
        "the server still serves: {}",
        created.text()
    );
    assert!(
        metric(&srv, &admin, "carevault_backup_failures_total") >= 1.0,
        "{}",
        srv.logs()
    );
}
