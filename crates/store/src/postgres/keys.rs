//! Data keys: insertion, re-wrapping, rotation, re-sealing, crypto-shredding and its approvals.

use deadpool_postgres::Transaction;

use super::{PostgresStore, TxError, data_key_row, exec, resource_row, run, u32_of, u64_of};
use crate::dispatch::LiveKeyInsert;
use crate::rows::RESOURCE_COLUMNS;
use crate::statements;
use crate::{DataKeyRow, DataRotationProgress, ResourceRow, ShredApprovalRow, StoreError, WriteOp};

/// Every data key (all generations) whose compartment names the patient compartment `$1`: its
/// own, and those of resources naming several patients (`Patient/a Patient/b`).
const DATA_KEYS_NAMING: &str = "SELECT id FROM data_key WHERE compartment = $1
    OR position(' ' || $1 || ' ' in ' ' || compartment || ' ') > 0";

/// The data-key operations of [`super::write::apply`].
pub(super) async fn apply_key_op(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    if let Some(key) = op.live_key_insert() {
        return insert_live_key(tx, &key).await;
    }
    if let Some(rotation) = op.key_rotation() {
        check_wrap_floor(tx, rotation.kek_version).await?;
        // The update waits for writers holding the old key row (`FOR SHARE` in
        // `put_resource`): once it commits, no new version can reference the old key.
        if run(tx, &statements::retire_rotated_key(&rotation)).await? == 1 {
            run(tx, &statements::insert_rotated_key(&rotation)).await?;
        }
        return Ok(());
    }
    match op {
        WriteOp::MarkDataKeysForRotation { compartment_prefix } => {
            exec(
                tx,
                "UPDATE data_key SET state = 'rotate'
                 WHERE state = 'active' AND left(compartment, length($1)) = $1",
                &[compartment_prefix],
            )
            .await?;
        }
        WriteOp::ResealResourceVersion { dek_id, .. } => {
            check_dek_usable(tx, *dek_id).await?;
            run(tx, &statements::reseal_resource_version(op)?).await?;
        }
        WriteOp::DropRetiredDataKey { id } => {
            let id = i64::try_from(*id).unwrap_or(i64::MAX);
            // Lock the row first: a writer that checked it before it became retiring has
            // committed by then, and the next statement's snapshot sees its version.
            let locked = tx
                .query_opt(
                    "SELECT id FROM data_key WHERE id = $1 AND state = 'retiring' FOR UPDATE",
                    &[&id],
                )
                .await?;
            if locked.is_some() {
                exec(
                    tx,
                    "DELETE FROM data_key WHERE id = $1 AND state = 'retiring'
                     AND NOT EXISTS (SELECT 1 FROM resource_version WHERE dek_id = $1)",
                    &[&id],
                )
                .await?;
            }
        }
        WriteOp::RewrapDataKey { kek_version, .. } => {
            check_wrap_floor(tx, *kek_version).await?;
            run(tx, &statements::rewrap_data_key(op)?).await?;
        }
        other => return Err(crate::dispatch::misrouted(other).into()),
    }
    Ok(())
}

/// The crypto-shred operations of [`super::write::apply`].
pub(super) async fn apply_shred_op(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    match op {
        WriteOp::ShredCompartment {
            compartment,
            data_key_id,
        } => {
            // Every generation of the compartment's key (a rotation may have left an old one),
            // and the recorded key even if its row is gone already.
            // The keys of resources naming several patients, this one among them, go too.
            let mut keys: Vec<i64> = tx
                .query(&format!("{DATA_KEYS_NAMING} FOR UPDATE"), &[compartment])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let recorded = i64::try_from(*data_key_id).unwrap_or(i64::MAX);
            if !keys.contains(&recorded) {
                keys.push(recorded);
            }
            for dek in &keys {
                // Resources whose current version is sealed under this key lose their current
                // pointer and index rows; one that moved to another compartment keeps its later
                // versions.
                for sql in [
                "DELETE FROM search_index s USING resource_current c, resource_version v
                 WHERE s.rtype = c.rtype AND s.id = c.id
                   AND v.rtype = c.rtype AND v.id = c.id AND v.version = c.version AND v.dek_id = $1",
                "DELETE FROM resource_current c USING resource_version v
                 WHERE v.rtype = c.rtype AND v.id = c.id AND v.version = c.version AND v.dek_id = $1",
                "DELETE FROM resource_version WHERE dek_id = $1",
            ] {
                exec(tx, sql, &[dek]).await?;
            }
            }
            exec(tx, "DELETE FROM data_key WHERE id = ANY($1)", &[&keys]).await?;
            exec(
                tx,
                "DELETE FROM compartment_org WHERE compartment = $1",
                &[compartment],
            )
            .await?;
        }
        WriteOp::InsertShredApproval(a) => {
            exec(
                tx,
                "INSERT INTO shred_approval (token_hash, compartment, approver_id, expires_at, used)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &a.token_hash,
                    &a.compartment,
                    &a.approver_id,
                    &a.expires_at,
                    &a.used,
                ],
            )
            .await?;
        }
        WriteOp::ConsumeShredApproval { token_hash } => {
            let n = exec(
                tx,
                "UPDATE shred_approval SET used = TRUE WHERE token_hash = $1 AND NOT used",
                &[token_hash],
            )
            .await?;
            if n != 1 {
                return Err(StoreError::Conflict.into());
            }
        }
        other => return Err(crate::dispatch::misrouted(other).into()),
    }
    Ok(())
}

