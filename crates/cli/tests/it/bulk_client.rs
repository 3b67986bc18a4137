//! A standard bulk-data client runs the whole async `$export` flow against a production
//! environment, and its result is imported into a development one (issue 22).
//!
//! The client is `@medplum/core`'s `MedplumClient` (npm, pinned in
//! `crates/cli/tests/clients/bulk-export/package-lock.json`): `bulkExport` POSTs the kick-off
//! with `Prefer: respond-async` and the parameters in the query, polls the `Content-Location`
//! status URL until the completion manifest, and `download` fetches each output file with the
//! same bearer token (`export.mjs` there). Its `bulkExport` takes no extra parameters, so the
//! export is asked by a developer, whose exports are always de-identified. The directory it
//! writes is what `carevault import` loads into a fresh development environment; no identifying
//! value of the source reaches the files or the imported data.

use std::collections::BTreeSet;
use std::process::Command;

use carevault_testkit::{Api, TestServer, output_text};
use serde_json::{Value, json};

use crate::{bin, observation, patient};

/// Every `Type/id` reference in `value`.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) => out.push(r.clone()),
                    _ => references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

fn total(api: &Api, rtype: &str) -> u64 {
    let r = api.get(&format!("/fhir/{rtype}?_summary=count"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["total"].as_u64().unwrap()
}

#[test]
fn a_standard_bulk_data_client_exports_de_identified_and_the_result_imports_into_development() {
    let client = crate::fhir_clients::npm_client("bulk-export", "@medplum/core");
    let tmp = tempfile::tempdir().unwrap();
    let pass = crate::tiers::passphrase_file(tmp.path());
    let prod = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_ENVIRONMENT_TIER", "production"),
            ("CAREVAULT_KEY_PASSPHRASE_FILE", &pass),
        ],
    );
    let admin = prod.admin();
    let clin = prod.user(&admin, "dr.bulk", &["clinician"], Some("org-a"));
    // Canaries: names, MRNs and notes that must not leave production, and the real ids.
    let mut canaries: Vec<String> = Vec::new();
    for i in 0..3 {
        let family = format!("Bulkcanaryfamily{i}");
        let mrn = format!("MRN-BULK-CANARY-{i}4471");
        let mut p = patient(&family, &format!("Bulkcanarygiven{i}"));
        p["identifier"] = json!([{"system": "urn:oid:2.16.840.1.113883.19.5", "value": mrn}]);
        let r = clin.api.post_fhir("/fhir/Patient", &p);
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_owned();
        for j in 0..2 {
            let note = format!("Bulkcanarynote{i}{j}");
            let r = clin
                .api
                .post_fhir("/fhir/Observation", &observation(&id, &note));
            assert_eq!(r.status, 201, "{}", r.text());
            canaries.push(r.json()["id"].as_str().unwrap().to_owned());
            canaries.push(note);
        }
        canaries.extend([family, format!("Bulkcanarygiven{i}"), mrn, id]);
    }
    let dev_user = prod.user(&admin, "dev.bulk", &["developer"], None);
    let token = dev_user.api.token.clone().unwrap();

    // The client: kick-off, polling, manifest and downloads, token in the environment only.
    let out_dir = tmp.path().join("exported");
    let run = Command::new("node")
        .arg(client.join("export.mjs"))
        .args([&prod.base, out_dir.to_str().unwrap(), "Patient,Observation"])
        .env("CAREVAULT_BULK_TOKEN", &token)
        .env("NODE_EXTRA_CA_CERTS", prod.ca_pem())
        .current_dir(&client)
        .output()
        .unwrap();
    let said = output_text(&run);
    assert!(run.status.success(), "{said}");
    assert!(!said.contains(&token), "the client printed the token");
    let summary: Value =
        serde_json::from_str(String::from_utf8_lossy(&run.stdout).lines().last().unwrap()).unwrap();
    eprintln!("the client on the wire: {summary}");
    let wire = summary["wire"].as_array().unwrap();
    // On the wire: a POST kick-off, GET polls of the status URL until 200, one GET per file,
    // every request with the bearer token.
    let kick = &wire[0];
    assert_eq!(kick["method"], "POST", "{kick}");
    assert_eq!(kick["path"], "/fhir/$export");
    assert_eq!(kick["query"], "?_type=Patient%2CObservation");
    assert_eq!(kick["prefer"], "respond-async");
    assert_eq!(kick["hasBody"], false);
    assert_eq!(kick["status"], 202);
    let status_url = kick["contentLocation"].as_str().unwrap();
    let status_path = &status_url[status_url.find("/export/").unwrap()..];
    let polls: Vec<&Value> = wire.iter().filter(|w| w["path"] == status_path).collect();
    let (last, running) = polls.split_last().unwrap();
    assert_eq!(last["status"], 200);
    for poll in running {
        assert_eq!(poll["method"], "GET");
        assert_eq!(poll["status"], 202, "{poll}");
        assert_eq!(poll["retryAfter"], "2");
        assert!(poll["progress"].is_string());
    }
    let downloads: Vec<&Value> = wire.iter().skip(1 + polls.len()).collect();
    assert_eq!(downloads.len(), 2, "{wire:?}");
    for w in wire {
        assert_eq!(w["bearer"], true, "{w}");
    }
    for d in &downloads {
        assert_eq!((&d["method"], &d["status"]), (&json!("GET"), &json!(200)));
    }

    // What it wrote: the manifest (de-identified, from production, signed) and the files.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["extension"]["environmentTier"], "production");
    assert_eq!(manifest["extension"]["deidentified"], true);
    let mut counts = std::collections::BTreeMap::new();
    let mut exported = String::new();
    for o in manifest["output"].as_array().unwrap() {
        let name = o["url"].as_str().unwrap().rsplit('/').next().unwrap();
        let text = std::fs::read_to_string(out_dir.join(name)).unwrap();
        assert_eq!(text.lines().count() as u64, o["count"].as_u64().unwrap());
        counts.insert(
            o["type"].as_str().unwrap().to_owned(),
            o["count"].as_u64().unwrap(),
        );
        exported.push_str(&text);
    }
    assert_eq!(counts.get("Patient"), Some(&3));
    assert_eq!(counts.get("Observation"), Some(&6));
    for canary in &canaries {
        assert!(!exported.contains(canary.as_str()), "{canary} was exported");
    }

    // Into a fresh development environment, with `carevault import`.
    let dev = TestServer::start(bin());
    let dev_admin = dev.admin();
    let key = dev_admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "bulk-import", "scopes": ["system/*.crus"]}),
    );
    assert_eq!(key.status, 201, "{}", key.text());
    let key = key.json()["key"].as_str().unwrap().to_owned();
    let key_file = tmp.path().join("import.key");
    std::fs::write(&key_file, &key).unwrap();
    let imported = crate::export::cli(
        &dev,
        &key_file,
        &tmp.path().join("cli"),
        &["import", out_dir.to_str().unwrap()],
    );
    assert!(imported.status.success(), "{}", output_text(&imported));
    let api = dev.api().with_token(&key);
    for (rtype, count) in &counts {
        assert_eq!(total(&api, rtype), *count, "{rtype}");
    }

    // Every reference between the exported types resolves in the imported data.
    let mut refs = Vec::new();
    for line in exported.lines() {
        references(&serde_json::from_str(line).unwrap(), &mut refs);
    }
    let inside: BTreeSet<&String> = refs
        .iter()
        .filter(|r| counts.keys().any(|t| r.starts_with(&format!("{t}/"))))
        .collect();
    assert_eq!(
        inside.len(),
        3,
        "each observation names its patient: {refs:?}"
    );
    for reference in inside {
        let r = api.get(&format!("/fhir/{reference}"));
        assert_eq!(r.status, 200, "{reference}: {}", r.text());
    }
    let held = api.get("/fhir/Patient?_count=100").text()
        + &api.get("/fhir/Observation?_count=100").text();
    for canary in &canaries {
        assert!(!held.contains(canary.as_str()), "{canary} was imported");
    }
}
