//! Checks of the machine and files: modes and owners, the process's user, memory locking and
//! core dumps, TLS on, the certificate's validity and key, the KEKs' protection.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{
    FILES_CONFIG, FILES_DATA_DIR, FILES_KEYS, FILES_TLS_KEY, Finding, KEYS_PROTECTION,
    PROCESS_MEMORY, PROCESS_ROOT, TLS_CERTIFICATE, TLS_KEY, TLS_PLAIN_HTTP,
};
use crate::config::{Config, KeyProviderConfig, Tier};
use crate::memory::LockMode;

/// A generated certificate within this many days of its end should be renewed.
pub const RENEW_WITHIN_DAYS: i64 = crate::certificate::RENEW_BEFORE_DAYS;
/// The longest validity browsers and scanners accept (CA/Browser Forum: 398 days).
pub const MAX_VALIDITY_DAYS: i64 = 398;

const DAY_SECS: i64 = 86_400;

/// The local checks. `config_file`: the configuration file, when one was given.
pub fn run(config: &Config, config_file: Option<&Path>, now_us: i64) -> Vec<Finding> {
    let tier = config.posture.tier;
    let mut out = vec![data_dir(config)];
    out.push(keys_dir(config));
    if !config.plain_http {
        out.push(tls_key_file(config));
    }
    out.push(config_file_mode(config_file));
    out.push(root(config));
    out.push(memory(config));
    out.push(keys_protection(config));
    out.push(plain_http_finding(tier, config.plain_http, config.listen));
    if !config.plain_http {
        out.extend(certificate(config, now_us));
    }
    out
}

/// `tls.plain_http`.
pub fn plain_http_finding(tier: Tier, plain_http: bool, listen: std::net::SocketAddr) -> Finding {
    if plain_http {
        TLS_PLAIN_HTTP.fail_in(
            tier,
            format!("plain HTTP on {listen}"),
            "remove allow_plain_http (TLS is on by default)",
        )
    } else {
        TLS_PLAIN_HTTP.pass(format!("TLS on {listen}"))
    }
}

/// Group and other bits that a private path must not have.
const PRIVATE: u32 = 0o077;

fn tighten_hint(path: &Path, mode: u32) -> String {
    format!(
        "chmod {:o} {} (carevault doctor --fix does it)",
        mode & !PRIVATE & 0o7777,
        path.display()
    )
}

fn data_dir(config: &Config) -> Finding {
    let dir = &config.data_dir;
    match fs::metadata(dir) {
        Err(e) => FILES_DATA_DIR.fail(
            format!("{} cannot be read ({})", dir.display(), e.kind()),
            format!(
                "create it with `carevault init --data-dir {}`, or fix data_dir",
                dir.display()
            ),
        ),
        Ok(meta) if !meta.is_dir() => FILES_DATA_DIR.fail(
            format!("{} is not a directory", dir.display()),
            "point data_dir at the environment's directory",
        ),
        Ok(meta) if meta.mode() & PRIVATE != 0 => FILES_DATA_DIR.fail(
            format!(
                "{} is mode {:o}: other users can reach it",
                dir.display(),
                meta.mode() & 0o7777
            ),
            tighten_hint(dir, meta.mode()),
        ),
        Ok(meta) => FILES_DATA_DIR.pass(format!(
            "{} is mode {:o}, owner uid {}",
            dir.display(),
            meta.mode() & 0o7777,
            meta.uid()
        )),
    }
}

/// Paths under `dir` (and `dir` itself) with group or other bits, or another owner than `owner`.
fn loose_paths(dir: &Path, owner: u32) -> (Vec<String>, Vec<String>) {
    let mut loose = Vec::new();
    let mut foreign = Vec::new();
    let mut check = |path: &Path, meta: &fs::Metadata| {
        if meta.mode() & PRIVATE != 0 {
            loose.push(format!("{} ({:o})", path.display(), meta.mode() & 0o7777));
        }
        if meta.uid() != owner {
            foreign.push(format!("{} (uid {})", path.display(), meta.uid()));
        }
    };
    if let Ok(meta) = fs::metadata(dir) {
        check(dir, &meta);
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(meta) = entry.metadata() {
                check(&entry.path(), &meta);
            }
        }
    }
    (loose, foreign)
}

fn data_dir_owner(config: &Config) -> Option<u32> {
    fs::metadata(&config.data_dir).ok().map(|m| m.uid())
}

fn keys_dir(config: &Config) -> Finding {
    let dir = config.keys_dir();
    if !dir.is_dir() {
        return FILES_KEYS.fail(
            format!("{} is missing", dir.display()),
            "restore the key directory from the environment's backup",
        );
    }
    let owner = data_dir_owner(config).unwrap_or(u32::MAX);
    let (loose, foreign) = loose_paths(&dir, owner);
    if !loose.is_empty() {
        return FILES_KEYS.fail(
            format!("other users can reach: {}", loose.join(", ")),
            format!(
                "chmod 700 {0} and chmod 600 the files in it (carevault doctor --fix does it)",
                dir.display()
            ),
        );
    }
    if !foreign.is_empty() {
        return FILES_KEYS.warn(
            format!(
                "owned by another user than the data directory: {}",
                foreign.join(", ")
            ),
            "chown them to the user the server runs as",
        );
    }
    FILES_KEYS.pass(format!("{} and its files are private", dir.display()))
}

