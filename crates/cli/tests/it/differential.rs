//! Differential search test: a generated population of 1,000 patients with 2,000 observations,
//! 500 molecular sequences and 500 procedures, loaded through transaction Bundles; hundreds of
//! generated queries (every parameter type: string, token, reference, date, quantity, number,
//! uri, composite and special (`near`), with their prefixes and modifiers, and chains and `_has`
//! across types) answered by the
//! server and by the plain in-memory evaluator below, which shares no code with the server.
//! Results must match exactly, including order and paging.

use std::collections::BTreeMap;

use carevault_testkit::Api;
use serde_json::json;

use crate::server;

/// A small deterministic generator (a 64-bit LCG), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const FAMILIES: &[&str] = &[
    "Smith",
    "Müller",
    "García",
    "Núñez",
    "O'Brien",
    "Nguyen",
    "Kowalski",
    "Dubois",
    "Schäfer",
    "Rossi",
    "Andersson",
    "Øster",
    "Smithers",
    "Mueller",
    "Garcia",
    "Novák",
    "Ivanova",
    "Haddad",
    "Tanaka",
    "Jones",
];
const GENDERS: &[&str] = &["male", "female", "other", "unknown"];
const DATE_PREFIXES: &[&str] = &["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"];
const CODES: &[(&str, &str, i64, i64)] = &[
    ("8867-4", "/min", 40, 140),
    ("8480-6", "mm[Hg]", 90, 180),
    ("29463-7", "kg", 3, 150),
    ("8310-5", "Cel", 35, 41),
];

/// Protocol uris a procedure instantiates: a hierarchy for `:below` and `:above`, and a urn.
const PROTOCOLS: &[&str] = &[
    "http://example.org/protocols/cardio",
    "http://example.org/protocols/cardio/echo",
    "http://example.org/protocols/cardio/stress-test",
    "http://example.org/protocols/ortho/knee",
    "urn:oid:2.16.840.1.113883.3.1937.777",
];

/// Days since 1970-01-01 -> (y, m, d), proleptic Gregorian.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn date_text(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// What the reference evaluator knows of each resource.
#[derive(Clone, Debug)]
struct PatientRow {
    family: String,
    gender: String,
    birth_day: i64,
    mrn: String,
}

#[derive(Clone, Debug)]
struct ObsRow {
    patient: String,
    code: String,
    value: i64,
    day: i64,
}

/// A MolecularSequence: its patient and its one variant's start (a number parameter).
#[derive(Clone, Debug)]
struct SeqRow {
    patient: String,
    start: i64,
}

/// A Procedure: its patient and the protocol it instantiates (a uri parameter).
#[derive(Clone, Debug)]
struct ProcRow {
    patient: String,
    protocol: String,
}

/// A Location: its position (the `near` parameter).
#[derive(Clone, Debug)]
struct LocRow {
    lat: f64,
    lon: f64,
}

/// Everything loaded, by the id the server assigned.
#[derive(Default)]
struct Loaded {
    patients: BTreeMap<String, PatientRow>,
    observations: BTreeMap<String, ObsRow>,
    sequences: BTreeMap<String, SeqRow>,
    procedures: BTreeMap<String, ProcRow>,
    locations: BTreeMap<String, LocRow>,
}

/// Accent-insensitive, case-insensitive normalization, written independently of the server.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'ü' | 'Ü' => 'u',
            'á' | 'Á' | 'à' => 'a',
            'í' | 'Í' => 'i',
            'ñ' | 'Ñ' => 'n',
            'ú' | 'Ú' => 'u',
            'ä' | 'Ä' => 'a',
            'ø' | 'Ø' => 'o',
            'é' | 'É' => 'e',
            c => c,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// A date query value as a day range [lo, hi).
fn query_range(value: &str) -> (i64, i64) {
    let parts: Vec<i64> = value.split('-').map(|p| p.parse().unwrap()).collect();
    match parts.as_slice() {
        [y] => (days_from_civil(*y, 1, 1), days_from_civil(y + 1, 1, 1)),
        [y, m] => {
            let (ny, nm) = if *m == 12 { (y + 1, 1) } else { (*y, m + 1) };
            (days_from_civil(*y, *m, 1), days_from_civil(ny, nm, 1))
        }
        [y, m, d] => {
            let lo = days_from_civil(*y, *m, *d);
            (lo, lo + 1)
        }
        _ => unreachable!(),
    }
}

