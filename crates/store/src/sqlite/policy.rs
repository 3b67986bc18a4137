//! Authorization data: compartment organizations, custom policies and break-glass grants.

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, exec};
use crate::{BreakGlassRow, PolicyRow, StoreError, WriteOp};

/// The policy operations of [`super::write::apply`].
pub(super) fn apply_policy_op(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::PutPolicy { name, text, at } => {
            exec(
                conn,
                "INSERT INTO policy (name, text, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
                &[name, text, at],
            )?;
            exec(
                conn,
                "INSERT INTO policy_history (version, name, text, at)
                 VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM policy_history), ?1, ?2, ?3)",
                &[name, text, at],
            )?;
        }
        WriteOp::DeletePolicy { name, at } => {
            if exec(conn, "DELETE FROM policy WHERE name = ?1", &[name])? != 1 {
                return Err(StoreError::Conflict);
            }
            exec(
                conn,
                "INSERT INTO policy_history (version, name, text, at)
                 VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM policy_history), ?1, NULL, ?2)",
                &[name, at],
            )?;
        }
        other => return Err(crate::dispatch::misrouted(other)),
    }
    Ok(())
}

impl SqliteStore {
    pub(super) async fn compartment_organization(
        &self,
        compartment: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let compartment = compartment.to_owned();
        self.point(move |c| {
            c.prepare_cached("SELECT organization FROM compartment_org WHERE compartment = ?1")?
                .query_row([compartment], |r| r.get(0))
                .optional()
        })
        .await
    }

    pub(super) async fn policies(&self) -> Result<(i64, Vec<PolicyRow>), StoreError> {
        self.read(move |c| {
            let version: i64 = c
                .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM policy_history")?
                .query_row([], |r| r.get(0))?;
            let mut stmt =
                c.prepare_cached("SELECT name, text, updated_at FROM policy ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok(PolicyRow {
                    name: r.get(0)?,
                    text: r.get(1)?,
                    updated_at: r.get(2)?,
                })
            })?;
            Ok((version, rows.collect::<rusqlite::Result<Vec<_>>>()?))
        })
        .await
    }

    pub(super) async fn break_glass_grants(
        &self,
        principal_id: &str,
        now: i64,
    ) -> Result<Vec<BreakGlassRow>, StoreError> {
        let principal_id = principal_id.to_owned();
        self.point(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT principal_id, until, patient, reason, created_at FROM break_glass
                 WHERE principal_id = ?1 AND until > ?2 ORDER BY until DESC",
            )?;
            let rows = stmt.query_map(params![principal_id, now], |r| {
                Ok(BreakGlassRow {
                    principal_id: r.get(0)?,
                    until: r.get(1)?,
                    patient: r.get(2)?,
                    reason: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}
