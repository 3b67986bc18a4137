use super::*;

#[test]
fn every_check_has_a_row_in_docs_posture() {
    let doc = include_str!("../../../../docs/posture.md");
    for check in CHECKS {
        let row = format!("| `{}` |", check.id);
        assert!(
            doc.contains(&row),
            "docs/posture.md has no row for `{}`",
            check.id
        );
        assert!(
            check.hipaa.starts_with("164.308(") || check.hipaa.starts_with("164.312("),
            "{}: {}",
            check.id,
            check.hipaa
        );
    }
    let ids: std::collections::BTreeSet<&str> = CHECKS.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), CHECKS.len(), "check ids are unique");
}

#[test]
fn broad_permits_are_found_and_constrained_ones_are_not() {
    assert!(data::policy_permits_broadly(
        "permit(principal, action, resource);"
    ));
    assert!(data::policy_permits_broadly(
        r#"permit(principal, action == Action::"read", resource);"#
    ));
    assert!(!data::policy_permits_broadly(
        "permit(principal, action, resource) when { principal.organization == \"org-a\" };"
    ));
    assert!(!data::policy_permits_broadly(
        "forbid(principal, action, resource);"
    ));
}

#[test]
fn a_report_sorts_by_catalogue_and_counts() {
    let r = Report::new(
        "development",
        0,
        vec![
            AUDIT_CHAIN.fail("x", "y"),
            CONFIG_VALID.pass("ok"),
            TLS_KEY.warn("w", "z"),
        ],
    );
    assert_eq!(r.findings[0].id, "config.valid");
    assert_eq!(r.count(Status::Fail), 1);
    assert!(r.failed());
    let sarif = report::sarif(&r);
    assert_eq!(sarif["runs"][0]["results"][2]["level"], "error");
    assert_eq!(sarif["runs"][0]["results"][0]["kind"], "pass");
}

#[test]
fn loopback_database_hosts_are_recognized() {
    assert!(data::host_is_loopback(
        "postgres://postgres@127.0.0.1:5432/test"
    ));
    assert!(data::host_is_loopback(
        "postgres://u@localhost/db?sslmode=disable"
    ));
    assert!(data::host_is_loopback("postgres://u@[::1]:5432/db"));
    assert!(!data::host_is_loopback(
        "postgres://u@db.example.org:5432/db"
    ));
    assert!(!data::host_is_loopback("postgres://u@10.0.0.5/db"));
}

// Each check's deliberately broken input, where the check is a function of facts: a unit
// fixture per check, and the expected verdict. The checks that need a real deployment (a data
// directory, an environment that opens, a server) fail in crates/cli/tests/it/doctor.rs.

use std::path::Path;

use carevault_store::{ApiKeyRow, PolicyRow, PrincipalRow};

use crate::certificate::CertificateInfo;
use crate::config::Tier;
use crate::keyring::{DataRotationStatus, KekVersionStatus, KeyStatus};
use crate::memory::LockMode;
use local::MemoryView;
use process::ServerProcess;

const DAY: i64 = 86_400;
/// 2026-12-01T00:00:00Z.
const NOW: i64 = 1_795_996_800;

/// The checks whose broken deployments are in crates/cli/tests/it/doctor.rs (each named there).
const FAILED_BY_INTEGRATION_TESTS: &[&str] = &[
    "config.valid",
    "environment.open",
    "files.data_dir",
    "files.keys",
    "files.tls_key",
    "keys.protection",
    "accounts.inactive",
    "audit.chain",
    "server.reachable",
];

fn kek(
    version: u32,
    state: &'static str,
    created_days_ago: i64,
    data_keys: u64,
) -> KekVersionStatus {
    KekVersionStatus {
        version,
        state,
        created_at: crate::clock::fhir_instant((NOW - created_days_ago * DAY) * 1_000_000),
        destroyed_at: None,
        data_keys,
    }
}

fn keyring(active: u32, versions: Vec<KekVersionStatus>, rewrap_remaining: u64) -> KeyStatus {
    KeyStatus {
        provider: "file",
        active_version: active,
        min_decrypt_version: 1,
        versions,
        rewrap_remaining,
        data_keys_total: 3,
        shredded_compartments: 0,
        data_rotation: DataRotationStatus::default(),
    }
}

fn principal(name: &str, role: &str, disabled: bool) -> PrincipalRow {
    PrincipalRow {
        id: format!("id-{name}"),
        username: name.to_owned(),
        roles: vec![role.to_owned()],
        organization: None,
        disabled,
        locked: false,
        failed_logins: 0,
        created_at: NOW - DAY,
    }
}

