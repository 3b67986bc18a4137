//! Data keys: insertion, re-wrapping, rotation, re-sealing, crypto-shredding and its approvals.

use rusqlite::{Connection, OptionalExtension, params};

use super::index::replace_search_index;
use super::{SqliteStore, exec, map_err, run};
use crate::dispatch::LiveKeyInsert;
use crate::rows::{self, RESOURCE_COLUMNS};
use crate::statements;
use crate::{DataKeyRow, DataRotationProgress, ResourceRow, ShredApprovalRow, StoreError, WriteOp};

/// The data-key operations of [`super::write::apply`].
pub(super) fn apply_key_op(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    if let Some(key) = op.live_key_insert() {
        return insert_live_key(conn, &key);
    }
    if let Some(rotation) = op.key_rotation() {
        check_wrap_floor(conn, rotation.kek_version)?;
        if run(conn, &statements::retire_rotated_key(&rotation))? == 1 {
            run(conn, &statements::insert_rotated_key(&rotation))?;
        }
        return Ok(());
    }
    match op {
        WriteOp::MarkDataKeysForRotation { compartment_prefix } => {
            exec(
                conn,
                "UPDATE data_key SET state = 'rotate'
                 WHERE state = 'active' AND substr(compartment, 1, length(?1)) = ?1",
                &[compartment_prefix],
            )?;
        }
        WriteOp::ResealResourceVersion { dek_id, .. } => {
            check_dek_usable(conn, *dek_id)?;
            run(conn, &statements::reseal_resource_version(op)?)?;
        }
        WriteOp::DropRetiredDataKey { id } => {
            exec(
                conn,
                "DELETE FROM data_key WHERE id = ?1 AND state = 'retiring'
                 AND NOT EXISTS (SELECT 1 FROM resource_version WHERE dek_id = ?1)",
                &[&(*id as i64)],
            )?;
        }
        WriteOp::RewrapDataKey { kek_version, .. } => {
            check_wrap_floor(conn, *kek_version)?;
            run(conn, &statements::rewrap_data_key(op)?)?;
        }
        other => return Err(crate::dispatch::misrouted(other)),
    }
    Ok(())
}

/// Insert a compartment's live data key, unless it has one already: see [`LiveKeyInsert`].
fn insert_live_key(conn: &Connection, key: &LiveKeyInsert<'_>) -> Result<(), StoreError> {
    check_wrap_floor(conn, key.kek_version)?;
    // A NULL id is chosen by AUTOINCREMENT (past every reserved block).
    let inserted = exec(
        conn,
        "INSERT INTO data_key (id, compartment, wrapped, kek_version, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (compartment) WHERE state <> 'retiring' DO NOTHING",
        &[
            &key.id.map(|id| id as i64),
            key.compartment,
            key.wrapped,
            &key.kek_version,
            &key.created_at,
        ],
    )?;
    if inserted != 1 && key.id.is_some() {
        // Another write gave the compartment its key first.
        return Err(StoreError::StaleKey);
    }
    Ok(())
}

/// The crypto-shred operations of [`super::write::apply`].
pub(super) fn apply_shred_op(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::ShredCompartment {
            compartment,
            data_key_id,
        } => shred_compartment(conn, compartment, *data_key_id as i64)?,
        WriteOp::InsertShredApproval(a) => {
            exec(
                conn,
                "INSERT INTO shred_approval (token_hash, compartment, approver_id, expires_at, used)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    &a.token_hash,
                    &a.compartment,
                    &a.approver_id,
                    &a.expires_at,
                    &a.used,
                ],
            )?;
        }
        WriteOp::ConsumeShredApproval { token_hash } => {
            if exec(
                conn,
                "UPDATE shred_approval SET used = 1 WHERE token_hash = ?1 AND used = 0",
                &[token_hash],
            )? != 1
            {
                return Err(StoreError::Conflict);
            }
        }
        other => return Err(crate::dispatch::misrouted(other)),
    }
    Ok(())
}

/// [`StoreError::StaleKey`] unless `kek_version` may still wrap new data keys.
pub(super) fn check_wrap_floor(conn: &Connection, kek_version: u32) -> Result<(), StoreError> {
    let floor: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'kek_wrap_floor'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map_err(map_err)?;
    let floor: u32 = floor.and_then(|f| f.parse().ok()).unwrap_or(0);
    if kek_version < floor {
        return Err(StoreError::StaleKey);
    }
    Ok(())
}

