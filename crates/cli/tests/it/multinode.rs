//! Several CareVault nodes over one PostgreSQL database: two servers sharing an environment's
//! key material (copies of one data directory) and one database, with different node ids,
//! under a concurrent mixed workload from both sides.
//!
//! These tests always use PostgreSQL (a database of their own), whichever backend the rest of
//! the suite runs on: several nodes are what the PostgreSQL backend is for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use carevault_testkit::{Account, Api, TestDatabase, TestServer};
use serde_json::json;

use crate::{bin, observation, patient};

fn id_of(r: &carevault_testkit::Reply) -> String {
    r.json()["id"].as_str().unwrap().to_owned()
}

fn version_of(r: &carevault_testkit::Reply) -> u32 {
    r.json()["meta"]["versionId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn two_nodes() -> (TestServer, TestServer) {
    let database = Arc::new(TestDatabase::create());
    let a = TestServer::start_on(bin(), &[("CAREVAULT_NODE_ID", "node-a")], Some(database));
    let b = a.start_node(bin(), "node-b");
    (a, b)
}

#[test]
fn two_nodes_share_sessions_policies_and_data_and_lose_no_update() {
    let (mut a, mut b) = two_nodes();
    let key = a
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("audit public key: ").map(str::to_owned))
        .unwrap();
    let admin = a.admin();
    // A session made on node A works on node B.
    let admin_b = admin_session_on_node_b(&b, &admin);
    // A user created through node B enrolls and logs in on node A.
    let clin = a_user_created_on_b_enrolls_on_a(&a, &admin_b);
    let on_a = clin.api.clone();
    let on_b = Api::new(&b.base, &b.ca_pem()).with_token(on_a.token.as_deref().unwrap());
    // The patients both nodes fight over.
    let patients = patients_both_nodes_fight_over(&on_a);
    let applied = mixed_workload_on_both_nodes(&on_a, &on_b, &patients);
    no_lost_update_and_no_duplicate_version(&on_b, &patients, &applied);
    policy_changes_and_logout_reach_the_other_node(&admin, &admin_b, &on_a, &on_b, &patients);

    // Both audit chains verify, together, and each node wrote its own.
    a.stop();
    b.stop();
    both_audit_chains_verify(&a, &key);
}

fn admin_session_on_node_b(b: &TestServer, admin: &Account) -> Api {
    let admin_b = Api::new(&b.base, &b.ca_pem()).with_token(admin.api.token.as_deref().unwrap());
    let who = admin_b.get("/auth/whoami");
    assert_eq!(who.status, 200, "{}", who.text());
    admin_b
}

