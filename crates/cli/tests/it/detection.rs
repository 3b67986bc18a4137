//! Attack detection over HTTPS: benign clinic traffic raises nothing; sqlmap-style probes (the
//! fixture list) in query values and a JSON body, credential stuffing across 50 accounts, a
//! clinician paging through every patient of their organization, 404 enumeration and
//! break-glass each raise their alert, readable by the auditor, acknowledged, still there after a
//! restart; no alert, log line or metric holds a canary value from the payloads. TOTP guessing
//! with the right password, an API key used from outside its CIDRs, and the automatic revocation
//! of a key that read too many patients.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use carevault_testkit::{Api, TEST_PASSWORD, TestServer, wait_for};
use serde_json::{Value, json};

use crate::{bin, patient};

const PROBES: &str = include_str!("fixtures/injection-probes.txt");
const CANARY: &str = "QZXCANARY4417";

/// The alerts the auditor reads: (rule, principal, DetectedIssue).
pub(crate) fn alerts(auditor: &Api) -> Vec<(String, String, Value)> {
    let reply = auditor.get("/alerts?_count=1000");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let r = e["resource"].clone();
            let rule = r["code"]["coding"][0]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let principal = ext(&r, "principal");
            (rule, principal, r)
        })
        .collect()
}

pub(crate) fn ext(r: &Value, name: &str) -> String {
    let url = format!("urn:carevault:alert:{name}");
    r["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == url.as_str())
        .and_then(|e| e["valueString"].as_str())
        .unwrap_or("")
        .to_owned()
}

pub(crate) fn wait_for_rule(auditor: &Api, rule: &str) -> Value {
    let mut found = None;
    wait_for(&format!("an alert {rule}"), Duration::from_secs(20), || {
        found = alerts(auditor)
            .into_iter()
            .find(|(r, _, _)| r == rule)
            .map(|(_, _, v)| v);
        found.is_some()
    });
    found.unwrap()
}

/// Benign clinic traffic: creates, reads, searches (a page each, fewer patients than the bulk
/// threshold), `$everything`, one 404.
fn benign_clinic_day(api: &Api) {
    let mut ids = Vec::new();
    for i in 0..24 {
        let created = api.post_fhir(
            "/fhir/Patient",
            &patient(&format!("O'Brien-{i}"), "Mary-Ann"),
        );
        assert_eq!(created.status, 201, "{}", created.text());
        ids.push(created.json()["id"].as_str().unwrap().to_owned());
    }
    for id in ids.iter().take(5) {
        assert_eq!(api.get(&format!("/fhir/Patient/{id}")).status, 200);
        let obs = crate::observation(id, "pain and swelling, 72 or so; checked -- fine");
        assert_eq!(api.post_fhir("/fhir/Observation", &obs).status, 201);
        let everything = api.get(&format!("/fhir/Patient/{id}/$everything"));
        assert_eq!(everything.status, 200);
    }
    for q in [
        "name=O%27Brien-1&_count=5",
        "birthdate=ge1980-01-01&_count=5",
        "gender=female&_sort=-_lastUpdated&_count=5",
        "_count=5&identifier=http%3A%2F%2Fhl7.org%2Ffhir%2Fsid%2Fus-ssn%7C999-99-9999",
    ] {
        let r = api.get(&format!("/fhir/Patient?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text());
    }
    assert_eq!(api.get("/fhir/Patient/no-such-patient").status, 404);
}

#[test]
fn attacks_raise_alerts_benign_traffic_does_not_and_no_payload_leaks() {
    let mut srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_DETECTION_DISTINCT_PATIENTS_PER_WINDOW", "20"),
            ("CAREVAULT_DETECTION_NOT_FOUND_PER_WINDOW", "20"),
            ("CAREVAULT_AUTH_IP_RATE_PER_MINUTE", "1000"),
        ],
    );
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.grey", &["clinician"], Some("org-a"));
    let bulk = srv.user(&admin, "dr.bulk", &["clinician"], Some("org-a"));
    let auditor = srv.user(&admin, "aud.it", &["auditor"], None).api;

    benign_clinic_day(&clin.api);
    // The counters are raised synchronously: none moved (the trail holds none either).
    let metrics = auditor.get("/metrics").text();
    let raised: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("carevault_alerts_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(raised.is_empty(), "benign traffic raised {raised:?}");
    let listed = alerts(&auditor);
    assert!(listed.is_empty(), "{listed:?}");

    // sqlmap-style probes in a query value, each with a canary.
    let probes: Vec<&str> = PROBES
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for probe in &probes {
        let r = clin.api.get(&format!(
            "/fhir/Patient?name={}",
            crate::urlencode(&format!("{CANARY}{probe}"))
        ));
        assert!(r.status < 500, "{probe}: {}", r.status);
    }
    // And in a JSON body (a Patient whose name is a probe).
    let body = patient(
        &format!("{CANARY}' UNION SELECT password FROM credential--"),
        "x",
    );
    let r = bulk.api.post_fhir("/fhir/Patient", &body);
    assert!(r.status < 500, "{}", r.status);
    let sql = wait_for_rule(&auditor, "injection.sql");
    assert_ne!(ext(&sql, "principal"), "anonymous");
    assert_eq!(ext(&sql, "source-ip"), "127.0.0.1");
    assert_eq!(ext(&sql, "digest").len(), 64);
    wait_for("the body probe's alert", Duration::from_secs(20), || {
        alerts(&auditor)
            .iter()
            .filter(|(rule, _, _)| rule == "injection.sql")
            .count()
            == 2
    });
    for rule in [
        "injection.script",
        "injection.path-traversal",
        "injection.ssrf",
    ] {
        wait_for_rule(&auditor, rule);
    }

    // Credential stuffing: one address, 50 accounts.
    let attacker = srv
        .api()
        .from_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
    for i in 0..50 {
        let r = attacker.post_json(
            "/auth/login",
            &json!({"username": format!("{CANARY}user{i}"), "password": format!("{CANARY}-pw"), "totp_code": "123456"}),
        );
        assert!(matches!(r.status, 401 | 429), "{}", r.status);
    }
    let stuffing = wait_for_rule(&auditor, "credential.stuffing");
    assert_eq!(ext(&stuffing, "source-ip"), "127.0.0.9");

    // A clinician pages through every patient of the organization.
    let mut next = Some("/fhir/Patient?_count=5".to_owned());
    while let Some(url) = next.take() {
        let page = bulk.api.get(&url);
        assert_eq!(page.status, 200, "{}", page.text());
        next = page.json()["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .and_then(|u| u.find("/fhir").map(|i| u[i..].to_owned()));
    }
    wait_for_rule(&auditor, "bulk.distinct-patients");

    // 404 enumeration by id.
    for i in 0..25 {
        assert_eq!(
            bulk.api.get(&format!("/fhir/Patient/guess-{i}")).status,
            404
        );
    }
    wait_for_rule(&auditor, "enumeration.not-found");

    // Break-glass.
    let bg = clin.api.post_json(
        "/auth/break-glass",
        &json!({"reason": "unconscious patient in the emergency room"}),
    );
    assert_eq!(bg.status, 201, "{}", bg.text());
    let glass = wait_for_rule(&auditor, "access.break-glass");

    // The auditor acknowledges; the clinician may not read alerts at all.
    assert_eq!(clin.api.get("/alerts").status, 403);
    let id = glass["id"].as_str().unwrap().to_owned();
    let acked = auditor.request("POST", &format!("/alerts/{id}/ack"), &[], None);
    assert_eq!(acked.status, 200, "{}", acked.text());
    assert_eq!(acked.json()["status"], "final");
    assert_eq!(auditor.get("/alerts/no-such-alert").status, 404);

    // Counted by rule and severity; a flood is de-duplicated.
    let metrics = auditor.get("/metrics").text();
    assert!(
        metrics.contains("carevault_alerts_total{rule=\"injection.sql\",severity=\"high\"} 2\n"),
        "{metrics}"
    );
    let all = alerts(&auditor);
    assert!(
        all.len() < 20,
        "{} alerts for {} probes",
        all.len(),
        probes.len()
    );

    assert!(!srv.logs().contains(CANARY), "a log line holds the canary");

    // Durable: the alerts and the acknowledgement survive a restart.
    srv.stop();
    srv.restart(&[]);
    let after = alerts(&auditor);
    assert_eq!(after.len(), all.len());
    let glass = after
        .iter()
        .find(|(rule, _, _)| rule == "access.break-glass")
        .unwrap();
    assert_eq!(glass.2["status"], "final");

    // No canary in any alert, log line or metric.
    let text = auditor.get("/alerts?_count=1000").text();
    assert!(!text.contains(CANARY), "an alert holds the canary");
    assert!(!metrics.contains(CANARY), "a metric holds the canary");
    assert!(!srv.logs().contains(CANARY), "a log line holds the canary");
}

#[test]
fn totp_guessing_a_key_outside_its_cidrs_and_a_bulk_reading_key_that_is_revoked() {
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_DETECTION_REVOKE_KEY_ON_BULK", "true"),
            ("CAREVAULT_DETECTION_DISTINCT_PATIENTS_PER_WINDOW", "5"),
            ("CAREVAULT_AUTH_IP_RATE_PER_MINUTE", "1000"),
        ],
    );
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.guessed", &["clinician"], Some("org-a"));
    let auditor = srv.user(&admin, "aud.tor", &["auditor"], None).api;

    // Someone with dr.guessed's password tries codes: none is one the authenticator would show.
    #[allow(clippy::disallowed_methods)] // the wall clock, as the server's
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let valid: Vec<String> = (now / 30 - 2..=now / 30 + 2)
        .map(|step| carevault_testkit::totp::hotp(&clin.auth.secret, step))
        .collect();
    let wrong = ["000000", "111111", "222222", "333333", "444444", "555555"]
        .into_iter()
        .find(|c| !valid.iter().any(|v| v == c))
        .unwrap();
    for _ in 0..3 {
        let r = srv.api().post_json(
            "/auth/login",
            &json!({"username": "dr.guessed", "password": TEST_PASSWORD, "totp_code": wrong}),
        );
        assert_eq!(r.status, 401, "{}", r.text());
        // The caller is not told which factor failed.
        assert_eq!(
            r.json()["issue"][0]["diagnostics"],
            "authentication failed or required"
        );
    }
    // The alert names the account (its principal id), not `anonymous`.
    let guessing = wait_for_rule(&auditor, "credential.totp-guessing");
    let named = ext(&guessing, "principal");
    assert!(!named.is_empty() && named != "anonymous", "{guessing}");

    // An API key limited to 10.0.0.0/8, presented from 127.0.0.1.
    let key = |name: &str, cidrs: Value| {
        let r = admin.api.post_json(
            "/admin/api-keys",
            &json!({"name": name, "scopes": ["system/Patient.rs"], "expires_in_days": 30, "allowed_cidrs": cidrs}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        srv.api().with_token(r.json()["key"].as_str().unwrap())
    };
    let fenced = key("etl-fenced", json!(["10.0.0.0/8"]));
    assert_eq!(fenced.get("/fhir/Patient?_count=1").status, 401);
    let outside = wait_for_rule(&auditor, "access.outside-cidrs");
    assert_eq!(ext(&outside, "principal"), "apikey:etl-fenced");

    // A key that reads more distinct patients than the threshold is revoked.
    let bulk = key("etl-bulk", Value::Null);
    let ids: Vec<String> = (0..6)
        .map(|i| {
            let r = clin
                .api
                .post_fhir("/fhir/Patient", &patient(&format!("Bulk-{i}"), "Ann"));
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    for id in &ids[..5] {
        assert_eq!(bulk.get(&format!("/fhir/Patient/{id}")).status, 200);
    }
    wait_for_rule(&auditor, "bulk.distinct-patients");
    wait_for("the key's revocation", Duration::from_secs(20), || {
        bulk.get(&format!("/fhir/Patient/{}", ids[5])).status == 401
    });
    let keys = admin.api.get("/admin/api-keys").json();
    let state = keys["api_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["name"] == "etl-bulk")
        .map(|k| k["state"].clone());
    assert_eq!(state, Some(json!("revoked")), "{keys}");
    let responses = auditor
        .get("/audit/events?action=security.response&_count=10")
        .text();
    assert!(responses.contains("revoke-api-key"), "{responses}");
    // The other keys and the users are untouched.
    assert_eq!(
        clin.api.get(&format!("/fhir/Patient/{}", ids[5])).status,
        200
    );
}
