//! FHIR REST as standard clients use it (#19): Bundles posted to `[base]/`, conditional create,
//! update, delete and read, JSON Patch, `$validate` and the system's history, each authorized
//! like its plain counterpart, each refusal changing nothing.

use carevault_testkit::Api;
use serde_json::{Value, json};

use crate::bundle::{patient_entry, transaction};
use crate::server;

const MRN: &str = "urn:oid:1.2.36.146.595.217.0.1";

fn mrn_patient(mrn: &str, family: &str, org: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"family": family}],
        "gender": "female",
        "managingOrganization": {"reference": format!("Organization/{org}")}
    })
}

fn criteria(mrn: &str) -> String {
    format!("identifier={MRN}|{mrn}")
}

/// How many Patients with this MRN the caller can find.
fn count(api: &Api, mrn: &str) -> u64 {
    let r = api.get(&format!("/fhir/Patient?{}&_total=accurate", criteria(mrn)));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["total"].as_u64().unwrap()
}

fn post_if_none_exist(api: &Api, body: &Value, mrn: &str) -> carevault_testkit::Reply {
    let bytes = serde_json::to_vec(body).unwrap();
    api.request(
        "POST",
        "/fhir/Patient",
        &[
            ("Content-Type", "application/fhir+json"),
            ("If-None-Exist", &criteria(mrn)),
        ],
        Some(&bytes),
    )
}

fn json_patch(
    api: &Api,
    path: &str,
    ops: &Value,
    extra: &[(&str, &str)],
) -> carevault_testkit::Reply {
    let bytes = serde_json::to_vec(ops).unwrap();
    let mut headers = vec![("Content-Type", "application/json-patch+json")];
    headers.extend_from_slice(extra);
    api.request("PATCH", path, &headers, Some(&bytes))
}

#[test]
fn standard_clients_interactions_work_and_refusals_change_nothing() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.conform", &["clinician"], Some("org-a"));
    let other = srv.user(&admin, "dr.elsewhere", &["clinician"], Some("org-b"));
    let api = &clin.api;

    bundles_posted_to_the_base_with_a_trailing_slash(api);
    let id = conditional_create(api);
    conditional_read(api, &id);
    summary_and_elements(api, &id);
    unknown_parameters_are_named_by_the_closest_known_one(api);
    conditional_update(api, &id);
    patch(api, &other.api, &id);
    validate(api, &srv);
    conditional_delete(api, &other.api, &id);
    capability_statement_says_so(api);
    system_history(api);
    system_search(api, &other.api);
}

