//! Configuration: what operators write (a TOML file plus `CAREVAULT_*` environment variables)
//! is [`FileConfig`]; what the server runs with, validated, is [`Config`]. No global state, so
//! several servers can run in one process (tests do).
//!
//! Secrets are never values in the file, only paths to files holding them.

pub use crate::public_url::PublicUrl;
use crate::public_url::{allowed_hosts, public_url};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, naming the key (`section.key` or the environment variable).
#[derive(Debug, thiserror::Error)]
#[error("configuration error in `{key}`: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The file's shape. Unknown keys are refused so that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// This node's name in the audit trail (each node keeps its own chain).
    pub node_id: Option<String>,
    /// Plain HTTP instead of TLS; only accepted on a loopback address.
    pub allow_plain_http: Option<bool>,
    pub body_limit_bytes: Option<u64>,
    pub max_json_depth: Option<u64>,
    pub max_bundle_entries: Option<u64>,
    /// The URL clients reach this server at; absolute links are built from it.
    pub public_base_url: Option<String>,
    /// Other host names (`host[:port]`, comma-separated) requests may address.
    pub allowed_hosts: Option<String>,
    pub search: SearchSection,
    pub audit: AuditSection,
    pub tls: TlsSection,
    pub session: SessionSection,
    pub auth: AuthSection,
    pub argon2: Argon2Section,
    pub log: LogSection,
    pub key: KeySection,
    pub database: DatabaseSection,
    pub http: HttpSection,
    /// `CAREVAULT_DATABASE_PASSWORD`: taken from the environment only, never from the file.
    #[serde(skip)]
    pub database_password: Option<secrecy::SecretString>,
}

/// The database: SQLite in the data directory unless `url` names a PostgreSQL server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `postgres://user@host:port/db?sslmode=...`; never with a password when in the file.
    pub url: Option<String>,
    /// A file holding the database password (one line).
    pub password_file: Option<PathBuf>,
    pub pool_size: Option<u64>,
}

/// Connection limits and timeouts (see [`HttpLimits`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub handshake_timeout_secs: Option<u64>,
    pub header_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub body_min_bytes_per_sec: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub h2_max_concurrent_streams: Option<u64>,
    pub h2_max_header_list_bytes: Option<u64>,
    pub h2_max_pending_accept_reset_streams: Option<u64>,
    pub h2_max_local_error_reset_streams: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySection {
    /// Data keys re-wrapped per transaction after a KEK rotation.
    pub rewrap_batch_size: Option<u64>,
    /// Pause between re-wrap batches (to slow the job on a busy server).
    pub rewrap_pause_ms: Option<u64>,
    /// A file holding the passphrase that seals the `file` provider's KEK files.
    pub passphrase_file: Option<PathBuf>,
    /// `file` (default) or `pkcs11`.
    pub provider: Option<String>,
    pub pkcs11_module: Option<PathBuf>,
    pub pkcs11_token_label: Option<String>,
    /// A file holding the token's user PIN.
    pub pkcs11_pin_file: Option<PathBuf>,
    /// `auto` (default), `required` or `off`: lock the process's memory so unsealed keys never
    /// reach swap (see `memory`).
    pub lock_memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSection {
    /// Search parameters (clauses) one search may combine.
    pub max_clauses: Option<u64>,
    /// `_include` and `_revinclude` parameters one search may ask for.
    pub max_includes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// `/readyz` fails once this node's oldest unsigned audit event is older (0: never).
    pub max_unsigned_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    pub idle_timeout_secs: Option<u64>,
    pub absolute_lifetime_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub enrollment_ttl_secs: Option<u64>,
    pub ip_rate_per_minute: Option<u64>,
    pub throttle_after_failures: Option<u64>,
    pub throttle_base_ms: Option<u64>,
    pub throttle_max_ms: Option<u64>,
    pub lock_after_failures: Option<u64>,
    pub break_glass_minutes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Section {
    pub memory_kib: Option<u64>,
    pub iterations: Option<u64>,
    pub parallelism: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub level: Option<String>,
}

/// Every key the file and the environment accept, with its type. The environment variable of
/// `section.key` is `CAREVAULT_SECTION_KEY`.
const KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("data_dir", Kind::Str),
    ("node_id", Kind::Str),
    ("allow_plain_http", Kind::Bool),
    ("body_limit_bytes", Kind::Int),
    ("max_json_depth", Kind::Int),
    ("max_bundle_entries", Kind::Int),
    ("public_base_url", Kind::Str),
    ("allowed_hosts", Kind::Str),
    ("search.max_clauses", Kind::Int),
    ("search.max_includes", Kind::Int),
    ("audit.max_unsigned_secs", Kind::Int),
    ("tls.cert_path", Kind::Str),
    ("tls.key_path", Kind::Str),
    ("session.idle_timeout_secs", Kind::Int),
    ("session.absolute_lifetime_secs", Kind::Int),
    ("auth.enrollment_ttl_secs", Kind::Int),
    ("auth.ip_rate_per_minute", Kind::Int),
    ("auth.throttle_after_failures", Kind::Int),
    ("auth.throttle_base_ms", Kind::Int),
    ("auth.throttle_max_ms", Kind::Int),
    ("auth.lock_after_failures", Kind::Int),
    ("auth.break_glass_minutes", Kind::Int),
    ("argon2.memory_kib", Kind::Int),
    ("argon2.iterations", Kind::Int),
    ("argon2.parallelism", Kind::Int),
    ("log.level", Kind::Str),
    ("key.rewrap_batch_size", Kind::Int),
    ("key.rewrap_pause_ms", Kind::Int),
    ("key.passphrase_file", Kind::Str),
    ("key.provider", Kind::Str),
    ("key.pkcs11_module", Kind::Str),
    ("key.pkcs11_token_label", Kind::Str),
    ("key.pkcs11_pin_file", Kind::Str),
    ("key.lock_memory", Kind::Str),
    ("database.url", Kind::Str),
    ("database.password_file", Kind::Str),
    ("database.pool_size", Kind::Int),
    ("http.handshake_timeout_secs", Kind::Int),
    ("http.header_timeout_secs", Kind::Int),
    ("http.idle_timeout_secs", Kind::Int),
    ("http.body_timeout_secs", Kind::Int),
    ("http.body_min_bytes_per_sec", Kind::Int),
    ("http.max_connections", Kind::Int),
    ("http.max_connections_per_ip", Kind::Int),
    ("http.h2_max_concurrent_streams", Kind::Int),
    ("http.h2_max_header_list_bytes", Kind::Int),
    ("http.h2_max_pending_accept_reset_streams", Kind::Int),
    ("http.h2_max_local_error_reset_streams", Kind::Int),
];

/// Environment variables with the `CAREVAULT_` prefix that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &[
    "CAREVAULT_CONFIG",
    "CAREVAULT_CLI_CONFIG_DIR",
    "CAREVAULT_LOG",
    // Read by the test kit (which key provider test servers use), never by the server.
    "CAREVAULT_TEST_KEY_PROVIDER",
    // Read by `FileConfig::load` into `database_password`: the environment only, never a key
    // of the file.
    "CAREVAULT_DATABASE_PASSWORD",
    // Read by the test kit (which backend the integration tests run on), not the server.
    "CAREVAULT_TEST_BACKEND",
    "CAREVAULT_TEST_POSTGRES_URL",
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Int,
    Bool,
}

