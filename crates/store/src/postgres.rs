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

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use carevault_audit::{Checkpoint, StoredEvent, chain_hash};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::{
    ApiKeyRow, AuditQuery, BreakGlassRow, CredentialRow, DataKeyRow, DataRotationProgress,
    EnrollmentRow, HistoryEntry, HistoryQuery, IndexClause, NewAuditEvent, NewResourceVersion,
    PolicyRow, PrincipalRow, ResourceRow, SessionRow, ShredApprovalRow, Store, StoreError, WriteOp,
};

/// Migrations, in order (`migrations/postgres/NNNN_*.sql`); `carevault_schema` records each one
/// applied (its version = index + 1).
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/postgres/0001_initial.sql"
    )),
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/postgres/0002_shred.sql"
    )),
    // Data-key rotation: a compartment may have an old (retiring) key beside its live one, so
    // the compartment is unique among live keys only. The KEK wrap floor starts at v1.
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/postgres/0003_data_key_rotation.sql"
    )),
    // An audit event's patients are keyed by the event first, as in SQLite's schema 10: rows
    // arrive in sequence order and append, and the audit search only asks whether an event it
    // walks names a patient.
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/postgres/0004_audit_patient_by_event.sql"
    )),
    // A resource naming several patients is sealed under the key of that set of patients, whose
    // compartment name lists them all and can outgrow a B-tree entry (about 2,700 bytes): the
    // live keys are unique by a digest of the name (lookups compare the name itself too).
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/postgres/0005_data_key_live_digest.sql"
    )),
];

/// Every data key (all generations) whose compartment names the patient compartment `$1`: its
/// own, and those of resources naming several patients (`Patient/a Patient/b`).
const DATA_KEYS_NAMING: &str = "SELECT id FROM data_key WHERE compartment = $1
    OR position(' ' || $1 || ' ' in ' ' || compartment || ' ') > 0";

/// The schema version this binary writes.
pub const POSTGRES_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How often a transaction that lost a serialization race is tried again.
const MAX_ATTEMPTS: u32 = 8;

/// TLS to the database, as libpq's `sslmode` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain TCP (only sensible on loopback or a private network).
    Disable,
    /// TLS, without checking the server's certificate (protects against passive eavesdropping).
    Require,
    /// TLS, the certificate checked against `sslrootcert` and the host name.
    VerifyFull,
}

/// Where and how to connect. `Debug` never shows the password.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/db?sslmode=...&sslrootcert=...`; a password in it is accepted
    /// (when it came from the environment) but `password` wins.
    pub url: String,
    pub password: Option<String>,
    pub pool_size: usize,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Check the URL (syntax, `sslmode`, `sslrootcert`) without connecting.
    pub fn check(&self) -> Result<(), StoreError> {
        let (url, _, _) = split_tls(&self.url)?;
        tokio_postgres::Config::from_str(&url)
            .map(|_| ())
            .map_err(|_| StoreError::Backend("not a valid PostgreSQL URL".into()))
    }
}

/// The URL without its password (for messages and logs).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let tail = tail.split('?').next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// True when the URL carries a password (`user:password@`, or `password=` in its query, which
/// tokio-postgres accepts as well).
pub fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = rest.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("password"))
    });
    in_userinfo || in_query
}

/// Split `sslmode` and `sslrootcert` off the URL's query (tokio-postgres knows neither
/// `verify-full` nor root certificate files); the rest is for tokio-postgres.
fn split_tls(url: &str) -> Result<(String, SslMode, Option<String>), StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = SslMode::Disable;
    let mut root = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = match v {
                    "disable" => SslMode::Disable,
                    "require" => SslMode::Require,
                    "verify-full" => SslMode::VerifyFull,
                    _ => {
                        return Err(StoreError::Backend(
                            "sslmode must be disable, require or verify-full".into(),
                        ));
                    }
                }
            }
            "sslrootcert" => root = Some(percent_decode(v)?),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    match (mode, &root) {
        (SslMode::VerifyFull, None) => Err(StoreError::Backend(
            "sslmode=verify-full needs sslrootcert=PATH (the CA certificate, PEM)".into(),
        )),
        // libpq checks the certificate against sslrootcert under `require` (as `verify-ca`);
        // we would not, and silently checking less than the operator asked for is worse than
        // refusing.
        (SslMode::Require | SslMode::Disable, Some(_)) => Err(StoreError::Backend(
            "sslrootcert is only used with sslmode=verify-full (require does not check the \
             server's certificate)"
                .into(),
        )),
        _ => Ok((url, mode, root)),
    }
}

