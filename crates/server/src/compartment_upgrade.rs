//! The upgrade that files every stored resource version by the R4 Patient CompartmentDefinition.
//!
//! Before it, a resource belonged to a patient only through `subject` or `patient`; an
//! Appointment, a Coverage or a Communication naming a patient was sealed under the environment's
//! key and readable by every clinician. This upgrade opens every stored version (history
//! included), works out the compartment its content names (see [`crate::filing`]) and re-seals
//! the versions whose compartment changed under that compartment's data key, in batches, each
//! batch one transaction with its progress cursor, so that an interrupted upgrade resumes where
//! it stopped. It runs when an environment is opened, before anything is served, and once: a
//! `meta` row records that it finished.
//!
//! It never moves data out of a patient's compartment into shared data, and leaves a Binary
//! without a resolvable `securityContext` where it was (its creator is not recorded with it).

use std::time::Instant;

use carevault_fhir::{ResourceId, ResourceType};
use carevault_store::{ResourceRow, Store, StoreError, WriteOp};
use zeroize::Zeroizing;

use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::keyring::Keyring;

/// Set when every stored version has been filed by the CompartmentDefinition.
pub const DONE: &str = "compartments_filed";
/// The newest `seq` filed so far (versions are filed oldest first).
const CURSOR: &str = "compartments_filing_after_seq";
/// How often progress is logged.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const BATCH: u32 = 500;

/// What the upgrade did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Versions read.
    pub versions: u64,
    /// Versions re-sealed under another compartment's key.
    pub moved: u64,
    /// Binaries left shared: no `securityContext` that resolves.
    pub binaries_left_shared: u64,
    /// Versions naming a patient who was shredded: left where they were (see the log).
    pub naming_shredded: u64,
}

impl Report {
    fn add(&mut self, other: Report) {
        self.versions += other.versions;
        self.moved += other.moved;
        self.binaries_left_shared += other.binaries_left_shared;
        self.naming_shredded += other.naming_shredded;
    }
}

/// File every stored version by the CompartmentDefinition, unless that was done already.
pub async fn run(store: &dyn Store, keyring: &Keyring) -> Result<Report> {
    let mut report = Report::default();
    if store.meta(DONE).await?.is_some() {
        return Ok(report);
    }
    let started = Instant::now();
    let mut logged = started;
    let mut after: i64 = store
        .meta(CURSOR)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut stale = 0;
    loop {
        let entries = store.versions_after(after, BATCH).await?;
        let Some(last) = entries.last() else {
            break;
        };
        let mut batch = Report::default();
        let mut ops = Vec::new();
        for entry in &entries {
            batch.versions += 1;
            if let Some(op) = refile(store, keyring, &entry.row, &mut batch).await? {
                ops.push(op);
            }
        }
        batch.moved = ops.len() as u64;
        let sealed_under: Vec<u64> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::ResealResourceVersion { dek_id, .. } => Some(*dek_id),
                _ => None,
            })
            .collect();
        ops.push(WriteOp::SetMeta {
            key: CURSOR.into(),
            value: last.seq.to_string(),
        });
        match store.write(ops).await {
            Ok(()) => {
                after = last.seq;
                report.add(batch);
            }
            // A data key was rotated meanwhile (`key rotate-data` on another node): seal this
            // batch again under the live keys.
            Err(StoreError::StaleKey) if stale < 3 => {
                stale += 1;
                keyring.forget_data_keys(&sealed_under);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(
                event = "compartment_upgrade_progress",
                versions = report.versions,
                moved = report.moved,
            );
        }
    }
    store
        .write(vec![WriteOp::SetMeta {
            key: DONE.into(),
            value: "r4-patient-compartment-definition".into(),
        }])
        .await?;
    if report.versions > 0 {
        tracing::info!(
            event = "compartment_upgrade_finished",
            versions = report.versions,
            moved = report.moved,
            binaries_left_shared = report.binaries_left_shared,
            naming_shredded = report.naming_shredded,
            seconds = started.elapsed().as_secs_f64(),
            "resource versions filed by the R4 Patient CompartmentDefinition"
        );
    }
    Ok(report)
}

