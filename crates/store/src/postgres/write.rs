//! One transaction per [`Store::write`](crate::Store::write), retried after a lost
//! serialization race, and the dispatch of each [`WriteOp`] to its domain.

use std::time::Duration;

use deadpool_postgres::Transaction;

use super::audit::{append_audit, apply_audit_op};
use super::export::apply_export_op;
use super::identity::apply_identity_op;
use super::index::apply_index_op;
use super::keys::{apply_key_op, apply_shred_op};
use super::policy::apply_policy_op;
use super::resources::apply_resource_op;
use super::{MAX_ATTEMPTS, PostgresStore, TxError, is_retryable, map_err, run};
use crate::dispatch::{Domain, misrouted};
use crate::{StoreError, WriteOp, audit_unavailable, statements};

impl PostgresStore {
    pub(super) async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let written = self.write_with_retries(&ops).await;
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        written
    }

    async fn write_with_retries(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_write(ops).await {
                Ok(()) => return Ok(()),
                Err(TxError::Pg(e)) if is_retryable(&e) && attempt < MAX_ATTEMPTS => {
                    // Lost a serialization race with another transaction: back off a little
                    // (longer each time) and run the whole transaction again.
                    tokio::time::sleep(Duration::from_millis(2u64 << attempt)).await;
                }
                Err(TxError::Pg(e)) => return Err(map_err(&e)),
                Err(TxError::Store(e)) => return Err(e),
            }
        }
    }

    async fn try_write(&self, ops: &[WriteOp]) -> Result<(), TxError> {
        let mut client = self.client().await.map_err(TxError::Store)?;
        let tx = client.transaction().await?;
        // Audit appends last: they hold this node's chain head until commit, so the less
        // work after them, the less other requests of this node wait.
        for op in ops.iter().filter(|o| !matches!(o, WriteOp::AppendAudit(_))) {
            apply(&tx, op).await?;
        }
        for op in ops {
            if let WriteOp::AppendAudit(event) = op {
                append_audit(&tx, event).await.map_err(|e| match e {
                    TxError::Pg(e) if is_retryable(&e) => TxError::Pg(e),
                    TxError::Pg(e) => TxError::Store(audit_unavailable(map_err(&e))),
                    TxError::Store(e) => TxError::Store(audit_unavailable(e)),
                })?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Apply one operation inside the transaction, in its domain's file.
async fn apply(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    match op.domain() {
        Domain::Shared => run_shared(tx, op).await,
        Domain::Resources => apply_resource_op(tx, op).await,
        Domain::Index => apply_index_op(tx, op).await,
        Domain::Keys => apply_key_op(tx, op).await,
        Domain::Shred => apply_shred_op(tx, op).await,
        Domain::Identity => apply_identity_op(tx, op).await,
        Domain::Audit => apply_audit_op(tx, op).await,
        Domain::Policy => apply_policy_op(tx, op).await,
        Domain::Export => apply_export_op(tx, op).await,
    }
}

async fn run_shared(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    let statement = statements::shared(op).ok_or_else(|| misrouted(op))?;
    run(tx, &statement).await.map(drop)
}
