//! A consistent copy of a live SQLite database (`VACUUM INTO`) and its facts.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::map_err;
use crate::StoreError;
use crate::snapshot::{
    AUDIT_HEADS, AuditHead, CHECKPOINTS, COUNTS, CheckpointHead, ENVIRONMENT_ID, RESOURCES,
    SnapshotFacts, hex,
};

/// Copy the database at `live` (which a server may be writing) into the new file `out`, as of
/// one read transaction, and read the copy's facts. Writers are not blocked (WAL).
pub fn sqlite_snapshot(live: &Path, out: &Path) -> Result<SnapshotFacts, StoreError> {
    // Read-write (never written): a read-only connection to a WAL database needs its `-shm`
    // file to exist already.
    let conn = Connection::open_with_flags(
        live,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(map_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(map_err)?;
    let target = out
        .to_str()
        .ok_or_else(|| StoreError::Backend("the snapshot path is not UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(map_err)?;
    drop(conn);
    sqlite_facts(out)
}

/// The facts of a SQLite database file (a snapshot or a restored copy), read-only.
pub fn sqlite_facts(path: &Path) -> Result<SnapshotFacts, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(map_err)?;
    let schema_version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(map_err)?;
    let environment_id: String = conn
        .query_row(ENVIRONMENT_ID, [], |r| r.get(0))
        .map_err(map_err)?;
    let mut facts = SnapshotFacts {
        environment_id,
        schema_version,
        ..SnapshotFacts::default()
    };
    let mut stmt = conn.prepare(RESOURCES).map_err(map_err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(map_err)?;
    for row in rows {
        let (rtype, n) = row.map_err(map_err)?;
        facts.resources.insert(rtype, n.unsigned_abs());
    }
    let (versions, keys, events): (i64, i64, i64) = conn
        .query_row(COUNTS, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(map_err)?;
    facts.versions = versions.unsigned_abs();
    facts.data_keys = keys.unsigned_abs();
    facts.audit_events = events.unsigned_abs();
    let mut stmt = conn.prepare(AUDIT_HEADS).map_err(map_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(AuditHead {
                node: r.get(0)?,
                seq: r.get::<_, i64>(1)?.unsigned_abs(),
                hash: hex(&r.get::<_, Vec<u8>>(2)?),
            })
        })
        .map_err(map_err)?;
    for row in rows {
        facts.audit_heads.push(row.map_err(map_err)?);
    }
    let mut stmt = conn.prepare(CHECKPOINTS).map_err(map_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(CheckpointHead {
                node: r.get(0)?,
                last_seq: r.get::<_, i64>(1)?.unsigned_abs(),
                time_us: r.get(2)?,
                signature: hex(&r.get::<_, Vec<u8>>(3)?),
            })
        })
        .map_err(map_err)?;
    for row in rows {
        facts.checkpoints.push(row.map_err(map_err)?);
    }
    Ok(facts)
}
