//! A bulk export that a crash interrupted, made deterministic: the job is recorded running and
//! handed to a runtime that is dropped before it runs a single step (as a killed process
//! would leave it), with a half-written file in its directory. A second `Application` on the
//! same data directory (the restarted node) must begin it again, for the API key that started
//! it, and finish it whole.

use std::sync::Arc;
use std::time::Duration;

use carevault_audit::EventRecord;
use carevault_server::audit::AuditScope;
use carevault_server::config::Config;
use carevault_server::export::{ExportOptions, JobStatus, Level};
use carevault_server::identity::{NewApiKey, Principal};
use carevault_server::records::Caller;
use carevault_server::{SharedClock, SystemClock, environment};
use serde_json::json;

use super::Application;

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_data_dir(&dir.join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config
}

fn scope(app: &Application) -> AuditScope {
    AuditScope::new(
        app.state.inner.audit.clone(),
        EventRecord {
            request_id: uuid::Uuid::new_v4().to_string(),
            ..EventRecord::default()
        },
    )
}

async fn service(app: &Application) -> Principal {
    app.state
        .inner
        .identity
        .api_key_principal("apikey:bulk-client")
        .await
        .unwrap()
        .expect("the key is live")
}

#[test]
fn an_export_a_crash_left_running_begins_again_for_its_api_key_and_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    let clock: SharedClock = Arc::new(SystemClock);
    let main = tokio::runtime::Runtime::new().unwrap();

    // The first life: a service key, 25 patients, and an export that never gets to run.
    let (job, patients) = main.block_on(async {
        environment::init(&config, clock.clone()).await.unwrap();
        let app = Application::build(config.clone(), clock.clone())
            .await
            .unwrap();
        let audit = scope(&app);
        app.state
            .inner
            .identity
            .create_api_key(
                &audit,
                None,
                &NewApiKey {
                    name: "bulk-client".into(),
                    scopes: vec!["system/*.cruds".into()],
                    expires_in_days: Some(1),
                    allowed_cidrs: None,
                    client_cert_sha256: None,
                },
            )
            .await
            .unwrap();
        let key = service(&app).await;
        let mut patients = std::collections::BTreeSet::new();
        for i in 0..25 {
            let audit = scope(&app);
            let made = app
                .state
                .inner
                .records
                .create(
                    Caller::new(&key, &audit),
                    carevault_fhir::ResourceType::PATIENT,
                    json!({"resourceType": "Patient", "name": [{"family": format!("Resumed{i}")}]}),
                )
                .await
                .unwrap();
            audit.finish(201).await.unwrap();
            patients.insert(made.id.to_string());
        }
        // The kick-off runs on a runtime of its own (on a thread of its own: runtimes do not
        // nest), dropped as soon as the job is recorded: the job's task was spawned on it and
        // never polled.
        let exports = app.state.inner.exports.clone();
        let job = std::thread::scope(|s| {
            s.spawn(|| {
                let crashed = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let job = crashed.block_on(async {
                    let audit = scope(&app);
                    let options = ExportOptions::parse(
                        Level::System,
                        &[("_type".into(), "Patient".into())],
                        "/fhir/$export?_type=Patient".into(),
                    )
                    .unwrap();
                    exports
                        .start(Caller::new(&key, &audit), options)
                        .await
                        .unwrap()
                });
                drop(crashed);
                job
            })
            .join()
            .unwrap()
        });
        match exports.status(&key, &job).await.unwrap() {
            JobStatus::InProgress { .. } => {}
            JobStatus::Complete(_) => panic!("the job ran before the crash"),
        }
        // What it had written before the crash: a frame cut short.
        let dir = config.data_dir.join("exports").join(&job);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Patient.ndjson"), b"half a frame").unwrap();
        (job, patients)
    });

    // The second life: the same data directory, started as `run_until_stopped` starts it.
    main.block_on(async {
        let app = Application::build(config.clone(), clock.clone())
            .await
            .unwrap();
        let s = &app.state.inner;
        s.exports.resume(&s.identity).await.unwrap();
        let key = service(&app).await;
        let done = 'poll: {
            for _ in 0..600 {
                match s.exports.status(&key, &job).await.unwrap() {
                    JobStatus::Complete(done) => break 'poll done,
                    JobStatus::InProgress { .. } => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            panic!("the resumed export did not finish in 30 s");
        };
        assert_eq!(done.outputs.len(), 1);
        assert_eq!(done.outputs[0].count, 25);
        let mut reader = s
            .exports
            .open_output(&key, &job, &done.outputs[0].file)
            .await
            .unwrap();
        let mut ndjson = Vec::new();
        while let Some(chunk) = reader.next_chunk().await.unwrap() {
            ndjson.extend(chunk);
        }
        let exported: std::collections::BTreeSet<String> = ndjson
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                v["id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(exported, patients);
    });
}
