//! Least privilege, decided by Cedar, driven end to end over HTTPS: the policy matrix of every
//! built-in role x action class x own/foreign organization x with/without break-glass; API key
//! scopes, expiry, revocation and CIDRs; custom policies.

use carevault_testkit::{Account, Api, TestServer};
use serde_json::{Value, json};

use crate::{observation, server};

fn patient_of(org: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{"family": family}],
        "managingOrganization": {"reference": format!("Organization/{org}")}
    })
}

fn id_of(r: &carevault_testkit::Reply) -> String {
    assert!(r.status == 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

struct World {
    srv: TestServer,
    admin: Account,
    clin_a: Account,
    clin_b: Account,
    auditor: Account,
    developer: Account,
    patient_a: String,
    patient_b: String,
    obs_b: String,
}

fn world() -> World {
    let srv = server();
    let admin = srv.admin();
    let clin_a = srv.user(&admin, "dr.alpha", &["clinician"], Some("org-a"));
    let clin_b = srv.user(&admin, "dr.beta", &["clinician"], Some("org-b"));
    let auditor = srv.user(&admin, "ann.audit", &["auditor"], None);
    let developer = srv.user(&admin, "dev.ops", &["developer"], None);
    let patient_a = id_of(
        &clin_a
            .api
            .post_fhir("/fhir/Patient", &patient_of("org-a", "Alpha")),
    );
    let patient_b = id_of(
        &clin_b
            .api
            .post_fhir("/fhir/Patient", &patient_of("org-b", "Beta")),
    );
    id_of(
        &clin_a
            .api
            .post_fhir("/fhir/Observation", &observation(&patient_a, "a")),
    );
    let obs_b = id_of(
        &clin_b
            .api
            .post_fhir("/fhir/Observation", &observation(&patient_b, "b")),
    );
    World {
        srv,
        admin,
        clin_a,
        clin_b,
        auditor,
        developer,
        patient_a,
        patient_b,
        obs_b,
    }
}

/// The status each action class answers for `api` on the patient `pid` (and its compartment).
fn statuses(api: &Api, pid: &str) -> Vec<(&'static str, u16)> {
    let mut update = patient_of("org-a", "Changed");
    update["id"] = json!(pid);
    // The update keeps the patient's own organization, whatever it is.
    let current = api.get(&format!("/fhir/Patient/{pid}"));
    if current.status == 200 {
        update["managingOrganization"] = current.json()["managingOrganization"].clone();
    }
    vec![
        ("read", api.get(&format!("/fhir/Patient/{pid}")).status),
        (
            "vread",
            api.get(&format!("/fhir/Patient/{pid}/_history/1")).status,
        ),
        (
            "history",
            api.get(&format!("/fhir/Patient/{pid}/_history")).status,
        ),
        (
            "update",
            api.put_fhir(&format!("/fhir/Patient/{pid}"), &update, &[])
                .status,
        ),
        (
            "create",
            api.post_fhir("/fhir/Observation", &observation(pid, "x"))
                .status,
        ),
        ("manage-users", api.get("/admin/users").status),
        ("manage-policies", api.get("/admin/policies").status),
        ("manage-keys", api.get("/admin/api-keys").status),
        ("audit-read", api.get("/audit/events?_count=1").status),
        ("metrics-read", api.get("/metrics").status),
    ]
}

/// The ids a search answers, sorted.
fn search_ids(api: &Api, path: &str) -> Vec<String> {
    let r = api.get(path);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ids: Vec<String> = r.json()["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn expect(who: &str, got: &[(&str, u16)], want: &[u16]) {
    let labels: Vec<&str> = got.iter().map(|(l, _)| *l).collect();
    let statuses: Vec<u16> = got.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, want, "{who}: {labels:?}");
}

// The statuses of the action classes, in the order `statuses` asks them:
//                                read vread hist  upd create users pol  keys audit metrics
const NO_PHI_ADMIN: [u16; 10] = [403, 403, 403, 403, 403, 200, 200, 200, 403, 403];
const NO_PHI_AUDITOR: [u16; 10] = [403, 403, 403, 403, 403, 403, 403, 403, 200, 200];
// A developer reads de-identified data (tests/it/deid.rs checks what they get) and never writes.
const DEVELOPER: [u16; 10] = [200, 200, 200, 403, 403, 403, 403, 403, 403, 200];
const CLIN_OWN: [u16; 10] = [200, 200, 200, 200, 201, 403, 403, 403, 403, 403];
// A foreign patient is indistinguishable from a missing one; creating into it is refused.
const CLIN_FOREIGN: [u16; 10] = [404, 404, 404, 404, 403, 403, 403, 403, 403, 403];

#[test]
fn policy_matrix_roles_by_action_by_organization_by_break_glass() {
    let w = world();
    every_role_on_own_and_foreign_patients(&w);
    a_foreign_patient_looks_missing_in_reads_history_and_searches(&w);
    only_clinicians_with_a_real_reason_may_break_glass(&w);
    break_glass_opens_reads_of_that_patient_only(&w);
    break_glass_reads_are_marked_in_the_trail_and_alerted(&w);
}

fn every_role_on_own_and_foreign_patients(w: &World) {
    let (own, foreign) = (&w.patient_a, &w.patient_b);
    for (who, account, own_want, foreign_want) in [
        ("admin", &w.admin, NO_PHI_ADMIN, NO_PHI_ADMIN),
        ("auditor", &w.auditor, NO_PHI_AUDITOR, NO_PHI_AUDITOR),
        ("developer", &w.developer, DEVELOPER, DEVELOPER),
        ("clinician", &w.clin_a, CLIN_OWN, CLIN_FOREIGN),
    ] {
        expect(
            &format!("{who}, own organization"),
            &statuses(&account.api, own),
            &own_want,
        );
        expect(
            &format!("{who}, foreign organization"),
            &statuses(&account.api, foreign),
            &foreign_want,
        );
    }
}

fn a_foreign_patient_looks_missing_in_reads_history_and_searches(w: &World) {
    let (own, foreign) = (&w.patient_a, &w.patient_b);
    // A foreign patient answers exactly like one that does not exist.
    let missing = w.clin_a.api.get("/fhir/Patient/does-not-exist");
    let hidden = w.clin_a.api.get(&format!("/fhir/Patient/{foreign}"));
    assert_eq!(
        (missing.status, missing.body.clone()),
        (hidden.status, hidden.body.clone())
    );
    assert_eq!(
        w.clin_a
            .api
            .get(&format!("/fhir/Observation/{}", w.obs_b))
            .status,
        404
    );
    // Type history holds only what the caller may read.
    let listed = w.clin_a.api.get("/fhir/Patient/_history").json();
    let ids: Vec<&str> = listed["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&own.as_str()) && !ids.contains(&foreign.as_str()),
        "{ids:?}"
    );
    // So does the whole system's history, across every type.
    let system = w.clin_a.api.get("/fhir/_history");
    assert_eq!(system.status, 200, "{}", system.text());
    let ids: Vec<String> = system.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.iter().any(|u| u.ends_with(&format!("/Patient/{own}"))),
        "{ids:?}"
    );
    assert!(
        !ids.iter()
            .any(|u| u.ends_with(&format!("/Patient/{foreign}"))
                || u.ends_with(&format!("/Observation/{}", w.obs_b))),
        "{ids:?}"
    );

    // Searches hold only what the caller may read.
    assert_eq!(search_ids(&w.clin_a.api, "/fhir/Patient"), [own.as_str()]);
    assert!(
        search_ids(
            &w.clin_a.api,
            &format!("/fhir/Observation?patient={foreign}")
        )
        .is_empty()
    );
}

fn only_clinicians_with_a_real_reason_may_break_glass(w: &World) {
    let foreign = &w.patient_b;
    // Break-glass: only clinicians may ask, with a real reason.
    let reason = "Unconscious patient in the emergency department, allergies needed";
    for other in [&w.admin, &w.auditor, &w.developer] {
        assert_eq!(
            other
                .api
                .post_json("/auth/break-glass", &json!({"reason": reason}))
                .status,
            403
        );
    }
    assert_eq!(
        w.clin_a
            .api
            .post_json("/auth/break-glass", &json!({"reason": "emergency"}))
            .status,
        400
    );
    let granted = w.clin_a.api.post_json(
        "/auth/break-glass",
        &json!({"reason": reason, "patient": foreign}),
    );
    assert_eq!(granted.status, 201, "{}", granted.text());
}

fn break_glass_opens_reads_of_that_patient_only(w: &World) {
    let (own, foreign) = (&w.patient_a, &w.patient_b);
    // With break-glass: reads of that patient open up; writes and everything else do not.
    let clin_break_glass = [200, 200, 200, 404, 403, 403, 403, 403, 403, 403];
    expect(
        "clinician, foreign organization, break-glass",
        &statuses(&w.clin_a.api, foreign),
        &clin_break_glass,
    );
    expect(
        "clinician, own organization, break-glass",
        &statuses(&w.clin_a.api, own),
        &CLIN_OWN,
    );
    for (who, account, want) in [
        ("admin", &w.admin, NO_PHI_ADMIN),
        ("auditor", &w.auditor, NO_PHI_AUDITOR),
        ("developer", &w.developer, DEVELOPER),
    ] {
        expect(
            &format!("{who}, foreign organization, break-glass asked"),
            &statuses(&account.api, foreign),
            &want,
        );
    }
    // Searches open up to that patient too, and only to that patient.
    let mut both = vec![own.clone(), foreign.clone()];
    both.sort();
    assert_eq!(search_ids(&w.clin_a.api, "/fhir/Patient"), both);
    assert_eq!(
        search_ids(
            &w.clin_a.api,
            &format!("/fhir/Observation?patient={foreign}")
        ),
        [w.obs_b.as_str()]
    );
}

fn break_glass_reads_are_marked_in_the_trail_and_alerted(w: &World) {
    let (own, foreign) = (&w.patient_a, &w.patient_b);
    let searched = w
        .auditor
        .api
        .get(&format!(
            "/audit/events?patient={foreign}&action=search-type"
        ))
        .json();
    assert!(
        searched["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["resource"]["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"),
        "a search that returned a break-glass read is marked: {searched}"
    );
    // Every break-glass read is marked in the trail and raises a security alert.
    let trail = w
        .auditor
        .api
        .get(&format!("/audit/events?patient={foreign}&action=read"))
        .json();
    let marked = trail["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["purposeOfEvent"][0]["coding"][0]["code"] == "BTG")
        .count();
    assert!(marked >= 1, "{trail}");
    assert!(w.srv.logs().contains("break_glass_access"));
    let decided = w
        .auditor
        .api
        .get(&format!("/audit/events?patient={own}&action=read&_count=1"))
        .json();
    assert_eq!(
        decided["entry"][0]["resource"]["agent"][0]["policy"][0],
        "builtin.clinician.own-organization",
        "events name the deciding policies"
    );
}

#[test]
fn api_keys_grant_their_scopes_and_nothing_else() {
    let w = world();
    a_service_key_reads_its_scope_and_nothing_else(&w);
    bad_or_unauthorized_key_requests_are_refused(&w);
    revoked_expired_and_out_of_cidr_keys_answer_401(&w);
    a_clinicians_own_key_never_exceeds_their_rights(&w);
    a_metrics_key_reads_metrics_and_nothing_else(&w);
}

/// Creates an API key; returns its secret.
fn create(api: &Api, path: &str, body: Value) -> String {
    let r = api.post_json(path, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["key"].as_str().unwrap().to_owned()
}

fn a_service_key_reads_its_scope_and_nothing_else(w: &World) {
    let obs_key = create(
        &w.admin.api,
        "/admin/api-keys",
        json!({"name": "lab-feed", "scopes": ["system/Observation.rs"], "expires_in_days": 30}),
    );
    assert!(obs_key.starts_with("cvk_"));
    let key = w.srv.api().with_token(&obs_key);
    assert_eq!(
        key.get(&format!("/fhir/Observation/{}", w.obs_b)).status,
        200
    );
    assert_eq!(key.get("/fhir/Observation/_history").status, 200);
    // The system's history holds only the types of the key's scope.
    let system = key.get("/fhir/_history?_count=50");
    assert_eq!(system.status, 200, "{}", system.text());
    let types: Vec<String> = system.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap().to_owned())
        .collect();
    assert!(!types.is_empty());
    assert!(
        types.iter().all(|u| u.starts_with("Observation")),
        "{types:?}"
    );
    // A search across types is authorized type by type: a type outside the scope refuses it.
    assert_eq!(key.get("/fhir?_type=Observation").status, 200);
    assert_eq!(key.get("/fhir?_type=Observation,Patient").status, 403);
    let searched = key.get("/fhir/Observation?code=8867-4");
    assert_eq!(searched.status, 200, "{}", searched.text());
    assert_eq!(
        searched.json()["entry"].as_array().unwrap().len(),
        2,
        "a service key's search is not limited to an organization"
    );
    assert_eq!(key.get("/fhir/Patient?gender=female").status, 403);
    assert_eq!(
        key.get(&format!("/fhir/Patient/{}", w.patient_a)).status,
        403
    );
    assert_eq!(
        key.post_fhir("/fhir/Observation", &observation(&w.patient_a, "k"))
            .status,
        403
    );
    assert_eq!(key.get("/admin/users").status, 403);
    assert_eq!(key.get("/audit/events").status, 403);
    // Keys are stored hashed, shown once.
    let listed = w.admin.api.get("/admin/api-keys").text();
    assert!(listed.contains("lab-feed") && !listed.contains(&obs_key));
}

fn bad_or_unauthorized_key_requests_are_refused(w: &World) {
    // Refused: bad scopes, too long, not an admin.
    assert_eq!(
        w.admin
            .api
            .post_json(
                "/admin/api-keys",
                &json!({"name": "x1", "scopes": ["Observation.read"]})
            )
            .status,
        400
    );
    assert_eq!(
        w.admin
            .api
            .post_json(
                "/admin/api-keys",
                &json!({"name": "x2", "scopes": ["system/Observation.r"], "expires_in_days": 91})
            )
            .status,
        400
    );
    assert_eq!(
        w.clin_a
            .api
            .post_json(
                "/admin/api-keys",
                &json!({"name": "x3", "scopes": ["system/*.cruds"]})
            )
            .status,
        403
    );
}

fn revoked_expired_and_out_of_cidr_keys_answer_401(w: &World) {
    // Revoked, expired and out-of-CIDR keys answer 401.
    let revoked = create(
        &w.admin.api,
        "/admin/api-keys",
        json!({"name": "old-feed", "scopes": ["system/Observation.r"]}),
    );
    assert_eq!(
        w.srv
            .api()
            .with_token(&revoked)
            .get(&format!("/fhir/Observation/{}", w.obs_b))
            .status,
        200
    );
    assert_eq!(w.admin.api.delete("/admin/api-keys/old-feed").status, 204);
    assert_eq!(
        w.srv
            .api()
            .with_token(&revoked)
            .get(&format!("/fhir/Observation/{}", w.obs_b))
            .status,
        401
    );
    let expiring = create(
        &w.admin.api,
        "/admin/api-keys",
        json!({"name": "expiring", "scopes": ["system/Observation.r"], "expires_in_days": 1}),
    );
    w.srv
        .execute("UPDATE api_key SET expires_at = 1 WHERE name = 'expiring'");
    assert_eq!(
        w.srv
            .api()
            .with_token(&expiring)
            .get(&format!("/fhir/Observation/{}", w.obs_b))
            .status,
        401
    );
    let elsewhere = create(
        &w.admin.api,
        "/admin/api-keys",
        json!({"name": "elsewhere", "scopes": ["system/Observation.r"], "allowed_cidrs": ["10.0.0.0/8"]}),
    );
    assert_eq!(
        w.srv
            .api()
            .with_token(&elsewhere)
            .get(&format!("/fhir/Observation/{}", w.obs_b))
            .status,
        401
    );
    let local = create(
        &w.admin.api,
        "/admin/api-keys",
        json!({"name": "local", "scopes": ["system/Observation.r"], "allowed_cidrs": ["127.0.0.0/8", "::1/128"]}),
    );
    assert_eq!(
        w.srv
            .api()
            .with_token(&local)
            .get(&format!("/fhir/Observation/{}", w.obs_b))
            .status,
        200
    );
}

fn a_clinicians_own_key_never_exceeds_their_rights(w: &World) {
    // A key a clinician mints for themselves never exceeds their own rights.
    let mine = create(
        &w.clin_a.api,
        "/auth/api-keys",
        json!({"name": "my-script", "scopes": ["user/*.rs"]}),
    );
    let mine = w.srv.api().with_token(&mine);
    assert_eq!(
        mine.get(&format!("/fhir/Patient/{}", w.patient_a)).status,
        200
    );
    assert_eq!(
        mine.get(&format!("/fhir/Patient/{}", w.patient_b)).status,
        404
    );
    let mut update = patient_of("org-a", "Nope");
    update["id"] = json!(w.patient_a);
    assert_eq!(
        mine.put_fhir(&format!("/fhir/Patient/{}", w.patient_a), &update, &[])
            .status,
        403
    );
    assert_eq!(
        w.clin_a.api.get("/auth/api-keys").json()["api_keys"][0]["name"],
        "my-script"
    );
    assert_eq!(
        w.clin_a.api.delete("/auth/api-keys/lab-feed").status,
        404,
        "only one's own keys"
    );
    assert_eq!(w.clin_a.api.delete("/auth/api-keys/my-script").status, 204);
    assert_eq!(
        mine.get(&format!("/fhir/Patient/{}", w.patient_a)).status,
        401
    );
}

fn a_metrics_key_reads_metrics_and_nothing_else(w: &World) {
    let scraper = create(
        &w.admin.api,
        "/admin/api-keys",
        json!({"name": "prometheus", "scopes": ["metrics"], "expires_in_days": 90}),
    );
    let scraper = w.srv.api().with_token(&scraper);
    let scraped = scraper.get("/metrics");
    assert_eq!(scraped.status, 200, "{}", scraped.text());
    assert!(scraped.text().contains("carevault_requests_total"));
    let refused = [
        ("/fhir/Patient", scraper.get("/fhir/Patient").status),
        (
            "/fhir/Patient/{id}",
            scraper
                .get(&format!("/fhir/Patient/{}", w.patient_a))
                .status,
        ),
        (
            "POST /fhir/Observation",
            scraper
                .post_fhir("/fhir/Observation", &observation(&w.patient_a, "m"))
                .status,
        ),
        ("/admin/users", scraper.get("/admin/users").status),
        ("/admin/api-keys", scraper.get("/admin/api-keys").status),
        ("/admin/keys", scraper.get("/admin/keys").status),
        ("/admin/policies", scraper.get("/admin/policies").status),
        ("/audit/events", scraper.get("/audit/events").status),
    ];
    for (what, status) in refused {
        assert_eq!(status, 403, "a metrics key on {what}");
    }
    // The scope stands alone, and FHIR keys (a clinician's own, a service key) do not read it.
    let mixed = w.admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "greedy", "scopes": ["metrics", "system/*.r"]}),
    );
    assert_eq!(mixed.status, 400, "{}", mixed.text());
    let clinician_key = create(
        &w.clin_a.api,
        "/auth/api-keys",
        json!({"name": "clin-script", "scopes": ["user/*.rs"]}),
    );
    assert_eq!(
        w.srv
            .api()
            .with_token(&clinician_key)
            .get("/metrics")
            .status,
        403
    );
    // A clinician's own metrics key is no better: the clinician may not read the metrics.
    let clinician_metrics = create(
        &w.clin_a.api,
        "/auth/api-keys",
        json!({"name": "clin-metrics", "scopes": ["metrics"]}),
    );
    assert_eq!(
        w.srv
            .api()
            .with_token(&clinician_metrics)
            .get("/metrics")
            .status,
        403
    );
}

