//! One synthetic patient's chart: the patient, a few encounters, observations at each
//! encounter, and problem-list items. The parts draw from the generator in the order they are
//! written, so the same seed gives the same bytes.

use anyhow::Result;
use serde_json::{Value, json};

use super::rng::Rng;
use super::vocabulary::{
    ALLERGIES, CITIES, CONDITIONS, FAMILY, GIVEN_FEMALE, GIVEN_MALE, LABS, LOINC, MEDICATIONS,
    Measure, SNOMED, STREETS, UCUM, VACCINES, VITALS,
};

/// The date `days` days after 1970-01-01, as YYYY-MM-DD.
pub(super) fn date(days: i64) -> String {
    let date = time::Date::from_julian_day((2_440_588 + days) as i32)
        .unwrap_or(time::macros::date!(2000 - 01 - 01));
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

pub(super) fn date_time(days: i64, minute_of_day: i64) -> String {
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

/// The generator's fixed "today" (days since 1970-01-01): 2026-01-01, so output does not
/// depend on when it runs.
pub(super) const TODAY: i64 = 20_454;

/// Who a chart is about, as its later resources refer to them.
struct Person {
    patient_ref: String,
    org: String,
    female: bool,
    age_years: i64,
    born: i64,
}

/// Vital-sign baselines per patient, so a chart's values are consistent over time.
struct Baseline {
    height_cm: f64,
    bmi: f64,
    offsets: Vec<f64>,
}

/// An encounter's id, day and start minute.
type Visit = (String, i64, i64);

/// One patient's chart.
pub(super) fn chart(
    rng: &mut Rng,
    n: usize,
    organizations: usize,
    tag: &Value,
    emit: &mut impl FnMut(Value) -> Result<()>,
) -> Result<()> {
    let person = patient(rng, n, organizations, tag, emit)?;
    let baseline = baseline(rng, &person);
    let visits = encounters(rng, &person, tag, emit)?;
    observations(rng, &person, &baseline, &visits, tag, emit)?;
    let first_visit = visits.first().map_or(TODAY - 365, |e| e.1);
    problem_list(rng, &person, first_visit, tag, emit)
}

fn patient(
    rng: &mut Rng,
    n: usize,
    organizations: usize,
    tag: &Value,
    emit: &mut impl FnMut(Value) -> Result<()>,
) -> Result<Person> {
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

    Ok(Person {
        patient_ref,
        org,
        female,
        age_years,
        born,
    })
}

fn baseline(rng: &mut Rng, person: &Person) -> Baseline {
    let (female, age_years) = (person.female, person.age_years);
    let height_cm = if age_years >= 18 {
        rng.normal(if female { 163.0 } else { 176.0 }, 7.0)
    } else {
        50.0 + age_years as f64 * 6.5
    };
    let bmi = rng.normal(27.0, 4.5).clamp(16.0, 45.0);
    let offsets: Vec<f64> = VITALS.iter().map(|_| rng.normal(0.0, 0.5)).collect();
    Baseline {
        height_cm,
        bmi,
        offsets,
    }
}

fn encounters(
    rng: &mut Rng,
    person: &Person,
    tag: &Value,
    emit: &mut impl FnMut(Value) -> Result<()>,
) -> Result<Vec<Visit>> {
    let (org, patient_ref) = (&person.org, &person.patient_ref);
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
    Ok(encounter_refs)
}

/// Vitals at every encounter, labs at most; on average ~40 per patient.
fn observations(
    rng: &mut Rng,
    person: &Person,
    baseline: &Baseline,
    visits: &[Visit],
    tag: &Value,
    emit: &mut impl FnMut(Value) -> Result<()>,
) -> Result<()> {
    let patient_ref = &person.patient_ref;
    let Baseline {
        height_cm,
        bmi,
        offsets,
    } = baseline;
    let (height_cm, bmi) = (*height_cm, *bmi);
    for (eid, day, minute) in visits {
        let when = date_time(*day, *minute + 5);
        let mut measures: Vec<(Measure, f64)> = VITALS
            .iter()
            .zip(offsets)
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
    Ok(())
}

/// Conditions, medication requests, allergies and immunizations.
fn problem_list(
    rng: &mut Rng,
    person: &Person,
    first_visit: i64,
    tag: &Value,
    emit: &mut impl FnMut(Value) -> Result<()>,
) -> Result<()> {
    let (patient_ref, born) = (&person.patient_ref, person.born);
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
    fn dates_are_calendar_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(TODAY), "2026-01-01");
        assert_eq!(date_time(TODAY, 61), "2026-01-01T01:01:00Z");
    }
}
