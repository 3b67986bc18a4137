use super::*;

#[test]
fn token_string_reference_index_has_no_false_negatives() {
    let patients = [
        mueller(),
        json!({ "resourceType": "Patient", "id": "p2", "gender": "male", "name": [{ "text": "  Ærø   Œil ", "given": ["É"] }],
                "identifier": [{ "system": "urn:a", "value": "1" }, { "value": "2" }, { "system": "urn:b" }],
                "telecom": [{ "system": "email", "value": "X@Y.Z" }, { "system": "phone", "value": "(0) 1-2" }] }),
        json!({ "resourceType": "Patient" }),
    ];
    let queries: Vec<(&str, &str)> = vec![
        ("_id", "p1"),
        ("_id", "p2"),
        ("gender", "male"),
        ("gender", "|male"),
        ("gender", "x|male"),
        ("identifier", "1"),
        ("identifier", "urn:a|1"),
        ("identifier", "|2"),
        ("identifier", "urn:b|"),
        ("identifier", "urn:a|"),
        ("identifier", "2"),
        ("identifier", "urn:a|2"),
        ("email", "x@y.z"),
        ("email", "mailto|X@y.Z"),
        ("phone", "012"),
        ("phone", "0 1 2"),
        ("name", "a"),
        ("name", "aero oe"),
        ("name", "AERØ ŒIL"),
        ("name", "e"),
        ("name", "dr. anna müller"),
        ("name", "smith-jones"),
        ("name", "vanderbilt-worthington"),
        ("name", "vanderbilt-worthingtonian"),
        ("name:exact", "Dr. Anna Müller"),
        ("name:exact", "  Ærø   Œil "),
        ("name:exact", "Vanderbilt-Worthington"),
        ("name:exact", "Vanderbilt"),
        ("family:exact", "Smith-Jones"),
        ("given", "maria luisa"),
        ("given", "É"),
        ("name:contains", "orth"),
        ("gender:missing", "true"),
        ("gender:not", "female"),
        ("name:missing", "false"),
    ];
    let mut matched = 0;
    for patient in &patients {
        for (name, value) in &queries {
            let q = query(ResourceType::PATIENT, &[(name, value)]);
            if assert_sound(ResourceType::PATIENT, patient, &q.clauses[0]) {
                matched += 1;
            }
        }
    }
    assert!(matched >= 25, "{matched}");

    let rt = ResourceType::OBSERVATION;
    let observations = [
        heart_rate(),
        observation_with_subject("Group/g1"),
        observation_with_subject("https://x/fhir/Device/d1/_history/1"),
        observation_with_subject("Location/l1"),
    ];
    let reference_queries = [
        ("subject", "p1"),
        ("subject", "g1"),
        ("subject", "d1"),
        ("subject", "l1"),
        ("subject", "Device/d1"),
        ("subject:Group", "g1"),
        ("subject:Location", "l1"),
        ("patient", "p1"),
        ("code", "http://acme.org/codes|"),
        ("code", "|HR"),
        ("category", "http://acme.org/cat|"),
        ("status", "final"),
    ];
    for obs in &observations {
        for (name, value) in reference_queries {
            let q = query(rt, &[(name, value)]);
            assert_sound(rt, obs, &q.clauses[0]);
        }
    }
}

#[test]
fn index_keys_are_deterministic_and_deduplicated() {
    let rt = ResourceType::OBSERVATION;
    let mut obs = heart_rate();
    obs["category"] = json!([
        { "coding": [{ "system": "s", "code": "c" }] },
        { "coding": [{ "system": "s", "code": "c" }] }
    ]);
    let keys = index_keys(rt, &obs);
    assert_eq!(keys, index_keys(rt, &obs.clone()));
    let unique: BTreeSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    assert_eq!(keys_of(rt, &obs, "category"), ["c:c", "s:s"]);
    assert!(keys_of(rt, &obs, "_id").is_empty());
    assert_eq!(keys_of(rt, &obs, "patient"), ["r:Patient/p1"]);
    assert_eq!(keys_of(rt, &obs, "subject"), ["r:Patient/p1"]);
    assert_eq!(
        keys_of(rt, &obs, "code"),
        [
            "c:8867-4",
            "c:HR",
            "s:http://acme.org/codes",
            "s:http://loinc.org"
        ]
    );
    // Parameter order follows params().
    let order: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
    let mut expected_order = order.clone();
    expected_order.dedup();
    let defined: Vec<&str> = params(rt)
        .iter()
        .map(|d| d.name)
        .filter(|n| expected_order.contains(n))
        .collect();
    assert_eq!(expected_order, defined);
    // Garbage does not panic and yields nothing.
    for garbage in [
        json!(null),
        json!([1, 2]),
        json!("x"),
        json!({ "code": 5, "subject": [] }),
    ] {
        assert!(index_keys(rt, &garbage).is_empty(), "{garbage}");
    }
}

/// A parameter answered from another's rows (`ParamDef::stored_as`) has, on real data, no key
/// its host lacks: on every resource of the vendored carebundle sample (and of all of
/// `../shared/data/carebundle` when present), the guest's keys are among the host's.
#[test]
fn a_parameter_answered_from_another_s_rows_has_no_key_the_other_lacks() {
    use crate::search::index::param_index_keys;
    use crate::search::params::{param, params};
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/carebundle");
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/carebundle/bundles-40");
    let mut resources: Vec<Value> = Vec::new();
    for dir in [fixtures, shared] {
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for file in files
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        {
            let bundle: Value =
                serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                resources.push(entry["resource"].clone());
            }
        }
    }
    assert!(resources.len() > 100, "{} resources", resources.len());
    let mut checked = 0;
    for resource in &resources {
        let rtype = ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
        for guest in params(rtype).into_iter().filter(|d| d.stored_as != d.name) {
            let host = param(rtype, guest.stored_as).expect("the host is a parameter of the type");
            assert_eq!(
                host.stored_as, host.name,
                "{} is hosted by a guest",
                guest.name
            );
            let host_keys = param_index_keys(host, resource);
            for key in param_index_keys(guest, resource) {
                assert!(
                    host_keys.contains(&key),
                    "{rtype:?}.{} key {key} not in {}",
                    guest.name,
                    host.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 1000, "{checked} keys checked");
    // The hosts R4's definitions give.
    let host_of = |rt: ResourceType, name: &str| param(rt, name).unwrap().stored_as;
    assert_eq!(host_of(ResourceType::OBSERVATION, "patient"), "subject");
    assert_eq!(host_of(ResourceType::OBSERVATION, "code"), "combo-code");
    assert_eq!(
        host_of(ResourceType::OBSERVATION, "value-quantity"),
        "combo-value-quantity"
    );
    assert_eq!(host_of(ResourceType::OBSERVATION, "subject"), "subject");
    assert_eq!(host_of(ResourceType::PATIENT, "_id"), "_id");
    assert_eq!(host_of(ResourceType::PATIENT, "family"), "name");
    assert_eq!(host_of(ResourceType::PATIENT, "given"), "name");
    assert_eq!(host_of(ResourceType::PATIENT, "address-city"), "address");
    assert_eq!(
        host_of(ResourceType::PRACTITIONER, "address-postalcode"),
        "address"
    );
    // A member the host does not search is not covered.
    assert_eq!(host_of(ResourceType::PATIENT, "address-use"), "address-use");
}
