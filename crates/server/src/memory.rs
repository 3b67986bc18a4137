//! Keeps unsealed keys (and the PHI decrypted beside them) out of swap and out of core dumps.
//!
//! The whole process is locked (`mlockall` with `MCL_FUTURE | MCL_ONFAULT`), not single key
//! buffers: a key's AES round keys, the cached data-key ciphers and every decrypted resource
//! live in ordinary heap memory too, and locking only the 32 raw key bytes would leave those to
//! the swap device. `MCL_ONFAULT` locks pages as they are touched, so reserved but unused address
//! space (thread stacks, allocator arenas) costs nothing.
//!
//! Locking is attempted only where it cannot fail later: with `CAP_IPC_LOCK` or an unlimited
//! `RLIMIT_MEMLOCK`. Under a finite limit, `MCL_FUTURE` would make allocations fail once the
//! limit is reached, so the server would crash under load instead of refusing to start.

use std::sync::OnceLock;

use rustix::mm::{MlockAllFlags, mlockall};
use rustix::process::{DumpableBehavior, Resource, getrlimit, set_dumpable_behavior};

/// `key.lock_memory`: whether the process must, may or must not lock its memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockMode {
    /// Lock when the OS allows it; otherwise start with a warning.
    #[default]
    Auto,
    /// Refuse to start unless memory is locked.
    Required,
    /// Do not lock (a test box, or memory that is accounted for elsewhere).
    Off,
}

impl LockMode {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(Self::Auto),
            "required" => Some(Self::Required),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// What [`protect_process`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// Every page of the process is locked in RAM as it is touched.
    Locked,
    /// The OS does not allow it (no `CAP_IPC_LOCK`, finite `RLIMIT_MEMLOCK`, or the call failed).
    Unavailable,
    /// `key.lock_memory = "off"`.
    Disabled,
}

/// Why memory could not be locked under `key.lock_memory = "required"`.
#[derive(Debug, thiserror::Error)]
#[error(
    "key.lock_memory = \"required\" but memory cannot be locked ({0}); grant CAP_IPC_LOCK or \
     raise RLIMIT_MEMLOCK to unlimited (systemd: LimitMEMLOCK=infinity)"
)]
pub struct LockRequired(String);

static OUTCOME: OnceLock<LockOutcome> = OnceLock::new();

/// The outcome of this process's [`protect_process`], if it ran (exported as a metric).
pub fn outcome() -> Option<LockOutcome> {
    OUTCOME.get().copied()
}

/// Marks the process non-dumpable (no core dump, no ptrace or `/proc/PID/mem` by the same user)
/// and locks its memory as `mode` asks. Call it before any key is unsealed. Idempotent: a
/// second call returns the first one's outcome.
pub fn protect_process(mode: LockMode) -> Result<LockOutcome, LockRequired> {
    if let Some(done) = outcome() {
        return Ok(done);
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(event = "dumpable_not_cleared", errno = e.raw_os_error());
    }
    let result = match mode {
        LockMode::Off => LockOutcome::Disabled,
        LockMode::Auto | LockMode::Required => match lock_all() {
            Ok(()) => LockOutcome::Locked,
            Err(reason) if mode == LockMode::Required => return Err(LockRequired(reason)),
            Err(reason) => {
                tracing::warn!(
                    event = "memory_not_locked",
                    reason = %reason,
                    "unsealed keys may be written to swap; grant CAP_IPC_LOCK or set \
                     RLIMIT_MEMLOCK to unlimited, or use encrypted swap"
                );
                LockOutcome::Unavailable
            }
        },
    };
    if result == LockOutcome::Locked {
        tracing::info!(event = "memory_locked");
    }
    Ok(*OUTCOME.get_or_init(|| result))
}

/// Whether this process could lock its memory (without locking it): `Err` says why not.
pub fn lock_possible() -> Result<(), String> {
    let limit = getrlimit(Resource::Memlock).current;
    if limit.is_some() && !has_ipc_lock_capability() {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} bytes and the process lacks CAP_IPC_LOCK",
            limit.unwrap_or_default()
        ));
    }
    Ok(())
}

fn lock_all() -> Result<(), String> {
    lock_possible()?;
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
        .map_err(|e| format!("mlockall failed: {e}"))
}

/// `CAP_IPC_LOCK` (bit 14) in the effective set, read from `/proc/self/status`.
fn has_ipc_lock_capability() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_capabilities(&status))
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_modes_parse_and_reject_anything_else() {
        assert_eq!(LockMode::parse("auto"), Some(LockMode::Auto));
        assert_eq!(LockMode::parse("required"), Some(LockMode::Required));
        assert_eq!(LockMode::parse("off"), Some(LockMode::Off));
        assert_eq!(LockMode::parse("yes"), None);
        assert_eq!(LockMode::parse(""), None);
    }

    #[test]
    fn effective_capabilities_are_read_from_the_status_line() {
        let status = "Name:\tcarevault\nCapInh:\t0000000000000000\nCapEff:\t0000000000004000\n";
        assert_eq!(effective_capabilities(status), Some(1 << 14));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
        assert_eq!(effective_capabilities("CapEff:\tzz\n"), None);
    }

    #[test]
    fn off_leaves_memory_unlocked_but_the_process_not_dumpable() {
        // The test process itself is protected here: harmless, and the only way to observe the
        // dumpable flag (it can be read back only by the process itself).
        assert_eq!(
            protect_process(LockMode::Off).ok(),
            Some(LockOutcome::Disabled)
        );
        assert_eq!(
            rustix::process::dumpable_behavior().ok(),
            Some(DumpableBehavior::NotDumpable)
        );
        // A second call keeps the first outcome rather than locking now.
        assert_eq!(
            protect_process(LockMode::Auto).ok(),
            Some(LockOutcome::Disabled)
        );
    }
}
