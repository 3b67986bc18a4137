//! The embedded SQLite backend: WAL mode, `synchronous=FULL`, one writer thread with group
//! commit, and a small pool of read connections used from blocking tasks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};

use carevault_audit::{Checkpoint, StoredEvent, chain_hash};

use crate::{
    ApiKeyRow, AuditQuery, BreakGlassRow, CredentialRow, DataKeyRow, DataRotationProgress,
    EnrollmentRow, HistoryEntry, HistoryQuery, IndexClause, NewAuditEvent, NewResourceVersion,
    PolicyRow, PrincipalRow, ResourceRow, SessionRow, ShredApprovalRow, Store, StoreError, WriteOp,
};

/// Migrations, in order (`migrations/sqlite/NNNN_*.sql`); `PRAGMA user_version` records how many
/// ran.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0001_initial.sql"
    )),
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0002_audit.sql"
    )),
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0003_access.sql"
    )),
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0004_search_index.sql"
    )),
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0005_shred.sql"
    )),
    // Data-key rotation: a compartment may have an old (retiring) key beside its live one, so
    // the compartment is unique among live keys only. The table is rebuilt (SQLite cannot drop
    // a UNIQUE constraint) keeping its AUTOINCREMENT counter: ids of shredded keys are never
    // reused. The KEK wrap floor starts at v1.
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0006_data_key_rotation.sql"
    )),
    // Blind-index rows ordered by write order within a token (`ord`: the newest resource-version
    // sequence number when the row was written) instead of by resource id. Ids are random UUIDs,
    // so keyed by id every insert landed on a random leaf of a many-leaf token range (a LOINC
    // code or a year has hundreds of thousands of rows): ~20 random pages per resource to read,
    // dirty, log and checkpoint. Keyed by `ord` the rows of a common token append to its last
    // leaf. Rows written before this migration keep `ord` 0: order never decides a result.
    // No ORDER BY: a scan of the old table already yields its key order. About 70 s for 9.4
    // million rows on a 2-core VM (measured on the 10,000-patient benchmark data).
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0007_search_index_ord.sql"
    )),
    // The current pointer names its version's row (`seq`, the rowid): a read follows it
    // directly instead of a second descent through the `(rtype, id, version)` index, one random
    // page fewer per read and per search candidate. Reads still require the row's type, id and
    // version to agree with the pointer (a pointer edited in the file cannot substitute another
    // resource's row).
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0008_current_seq.sql"
    )),
    // A resource's blind-index rows are listed in one `search_keys` row (see [`IndexKeys`])
    // instead of found through a second index on `search_index (rtype, id)`: that index held a
    // copy of every row (about 20 per Observation), so each write inserted twice the entries.
    // An update or delete reads the list and deletes by primary key. `_id` rows go: the
    // server answers `_id` by id (their random tokens put every write on a random leaf).
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0009_search_keys.sql"
    )),
    // An audit event's patients are keyed by the event first (`node, seq, patient`), not by
    // the patient: events arrive in sequence order, so their rows now append to the last leaf
    // instead of landing on a random one (a page to dirty, log and checkpoint per audited read;
    // reads use about a quarter less server CPU without it). The audit search asks "does this
    // event name patient X" for each event it walks in time order, a point lookup either key
    // order answers.
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/0010_audit_patient_by_event.sql"
    )),
];

/// The schema version this binary writes (`PRAGMA user_version` after every migration).
pub const SQLITE_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Most ids one `IN (...)` list binds (a power of two; SQLite allows far more parameters).
const MAX_IN_LIST: usize = 512;
/// Most operations one group-commit transaction takes before it commits.
const MAX_BATCH: usize = 512;
/// Reads that may scan (search, history, audit queries) run on the blocking pool, at most this
/// many at once; more wait for a connection rather than open throwaway ones.
const READ_SCANS: usize = 8;
/// Reader connections kept open: one per concurrent scan, plus point reads on the runtime's
/// threads.
const READERS_KEPT: usize = READ_SCANS + 4;

/// SQLite in one file. Cheap to clone; all clones share the writer thread and reader pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// How reader connections are opened.
    mode: Mode,
    readers: Mutex<Vec<Connection>>,
    /// Bounds concurrent scans, so that a burst of them waits for a pooled connection instead
    /// of opening (and parsing the schema into) throwaway ones.
    read_permits: tokio::sync::Semaphore,
    writer: mpsc::UnboundedSender<WriteJob>,
    /// Dropped with the store, which ends the checkpointer thread.
    _checkpointer: Option<std::sync::mpsc::Sender<()>>,
}