/// FHIR R4 date prefix semantics for a target day [day, day + 1).
fn date_matches(prefix: &str, (qlo, qhi): (i64, i64), day: i64) -> bool {
    let (lo, hi) = (day, day + 1);
    let eq = qlo <= lo && hi <= qhi;
    match prefix {
        "eq" => eq,
        "ne" => !eq,
        "gt" => hi > qhi,
        "lt" => lo < qlo,
        "ge" => hi > qhi || eq,
        "le" => lo < qlo || eq,
        "sa" => lo >= qhi,
        "eb" => hi <= qlo,
        _ => unreachable!(),
    }
}

/// FHIR R4 number prefix semantics for an integer query value (implicit precision ±0.5).
fn quantity_matches(prefix: &str, q: i64, value: i64) -> bool {
    let (v, q2) = (value * 2, q * 2);
    match prefix {
        "eq" => (q2 - 1..q2 + 1).contains(&v),
        "ne" => !(q2 - 1..q2 + 1).contains(&v),
        "gt" => value > q,
        "lt" => value < q,
        "ge" => value >= q,
        "le" => value <= q,
        _ => unreachable!(),
    }
}

#[test]
fn generated_queries_match_an_independent_reference_evaluator() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.diff", &["clinician"], Some("org-a"));
    let api = &clin.api;
    let mut rng = Rng(2026);

    // Generate and load: 10 transaction Bundles of 100 patients with 2 observations each, and a
    // molecular sequence and a procedure for every other patient.
    let mut loaded = Loaded::default();
    let lo_day = days_from_civil(1930, 1, 1);
    let hi_day = days_from_civil(2020, 12, 31);
    for batch in 0..10 {
        load_batch(api, &mut rng, batch, (lo_day, hi_day), &mut loaded);
    }
    assert_eq!(loaded.patients.len(), 1000);
    assert_eq!(loaded.observations.len(), 2000);
    assert_eq!(loaded.sequences.len(), 500);
    assert_eq!(loaded.procedures.len(), 500);
    assert_eq!(loaded.locations.len(), 250);

    // Generate queries with their expected answers.
    let mut queries: Vec<(String, Vec<String>)> = Vec::new();
    let patient_ids: Vec<String> = loaded.patients.keys().cloned().collect();
    patient_queries(&mut rng, &loaded.patients, (lo_day, hi_day), &mut queries);
    observation_queries(&mut rng, &loaded.observations, &patient_ids, &mut queries);
    gender_and_birthdate_queries(&mut rng, &loaded.patients, &mut queries);
    number_and_uri_queries(&mut rng, &loaded, &mut queries);
    chain_and_has_queries(&mut rng, &loaded, &mut queries);
    near_queries(&mut rng, &loaded.locations, &mut queries);
    assert!(queries.len() >= 400, "{} queries", queries.len());

    ask_the_server_and_compare(api, queries);
}

/// One generated entry of a transaction Bundle, and the row it stands for once loaded.
enum Pending {
    Patient(String, PatientRow),
    Observation(ObsRow),
    Sequence(SeqRow),
    Procedure(ProcRow),
    Location(LocRow),
}