fn api_key(name: &str, service: bool, cidrs: &[&str], lifetime_days: i64) -> ApiKeyRow {
    ApiKeyRow {
        name: name.to_owned(),
        key_hash: String::new(),
        owner_id: (!service).then(|| "id-alice".to_owned()),
        scopes: vec!["Patient.r".to_owned()],
        allowed_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
        expires_at: NOW - DAY + lifetime_days * DAY,
        revoked: false,
        created_at: NOW - DAY,
        client_cert_sha256: None,
    }
}

#[test]
fn a_service_key_bound_to_a_client_certificate_counts_as_fenced() {
    let mut bound = api_key("lab-feed", true, &[], 30);
    bound.client_cert_sha256 = Some("AB:CD".to_owned());
    let findings = data::api_key_findings(&[bound.clone()], NOW);
    let cidrs = findings.iter().find(|f| f.id == "api_keys.cidrs").unwrap();
    assert_eq!(cidrs.status, Status::Pass, "{cidrs:?}");
    bound.client_cert_sha256 = None;
    let findings = data::api_key_findings(&[bound], NOW);
    let cidrs = findings.iter().find(|f| f.id == "api_keys.cidrs").unwrap();
    assert_eq!(cidrs.status, Status::Warn, "{cidrs:?}");
}

fn policy(name: &str, text: &str) -> PolicyRow {
    PolicyRow {
        name: name.to_owned(),
        text: text.to_owned(),
        updated_at: NOW,
    }
}

fn certificate(
    not_before_days: i64,
    not_after_days: i64,
    key: &str,
    key_ok: bool,
) -> CertificateInfo {
    CertificateInfo {
        fingerprint: String::new(),
        not_before_secs: NOW + not_before_days * DAY,
        not_after_secs: NOW + not_after_days * DAY,
        generated: false,
        key: key.to_owned(),
        key_ok,
    }
}