/// Decode `%XX` escapes in a URL query value (a path such as `/etc/db%20ca.pem`).
fn percent_decode(value: &str) -> Result<String, StoreError> {
    let bad = || StoreError::Backend("sslrootcert: invalid %-escape".into());
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
            let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// PostgreSQL through a connection pool. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Where we are connected, without a password, for messages.
    target: Arc<str>,
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
        })
    }

    /// The database this store talks to, without a password.
    pub fn target(&self) -> &str {
        &self.target
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

    async fn try_write(&self, ops: &[WriteOp]) -> Result<(), TxError> {
        let mut client = self.client().await.map_err(TxError::Store)?;
        let tx = client.transaction().await?;
        // Audit appends last: they hold this node's chain head until commit, so the less
        // work after them, the less other requests of this node wait.
        for op in ops.iter().filter(|o| !matches!(o, WriteOp::AppendAudit(_))) {
            apply(&tx, op).await?;
        }
        for op in ops {
            if let WriteOp::AppendAudit(event) = op {
                append_audit(&tx, event).await.map_err(|e| match e {
                    TxError::Pg(e) if is_retryable(&e) => TxError::Pg(e),
                    TxError::Pg(e) => TxError::Store(audit_unavailable(map_err(&e))),
                    TxError::Store(e) => TxError::Store(audit_unavailable(e)),
                })?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

fn audit_unavailable(e: StoreError) -> StoreError {
    let detail = match e {
        StoreError::Unavailable(d) | StoreError::Backend(d) => d,
        other => other.to_string(),
    };
    StoreError::Unavailable(format!("audit trail not writable: {detail}"))
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

fn tls_connector(
    mode: SslMode,
    root: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS setup: {e}")))?;
    let config = match (mode, root) {
        (SslMode::VerifyFull, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Backend(format!("cannot read sslrootcert: {}", e.kind()))
            })?;
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|_| {
                    StoreError::Backend("sslrootcert holds no valid PEM certificate".into())
                })?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Backend(format!("sslrootcert: {e}")))?;
            }
            if roots.is_empty() {
                return Err(StoreError::Backend(
                    "sslrootcert holds no certificate".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode=require`: encrypted, the certificate not checked (libpq's meaning of `require`).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why one attempt at a transaction failed.
enum TxError {
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

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Map a driver error to a [`StoreError`] without row contents: a server error is named by its
/// SQLSTATE only (its message and detail may quote values); transport errors by their kind.
fn map_err(e: &tokio_postgres::Error) -> StoreError {
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

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, TxError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&stmt, params).await?)
}

async fn apply(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    match op {
        WriteOp::SetMeta { key, value } => {
            exec(
                tx,
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[key, value],
            )
            .await?;
        }
        WriteOp::PutResource(new) => put_resource(tx, new).await?,
        WriteOp::InsertDataKeyIfAbsent {
            compartment,
            wrapped,
            kek_version,
            created_at,
        } => {
            check_wrap_floor(tx, *kek_version).await?;
            exec(
                tx,
                "INSERT INTO data_key (compartment, wrapped, kek_version, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (md5(compartment)) WHERE state <> 'retiring' DO NOTHING",
                &[compartment, wrapped, &i64::from(*kek_version), created_at],
            )
            .await?;
        }
        WriteOp::MarkDataKeysForRotation { compartment_prefix } => {
            exec(
                tx,
                "UPDATE data_key SET state = 'rotate'
                 WHERE state = 'active' AND left(compartment, length($1)) = $1",
                &[compartment_prefix],
            )
            .await?;
        }
        WriteOp::RotateDataKey {
            old_id,
            compartment,
            wrapped,
            kek_version,
            created_at,
        } => {
            check_wrap_floor(tx, *kek_version).await?;
            // The update waits for writers holding the old key row (`FOR SHARE` in
            // `put_resource`): once it commits, no new version can reference the old key.
            let retired = exec(
                tx,
                "UPDATE data_key SET state = 'retiring'
                 WHERE id = $1 AND compartment = $2 AND state = 'rotate'",
                &[&i64::try_from(*old_id).unwrap_or(i64::MAX), compartment],
            )
            .await?;
            if retired == 1 {
                exec(
                    tx,
                    "INSERT INTO data_key (compartment, wrapped, kek_version, created_at) VALUES ($1, $2, $3, $4)",
                    &[compartment, wrapped, &i64::from(*kek_version), created_at],
                )
                .await?;
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
            check_dek_usable(tx, *dek_id).await?;
            exec(
                tx,
                "UPDATE resource_version SET dek_id = $1, body = $2
                 WHERE rtype = $3 AND id = $4 AND version = $5 AND dek_id = $6",
                &[
                    &i64::try_from(*dek_id).unwrap_or(i64::MAX),
                    body,
                    rtype,
                    id,
                    &i64::from(*version),
                    &i64::try_from(*from_dek_id).unwrap_or(i64::MAX),
                ],
            )
            .await?;
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
        WriteOp::RewrapDataKey {
            id,
            from_kek_version,
            wrapped,
            kek_version,
        } => {
            check_wrap_floor(tx, *kek_version).await?;
            // Conditional on the version read: a key re-wrapped (or shredded) meanwhile by
            // another node is left alone.
            exec(
                tx,
                "UPDATE data_key SET wrapped = $1, kek_version = $2 WHERE id = $3 AND kek_version = $4",
                &[
                    wrapped,
                    &i64::from(*kek_version),
                    &i64::try_from(*id).unwrap_or(i64::MAX),
                    &i64::from(*from_kek_version),
                ],
            )
            .await?;
        }
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
        WriteOp::InsertPrincipal(p) => {
            exec(
                tx,
                "INSERT INTO principal (id, username, roles, organization, disabled, locked, failed_logins, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &p.id,
                    &p.username,
                    &p.roles.join(","),
                    &p.organization,
                    &p.disabled,
                    &p.locked,
                    &i64::from(p.failed_logins),
                    &p.created_at,
                ],
            )
            .await?;
        }
        WriteOp::UpdatePrincipal {
            principal_id,
            disabled,
            locked,
            failed_logins,
        } => {
            exec(
                tx,
                "UPDATE principal SET disabled = COALESCE($2, disabled), locked = COALESCE($3, locked),
                 failed_logins = COALESCE($4, failed_logins) WHERE id = $1",
                &[
                    principal_id,
                    disabled,
                    locked,
                    &failed_logins.map(i64::from),
                ],
            )
            .await?;
        }
        WriteOp::RecordLoginFailure {
            principal_id,
            lock_after,
        } => {
            exec(
                tx,
                "UPDATE principal SET failed_logins = failed_logins + 1,
                 locked = CASE WHEN failed_logins + 1 >= $2 THEN TRUE ELSE locked END WHERE id = $1",
                &[principal_id, &i64::from(*lock_after)],
            )
            .await?;
        }
        WriteOp::SetCredential(c) => {
            exec(
                tx,
                "INSERT INTO credential (principal_id, password_hash, totp_secret, totp_last_step, recovery_codes)
                 VALUES ($1, $2, $3, $4, $5)
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
            )
            .await?;
        }
        WriteOp::DeleteCredential { principal_id } => {
            exec(
                tx,
                "DELETE FROM credential WHERE principal_id = $1",
                &[principal_id],
            )
            .await?;
        }
        WriteOp::AdvanceTotpStep { principal_id, step } => {
            let n = exec(
                tx,
                "UPDATE credential SET totp_last_step = $2 WHERE principal_id = $1 AND totp_last_step < $2",
                &[principal_id, step],
            )
            .await?;
            if n != 1 {
                return Err(StoreError::Conflict.into());
            }
        }
        WriteOp::ConsumeRecoveryCode {
            principal_id,
            code_hash,
        } => {
            let stmt = tx
                .prepare_cached("SELECT recovery_codes FROM credential WHERE principal_id = $1")
                .await?;
            let codes: String = tx
                .query_opt(&stmt, &[principal_id])
                .await?
                .map(|r| r.get(0))
                .ok_or(StoreError::Conflict)?;
            let mut list = split_list(&codes);
            let before = list.len();
            list.retain(|c| *c != code_hash.as_str());
            if list.len() == before {
                return Err(StoreError::Conflict.into());
            }
            // Conditional on the list read: a concurrent use of the same code on another node
            // changes it first, and this one then touches no row.
            let n = exec(
                tx,
                "UPDATE credential SET recovery_codes = $2 WHERE principal_id = $1 AND recovery_codes = $3",
                &[principal_id, &list.join(","), &codes],
            )
            .await?;
            if n != 1 {
                return Err(StoreError::Conflict.into());
            }
        }
        WriteOp::InsertEnrollment(e) => {
            exec(
                tx,
                "INSERT INTO enrollment (token_hash, principal_id, expires_at, pending_totp) VALUES ($1, $2, $3, $4)",
                &[
                    &e.token_hash,
                    &e.principal_id,
                    &e.expires_at,
                    &e.pending_totp_sealed,
                ],
            )
            .await?;
        }
        WriteOp::SetEnrollmentPendingTotp { token_hash, sealed } => {
            let n = exec(
                tx,
                "UPDATE enrollment SET pending_totp = $2 WHERE token_hash = $1",
                &[token_hash, sealed],
            )
            .await?;
            if n != 1 {
                return Err(StoreError::Conflict.into());
            }
        }
        WriteOp::DeleteEnrollments { principal_id } => {
            exec(
                tx,
                "DELETE FROM enrollment WHERE principal_id = $1",
                &[principal_id],
            )
            .await?;
        }
        WriteOp::InsertSession(s) => {
            exec(
                tx,
                "INSERT INTO session (token_hash, principal_id, created_at, last_seen, revoked) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &s.token_hash,
                    &s.principal_id,
                    &s.created_at,
                    &s.last_seen,
                    &s.revoked,
                ],
            )
            .await?;
        }
        WriteOp::TouchSession {
            token_hash,
            last_seen,
        } => {
            exec(
                tx,
                "UPDATE session SET last_seen = GREATEST(last_seen, $2) WHERE token_hash = $1",
                &[token_hash, last_seen],
            )
            .await?;
        }
        WriteOp::RevokeSession { token_hash } => {
            exec(
                tx,
                "UPDATE session SET revoked = TRUE WHERE token_hash = $1",
                &[token_hash],
            )
            .await?;
        }
        WriteOp::RevokeSessions { principal_id } => {
            exec(
                tx,
                "UPDATE session SET revoked = TRUE WHERE principal_id = $1",
                &[principal_id],
            )
            .await?;
        }
        // Applied after every other operation, by `try_write`.
        WriteOp::AppendAudit(_) => {}
        WriteOp::InsertCheckpoint(cp) => insert_checkpoint(tx, cp).await?,
        WriteOp::SetCompartmentOrganization {
            compartment,
            organization,
        } => {
            exec(
                tx,
                "INSERT INTO compartment_org (compartment, organization) VALUES ($1, $2)
                 ON CONFLICT (compartment) DO UPDATE SET organization = excluded.organization",
                &[compartment, organization],
            )
            .await?;
        }
        WriteOp::InsertApiKey(k) => {
            exec(
                tx,
                "INSERT INTO api_key (name, key_hash, owner_id, scopes, allowed_cidrs, expires_at, revoked, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            )
            .await?;
        }
        WriteOp::RevokeApiKey { name } => {
            if exec(
                tx,
                "UPDATE api_key SET revoked = TRUE WHERE name = $1",
                &[name],
            )
            .await?
                != 1
            {
                return Err(StoreError::Conflict.into());
            }
        }
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
        WriteOp::ReplaceSearchIndex { rtype, id, tokens } => {
            exec(
                tx,
                "DELETE FROM search_index WHERE rtype = $1 AND id = $2",
                &[rtype, id],
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
                    &[rtype, id, &params, &values],
                )
                .await?;
            }
        }
        WriteOp::InsertBreakGlass(b) => {
            exec(
                tx,
                "INSERT INTO break_glass (principal_id, until, patient, reason, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &b.principal_id,
                    &b.until,
                    &b.patient,
                    &b.reason,
                    &b.created_at,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// The policy-set version is one counter row, bumped under its row lock.
async fn bump_policy_version(tx: &Transaction<'_>) -> Result<i64, TxError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE policy_state SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .await?;
    let row = tx.query_one(&stmt, &[]).await?;
    Ok(row.get(0))
}

/// [`StoreError::StaleKey`] unless `kek_version` may still wrap new data keys. The floor row is
/// read `FOR SHARE`: raising the floor (before a KEK version is destroyed) waits for this
/// transaction, so the destroy's count of keys under the version sees this key.
async fn check_wrap_floor(tx: &Transaction<'_>, kek_version: u32) -> Result<(), TxError> {
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
async fn check_dek_usable(tx: &Transaction<'_>, dek_id: u64) -> Result<(), TxError> {
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

async fn put_resource(tx: &Transaction<'_>, new: &NewResourceVersion) -> Result<(), TxError> {
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

async fn append_audit(tx: &Transaction<'_>, e: &NewAuditEvent) -> Result<(), TxError> {
    exec(
        tx,
        "INSERT INTO audit_head (node, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (node) DO NOTHING",
        &[&e.node, &carevault_audit::GENESIS.as_slice()],
    )
    .await?;
    let stmt = tx
        .prepare_cached("UPDATE audit_head SET seq = seq + 1 WHERE node = $1 RETURNING seq, hash")
        .await?;
    let head = tx.query_one(&stmt, &[&e.node]).await?;
    let seq: i64 = head.get(0);
    let prev: Vec<u8> = head.get(1);
    let prev = <[u8; 32]>::try_from(prev.as_slice())
        .map_err(|_| StoreError::Backend("corrupt audit head".into()))?;
    let hash = chain_hash(&prev, &e.node, u64_of(seq), e.time_us, &e.body);
    exec(
        tx,
        "UPDATE audit_head SET hash = $2 WHERE node = $1",
        &[&e.node, &hash.as_slice()],
    )
    .await?;
    exec(
        tx,
        "INSERT INTO audit_event (node, seq, time_us, principal, action, outcome, body, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &e.node,
            &seq,
            &e.time_us,
            &e.principal,
            &e.action,
            &e.outcome,
            &e.body,
            &hash.as_slice(),
        ],
    )
    .await?;
    if !e.patients.is_empty() {
        exec(
            tx,
            "INSERT INTO audit_patient (patient, node, seq) SELECT p, $2, $3 FROM UNNEST($1::TEXT[]) AS u (p)
             ON CONFLICT DO NOTHING",
            &[&e.patients, &e.node, &seq],
        )
        .await?;
    }
    Ok(())
}

async fn insert_checkpoint(tx: &Transaction<'_>, cp: &Checkpoint) -> Result<(), TxError> {
    let stmt = tx
        .prepare_cached("SELECT MAX(last_seq) FROM audit_checkpoint WHERE node = $1")
        .await?;
    let last: Option<i64> = tx.query_one(&stmt, &[&cp.node]).await?.get(0);
    if u64_of(last.unwrap_or(0)) + 1 != cp.first_seq {
        return Err(StoreError::Conflict.into());
    }
    // UNIQUE (node, first_seq) turns a concurrent checkpoint of the same span into a conflict.
    exec(
        tx,
        "INSERT INTO audit_checkpoint (node, first_seq, last_seq, head_hash, time_us, prev_signature, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &cp.node,
            &i64::try_from(cp.first_seq).unwrap_or(i64::MAX),
            &i64::try_from(cp.last_seq).unwrap_or(i64::MAX),
            &cp.head_hash.as_slice(),
            &cp.time_us,
            &cp.prev_signature,
            &cp.signature,
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

fn split_list(s: &str) -> Vec<&str> {
    s.split(',').filter(|x| !x.is_empty()).collect()
}

const RESOURCE_COLUMNS: &str =
    "v.rtype, v.id, v.version, v.last_updated_us, v.deleted, v.dek_id, v.body";

/// `seq` then [`RESOURCE_COLUMNS`].
fn history_entry(r: &Row) -> HistoryEntry {
    HistoryEntry {
        seq: r.get(0),
        row: resource_row(r, 1),
    }
}

fn resource_row(r: &Row, at: usize) -> ResourceRow {
    ResourceRow {
        rtype: r.get(at),
        id: r.get(at + 1),
        version: u32_of(r.get(at + 2)),
        last_updated_us: r.get(at + 3),
        deleted: r.get(at + 4),
        dek_id: u64_of(r.get(at + 5)),
        body: r.get(at + 6),
    }
}

const PRINCIPAL_COLUMNS: &str =
    "id, username, roles, organization, disabled, locked, failed_logins, created_at";

fn principal_row(r: &Row) -> PrincipalRow {
    let roles: String = r.get(2);
    PrincipalRow {
        id: r.get(0),
        username: r.get(1),
        roles: split_list(&roles).into_iter().map(str::to_owned).collect(),
        organization: r.get(3),
        disabled: r.get(4),
        locked: r.get(5),
        failed_logins: u32_of(r.get(6)),
        created_at: r.get(7),
    }
}

fn data_key_row(r: &Row) -> DataKeyRow {
    DataKeyRow {
        id: u64_of(r.get(0)),
        compartment: r.get(1),
        wrapped: r.get(2),
        kek_version: u32_of(r.get(3)),
    }
}

const API_KEY_COLUMNS: &str =
    "name, key_hash, owner_id, scopes, allowed_cidrs, expires_at, revoked, created_at";

fn api_key_row(r: &Row) -> ApiKeyRow {
    let scopes: String = r.get(3);
    let cidrs: String = r.get(4);
    ApiKeyRow {
        name: r.get(0),
        key_hash: r.get(1),
        owner_id: r.get(2),
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        allowed_cidrs: cidrs.split_whitespace().map(str::to_owned).collect(),
        expires_at: r.get(5),
        revoked: r.get(6),
        created_at: r.get(7),
    }
}

fn hash32(bytes: &[u8]) -> [u8; 32] {
    // A damaged hash column still reaches the verifier, which then reports the event.
    <[u8; 32]>::try_from(bytes).unwrap_or([0u8; 32])
}

fn stored_event(r: &Row) -> StoredEvent {
    let hash: Vec<u8> = r.get(4);
    StoredEvent {
        node: r.get(0),
        seq: u64_of(r.get(1)),
        time_us: r.get(2),
        body: r.get(3),
        hash: hash32(&hash),
    }
}

const CHECKPOINT_COLUMNS: &str =
    "node, first_seq, last_seq, head_hash, time_us, prev_signature, signature";

fn checkpoint_row(r: &Row) -> Checkpoint {
    let head: Vec<u8> = r.get(3);
    Checkpoint {
        node: r.get(0),
        first_seq: u64_of(r.get(1)),
        last_seq: u64_of(r.get(2)),
        head_hash: hash32(&head),
        time_us: r.get(4),
        prev_signature: r.get(5),
        signature: r.get(6),
    }
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
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_write(&ops).await {
                Ok(()) => return Ok(()),
                Err(TxError::Pg(e)) if is_retryable(&e) && attempt < MAX_ATTEMPTS => {
                    // Lost a serialization race with another transaction: back off a little
                    // (longer each time) and run the whole transaction again.
                    tokio::time::sleep(Duration::from_millis(2u64 << attempt)).await;
                }
                Err(TxError::Pg(e)) => return Err(map_err(&e)),
                Err(TxError::Store(e)) => return Err(e),
            }
        }
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
            .await?
            .map(|r| r.get(0)))
    }

    async fn resource_current(
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

    async fn resource_version(
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

    async fn history(&self, q: HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
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

    async fn versions_after(
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

    async fn data_key_by_compartment(
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

    async fn data_keys_naming(&self, patient: &str) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .query(DATA_KEYS_NAMING, &[&patient])
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect())
    }

    async fn data_key_by_id(&self, id: u64) -> Result<Option<DataKeyRow>, StoreError> {
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

    async fn data_key_counts(&self) -> Result<Vec<(u32, u64)>, StoreError> {
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

    async fn data_keys_not_under(
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

    async fn data_keys_to_rotate(&self, limit: u32) -> Result<Vec<DataKeyRow>, StoreError> {
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

    async fn versions_under_retiring_keys(
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

    async fn unused_retiring_keys(&self, limit: u32) -> Result<Vec<u64>, StoreError> {
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

    async fn data_rotation_progress(&self) -> Result<DataRotationProgress, StoreError> {
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

    async fn shred_approval(
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

    async fn principal_by_username(
        &self,
        username: &str,
    ) -> Result<Option<PrincipalRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!("SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE username = $1"),
                &[&username],
            )
            .await?
            .map(|r| principal_row(&r)))
    }

    async fn principal_by_id(&self, id: &str) -> Result<Option<PrincipalRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!("SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE id = $1"),
                &[&id],
            )
            .await?
            .map(|r| principal_row(&r)))
    }

    async fn principals(&self) -> Result<Vec<PrincipalRow>, StoreError> {
        Ok(self
            .query(
                &format!("SELECT {PRINCIPAL_COLUMNS} FROM principal ORDER BY username"),
                &[],
            )
            .await?
            .iter()
            .map(principal_row)
            .collect())
    }

    async fn credential(&self, principal_id: &str) -> Result<Option<CredentialRow>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT principal_id, password_hash, totp_secret, totp_last_step, recovery_codes
                 FROM credential WHERE principal_id = $1",
                &[&principal_id],
            )
            .await?
            .map(|r| {
                let codes: String = r.get(4);
                CredentialRow {
                    principal_id: r.get(0),
                    password_hash: r.get(1),
                    totp_secret_sealed: r.get(2),
                    totp_last_step: r.get(3),
                    recovery_code_hashes: split_list(&codes)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                }
            }))
    }

    async fn enrollment(&self, token_hash: &str) -> Result<Option<EnrollmentRow>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT token_hash, principal_id, expires_at, pending_totp FROM enrollment WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?
            .map(|r| EnrollmentRow {
                token_hash: r.get(0),
                principal_id: r.get(1),
                expires_at: r.get(2),
                pending_totp_sealed: r.get(3),
            }))
    }

    async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT token_hash, principal_id, created_at, last_seen, revoked FROM session WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?
            .map(|r| SessionRow {
                token_hash: r.get(0),
                principal_id: r.get(1),
                created_at: r.get(2),
                last_seen: r.get(3),
                revoked: r.get(4),
            }))
    }

    async fn audit_events(
        &self,
        after: Option<(String, u64)>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let (node, seq) = after.map_or((None, 0i64), |(n, s)| {
            (Some(n), i64::try_from(s).unwrap_or(i64::MAX))
        });
        // Byte order (COLLATE "C") for node names, so paging agrees with the verifier's order.
        Ok(self
            .query(
                r#"SELECT node, seq, time_us, body, hash FROM audit_event
                 WHERE $1::TEXT IS NULL OR node COLLATE "C" > $1 OR (node = $1 AND seq > $2)
                 ORDER BY node COLLATE "C", seq LIMIT $3"#,
                &[&node, &seq, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(stored_event)
            .collect())
    }

    async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        Ok(self
            .query(
                &format!(
                    r#"SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint ORDER BY node COLLATE "C", last_seq"#
                ),
                &[],
            )
            .await?
            .iter()
            .map(checkpoint_row)
            .collect())
    }

    async fn audit_head(
        &self,
        node: &str,
    ) -> Result<(Option<(u64, [u8; 32])>, Option<Checkpoint>), StoreError> {
        let head = self
            .query_opt(
                "SELECT seq, hash FROM audit_event WHERE node = $1 ORDER BY seq DESC LIMIT 1",
                &[&node],
            )
            .await?
            .map(|r| {
                let hash: Vec<u8> = r.get(1);
                (u64_of(r.get(0)), hash32(&hash))
            });
        let cp = self
            .query_opt(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint WHERE node = $1 ORDER BY last_seq DESC LIMIT 1"
                ),
                &[&node],
            )
            .await?
            .map(|r| checkpoint_row(&r));
        Ok((head, cp))
    }

    async fn compartment_organization(
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

    async fn compartment_organizations(
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

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!("SELECT {API_KEY_COLUMNS} FROM api_key WHERE key_hash = $1"),
                &[&key_hash],
            )
            .await?
            .map(|r| api_key_row(&r)))
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        Ok(self
            .query(
                &format!("SELECT {API_KEY_COLUMNS} FROM api_key ORDER BY name"),
                &[],
            )
            .await?
            .iter()
            .map(api_key_row)
            .collect())
    }

    async fn policies(&self) -> Result<(i64, Vec<PolicyRow>), StoreError> {
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

    async fn policy_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .query_opt("SELECT version FROM policy_state WHERE id = 1", &[])
            .await?
            .map_or(0, |r| r.get(0)))
    }

    async fn break_glass_grants(
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

    async fn search_index(
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

    async fn resources_current(
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

    async fn current_under_keys(
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

    async fn resource_ids(&self, rtype: &str) -> Result<Vec<String>, StoreError> {
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

    async fn audit_search(&self, q: AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let (b_time, b_node, b_seq) = match q.before {
            Some((t, n, s)) => (Some(t), Some(n), Some(i64::try_from(s).unwrap_or(i64::MAX))),
            None => (None, None, None),
        };
        Ok(self
            .query(
                r#"SELECT e.node, e.seq, e.time_us, e.body, e.hash FROM audit_event e
                 WHERE ($1::TEXT IS NULL OR e.principal = $1)
                   AND ($2::TEXT IS NULL OR EXISTS (SELECT 1 FROM audit_patient p
                        WHERE p.patient = $2 AND p.node = e.node AND p.seq = e.seq))
                   AND ($3::TEXT IS NULL OR e.action = $3)
                   AND ($4::TEXT IS NULL OR e.outcome = $4)
                   AND ($5::BIGINT IS NULL OR e.time_us >= $5)
                   AND ($6::BIGINT IS NULL OR e.time_us < $6)
                   AND ($7::BIGINT IS NULL OR e.time_us < $7 OR (e.time_us = $7
                        AND (e.node COLLATE "C" < $8::TEXT OR (e.node = $8::TEXT AND e.seq < $9::BIGINT))))
                 ORDER BY e.time_us DESC, e.node COLLATE "C" DESC, e.seq DESC LIMIT $10"#,
                &[
                    &q.principal,
                    &q.patient,
                    &q.action,
                    &q.outcome,
                    &q.since_us,
                    &q.until_us,
                    &b_time,
                    &b_node,
                    &b_seq,
                    &i64::from(q.limit),
                ],
            )
            .await?
            .iter()
            .map(stored_event)
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod tests;
