//! Chaining (`subject:Patient.name=x`) and `_has`, end to end: results, paging, errors that never
//! echo a value, lenient mode, and authorization of every resource a chain reads (another
//! organization's patient never matches, a service key's scope and a developer's
//! de-identified view hold), with one audit event per request.

use std::collections::BTreeSet;

use carevault_testkit::{Account, Api, TestServer};
use serde_json::{Value, json};

use crate::{next_path, observation, server};

const CANARY: &str = "CANARY-7Z";

struct World {
    srv: TestServer,
    admin: Account,
    clin_a: Account,
    clin_b: Account,
    auditor: Account,
    /// org-a: Smithson (identifier urn:test:mrn|123), Jones; org-b: Secretname.
    smithson: String,
    jones: String,
    secret: String,
    /// Observations: 8867-4 on Smithson, 1234-5 on Jones, 8867-4 on Secretname.
    obs_smithson: String,
    obs_jones: String,
    obs_secret: String,
}

fn created(api: &Api, path: &str, body: &Value) -> String {
    let r = api.post_fhir(path, body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

fn patient(org: &str, family: &str, mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": mrn}],
        "name": [{"family": family, "given": ["Kim"]}],
        "managingOrganization": {"reference": format!("Organization/{org}")}
    })
}

fn observation_coded(patient_id: &str, code: &str) -> Value {
    let mut obs = observation(patient_id, "chain");
    obs["code"] = json!({"coding": [{"system": "http://loinc.org", "code": code}]});
    obs
}

fn world() -> World {
    let srv = server();
    let admin = srv.admin();
    let clin_a = srv.user(&admin, "dr.chain-a", &["clinician"], Some("org-a"));
    let clin_b = srv.user(&admin, "dr.chain-b", &["clinician"], Some("org-b"));
    let auditor = srv.user(&admin, "ann.chain-audit", &["auditor"], None);
    let smithson = created(
        &clin_a.api,
        "/fhir/Patient",
        &patient("org-a", "Smithson", "123"),
    );
    let jones = created(
        &clin_a.api,
        "/fhir/Patient",
        &patient("org-a", "Jones", "456"),
    );
    let secret = created(
        &clin_b.api,
        "/fhir/Patient",
        &patient("org-b", "Secretname", "789"),
    );
    let obs_smithson = created(
        &clin_a.api,
        "/fhir/Observation",
        &observation_coded(&smithson, "8867-4"),
    );
    let obs_jones = created(
        &clin_a.api,
        "/fhir/Observation",
        &observation_coded(&jones, "1234-5"),
    );
    let obs_secret = created(
        &clin_b.api,
        "/fhir/Observation",
        &observation_coded(&secret, "8867-4"),
    );
    World {
        srv,
        admin,
        clin_a,
        clin_b,
        auditor,
        smithson,
        jones,
        secret,
        obs_smithson,
        obs_jones,
        obs_secret,
    }
}

/// The ids of a search's matches (following `next` links), sorted.
fn ids(api: &Api, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut path = Some(path.to_owned());
    while let Some(p) = path {
        let r = api.get(&p);
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        let bundle = r.json();
        assert_eq!(bundle["type"], "searchset");
        for e in bundle["entry"].as_array().into_iter().flatten() {
            assert_eq!(e["search"]["mode"], "match");
            out.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        path = next_path(&bundle);
    }
    out.sort();
    out
}

fn sorted(list: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| (*s).clone()).collect();
    v.sort();
    v
}

#[test]
fn chaining_and_has_search_only_what_the_caller_may_read() {
    let w = world();
    chains_and_has_find_the_right_resources(&w);
    a_chain_never_reveals_another_organizations_patient(&w);
    scopes_and_deidentification_hold_inside_a_chain(&w);
    chains_page_and_are_audited_once_per_request(&w);
    malformed_chains_answer_400_without_echoing_values(&w);
    a_chain_matching_too_many_resources_answers_400(&w);
}