pub fn env_var_name(key: &str) -> String {
    format!("CAREVAULT_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Every key (`section.key`) the file and the environment accept, in declaration order. The
/// configuration table in `docs/configuration.md` is tested against this list.
pub fn key_names() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|(key, _)| *key)
}

impl FileConfig {
    /// Read the file (if any), then apply `CAREVAULT_*` variables from `env` on top.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "--config",
                        format!("cannot read {}: {}", path.display(), e.kind()),
                    )
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigError::new("--config", format!("not valid TOML: {}", e.message()))
                })?
            }
            None => toml::Table::new(),
        };
        if let Some(url) = table
            .get("database")
            .and_then(|d| d.get("url"))
            .and_then(|u| u.as_str())
            && carevault_store::url_has_password(url)
        {
            return Err(ConfigError::new(
                "database.url",
                "holds a password; secrets never go in the configuration file (it is copied, \
                 versioned and read more widely than the database): put the password in the file \
                 named by database.password_file or in CAREVAULT_DATABASE_PASSWORD, or give the \
                 whole URL in CAREVAULT_DATABASE_URL",
            ));
        }
        let mut database_password = None;
        for (name, value) in env {
            if name == "CAREVAULT_DATABASE_PASSWORD" {
                database_password = Some(secrecy::SecretString::from(value));
                continue;
            }
            if !name.starts_with("CAREVAULT_") || NON_CONFIG_ENV.contains(&name.as_str()) {
                continue;
            }
            let Some((key, kind)) = KEYS.iter().find(|(k, _)| env_var_name(k) == name) else {
                return Err(ConfigError::new(
                    name,
                    "unknown CareVault environment variable",
                ));
            };
            let parsed = match kind {
                Kind::Str => toml::Value::String(value),
                Kind::Int => toml::Value::Integer(
                    value
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| ConfigError::new(name.clone(), "expected a whole number"))?,
                ),
                Kind::Bool => toml::Value::Boolean(match value.trim() {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    _ => return Err(ConfigError::new(name, "expected true or false")),
                }),
            };
            set_path(&mut table, key, parsed);
        }
        let mut file = toml::Value::Table(table)
            .try_into::<FileConfig>()
            .map_err(|e| {
                // serde names the offending key in its message (e.g. "unknown field `lisen`").
                ConfigError::new(
                    "config",
                    e.message()
                        .lines()
                        .next()
                        .unwrap_or("invalid configuration")
                        .to_owned(),
                )
            })?;
        file.database_password = database_password;
        Ok(file)
    }
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
        None => {
            table.insert(key.to_owned(), value);
        }
    }
}

/// Validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub node_id: String,
    pub plain_http: bool,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub body_limit_bytes: usize,
    pub max_json_depth: usize,
    pub max_bundle_entries: usize,
    /// `public_base_url`; without it, links use the address the listener is bound to.
    pub public_base_url: Option<PublicUrl>,
    /// `allowed_hosts`: lowercase `host[:port]` names requests may also address.
    pub allowed_hosts: Vec<String>,
    pub search_limits: SearchLimits,
    /// `/readyz` fails when the oldest unsigned audit event is older (`None`: never).
    pub audit_max_unsigned: Option<std::time::Duration>,
    pub session_idle_secs: i64,
    pub session_lifetime_secs: i64,
    pub enrollment_ttl_secs: i64,
    pub ip_rate_per_minute: u32,
    pub throttle_after_failures: u32,
    pub throttle_base_ms: u64,
    pub throttle_max_ms: u64,
    pub lock_after_failures: u32,
    pub break_glass_minutes: i64,
    pub argon2: Argon2Params,
    pub log_level: String,
    pub rewrap_batch_size: u32,
    pub rewrap_pause_ms: u64,
    /// Seals KEK files under a passphrase (Argon2id) when set.
    pub key_passphrase_file: Option<PathBuf>,
    /// Where the KEKs are held.
    pub key_provider: KeyProviderConfig,
    /// Whether the server must, may or must not lock its memory.
    pub key_lock_memory: crate::memory::LockMode,
    pub database: Database,
    /// Connection limits and timeouts.
    pub http: HttpLimits,
}

/// Connection hygiene: how long a client may take at each step, and how many connections the
/// server holds. Every value is bounded (see `docs/configuration.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// From accepting a TCP connection to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// HTTP/1.1: from the connection's start, or the end of the previous response, to the end
    /// of the next request's headers (so it also bounds an idle kept-alive HTTP/1.1 connection).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request body must have arrived this long after the request started, plus one second
    /// per `body_min_bytes_per_sec` bytes received (Apache's mod_reqtimeout `body=` rule).
    pub body_timeout: Duration,
    pub body_min_bytes_per_sec: u64,
    /// Connections held at once (lowered at start to fit the file-descriptor limit).
    pub max_connections: usize,
    /// Connections held at once from one IPv4 address or IPv6 /64.
    pub max_connections_per_ip: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_bytes: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
}

impl HttpLimits {
    fn from_section(http: &HttpSection) -> Result<Self, ConfigError> {
        let secs = |key: &str, value: Option<u64>, default: u64| {
            bounded(key, value, default, 1, 3600).map(Duration::from_secs)
        };
        let handshake_timeout = secs(
            "http.handshake_timeout_secs",
            http.handshake_timeout_secs,
            10,
        )?;
        let header_timeout = secs("http.header_timeout_secs", http.header_timeout_secs, 20)?;
        let idle_timeout = secs("http.idle_timeout_secs", http.idle_timeout_secs, 60)?;
        let body_timeout = secs("http.body_timeout_secs", http.body_timeout_secs, 20)?;
        let body_min_bytes_per_sec = bounded(
            "http.body_min_bytes_per_sec",
            http.body_min_bytes_per_sec,
            500,
            0,
            1 << 30,
        )?;
        let max_connections = bounded(
            "http.max_connections",
            http.max_connections,
            4096,
            1,
            1_000_000,
        )?;
        let per_ip = bounded(
            "http.max_connections_per_ip",
            http.max_connections_per_ip,
            256,
            1,
            1_000_000,
        )?;
        let streams = bounded(
            "http.h2_max_concurrent_streams",
            http.h2_max_concurrent_streams,
            100,
            1,
            10_000,
        )?;
        let header_list = bounded(
            "http.h2_max_header_list_bytes",
            http.h2_max_header_list_bytes,
            64 * 1024,
            1024,
            16 * 1024 * 1024,
        )?;
        let pending_resets = bounded(
            "http.h2_max_pending_accept_reset_streams",
            http.h2_max_pending_accept_reset_streams,
            20,
            1,
            10_000,
        )?;
        let error_resets = bounded(
            "http.h2_max_local_error_reset_streams",
            http.h2_max_local_error_reset_streams,
            1024,
            1,
            1_000_000,
        )?;
        // The bounds above keep every value inside the narrower types below.
        Ok(Self {
            handshake_timeout,
            header_timeout,
            idle_timeout,
            body_timeout,
            body_min_bytes_per_sec,
            max_connections: max_connections as usize,
            max_connections_per_ip: per_ip as usize,
            h2_max_concurrent_streams: streams as u32,
            h2_max_header_list_bytes: header_list as u32,
            h2_max_pending_accept_reset_streams: pending_resets as usize,
            h2_max_local_error_reset_streams: error_resets as usize,
        })
    }
}

/// Which database the environment lives in.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Database {
    /// `DATA_DIR/carevault.db`, one node.
    Sqlite,
    /// A PostgreSQL server that several nodes may share.
    Postgres(PostgresConfig),
}