struct WriteJob {
    ops: Vec<WriteOp>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path`, run migrations, start the writer.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_wal_limit(path, WAL_RESET_BYTES)
    }

    /// [`SqliteStore::open`], resetting the WAL past `wal_limit` bytes instead of the default.
    pub fn open_with_wal_limit(path: &Path, wal_limit: u64) -> Result<Self, StoreError> {
        let conn = open_connection(path, Mode::Create)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        migrate(&conn)?;
        // Checkpoints move WAL pages into the database file. SQLite's automatic checkpoint runs
        // inside a commit, on the writer thread, stalling every queued request; a PASSIVE
        // checkpoint from another connection runs beside the writer instead.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(map_err)?;
        // After a reset the log is written again from its start, over blocks the file already
        // has; SQLite trims the file back to this size on the first commit after a reset.
        conn.pragma_update(None, "journal_size_limit", wal_limit as i64)
            .map_err(map_err)?;
        let checkpointer = open_connection(path, Mode::ReadWrite)?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &stop_rx))
            .map_err(|e| StoreError::Backend(format!("cannot start checkpoint thread: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, wal, wal_limit))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                mode: Mode::ReadWrite,
                readers: Mutex::new(Vec::new()),
                read_permits: tokio::sync::Semaphore::new(READ_SCANS),
                writer: tx,
                _checkpointer: Some(stop_tx),
            }),
        })
    }

    /// Open an existing database for reading only (offline audit verification, export):
    /// no migration, no writer; every write answers [`StoreError::Unavailable`].
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let conn = open_connection(path, Mode::ReadOnly)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(map_err)?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StoreError::TooNew {
                found: version,
                supported: MIGRATIONS.len() as i64,
            });
        }
        let (tx, _) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                mode: Mode::ReadOnly,
                readers: Mutex::new(vec![conn]),
                read_permits: tokio::sync::Semaphore::new(READ_SCANS),
                writer: tx,
                _checkpointer: None,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A point read (a few B-tree lookups, mostly on cached pages) on the calling thread.
    /// Handing it to the blocking pool cost two thread switches per read, more than the read
    /// itself (perf: scheduler and wake-ups were the top of the read workload's profile).
    /// Scans and anything that may touch many rows go through [`SqliteStore::read`].
    async fn point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T>,
    {
        let pooled = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.inner.path, self.inner.mode)?,
        };
        let result = f(&conn).map_err(map_err);
        let mut pool = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READERS_KEPT {
            pool.push(conn);
        }
        result
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
            {
                Some(conn) => conn,
                None => open_connection(&inner.path, inner.mode)?,
            };
            let result = f(&conn).map_err(map_err);
            let mut pool = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < READERS_KEPT {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    ReadWrite,
    ReadOnly,
}

fn open_connection(path: &Path, mode: Mode) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    flags |= match mode {
        Mode::Create => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        Mode::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
        Mode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(map_err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Without the query-planner stability guarantee, SQLite 3.54 marks a cached statement with
    // an `x = ?` filter to be re-planned whenever a new value is bound, so the "prepared once"
    // statements were parsed again on nearly every use (9% of server CPU under import, perf).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(map_err)?;
    // Page caches: SQLite's default (2 MiB) makes index lookups of a large database go to the
    // OS for most pages, and makes the writer spill a group commit's dirty pages early. The
    // writer keeps 32 MiB, each pooled reader 4 MiB (at most `READERS_KEPT`): bounded memory.
    // Savepoint journals (one per job in a group commit) stay in memory.
    let cache_kib = if mode == Mode::Create {
        32 * 1024
    } else {
        4 * 1024
    };
    conn.execute_batch(&format!(
        "PRAGMA cache_size = -{cache_kib}; PRAGMA temp_store = MEMORY;"
    ))
    .map_err(map_err)?;
    if mode == Mode::ReadOnly {
        return Ok(conn);
    }
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;",
    )
    .map_err(map_err)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(map_err)?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::TooNew {
            found: current,
            supported,
        });
    }
    // An upgrade that rebuilds a table builds its indexes with SQLite's sorter, which keeps
    // its runs in temporary files; with `temp_store = MEMORY` those lived in (locked) heap:
    // 1.5 GiB of peak RSS for a 10-million-row index, never given back. Sort on disk here.
    if current < supported {
        conn.execute_batch("PRAGMA temp_store = FILE")
            .map_err(map_err)?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        // An upgrade may rebuild a large table: say so before the wait, not after.
        let started = std::time::Instant::now();
        if current > 0 {
            tracing::info!(
                event = "schema_upgrade",
                to_version = i + 1,
                "upgrading the database schema (a large database can take minutes)"
            );
        }
        let tx = conn.unchecked_transaction().map_err(map_err)?;
        tx.execute_batch(sql).map_err(map_err)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(map_err)?;
        tx.commit().map_err(map_err)?;
        if current > 0 {
            tracing::info!(
                event = "schema_upgraded",
                to_version = i + 1,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "database schema upgraded"
            );
        }
    }
    conn.execute_batch("PRAGMA temp_store = MEMORY")
        .map_err(map_err)?;
    Ok(())
}

fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => StoreError::AlreadyExists,
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::OutOfMemory => StoreError::Unavailable(format!("{:?}", f.code)),
            _ => StoreError::Backend(format!("{:?}", f.code)),
        },
        _ => StoreError::Backend(e.to_string()),
    }
}

fn session_row(c: &Connection, token_hash: &str) -> rusqlite::Result<Option<SessionRow>> {
    c.prepare_cached(
        "SELECT token_hash, principal_id, created_at, last_seen, revoked FROM session WHERE token_hash = ?1",
    )?
    .query_row([token_hash], |r| {
        Ok(SessionRow {
            token_hash: r.get(0)?,
            principal_id: r.get(1)?,
            created_at: r.get(2)?,
            last_seen: r.get(3)?,
            revoked: r.get(4)?,
        })
    })
    .optional()
}

/// How often the checkpointer looks at the WAL.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Copy committed WAL pages into the database file while the writer goes on (PASSIVE: never
/// waits for readers or the writer), and a last full checkpoint when the store closes.
fn checkpoint_loop(conn: &Connection, stop: &std::sync::mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(CHECKPOINT_INTERVAL) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(event = "wal_checkpoint_failed", error = %e, "WAL checkpoint failed");
                }
            }
            _ => {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                return;
            }
        }
    }
}

/// The WAL is reset (checkpointed to its end and written again from its start) by the writer
/// once it grows past this. The PASSIVE checkpointer copies pages beside the writer, but the log
/// only starts over when a checkpoint has caught up at the moment a write begins, which a steady
/// stream of group commits never allows: under a long import the WAL grew to 17 times the
/// database (44 GB).
const WAL_RESET_BYTES: u64 = 256 * 1024 * 1024;
/// How often the writer looks at the WAL's size.
const WAL_CHECK_EVERY: Duration = Duration::from_millis(500);

/// The single writer: takes every queued job, applies them in one transaction (a failed job
/// rolls back alone: see [`commit_batch`]), commits once, then answers every job. Between
/// batches it keeps the WAL under `wal_limit` bytes.
fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::UnboundedReceiver<WriteJob>,
    wal: PathBuf,
    wal_limit: u64,
) {
    let mut last_check = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut conn, &batch);
        for (job, result) in batch.into_iter().zip(results) {
            // A caller that went away (request cancelled) does not need its answer.
            let _ = job.reply.send(result);
        }
        if last_check.elapsed() >= WAL_CHECK_EVERY {
            last_check = std::time::Instant::now();
            let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
            if size > wal_limit {
                reset_wal(&conn);
            }
        }
    }
}

/// Checkpoint the whole WAL so that the next commit writes it again from the start. Runs on
/// the writer, so no commit appends to the log meanwhile; it waits (busy timeout) for readers
/// of older snapshots to finish, and most pages were already copied by the PASSIVE
/// checkpointer. A busy answer leaves it for the next check.
///
/// RESTART, not TRUNCATE: a truncated log is rebuilt by appending, and every appended frame
/// made the file system allocate and zero new blocks (`ext4_da_write_begin`, `memset`: a tenth
/// of the server's time during an import); a restarted log overwrites blocks it already has.
fn reset_wal(conn: &Connection) {
    match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
        Ok(0) => tracing::debug!(event = "wal_reset"),
        Ok(_) => tracing::debug!(event = "wal_reset_busy"),
        Err(e) => {
            tracing::warn!(event = "wal_reset_failed", error = %map_err(e), "WAL reset failed");
        }
    }
}

/// Apply a batch in one transaction and commit it. Each job must succeed or fail alone, which a
/// savepoint per job gives; but a savepoint copies every page its job first touches into the
/// statement journal (a tenth of the writer's time under import, `subjournalPage`), and nearly
/// every batch has no failing job. So the batch is applied without savepoints first; if a job
/// fails, that transaction is rolled back and the batch applied again with one savepoint per
/// job.
fn commit_batch(conn: &mut Connection, batch: &[WriteJob]) -> Vec<Result<(), StoreError>> {
    let all = |e: StoreError| batch.iter().map(|_| Err(clone_err(&e))).collect();
    match apply_batch(conn, batch, false) {
        Ok(results) => results,
        // A batch of one needs no second try: its job's error is its answer.
        Err(BatchFailed::Job(e)) if batch.len() == 1 => vec![Err(e)],
        Err(BatchFailed::Job(_)) => apply_batch(conn, batch, true).unwrap_or_else(|failed| {
            all(match failed {
                BatchFailed::Job(e) | BatchFailed::Transaction(e) => e,
            })
        }),
        Err(BatchFailed::Transaction(e)) => all(e),
    }
}

/// Why [`apply_batch`] rolled back everything.
enum BatchFailed {
    /// A job failed (only without savepoints).
    Job(StoreError),
    /// The transaction could not begin or commit.
    Transaction(StoreError),
}

/// One transaction over `batch`, committed. With `savepoints`, a failed job is rolled back alone
/// and reported in its slot; without, the first failure rolls back the whole transaction.
fn apply_batch(
    conn: &mut Connection,
    batch: &[WriteJob],
    savepoints: bool,
) -> Result<Vec<Result<(), StoreError>>, BatchFailed> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| BatchFailed::Transaction(map_err(e)))?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        if !savepoints {
            // Dropping `tx` on the early return rolls the transaction back.
            job.ops
                .iter()
                .try_for_each(|op| apply(&tx, op))
                .map_err(BatchFailed::Job)?;
            results.push(Ok(()));
            continue;
        }
        let outcome = (|| {
            // Prepared once and reused: parsing these two statements for every job was a
            // measurable share of the writer's time.
            let run = |sql: &str| {
                tx.prepare_cached(sql)
                    .and_then(|mut s| s.execute([]))
                    .map_err(map_err)
            };
            run("SAVEPOINT job")?;
            let applied = job.ops.iter().try_for_each(|op| apply(&tx, op));
            match applied {
                Ok(()) => run("RELEASE job").map(|_| ()),
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO job; RELEASE job")
                        .map_err(map_err)?;
                    Err(e)
                }
            }
        })();
        results.push(outcome);
    }
    tx.commit().map_err(|e| {
        let err = map_err(e);
        tracing::error!(event = "store_commit_failed", error = %err, "group commit failed");
        BatchFailed::Transaction(err)
    })?;
    Ok(results)
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict => StoreError::Conflict,
        StoreError::AlreadyExists => StoreError::AlreadyExists,
        StoreError::StaleKey => StoreError::StaleKey,
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::TooNew { found, supported } => StoreError::TooNew {
            found: *found,
            supported: *supported,
        },
        StoreError::Backend(s) => StoreError::Backend(s.clone()),
    }
}

fn apply(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    let exec = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<usize, StoreError> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map_err(map_err)
    };
    match op {
        WriteOp::SetMeta { key, value } => {
            exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[key, value],
            )?;
        }
        WriteOp::PutResource(new) => put_resource(conn, new)?,
        WriteOp::InsertDataKeyIfAbsent {
            compartment,
            wrapped,
            kek_version,
            created_at,
        } => {
            check_wrap_floor(conn, *kek_version)?;
            exec(
                "INSERT INTO data_key (compartment, wrapped, kek_version, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (compartment) WHERE state <> 'retiring' DO NOTHING",
                &[compartment, wrapped, kek_version, created_at],
            )?;
        }
        WriteOp::MarkDataKeysForRotation { compartment_prefix } => {
            exec(
                "UPDATE data_key SET state = 'rotate'
                 WHERE state = 'active' AND substr(compartment, 1, length(?1)) = ?1",
                &[compartment_prefix],
            )?;
        }
        WriteOp::RotateDataKey {
            old_id,
            compartment,
            wrapped,
            kek_version,
            created_at,
        } => {
            check_wrap_floor(conn, *kek_version)?;
            let retired = conn
                .prepare_cached(
                    "UPDATE data_key SET state = 'retiring'
                     WHERE id = ?1 AND compartment = ?2 AND state = 'rotate'",
                )
                .and_then(|mut s| s.execute(params![*old_id as i64, compartment]))
                .map_err(map_err)?;
            if retired == 1 {
                exec(
                    "INSERT INTO data_key (compartment, wrapped, kek_version, created_at) VALUES (?1, ?2, ?3, ?4)",
                    &[compartment, wrapped, kek_version, created_at],
                )?;
            }
        }
        WriteOp::ResealResourceVersion {
            rtype,
            id,
            version,
            from_dek_id,
            dek_id,
            body,
        } => {
            check_dek_usable(conn, *dek_id)?;
            exec(
                "UPDATE resource_version SET dek_id = ?1, body = ?2
                 WHERE rtype = ?3 AND id = ?4 AND version = ?5 AND dek_id = ?6",
                &[
                    &(*dek_id as i64),
                    body,
                    rtype,
                    id,
                    version,
                    &(*from_dek_id as i64),
                ],
            )?;
        }
        WriteOp::DropRetiredDataKey { id } => {
            exec(
                "DELETE FROM data_key WHERE id = ?1 AND state = 'retiring'
                 AND NOT EXISTS (SELECT 1 FROM resource_version WHERE dek_id = ?1)",
                &[&(*id as i64)],
            )?;
        }
        WriteOp::RewrapDataKey {
            id,
            from_kek_version,
            wrapped,
            kek_version,
        } => {
            check_wrap_floor(conn, *kek_version)?;
            exec(
                "UPDATE data_key SET wrapped = ?1, kek_version = ?2 WHERE id = ?3 AND kek_version = ?4",
                &[wrapped, kek_version, &(*id as i64), from_kek_version],
            )?;
        }
        WriteOp::ShredCompartment {
            compartment,
            data_key_id,
        } => shred_compartment(conn, compartment, *data_key_id as i64)?,
        WriteOp::InsertShredApproval(a) => {
            exec(
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
                "UPDATE shred_approval SET used = 1 WHERE token_hash = ?1 AND used = 0",
                &[token_hash],
            )? != 1
            {
                return Err(StoreError::Conflict);
            }
        }
        WriteOp::InsertPrincipal(p) => {
            exec(
                "INSERT INTO principal (id, username, roles, organization, disabled, locked, failed_logins, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                &[
                    &p.id,
                    &p.username,
                    &p.roles.join(","),
                    &p.organization,
                    &p.disabled,
                    &p.locked,
                    &p.failed_logins,
                    &p.created_at,
                ],
            )?;
        }
        WriteOp::UpdatePrincipal {
            principal_id,
            disabled,
            locked,
            failed_logins,
        } => {
            exec(
                "UPDATE principal SET disabled = COALESCE(?2, disabled), locked = COALESCE(?3, locked),
                 failed_logins = COALESCE(?4, failed_logins) WHERE id = ?1",
                &[principal_id, disabled, locked, failed_logins],
            )?;
        }
        WriteOp::RecordLoginFailure {
            principal_id,
            lock_after,
        } => {
            exec(
                "UPDATE principal SET failed_logins = failed_logins + 1,
                 locked = CASE WHEN failed_logins + 1 >= ?2 THEN 1 ELSE locked END WHERE id = ?1",
                &[principal_id, lock_after],
            )?;
        }
        WriteOp::SetCredential(c) => {
            exec(
                "INSERT INTO credential (principal_id, password_hash, totp_secret, totp_last_step, recovery_codes)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (principal_id) DO UPDATE SET password_hash = excluded.password_hash,
                   totp_secret = excluded.totp_secret, totp_last_step = excluded.totp_last_step,
                   recovery_codes = excluded.recovery_codes",
                &[
                    &c.principal_id,
                    &c.password_hash,
                    &c.totp_secret_sealed,
                    &c.totp_last_step,
                    &c.recovery_code_hashes.join(","),
                ],
            )?;
        }
        WriteOp::DeleteCredential { principal_id } => {
            exec(
                "DELETE FROM credential WHERE principal_id = ?1",
                &[principal_id],
            )?;
        }
        WriteOp::AdvanceTotpStep { principal_id, step } => {
            let n = exec(
                "UPDATE credential SET totp_last_step = ?2 WHERE principal_id = ?1 AND totp_last_step < ?2",
                &[principal_id, step],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict);
            }
        }
        WriteOp::ConsumeRecoveryCode {
            principal_id,
            code_hash,
        } => {
            let codes: Option<String> = conn
                .prepare_cached("SELECT recovery_codes FROM credential WHERE principal_id = ?1")
                .and_then(|mut s| s.query_row([principal_id], |r| r.get(0)).optional())
                .map_err(map_err)?;
            let codes = codes.ok_or(StoreError::Conflict)?;
            let mut list: Vec<&str> = split_list(&codes);
            let before = list.len();
            list.retain(|c| *c != code_hash.as_str());
            if list.len() == before {
                return Err(StoreError::Conflict);
            }
            exec(
                "UPDATE credential SET recovery_codes = ?2 WHERE principal_id = ?1",
                &[principal_id, &list.join(",")],
            )?;
        }
        WriteOp::InsertEnrollment(e) => {
            exec(
                "INSERT INTO enrollment (token_hash, principal_id, expires_at, pending_totp) VALUES (?1, ?2, ?3, ?4)",
                &[
                    &e.token_hash,
                    &e.principal_id,
                    &e.expires_at,
                    &e.pending_totp_sealed,
                ],
            )?;
        }
        WriteOp::SetEnrollmentPendingTotp { token_hash, sealed } => {
            let n = exec(
                "UPDATE enrollment SET pending_totp = ?2 WHERE token_hash = ?1",
                &[token_hash, sealed],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict);
            }
        }
        WriteOp::DeleteEnrollments { principal_id } => {
            exec(
                "DELETE FROM enrollment WHERE principal_id = ?1",
                &[principal_id],
            )?;
        }
        WriteOp::InsertSession(s) => {
            exec(
                "INSERT INTO session (token_hash, principal_id, created_at, last_seen, revoked) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    &s.token_hash,
                    &s.principal_id,
                    &s.created_at,
                    &s.last_seen,
                    &s.revoked,
                ],
            )?;
        }
        WriteOp::TouchSession {
            token_hash,
            last_seen,
        } => {
            exec(
                "UPDATE session SET last_seen = MAX(last_seen, ?2) WHERE token_hash = ?1",
                &[token_hash, last_seen],
            )?;
        }
        WriteOp::RevokeSession { token_hash } => {
            exec(
                "UPDATE session SET revoked = 1 WHERE token_hash = ?1",
                &[token_hash],
            )?;
        }
        WriteOp::RevokeSessions { principal_id } => {
            exec(
                "UPDATE session SET revoked = 1 WHERE principal_id = ?1",
                &[principal_id],
            )?;
        }
        WriteOp::AppendAudit(event) => append_audit(conn, event).map_err(|e| {
            // Whatever stopped the audit write, the request must fail closed as unavailable.
            let detail = match e {
                StoreError::Unavailable(d) | StoreError::Backend(d) => d,
                other => other.to_string(),
            };
            StoreError::Unavailable(format!("audit trail not writable: {detail}"))
        })?,
        WriteOp::InsertCheckpoint(cp) => insert_checkpoint(conn, cp)?,
        WriteOp::SetCompartmentOrganization {
            compartment,
            organization,
        } => {
            exec(
                "INSERT INTO compartment_org (compartment, organization) VALUES (?1, ?2)
                 ON CONFLICT (compartment) DO UPDATE SET organization = excluded.organization",
                &[compartment, organization],
            )?;
        }
        WriteOp::InsertApiKey(k) => {
            exec(
                "INSERT INTO api_key (name, key_hash, owner_id, scopes, allowed_cidrs, expires_at, revoked, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                &[
                    &k.name,
                    &k.key_hash,
                    &k.owner_id,
                    &k.scopes.join(" "),
                    &k.allowed_cidrs.join(" "),
                    &k.expires_at,
                    &k.revoked,
                    &k.created_at,
                ],
            )?;
        }
        WriteOp::RevokeApiKey { name } => {
            if exec("UPDATE api_key SET revoked = 1 WHERE name = ?1", &[name])? != 1 {
                return Err(StoreError::Conflict);
            }
        }
        WriteOp::PutPolicy { name, text, at } => {
            exec(
                "INSERT INTO policy (name, text, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
                &[name, text, at],
            )?;
            exec(
                "INSERT INTO policy_history (version, name, text, at)
                 VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM policy_history), ?1, ?2, ?3)",
                &[name, text, at],
            )?;
        }
        WriteOp::DeletePolicy { name, at } => {
            if exec("DELETE FROM policy WHERE name = ?1", &[name])? != 1 {
                return Err(StoreError::Conflict);
            }
            exec(
                "INSERT INTO policy_history (version, name, text, at)
                 VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM policy_history), ?1, NULL, ?2)",
                &[name, at],
            )?;
        }
        WriteOp::ReplaceSearchIndex { rtype, id, tokens } => {
            replace_search_index(conn, rtype, id, tokens)?;
        }
        WriteOp::InsertBreakGlass(b) => {
            exec(
                "INSERT INTO break_glass (principal_id, until, patient, reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    &b.principal_id,
                    &b.until,
                    &b.patient,
                    &b.reason,
                    &b.created_at,
                ],
            )?;
        }
    }
    Ok(())
}

/// [`StoreError::StaleKey`] unless `kek_version` may still wrap new data keys.
fn check_wrap_floor(conn: &Connection, kek_version: u32) -> Result<(), StoreError> {
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
fn check_dek_usable(conn: &Connection, dek_id: u64) -> Result<(), StoreError> {
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM data_key WHERE id = ?1")
        .and_then(|mut s| s.query_row([dek_id as i64], |r| r.get(0)).optional())
        .map_err(map_err)?;
    match state.as_deref() {
        Some(s) if s != crate::DATA_KEY_RETIRING => Ok(()),
        _ => Err(StoreError::StaleKey),
    }
}

fn shred_compartment(conn: &Connection, compartment: &str, dek: i64) -> Result<(), StoreError> {
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
fn data_keys_naming(conn: &Connection, patient: &str) -> rusqlite::Result<Vec<i64>> {
    conn.prepare_cached(
        "SELECT id FROM data_key WHERE compartment = ?1
            OR instr(' ' || compartment || ' ', ' ' || ?1 || ' ') > 0",
    )?
    .query_map([patient], |r| r.get(0))?
    .collect()
}

fn shred_key(conn: &Connection, dek: i64) -> Result<(), StoreError> {
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

fn append_audit(conn: &Connection, e: &NewAuditEvent) -> Result<(), StoreError> {
    let head: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, hash FROM audit_event WHERE node = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row([&e.node], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(map_err)?;
    let (prev_seq, prev_hash) = match head {
        Some((seq, hash)) => (
            seq as u64,
            <[u8; 32]>::try_from(hash.as_slice())
                .map_err(|_| StoreError::Backend("corrupt audit hash".into()))?,
        ),
        None => (0, carevault_audit::GENESIS),
    };
    let seq = prev_seq + 1;
    let hash = chain_hash(&prev_hash, &e.node, seq, e.time_us, &e.body);
    conn.prepare_cached(
        "INSERT INTO audit_event (node, seq, time_us, principal, action, outcome, body, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.node,
            seq as i64,
            e.time_us,
            e.principal,
            e.action,
            e.outcome,
            e.body,
            hash.as_slice()
        ])
    })
    .map_err(map_err)?;
    for patient in &e.patients {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO audit_patient (node, seq, patient) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut s| s.execute(params![e.node, seq as i64, patient]))
        .map_err(map_err)?;
    }
    Ok(())
}

fn insert_checkpoint(conn: &Connection, cp: &Checkpoint) -> Result<(), StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT MAX(last_seq) FROM audit_checkpoint WHERE node = ?1")
        .and_then(|mut s| s.query_row([&cp.node], |r| r.get(0)))
        .map_err(map_err)?;
    if last.unwrap_or(0) as u64 + 1 != cp.first_seq {
        return Err(StoreError::Conflict);
    }
    conn.prepare_cached(
        "INSERT INTO audit_checkpoint (node, first_seq, last_seq, head_hash, time_us, prev_signature, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            cp.node,
            cp.first_seq as i64,
            cp.last_seq as i64,
            cp.head_hash.as_slice(),
            cp.time_us,
            cp.prev_signature,
            cp.signature
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

/// A column's bytes whether it holds a BLOB or (after tampering) TEXT, so that a damaged row
/// reaches the verifier as a breach instead of stopping the read.
fn column_bytes(r: &Row<'_>, idx: usize) -> rusqlite::Result<Vec<u8>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(idx)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
    })
}

fn stored_event(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let hash = column_bytes(r, 4)?;
    Ok(StoredEvent {
        node: r.get(0)?,
        seq: r.get::<_, i64>(1)? as u64,
        time_us: r.get(2)?,
        body: column_bytes(r, 3)?,
        // A damaged hash column still reaches the verifier, which then reports the event.
        hash: <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0u8; 32]),
    })
}

fn checkpoint_row(r: &Row<'_>) -> rusqlite::Result<Checkpoint> {
    let head: Vec<u8> = r.get(3)?;
    Ok(Checkpoint {
        node: r.get(0)?,
        first_seq: r.get::<_, i64>(1)? as u64,
        last_seq: r.get::<_, i64>(2)? as u64,
        head_hash: <[u8; 32]>::try_from(head.as_slice()).unwrap_or([0u8; 32]),
        time_us: r.get(4)?,
        prev_signature: r.get(5)?,
        signature: r.get(6)?,
    })
}

const CHECKPOINT_COLUMNS: &str =
    "node, first_seq, last_seq, head_hash, time_us, prev_signature, signature";

fn put_resource(conn: &Connection, new: &NewResourceVersion) -> Result<(), StoreError> {
    let row = &new.row;
    check_dek_usable(conn, row.dek_id)?;
    let current: Option<u32> = conn
        .prepare_cached("SELECT version FROM resource_current WHERE rtype = ?1 AND id = ?2")
        .and_then(|mut s| {
            s.query_row(params![row.rtype, row.id], |r| r.get(0))
                .optional()
        })
        .map_err(map_err)?;
    if current != new.expected_current {
        return Err(StoreError::Conflict);
    }
    conn.prepare_cached(
        "INSERT INTO resource_version (rtype, id, version, last_updated_us, deleted, dek_id, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            row.rtype,
            row.id,
            row.version,
            row.last_updated_us,
            row.deleted,
            row.dek_id as i64,
            row.body
        ])
    })
    .map_err(|e| match map_err(e) {
        StoreError::AlreadyExists => StoreError::Conflict,
        other => other,
    })?;
    // The row just inserted into resource_version (a rowid table, no triggers).
    let seq = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO resource_current (rtype, id, version, deleted, seq) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (rtype, id) DO UPDATE
         SET version = excluded.version, deleted = excluded.deleted, seq = excluded.seq",
    )
    .and_then(|mut s| s.execute(params![row.rtype, row.id, row.version, row.deleted, seq]))
    .map_err(map_err)?;
    Ok(())
}

/// Replace a resource's blind-index rows, touching only the ones that change: an update keeps
/// most of its keys (code, subject, category), and every row deleted or inserted is a leaf page
/// to read, dirty, log and checkpoint. No tokens: the resource leaves the index.
fn replace_search_index(
    conn: &Connection,
    rtype: &str,
    id: &str,
    tokens: &[(String, Vec<u8>)],
) -> Result<(), StoreError> {
    let listed: Option<String> = conn
        .prepare_cached("SELECT keys FROM search_keys WHERE rtype = ?1 AND id = ?2")
        .and_then(|mut s| s.query_row(params![rtype, id], |r| r.get(0)).optional())
        .map_err(map_err)?;
    let existing = match &listed {
        Some(text) => IndexKeys::parse(text)?,
        None => IndexKeys::default(),
    };
    if tokens
        .iter()
        .any(|(p, _)| p.is_empty() || p.contains([' ', '\n']))
    {
        // The key list separates fields by spaces and rows by newlines (see [`IndexKeys`]).
        return Err(StoreError::Backend(
            "a blind-index parameter name must be a non-empty word".into(),
        ));
    }
    let wanted: HashSet<(&str, &[u8])> = tokens
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_slice()))
        .collect();
    let mut kept = IndexKeys::default();
    for (param, token, ord) in existing.0 {
        if wanted.contains(&(param.as_str(), token.as_slice())) {
            kept.0.push((param, token, ord));
            continue;
        }
        conn.prepare_cached(
            "DELETE FROM search_index
             WHERE rtype = ?1 AND param = ?2 AND token = ?3 AND ord = ?4 AND id = ?5",
        )
        .and_then(|mut s| s.execute(params![rtype, param, token, ord, id]))
        .map_err(map_err)?;
    }
    if wanted.len() > kept.0.len() {
        // Write order (see the migration that added `ord`): the resource version just put has
        // the highest sequence number.
        let ord: i64 = conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM resource_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(map_err)?;
        let already: HashSet<(&str, &[u8])> = kept
            .0
            .iter()
            .map(|(p, t, _)| (p.as_str(), t.as_slice()))
            .collect();
        let mut added = Vec::new();
        for (param, token) in wanted.difference(&already) {
            conn.prepare_cached(
                "INSERT INTO search_index (rtype, param, token, ord, id) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![rtype, param, token, ord, id]))
            .map_err(map_err)?;
            added.push(((*param).to_owned(), token.to_vec(), ord));
        }
        kept.0.extend(added);
    }
    let text = kept.to_text();
    if listed.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    if kept.0.is_empty() {
        conn.prepare_cached("DELETE FROM search_keys WHERE rtype = ?1 AND id = ?2")
            .and_then(|mut s| s.execute(params![rtype, id]))
            .map_err(map_err)?;
    } else {
        conn.prepare_cached(
            "INSERT INTO search_keys (rtype, id, keys) VALUES (?1, ?2, ?3)
             ON CONFLICT (rtype, id) DO UPDATE SET keys = excluded.keys",
        )
        .and_then(|mut s| s.execute(params![rtype, id, text]))
        .map_err(map_err)?;
    }
    Ok(())
}

/// The primary keys of one resource's blind-index rows, `(param, token, ord)`, as
/// `search_keys.keys` stores them: one line per row, `param HEX(token) ord`. Text, because the
/// migration that introduced it builds it in SQL from the existing rows; parameter names are
/// identifiers without spaces or newlines.
#[derive(Default)]
struct IndexKeys(Vec<(String, Vec<u8>, i64)>);

impl IndexKeys {
    fn parse(text: &str) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Backend("a search_keys row is malformed".into());
        let mut rows = Vec::new();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let mut fields = line.split(' ');
            let (Some(param), Some(hex), Some(ord), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(corrupt());
            };
            let token = decode_hex(hex).ok_or_else(corrupt)?;
            let ord = ord.parse().map_err(|_| corrupt())?;
            rows.push((param.to_owned(), token, ord));
        }
        Ok(Self(rows))
    }

    fn to_text(&self) -> String {
        let mut text = String::new();
        for (param, token, ord) in &self.0 {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(param);
            text.push(' ');
            for byte in token {
                text.push_str(&format!("{byte:02X}"));
            }
            text.push(' ');
            text.push_str(&ord.to_string());
        }
        text
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| char::from(b).to_digit(16);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => u8::try_from(digit(*hi)? << 4 | digit(*lo)?).ok(),
            _ => None,
        })
        .collect()
}

fn split_list(s: &str) -> Vec<&str> {
    s.split(',').filter(|x| !x.is_empty()).collect()
}

const RESOURCE_COLUMNS: &str =
    "v.rtype, v.id, v.version, v.last_updated_us, v.deleted, v.dek_id, v.body";

fn resource_row(r: &Row<'_>) -> rusqlite::Result<ResourceRow> {
    resource_row_at(r, 0)
}

/// [`RESOURCE_COLUMNS`] from column `at` on.
fn resource_row_at(r: &Row<'_>, at: usize) -> rusqlite::Result<ResourceRow> {
    Ok(ResourceRow {
        rtype: r.get(at)?,
        id: r.get(at + 1)?,
        version: r.get(at + 2)?,
        last_updated_us: r.get(at + 3)?,
        deleted: r.get(at + 4)?,
        dek_id: r.get::<_, i64>(at + 5)? as u64,
        body: r.get(at + 6)?,
    })
}

/// `seq` then [`RESOURCE_COLUMNS`].
fn history_entry(r: &Row<'_>) -> rusqlite::Result<HistoryEntry> {
    Ok(HistoryEntry {
        seq: r.get(0)?,
        row: resource_row_at(r, 1)?,
    })
}

const PRINCIPAL_COLUMNS: &str =
    "id, username, roles, organization, disabled, locked, failed_logins, created_at";

fn principal_row(r: &Row<'_>) -> rusqlite::Result<PrincipalRow> {
    let roles: String = r.get(2)?;
    Ok(PrincipalRow {
        id: r.get(0)?,
        username: r.get(1)?,
        roles: split_list(&roles).into_iter().map(str::to_owned).collect(),
        organization: r.get(3)?,
        disabled: r.get(4)?,
        locked: r.get(5)?,
        failed_logins: r.get(6)?,
        created_at: r.get(7)?,
    })
}

fn data_key_row(r: &Row<'_>) -> rusqlite::Result<DataKeyRow> {
    Ok(DataKeyRow {
        id: r.get::<_, i64>(0)? as u64,
        compartment: r.get(1)?,
        wrapped: r.get(2)?,
        kek_version: r.get(3)?,
    })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(WriteJob { ops, reply })
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.point(move |c| {
            c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn resource_current(
        &self,
        rtype: &str,
        id: &str,
    ) -> Result<Option<ResourceRow>, StoreError> {
        let (rtype, id) = (rtype.to_owned(), id.to_owned());
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {RESOURCE_COLUMNS} FROM resource_current c JOIN resource_version v
                 ON v.seq = c.seq AND v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
                 WHERE c.rtype = ?1 AND c.id = ?2"
            ))?
            .query_row(params![rtype, id], resource_row)
            .optional()
        })
        .await
    }

    async fn resource_version(
        &self,
        rtype: &str,
        id: &str,
        version: u32,
    ) -> Result<Option<ResourceRow>, StoreError> {
        let (rtype, id) = (rtype.to_owned(), id.to_owned());
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {RESOURCE_COLUMNS} FROM resource_version v WHERE v.rtype = ?1 AND v.id = ?2 AND v.version = ?3"
            ))?
            .query_row(params![rtype, id, version], resource_row)
            .optional()
        })
        .await
    }

    async fn history(&self, q: HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                // `v.seq < ?4` as a plain range (no `?4 IS NULL OR`): SQLite then starts the
                // scan at the cursor; in the OR form it scanned from the newest version for
                // every page (a page 600,000 versions deep took 263 ms instead of under 1 ms).
                "SELECT v.seq, {RESOURCE_COLUMNS} FROM resource_version v
                 WHERE v.seq < ?4 AND (?1 IS NULL OR v.rtype = ?1) AND (?2 IS NULL OR v.id = ?2)
                   AND (?3 IS NULL OR v.last_updated_us >= ?3)
                 ORDER BY v.seq DESC LIMIT ?5"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let before = q.before_seq.unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![q.rtype, q.id, q.since_us, before, q.limit],
                history_entry,
            )?;
            rows.collect()
        })
        .await
    }

    async fn versions_after(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT v.seq, {RESOURCE_COLUMNS} FROM resource_version v
                 WHERE v.seq > ?1 ORDER BY v.seq LIMIT ?2"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![after_seq, limit], history_entry)?;
            rows.collect()
        })
        .await
    }

    async fn data_key_by_compartment(
        &self,
        compartment: &str,
    ) -> Result<Option<DataKeyRow>, StoreError> {
        let compartment = compartment.to_owned();
        self.point(move |c| {
            c.prepare_cached(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE compartment = ?1 AND state <> 'retiring'",
            )?
            .query_row([compartment], data_key_row)
            .optional()
        })
        .await
    }

    async fn data_keys_naming(&self, patient: &str) -> Result<Vec<u64>, StoreError> {
        let patient = patient.to_owned();
        self.read(move |c| data_keys_naming(c, &patient))
            .await
            .map(|ids| ids.into_iter().map(|id| id as u64).collect())
    }

    async fn data_key_by_id(&self, id: u64) -> Result<Option<DataKeyRow>, StoreError> {
        self.point(move |c| {
            c.prepare_cached(
                "SELECT id, compartment, wrapped, kek_version FROM data_key WHERE id = ?1",
            )?
            .query_row([id as i64], data_key_row)
            .optional()
        })
        .await
    }

    async fn data_key_counts(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT kek_version, COUNT(*) FROM data_key GROUP BY kek_version ORDER BY kek_version",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
        .await
    }

    async fn data_keys_not_under(
        &self,
        kek_version: u32,
        limit: u32,
    ) -> Result<Vec<DataKeyRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE kek_version <> ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![kek_version, limit], data_key_row)?;
            rows.collect()
        })
        .await
    }

    async fn data_keys_to_rotate(&self, limit: u32) -> Result<Vec<DataKeyRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, compartment, wrapped, kek_version FROM data_key
                 WHERE state = 'rotate' ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], data_key_row)?;
            rows.collect()
        })
        .await
    }

    async fn versions_under_retiring_keys(
        &self,
        limit: u32,
    ) -> Result<Vec<ResourceRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RESOURCE_COLUMNS} FROM data_key d JOIN resource_version v ON v.dek_id = d.id
                 WHERE d.state = 'retiring' ORDER BY v.seq LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit], resource_row)?;
            rows.collect()
        })
        .await
    }

    async fn unused_retiring_keys(&self, limit: u32) -> Result<Vec<u64>, StoreError> {
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

    async fn data_rotation_progress(&self) -> Result<DataRotationProgress, StoreError> {
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

    async fn shred_approval(
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

    async fn principal_by_username(
        &self,
        username: &str,
    ) -> Result<Option<PrincipalRow>, StoreError> {
        let username = username.to_owned();
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE username = ?1"
            ))?
            .query_row([username], principal_row)
            .optional()
        })
        .await
    }

    async fn principal_by_id(&self, id: &str) -> Result<Option<PrincipalRow>, StoreError> {
        let id = id.to_owned();
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE id = ?1"
            ))?
            .query_row([id], principal_row)
            .optional()
        })
        .await
    }

    async fn principals(&self) -> Result<Vec<PrincipalRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PRINCIPAL_COLUMNS} FROM principal ORDER BY username"
            ))?;
            let rows = stmt.query_map([], principal_row)?;
            rows.collect()
        })
        .await
    }

    async fn credential(&self, principal_id: &str) -> Result<Option<CredentialRow>, StoreError> {
        let principal_id = principal_id.to_owned();
        self.point(move |c| {
            c.prepare_cached(
                "SELECT principal_id, password_hash, totp_secret, totp_last_step, recovery_codes
                 FROM credential WHERE principal_id = ?1",
            )?
            .query_row([principal_id], |r| {
                let codes: String = r.get(4)?;
                Ok(CredentialRow {
                    principal_id: r.get(0)?,
                    password_hash: r.get(1)?,
                    totp_secret_sealed: r.get(2)?,
                    totp_last_step: r.get(3)?,
                    recovery_code_hashes: split_list(&codes)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .optional()
        })
        .await
    }

    async fn enrollment(&self, token_hash: &str) -> Result<Option<EnrollmentRow>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.point(move |c| {
            c.prepare_cached(
                "SELECT token_hash, principal_id, expires_at, pending_totp FROM enrollment WHERE token_hash = ?1",
            )?
            .query_row([token_hash], |r| {
                Ok(EnrollmentRow {
                    token_hash: r.get(0)?,
                    principal_id: r.get(1)?,
                    expires_at: r.get(2)?,
                    pending_totp_sealed: r.get(3)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.point(move |c| session_row(c, &token_hash)).await
    }

    async fn session_principal(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRow, Option<PrincipalRow>)>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.point(move |c| {
            let Some(session) = session_row(c, &token_hash)? else {
                return Ok(None);
            };
            let principal = c
                .prepare_cached(&format!(
                    "SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE id = ?1"
                ))?
                .query_row([&session.principal_id], principal_row)
                .optional()?;
            Ok(Some((session, principal)))
        })
        .await
    }

    async fn audit_events(
        &self,
        after: Option<(String, u64)>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |c| {
            let (node, seq) = after.map_or((None, 0i64), |(n, s)| (Some(n), s as i64));
            let mut stmt = c.prepare_cached(
                "SELECT node, seq, time_us, body, hash FROM audit_event
                 WHERE ?1 IS NULL OR node > ?1 OR (node = ?1 AND seq > ?2)
                 ORDER BY node, seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![node, seq, limit], stored_event)?;
            rows.collect()
        })
        .await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint ORDER BY node, last_seq"
            ))?;
            let rows = stmt.query_map([], checkpoint_row)?;
            rows.collect()
        })
        .await
    }

    async fn audit_head(
        &self,
        node: &str,
    ) -> Result<(Option<(u64, [u8; 32])>, Option<Checkpoint>), StoreError> {
        let node = node.to_owned();
        self.point(move |c| {
            let head: Option<(i64, Vec<u8>)> = c
                .prepare_cached("SELECT seq, hash FROM audit_event WHERE node = ?1 ORDER BY seq DESC LIMIT 1")?
                .query_row([&node], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let cp = c
                .prepare_cached(&format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint WHERE node = ?1 ORDER BY last_seq DESC LIMIT 1"
                ))?
                .query_row([&node], checkpoint_row)
                .optional()?;
            let head = head.map(|(seq, hash)| (seq as u64, <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0u8; 32])));
            Ok((head, cp))
        })
        .await
    }

    async fn audit_search(&self, q: AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |c| {
            let (b_time, b_node, b_seq) = match q.before {
                Some((t, n, s)) => (Some(t), Some(n), Some(s as i64)),
                None => (None, None, None),
            };
            let mut stmt = c.prepare_cached(
                "SELECT e.node, e.seq, e.time_us, e.body, e.hash FROM audit_event e
                 WHERE (?1 IS NULL OR e.principal = ?1)
                   AND (?2 IS NULL OR EXISTS (SELECT 1 FROM audit_patient p
                        WHERE p.patient = ?2 AND p.node = e.node AND p.seq = e.seq))
                   AND (?3 IS NULL OR e.action = ?3)
                   AND (?4 IS NULL OR e.outcome = ?4)
                   AND (?5 IS NULL OR e.time_us >= ?5)
                   AND (?6 IS NULL OR e.time_us < ?6)
                   AND (?7 IS NULL OR e.time_us < ?7 OR (e.time_us = ?7 AND (e.node < ?8 OR (e.node = ?8 AND e.seq < ?9))))
                 ORDER BY e.time_us DESC, e.node DESC, e.seq DESC LIMIT ?10",
            )?;
            let rows = stmt.query_map(
                params![q.principal, q.patient, q.action, q.outcome, q.since_us, q.until_us, b_time, b_node, b_seq, q.limit],
                stored_event,
            )?;
            rows.collect()
        })
        .await
    }

    async fn compartment_organization(
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

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let key_hash = key_hash.to_owned();
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_key WHERE key_hash = ?1"
            ))?
            .query_row([key_hash], api_key_row)
            .optional()
        })
        .await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_key ORDER BY name"
            ))?;
            let rows = stmt.query_map([], api_key_row)?;
            rows.collect()
        })
        .await
    }

    async fn policies(&self) -> Result<(i64, Vec<PolicyRow>), StoreError> {
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

    async fn break_glass_grants(
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

    async fn search_index(
        &self,
        rtype: &str,
        clauses: Vec<IndexClause>,
    ) -> Result<Vec<String>, StoreError> {
        let rtype = rtype.to_owned();
        self.read(move |c| {
            // One sub-select per clause, intersected; tokens bound as parameters.
            let mut sql = String::new();
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            for (i, clause) in clauses.iter().enumerate() {
                if i > 0 {
                    sql.push_str(" INTERSECT ");
                }
                sql.push_str(
                    "SELECT id FROM search_index WHERE rtype = ? AND param = ? AND token IN (",
                );
                args.push(Box::new(rtype.clone()));
                args.push(Box::new(clause.param.clone()));
                for (j, token) in clause.tokens.iter().enumerate() {
                    if j > 0 {
                        sql.push(',');
                    }
                    sql.push('?');
                    args.push(Box::new(token.clone()));
                }
                sql.push(')');
            }
            if clauses.is_empty() || clauses.iter().any(|c| c.tokens.is_empty()) {
                return Ok(Vec::new());
            }
            let mut stmt = c.prepare(&sql)?;
            let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let rows = stmt.query_map(params.as_slice(), |r| r.get::<_, String>(0))?;
            rows.collect()
        })
        .await
    }

    async fn resources_current(
        &self,
        rtype: &str,
        ids: Vec<String>,
    ) -> Result<Vec<ResourceRow>, StoreError> {
        let rtype = rtype.to_owned();
        self.read(move |c| {
            let mut out = Vec::with_capacity(ids.len());
            // Read in chunks of at most `MAX_IN_LIST` ids. Each distinct list length is its own
            // statement, parsed and then cached on the connection: lengths are rounded up to a
            // power of two and padded with NULLs (which match no id), so a handful of statements
            // serve every search instead of one per length seen.
            for chunk in ids.chunks(MAX_IN_LIST) {
                let slots = chunk.len().next_power_of_two().max(8);
                let marks = vec!["?"; slots].join(",");
                let sql = format!(
                    "SELECT {RESOURCE_COLUMNS} FROM resource_current c JOIN resource_version v
                     ON v.seq = c.seq AND v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
                     WHERE c.rtype = ? AND c.id IN ({marks})"
                );
                let mut stmt = c.prepare_cached(&sql)?;
                let mut args: Vec<&dyn rusqlite::ToSql> = vec![&rtype];
                args.extend(chunk.iter().map(|id| id as &dyn rusqlite::ToSql));
                args.resize(slots + 1, &rusqlite::types::Null);
                let rows = stmt.query_map(args.as_slice(), resource_row)?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn current_under_keys(
        &self,
        dek_ids: Vec<u64>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT c.rtype, c.id FROM resource_version v JOIN resource_current c
                   ON c.rtype = v.rtype AND c.id = v.id AND c.version = v.version
                 WHERE v.dek_id = ?1 AND c.deleted = 0",
            )?;
            let mut out = Vec::new();
            for dek in dek_ids {
                for row in stmt.query_map([dek as i64], |r| Ok((r.get(0)?, r.get(1)?)))? {
                    out.push(row?);
                }
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        })
        .await
    }

    async fn resource_ids(&self, rtype: &str) -> Result<Vec<String>, StoreError> {
        let rtype = rtype.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id FROM resource_current WHERE rtype = ?1 AND deleted = 0",
            )?;
            let rows = stmt.query_map([rtype], |r| r.get::<_, String>(0))?;
            rows.collect()
        })
        .await
    }
}

const API_KEY_COLUMNS: &str =
    "name, key_hash, owner_id, scopes, allowed_cidrs, expires_at, revoked, created_at";

fn api_key_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    let scopes: String = r.get(3)?;
    let cidrs: String = r.get(4)?;
    Ok(ApiKeyRow {
        name: r.get(0)?,
        key_hash: r.get(1)?,
        owner_id: r.get(2)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        allowed_cidrs: cidrs.split_whitespace().map(str::to_owned).collect(),
        expires_at: r.get(5)?,
        revoked: r.get(6)?,
        created_at: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(node: &str, n: u8) -> WriteOp {
        WriteOp::AppendAudit(NewAuditEvent {
            node: node.into(),
            time_us: i64::from(n),
            principal: "p1".into(),
            action: "read".into(),
            outcome: "success".into(),
            patients: vec![format!("Patient/{}", n % 2)],
            body: format!("{{\"n\":{n}}}").into_bytes(),
        })
    }

    #[tokio::test]
    async fn audit_chain_is_assigned_in_commit_order_and_rolls_back_with_its_job() {
        let (_dir, store) = store().await;
        let mut tasks = Vec::new();
        for i in 0..40u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                if i % 4 == 3 {
                    // A failing data change takes its audit event down with it.
                    s.write(vec![put("a", 9, Some(8)), audit("n1", i)]).await
                } else {
                    s.write(vec![audit("n1", i)]).await
                }
            }));
        }
        for t in tasks {
            let _ = t.await.unwrap();
        }
        store.write(vec![audit("n2", 1)]).await.unwrap();
        let events = store.audit_events(None, 1000).await.unwrap();
        let n1: Vec<_> = events.iter().filter(|e| e.node == "n1").collect();
        assert_eq!(n1.len(), 30);
        assert!(n1.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let (head, last_cp) = store.audit_head("n1").await.unwrap();
        assert!(last_cp.is_none());
        let (seq, hash) = head.unwrap();
        let cp = carevault_audit::Checkpoint::sign(&key, "n1", 1, seq, hash, 5, None);
        store
            .write(vec![WriteOp::InsertCheckpoint(cp.clone())])
            .await
            .unwrap();
        assert!(matches!(
            store.write(vec![WriteOp::InsertCheckpoint(cp)]).await,
            Err(StoreError::Conflict)
        ));
        let report = carevault_audit::verify(
            &events,
            &store.audit_checkpoints().await.unwrap(),
            &key.verifying_key(),
        )
        .unwrap();
        assert_eq!(report.nodes[0].signed_up_to, 30);
        let page = store
            .audit_search(AuditQuery {
                patient: Some("Patient/1".into()),
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.len(), 5);
        assert!(page.windows(2).all(|w| w[0].time_us >= w[1].time_us));
    }

    fn row(id: &str, version: u32, body: &[u8]) -> ResourceRow {
        ResourceRow {
            rtype: "Patient".into(),
            id: id.into(),
            version,
            last_updated_us: i64::from(version) * 1000,
            deleted: false,
            dek_id: 1,
            body: body.to_vec(),
        }
    }

    fn put(id: &str, version: u32, expected: Option<u32>) -> WriteOp {
        WriteOp::PutResource(NewResourceVersion {
            row: row(id, version, b"sealed"),
            expected_current: expected,
        })
    }

    /// A fresh store whose data key 1 exists (the rows of [`row`] are sealed under it).
    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let (dir, store) = bare_store().await;
        store.write(vec![data_key("Patient/test")]).await.unwrap();
        (dir, store)
    }

    async fn bare_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        (dir, store)
    }

    fn data_key(compartment: &str) -> WriteOp {
        WriteOp::InsertDataKeyIfAbsent {
            compartment: compartment.into(),
            wrapped: b"w1".to_vec(),
            kek_version: 1,
            created_at: 0,
        }
    }

    #[tokio::test]
    async fn a_rotated_data_key_takes_no_new_versions_and_goes_once_unused() {
        let (_dir, store) = bare_store().await;
        store.write(vec![data_key("Patient/a")]).await.unwrap();
        let old = store
            .data_key_by_compartment("Patient/a")
            .await
            .unwrap()
            .unwrap();
        let mut v1 = row("a", 1, b"old-1");
        v1.dek_id = old.id;
        store
            .write(vec![WriteOp::PutResource(NewResourceVersion {
                row: v1,
                expected_current: None,
            })])
            .await
            .unwrap();
        store
            .write(vec![WriteOp::MarkDataKeysForRotation {
                compartment_prefix: "Patient/".into(),
            }])
            .await
            .unwrap();
        let marked = store.data_keys_to_rotate(10).await.unwrap();
        assert_eq!(marked.len(), 1);
        let progress = store.data_rotation_progress().await.unwrap();
        assert_eq!(
            (progress.keys_to_rotate, progress.versions_remaining),
            (1, 1)
        );
        let rotate = || WriteOp::RotateDataKey {
            old_id: old.id,
            compartment: "Patient/a".into(),
            wrapped: b"w-new".to_vec(),
            kek_version: 1,
            created_at: 1,
        };
        store.write(vec![rotate()]).await.unwrap();
        // Once only: the old key is no longer marked.
        store.write(vec![rotate()]).await.unwrap();
        let new = store
            .data_key_by_compartment("Patient/a")
            .await
            .unwrap()
            .unwrap();
        assert_ne!(new.id, old.id);
        assert_eq!(new.wrapped, b"w-new");
        // The old key still opens its versions, but takes no new one.
        assert!(store.data_key_by_id(old.id).await.unwrap().is_some());
        let mut v2 = row("a", 2, b"old-2");
        v2.dek_id = old.id;
        let stale = store
            .write(vec![WriteOp::PutResource(NewResourceVersion {
                row: v2.clone(),
                expected_current: Some(1),
            })])
            .await;
        assert!(matches!(stale, Err(StoreError::StaleKey)), "{stale:?}");
        v2.dek_id = new.id;
        store
            .write(vec![WriteOp::PutResource(NewResourceVersion {
                row: v2,
                expected_current: Some(1),
            })])
            .await
            .unwrap();
        // Not dropped while a version references it.
        assert!(store.unused_retiring_keys(10).await.unwrap().is_empty());
        store
            .write(vec![WriteOp::DropRetiredDataKey { id: old.id }])
            .await
            .unwrap();
        assert!(store.data_key_by_id(old.id).await.unwrap().is_some());
        let pending = store.versions_under_retiring_keys(10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].version, 1);
        let reseal = |from, to| WriteOp::ResealResourceVersion {
            rtype: "Patient".into(),
            id: "a".into(),
            version: 1,
            from_dek_id: from,
            dek_id: to,
            body: b"new-1".to_vec(),
        };
        // Re-sealing under a retiring key is refused.
        assert!(matches!(
            store.write(vec![reseal(old.id, old.id)]).await,
            Err(StoreError::StaleKey)
        ));
        store.write(vec![reseal(old.id, new.id)]).await.unwrap();
        let v = store
            .resource_version("Patient", "a", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((v.dek_id, v.body.as_slice()), (new.id, &b"new-1"[..]));
        assert_eq!(store.unused_retiring_keys(10).await.unwrap(), vec![old.id]);
        store
            .write(vec![WriteOp::DropRetiredDataKey { id: old.id }])
            .await
            .unwrap();
        assert!(store.data_key_by_id(old.id).await.unwrap().is_none());
        assert_eq!(
            store.data_rotation_progress().await.unwrap(),
            DataRotationProgress::default()
        );
        // A version sealed under a key that is gone is refused.
        let mut v3 = row("a", 3, b"x");
        v3.dek_id = old.id;
        assert!(matches!(
            store
                .write(vec![WriteOp::PutResource(NewResourceVersion {
                    row: v3,
                    expected_current: Some(2),
                })])
                .await,
            Err(StoreError::StaleKey)
        ));
    }

    #[tokio::test]
    async fn shred_removes_every_generation_and_the_wrap_floor_refuses_old_kek_versions() {
        let (_dir, store) = bare_store().await;
        store.write(vec![data_key("Patient/a")]).await.unwrap();
        let old = store
            .data_key_by_compartment("Patient/a")
            .await
            .unwrap()
            .unwrap();
        let mut v1 = row("a", 1, b"x");
        v1.dek_id = old.id;
        store
            .write(vec![
                WriteOp::PutResource(NewResourceVersion {
                    row: v1,
                    expected_current: None,
                }),
                WriteOp::MarkDataKeysForRotation {
                    compartment_prefix: "Patient/".into(),
                },
                WriteOp::RotateDataKey {
                    old_id: old.id,
                    compartment: "Patient/a".into(),
                    wrapped: b"w2".to_vec(),
                    kek_version: 1,
                    created_at: 1,
                },
            ])
            .await
            .unwrap();
        let new = store
            .data_key_by_compartment("Patient/a")
            .await
            .unwrap()
            .unwrap();
        // The shred names the newest key; the old generation and its versions go too.
        store
            .write(vec![WriteOp::ShredCompartment {
                compartment: "Patient/a".into(),
                data_key_id: new.id,
            }])
            .await
            .unwrap();
        assert!(store.data_key_by_id(old.id).await.unwrap().is_none());
        assert!(
            store
                .resource_version("Patient", "a", 1)
                .await
                .unwrap()
                .is_none()
        );

        assert_eq!(
            store
                .meta(crate::META_KEK_WRAP_FLOOR)
                .await
                .unwrap()
                .as_deref(),
            Some("1")
        );
        store
            .write(vec![WriteOp::SetMeta {
                key: crate::META_KEK_WRAP_FLOOR.into(),
                value: "2".into(),
            }])
            .await
            .unwrap();
        assert!(matches!(
            store.write(vec![data_key("Patient/b")]).await,
            Err(StoreError::StaleKey)
        ));
        store
            .write(vec![WriteOp::InsertDataKeyIfAbsent {
                compartment: "Patient/b".into(),
                wrapped: b"w".to_vec(),
                kek_version: 2,
                created_at: 0,
            }])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn rewrap_is_conditional_and_shred_removes_only_its_compartment() {
        let (dir, store) = bare_store().await;
        store
            .write(vec![data_key("Patient/a"), data_key("Patient/b")])
            .await
            .unwrap();
        let a = store
            .data_key_by_compartment("Patient/a")
            .await
            .unwrap()
            .unwrap();
        let b = store
            .data_key_by_compartment("Patient/b")
            .await
            .unwrap()
            .unwrap();
        let mut ra = row("a", 1, b"x");
        ra.dek_id = a.id;
        let mut rb = row("b", 1, b"y");
        rb.dek_id = b.id;
        for r in [ra, rb] {
            let id = r.id.clone();
            store
                .write(vec![
                    WriteOp::PutResource(NewResourceVersion {
                        row: r,
                        expected_current: None,
                    }),
                    WriteOp::ReplaceSearchIndex {
                        rtype: "Patient".into(),
                        id,
                        tokens: vec![("name".into(), b"t".to_vec())],
                    },
                ])
                .await
                .unwrap();
        }
        assert_eq!(store.data_key_counts().await.unwrap(), vec![(1, 2)]);
        let rewrap = |from| WriteOp::RewrapDataKey {
            id: a.id,
            from_kek_version: from,
            wrapped: b"w2".to_vec(),
            kek_version: 2,
        };
        store.write(vec![rewrap(1)]).await.unwrap();
        // A stale re-wrap (the row moved on) changes nothing.
        store.write(vec![rewrap(1)]).await.unwrap();
        assert_eq!(store.data_key_counts().await.unwrap(), vec![(1, 1), (2, 1)]);
        let left = store.data_keys_not_under(2, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].compartment, "Patient/b");

        let shred = || WriteOp::ShredCompartment {
            compartment: "Patient/a".into(),
            data_key_id: a.id,
        };
        store.write(vec![shred()]).await.unwrap();
        store.write(vec![shred()]).await.unwrap();
        assert!(
            store
                .data_key_by_compartment("Patient/a")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .resource_current("Patient", "a")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .resource_version("Patient", "a", 1)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .resource_current("Patient", "b")
                .await
                .unwrap()
                .is_some()
        );
        let hits = store
            .search_index(
                "Patient",
                vec![IndexClause {
                    param: "name".into(),
                    tokens: vec![b"t".to_vec()],
                }],
            )
            .await
            .unwrap();
        assert_eq!(hits, vec!["b".to_owned()]);
        assert_eq!(index_rows_listed(&dir.path().join("t.db")), 1);
    }

    /// A steady stream of group commits beside steady reads never lets the WAL start over by
    /// itself; the writer resets it once it passes the limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_steady_writes_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let limit = 256 * 1024;
        let store = SqliteStore::open_with_wal_limit(&path, limit).unwrap();
        store.write(vec![data_key("Patient/test")]).await.unwrap();
        let wal = dir.path().join("t.db-wal");
        let stop = std::time::Instant::now() + Duration::from_millis(1500);
        let mut tasks = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while std::time::Instant::now() < stop {
                    let id = format!("w{w}-{n}");
                    let new = NewResourceVersion {
                        row: row(&id, 1, &[7u8; 4096]),
                        expected_current: None,
                    };
                    store.write(vec![WriteOp::PutResource(new)]).await.unwrap();
                    store
                        .resource_current("Patient", &id)
                        .await
                        .unwrap()
                        .unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut written = 0;
        for t in tasks {
            written += t.await.unwrap();
        }
        assert!(
            written * 4096 > 4 * limit,
            "the test wrote too little ({written} resources) to exceed the limit"
        );
        // The next commit after the check interval finds the log over the limit and resets it.
        tokio::time::sleep(WAL_CHECK_EVERY + Duration::from_millis(100)).await;
        store.write(vec![put("last", 1, None)]).await.unwrap();
        // The writer resets after answering that commit and before taking the next job.
        store.write(vec![put("after", 1, None)]).await.unwrap();
        let size = std::fs::metadata(&wal).unwrap().len();
        assert!(size <= limit, "the WAL is still {size} bytes");
        // Everything is still there.
        assert!(
            store
                .resource_current("Patient", "w0-0")
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn versions_append_with_optimistic_concurrency() {
        let (_dir, store) = store().await;
        store.write(vec![put("a", 1, None)]).await.unwrap();
        assert!(matches!(
            store.write(vec![put("a", 1, None)]).await,
            Err(StoreError::Conflict)
        ));
        store.write(vec![put("a", 2, Some(1))]).await.unwrap();
        assert!(matches!(
            store.write(vec![put("a", 3, Some(1))]).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            store
                .resource_current("Patient", "a")
                .await
                .unwrap()
                .unwrap()
                .version,
            2
        );
        assert_eq!(
            store
                .resource_version("Patient", "a", 1)
                .await
                .unwrap()
                .unwrap()
                .version,
            1
        );
        assert!(
            store
                .resource_version("Patient", "a", 3)
                .await
                .unwrap()
                .is_none()
        );
        let history = store
            .history(HistoryQuery {
                rtype: Some("Patient".into()),
                id: Some("a".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            history.iter().map(|h| h.row.version).collect::<Vec<_>>(),
            vec![2, 1]
        );
    }

    #[tokio::test]
    async fn a_failed_job_changes_nothing_and_others_in_the_batch_commit() {
        let (_dir, store) = store().await;
        store.write(vec![put("a", 1, None)]).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                // Half the jobs are valid creates; half try a stale update after a valid op.
                if i % 2 == 0 {
                    s.write(vec![put(&format!("p{i}"), 1, None)]).await
                } else {
                    s.write(vec![put(&format!("q{i}"), 1, None), put("a", 5, Some(4))])
                        .await
                }
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap();
            assert_eq!(r.is_ok(), i % 2 == 0, "job {i}: {r:?}");
        }
        assert!(
            store
                .resource_current("Patient", "p0")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .resource_current("Patient", "q1")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .resource_current("Patient", "a")
                .await
                .unwrap()
                .unwrap()
                .version,
            1
        );
    }

    /// The writer applies a batch without savepoints first and again with them when a job fails:
    /// either way each job succeeds or fails alone, in its own slot.
    #[tokio::test]
    async fn a_batch_with_a_failing_job_is_applied_again_job_by_job() {
        let (dir, store) = store().await;
        store.write(vec![put("a", 1, None)]).await.unwrap();
        drop(store);
        let mut conn = open_connection(&dir.path().join("t.db"), Mode::ReadWrite).unwrap();
        let job = |ops: Vec<WriteOp>| WriteJob {
            ops,
            reply: oneshot::channel().0,
        };
        let current = |conn: &Connection, id: &str| -> Option<u32> {
            conn.query_row(
                "SELECT version FROM resource_current WHERE rtype = 'Patient' AND id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
        };

        let clean = [
            job(vec![put("b", 1, None)]),
            job(vec![put("a", 2, Some(1))]),
        ];
        let results = commit_batch(&mut conn, &clean);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            (current(&conn, "a"), current(&conn, "b")),
            (Some(2), Some(1))
        );

        // The failing job wrote a row before its stale update failed; that row goes with it.
        let mixed = [
            job(vec![put("c", 1, None)]),
            job(vec![put("d", 1, None), put("a", 9, Some(8))]),
            job(vec![put("e", 1, None), put("b", 2, Some(1))]),
        ];
        let results = commit_batch(&mut conn, &mixed);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(results[1], Err(StoreError::Conflict)),
            "{results:?}"
        );
        assert_eq!(current(&conn, "c"), Some(1));
        assert_eq!(current(&conn, "d"), None);
        assert_eq!(current(&conn, "e"), Some(1));
        assert_eq!(
            (current(&conn, "a"), current(&conn, "b")),
            (Some(2), Some(2))
        );

        let alone = [job(vec![put("f", 1, None), put("a", 9, Some(8))])];
        let results = commit_batch(&mut conn, &alone);
        assert!(
            matches!(results[0], Err(StoreError::Conflict)),
            "{results:?}"
        );
        assert_eq!(current(&conn, "f"), None);
        assert_eq!(current(&conn, "a"), Some(2));
    }

    #[tokio::test]
    async fn totp_steps_and_recovery_codes_are_single_use() {
        let (_dir, store) = store().await;
        let principal = PrincipalRow {
            id: "u1".into(),
            username: "alice".into(),
            roles: vec!["clinician".into()],
            organization: Some("org-a".into()),
            disabled: false,
            locked: false,
            failed_logins: 0,
            created_at: 1,
        };
        store
            .write(vec![WriteOp::InsertPrincipal(principal.clone())])
            .await
            .unwrap();
        assert!(matches!(
            store
                .write(vec![WriteOp::InsertPrincipal(principal.clone())])
                .await,
            Err(StoreError::AlreadyExists)
        ));
        store
            .write(vec![WriteOp::SetCredential(CredentialRow {
                principal_id: "u1".into(),
                password_hash: "$argon2id$...".into(),
                totp_secret_sealed: vec![1, 2, 3],
                totp_last_step: 0,
                recovery_code_hashes: vec!["h1".into(), "h2".into()],
            })])
            .await
            .unwrap();
        let advance = |step| WriteOp::AdvanceTotpStep {
            principal_id: "u1".into(),
            step,
        };
        store.write(vec![advance(10)]).await.unwrap();
        assert!(matches!(
            store.write(vec![advance(10)]).await,
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            store.write(vec![advance(9)]).await,
            Err(StoreError::Conflict)
        ));
        store.write(vec![advance(11)]).await.unwrap();
        let consume = |h: &str| WriteOp::ConsumeRecoveryCode {
            principal_id: "u1".into(),
            code_hash: h.into(),
        };
        store.write(vec![consume("h1")]).await.unwrap();
        assert!(matches!(
            store.write(vec![consume("h1")]).await,
            Err(StoreError::Conflict)
        ));
        let cred = store.credential("u1").await.unwrap().unwrap();
        assert_eq!(cred.recovery_code_hashes, vec!["h2".to_string()]);
        assert_eq!(cred.totp_last_step, 11);
        assert!(!format!("{cred:?}").contains("argon2"));
    }

    fn index(id: &str, tokens: &[(&str, &[u8])]) -> WriteOp {
        WriteOp::ReplaceSearchIndex {
            rtype: "Patient".into(),
            id: id.into(),
            tokens: tokens
                .iter()
                .map(|(p, t)| ((*p).to_owned(), t.to_vec()))
                .collect(),
        }
    }

    async fn found(store: &SqliteStore, param: &str, token: &[u8]) -> Vec<String> {
        let mut ids = store
            .search_index(
                "Patient",
                vec![IndexClause {
                    param: param.into(),
                    tokens: vec![token.to_vec()],
                }],
            )
            .await
            .unwrap();
        ids.sort();
        ids
    }

    fn ords(path: &Path, id: &str) -> Vec<(Vec<u8>, i64)> {
        let conn = Connection::open(path).unwrap();
        let mut s = conn
            .prepare("SELECT token, ord FROM search_index WHERE id = ?1 ORDER BY token")
            .unwrap();
        s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Every blind-index row is listed in its resource's `search_keys` row and every listed key
    /// is a row; returns how many rows there are.
    fn index_rows_listed(path: &Path) -> usize {
        let conn = Connection::open(path).unwrap();
        let mut rows: Vec<(String, String, String, Vec<u8>, i64)> = conn
            .prepare("SELECT rtype, id, param, token, ord FROM search_index")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut listed = Vec::new();
        let lists: Vec<(String, String, String)> = conn
            .prepare("SELECT rtype, id, keys FROM search_keys")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for (rtype, id, keys) in lists {
            let keys = IndexKeys::parse(&keys).unwrap();
            assert!(!keys.0.is_empty(), "an empty list is not kept");
            for (param, token, ord) in keys.0 {
                listed.push((rtype.clone(), id.clone(), param, token, ord));
            }
        }
        rows.sort();
        listed.sort();
        assert_eq!(rows, listed);
        rows.len()
    }

    #[test]
    fn index_key_lists_read_back_what_was_written_and_refuse_damage() {
        let keys = IndexKeys(vec![
            ("code".into(), vec![0, 0xab, 0xff], 7),
            ("_id".into(), Vec::new(), 0),
        ]);
        let text = keys.to_text();
        assert_eq!(text, "code 00ABFF 7\n_id  0");
        assert_eq!(IndexKeys::parse(&text).unwrap().0, keys.0);
        assert!(IndexKeys::parse("").unwrap().0.is_empty());
        let conn = Connection::open_in_memory().unwrap();
        for sql in MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        replace_search_index(&conn, "Patient", "a", &[("code".to_owned(), vec![1u8])]).unwrap();
        for name in ["", "na me", "name\nx 00 1"] {
            let tokens = [(name.to_owned(), vec![1u8])];
            let err = replace_search_index(&conn, "Patient", "a", &tokens).err();
            assert!(matches!(err, Some(StoreError::Backend(_))), "{name:?}");
        }
        for damaged in [
            "code 0AB 7",
            "code ZZ 7",
            "code 00 x",
            "code 00",
            "code 00 1 2",
        ] {
            let err = IndexKeys::parse(damaged).err().unwrap();
            assert!(err.to_string().contains("search_keys"), "{damaged}: {err}");
        }
    }

    #[tokio::test]
    async fn a_damaged_key_list_fails_the_write_and_changes_nothing() {
        let (dir, store) = store().await;
        let path = dir.path().join("t.db");
        store
            .write(vec![put("a", 1, None), index("a", &[("code", b"x")])])
            .await
            .unwrap();
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE search_keys SET keys = 'code nothex 1'", [])
            .unwrap();
        let result = store
            .write(vec![put("a", 2, Some(1)), index("a", &[("code", b"y")])])
            .await;
        assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
        assert_eq!(found(&store, "code", b"x").await, ["a"]);
        assert!(found(&store, "code", b"y").await.is_empty());
        let current = store.resource_current("Patient", "a").await.unwrap();
        assert_eq!(current.unwrap().version, 1);
    }

    #[tokio::test]
    async fn an_index_replacement_keeps_unchanged_rows_and_orders_new_ones_by_write() {
        let (dir, store) = store().await;
        store
            .write(vec![
                put("a", 1, None),
                index("a", &[("code", b"x"), ("code", b"y")]),
            ])
            .await
            .unwrap();
        store
            .write(vec![put("b", 1, None), index("b", &[("code", b"x")])])
            .await
            .unwrap();
        let before = ords(&dir.path().join("t.db"), "a");
        store
            .write(vec![
                put("a", 2, Some(1)),
                index("a", &[("code", b"x"), ("code", b"z")]),
            ])
            .await
            .unwrap();
        assert_eq!(found(&store, "code", b"x").await, ["a", "b"]);
        assert!(found(&store, "code", b"y").await.is_empty());
        assert_eq!(found(&store, "code", b"z").await, ["a"]);
        assert!(found(&store, "other", b"x").await.is_empty());
        let after = ords(&dir.path().join("t.db"), "a");
        // `x` kept its row (and its place); `z` was written after everything before it.
        assert_eq!(after[0], before[0]);
        assert_eq!(after[1].0, b"z");
        assert!(after[1].1 > before[0].1 && after[1].1 > 0);
        let b = ords(&dir.path().join("t.db"), "b");
        assert!(b[0].1 > before[0].1 && after[1].1 > b[0].1);
        assert_eq!(index_rows_listed(&dir.path().join("t.db")), 3);
        // A deleted resource has no index rows.
        store.write(vec![index("a", &[])]).await.unwrap();
        assert_eq!(found(&store, "code", b"x").await, ["b"]);
        assert!(found(&store, "code", b"z").await.is_empty());
        assert_eq!(index_rows_listed(&dir.path().join("t.db")), 1);
    }

    /// A database at the schema just before the first migration containing `marker`.
    fn database_before(marker: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        let before = MIGRATIONS.iter().position(|m| m.contains(marker)).unwrap();
        for sql in &MIGRATIONS[..before] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(&format!("PRAGMA user_version = {before}"))
            .unwrap();
        (dir, path)
    }

    #[tokio::test]
    async fn index_rows_written_before_the_ord_migration_stay_searchable() {
        let (_dir, path) = database_before("search_index_new");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO search_index (rtype, param, token, id)
                 VALUES ('Patient', 'code', x'01', 'old1'), ('Patient', 'code', x'01', 'old2'),
                        ('Patient', 'name', x'02', 'old1');",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(found(&store, "code", &[1]).await, ["old1", "old2"]);
        store.write(vec![data_key("Patient/test")]).await.unwrap();
        store
            .write(vec![put("old1", 1, None), index("old1", &[("code", &[1])])])
            .await
            .unwrap();
        // The old `name` row went (no longer wanted), the kept `code` row is still there.
        assert!(found(&store, "name", &[2]).await.is_empty());
        assert_eq!(found(&store, "code", &[1]).await, ["old1", "old2"]);
        assert_eq!(ords(&path, "old1"), [(vec![1u8], 0)]);
        assert_eq!(index_rows_listed(&path), 2);
    }

    #[tokio::test]
    async fn index_rows_written_before_the_key_lists_are_listed_and_replaced() {
        let (_dir, path) = database_before("CREATE TABLE search_keys");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO search_index (rtype, param, token, ord, id)
                 VALUES ('Patient', 'code', x'01', 5, 'old1'), ('Patient', 'code', x'01', 6, 'old2'),
                        ('Patient', 'name', x'02ff', 5, 'old1'), ('Condition', 'code', x'01', 9, 'old1'),
                        ('Patient', '_id', x'03', 5, 'old1'), ('Condition', '_id', x'04', 9, 'old1');
             INSERT INTO resource_current (rtype, id, version, deleted, seq)
                 VALUES ('Patient', 'old1', 1, 0, 1), ('Condition', 'old1', 1, 0, 2);",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        // The `_id` rows are gone (the server answers `_id` by id); the rest are listed.
        assert!(found(&store, "_id", &[3]).await.is_empty());
        assert_eq!(index_rows_listed(&path), 4);
        let conn = Connection::open(&path).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'search_index_resource'"),
            0
        );
        store.write(vec![data_key("Patient/test")]).await.unwrap();
        store
            .write(vec![
                put("old1", 2, Some(1)),
                index("old1", &[("code", &[1]), ("name", &[3])]),
            ])
            .await
            .unwrap();
        assert_eq!(found(&store, "code", &[1]).await, ["old1", "old2"]);
        assert!(found(&store, "name", &[2, 0xff]).await.is_empty());
        assert_eq!(found(&store, "name", &[3]).await, ["old1"]);
        // The same id under another type is another resource: its row is untouched.
        assert_eq!(
            count("SELECT COUNT(*) FROM search_index WHERE rtype = 'Condition' AND id = 'old1'"),
            1
        );
        assert_eq!(index_rows_listed(&path), 4);
    }

    #[tokio::test]
    async fn audit_patients_recorded_before_the_event_first_key_are_still_found() {
        let (_dir, path) = database_before("CREATE TABLE audit_patient_new");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO audit_event (node, seq, time_us, principal, action, outcome, body, hash)
                 VALUES ('n1', 1, 1, 'p1', 'read', 'success', x'00', zeroblob(32)),
                        ('n1', 2, 2, 'p1', 'read', 'success', x'00', zeroblob(32)),
                        ('n1', 3, 3, 'p1', 'search', 'success', x'00', zeroblob(32));
             INSERT INTO audit_patient (patient, node, seq)
                 VALUES ('Patient/a', 'n1', 1), ('Patient/b', 'n1', 2),
                        ('Patient/a', 'n1', 3), ('Patient/b', 'n1', 3);",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        let seqs_of = |patient: &str| {
            let store = store.clone();
            let patient = patient.to_owned();
            async move {
                let page = store
                    .audit_search(AuditQuery {
                        patient: Some(patient),
                        limit: 10,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                page.iter().map(|e| e.seq).collect::<Vec<_>>()
            }
        };
        assert_eq!(seqs_of("Patient/a").await, [3, 1]);
        assert_eq!(seqs_of("Patient/b").await, [3, 2]);
        assert!(seqs_of("Patient/c").await.is_empty());
        // Events written after the upgrade are found the same way (the chain continues at 4).
        store
            .write(vec![audit("n1", 4), audit("n1", 7)])
            .await
            .unwrap();
        assert_eq!(seqs_of("Patient/0").await, [4]);
        assert_eq!(seqs_of("Patient/1").await, [5]);
        assert_eq!(seqs_of("Patient/a").await, [3, 1]);
        // The rows are keyed by the event first, so a new event's rows append.
        let conn = Connection::open(&path).unwrap();
        let key: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_info('sqlite_autoindex_audit_patient_1')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(key, ["node", "seq", "patient"]);
    }

    #[tokio::test]
    async fn the_current_pointer_names_its_row_and_an_edited_pointer_substitutes_nothing() {
        let (dir, store) = store().await;
        store.write(vec![put("a", 1, None)]).await.unwrap();
        store.write(vec![put("a", 2, Some(1))]).await.unwrap();
        store.write(vec![put("b", 1, None)]).await.unwrap();
        let a = store
            .resource_current("Patient", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.id.as_str(), a.version), ("a", 2));
        let found = store
            .resources_current("Patient", vec!["a".into(), "b".into()])
            .await
            .unwrap();
        assert_eq!(found.len(), 2);
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute(
            "UPDATE resource_current SET seq = (SELECT seq FROM resource_version WHERE id = 'b')
             WHERE id = 'a'",
            [],
        )
        .unwrap();
        assert!(
            store
                .resource_current("Patient", "a")
                .await
                .unwrap()
                .is_none()
        );
        let found = store
            .resources_current("Patient", vec!["a".into()])
            .await
            .unwrap();
        assert!(found.is_empty());
    }

    #[tokio::test]
    async fn current_pointers_written_before_the_seq_migration_are_filled_in() {
        let (_dir, path) = database_before("ADD COLUMN seq");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO resource_version (rtype, id, version, last_updated_us, deleted, dek_id, body)
                 VALUES ('Patient', 'a', 1, 1, 0, 1, x'01'), ('Patient', 'b', 1, 1, 0, 1, x'02'),
                        ('Patient', 'a', 2, 2, 0, 1, x'03');
             INSERT INTO resource_current (rtype, id, version, deleted)
                 VALUES ('Patient', 'a', 2, 0), ('Patient', 'b', 1, 0);",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        let a = store
            .resource_current("Patient", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.version, a.body.as_slice()), (2, &[3u8][..]));
        let b = store
            .resource_current("Patient", "b")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.body, [2u8]);
    }

    #[tokio::test]
    async fn refuses_a_database_from_a_newer_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
