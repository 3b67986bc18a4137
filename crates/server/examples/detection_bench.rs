//! Cost of attack detection per request, through the same calls the HTTP layer makes: the
//! path and query scan before the handler, the JSON body scan for requests with a body, and
//! `observe` once the answer is known.
//!
//! Requests, each with the default thresholds and a principal per organization (as in the HTTP
//! benchmark's clinic):
//! - read: `GET /fhir/Patient/{id}`, one patient touched;
//! - search: `GET /fhir/Observation?patient=...&_count=50`, 40 patients touched;
//! - create: `POST /fhir/Observation` with a 1.5 KB body, scanned for probes;
//! - a failed login (the credential rules' maps).
//!
//! Run with one thread and with two threads sharing one `Detection` (the maps' locks under
//! contention, as on the 2-core benchmark machine).
//!
//! `cargo run --release -p carevault-server --example detection_bench [-- ITERATIONS]`
#![allow(clippy::print_stdout)] // a benchmark: its output is the point

use std::sync::Arc;
use std::time::Instant;

use carevault_audit::AuditAction;
use carevault_crypto::FileKeyProvider;
use carevault_server::audit::Audit;
use carevault_server::config::DetectionConfig;
use carevault_server::detection::{Detection, Finding, RequestFacts};
use carevault_server::keyring::Keyring;
use carevault_server::{NodeId, SharedClock, SystemClock};
use carevault_store::{SqliteStore, Store};

const PRINCIPALS: [&str; 4] = [
    "user:dr.north",
    "user:dr.south",
    "user:dr.east",
    "user:dr.west",
];

fn body() -> Vec<u8> {
    let observation = serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel with all children optional"}], "text": "Blood pressure systolic and diastolic"},
        "subject": {"reference": "Patient/3f2c8e1a-1111-2222-3333-444455556666"},
        "effectiveDateTime": "2026-11-30T09:30:00+01:00",
        "performer": [{"reference": "Practitioner/9a8b7c6d-1111-2222-3333-444455556666"}],
        "note": [{"text": "Patient seated for five minutes before the reading; left arm, adult cuff."}],
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]}, "valueQuantity": {"value": 128, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]}, "valueQuantity": {"value": 82, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    });
    serde_json::to_vec(&observation).unwrap_or_default()
}

fn facts<'a>(
    principal: &'a str,
    action: AuditAction,
    status: u16,
    patients: &'a [String],
) -> RequestFacts<'a> {
    RequestFacts {
        principal,
        client_ip: "192.0.2.7",
        action,
        status,
        patients,
        account_digest: None,
        target_principal: None,
        second_factor_failed: false,
        key_outside_cidrs: false,
        key_without_its_certificate: false,
        integrity_failure: false,
    }
}

/// What detection sees of the `i`th request of a kind.
type Request = fn(&Detection, usize, &[String]);

/// One kind of request `iterations` times on each of `threads` threads; ns per request.
fn measure(detection: &Arc<Detection>, threads: usize, iterations: usize, request: Request) -> f64 {
    let patients: Arc<Vec<String>> = Arc::new(
        (0..10_000)
            .map(|i| format!("Patient/{i:08x}-1111-2222-3333-444455556666"))
            .collect(),
    );
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let detection = detection.clone();
            let patients = patients.clone();
            std::thread::spawn(move || {
                for i in 0..iterations {
                    request(&detection, t * iterations + i, &patients);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    started.elapsed().as_nanos() as f64 / (threads * iterations) as f64
}

fn read(d: &Detection, i: usize, patients: &[String]) {
    let p = &patients[i % patients.len()];
    let found = d.inspect_request(&format!("/fhir/{p}"), None);
    observe_one(d, i, std::slice::from_ref(p), AuditAction::Read, 200, found);
}

/// Observe a request of the `i`th principal that touched `touched`.
fn observe_one(
    d: &Detection,
    i: usize,
    touched: &[String],
    action: AuditAction,
    status: u16,
    found: Option<Finding>,
) {
    let principal = PRINCIPALS[i % 4];
    d.observe(&facts(principal, action, status, touched), found);
}

fn search(d: &Detection, i: usize, patients: &[String]) {
    let start = (i * 40) % (patients.len() - 40);
    let touched = &patients[start..start + 40];
    let query = format!("patient={}&_count=50", touched[0]);
    let found = d.inspect_request("/fhir/Observation", Some(&query));
    d.observe(
        &facts(PRINCIPALS[i % 4], AuditAction::SearchType, 200, touched),
        found,
    );
}

fn create(d: &Detection, i: usize, patients: &[String]) {
    thread_local! { static BODY: Vec<u8> = body(); }
    let p = &patients[i % patients.len()];
    let found = BODY.with(|b| d.inspect_body(b));
    let found = found.or_else(|| d.inspect_request("/fhir/Observation", None));
    observe_one(
        d,
        i,
        std::slice::from_ref(p),
        AuditAction::Create,
        201,
        found,
    );
}

fn failed_login(d: &Detection, i: usize, _: &[String]) {
    let digest = format!("{:064x}", i % 1_000);
    let mut f = facts("anonymous", AuditAction::Login, 401, &[]);
    f.account_digest = Some(&digest);
    let found = d.inspect_request("/auth/login", None);
    d.observe(&f, found);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("bench.db"))?);
    let clock: SharedClock = Arc::new(SystemClock);
    let provider = FileKeyProvider::create(&dir.path().join("keys"))?;
    let keyring = Arc::new(Keyring::new(
        "env-bench".into(),
        Box::new(provider),
        store.clone(),
        clock.clone(),
    ));
    let audit = Arc::new(
        Audit::open(
            store,
            &keyring,
            &NodeId::parse("node-bench")?,
            clock.clone(),
        )
        .await?,
    );
    let requests: [(&str, Request); 4] = [
        ("read (1 patient)", read),
        ("search (40 patients)", search),
        ("create (1.5 KB body)", create),
        ("failed login", failed_login),
    ];
    for threads in [1, 2] {
        for (name, request) in requests {
            // A fresh Detection per row: one row's alerts and counters do not carry over.
            let detection = Arc::new(Detection::new(
                DetectionConfig::default(),
                audit.clone(),
                clock.clone(),
            ));
            let ns = measure(&detection, threads, iterations, request);
            println!("detection, {name}, {threads} thread(s): {ns:.0} ns per request");
        }
    }
    Ok(())
}
