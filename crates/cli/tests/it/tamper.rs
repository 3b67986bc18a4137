//! Tampering with stored ciphertext: a flipped byte or two swapped rows make the read fail with
//! a 500-class OperationOutcome and an error log line, never wrong data.

use rusqlite::Connection;

use crate::{patient, server};

#[test]
fn flipped_byte_and_swapped_rows_fail_closed() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.tamper", &["clinician"], Some("org-a"));
    let a = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Alpha", "Ann"))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Bravo", "Ben"))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Charlie", "Cy"))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(clin.api.get(&format!("/fhir/Patient/{a}")).status, 200);

    if srv.is_postgres() {
        // The same tampering, in PostgreSQL's SQL: flip a bit of a byte in the middle of A's
        // ciphertext; swap B's and C's (subqueries see the rows as before the statement).
        srv.execute(&format!(
            "UPDATE resource_version SET body = set_byte(body, length(body) / 2,
                 get_byte(body, length(body) / 2) # 32)
             WHERE rtype = 'Patient' AND id = '{a}' AND version = 1;
             UPDATE resource_version SET body = CASE id
                 WHEN '{b}' THEN (SELECT body FROM resource_version WHERE rtype = 'Patient' AND id = '{c}' AND version = 1)
                 ELSE (SELECT body FROM resource_version WHERE rtype = 'Patient' AND id = '{b}' AND version = 1) END
             WHERE rtype = 'Patient' AND id IN ('{b}', '{c}') AND version = 1;"
        ));
    } else {
        tamper_sqlite(&srv.db_path(), &a, &b, &c);
    }
    check_reads_fail_closed(&srv, &clin.api, [&a, &b, &c]);
}

fn tamper_sqlite(path: &std::path::Path, a: &str, b: &str, c: &str) {
    let db = Connection::open(path).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let body = |id: &str| -> Vec<u8> {
        db.query_row(
            "SELECT body FROM resource_version WHERE rtype = 'Patient' AND id = ?1 AND version = 1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    // Flip one byte in the middle of A's ciphertext.
    let mut flipped = body(a);
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    db.execute(
        "UPDATE resource_version SET body = ?1 WHERE rtype = 'Patient' AND id = ?2 AND version = 1",
        rusqlite::params![flipped, a],
    )
    .unwrap();
    // Swap B's and C's ciphertexts.
    let (bb, cb) = (body(b), body(c));
    db.execute(
        "UPDATE resource_version SET body = ?1 WHERE rtype = 'Patient' AND id = ?2 AND version = 1",
        rusqlite::params![cb, b],
    )
    .unwrap();
    db.execute(
        "UPDATE resource_version SET body = ?1 WHERE rtype = 'Patient' AND id = ?2 AND version = 1",
        rusqlite::params![bb, c],
    )
    .unwrap();
}

fn check_reads_fail_closed(
    srv: &carevault_testkit::TestServer,
    api: &carevault_testkit::Api,
    ids: [&String; 3],
) {
    for id in ids {
        for path in [
            format!("/fhir/Patient/{id}"),
            format!("/fhir/Patient/{id}/_history/1"),
        ] {
            let r = api.get(&path);
            assert_eq!(r.status, 500, "{path}: {}", r.text());
            assert_eq!(r.json()["resourceType"], "OperationOutcome");
            let text = r.text();
            assert!(
                !text.contains("Alpha") && !text.contains("Bravo") && !text.contains("Charlie")
            );
        }
    }
    let history = api.get("/fhir/Patient/_history");
    assert_eq!(history.status, 500);

    // The server's output is read by another thread: a line logged before a response may
    // arrive a moment after it (under load, the last reads' lines were not there yet).
    let integrity_lines = || {
        srv.logs()
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("integrity_failure"))
            .count()
    };
    carevault_testkit::wait_for(
        "an error log line per failed read",
        std::time::Duration::from_secs(10),
        || integrity_lines() >= 6,
    );
    // The server keeps serving.
    let d = api.post_fhir("/fhir/Patient", &patient("Delta", "Di"));
    assert_eq!(d.status, 201);
}