/// The re-seal that files one version where its content says, if it is elsewhere.
async fn refile(
    store: &dyn Store,
    keyring: &Keyring,
    row: &ResourceRow,
    report: &mut Report,
) -> Result<Option<WriteOp>> {
    let (Ok(rtype), Ok(id)) = (ResourceType::parse(&row.rtype), ResourceId::parse(&row.id)) else {
        return Ok(None);
    };
    let aad = keyring.resource_aad(&row.rtype, &row.id, row.version);
    let (plain, current) = match keyring.open_with_compartment(&aad, &row.body).await {
        Ok((plain, current)) => (Zeroizing::new(plain), current),
        // Sealed under a shredded patient's key: it goes with the shred.
        Err(Error::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    // A deletion marker is filed with the version it ends.
    let content = if row.deleted {
        let Some(previous) = row.version.checked_sub(1).filter(|v| *v > 0) else {
            return Ok(None);
        };
        let Some(prev_row) = store
            .resource_version(&row.rtype, &row.id, previous)
            .await?
        else {
            return Ok(None);
        };
        let prev_aad = keyring.resource_aad(&row.rtype, &row.id, previous);
        match keyring.open(&prev_aad, &prev_row.body).await {
            Ok(plain) => Zeroizing::new(plain),
            Err(Error::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else {
        plain.clone()
    };
    let json: serde_json::Value = serde_json::from_slice(&content)
        .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
    let target = match crate::filing::compartment_named(store, keyring, rtype, &id, &json).await {
        Ok(Some(name)) => name,
        Ok(None) if rtype == ResourceType::BINARY => {
            if current.is_environment() {
                report.binaries_left_shared += 1;
            }
            return Ok(None);
        }
        Ok(None) => Compartment::environment(),
        // Stored before the limit: it stays where it is, readable as before.
        Err(Error::Unprocessable(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if current == target || (target.is_environment() && current.patient_members().next().is_some())
    {
        return Ok(None);
    }
    match keyring.seal(&target, &aad, &plain).await {
        Ok((dek_id, body)) => Ok(Some(WriteOp::ResealResourceVersion {
            rtype: row.rtype.clone(),
            id: row.id.clone(),
            version: row.version,
            from_dek_id: row.dek_id,
            dek_id,
            body,
        })),
        // The target names a shredded patient: no key is made for it.
        Err(Error::Gone) => {
            report.naming_shredded += 1;
            tracing::warn!(
                event = "compartment_upgrade_names_shredded_patient",
                rtype = %row.rtype,
                "a stored version names a shredded patient; left where it was"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use carevault_crypto::FileKeyProvider;
    use carevault_store::{NewResourceVersion, ResourceRow, SqliteStore};
    use serde_json::json;

    use super::*;
    use crate::clock::ManualClock;

    /// A version sealed as the previous CareVault filed it: under `compartment`'s key.
    async fn put(
        store: &dyn Store,
        keyring: &Keyring,
        (rtype, id, version): (&str, &str, u32),
        content: Option<serde_json::Value>,
        compartment: &str,
    ) {
        let plain = content.as_ref().map(|c| c.to_string()).unwrap_or_default();
        let aad = keyring.resource_aad(rtype, id, version);
        let (dek_id, body) = keyring
            .seal(&Compartment::stored(compartment), &aad, plain.as_bytes())
            .await
            .unwrap();
        store
            .write(vec![WriteOp::PutResource(NewResourceVersion {
                row: ResourceRow {
                    rtype: rtype.into(),
                    id: id.into(),
                    version,
                    last_updated_us: 1,
                    deleted: content.is_none(),
                    dek_id,
                    body,
                },
                expected_current: version.checked_sub(1).filter(|v| *v > 0),
            })])
            .await
            .unwrap();
    }

    async fn filed(store: &dyn Store, keyring: &Keyring, rtype: &str, id: &str, v: u32) -> String {
        let row = store.resource_version(rtype, id, v).await.unwrap().unwrap();
        keyring
            .compartment_of_sealed(&row.body)
            .await
            .unwrap()
            .to_string()
    }

    fn keyring(store: &Arc<dyn Store>, keys: &std::path::Path) -> Keyring {
        Keyring::new(
            "env-test".into(),
            Box::new(FileKeyProvider::create(keys).unwrap()),
            store.clone(),
            Arc::new(ManualClock::at_secs(1_800_000_000)),
        )
    }

    fn appointment(patients: &[&str]) -> serde_json::Value {
        json!({"resourceType": "Appointment", "status": "booked", "participant": patients.iter()
            .map(|p| json!({"actor": {"reference": format!("Patient/{p}")}, "status": "accepted"}))
            .collect::<Vec<_>>()})
    }

    async fn refiles_legacy_versions(store: Arc<dyn Store>, keys: &std::path::Path) {
        let keyring = keyring(&store, keys);
        let env = crate::compartment::ENVIRONMENT;
        let s = &*store;
        put(
            s,
            &keyring,
            ("Appointment", "a1", 1),
            Some(appointment(&["p1"])),
            env,
        )
        .await;
        put(
            s,
            &keyring,
            ("Appointment", "a1", 2),
            Some(appointment(&["p2", "p1"])),
            env,
        )
        .await;
        put(s, &keyring, ("Appointment", "a1", 3), None, env).await;
        put(
            s,
            &keyring,
            ("Organization", "o1", 1),
            Some(json!({"resourceType": "Organization"})),
            env,
        )
        .await;
        let binary =
            json!({"resourceType": "Binary", "securityContext": {"reference": "Patient/p1"}});
        put(s, &keyring, ("Binary", "b1", 1), Some(binary), env).await;
        put(
            s,
            &keyring,
            ("Binary", "b2", 1),
            Some(json!({"resourceType": "Binary"})),
            env,
        )
        .await;
        let observation =
            json!({"resourceType": "Observation", "subject": {"reference": "Patient/p3"}});
        put(
            s,
            &keyring,
            ("Observation", "x1", 1),
            Some(observation),
            "Patient/p3",
        )
        .await;

        let report = run(s, &keyring).await.unwrap();
        assert_eq!(
            report,
            Report {
                versions: 7,
                moved: 4,
                binaries_left_shared: 1,
                naming_shredded: 0
            }
        );
        let two = "Patient/p1 Patient/p2";
        for (rtype, id, v, expected) in [
            ("Appointment", "a1", 1, "Patient/p1"),
            ("Appointment", "a1", 2, two),
            ("Appointment", "a1", 3, two),
            ("Organization", "o1", 1, env),
            ("Binary", "b1", 1, "Patient/p1"),
            ("Binary", "b2", 1, env),
            ("Observation", "x1", 1, "Patient/p3"),
        ] {
            assert_eq!(
                filed(s, &keyring, rtype, id, v).await,
                expected,
                "{rtype}/{id}/{v}"
            );
        }
        // Re-filed versions still open, under the same associated data.
        let row = s
            .resource_version("Appointment", "a1", 2)
            .await
            .unwrap()
            .unwrap();
        let aad = keyring.resource_aad("Appointment", "a1", 2);
        let plain = keyring.open(&aad, &row.body).await.unwrap();
        assert!(String::from_utf8(plain).unwrap().contains("Patient/p2"));
        // Once done, never again; the keys naming p2 include the one the version moved to.
        assert_eq!(run(s, &keyring).await.unwrap(), Report::default());
        let keys = s.data_keys_naming("Patient/p2").await.unwrap();
        assert!(keys.contains(&row.dek_id), "{keys:?}");
        assert!(
            !s.data_keys_naming("Patient/p")
                .await
                .unwrap()
                .contains(&row.dek_id)
        );
    }

    #[tokio::test]
    async fn an_interrupted_upgrade_resumes_after_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let keyring = keyring(&store, &dir.path().join("keys"));
        let (s, env) = (&*store, crate::compartment::ENVIRONMENT);
        put(
            s,
            &keyring,
            ("Appointment", "a1", 1),
            Some(appointment(&["p1"])),
            env,
        )
        .await;
        put(
            s,
            &keyring,
            ("Appointment", "a2", 1),
            Some(appointment(&["p2"])),
            env,
        )
        .await;
        // Stopped after the first version's batch committed (its cursor is its seq).
        let first = s.versions_after(0, 1).await.unwrap()[0].seq;
        s.write(vec![WriteOp::SetMeta {
            key: CURSOR.into(),
            value: first.to_string(),
        }])
        .await
        .unwrap();
        let report = run(s, &keyring).await.unwrap();
        assert_eq!((report.versions, report.moved), (1, 1));
        assert_eq!(filed(s, &keyring, "Appointment", "a1", 1).await, env);
        assert_eq!(
            filed(s, &keyring, "Appointment", "a2", 1).await,
            "Patient/p2"
        );
    }

    #[tokio::test]
    async fn legacy_versions_are_refiled_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        refiles_legacy_versions(store, &dir.path().join("keys")).await;
    }

    /// Against the PostgreSQL server the test suite uses, in a database of its own.
    #[tokio::test]
    async fn legacy_versions_are_refiled_on_postgres() {
        let db = crate::test_postgres::TestPostgres::create("refile");
        let dir = tempfile::tempdir().unwrap();
        refiles_legacy_versions(Arc::new(db.store().await), &dir.path().join("keys")).await;
    }
}