/// A search decides other organizations' patients before opening them only while no policy
/// reads labels: a custom policy that permits on a label must still open them.
#[test]
fn a_policy_permitting_on_a_label_opens_labelled_foreign_patients_to_search() {
    let w = world();
    let clin_b = &w.clin_b;
    let mut shared = patient_of("org-b", "Sharedfamily");
    shared["meta"] = json!({"security": [{"system": "urn:example:sharing", "code": "SHARED"}]});
    let shared = id_of(&clin_b.api.post_fhir("/fhir/Patient", &shared));
    let unlabelled = id_of(
        &clin_b
            .api
            .post_fhir("/fhir/Patient", &patient_of("org-b", "Sharedfamily")),
    );
    let query = "/fhir/Patient?name=sharedfam";
    assert_eq!(search_ids(&w.clin_a.api, query), Vec::<String>::new());
    assert_eq!(search_ids(&clin_b.api, query), {
        let mut both = vec![shared.clone(), unlabelled.clone()];
        both.sort();
        both
    });

    let permit = w.admin.api.post_json(
        "/admin/policies",
        &json!({"name": "shared-label", "policy": "permit (principal in CareVault::Role::\"clinician\", action in CareVault::Action::\"fhir-read\", resource is CareVault::Resource) when { resource.security.contains(\"SHARED\") };"}),
    );
    assert_eq!(permit.status, 201, "{}", permit.text());
    assert_eq!(search_ids(&w.clin_a.api, query), vec![shared.clone()]);
    assert_eq!(
        search_ids(
            &w.clin_a.api,
            &format!("{query}&_total=accurate&_sort=birthdate")
        ),
        vec![shared.clone()]
    );
    assert_eq!(
        w.clin_a
            .api
            .get(&format!("/fhir/Patient/{unlabelled}"))
            .status,
        404
    );

    assert_eq!(
        w.admin.api.delete("/admin/policies/shared-label").status,
        204
    );
    assert_eq!(search_ids(&w.clin_a.api, query), Vec::<String>::new());
}

