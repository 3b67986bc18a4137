use super::strings::{MAX_STRING_CHARS, MSG_CONTROL_CHARACTER};
use super::*;

/// One validator shared by all tests (creating and compiling is slow in debug builds).
fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::new().expect("vendored schema loads"))
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d",
        "meta": { "versionId": "1", "lastUpdated": "2024-03-01T12:30:00.000Z" },
        "text": {
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jane Doe</div>"
        },
        "extension": [{
            "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
            "valueCode": "F"
        }],
        "identifier": [{
            "system": "https://github.com/synthetichealth/synthea",
            "value": "8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d"
        }, {
            "type": {
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "MR",
                    "display": "Medical Record Number"
                }],
                "text": "Medical Record Number"
            },
            "system": "http://hospital.smarthealthit.org",
            "value": "MRN-0042"
        }],
        "active": true,
        "name": [{
            "use": "official",
            "family": "Doe",
            "given": ["Jane", "Q."],
            "prefix": ["Ms."]
        }],
        "telecom": [{ "system": "phone", "value": "555-0100", "use": "home" }],
        "gender": "female",
        "birthDate": "1984-07-12",
        "address": [{
            "line": ["12 Main Street", "Apt 3"],
            "city": "Springfield",
            "state": "MA",
            "postalCode": "01101",
            "country": "US",
            "extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                "extension": [
                    { "url": "latitude", "valueDecimal": 42.1015 },
                    { "url": "longitude", "valueDecimal": -72.5898 }
                ]
            }]
        }],
        "maritalStatus": {
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                "code": "M",
                "display": "Married"
            }]
        },
        "multipleBirthBoolean": false,
        "communication": [{
            "language": {
                "coding": [{ "system": "urn:ietf:bcp:47", "code": "en-US" }]
            }
        }]
    })
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "obs-bp-1",
        "status": "final",
        "category": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
                "display": "vital-signs"
            }]
        }],
        "code": {
            "coding": [{
                "system": "http://loinc.org",
                "code": "85354-9",
                "display": "Blood pressure panel with all children optional"
            }],
            "text": "Blood pressure"
        },
        "subject": { "reference": "Patient/8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d" },
        "encounter": { "reference": "Encounter/enc-1" },
        "effectiveDateTime": "2024-03-01T09:15:00-05:00",
        "issued": "2024-03-01T09:15:00.123-05:00",
        "component": [{
            "code": {
                "coding": [{ "system": "http://loinc.org", "code": "8462-4" }]
            },
            "valueQuantity": {
                "value": 82,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]"
            }
        }, {
            "code": {
                "coding": [{ "system": "http://loinc.org", "code": "8480-6" }]
            },
            "valueQuantity": {
                "value": 128.5,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]"
            }
        }]
    })
}

fn bundle() -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "fullUrl": "urn:uuid:8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d",
            "resource": patient(),
            "request": { "method": "PUT", "url": "Patient/8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d" }
        }, {
            "fullUrl": "urn:uuid:0b8e3c55-0d0e-4bb4-9a40-7c0f0f6d1e11",
            "resource": observation(),
            "request": { "method": "POST", "url": "Observation" }
        }, {
            "resource": {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active"
                    }]
                },
                "code": {
                    "coding": [{ "system": "http://snomed.info/sct", "code": "44054006" }],
                    "text": "Diabetes mellitus type 2"
                },
                "subject": { "reference": "urn:uuid:8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d" },
                "onsetDateTime": "2015-06-01"
            },
            "request": { "method": "POST", "url": "Condition" }
        }]
    })
}

fn issues(rt: ResourceType, resource: &Value) -> Vec<Issue> {
    validator()
        .validate(rt, resource)
        .expect_err("expected validation issues")
}

fn has(issues: &[Issue], location: &str, message: &str) -> bool {
    issues
        .iter()
        .any(|i| i.location == location && i.message == message)
}

#[test]
fn validator_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Validator>();
}