impl Database {
    /// True when other nodes may write the same database (state cached in memory must then
    /// be checked against it).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

#[derive(Clone)]
pub struct PostgresConfig {
    /// The URL (it may hold a password only when it came from the environment).
    pub url: String,
    pub password: Option<secrecy::SecretString>,
    pub pool_size: usize,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &carevault_store::redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    pub fn options(&self) -> carevault_store::PostgresOptions {
        use secrecy::ExposeSecret;
        carevault_store::PostgresOptions {
            url: self.url.clone(),
            password: self.password.as_ref().map(|p| p.expose_secret().to_owned()),
            pool_size: self.pool_size,
        }
    }
}

/// The key provider the server uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProviderConfig {
    /// KEK files in `DATA_DIR/keys`.
    File,
    /// KEKs in an HSM token reached through a PKCS#11 module.
    Pkcs11 {
        module: PathBuf,
        token_label: String,
        pin_file: PathBuf,
    },
}

pub const DEFAULT_PKCS11_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// OWASP's recommended Argon2id configuration (19 MiB, 2 iterations, 1 lane).
pub const OWASP_ARGON2: Argon2Params = Argon2Params {
    memory_kib: 19_456,
    iterations: 2,
    parallelism: 1,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DATA_DIR: &str = "./carevault-data";

impl Config {
    /// Validate `file`, naming the key of the first problem found. Keys are checked in a fixed
    /// order (the order of this function), so the same file always reports the same problem.
    pub fn from_file(file: FileConfig) -> Result<Self, ConfigError> {
        let (listen, plain_http) = listen_address(file.listen, file.allow_plain_http)?;
        let public_base_url = public_url(file.public_base_url, listen, plain_http)?;
        let allowed_hosts = allowed_hosts(file.allowed_hosts)?;
        let data_dir = data_dir(file.data_dir)?;
        let node_id = node_id(file.node_id)?;
        let tls_cert = file
            .tls
            .cert_path
            .unwrap_or_else(|| data_dir.join("tls").join("cert.pem"));
        let tls_key = file
            .tls
            .key_path
            .unwrap_or_else(|| data_dir.join("tls").join("key.pem"));

        let body_limit = bounded(
            "body_limit_bytes",
            file.body_limit_bytes,
            4 * 1024 * 1024,
            1024,
            256 * 1024 * 1024,
        )?;
        let depth = bounded("max_json_depth", file.max_json_depth, 64, 4, 512)?;
        let bundle_entries = bounded(
            "max_bundle_entries",
            file.max_bundle_entries,
            1000,
            1,
            100_000,
        )?;
        let search_limits = SearchLimits::from_section(&file.search)?;
        let audit_max_unsigned = max_unsigned(file.audit.max_unsigned_secs)?;
        let (session_idle_secs, session_lifetime_secs) = session_timeouts(&file.session)?;
        let auth = AuthLimits::from_section(&file.auth)?;
        let argon2 = argon2_params(&file.argon2)?;
        let rewrap_batch = bounded(
            "key.rewrap_batch_size",
            file.key.rewrap_batch_size,
            256,
            1,
            10_000,
        )?;
        let rewrap_pause = bounded(
            "key.rewrap_pause_ms",
            file.key.rewrap_pause_ms,
            0,
            0,
            60_000,
        )?;
        let log_level = log_level(file.log.level)?;
        let database = database(file.database, file.database_password)?;
        let key = file.key;
        let key_provider = key_provider(
            key.provider.as_deref(),
            key.pkcs11_module,
            key.pkcs11_token_label,
            key.pkcs11_pin_file,
        )?;
        let key_passphrase_file = passphrase_file(key.passphrase_file)?;
        let key_lock_memory = lock_memory(key.lock_memory.as_deref())?;
        let http = HttpLimits::from_section(&file.http)?;

        // The bounds above keep every value inside the narrower types below.
        Ok(Self {
            listen,
            data_dir,
            node_id,
            plain_http,
            tls_cert,
            tls_key,
            body_limit_bytes: body_limit as usize,
            max_json_depth: depth as usize,
            max_bundle_entries: bundle_entries as usize,
            public_base_url,
            allowed_hosts,
            search_limits,
            audit_max_unsigned,
            session_idle_secs,
            session_lifetime_secs,
            enrollment_ttl_secs: auth.enrollment_ttl_secs,
            ip_rate_per_minute: auth.ip_rate_per_minute,
            throttle_after_failures: auth.throttle_after_failures,
            throttle_base_ms: auth.throttle_base_ms,
            throttle_max_ms: auth.throttle_max_ms,
            lock_after_failures: auth.lock_after_failures,
            break_glass_minutes: auth.break_glass_minutes,
            argon2,
            log_level,
            rewrap_batch_size: rewrap_batch as u32,
            rewrap_pause_ms: rewrap_pause,
            key_passphrase_file,
            key_provider,
            key_lock_memory,
            database,
            http,
        })
    }

    /// Defaults, rooted at `data_dir` (for tests and `init`).
    pub fn for_data_dir(data_dir: &Path) -> Self {
        let file = FileConfig {
            data_dir: Some(data_dir.to_path_buf()),
            ..FileConfig::default()
        };
        // Defaults with a non-empty data dir always validate.
        Self::from_file(file)
            .unwrap_or_else(|e| unreachable!("default configuration is invalid: {e}"))
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("carevault.db")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// Open the configured key provider (`create_first`: at `init`, make KEK version 1).
    pub fn key_provider(
        &self,
        create_first: bool,
    ) -> Result<Box<dyn carevault_crypto::KeyProvider>, carevault_crypto::CryptoError> {
        use carevault_crypto::{FileKeyProvider, Pkcs11KeyProvider, Pkcs11Settings};
        match &self.key_provider {
            KeyProviderConfig::File => {
                let passphrase = self.key_passphrase()?;
                Ok(Box::new(if create_first {
                    FileKeyProvider::create_with(&self.keys_dir(), passphrase)?
                } else {
                    FileKeyProvider::open_with(&self.keys_dir(), passphrase)?
                }))
            }
            KeyProviderConfig::Pkcs11 {
                module,
                token_label,
                pin_file,
            } => {
                let pin = read_pin(pin_file)?;
                Ok(Box::new(Pkcs11KeyProvider::open(
                    Pkcs11Settings {
                        module,
                        token_label,
                        pin,
                    },
                    create_first,
                )?))
            }
        }
    }

    /// The KEK passphrase, read from `key.passphrase_file`, if configured.
    pub fn key_passphrase(
        &self,
    ) -> Result<Option<carevault_crypto::Passphrase>, carevault_crypto::CryptoError> {
        self.key_passphrase_file
            .as_deref()
            .map(carevault_crypto::Passphrase::from_file)
            .transpose()
    }
}

/// `listen`, and whether plain HTTP may be served on it (only on a loopback address).
fn listen_address(
    listen: Option<String>,
    allow_plain_http: Option<bool>,
) -> Result<(SocketAddr, bool), ConfigError> {
    let listen_text = listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| ConfigError::new("listen", "expected an address like 127.0.0.1:8443"))?;
    let plain_http = allow_plain_http.unwrap_or(false);
    if plain_http && !listen.ip().is_loopback() {
        return Err(ConfigError::new(
            "allow_plain_http",
            "plain HTTP is only allowed on a loopback address; use TLS for anything else",
        ));
    }
    Ok((listen, plain_http))
}

/// Bounds on one search, so that no query can outgrow what the database accepts in one
/// statement (SQLite: 500 compound terms; PostgreSQL: its stack depth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchLimits {
    /// Search parameters (clauses) combined in one search.
    pub max_clauses: usize,
    /// `_include` plus `_revinclude` parameters in one search.
    pub max_includes: usize,
}

