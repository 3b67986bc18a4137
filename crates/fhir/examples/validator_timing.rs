//! Measures start-up and validation costs of [`carevault_fhir::Validator`].
//!
//! Run with `cargo run --release -p carevault-fhir --example validator_timing`.
#![allow(clippy::print_stdout)] // a benchmark: its output is the point

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use carevault_fhir::{ResourceType, Validator};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let validator = Validator::new()?;
    println!(
        "Validator::new (parse + prepare schema): {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    validator.warm_up();
    println!(
        "warm_up (13 common types):               {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    validator.compile_all()?;
    println!(
        "compile_all (remaining 133 types):       {:?}",
        started.elapsed()
    );

    let fresh = Validator::new()?;
    let started = Instant::now();
    fresh.compile_all()?;
    println!(
        "compile_all (all 146, fresh validator):  {:?}",
        started.elapsed()
    );

    let patient = patient();
    let observation = observation();
    let mut invalid = patient.clone();
    invalid["birthDate"] = json!("12/07/1984");
    invalid["nickname"] = json!("JD");
    let entries: Vec<Value> = (0..100)
        .map(|i| json!({ "resource": if i % 2 == 0 { patient.clone() } else { observation.clone() } }))
        .collect();
    let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": entries });

    report(
        &validator,
        "Patient (valid)",
        ResourceType::PATIENT,
        &patient,
        20_000,
    )?;
    report(
        &validator,
        "Observation (valid)",
        ResourceType::OBSERVATION,
        &observation,
        20_000,
    )?;
    report(
        &validator,
        "Patient (2 issues)",
        ResourceType::PATIENT,
        &invalid,
        20_000,
    )?;
    report(
        &validator,
        "Bundle of 100 (valid)",
        ResourceType::BUNDLE,
        &bundle,
        500,
    )?;
    Ok(())
}

fn report(
    validator: &Validator,
    label: &str,
    rt: ResourceType,
    resource: &Value,
    runs: u32,
) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    for _ in 0..runs {
        let _ = black_box(validator.validate(rt, black_box(resource)));
    }
    let per_run: Duration = started.elapsed() / runs;
    let outcome = match validator.validate(rt, resource) {
        Ok(()) => "valid".to_owned(),
        Err(issues) => format!("{} issue(s)", issues.len()),
    };
    println!("validate {label:<24} {per_run:>10.2?} per call ({outcome})");
    Ok(())
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d",
        "meta": { "versionId": "1", "lastUpdated": "2024-03-01T12:30:00.000Z" },
        "identifier": [{ "system": "http://hospital.smarthealthit.org", "value": "MRN-0042" }],
        "active": true,
        "name": [{ "use": "official", "family": "Doe", "given": ["Jane", "Q."] }],
        "telecom": [{ "system": "phone", "value": "555-0100", "use": "home" }],
        "gender": "female",
        "birthDate": "1984-07-12",
        "address": [{
            "line": ["12 Main Street"],
            "city": "Springfield",
            "state": "MA",
            "postalCode": "01101",
            "country": "US"
        }],
        "maritalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M" }] }
    })
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "obs-hr-1",
        "status": "final",
        "category": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs"
            }]
        }],
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4", "display": "Heart rate" }] },
        "subject": { "reference": "Patient/8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d" },
        "effectiveDateTime": "2024-03-01T09:15:00-05:00",
        "valueQuantity": { "value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min" }
    })
}
