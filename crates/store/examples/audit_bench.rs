//! Audit log throughput: 64 concurrent writers appending events to one node's hash chain with
//! fsync durability (WAL, synchronous=FULL), through the same group-commit writer the server
//! uses. Prints events per second.
//!
//! `cargo run --release -p carevault-store --example audit_bench [-- SECONDS WRITERS]`
#![allow(clippy::print_stdout)] // a benchmark: its output is the point

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carevault_audit::EventRecord;
use carevault_store::{NewAuditEvent, SqliteStore, Store, WriteOp};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let writers: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("audit.db"))?);
    // A realistic event: a clinician reading an Observation.
    let record = EventRecord {
        request_id: "0b6f3c1e-8d0a-4c55-9a7e-3f1d2b4c5d6e".into(),
        principal: "5a1e2f3b-4c5d-6e7f-8091-a2b3c4d5e6f7".into(),
        roles: vec!["clinician".into()],
        auth_method: "session".into(),
        client_ip: "10.1.2.3".into(),
        action: "read".into(),
        method: "GET".into(),
        route: "/fhir/{rtype}/{id}".into(),
        resource_type: Some("Observation".into()),
        resource_id: Some("8c9d0e1f-2a3b-4c5d-6e7f-8091a2b3c4d5".into()),
        resource_version: Some(1),
        patients: vec!["Patient/1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718".into()],
        patient_count: 1,
        outcome: "success".into(),
        status: 200,
        ..EventRecord::default()
    };
    let body = record.canonical();
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, count, body) = (store.clone(), count.clone(), body.clone());
        let patients = record.patients.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let op = WriteOp::AppendAudit(NewAuditEvent {
                    node: "node-1".into(),
                    time_us: 0,
                    principal: "p".into(),
                    action: "read".into(),
                    outcome: "success".into(),
                    patients: patients.clone(),
                    body: body.clone(),
                });
                if store.write(vec![op]).await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    let events = store.audit_events(None, u32::MAX).await?.len();
    println!(
        "audit append: {n} events by {writers} writers in {elapsed:.1} s = {:.0} events/s (fsync group commit); {events} in the chain",
        n as f64 / elapsed
    );
    Ok(())
}
