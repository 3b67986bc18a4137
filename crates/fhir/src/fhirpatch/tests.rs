use serde_json::{Value, json};

use super::path::{Literal, Path, Step};
use super::*;

fn op(kind: &str, path: &str, more: Value) -> Value {
    let mut parts = vec![
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "path", "valueString": path}),
    ];
    parts.extend(more.as_array().cloned().unwrap_or_default());
    json!({"name": "operation", "part": parts})
}

fn params(ops: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": ops})
}

fn patched(doc: Value, ops: Vec<Value>) -> Result<Value, FhirPatchError> {
    let mut doc = doc;
    FhirPatch::parse(&params(ops))?.apply(&mut doc, 1 << 20)?;
    Ok(doc)
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "id": "p1",
        "identifier": [{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "2"},
                       {"system": "urn:a", "value": "3"}],
        "name": [{"family": "Chalmers", "given": ["Peter"]}],
        "telecom": [{"system": "phone", "value": "555-1"}, {"system": "email", "value": "p@x"}],
        "birthDate": "1974-12-25"})
}

#[test]
fn add_appends_to_a_list_creates_one_and_sets_a_single_element() {
    let out = patched(
        json!({"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}]}),
        vec![
            op(
                "add",
                "Patient.name[0]",
                json!([{"name": "name", "valueString": "given"},
                       {"name": "value", "valueString": "James"}]),
            ),
            op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "identifier"},
                       {"name": "value", "valueIdentifier": {"system": "urn:a", "value": "7"}}]),
            ),
            op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "birthDate"},
                       {"name": "value", "valueDate": "1974-12-25"}]),
            ),
            // A choice element named without its type takes the value's.
            op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "deceased"},
                       {"name": "value", "valueBoolean": false}]),
            ),
        ],
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"resourceType": "Patient",
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
            "identifier": [{"system": "urn:a", "value": "7"}],
            "birthDate": "1974-12-25", "deceasedBoolean": false})
    );
}

#[test]
fn add_assembles_a_complex_value_from_parts_with_the_schemas_lists() {
    let out = patched(
        json!({"resourceType": "Patient"}),
        vec![op(
            "add",
            "Patient",
            json!([{"name": "name", "valueString": "contact"},
                   {"name": "value", "part": [
                       {"name": "name", "part": [
                           {"name": "family", "valueString": "Doe"},
                           {"name": "given", "valueString": "Jane"}]},
                       {"name": "relationship", "valueCodeableConcept": {"text": "mother"}}]}]),
        )],
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"resourceType": "Patient", "contact": [{
            "name": {"family": "Doe", "given": ["Jane"]},
            "relationship": [{"text": "mother"}]}]})
    );
}

