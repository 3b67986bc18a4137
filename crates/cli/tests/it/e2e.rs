//! The whole first-run path over HTTPS: admin enrollment, a clinician, and every FHIR
//! interaction.

use carevault_testkit::{Account, Api, TestServer};
use serde_json::json;

use crate::{observation, patient, server};

#[test]
fn first_run_to_fhir_crud_and_history() {
    let srv = server();
    let out = srv.output();
    assert!(
        out.contains("TLS certificate SHA-256 fingerprint: "),
        "{out}"
    );
    assert!(srv.admin_token.starts_with("cve_"));

    // Only metadata is public.
    let anon = srv.api();
    only_metadata_is_public(&anon);
    let admin = admin_enrolls_once_and_has_no_fhir_access(&srv, &anon);
    let clin = clinician_of_org_a(&srv, &admin);
    let id = create_read_update_and_vread(&clin);
    update_as_create_with_a_client_id(&clin);
    // A resource in the patient's compartment
    let obs = clin
        .api
        .post_fhir("/fhir/Observation", &observation(&id, "resting"));
    assert_eq!(obs.status, 201, "{}", obs.text());
    delete_keeps_history(&clin, &id);
    type_history_pages_by_next_links(&clin);
    // logout revokes the session
    assert_eq!(
        clin.api.request("POST", "/auth/logout", &[], None).status,
        204
    );
    assert_eq!(clin.api.get("/auth/whoami").status, 401);
}

fn only_metadata_is_public(anon: &Api) {
    let meta = anon.get("/fhir/metadata");
    assert_eq!(meta.status, 200);
    assert_eq!(meta.json()["resourceType"], "CapabilityStatement");
    assert_eq!(meta.json()["fhirVersion"], "4.0.1");
    assert_eq!(anon.get("/fhir/Patient/x").status, 401);
    assert_eq!(anon.get("/admin/users").status, 401);
}

fn admin_enrolls_once_and_has_no_fhir_access(srv: &TestServer, anon: &Api) -> Account {
    let admin = srv.admin();
    let whoami = admin.api.get("/auth/whoami").json();
    assert_eq!(whoami["username"], "admin");
    assert_eq!(whoami["roles"], json!(["admin"]));
    // The enrollment token is spent.
    let again = anon.post_json(
        "/auth/enroll/start",
        &json!({"enrollment_token": srv.admin_token}),
    );
    assert_eq!(again.status, 400);
    // Admin has no FHIR access.
    assert_eq!(
        admin
            .api
            .post_fhir("/fhir/Patient", &patient("Doe", "Jane"))
            .status,
        403
    );
    admin
}

fn clinician_of_org_a(srv: &TestServer, admin: &Account) -> Account {
    let clin = srv.user(admin, "dr.house", &["clinician"], Some("org-a"));
    assert_eq!(clin.api.get("/auth/whoami").json()["organization"], "org-a");
    // A clinician cannot administer accounts.
    assert_eq!(clin.api.get("/admin/users").status, 403);
    let users = admin.api.get("/admin/users").json();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "dr.house"]);
    clin
}

/// Returns the id of the patient it created.
fn create_read_update_and_vread(clin: &Account) -> String {
    // create
    let created = clin.api.post_fhir("/fhir/Patient", &patient("Doe", "Jane"));
    assert_eq!(created.status, 201, "{}", created.text());
    let body = created.json();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    assert!(created.header("last-modified").unwrap().ends_with("GMT"));
    let location = created.header("location").unwrap();
    assert!(
        location.ends_with(&format!("/fhir/Patient/{id}/_history/1")),
        "{location}"
    );

    // read
    let read = clin.api.get(&format!("/fhir/Patient/{id}"));
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["name"][0]["family"], "Doe");
    assert_eq!(
        read.header("content-type"),
        Some("application/fhir+json; charset=utf-8")
    );

    // update with the right If-Match, then a stale one
    let mut changed = read.json();
    changed["name"][0]["family"] = json!("Roe");
    let updated = clin.api.put_fhir(
        &format!("/fhir/Patient/{id}"),
        &changed,
        &[("If-Match", "W/\"1\"")],
    );
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(updated.json()["meta"]["versionId"], "2");
    assert_eq!(updated.header("etag"), Some("W/\"2\""));
    let stale = clin.api.put_fhir(
        &format!("/fhir/Patient/{id}"),
        &changed,
        &[("If-Match", "W/\"1\"")],
    );
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["resourceType"], "OperationOutcome");

    // vread both versions
    let v1 = clin.api.get(&format!("/fhir/Patient/{id}/_history/1"));
    assert_eq!(v1.status, 200);
    assert_eq!(v1.json()["name"][0]["family"], "Doe");
    assert_eq!(
        clin.api
            .get(&format!("/fhir/Patient/{id}/_history/2"))
            .json()["name"][0]["family"],
        "Roe"
    );
    assert_eq!(
        clin.api
            .get(&format!("/fhir/Patient/{id}/_history/3"))
            .status,
        404
    );
    id
}