/// Every `(type, id)` of a search across types, following `next` links from `path`.
fn all_pages(api: &Api, path: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut path = path.to_owned();
    for _ in 0..50 {
        let r = api.get(&path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let page = r.json();
        for e in page["entry"].as_array().into_iter().flatten() {
            let resource = &e["resource"];
            found.push((
                resource["resourceType"].as_str().unwrap().to_owned(),
                resource["id"].as_str().unwrap().to_owned(),
            ));
        }
        match crate::next_path(&page) {
            Some(next) => path = next,
            None => return found,
        }
    }
    panic!("more than 50 pages")
}

/// `GET [base]?_type=...`: several types in one search, paged across them, each authorized.
fn system_search(api: &Api, outsider: &Api) {
    let patients = all_pages(api, "/fhir/Patient?_count=100");
    let observations = all_pages(api, "/fhir/Observation?_count=100");
    assert!(!patients.is_empty() && !observations.is_empty());
    let mut across = all_pages(api, "/fhir?_type=Patient,Observation&_count=2");
    let mut expected: Vec<_> = patients.iter().chain(&observations).cloned().collect();
    across.sort();
    expected.sort();
    assert_eq!(across, expected);
    let counted = api
        .get("/fhir?_type=Observation,Patient&_summary=count")
        .json();
    assert_eq!(counted["total"], expected.len(), "{counted}");
    // A common parameter narrows every type.
    let (t, id) = &observations[0];
    assert_eq!(
        all_pages(api, &format!("/fhir?_type=Patient,Observation&_id={id}")),
        [(t.clone(), id.clone())]
    );
    // Another organization's clinician finds what their own type searches find (shared data
    // outside every patient's compartment included), and none of these patients.
    let mut theirs = all_pages(outsider, "/fhir?_type=Patient,Observation");
    let mut their_own: Vec<_> = all_pages(outsider, "/fhir/Patient?_count=100")
        .into_iter()
        .chain(all_pages(outsider, "/fhir/Observation?_count=100"))
        .collect();
    theirs.sort();
    their_own.sort();
    assert_eq!(theirs, their_own);
    assert!(patients.iter().all(|p| !theirs.contains(p)), "{theirs:?}");
    for (path, why) in [
        ("/fhir?_id=x", "no _type"),
        ("/fhir?_type=Patient,Nonsense", "an unknown type"),
        (
            "/fhir?_type=Patient,Observation&family=x",
            "a parameter Observation lacks",
        ),
        ("/fhir?_type=Patient&_page=9.", "a cursor past the types"),
        ("/fhir?_type=Patient&_page=forged", "a forged cursor"),
    ] {
        let r = api.get(path);
        assert_eq!(r.status, 400, "{why}: {}", r.text());
        assert!(r.text().contains("OperationOutcome"), "{why}");
    }
}

/// `GET [base]/_history`: every type, newest first, paged by its `next` link.
fn system_history(api: &Api) {
    let made = api.post_fhir(
        "/fhir/Observation",
        &json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "history"}}),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let obs = made.json()["id"].as_str().unwrap().to_owned();
    let first = api.get("/fhir/_history?_count=1");
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    assert_eq!(first["type"], "history");
    let entries = first["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["request"]["method"], "POST");
    assert_eq!(entries[0]["request"]["url"], "Observation");
    assert!(
        entries[0]["fullUrl"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/fhir/Observation/{obs}"))
    );
    let next = crate::next_path(&first).expect("a next link");
    assert!(next.starts_with("/fhir/_history?"), "{next}");
    let second = api.get(&next).json();
    // The version before the Observation: the conditional delete of the Patient.
    let entry = &second["entry"][0];
    assert_eq!(entry["request"]["method"], "DELETE", "{second}");
    assert!(
        entry["request"]["url"]
            .as_str()
            .unwrap()
            .starts_with("Patient/")
    );
    assert_eq!(
        api.get("/fhir/_history?_elements=id").status,
        400,
        "history parameters are checked as at the type level"
    );
}

/// fhir-kit-client posts Bundles to `[base]/`, fhirpy to `[base]/?`.
fn bundles_posted_to_the_base_with_a_trailing_slash(api: &Api) {
    for (path, id) in [
        ("/fhir/", "0e5c3f2a-1111-4000-8000-000000000001"),
        ("/fhir/?", "0e5c3f2a-1111-4000-8000-000000000002"),
    ] {
        let r = api.post_fhir(path, &transaction(vec![patient_entry(id, "Slash")]));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["type"], "transaction-response");
    }
    let r = api.get("/fhir/Patient/?family=Slash");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["entry"].as_array().unwrap().len(), 2);
}

