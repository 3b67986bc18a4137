//! What operators write: the file's shape ([`FileConfig`]), every key it and the environment
//! accept ([`KEYS`]), and reading both.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

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
    pub environment: EnvironmentSection,
    pub export: ExportSection,
    pub audit: AuditSection,
    pub tls: TlsSection,
    pub session: SessionSection,
    pub auth: AuthSection,
    pub argon2: Argon2Section,
    pub log: LogSection,
    pub key: KeySection,
    pub database: DatabaseSection,
    pub http: HttpSection,
    pub cors: CorsSection,
    pub posture: PostureSection,
    pub backup: BackupSection,
    pub detection: DetectionSection,
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

/// The posture check (`carevault doctor` and the server's periodic run).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostureSection {
    /// `development` (default), `staging` or `production`.
    pub tier: Option<String>,
    /// A KEK version older than this many days should be rotated.
    pub kek_rotation_days: Option<u64>,
    /// Accounts with no login for this many days are reported (and disabled by `--fix`).
    pub inactive_days: Option<u64>,
    /// Hours between the server's posture runs (0: never).
    pub interval_hours: Option<u64>,
    /// Seconds after start before the server's first posture run.
    pub first_run_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSection {
    /// Search parameters (clauses) one search may combine.
    pub max_clauses: Option<u64>,
    /// `_include` and `_revinclude` parameters one search may ask for.
    pub max_includes: Option<u64>,
}

/// The environment: its tier, fixed at init.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvironmentSection {
    /// `production`, `staging` or `development`.
    pub tier: Option<String>,
}

/// Bulk `$export`: how long finished files are kept, and how large one export may be.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Seconds a finished export's files are kept before they are deleted.
    pub expiry_secs: Option<u64>,
    /// Most resources one export may hold (refused at the start when the candidates exceed it).
    pub max_resources: Option<u64>,
    /// Most bytes (NDJSON, before sealing) one export may write; an export that grows past it
    /// fails.
    pub max_bytes: Option<u64>,
}

/// Browser apps on other origins (CORS): off unless origins are listed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSection {
    /// Exact origins (`https://app.example.org`), comma-separated.
    pub allowed_origins: Option<String>,
}

/// Scheduled backups (off unless `schedule` is set); see `config::backup`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// The directory scheduled backups are written to.
    pub dir: Option<PathBuf>,
    /// How often: `6h`, `30m`, `1d`.
    pub schedule: Option<String>,
    /// Which backups are kept: `28 daily + 12 monthly`.
    pub keep: Option<String>,
    /// age recipients (`age1...`, comma-separated) who can open the backups.
    pub recipients: Option<String>,
    /// Or a file whose first line is the passphrase the backups are encrypted under.
    pub passphrase_file: Option<PathBuf>,
    /// How often the newest backup is verified in the background: `7d`.
    pub verify_schedule: Option<String>,
    /// An off-site directory (a mounted NAS, say) each scheduled backup is copied to.
    pub offsite_dir: Option<PathBuf>,
    /// An S3-compatible object store each scheduled backup is copied to: its endpoint URL,
    pub s3_endpoint: Option<String>,
    /// bucket,
    pub s3_bucket: Option<String>,
    /// region (`us-east-1` unless set),
    pub s3_region: Option<String>,
    /// key prefix (`carevault/`),
    pub s3_prefix: Option<String>,
    /// and the file (mode 0600) holding the access key id and secret; never the keys themselves.
    pub s3_credentials_file: Option<PathBuf>,
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
    /// CA certificates (PEM) that client certificates are verified against; unset: the server
    /// asks for none.
    pub client_ca: Option<PathBuf>,
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

