//! Developers read de-identified data (docs/deidentification.md): every read path answers them
//! with names, identifiers, contact points, addresses below the state, dates below the year and
//! free text removed, ids pseudonymized consistently; identifying searches are refused; they
//! never write; their audit events say `deidentified=safe-harbor`. A clinician still sees it all.

use carevault_testkit::{Account, Api};
use serde_json::{Value, json};

use crate::server;

/// Values that must never reach a developer (none is a code the server keeps).
const CANARIES: [&str; 12] = [
    "Zqcanaryfamily",
    "Zqcanarygiven",
    "999-88-7777",
    "MRN-ZQCANARY",
    "555-0142",
    "zqcanary@example.org",
    "12 Zqcanary Lane",
    "Zqcanaryville",
    "02139",
    "07-12",
    "Zqcanary narrative",
    "Zqcanary note",
];

fn canary_patient() -> Value {
    json!({
        "resourceType": "Patient",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Zqcanary narrative</div>"},
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-88-7777"},
                       {"system": "urn:example:mrn", "value": "MRN-ZQCANARY"}],
        "name": [{"family": "Zqcanaryfamily", "given": ["Zqcanarygiven"]}],
        "telecom": [{"system": "phone", "value": "555-0142"}, {"system": "email", "value": "zqcanary@example.org"}],
        "gender": "female",
        "birthDate": "1984-07-12",
        "address": [{"line": ["12 Zqcanary Lane"], "city": "Zqcanaryville", "state": "MA", "postalCode": "02139"}],
        "managingOrganization": {"reference": "Organization/org-a"}
    })
}

fn canary_observation(patient: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2024-07-12T09:30:00Z",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "note": [{"text": "Zqcanary note"}]
    })
}

/// Fails naming the canary (or real id) found in a reply to the developer.
fn assert_clean(what: &str, body: &str, real_ids: &[&str]) {
    for canary in CANARIES.iter().chain(real_ids) {
        assert!(
            !body.contains(canary),
            "{what}: {canary} reached the developer"
        );
    }
}

fn get_ok(api: &Api, path: &str) -> Value {
    let r = api.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

struct World {
    clin: Account,
    dev: Account,
    auditor: Account,
    pid: String,
    oid: String,
}

#[test]
fn developers_read_everything_de_identified_and_never_write() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.deid", &["clinician"], Some("org-a"));
    let dev = srv.user(&admin, "dev.deid", &["developer"], None);
    let auditor = srv.user(&admin, "audit.deid", &["auditor"], None);
    let created = clin.api.post_fhir("/fhir/Patient", &canary_patient());
    assert_eq!(created.status, 201, "{}", created.text());
    let pid = created.json()["id"].as_str().unwrap().to_owned();
    let created = clin
        .api
        .post_fhir("/fhir/Observation", &canary_observation(&pid));
    assert_eq!(created.status, 201, "{}", created.text());
    let oid = created.json()["id"].as_str().unwrap().to_owned();
    let second = clin
        .api
        .post_fhir("/fhir/Observation", &canary_observation(&pid));
    assert_eq!(second.status, 201, "{}", second.text());
    let w = World {
        clin,
        dev,
        auditor,
        pid,
        oid,
    };
    a_clinician_still_sees_everything(&w);
    every_read_path_is_de_identified(&w);
    identifying_searches_are_refused(&w);
    a_developer_never_writes(&w);
    the_trail_says_the_reads_were_de_identified(&w);
    exports_asked_de_identified_and_every_developers_export_are(&w);
    linked_and_date_shifted_exports(&w);
}

