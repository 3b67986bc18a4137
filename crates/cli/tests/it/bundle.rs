//! Transaction and batch Bundles: all-or-nothing with `urn:uuid:` references resolved,
//! conditional operations, per-entry authorization and audit, size limits, and real-world data
//! from an independent generator.

use carevault_testkit::Api;
use serde_json::{Value, json};

use crate::{observation, server};

pub(crate) fn post_bundle(api: &Api, bundle: &Value) -> carevault_testkit::Reply {
    let bytes = serde_json::to_vec(bundle).unwrap();
    api.request(
        "POST",
        "/fhir",
        &[("Content-Type", "application/fhir+json")],
        Some(&bytes),
    )
}

pub(crate) fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn count(srv: &carevault_testkit::TestServer, sql: &str) -> i64 {
    srv.query_i64(sql)
}

pub(crate) fn patient_entry(uuid: &str, family: &str) -> Value {
    json!({"fullUrl": format!("urn:uuid:{uuid}"),
           "resource": {"resourceType": "Patient", "name": [{"family": family}], "identifier": [{"system": "urn:mrn", "value": family}],
                        "managingOrganization": {"reference": "Organization/org-a"}},
           "request": {"method": "POST", "url": "Patient"}})
}

fn obs_entry(subject: &str, note: &str) -> Value {
    let mut o = observation("x", note);
    o["subject"] = json!({"reference": subject});
    json!({"resource": o, "request": {"method": "POST", "url": "Observation"}})
}

