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

/// A small deterministic generator (SplitMix64). Synthetic data needs reproducibility, not
/// unpredictability; nothing here is used for security.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5EED_CA2E_7A11_7000)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi] (inclusive).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1).max(1) as u64;
        lo + (self.next_u64() % span) as i64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// Normally distributed (Box-Muller).
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A version-4-shaped UUID from the stream, so ids look like a real server's.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
        let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xFFFF,
            a & 0xFFFF,
            b >> 48,
            b & 0xFFFF_FFFF_FFFF
        )
    }
}

const FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Dubois",
    "Moreau",
    "Lefèvre",
    "Rossi",
    "Russo",
    "Ferrari",
    "Esposito",
    "Bianchi",
    "Kowalski",
    "Nowak",
    "Novák",
    "Jensen",
    "Nielsen",
    "Hansen",
    "Johansson",
    "Andersson",
    "Virtanen",
    "Korhonen",
    "Murphy",
    "Kelly",
    "O'Brien",
    "Byrne",
    "Tanaka",
    "Suzuki",
    "Sato",
    "Kim",
    "Park",
    "Chen",
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Singh",
    "Kumar",
    "Patel",
    "Shah",
    "Okafor",
    "Adeyemi",
    "Mensah",
    "Haddad",
];
const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Sandra",
    "Margaret",
    "Ashley",
    "Kimberly",
    "Emily",
    "Donna",
    "Michelle",
    "Carol",
    "Amanda",
    "Melissa",
    "Deborah",
    "Stephanie",
    "Rebecca",
    "Laura",
    "Helen",
    "Sharon",
    "Cynthia",
    "Amélie",
    "Zoë",
    "Chloé",
    "Léa",
    "Sofia",
    "Giulia",
    "Anna",
    "Maria",
    "Emma",
    "Olivia",
    "Ava",
    "Mia",
    "Hana",
    "Yuki",
    "Mei",
    "Priya",
    "Aisha",
    "Fatima",
    "Amara",
    "Ingrid",
];
const GIVEN_MALE: &[&str] = &[
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Christopher",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "Steven",
    "Paul",
    "Andrew",
    "Joshua",
    "Kenneth",
    "Kevin",
    "Brian",
    "George",
    "Timothy",
    "Ronald",
    "Edward",
    "Jason",
    "Jeffrey",
    "Ryan",
    "José",
    "Luis",
    "Carlos",
    "François",
    "Jürgen",
    "Lukas",
    "Marco",
    "Luca",
    "Piotr",
    "Jan",
    "Lars",
    "Mikko",
    "Seán",
    "Hiroshi",
    "Kenji",
    "Wei",
    "Arjun",
    "Rahul",
    "Chinedu",
    "Kwame",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Springfield", "IL", "627"),
    ("Madison", "WI", "537"),
    ("Salem", "OR", "973"),
    ("Dover", "DE", "199"),
    ("Boulder", "CO", "803"),
    ("Ann Arbor", "MI", "481"),
    ("Burlington", "VT", "054"),
    ("Santa Fe", "NM", "875"),
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Elm St",
    "Park Rd",
    "Lake View Dr",
    "Hill St",
];

