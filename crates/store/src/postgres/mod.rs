//! The PostgreSQL backend, for several CareVault nodes over one database.
//!
//! Every [`Store::write`] is one transaction on a pooled connection; there is no single writer,
//! so concurrency is enforced by the database alone, with SQL that PostgreSQL-compatible
//! distributed databases (CockroachDB, YugabyteDB) also accept: no advisory locks, no
//! LISTEN/NOTIFY, no sequences whose values must be gap-free.
//!
//! - A resource update is a conditional `UPDATE resource_current ... WHERE version = expected`
//!   (a create is `INSERT ... ON CONFLICT DO NOTHING`); zero rows touched is
//!   [`StoreError::Conflict`]. `UNIQUE (rtype, id, version)` backs it up.
//! - Each node's audit chain has a head row (`audit_head`): appending bumps it with
//!   `UPDATE ... SET seq = seq + 1 RETURNING`, which holds the row until commit, so appends of
//!   one node are serialized and a rolled-back transaction gives its sequence number back.
//! - A serialization failure or deadlock (SQLSTATE 40001, 40P01) retries the whole
//!   transaction a few times; connection failures are [`StoreError::Unavailable`], and the
//!   pool replaces broken connections by itself once the database is back.

mod audit;
mod connect;
mod export;
mod identity;
mod index;
mod keys;
mod policy;
mod resources;
mod snapshot;
#[cfg(test)]
pub(crate) mod tests;
mod write;

pub use connect::{PostgresOptions, SslMode, redact_url, url_has_password};

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use carevault_audit::{Checkpoint, StoredEvent};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::rows::{self, Columns};
use crate::statements::{Statement, bind};
use crate::{ApiKeyRow, DataKeyRow, HistoryEntry, PrincipalRow, ResourceRow, StoreError};
use connect::{split_tls, tls_connector};

/// Migrations, in order (`migrations/postgres/NNNN_*.sql`); `carevault_schema` records each one
/// applied (its version = index + 1).
pub(crate) const MIGRATIONS: &[&str] = &[
    migration!("postgres/0001_initial.sql"),
    migration!("postgres/0002_shred.sql"),
    // Data-key rotation: a compartment may have an old (retiring) key beside its live one, so
    // the compartment is unique among live keys only. The KEK wrap floor starts at v1.
    migration!("postgres/0003_data_key_rotation.sql"),
    // An audit event's patients are keyed by the event first, as in SQLite's schema 10: rows
    // arrive in sequence order and append, and the audit search only asks whether an event it
    // walks names a patient.
    migration!("postgres/0004_audit_patient_by_event.sql"),
    // A resource naming several patients is sealed under the key of that set of patients, whose
    // compartment name lists them all and can outgrow a B-tree entry (about 2,700 bytes): the
    // live keys are unique by a digest of the name (lookups compare the name itself too).
    migration!("postgres/0005_data_key_live_digest.sql"),
    // Bulk export jobs, so that an export outlives a restart.
    migration!("postgres/0006_export_job.sql"),
    // An API key may be bound to a client certificate's fingerprint (NULL: unbound).
    migration!("postgres/0007_api_key_client_cert.sql"),
];

/// The schema version this binary writes.
pub const POSTGRES_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How often a transaction that lost a serialization race is tried again.
pub(super) const MAX_ATTEMPTS: u32 = 8;

/// PostgreSQL through a connection pool. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Where we are connected, without a password, for messages.
    target: Arc<str>,
    /// Data key ids reserved for new keys (see [`crate::ids`]).
    ids: Arc<crate::ids::IdPool>,
    /// Seconds each write's transaction took, retries included.
    commit_seconds: Arc<crate::stats::Histogram>,
}