/// [`StoreError::StaleKey`] unless data key `dek_id` exists and may seal new data (it is not
/// retiring). The writer is the only writer, so nothing changes between this and the insert.
pub(super) fn check_dek_usable(conn: &Connection, dek_id: u64) -> Result<(), StoreError> {
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM data_key WHERE id = ?1")
        .and_then(|mut s| s.query_row([dek_id as i64], |r| r.get(0)).optional())
        .map_err(map_err)?;
    match state.as_deref() {
        Some(s) if s != crate::DATA_KEY_RETIRING => Ok(()),
        _ => Err(StoreError::StaleKey),
    }
}

pub(super) fn shred_compartment(
    conn: &Connection,
    compartment: &str,
    dek: i64,
) -> Result<(), StoreError> {
    // Every generation of the compartment's key (a rotation may have left an old one), and the
    // recorded key even if its row is gone already.
    // The keys of resources naming several patients, this one among them, go too.
    let mut keys = data_keys_naming(conn, compartment).map_err(map_err)?;
    if !keys.contains(&dek) {
        keys.push(dek);
    }
    for dek in keys {
        shred_key(conn, dek)?;
        conn.prepare_cached("DELETE FROM data_key WHERE id = ?1")
            .and_then(|mut s| s.execute([dek]))
            .map_err(map_err)?;
    }
    conn.prepare_cached("DELETE FROM compartment_org WHERE compartment = ?1")
        .and_then(|mut s| s.execute([compartment]))
        .map_err(map_err)?;
    Ok(())
}

/// Every data key (all generations) whose compartment names the patient compartment `patient`:
/// its own, and those of resources naming several patients (`Patient/a Patient/b`).
pub(super) fn data_keys_naming(conn: &Connection, patient: &str) -> rusqlite::Result<Vec<i64>> {
    conn.prepare_cached(
        "SELECT id FROM data_key WHERE compartment = ?1
            OR instr(' ' || compartment || ' ', ' ' || ?1 || ' ') > 0",
    )?
    .query_map([patient], |r| r.get(0))?
    .collect()
}