#[test]
fn insert_puts_the_value_at_the_index_and_refuses_one_past_the_end() {
    let ins = |index: u64| {
        op(
            "insert",
            "Patient.identifier",
            json!([{"name": "index", "valueInteger": index},
                   {"name": "value", "valueIdentifier": {"system": "urn:c", "value": "9"}}]),
        )
    };
    let out = patched(patient(), vec![ins(1)]).unwrap();
    let systems: Vec<&str> = out["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["system"].as_str().unwrap())
        .collect();
    assert_eq!(systems, ["urn:a", "urn:c", "urn:b", "urn:a"]);
    assert_eq!(
        patched(patient(), vec![ins(3)]).unwrap()["identifier"][3]["system"],
        "urn:c"
    );
    assert_eq!(
        patched(patient(), vec![ins(4)]).unwrap_err(),
        FhirPatchError::Failed {
            index: 0,
            reason: "its index is outside the list"
        }
    );
    // Into a list not there yet, at 0.
    let out = patched(json!({"resourceType": "Patient"}), vec![ins(0)]).unwrap();
    assert_eq!(
        out["identifier"],
        json!([{"system": "urn:c", "value": "9"}])
    );
}

#[test]
fn delete_removes_one_element_and_a_list_it_empties() {
    let out = patched(
        patient(),
        vec![
            op("delete", "Patient.telecom.where(system='phone')", json!([])),
            op("delete", "Patient.birthDate", json!([])),
            op("delete", "Patient.name[0].given[0]", json!([])),
            // Nothing selected: nothing to do.
            op("delete", "Patient.gender", json!([])),
        ],
    )
    .unwrap();
    assert_eq!(out["telecom"], json!([{"system": "email", "value": "p@x"}]));
    assert!(out.get("birthDate").is_none());
    assert_eq!(out["name"], json!([{"family": "Chalmers"}]));
    // The name's last element goes: so does the name, and the list it was the only item of.
    let out = patched(
        patient(),
        vec![
            op("delete", "Patient.name.given", json!([])),
            op("delete", "Patient.name.family", json!([])),
        ],
    )
    .unwrap();
    assert!(out.get("name").is_none(), "{out}");
    assert_eq!(
        patched(
            patient(),
            vec![op(
                "delete",
                "Patient.identifier.where(system='urn:a')",
                json!([])
            )]
        )
        .unwrap_err(),
        FhirPatchError::Failed {
            index: 0,
            reason: "its path selects more than one element"
        }
    );
}

#[test]
fn replace_sets_the_one_element_selected() {
    let out = patched(
        patient(),
        vec![
            op(
                "replace",
                "Patient.birthDate",
                json!([{"name": "value", "valueDate": "1930-01-01"}]),
            ),
            op(
                "replace",
                "Patient.identifier.where(system = 'urn:a' and value = '3').value",
                json!([{"name": "value", "valueString": "4"}]),
            ),
            op(
                "replace",
                "Patient.identifier.where(system='urn:a').first()",
                json!([{"name": "value", "part": [
                    {"name": "system", "valueUri": "urn:z"},
                    {"name": "value", "valueString": "0"}]}]),
            ),
        ],
    )
    .unwrap();
    assert_eq!(out["birthDate"], "1930-01-01");
    assert_eq!(
        out["identifier"][0],
        json!({"system": "urn:z", "value": "0"})
    );
    assert_eq!(
        out["identifier"][2],
        json!({"system": "urn:a", "value": "4"})
    );
    assert_eq!(
        patched(
            patient(),
            vec![op(
                "replace",
                "Patient.gender",
                json!([{"name": "value", "valueCode": "male"}])
            )]
        )
        .unwrap_err(),
        FhirPatchError::Failed {
            index: 0,
            reason: "its path selects nothing"
        }
    );
}

#[test]
fn move_reorders_a_list() {
    let out = patched(
        patient(),
        vec![op(
            "move",
            "Patient.identifier",
            json!([{"name": "source", "valueInteger": 0},
                   {"name": "destination", "valueInteger": 2}]),
        )],
    )
    .unwrap();
    let values: Vec<&str> = out["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["2", "3", "1"]);
    let err = patched(
        patient(),
        vec![op(
            "move",
            "Patient.identifier",
            json!([{"name": "source", "valueInteger": 3},
                   {"name": "destination", "valueInteger": 0}]),
        )],
    )
    .unwrap_err();
    assert_eq!(
        err,
        FhirPatchError::Failed {
            index: 0,
            reason: "its source or destination is outside the list"
        }
    );
}

#[test]
fn paths_parse_to_the_supported_subset_only() {
    assert_eq!(
        Path::parse("Patient.telecom.where(system = 'ph\\'one' and rank = 1).first()")
            .unwrap()
            .steps,
        vec![
            Step::Member("telecom".into()),
            Step::Where(vec![
                ("system".into(), Literal::String("ph'one".into())),
                ("rank".into(), Literal::Integer(1))
            ]),
            Step::First
        ]
    );
    for bad in [
        "",
        "Patient.name.exists()",
        "Patient.name[",
        "Patient.name[99999999999999999999999]",
        "Patient.name.where(family != 'x')",
        "Patient..name",
        "Patient.name | Patient.telecom",
    ] {
        assert!(Path::parse(bad).is_none(), "{bad}");
    }
    assert!(Path::parse(&"Patient.name".repeat(300)).is_none());
    // A choice element named without its type; a huge index selects nothing.
    let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 1}});
    let out = patched(
        obs,
        vec![op(
            "replace",
            "Observation.value.value",
            json!([{"name": "value", "valueDecimal": 2}]),
        )],
    )
    .unwrap();
    assert_eq!(out["valueQuantity"]["value"], 2);
    assert_eq!(
        patched(
            patient(),
            vec![op("delete", "Patient.name[4000000000]", json!([]))]
        )
        .unwrap(),
        patient()
    );
}