fn update_as_create_with_a_client_id(clin: &Account) {
    // update-as-create with a client id, and Prefer
    let mut own = patient("Client", "Chosen");
    own["id"] = json!("client-chosen-1");
    let made = clin.api.put_fhir(
        "/fhir/Patient/client-chosen-1",
        &own,
        &[("Prefer", "return=minimal")],
    );
    assert_eq!(made.status, 201, "{}", made.text());
    assert!(made.body.is_empty());
    assert_eq!(made.header("etag"), Some("W/\"1\""));
    let oo = clin.api.put_fhir(
        "/fhir/Patient/client-chosen-1",
        &own,
        &[("Prefer", "return=OperationOutcome")],
    );
    assert_eq!(oo.status, 200);
    assert_eq!(oo.json()["resourceType"], "OperationOutcome");
}

fn delete_keeps_history(clin: &Account, id: &str) {
    // delete: later reads answer 410, history keeps every version
    let deleted = clin.api.delete(&format!("/fhir/Patient/{id}"));
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.header("etag"), Some("W/\"3\""));
    let gone = clin.api.get(&format!("/fhir/Patient/{id}"));
    assert_eq!(gone.status, 410);
    assert_eq!(gone.json()["issue"][0]["code"], "deleted");
    assert_eq!(
        clin.api
            .get(&format!("/fhir/Patient/{id}/_history/3"))
            .status,
        410
    );
    assert_eq!(
        clin.api
            .get(&format!("/fhir/Patient/{id}/_history/1"))
            .status,
        200
    );

    let history = clin.api.get(&format!("/fhir/Patient/{id}/_history"));
    assert_eq!(history.status, 200);
    let bundle = history.json();
    assert_eq!(bundle["type"], "history");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[1]["resource"]["meta"]["versionId"], "2");
    assert_eq!(entries[2]["request"]["method"], "POST");
}

fn type_history_pages_by_next_links(clin: &Account) {
    // type history pages by opaque next links until there is no next
    let mut seen = 0;
    let mut path = "/fhir/Patient/_history?_count=2".to_owned();
    let mut pages = 0;
    loop {
        let page = clin.api.get(&path).json();
        pages += 1;
        let n = page["entry"].as_array().unwrap().len();
        assert!(n <= 2);
        seen += n;
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .cloned();
        match next {
            Some(link) => {
                let url = link["url"].as_str().unwrap();
                path = url[url.find("/fhir/").unwrap()..].to_owned();
            }
            None => break,
        }
    }
    assert_eq!(seen, 5, "3 versions of one patient and 2 of the other");
    assert_eq!(pages, 3);
}

#[test]
fn recovery_code_works_once_and_disable_revokes_sessions() {
    let srv = server();
    let admin = srv.admin();
    let mut clin = srv.user(&admin, "nurse.joy", &["clinician"], Some("org-a"));
    assert_eq!(clin.recovery_codes.len(), 10);
    let code = clin.recovery_codes[0].clone();
    let login = |second: &str| {
        srv.api().post_json(
            "/auth/login",
            &json!({"username": "nurse.joy", "password": carevault_testkit::TEST_PASSWORD, "totp_code": second}),
        )
    };
    assert_eq!(login(&code).status, 200);
    assert_eq!(login(&code).status, 401, "a recovery code works once");

    assert_eq!(
        admin
            .api
            .request("POST", "/admin/users/nurse.joy/disable", &[], None)
            .status,
        204
    );
    assert_eq!(
        clin.api.get("/auth/whoami").status,
        401,
        "disable revokes sessions"
    );
    assert_eq!(
        login(&clin.auth.fresh_code()).status,
        401,
        "a disabled account cannot log in"
    );
    assert_eq!(
        admin
            .api
            .request("POST", "/admin/users/nurse.joy/enable", &[], None)
            .status,
        204
    );
    let token = srv.login("nurse.joy", &mut clin.auth);
    assert_eq!(srv.api().with_token(&token).get("/auth/whoami").status, 200);

    // reset: old credentials are revoked, a new enrollment token is issued
    let reset = admin
        .api
        .request("POST", "/admin/users/nurse.joy/reset", &[], None);
    assert_eq!(reset.status, 200);
    assert_eq!(srv.api().with_token(&token).get("/auth/whoami").status, 401);
    assert_eq!(login(&clin.recovery_codes[1]).status, 401);
    let new_token = reset.json()["enrollment_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = srv.enroll_and_login("nurse.joy", &new_token);
    assert_eq!(again.api.get("/auth/whoami").status, 200);

    // An admin cannot disable or reset themselves.
    assert_eq!(
        admin
            .api
            .request("POST", "/admin/users/admin/disable", &[], None)
            .status,
        409
    );
    // Only admins create accounts.
    let by_clin = again.api.post_json(
        "/admin/users",
        &json!({"username": "mallory", "roles": ["admin"]}),
    );
    assert_eq!(by_clin.status, 403);
}