fn chains_and_has_find_the_right_resources(w: &World) {
    let a = &w.clin_a.api;
    let smithson_obs = sorted(&[&w.obs_smithson]);
    for path in [
        "/fhir/Observation?subject:Patient.name=smithson",
        "/fhir/Observation?subject.family=SMITHS",
        "/fhir/Observation?patient.identifier=urn:test:mrn|123",
        "/fhir/Observation?patient.name:exact=Smithson",
        "/fhir/Observation?subject:Patient.family=smithson&code=8867-4",
        "/fhir/Observation?subject:Patient._id=",
    ] {
        let path = if path.ends_with("_id=") {
            format!("{path}{}", w.smithson)
        } else {
            path.to_owned()
        };
        assert_eq!(ids(a, &path), smithson_obs, "{path}");
    }
    // Every condition must hold, and the chained value is matched as the target's parameter.
    for path in [
        "/fhir/Observation?subject:Patient.name=smithson&code=1234-5",
        "/fhir/Observation?patient.name:exact=smithson",
        "/fhir/Observation?patient.identifier=urn:test:mrn|999",
        "/fhir/Observation?subject:Patient.name=nobody-at-all",
    ] {
        assert!(ids(a, path).is_empty(), "{path}");
    }
    // Comma is OR inside the chain; repeated chains are AND.
    assert_eq!(
        ids(a, "/fhir/Observation?patient.family=smithson,jones"),
        sorted(&[&w.obs_smithson, &w.obs_jones])
    );
    assert!(
        ids(
            a,
            "/fhir/Observation?patient.family=smithson&patient.family=jones"
        )
        .is_empty()
    );
    // A compartment search chains too.
    assert_eq!(
        ids(
            a,
            &format!("/fhir/Patient/{}/Observation?patient.family=jones", w.jones)
        ),
        sorted(&[&w.obs_jones])
    );
    assert_eq!(
        ids(a, "/fhir/Patient?_has:Observation:patient:code=1234-5"),
        sorted(&[&w.jones])
    );
    assert_eq!(
        ids(
            a,
            "/fhir/Patient?_has:Observation:subject:code=8867-4&family=smith"
        ),
        sorted(&[&w.smithson])
    );
    assert!(ids(a, "/fhir/Patient?_has:Observation:patient:code=0000-0").is_empty());
    // `_summary=count` counts what the resolved search matches.
    let count = a.get("/fhir/Observation?patient.family=smithson,jones&_summary=count");
    assert_eq!(count.json()["total"], 2, "{}", count.text());
    // POST _search takes the same parameters.
    let form = a.request(
        "POST",
        "/fhir/Patient/_search",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"_has:Observation:patient:code=1234-5"),
    );
    assert_eq!(form.status, 200, "{}", form.text());
    assert_eq!(form.json()["entry"][0]["resource"]["id"], w.jones.as_str());
    // Conditional create selects by a chain.
    let criteria = "subject:Patient.name=jones&code=1234-5";
    let again = a.request(
        "POST",
        "/fhir/Observation",
        &[
            ("Content-Type", "application/fhir+json"),
            ("If-None-Exist", criteria),
        ],
        Some(observation_coded(&w.jones, "1234-5").to_string().as_bytes()),
    );
    assert_eq!(again.status, 200, "an existing match: {}", again.text());
}

fn a_chain_never_reveals_another_organizations_patient(w: &World) {
    // Only org-b's patient is named Secretname: org-a's clinician finds nothing (not a 403,
    // not a hit), while org-b's clinician, who may read it, does.
    for (api, expected) in [
        (&w.clin_a.api, Vec::new()),
        (&w.clin_b.api, sorted(&[&w.obs_secret])),
    ] {
        assert_eq!(
            ids(api, "/fhir/Observation?subject:Patient.name=secretname"),
            expected
        );
    }
    assert!(
        ids(
            &w.clin_b.api,
            "/fhir/Observation?subject:Patient.name=smithson"
        )
        .is_empty()
    );
    assert!(
        ids(
            &w.clin_b.api,
            "/fhir/Patient?_has:Observation:patient:code=1234-5"
        )
        .is_empty()
    );
    // Through _has, org-a sees only its own patient with an 8867-4 observation.
    assert_eq!(
        ids(
            &w.clin_a.api,
            "/fhir/Patient?_has:Observation:patient:code=8867-4"
        ),
        sorted(&[&w.smithson])
    );
    assert_eq!(
        ids(
            &w.clin_b.api,
            "/fhir/Patient?_has:Observation:patient:code=8867-4"
        ),
        sorted(&[&w.secret])
    );
    // A total counts nothing foreign either.
    let total = w
        .clin_a
        .api
        .get("/fhir/Observation?subject.family=secretname&_total=accurate");
    assert_eq!(total.json()["total"], 0, "{}", total.text());
}

fn scopes_and_deidentification_hold_inside_a_chain(w: &World) {
    let key = w.admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "chain-lab-feed", "scopes": ["system/Observation.rs"], "expires_in_days": 30}),
    );
    assert_eq!(key.status, 201, "{}", key.text());
    let key = w.srv.api().with_token(key.json()["key"].as_str().unwrap());
    // The key may search Observations but not Patients: a chain that searches Patients is
    // refused like the Patient search itself, and so is `_has` from Patient.
    assert_eq!(key.get("/fhir/Observation?code=1234-5").status, 200);
    assert_eq!(
        key.get("/fhir/Observation?subject:Patient.name=smithson")
            .status,
        403
    );
    assert_eq!(
        key.get("/fhir/Patient?_has:Observation:patient:code=1234-5")
            .status,
        403
    );
    let developer = w.srv.user(&w.admin, "dev.chain", &["developer"], None);
    // A developer may not search de-identified data by name, and a chain is no way around it.
    let refused = developer
        .api
        .get("/fhir/Observation?subject:Patient.name=smithson");
    assert_eq!(refused.status, 403, "{}", refused.text());
    let by_code = developer
        .api
        .get("/fhir/Patient?_has:Observation:patient:code=1234-5");
    assert_eq!(by_code.status, 200, "{}", by_code.text());
    let entries = by_code.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(entries.len(), 1);
    // Released under a pseudonym, as any developer's read.
    assert_ne!(entries[0]["resource"]["id"], w.jones.as_str());
}

