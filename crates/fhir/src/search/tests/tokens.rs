use super::*;

#[test]
fn token_forms() {
    let obs = heart_rate();
    let rt = ResourceType::OBSERVATION;
    let cases = [
        ("8867-4", true),
        ("http://loinc.org|8867-4", true),
        ("|8867-4", false),
        ("http://snomed.info/sct|8867-4", false),
        ("http://loinc.org|", true),
        ("http://acme.org/codes|", true),
        ("http://snomed.info/sct|", false),
        ("HR", true),
        ("|HR", true),
        ("hr", false),
        ("http://loinc.org|HR", false),
        ("8867", false),
        ("8867-4x", false),
        ("xyz,8867-4", true),
        ("xyz,abc", false),
    ];
    for (value, expected) in cases {
        assert_eq!(hit(rt, &obs, "code", value), expected, "code={value}");
    }
    assert!(hit(rt, &obs, "category", "vital-signs"));
    assert!(hit(rt, &obs, "status", "final"));
    assert!(!hit(rt, &obs, "status", "Final"));
    assert!(!hit(rt, &obs, "status", "preliminary"));
}

#[test]
fn token_escapes() {
    let obs = heart_rate();
    let rt = ResourceType::OBSERVATION;
    assert!(hit(rt, &obs, "category", r"a\,b\|c"));
    assert!(hit(rt, &obs, "category", r"http://acme.org/cat|a\,b\|c"));
    // Unescaped: "a" OR "b|c" (system b, code c): no match.
    assert!(!hit(rt, &obs, "category", "a,b|c"));
    let q = query(rt, &[("category", r"x,a\,b\|c,y")]);
    assert_eq!(q.clauses[0].values.len(), 3);
    assert_eq!(invalid_param(rt, &[("code", "a|b|c")]), Some("code"));
}

#[test]
fn token_not_and_text() {
    let obs = heart_rate();
    let rt = ResourceType::OBSERVATION;
    assert!(!hit(rt, &obs, "code:not", "8867-4"));
    assert!(!hit(rt, &obs, "code:not", "xyz,HR"));
    assert!(hit(rt, &obs, "code:not", "xyz"));
    assert!(hit(rt, &obs, "status:not", "preliminary"));
    assert!(!hit(rt, &obs, "status:not", "final"));
    // Resources without the element match :not.
    let bare = json!({ "resourceType": "Observation" });
    assert!(hit(rt, &bare, "code:not", "8867-4"));
    assert!(!hit(rt, &bare, "code", "8867-4"));
    assert_eq!(candidates(rt, "code:not", "8867-4"), None);

    assert!(hit(rt, &obs, "code:text", "heart"));
    assert!(hit(rt, &obs, "code:text", "PULSE"));
    assert!(hit(rt, &obs, "code:text", "héart RATE"));
    assert!(!hit(rt, &obs, "code:text", "rate"));
    assert!(!hit(rt, &obs, "code:text", "8867"));
    assert_eq!(candidates(rt, "code:text", "heart"), None);
    // :text only on coded parameters.
    assert_eq!(
        unknown_modifier(rt, &[("status:text", "final")]),
        Some("status")
    );
}

