//! The embedded SQLite backend: WAL mode, `synchronous=FULL`, one writer thread with group
//! commit, and a small pool of read connections used from blocking tasks.

mod audit;
mod export;
mod identity;
mod index;
mod keys;
mod policy;
mod resources;
mod snapshot;
#[cfg(test)]
mod tests;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::mpsc;

use crate::rows::Columns;
use crate::statements::{Statement, bind};
use crate::{PrincipalRow, SessionRow, StoreError};
pub use snapshot::{sqlite_facts, sqlite_snapshot};
use write::{WAL_RESET_BYTES, WriteJob, WriterStats, checkpoint_loop, writer_loop};

/// Migrations, in order (`migrations/sqlite/NNNN_*.sql`); `PRAGMA user_version` records how many
/// ran.
pub(crate) const MIGRATIONS: &[&str] = &[
    migration!("sqlite/0001_initial.sql"),
    migration!("sqlite/0002_audit.sql"),
    migration!("sqlite/0003_access.sql"),
    migration!("sqlite/0004_search_index.sql"),
    migration!("sqlite/0005_shred.sql"),
    // Data-key rotation: a compartment may have an old (retiring) key beside its live one, so
    // the compartment is unique among live keys only. The table is rebuilt (SQLite cannot drop
    // a UNIQUE constraint) keeping its AUTOINCREMENT counter: ids of shredded keys are never
    // reused. The KEK wrap floor starts at v1.
    migration!("sqlite/0006_data_key_rotation.sql"),
    // Blind-index rows ordered by write order within a token (`ord`: the newest resource-version
    // sequence number when the row was written) instead of by resource id. Ids are random UUIDs,
    // so keyed by id every insert landed on a random leaf of a many-leaf token range (a LOINC
    // code or a year has hundreds of thousands of rows): ~20 random pages per resource to read,
    // dirty, log and checkpoint. Keyed by `ord` the rows of a common token append to its last
    // leaf. Rows written before this migration keep `ord` 0: order never decides a result.
    // No ORDER BY: a scan of the old table already yields its key order. About 70 s for 9.4
    // million rows on a 2-core VM (measured on the 10,000-patient benchmark data).
    migration!("sqlite/0007_search_index_ord.sql"),
    // The current pointer names its version's row (`seq`, the rowid): a read follows it
    // directly instead of a second descent through the `(rtype, id, version)` index, one random
    // page fewer per read and per search candidate. Reads still require the row's type, id and
    // version to agree with the pointer (a pointer edited in the file cannot substitute another
    // resource's row).
    migration!("sqlite/0008_current_seq.sql"),
    // A resource's blind-index rows are listed in one `search_keys` row (see [`IndexKeys`])
    // instead of found through a second index on `search_index (rtype, id)`: that index held a
    // copy of every row (about 20 per Observation), so each write inserted twice the entries.
    // An update or delete reads the list and deletes by primary key. `_id` rows go: the
    // server answers `_id` by id (their random tokens put every write on a random leaf).
    migration!("sqlite/0009_search_keys.sql"),
    // An audit event's patients are keyed by the event first (`node, seq, patient`), not by
    // the patient: events arrive in sequence order, so their rows now append to the last leaf
    // instead of landing on a random one (a page to dirty, log and checkpoint per audited read;
    // reads use about a quarter less server CPU without it). The audit search asks "does this
    // event name patient X" for each event it walks in time order, a point lookup either key
    // order answers.
    migration!("sqlite/0010_audit_patient_by_event.sql"),
    // Bulk export jobs, so that an export outlives a restart.
    migration!("sqlite/0011_export_job.sql"),
    // An API key may be bound to a client certificate's fingerprint (NULL: unbound).
    migration!("sqlite/0012_api_key_client_cert.sql"),
];

