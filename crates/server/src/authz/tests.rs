use carevault_fhir::ResourceType;
use carevault_store::PolicyRow;
use cedar_policy::PolicySet;

use super::entities::{action_entities, shipped_schema};
use super::policies::builtin_policies;
use super::*;
use crate::identity::{Principal, Role};
use crate::names::PolicyName;

fn name(text: &str) -> PolicyName {
    PolicyName::parse(text).unwrap()
}

fn authz_with(custom: &[(&str, &str)]) -> Authz {
    let schema = shipped_schema().unwrap();
    let a = Authz {
        actions: action_entities(&schema).unwrap(),
        schema,
        builtin: builtin_policies().unwrap(),
        current: RwLock::new(Arc::new(Loaded::new(
            0,
            PolicySet::new(),
            Vec::new(),
            &action_entities(&shipped_schema().unwrap()).unwrap(),
        ))),
        authorizer: Authorizer::new(),
        // Never reached by these tests; the policy set is compiled in place below.
        store: Arc::new(
            carevault_store::SqliteStore::open(
                &Box::leak(Box::new(tempfile::tempdir().unwrap()))
                    .path()
                    .join("t.db"),
            )
            .unwrap(),
        ),
        clock: Arc::new(crate::clock::SystemClock),
        organizations: RwLock::new(HashMap::new()),
        shared_database: false,
        principals: RwLock::new(HashMap::new()),
    };
    let rows: Vec<PolicyRow> = custom
        .iter()
        .map(|(n, t)| PolicyRow {
            name: (*n).into(),
            text: (*t).into(),
            updated_at: 0,
        })
        .collect();
    let set = a.compile(&rows).unwrap_or_else(|e| panic!("{:?}", e.0));
    *a.current.write().unwrap() = Arc::new(Loaded::new(1, set, rows, &a.actions));
    a
}

fn user(role: Role, org: Option<&str>) -> Principal {
    Principal::test_user("u1", role, org)
}

fn key(scopes: &[&str]) -> Principal {
    Principal::test_key("k1", scopes.iter().map(|s| s.to_string()).collect(), None)
}

fn patient_in(org: &str) -> ResourceAttrs {
    ResourceAttrs {
        rtype: ResourceType::PATIENT,
        id: "p1".into(),
        compartment: Some(crate::compartment::Compartment::stored("Patient/p1")),
        organization: Some(crate::OrganizationId::parse(org).unwrap()),
        security: vec![],
    }
}

fn obs_in(org: &str) -> ResourceAttrs {
    ResourceAttrs {
        rtype: ResourceType::OBSERVATION,
        id: "o1".into(),
        ..patient_in(org)
    }
}

#[test]
fn decisions_are_cached_only_when_no_policy_can_tell_resources_apart() {
    let a = authz_with(&[]);
    assert!(
        a.loaded().decisions.is_some(),
        "the built-in policies are cacheable"
    );
    let clin = user(Role::Clinician, Some("org-a"));
    for _ in 0..2 {
        let first = a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false);
        assert!(first.allowed);
        assert_eq!(first.policies, ["builtin.clinician.own-organization"]);
        assert!(
            !a.fhir(&clin, FhirAction::Read, &patient_in("org-b"), false)
                .allowed
        );
        assert!(
            !a.fhir(
                &user(Role::Clinician, Some("org-b")),
                FhirAction::Read,
                &patient_in("org-a"),
                false
            )
            .allowed,
            "another principal is another key"
        );
    }

    // A policy about one compartment: the same attributes otherwise, different answers.
    let a = authz_with(&[(
        "one-patient",
        r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource.compartment == "Patient/p1" };"#,
    )]);
    assert!(a.loaded().decisions.is_none());
    let other = ResourceAttrs {
        id: "p2".into(),
        compartment: Some(crate::compartment::Compartment::stored("Patient/p2")),
        ..patient_in("org-a")
    };
    for _ in 0..2 {
        assert!(
            !a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false)
                .allowed
        );
        assert!(a.fhir(&clin, FhirAction::Read, &other, false).allowed);
    }
    for (name, text) in [
        (
            "by-uid",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource == CareVault::Resource::"Patient/p1");"#,
        ),
        (
            "has",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource has compartment };"#,
        ),
    ] {
        assert!(
            authz_with(&[(name, text)]).loaded().decisions.is_none(),
            "{name} depends on the resource's identity"
        );
    }
    let labels = authz_with(&[(
        "labels",
        r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource.security.contains("R") };"#,
    )]);
    assert!(
        labels.loaded().decisions.is_some(),
        "labels are part of the key"
    );
    let restricted = ResourceAttrs {
        security: vec!["R".into()],
        ..patient_in("org-a")
    };
    assert!(
        labels
            .fhir(&clin, FhirAction::Read, &patient_in("org-a"), false)
            .allowed
    );
    assert!(
        !labels
            .fhir(&clin, FhirAction::Read, &restricted, false)
            .allowed
    );
}