/// A `$export` asked with `_deidentify=safe-harbor`, and a developer's asked without it: no
/// canary and no real id in any file, references resolve to the exported pseudonyms, and two
/// exports do not share pseudonyms (each has its own secret).
fn exports_asked_de_identified_and_every_developers_export_are(w: &World) {
    use crate::export::ids_of as ids;
    let exported = |api: &Api, path: &str| exported(w, api, path).1;
    let asked = exported(
        &w.clin.api,
        "/fhir/$export?_type=Patient,Observation&_deidentify=safe-harbor",
    );
    let patients = ids(&asked, "Patient");
    assert_eq!(patients.len(), 1, "{asked:?}");
    assert_eq!(ids(&asked, "Observation").len(), 2);
    for (_, lines) in asked.iter().filter(|(t, _)| t == "Observation") {
        for o in lines {
            assert_eq!(
                o["subject"]["reference"],
                format!("Patient/{}", patients.first().unwrap()),
                "the graph holds inside the export"
            );
        }
    }
    // A developer's `_typeFilter` on an identifying value is refused like the search itself.
    let oracle = w.dev.api.request(
        "GET",
        "/fhir/$export?_type=Patient&_typeFilter=Patient%3Ffamily%3DZqcanaryfamily",
        &[("Prefer", "respond-async")],
        None,
    );
    assert_eq!(oracle.status, 403, "{}", oracle.text());
    assert_clean("refused export", &oracle.text(), &[]);
    let by_developer = exported(&w.dev.api, "/fhir/$export?_type=Patient");
    let again = ids(&by_developer, "Patient");
    assert_eq!(again.len(), 1);
    assert_ne!(again, patients, "each export has its own pseudonyms");
}

fn a_clinician_still_sees_everything(w: &World) {
    let patient = w.clin.api.get(&format!("/fhir/Patient/{}", w.pid)).text();
    let observation = w
        .clin
        .api
        .get(&format!("/fhir/Observation/{}", w.oid))
        .text();
    for canary in CANARIES {
        assert!(
            patient.contains(canary) || observation.contains(canary),
            "the clinician lost {canary}"
        );
    }
}

fn every_read_path_is_de_identified(w: &World) {
    let (dev, pid, oid) = (&w.dev.api, w.pid.as_str(), w.oid.as_str());
    let real = [pid, oid];
    let read = dev.get(&format!("/fhir/Patient/{pid}"));
    assert_eq!(read.status, 200, "{}", read.text());
    assert_clean("read", &read.text(), &real);
    let patient = read.json();
    let pseudonym = patient["id"].as_str().unwrap().to_owned();
    assert_ne!(pseudonym, pid);
    assert_eq!(patient["birthDate"], "1984");
    assert_eq!(patient["gender"], "female");
    assert_eq!(
        patient["address"],
        json!([{"state": "MA", "postalCode": "021"}])
    );
    for gone in ["name", "identifier", "telecom", "text"] {
        assert!(patient.get(gone).is_none(), "{gone} reached the developer");
    }
    let modified = read.header("last-modified").unwrap_or_default().to_owned();
    assert!(
        modified.is_empty() || modified.contains(" 01 Jan "),
        "{modified}"
    );

    let vread = dev.get(&format!("/fhir/Patient/{pid}/_history/1"));
    assert_eq!(vread.status, 200);
    assert_clean("vread", &vread.text(), &real);
    assert_eq!(vread.json()["id"], pseudonym.as_str());

    let bodies = [
        ("history", format!("/fhir/Patient/{pid}/_history")),
        ("type history", "/fhir/Observation/_history".to_owned()),
        ("system history", "/fhir/_history".to_owned()),
        (
            "search",
            "/fhir/Patient?gender=female&birthdate=1984".to_owned(),
        ),
        (
            "search with include",
            "/fhir/Observation?code=http://loinc.org|8867-4&_include=Observation:subject"
                .to_owned(),
        ),
        (
            "compartment search",
            format!("/fhir/Patient/{pid}/Observation"),
        ),
        ("$everything", format!("/fhir/Patient/{pid}/$everything")),
    ];
    for (what, path) in &bodies {
        let mut bundle = get_ok(dev, path);
        // The links repeat the request (an instance path names the id the developer sent).
        bundle.as_object_mut().unwrap().remove("link");
        assert_clean(what, &bundle.to_string(), &real);
        assert!(
            !bundle["entry"].as_array().unwrap().is_empty(),
            "{what}: no entries"
        );
    }
    // The graph holds: the Observation's subject is the Patient's pseudonym.
    let obs = get_ok(dev, &format!("/fhir/Observation/{oid}"));
    assert_clean("observation", &obs.to_string(), &real);
    assert_eq!(obs["subject"]["reference"], format!("Patient/{pseudonym}"));
    assert_eq!(obs["effectiveDateTime"], "2024");
    assert_eq!(obs["valueQuantity"]["value"], 72);
    let everything = get_ok(dev, &format!("/fhir/Patient/{pid}/$everything"));
    let ids: Vec<&str> = everything["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&pseudonym.as_str()), "{ids:?}");
    // A batch's GET entries too.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
        {"request": {"method": "GET", "url": "Observation?code=8867-4"}}]});
    let r = dev.post_fhir("/fhir", &batch);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_clean("batch", &r.text(), &real);
    // Paging cursors carry the last entry's id: a developer's are sealed, and still page.
    let first = "/fhir/Observation?_count=1";
    let dev_next = next_link(&get_ok(dev, first)).expect("two observations: a next page");
    let clin_next = next_link(&get_ok(&w.clin.api, first)).expect("a next page");
    assert_ne!(dev_next, clin_next);
    let second = get_ok(dev, &dev_next);
    assert_clean("second page", &second.to_string(), &real);
    assert_eq!(second["entry"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        dev.get(&clin_next).status,
        400,
        "a clinician's cursor opens for a developer"
    );
}