#[test]
fn identifiers_and_primitive_codes() {
    let rt = ResourceType::PATIENT;
    let patient = json!({
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            { "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345" },
            { "value": "A|B" }
        ],
        "gender": "female",
        "active": true
    });
    assert!(hit(rt, &patient, "identifier", "12345"));
    assert!(hit(
        rt,
        &patient,
        "identifier",
        "urn:oid:1.2.36.146.595.217.0.1|12345"
    ));
    assert!(!hit(rt, &patient, "identifier", "|12345"));
    assert!(hit(rt, &patient, "identifier", r"|A\|B"));
    assert!(!hit(rt, &patient, "identifier", "urn:other|12345"));
    assert!(hit(rt, &patient, "gender", "female"));
    assert!(hit(
        rt,
        &patient,
        "gender",
        "http://hl7.org/fhir/administrative-gender|female"
    ));
    assert!(hit(rt, &patient, "gender", "|female"));
    assert!(!hit(
        rt,
        &patient,
        "gender",
        "http://hl7.org/fhir/administrative-gender|"
    ));
    assert!(!hit(rt, &patient, "gender", "male"));
    assert!(!hit(rt, &patient, "gender", "Female"));
    assert!(hit(rt, &patient, "gender:missing", "false"));
    assert!(!hit(rt, &patient, "gender:missing", "true"));
    assert!(hit(rt, &patient, "birthdate:missing", "true"));
    assert!(hit(rt, &patient, "birthdate:missing", "true,false"));
    assert_eq!(
        candidates(
            rt,
            "gender",
            "http://hl7.org/fhir/administrative-gender|female"
        ),
        Some(vec!["c:female".to_owned()])
    );
    // No key joins a system to its code: the code's rows are the candidates, and the system is
    // checked on each.
    assert_eq!(
        candidates(rt, "identifier", "urn:x|1"),
        Some(vec!["c:1".to_owned()])
    );
    let in_two_systems = json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:a", "value": "1" }, { "system": "urn:b", "value": "2" }]
    });
    assert!(hit(rt, &in_two_systems, "identifier", "urn:a|1"));
    assert!(!hit(rt, &in_two_systems, "identifier", "urn:b|1"));
    assert!(!hit(rt, &in_two_systems, "identifier", "urn:x|1"));
    assert_eq!(
        keys_of(rt, &in_two_systems, "identifier"),
        ["c:1", "c:2", "s:urn:a", "s:urn:b"]
    );
    assert_eq!(candidates(rt, "gender:missing", "true"), None);
}

#[test]
fn telecom() {
    let rt = ResourceType::PATIENT;
    let patient = json!({
        "resourceType": "Patient",
        "telecom": [
            { "system": "email", "value": "Jane.Doe@Example.org" },
            { "system": "phone", "value": "+1 (555) 123-4567" },
            { "system": "fax", "value": "+1 555 999" },
            { "value": "nosystem@example.org" }
        ]
    });
    assert!(hit(rt, &patient, "email", "jane.doe@example.org"));
    assert!(hit(rt, &patient, "email", "JANE.DOE@EXAMPLE.ORG"));
    assert!(hit(rt, &patient, "email", "email|jane.doe@example.org"));
    assert!(!hit(rt, &patient, "email", "jane.doe@example"));
    assert!(!hit(rt, &patient, "email", "nosystem@example.org"));
    assert!(!hit(rt, &patient, "email", "+15551234567"));
    assert!(hit(rt, &patient, "phone", "+15551234567"));
    assert!(hit(rt, &patient, "phone", "+1 555 123 4567"));
    assert!(hit(rt, &patient, "phone", "+1.555.123.4567"));
    assert!(!hit(rt, &patient, "phone", "5551234567"));
    assert!(!hit(rt, &patient, "phone", "+1555999"));
    assert!(!hit(rt, &patient, "phone", "jane.doe@example.org"));
    assert_eq!(
        invalid(rt, &[("phone", " - ")]),
        Some(("phone", "empty value"))
    );
}

#[test]
fn encounter_class_is_a_coding() {
    let rt = ResourceType::ENCOUNTER;
    let encounter = json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory" }
    });
    assert!(hit(rt, &encounter, "class", "AMB"));
    assert!(hit(
        rt,
        &encounter,
        "class",
        "http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB"
    ));
    assert!(hit(rt, &encounter, "class:text", "ambul"));
    assert!(!hit(rt, &encounter, "class", "IMP"));
    assert!(hit(rt, &encounter, "status", "finished"));
}