/// Insert a compartment's live data key, unless it has one already: see [`LiveKeyInsert`]. A
/// concurrent transaction inserting a key for the same compartment holds its entry in
/// `data_key_live`: this insert waits for it, then does nothing if it committed.
async fn insert_live_key(tx: &Transaction<'_>, key: &LiveKeyInsert<'_>) -> Result<(), TxError> {
    check_wrap_floor(tx, key.kek_version).await?;
    let inserted = exec(
        tx,
        "INSERT INTO data_key (id, compartment, wrapped, kek_version, created_at)
         VALUES (coalesce($1, nextval(pg_get_serial_sequence('data_key', 'id'))), $2, $3, $4, $5)
         ON CONFLICT (md5(compartment)) WHERE state <> 'retiring' DO NOTHING",
        &[
            &key.id.map(|id| i64::try_from(id).unwrap_or(i64::MAX)),
            key.compartment,
            key.wrapped,
            &i64::from(key.kek_version),
            &key.created_at,
        ],
    )
    .await?;
    if inserted != 1 && key.id.is_some() {
        // Another write gave the compartment its key first.
        return Err(StoreError::StaleKey.into());
    }
    Ok(())
}

/// [`StoreError::StaleKey`] unless `kek_version` may still wrap new data keys. The floor row is
/// read `FOR SHARE`: raising the floor (before a KEK version is destroyed) waits for this
/// transaction, so the destroy's count of keys under the version sees this key.
pub(super) async fn check_wrap_floor(
    tx: &Transaction<'_>,
    kek_version: u32,
) -> Result<(), TxError> {
    let floor = tx
        .query_opt(
            "SELECT value FROM meta WHERE key = 'kek_wrap_floor' FOR SHARE",
            &[],
        )
        .await?
        .and_then(|r| r.get::<_, String>(0).parse::<u32>().ok())
        .unwrap_or(0);
    if kek_version < floor {
        return Err(StoreError::StaleKey.into());
    }
    Ok(())
}

/// [`StoreError::StaleKey`] unless data key `dek_id` exists and may seal new data. The row
/// stays share-locked until commit, so a rotation that retires the key waits for this
/// transaction, and one that committed first is seen here.
pub(super) async fn check_dek_usable(tx: &Transaction<'_>, dek_id: u64) -> Result<(), TxError> {
    let state: Option<String> = tx
        .query_opt(
            "SELECT state FROM data_key WHERE id = $1 FOR SHARE",
            &[&i64::try_from(dek_id).unwrap_or(i64::MAX)],
        )
        .await?
        .map(|r| r.get(0));
    match state.as_deref() {
        Some(s) if s != crate::DATA_KEY_RETIRING => Ok(()),
        _ => Err(StoreError::StaleKey.into()),
    }
}

impl PostgresStore {
    /// From a block of `data_key_id_seq` values: the sequence never gives them to another node,
    /// nor to a key inserted without an id (a data-key rotation's).
    pub(super) async fn reserve_data_key_id(&self) -> Result<u64, StoreError> {
        let store = self.clone();
        self.ids
            .next(move || {
                let store = store.clone();
                async move {
                    let rows = store
                        .query(
                            "SELECT nextval(pg_get_serial_sequence('data_key', 'id'))
                         FROM generate_series(1, $1::bigint)",
                            &[&i64::from(crate::ids::BLOCK)],
                        )
                        .await?;
                    Ok(rows.iter().map(|r| u64_of(r.get::<_, i64>(0))).collect())
                }
            })
            .await
    }