/// The path of a Bundle's `next` link.
fn next_link(bundle: &Value) -> Option<String> {
    let url = bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")?["url"]
        .as_str()?
        .to_owned();
    Some(url[url.find("/fhir/")?..].to_owned())
}

fn identifying_searches_are_refused(w: &World) {
    let dev = &w.dev.api;
    for path in [
        "/fhir/Patient?name=Zqcanaryfamily",
        "/fhir/Patient?family=Zqcanary",
        "/fhir/Patient?identifier=999-88-7777",
        "/fhir/Patient?phone=555-0142",
        "/fhir/Patient?email=zqcanary@example.org",
        "/fhir/Patient?birthdate=1984-07-12",
        "/fhir/Observation?date=2024-07-12",
        "/fhir/Patient?gender=female&_sort=birthdate",
        // A composite with a string part, and a position.
        "/fhir/Observation?code-value-string=x$Zqcanary",
        "/fhir/Location?near=42.36|-71.06|5|km",
    ] {
        let r = dev.get(path);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
        assert_clean(path, &r.text(), &[]);
    }
    // The clinician's same search still works.
    let found = get_ok(&w.clin.api, "/fhir/Patient?name=Zqcanaryfamily");
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1));
}

fn a_developer_never_writes(w: &World) {
    let dev = &w.dev.api;
    let mut update = canary_patient();
    update["id"] = json!(w.pid);
    assert_eq!(
        dev.post_fhir("/fhir/Patient", &canary_patient()).status,
        403
    );
    assert_eq!(
        dev.post_fhir("/fhir/Observation", &canary_observation(&w.pid))
            .status,
        403
    );
    let put = dev.put_fhir(&format!("/fhir/Patient/{}", w.pid), &update, &[]);
    assert!(matches!(put.status, 403 | 404), "{}", put.status);
    let deleted = dev.delete(&format!("/fhir/Observation/{}", w.oid));
    assert!(matches!(deleted.status, 403 | 404), "{}", deleted.status);
    // Nothing changed.
    let current = get_ok(&w.clin.api, &format!("/fhir/Observation/{}", w.oid));
    assert_eq!(current["meta"]["versionId"], "1");
}

