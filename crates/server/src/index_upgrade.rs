//! The upgrade that rebuilds the blind index when the search parameter definitions change.
//!
//! A resource's index entries are computed when it is written, from the parameters the binary
//! knows. When a release knows more parameters (the R4 SearchParameter definitions replaced a
//! hand-written table of 46) or extracts them differently, resources written before would be
//! missing from searches on the new parameters: a search would answer "nothing" where the data
//! matches. So when an environment is opened, the stored definitions version is compared with
//! the binary's; if they differ, every current resource is opened and its index entries written
//! again, in batches, each batch one transaction with its progress cursor (an interrupted rebuild
//! resumes where it stopped), before anything is served.

use std::collections::BTreeMap;
use std::time::Instant;

use carevault_fhir::ResourceType;
use carevault_store::{Store, WriteOp};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keyring::Keyring;
use crate::search::SearchIndex;

/// The definitions version the index was last built with.
pub const DEFINITIONS: &str = "search_index_definitions";
/// The newest `seq` rebuilt so far in an unfinished rebuild (versions are walked oldest first).
const CURSOR: &str = "search_reindex_after_seq";
/// The version a rebuild in progress is building (a cursor for another version is restarted).
const CURSOR_FOR: &str = "search_reindex_for";
/// How often progress is logged.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const BATCH: u32 = 500;
/// Bumped when index keys are extracted differently for the same definitions.
const EXTRACTION: &str = "4";

/// This binary's definitions version: its extraction scheme and a digest of the embedded R4
/// SearchParameter definitions.
#[must_use]
pub fn definitions_version() -> String {
    let digest = carevault_crypto::sha256_hex(carevault_fhir::search::definitions_json());
    format!("r4-{EXTRACTION}-{}", &digest[..16])
}

/// What the rebuild did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Stored versions walked.
    pub versions: u64,
    /// Current resources whose entries were written again.
    pub reindexed: u64,
}

/// Rebuild the index of every current resource, unless it was built with these definitions.
pub async fn run(store: &dyn Store, keyring: &Keyring) -> Result<Report> {
    // The definitions load here, at start, rather than on the first request.
    let _ = carevault_fhir::search::params(ResourceType::PATIENT);
    let version = definitions_version();
    let mut report = Report::default();
    if store.meta(DEFINITIONS).await?.as_deref() == Some(version.as_str()) {
        return Ok(report);
    }
    let index = SearchIndex::open(keyring).await?;
    let started = Instant::now();
    let mut logged = started;
    let resuming = store.meta(CURSOR_FOR).await?.as_deref() == Some(version.as_str());
    let mut after: i64 = if resuming {
        store
            .meta(CURSOR)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    loop {
        let entries = store.versions_after(after, BATCH).await?;
        let Some(last) = entries.last() else {
            break;
        };
        report.versions += entries.len() as u64;
        // Only current versions carry index entries: find which of the batch are current.
        let mut by_type: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in &entries {
            by_type
                .entry(&e.row.rtype)
                .or_default()
                .push(e.row.id.clone());
        }
        let mut current = Vec::new();
        for (rtype, ids) in by_type {
            current.extend(store.resources_current(rtype, ids).await?);
        }
        let mut ops = Vec::new();
        for e in &entries {
            let row = &e.row;
            let is_current = current
                .iter()
                .any(|c| c.rtype == row.rtype && c.id == row.id && c.version == row.version);
            if !is_current || row.deleted {
                continue;
            }
            let Ok(rtype) = ResourceType::parse(&row.rtype) else {
                continue;
            };
            let aad = keyring.resource_aad(&row.rtype, &row.id, row.version);
            let plain = match keyring.open(&aad, &row.body).await {
                Ok(plain) => Zeroizing::new(plain),
                // Sealed under a shredded patient's key: it goes with the shred.
                Err(Error::NotFound) => continue,
                Err(e) => return Err(e),
            };
            let json: serde_json::Value = serde_json::from_slice(&plain)
                .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
            ops.push(WriteOp::ReplaceSearchIndex {
                rtype: row.rtype.clone(),
                id: row.id.clone(),
                tokens: index.entries(rtype, &json),
                // Another node (still on the older release) may write a newer version between
                // this read and this write: its entries must not be overwritten with these.
                only_if_current: Some(row.version),
            });
        }
        report.reindexed += ops.len() as u64;
        ops.push(WriteOp::SetMeta {
            key: CURSOR.into(),
            value: last.seq.to_string(),
        });
        ops.push(WriteOp::SetMeta {
            key: CURSOR_FOR.into(),
            value: version.clone(),
        });
        store.write(ops).await?;
        after = last.seq;
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(
                event = "search_reindex_progress",
                versions = report.versions,
                reindexed = report.reindexed,
            );
        }
    }
    store
        .write(vec![WriteOp::SetMeta {
            key: DEFINITIONS.into(),
            value: version,
        }])
        .await?;
    if report.versions > 0 {
        tracing::info!(
            event = "search_reindex_finished",
            versions = report.versions,
            reindexed = report.reindexed,
            seconds = started.elapsed().as_secs_f64(),
            "search index rebuilt for the R4 search parameter definitions"
        );
    }
    Ok(report)
}
