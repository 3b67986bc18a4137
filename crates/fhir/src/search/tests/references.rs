use super::*;

#[test]
fn reference_forms() {
    let rt = ResourceType::OBSERVATION;
    let typed = observation_with_subject("Patient/p1");
    let absolute = observation_with_subject("https://example.org/fhir/Patient/p1/_history/3");
    let group = observation_with_subject("Group/p1");
    for obs in [&typed, &absolute] {
        for (name, value) in [
            ("subject", "p1"),
            ("subject", "Patient/p1"),
            ("subject", "Patient/p1/_history/9"),
            ("subject", "https://other.example/fhir/Patient/p1"),
            ("subject:Patient", "p1"),
            ("subject:Patient", "Patient/p1"),
            ("patient", "p1"),
            ("patient", "Patient/p1"),
            ("patient:Patient", "p1"),
            ("subject", "x,p1"),
        ] {
            assert!(hit(rt, obs, name, value), "{name}={value} on {obs}");
        }
        for (name, value) in [
            ("subject", "p2"),
            ("subject", "Group/p1"),
            ("subject:Group", "p1"),
            ("subject", "P1"),
        ] {
            assert!(!hit(rt, obs, name, value), "{name}={value} on {obs}");
        }
    }
    assert!(hit(rt, &group, "subject", "p1"));
    assert!(hit(rt, &group, "subject", "Group/p1"));
    assert!(!hit(rt, &group, "patient", "p1"));
    assert!(!hit(rt, &group, "subject", "Patient/p1"));
    for odd in [
        "#p1",
        "urn:uuid:8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d",
        "Patient?identifier=x",
        "p1",
        "Patient/p1/x",
    ] {
        let obs = observation_with_subject(odd);
        assert!(!hit(rt, &obs, "subject", "p1"), "{odd}");
        assert!(keys_of(rt, &obs, "subject").is_empty());
    }
    // A reference to a type outside the targets is not a value of the parameter.
    let practitioner = observation_with_subject("Practitioner/p1");
    assert!(!hit(rt, &practitioner, "subject", "p1"));
    assert!(keys_of(rt, &practitioner, "subject").is_empty());
}

#[test]
fn reference_candidates_and_errors() {
    let rt = ResourceType::OBSERVATION;
    assert_eq!(
        candidates(rt, "subject", "p1"),
        Some(vec![
            "r:Group/p1".to_owned(),
            "r:Device/p1".to_owned(),
            "r:Patient/p1".to_owned(),
            "r:Location/p1".to_owned()
        ])
    );
    assert_eq!(
        candidates(rt, "patient", "p1"),
        Some(vec!["r:Patient/p1".to_owned()])
    );
    assert_eq!(
        candidates(rt, "subject", "https://x.org/fhir/Device/d1/_history/2"),
        Some(vec!["r:Device/d1".to_owned()])
    );
    assert_eq!(
        keys_of(
            rt,
            &observation_with_subject("http://x/Patient/p1/_history/1"),
            "patient"
        ),
        ["r:Patient/p1"]
    );
    for (name, value) in [
        ("patient", "Group/g1"),
        ("subject", "Practitioner/1"),
        ("subject", "Foo/1"),
        ("subject", "a b"),
        ("subject", "#p1"),
        ("subject", "urn:uuid:1"),
        ("subject:Patient", "Group/g1"),
        ("subject", "Patient/"),
    ] {
        assert!(invalid(rt, &[(name, value)]).is_some(), "{name}={value}");
    }
    assert_eq!(
        unknown_modifier(rt, &[("patient:Group", "g1")]),
        Some("patient")
    );
    assert_eq!(
        unknown_modifier(rt, &[("subject:nonsense", "x|1")]),
        Some("subject")
    );
    // A chain (see tests::chains), not an unknown parameter.
    assert_eq!(query(rt, &[("subject.family", "x")]).chains.len(), 1);
}

#[test]
fn other_reference_parameters() {
    for rtype in [
        ResourceType::CONDITION,
        ResourceType::ENCOUNTER,
        ResourceType::MEDICATION_REQUEST,
        ResourceType::PROCEDURE,
        ResourceType::DIAGNOSTIC_REPORT,
        ResourceType::DOCUMENT_REFERENCE,
    ] {
        let resource = json!({ "subject": { "reference": "Patient/p9" } });
        assert!(hit(rtype, &resource, "patient", "p9"), "{rtype}");
        assert!(hit(rtype, &resource, "patient", "Patient/p9"), "{rtype}");
        let group = json!({ "subject": { "reference": "Group/p9" } });
        assert!(!hit(rtype, &group, "patient", "p9"), "{rtype}");
    }
    for rtype in [
        ResourceType::ALLERGY_INTOLERANCE,
        ResourceType::IMMUNIZATION,
    ] {
        let resource = json!({ "patient": { "reference": "Patient/p9" } });
        assert!(hit(rtype, &resource, "patient", "p9"), "{rtype}");
    }
}