fn a_user_created_on_b_enrolls_on_a(a: &TestServer, admin_b: &Api) -> Account {
    let created = admin_b.post_json(
        "/admin/users",
        &json!({"username": "dr.multi", "roles": ["clinician"], "organization": "org-a"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let token = created.json()["enrollment_token"]
        .as_str()
        .unwrap()
        .to_owned();
    a.enroll_and_login("dr.multi", &token)
}

fn patients_both_nodes_fight_over(on_a: &Api) -> Vec<String> {
    (0..3)
        .map(|i| {
            let r = on_a.post_fhir("/fhir/Patient", &patient(&format!("Race{i}"), "Multi"));
            assert_eq!(r.status, 201, "{}", r.text());
            id_of(&r)
        })
        .collect()
}

/// Returns, per patient, the version numbers of the acknowledged updates.
fn mixed_workload_on_both_nodes(
    on_a: &Api,
    on_b: &Api,
    patients: &[String],
) -> BTreeMap<String, Vec<u32>> {
    // Mixed workload: per node, threads doing If-Match updates (200 or 412), blind updates
    // (always applied, as the next version), creates read back at once from the other node,
    // and searches.
    let applied: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let mut threads = Vec::new();
    for t in 0..6 {
        let (mine, other) = if t % 2 == 0 {
            (on_a.clone(), on_b.clone())
        } else {
            (on_b.clone(), on_a.clone())
        };
        let patients = patients.to_vec();
        let applied = applied.clone();
        threads.push(std::thread::spawn(move || {
            race_on_one_node(t, &mine, &other, &patients, &applied)
        }));
    }
    let mut outcomes = BTreeMap::<u16, usize>::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *outcomes.entry(k).or_default() += v;
        }
    }
    assert!(outcomes.get(&200).copied().unwrap_or(0) > 0, "{outcomes:?}");
    applied.lock().unwrap().clone()
}

/// Thread `t`'s 15 requests on its node (`mine`), each checked on the other node. Returns how
/// many updates answered each status.
fn race_on_one_node(
    t: usize,
    mine: &Api,
    other: &Api,
    patients: &[String],
    applied: &Mutex<BTreeMap<String, Vec<u32>>>,
) -> BTreeMap<u16, usize> {
    let mut outcomes = BTreeMap::<u16, usize>::new();
    for i in 0..15 {
        let pid = &patients[(t + i) % patients.len()];
        let path = format!("/fhir/Patient/{pid}");
        let current = mine.get(&path);
        assert_eq!(current.status, 200, "{}", current.text());
        let mut body = current.json();
        body["name"][0]["given"] = json!([format!("t{t}i{i}")]);
        let blind = i % 3 == 0;
        let seen = version_of(&current).to_string();
        let etag = format!("W/\"{seen}\"");
        let headers: Vec<(&str, &str)> = if blind {
            vec![]
        } else {
            vec![("If-Match", etag.as_str())]
        };
        let put = mine.put_fhir(&path, &body, &headers);
        *outcomes.entry(put.status).or_default() += 1;
        match put.status {
            200 => {
                let v = version_of(&put);
                applied
                    .lock()
                    .unwrap()
                    .entry(pid.clone())
                    .or_default()
                    .push(v);
                // Acknowledged on one node: visible on the other right away.
                let there = other.get(&path);
                assert_eq!(there.status, 200);
                assert!(
                    version_of(&there) >= v,
                    "node lag: wrote {v}, other node read {}",
                    version_of(&there)
                );
                let exact = other.get(&format!("{path}/_history/{v}"));
                assert_eq!(exact.status, 200);
                assert_eq!(exact.json()["name"][0]["given"][0], format!("t{t}i{i}"));
            }
            412 => assert!(!blind, "a blind update is never refused"),
            s => panic!("update answered {s}: {}", put.text()),
        }
        if i % 4 == 0 {
            let obs = mine.post_fhir(
                "/fhir/Observation",
                &observation(pid, &format!("t{t} i{i}")),
            );
            assert_eq!(obs.status, 201, "{}", obs.text());
            let read = other.get(&format!("/fhir/Observation/{}", id_of(&obs)));
            assert_eq!(
                read.status, 200,
                "created on one node, missing on the other"
            );
            let found = other.get(&format!("/fhir/Observation?subject=Patient/{pid}"));
            assert_eq!(found.status, 200);
            let found = found.json();
            let ids: Vec<&str> = found["entry"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|x| x["resource"]["id"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                ids.contains(&id_of(&obs).as_str()),
                "search on the other node misses it"
            );
        }
    }
    outcomes
}

fn no_lost_update_and_no_duplicate_version(
    on_b: &Api,
    patients: &[String],
    applied: &BTreeMap<String, Vec<u32>>,
) {
    // No lost update, no duplicate version: each patient's history is exactly version 1 plus
    // one version per acknowledged update, numbered without gaps, and every acknowledged
    // version number is distinct.
    for pid in patients {
        let mine = applied.get(pid).cloned().unwrap_or_default();
        let distinct: BTreeSet<u32> = mine.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            mine.len(),
            "a version was acknowledged twice: {mine:?}"
        );
        let history = on_b.get(&format!("/fhir/Patient/{pid}/_history?_count=500"));
        assert_eq!(history.status, 200);
        let versions: BTreeSet<u32> = history.json()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["resource"]["meta"]["versionId"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let expected: BTreeSet<u32> = (1..=mine.len() as u32 + 1).collect();
        assert_eq!(versions, expected, "patient {pid}");
        assert_eq!(
            distinct,
            (2..=mine.len() as u32 + 1).collect::<BTreeSet<_>>()
        );
    }
}

fn policy_changes_and_logout_reach_the_other_node(
    admin: &Account,
    admin_b: &Api,
    on_a: &Api,
    on_b: &Api,
    patients: &[String],
) {
    // A policy change made on one node applies on the other from its next request on.
    let obs = on_a.post_fhir("/fhir/Observation", &observation(&patients[0], "policy"));
    let obs_path = format!("/fhir/Observation/{}", id_of(&obs));
    assert_eq!(on_b.get(&obs_path).status, 200);
    let forbid = admin.api.post_json(
        "/admin/policies",
        &json!({"name": "no-observations", "policy": "forbid (principal, action == CareVault::Action::\"read\", resource is CareVault::Resource) when { resource.type == \"Observation\" };"}),
    );
    assert_eq!(forbid.status, 201, "{}", forbid.text());
    assert_eq!(
        on_b.get(&obs_path).status,
        403,
        "node B still uses the old policies"
    );
    assert_eq!(
        admin_b.delete("/admin/policies/no-observations").status,
        204
    );
    assert_eq!(on_a.get(&obs_path).status, 200, "node A still forbids");
    // Logging out on B ends the session on A too.
    assert_eq!(on_b.request("POST", "/auth/logout", &[], None).status, 204);
    assert_eq!(on_a.get(&obs_path).status, 401);
}

/// Run on the stopped nodes.
fn both_audit_chains_verify(a: &TestServer, key: &str) {
    let url = a.database.as_ref().unwrap().url.clone();
    let out = a
        .command(bin())
        .args(["audit", "verify", "--db", &url, "--public-key", key])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("node node-a:") && text.contains("node node-b:"),
        "{text}"
    );
    assert!(text.contains("audit trail verified"), "{text}");
    let nodes =
        a.sql("SELECT node || ':' || COUNT(*) FROM audit_event GROUP BY node ORDER BY node");
    assert!(nodes.lines().count() == 2, "{nodes}");
    let gaps = a.sql(
        "SELECT COUNT(*) FROM audit_event e JOIN audit_head h ON h.node = e.node
         GROUP BY h.node, h.seq HAVING COUNT(*) <> h.seq OR MAX(e.seq) <> h.seq",
    );
    assert_eq!(gaps.trim(), "", "a chain has gaps or extra events");
}

#[test]
fn an_environment_moves_from_sqlite_to_postgres_and_keeps_serving() {
    let mut old = TestServer::start_on(bin(), &[], None);
    let key = old
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("audit public key: ").map(str::to_owned))
        .unwrap();
    let admin = old.admin();
    let clin = old.user(&admin, "dr.move", &["clinician"], Some("org-a"));
    let pid = id_of(
        &clin
            .api
            .post_fhir("/fhir/Patient", &patient("Moved", "Mona")),
    );
    for i in 0..5 {
        let r = clin
            .api
            .post_fhir("/fhir/Observation", &observation(&pid, &format!("m{i}")));
        assert_eq!(r.status, 201);
    }
    old.stop();

    let database = Arc::new(TestDatabase::create());
    let migrate = |what: &str| {
        let out = old
            .command(bin())
            .args(["migrate", "sqlite-to-postgres", "--from"])
            .arg(old.db_path())
            .args(["--to", &database.url, "--public-key", &key])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {text}");
        assert!(
            text.contains("audit trail verified in PostgreSQL"),
            "{what}: {text}"
        );
        text
    };
    let text = migrate("first copy");
    assert!(text.contains("resource_version"), "{text}");
    // Interrupted part-way (later rows missing): running it again completes the copy.
    database
        .sql("DELETE FROM audit_patient WHERE seq > 10; DELETE FROM audit_event WHERE seq > 10");
    migrate("resumed copy");

    // The environment serves from PostgreSQL: same data, same sessions, a chain that goes on.
    let node = old.start_node_on(bin(), "node-1", database.clone());
    let api = Api::new(&node.base, &node.ca_pem()).with_token(clin.api.token.as_deref().unwrap());
    let read = api.get(&format!("/fhir/Patient/{pid}"));
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["name"][0]["family"], "Moved");
    let found = api.get(&format!("/fhir/Observation?subject=Patient/{pid}"));
    assert_eq!(found.json()["entry"].as_array().map(Vec::len), Some(5));
    let more = api.post_fhir("/fhir/Observation", &observation(&pid, "after"));
    assert_eq!(more.status, 201, "{}", more.text());
    let mut node = node;
    node.stop();
    let out = node
        .command(bin())
        .args([
            "audit",
            "verify",
            "--db",
            &database.url,
            "--public-key",
            &key,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Both nodes give one new compartment (two patients named by an Appointment) its first data at
/// once, several writes each (batch entries run concurrently): one data key is made, committed
/// with the write that won; every other write finds it, seals again under it and commits (#27).
#[test]
fn first_writes_into_a_new_compartment_from_both_nodes_share_one_data_key() {
    let (a, b) = two_nodes();
    let admin = a.admin();
    let clin = a.user(&admin, "dr.pair", &["clinician"], Some("org-a"));
    let on_a = clin.api.clone();
    let on_b = Api::new(&b.base, &b.ca_pem()).with_token(on_a.token.as_deref().unwrap());
    let pair: Vec<String> = ["One", "Two"]
        .iter()
        .map(|given| id_of(&on_a.post_fhir("/fhir/Patient", &patient("Pair", given))))
        .collect();
    let appointment = json!({
        "resourceType": "Appointment",
        "status": "booked",
        "participant": pair.iter().map(|p| json!({
            "actor": {"reference": format!("Patient/{p}")}, "status": "accepted"
        })).collect::<Vec<_>>()
    });
    let entry =
        json!({"resource": appointment, "request": {"method": "POST", "url": "Appointment"}});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": vec![entry; 8]});
    let keys = || a.query_i64("SELECT COUNT(*) FROM data_key");
    let keys_before = keys();
    let replies = std::thread::scope(|s| {
        let nodes = [&on_a, &on_b].map(|api| s.spawn(|| crate::bundle::post_bundle(api, &batch)));
        nodes.map(|n| n.join().unwrap())
    });
    let mut created = Vec::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
        for e in reply.json()["entry"].as_array().unwrap() {
            assert_eq!(e["response"]["status"], "201 Created", "{e}");
            created.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(created.len(), 16);
    assert_eq!(
        keys() - keys_before,
        1,
        "one data key for the new compartment"
    );
    for id in &created {
        for api in [&on_a, &on_b] {
            assert_eq!(api.get(&format!("/fhir/Appointment/{id}")).status, 200);
        }
    }
}
