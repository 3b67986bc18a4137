//! Real FHIR clients against CareVault (issue 19): fhir-kit-client (npm) and fhirpy (PyPI), each
//! driven by a script in `crates/cli/tests/clients/` that uses the client as its README shows,
//! against a real server over TLS with a clinician's session token. Each script reports what it
//! saw and what went over the wire; the tests check both, and that another organization's
//! patient with the same name never shows through a chained search.
//!
//! `.ci/run` installs both clients (`npm ci` in `clients/fhir-kit`, `pip3 install -r
//! clients/fhirpy/requirements.txt`); the fhir-kit test runs `npm ci` itself when `node_modules`
//! is missing, and the fhirpy test fails saying what to install when fhirpy is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use carevault_testkit::{Api, TestServer, output_text};
use serde_json::{Value, json};

use crate::{bin, observation, patient};

/// A client's directory under `crates/cli/tests/clients/`.
fn client_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// Fails saying how to install `tool` when it does not run.
fn require(tool: &str, install: &str) {
    let found = Command::new(tool).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this client test needs {tool}: {install} (.ci/run does)"
    );
}

/// The npm client in `clients/<name>`, after `npm ci` if `node_modules/<package>` is missing,
/// under a lock that other test processes (nextest runs each test in its own) wait on.
pub fn npm_client(name: &str, package: &str) -> PathBuf {
    let dir = client_dir(name);
    require("node", "apt-get install nodejs npm");
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-npm-ci.lock"));
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    if !dir
        .join("node_modules")
        .join(package)
        .join("package.json")
        .exists()
    {
        require("npm", "apt-get install nodejs npm");
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "npm ci: {}", output_text(&out));
    }
    lock.unlock().unwrap();
    dir
}

