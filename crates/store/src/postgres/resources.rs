//! Resource versions and their current pointers.

use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;

use super::keys::check_dek_usable;
use super::{PostgresStore, TxError, exec, history_entry, resource_row};
use crate::rows::RESOURCE_COLUMNS;
use crate::{HistoryEntry, HistoryQuery, NewResourceVersion, ResourceRow, StoreError, WriteOp};

pub(super) async fn apply_resource_op(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    match op {
        WriteOp::PutResource(new) => put_resource(tx, new).await,
        other => Err(crate::dispatch::misrouted(other).into()),
    }
}

pub(super) async fn put_resource(
    tx: &Transaction<'_>,
    new: &NewResourceVersion,
) -> Result<(), TxError> {
    let row = &new.row;
    check_dek_usable(tx, row.dek_id).await?;
    let version = i64::from(row.version);
    // The pointer moves first and only if it is where the caller saw it: of two concurrent
    // writers (on any nodes), the second waits for the first's row lock, then finds the
    // version changed and touches nothing.
    let moved =
        match new.expected_current {
            None => exec(
                tx,
                "INSERT INTO resource_current (rtype, id, version, deleted) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (rtype, id) DO NOTHING",
                &[&row.rtype, &row.id, &version, &row.deleted],
            )
            .await?,
            Some(expected) => {
                exec(
                    tx,
                    "UPDATE resource_current SET version = $3, deleted = $4
                 WHERE rtype = $1 AND id = $2 AND version = $5",
                    &[
                        &row.rtype,
                        &row.id,
                        &version,
                        &row.deleted,
                        &i64::from(expected),
                    ],
                )
                .await?
            }
        };
    if moved != 1 {
        return Err(StoreError::Conflict.into());
    }
    exec(
        tx,
        "INSERT INTO resource_version (rtype, id, version, last_updated_us, deleted, dek_id, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &row.rtype,
            &row.id,
            &version,
            &row.last_updated_us,
            &row.deleted,
            &i64::try_from(row.dek_id).unwrap_or(i64::MAX),
            &row.body,
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
    pub(super) async fn resource_current(
        &self,
        rtype: &str,
        id: &str,
    ) -> Result<Option<ResourceRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!(
                    "SELECT {RESOURCE_COLUMNS} FROM resource_current c JOIN resource_version v
                     ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
                     WHERE c.rtype = $1 AND c.id = $2"
                ),
                &[&rtype, &id],
            )
            .await?
            .map(|r| resource_row(&r, 0)))
    }

    pub(super) async fn resource_version(
        &self,
        rtype: &str,
        id: &str,
        version: u32,
    ) -> Result<Option<ResourceRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!(
                    "SELECT {RESOURCE_COLUMNS} FROM resource_version v
                     WHERE v.rtype = $1 AND v.id = $2 AND v.version = $3"
                ),
                &[&rtype, &id, &i64::from(version)],
            )
            .await?
            .map(|r| resource_row(&r, 0)))
    }

    pub(super) async fn history(&self, q: HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = self
            .query(
                &format!(
                    // A plain range on the cursor (as in SQLite): a generic plan can then start
                    // the scan there instead of at the newest version.
                    "SELECT v.seq, {RESOURCE_COLUMNS} FROM resource_version v
                     WHERE v.seq < $4 AND ($1::TEXT IS NULL OR v.rtype = $1)
                       AND ($2::TEXT IS NULL OR v.id = $2)
                       AND ($3::BIGINT IS NULL OR v.last_updated_us >= $3)
                     ORDER BY v.seq DESC LIMIT $5"
                ),
                &[
                    &q.rtype,
                    &q.id,
                    &q.since_us,
                    &q.before_seq.unwrap_or(i64::MAX),
                    &i64::from(q.limit),
                ],
            )
            .await?;
        Ok(rows.iter().map(history_entry).collect())
    }

    pub(super) async fn versions_after(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT v.seq, {RESOURCE_COLUMNS} FROM resource_version v
                     WHERE v.seq > $1 ORDER BY v.seq LIMIT $2"
                ),
                &[&after_seq, &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(history_entry).collect())
    }

    pub(super) async fn resources_current(
        &self,
        rtype: &str,
        ids: Vec<String>,
    ) -> Result<Vec<ResourceRow>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let rows = self
                .query(
                    &format!(
                        "SELECT {RESOURCE_COLUMNS} FROM resource_current c JOIN resource_version v
                         ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
                         WHERE c.rtype = $1 AND c.id = ANY($2::TEXT[])"
                    ),
                    &[&rtype, &chunk],
                )
                .await?;
            out.extend(rows.iter().map(|r| resource_row(r, 0)));
        }
        Ok(out)
    }

    pub(super) async fn current_under_keys(
        &self,
        dek_ids: Vec<u64>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let ids: Vec<i64> = dek_ids
            .into_iter()
            .map(|id| i64::try_from(id).unwrap_or(i64::MAX))
            .collect();
        Ok(self
            .query(
                "SELECT c.rtype, c.id FROM resource_version v JOIN resource_current c
                   ON c.rtype = v.rtype AND c.id = v.id AND c.version = v.version
                 WHERE v.dek_id = ANY($1) AND NOT c.deleted
                 ORDER BY c.rtype, c.id",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    pub(super) async fn resource_ids(&self, rtype: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query(
                "SELECT id FROM resource_current WHERE rtype = $1 AND NOT deleted",
                &[&rtype],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}