#[test]
fn other_token_parameters() {
    let coding =
        |code: &str| json!({ "coding": [{ "system": "http://snomed.info/sct", "code": code }] });
    let allergy = json!({
        "resourceType": "AllergyIntolerance",
        "code": coding("227493005"),
        "reaction": [{ "substance": coding("1191") }, { "substance": coding("2222") }]
    });
    let rt = ResourceType::ALLERGY_INTOLERANCE;
    for code in ["227493005", "1191", "2222"] {
        assert!(hit(rt, &allergy, "code", code), "{code}");
    }
    assert!(!hit(rt, &allergy, "code", "3333"));

    let rt = ResourceType::MEDICATION_REQUEST;
    let request = json!({ "resourceType": "MedicationRequest", "status": "active", "medicationCodeableConcept": coding("m1"), "authoredOn": "2024-01-02" });
    assert!(hit(rt, &request, "code", "m1"));
    assert!(hit(rt, &request, "status", "active"));
    assert!(hit(rt, &request, "authoredon", "2024-01"));
    let by_reference = json!({ "resourceType": "MedicationRequest", "medicationReference": { "reference": "Medication/m1" } });
    assert!(!hit(rt, &by_reference, "code", "m1"));

    let rt = ResourceType::CONDITION;
    let condition = json!({ "resourceType": "Condition", "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] }, "code": coding("c1") });
    assert!(hit(rt, &condition, "clinical-status", "active"));
    assert!(hit(rt, &condition, "code", "c1"));

    let rt = ResourceType::IMMUNIZATION;
    let immunization = json!({ "resourceType": "Immunization", "vaccineCode": coding("v1"), "patient": { "reference": "Patient/p1" }, "occurrenceDateTime": "2021-05-01" });
    assert!(hit(rt, &immunization, "vaccine-code", "v1"));
    assert!(hit(rt, &immunization, "patient", "p1"));
    assert!(hit(rt, &immunization, "date", "2021"));

    let rt = ResourceType::DIAGNOSTIC_REPORT;
    let report = json!({ "resourceType": "DiagnosticReport", "code": coding("r1"), "category": [coding("LAB")], "subject": { "reference": "Patient/p1" }, "effectivePeriod": { "start": "2020-01-01", "end": "2020-01-03" } });
    assert!(hit(rt, &report, "code", "r1"));
    assert!(hit(rt, &report, "category", "LAB"));
    assert!(hit(rt, &report, "date", "2020-01"));

    let rt = ResourceType::DOCUMENT_REFERENCE;
    let document = json!({ "resourceType": "DocumentReference", "type": coding("t1"), "subject": { "reference": "Patient/p1" }, "date": "2022-02-02T10:00:00Z" });
    assert!(hit(rt, &document, "type", "t1"));
    assert!(hit(rt, &document, "patient", "Patient/p1"));
    assert!(hit(rt, &document, "date", "2022-02-02"));

    let rt = ResourceType::PROCEDURE;
    let procedure = json!({ "resourceType": "Procedure", "code": coding("x1"), "subject": { "reference": "Patient/p1" }, "performedPeriod": { "start": "2019-06-01" } });
    assert!(hit(rt, &procedure, "code", "x1"));
    assert!(hit(rt, &procedure, "date", "ge2030"));
    assert!(!hit(rt, &procedure, "date", "2019"));
}

#[test]
fn of_type_matches_an_identifier_by_its_type_and_value() {
    let rt = ResourceType::PATIENT;
    let doc = json!({"resourceType": "Patient", "identifier": [
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
         "system": "urn:mrn", "value": "123"},
        {"system": "urn:ssn", "value": "456"}]});
    let mr = "http://terminology.hl7.org/CodeSystem/v2-0203|MR";
    assert!(hit(rt, &doc, "identifier:of-type", &format!("{mr}|123")));
    assert!(!hit(rt, &doc, "identifier:of-type", &format!("{mr}|456")));
    assert!(!hit(
        rt,
        &doc,
        "identifier:of-type",
        "http://terminology.hl7.org/CodeSystem/v2-0203|SS|123"
    ));
    for bad in ["123", "a|b", "|MR|123", "a|b|"] {
        assert!(
            matches!(
                error(rt, &[("identifier:of-type", bad)]),
                SearchError::Invalid { .. }
            ),
            "{bad}"
        );
    }
    // Only on parameters over identifiers.
    assert_eq!(
        unknown_modifier(rt, &[("gender:of-type", "a|b|c")]),
        Some("gender")
    );
}
