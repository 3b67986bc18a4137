use std::sync::Arc;

use carevault_crypto::FileKeyProvider;
use carevault_store::{SqliteStore, Store};

use super::*;
use crate::clock::ManualClock;
use crate::keyring::Keyring;

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: Arc<dyn Store>,
    detection: Detection,
}

async fn fixture(config: DetectionConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_secs(1_800_000_000));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
    let provider = FileKeyProvider::create(&dir.path().join("keys")).unwrap();
    let keyring = Arc::new(Keyring::new(
        "env-test".into(),
        Box::new(provider),
        store.clone(),
        clock.clone(),
    ));
    let audit = Arc::new(
        Audit::open(store.clone(), &keyring, "node-test", clock.clone())
            .await
            .unwrap(),
    );
    let detection = Detection::new(config, audit, clock.clone());
    Fixture {
        _dir: dir,
        clock,
        store,
        detection,
    }
}

fn facts<'a>(principal: &'a str, action: AuditAction, status: u16) -> RequestFacts<'a> {
    RequestFacts {
        principal,
        client_ip: "192.0.2.7",
        action,
        status,
        patients: &[],
        account_digest: None,
        integrity_failure: false,
    }
}

fn raised(d: &Detection, rule: Rule) -> u64 {
    let text = d.alerts.metrics_text();
    let prefix = format!(
        "carevault_alerts_total{{rule=\"{}\",severity=\"{}\"}} ",
        rule.id(),
        rule.severity().as_str()
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_injection_probe_in_the_query_raises_one_alert_with_a_digest_not_the_value() {
    let f = fixture(DetectionConfig::default()).await;
    let d = &f.detection;
    assert!(
        d.inspect_request("/fhir/Patient", Some("name=smith&_count=10"))
            .is_none()
    );
    let canary = "CANARY7731";
    let query = format!("name={canary}%27%20OR%20%271%27%3D%271");
    let finding = d.inspect_request("/fhir/Patient", Some(&query)).unwrap();
    assert_eq!(finding.rule, Rule::SqlInjection);
    assert!(!finding.digest.contains(canary));
    d.observe(
        &facts("user-1", AuditAction::SearchType, 200),
        Some(finding),
    );
    assert_eq!(raised(d, Rule::SqlInjection), 1);

    let writer = d.alerts.spawn_writer().unwrap();
    let alerts = wait_for_alerts(&f, 1).await;
    assert_eq!(alerts[0].rule, "injection.sql");
    assert_eq!(alerts[0].principal, "user-1");
    assert_eq!(alerts[0].source_ip, "192.0.2.7");
    let stored = format!("{alerts:?}");
    assert!(!stored.contains(canary), "{stored}");
    writer.abort();
}

async fn wait_for_alerts(f: &Fixture, n: usize) -> Vec<Alert> {
    for _ in 0..200 {
        let alerts = f.detection.alerts.list(&*f.store, 100).await.unwrap();
        if alerts.len() >= n {
            return alerts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no {n} alerts written");
}

#[tokio::test]
async fn a_flood_of_probes_raises_a_bounded_number_of_alerts() {
    let f = fixture(DetectionConfig::default()).await;
    let d = &f.detection;
    for i in 0..10_000 {
        let q = format!("_id=1%27%20UNION%20SELECT%20{i}--");
        let finding = d.inspect_request("/fhir/Patient", Some(&q));
        assert!(finding.is_some());
        d.observe(&facts("anonymous", AuditAction::SearchType, 401), finding);
    }
    assert_eq!(raised(d, Rule::SqlInjection), 1);
    assert!(
        d.alerts
            .metrics_text()
            .contains("carevault_alerts_suppressed_total{rule=\"injection.sql\"} 9999\n")
    );
    // After the de-duplication window, the same principal alerts again.
    f.clock
        .advance_secs(i64::try_from(DetectionConfig::default().dedup_secs).unwrap());
    let finding = d.inspect_request("/x/../../etc/passwd", None);
    assert_eq!(finding.as_ref().unwrap().rule, Rule::PathTraversal);
    let finding = d.inspect_request("/fhir/Patient", Some("_id=1;DROP%20TABLE%20x"));
    d.observe(&facts("anonymous", AuditAction::SearchType, 401), finding);
    assert_eq!(raised(d, Rule::SqlInjection), 2);
}

#[tokio::test]
async fn credential_stuffing_and_failed_logins_for_one_account() {
    let config = DetectionConfig::default();
    let f = fixture(config.clone()).await;
    let d = &f.detection;
    for i in 0..config.stuffing_accounts_per_ip {
        let account = format!("digest-{i}");
        let mut fa = facts("anonymous", AuditAction::Login, 401);
        fa.account_digest = Some(&account);
        d.observe(&fa, None);
    }
    assert_eq!(raised(d, Rule::CredentialStuffing), 1);
    assert_eq!(raised(d, Rule::FailedLogins), 0);
    for _ in 0..config.failed_logins_per_account {
        let mut fa = facts("anonymous", AuditAction::Login, 401);
        fa.account_digest = Some("one-account");
        d.observe(&fa, None);
    }
    assert_eq!(raised(d, Rule::FailedLogins), 1);
}

#[tokio::test]
async fn bulk_patients_search_storm_enumeration_break_glass_and_integrity() {
    let config = DetectionConfig::default();
    let f = fixture(config.clone()).await;
    let d = &f.detection;
    for i in 0..config.distinct_patients_per_window - 1 {
        let p = vec![format!("Patient/{i}")];
        let mut fa = facts("clin", AuditAction::Read, 200);
        fa.patients = &p;
        d.observe(&fa, None);
        // Reading the same patient again counts once.
        d.observe(&fa, None);
    }
    assert_eq!(raised(d, Rule::BulkPatients), 0);
    let p = vec!["Patient/last".to_owned()];
    let mut fa = facts("clin", AuditAction::Read, 200);
    fa.patients = &p;
    d.observe(&fa, None);
    assert_eq!(raised(d, Rule::BulkPatients), 1);

    for _ in 0..config.searches_per_window {
        d.observe(&facts("svc", AuditAction::Everything, 200), None);
    }
    assert_eq!(raised(d, Rule::SearchStorm), 1);

    for _ in 0..config.not_found_per_window {
        d.observe(&facts("enum", AuditAction::Read, 404), None);
    }
    assert_eq!(raised(d, Rule::Enumeration), 1);

    d.observe(&facts("doc", AuditAction::BreakGlass, 403), None);
    assert_eq!(raised(d, Rule::BreakGlass), 0, "a refused break-glass");
    d.observe(&facts("doc", AuditAction::BreakGlass, 200), None);
    assert_eq!(raised(d, Rule::BreakGlass), 1);
    d.observe(&facts("admin", AuditAction::KekDestroy, 200), None);
    assert_eq!(raised(d, Rule::KeyDestroyed), 1);
    let mut fa = facts("clin", AuditAction::Read, 500);
    fa.integrity_failure = true;
    d.observe(&fa, None);
    assert_eq!(raised(d, Rule::IntegrityFailure), 1);
}

#[tokio::test]
async fn detection_off_inspects_nothing() {
    let f = fixture(DetectionConfig {
        enabled: false,
        ..DetectionConfig::default()
    })
    .await;
    assert!(
        f.detection
            .inspect_request("/fhir/Patient", Some("name=%27%20OR%201%3D1--"))
            .is_none()
    );
    assert!(f.detection.inspect_body(b"<script>").is_none());
}

#[tokio::test]
async fn the_queue_is_bounded_and_drops_are_counted() {
    let f = fixture(DetectionConfig::default()).await;
    let alerts = &f.detection.alerts;
    // No writer: the queue fills, then further alerts are dropped.
    for i in 0..QUEUE_CAPACITY + 10 {
        alerts.raise(AlertInput::new(
            Rule::BackupFailed,
            &format!("p{i}"),
            "local",
            1,
        ));
    }
    assert!(
        alerts
            .metrics_text()
            .contains("carevault_alerts_dropped_total 10\n")
    );
}