/// Runs a client script with the token in its environment; its report, the last line of its
/// standard output.
fn run_client(mut command: Command, token: &str) -> Value {
    let run = command.env("CAREVAULT_TOKEN", token).output().unwrap();
    let said = output_text(&run);
    assert!(run.status.success(), "{said}");
    assert!(!said.contains(token), "the client printed the token");
    let last = String::from_utf8_lossy(&run.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let report: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {said}"));
    eprintln!("the client reported: {report}");
    report
}

/// A clinician of org-a and, in org-b, a patient named `chain_family` with two observations,
/// which a chained search by that name must never show org-a's clinician.
fn server_with_a_foreign_namesake(chain_family: &str) -> (TestServer, Api, String, Vec<String>) {
    let srv = TestServer::start(bin());
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.client", &["clinician"], Some("org-a"));
    let other = srv.user(&admin, "dr.other", &["clinician"], Some("org-b"));
    let mut foreign = patient(chain_family, "Namesake");
    foreign["managingOrganization"] = json!({"reference": "Organization/org-b"});
    let r = other.api.post_fhir("/fhir/Patient", &foreign);
    assert_eq!(r.status, 201, "{}", r.text());
    let foreign_id = r.json()["id"].as_str().unwrap().to_owned();
    let mut foreign_ids = vec![foreign_id.clone()];
    for note in ["first", "second"] {
        let r = other
            .api
            .post_fhir("/fhir/Observation", &observation(&foreign_id, note));
        assert_eq!(r.status, 201, "{}", r.text());
        foreign_ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let token = clin.api.token.clone().unwrap();
    (srv, other.api, token, foreign_ids)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Every exchange on the wire answered below 500, and at least one went to `path` with
/// `method` and a query starting with `query`.
fn on_the_wire(report: &Value, method: &str, path: &str, query: &str) -> usize {
    let wire = report["wire"].as_array().unwrap();
    for w in wire {
        assert!(w["status"].as_u64().unwrap() < 500, "{w}");
    }
    let n = wire
        .iter()
        .filter(|w| {
            w["method"] == method
                && w["path"] == path
                && w["query"].as_str().unwrap().starts_with(query)
        })
        .count();
    assert!(n > 0, "no {method} {path}?{query} on the wire: {wire:?}");
    n
}

/// A transaction-response whose `entries` entries were all created.
fn transaction_created(bundle_type: &Value, statuses: &Value, entries: usize) {
    assert_eq!(bundle_type, "transaction-response");
    let statuses = strings(statuses);
    assert_eq!(statuses.len(), entries);
    assert!(
        statuses.iter().all(|s| s.starts_with("201")),
        "{statuses:?}"
    );
}

/// Asked directly, not through the client: the client's two patients are deleted, and the
/// other organization's namesake is still there.
fn both_deleted_and_the_namesake_untouched(
    srv: &TestServer,
    token: &str,
    deleted: [&str; 2],
    other: &Api,
    foreign: &[String],
) {
    let api = srv.api().with_token(token);
    for id in deleted {
        assert_eq!(api.get(&format!("/fhir/Patient/{id}")).status, 410);
    }
    let namesake = other.get(&format!("/fhir/Patient/{}", foreign[0]));
    assert_eq!(namesake.status, 200);
}

#[test]
fn fhir_kit_client_runs_crud_conditional_interactions_bundles_paging_and_chains() {
    let client = npm_client("fhir-kit", "fhir-kit-client");
    let tag = "Q7";
    let (srv, other, token, foreign) = server_with_a_foreign_namesake(&format!("Kitchain{tag}"));
    let mut command = Command::new("node");
    command
        .arg(client.join("conformance.mjs"))
        .args([&format!("{}/fhir", srv.base), tag, "org-a"])
        .env("NODE_EXTRA_CA_CERTS", srv.ca_pem())
        .current_dir(&client);
    let report = run_client(command, &token);

    let cs = &report["capability"];
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let interactions = strings(&cs["patientInteractions"]);
    for i in [
        "create",
        "delete",
        "history-instance",
        "patch",
        "read",
        "search-type",
        "update",
        "vread",
    ] {
        assert!(interactions.contains(&i.to_owned()), "{i}: {cs}");
    }
    assert_eq!(cs["conditionalCreate"], true);
    assert_eq!(cs["conditionalUpdate"], true);
    assert!(matches!(
        cs["conditionalDelete"].as_str(),
        Some("single" | "multiple")
    ));
    let system = strings(&cs["systemInteractions"]);
    for i in ["batch", "history-system", "search-system", "transaction"] {
        assert!(system.contains(&i.to_owned()), "{i}: {cs}");
    }

    // CRUD and JSON Patch: versions 1 to 3; a patch whose test fails is refused and changes
    // nothing; version 1 is still readable.
    let crud = &report["crud"];
    let id = crud["id"].as_str().unwrap();
    assert_eq!(crud["createdVersion"], "1");
    assert_eq!(crud["readFamily"], format!("Kitfamily{tag}"));
    assert_eq!(
        (&crud["updatedVersion"], &crud["updatedGender"]),
        (&json!("2"), &json!("other"))
    );
    assert_eq!(crud["patchedVersion"], "3");
    assert_eq!(crud["patchedBirthDate"], "1971-02-03");
    let failed = crud["failedPatch"]["status"].as_u64().unwrap();
    assert!(matches!(failed, 400 | 422), "{crud}");
    assert_eq!(crud["failedPatch"]["outcome"], "OperationOutcome");
    assert_eq!(crud["afterFailedPatch"], json!(["3", "1971-02-03"]));
    assert_eq!(crud["version1Gender"], "female");

    // Conditional create finds the patient instead of making a second; conditional update
    // updates it; a read with its current ETag answers 304; _elements and _summary narrow a read.
    let cond = &report["conditional"];
    assert_eq!(cond["createdId"], id);
    assert_eq!(cond["updatedId"], id);
    assert_eq!(cond["updatedVersion"], "4");
    assert_eq!(cond["updatedBirthDate"], "1972-03-04");
    assert_eq!(cond["notModified"]["status"], 304);
    assert_eq!(
        cond["elementsKeys"],
        json!(["gender", "id", "resourceType"])
    );
    assert_eq!(cond["summaryTextKeys"], json!(["id", "resourceType"]));

    // The transaction and the batch, both posted to `[base]/`.
    let bundles = &report["bundles"];
    transaction_created(
        &bundles["transactionType"],
        &bundles["transactionStatuses"],
        13,
    );
    assert_eq!(bundles["batchType"], "batch-response");
    let batch: Vec<String> = strings(&bundles["batchStatuses"])
        .iter()
        .map(|s| s[..3].to_owned())
        .collect();
    assert_eq!(batch, ["200", "201", "404"]);
    assert_eq!(on_the_wire(&report, "POST", "/fhir/", ""), 2);
    let chain_patient = bundles["chainPatient"].as_str().unwrap();

    // Searches paged by `next` links, five at a time: twelve observations in three pages, the
    // same by reference and by chain; the namesake in org-b shows nowhere.
    let search = &report["search"];
    let mut by_subject = strings(&search["bySubject"]["ids"]);
    assert_eq!(search["bySubject"]["pages"], 3);
    let mut chained = strings(&search["chained"]["ids"]);
    assert_eq!(search["chained"]["pages"], 3);
    by_subject.sort();
    chained.sort();
    by_subject.dedup();
    assert_eq!(by_subject.len(), 12);
    assert_eq!(chained, by_subject);
    assert_eq!(strings(&search["has"]), [chain_patient]);
    assert_eq!(strings(&search["system"]), [chain_patient]);
    on_the_wire(&report, "GET", "/fhir/", "?_type=Patient");
    for f in &foreign {
        assert!(!chained.contains(f), "the foreign namesake's {f} showed");
    }
    assert_eq!(search["historyVersions"], json!(["4", "3", "2", "1"]));
    assert_eq!(search["systemHistoryType"], "history");

    let validate = &report["validate"];
    assert_eq!(validate["valid"], json!(["information"]));
    assert!(strings(&validate["invalid"]).contains(&"error".to_owned()));

    let refusals = &report["refusals"];
    assert_eq!(refusals["unknownParameter"]["status"], 400);
    assert_eq!(refusals["unknownParameter"]["outcome"], "OperationOutcome");
    assert_eq!(refusals["xml"]["status"], 406);

    assert_eq!(report["delete"]["readDeleted"]["status"], 410);
    assert_eq!(report["delete"]["readConditionallyDeleted"]["status"], 410);

    both_deleted_and_the_namesake_untouched(&srv, &token, [id, chain_patient], &other, &foreign);
}

#[test]
fn fhirpy_runs_crud_conditional_interactions_a_transaction_paging_and_chains() {
    let client = client_dir("fhirpy");
    require("python3", "apt-get install python3");
    let have = Command::new("python3")
        .args(["-c", "import fhirpy"])
        .output()
        .unwrap();
    assert!(
        have.status.success(),
        "this client test needs fhirpy: pip3 install -r {} (.ci/run does)",
        client.join("requirements.txt").display()
    );
    let tag = "R3";
    let (srv, other, token, foreign) = server_with_a_foreign_namesake(&format!("Pychain{tag}"));
    let mut command = Command::new("python3");
    command
        .arg(client.join("conformance.py"))
        .arg(format!("{}/fhir", srv.base))
        .arg(srv.ca_pem())
        .args([tag, "org-a"])
        .current_dir(&client);
    let report = run_client(command, &token);

    let crud = &report["crud"];
    let id = crud["id"].as_str().unwrap();
    assert_eq!(crud["createdVersion"], "1");
    assert_eq!(crud["readFamily"], format!("Pyfamily{tag}"));
    assert_eq!(crud["updatedVersion"], "2");
    assert_eq!(crud["updatedBirthDate"], "1961-07-07");
    on_the_wire(&report, "POST", "/fhir/Patient", "");
    on_the_wire(&report, "PUT", &format!("/fhir/Patient/{id}"), "");

    let cond = &report["conditional"];
    assert_eq!(cond["updatedId"], id);
    assert_eq!(cond["createdByUpdate"], false);
    assert_eq!(cond["updatedVersion"], "3");
    assert_eq!(
        (&cond["foundId"], &cond["foundGender"]),
        (&json!(id), &json!("other"))
    );
    on_the_wire(&report, "PUT", "/fhir/Patient", "identifier=");

    // fhirpy posts the transaction as `POST /fhir/?`.
    let tx = &report["transaction"];
    transaction_created(&tx["type"], &tx["statuses"], 11);
    assert_eq!(on_the_wire(&report, "POST", "/fhir/", ""), 1);
    let chain_patient = tx["chainPatient"].as_str().unwrap();

    // fetch_all follows `next` links four at a time: the first page and two more.
    let search = &report["search"];
    let by_subject = strings(&search["bySubject"]);
    assert_eq!(by_subject.len(), 10);
    assert_eq!(strings(&search["chained"]), by_subject);
    for f in &foreign {
        assert!(!by_subject.contains(f), "the foreign namesake's {f} showed");
    }
    let pages = on_the_wire(&report, "GET", "/fhir/Observation", "");
    assert!(pages >= 6, "two searches of three pages each: {pages}");
    assert_eq!(strings(&search["has"]), [chain_patient]);
    assert_eq!(search["count"], 10);
    assert_eq!(
        search["elementsKeys"],
        json!(["gender", "id", "resourceType"])
    );
    let mut expected = vec!["include:Observation".to_owned(); 10];
    expected.push("match:Patient".to_owned());
    assert_eq!(strings(&search["revinclude"]), expected);

    assert_eq!(report["validate"], json!({"valid": true, "invalid": false}));
    assert_eq!(report["unknownParameter"], "OperationOutcome");
    assert_eq!(report["readDeleted"], "ResourceNotFound");
    assert_eq!(report["conditionallyDeleted"], true);
    on_the_wire(&report, "DELETE", "/fhir/Patient", "identifier=");

    both_deleted_and_the_namesake_untouched(&srv, &token, [id, chain_patient], &other, &foreign);
}
