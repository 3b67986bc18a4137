//! Nothing is written by a refused request (#27): each kind of refusal leaves every table of
//! the database as it was, except the audit trail, which gains the refusal's own event.
//! Before, a data key was inserted in a transaction of its own before the data sealed under
//! it, so a refused transaction Bundle left one wrapped key per new patient behind.

use std::collections::BTreeMap;

use carevault_testkit::TestServer;
use serde_json::{Value, json};

use crate::bundle::{patient_entry, post_bundle, transaction};
use crate::{observation, patient, server};

/// The audit trail's tables, which a refusal may change, and only as follows: `audit_event`
/// gains the refusal's events, `audit_patient` the patients those events name, and
/// `audit_checkpoint` whatever the background signer writes (it signs every 10 s).
const AUDIT_EVENTS: &str = "audit_event";
const AUDIT_PATIENTS: &str = "audit_patient";
const AUDIT_CHECKPOINTS: &str = "audit_checkpoint";

/// Every table's row count, and the newest audit event's sequence number (one node).
struct Snapshot {
    rows: BTreeMap<String, i64>,
    last_event: i64,
}

fn snapshot(srv: &TestServer) -> Snapshot {
    Snapshot {
        rows: srv.row_counts(),
        last_event: srv.query_i64("SELECT COALESCE(MAX(seq), 0) FROM audit_event"),
    }
}

/// Every table as in `before`, but for `events` new audit events and their patients.
fn assert_nothing_written(srv: &TestServer, before: &Snapshot, events: i64, refusal: &str) {
    let after = snapshot(srv);
    assert_eq!(
        after.rows.keys().collect::<Vec<_>>(),
        before.rows.keys().collect::<Vec<_>>(),
        "{refusal}: the same tables"
    );
    assert!(
        [AUDIT_EVENTS, AUDIT_PATIENTS, AUDIT_CHECKPOINTS]
            .iter()
            .all(|t| before.rows.contains_key(*t)),
        "the audit trail's tables are where this test expects them: {:?}",
        before.rows.keys()
    );
    let grew = |t: &str| after.rows[t] - before.rows[t];
    assert_eq!(grew(AUDIT_EVENTS), events, "{refusal}: audit events");
    assert_eq!(after.last_event - before.last_event, events, "{refusal}");
    let named = srv.query_i64(&format!(
        "SELECT COUNT(*) FROM audit_patient WHERE seq > {}",
        before.last_event
    ));
    assert_eq!(
        grew(AUDIT_PATIENTS),
        named,
        "{refusal}: only the new events' patients"
    );
    assert!(grew(AUDIT_CHECKPOINTS) >= 0, "{refusal}: checkpoints");
    let changed: Vec<(&String, i64, i64)> = before
        .rows
        .iter()
        .filter(|(t, _)| ![AUDIT_EVENTS, AUDIT_PATIENTS, AUDIT_CHECKPOINTS].contains(&t.as_str()))
        .filter(|(t, n)| after.rows[*t] != **n)
        .map(|(t, n)| (t, *n, after.rows[t]))
        .collect();
    assert!(
        changed.is_empty(),
        "{refusal} wrote (table, rows before, rows after): {changed:?}"
    );
}

/// A transaction of `valid` new patients and, last, one invalid entry.
fn transaction_with_one_invalid_entry(valid: usize) -> Value {
    let mut entries: Vec<Value> = (0..valid)
        .map(|i| {
            patient_entry(
                &format!("6f1d2a3b-0000-4000-8000-{i:012}"),
                &format!("Refused{i}"),
            )
        })
        .collect();
    entries.push(json!({
        "resource": {"resourceType": "Patient", "gender": 12},
        "request": {"method": "POST", "url": "Patient"}
    }));
    transaction(entries)
}