impl SearchLimits {
    fn from_section(search: &SearchSection) -> Result<Self, ConfigError> {
        let max_clauses = bounded("search.max_clauses", search.max_clauses, 50, 1, 400)?;
        let max_includes = bounded("search.max_includes", search.max_includes, 10, 0, 100)?;
        // The bounds keep both inside usize.
        Ok(Self {
            max_clauses: max_clauses as usize,
            max_includes: max_includes as usize,
        })
    }
}

fn data_dir(data_dir: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError::new("data_dir", "must not be empty"));
    }
    Ok(data_dir)
}

fn node_id(node_id: Option<String>) -> Result<String, ConfigError> {
    let node_id = node_id.unwrap_or_else(|| "node-1".to_owned());
    if !(1..=64).contains(&node_id.len())
        || !node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ConfigError::new(
            "node_id",
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(node_id)
}

/// A whole number key: `default` when unset, refused outside `min..=max`.
fn bounded(
    key: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::new(
            key,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

/// `audit.max_unsigned_secs`: 0 (never), or at least three checkpoint periods, so that the
/// normal 10 s cadence never fails readiness.
fn max_unsigned(value: Option<u64>) -> Result<Option<std::time::Duration>, ConfigError> {
    match value.unwrap_or(120) {
        0 => Ok(None),
        secs @ 30..=604_800 => Ok(Some(std::time::Duration::from_secs(secs))),
        _ => Err(ConfigError::new(
            "audit.max_unsigned_secs",
            "must be 0 (never) or between 30 and 604800 (checkpoints are written every 10 s)",
        )),
    }
}

/// The session's idle timeout and absolute lifetime, in seconds.
fn session_timeouts(session: &SessionSection) -> Result<(i64, i64), ConfigError> {
    let idle = bounded(
        "session.idle_timeout_secs",
        session.idle_timeout_secs,
        15 * 60,
        10,
        24 * 3600,
    )?;
    let lifetime = bounded(
        "session.absolute_lifetime_secs",
        session.absolute_lifetime_secs,
        8 * 3600,
        10,
        7 * 24 * 3600,
    )?;
    if lifetime < idle {
        return Err(ConfigError::new(
            "session.absolute_lifetime_secs",
            "must not be shorter than session.idle_timeout_secs",
        ));
    }
    // The bounds keep both well inside i64.
    Ok((idle as i64, lifetime as i64))
}

/// The `[auth]` section, validated (each value inside the type it is kept in).
struct AuthLimits {
    enrollment_ttl_secs: i64,
    ip_rate_per_minute: u32,
    throttle_after_failures: u32,
    throttle_base_ms: u64,
    throttle_max_ms: u64,
    lock_after_failures: u32,
    break_glass_minutes: i64,
}

impl AuthLimits {
    fn from_section(auth: &AuthSection) -> Result<Self, ConfigError> {
        let enrollment_ttl = bounded(
            "auth.enrollment_ttl_secs",
            auth.enrollment_ttl_secs,
            24 * 3600,
            60,
            30 * 24 * 3600,
        )?;
        let ip_rate = bounded(
            "auth.ip_rate_per_minute",
            auth.ip_rate_per_minute,
            60,
            1,
            1_000_000,
        )?;
        let throttle_after = bounded(
            "auth.throttle_after_failures",
            auth.throttle_after_failures,
            5,
            1,
            1000,
        )?;
        let throttle_base_ms = bounded(
            "auth.throttle_base_ms",
            auth.throttle_base_ms,
            1000,
            0,
            3_600_000,
        )?;
        let throttle_max_ms = bounded(
            "auth.throttle_max_ms",
            auth.throttle_max_ms,
            60_000,
            0,
            24 * 3_600_000,
        )?;
        let lock_after = bounded(
            "auth.lock_after_failures",
            auth.lock_after_failures,
            100,
            1,
            100_000,
        )?;
        let break_glass = bounded(
            "auth.break_glass_minutes",
            auth.break_glass_minutes,
            60,
            1,
            24 * 60,
        )?;
        // The bounds above keep every value inside the narrower types below.
        Ok(Self {
            enrollment_ttl_secs: enrollment_ttl as i64,
            ip_rate_per_minute: ip_rate as u32,
            throttle_after_failures: throttle_after as u32,
            throttle_base_ms,
            throttle_max_ms,
            lock_after_failures: lock_after as u32,
            break_glass_minutes: break_glass as i64,
        })
    }
}

fn argon2_params(argon2: &Argon2Section) -> Result<Argon2Params, ConfigError> {
    let memory = bounded(
        "argon2.memory_kib",
        argon2.memory_kib,
        OWASP_ARGON2.memory_kib.into(),
        8 * 1024,
        4 * 1024 * 1024,
    )?;
    let iterations = bounded(
        "argon2.iterations",
        argon2.iterations,
        OWASP_ARGON2.iterations.into(),
        1,
        64,
    )?;
    let parallelism = bounded(
        "argon2.parallelism",
        argon2.parallelism,
        OWASP_ARGON2.parallelism.into(),
        1,
        64,
    )?;
    // The bounds above keep every value inside u32.
    Ok(Argon2Params {
        memory_kib: memory as u32,
        iterations: iterations as u32,
        parallelism: parallelism as u32,
    })
}

fn log_level(level: Option<String>) -> Result<String, ConfigError> {
    let log_level = level.unwrap_or_else(|| "info".to_owned());
    if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
        return Err(ConfigError::new(
            "log.level",
            "expected one of error, warn, info, debug, trace",
        ));
    }
    Ok(log_level)
}

/// SQLite unless `database.url` names a PostgreSQL server; `env_password` is
/// `CAREVAULT_DATABASE_PASSWORD` (a `database.password_file` wins over it).
fn database(
    database: DatabaseSection,
    env_password: Option<secrecy::SecretString>,
) -> Result<Database, ConfigError> {
    let Some(url) = database.url else {
        if database.password_file.is_some() {
            return Err(ConfigError::new(
                "database.password_file",
                "only applies to a PostgreSQL database.url",
            ));
        }
        return Ok(Database::Sqlite);
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            "database.url",
            "must be a postgres:// URL (leave it unset for the embedded SQLite database)",
        ));
    }
    carevault_store::PostgresOptions {
        url: url.clone(),
        password: None,
        pool_size: 1,
    }
    .check()
    .map_err(|e| ConfigError::new("database.url", e.to_string()))?;
    let password = match &database.password_file {
        Some(path) => Some(read_database_password(path)?),
        None => env_password,
    };
    let pool = bounded("database.pool_size", database.pool_size, 16, 1, 1000)?;
    Ok(Database::Postgres(PostgresConfig {
        url,
        password,
        pool_size: pool as usize,
    }))
}

