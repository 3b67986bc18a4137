//! What the keyring reports: KEK versions, re-wrap and data-key rotation progress, metrics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::Keyring;
use crate::error::Result;

/// The state of one KEK version.
#[derive(Clone, Debug, Serialize)]
pub struct KekVersionStatus {
    pub version: u32,
    /// `active`, `decrypt-only`, `retired` (below the minimum decryption version), `destroyed`,
    /// or `missing` (recorded but not held by the provider).
    pub state: &'static str,
    pub created_at: String,
    pub destroyed_at: Option<String>,
    /// How many data keys it still wraps.
    pub data_keys: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyStatus {
    pub provider: &'static str,
    pub active_version: u32,
    pub min_decrypt_version: u32,
    pub versions: Vec<KekVersionStatus>,
    /// Data keys not yet wrapped under the active version.
    pub rewrap_remaining: u64,
    pub data_keys_total: u64,
    pub shredded_compartments: usize,
    /// Progress of `key rotate-data` (all zero when none is under way).
    pub data_rotation: DataRotationStatus,
}

/// How far a data-key rotation has come.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DataRotationStatus {
    /// Compartments still waiting for their new data key.
    pub keys_to_rotate: u64,
    /// Old data keys not yet dropped.
    pub keys_retiring: u64,
    /// Resource versions still sealed under an old (or to-be-rotated) data key.
    pub versions_remaining: u64,
    /// Nothing left to do.
    pub complete: bool,
}

impl Keyring {
    pub async fn status(&self) -> Result<KeyStatus> {
        let counts: HashMap<u32, u64> = self.store.data_key_counts().await?.into_iter().collect();
        let rotation = self.store.data_rotation_progress().await?;
        let active = self.provider.active_version();
        let held = self.provider.versions();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        let versions = state
            .versions
            .iter()
            .map(|m| KekVersionStatus {
                version: m.version,
                state: if m.destroyed_at_us.is_some() {
                    // Still held by the provider: the destruction did not complete.
                    if held.contains(&m.version) {
                        "destroy-failed"
                    } else {
                        "destroyed"
                    }
                } else if !held.contains(&m.version) {
                    "missing"
                } else if m.version == active {
                    "active"
                } else if m.version < state.min_decrypt_version {
                    "retired"
                } else {
                    "decrypt-only"
                },
                created_at: crate::clock::fhir_instant(m.created_at_us),
                destroyed_at: m.destroyed_at_us.map(crate::clock::fhir_instant),
                data_keys: counts.get(&m.version).copied().unwrap_or(0),
            })
            .collect();
        Ok(KeyStatus {
            provider: self.provider.kind(),
            active_version: active,
            min_decrypt_version: state.min_decrypt_version,
            versions,
            rewrap_remaining: counts
                .iter()
                .filter(|(v, _)| **v != active)
                .map(|(_, n)| n)
                .sum(),
            data_keys_total: counts.values().sum(),
            shredded_compartments: state.shredded.len(),
            data_rotation: DataRotationStatus {
                keys_to_rotate: rotation.keys_to_rotate,
                keys_retiring: rotation.keys_retiring,
                versions_remaining: rotation.versions_remaining,
                complete: rotation == carevault_store::DataRotationProgress::default(),
            },
        })
    }

    /// Prometheus text for the keyring: active version, data keys per version, re-wrap backlog.
    pub async fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let Ok(status) = self.status().await else {
            return out;
        };
        crate::metrics::single(
            &mut out,
            "carevault_kek_active_version",
            "gauge",
            "The key-encryption key version new wraps use.",
            status.active_version,
        );
        crate::metrics::single(
            &mut out,
            "carevault_kek_rewrap_remaining",
            "gauge",
            "Data keys not yet re-wrapped under the active key-encryption key.",
            status.rewrap_remaining,
        );
        let rewrapped = if status.data_keys_total == 0 {
            1.0
        } else {
            status
                .data_keys_total
                .saturating_sub(status.rewrap_remaining) as f64
                / status.data_keys_total as f64
        };
        crate::metrics::single(
            &mut out,
            "carevault_kek_rewrap_progress_ratio",
            "gauge",
            "Share of data keys wrapped under the active key-encryption key (1 when done).",
            rewrapped,
        );
        let active_created_us = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            state
                .versions
                .iter()
                .find(|m| m.version == status.active_version)
                .map(|m| m.created_at_us)
        };
        if let Some(created_us) = active_created_us {
            crate::metrics::single(
                &mut out,
                "carevault_kek_active_age_seconds",
                "gauge",
                "Age of the active key-encryption key version (rotate before it grows too old).",
                (self.clock.now_us() - created_us).max(0) / 1_000_000,
            );
        }
        crate::metrics::family(
            &mut out,
            "carevault_kek_data_keys",
            "gauge",
            "Data keys wrapped under each key-encryption key version.",
        );
        for v in &status.versions {
            let _ = writeln!(
                out,
                "carevault_kek_data_keys{{version=\"{}\"}} {}",
                v.version, v.data_keys
            );
        }
        crate::metrics::single(
            &mut out,
            "carevault_kek_rewrapped_total",
            "counter",
            "Data keys re-wrapped by this process.",
            self.rewrapped.load(Ordering::Relaxed),
        );
        crate::metrics::single(
            &mut out,
            "carevault_dek_rotation_remaining_versions",
            "gauge",
            "Resource versions still sealed under a data key that is being rotated.",
            status.data_rotation.versions_remaining,
        );
        crate::metrics::single(
            &mut out,
            "carevault_dek_rotation_pending_keys",
            "gauge",
            "Data keys marked for rotation that have no new generation yet.",
            status.data_rotation.keys_to_rotate,
        );
        crate::metrics::single(
            &mut out,
            "carevault_dek_rotation_retiring_keys",
            "gauge",
            "Old data keys not yet dropped.",
            status.data_rotation.keys_retiring,
        );
        crate::metrics::single(
            &mut out,
            "carevault_dek_resealed_total",
            "counter",
            "Resource versions re-sealed under new data keys by this process.",
            self.resealed.load(Ordering::Relaxed),
        );
        out
    }
}