#[test]
fn accepts_realistic_resources() {
    assert_eq!(
        validator().validate(ResourceType::PATIENT, &patient()),
        Ok(())
    );
    assert_eq!(
        validator().validate(ResourceType::OBSERVATION, &observation()),
        Ok(())
    );
    assert_eq!(
        validator().validate(ResourceType::BUNDLE, &bundle()),
        Ok(())
    );
}

#[test]
fn accepts_minimal_resources() {
    assert_eq!(
        validator().validate(PATIENT_RT, &json!({"resourceType": "Patient"})),
        Ok(())
    );
    let basic = json!({"resourceType": "Basic", "code": {"text": "x"}});
    let rt = ResourceType::parse("Basic").expect("R4 type");
    assert_eq!(validator().validate(rt, &basic), Ok(()));
}

const PATIENT_RT: ResourceType = ResourceType::PATIENT;

#[test]
fn rejects_wrong_type_for_a_field() {
    let mut p = patient();
    p["name"][0]["given"][1] = json!(42);
    p["active"] = json!("yes");
    let found = issues(PATIENT_RT, &p);
    assert!(
        has(
            &found,
            "Patient.name[0].given[1]",
            "wrong type: expected string"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, "Patient.active", "wrong type: expected boolean"),
        "{found:?}"
    );
}

#[test]
fn rejects_array_where_object_expected() {
    let mut o = observation();
    o["code"] = json!([{ "text": "Blood pressure" }]);
    let found = issues(ResourceType::OBSERVATION, &o);
    assert!(
        has(&found, "Observation.code", "wrong type: expected object"),
        "{found:?}"
    );
}

#[test]
fn rejects_object_where_array_expected() {
    let mut p = patient();
    p["name"] = json!({ "family": "Doe" });
    let found = issues(PATIENT_RT, &p);
    assert!(
        has(&found, "Patient.name", "wrong type: expected array"),
        "{found:?}"
    );
}

#[test]
fn accepts_primitive_extensions_with_null_placeholders() {
    let mut p = patient();
    p["name"][0]["_given"] = json!([null, {
        "extension": [{ "url": "http://example.org/initial", "valueBoolean": true }]
    }]);
    p["_birthDate"] = json!({
        "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                        "valueDateTime": "1984-07-12T14:35:45-05:00" }]
    });
    assert_eq!(validator().validate(PATIENT_RT, &p), Ok(()));
    p["_birthDate"] = json!(null);
    let found = issues(PATIENT_RT, &p);
    assert!(
        has(&found, "Patient._birthDate", "wrong type: expected object"),
        "{found:?}"
    );
}

#[test]
fn narrative_div_must_be_a_string() {
    let mut p = patient();
    p["text"]["div"] = json!({ "p": "Jane" });
    let found = issues(PATIENT_RT, &p);
    assert!(
        has(&found, "Patient.text.div", "wrong type: expected string"),
        "{found:?}"
    );
}

#[test]
fn validates_concurrently_while_compiling_lazily() {
    let fresh = Validator::new().expect("loads");
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..10 {
                    assert_eq!(fresh.validate(PATIENT_RT, &patient()), Ok(()));
                    assert_eq!(
                        fresh.validate(ResourceType::OBSERVATION, &observation()),
                        Ok(())
                    );
                }
            });
        }
    });
    assert!(format!("{fresh:?}").contains("compiled_types: 2"));
}

#[test]
fn rejects_unknown_element() {
    let mut p = patient();
    p["favouriteColour"] = json!("blue");
    p["name"][0]["nickname"] = json!("JD");
    let found = issues(PATIENT_RT, &p);
    assert!(
        has(&found, "Patient.favouriteColour", "unknown element"),
        "{found:?}"
    );
    assert!(
        has(&found, "Patient.name[0].nickname", "unknown element"),
        "{found:?}"
    );
}

#[test]
fn rejects_medplum_only_elements() {
    let mut p = patient();
    p["meta"]["project"] = json!({ "reference": "Project/1" });
    p["managingOrganization"] = json!({
        "reference": "Organization/1",
        "resource": { "resourceType": "Organization" }
    });
    let found = issues(PATIENT_RT, &p);
    assert!(
        has(&found, "Patient.meta.project", "unknown element"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "Patient.managingOrganization.resource",
            "unknown element"
        ),
        "{found:?}"
    );
}