fn conditional_create(api: &Api) -> String {
    let body = mrn_patient("C-1", "Conditional", "org-a");
    let first = post_if_none_exist(api, &body, "C-1");
    assert_eq!(first.status, 201, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let again = post_if_none_exist(api, &body, "C-1");
    assert_eq!(
        again.status, 200,
        "an existing match is returned, not created again"
    );
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(count(api, "C-1"), 1);

    // Two resources match: 412, and nothing is created.
    for _ in 0..2 {
        assert_eq!(
            api.post_fhir("/fhir/Patient", &mrn_patient("C-2", "Twin", "org-a"))
                .status,
            201
        );
    }
    let r = post_if_none_exist(api, &mrn_patient("C-2", "Twin", "org-a"), "C-2");
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(count(api, "C-2"), 2);

    // Criteria that are not search parameters of the type: 400 naming nothing from the value.
    let bytes = serde_json::to_vec(&body).unwrap();
    let r = api.request(
        "POST",
        "/fhir/Patient",
        &[
            ("Content-Type", "application/fhir+json"),
            ("If-None-Exist", "no-such-param=CANARY-7"),
        ],
        Some(&bytes),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains("CANARY-7"));
    assert_eq!(count(api, "C-1"), 1);
    id
}

fn conditional_read(api: &Api, id: &str) {
    let path = format!("/fhir/Patient/{id}");
    let read = api.get(&path);
    let etag = read.header("etag").unwrap().to_owned();
    let last_modified = read.header("last-modified").unwrap().to_owned();
    let r = api.request("GET", &path, &[("If-None-Match", &etag)], None);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = api.request("GET", &path, &[("If-None-Match", "W/\"99\"")], None);
    assert_eq!(r.status, 200);
    let r = api.request("GET", &path, &[("If-Modified-Since", &last_modified)], None);
    assert_eq!(r.status, 304);
    let r = api.request(
        "GET",
        &path,
        &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")],
        None,
    );
    assert_eq!(r.status, 200);
}

/// A misspelt parameter answers 400 naming the type's closest parameter, never what was sent.
fn unknown_parameters_are_named_by_the_closest_known_one(api: &Api) {
    for (query, hint) in [
        (
            "/fhir/Encounter?subjct=Patient/x",
            Some("did you mean subject?"),
        ),
        ("/fhir/Patient?familly=x", Some("did you mean family?")),
        ("/fhir/Patient?CANARY-NAME-7=x", None),
    ] {
        let r = api.get(query);
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        let diagnostics = r.json()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_owned();
        match hint {
            Some(hint) => assert!(diagnostics.ends_with(&format!("({hint})")), "{diagnostics}"),
            None => assert_eq!(diagnostics, "unknown search parameter"),
        }
        for sent in ["subjct", "familly", "CANARY"] {
            assert!(!r.text().contains(sent), "{query} echoed: {}", r.text());
        }
    }
}

/// The top-level keys of a resource, without `meta`.
fn keys(resource: &Value) -> Vec<String> {
    let mut keys: Vec<String> = resource
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "meta")
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
}