#[test]
fn failures_name_the_operation_never_the_value_or_path() {
    let err = patched(
        patient(),
        vec![
            op("delete", "Patient.birthDate", json!([])),
            op(
                "replace",
                "Observation.CANARYPATH",
                json!([{"name": "value", "valueString": "CANARY-VALUE"}]),
            ),
        ],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "FHIRPath Patch operation 1 failed: its path does not start with the resource's type"
    );
    let err = patched(
        patient(),
        vec![op(
            "replace",
            "Patient.name.CANARY(",
            json!([{"name": "value", "valueString": "CANARY"}]),
        )],
    )
    .unwrap_err();
    assert!(!err.to_string().contains("CANARY"), "{err}");
    assert_eq!(
        patched(patient(), vec![op("frobnicate", "Patient.name", json!([]))]).unwrap_err(),
        FhirPatchError::Invalid {
            index: 0,
            reason: "its type is not add, insert, delete, replace or move"
        }
    );
    assert!(matches!(
        patched(patient(), vec![op("add", "Patient", json!([]))]).unwrap_err(),
        FhirPatchError::Invalid { index: 0, .. }
    ));
    assert_eq!(
        FhirPatch::parse(&json!([{"op": "remove", "path": "/a"}])).unwrap_err(),
        FhirPatchError::Malformed
    );
    assert_eq!(
        FhirPatch::parse(&params(vec![])).unwrap_err(),
        FhirPatchError::Empty
    );
    let many = vec![op("delete", "Patient.gender", json!([])); MAX_OPERATIONS + 1];
    assert_eq!(
        FhirPatch::parse(&params(many)).unwrap_err(),
        FhirPatchError::TooMany {
            limit: MAX_OPERATIONS
        }
    );
}

#[test]
fn deeply_nested_parts_and_an_oversized_result_are_refused() {
    let mut value = json!({"name": "value", "valueString": "x"});
    for _ in 0..40 {
        value = json!({"name": "value", "part": [value]});
    }
    let err = patched(
        patient(),
        vec![op(
            "add",
            "Patient",
            json!([{"name": "name", "valueString": "extension"}, value]),
        )],
    )
    .unwrap_err();
    assert_eq!(
        err,
        FhirPatchError::Invalid {
            index: 0,
            reason: "its value's parts nest too deeply"
        }
    );
    let mut doc = patient();
    let patch = FhirPatch::parse(&params(vec![op(
        "replace",
        "Patient.birthDate",
        json!([{"name": "value", "valueString": "x".repeat(2000)}]),
    )]))
    .unwrap();
    assert_eq!(
        patch.apply(&mut doc, 1000).unwrap_err(),
        FhirPatchError::TooLarge { limit: 1000 }
    );
}

#[test]
fn contained_resources_are_typed_by_their_own_resource_type() {
    let doc = json!({"resourceType": "Patient",
        "contained": [{"resourceType": "Practitioner", "id": "d1"}]});
    let out = patched(
        doc,
        vec![op(
            "add",
            "Patient.contained[0]",
            json!([{"name": "name", "valueString": "name"},
                   {"name": "value", "part": [{"name": "given", "valueString": "Ann"}]}]),
        )],
    )
    .unwrap();
    assert_eq!(out["contained"][0]["name"], json!([{"given": ["Ann"]}]));
}
