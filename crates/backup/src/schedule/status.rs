//! What the schedule knows of its own runs, kept beside the backups in
//! `DIR/.carevault-backup-status.json` (written to a temporary file and renamed): the last
//! success and failure, the off-site copies and the last verification, for `carevault backup
//! status` and to seed the metrics at start.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, io};

pub const STATUS_FILE: &str = ".carevault-backup-status.json";

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Status {
    pub last_success: Option<Success>,
    pub last_failure: Option<Failure>,
    /// Failed runs since the directory was first used.
    pub failures: u64,
    /// Per off-site target kind (`dir`, `s3`).
    #[serde(default)]
    pub offsite: BTreeMap<String, OffsiteStatus>,
    #[serde(default)]
    pub last_verify: Option<Verification>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct OffsiteStatus {
    pub last_copy: Option<Success>,
    pub last_failure: Option<Failure>,
    /// Copies that failed after every attempt.
    pub failures: u64,
}

/// The last scheduled verification of the newest backup.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Verification {
    pub at_us: i64,
    pub file: String,
    /// How far it could go: `full`, `archive` or `integrity` (see `schedule::verify`).
    pub level: String,
    pub passed: bool,
    /// Why it failed (backup errors carry no key material or record content).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Success {
    pub at_us: i64,
    /// The file's name in the backup directory.
    pub file: String,
    pub size: u64,
    pub duration_secs: f64,
    /// The finished file's SHA-256: a later check of the file needs no secret.
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Failure {
    pub at_us: i64,
    /// The error's message (backup errors carry no key material or record content).
    pub error: String,
}

/// The status in `dir` (empty when there is none yet, or it cannot be read).
pub fn read_status(dir: &Path) -> Status {
    std::fs::read(dir.join(STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub(super) fn write_status(dir: &Path, status: &Status) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(status).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(".carevault-status.")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io("cannot write the backup status"))?;
    std::fs::write(tmp.path(), bytes).map_err(io("cannot write the backup status"))?;
    tmp.persist(dir.join(STATUS_FILE))
        .map_err(|e| io("cannot write the backup status")(e.error))?;
    Ok(())
}
