//! Hostile input for every endpoint class: each answers with a clear OperationOutcome, writes
//! nothing, and the server keeps serving.

use carevault_testkit::{Account, Api, Reply, TEST_PASSWORD, TestServer};
use serde_json::json;

use crate::{bin, patient, server};

fn versions(srv: &TestServer) -> i64 {
    srv.query_i64("SELECT COUNT(*) FROM resource_version")
}

fn assert_outcome(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(
        r.json()["resourceType"],
        "OperationOutcome",
        "{what}: {}",
        r.text()
    );
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/fhir+json"),
        "{what}"
    );
}

fn raw(api: &Api, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
    api.request(method, path, &[("Content-Type", content_type)], Some(body))
}

#[test]
fn malformed_oversized_nested_and_mistyped_requests_change_nothing() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.hostile", &["clinician"], Some("org-a"));
    let api = &clin.api;
    let id = api
        .post_fhir("/fhir/Patient", &patient("Keep", "Me"))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = versions(&srv);
    malformed_and_oversized_bodies(&srv, api);
    wrong_content_types_and_formats(api, &id);
    unknown_types_and_invalid_resources(api);
    mismatched_missing_and_invalid_ids(api, &id);
    bad_queries_methods_and_routes(api, &id);
    hostile_login_and_account_requests(&srv, &admin, api);

    assert_eq!(versions(&srv), before, "refused requests wrote nothing");
    let read = api.get(&format!("/fhir/Patient/{id}"));
    assert_eq!(read.status, 200, "the server keeps serving");
    assert_eq!(read.json()["meta"]["versionId"], "1");
}

fn malformed_and_oversized_bodies(srv: &TestServer, api: &Api) {
    let fj = "application/fhir+json";
    assert_outcome(
        &raw(
            api,
            "POST",
            "/fhir/Patient",
            fj,
            b"{\"resourceType\": \"Patient\", ",
        ),
        400,
        "truncated JSON",
    );
    assert_outcome(
        &raw(api, "POST", "/fhir/Patient", fj, b""),
        400,
        "empty body",
    );
    assert_outcome(
        &raw(api, "POST", "/fhir/Patient", fj, b"[1,2,3]"),
        400,
        "array body",
    );
    assert_outcome(
        &raw(
            api,
            "POST",
            "/fhir/Patient",
            fj,
            b"{\"resourceType\":\"Patient\",\"x\":\"\xff\xfe\"}",
        ),
        400,
        "non-UTF-8",
    );
    let deep = format!(
        "{{\"resourceType\":\"Patient\",\"a\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_outcome(
        &raw(api, "POST", "/fhir/Patient", fj, deep.as_bytes()),
        400,
        "deeply nested",
    );
    let mut big =
        b"{\"resourceType\":\"Patient\",\"text\":{\"status\":\"generated\",\"div\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 5 * 1024 * 1024));
    big.extend(b"\"}}");
    // A server answers 413 before reading such a body and closes the connection, which a
    // client still writing sees as a broken pipe; curl reads the early answer, like real clients.
    let big_file = srv.data_dir.parent().unwrap().join("big.json");
    std::fs::write(&big_file, &big).unwrap();
    let (status, body) = srv.curl_post(api, "/fhir/Patient", &big_file);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("OperationOutcome"), "{body}");
}

