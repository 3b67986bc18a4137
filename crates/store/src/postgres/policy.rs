//! Authorization data: compartment organizations, custom policies and break-glass grants.

use deadpool_postgres::Transaction;

use super::{PostgresStore, TxError, exec};
use crate::{BreakGlassRow, PolicyRow, StoreError, WriteOp};

/// The policy operations of [`super::write::apply`].
pub(super) async fn apply_policy_op(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    match op {
        WriteOp::PutPolicy { name, text, at } => {
            exec(
                tx,
                "INSERT INTO policy (name, text, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
                &[name, text, at],
            )
            .await?;
            let version = bump_policy_version(tx).await?;
            exec(
                tx,
                "INSERT INTO policy_history (version, name, text, at) VALUES ($1, $2, $3, $4)",
                &[&version, name, text, at],
            )
            .await?;
        }
        WriteOp::DeletePolicy { name, at } => {
            if exec(tx, "DELETE FROM policy WHERE name = $1", &[name]).await? != 1 {
                return Err(StoreError::Conflict.into());
            }
            let version = bump_policy_version(tx).await?;
            exec(
                tx,
                "INSERT INTO policy_history (version, name, text, at) VALUES ($1, $2, NULL, $3)",
                &[&version, name, at],
            )
            .await?;
        }
        other => return Err(crate::dispatch::misrouted(other).into()),
    }
    Ok(())
}

/// The policy-set version is one counter row, bumped under its row lock.
pub(super) async fn bump_policy_version(tx: &Transaction<'_>) -> Result<i64, TxError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE policy_state SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .await?;
    let row = tx.query_one(&stmt, &[]).await?;
    Ok(row.get(0))
}

impl PostgresStore {
    pub(super) async fn compartment_organization(
        &self,
        compartment: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT organization FROM compartment_org WHERE compartment = $1",
                &[&compartment],
            )
            .await?
            .map(|r| r.get(0)))
    }

    pub(super) async fn compartment_organizations(
        &self,
        compartments: Vec<String>,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut out = Vec::with_capacity(compartments.len());
        for chunk in compartments.chunks(1000) {
            let rows = self
                .query(
                    "SELECT compartment, organization FROM compartment_org
                     WHERE compartment = ANY($1::TEXT[])",
                    &[&chunk],
                )
                .await?;
            out.extend(rows.iter().map(|r| (r.get(0), r.get(1))));
        }
        Ok(out)
    }

    pub(super) async fn policies(&self) -> Result<(i64, Vec<PolicyRow>), StoreError> {
        // One statement, so the version and the rows are of the same snapshot.
        let rows = self
            .query(
                "SELECT s.version, p.name, p.text, p.updated_at FROM policy_state s
                 LEFT JOIN policy p ON TRUE WHERE s.id = 1 ORDER BY p.name",
                &[],
            )
            .await?;
        let version = rows.first().map_or(0, |r| r.get::<_, i64>(0));
        let policies = rows
            .iter()
            .filter_map(|r| {
                Some(PolicyRow {
                    name: r.get::<_, Option<String>>(1)?,
                    text: r.get::<_, Option<String>>(2)?,
                    updated_at: r.get::<_, Option<i64>>(3)?,
                })
            })
            .collect();
        Ok((version, policies))
    }

    pub(super) async fn policy_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .query_opt("SELECT version FROM policy_state WHERE id = 1", &[])
            .await?
            .map_or(0, |r| r.get(0)))
    }

    pub(super) async fn break_glass_grants(
        &self,
        principal_id: &str,
        now: i64,
    ) -> Result<Vec<BreakGlassRow>, StoreError> {
        Ok(self
            .query(
                "SELECT principal_id, until, patient, reason, created_at FROM break_glass
                 WHERE principal_id = $1 AND until > $2 ORDER BY until DESC",
                &[&principal_id, &now],
            )
            .await?
            .iter()
            .map(|r| BreakGlassRow {
                principal_id: r.get(0),
                until: r.get(1),
                patient: r.get(2),
                reason: r.get(3),
                created_at: r.get(4),
            })
            .collect())
    }
}