/// The search-type audit events that list `patient`.
fn search_events(w: &World, patient: &str) -> Vec<Value> {
    let r = w.auditor.api.get(&format!(
        "/audit/events?patient={patient}&action=search-type&_count=1000"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"].as_array().cloned().unwrap_or_default()
}

fn chains_page_and_are_audited_once_per_request(w: &World) {
    let a = &w.clin_a.api;
    let mut expected = BTreeSet::from([w.obs_smithson.clone()]);
    for _ in 0..4 {
        expected.insert(created(
            a,
            "/fhir/Observation",
            &observation_coded(&w.smithson, "8867-4"),
        ));
    }
    let expected: Vec<String> = expected.into_iter().collect();
    assert_eq!(
        ids(
            a,
            "/fhir/Observation?subject:Patient.name=smithson&_count=2"
        ),
        expected
    );
    // One request, one audit event, listing the patient the chain matched.
    let before = search_events(w, &w.smithson).len();
    let page = a.get("/fhir/Observation?subject:Patient.name=smithson&_count=1");
    assert_eq!(page.status, 200);
    assert_eq!(search_events(w, &w.smithson).len(), before + 1);
    // A chain that matched nothing of a foreign organization records no patient of it.
    let foreign_before = search_events(w, &w.secret).len();
    assert!(ids(a, "/fhir/Observation?subject:Patient.name=secretname").is_empty());
    assert_eq!(search_events(w, &w.secret).len(), foreign_before);
}

fn malformed_chains_answer_400_without_echoing_values(w: &World) {
    let a = &w.clin_a.api;
    for (path, names) in [
        ("/fhir/Observation?subject.organization.name=", "one level"),
        ("/fhir/Observation?code.name=", "code"),
        ("/fhir/Observation?subject.nope=", "subject"),
        ("/fhir/Observation?subject._id=", "ambiguous"),
        ("/fhir/Patient?_has:Nope:patient:code=", "_has"),
        ("/fhir/Patient?_has:Observation:patient:nope=", "_has"),
        (
            "/fhir/Patient?_has:Observation:patient:_has:Observation:patient:code=",
            "one level",
        ),
        (
            "/fhir/Practitioner?_has:Observation:patient:code=",
            "cannot point",
        ),
    ] {
        let r = a.get(&format!("{path}{CANARY}"));
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let body = r.text();
        assert_eq!(r.json()["resourceType"], "OperationOutcome", "{path}");
        assert!(body.contains(names), "{path}: {body}");
        assert!(!body.contains(CANARY), "{path}: {body}");
    }
    // Lenient handling ignores unknown names, not malformed chains.
    let lenient = [("Prefer", "handling=lenient")];
    let r = a.request(
        "GET",
        &format!("/fhir/Observation?subject.nope={CANARY}&code=1234-5"),
        &lenient,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["entry"].as_array().map(Vec::len), Some(1));
    let r = a.request(
        "GET",
        &format!("/fhir/Observation?subject.organization.name={CANARY}"),
        &lenient,
        None,
    );
    assert_eq!(r.status, 400);
    let cs = a.get("/fhir/metadata").json();
    let doc = cs["rest"][0]["documentation"].as_str().unwrap_or_default();
    assert!(
        doc.contains("_has") && doc.contains("one level") && doc.contains("at most 1000"),
        "{doc}"
    );
}

fn a_chain_matching_too_many_resources_answers_400(w: &World) {
    let a = &w.clin_a.api;
    // 1,001 patients named Crowd, in transactions of 143.
    for batch in 0..7 {
        let entries: Vec<Value> = (0..143)
            .map(|i| {
                json!({"request": {"method": "POST", "url": "Patient"},
                    "resource": patient("org-a", "Crowd", &format!("c{batch}-{i}"))})
            })
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let r = a.request(
            "POST",
            "/fhir",
            &[("Content-Type", "application/fhir+json")],
            Some(&serde_json::to_vec(&bundle).unwrap()),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = a.get("/fhir/Observation?subject:Patient.family=crowd");
    assert_eq!(r.status, 400, "{}", r.text());
    let body = r.text();
    assert!(
        body.contains("subject") && body.contains("more than 1000") && !body.contains("rowd"),
        "{body}"
    );
    // Narrowed, it answers (no observation points to a Crowd patient).
    assert!(
        ids(
            a,
            "/fhir/Observation?subject:Patient.identifier=urn:test:mrn|c3-7"
        )
        .is_empty()
    );
}
