//! Bulk export jobs (`$export`): one row per job, its state as the server's JSON.

use deadpool_postgres::Transaction;

use super::{PostgresStore, TxError, exec, infallible};
use crate::rows::{self, EXPORT_JOB_COLUMNS};
use crate::{ExportJobRow, StoreError, WriteOp};

/// The export-job operations of [`super::write::apply`].
pub(super) async fn apply_export_op(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    match op {
        WriteOp::PutExportJob(job) => {
            exec(
                tx,
                "INSERT INTO export_job (id, principal_id, created_us, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                &[&job.id, &job.principal_id, &job.created_us, &job.body],
            )
            .await?;
        }
        WriteOp::DeleteExportJob { id } => {
            exec(tx, "DELETE FROM export_job WHERE id = $1", &[id]).await?;
        }
        other => return Err(crate::dispatch::misrouted(other).into()),
    }
    Ok(())
}

impl PostgresStore {
    pub(super) async fn export_job(&self, id: &str) -> Result<Option<ExportJobRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!("SELECT {EXPORT_JOB_COLUMNS} FROM export_job WHERE id = $1"),
                &[&id],
            )
            .await?
            .map(|r| infallible(rows::export_job_row(&r))))
    }

    pub(super) async fn export_jobs(&self) -> Result<Vec<ExportJobRow>, StoreError> {
        Ok(self
            .query(
                &format!("SELECT {EXPORT_JOB_COLUMNS} FROM export_job ORDER BY created_us, id"),
                &[],
            )
            .await?
            .iter()
            .map(|r| infallible(rows::export_job_row(r)))
            .collect())
    }
}