#[test]
fn rejects_bad_date_format() {
    for bad in [
        "12/07/1984",
        "1984-13-01",
        "1984-07-12T10:00:00Z",
        "84-07-12",
        "",
    ] {
        let mut p = patient();
        p["birthDate"] = json!(bad);
        let found = issues(PATIENT_RT, &p);
        assert_eq!(
            found,
            vec![Issue {
                location: "Patient.birthDate".into(),
                message: "does not match the required pattern for date".into(),
            }],
            "{bad}"
        );
    }
}

#[test]
fn rejects_bad_datetime_and_code() {
    let mut o = observation();
    o["effectiveDateTime"] = json!("2024-03-01T09:15"); // time without seconds and zone
    o["status"] = json!("done");
    let found = issues(ResourceType::OBSERVATION, &o);
    assert!(
        has(
            &found,
            "Observation.effectiveDateTime",
            "does not match the required pattern for dateTime"
        ),
        "{found:?}"
    );
    assert!(
        found.iter().any(|i| i.location == "Observation.status"
            && i.message.starts_with(
                "value is not one of the allowed values (registered, preliminary, final"
            )),
        "{found:?}"
    );
}

#[test]
fn rejects_missing_required_element() {
    let mut o = observation();
    if let Some(object) = o.as_object_mut() {
        object.remove("code");
    }
    let found = issues(ResourceType::OBSERVATION, &o);
    assert!(
        has(&found, "Observation", "required element missing: code"),
        "{found:?}"
    );
}

#[test]
fn rejects_resource_type_mismatch() {
    let found = issues(ResourceType::OBSERVATION, &patient());
    assert_eq!(
        found,
        vec![Issue {
            location: "Observation.resourceType".into(),
            message: "wrong resource type: expected Observation".into(),
        }]
    );
    let found = issues(PATIENT_RT, &json!({ "resourceType": 7 }));
    assert!(has(
        &found,
        "Patient.resourceType",
        "wrong resource type: expected Patient"
    ));
}

#[test]
fn rejects_missing_resource_type_and_non_objects() {
    let found = issues(PATIENT_RT, &json!({ "gender": "female" }));
    assert!(
        has(&found, "Patient", "required element missing: resourceType"),
        "{found:?}"
    );
    for value in [json!([]), json!("Patient"), json!(null), json!(1)] {
        let found = issues(PATIENT_RT, &value);
        assert!(
            has(&found, "Patient", "wrong type: expected object"),
            "{found:?}"
        );
    }
}

#[test]
fn validates_resources_inside_a_bundle() {
    let mut b = bundle();
    b["entry"][1]["resource"]["issued"] = json!(3);
    b["entry"][0]["resource"]["birthDate"] = json!("July 1984");
    let found = issues(ResourceType::BUNDLE, &b);
    assert!(
        has(
            &found,
            "Bundle.entry[1].resource.issued",
            "wrong type: expected string"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "Bundle.entry[0].resource.birthDate",
            "does not match the required pattern for date"
        ),
        "{found:?}"
    );
}

#[test]
fn refuses_medplum_and_unknown_types_inside_a_bundle() {
    let mut b = bundle();
    b["entry"][0]["resource"] = json!({ "resourceType": "Project", "name": "x" });
    b["entry"][1]["resource"] = json!({ "resourceType": "CANARY-7f3a-SMITH" });
    b["entry"][2]["resource"] = json!({ "name": "no type" });
    let found = issues(ResourceType::BUNDLE, &b);
    assert!(
        has(
            &found,
            "Bundle.entry[0].resource.resourceType",
            "unknown resource type"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "Bundle.entry[1].resource.resourceType",
            "unknown resource type"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "Bundle.entry[2].resource",
            "required element missing: resourceType"
        ),
        "{found:?}"
    );
    assert!(!format!("{found:?}").contains("CANARY"));
}

