//! The workloads: what each connection asks for. Connection `i` acts as the clinician of
//! organization `i % organizations` and asks only about that organization's patients, as a
//! clinic's staff would.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::load::{Call, Workload, next_u64, pick};

struct Patient {
    id: String,
    /// A name prefix to search by: the first three letters of the family name.
    name_prefix: String,
    /// `system|value` of the patient's first identifier (the seed's MRN), for chained searches.
    identifier: String,
}

/// One organization's share of the seeded data.
#[derive(Default)]
struct Clinic {
    patients: Vec<Patient>,
    /// (observation id, patient index)
    observations: Vec<(String, usize)>,
}

pub struct Population {
    clinics: Vec<Clinic>,
    tokens: Vec<String>,
}

impl Population {
    /// Read ids from the seed files (`carevault seed` output), one clinic per token.
    pub fn load(seed_dir: &Path, tokens: Vec<String>) -> Result<Self> {
        let mut clinics: Vec<Clinic> = (0..tokens.len()).map(|_| Clinic::default()).collect();
        let mut where_is: HashMap<String, (usize, usize)> = HashMap::new();
        let patients = std::fs::read_to_string(seed_dir.join("Patient.ndjson"))
            .context("no Patient.ndjson in the seed directory")?;
        for line in patients.lines() {
            let p: Value = serde_json::from_str(line)?;
            let org = p["managingOrganization"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Organization/org-"))
                .and_then(|n| n.parse::<usize>().ok())
                .context("a seeded patient has no organization")?;
            let Some(clinic) = clinics.get_mut(org - 1) else {
                continue;
            };
            let id = p["id"].as_str().unwrap_or_default().to_owned();
            let family = p["name"][0]["family"].as_str().unwrap_or("A");
            let name_prefix: String = family.chars().take(3).collect();
            let identifier = format!(
                "{}|{}",
                p["identifier"][0]["system"].as_str().unwrap_or_default(),
                p["identifier"][0]["value"].as_str().unwrap_or_default()
            );
            where_is.insert(id.clone(), (org - 1, clinic.patients.len()));
            clinic.patients.push(Patient {
                id,
                name_prefix,
                identifier,
            });
        }
        let observations = std::fs::read_to_string(seed_dir.join("Observation.ndjson"))?;
        for line in observations.lines() {
            let o: Value = serde_json::from_str(line)?;
            let subject = o["subject"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/"))
                .unwrap_or_default();
            if let Some(&(clinic, patient)) = where_is.get(subject) {
                let id = o["id"].as_str().unwrap_or_default().to_owned();
                clinics[clinic].observations.push((id, patient));
            }
        }
        if clinics
            .iter()
            .any(|c| c.patients.is_empty() || c.observations.is_empty())
        {
            bail!("every organization needs patients and observations; seed more patients");
        }
        Ok(Self { clinics, tokens })
    }

    fn clinic(&self, task: usize) -> &Clinic {
        &self.clinics[task % self.clinics.len()]
    }
}

/// Percent-encode a query value (names may hold non-ASCII letters).
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn observation(patient: &str, encounter: Option<&str>, rng: &mut u64) -> Value {
    let heart_rate = 55 + next_u64(rng) % 50;
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2026-11-27T09:30:00Z",
        "valueQuantity": {"value": heart_rate, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    });
    if let Some(e) = encounter {
        o["encounter"] = json!({"reference": e});
    }
    o
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Read,
    Vread,
    SearchPatient,
    SearchName,
    /// `Encounter?subject=Patient/{id}`: a standard R4 parameter the first table lacked.
    SearchEncounter,
    /// `Observation?subject:Patient.identifier=system|value`: a one-level chain.
    SearchChain,
    /// `Patient/{id}/$everything`, one page holding the whole compartment.
    Everything,
    Create,
    Update,
    Transaction,
    Mixed,
}

struct Mix {
    kind: Kind,
    population: Arc<Population>,
    /// The baseline has no accounts.
    anonymous: bool,
}

impl Mix {
    fn call(&self, kind: Kind, task: usize, rng: &mut u64) -> Call {
        let clinic = self.population.clinic(task);
        let get = |path: String| Call {
            method: "GET",
            path,
            body: None,
        };
        match kind {
            Kind::Read => {
                let (id, _) = pick(rng, &clinic.observations);
                get(format!("/fhir/Observation/{id}"))
            }
            Kind::Vread => {
                let (id, _) = pick(rng, &clinic.observations);
                get(format!("/fhir/Observation/{id}/_history/1"))
            }
            Kind::SearchPatient => {
                let p = pick(rng, &clinic.patients);
                get(format!(
                    "/fhir/Observation?patient=Patient/{}&_count=100",
                    p.id
                ))
            }
            Kind::SearchName => {
                let p = pick(rng, &clinic.patients);
                get(format!("/fhir/Patient?name={}", encode(&p.name_prefix)))
            }
            Kind::SearchEncounter => {
                let p = pick(rng, &clinic.patients);
                get(format!("/fhir/Encounter?subject=Patient/{}", p.id))
            }
            Kind::SearchChain => {
                let p = pick(rng, &clinic.patients);
                get(format!(
                    "/fhir/Observation?subject:Patient.identifier={}&_count=100",
                    encode(&p.identifier)
                ))
            }
            Kind::Everything => {
                let p = pick(rng, &clinic.patients);
                get(format!("/fhir/Patient/{}/$everything?_count=1000", p.id))
            }
            Kind::Create => {
                let p = pick(rng, &clinic.patients);
                let body = observation(&format!("Patient/{}", p.id), None, rng);
                Call {
                    method: "POST",
                    path: "/fhir/Observation".into(),
                    body: Some(Bytes::from(body.to_string())),
                }
            }
            Kind::Update => {
                let (id, patient) = pick(rng, &clinic.observations);
                let mut body = observation(
                    &format!("Patient/{}", clinic.patients[*patient].id),
                    None,
                    rng,
                );
                body["id"] = json!(id);
                Call {
                    method: "PUT",
                    path: format!("/fhir/Observation/{id}"),
                    body: Some(Bytes::from(body.to_string())),
                }
            }
            Kind::Transaction => {
                let p = pick(rng, &clinic.patients);
                let patient = format!("Patient/{}", p.id);
                let encounter_url = format!("urn:uuid:{:032x}", u128::from(next_u64(rng)));
                let mut entries = vec![json!({
                    "fullUrl": encounter_url,
                    "resource": {
                        "resourceType": "Encounter",
                        "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "subject": {"reference": patient},
                        "period": {"start": "2026-11-27T09:00:00Z", "end": "2026-11-27T09:30:00Z"},
                    },
                    "request": {"method": "POST", "url": "Encounter"},
                })];
                for _ in 0..19 {
                    entries.push(json!({
                        "resource": observation(&patient, Some(&encounter_url), rng),
                        "request": {"method": "POST", "url": "Observation"},
                    }));
                }
                let bundle =
                    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
                Call {
                    method: "POST",
                    path: "/fhir".into(),
                    body: Some(Bytes::from(bundle.to_string())),
                }
            }
            Kind::Mixed => {
                // A clinic day: 70% reads, 20% searches, 10% writes.
                let roll = next_u64(rng) % 100;
                let kind = match roll {
                    0..70 => Kind::Read,
                    70..80 => Kind::SearchPatient,
                    80..90 => Kind::SearchName,
                    90..95 => Kind::Create,
                    _ => Kind::Update,
                };
                self.call(kind, task, rng)
            }
        }
    }
}

impl Workload for Mix {
    fn token(&self, task: usize) -> Option<String> {
        if self.anonymous {
            return None;
        }
        let tokens = &self.population.tokens;
        Some(tokens[task % tokens.len()].clone())
    }

