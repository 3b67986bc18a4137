//! Cost of one authorization decision with 100 custom policies loaded (plus the built-in ones):
//! a clinician reading a Patient of their organization, through the same code path as the
//! server (principal and resource entities, policy index, Cedar evaluation).
//!
//! Two mixes of 100 custom policies:
//! - scoped: each policy names the role and/or action it is about (the usual shape), so the
//!   index hands Cedar only the few that can apply to this request;
//! - unscoped: 50 `forbid (principal, action, resource is CareVault::Resource) when {...}`
//!   policies that apply to every request, so Cedar evaluates all of them (about 1 µs each).
//!
//! `cargo run --release -p carevault-server --example authz_bench [-- ITERATIONS]`
#![allow(clippy::print_stdout)] // a benchmark: its output is the point

use std::sync::Arc;
use std::time::Instant;

use carevault_fhir::{ResourceId, ResourceType};
use carevault_server::authz::{Authz, FhirAction, ResourceAttrs};
use carevault_server::compartment::Compartment;
use carevault_server::identity::{Principal, Role};
use carevault_server::{OrganizationId, SharedClock, SystemClock};
use carevault_store::{SqliteStore, Store, WriteOp};

fn scoped(i: usize) -> String {
    let role = ["auditor", "developer", "clinician", "admin"][i % 4];
    let action = ["update", "delete", "create", "read"][(i / 4) % 4];
    match i % 3 {
        0 => format!(
            "permit (principal in CareVault::Role::\"{role}\", action == CareVault::Action::\"{action}\", resource is CareVault::Resource) when {{ resource.type == \"Type{i}\" }};"
        ),
        1 => format!(
            "forbid (principal in CareVault::Role::\"{role}\", action == CareVault::Action::\"{action}\", resource is CareVault::Resource) when {{ resource.security.contains(\"LABEL{i}\") }};"
        ),
        _ => format!(
            "permit (principal in CareVault::Role::\"{role}\", action in [CareVault::Action::\"{action}\", CareVault::Action::\"vread\"], resource is CareVault::Resource) when {{ principal.organizations.contains(CareVault::Organization::\"org-{i}\") }};"
        ),
    }
}

fn unscoped(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!(
            "forbid (principal, action, resource is CareVault::Resource) when {{ resource.security.contains(\"LABEL{i}\") }};"
        )
    } else {
        format!(
            "permit (principal in CareVault::Role::\"auditor\", action == CareVault::Action::\"read\", resource is CareVault::Resource) when {{ resource.type == \"Type{i}\" }};"
        )
    }
}

async fn run(
    name: &str,
    policy: fn(usize) -> String,
    iterations: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("bench.db"))?);
    let clock: SharedClock = Arc::new(SystemClock);
    let ops = (0..100)
        .map(|i| WriteOp::PutPolicy {
            name: format!("bench-{i}"),
            text: policy(i),
            at: 0,
        })
        .collect();
    store.write(ops).await?;
    let authz = Authz::load(store, clock).await?;
    assert_eq!(authz.custom_policies().len(), 100);
    let org_a = OrganizationId::parse("org-a")?;
    let clinician = Principal::user_for_bench("dr.bench", Role::Clinician, org_a.clone());
    let patient = ResourceId::parse("3f2c8e1a-1111-2222-3333-444455556666")?;
    let attrs = ResourceAttrs {
        rtype: ResourceType::PATIENT,
        id: patient.as_str().to_owned(),
        compartment: Some(Compartment::patient(&patient)),
        organization: Some(org_a),
        security: vec!["HTEST".into()],
    };
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let d = authz.fhir(&clinician, FhirAction::Read, &attrs, false);
        samples.push(t.elapsed().as_nanos() as u64);
        assert!(d.allowed, "every decision should allow");
    }
    samples.sort_unstable();
    let pct = |p: f64| {
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "authz decision, {name} mix of 100 custom + 7 built-in policies, {iterations} iterations: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
        pct(0.50),
        pct(0.90),
        pct(0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    run("scoped", scoped, iterations).await?;
    run("unscoped", unscoped, iterations).await?;
    Ok(())
}