    pub(super) async fn data_key_by_compartment(
        &self,
        compartment: &str,
    ) -> Result<Option<DataKeyRow>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE md5(compartment) = md5($1) AND compartment = $1 AND state <> 'retiring'",
                &[&compartment],
            )
            .await?
            .map(|r| data_key_row(&r)))
    }

    pub(super) async fn data_keys_naming(&self, patient: &str) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .query(DATA_KEYS_NAMING, &[&patient])
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect())
    }

    pub(super) async fn data_key_by_id(&self, id: u64) -> Result<Option<DataKeyRow>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        Ok(self
            .query_opt(
                "SELECT id, compartment, wrapped, kek_version FROM data_key WHERE id = $1",
                &[&id],
            )
            .await?
            .map(|r| data_key_row(&r)))
    }

    pub(super) async fn data_key_counts(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        Ok(self
            .query(
                "SELECT kek_version, COUNT(*) FROM data_key GROUP BY kek_version ORDER BY kek_version",
                &[],
            )
            .await?
            .iter()
            .map(|r| (u32_of(r.get(0)), u64_of(r.get(1))))
            .collect())
    }

    pub(super) async fn data_keys_not_under(
        &self,
        kek_version: u32,
        limit: u32,
    ) -> Result<Vec<DataKeyRow>, StoreError> {
        Ok(self
            .query(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE kek_version <> $1 ORDER BY id LIMIT $2",
                &[&i64::from(kek_version), &i64::from(limit)],
            )
            .await?
            .iter()
            .map(data_key_row)
            .collect())
    }

    pub(super) async fn data_keys_to_rotate(
        &self,
        limit: u32,
    ) -> Result<Vec<DataKeyRow>, StoreError> {
        Ok(self
            .query(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE state = 'rotate' ORDER BY id LIMIT $1",
                &[&i64::from(limit)],
            )
            .await?
            .iter()
            .map(data_key_row)
            .collect())
    }

    pub(super) async fn versions_under_retiring_keys(
        &self,
        limit: u32,
    ) -> Result<Vec<ResourceRow>, StoreError> {
        Ok(self
            .query(
                &format!(
                    "SELECT {RESOURCE_COLUMNS} FROM data_key d JOIN resource_version v ON v.dek_id = d.id
                     WHERE d.state = 'retiring' ORDER BY v.seq LIMIT $1"
                ),
                &[&i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| resource_row(r, 0))
            .collect())
    }

    pub(super) async fn unused_retiring_keys(&self, limit: u32) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .query(
                "SELECT d.id FROM data_key d WHERE d.state = 'retiring'
                 AND NOT EXISTS (SELECT 1 FROM resource_version v WHERE v.dek_id = d.id)
                 ORDER BY d.id LIMIT $1",
                &[&i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| u64_of(r.get(0)))
            .collect())
    }

    pub(super) async fn data_rotation_progress(&self) -> Result<DataRotationProgress, StoreError> {
        let rows = self
            .query(
                "SELECT
                   (SELECT COUNT(*) FROM data_key WHERE state = 'rotate'),
                   (SELECT COUNT(*) FROM data_key WHERE state = 'retiring'),
                   (SELECT COUNT(*) FROM data_key d JOIN resource_version v ON v.dek_id = d.id
                     WHERE d.state IN ('rotate', 'retiring'))",
                &[],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| DataRotationProgress {
                keys_to_rotate: u64_of(r.get(0)),
                keys_retiring: u64_of(r.get(1)),
                versions_remaining: u64_of(r.get(2)),
            })
            .unwrap_or_default())
    }

    pub(super) async fn shred_approval(
        &self,
        token_hash: &str,
    ) -> Result<Option<ShredApprovalRow>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT token_hash, compartment, approver_id, expires_at, used FROM shred_approval
                 WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?
            .map(|r| ShredApprovalRow {
                token_hash: r.get(0),
                compartment: r.get(1),
                approver_id: r.get(2),
                expires_at: r.get(3),
                used: r.get(4),
            }))
    }
}
