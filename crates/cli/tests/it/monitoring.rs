//! Monitoring, end to end: a key with the `metrics` scope reads `/metrics`; the live scrape
//! passes `promtool check metrics`; the shipped alerting rules pass `promtool check rules`; every
//! metric the rules and the Grafana dashboard name is one the server exports; no label holds a
//! value from a request; and a real Prometheus (Debian package `prometheus`) scrapes the server
//! over HTTPS with the key and loads the rules.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carevault_testkit::{Account, TestServer, wait_for};
use serde_json::{Value, json};

use crate::server;

/// Sent in paths, queries and usernames; must never come back as a label.
const CANARY: &str = "CANARYLABEL4T7W";

const RULES: &str = "deploy/prometheus/carevault-rules.yml";
const DASHBOARD: &str = "deploy/grafana/carevault.json";

/// Families only the SQLite backend has.
const SQLITE_ONLY: &[&str] = &[
    "carevault_store_wal_size_bytes",
    "carevault_store_wal_checkpoint_age_seconds",
    "carevault_store_commit_batch_size",
];

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// A tool of the `prometheus` package, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: apt-get install prometheus (.ci/run installs it)")
        })
}

#[test]
fn prometheus_scrapes_carevault_with_a_metrics_key() {
    let srv = server();
    let admin = srv.admin();
    let created = admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "prometheus", "scopes": ["metrics"], "expires_in_days": 90}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json()["key"].as_str().unwrap().to_owned();
    traffic_with_canaries(&srv, &admin);

    let scrape = srv.api().with_token(&key).get("/metrics");
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    let text = scrape.text();
    assert!(
        !text.contains(CANARY) && !text.to_lowercase().contains(&CANARY.to_lowercase()),
        "a request's value reached a label:\n{text}"
    );
    the_scrape_has_every_family(&srv, &text);
    promtool_accepts_the_scrape_and_the_rules(&text);
    the_rules_and_dashboard_name_exported_metrics(&srv, &text);
    a_real_prometheus_scrapes_with_the_key(&srv, &key);
}

/// Reads, searches, a miss, an unknown path and failed logins, each carrying the canary.
/// The server's own posture run, end to end: a TLS key left readable by others fails a check,
/// and the run (here a second after start, `posture.first_run_secs`) counts the failure in
/// `/metrics` and raises the `operational.posture-failed` alert.
#[test]
fn the_servers_own_posture_run_reports_a_failed_check_in_metrics_and_as_an_alert() {
    use std::os::unix::fs::PermissionsExt;
    let mut srv = server();
    let admin = srv.admin();
    let created = admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "prometheus", "scopes": ["metrics"], "expires_in_days": 90}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let metrics = srv
        .api()
        .with_token(created.json()["key"].as_str().unwrap());
    // The default first run is a minute away: nothing yet.
    assert!(
        !metrics
            .get("/metrics")
            .text()
            .contains("carevault_posture_checks")
    );
    srv.kill();
    let tls_key = srv.data_dir.join("tls/key.pem");
    std::fs::set_permissions(&tls_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    srv.restart(&[("CAREVAULT_POSTURE_FIRST_RUN_SECS", "1")]);
    let mut text = String::new();
    wait_for("the first posture run", Duration::from_secs(60), || {
        text = metrics.get("/metrics").text();
        text.contains("carevault_posture_checks{status=\"fail\"}")
    });
    assert!(
        sample(&text, "carevault_posture_checks{status=\"fail\"}") >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "carevault_posture_last_run_timestamp_seconds") > 0.0);
    wait_for("the posture alert", Duration::from_secs(30), || {
        text = metrics.get("/metrics").text();
        text.lines().any(|l| {
            l.starts_with("carevault_alerts_total{rule=\"operational.posture-failed\"")
                && !l.ends_with(" 0")
        })
    });
}

fn traffic_with_canaries(srv: &TestServer, admin: &Account) {
    let clin = srv.user(admin, "dr.metrics", &["clinician"], Some("org-a"));
    let created = clin
        .api
        .post_fhir("/fhir/Patient", &crate::patient(CANARY, "Given"));
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        clin.api.get(&format!("/fhir/Patient?name={CANARY}")).status,
        200
    );
    assert_eq!(clin.api.get(&format!("/fhir/Patient/{CANARY}")).status, 404);
    assert_eq!(
        srv.api().get(&format!("/{CANARY}/x?q={CANARY}")).status,
        404
    );
    for username in [CANARY.to_lowercase(), "dr.metrics".to_owned()] {
        let refused = srv.api().post_json(
            "/auth/login",
            &json!({"username": username, "password": CANARY, "totp_code": "000000"}),
        );
        assert_eq!(refused.status, 401);
    }
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