/// Generate one transaction Bundle of 100 patients with 2 observations each (and a sequence
/// and a procedure for every other patient), load it, and record the rows under the ids the
/// server assigned.
fn load_batch(
    api: &Api,
    rng: &mut Rng,
    batch: usize,
    (lo_day, hi_day): (i64, i64),
    loaded: &mut Loaded,
) {
    let mut entries = Vec::new();
    let mut pending = Vec::new();
    for i in 0..100 {
        let n = batch * 100 + i;
        let row = PatientRow {
            family: (*rng.pick(FAMILIES)).to_owned(),
            gender: (*rng.pick(GENDERS)).to_owned(),
            birth_day: lo_day + rng.below((hi_day - lo_day) as u64) as i64,
            mrn: format!("MRN{n:05}"),
        };
        let urn = format!("urn:uuid:00000000-0000-4000-8000-{n:012}");
        entries.push(json!({"fullUrl": urn, "request": {"method": "POST", "url": "Patient"}, "resource": {
            "resourceType": "Patient", "name": [{"family": row.family}], "gender": row.gender,
            "birthDate": date_text(row.birth_day), "identifier": [{"system": "urn:mrn", "value": row.mrn}],
            "managingOrganization": {"reference": "Organization/org-a"}}}));
        pending.push(Pending::Patient(urn.clone(), row));
        for _ in 0..2 {
            let (code, unit, min, max) = *rng.pick(CODES);
            let obs = ObsRow {
                patient: urn.clone(),
                code: code.to_owned(),
                value: min + rng.below((max - min) as u64) as i64,
                day: days_from_civil(2015, 1, 1) + rng.below(3650) as i64,
            };
            entries.push(json!({"request": {"method": "POST", "url": "Observation"}, "resource": {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": urn}, "effectiveDateTime": format!("{}T12:00:00Z", date_text(obs.day)),
                "valueQuantity": {"value": obs.value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}}));
            pending.push(Pending::Observation(obs));
        }
        if i % 2 == 0 {
            let seq = SeqRow {
                patient: urn.clone(),
                start: rng.below(2000) as i64,
            };
            entries.push(json!({"request": {"method": "POST", "url": "MolecularSequence"}, "resource": {
                "resourceType": "MolecularSequence", "coordinateSystem": 0,
                "patient": {"reference": urn}, "variant": [{"start": seq.start, "end": seq.start + 1}]}}));
            pending.push(Pending::Sequence(seq));
            let proc = ProcRow {
                patient: urn.clone(),
                protocol: (*rng.pick(PROTOCOLS)).to_owned(),
            };
            entries.push(
                json!({"request": {"method": "POST", "url": "Procedure"}, "resource": {
                "resourceType": "Procedure", "status": "completed",
                "subject": {"reference": urn}, "instantiatesUri": [proc.protocol]}}),
            );
            pending.push(Pending::Procedure(proc));
        }
        if i % 4 == 0 {
            let loc = LocRow {
                lat: 40.0 + rng.below(400_000) as f64 / 100_000.0,
                lon: -75.0 + rng.below(500_000) as f64 / 100_000.0,
            };
            entries.push(json!({"request": {"method": "POST", "url": "Location"}, "resource": {
                "resourceType": "Location", "position": {"latitude": loc.lat, "longitude": loc.lon}}}));
            pending.push(Pending::Location(loc));
        }
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = api.request(
        "POST",
        "/fhir",
        &[("Content-Type", "application/fhir+json")],
        Some(&serde_json::to_vec(&bundle).unwrap()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Map the generated urns and entries to the ids the server assigned.
    let response = r.json();
    let ids: Vec<String> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), pending.len());
    let mut urn_ids = BTreeMap::new();
    for (id, p) in ids.iter().zip(&pending) {
        if let Pending::Patient(urn, _) = p {
            urn_ids.insert(urn.clone(), id.clone());
        }
    }
    for (id, p) in ids.into_iter().zip(pending) {
        match p {
            Pending::Patient(_, row) => {
                loaded.patients.insert(id, row);
            }
            Pending::Observation(mut o) => {
                o.patient = urn_ids[&o.patient].clone();
                loaded.observations.insert(id, o);
            }
            Pending::Sequence(mut q) => {
                q.patient = urn_ids[&q.patient].clone();
                loaded.sequences.insert(id, q);
            }
            Pending::Procedure(mut q) => {
                q.patient = urn_ids[&q.patient].clone();
                loaded.procedures.insert(id, q);
            }
            Pending::Location(l) => {
                loaded.locations.insert(id, l);
            }
        }
    }
}

/// The ids of the rows `pred` holds for.
fn matching<T>(rows: &BTreeMap<String, T>, pred: &dyn Fn(&T) -> bool) -> Vec<String> {
    rows.iter()
        .filter(|(_, row)| pred(row))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Patient queries by gender, family (prefix and exact), birthdate and identifier.
fn patient_queries(
    rng: &mut Rng,
    patients: &BTreeMap<String, PatientRow>,
    (lo_day, hi_day): (i64, i64),
    queries: &mut Vec<(String, Vec<String>)>,
) {
    let all = |pred: &dyn Fn(&PatientRow) -> bool| matching(patients, pred);
    for g in GENDERS {
        queries.push((format!("Patient?gender={g}"), all(&|p| p.gender == *g)));
    }
    for _ in 0..60 {
        let family = *rng.pick(FAMILIES);
        let chars: Vec<char> = family.chars().collect();
        let len = 1 + rng.below(chars.len().min(5) as u64) as usize;
        let mut prefix: String = chars[..len].iter().collect();
        if rng.below(2) == 0 {
            prefix = prefix.to_uppercase();
        }
        let wanted = fold(&prefix);
        queries.push((
            format!("Patient?family={}", crate::urlencode(&prefix)),
            all(&|p| fold(&p.family).starts_with(&wanted)),
        ));
    }
    for _ in 0..20 {
        let family = *rng.pick(FAMILIES);
        queries.push((
            format!("Patient?family:exact={}", crate::urlencode(family)),
            all(&|p| p.family == family),
        ));
    }
    for _ in 0..120 {
        let prefix = *rng.pick(DATE_PREFIXES);
        let day = lo_day + rng.below((hi_day - lo_day) as u64) as i64;
        let full = date_text(day);
        let value = match rng.below(3) {
            0 => full[..4].to_owned(),
            1 => full[..7].to_owned(),
            _ => full,
        };
        let range = query_range(&value);
        queries.push((
            format!("Patient?birthdate={prefix}{value}"),
            all(&|p| date_matches(prefix, range, p.birth_day)),
        ));
    }
    for _ in 0..20 {
        let n = rng.below(1000);
        let mrn = format!("MRN{n:05}");
        let with_system = rng.below(2) == 0;
        let q = if with_system {
            format!("urn:mrn|{mrn}")
        } else {
            mrn.clone()
        };
        queries.push((
            format!("Patient?identifier={}", crate::urlencode(&q)),
            all(&|p| p.mrn == mrn),
        ));
    }
}

/// Observation queries by code, value-quantity, patient and date.
fn observation_queries(
    rng: &mut Rng,
    observations: &BTreeMap<String, ObsRow>,
    patient_ids: &[String],
    queries: &mut Vec<(String, Vec<String>)>,
) {
    let all_obs = |pred: &dyn Fn(&ObsRow) -> bool| matching(observations, pred);
    for (code, _, min, max) in CODES {
        queries.push((
            format!("Observation?code={code}"),
            all_obs(&|o| o.code == *code),
        ));
        queries.push((
            format!("Observation?code=http://loinc.org|{code}"),
            all_obs(&|o| o.code == *code),
        ));
        for _ in 0..10 {
            let prefix = *rng.pick(&["eq", "ne", "gt", "lt", "ge", "le"]);
            let v = min + rng.below((max - min) as u64) as i64;
            queries.push((
                format!("Observation?code={code}&value-quantity={prefix}{v}"),
                all_obs(&|o| o.code == *code && quantity_matches(prefix, v, o.value)),
            ));
            // The same as one composite, whose code and value hold on one element.
            let composite = *rng.pick(&["code-value-quantity", "combo-code-value-quantity"]);
            queries.push((
                format!("Observation?{composite}=http://loinc.org|{code}${prefix}{v}"),
                all_obs(&|o| o.code == *code && quantity_matches(prefix, v, o.value)),
            ));
        }
    }
    for _ in 0..30 {
        let pid = rng.pick(patient_ids).clone();
        queries.push((
            format!("Observation?patient={pid}"),
            all_obs(&|o| o.patient == pid),
        ));
        let (code, ..) = *rng.pick(CODES);
        queries.push((
            format!("Observation?subject=Patient/{pid}&code={code}"),
            all_obs(&|o| o.patient == pid && o.code == code),
        ));
    }
    for _ in 0..60 {
        let prefix = *rng.pick(DATE_PREFIXES);
        let day = days_from_civil(2015, 1, 1) + rng.below(3650) as i64;
        let full = date_text(day);
        let value = if rng.below(2) == 0 {
            full[..7].to_owned()
        } else {
            full
        };
        let range = query_range(&value);
        queries.push((
            format!("Observation?date={prefix}{value}"),
            all_obs(&|o| date_matches(prefix, range, o.day)),
        ));
    }
}

/// Number queries (a sequence's variant start, every prefix) and uri queries (a procedure's
/// protocol: whole, `:below` a stem, `:above` a deeper uri).
fn number_and_uri_queries(
    rng: &mut Rng,
    loaded: &Loaded,
    queries: &mut Vec<(String, Vec<String>)>,
) {
    let seqs = |pred: &dyn Fn(&SeqRow) -> bool| matching(&loaded.sequences, pred);
    for _ in 0..60 {
        let prefix = *rng.pick(&["eq", "ne", "gt", "lt", "ge", "le"]);
        let v = rng.below(2000) as i64;
        queries.push((
            format!("MolecularSequence?variant-start={prefix}{v}"),
            seqs(&|q| quantity_matches(prefix, v, q.start)),
        ));
    }
    let procs = |pred: &dyn Fn(&ProcRow) -> bool| matching(&loaded.procedures, pred);
    for uri in PROTOCOLS {
        queries.push((
            format!("Procedure?instantiates-uri={}", crate::urlencode(uri)),
            procs(&|q| q.protocol == *uri),
        ));
        queries.push((
            format!("Procedure?instantiates-uri:below={}", crate::urlencode(uri)),
            procs(&|q| q.protocol.starts_with(uri)),
        ));
        let deeper = format!("{uri}/v2");
        queries.push((
            format!(
                "Procedure?instantiates-uri:above={}",
                crate::urlencode(&deeper)
            ),
            procs(&|q| deeper.starts_with(&q.protocol)),
        ));
    }
    queries.push((
        "Procedure?instantiates-uri:below=http://example.org/protocols/".to_owned(),
        procs(&|q| q.protocol.starts_with("http://example.org/protocols/")),
    ));
}

/// Chains (a reference parameter followed into the Patient it names) and `_has` (patients
/// named by an observation or a procedure that matches).
fn chain_and_has_queries(rng: &mut Rng, loaded: &Loaded, queries: &mut Vec<(String, Vec<String>)>) {
    let family_of = |pid: &str| fold(&loaded.patients[pid].family);
    for _ in 0..20 {
        let family = *rng.pick(FAMILIES);
        let chars: Vec<char> = family.chars().collect();
        let prefix: String = chars[..2.min(chars.len())].iter().collect();
        let wanted = fold(&prefix);
        queries.push((
            format!(
                "Observation?subject:Patient.family={}",
                crate::urlencode(&prefix)
            ),
            matching(&loaded.observations, &|o| {
                family_of(&o.patient).starts_with(&wanted)
            }),
        ));
        queries.push((
            format!(
                "Procedure?patient.family:exact={}",
                crate::urlencode(family)
            ),
            matching(&loaded.procedures, &|q| {
                loaded.patients[&q.patient].family == family
            }),
        ));
    }
    for _ in 0..10 {
        let mrn = format!("MRN{:05}", rng.below(1000));
        queries.push((
            format!("Observation?patient.identifier=urn:mrn%7C{mrn}"),
            matching(&loaded.observations, &|o| {
                loaded.patients[&o.patient].mrn == mrn
            }),
        ));
    }
    for (code, ..) in CODES {
        let named = loaded.observations.values().filter(|o| o.code == *code);
        queries.push((
            format!("Patient?_has:Observation:subject:code={code}"),
            distinct(named.map(|o| o.patient.clone())),
        ));
    }
    for uri in PROTOCOLS {
        let named = loaded.procedures.values().filter(|q| q.protocol == *uri);
        queries.push((
            format!(
                "Patient?_has:Procedure:patient:instantiates-uri={}",
                crate::urlencode(uri)
            ),
            distinct(named.map(|q| q.patient.clone())),
        ));
    }
}

/// The distinct ids, sorted.
fn distinct(ids: impl Iterator<Item = String>) -> Vec<String> {
    ids.collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect()
}

/// Patient queries combining gender and birthdate.
fn gender_and_birthdate_queries(
    rng: &mut Rng,
    patients: &BTreeMap<String, PatientRow>,
    queries: &mut Vec<(String, Vec<String>)>,
) {
    let all = |pred: &dyn Fn(&PatientRow) -> bool| matching(patients, pred);
    for _ in 0..20 {
        let g = *rng.pick(GENDERS);
        let year = 1930 + rng.below(90);
        let range = query_range(&year.to_string());
        queries.push((
            format!("Patient?gender={g}&birthdate=ge{year}"),
            all(&|p| p.gender == g && date_matches("ge", range, p.birth_day)),
        ));
    }
}

/// Ask the server: sorted by id, 100 a page, following next links; compare exactly.
fn ask_the_server_and_compare(api: &Api, queries: Vec<(String, Vec<String>)>) {
    for (query, mut expected) in queries {
        expected.sort();
        let mut got = Vec::new();
        let mut path = format!("/fhir/{query}&_sort=_id&_count=100&_total=accurate");
        let mut total = None;
        loop {
            let r = api.get(&path);
            assert_eq!(r.status, 200, "{query}: {}", r.text());
            let bundle = r.json();
            total = total.or(bundle["total"].as_u64());
            got.extend(
                bundle["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["resource"]["id"].as_str().unwrap().to_owned()),
            );
            match bundle["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
            {
                Some(next) => {
                    let url = next["url"].as_str().unwrap();
                    path = url[url.find("/fhir/").unwrap()..].to_owned();
                }
                None => break,
            }
        }
        assert_eq!(
            got, expected,
            "{query}: server and reference evaluator disagree"
        );
        assert_eq!(total, Some(expected.len() as u64), "{query}: total");
    }
}

/// The generator and evaluator's own date arithmetic is right (so a mismatch means the server).
#[test]
fn reference_evaluator_calendar_is_sound() {
    for days in [-1, 0, 1, 59, 365, 11_016, 18_262, 19_000] {
        let (y, m, d) = civil(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(date_text(0), "1970-01-01");
    assert_eq!(date_text(days_from_civil(2024, 2, 29)), "2024-02-29");
    let march = query_range("2024-03");
    assert!(date_matches("eq", march, days_from_civil(2024, 3, 31)));
    assert!(!date_matches("eq", march, days_from_civil(2024, 4, 1)));
    assert!(date_matches("sa", march, days_from_civil(2024, 4, 1)));
    assert!(date_matches("eb", march, days_from_civil(2024, 2, 29)));
    assert!(quantity_matches("eq", 72, 72) && !quantity_matches("eq", 72, 73));
    assert_eq!(fold("MÜLLER"), "muller");
}

/// `Location?near=lat|lon|distance|unit`: the great-circle distance on a sphere of the WGS84
/// mean radius, computed here by the haversine formula.
fn near_queries(
    rng: &mut Rng,
    locations: &BTreeMap<String, LocRow>,
    queries: &mut Vec<(String, Vec<String>)>,
) {
    const RADIUS_M: f64 = 6_371_008.8;
    let metres = |(a, b): (f64, f64), (c, d): (f64, f64)| {
        let (p1, p2) = (a.to_radians(), c.to_radians());
        let h = ((p2 - p1) / 2.0).sin().powi(2)
            + p1.cos() * p2.cos() * ((d - b).to_radians() / 2.0).sin().powi(2);
        2.0 * RADIUS_M * h.sqrt().asin()
    };
    let mut found = 0;
    for _ in 0..40 {
        let lat = 39.5 + rng.below(50_000) as f64 / 10_000.0;
        let lon = -75.5 + rng.below(60_000) as f64 / 10_000.0;
        let (unit, per_unit) = *rng.pick(&[("km", 1000.0), ("m", 1.0), ("[mi_i]", 1609.344)]);
        let distance = (1 + rng.below(150)) as f64 * 1000.0 / per_unit;
        let expected = matching(locations, &|l| {
            metres((lat, lon), (l.lat, l.lon)) <= distance * per_unit
        });
        found += expected.len();
        queries.push((
            format!("Location?near={lat}|{lon}|{distance}|{unit}"),
            expected,
        ));
    }
    assert!(
        found > 100,
        "the near queries find {found} locations in all"
    );
}