/// Attack detection: on/off, windows and thresholds (see `DetectionConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionSection {
    pub enabled: Option<bool>,
    pub window_secs: Option<u64>,
    pub dedup_secs: Option<u64>,
    pub failed_logins_per_account: Option<u64>,
    pub stuffing_accounts_per_ip: Option<u64>,
    pub failed_enrollments_per_ip: Option<u64>,
    pub distinct_patients_per_window: Option<u64>,
    pub searches_per_window: Option<u64>,
    pub not_found_per_window: Option<u64>,
    pub webhook_url: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    pub webhook_ca_file: Option<PathBuf>,
    pub syslog_address: Option<String>,
    pub syslog_ca_file: Option<PathBuf>,
    pub block_stuffing_minutes: Option<u64>,
    pub failed_totp_per_account: Option<u64>,
    pub unusual_hours_min_requests: Option<u64>,
    pub unusual_hours_learning_days: Option<u64>,
    pub revoke_key_on_bulk: Option<bool>,
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
pub(super) const KEYS: &[(&str, Kind)] = &[
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
    ("environment.tier", Kind::Str),
    ("export.expiry_secs", Kind::Int),
    ("export.max_resources", Kind::Int),
    ("export.max_bytes", Kind::Int),
    ("audit.max_unsigned_secs", Kind::Int),
    ("tls.cert_path", Kind::Str),
    ("tls.key_path", Kind::Str),
    ("tls.client_ca", Kind::Str),
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
    ("cors.allowed_origins", Kind::Str),
    ("posture.tier", Kind::Str),
    ("posture.kek_rotation_days", Kind::Int),
    ("posture.inactive_days", Kind::Int),
    ("posture.interval_hours", Kind::Int),
    ("posture.first_run_secs", Kind::Int),
    ("backup.schedule", Kind::Str),
    ("backup.dir", Kind::Str),
    ("backup.keep", Kind::Str),
    ("backup.recipients", Kind::Str),
    ("backup.passphrase_file", Kind::Str),
    ("backup.verify_schedule", Kind::Str),
    ("backup.offsite_dir", Kind::Str),
    ("backup.s3_endpoint", Kind::Str),
    ("backup.s3_bucket", Kind::Str),
    ("backup.s3_region", Kind::Str),
    ("backup.s3_prefix", Kind::Str),
    ("backup.s3_credentials_file", Kind::Str),
    ("detection.enabled", Kind::Bool),
    ("detection.window_secs", Kind::Int),
    ("detection.dedup_secs", Kind::Int),
    ("detection.failed_logins_per_account", Kind::Int),
    ("detection.stuffing_accounts_per_ip", Kind::Int),
    ("detection.failed_enrollments_per_ip", Kind::Int),
    ("detection.distinct_patients_per_window", Kind::Int),
    ("detection.searches_per_window", Kind::Int),
    ("detection.not_found_per_window", Kind::Int),
    ("detection.webhook_url", Kind::Str),
    ("detection.webhook_secret_file", Kind::Str),
    ("detection.webhook_ca_file", Kind::Str),
    ("detection.syslog_address", Kind::Str),
    ("detection.syslog_ca_file", Kind::Str),
    ("detection.block_stuffing_minutes", Kind::Int),
    ("detection.failed_totp_per_account", Kind::Int),
    ("detection.unusual_hours_min_requests", Kind::Int),
    ("detection.unusual_hours_learning_days", Kind::Int),
    ("detection.revoke_key_on_bulk", Kind::Bool),
];

/// Environment variables with the `CAREVAULT_` prefix that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &[
    "CAREVAULT_CONFIG",
    "CAREVAULT_CLI_CONFIG_DIR",
    "CAREVAULT_LOG",
    // Read by the command-line client (`--api-key-file`, `--server`, `--ca-cert`, `--profile`),
    // which may run in the same shell as `serve`.
    "CAREVAULT_API_KEY_FILE",
    "CAREVAULT_SERVER",
    "CAREVAULT_CA_CERT",
    "CAREVAULT_PROFILE",
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
pub(super) enum Kind {
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
    /// Read the file (if any), then apply `CAREVAULT_*` variables from `env` on top. Fails on
    /// the first problem; `config::check` reports them all.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (mut table, _) = read_table(path)?;
        if let Some(problem) = password_in_url(&table).or_else(|| s3_secret_in_file(&table)) {
            return Err(problem);
        }
        if let Some(problem) = take_mistyped(&mut table).into_iter().next() {
            return Err(problem);
        }
        let env = apply_env(&mut table, env);
        if let Some(problem) = env.problems.into_iter().next() {
            return Err(problem);
        }
        let mut file = from_table(&table)?;
        file.database_password = env.database_password;
        Ok(file)
    }
}

