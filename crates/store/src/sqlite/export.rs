//! Bulk export jobs (`$export`): one row per job, its state as the server's JSON.

use rusqlite::{Connection, OptionalExtension};

use super::{SqliteStore, exec};
use crate::rows::{self, EXPORT_JOB_COLUMNS};
use crate::{ExportJobRow, StoreError, WriteOp};

/// The export-job operations of [`super::write::apply`].
pub(super) fn apply_export_op(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::PutExportJob(job) => {
            exec(
                conn,
                "INSERT INTO export_job (id, principal_id, created_us, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                &[&job.id, &job.principal_id, &job.created_us, &job.body],
            )?;
        }
        WriteOp::DeleteExportJob { id } => {
            exec(conn, "DELETE FROM export_job WHERE id = ?1", &[id])?;
        }
        other => return Err(crate::dispatch::misrouted(other)),
    }
    Ok(())
}

impl SqliteStore {
    pub(super) async fn export_job(&self, id: &str) -> Result<Option<ExportJobRow>, StoreError> {
        let id = id.to_owned();
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {EXPORT_JOB_COLUMNS} FROM export_job WHERE id = ?1"
            ))?
            .query_row([id], |r| rows::export_job_row(r))
            .optional()
        })
        .await
    }

    pub(super) async fn export_jobs(&self) -> Result<Vec<ExportJobRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {EXPORT_JOB_COLUMNS} FROM export_job ORDER BY created_us, id"
            ))?;
            let rows = stmt.query_map([], |r| rows::export_job_row(r))?;
            rows.collect()
        })
        .await
    }
}
