//! Scheduled backups: `serve` takes them itself in the background (requests keep being
//! answered), each verifies; on PostgreSQL only one of several nodes takes each period's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use carevault_testkit::{TestDatabase, TestServer, output_text, wait_for};

use crate::backup::AgeKey;
use crate::{bin, patient};

pub(crate) fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with("carevault-") && name.ends_with(".age")
    });
    out.sort();
    out
}

fn scheduled(tmp: &Path, key: &AgeKey) -> Vec<(String, String)> {
    vec![
        ("CAREVAULT_BACKUP_SCHEDULE".into(), "1h".into()),
        (
            "CAREVAULT_BACKUP_DIR".into(),
            tmp.join("backups").to_str().unwrap().into(),
        ),
        ("CAREVAULT_BACKUP_RECIPIENTS".into(), key.recipient()),
        ("CAREVAULT_BACKUP_KEEP".into(), "3 last".into()),
    ]
}

#[test]
fn serve_takes_a_scheduled_backup_that_verifies_while_it_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let key = AgeKey::new(tmp.path(), "backup.agekey");
    let env = scheduled(tmp.path(), &key);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let srv = TestServer::start_with(bin(), &env);
    let dir = tmp.path().join("backups");
    // Requests are answered while the first backup is taken.
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.sched", &["clinician"], Some("org-a"));
    let created = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Sched", "Ada"));
    assert_eq!(created.status, 201, "{}", created.text());
    // The status file is written last (after the file's rename, the log line and the metrics).
    let status_file = dir.join(".carevault-backup-status.json");
    wait_for(
        "the first scheduled backup",
        Duration::from_secs(120),
        || std::fs::read_to_string(&status_file).is_ok_and(|s| s.contains("\"last_success\": {")),
    );
    let files = backups(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "backup directory open to others: {mode:o}");
    // The log is read by another thread: wait for the line rather than race it.
    wait_for(
        "the backup_created log line",
        Duration::from_secs(30),
        || srv.logs().contains("backup_created"),
    );

    let scratch = srv.database.as_ref().map(|_| TestDatabase::create());
    let mut args = vec![
        "backup".to_owned(),
        "verify".to_owned(),
        files[0].to_str().unwrap().to_owned(),
        "--identity".to_owned(),
        key.file.to_str().unwrap().to_owned(),
    ];
    if let Some(db) = &scratch {
        args.extend(["--scratch-database".to_owned(), db.url.clone()]);
    }
    let verified = srv.command(bin()).args(&args).output().unwrap();
    assert!(verified.status.success(), "{}", output_text(&verified));

    // `backup status` and /metrics tell the same story.
    let status = srv
        .command(bin())
        .args(["backup", "status", "--output", "json"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", output_text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let file_name = files[0].file_name().unwrap().to_str().unwrap();
    assert_eq!(status["last_success"]["file"], file_name, "{status}");
    assert_eq!(
        status["last_success"]["size"].as_u64().unwrap(),
        std::fs::metadata(&files[0]).unwrap().len()
    );
    assert_eq!(status["backups"], 1);
    assert_eq!(status["failures"], 0);
    assert_eq!(status["schedule"], "1h");
    let key_reply = admin.api.post_json(
        "/admin/api-keys",
        &serde_json::json!({"name": "prom", "scopes": ["metrics"], "expires_in_days": 1}),
    );
    assert_eq!(key_reply.status, 201, "{}", key_reply.text());
    let token = key_reply.json()["key"].as_str().unwrap().to_owned();
    let metrics = srv.api().with_token(&token).get("/metrics").text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("carevault_backup_last_success_timestamp_seconds") > 1.7e9);
    assert_eq!(
        value("carevault_backup_size_bytes") as u64,
        std::fs::metadata(&files[0]).unwrap().len()
    );
    assert_eq!(value("carevault_backup_schedule_seconds"), 3600.0);
    assert_eq!(value("carevault_backup_failures_total"), 0.0);

    // Nothing left half-written beside it.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
}

#[test]
fn a_malformed_backup_key_stops_serve_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let key = AgeKey::new(tmp.path(), "backup.agekey");
    let mut env = scheduled(tmp.path(), &key);
    env.retain(|(k, _)| k != "CAREVAULT_BACKUP_RECIPIENTS");
    // Looks like a recipient (age1...) but is not one: refused when serve starts.
    env.push((
        "CAREVAULT_BACKUP_RECIPIENTS".into(),
        "age1notarecipient".into(),
    ));
    let data = tmp.path().join("data");
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("CAREVAULT_ALLOW_PLAIN_HTTP", "true")
        .env_remove("CAREVAULT_TEST_BACKEND")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("backup.recipients"), "{text}");
}

#[test]
fn on_postgresql_one_node_takes_the_periods_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let key = AgeKey::new(tmp.path(), "backup.agekey");
    let env = scheduled(tmp.path(), &key);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let first = TestServer::start_with(bin(), &env);
    if !first.is_postgres() {
        return; // One node on SQLite: nothing to share.
    }
    let dir = tmp.path().join("backups");
    wait_for("the first node's backup", Duration::from_secs(120), || {
        !backups(&dir).is_empty()
    });
    // The second node (same environment, same backup directory) finds the period claimed.
    let second = first.start_node(bin(), "node-2");
    wait_for(
        "the second node's schedule",
        Duration::from_secs(60),
        || second.logs().contains("backup_schedule_started"),
    );
    let files = backups(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        !second.logs().contains("backup_created"),
        "{}",
        second.logs()
    );
    let claims = first.sql("SELECT COUNT(*) FROM meta WHERE key = 'backup_claimed_us'");
    assert_eq!(claims.trim(), "1");
}