#[test]
fn transactions_are_all_or_nothing_and_name_the_failing_entry() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.bundle", &["clinician"], Some("org-a"));
    let other = srv.user(&admin, "dr.other", &["clinician"], Some("org-b"));
    let db = &srv;

    // urn:uuid references between entries are resolved.
    let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let mut entries = vec![patient_entry(uuid, "Bundleton")];
    for i in 0..3 {
        entries.push(obs_entry(&format!("urn:uuid:{uuid}"), &format!("n{i}")));
    }
    let ok = post_bundle(&clin.api, &transaction(entries));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let response = ok.json();
    assert_eq!(response["type"], "transaction-response");
    assert_eq!(response["entry"].as_array().unwrap().len(), 4);
    assert_eq!(response["entry"][0]["response"]["status"], "201 Created");
    let patient = response["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        response["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{patient}")
    );
    let found = clin
        .api
        .get(&format!(
            "/fhir/Observation?patient={patient}&_summary=count"
        ))
        .json();
    assert_eq!(found["total"], 3);

    // Entry 7 of 10 fails validation: nothing is written, the response names entry 6 (0-based).
    let before = count(db, "SELECT COUNT(*) FROM resource_version");
    let events_before = count(db, "SELECT COUNT(*) FROM audit_event");
    let mut entries = vec![patient_entry(
        "11111111-1111-1111-1111-111111111111",
        "Never",
    )];
    for i in 1..10 {
        let mut e = obs_entry(
            "urn:uuid:11111111-1111-1111-1111-111111111111",
            &format!("m{i}"),
        );
        if i == 6 {
            e["resource"]["status"] = json!("not-a-status");
        }
        entries.push(e);
    }
    let failed = post_bundle(&clin.api, &transaction(entries.clone()));
    assert_eq!(failed.status, 422, "{}", failed.text());
    assert!(
        failed.text().contains("Bundle.entry[6]"),
        "{}",
        failed.text()
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM resource_version"),
        before,
        "nothing was written"
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM audit_event"),
        events_before + 1,
        "one event: the refused request"
    );

    // Entry 7 of 10 is refused by authorization: nothing is written either.
    entries[6] = obs_entry(&format!("Patient/{patient}"), "fine");
    entries[6]["resource"]["subject"] = json!({"reference": "Patient/someone-elses"});
    let foreign = other.api.post_fhir("/fhir/Patient", &json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/org-b"}}));
    let foreign_id = foreign.json()["id"].as_str().unwrap().to_owned();
    entries[6]["resource"]["subject"] = json!({"reference": format!("Patient/{foreign_id}")});
    let before = count(db, "SELECT COUNT(*) FROM resource_version");
    let refused = post_bundle(&clin.api, &transaction(entries));
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.text().contains("Bundle.entry[6]"));
    assert_eq!(count(db, "SELECT COUNT(*) FROM resource_version"), before);

    // Conditional create (ifNoneExist) reuses the match; conditional update and delete by search.
    let again = json!({"fullUrl": format!("urn:uuid:{uuid}"),
        "resource": {"resourceType": "Patient", "name": [{"family": "Bundleton"}], "managingOrganization": {"reference": "Organization/org-a"}},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|Bundleton"}});
    let reused = post_bundle(
        &clin.api,
        &transaction(vec![again, obs_entry(&format!("urn:uuid:{uuid}"), "later")]),
    );
    assert_eq!(reused.status, 200, "{}", reused.text());
    let r = reused.json();
    assert_eq!(r["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        r["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{patient}")
    );
    let update = json!({"resource": {"resourceType": "Patient", "name": [{"family": "Bundleton", "given": ["Updated"]}], "identifier": [{"system": "urn:mrn", "value": "Bundleton"}], "managingOrganization": {"reference": "Organization/org-a"}},
                        "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|Bundleton"}});
    let updated = post_bundle(&clin.api, &transaction(vec![update]));
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(
        clin.api.get(&format!("/fhir/Patient/{patient}")).json()["name"][0]["given"][0],
        "Updated"
    );
    let delete =
        json!({"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|Bundleton"}});
    assert_eq!(
        post_bundle(&clin.api, &transaction(vec![delete])).status,
        200
    );
    assert_eq!(
        clin.api.get(&format!("/fhir/Patient/{patient}")).status,
        410
    );

    // Batch: entries are independent; a bad one fails alone.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        patient_entry("22222222-2222-2222-2222-222222222222", "Batchy"),
        {"resource": {"resourceType": "Patient", "birthDate": "not a date"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": format!("Patient/{foreign_id}")}},
    ]});
    let b = post_bundle(&clin.api, &batch);
    assert_eq!(b.status, 200, "{}", b.text());
    let b = b.json();
    assert_eq!(b["type"], "batch-response");
    assert_eq!(b["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(
        b["entry"][1]["response"]["status"],
        "422 Unprocessable Entity"
    );
    assert_eq!(
        b["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(
        b["entry"][2]["response"]["status"], "404 Not Found",
        "a foreign patient stays hidden"
    );

    // Malformed and oversized Bundles.
    assert_eq!(
        post_bundle(&clin.api, &json!({"resourceType": "Patient"})).status,
        400
    );
    assert_eq!(
        post_bundle(
            &clin.api,
            &json!({"resourceType": "Bundle", "type": "collection"})
        )
        .status,
        400
    );
}

#[test]
fn bundles_over_the_entry_limit_answer_413() {
    let srv = carevault_testkit::TestServer::start_with(
        crate::bin(),
        &[("CAREVAULT_MAX_BUNDLE_ENTRIES", "5")],
    );
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.limit", &["clinician"], Some("org-a"));
    let entries: Vec<Value> = (0..6)
        .map(|i| patient_entry(&format!("00000000-0000-0000-0000-00000000000{i}"), "Many"))
        .collect();
    let r = post_bundle(&clin.api, &transaction(entries));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
}

#[test]
fn real_world_bundles_from_an_independent_generator_are_accepted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/carebundle/bundles-40");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} (the shared test data) is needed: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let srv = server();
    let admin = srv.admin();
    // Imports run as a service with a scoped key (the generator's patients have no organization).
    let key = admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "importer", "scopes": ["system/*.cruds"]}),
    );
    let service = srv.api().with_token(key.json()["key"].as_str().unwrap());
    let mut resources = 0;
    for file in files.iter().take(8) {
        let bundle: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let n = bundle["entry"].as_array().unwrap().len();
        let r = post_bundle(&service, &bundle);
        assert_eq!(r.status, 200, "{}: {}", file.display(), r.text());
        resources += n;
    }
    let total = service.get("/fhir/Observation?_summary=count").json()["total"]
        .as_u64()
        .unwrap();
    assert!(total > 0 && (total as usize) < resources);
    let patients = service.get("/fhir/Patient?_summary=count").json()["total"]
        .as_u64()
        .unwrap();
    assert_eq!(patients, 8);
}