pub(super) fn shred_key(conn: &Connection, dek: i64) -> Result<(), StoreError> {
    // Resources whose current version is sealed under this key lose their current pointer and
    // index rows; a resource that moved to another compartment keeps its later versions.
    let current: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT c.rtype, c.id FROM resource_current c JOIN resource_version v
             ON c.rtype = v.rtype AND c.id = v.id AND c.version = v.version AND c.seq = v.seq
             WHERE v.dek_id = ?1",
        )
        .and_then(|mut s| {
            s.query_map([dek], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(map_err)?;
    for (rtype, id) in &current {
        replace_search_index(conn, rtype, id, &[])?;
        conn.prepare_cached("DELETE FROM resource_current WHERE rtype = ?1 AND id = ?2")
            .and_then(|mut s| s.execute(params![rtype, id]))
            .map_err(map_err)?;
    }
    conn.prepare_cached("DELETE FROM resource_version WHERE dek_id = ?1")
        .and_then(|mut s| s.execute([dek]))
        .map_err(map_err)?;
    Ok(())
}

/// Reserve `n` data key ids: advance the table's `AUTOINCREMENT` counter past them in a
/// transaction of its own, so that neither this store's writer (which names ids itself from
/// the pool) nor another process's `AUTOINCREMENT` insert can take them.
fn reserve_data_key_ids(conn: &Connection, n: u32) -> rusqlite::Result<Vec<u64>> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let reserved = (|| {
        // The counter's row appears with the table's first insert; a new database may not have it.
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'data_key', 0
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'data_key')",
            [],
        )?;
        conn.execute(
            "UPDATE sqlite_sequence
             SET seq = max(seq, (SELECT coalesce(max(id), 0) FROM data_key)) + ?1
             WHERE name = 'data_key'",
            [n],
        )?;
        conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'data_key'",
            [],
            |r| r.get::<_, i64>(0),
        )
    })();
    match reserved.and_then(|end| conn.execute_batch("COMMIT").map(|()| end)) {
        Ok(end) => Ok((end - i64::from(n) + 1..=end).map(|id| id as u64).collect()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

impl SqliteStore {
    pub(super) async fn reserve_data_key_id(&self) -> Result<u64, StoreError> {
        let store = self.clone();
        self.inner
            .ids
            .next(move || {
                let store = store.clone();
                async move {
                    store
                        .write_aside(|c| reserve_data_key_ids(c, crate::ids::SQLITE_BLOCK))
                        .await
                }
            })
            .await
    }

    pub(super) async fn data_key_by_compartment(
        &self,
        compartment: &str,
    ) -> Result<Option<DataKeyRow>, StoreError> {
        let compartment = compartment.to_owned();
        self.point(move |c| {
            c.prepare_cached(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE compartment = ?1 AND state <> 'retiring'",
            )?
            .query_row([compartment], |r| rows::data_key_row(r))
            .optional()
        })
        .await
    }

    pub(super) async fn data_keys_naming(&self, patient: &str) -> Result<Vec<u64>, StoreError> {
        let patient = patient.to_owned();
        self.read(move |c| data_keys_naming(c, &patient))
            .await
            .map(|ids| ids.into_iter().map(|id| id as u64).collect())
    }

    pub(super) async fn data_key_by_id(&self, id: u64) -> Result<Option<DataKeyRow>, StoreError> {
        self.point(move |c| {
            c.prepare_cached(
                "SELECT id, compartment, wrapped, kek_version FROM data_key WHERE id = ?1",
            )?
            .query_row([id as i64], |r| rows::data_key_row(r))
            .optional()
        })
        .await
    }

    pub(super) async fn data_key_counts(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT kek_version, COUNT(*) FROM data_key GROUP BY kek_version ORDER BY kek_version",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn data_keys_not_under(
        &self,
        kek_version: u32,
        limit: u32,
    ) -> Result<Vec<DataKeyRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE kek_version <> ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![kek_version, limit], |r| rows::data_key_row(r))?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn data_keys_to_rotate(
        &self,
        limit: u32,
    ) -> Result<Vec<DataKeyRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE state = 'rotate' ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| rows::data_key_row(r))?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn versions_under_retiring_keys(
        &self,
        limit: u32,
    ) -> Result<Vec<ResourceRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RESOURCE_COLUMNS} FROM data_key d JOIN resource_version v ON v.dek_id = d.id
                 WHERE d.state = 'retiring' ORDER BY v.seq LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit], |r| rows::resource_row(r, 0))?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn unused_retiring_keys(&self, limit: u32) -> Result<Vec<u64>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.id FROM data_key d WHERE d.state = 'retiring'
                 AND NOT EXISTS (SELECT 1 FROM resource_version v WHERE v.dek_id = d.id)
                 ORDER BY d.id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| Ok(r.get::<_, i64>(0)? as u64))?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn data_rotation_progress(&self) -> Result<DataRotationProgress, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT
                   (SELECT COUNT(*) FROM data_key WHERE state = 'rotate'),
                   (SELECT COUNT(*) FROM data_key WHERE state = 'retiring'),
                   (SELECT COUNT(*) FROM data_key d JOIN resource_version v ON v.dek_id = d.id
                     WHERE d.state IN ('rotate', 'retiring'))",
            )?
            .query_row([], |r| {
                Ok(DataRotationProgress {
                    keys_to_rotate: r.get::<_, i64>(0)? as u64,
                    keys_retiring: r.get::<_, i64>(1)? as u64,
                    versions_remaining: r.get::<_, i64>(2)? as u64,
                })
            })
        })
        .await
    }

    pub(super) async fn shred_approval(
        &self,
        token_hash: &str,
    ) -> Result<Option<ShredApprovalRow>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.point(move |c| {
            c.prepare_cached(
                "SELECT token_hash, compartment, approver_id, expires_at, used FROM shred_approval
                 WHERE token_hash = ?1",
            )?
            .query_row([token_hash], |r| {
                Ok(ShredApprovalRow {
                    token_hash: r.get(0)?,
                    compartment: r.get(1)?,
                    approver_id: r.get(2)?,
                    expires_at: r.get(3)?,
                    used: r.get(4)?,
                })
            })
            .optional()
        })
        .await
    }
}