#[test]
fn validates_contained_and_nested_resources() {
    let mut o = observation();
    o["contained"] = json!([{ "resourceType": "Patient", "id": "p1", "birthDate": 1984 }]);
    let found = issues(ResourceType::OBSERVATION, &o);
    assert!(
        has(
            &found,
            "Observation.contained[0].birthDate",
            "wrong type: expected string"
        ),
        "{found:?}"
    );

    let params = json!({
        "resourceType": "Parameters",
        "parameter": [{
            "name": "outer",
            "part": [{ "name": "inner", "resource": { "resourceType": "Patient", "active": "no" } }]
        }]
    });
    let found = issues(ResourceType::PARAMETERS, &params);
    assert!(
        has(
            &found,
            "Parameters.parameter[0].part[0].resource.active",
            "wrong type: expected boolean"
        ),
        "{found:?}"
    );

    let mut inner = bundle();
    inner["entry"][0]["resource"]["birthDate"] = json!(false);
    let outer =
        json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": inner }] });
    let found = issues(ResourceType::BUNDLE, &outer);
    assert!(
        has(
            &found,
            "Bundle.entry[0].resource.entry[0].resource.birthDate",
            "wrong type: expected string"
        ),
        "{found:?}"
    );
}

#[test]
fn deeply_embedded_resources_are_refused() {
    let mut resource = json!({ "resourceType": "Patient" });
    for _ in 0..(MAX_EMBEDDING + 2) {
        resource = json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": resource }] });
    }
    let found = issues(ResourceType::BUNDLE, &resource);
    assert!(
        found
            .iter()
            .any(|i| i.message == "resources embedded too deeply"),
        "{found:?}"
    );
}

#[test]
fn reports_at_most_twenty_issues() {
    let mut p = patient();
    let names: Vec<Value> = (0..100).map(|i| json!({ "given": [i] })).collect();
    p["name"] = Value::Array(names);
    let found = issues(PATIENT_RT, &p);
    assert_eq!(found.len(), MAX_ISSUES);
}

#[test]
fn canary_in_invalid_values_never_appears_in_issues() {
    const CANARY: &str = "CANARY-7f3a-SMITH";
    let mut p = patient();
    p["birthDate"] = json!(CANARY);
    p["gender"] = json!(CANARY);
    p["active"] = json!(CANARY);
    p["id"] = json!(format!("{CANARY} with spaces"));
    p["name"][0]["family"] = json!([CANARY]);
    p["name"][0]["given"] = json!(CANARY);
    p["telecom"][0]["system"] = json!(CANARY);
    p["resourceType"] = json!("Patient");
    p["address"][0]["line"] = json!({ CANARY: CANARY });
    p["extension"][0]["url"] = json!({ "v": CANARY });
    let found = issues(PATIENT_RT, &p);
    assert!(found.len() >= 8, "{found:?}");
    let text = serde_json::to_string(&found).expect("serializable");
    assert!(!text.contains("CANARY"), "{text}");
    assert!(!text.contains("SMITH"), "{text}");
    assert!(!format!("{found:?}").contains("CANARY"));
    let mismatch = issues(
        ResourceType::OBSERVATION,
        &json!({ "resourceType": CANARY }),
    );
    assert!(!format!("{mismatch:?}").contains("CANARY"));
}

#[test]
fn canary_in_unknown_element_names_never_appears_in_issues() {
    const CANARY: &str = "CANARY-7f3a-SMITH";
    let mut p = patient();
    p[CANARY] = json!(1);
    p["name"][0][CANARY] = json!({ CANARY: CANARY });
    p["name"][0]["given dob 1984"] = json!(1);
    p["address"][0]["ünïcode"] = json!(1);
    let found = issues(PATIENT_RT, &p);
    let text = serde_json::to_string(&found).expect("serializable");
    assert!(!text.contains("CANARY"), "{text}");
    assert!(!text.contains("1984"), "{text}");
    assert!(!text.contains("code"), "{text}");
    assert!(has(&found, "Patient", "unknown element"), "{found:?}");
    assert!(
        has(&found, "Patient.name[0]", "unknown element"),
        "{found:?}"
    );
    assert!(
        has(&found, "Patient.address[0]", "unknown element"),
        "{found:?}"
    );
}