fn wrong_content_types_and_formats(api: &Api, id: &str) {
    assert_outcome(
        &raw(api, "POST", "/fhir/Patient", "text/plain", b"{}"),
        415,
        "wrong content type",
    );
    assert_outcome(
        &raw(
            api,
            "POST",
            "/fhir/Patient",
            "application/fhir+json; charset=latin1",
            b"{}",
        ),
        415,
        "wrong charset",
    );
    assert_outcome(
        &api.request("POST", "/fhir/Patient", &[], Some(b"{}")),
        415,
        "no content type",
    );
    assert_outcome(
        &api.request(
            "GET",
            &format!("/fhir/Patient/{id}"),
            &[("Accept", "application/fhir+xml")],
            None,
        ),
        406,
        "xml only",
    );
    assert_outcome(
        &api.get(&format!("/fhir/Patient/{id}?_format=xml")),
        406,
        "_format=xml",
    );
    // What clients send: media type parameters, FHIR R4 named by version, wildcards.
    let read = format!("/fhir/Patient/{id}");
    for accept in [
        "application/fhir+json",
        "application/fhir+json; fhirVersion=4.0",
        "application/fhir+json;fhirVersion=4.0.1;charset=utf-8",
        "application/json",
        "*/*",
        "application/fhir+xml;q=1.0, application/fhir+json;q=0.9",
    ] {
        let r = api.request("GET", &read, &[("Accept", accept)], None);
        assert_eq!(r.status, 200, "{accept}");
    }
    for format in [
        "json",
        "application/fhir%2Bjson",
        "application/fhir%2Bjson;%20fhirVersion=4.0",
    ] {
        assert_eq!(
            api.get(&format!("{read}?_format={format}")).status,
            200,
            "{format}"
        );
    }
    // Another FHIR version is not answered as if it were R4.
    assert_outcome(
        &api.request(
            "GET",
            &read,
            &[("Accept", "application/fhir+json; fhirVersion=3.0")],
            None,
        ),
        406,
        "STU3 asked for",
    );
    assert_outcome(
        &api.get(&format!(
            "{read}?_format=application/fhir%2Bjson;fhirVersion=5.0"
        )),
        406,
        "R5 asked for",
    );
}

fn unknown_types_and_invalid_resources(api: &Api) {
    assert_outcome(
        &api.post_fhir("/fhir/Spaceship", &json!({"resourceType": "Spaceship"})),
        404,
        "unknown type",
    );
    assert_outcome(
        &api.post_fhir("/fhir/Project", &json!({"resourceType": "Project"})),
        404,
        "medplum-only type",
    );
    assert_outcome(
        &api.post_fhir("/fhir/Patient", &json!({"resourceType": "Observation"})),
        400,
        "type mismatch",
    );
    assert_outcome(
        &api.post_fhir(
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "birthDate": "12/07/1984"}),
        ),
        422,
        "bad date",
    );
    assert_outcome(
        &api.post_fhir(
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "gender": 7}),
        ),
        422,
        "wrong type",
    );
    assert_outcome(
        &api.post_fhir(
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "spaceship": true}),
        ),
        422,
        "unknown element",
    );
}

fn mismatched_missing_and_invalid_ids(api: &Api, id: &str) {
    let mut other = patient("Other", "Id");
    other["id"] = json!("someone-else");
    assert_outcome(
        &api.put_fhir(&format!("/fhir/Patient/{id}"), &other, &[]),
        400,
        "id mismatch",
    );
    assert_outcome(
        &api.put_fhir(&format!("/fhir/Patient/{id}"), &patient("No", "Id"), &[]),
        400,
        "missing id",
    );
    let mut bad_id = patient("Bad", "Id");
    bad_id["id"] = json!("bad id!");
    assert_outcome(
        &api.put_fhir("/fhir/Patient/bad%20id!", &bad_id, &[]),
        400,
        "invalid id",
    );
    assert_outcome(
        &api.put_fhir(
            &format!("/fhir/Patient/{id}"),
            &json!({"resourceType":"Patient","id":id}),
            &[("If-Match", "garbage")],
        ),
        400,
        "bad If-Match",
    );
}

fn bad_queries_methods_and_routes(api: &Api, id: &str) {
    assert_outcome(
        &api.get("/fhir/Patient/_history?_count=abc"),
        400,
        "bad _count",
    );
    assert_outcome(
        &api.get("/fhir/Patient/_history?_since=yesterday"),
        400,
        "bad _since",
    );
    assert_outcome(
        &api.get("/fhir/Patient/does-not-exist"),
        404,
        "missing resource",
    );
    assert_outcome(
        &api.get("/fhir/Patient/%FF%FE"),
        400,
        "bad percent-encoding",
    );
    assert_outcome(
        &api.request("PATCH", "/fhir/Patient", &[], None),
        405,
        "unsupported method",
    );
    assert_outcome(
        &api.request("PATCH", &format!("/fhir/Patient/{id}"), &[], None),
        415,
        "a PATCH without a JSON Patch body",
    );
    assert_outcome(
        &api.get("/fhir/Patient?_count=many"),
        400,
        "bad search control",
    );
    assert_outcome(
        &api.get("/fhir/Patient?gender:sideways=x"),
        400,
        "unknown search modifier",
    );
    assert_outcome(
        &api.get(&format!("/fhir/Patient?name={}", "a,".repeat(200))),
        400,
        "too many search values",
    );
    assert_outcome(
        &api.get("/fhir/Patient?birthdate=ge1984-13-45"),
        400,
        "impossible date",
    );
    assert_outcome(&api.get("/no/such/endpoint"), 404, "unknown route");
}

