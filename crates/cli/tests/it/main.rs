//! CareVault's integration tests: one test binary (each extra binary is another slow link on a
//! 2-core machine), one module per area. Every test starts the real `carevault` binary in a temp
//! directory and speaks HTTPS to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod alert_actions;
mod audit;
mod authz;
mod backup;
mod backup_offsite;
mod backup_schedule;
mod bulk_client;
mod bundle;
mod canary;
mod chaining;
mod cli;
mod compartments;
mod conformance;
mod connections;
mod deid;
mod deploy;
mod detection;
mod differential;
mod doctor;
mod e2e;
mod export;
mod fhir_clients;
mod fhirpatch;
mod first_hour;
mod health;
mod hostile;
mod import;
mod keys;
mod limits;
mod login;
mod monitoring;
mod mtls;
mod multinode;
mod outage;
mod pg_tls;
mod pty;
mod refusals;
mod search;
mod stapling;
mod tamper;
mod tiers;
mod tls;

use std::path::Path;

use carevault_testkit::TestServer;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_carevault"))
}

/// The path (from `/fhir`) of a Bundle's `next` link, if it has one.
pub fn next_path(bundle: &serde_json::Value) -> Option<String> {
    let url = bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")?["url"]
        .as_str()?;
    Some(url[url.find("/fhir")?..].to_owned())
}

/// Percent-encode a query value (every byte but the unreserved ones).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn server() -> TestServer {
    TestServer::start(bin())
}

pub fn patient(family: &str, given: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Patient",
        "active": true,
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1984-07-12",
        "managingOrganization": {"reference": "Organization/org-a"}
    })
}

pub fn observation(patient_id: &str, note: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
        "note": [{"text": note}]
    })
}