fn the_scrape_has_every_family(srv: &TestServer, text: &str) {
    let read = "route=\"/fhir/{rtype}/{id}\",method=\"GET\",status=\"404\"";
    assert!(
        sample(
            text,
            &format!("carevault_request_duration_seconds_count{{{read}}}")
        ) >= 1.0
    );
    assert!(sample(text, "carevault_logins_total{outcome=\"failure\"}") >= 2.0);
    assert!(sample(text, "carevault_sessions_active ") >= 2.0);
    assert!(sample(text, "carevault_audit_events_written_total ") >= 5.0);
    assert!(sample(text, "process_resident_memory_bytes ") > 1e6);
    assert!(sample(text, "process_open_fds ") > 3.0);
    assert!(sample(text, "carevault_store_database_size_bytes{") > 0.0);
    assert!(sample(text, "carevault_store_commit_duration_seconds_count{") >= 1.0);
    assert_eq!(sample(text, "carevault_kek_rewrap_progress_ratio "), 1.0);
    assert!(sample(text, "carevault_kek_active_age_seconds ") >= 0.0);
    for family in [
        "process_cpu_seconds_total ",
        "process_max_fds ",
        "carevault_accounts_locked ",
        "carevault_store_pool_connections{",
    ] {
        sample(text, family);
    }
    if !srv.is_postgres() {
        assert!(sample(text, "carevault_store_commit_batch_size_count{") >= 1.0);
        sample(text, "carevault_store_wal_size_bytes{");
    }
}

fn promtool_accepts_the_scrape_and_the_rules(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(repo_file(RULES))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metric names (`carevault_*`, `process_*`) a text mentions, without histogram suffixes.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    for start in ["carevault_", "process_"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(start) {
            let begin = from + i;
            let end = bytes[begin..]
                .iter()
                .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_'))
                .map_or(text.len(), |n| begin + n);
            let preceded = begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric());
            if !preceded {
                let name = &text[begin..end];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                names.insert(base.to_owned());
            }
            from = end;
        }
    }
    names
}

fn the_rules_and_dashboard_name_exported_metrics(srv: &TestServer, text: &str) {
    let exported = metric_names(text);
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(DASHBOARD)).unwrap()).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
    for file in [RULES, DASHBOARD] {
        let named = metric_names(&std::fs::read_to_string(repo_file(file)).unwrap());
        assert!(named.len() >= 10, "{file} names {named:?}");
        for name in named {
            if srv.is_postgres() && SQLITE_ONLY.contains(&name.as_str()) {
                continue;
            }
            assert!(
                exported.contains(&name),
                "{file} names {name}, which /metrics does not export"
            );
        }
    }
}

/// Stops the Prometheus this test started.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_real_prometheus_scrapes_with_the_key(srv: &TestServer, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("metrics.key");
    std::fs::write(&key_file, key).unwrap();
    let target = srv
        .base
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [\"{rules}\"]\n\
         scrape_configs:\n  - job_name: carevault\n    scheme: https\n\
         \x20   authorization:\n      type: Bearer\n      credentials_file: \"{key}\"\n\
         \x20   tls_config:\n      ca_file: \"{ca}\"\n\
         \x20   static_configs:\n      - targets: [\"{target}\"]\n",
        rules = repo_file(RULES).display(),
        key = key_file.display(),
        ca = srv.ca_pem().display(),
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let get = |path: &str| -> Value {
        agent
            .get(&format!("http://127.0.0.1:{port}{path}"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|body| serde_json::from_str(&body).ok())
            .unwrap_or(Value::Null)
    };
    let query = |q: &str| get(&format!("/api/v1/query?query={q}"));
    let up = || query("up%7Bjob%3D%22carevault%22%7D")["data"]["result"][0]["value"][1] == "1";
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            "Prometheus to scrape CareVault",
            Duration::from_secs(90),
            up,
        );
    }));
    if waited.is_err() {
        panic!(
            "the target never came up: {}\n{}",
            get("/api/v1/targets"),
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
    }
    let series = query("carevault_requests_total%7Bjob%3D%22carevault%22%7D");
    assert!(
        !series["data"]["result"].as_array().unwrap().is_empty(),
        "{series}"
    );
    let rules = get("/api/v1/rules");
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    assert!(
        groups.len() >= 5
            && groups
                .iter()
                .flat_map(|g| g["rules"].as_array().unwrap())
                .all(|r| r["health"] != "err"),
        "{rules}"
    );
}