#[test]
fn references_for_includes() {
    let rt = ResourceType::OBSERVATION;
    let subject = param(rt, "subject").expect("subject");
    let patient = param(rt, "patient").expect("patient");
    let obs = observation_with_subject("https://x/fhir/Group/g1/_history/2");
    assert_eq!(references(rt, &obs, subject), ["Group/g1"]);
    assert!(references(rt, &obs, patient).is_empty());
    assert_eq!(references(rt, &heart_rate(), patient), ["Patient/p1"]);
    // A parameter of another type, or not a reference: nothing.
    let condition_patient = param(ResourceType::CONDITION, "patient").expect("patient");
    assert!(references(rt, &heart_rate(), condition_patient).is_empty());
    let code = param(rt, "code").expect("code");
    assert!(references(rt, &heart_rate(), code).is_empty());
}

#[test]
fn identifier_modifier_matches_the_references_identifier() {
    let rt = ResourceType::OBSERVATION;
    let doc = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"identifier": {"system": "urn:mrn", "value": "123"}}});
    assert!(hit(rt, &doc, "subject:identifier", "urn:mrn|123"));
    assert!(hit(rt, &doc, "subject:identifier", "123"));
    assert!(!hit(rt, &doc, "subject:identifier", "urn:other|123"));
    assert!(!hit(rt, &doc, "subject:identifier", "|123"));
    assert!(!hit(rt, &doc, "subject:identifier", "urn:mrn|124"));
    assert!(matches!(
        error(rt, &[("subject:identifier", "urn:mrn|")]),
        SearchError::Invalid { .. }
    ));
}

#[test]
fn canonical_references_match_by_url_with_any_version_or_the_one_asked() {
    let rt = ResourceType::parse("QuestionnaireResponse").expect("type");
    let url = "http://example.org/Questionnaire/phq-9";
    let versioned = json!({"resourceType": "QuestionnaireResponse", "status": "completed",
        "questionnaire": format!("{url}|2.0")});
    let plain = json!({"resourceType": "QuestionnaireResponse", "status": "completed",
        "questionnaire": url});
    for (resource, value, expected) in [
        (&versioned, url.to_owned(), true),
        (&versioned, format!("{url}|2.0"), true),
        (&versioned, format!("{url}|1.0"), false),
        (&versioned, format!("{url}-short"), false),
        (&plain, url.to_owned(), true),
        (&plain, format!("{url}|2.0"), false),
        (&plain, format!("urn:oid:1.2.3,{url}"), true),
        (&plain, "phq-9".to_owned(), false),
    ] {
        assert_eq!(
            hit(rt, resource, "questionnaire", &value),
            expected,
            "{value} on {resource}"
        );
    }
    assert!(hit(rt, &versioned, "questionnaire:missing", "false"));
    assert!(hit(
        rt,
        &json!({"resourceType": "QuestionnaireResponse", "status": "completed"}),
        "questionnaire:missing",
        "true"
    ));
    // A CarePlan's instantiatesCanonical, a list of canonicals.
    let plan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "instantiatesCanonical": ["http://example.org/PlanDefinition/a", "http://example.org/PlanDefinition/b|3"]});
    let care_plan = ResourceType::parse("CarePlan").expect("type");
    assert!(hit(
        care_plan,
        &plan,
        "instantiates-canonical",
        "http://example.org/PlanDefinition/b"
    ));
    assert!(!hit(
        care_plan,
        &plan,
        "instantiates-canonical",
        "http://example.org/PlanDefinition/c"
    ));
    // What cannot follow a canonical: chains, _has, _include; an empty version is invalid.
    assert_eq!(
        invalid(rt, &[("questionnaire.name", "x")]),
        Some((
            "questionnaire",
            "a reference by canonical URL cannot be chained"
        ))
    );
    assert_eq!(
        invalid(rt, &[("questionnaire", &format!("{url}|"))]),
        Some(("questionnaire", "invalid canonical reference"))
    );
}