/// (LOINC code, display, category, UCUM unit, mean, sd, decimals).
type Measure = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    f64,
    f64,
    u32,
);
const VITALS: &[Measure] = &[
    ("8867-4", "Heart rate", "vital-signs", "/min", 72.0, 11.0, 0),
    (
        "8480-6",
        "Systolic blood pressure",
        "vital-signs",
        "mm[Hg]",
        122.0,
        15.0,
        0,
    ),
    (
        "8462-4",
        "Diastolic blood pressure",
        "vital-signs",
        "mm[Hg]",
        78.0,
        9.0,
        0,
    ),
    (
        "8310-5",
        "Body temperature",
        "vital-signs",
        "Cel",
        36.8,
        0.35,
        1,
    ),
    (
        "9279-1",
        "Respiratory rate",
        "vital-signs",
        "/min",
        15.0,
        2.5,
        0,
    ),
    (
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "vital-signs",
        "%",
        97.5,
        1.5,
        0,
    ),
];
const LABS: &[Measure] = &[
    (
        "2345-7",
        "Glucose [Mass/volume] in Serum or Plasma",
        "laboratory",
        "mg/dL",
        101.0,
        22.0,
        0,
    ),
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "laboratory",
        "%",
        5.8,
        0.8,
        1,
    ),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "laboratory",
        "mg/dL",
        192.0,
        36.0,
        0,
    ),
    (
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "laboratory",
        "mg/dL",
        0.95,
        0.22,
        2,
    ),
    (
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "laboratory",
        "g/dL",
        14.0,
        1.4,
        1,
    ),
];
const CONDITIONS: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder, systemic arterial"),
    ("195967001", "Asthma"),
    ("13645005", "Chronic obstructive lung disease"),
    ("55822004", "Hyperlipidemia"),
    ("35489007", "Depressive disorder"),
    ("69896004", "Rheumatoid arthritis"),
    ("40055000", "Chronic sinusitis"),
    ("271737000", "Anemia"),
    ("399211009", "History of myocardial infarction"),
];
const MEDICATIONS: &[(&str, &str)] = &[
    (
        "860975",
        "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("617314", "atorvastatin 10 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("310965", "Ibuprofen 200 MG Oral Tablet"),
    (
        "745679",
        "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
    ),
    ("312961", "simvastatin 20 MG Oral Tablet"),
    ("313782", "Acetaminophen 325 MG Oral Tablet"),
];
const ALLERGIES: &[(&str, &str)] = &[
    ("91936005", "Allergy to penicillin"),
    ("300913006", "Shellfish allergy"),
    ("91935009", "Allergy to peanuts"),
    ("418689008", "Allergy to grass pollen"),
    ("232347008", "Dander (animal) allergy"),
];
const VACCINES: &[(&str, &str)] = &[
    ("140", "Influenza, seasonal, injectable, preservative free"),
    (
        "208",
        "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose",
    ),
    ("115", "Tdap"),
    ("133", "Pneumococcal conjugate PCV 13"),
    ("43", "Hepatitis B vaccine, adult dosage"),
];

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";
const TAG: &str = "https://carevault.dev/fhir/CodeSystem/tag";

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

/// The date `days` days after 1970-01-01, as YYYY-MM-DD.
fn date(days: i64) -> String {
    let date = time::Date::from_julian_day((2_440_588 + days) as i32)
        .unwrap_or(time::macros::date!(2000 - 01 - 01));
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn date_time(days: i64, minute_of_day: i64) -> String {
    format!(
        "{}T{:02}:{:02}:00Z",
        date(days),
        minute_of_day / 60,
        minute_of_day % 60
    )
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn round(value: f64, decimals: u32) -> Value {
    let scale = 10f64.powi(decimals as i32);
    let v = (value * scale).round() / scale;
    if decimals == 0 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

pub struct Summary {
    pub patients: usize,
    pub resources: usize,
    pub per_type: Vec<(&'static str, usize)>,
}

/// The generator's fixed "today" (days since 1970-01-01): 2026-01-01, so output does not
/// depend on when it runs.
const TODAY: i64 = 20_454;

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

/// One patient's chart.
fn chart(
    rng: &mut Rng,
    n: usize,
    organizations: usize,
    tag: &Value,
    emit: &mut impl FnMut(Value) -> Result<()>,
) -> Result<()> {
    let female = rng.unit() < 0.51;
    // Ages skew adult, as a primary-care panel does: 1-95.
    let age_years = (rng.normal(47.0, 21.0).round() as i64).clamp(1, 95);
    let born = TODAY - age_years * 365 - rng.range(0, 364);
    let pid = rng.uuid();
    let org = format!("org-{}", n % organizations + 1);
    let family = *rng.pick(FAMILY);
    let given = *rng.pick(if female { GIVEN_FEMALE } else { GIVEN_MALE });
    let middle = *rng.pick(if female { GIVEN_FEMALE } else { GIVEN_MALE });
    let (city, state, zip) = *rng.pick(CITIES);
    let patient_ref = format!("Patient/{pid}");
    emit(json!({
        "resourceType": "Patient",
        "id": pid,
        "meta": tag,
        "identifier": [{
            "use": "usual",
            "type": coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number"),
            "system": "urn:oid:2.16.840.1.113883.19.5",
            "value": format!("MRN{:08}", 10_000_000 + n),
        }],
        "active": true,
        "name": [{"use": "official", "family": family, "given": [given, middle]}],
        "telecom": [
            {"system": "phone", "value": format!("555-01{:02}-{:04}", rng.range(0, 99), rng.range(0, 9999)), "use": "home"},
            {"system": "email", "value": format!("{}.{}{}@example.org", given.to_lowercase(), family.to_lowercase().replace(['\'', ' '], ""), n)},
        ],
        "gender": if female { "female" } else { "male" },
        "birthDate": date(born),
        "address": [{
            "use": "home",
            "line": [format!("{} {}", rng.range(1, 9999), rng.pick(STREETS))],
            "city": city, "state": state,
            "postalCode": format!("{zip}{:02}", rng.range(0, 99)),
            "country": "US",
        }],
        "managingOrganization": {"reference": format!("Organization/{org}")},
    }))?;

    // Vital-sign baselines per patient, so a chart's values are consistent over time.
    let height_cm = if age_years >= 18 {
        rng.normal(if female { 163.0 } else { 176.0 }, 7.0)
    } else {
        50.0 + age_years as f64 * 6.5
    };
    let bmi = rng.normal(27.0, 4.5).clamp(16.0, 45.0);
    let offsets: Vec<f64> = VITALS.iter().map(|_| rng.normal(0.0, 0.5)).collect();

    let encounters = rng.range(2, 4);
    let mut visit_day = TODAY - rng.range(200, 3000);
    let mut encounter_refs = Vec::new();
    for _ in 0..encounters {
        let eid = rng.uuid();
        let start_minute = rng.range(8 * 60, 17 * 60);
        emit(json!({
            "resourceType": "Encounter",
            "id": eid,
            "meta": tag,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "type": [coding(SNOMED, "185349003", "Encounter for check up")],
            "subject": {"reference": patient_ref},
            "period": {"start": date_time(visit_day, start_minute), "end": date_time(visit_day, start_minute + 30)},
            "serviceProvider": {"reference": format!("Organization/{org}")},
        }))?;
        encounter_refs.push((eid, visit_day, start_minute));
        visit_day += rng.range(30, 900).min((TODAY - visit_day).max(1));
    }

    // Observations: vitals at every encounter, labs at most; on average ~40 per patient.
    for (eid, day, minute) in &encounter_refs {
        let when = date_time(*day, *minute + 5);
        let mut measures: Vec<(Measure, f64)> = VITALS
            .iter()
            .zip(&offsets)
            .map(|(m, off)| (*m, m.4 + off * m.5))
            .collect();
        let weight = bmi * (height_cm / 100.0).powi(2);
        measures.push((
            ("29463-7", "Body weight", "vital-signs", "kg", 0.0, 1.5, 1),
            weight,
        ));
        measures.push((
            ("8302-2", "Body height", "vital-signs", "cm", 0.0, 0.5, 1),
            height_cm,
        ));
        measures.push((
            (
                "39156-5",
                "Body mass index (BMI) [Ratio]",
                "vital-signs",
                "kg/m2",
                0.0,
                0.6,
                1,
            ),
            bmi,
        ));
        for lab in LABS {
            if rng.unit() < 0.85 {
                measures.push((*lab, lab.4));
            }
        }
        for ((code, display, category, unit, _, sd, decimals), center) in measures {
            let value = rng.normal(center, sd).max(0.0);
            let category_display = if category == "laboratory" {
                "Laboratory"
            } else {
                "Vital Signs"
            };
            emit(json!({
                "resourceType": "Observation",
                "id": rng.uuid(),
                "meta": tag,
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category, "display": category_display}]}],
                "code": coding(LOINC, code, display),
                "subject": {"reference": patient_ref},
                "encounter": {"reference": format!("Encounter/{eid}")},
                "effectiveDateTime": when,
                "issued": format!("{}.000Z", when.trim_end_matches('Z')),
                "valueQuantity": {"value": round(value, decimals), "unit": unit, "system": UCUM, "code": unit},
            }))?;
        }
    }

    let first_visit = encounter_refs.first().map_or(TODAY - 365, |e| e.1);
    for _ in 0..rng.range(1, 3) {
        let (code, display) = *rng.pick(CONDITIONS);
        emit(json!({
            "resourceType": "Condition",
            "id": rng.uuid(),
            "meta": tag,
            "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
            "category": [coding("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item")],
            "code": coding(SNOMED, code, display),
            "subject": {"reference": patient_ref},
            "onsetDateTime": date_time(first_visit - rng.range(0, 2000).min(first_visit - born), 9 * 60),
            "recordedDate": date_time(first_visit, 9 * 60),
        }))?;
    }
    for _ in 0..rng.range(1, 3) {
        let (code, display) = *rng.pick(MEDICATIONS);
        let authored = first_visit + rng.range(0, (TODAY - first_visit).max(1));
        emit(json!({
            "resourceType": "MedicationRequest",
            "id": rng.uuid(),
            "meta": tag,
            "status": if rng.unit() < 0.7 { "active" } else { "completed" },
            "intent": "order",
            "medicationCodeableConcept": coding("http://www.nlm.nih.gov/research/umls/rxnorm", code, display),
            "subject": {"reference": patient_ref},
            "authoredOn": date_time(authored, rng.range(8 * 60, 17 * 60)),
            "dosageInstruction": [{"text": "Take one tablet by mouth daily"}],
        }))?;
    }
    for _ in 0..rng.range(0, 2) {
        let (code, display) = *rng.pick(ALLERGIES);
        emit(json!({
            "resourceType": "AllergyIntolerance",
            "id": rng.uuid(),
            "meta": tag,
            "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"),
            "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed", "Confirmed"),
            "code": coding(SNOMED, code, display),
            "patient": {"reference": patient_ref},
            "recordedDate": date_time(first_visit, 10 * 60),
        }))?;
    }
    for _ in 0..rng.range(1, 2) {
        let (code, display) = *rng.pick(VACCINES);
        emit(json!({
            "resourceType": "Immunization",
            "id": rng.uuid(),
            "meta": tag,
            "status": "completed",
            "vaccineCode": coding("http://hl7.org/fhir/sid/cvx", code, display),
            "patient": {"reference": patient_ref},
            "occurrenceDateTime": date_time(first_visit + rng.range(0, (TODAY - first_visit).max(1)), 11 * 60),
            "primarySource": true,
        }))?;
    }
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
    fn dates_are_calendar_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(TODAY), "2026-01-01");
        assert_eq!(date_time(TODAY, 61), "2026-01-01T01:01:00Z");
    }

    #[test]
    fn rejects_nonsense_sizes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(generate(0, 1, 1, dir.path()).is_err());
        assert!(generate(1, 0, 1, dir.path()).is_err());
    }
}