/// The file as a TOML table (empty without a file), and its text (for line numbers).
pub(super) fn read_table(path: Option<&Path>) -> Result<(toml::Table, String), ConfigError> {
    let Some(path) = path else {
        return Ok((toml::Table::new(), String::new()));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "--config",
            format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })?;
    let table = text.parse::<toml::Table>().map_err(|e| {
        let at = e
            .span()
            .map(|span| format!(" at line {}", line_at(&text, span.start)))
            .unwrap_or_default();
        ConfigError::new("--config", format!("not valid TOML{at}: {}", e.message()))
    })?;
    Ok((table, text))
}

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// A password in the file's `database.url` (refused: secrets never go in the file).
pub(super) fn password_in_url(table: &toml::Table) -> Option<ConfigError> {
    let url = table.get("database")?.get("url")?.as_str()?;
    carevault_store::url_has_password(url).then(|| {
        ConfigError::new(
            "database.url",
            "holds a password; secrets never go in the configuration file (it is copied, \
             versioned and read more widely than the database): put the password in the file \
             named by database.password_file or in CAREVAULT_DATABASE_PASSWORD, or give the \
             whole URL in CAREVAULT_DATABASE_URL",
        )
    })
}

/// An S3 secret in the file's `[backup]` section (refused, naming where it belongs): an access
/// key under a key of its own, or user information in `backup.s3_endpoint`. The value is never
/// echoed.
pub(super) fn s3_secret_in_file(table: &toml::Table) -> Option<ConfigError> {
    let backup = table.get("backup")?.as_table()?;
    let secret_key = backup.keys().find(|k| {
        let k = k.to_ascii_lowercase();
        k.contains("secret") || k.contains("access_key") || k.contains("session_token")
    });
    let endpoint_user = backup
        .get("s3_endpoint")
        .and_then(|v| v.as_str())
        .and_then(|u| url::Url::parse(u).ok())
        .is_some_and(|u| !u.username().is_empty() || u.password().is_some());
    let key = match (secret_key, endpoint_user) {
        (Some(k), _) => format!("backup.{k}"),
        (None, true) => "backup.s3_endpoint".to_owned(),
        (None, false) => return None,
    };
    Some(ConfigError::new(
        key,
        "holds an S3 credential; secrets never go in the configuration file: put the access key \
         id and secret in the file named by backup.s3_credentials_file (mode 0600) or in \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    ))
}

/// Remove from `table` every unknown key and every value of the wrong type, returning one
/// problem for each, named by its key (serde's own messages, such as "invalid type: string,
/// expected u64", do not say which key).
pub(super) fn take_mistyped(table: &mut toml::Table) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    take_mistyped_in(table, "", &mut problems);
    problems
}

fn take_mistyped_in(table: &mut toml::Table, section: &str, problems: &mut Vec<ConfigError>) {
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let key = if section.is_empty() {
            name.clone()
        } else {
            format!("{section}.{name}")
        };
        let Some(value) = table.get_mut(&name) else {
            continue;
        };
        let keep = match KEYS.iter().find(|(k, _)| *k == key) {
            Some((_, kind)) => match kind.mismatch(value) {
                None => true,
                Some(problem) => {
                    problems.push(ConfigError::new(key, problem));
                    false
                }
            },
            None if section.is_empty() && is_section(&key) => match value {
                toml::Value::Table(inner) => {
                    take_mistyped_in(inner, &key, problems);
                    true
                }
                _ => {
                    problems.push(ConfigError::new(
                        key.clone(),
                        format!("expected a section ([{key}]) of keys"),
                    ));
                    false
                }
            },
            None => {
                problems.push(ConfigError::new(key.clone(), unknown_key(section)));
                false
            }
        };
        if !keep {
            table.remove(&name);
        }
    }
}

/// True when some key lives in section `name`.
fn is_section(name: &str) -> bool {
    KEYS.iter()
        .any(|(k, _)| k.split_once('.').is_some_and(|(s, _)| s == name))
}

