//! Composite parameters: every component must hold within one base element.

use super::*;

fn blood_pressure() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "bp1",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "85354-9" }] },
        "subject": { "reference": "Patient/p1" },
        "component": [
            {
                "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] },
                "valueQuantity": { "value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]" }
            },
            {
                "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4" }] },
                "valueQuantity": { "value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]" }
            }
        ]
    })
}

#[test]
fn code_and_value_must_hold_on_the_observation_itself() {
    let rt = ResourceType::OBSERVATION;
    let hr = heart_rate();
    for (value, expected) in [
        ("http://loinc.org|8867-4$72", true),
        ("http://loinc.org|8867-4$gt70", true),
        ("8867-4$ge72|http://unitsofmeasure.org|/min", true),
        ("HR$72", true),
        ("http://loinc.org|8867-4$lt70", false),
        ("http://loinc.org|8867-4$72||mg", false),
        ("http://loinc.org|1234-5$72", false),
        ("http://other.org|8867-4$72", false),
        // OR between values, each a whole composite.
        (
            "http://loinc.org|1234-5$72,http://loinc.org|8867-4$72",
            true,
        ),
    ] {
        assert_eq!(
            hit(rt, &hr, "code-value-quantity", value),
            expected,
            "{value}"
        );
    }
    // The observation's own code with a component's value is no match (and the reverse).
    let bp = blood_pressure();
    assert!(!hit(rt, &bp, "code-value-quantity", "85354-9$120"));
    assert!(!hit(rt, &bp, "code-value-quantity", "8480-6$120"));
}

#[test]
fn a_component_s_code_and_another_component_s_value_are_no_match() {
    let rt = ResourceType::OBSERVATION;
    let bp = blood_pressure();
    for (name, value, expected) in [
        (
            "component-code-value-quantity",
            "http://loinc.org|8480-6$gt100",
            true,
        ),
        (
            "component-code-value-quantity",
            "http://loinc.org|8462-4$lt90",
            true,
        ),
        // Systolic is 120 and diastolic 80: no one component has 8462-4 above 100.
        (
            "component-code-value-quantity",
            "http://loinc.org|8462-4$gt100",
            false,
        ),
        (
            "component-code-value-quantity",
            "http://loinc.org|8480-6$lt90",
            false,
        ),
        ("component-code-value-quantity", "85354-9$120", false),
        ("combo-code-value-quantity", "8480-6$120", true),
        ("combo-code-value-quantity", "8462-4$120", false),
    ] {
        assert_eq!(hit(rt, &bp, name, value), expected, "{name}={value}");
    }
    // The heart rate's own code and value count for combo, not for component.
    let hr = heart_rate();
    assert!(hit(rt, &hr, "combo-code-value-quantity", "8867-4$72"));
    assert!(!hit(rt, &hr, "component-code-value-quantity", "8867-4$72"));
    // With another clause: AND between clauses, each within its own element.
    assert!(hits(
        rt,
        &bp,
        &[
            ("component-code-value-quantity", "8480-6$gt100"),
            ("component-code-value-quantity", "8462-4$lt90"),
        ]
    ));
}

#[test]
fn concept_date_and_string_components() {
    let rt = ResourceType::OBSERVATION;
    let coded = json!({
        "resourceType": "Observation",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "883-9" }] },
        "valueCodeableConcept": { "coding": [{ "system": "http://snomed.info/sct", "code": "112144000" }] }
    });
    assert!(hit(
        rt,
        &coded,
        "code-value-concept",
        "883-9$http://snomed.info/sct|112144000"
    ));
    assert!(!hit(rt, &coded, "code-value-concept", "883-9$112149005"));
    let dated = json!({
        "resourceType": "Observation",
        "code": { "coding": [{ "code": "21612-7" }] },
        "valueDateTime": "2024-03-03T10:30:00Z"
    });
    assert!(hit(rt, &dated, "code-value-date", "21612-7$2024-03"));
    assert!(hit(rt, &dated, "code-value-date", "21612-7$gt2024-01-01"));
    assert!(!hit(rt, &dated, "code-value-date", "21612-7$lt2024-01-01"));
    // `\$` is a dollar inside a value, not a separator.
    let text = json!({
        "resourceType": "Observation",
        "code": { "coding": [{ "code": "x" }] },
        "valueString": "Costs $5 each"
    });
    assert!(hit(rt, &text, "code-value-string", "x$costs \\$5"));
    assert!(!hit(rt, &text, "code-value-string", "y$costs"));
    assert_eq!(
        invalid(rt, &[("code-value-string", "x$costs$5")]),
        Some((
            "code-value-string",
            "expected one value per component, separated by $"
        ))
    );
}

