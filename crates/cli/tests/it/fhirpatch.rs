//! FHIRPath Patch (#19): `PATCH /fhir/{type}/{id}` with a `Parameters` body, stored like a JSON
//! Patch result (validated, authorized, `If-Match`), atomic, and refused without echoing the
//! request.

use carevault_testkit::{Api, Reply};
use serde_json::{Value, json};

use crate::server;

const CANARY: &str = "CANARY-fhirpatch-7f3a";

fn op(kind: &str, path: &str, more: Value) -> Value {
    let mut parts = vec![
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "path", "valueString": path}),
    ];
    parts.extend(more.as_array().cloned().unwrap_or_default());
    json!({"name": "operation", "part": parts})
}

fn fhirpath_patch(api: &Api, path: &str, ops: Vec<Value>, extra: &[(&str, &str)]) -> Reply {
    let body = json!({"resourceType": "Parameters", "parameter": ops});
    let bytes = serde_json::to_vec(&body).unwrap();
    let mut headers = vec![("Content-Type", "application/fhir+json")];
    headers.extend_from_slice(extra);
    api.request("PATCH", path, &headers, Some(&bytes))
}

#[test]
fn fhirpath_patch_applies_in_order_and_a_failure_changes_nothing() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.fhirpatch", &["clinician"], Some("org-a"));
    let other = srv.user(&admin, "dr.fp-elsewhere", &["clinician"], Some("org-b"));
    let api = &clin.api;
    let mut patient = crate::patient("Chalmers", "Peter");
    patient["telecom"] = json!([{"system": "phone", "value": "555-0100"},
                                {"system": "email", "value": "p@example.org"}]);
    let r = api.post_fhir("/fhir/Patient", &patient);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/fhir/Patient/{id}");

    let r = fhirpath_patch(
        api,
        &path,
        vec![
            op(
                "replace",
                "Patient.telecom.where(system='phone').value",
                json!([{"name": "value", "valueString": "555-0199"}]),
            ),
            op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "identifier"},
                       {"name": "value", "valueIdentifier": {"system": "urn:mrn", "value": "A1"}}]),
            ),
            op(
                "insert",
                "Patient.name[0].given",
                json!([{"name": "index", "valueInteger": 0},
                       {"name": "value", "valueString": "James"}]),
            ),
            op(
                "move",
                "Patient.telecom",
                json!([{"name": "source", "valueInteger": 1},
                       {"name": "destination", "valueInteger": 0}]),
            ),
            op("delete", "Patient.birthDate", json!([])),
        ],
        &[("If-Match", "W/\"1\"")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let patched = api.get(&path).json();
    assert_eq!(patched["meta"]["versionId"], "2");
    assert_eq!(patched["telecom"][0]["system"], "email");
    assert_eq!(patched["telecom"][1]["value"], "555-0199");
    assert_eq!(
        patched["identifier"],
        json!([{"system": "urn:mrn", "value": "A1"}])
    );
    assert_eq!(patched["name"][0]["given"], json!(["James", "Peter"]));
    assert!(patched.get("birthDate").is_none(), "{patched}");

    // A later operation fails: the earlier one is not stored either, and neither the path nor
    // the value comes back or reaches the log.
    let r = fhirpath_patch(
        api,
        &path,
        vec![
            op(
                "replace",
                "Patient.gender",
                json!([{"name": "value", "valueCode": "other"}]),
            ),
            op(
                "replace",
                &format!("Patient.telecom.where(system='{CANARY}').value"),
                json!([{"name": "value", "valueString": CANARY}]),
            ),
        ],
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.diagnostics().contains("operation 1 failed"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains(CANARY), "{}", r.text());
    // More than one element selected where one is needed.
    let r = fhirpath_patch(
        api,
        &path,
        vec![op("delete", "Patient.telecom", json!([]))],
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.diagnostics().contains("more than one"), "{}", r.text());
    // Stale If-Match, an invalid result, an unsupported path, another organization's caller.
    let gender = |code: &str| {
        vec![op(
            "replace",
            "Patient.gender",
            json!([{"name": "value", "valueCode": code}]),
        )]
    };
    let r = fhirpath_patch(api, &path, gender("other"), &[("If-Match", "W/\"1\"")]);
    assert_eq!(r.status, 412, "{}", r.text());
    let r = fhirpath_patch(api, &path, gender("banana"), &[]);
    assert_eq!(r.status, 422, "{}", r.text());
    let r = fhirpath_patch(
        api,
        &path,
        vec![op("delete", "Patient.name.exists()", json!([]))],
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = fhirpath_patch(&other.api, &path, gender("other"), &[]);
    assert!(
        r.status == 403 || r.status == 404,
        "{}: {}",
        r.status,
        r.text()
    );

    // Neither format: a JSON Patch sent as FHIR JSON, a FHIR resource that is not Parameters,
    // another media type. Each message names both formats.
    let array = serde_json::to_vec(&json!([{"op": "remove", "path": "/name"}])).unwrap();
    let not_params = serde_json::to_vec(&crate::patient("X", "Y")).unwrap();
    for (media, body, status) in [
        ("application/fhir+json", &array, 400),
        ("application/json", &not_params, 400),
        ("text/plain", &array, 415),
    ] {
        let r = api.request("PATCH", &path, &[("Content-Type", media)], Some(body));
        assert_eq!(r.status, status, "{media}: {}", r.text());
        let text = r.diagnostics();
        assert!(
            text.contains("JSON Patch") && text.contains("Parameters"),
            "{media}: {text}"
        );
    }

    let now = api.get(&path).json();
    assert_eq!(
        now["meta"]["versionId"], "2",
        "every refusal left version 2"
    );
    assert_eq!(now["gender"], "female");
    assert!(!srv.logs().contains(CANARY), "a log line holds the canary");
}
