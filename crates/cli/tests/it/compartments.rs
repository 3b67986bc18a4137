//! Patient compartments from the R4 CompartmentDefinition, end to end: for every resource type it
//! lists and every path of each of its compartment parameters, a resource naming an `org-a`
//! patient is invisible to an `org-b` clinician through every door (read, vread, history, search,
//! totals, `_revinclude`, compartment search, `$everything`), visible with break-glass, and gone
//! once the patient is shredded. Also: resources naming several patients, Binary's
//! `securityContext`, moving a resource between patients, and the limit on patients named.

use carevault_fhir::{CompartmentDefinition, ResourceType};
use carevault_testkit::{Account, Api, Reply, TestServer, examples};
use serde_json::{Value, json};

use crate::server;

fn patient_of(org: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{"family": family}],
        "managingOrganization": {"reference": format!("Organization/{org}")}
    })
}

fn created(r: &Reply, what: &str) -> String {
    assert_eq!(r.status, 201, "{what}: {}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// The `(type, id)` of every entry of a Bundle.
fn entries(r: &Reply) -> Vec<(String, String)> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["resource"]["resourceType"].as_str().unwrap().to_owned(),
                e["resource"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every `$everything` entry, following `next` links.
fn everything(api: &Api, patient: &str, query: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut path = format!("/fhir/Patient/{patient}/$everything?{query}");
    loop {
        let r = api.get(&path);
        out.extend(entries(&r));
        match crate::next_path(&r.json()) {
            Some(next) => path = next,
            None => return out,
        }
    }
}

struct World {
    srv: TestServer,
    admin: Account,
    clin_a: Account,
    clin_b: Account,
    patient_a: String,
}

fn world() -> World {
    let srv = server();
    let admin = srv.admin();
    let clin_a = srv.user(&admin, "dr.alpha", &["clinician"], Some("org-a"));
    let clin_b = srv.user(&admin, "dr.beta", &["clinician"], Some("org-b"));
    let patient_a = created(
        &clin_a
            .api
            .post_fhir("/fhir/Patient", &patient_of("org-a", "Alpha")),
        "patient",
    );
    World {
        srv,
        admin,
        clin_a,
        clin_b,
        patient_a,
    }
}

/// A second admin approves, the first shreds.
fn shred(w: &World, patient: &str) {
    let second = w.srv.user(&w.admin, "second.admin", &["admin"], None);
    let approval = second.api.post_json(
        &format!("/admin/patients/{patient}/shred-approval"),
        &json!({}),
    );
    assert_eq!(approval.status, 201, "{}", approval.text());
    let token = approval.json()["approval_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = w.admin.api.post_json(
        &format!("/admin/patients/{patient}/shred"),
        &json!({"reason": "erasure request ticket 4711", "approval": token}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn every_compartment_parameter_keeps_a_patients_resources_in_their_organization() {
    let w = world();
    let a = &w.patient_a;
    let definition = CompartmentDefinition::r4().unwrap();
    let mut made: Vec<(String, String, String)> = Vec::new();
    let mut types: Vec<ResourceType> = definition
        .types()
        .filter(|t| *t != ResourceType::PATIENT)
        .collect();
    types.sort_by_key(|t| t.as_str());
    for t in &types {
        for param in definition.params(*t) {
            for path in &param.paths {
                let body =
                    examples::with_reference(t.as_str(), path.steps(), &format!("Patient/{a}"));
                let id = created(
                    &w.clin_a.api.post_fhir(&format!("/fhir/{t}"), &body),
                    &path.expression,
                );
                made.push((t.to_string(), id, path.expression.clone()));
            }
        }
    }
    assert!(made.len() >= 100, "{}", made.len());

    let (own, other) = (&w.clin_a.api, &w.clin_b.api);
    for (t, id, expression) in &made {
        assert_eq!(
            own.get(&format!("/fhir/{t}/{id}")).status,
            200,
            "{expression}"
        );
        for path in [
            format!("/fhir/{t}/{id}"),
            format!("/fhir/{t}/{id}/_history/1"),
            format!("/fhir/{t}/{id}/_history"),
        ] {
            assert_eq!(other.get(&path).status, 404, "{expression}: {path}");
        }
        let searched = other.get(&format!("/fhir/{t}?_id={id}&_total=accurate"));
        assert!(entries(&searched).is_empty(), "{expression}");
        assert_eq!(searched.json()["total"], 0, "{expression}");
        let counted = own.get(&format!("/fhir/{t}?_id={id}&_summary=count"));
        assert_eq!(counted.json()["total"], 1, "{expression}");
    }
    let system_history = entries(&other.get("/fhir/_history?_count=100"));
    for (t, id, expression) in &made {
        assert!(
            !system_history.contains(&(t.clone(), id.clone())),
            "{expression}: in the other organization's system history"
        );
    }
    for t in &types {
        let history = entries(&other.get(&format!("/fhir/{t}/_history")));
        assert!(history.is_empty(), "{t}: {history:?}");
        let in_compartment = entries(&own.get(&format!("/fhir/Patient/{a}/{t}")));
        let expected: Vec<(String, String)> = made
            .iter()
            .filter(|(mt, _, _)| mt == t.as_str())
            .map(|(t, id, _)| (t.clone(), id.clone()))
            .collect();
        let mut found = in_compartment.clone();
        found.sort();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(found, expected_sorted, "compartment search {t}");
        assert!(
            entries(&other.get(&format!("/fhir/Patient/{a}/{t}"))).is_empty(),
            "{t}"
        );
    }
    // $everything: every resource made, the Patient, nothing else; refused to the other org.
    let mut all = everything(own, a, "_count=7");
    all.sort();
    let mut expected: Vec<(String, String)> = made
        .iter()
        .map(|(t, id, _)| (t.clone(), id.clone()))
        .chain([("Patient".to_owned(), a.clone())])
        .collect();
    expected.sort();
    assert_eq!(all, expected);
    assert_eq!(
        other.get(&format!("/fhir/Patient/{a}/$everything")).status,
        404
    );
    let only = everything(own, a, "_type=Appointment,Coverage");
    assert!(
        only.iter()
            .all(|(t, _)| t == "Appointment" || t == "Coverage")
            && !only.is_empty(),
        "{only:?}"
    );
    assert!(everything(own, a, "_since=2999-01-01T00:00:00Z").is_empty());
    let bad = own.get(&format!("/fhir/Patient/{a}/$everything?_since=yesterday"));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(own.get("/fhir/Encounter/e1/$everything").status, 404);
    let capabilities = w.srv.api().get("/fhir/metadata").json();
    assert_eq!(
        capabilities["rest"][0]["operation"][0]["definition"],
        "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    );

    // Break-glass for that patient opens reads to the other organization.
    let granted = w.clin_b.api.post_json(
        "/auth/break-glass",
        &json!({"reason": "unconscious patient in the emergency room", "patient": a}),
    );
    assert_eq!(granted.status, 201, "{}", granted.text());
    for (t, id, expression) in &made {
        assert_eq!(
            other.get(&format!("/fhir/{t}/{id}")).status,
            200,
            "{expression}"
        );
    }

    // Shredded: gone for everyone, every one of them.
    shred(&w, a);
    for (t, id, expression) in &made {
        let status = own.get(&format!("/fhir/{t}/{id}")).status;
        assert!(status == 404 || status == 410, "{expression}: {status}");
    }
}

#[test]
fn a_resource_naming_several_patients_needs_every_one_of_them() {
    let w = world();
    let a = &w.patient_a;
    let b = created(
        &w.clin_b
            .api
            .post_fhir("/fhir/Patient", &patient_of("org-b", "Beta")),
        "patient b",
    );
    let a2 = created(
        &w.clin_a
            .api
            .post_fhir("/fhir/Patient", &patient_of("org-a", "Alpha-Two")),
        "patient a2",
    );
    let key = w.admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "scheduler", "scopes": ["system/*.cruds"], "expires_in_days": 30}),
    );
    assert_eq!(key.status, 201, "{}", key.text());
    let service = w.srv.api().with_token(key.json()["key"].as_str().unwrap());
    let appointment = |patients: &[&str]| {
        json!({
            "resourceType": "Appointment",
            "status": "booked",
            "participant": patients.iter().map(|p| json!({
                "actor": {"reference": format!("Patient/{p}")}, "status": "accepted"
            })).collect::<Vec<_>>()
        })
    };
    // A clinician may not write what names a patient of another organization.
    assert_eq!(
        w.clin_a
            .api
            .post_fhir("/fhir/Appointment", &appointment(&[a, &b]))
            .status,
        403
    );
    let shared = created(
        &service.post_fhir("/fhir/Appointment", &appointment(&[a, &b])),
        "appointment a+b",
    );
    for api in [&w.clin_a.api, &w.clin_b.api] {
        assert_eq!(api.get(&format!("/fhir/Appointment/{shared}")).status, 404);
        assert!(entries(&api.get(&format!("/fhir/Appointment?_id={shared}"))).is_empty());
    }
    // `_revinclude` from a patient b's clinician may see does not bring in an Observation about b
    // that a patient of org-a performed.
    let observation = created(
        &service.post_fhir(
            "/fhir/Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                    "subject": {"reference": format!("Patient/{b}")},
                    "performer": [{"reference": format!("Patient/{a}")}]}),
        ),
        "observation b+a",
    );
    let included = entries(&w.clin_b.api.get(&format!(
        "/fhir/Patient?_id={b}&_revinclude=Observation:subject"
    )));
    assert_eq!(included, [("Patient".to_owned(), b.clone())]);
    let included = entries(&service.get(&format!(
        "/fhir/Observation?_id={observation}&_include=Observation:subject"
    )));
    assert_eq!(included.len(), 2, "{included:?}");
    // Break-glass covering the patient it lacks opens it for clinician a.
    let granted = w.clin_a.api.post_json(
        "/auth/break-glass",
        &json!({"reason": "transfer between the two hospitals tonight", "patient": b}),
    );
    assert_eq!(granted.status, 201, "{}", granted.text());
    assert_eq!(
        w.clin_a
            .api
            .get(&format!("/fhir/Appointment/{shared}"))
            .status,
        200
    );

    // Moving an appointment of a's to a2: a's compartment no longer finds it, a2's does.
    let moved = created(
        &w.clin_a
            .api
            .post_fhir("/fhir/Appointment", &appointment(&[a])),
        "appointment a",
    );
    let in_compartment = |p: &str| {
        entries(&w.clin_a.api.get(&format!("/fhir/Patient/{p}/Appointment")))
            .into_iter()
            .map(|(_, id)| id)
            .collect::<Vec<_>>()
    };
    assert!(in_compartment(a).contains(&moved));
    let mut update = appointment(&[&a2]);
    update["id"] = json!(moved);
    let r = w
        .clin_a
        .api
        .put_fhir(&format!("/fhir/Appointment/{moved}"), &update, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!in_compartment(a).contains(&moved));
    assert!(in_compartment(&a2).contains(&moved));

    // Shredding either patient makes the shared appointment unreadable for good.
    shred(&w, &b);
    let status = service.get(&format!("/fhir/Appointment/{shared}")).status;
    assert!(status == 404 || status == 410, "{status}");
    assert!(entries(&service.get(&format!("/fhir/Appointment?_id={shared}"))).is_empty());
    // And no new resource can name the shredded patient with another.
    let r = service.post_fhir("/fhir/Appointment", &appointment(&[a, &b]));
    assert_eq!(r.status, 410, "{}", r.text());
    // a's own appointment (moved to a2) is untouched.
    assert_eq!(
        w.clin_a
            .api
            .get(&format!("/fhir/Appointment/{moved}"))
            .status,
        200
    );
}

#[test]
fn binary_follows_its_security_context_or_its_creators_organization() {
    let w = world();
    let a = &w.patient_a;
    let document = created(
        &w.clin_a.api.post_fhir(
            "/fhir/DocumentReference",
            &json!({
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": {"reference": format!("Patient/{a}")},
                "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}]
            }),
        ),
        "document",
    );
    let binary = |context: Option<String>| {
        let mut b = json!({"resourceType": "Binary", "contentType": "text/plain", "data": "eW91ciBISVYgdGVzdA=="});
        if let Some(c) = context {
            b["securityContext"] = json!({"reference": c});
        }
        b
    };
    let through_document = created(
        &w.clin_a.api.post_fhir(
            "/fhir/Binary",
            &binary(Some(format!("DocumentReference/{document}"))),
        ),
        "binary of a document",
    );
    let through_patient = created(
        &w.clin_a
            .api
            .post_fhir("/fhir/Binary", &binary(Some(format!("Patient/{a}")))),
        "binary of a patient",
    );
    let own_org = created(
        &w.clin_a.api.post_fhir("/fhir/Binary", &binary(None)),
        "binary without context",
    );
    let unresolvable = created(
        &w.clin_a.api.post_fhir(
            "/fhir/Binary",
            &binary(Some("DocumentReference/nope".into())),
        ),
        "binary with an unresolvable context",
    );
    for id in [&through_document, &through_patient, &own_org, &unresolvable] {
        assert_eq!(w.clin_a.api.get(&format!("/fhir/Binary/{id}")).status, 200);
        assert_eq!(w.clin_b.api.get(&format!("/fhir/Binary/{id}")).status, 404);
    }
    assert!(entries(&w.clin_b.api.get("/fhir/Binary")).is_empty());
    // The other organization's clinician may not attach a Binary to a's document.
    let r = w.clin_b.api.post_fhir(
        "/fhir/Binary",
        &binary(Some(format!("DocumentReference/{document}"))),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // An admin (no organization) gets a clear refusal, not a shared Binary.
    let key = w.admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "uploader", "scopes": ["system/Binary.c"], "expires_in_days": 30}),
    );
    let service = w.srv.api().with_token(key.json()["key"].as_str().unwrap());
    let r = service.post_fhir("/fhir/Binary", &binary(None));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("Binary.securityContext"), "{}", r.text());
}

#[test]
fn a_resource_naming_too_many_patients_is_refused_whole() {
    let w = world();
    let member: Vec<Value> = (0..=carevault_fhir::MAX_PATIENTS)
        .map(|i| json!({"entity": {"reference": format!("Patient/p{i}")}}))
        .collect();
    let group =
        json!({"resourceType": "Group", "type": "person", "actual": true, "member": member});
    let r = w.clin_a.api.post_fhir("/fhir/Group", &group);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert!(r.text().contains("Group.member.entity"), "{}", r.text());
    assert!(entries(&w.clin_a.api.get("/fhir/Group")).is_empty());
    // A reference to a patient that does not exist grants no one anything.
    let r = w.clin_a.api.post_fhir(
        "/fhir/Appointment",
        &json!({"resourceType": "Appointment", "status": "booked",
                "participant": [{"actor": {"reference": "Patient/does-not-exist"}, "status": "accepted"}]}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
}