    fn next(&self, task: usize, rng: &mut u64) -> Call {
        self.call(self.kind, task, rng)
    }
}

/// The workload `name` names (`baseline-` before a name runs it on the baseline).
fn kind_of(name: &str) -> Result<Kind> {
    let kind = match name.trim_start_matches("baseline-") {
        "read" => Kind::Read,
        "vread" => Kind::Vread,
        "search-patient" => Kind::SearchPatient,
        "search-name" => Kind::SearchName,
        "search-encounter" => Kind::SearchEncounter,
        "search-chain" => Kind::SearchChain,
        "everything" => Kind::Everything,
        "create" => Kind::Create,
        "update" => Kind::Update,
        "transaction" => Kind::Transaction,
        "mixed" => Kind::Mixed,
        other => bail!(
            "unknown workload {other}; known: read, vread, search-patient, search-name, search-encounter, search-chain, everything, create, update, transaction, mixed, baseline-read, baseline-vread"
        ),
    };
    if is_baseline(name) && !matches!(kind, Kind::Read | Kind::Vread) {
        bail!("the baseline serves reads only (baseline-read, baseline-vread)");
    }
    Ok(kind)
}

/// Whether `name` runs on the baseline server instead of CareVault.
pub fn is_baseline(name: &str) -> bool {
    name.starts_with("baseline")
}

/// Refuse a workload list that could not run to the end, before any data is seeded: an unknown
/// name, or a CareVault workload after a baseline one (CareVault is stopped for the baseline).
pub fn check(names: &[String]) -> Result<()> {
    if names.is_empty() {
        bail!("no workloads given");
    }
    for name in names {
        kind_of(name)?;
    }
    if let Some(first) = names.iter().position(|n| is_baseline(n))
        && let Some(late) = names[first..].iter().find(|n| !is_baseline(n))
    {
        bail!("{late} comes after a baseline workload: list baseline workloads last");
    }
    Ok(())
}

pub fn by_name(name: &str, population: Arc<Population>) -> Result<Arc<dyn Workload>> {
    Ok(Arc::new(Mix {
        kind: kind_of(name)?,
        population,
        anonymous: is_baseline(name),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lists_are_checked_before_anything_runs() {
        let list =
            |names: &[&str]| -> Vec<String> { names.iter().map(|n| n.to_string()).collect() };
        assert!(check(&list(&["read", "mixed", "baseline-read", "baseline-vread"])).is_ok());
        for (names, expect) in [
            (&["read", "reed"][..], "unknown workload reed"),
            (&["baseline-create"][..], "reads only"),
            (
                &["baseline-read", "read"][..],
                "read comes after a baseline workload",
            ),
            (&["baseline"][..], "unknown workload baseline"),
            (&[][..], "no workloads"),
        ] {
            let err = check(&list(names)).expect_err(expect).to_string();
            assert!(err.contains(expect), "{names:?}: {err}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("Mül"), "M%C3%BCl");
        assert_eq!(encode("O'B"), "O%27B");
        assert_eq!(encode("Smi"), "Smi");
    }
}
