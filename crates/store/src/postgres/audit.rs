//! The audit trail: each node's hash chain of events, its patients and signed checkpoints.

use carevault_audit::{Checkpoint, StoredEvent, chain_hash};
use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;

use super::{PostgresStore, TxError, checkpoint_row, exec, stored_event, u64_of};
use crate::rows::{CHECKPOINT_COLUMNS, hash32};
use crate::{AuditQuery, NewAuditEvent, StoreError, WriteOp};

pub(super) async fn apply_audit_op(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    match op {
        // Applied after every other operation, by `try_write`.
        WriteOp::AppendAudit(_) => Ok(()),
        WriteOp::InsertCheckpoint(cp) => insert_checkpoint(tx, cp).await,
        other => Err(crate::dispatch::misrouted(other).into()),
    }
}

pub(super) async fn append_audit(tx: &Transaction<'_>, e: &NewAuditEvent) -> Result<(), TxError> {
    exec(
        tx,
        "INSERT INTO audit_head (node, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (node) DO NOTHING",
        &[&e.node, &carevault_audit::GENESIS.as_slice()],
    )
    .await?;
    let stmt = tx
        .prepare_cached("UPDATE audit_head SET seq = seq + 1 WHERE node = $1 RETURNING seq, hash")
        .await?;
    let head = tx.query_one(&stmt, &[&e.node]).await?;
    let seq: i64 = head.get(0);
    let prev: Vec<u8> = head.get(1);
    let prev = <[u8; 32]>::try_from(prev.as_slice())
        .map_err(|_| StoreError::Backend("corrupt audit head".into()))?;
    let hash = chain_hash(&prev, &e.node, u64_of(seq), e.time_us, &e.body);
    exec(
        tx,
        "UPDATE audit_head SET hash = $2 WHERE node = $1",
        &[&e.node, &hash.as_slice()],
    )
    .await?;
    exec(
        tx,
        "INSERT INTO audit_event (node, seq, time_us, principal, action, outcome, body, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &e.node,
            &seq,
            &e.time_us,
            &e.principal,
            &e.action,
            &e.outcome,
            &e.body,
            &hash.as_slice(),
        ],
    )
    .await?;
    if !e.patients.is_empty() {
        exec(
            tx,
            "INSERT INTO audit_patient (patient, node, seq) SELECT p, $2, $3 FROM UNNEST($1::TEXT[]) AS u (p)
             ON CONFLICT DO NOTHING",
            &[&e.patients, &e.node, &seq],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn insert_checkpoint(
    tx: &Transaction<'_>,
    cp: &Checkpoint,
) -> Result<(), TxError> {
    let stmt = tx
        .prepare_cached("SELECT MAX(last_seq) FROM audit_checkpoint WHERE node = $1")
        .await?;
    let last: Option<i64> = tx.query_one(&stmt, &[&cp.node]).await?.get(0);
    if u64_of(last.unwrap_or(0)) + 1 != cp.first_seq {
        return Err(StoreError::Conflict.into());
    }
    // UNIQUE (node, first_seq) turns a concurrent checkpoint of the same span into a conflict.
    exec(
        tx,
        "INSERT INTO audit_checkpoint (node, first_seq, last_seq, head_hash, time_us, prev_signature, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &cp.node,
            &i64::try_from(cp.first_seq).unwrap_or(i64::MAX),
            &i64::try_from(cp.last_seq).unwrap_or(i64::MAX),
            &cp.head_hash.as_slice(),
            &cp.time_us,
            &cp.prev_signature,
            &cp.signature,
        ],
    )
    .await
    .map_err(|e| match e {
        TxError::Pg(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            TxError::Store(StoreError::Conflict)
        }
        other => other,
    })?;
    Ok(())
}

impl PostgresStore {
    pub(super) async fn audit_events(
        &self,
        after: Option<(String, u64)>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let (node, seq) = after.map_or((None, 0i64), |(n, s)| {
            (Some(n), i64::try_from(s).unwrap_or(i64::MAX))
        });
        // Byte order (COLLATE "C") for node names, so paging agrees with the verifier's order.
        Ok(self
            .query(
                r#"SELECT node, seq, time_us, body, hash FROM audit_event
                 WHERE $1::TEXT IS NULL OR node COLLATE "C" > $1 OR (node = $1 AND seq > $2)
                 ORDER BY node COLLATE "C", seq LIMIT $3"#,
                &[&node, &seq, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(stored_event)
            .collect())
    }

    pub(super) async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        Ok(self
            .query(
                &format!(
                    r#"SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint ORDER BY node COLLATE "C", last_seq"#
                ),
                &[],
            )
            .await?
            .iter()
            .map(checkpoint_row)
            .collect())
    }

    pub(super) async fn audit_head(
        &self,
        node: &str,
    ) -> Result<(Option<(u64, [u8; 32])>, Option<Checkpoint>), StoreError> {
        let head = self
            .query_opt(
                "SELECT seq, hash FROM audit_event WHERE node = $1 ORDER BY seq DESC LIMIT 1",
                &[&node],
            )
            .await?
            .map(|r| {
                let hash: Vec<u8> = r.get(1);
                (u64_of(r.get(0)), hash32(&hash))
            });
        let cp = self
            .query_opt(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint WHERE node = $1 ORDER BY last_seq DESC LIMIT 1"
                ),
                &[&node],
            )
            .await?
            .map(|r| checkpoint_row(&r));
        Ok((head, cp))
    }

    pub(super) async fn audit_search(&self, q: AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let (b_time, b_node, b_seq) = match q.before {
            Some((t, n, s)) => (Some(t), Some(n), Some(i64::try_from(s).unwrap_or(i64::MAX))),
            None => (None, None, None),
        };
        Ok(self
            .query(
                r#"SELECT e.node, e.seq, e.time_us, e.body, e.hash FROM audit_event e
                 WHERE ($1::TEXT IS NULL OR e.principal = $1)
                   AND ($2::TEXT IS NULL OR EXISTS (SELECT 1 FROM audit_patient p
                        WHERE p.patient = $2 AND p.node = e.node AND p.seq = e.seq))
                   AND ($3::TEXT IS NULL OR e.action = $3)
                   AND ($4::TEXT IS NULL OR e.outcome = $4)
                   AND ($5::BIGINT IS NULL OR e.time_us >= $5)
                   AND ($6::BIGINT IS NULL OR e.time_us < $6)
                   AND ($7::BIGINT IS NULL OR e.time_us < $7 OR (e.time_us = $7
                        AND (e.node COLLATE "C" < $8::TEXT OR (e.node = $8::TEXT AND e.seq < $9::BIGINT))))
                 ORDER BY e.time_us DESC, e.node COLLATE "C" DESC, e.seq DESC LIMIT $10"#,
                &[
                    &q.principal,
                    &q.patient,
                    &q.action,
                    &q.outcome,
                    &q.since_us,
                    &q.until_us,
                    &b_time,
                    &b_node,
                    &b_seq,
                    &i64::from(q.limit),
                ],
            )
            .await?
            .iter()
            .map(stored_event)
            .collect())
    }
}
