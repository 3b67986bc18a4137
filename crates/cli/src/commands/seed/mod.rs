//! `carevault seed`: a deterministic synthetic population for benchmarks and demos.
//!
//! Every patient gets a chart shaped like a primary-care record: a few encounters, vital signs
//! and laboratory results at those encounters (LOINC, UCUM units, values drawn around adult
//! reference ranges by sex and age), conditions (SNOMED CT), medication requests (RxNorm),
//! allergies and immunizations (CVX). About 50 resources per patient on average. The same
//! `--seed` gives byte-identical output. Nothing describes a real person: names are drawn from
//! common-name lists, identifiers and phone numbers from reserved ranges, every resource is tagged
//! `synthetic`.
//!
//! Output is FHIR Bulk Data NDJSON, one file per resource type, which `carevault import` loads.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

mod chart;
mod rng;
mod vocabulary;

use chart::chart;
use rng::Rng;
use vocabulary::{CITIES, TAG};

/// Types in the order `seed` writes them (and `import` loads them: organizations and patients
/// first, so that every later resource's compartment already has its organization).
pub const TYPES: &[&str] = &[
    "Organization",
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "MedicationRequest",
    "AllergyIntolerance",
    "Immunization",
];

pub struct Summary {
    pub patients: usize,
    pub resources: usize,
    pub per_type: Vec<(&'static str, usize)>,
}

/// Write `patients` synthetic patients (and `organizations` organizations) into `out`.
pub fn generate(patients: usize, organizations: usize, seed: u64, out: &Path) -> Result<Summary> {
    if patients == 0 {
        bail!("--patients must be at least 1");
    }
    if organizations == 0 || organizations > 1000 {
        bail!("--organizations must be between 1 and 1000");
    }
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut files = Vec::new();
    for t in TYPES {
        let path = out.join(format!("{t}.ndjson"));
        let file =
            fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        files.push((*t, BufWriter::with_capacity(1 << 20, file), 0usize));
    }
    let mut emit = |value: Value| -> Result<()> {
        let rtype = value["resourceType"].as_str().unwrap_or_default();
        let slot = files
            .iter_mut()
            .find(|(t, _, _)| *t == rtype)
            .context("generator produced an unexpected type")?;
        serde_json::to_writer(&mut slot.1, &value)?;
        slot.1.write_all(b"\n")?;
        slot.2 += 1;
        Ok(())
    };
    let tag = json!({"tag": [{"system": TAG, "code": "synthetic"}]});
    for o in 1..=organizations {
        emit(json!({
            "resourceType": "Organization",
            "id": format!("org-{o}"),
            "meta": tag,
            "active": true,
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.7", "value": format!("ORG{o:05}")}],
            "name": format!("{} Family Practice", CITIES[(o - 1) % CITIES.len()].0),
        }))?;
    }
    let mut rng = Rng::new(seed);
    for n in 0..patients {
        chart(&mut rng, n, organizations, &tag, &mut emit)?;
    }
    let mut summary = Summary {
        patients,
        resources: 0,
        per_type: Vec::new(),
    };
    for (t, mut w, count) in files {
        w.flush()?;
        w.into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .context("cannot sync output")?;
        summary.resources += count;
        summary.per_type.push((t, count));
    }
    Ok(summary)
}

/// `carevault seed`: generate, then print what was written where.
pub(crate) fn run(patients: usize, organizations: usize, seed: u64, out: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let summary = generate(patients, organizations, seed, out)?;
    for (rtype, count) in &summary.per_type {
        println!("{rtype:<20} {count:>9}");
    }
    println!(
        "wrote {} resources for {} patients to {} in {:.1} s; load them with `carevault import {}`",
        summary.resources,
        summary.patients,
        out.display(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        generate(20, 3, 7, a.path()).unwrap();
        generate(20, 3, 7, b.path()).unwrap();
        generate(20, 3, 8, c.path()).unwrap();
        let read = |d: &Path| fs::read(d.join("Observation.ndjson")).unwrap();
        assert_eq!(read(a.path()), read(b.path()));
        assert_ne!(read(a.path()), read(c.path()));
    }

    #[test]
    fn charts_have_the_expected_shape() {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(200, 4, 1, dir.path()).unwrap();
        let per_patient = summary.resources as f64 / 200.0;
        assert!((40.0..60.0).contains(&per_patient), "{per_patient}");
        let patients = fs::read_to_string(dir.path().join("Patient.ndjson")).unwrap();
        let ids: std::collections::HashSet<String> = patients
            .lines()
            .map(|l| {
                let p: Value = serde_json::from_str(l).unwrap();
                assert!(p["birthDate"].as_str().unwrap() < "2026-01-01");
                p["id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 200, "patient ids are unique");
        // Every observation refers to a generated patient and carries a plausible value.
        for line in fs::read_to_string(dir.path().join("Observation.ndjson"))
            .unwrap()
            .lines()
        {
            let o: Value = serde_json::from_str(line).unwrap();
            let subject = o["subject"]["reference"].as_str().unwrap();
            assert!(ids.contains(subject.trim_start_matches("Patient/")));
            assert!(o["valueQuantity"]["value"].as_f64().unwrap() >= 0.0);
        }
    }

    #[test]
    fn rejects_nonsense_sizes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(generate(0, 1, 1, dir.path()).is_err());
        assert!(generate(1, 0, 1, dir.path()).is_err());
    }
}