fn hostile_login_and_account_requests(srv: &TestServer, admin: &Account, api: &Api) {
    assert_outcome(
        &api.post_json("/auth/login", &json!({"username": 1})),
        400,
        "login with wrong shape",
    );
    assert_outcome(
        &raw(
            &srv.api(),
            "POST",
            "/auth/login",
            "application/json",
            b"not json",
        ),
        400,
        "login not JSON",
    );
    assert_outcome(
        &raw(&srv.api(), "POST", "/auth/login", "text/plain", b"{}"),
        415,
        "login wrong type",
    );
    assert_outcome(
        &admin.api.post_json(
            "/admin/users",
            &json!({"username": "Robert'); DROP TABLE principal;--", "roles": ["clinician"]}),
        ),
        400,
        "hostile username",
    );
    assert_outcome(
        &admin.api.post_json(
            "/admin/users",
            &json!({"username": "eve", "roles": ["root"]}),
        ),
        400,
        "unknown role",
    );
    assert_outcome(
        &admin.api.post_json(
            "/admin/users",
            &json!({"username": "dr.hostile", "roles": ["clinician"]}),
        ),
        409,
        "duplicate username",
    );
}

#[test]
fn forged_tokens_replayed_codes_and_enumeration() {
    let srv = server();
    let admin = srv.admin();
    let mut clin = srv.user(&admin, "dr.replay", &["clinician"], Some("org-a"));
    let anon = srv.api();
    for forged in [
        "cvs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "cvs_",
        "not-a-token",
        &"x".repeat(10_000),
        "cve_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = anon.with_token(forged).get("/auth/whoami");
        assert_outcome(&r, 401, "forged token");
        assert!(r.header("www-authenticate").is_some());
    }
    assert_outcome(
        &anon.request(
            "GET",
            "/auth/whoami",
            &[("Authorization", "Basic YWRtaW46YWRtaW4=")],
            None,
        ),
        401,
        "basic auth",
    );

    // A TOTP code works once.
    let code = clin.auth.fresh_code();
    let login = |c: &str| {
        anon.post_json(
            "/auth/login",
            &json!({"username": "dr.replay", "password": TEST_PASSWORD, "totp_code": c}),
        )
    };
    assert_eq!(login(&code).status, 200);
    assert_outcome(&login(&code), 401, "replayed TOTP code");
    // No second factor, no login.
    assert_outcome(&login(""), 401, "missing code");
    assert_outcome(
        &anon.post_json(
            "/auth/login",
            &json!({"username": "dr.replay", "password": TEST_PASSWORD}),
        ),
        400,
        "no code field",
    );

    // Wrong user, wrong password, wrong code: the same answer.
    let wrong_user = anon.post_json(
        "/auth/login",
        &json!({"username": "nobody", "password": TEST_PASSWORD, "totp_code": "123456"}),
    );
    let wrong_pass = anon.post_json("/auth/login", &json!({"username": "dr.replay", "password": "wrong-password-entirely", "totp_code": "123456"}));
    let wrong_code = anon.post_json(
        "/auth/login",
        &json!({"username": "dr.replay", "password": TEST_PASSWORD, "totp_code": "000000"}),
    );
    for r in [&wrong_user, &wrong_pass, &wrong_code] {
        assert_eq!(r.status, 401);
        assert_eq!(r.body, wrong_user.body);
    }

    // Enrollment: unknown, reused or malformed tokens; a code for another secret.
    assert_outcome(
        &anon.post_json(
            "/auth/enroll/start",
            &json!({"enrollment_token": "cve_nope"}),
        ),
        400,
        "unknown enrollment token",
    );
    let created = admin.api.post_json(
        "/admin/users",
        &json!({"username": "dr.new", "roles": ["clinician"], "organization": "org-a"}),
    );
    let token = created.json()["enrollment_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_outcome(
        &anon.post_json(
            "/auth/enroll/finish",
            &json!({"enrollment_token": token, "password": TEST_PASSWORD, "totp_code": "123456"}),
        ),
        400,
        "finish before start",
    );
    let started = anon
        .post_json("/auth/enroll/start", &json!({"enrollment_token": token}))
        .json();
    let mut auth = carevault_testkit::Authenticator::new(started["totp_secret"].as_str().unwrap());
    assert_outcome(
        &anon.post_json("/auth/enroll/finish", &json!({"enrollment_token": token, "password": "password", "totp_code": auth.fresh_code()})),
        400,
        "weak password",
    );
    assert_outcome(
        &anon.post_json("/auth/enroll/finish", &json!({"enrollment_token": token, "password": "dr.new-lantern-quarry-velvet", "totp_code": auth.fresh_code()})),
        400,
        "password containing the username",
    );
    let other = carevault_testkit::totp::code_at(b"another secret entirely", 1_800_000_000);
    assert_outcome(
        &anon.post_json(
            "/auth/enroll/finish",
            &json!({"enrollment_token": token, "password": TEST_PASSWORD, "totp_code": other}),
        ),
        400,
        "code for another secret",
    );
}

