//! Canary test: distinctive values written through the API appear nowhere at rest (database,
//! WAL, any file under the data directory) and nowhere in what the server printed or logged.

use serde_json::json;

use crate::{observation, server};

const CANARIES: &[&str] = &[
    "CANARYFAMILY7Q2Z",
    "CANARYGIVEN9X4K",
    "CANARY-NOTE-hypertension-5J8W",
    "555-CANARY-0199",
    "canary.mrn.77341",
];

#[test]
fn canary_values_never_reach_disk_or_logs_in_clear() {
    let mut srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.canary", &["clinician"], Some("org-a"));
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": CANARIES[4]}],
        "name": [{"family": CANARIES[0], "given": [CANARIES[1]]}],
        "telecom": [{"system": "phone", "value": CANARIES[3]}],
        "birthDate": "1971-02-03",
        "managingOrganization": {"reference": "Organization/org-a"}
    });
    let created = clin.api.post_fhir("/fhir/Patient", &patient);
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    for i in 0..20 {
        let r = clin.api.post_fhir(
            "/fhir/Observation",
            &observation(&id, &format!("{} #{i}", CANARIES[2])),
        );
        assert_eq!(r.status, 201);
    }
    // Updates, reads, history and refused requests carrying canaries too.
    let mut changed = created.json();
    changed["name"][0]["family"] = json!(format!("{}-2", CANARIES[0]));
    assert_eq!(
        clin.api
            .put_fhir(&format!("/fhir/Patient/{id}"), &changed, &[])
            .status,
        200
    );
    assert_eq!(
        clin.api.get(&format!("/fhir/Patient/{id}/_history")).status,
        200
    );
    let invalid = json!({"resourceType": "Patient", "birthDate": CANARIES[0], "name": CANARIES[1]});
    let refused = clin.api.post_fhir("/fhir/Patient", &invalid);
    assert_eq!(refused.status, 422);
    let unknown = json!({"resourceType": "Patient", CANARIES[2]: CANARIES[3]});
    assert_eq!(clin.api.post_fhir("/fhir/Patient", &unknown).status, 422);
    let bad_login = srv.api().post_json(
        "/auth/login",
        &json!({"username": "dr.canary", "password": CANARIES[0], "totp_code": "000000"}),
    );
    assert_eq!(bad_login.status, 401);
    // Error bodies do not echo the canaries either.
    for body in [refused.text(), bad_login.text()] {
        for c in CANARIES {
            assert!(!body.contains(c), "an error body echoes {c}: {body}");
        }
    }
    // The reads still decrypt to the canaries (so the test would notice plaintext loss).
    assert!(
        clin.api
            .get(&format!("/fhir/Patient/{id}/_history/1"))
            .text()
            .contains(CANARIES[0])
    );

    srv.stop();
    // Every file of the data directory and, on PostgreSQL, a full dump of the database.
    let at_rest = srv.at_rest();
    let database = if srv.is_postgres() {
        "pg_dump"
    } else {
        "carevault.db"
    };
    assert!(at_rest.iter().any(|(f, _)| f.ends_with(database)));
    for (file, bytes) in at_rest {
        for c in CANARIES {
            assert!(
                !bytes.windows(c.len()).any(|w| w == c.as_bytes()),
                "{file} contains {c} in clear"
            );
        }
    }
    let output = srv.output();
    assert!(
        output.contains("\"event\":\"request\""),
        "the server logs requests"
    );
    for c in CANARIES {
        assert!(!output.contains(c), "server output contains {c}");
    }
    assert!(
        !output.contains(carevault_testkit::TEST_PASSWORD),
        "server output contains a password"
    );
    assert!(
        !output.contains(&id),
        "server output contains a resource id"
    );
}
