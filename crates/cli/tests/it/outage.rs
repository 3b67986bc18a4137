//! PostgreSQL going away under load: requests during the outage fail cleanly (503
//! OperationOutcome), nothing acknowledged is lost, and the node recovers without a restart.
//!
//! The test runs a PostgreSQL server of its own (stopped and started by the test), never the
//! machine's shared one, whichever backend the rest of the suite runs on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carevault_testkit::{PgInstance, TestDatabase, TestServer, wait_for};

use crate::{bin, observation, patient};

/// Generous: this bounds a hang, it does not measure anything.
const WITHIN: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    unavailable: usize,
    other: Vec<String>,
}

#[test]
fn a_database_outage_fails_requests_cleanly_and_the_node_recovers_by_itself() {
    let pg = PgInstance::start();
    let database = Arc::new(TestDatabase::create_on(&pg.admin_url()));
    let mut srv = TestServer::start_on(bin(), &[], Some(database));
    let key = srv
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("audit public key: ").map(str::to_owned))
        .unwrap();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.outage", &["clinician"], Some("org-a"));
    let pid = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Outage", "Olga"))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (api, pid, seen, stop) =
                (clin.api.clone(), pid.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = api.post_fhir(
                        "/fhir/Observation",
                        &observation(&pid, &format!("w{w} {i}")),
                    );
                    let mut s = seen.lock().unwrap();
                    match r.status {
                        201 => s
                            .acknowledged
                            .push(r.json()["id"].as_str().unwrap().to_owned()),
                        503 => {
                            assert_eq!(
                                r.json()["resourceType"],
                                "OperationOutcome",
                                "{}",
                                r.text()
                            );
                            s.unavailable += 1;
                        }
                        other => s.other.push(format!("{other}: {}", r.text())),
                    }
                    drop(s);
                    // Reads go on too.
                    let read = api.get(&format!("/fhir/Patient/{pid}"));
                    assert!(
                        [200, 503].contains(&read.status),
                        "read answered {}",
                        read.status
                    );
                }
            })
        })
        .collect();

    let acked = || seen.lock().unwrap().acknowledged.len();
    wait_for("writes before the outage", WITHIN, || acked() >= 10);
    pg.down();
    wait_for("requests failing during the outage", WITHIN, || {
        seen.lock().unwrap().unavailable >= 5
    });
    let during = acked();
    pg.up();
    // The same server process, never restarted, serves writes again.
    wait_for("writes after the outage", WITHIN, || acked() >= during + 10);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.other.is_empty(),
        "unexpected answers: {:?}",
        seen.other
    );
    assert!(seen.unavailable >= 5);
    let logs = srv.logs();
    assert!(!logs.contains("panicked"), "{logs}");

    // Every acknowledged write survived the crash of the database.
    for id in &seen.acknowledged {
        let r = clin.api.get(&format!("/fhir/Observation/{id}"));
        assert_eq!(r.status, 200, "acknowledged {id} is lost: {}", r.text());
    }
    let stored = srv.query_i64("SELECT COUNT(*) FROM resource_current WHERE rtype = 'Observation'");
    assert!(stored as usize >= seen.acknowledged.len());

    // And the audit trail is whole.
    srv.stop();
    let url = srv.database.as_ref().unwrap().url.clone();
    let out = srv
        .command(bin())
        .args(["audit", "verify", "--db", &url, "--public-key", &key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