#[test]
fn decisions_are_label_free_only_when_no_policy_reads_labels() {
    assert!(
        authz_with(&[]).decides_without_labels(),
        "the built-in policies never read labels"
    );
    assert!(
        authz_with(&[(
            "one-patient",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource.compartment == "Patient/p1" };"#,
        )])
        .decides_without_labels(),
        "a policy about a compartment tells resources apart, not labels"
    );
    for (name, text) in [
        (
            "forbid-restricted",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource.security.contains("R") };"#,
        ),
        (
            "permit-shared",
            r#"permit (principal in CareVault::Role::"clinician", action in CareVault::Action::"fhir", resource) when { resource.security.contains("SHARED") };"#,
        ),
        (
            "unless-labelled",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource) unless { resource.security.isEmpty() };"#,
        ),
        (
            "has",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource has security };"#,
        ),
        (
            "whole-resource",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource) when { context.scope == resource.type && resource == resource };"#,
        ),
    ] {
        let a = authz_with(&[(name, text)]);
        assert!(!a.decides_without_labels(), "{name} may read labels");
    }
    let a = authz_with(&[(
        "permit-shared",
        r#"permit (principal in CareVault::Role::"clinician", action in CareVault::Action::"fhir", resource) when { resource.security.contains("SHARED") };"#,
    )]);
    let clin = user(Role::Clinician, Some("org-a"));
    let shared = ResourceAttrs {
        security: vec!["SHARED".into()],
        ..patient_in("org-b")
    };
    assert!(
        !a.fhir(&clin, FhirAction::Search, &patient_in("org-b"), false)
            .allowed
    );
    assert!(
        a.fhir(&clin, FhirAction::Search, &shared, false).allowed,
        "the labels decide here, which is why such a set is not label-free"
    );
}

#[test]
fn built_in_roles() {
    let a = authz_with(&[]);

    let clin = user(Role::Clinician, Some("org-a"));
    assert!(
        a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false)
            .allowed
    );
    assert!(
        a.fhir(&clin, FhirAction::Update, &obs_in("org-a"), false)
            .allowed
    );
    assert!(
        !a.fhir(&clin, FhirAction::Read, &patient_in("org-b"), false)
            .allowed
    );
    assert!(
        a.fhir(&clin, FhirAction::Read, &patient_in("org-b"), true)
            .allowed,
        "break-glass reads"
    );
    assert!(
        !a.fhir(&clin, FhirAction::Update, &patient_in("org-b"), true)
            .allowed,
        "break-glass never writes"
    );
    let practitioner = ResourceAttrs {
        rtype: ResourceType::PRACTITIONER,
        id: "pr".into(),
        compartment: None,
        organization: None,
        security: vec![],
    };
    assert!(
        a.fhir(&clin, FhirAction::Create, &practitioner, false)
            .allowed
    );
    let d = a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false);
    assert_eq!(d.policies, ["builtin.clinician.own-organization"]);
    // A developer reads (de-identified by the records service) and never writes.
    let dev = user(Role::Developer, None);
    for action in [
        FhirAction::Read,
        FhirAction::Vread,
        FhirAction::Search,
        FhirAction::History,
    ] {
        let d = a.fhir(&dev, action, &patient_in("org-a"), false);
        assert!(d.allowed, "developer {action:?}");
        assert_eq!(d.policies, ["builtin.developer.deidentified-read"]);
    }
    for action in [FhirAction::Create, FhirAction::Update, FhirAction::Delete] {
        assert!(
            !a.fhir(&dev, action, &practitioner, false).allowed,
            "developer {action:?}"
        );
    }
    for role in [Role::Admin, Role::Auditor, Role::Service] {
        let p = user(role, Some("org-a"));
        assert!(
            !a.fhir(&p, FhirAction::Read, &patient_in("org-a"), false)
                .allowed,
            "{role:?} reads PHI"
        );
        assert!(
            !a.fhir(&p, FhirAction::Read, &practitioner, false).allowed,
            "{role:?} reads FHIR"
        );
    }
    assert!(
        a.system(&user(Role::Admin, None), SystemAction::ManageUsers)
            .allowed
    );
    assert!(
        !a.system(&user(Role::Admin, None), SystemAction::AuditRead)
            .allowed
    );
    assert!(
        a.system(&user(Role::Auditor, None), SystemAction::AuditRead)
            .allowed
    );
    assert!(
        a.system(&user(Role::Auditor, None), SystemAction::MetricsRead)
            .allowed
    );
    assert!(
        a.system(&user(Role::Developer, None), SystemAction::MetricsRead)
            .allowed
    );
    assert!(
        !a.system(&user(Role::Developer, None), SystemAction::AuditRead)
            .allowed
    );
    assert!(!a.system(&clin, SystemAction::ManageUsers).allowed);
    assert!(a.system(&clin, SystemAction::BreakGlass).allowed);
    assert!(
        !a.system(&user(Role::Auditor, None), SystemAction::BreakGlass)
            .allowed
    );
}