/// `_summary` and `_elements` on read, vread and search; a value R4 lacks is a 400 naming the
/// parameter only.
fn summary_and_elements(api: &Api, id: &str) {
    let path = format!("/fhir/Patient/{id}");
    let whole = api.get(&path).json();
    assert!(whole.get("gender").is_some() && !subsetted(&whole));
    for (query, expected) in [
        (
            "_summary=true",
            &[
                "gender",
                "id",
                "identifier",
                "managingOrganization",
                "name",
                "resourceType",
            ][..],
        ),
        ("_summary=text", &["id", "resourceType"][..]),
        ("_elements=gender", &["gender", "id", "resourceType"][..]),
        (
            "_summary=true&_elements=name",
            &["id", "name", "resourceType"][..],
        ),
    ] {
        let r = api.get(&format!("{path}?{query}"));
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        let narrowed = r.json();
        assert_eq!(keys(&narrowed), expected, "{query}");
        assert!(subsetted(&narrowed), "{query}");
        let r = api.get(&format!("{path}/_history/1?{query}"));
        assert_eq!(keys(&r.json()), expected, "vread {query}");
    }
    for query in ["_summary=false", "_summary=data"] {
        let r = api.get(&format!("{path}?{query}"));
        assert_eq!(
            keys(&r.json()),
            keys(&whole),
            "{query} (no narrative stored)"
        );
    }
    let r = api.get(&format!(
        "/fhir/Patient?_id={id}&_summary=text&_elements=gender"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let found = &r.json()["entry"][0]["resource"];
    assert_eq!(
        keys(found),
        ["id", "resourceType"],
        "summary, then elements"
    );
    let r = api.get(&format!("/fhir/Patient?_id={id}&_summary=true"));
    assert_eq!(keys(&r.json()["entry"][0]["resource"]), keys(&whole));
    for query in [
        "_summary=count",
        "_summary=CANARY-SUMMARY",
        "_elements=CANARY-1%20x",
    ] {
        let r = api.get(&format!("{path}?{query}"));
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
        assert!(!r.text().contains("CANARY"), "{query}: {}", r.text());
    }
}

fn conditional_update(api: &Api, id: &str) {
    let mut body = mrn_patient("C-1", "Updated", "org-a");
    let r = api.put_fhir(&format!("/fhir/Patient?{}", criteria("C-1")), &body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], id);
    assert_eq!(r.json()["meta"]["versionId"], "2");

    // The body's id must be the selected resource's.
    body["id"] = json!("someone-else");
    let r = api.put_fhir(&format!("/fhir/Patient?{}", criteria("C-1")), &body, &[]);
    assert_eq!(r.status, 400, "{}", r.text());

    // No match: created. Several: 412, nothing changed.
    let r = api.put_fhir(
        &format!("/fhir/Patient?{}", criteria("C-3")),
        &mrn_patient("C-3", "New", "org-a"),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api.put_fhir(
        &format!("/fhir/Patient?{}", criteria("C-2")),
        &mrn_patient("C-2", "Twin", "org-a"),
        &[],
    );
    assert_eq!(r.status, 412, "{}", r.text());
    let r = api.put_fhir("/fhir/Patient", &mrn_patient("C-9", "None", "org-a"), &[]);
    assert_eq!(r.status, 400, "criteria are required: {}", r.text());
    assert_eq!(
        api.get(&format!("/fhir/Patient/{id}")).json()["meta"]["versionId"],
        "2"
    );
}

fn patch(api: &Api, outsider: &Api, id: &str) {
    let path = format!("/fhir/Patient/{id}");
    let ops = json!([
        {"op": "test", "path": "/gender", "value": "female"},
        {"op": "replace", "path": "/gender", "value": "other"},
        {"op": "add", "path": "/birthDate", "value": "1970-01-01"}
    ]);
    let r = json_patch(api, &path, &ops, &[("If-Match", "W/\"2\"")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let patched = r.json();
    assert_eq!(patched["gender"], "other");
    assert_eq!(patched["birthDate"], "1970-01-01");
    assert_eq!(patched["meta"]["versionId"], "3");

    // Refusals: a failed test, a stale If-Match, an invalid result, a media type that is no
    // patch format, a caller from another organization. Each leaves version 3.
    let failed_test = json!([{"op": "test", "path": "/gender", "value": "CANARY-female"},
        {"op": "remove", "path": "/name"}]);
    let r = json_patch(api, &path, &failed_test, &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.diagnostics().contains("operation 0"), "{}", r.text());
    assert!(!r.text().contains("CANARY"));
    let r = json_patch(
        api,
        &path,
        &json!([{"op": "remove", "path": "/name"}]),
        &[("If-Match", "W/\"2\"")],
    );
    assert_eq!(r.status, 412, "{}", r.text());
    let r = json_patch(
        api,
        &path,
        &json!([{"op": "replace", "path": "/gender", "value": "banana"}]),
        &[],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let r = json_patch(
        api,
        &path,
        &json!([{"op": "replace", "path": "/id", "value": "stolen"}]),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let bytes = serde_json::to_vec(&json!([{"op": "remove", "path": "/name"}])).unwrap();
    let r = api.request(
        "PATCH",
        &path,
        &[("Content-Type", "text/plain")],
        Some(&bytes),
    );
    assert_eq!(r.status, 415, "{}", r.text());
    let r = json_patch(
        outsider,
        &path,
        &json!([{"op": "remove", "path": "/name"}]),
        &[],
    );
    assert!(
        r.status == 403 || r.status == 404,
        "{}: {}",
        r.status,
        r.text()
    );
    let now = api.get(&path).json();
    assert_eq!(now["meta"]["versionId"], "3");
    assert_eq!(now["name"][0]["family"], "Updated");
}

fn validate(api: &Api, srv: &carevault_testkit::TestServer) {
    let versions = || srv.query_i64("SELECT COUNT(*) FROM resource_version");
    let before = versions();
    let r = api.post_fhir(
        "/fhir/Patient/$validate",
        &mrn_patient("V-1", "Valid", "org-a"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert_eq!(r.json()["issue"][0]["severity"], "information");
    let mut invalid = mrn_patient("V-2", "Invalid", "org-a");
    invalid["gender"] = json!("banana");
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": invalid}]});
    let r = api.post_fhir("/fhir/Patient/$validate", &params);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["issue"][0]["severity"], "error", "{}", r.text());
    assert_eq!(versions(), before, "$validate stores nothing");
}

fn conditional_delete(api: &Api, outsider: &Api, id: &str) {
    // Another organization's clinician selects nothing (they cannot see the patient), so
    // nothing is deleted, and the answer is the same as for criteria that match nobody.
    let r = outsider.delete(&format!("/fhir/Patient?{}", criteria("C-1")));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(api.get(&format!("/fhir/Patient/{id}")).status, 200);
    let r = api.delete(&format!("/fhir/Patient?{}", criteria("C-2")));
    assert_eq!(r.status, 412, "several match: {}", r.text());
    assert_eq!(count(api, "C-2"), 2);
    let r = api.delete(&format!("/fhir/Patient?{}", criteria("C-1")));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(api.get(&format!("/fhir/Patient/{id}")).status, 410);
}

fn capability_statement_says_so(api: &Api) {
    let cs = api.get("/fhir/metadata").json();
    let patient = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert_eq!(patient["conditionalCreate"], true);
    // `_include` and `_revinclude` values: every reference parameter that names `Type/id`,
    // not those by canonical URL.
    let listed = |resource: &Value, key: &str, value: &str| {
        resource[key].as_array().unwrap().iter().any(|v| v == value)
    };
    assert!(listed(
        &patient,
        "searchInclude",
        "Patient:general-practitioner"
    ));
    assert!(listed(&patient, "searchRevInclude", "Observation:subject"));
    assert!(listed(&patient, "searchRevInclude", "Encounter:patient"));
    // Composite and special parameters carry their R4 type.
    let param_type = |rtype: &str, name: &str| {
        cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == rtype)
            .unwrap()["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["type"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        param_type("Observation", "component-code-value-quantity").as_deref(),
        Some("composite")
    );
    assert_eq!(param_type("Location", "near").as_deref(), Some("special"));
    assert_eq!(param_type("DocumentReference", "relationship"), None);
    // Observation?encounter points at Encounters only.
    assert!(!listed(
        &patient,
        "searchRevInclude",
        "Observation:encounter"
    ));
    let response = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "QuestionnaireResponse")
        .unwrap();
    assert!(listed(
        response,
        "searchInclude",
        "QuestionnaireResponse:subject"
    ));
    assert!(!listed(
        response,
        "searchInclude",
        "QuestionnaireResponse:questionnaire"
    ));
    assert_eq!(patient["conditionalUpdate"], true);
    assert_eq!(patient["conditionalDelete"], "single");
    assert_eq!(patient["conditionalRead"], "full-support");
    assert_eq!(
        cs["patchFormat"],
        json!(["application/json-patch+json", "application/fhir+json"])
    );
    assert!(
        patient["interaction"]
            .as_array()
            .unwrap()
            .contains(&json!({"code": "patch"}))
    );
    let ops: Vec<&str> = cs["rest"][0]["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(ops.contains(&"validate"), "{ops:?}");
    assert!(
        cs["rest"][0]["interaction"]
            .as_array()
            .unwrap()
            .contains(&json!({"code": "history-system"}))
    );
    assert!(
        cs["rest"][0]["interaction"]
            .as_array()
            .unwrap()
            .contains(&json!({"code": "search-system"}))
    );
}

#[test]
fn browser_apps_on_allowed_origins_get_cors_and_others_do_not() {
    const APP: &str = "https://app.example.org";
    let srv = carevault_testkit::TestServer::start_with(
        crate::bin(),
        &[("CAREVAULT_CORS_ALLOWED_ORIGINS", APP)],
    );
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.browser", &["clinician"], Some("org-a"));
    let preflight = |origin: &str| {
        srv.api().request(
            "OPTIONS",
            "/fhir/Patient",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
            None,
        )
    };
    let r = preflight(APP);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("Authorization")
    );
    assert_eq!(r.header("access-control-allow-credentials"), None);
    let r = preflight("https://evil.example");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-methods"), None);

    let r = clin
        .api
        .request("GET", "/fhir/Patient", &[("Origin", APP)], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("ETag")
    );
    let r = clin.api.request(
        "GET",
        "/fhir/Patient",
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(r.header("access-control-allow-origin"), None);

    // The preflight is audited like any request, under its own action.
    let preflights =
        srv.query_i64("SELECT COUNT(*) FROM audit_event WHERE action = 'cors-preflight'");
    assert_eq!(preflights, 2);
}

#[test]
fn cors_is_off_by_default() {
    let srv = server();
    let r = srv.api().request(
        "OPTIONS",
        "/fhir/Patient",
        &[
            ("Origin", "https://app.example.org"),
            ("Access-Control-Request-Method", "GET"),
        ],
        None,
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("access-control-allow-origin"), None);
}