/// The first line of `database.password_file`.
fn read_database_password(path: &Path) -> Result<secrecy::SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "database.password_file",
            format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })?;
    Ok(secrecy::SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// `key.provider` and, for `pkcs11`, the module, token and PIN file it needs.
fn key_provider(
    provider: Option<&str>,
    module: Option<PathBuf>,
    token_label: Option<String>,
    pin_file: Option<PathBuf>,
) -> Result<KeyProviderConfig, ConfigError> {
    match provider.unwrap_or("file") {
        "file" => Ok(KeyProviderConfig::File),
        "pkcs11" => Ok(KeyProviderConfig::Pkcs11 {
            module: module.unwrap_or_else(|| PathBuf::from(DEFAULT_PKCS11_MODULE)),
            token_label: token_label.ok_or_else(|| {
                ConfigError::new(
                    "key.pkcs11_token_label",
                    "required with key.provider = \"pkcs11\"",
                )
            })?,
            pin_file: pin_file.ok_or_else(|| {
                ConfigError::new(
                    "key.pkcs11_pin_file",
                    "required with key.provider = \"pkcs11\"",
                )
            })?,
        }),
        _ => Err(ConfigError::new(
            "key.provider",
            "expected \"file\" or \"pkcs11\"",
        )),
    }
}

fn passphrase_file(path: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    match path {
        Some(p) if p.as_os_str().is_empty() => {
            Err(ConfigError::new("key.passphrase_file", "must not be empty"))
        }
        other => Ok(other),
    }
}

fn lock_memory(value: Option<&str>) -> Result<crate::memory::LockMode, ConfigError> {
    match value {
        None => Ok(crate::memory::LockMode::default()),
        Some(value) => crate::memory::LockMode::parse(value).ok_or_else(|| {
            ConfigError::new(
                "key.lock_memory",
                "expected \"auto\", \"required\" or \"off\"",
            )
        }),
    }
}

/// The PKCS#11 user PIN: the first line of a file of mode 0600 or stricter.
fn read_pin(path: &Path) -> Result<zeroize::Zeroizing<String>, carevault_crypto::CryptoError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |what: &str| carevault_crypto::CryptoError::KeyStore(format!("PIN file: {what}"));
    let meta =
        std::fs::metadata(path).map_err(|e| err(&format!("cannot read it: {}", e.kind())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err("accessible to other users; it must be mode 0600"));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| err(&format!("cannot read it: {}", e.kind())))?,
    );
    let pin = text.lines().next().unwrap_or_default().trim_end();
    if pin.is_empty() {
        return Err(err("empty"));
    }
    Ok(zeroize::Zeroizing::new(pin.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_safe() {
        let c = Config::from_file(FileConfig::load(None, env(&[])).unwrap()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.data_dir, PathBuf::from("./carevault-data"));
        assert!(!c.plain_http);
        assert_eq!(c.body_limit_bytes, 4 * 1024 * 1024);
        assert_eq!(c.session_idle_secs, 900);
        assert_eq!(c.session_lifetime_secs, 8 * 3600);
        assert_eq!(c.argon2, OWASP_ARGON2);
        assert_eq!(c.http.header_timeout, Duration::from_secs(20));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.http.max_connections_per_ip, 256);
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[session]\nidle_timeout_secs = 60\n",
        )
        .unwrap();
        let file = FileConfig::load(
            Some(&path),
            env(&[
                ("CAREVAULT_LISTEN", "127.0.0.1:9001"),
                ("CAREVAULT_SESSION_IDLE_TIMEOUT_SECS", "120"),
            ]),
        )
        .unwrap();
        let c = Config::from_file(file).unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.session_idle_secs, 120);
    }

    #[test]
    fn errors_name_the_key() {
        let err = |pairs: &[(&str, &str)]| {
            FileConfig::load(None, env(pairs))
                .and_then(Config::from_file)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[("CAREVAULT_LISTEN", "nowhere")]).contains("`listen`"));
        assert!(
            err(&[("CAREVAULT_BODY_LIMIT_BYTES", "ten")]).contains("CAREVAULT_BODY_LIMIT_BYTES")
        );
        assert!(err(&[("CAREVAULT_LISTN", "x")]).contains("CAREVAULT_LISTN"));
        assert!(err(&[("CAREVAULT_KEY_LOCK_MEMORY", "yes")]).contains("key.lock_memory"));
        assert!(
            err(&[("CAREVAULT_HTTP_IDLE_TIMEOUT_SECS", "0")]).contains("http.idle_timeout_secs")
        );
        assert!(
            err(&[("CAREVAULT_HTTP_MAX_CONNECTIONS_PER_IP", "0")])
                .contains("http.max_connections_per_ip")
        );
        let required = Config::from_file(
            FileConfig::load(None, env(&[("CAREVAULT_KEY_LOCK_MEMORY", "required")])).unwrap(),
        )
        .unwrap();
        assert_eq!(required.key_lock_memory, crate::memory::LockMode::Required);
        assert!(
            err(&[("CAREVAULT_SESSION_IDLE_TIMEOUT_SECS", "1")])
                .contains("session.idle_timeout_secs")
        );
        let plain = err(&[
            ("CAREVAULT_LISTEN", "0.0.0.0:80"),
            ("CAREVAULT_ALLOW_PLAIN_HTTP", "true"),
        ]);
        assert!(
            plain.contains("allow_plain_http") && plain.contains("loopback"),
            "{plain}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let e = FileConfig::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        std::fs::write(&path, "[tls]\npassword = \"hunter2\"\n").unwrap();
        let e = FileConfig::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_postgres_url_selects_postgres_and_its_password_never_comes_from_the_file() {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        // Built at run time: no credential-looking literal in the source.
        let with_pw = format!("postgres://cv:{}@db.internal/cv", "pw-in-file");
        std::fs::write(&path, format!("[database]\nurl = \"{with_pw}\"\n")).unwrap();
        let e = FileConfig::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("database.url") && e.contains("password"), "{e}");
        assert!(!e.contains("pw-in-file"), "{e}");
        // tokio-postgres also takes `password=` from the query: refused in the file as well.
        std::fs::write(
            &path,
            format!(
                "[database]\nurl = \"postgres://cv@db.internal/cv?sslmode=require&password={}\"\n",
                "pw-in-query"
            ),
        )
        .unwrap();
        let e = FileConfig::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("database.url") && !e.contains("pw-in-query"),
            "{e}"
        );

        // The whole URL may come from the environment, password included.
        let c = Config::from_file(
            FileConfig::load(None, env(&[("CAREVAULT_DATABASE_URL", &with_pw)])).unwrap(),
        )
        .unwrap();
        let Database::Postgres(pg) = &c.database else {
            panic!("expected PostgreSQL")
        };
        assert_eq!(pg.pool_size, 16);
        assert!(c.database.is_shared());
        assert!(!format!("{c:?}").contains("pw-in-file"));

        // Or the file names a password file; CAREVAULT_DATABASE_PASSWORD is the alternative.
        let secret = dir.path().join("db-password");
        std::fs::write(&secret, "from-a-file\n").unwrap();
        std::fs::write(
            &path,
            format!(
                "[database]\nurl = \"postgres://cv@db.internal/cv?sslmode=require\"\npassword_file = \"{}\"\npool_size = 4\n",
                secret.display()
            ),
        )
        .unwrap();
        let c = Config::from_file(FileConfig::load(Some(&path), env(&[])).unwrap()).unwrap();
        let Database::Postgres(pg) = &c.database else {
            panic!("expected PostgreSQL")
        };
        assert_eq!(pg.password.as_ref().unwrap().expose_secret(), "from-a-file");
        assert_eq!(pg.options().pool_size, 4);
        assert!(!format!("{c:?}").contains("from-a-file"));
        let c = Config::from_file(
            FileConfig::load(
                None,
                env(&[
                    ("CAREVAULT_DATABASE_URL", "postgres://cv@db.internal/cv"),
                    ("CAREVAULT_DATABASE_PASSWORD", "from-the-env"),
                ]),
            )
            .unwrap(),
        )
        .unwrap();
        let Database::Postgres(pg) = &c.database else {
            panic!("expected PostgreSQL")
        };
        assert_eq!(pg.options().password.as_deref(), Some("from-the-env"));

        let err = |pairs: &[(&str, &str)]| {
            FileConfig::load(None, env(pairs))
                .and_then(Config::from_file)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[("CAREVAULT_DATABASE_URL", "mysql://db/cv")]).contains("database.url"));
        assert!(
            err(&[(
                "CAREVAULT_DATABASE_URL",
                "postgres://db/cv?sslmode=verify-full"
            )])
            .contains("sslrootcert")
        );
        assert!(
            err(&[(
                "CAREVAULT_DATABASE_URL",
                "postgres://db/cv?sslmode=sometimes"
            )])
            .contains("sslmode")
        );
        assert!(
            err(&[("CAREVAULT_DATABASE_PASSWORD_FILE", "/nonexistent")])
                .contains("database.password_file")
        );
        let c = Config::from_file(FileConfig::load(None, env(&[])).unwrap()).unwrap();
        assert!(matches!(c.database, Database::Sqlite));
    }

    /// The rows of the key table in `docs/configuration.md`: (key, environment variable).
    fn documented_keys() -> Vec<(String, String)> {
        let doc = include_str!("../../../docs/configuration.md");
        let (_, rest) = doc
            .split_once("<!-- keys:start")
            .expect("docs/configuration.md marks its key table with <!-- keys:start");
        let (table, _) = rest
            .split_once("<!-- keys:end")
            .expect("docs/configuration.md ends its key table with <!-- keys:end");
        table
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let unquote = |cell: &str| cell.trim_matches('`').to_owned();
                (unquote(cells[1]), unquote(cells[2]))
            })
            .collect()
    }

    #[test]
    fn the_configuration_table_lists_every_key() {
        let documented = documented_keys();
        for key in key_names() {
            let rows = documented.iter().filter(|(k, _)| k == key).count();
            assert_eq!(
                rows, 1,
                "`{key}` needs exactly one row in the table of docs/configuration.md"
            );
        }
        for (key, var) in &documented {
            assert!(
                key_names().any(|k| k == key),
                "docs/configuration.md documents `{key}`, which is not in config::KEYS"
            );
            assert_eq!(
                var,
                &env_var_name(key),
                "docs/configuration.md names the wrong environment variable for `{key}`"
            );
        }
        assert_eq!(documented.len(), KEYS.len());
    }

    #[test]
    fn plain_http_on_loopback_is_allowed_when_asked() {
        let file = FileConfig::load(
            None,
            env(&[
                ("CAREVAULT_LISTEN", "127.0.0.1:8080"),
                ("CAREVAULT_ALLOW_PLAIN_HTTP", "1"),
            ]),
        )
        .unwrap();
        assert!(Config::from_file(file).unwrap().plain_http);
    }
}