#[test]
fn api_key_scopes() {
    let a = authz_with(&[]);
    let k = key(&["Observation.r", "Observation.s"]);
    assert!(
        a.fhir(&k, FhirAction::Read, &obs_in("org-z"), false)
            .allowed
    );
    assert!(
        a.fhir(&k, FhirAction::Search, &obs_in("org-z"), false)
            .allowed
    );
    assert!(
        !a.fhir(&k, FhirAction::Update, &obs_in("org-z"), false)
            .allowed
    );
    assert!(
        !a.fhir(&k, FhirAction::Read, &patient_in("org-z"), false)
            .allowed
    );
    assert!(!a.system(&k, SystemAction::ManageUsers).allowed);
    let all = key(&["*.r"]);
    assert!(
        a.fhir(&all, FhirAction::Read, &patient_in("org-z"), false)
            .allowed
    );
    // A key minted by a clinician of org A reads only what they could.
    let owned = Principal::test_key(
        "k2",
        vec!["*.r".into()],
        Some(Box::new(user(Role::Clinician, Some("org-a")))),
    );
    assert!(
        a.fhir(&owned, FhirAction::Read, &patient_in("org-a"), false)
            .allowed
    );
    assert!(
        !a.fhir(&owned, FhirAction::Read, &patient_in("org-b"), false)
            .allowed
    );
    assert!(
        !a.fhir(&owned, FhirAction::Update, &patient_in("org-a"), false)
            .allowed
    );
}

#[test]
fn a_metrics_key_reads_the_metrics_and_nothing_else() {
    let a = authz_with(&[]);
    let scraper = key(&["metrics"]);
    let d = a.system(&scraper, SystemAction::MetricsRead);
    assert!(d.allowed);
    assert_eq!(d.policies, ["builtin.api-key.metrics"]);
    for action in [
        SystemAction::ManageUsers,
        SystemAction::ManageKeys,
        SystemAction::ManagePolicies,
        SystemAction::AuditRead,
        SystemAction::BreakGlass,
    ] {
        assert!(!a.system(&scraper, action).allowed, "{action:?}");
    }
    for action in [FhirAction::Read, FhirAction::Search, FhirAction::Create] {
        assert!(!a.fhir(&scraper, action, &obs_in("org-z"), false).allowed);
    }
    // FHIR scopes do not reach the metrics.
    assert!(
        !a.system(&key(&["*.r", "*.s"]), SystemAction::MetricsRead)
            .allowed
    );
    // A key a user mints for themselves reaches the metrics only if the user may read them.
    let owned_by = |role| {
        Principal::test_key(
            "k3",
            vec!["metrics".into()],
            Some(Box::new(user(role, Some("org-a")))),
        )
    };
    assert!(
        !a.system(&owned_by(Role::Clinician), SystemAction::MetricsRead)
            .allowed
    );
    assert!(
        a.system(&owned_by(Role::Developer), SystemAction::MetricsRead)
            .allowed
    );
}

#[test]
fn forbid_wins_and_invalid_policies_are_refused() {
    let a = authz_with(&[(
        "no-restricted",
        r#"forbid (principal, action, resource is CareVault::Resource) when { resource.security.contains("R") };"#,
    )]);
    let clin = user(Role::Clinician, Some("org-a"));
    let mut restricted = patient_in("org-a");
    restricted.security = vec!["R".into()];
    let d = a.fhir(&clin, FhirAction::Read, &restricted, false);
    assert!(!d.allowed);
    assert_eq!(d.policies, ["custom.no-restricted"]);
    // A custom policy cannot let a developer write: the built-in forbid wins.
    let lenient = authz_with(&[(
        "developers-write",
        r#"permit (principal in CareVault::Role::"developer", action, resource);"#,
    )]);
    let d = lenient.fhir(
        &user(Role::Developer, None),
        FhirAction::Create,
        &patient_in("org-a"),
        false,
    );
    assert!(!d.allowed);
    assert_eq!(d.policies, ["builtin.developer.no-writes"]);
    assert!(
        a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false)
            .allowed
    );

    let syntax = a
        .check_custom(&name("bad"), "permit (principal, action, resource) when {")
        .unwrap_err();
    assert!(!syntax.0.is_empty());
    let unknown_attr = a
        .check_custom(
            &name("bad"),
            "permit (principal, action, resource) when { resource.colour == \"red\" };",
        )
        .unwrap_err();
    assert!(
        unknown_attr.0.iter().any(|d| d.contains("colour")),
        "{:?}",
        unknown_attr.0
    );
    assert!(
        PolicyName::parse("Bad Name").is_err(),
        "a policy's name is checked before its text"
    );
    assert!(
        a.check_custom(
            &name("tpl"),
            "permit (principal == ?principal, action, resource);"
        )
        .is_err()
    );
    assert!(a.check_custom(&name("ok"), "permit (principal in CareVault::Role::\"auditor\", action == CareVault::Action::\"read\", resource);").is_ok());
    assert_eq!(
        check_policy_text("forbid (principal, action, resource);").unwrap(),
        1
    );
}
