//! The blind search index: one row per (parameter, token) of a current resource.

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::{PostgresStore, TxError, exec, map_err};
use crate::dispatch::IndexReplacement;
use crate::{IndexClause, StoreError, WriteOp};

/// Replace a resource's blind-index rows (none for a deleted resource).
pub(super) async fn apply_index_op(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    let IndexReplacement {
        rtype,
        id,
        tokens,
        only_if_current,
    } = op.index_replacement()?;
    if let Some(version) = only_if_current {
        // Share-locked: a writer of a newer version either committed before (and is seen here)
        // or waits for this transaction, and then replaces these entries with its own.
        let current = tx
            .query_opt(
                "SELECT version FROM resource_current
                 WHERE rtype = $1 AND id = $2 AND NOT deleted FOR SHARE",
                &[&rtype, &id],
            )
            .await?
            .map(|row| row.get::<_, i64>(0));
        if current != Some(i64::from(version)) {
            return Ok(());
        }
    }
    exec(
        tx,
        "DELETE FROM search_index WHERE rtype = $1 AND id = $2",
        &[&rtype, &id],
    )
    .await?;
    if !tokens.is_empty() {
        let params: Vec<&String> = tokens.iter().map(|(p, _)| p).collect();
        let values: Vec<&Vec<u8>> = tokens.iter().map(|(_, t)| t).collect();
        exec(
            tx,
            "INSERT INTO search_index (rtype, param, token, id)
             SELECT $1, p, t, $2 FROM UNNEST($3::TEXT[], $4::BYTEA[]) AS u (p, t)
             ON CONFLICT DO NOTHING",
            &[&rtype, &id, &params, &values],
        )
        .await?;
    }
    Ok(())
}

impl PostgresStore {
    pub(super) async fn search_index(
        &self,
        rtype: &str,
        clauses: Vec<IndexClause>,
    ) -> Result<Vec<String>, StoreError> {
        if clauses.is_empty() || clauses.iter().any(|c| c.tokens.is_empty()) {
            return Ok(Vec::new());
        }
        // One sub-select per clause, intersected; tokens bound as one array parameter each.
        let mut sql = String::new();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&rtype];
        for (i, clause) in clauses.iter().enumerate() {
            if i > 0 {
                sql.push_str(" INTERSECT ");
            }
            let p = params.len() + 1;
            sql.push_str(&format!(
                "SELECT id FROM search_index WHERE rtype = $1 AND param = ${p} AND token = ANY(${}::BYTEA[])",
                p + 1
            ));
            params.push(&clause.param);
            params.push(&clause.tokens);
        }
        let client = self.client().await?;
        let rows = client.query(&sql, &params).await.map_err(|e| map_err(&e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