#[test]
fn custom_policies_are_validated_and_take_effect_on_the_next_request() {
    let w = world();
    let practitioner = w.clin_a.api.post_fhir(
        "/fhir/Practitioner",
        &json!({"resourceType": "Practitioner", "name": [{"family": "House"}]}),
    );
    let pr = id_of(&practitioner);
    assert_eq!(
        w.clin_a.api.get(&format!("/fhir/Practitioner/{pr}")).status,
        200
    );

    // Invalid: refused with Cedar's own diagnostics, nothing changes.
    let before = w.admin.api.get("/admin/policies").json()["policy_set_version"].clone();
    let bad = w.admin.api.post_json(
        "/admin/policies",
        &json!({"name": "typo", "policy": "forbid (principal, action, resource is CareVault::Resource) when { resource.colour == \"red\" };"}),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("colour"), "{}", bad.text());
    let syntax = w.admin.api.post_json(
        "/admin/policies",
        &json!({"name": "broken", "policy": "permit (principal, action"}),
    );
    assert_eq!(syntax.status, 400);
    assert_eq!(
        w.admin.api.get("/admin/policies").json()["policy_set_version"],
        before
    );
    assert_eq!(
        w.clin_a
            .api
            .post_json(
                "/admin/policies",
                &json!({"name": "mine", "policy": "permit (principal, action, resource);"})
            )
            .status,
        403
    );

    // A valid forbid applies to the very next request; removing it restores access.
    let forbid = w.admin.api.post_json(
        "/admin/policies",
        &json!({"name": "no-practitioners", "policy": "forbid (principal, action == CareVault::Action::\"read\", resource is CareVault::Resource) when { resource.type == \"Practitioner\" };"}),
    );
    assert_eq!(forbid.status, 201, "{}", forbid.text());
    assert_eq!(
        w.clin_a.api.get(&format!("/fhir/Practitioner/{pr}")).status,
        403
    );
    assert_eq!(
        w.clin_a
            .api
            .get(&format!("/fhir/Patient/{}", w.patient_a))
            .status,
        200
    );
    let listed = w.admin.api.get("/admin/policies").json();
    assert_eq!(listed["policies"][0]["name"], "no-practitioners");
    assert_eq!(
        w.admin
            .api
            .delete("/admin/policies/no-practitioners")
            .status,
        204
    );
    assert_eq!(
        w.clin_a.api.get(&format!("/fhir/Practitioner/{pr}")).status,
        200
    );
    assert_eq!(
        w.admin
            .api
            .delete("/admin/policies/no-practitioners")
            .status,
        404
    );

    // `carevault policy test` checks a file offline.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.cedar");
    std::fs::write(&good, "forbid (principal, action, resource is CareVault::Resource) when { resource.security.contains(\"R\") };").unwrap();
    let out = std::process::Command::new(crate::bin())
        .args(["policy", "test"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit (principal, action, resource) when { resource.colour };",
    )
    .unwrap();
    let out = std::process::Command::new(crate::bin())
        .args(["policy", "test"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
}
