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