fn running_server(locked_kib: u64, core_limit: Option<u64>) -> MemoryView {
    MemoryView::Server(ServerProcess {
        pid: 4242,
        locked_kib,
        core_limit,
    })
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A file in `dir` last modified `hours_ago`.
fn file_aged(dir: &Path, name: &str, hours_ago: i64) {
    let path = dir.join(name);
    std::fs::write(&path, b"backup").unwrap();
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(NOW - hours_ago * 3600).unwrap());
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// Every broken fixture, with the verdict it must get.
fn broken_fixtures(tmp: &Path) -> Vec<(Finding, Status)> {
    let mut fixtures = local_fixtures(tmp);
    fixtures.extend(data_fixtures(tmp));
    fixtures.extend(certificate_fixtures());
    fixtures.extend(kek_fixtures());
    fixtures
}

fn local_fixtures(tmp: &Path) -> Vec<(Finding, Status)> {
    let config_file = tmp.join("carevault.toml");
    std::fs::write(&config_file, "").unwrap();
    set_mode(&config_file, 0o666);
    let localhost: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    vec![
        (local::config_file_mode(Some(&config_file)), Status::Fail),
        (
            local::root_finding(Tier::Production, Some(0), 0),
            Status::Fail,
        ),
        (
            local::root_finding(Tier::Development, Some(0), 0),
            Status::Warn,
        ),
        (local::root_finding(Tier::Production, None, 0), Status::Fail),
        // The running server has no memory locked, whatever this process could do.
        (
            local::memory_finding(
                Tier::Production,
                LockMode::Required,
                &running_server(0, Some(0)),
                0,
            ),
            Status::Fail,
        ),
        (
            local::memory_finding(
                Tier::Development,
                LockMode::Off,
                &running_server(0, Some(0)),
                0,
            ),
            Status::Warn,
        ),
        // Locked, but a core of the non-dumpable server may still be written.
        (
            local::memory_finding(
                Tier::Production,
                LockMode::Auto,
                &running_server(900, None),
                2,
            ),
            Status::Warn,
        ),
        (
            local::memory_finding(
                Tier::Production,
                LockMode::Auto,
                &MemoryView::NotRunning {
                    lock_possible: Err("RLIMIT_MEMLOCK is 65536 bytes".into()),
                },
                0,
            ),
            Status::Fail,
        ),
        (
            local::plain_http_finding(Tier::Production, true, localhost),
            Status::Fail,
        ),
        (
            local::plain_http_finding(Tier::Development, true, localhost),
            Status::Warn,
        ),
    ]
}

fn data_fixtures(tmp: &Path) -> Vec<(Finding, Status)> {
    let empty_backups = tmp.join("no-backups");
    std::fs::create_dir(&empty_backups).unwrap();
    let old_backups = tmp.join("old-backups");
    std::fs::create_dir(&old_backups).unwrap();
    file_aged(&old_backups, "b1.cvb", 30);

    let six_admins: Vec<PrincipalRow> = (0..6)
        .map(|i| principal(&format!("admin{i}"), "admin", false))
        .collect();
    let mut fixtures = vec![
        (data::backup(None, NOW), Status::Warn),
        (data::backup(Some(&empty_backups), NOW), Status::Fail),
        (data::backup(Some(&old_backups), NOW), Status::Warn),
        (
            data::admins_finding(&[
                principal("admin", "admin", true),
                principal("carol", "clinician", false),
            ]),
            Status::Fail,
        ),
        (
            data::admins_finding(&[principal("admin", "admin", false)]),
            Status::Warn,
        ),
        (data::admins_finding(&six_admins), Status::Warn),
        (
            data::policies_finding(&[policy(
                "typo",
                "permit (principal, action, resource) when { resource.colour };",
            )]),
            Status::Fail,
        ),
        (
            data::policies_finding(&[policy("everyone", "permit (principal, action, resource);")]),
            Status::Fail,
        ),
        (
            data::checkpoint_finding(
                "node-a",
                Some(5),
                Some((NOW - 7200) * 1_000_000),
                3600,
                NOW * 1_000_000,
            ),
            Status::Fail,
        ),
        (
            data::checkpoint_finding("node-a", Some(5), None, 3600, NOW * 1_000_000),
            Status::Fail,
        ),
        (
            data::database_tls_finding(
                "postgres://cv@db.example.org/cv?sslmode=require",
                Tier::Production,
            ),
            Status::Fail,
        ),
        (
            data::database_tls_finding(
                "postgres://cv@db.example.org/cv?sslmode=require",
                Tier::Staging,
            ),
            Status::Warn,
        ),
        (
            data::database_tls_finding("postgres://cv@db.example.org/cv", Tier::Development),
            Status::Fail,
        ),
        (
            data::database_tls_finding(
                "postgres://cv@10.0.0.5/cv?sslmode=prefer",
                Tier::Development,
            ),
            Status::Fail,
        ),
        (data::role_finding(true, false, false), Status::Warn),
        (data::role_finding(false, true, false), Status::Warn),
        (data::role_finding(false, false, true), Status::Warn),
    ];
    let expiry_and_cidrs = data::api_key_findings(
        &[
            api_key("forever", false, &["10.0.0.0/8"], 3650),
            api_key("open-service", true, &[], 30),
        ],
        NOW,
    );
    fixtures.extend(expiry_and_cidrs.into_iter().map(|f| (f, Status::Warn)));
    fixtures
}

fn certificate_fixtures() -> Vec<(Finding, Status)> {
    let mut fixtures = Vec::new();
    let path = Path::new("/etc/carevault/cert.pem");
    for (facts, validity, key) in [
        (
            certificate(-400, -35, "ECDSA P-256", true),
            Status::Fail,
            Status::Pass,
        ),
        (
            certificate(2, 90, "ECDSA P-256", true),
            Status::Fail,
            Status::Pass,
        ),
        (
            certificate(-300, 20, "ECDSA P-256", true),
            Status::Warn,
            Status::Pass,
        ),
        (
            certificate(-10, 800, "ECDSA P-256", true),
            Status::Warn,
            Status::Pass,
        ),
        (
            certificate(-10, 300, "RSA 1024", false),
            Status::Pass,
            Status::Fail,
        ),
        (
            certificate(-10, 300, "ECDSA on curve 1.3.132.0.10", false),
            Status::Pass,
            Status::Fail,
        ),
    ] {
        let [v, k] = local::certificate_findings(path, &facts, NOW)
            .try_into()
            .unwrap();
        fixtures.push((v, validity));
        fixtures.push((k, key));
    }
    fixtures
}

fn kek_fixtures() -> Vec<(Finding, Status)> {
    let mut fixtures = Vec::new();
    let kek_findings = |status: &KeyStatus| data::kek_findings(status, 365, NOW);
    for (status, age, versions) in [
        // The active KEK is past the rotation period.
        (
            keyring(1, vec![kek(1, "active", 400, 3)], 0),
            Status::Warn,
            Status::Pass,
        ),
        // The active version has no record.
        (
            keyring(2, vec![kek(1, "decrypt-only", 10, 3)], 3),
            Status::Fail,
            Status::Pass,
        ),
        // A version's key is gone from the provider; a destruction failed.
        (
            keyring(2, vec![kek(1, "missing", 90, 3), kek(2, "active", 1, 0)], 3),
            Status::Pass,
            Status::Fail,
        ),
        (
            keyring(
                2,
                vec![kek(1, "destroy-failed", 90, 0), kek(2, "active", 1, 3)],
                0,
            ),
            Status::Pass,
            Status::Fail,
        ),
        // Below the minimum decryption version but not destroyed.
        (
            keyring(2, vec![kek(1, "retired", 90, 0), kek(2, "active", 1, 3)], 0),
            Status::Pass,
            Status::Warn,
        ),
        // Re-wrapped away from, but the minimum version was never raised.
        (
            keyring(
                2,
                vec![kek(1, "decrypt-only", 90, 0), kek(2, "active", 1, 3)],
                0,
            ),
            Status::Pass,
            Status::Warn,
        ),
    ] {
        let [a, v] = kek_findings(&status).try_into().unwrap();
        fixtures.push((a, age));
        fixtures.push((v, versions));
    }
    fixtures
}

#[test]
fn each_broken_fixture_gets_its_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    for (finding, expected) in broken_fixtures(tmp.path()) {
        assert_eq!(finding.status, expected, "{finding:#?}");
        if expected != Status::Pass {
            assert!(
                !finding.fix.is_empty(),
                "a finding without a fix: {finding:#?}"
            );
        }
    }
}