fn set_audit_writable(srv: &TestServer, writable: bool) {
    // The audit table refuses every insert, as a full disk would (see audit.rs).
    let sql = match (srv.is_postgres(), writable) {
        (true, false) => {
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'disk full' USING ERRCODE = '53100'; END $$;
             CREATE TRIGGER audit_unwritable BEFORE INSERT ON audit_event
                 FOR EACH ROW EXECUTE FUNCTION refuse_audit();"
        }
        (true, true) => {
            "DROP TRIGGER audit_unwritable ON audit_event; DROP FUNCTION refuse_audit();"
        }
        (false, false) => {
            "CREATE TRIGGER audit_unwritable BEFORE INSERT ON audit_event
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END;"
        }
        (false, true) => "DROP TRIGGER audit_unwritable;",
    };
    srv.execute(sql);
}

#[test]
fn every_refusal_leaves_every_table_unchanged() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.refused", &["clinician"], Some("org-a"));
    let other = srv.user(&admin, "dr.elsewhere", &["clinician"], Some("org-b"));
    let own = clin.api.post_fhir("/fhir/Patient", &patient("Own", "Ada"));
    assert_eq!(own.status, 201, "{}", own.text());
    let own = own.json()["id"].as_str().unwrap().to_owned();
    let mut foreign = patient("Foreign", "Bea");
    foreign["managingOrganization"] = json!({"reference": "Organization/org-b"});
    let foreign = other.api.post_fhir("/fhir/Patient", &foreign).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let before = snapshot(&srv);
    let refused = post_bundle(&clin.api, &transaction_with_one_invalid_entry(40));
    assert!([400, 422].contains(&refused.status), "{}", refused.text());
    assert_nothing_written(&srv, &before, 1, "a transaction with one invalid entry");

    let before = snapshot(&srv);
    let invalid = json!({"resourceType": "Patient", "gender": 12});
    let refused = clin.api.post_fhir("/fhir/Patient", &invalid);
    assert!([400, 422].contains(&refused.status), "{}", refused.text());
    assert_nothing_written(&srv, &before, 1, "an invalid create");

    let before = snapshot(&srv);
    let refused = clin
        .api
        .post_fhir("/fhir/Observation", &observation(&foreign, "not mine"));
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_nothing_written(&srv, &before, 1, "a create into a foreign compartment");
    let before = snapshot(&srv);
    let refused = admin
        .api
        .post_fhir("/fhir/Patient", &patient("Not", "Admins"));
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_nothing_written(&srv, &before, 1, "a create by a role without PHI access");

    let before = snapshot(&srv);
    let mut changed = patient("Own", "Changed");
    changed["id"] = json!(own);
    let refused = clin.api.put_fhir(
        &format!("/fhir/Patient/{own}"),
        &changed,
        &[("If-Match", "W/\"7\"")],
    );
    assert!([409, 412].contains(&refused.status), "{}", refused.text());
    assert_nothing_written(&srv, &before, 1, "an update with a stale If-Match");
}

#[test]
fn writes_refused_for_an_unwritable_audit_trail_leave_no_data_key() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.unaudited", &["clinician"], Some("org-a"));
    // An unwritable audit trail refuses everything, its own event included.
    set_audit_writable(&srv, false);
    let before = snapshot(&srv);
    let refused = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Never", "Kept"));
    assert_eq!(refused.status, 503, "{}", refused.text());
    let mut entries = vec![patient_entry(
        "6f1d2a3b-1111-4000-8000-000000000001",
        "Never",
    )];
    entries.push(patient_entry(
        "6f1d2a3b-1111-4000-8000-000000000002",
        "Kept",
    ));
    let refused = post_bundle(&clin.api, &transaction(entries.clone()));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_nothing_written(
        &srv,
        &before,
        0,
        "writes while the audit trail is unwritable",
    );
    set_audit_writable(&srv, true);

    // The same writes commit once the trail is writable: each new patient's data key with it.
    let keys = || srv.query_i64("SELECT COUNT(*) FROM data_key");
    let keys_before = keys();
    let created = clin.api.post_fhir("/fhir/Patient", &patient("Now", "Kept"));
    assert_eq!(created.status, 201, "{}", created.text());
    let committed = post_bundle(&clin.api, &transaction(entries));
    assert_eq!(committed.status, 200, "{}", committed.text());
    assert_eq!(keys() - keys_before, 3, "one data key per new patient");
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(clin.api.get(&format!("/fhir/Patient/{id}")).status, 200);
}
