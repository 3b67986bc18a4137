//! The manifest: what a backup holds, and the hash of every part.

use carevault_store::SnapshotFacts;
use serde::{Deserialize, Serialize};

use crate::{BackupError, Result};

/// The container format this binary writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub environment_id: String,
    /// `sqlite` or `postgres`: which database part the backup holds.
    pub backend: String,
    pub node: String,
    /// When the snapshot was taken (FHIR instant).
    pub created_at: String,
    pub carevault_version: String,
    /// `file` (the KEK files are parts) or `pkcs11` (the HSM holds them: `hsm_kek_versions`).
    pub key_provider: String,
    /// KEK versions the backup's data keys are wrapped under (the restore needs them).
    pub kek_versions: Vec<u32>,
    /// For `pkcs11`: the HSM key versions (`carevault-kek-vN`) a restore asks the HSM for.
    pub hsm_kek_versions: Vec<u32>,
    pub audit_public_key: String,
    /// The database as of the snapshot: schema, counts, audit heads, latest checkpoints.
    pub database: SnapshotFacts,
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    /// Refuse a manifest this binary cannot restore.
    pub fn check_readable(&self, supported_schema: i64) -> Result<()> {
        if self.format != FORMAT {
            return Err(BackupError::Damaged(format!(
                "unknown backup format {} (this binary reads format {FORMAT})",
                self.format
            )));
        }
        if self.database.schema_version > supported_schema {
            return Err(BackupError::NewerSchema {
                found: self.database.schema_version,
                supported: supported_schema,
            });
        }
        for p in &self.parts {
            let safe = !p.name.is_empty()
                && !p.name.starts_with('/')
                && p.name
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if !safe {
                return Err(BackupError::Damaged("a part has an invalid name".into()));
            }
        }
        Ok(())
    }

    pub fn database_part(&self) -> &'static str {
        if self.backend == "postgres" {
            DATABASE_PG
        } else {
            DATABASE_SQLITE
        }
    }
}

pub const DATABASE_SQLITE: &str = "database.sqlite";
pub const DATABASE_PG: &str = "database.pgdump";
pub const ENVIRONMENT: &str = "environment.json";
pub const KEYRING: &str = "keys/keyring.json";