fn unknown_key(section: &str) -> String {
    if section.is_empty() {
        return "unknown key (docs/configuration.md lists every key)".to_owned();
    }
    let known: Vec<&str> = KEYS
        .iter()
        .filter_map(|(k, _)| k.split_once('.'))
        .filter(|(s, _)| *s == section)
        .map(|(_, k)| k)
        .collect();
    format!(
        "unknown key; the keys of [{section}] are {}",
        known.join(", ")
    )
}

/// What the environment brought: its keys applied to the table, and its problems.
pub(super) struct EnvApplied {
    pub(super) database_password: Option<secrecy::SecretString>,
    /// (key, environment variable) for every key the environment set.
    pub(super) keys: Vec<(&'static str, String)>,
    /// Named by the environment variable.
    pub(super) problems: Vec<ConfigError>,
}

/// Apply the `CAREVAULT_*` variables of `env` to `table` (they win over the file).
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> EnvApplied {
    let mut applied = EnvApplied {
        database_password: None,
        keys: Vec::new(),
        problems: Vec::new(),
    };
    for (name, value) in env {
        if name == "CAREVAULT_DATABASE_PASSWORD" {
            applied.database_password = Some(secrecy::SecretString::from(value));
            continue;
        }
        if !name.starts_with("CAREVAULT_") || NON_CONFIG_ENV.contains(&name.as_str()) {
            continue;
        }
        let Some((key, kind)) = KEYS.iter().find(|(k, _)| env_var_name(k) == name) else {
            applied.problems.push(ConfigError::new(
                name,
                "unknown CareVault environment variable",
            ));
            continue;
        };
        match kind.parse_env(value) {
            Ok(parsed) => {
                set_path(table, key, parsed);
                applied.keys.push((key, name));
            }
            Err(problem) => applied.problems.push(ConfigError::new(name, problem)),
        }
    }
    applied
}

/// The table as a [`FileConfig`] (its keys known and typed: see [`take_mistyped`]).
pub(super) fn from_table(table: &toml::Table) -> Result<FileConfig, ConfigError> {
    toml::Value::Table(table.clone())
        .try_into::<FileConfig>()
        .map_err(|e| {
            // serde names an unknown key in its message (e.g. "unknown field `lisen`").
            ConfigError::new(
                "config",
                e.message()
                    .lines()
                    .next()
                    .unwrap_or("invalid configuration")
                    .to_owned(),
            )
        })
}

impl Kind {
    /// What is wrong with `value` for a key of this kind, if anything.
    fn mismatch(self, value: &toml::Value) -> Option<String> {
        let ok = match self {
            Self::Str => value.is_str(),
            Self::Int => value.as_integer().is_some_and(|i| i >= 0),
            Self::Bool => value.is_bool(),
        };
        (!ok).then(|| format!("expected {}, found {}", self.expected(), describe(value)))
    }

    fn expected(self) -> &'static str {
        match self {
            Self::Str => "a string (in quotes)",
            Self::Int => "a whole number, 0 or more (u64)",
            Self::Bool => "true or false",
        }
    }

    fn parse_env(self, value: String) -> Result<toml::Value, &'static str> {
        Ok(match self {
            Self::Str => toml::Value::String(value),
            Self::Int => toml::Value::Integer(
                value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .and_then(|v| i64::try_from(v).ok())
                    .ok_or("expected a whole number")?,
            ),
            Self::Bool => toml::Value::Boolean(match value.trim() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => return Err("expected true or false"),
            }),
        })
    }
}

/// A value's type, never the value (it may be a secret typed in the wrong place).
fn describe(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(i) if *i < 0 => "a negative number",
        toml::Value::Integer(_) => "a whole number",
        toml::Value::Float(_) => "a decimal number",
        toml::Value::Boolean(_) => "true/false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a section",
    }
}

/// Remove `key` (`section.key`) from `table`; true when it was there.
pub(super) fn remove_path(table: &mut toml::Table, key: &str) -> bool {
    match key.split_once('.') {
        Some((section, rest)) => table
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
            .is_some_and(|inner| remove_path(inner, rest)),
        None => table.remove(key).is_some(),
    }
}

/// The value of `key` (`section.key`) in `table`.
pub(super) fn get_path<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    match key.split_once('.') {
        Some((section, rest)) => get_path(table.get(section)?.as_table()?, rest),
        None => table.get(key),
    }
}

pub(super) fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
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