fn tls_key_file(config: &Config) -> Finding {
    let path = &config.tls_key;
    match fs::metadata(path) {
        Err(e) => FILES_TLS_KEY.fail(
            format!("{} cannot be read ({})", path.display(), e.kind()),
            "set tls.key_path to the certificate's private key, or remove tls.* to use the generated one",
        ),
        Ok(meta) if meta.mode() & PRIVATE != 0 => FILES_TLS_KEY.fail(
            format!("{} is mode {:o}", path.display(), meta.mode() & 0o7777),
            tighten_hint(path, meta.mode()),
        ),
        Ok(meta) if Some(meta.uid()) != data_dir_owner(config) => FILES_TLS_KEY.warn(
            format!("{} is owned by uid {}, not the data directory's owner", path.display(), meta.uid()),
            "chown it to the user the server runs as",
        ),
        Ok(meta) => FILES_TLS_KEY.pass(format!(
            "{} is mode {:o}",
            path.display(),
            meta.mode() & 0o7777
        )),
    }
}

/// `files.config`: the configuration file, when one was given, must not be writable by others.
pub fn config_file_mode(file: Option<&Path>) -> Finding {
    let Some(path) = file else {
        return FILES_CONFIG.pass("no configuration file (defaults and environment variables)");
    };
    match fs::metadata(path) {
        Err(e) => FILES_CONFIG.fail(
            format!("{} cannot be read ({})", path.display(), e.kind()),
            "point --config at the configuration file",
        ),
        Ok(meta) if meta.mode() & 0o022 != 0 => FILES_CONFIG.fail(
            format!(
                "{} is mode {:o}: other users can change the configuration",
                path.display(),
                meta.mode() & 0o7777
            ),
            format!(
                "chmod go-w {} (carevault doctor --fix does it)",
                path.display()
            ),
        ),
        Ok(meta) => FILES_CONFIG.pass(format!(
            "{} is mode {:o}",
            path.display(),
            meta.mode() & 0o7777
        )),
    }
}

/// The server runs as the data directory's owner (it made it, and refuses one others can reach).
fn root(config: &Config) -> Finding {
    root_finding(
        config.posture.tier,
        data_dir_owner(config),
        rustix::process::geteuid().as_raw(),
    )
}

/// `process.root` from the data directory's owner (None: it cannot be read) and this
/// process's effective uid.
pub fn root_finding(tier: Tier, owner: Option<u32>, euid: u32) -> Finding {
    if owner == Some(0) || (owner.is_none() && euid == 0) {
        return PROCESS_ROOT.fail_in(
            tier,
            "the data directory is owned by root, so the server runs as root",
            "run the server as a dedicated user (chown -R carevault: the data directory; the \
             systemd unit in deploy/ does this)",
        );
    }
    PROCESS_ROOT.pass(format!(
        "the data directory is owned by uid {}",
        owner.unwrap_or(euid)
    ))
}

/// Where `process.memory` looked: the running server's process, or (none runs here) what a
/// server started by this user would get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryView {
    Server(super::process::ServerProcess),
    /// No server holds the data directory on this machine: this process's own limits stand in.
    NotRunning {
        lock_possible: Result<(), String>,
    },
}

impl MemoryView {
    fn of(config: &Config) -> Self {
        match super::process::server_holding(&config.data_dir) {
            Some(server) => Self::Server(server),
            None => Self::NotRunning {
                lock_possible: crate::memory::lock_possible(),
            },
        }
    }
}

fn memory(config: &Config) -> Finding {
    // The server marks itself non-dumpable; with fs.suid_dumpable = 2 the kernel still writes
    // such a process's core (readable by root), keys included.
    let suid_dumpable = fs::read_to_string("/proc/sys/fs/suid_dumpable")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    memory_finding(
        config.posture.tier,
        config.key_lock_memory,
        &MemoryView::of(config),
        suid_dumpable,
    )
}