#[test]
fn context_type_quantity_on_a_conformance_resource() {
    let rt = ResourceType::parse("ValueSet").unwrap();
    let vs = json!({
        "resourceType": "ValueSet",
        "useContext": [
            {
                "code": { "system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age" },
                "valueRange": { "low": { "value": 18, "code": "a", "system": "http://unitsofmeasure.org" } }
            },
            {
                "code": { "system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "focus" },
                "valueCodeableConcept": { "coding": [{ "code": "diabetes" }] }
            }
        ]
    });
    assert!(hit(rt, &vs, "context-type-quantity", "age$gt40"));
    assert!(!hit(rt, &vs, "context-type-quantity", "age$lt10"));
    assert!(!hit(rt, &vs, "context-type-quantity", "focus$gt40"));
    assert!(hit(rt, &vs, "context-type-value", "focus$diabetes"));
    assert!(!hit(rt, &vs, "context-type-value", "age$diabetes"));
}

#[test]
fn the_index_holds_the_first_component_s_keys_in_its_host_s_rows() {
    let rt = ResourceType::OBSERVATION;
    let host_of = |name: &str| param(rt, name).unwrap().stored_as;
    // The code of every Observation composite is among combo-code's rows: none writes a row.
    for name in [
        "code-value-quantity",
        "code-value-concept",
        "component-code-value-quantity",
        "combo-code-value-quantity",
    ] {
        assert_eq!(host_of(name), "combo-code", "{name}");
    }
    assert_eq!(
        candidates(
            rt,
            "component-code-value-quantity",
            "http://loinc.org|8480-6$gt100"
        ),
        Some(vec!["c:8480-6".to_owned()])
    );
    // Group's characteristic-value: the characteristic's code is the key.
    let group_type = ResourceType::parse("Group").unwrap();
    assert_eq!(
        candidates(group_type, "characteristic-value", "gender$female"),
        Some(vec!["c:gender".to_owned()])
    );
    let group = json!({
        "resourceType": "Group",
        "characteristic": [
            { "code": { "coding": [{ "code": "gender" }] }, "valueCodeableConcept": { "coding": [{ "code": "female" }] } },
            { "code": { "coding": [{ "code": "smoker" }] }, "valueBoolean": true }
        ]
    });
    assert!(hit(
        group_type,
        &group,
        "characteristic-value",
        "gender$female"
    ));
    assert!(hit(
        group_type,
        &group,
        "characteristic-value",
        "smoker$true"
    ));
    assert!(!hit(
        group_type,
        &group,
        "characteristic-value",
        "smoker$female"
    ));
}

#[test]
fn composite_errors_name_the_parameter_never_the_value() {
    let rt = ResourceType::OBSERVATION;
    for value in [
        "8480-6",
        "8480-6$1$2",
        "8480-6$notanumber",
        "$120",
        "8480-6$",
        &format!("{CANARY}$x{CANARY}"),
    ] {
        let e = error(rt, &[("code-value-quantity", value)]);
        assert!(
            matches!(
                e,
                SearchError::Invalid {
                    param: "code-value-quantity",
                    ..
                }
            ),
            "{value}: {e:?}"
        );
        assert!(!e.to_string().contains(CANARY), "{e}");
    }
    // Composites take no modifier but :missing.
    assert_eq!(
        unknown_modifier(rt, &[("code-value-quantity:exact", "8480-6$1")]),
        Some("code-value-quantity")
    );
    let bp = blood_pressure();
    assert!(hit(
        rt,
        &bp,
        "component-code-value-quantity:missing",
        "false"
    ));
    assert!(hit(
        rt,
        &heart_rate(),
        "component-code-value-quantity:missing",
        "true"
    ));
    // A string component makes the clause one that could single a person out.
    let q = query(rt, &[("code-value-string", "x$costs")]);
    assert!(q.clauses[0].could_identify());
    let q = query(rt, &[("code-value-quantity", "x$5")]);
    assert!(!q.clauses[0].could_identify());
}