#[test]
fn canary_inside_embedded_resources_never_appears_in_issues() {
    const CANARY: &str = "CANARY-7f3a-SMITH";
    let mut b = bundle();
    b["entry"][0]["resource"]["birthDate"] = json!(CANARY);
    b["entry"][0]["resource"][CANARY] = json!(CANARY);
    b["entry"][1]["resource"]["contained"] = json!([{ "resourceType": CANARY }, CANARY]);
    let found = issues(ResourceType::BUNDLE, &b);
    assert!(found.len() >= 3, "{found:?}");
    assert!(!format!("{found:?}").contains("CANARY"));
}

#[test]
fn plain_names() {
    for ok in ["a", "_", "given", "_birthDate", "A1_b2", &"a".repeat(64)] {
        assert!(is_plain_name(ok), "{ok}");
    }
    for bad in [
        "",
        "1a",
        "a-b",
        "a b",
        "a.b",
        "é",
        "CANARY-7f3a-SMITH",
        &"a".repeat(65),
    ] {
        assert!(!is_plain_name(bad), "{bad}");
    }
}

#[test]
fn every_resource_type_compiles() {
    let started = std::time::Instant::now();
    validator().compile_all().expect("every R4 type compiles");
    println!(
        "compile_all (remaining types, debug build): {:?}",
        started.elapsed()
    );
    for rt in ResourceType::all() {
        let minimal = json!({ "resourceType": rt.as_str() });
        // Only required-element issues are acceptable for a bare resource.
        if let Err(found) = validator().validate(rt, &minimal) {
            assert!(
                found.iter().all(|i| i.message.starts_with(MSG_REQUIRED)),
                "{rt}: {found:?}"
            );
        }
    }
}

#[test]
fn timing_report() {
    let started = std::time::Instant::now();
    let fresh = Validator::new().expect("loads");
    let loaded = started.elapsed();
    let started = std::time::Instant::now();
    fresh.warm_up();
    let warmed = started.elapsed();
    println!(
        "Validator::new: {loaded:?}, warm_up: {warmed:?} (debug build; see examples/validator_timing.rs)"
    );
    assert_eq!(fresh.validate(PATIENT_RT, &patient()), Ok(()));
}

#[test]
fn strings_over_a_megabyte_or_with_control_characters_are_refused_by_element() {
    let long = "a".repeat(MAX_STRING_CHARS + 1);
    let mut resource = patient();
    resource["name"][0]["family"] = json!(long);
    resource["name"][0]["given"] = json!(["Nul\u{0}", "Bell\u{7}", "tab\tline\nreturn\r"]);
    let found = issues(PATIENT_RT, &resource);
    let too_long = format!("{MSG_STRING_TOO_LONG}: at most {MAX_STRING_CHARS} characters");
    let control =
        format!("{MSG_CONTROL_CHARACTER}: only tab, line feed and carriage return are allowed");
    assert!(
        has(&found, "Patient.name[0].family", &too_long),
        "{found:?}"
    );
    assert!(
        has(&found, "Patient.name[0].given[0]", &control),
        "{found:?}"
    );
    assert!(
        has(&found, "Patient.name[0].given[1]", &control),
        "{found:?}"
    );
    assert!(
        !found
            .iter()
            .any(|i| i.location == "Patient.name[0].given[2]"),
        "tab, line feed and carriage return are allowed: {found:?}"
    );
    assert!(
        found
            .iter()
            .all(|i| !i.message.contains("Nul") && i.message.len() < 200)
    );

    // Exactly the limit passes; so does a larger base64Binary `data` element.
    let mut at_limit = patient();
    at_limit["name"][0]["family"] = json!("a".repeat(MAX_STRING_CHARS));
    assert_eq!(validator().validate(PATIENT_RT, &at_limit), Ok(()));
    let mut photo = patient();
    photo["photo"] =
        json!([{"contentType": "image/png", "data": "QUFB".repeat(MAX_STRING_CHARS / 4 + 1)}]);
    assert_eq!(validator().validate(PATIENT_RT, &photo), Ok(()));
}