impl PostgresStore {
    /// Connect, run pending migrations (refusing a schema newer than this binary).
    pub async fn connect(options: &PostgresOptions) -> Result<Self, StoreError> {
        let store = Self::open(options)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connect without migrating (offline audit verification, export); still refuses a schema
    /// newer than this binary.
    pub async fn connect_existing(options: &PostgresOptions) -> Result<Self, StoreError> {
        let store = Self::open(options)?;
        let client = store.client().await?;
        let version = schema_version(&client).await?;
        if version > POSTGRES_SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: version,
                supported: POSTGRES_SCHEMA_VERSION,
            });
        }
        if version == 0 {
            return Err(StoreError::Backend(
                "the database holds no CareVault schema".into(),
            ));
        }
        Ok(store)
    }

    fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let (url, mode, root) = split_tls(&options.url)?;
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|_| StoreError::Backend("the database URL is not valid".into()))?;
        if let Some(pw) = &options.password {
            config.password(pw.as_bytes());
        }
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("carevault");
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        let tls = tls_connector(mode, root.as_deref())?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the connection pool: {e}")))?;
        Ok(Self {
            pool,
            target: redact_url(&url).into(),
            ids: Arc::new(crate::ids::IdPool::new(crate::ids::BLOCK)),
            commit_seconds: Arc::new(crate::stats::Histogram::new(crate::stats::LATENCY_BUCKETS)),
        })
    }

    /// Pool use, the database's size and write latency (each write is its own transaction: no
    /// batches, no WAL file of ours).
    pub(super) async fn stats(&self) -> crate::stats::StoreStats {
        let status = self.pool.status();
        let database_bytes = self
            .query_opt("SELECT pg_database_size(current_database())", &[])
            .await
            .ok()
            .flatten()
            .and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok());
        crate::stats::StoreStats {
            backend: "postgres",
            database_bytes,
            wal_bytes: None,
            pool: crate::stats::PoolUse {
                in_use: status.size.saturating_sub(status.available) as u64,
                idle: status.available as u64,
                max: status.max_size as u64,
            },
            batch_size: None,
            commit_seconds: Some(self.commit_seconds.snapshot()),
            wal_checkpoint_age_seconds: None,
        }
    }

    /// The database this store talks to, without a password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The rights of the role this store connects as: (superuser, createrole, createdb), for
    /// the posture check (a server needs none of them).
    pub async fn role_rights(&self) -> Result<(bool, bool, bool), StoreError> {
        let row = self
            .query_opt(
                "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .ok_or_else(|| StoreError::Backend("the current role is not in pg_roles".into()))?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    /// A pooled connection, for tools that work on the schema directly (copying an
    /// environment in).
    pub(crate) async fn client_for_tools(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.client().await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => map_connect_err(&e),
            other => StoreError::Unavailable(format!("no database connection: {other}")),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // Several nodes may start at once: creating the table races harmlessly, and each
        // migration claims its version row first, so exactly one node applies it.
        for attempt in 0..3 {
            match client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS carevault_schema (
                        version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                )
                .await
            {
                Ok(()) => break,
                Err(_) if attempt < 2 => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(map_err(&e)),
            }
        }
        let current = schema_version(&client).await?;
        if current > POSTGRES_SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: current,
                supported: POSTGRES_SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i64 + 1;
            let tx = client.transaction().await.map_err(|e| map_err(&e))?;
            let claimed = tx
                .execute(
                    "INSERT INTO carevault_schema (version) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&version],
                )
                .await
                .map_err(|e| map_err(&e))?;
            if claimed == 0 {
                // Another node applied it while we waited.
                tx.rollback().await.map_err(|e| map_err(&e))?;
                continue;
            }
            tx.batch_execute(sql).await.map_err(|e| map_err(&e))?;
            tx.commit().await.map_err(|e| map_err(&e))?;
            tracing::info!(event = "postgres_migrated", version);
        }
        Ok(())
    }
}

async fn schema_version(client: &tokio_postgres::Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_name = 'carevault_schema')",
            &[],
        )
        .await
        .map_err(|e| map_err(&e))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM carevault_schema",
            &[],
        )
        .await
        .map_err(|e| map_err(&e))?;
    Ok(row.get(0))
}

/// Why one attempt at a transaction failed.
pub(super) enum TxError {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

pub(super) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Map a driver error to a [`StoreError`] without row contents: a server error is named by its
/// SQLSTATE only (its message and detail may quote values); transport errors by their kind.
pub(super) fn map_err(e: &tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        let class = &code.code()[..2.min(code.code().len())];
        return match code.code() {
            "23505" => StoreError::AlreadyExists,
            // connection exception, insufficient resources, operator intervention (shutdown,
            // cannot connect now), read-only transaction, system error
            _ if ["08", "53", "57", "58"].contains(&class) || code.code() == "25006" => {
                StoreError::Unavailable(format!("SQLSTATE {}", code.code()))
            }
            _ => StoreError::Backend(format!("SQLSTATE {}", code.code())),
        };
    }
    // No SQLSTATE: I/O, a closed connection, TLS, a timeout. All transient from our side.
    StoreError::Unavailable(format!("database connection: {}", with_causes(e)))
}

