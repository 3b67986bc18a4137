use std::sync::Arc;

use carevault_store::Store;

use super::*;
use crate::clock::{Clock, ManualClock};

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: Arc<dyn Store>,
    detection: Detection,
}

async fn fixture(config: DetectionConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let crate::test_support::Services {
        clock,
        store,
        audit,
        ..
    } = crate::test_support::services(dir.path()).await;
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
        target_principal: None,
        second_factor_failed: false,
        key_outside_cidrs: false,
        key_without_its_certificate: false,
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

/// `n` failed logins naming `account`; `target` and `second_factor_failed` as the login
/// reports them.
fn failed_logins(d: &Detection, n: u64, account: &str, target: Option<&str>, totp_wrong: bool) {
    for _ in 0..n {
        let mut fa = facts("anonymous", AuditAction::Login, 401);
        fa.account_digest = Some(account);
        fa.target_principal = target;
        fa.second_factor_failed = totp_wrong;
        d.observe(&fa, None);
    }
}

#[tokio::test]
async fn totp_guessing_needs_the_right_password_and_names_the_account() {
    let config = DetectionConfig::default();
    let f = fixture(config.clone()).await;
    let d = &f.detection;
    let n = config.failed_totp_per_account;
    // Wrong passwords alone are not TOTP guessing.
    failed_logins(d, n, "acct-a", None, false);
    assert_eq!(raised(d, Rule::TotpGuessing), 0);
    failed_logins(d, n, "acct-a", Some("user-a"), true);
    assert_eq!(raised(d, Rule::TotpGuessing), 1);
    // A second account's guessing is its own alert (de-duplicated per account, not per
    // `anonymous`).
    failed_logins(d, n, "acct-b", Some("user-b"), true);
    assert_eq!(raised(d, Rule::TotpGuessing), 2);
    let writer = d.alerts.spawn_writer().unwrap();
    let alerts = wait_for_alerts(&f, 2).await;
    let mut principals: Vec<_> = alerts.iter().map(|a| a.principal.as_str()).collect();
    principals.sort_unstable();
    assert_eq!(principals, ["user-a", "user-b"]);
    writer.abort();
}

#[tokio::test]
async fn anonymous_alerts_from_two_addresses_are_not_merged() {
    let f = fixture(DetectionConfig::default()).await;
    let probe = || {
        f.detection
            .inspect_request("/fhir/Patient", Some("_id=1%27%20OR%201%3D1--"))
    };
    let mut fa = facts("anonymous", AuditAction::SearchType, 401);
    f.detection.observe(&fa, probe());
    f.detection.observe(&fa, probe());
    fa.client_ip = "198.51.100.9";
    f.detection.observe(&fa, probe());
    assert_eq!(raised(&f.detection, Rule::SqlInjection), 2);
}

#[tokio::test]
async fn an_api_key_from_outside_its_cidrs_alerts_under_the_key() {
    let f = fixture(DetectionConfig::default()).await;
    let mut fa = facts("anonymous", AuditAction::SearchType, 401);
    fa.target_principal = Some("apikey:etl");
    d_observe_twice(&f.detection, &fa);
    assert_eq!(
        raised(&f.detection, Rule::KeyOutsideCidrs),
        0,
        "not refused for CIDRs"
    );
    fa.key_outside_cidrs = true;
    d_observe_twice(&f.detection, &fa);
    assert_eq!(raised(&f.detection, Rule::KeyOutsideCidrs), 1);
    let writer = f.detection.alerts.spawn_writer().unwrap();
    let alerts = wait_for_alerts(&f, 1).await;
    assert_eq!(alerts[0].rule, "access.outside-cidrs");
    assert_eq!(alerts[0].principal, "apikey:etl");
    writer.abort();
}

#[tokio::test]
async fn an_api_key_without_its_client_certificate_alerts_under_the_key() {
    let f = fixture(DetectionConfig::default()).await;
    let mut fa = facts("anonymous", AuditAction::SearchType, 401);
    fa.target_principal = Some("apikey:lab-feed");
    fa.key_outside_cidrs = false;
    d_observe_twice(&f.detection, &fa);
    assert_eq!(raised(&f.detection, Rule::KeyWithoutItsCertificate), 0);
    fa.key_without_its_certificate = true;
    d_observe_twice(&f.detection, &fa);
    assert_eq!(raised(&f.detection, Rule::KeyWithoutItsCertificate), 1);
    assert_eq!(raised(&f.detection, Rule::KeyOutsideCidrs), 0);
    let writer = f.detection.alerts.spawn_writer().unwrap();
    let alerts = wait_for_alerts(&f, 1).await;
    assert_eq!(alerts[0].rule, "access.client-certificate");
    assert_eq!(alerts[0].principal, "apikey:lab-feed");
    writer.abort();
}

fn d_observe_twice(d: &Detection, fa: &RequestFacts<'_>) {
    d.observe(fa, None);
    d.observe(fa, None);
}

#[tokio::test]
async fn unusual_hours_alert_only_once_the_baseline_is_learned() {
    let config = DetectionConfig {
        unusual_hours_min_requests: 100,
        unusual_hours_learning_days: 2,
        ..DetectionConfig::default()
    };
    let f = fixture(config).await;
    let d = &f.detection;
    // The fixture's clock starts at 1_800_000_000 s: 08:00 UTC on a day of 2027.
    let start = f.clock.now_secs();
    assert_eq!(start.rem_euclid(86_400), 8 * 3600);
    // Three days of 08:00-11:59 work, 20 requests an hour.
    for _day in 0..3 {
        for _ in 0..4 * 20 {
            d.observe(&facts("dr-night", AuditAction::Read, 200), None);
            f.clock.advance_secs(180);
        }
        f.clock.advance_secs(86_400 - 4 * 3600);
    }
    assert_eq!(raised(d, Rule::UnusualHours), 0, "usual hours");
    // 02:00 UTC.
    f.clock.advance_secs(18 * 3600);
    d.observe(&facts("dr-night", AuditAction::Read, 200), None);
    assert_eq!(raised(d, Rule::UnusualHours), 1);
    // Anonymous callers have no baseline.
    d.observe(&facts("anonymous", AuditAction::Read, 401), None);
    assert_eq!(raised(d, Rule::UnusualHours), 1);

    let off = fixture(DetectionConfig {
        unusual_hours_min_requests: 0,
        ..DetectionConfig::default()
    })
    .await;
    assert!(off.detection.hours.is_empty());
    off.detection
        .observe(&facts("dr-night", AuditAction::Read, 200), None);
    assert!(off.detection.hours.is_empty(), "0 turns the rule off");
}

#[tokio::test]
async fn bulk_access_by_an_api_key_asks_for_its_revocation_when_configured() {
    for (revoke, principal, expected) in [
        (true, "apikey:etl", Some("etl")),
        (true, "user-7", None),
        (false, "apikey:etl", None),
    ] {
        let config = DetectionConfig {
            revoke_key_on_bulk: revoke,
            distinct_patients_per_window: 3,
            ..DetectionConfig::default()
        };
        let f = fixture(config).await;
        for i in 0..3 {
            let p = vec![format!("Patient/{i}")];
            let mut fa = facts(principal, AuditAction::Read, 200);
            fa.patients = &p;
            f.detection.observe(&fa, None);
        }
        assert_eq!(raised(&f.detection, Rule::BulkPatients), 1);
        let mut keys = f.detection.take_revocations().unwrap();
        assert_eq!(
            keys.try_recv().ok().as_ref().map(crate::ApiKeyName::as_str),
            expected,
            "{revoke} {principal}"
        );
        assert!(f.detection.take_revocations().is_none(), "taken once");
    }
}

#[tokio::test]
async fn a_posture_run_whose_audit_check_failed_raises_an_integrity_alert() {
    let f = fixture(DetectionConfig::default()).await;
    crate::posture::periodic::raise_alert(&f.detection.alerts, &["files.modes"]);
    assert_eq!(raised(&f.detection, Rule::PostureFailed), 1);
    assert_eq!(raised(&f.detection, Rule::IntegrityFailure), 0);
    crate::posture::periodic::raise_alert(&f.detection.alerts, &["audit.chain"]);
    assert_eq!(raised(&f.detection, Rule::IntegrityFailure), 1);
}