/// The schema version this binary writes (`PRAGMA user_version` after every migration).
pub const SQLITE_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Most ids one `IN (...)` list binds (a power of two; SQLite allows far more parameters).
pub(super) const MAX_IN_LIST: usize = 512;

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
    /// Data key ids reserved for new keys (see [`crate::ids`]).
    ids: crate::ids::IdPool,
    /// Dropped with the store, which ends the checkpointer thread.
    _checkpointer: Option<std::sync::mpsc::Sender<()>>,
    /// Shared with the writer and checkpointer threads.
    stats: Arc<WriterStats>,
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
        let stats = Arc::new(WriterStats::default());
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let checkpointer_stats = stats.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &stop_rx, &checkpointer_stats))
            .map_err(|e| StoreError::Backend(format!("cannot start checkpoint thread: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, wal, wal_limit, &writer_stats))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                mode: Mode::ReadWrite,
                readers: Mutex::new(Vec::new()),
                read_permits: tokio::sync::Semaphore::new(READ_SCANS),
                writer: tx,
                ids: crate::ids::IdPool::new(crate::ids::SQLITE_BLOCK),
                _checkpointer: Some(stop_tx),
                stats,
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
                ids: crate::ids::IdPool::new(crate::ids::SQLITE_BLOCK),
                _checkpointer: None,
                stats: Arc::default(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// File sizes, scan slots, group-commit figures and the WAL checkpoint's age.
    pub(super) async fn stats(&self) -> crate::stats::StoreStats {
        let size = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
        let mut wal = self.inner.path.as_os_str().to_owned();
        wal.push("-wal");
        let stats = &self.inner.stats;
        let idle = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64;
        let checkpoint = *stats
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        crate::stats::StoreStats {
            backend: "sqlite",
            database_bytes: size(&self.inner.path),
            wal_bytes: size(Path::new(&wal)),
            pool: crate::stats::PoolUse {
                in_use: READ_SCANS.saturating_sub(self.inner.read_permits.available_permits())
                    as u64,
                idle,
                max: READ_SCANS as u64,
            },
            batch_size: Some(stats.batch_size.snapshot()),
            commit_seconds: Some(stats.commit_seconds.snapshot()),
            wal_checkpoint_age_seconds: checkpoint.map(|t| t.elapsed().as_secs_f64()),
        }
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

impl SqliteStore {
    /// A small write beside the writer thread, in a transaction of its own on a pooled
    /// connection (it waits for the writer's lock like another process would): for the rare
    /// write whose result a caller needs before it can prepare its real write.
    async fn write_aside<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        if self.inner.mode == Mode::ReadOnly {
            return Err(StoreError::Unavailable(
                "the database is open read-only".into(),
            ));
        }
        self.read(f).await
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

pub(super) fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            // Only a unique key taken is "already exists"; a trigger, CHECK, NOT NULL or
            // foreign key refusing the row is a database error, named by its kind.
            ErrorCode::ConstraintViolation => match f.extended_code {
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                | rusqlite::ffi::SQLITE_CONSTRAINT_ROWID => StoreError::AlreadyExists,
                rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER => {
                    StoreError::Backend("a trigger refused the write".into())
                }
                code => StoreError::Backend(format!("constraint failed (SQLite code {code})")),
            },
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

impl Columns for Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn opt_text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn flag(&self, i: usize) -> rusqlite::Result<bool> {
        self.get(i)
    }
    fn bytes(&self, i: usize) -> rusqlite::Result<Vec<u8>> {
        self.get(i)
    }
    fn opt_bytes(&self, i: usize) -> rusqlite::Result<Option<Vec<u8>>> {
        self.get(i)
    }
    fn small(&self, i: usize) -> rusqlite::Result<u32> {
        self.get(i)
    }
    fn id(&self, i: usize) -> rusqlite::Result<u64> {
        Ok(self.get::<_, i64>(i)? as u64)
    }
    /// A column's bytes whether it holds a BLOB or (after tampering) TEXT, so that a damaged row
    /// reaches the verifier as a breach instead of stopping the read.
    fn audit_bytes(&self, i: usize) -> rusqlite::Result<Vec<u8>> {
        use rusqlite::types::ValueRef;
        Ok(match self.get_ref(i)? {
            ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
            ValueRef::Null => Vec::new(),
            ValueRef::Integer(i) => i.to_string().into_bytes(),
            ValueRef::Real(f) => f.to_string().into_bytes(),
        })
    }
}

/// Run one cached statement inside the writer's transaction; the number of rows it changed.
pub(super) fn exec(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<usize, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(params))
        .map_err(map_err)
}

/// Run one of the statements written once for both backends ([`crate::statements`]).
/// The number of rows it changed.
pub(super) fn run(conn: &Connection, statement: &Statement<'_>) -> Result<u64, StoreError> {
    let params: Vec<&dyn rusqlite::ToSql> = statement
        .params
        .iter()
        .map(|p| bind!(p, &dyn rusqlite::ToSql))
        .collect();
    let changed = exec(conn, statement.sql.sqlite, &params)?;
    let changed = u64::try_from(changed).unwrap_or(u64::MAX);
    statement.check(changed)?;
    Ok(changed)
}

impl SqliteStore {
    pub(super) async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.point(move |c| {
            c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
        })
        .await
    }
}

crate::forward::forward_store!(SqliteStore {
    async fn session_principal(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRow, Option<PrincipalRow>)>, StoreError> {
        Self::session_principal(self, token_hash).await
    }
});