/// The error and its causes: tokio-postgres's `Display` names only the kind ("error performing
/// TLS handshake"), the reason ("invalid peer certificate: UnknownIssuer", "Connection
/// refused") is its source. Only for errors without SQLSTATE: a server error's source would
/// quote its message and detail, which may hold row values.
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Map a failure to open a connection. The server refusing it (pg_hba.conf, authentication, an
/// unknown database or role: SQLSTATE classes 28 and 3D) keeps the server's message, which names
/// host, role and database, never a password or row values, and without which an operator
/// sees only "SQLSTATE 28000". It is [`StoreError::Unavailable`]: no request can be served.
fn map_connect_err(e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        if code.starts_with("28") || code.starts_with("3D") {
            return StoreError::Unavailable(format!(
                "the database refused the connection: {} (SQLSTATE {code})",
                db.message()
            ));
        }
    }
    map_err(e)
}

pub(super) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub(super) async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, TxError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&stmt, params).await?)
}

/// Run one of the statements written once for both backends ([`crate::statements`]).
/// The number of rows it changed.
pub(super) async fn run(tx: &Transaction<'_>, statement: &Statement<'_>) -> Result<u64, TxError> {
    let params: Vec<&(dyn ToSql + Sync)> = statement
        .params
        .iter()
        .map(|p| bind!(p, &(dyn ToSql + Sync)))
        .collect();
    let changed = exec(tx, statement.sql.postgres, &params).await?;
    statement.check(changed)?;
    Ok(changed)
}

/// A row of [`crate::rows`] from a PostgreSQL row, whose reads cannot fail (a column of another
/// type panics in the driver, as it always did).
pub(super) fn infallible<T>(read: Result<T, Infallible>) -> T {
    let Ok(value) = read;
    value
}

impl Columns for Row {
    type Error = Infallible;
    fn text(&self, i: usize) -> Result<String, Infallible> {
        Ok(self.get(i))
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, Infallible> {
        Ok(self.get(i))
    }
    fn int(&self, i: usize) -> Result<i64, Infallible> {
        Ok(self.get(i))
    }
    fn flag(&self, i: usize) -> Result<bool, Infallible> {
        Ok(self.get(i))
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, Infallible> {
        Ok(self.get(i))
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, Infallible> {
        Ok(self.get(i))
    }
    fn small(&self, i: usize) -> Result<u32, Infallible> {
        Ok(u32_of(self.get(i)))
    }
    fn id(&self, i: usize) -> Result<u64, Infallible> {
        Ok(u64_of(self.get(i)))
    }
    fn audit_bytes(&self, i: usize) -> Result<Vec<u8>, Infallible> {
        Ok(self.get(i))
    }
}

pub(super) fn resource_row(r: &Row, at: usize) -> ResourceRow {
    infallible(rows::resource_row(r, at))
}

pub(super) fn history_entry(r: &Row) -> HistoryEntry {
    infallible(rows::history_entry(r))
}

pub(super) fn principal_row(r: &Row) -> PrincipalRow {
    infallible(rows::principal_row(r))
}

pub(super) fn api_key_row(r: &Row) -> ApiKeyRow {
    infallible(rows::api_key_row(r))
}

pub(super) fn data_key_row(r: &Row) -> DataKeyRow {
    infallible(rows::data_key_row(r))
}

pub(super) fn stored_event(r: &Row) -> StoredEvent {
    infallible(rows::stored_event(r))
}

pub(super) fn checkpoint_row(r: &Row) -> Checkpoint {
    infallible(rows::checkpoint_row(r))
}

impl PostgresStore {
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(|e| map_err(&e))?;
        client.query(&stmt, params).await.map_err(|e| map_err(&e))
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    pub(super) async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
            .await?
            .map(|r| r.get(0)))
    }
}

crate::forward::forward_store!(PostgresStore {
    async fn compartment_organizations(
        &self,
        compartments: Vec<String>,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        Self::compartment_organizations(self, compartments).await
    }

    async fn policy_version(&self) -> Result<i64, StoreError> {
        Self::policy_version(self).await
    }
});
