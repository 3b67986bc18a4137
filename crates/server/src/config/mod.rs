//! Configuration: what operators write (a TOML file plus `CAREVAULT_*` environment variables)
//! is [`FileConfig`]; what the server runs with, validated, is [`Config`]. No global state, so
//! several servers can run in one process (tests do).
//!
//! Secrets are never values in the file, only paths to files holding them.

mod backup;
mod check;
mod detection;
mod file;
mod limits;
mod public_url;
#[cfg(test)]
mod tests;

pub use backup::{
    BackupSchedule, DEFAULT_KEEP, Keep, OffsiteTarget, Period, S3Target, parse_interval,
};
pub use check::{Checked, Problem, check};
pub use detection::DetectionConfig;
pub use file::{
    Argon2Section, AuditSection, AuthSection, BackupSection, DatabaseSection, DetectionSection,
    FileConfig, HttpSection, KeySection, LogSection, PostureSection, SearchSection, SessionSection,
    TlsSection, env_var_name, key_names,
};
use limits::{AuthLimits, argon2_params, bounded, max_unsigned, session_timeouts};
pub use limits::{ExportLimits, HttpLimits, SearchLimits};
pub use public_url::PublicUrl;
use public_url::{allowed_hosts, cors_origins, public_url};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::names::NodeId;

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

/// Validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    pub plain_http: bool,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// `tls.client_ca`: the CAs a client certificate must chain to. When set, the handshake asks
    /// for a client certificate (optional) and API keys may be bound to one.
    pub tls_client_ca: Option<PathBuf>,
    pub body_limit_bytes: usize,
    pub max_json_depth: usize,
    pub max_bundle_entries: usize,
    /// `public_base_url`; without it, links use the address the listener is bound to.
    pub public_base_url: Option<PublicUrl>,
    /// `allowed_hosts`: lowercase `host[:port]` names requests may also address.
    pub allowed_hosts: Vec<String>,
    /// `cors.allowed_origins`: origins whose browser apps may call the API (exact, lowercase).
    pub cors_allowed_origins: Vec<String>,
    pub search_limits: SearchLimits,
    /// Bulk `$export` limits and expiry (`export.*`).
    pub export: ExportLimits,
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
    /// Attack detection and its thresholds.
    pub detection: DetectionConfig,
    /// Scheduled backups (`[backup]`); None: off.
    pub backup: Option<BackupSchedule>,
    /// The posture check's settings (`posture.*`).
    pub posture: PostureSettings,
    /// `environment.tier`: the tier `init` gives a new environment (development when unset);
    /// for an existing one it must match the tier it was made with.
    pub environment_tier: Option<Tier>,
}

/// What a deployment is: `environment.tier`, fixed when the environment is made (production
/// refuses plain HTTP and an unsealed key file; data leaves production for the other tiers only
/// de-identified), and `posture.tier`, how strict the posture check is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tier {
    #[default]
    Development,
    Staging,
    Production,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "development" => Some(Self::Development),
            "staging" => Some(Self::Staging),
            "production" => Some(Self::Production),
            _ => None,
        }
    }
}

const TIER_EXPECTED: &str = "expected \"development\", \"staging\" or \"production\"";

/// A tier key's value (None when unset).
fn tier_key(key: &str, value: Option<&str>) -> Result<Option<Tier>, ConfigError> {
    value
        .map(|v| Tier::parse(v).ok_or_else(|| ConfigError::new(key, TIER_EXPECTED)))
        .transpose()
}

/// `posture.*`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostureSettings {
    pub tier: Tier,
    pub kek_rotation_days: u64,
    pub inactive_days: u64,
    /// Hours between the server's posture runs; 0: never.
    pub interval_hours: u64,
    /// Seconds after start before the first run (start-up is not slowed by it).
    pub first_run_secs: u64,
}

fn posture(section: &PostureSection) -> Result<PostureSettings, ConfigError> {
    let tier = tier_key("posture.tier", section.tier.as_deref())?.unwrap_or_default();
    Ok(PostureSettings {
        tier,
        kek_rotation_days: bounded(
            "posture.kek_rotation_days",
            section.kek_rotation_days,
            365,
            1,
            3650,
        )?,
        inactive_days: bounded("posture.inactive_days", section.inactive_days, 90, 1, 3650)?,
        interval_hours: bounded("posture.interval_hours", section.interval_hours, 24, 0, 720)?,
        first_run_secs: bounded(
            "posture.first_run_secs",
            section.first_run_secs,
            60,
            1,
            86_400,
        )?,
    })
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
        let cors_allowed_origins = cors_origins(file.cors.allowed_origins)?;
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
        let tls_client_ca = client_ca(file.tls.client_ca, plain_http)?;

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
        let export = ExportLimits::from_section(&file.export)?;
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
        let posture = posture(&file.posture)?;
        let backup = backup::backup_schedule(file.backup)?;
        let detection = DetectionConfig::from_section(&file.detection)?;
        let environment_tier = tier_key("environment.tier", file.environment.tier.as_deref())?;

        // The bounds above keep every value inside the narrower types below.
        Ok(Self {
            listen,
            data_dir,
            node_id,
            plain_http,
            tls_cert,
            tls_key,
            tls_client_ca,
            body_limit_bytes: body_limit as usize,
            max_json_depth: depth as usize,
            max_bundle_entries: bundle_entries as usize,
            public_base_url,
            allowed_hosts,
            cors_allowed_origins,
            search_limits,
            export,
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
            posture,
            backup,
            detection,
            environment_tier,
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

/// Client certificates are part of the TLS handshake: with plain HTTP there is none to ask in.
fn client_ca(path: Option<PathBuf>, plain_http: bool) -> Result<Option<PathBuf>, ConfigError> {
    match path {
        Some(p) if p.as_os_str().is_empty() => {
            Err(ConfigError::new("tls.client_ca", "must not be empty"))
        }
        Some(_) if plain_http => Err(ConfigError::new(
            "tls.client_ca",
            "client certificates need TLS; it cannot be set with allow_plain_http",
        )),
        other => Ok(other),
    }
}

fn data_dir(data_dir: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError::new("data_dir", "must not be empty"));
    }
    Ok(data_dir)
}

fn node_id(node_id: Option<String>) -> Result<NodeId, ConfigError> {
    NodeId::parse(node_id.as_deref().unwrap_or("node-1"))
        .map_err(|e| ConfigError::new("node_id", e.rule()))
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
