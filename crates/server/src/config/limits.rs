//! Whole-number keys and the limits built from them: each refused outside its range, naming
//! the key.

use std::time::Duration;

use super::file::{Argon2Section, AuthSection, HttpSection, SearchSection, SessionSection};
use super::{Argon2Params, ConfigError, OWASP_ARGON2};

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
    pub(super) fn from_section(http: &HttpSection) -> Result<Self, ConfigError> {
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
    pub(super) fn from_section(search: &SearchSection) -> Result<Self, ConfigError> {
        let max_clauses = bounded("search.max_clauses", search.max_clauses, 50, 1, 400)?;
        let max_includes = bounded("search.max_includes", search.max_includes, 10, 0, 100)?;
        // The bounds keep both inside usize.
        Ok(Self {
            max_clauses: max_clauses as usize,
            max_includes: max_includes as usize,
        })
    }
}

/// Bounds on bulk `$export` (`export.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportLimits {
    /// Seconds a finished export's files (and its status) are kept.
    pub expiry_secs: i64,
    /// Most resources one export may hold.
    pub max_resources: u64,
    /// Most NDJSON bytes one export may write.
    pub max_bytes: u64,
}

impl ExportLimits {
    pub(super) fn from_section(export: &super::file::ExportSection) -> Result<Self, ConfigError> {
        let expiry = bounded(
            "export.expiry_secs",
            export.expiry_secs,
            3600,
            60,
            7 * 86_400,
        )?;
        let max_resources = bounded(
            "export.max_resources",
            export.max_resources,
            5_000_000,
            1,
            1_000_000_000,
        )?;
        let max_bytes = bounded(
            "export.max_bytes",
            export.max_bytes,
            8 * 1024 * 1024 * 1024,
            1024,
            1024 * 1024 * 1024 * 1024,
        )?;
        // The bounds keep the expiry inside i64.
        Ok(Self {
            expiry_secs: expiry as i64,
            max_resources,
            max_bytes,
        })
    }
}

/// A whole number key: `default` when unset, refused outside `min..=max`.
pub(super) fn bounded(
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
pub(super) fn max_unsigned(value: Option<u64>) -> Result<Option<std::time::Duration>, ConfigError> {
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
pub(super) fn session_timeouts(session: &SessionSection) -> Result<(i64, i64), ConfigError> {
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
pub(super) struct AuthLimits {
    pub(super) enrollment_ttl_secs: i64,
    pub(super) ip_rate_per_minute: u32,
    pub(super) throttle_after_failures: u32,
    pub(super) throttle_base_ms: u64,
    pub(super) throttle_max_ms: u64,
    pub(super) lock_after_failures: u32,
    pub(super) break_glass_minutes: i64,
}

impl AuthLimits {
    pub(super) fn from_section(auth: &AuthSection) -> Result<Self, ConfigError> {
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

pub(super) fn argon2_params(argon2: &Argon2Section) -> Result<Argon2Params, ConfigError> {
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