/// `process.memory`: the running server's locked memory and core-dump limit (or, with no server
/// running, whether one started here could lock its memory), against `key.lock_memory` and the
/// kernel's `fs.suid_dumpable`.
pub fn memory_finding(
    tier: Tier,
    mode: LockMode,
    view: &MemoryView,
    suid_dumpable: u32,
) -> Finding {
    const LOCK_FIX: &str = "set key.lock_memory = \"required\", grant CAP_IPC_LOCK or \
                            LimitMEMLOCK=infinity (systemd; the unit in deploy/ does), and restart \
                            the server; or use encrypted swap";
    let (who, core_off) = match view {
        MemoryView::Server(p) => (
            format!("the running server (pid {})", p.pid),
            p.core_limit == Some(0),
        ),
        MemoryView::NotRunning { .. } => (
            "no server runs on this data directory here, so this checked what one started by \
             this user would get:"
                .to_owned(),
            false,
        ),
    };
    if mode == LockMode::Off {
        return PROCESS_MEMORY.fail_in(
            tier,
            "key.lock_memory is off: unsealed keys may reach swap",
            LOCK_FIX,
        );
    }
    let locked = match view {
        MemoryView::Server(p) if p.locked_kib == 0 => {
            return PROCESS_MEMORY.fail_in(
                tier,
                format!("{who} has no memory locked: unsealed keys may reach swap"),
                LOCK_FIX,
            );
        }
        MemoryView::Server(p) => format!("{who} has {} KiB locked", p.locked_kib),
        MemoryView::NotRunning {
            lock_possible: Err(reason),
        } => {
            return PROCESS_MEMORY.fail_in(
                tier,
                format!("{who} memory cannot be locked ({reason})"),
                LOCK_FIX,
            );
        }
        MemoryView::NotRunning {
            lock_possible: Ok(()),
        } => format!("{who} memory can be locked"),
    };
    if core_off {
        return PROCESS_MEMORY.pass(format!("{locked}; core dumps off (RLIMIT_CORE 0)"));
    }
    if suid_dumpable != 0 {
        return PROCESS_MEMORY.warn(
            format!(
                "{locked}; fs.suid_dumpable is {suid_dumpable}: the kernel may dump the server's \
                 memory despite its non-dumpable flag"
            ),
            "sysctl -w fs.suid_dumpable=0 (and in /etc/sysctl.d), or LimitCORE=0 (systemd)",
        );
    }
    PROCESS_MEMORY.pass(format!(
        "{locked}; core dumps off (non-dumpable, fs.suid_dumpable = 0)"
    ))
}

fn keys_protection(config: &Config) -> Finding {
    match (&config.key_provider, &config.key_passphrase_file) {
        (KeyProviderConfig::Pkcs11 { .. }, _) => {
            KEYS_PROTECTION.pass("KEKs held in an HSM (pkcs11)")
        }
        (KeyProviderConfig::File, Some(_)) => {
            KEYS_PROTECTION.pass("KEK files sealed under a passphrase")
        }
        (KeyProviderConfig::File, None) if config.posture.tier == Tier::Production => {
            KEYS_PROTECTION.fail(
                "production tier with plain KEK files (no passphrase, no HSM)",
                "set key.provider = \"pkcs11\", or key.passphrase_file (docs/keys.md)",
            )
        }
        (KeyProviderConfig::File, None) => KEYS_PROTECTION.pass(format!(
            "plain KEK files ({} tier; production needs a passphrase or an HSM)",
            config.posture.tier.as_str()
        )),
    }
}

fn certificate(config: &Config, now_us: i64) -> Vec<Finding> {
    let path = &config.tls_cert;
    let facts = match crate::certificate::inspect(path) {
        Ok(f) => f,
        Err(e) => {
            return vec![TLS_CERTIFICATE.fail(
                format!("{}: {e}", path.display()),
                "set tls.cert_path to a readable PEM certificate",
            )];
        }
    };
    certificate_findings(path, &facts, now_us.div_euclid(1_000_000))
}

/// `tls.certificate` and `tls.key` from what the certificate at `path` says, at `now` (unix
/// seconds).
pub fn certificate_findings(
    path: &Path,
    facts: &crate::certificate::CertificateInfo,
    now: i64,
) -> Vec<Finding> {
    let days_left = (facts.not_after_secs - now).div_euclid(DAY_SECS);
    let lifetime = (facts.not_after_secs - facts.not_before_secs).div_euclid(DAY_SECS);
    let renew = if facts.generated {
        "carevault doctor --fix renews the generated certificate"
    } else {
        "install a renewed certificate from your CA"
    };
    let validity = if facts.not_after_secs <= now {
        TLS_CERTIFICATE.fail(
            format!("{} expired {} days ago", path.display(), -days_left),
            renew,
        )
    } else if facts.not_before_secs > now {
        TLS_CERTIFICATE.fail(
            format!("{} is not valid yet", path.display()),
            "check the machine's clock, or the certificate",
        )
    } else if days_left < RENEW_WITHIN_DAYS {
        TLS_CERTIFICATE.warn(
            format!("{} expires in {days_left} days", path.display()),
            renew,
        )
    } else if lifetime > MAX_VALIDITY_DAYS {
        TLS_CERTIFICATE.warn(
            format!(
                "{} is valid for {lifetime} days (scanners and browsers accept at most {MAX_VALIDITY_DAYS})",
                path.display()
            ),
            renew,
        )
    } else {
        TLS_CERTIFICATE.pass(format!(
            "{} valid for {days_left} more days{}",
            path.display(),
            if facts.generated { " (generated)" } else { "" }
        ))
    };
    let key = if facts.key_ok {
        TLS_KEY.pass(facts.key.clone())
    } else {
        TLS_KEY.fail(
            format!("{} key", facts.key),
            "use ECDSA P-256/P-384, Ed25519 or RSA of at least 2048 bits",
        )
    };
    vec![validity, key]
}