fn the_trail_says_the_reads_were_de_identified(w: &World) {
    let events = get_ok(
        &w.auditor.api,
        &format!("/audit/events?patient={}&_count=200", w.pid),
    );
    let mut developer_reads = 0;
    for e in events["entry"].as_array().unwrap() {
        let e = &e["resource"];
        let by_developer = e["agent"][0]["role"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["text"] == "developer");
        let marked = e["entity"].as_array().unwrap().iter().any(|entity| {
            entity["detail"].as_array().is_some_and(|d| {
                d.iter()
                    .any(|d| d["type"] == "deidentified" && d["valueString"] == "safe-harbor")
            })
        });
        if by_developer && e["outcome"] == "0" {
            developer_reads += 1;
            assert!(marked, "a developer's read is not marked: {e}");
        }
        if !by_developer {
            assert!(!marked, "a clinician's read is marked de-identified: {e}");
        }
    }
    assert!(developer_reads >= 5, "{developer_reads}");
}

/// Runs an export to completion; its manifest and files, checked free of canaries and real ids.
fn exported(w: &World, api: &Api, path: &str) -> (Value, Vec<(String, Vec<Value>)>) {
    use crate::export::{downloaded, manifest, started};
    let status = started(api, path);
    let m = manifest(api, &status);
    let files = downloaded(api, &m);
    let text: String = files
        .iter()
        .flat_map(|(_, lines)| lines.iter().map(Value::to_string))
        .collect();
    assert_clean(path, &text, &[&w.pid, &w.oid]);
    (m, files)
}

/// Exports under one `_deidentifyLink` label share pseudonyms (another label, or another
/// principal's same label, do not); `shifted-dates` keeps dates' precision, moved, says so in
/// the signed manifest, and is not offered to developers.
fn linked_and_date_shifted_exports(w: &World) {
    use crate::export::ids_of as ids;
    let patients = |api: &Api, query: &str| {
        let (_, files) = exported(w, api, &format!("/fhir/$export?_type=Patient&{query}"));
        ids(&files, "Patient")
    };
    let linked = "_deidentify=safe-harbor&_deidentifyLink=study-7";
    let first = patients(&w.clin.api, linked);
    assert_eq!(first.len(), 1);
    assert_eq!(
        patients(&w.clin.api, linked),
        first,
        "one label, one pseudonym"
    );
    let other_label = "_deidentify=safe-harbor&_deidentifyLink=study-8";
    assert_ne!(patients(&w.clin.api, other_label), first);
    assert_ne!(
        patients(&w.dev.api, linked),
        first,
        "labels are the caller's own"
    );
    assert_ne!(patients(&w.clin.api, "_deidentify=safe-harbor"), first);

    let (m, files) = exported(
        w,
        &w.clin.api,
        "/fhir/$export?_type=Patient,Observation&_deidentify=shifted-dates",
    );
    assert_eq!(m["extension"]["deidentified"], true);
    assert_eq!(m["extension"]["dates"], "shifted");
    let of = |rtype: &str| {
        files
            .iter()
            .filter(|(t, _)| t == rtype)
            .flat_map(|(_, lines)| lines.iter())
            .collect::<Vec<_>>()
    };
    let birth = of("Patient")[0]["birthDate"].as_str().unwrap().to_owned();
    assert_eq!(birth.len(), 10, "a full date, moved: {birth}");
    assert_ne!(birth, "1984-07-12");
    for o in of("Observation") {
        let when = o["effectiveDateTime"].as_str().unwrap();
        assert!(when.len() > 10 && !when.starts_with("2024-07-12"), "{when}");
    }
    let (safe_harbor, _) = exported(
        w,
        &w.clin.api,
        "/fhir/$export?_type=Patient&_deidentify=safe-harbor",
    );
    assert!(safe_harbor["extension"].get("dates").is_none());

    let refused = |api: &Api, query: &str| {
        let r = api.request(
            "GET",
            &format!("/fhir/$export?_type=Patient&{query}"),
            &[("Prefer", "respond-async")],
            None,
        );
        r.status
    };
    assert_eq!(refused(&w.clin.api, "_deidentifyLink=study-7"), 400);
    assert_eq!(refused(&w.dev.api, "_deidentify=shifted-dates"), 403);
}
