//! The single writer thread: group commit, savepoints for failing jobs, WAL upkeep, and the
//! dispatch of each [`WriteOp`] to its domain.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::audit::apply_audit_op;
use super::export::apply_export_op;
use super::identity::apply_identity_op;
use super::index::apply_index_op;
use super::keys::{apply_key_op, apply_shred_op};
use super::policy::apply_policy_op;
use super::resources::apply_resource_op;
use super::{SqliteStore, map_err, run};
use crate::dispatch::{Domain, misrouted};
use crate::statements;
use crate::stats::{BATCH_BUCKETS, Histogram, LATENCY_BUCKETS};
use crate::{StoreError, WriteOp};

/// What the writer and the checkpointer record for the metrics.
#[derive(Debug)]
pub(super) struct WriterStats {
    pub(super) batch_size: Histogram,
    pub(super) commit_seconds: Histogram,
    /// When a WAL checkpoint last succeeded, or (before the first) when the store opened: the
    /// age is then how long the WAL has gone unchecked, and the metric exists from the start
    /// (a scrape that came before the first checkpoint used to find no such series).
    pub(super) last_checkpoint: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            batch_size: Histogram::new(BATCH_BUCKETS),
            commit_seconds: Histogram::new(LATENCY_BUCKETS),
            last_checkpoint: std::sync::Mutex::new(Some(std::time::Instant::now())),
        }
    }
}

impl WriterStats {
    fn checkpointed(&self) {
        *self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }
}

/// Most operations one group-commit transaction takes before it commits.
pub(super) const MAX_BATCH: usize = 512;

pub(super) struct WriteJob {
    pub(super) ops: Vec<WriteOp>,
    pub(super) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// How often the checkpointer looks at the WAL.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Copy committed WAL pages into the database file while the writer goes on (PASSIVE: never
/// waits for readers or the writer), and a last full checkpoint when the store closes.
pub(super) fn checkpoint_loop(
    conn: &Connection,
    stop: &std::sync::mpsc::Receiver<()>,
    stats: &WriterStats,
) {
    loop {
        match stop.recv_timeout(CHECKPOINT_INTERVAL) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => stats.checkpointed(),
                    Err(e) => {
                        tracing::warn!(event = "wal_checkpoint_failed", error = %e, "WAL checkpoint failed");
                    }
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
pub(super) const WAL_RESET_BYTES: u64 = 256 * 1024 * 1024;

/// How often the writer looks at the WAL's size.
pub(super) const WAL_CHECK_EVERY: Duration = Duration::from_millis(500);

/// The single writer: takes every queued job, applies them in one transaction (a failed job
/// rolls back alone: see [`commit_batch`]), commits once, then answers every job. Between
/// batches it keeps the WAL under `wal_limit` bytes.
pub(super) fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::UnboundedReceiver<WriteJob>,
    wal: PathBuf,
    wal_limit: u64,
    stats: &WriterStats,
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
        let started = std::time::Instant::now();
        let results = commit_batch(&mut conn, &batch);
        stats
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        stats.batch_size.observe(batch.len() as f64);
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
pub(super) fn reset_wal(conn: &Connection) {
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
pub(super) fn commit_batch(
    conn: &mut Connection,
    batch: &[WriteJob],
) -> Vec<Result<(), StoreError>> {
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
pub(super) enum BatchFailed {
    /// A job failed (only without savepoints).
    Job(StoreError),
    /// The transaction could not begin or commit.
    Transaction(StoreError),
}

/// One transaction over `batch`, committed. With `savepoints`, a failed job is rolled back alone
/// and reported in its slot; without, the first failure rolls back the whole transaction.
pub(super) fn apply_batch(
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

pub(super) fn clone_err(e: &StoreError) -> StoreError {
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

/// Apply one operation inside the writer's transaction, in its domain's file.
fn apply(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    match op.domain() {
        Domain::Shared => run_shared(conn, op),
        Domain::Resources => apply_resource_op(conn, op),
        Domain::Index => apply_index_op(conn, op),
        Domain::Keys => apply_key_op(conn, op),
        Domain::Shred => apply_shred_op(conn, op),
        Domain::Identity => apply_identity_op(conn, op),
        Domain::Audit => apply_audit_op(conn, op),
        Domain::Policy => apply_policy_op(conn, op),
        Domain::Export => apply_export_op(conn, op),
    }
}

fn run_shared(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    let statement = statements::shared(op).ok_or_else(|| misrouted(op))?;
    run(conn, &statement).map(drop)
}

impl SqliteStore {
    pub(super) async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(WriteJob { ops, reply })
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}
