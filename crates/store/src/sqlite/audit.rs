//! The audit trail: each node's hash chain of events, its patients and signed checkpoints.

use rusqlite::{Connection, OptionalExtension, params};

use carevault_audit::{Checkpoint, StoredEvent, chain_hash};

use super::{SqliteStore, map_err};
use crate::rows::{self, CHECKPOINT_COLUMNS};
use crate::{AuditQuery, NewAuditEvent, StoreError, WriteOp};

pub(super) fn apply_audit_op(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::AppendAudit(event) => append_audit(conn, event).map_err(crate::audit_unavailable),
        WriteOp::InsertCheckpoint(cp) => insert_checkpoint(conn, cp),
        other => Err(crate::dispatch::misrouted(other)),
    }
}

pub(super) fn append_audit(conn: &Connection, e: &NewAuditEvent) -> Result<(), StoreError> {
    let head: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, hash FROM audit_event WHERE node = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row([&e.node], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(map_err)?;
    let (prev_seq, prev_hash) = match head {
        Some((seq, hash)) => (
            seq as u64,
            <[u8; 32]>::try_from(hash.as_slice())
                .map_err(|_| StoreError::Backend("corrupt audit hash".into()))?,
        ),
        None => (0, carevault_audit::GENESIS),
    };
    let seq = prev_seq + 1;
    let hash = chain_hash(&prev_hash, &e.node, seq, e.time_us, &e.body);
    conn.prepare_cached(
        "INSERT INTO audit_event (node, seq, time_us, principal, action, outcome, body, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.node,
            seq as i64,
            e.time_us,
            e.principal,
            e.action,
            e.outcome,
            e.body,
            hash.as_slice()
        ])
    })
    .map_err(map_err)?;
    for patient in &e.patients {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO audit_patient (node, seq, patient) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut s| s.execute(params![e.node, seq as i64, patient]))
        .map_err(map_err)?;
    }
    Ok(())
}

pub(super) fn insert_checkpoint(conn: &Connection, cp: &Checkpoint) -> Result<(), StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT MAX(last_seq) FROM audit_checkpoint WHERE node = ?1")
        .and_then(|mut s| s.query_row([&cp.node], |r| r.get(0)))
        .map_err(map_err)?;
    if last.unwrap_or(0) as u64 + 1 != cp.first_seq {
        return Err(StoreError::Conflict);
    }
    conn.prepare_cached(
        "INSERT INTO audit_checkpoint (node, first_seq, last_seq, head_hash, time_us, prev_signature, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            cp.node,
            cp.first_seq as i64,
            cp.last_seq as i64,
            cp.head_hash.as_slice(),
            cp.time_us,
            cp.prev_signature,
            cp.signature
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

impl SqliteStore {
    pub(super) async fn audit_events(
        &self,
        after: Option<(String, u64)>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |c| {
            let (node, seq) = after.map_or((None, 0i64), |(n, s)| (Some(n), s as i64));
            let mut stmt = c.prepare_cached(
                "SELECT node, seq, time_us, body, hash FROM audit_event
                 WHERE ?1 IS NULL OR node > ?1 OR (node = ?1 AND seq > ?2)
                 ORDER BY node, seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![node, seq, limit], |r| rows::stored_event(r))?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint ORDER BY node, last_seq"
            ))?;
            let rows = stmt.query_map([], |r| rows::checkpoint_row(r))?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn audit_head(
        &self,
        node: &str,
    ) -> Result<(Option<(u64, [u8; 32])>, Option<Checkpoint>), StoreError> {
        let node = node.to_owned();
        self.point(move |c| {
            let head: Option<(i64, Vec<u8>)> = c
                .prepare_cached("SELECT seq, hash FROM audit_event WHERE node = ?1 ORDER BY seq DESC LIMIT 1")?
                .query_row([&node], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let cp = c
                .prepare_cached(&format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint WHERE node = ?1 ORDER BY last_seq DESC LIMIT 1"
                ))?
                .query_row([&node], |r| rows::checkpoint_row(r))
                .optional()?;
            let head = head.map(|(seq, hash)| (seq as u64, <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0u8; 32])));
            Ok((head, cp))
        })
        .await
    }

    pub(super) async fn audit_search(&self, q: AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |c| {
            let (b_time, b_node, b_seq) = match q.before {
                Some((t, n, s)) => (Some(t), Some(n), Some(s as i64)),
                None => (None, None, None),
            };
            let mut stmt = c.prepare_cached(
                "SELECT e.node, e.seq, e.time_us, e.body, e.hash FROM audit_event e
                 WHERE (?1 IS NULL OR e.principal = ?1)
                   AND (?2 IS NULL OR EXISTS (SELECT 1 FROM audit_patient p
                        WHERE p.patient = ?2 AND p.node = e.node AND p.seq = e.seq))
                   AND (?3 IS NULL OR e.action = ?3)
                   AND (?4 IS NULL OR e.outcome = ?4)
                   AND (?5 IS NULL OR e.time_us >= ?5)
                   AND (?6 IS NULL OR e.time_us < ?6)
                   AND (?7 IS NULL OR e.time_us < ?7 OR (e.time_us = ?7 AND (e.node < ?8 OR (e.node = ?8 AND e.seq < ?9))))
                 ORDER BY e.time_us DESC, e.node DESC, e.seq DESC LIMIT ?10",
            )?;
            let rows = stmt.query_map(
                params![q.principal, q.patient, q.action, q.outcome, q.since_us, q.until_us, b_time, b_node, b_seq, q.limit],
                |r| rows::stored_event(r),
            )?;
            rows.collect()
        })
        .await
    }
}
