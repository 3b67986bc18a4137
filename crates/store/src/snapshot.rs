//! Consistent snapshots of a database for backups, and the facts a backup's manifest records
//! about one (environment, schema, counts, audit heads), read by the same queries on both
//! backends so that a restore can be compared with the manifest.
//!
//! SQLite: `VACUUM INTO` from a read transaction of its own (in WAL mode it blocks no writer).
//! PostgreSQL: one `REPEATABLE READ` transaction exports its snapshot; the facts are read in it
//! and `pg_dump --snapshot` dumps exactly that state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a backup's manifest says about its database, and what a restore is checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFacts {
    pub environment_id: String,
    pub schema_version: i64,
    /// Current, not deleted resources per type.
    pub resources: BTreeMap<String, u64>,
    /// Stored resource versions (history and deletion markers included).
    pub versions: u64,
    pub data_keys: u64,
    pub audit_events: u64,
    /// Each node's last audit event.
    pub audit_heads: Vec<AuditHead>,
    /// Each node's latest signed checkpoint.
    pub checkpoints: Vec<CheckpointHead>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub node: String,
    pub seq: u64,
    /// Hex of the event's chain hash.
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointHead {
    pub node: String,
    pub last_seq: u64,
    pub time_us: i64,
    /// Hex of the checkpoint's Ed25519 signature.
    pub signature: String,
}

pub(crate) const ENVIRONMENT_ID: &str = "SELECT value FROM meta WHERE key = 'environment_id'";
pub(crate) const RESOURCES: &str =
    "SELECT rtype, COUNT(*) FROM resource_current WHERE NOT deleted GROUP BY rtype ORDER BY rtype";
pub(crate) const COUNTS: &str = "SELECT (SELECT COUNT(*) FROM resource_version), \
     (SELECT COUNT(*) FROM data_key), (SELECT COUNT(*) FROM audit_event)";
pub(crate) const AUDIT_HEADS: &str = "SELECT node, seq, hash FROM audit_event e \
     WHERE seq = (SELECT MAX(seq) FROM audit_event WHERE node = e.node) ORDER BY node";
pub(crate) const CHECKPOINTS: &str = "SELECT node, last_seq, time_us, signature FROM audit_checkpoint c \
     WHERE last_seq = (SELECT MAX(last_seq) FROM audit_checkpoint WHERE node = c.node) ORDER BY node";

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