#[test]
fn brute_force_hits_the_lock_and_admin_unlocks() {
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_AUTH_THROTTLE_BASE_MS", "0"),
            ("CAREVAULT_AUTH_IP_RATE_PER_MINUTE", "100000"),
            ("CAREVAULT_ARGON2_MEMORY_KIB", "8192"),
            ("CAREVAULT_ARGON2_ITERATIONS", "1"),
        ],
    );
    let admin = srv.admin();
    let mut clin = srv.user(&admin, "dr.target", &["clinician"], Some("org-a"));
    // Not the user's own address (127.0.0.1), which the lock spares (see login.rs).
    let anon = srv.api().from_address([127, 0, 0, 2].into());
    for i in 0..100 {
        let r = anon.post_json(
            "/auth/login",
            &json!({"username": "dr.target", "password": format!("guess-number-{i}-xyz"), "totp_code": "123456"}),
        );
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let users = admin.api.get("/admin/users").json();
    let target = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "dr.target")
        .unwrap()
        .clone();
    assert_eq!(
        target["locked"], true,
        "locked after 100 consecutive failures"
    );
    // Even the right credentials are refused now from there, with the same answer.
    let right = anon.post_json("/auth/login", &json!({"username": "dr.target", "password": TEST_PASSWORD, "totp_code": clin.auth.fresh_code()}));
    assert_eq!(right.status, 401);
    assert_eq!(
        admin
            .api
            .request("POST", "/admin/users/dr.target/unlock", &[], None)
            .status,
        204
    );
    let token = srv.login("dr.target", &mut clin.auth);
    assert_eq!(anon.with_token(&token).get("/auth/whoami").status, 200);
}

#[test]
fn progressive_delay_and_ip_rate_limit_with_defaults() {
    let srv = TestServer::start_with(bin(), &[("CAREVAULT_AUTH_IP_RATE_PER_MINUTE", "30")]);
    let anon = srv.api();
    let attempt = |user: &str| {
        anon.post_json("/auth/login", &json!({"username": user, "password": "not-the-password-at-all", "totp_code": "123456"}))
    };
    // Default: five failures, then the account waits; an unknown account behaves identically.
    for user in ["admin", "no-such-user"] {
        for _ in 0..5 {
            assert_eq!(attempt(user).status, 401);
        }
        let throttled = attempt(user);
        assert_outcome(&throttled, 429, "throttled account");
        assert!(throttled.header("retry-after").is_some());
    }
    // Per-IP limit: 30 a minute, 12 used above.
    let mut limited = None;
    for _ in 0..40 {
        let r = anon.post_json("/auth/enroll/start", &json!({"enrollment_token": "cve_x"}));
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 400);
    }
    let limited = limited.expect("the per-IP limit never applied");
    assert_outcome(&limited, 429, "per-IP limit");
    // The FHIR metadata endpoint is not an /auth endpoint and keeps answering.
    assert_eq!(anon.get("/fhir/metadata").status, 200);
}