#[test]
fn every_check_fails_or_warns_on_some_broken_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broken: std::collections::BTreeSet<&str> = broken_fixtures(tmp.path())
        .iter()
        .filter(|(f, _)| f.status != Status::Pass)
        .map(|(f, _)| f.id)
        .collect();
    broken.extend(FAILED_BY_INTEGRATION_TESTS);
    let missing: Vec<&str> = CHECKS
        .iter()
        .map(|c| c.id)
        .filter(|id| !broken.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "checks with no failing fixture: {missing:?}"
    );
}

#[test]
fn the_healthy_counterparts_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let config_file = tmp.path().join("carevault.toml");
    std::fs::write(&config_file, "").unwrap();
    set_mode(&config_file, 0o640);
    let backups = tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    file_aged(&backups, "old.cvb", 50);
    file_aged(&backups, "new.cvb", 2);
    let two_admins = [
        principal("ann", "admin", false),
        principal("bob", "admin", false),
    ];
    let keys = [
        api_key("svc", true, &["10.1.0.0/16"], 90),
        api_key("mine", false, &[], 30),
        ApiKeyRow {
            revoked: true,
            ..api_key("old-open", true, &[], 3650)
        },
    ];
    let passing = [
        local::config_file_mode(Some(&config_file)),
        local::config_file_mode(None),
        local::root_finding(Tier::Production, Some(998), 0),
        local::memory_finding(
            Tier::Production,
            LockMode::Required,
            &running_server(900, Some(0)),
            2,
        ),
        local::memory_finding(
            Tier::Production,
            LockMode::Auto,
            &running_server(900, None),
            0,
        ),
        local::plain_http_finding(Tier::Production, false, "0.0.0.0:8443".parse().unwrap()),
        data::backup(Some(&backups), NOW),
        data::admins_finding(&two_admins),
        data::policies_finding(&[policy(
            "shared-label",
            "permit (principal in CareVault::Role::\"clinician\", action in CareVault::Action::\"fhir-read\", resource is CareVault::Resource) when { resource.security.contains(\"SHARED\") };",
        )]),
        data::checkpoint_finding(
            "node-a",
            Some(5),
            Some((NOW - 60) * 1_000_000),
            3600,
            NOW * 1_000_000,
        ),
        data::checkpoint_finding("node-a", Some(0), None, 3600, NOW * 1_000_000),
        data::database_tls_finding(
            "postgres://cv@db.example.org/cv?sslmode=verify-full",
            Tier::Production,
        ),
        data::database_tls_finding("postgres://cv@127.0.0.1/cv", Tier::Production),
        data::role_finding(false, false, false),
    ];
    let mut all: Vec<Finding> = passing.into_iter().collect();
    all.extend(data::api_key_findings(&keys, NOW));
    all.extend(local::certificate_findings(
        Path::new("cert.pem"),
        &certificate(-10, 300, "RSA 2048", true),
        NOW,
    ));
    all.extend(data::kek_findings(
        &keyring(
            2,
            vec![kek(1, "destroyed", 500, 0), kek(2, "active", 30, 3)],
            0,
        ),
        365,
        NOW,
    ));
    for f in all {
        assert_eq!(f.status, Status::Pass, "{f:#?}");
    }
}

#[test]
fn the_memory_check_says_whose_memory_it_looked_at() {
    let server = local::memory_finding(
        Tier::Development,
        LockMode::Auto,
        &running_server(0, None),
        0,
    );
    assert!(
        server.found.contains("running server (pid 4242)"),
        "{}",
        server.found
    );
    let local = local::memory_finding(
        Tier::Development,
        LockMode::Auto,
        &MemoryView::NotRunning {
            lock_possible: Ok(()),
        },
        0,
    );
    assert!(local.found.contains("no server runs"), "{}", local.found);
}
