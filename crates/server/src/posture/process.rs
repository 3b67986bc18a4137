//! The running server's process as the kernel shows it, for `process.memory`: `doctor` runs in a
//! process of its own, so its own memory lock and limits say nothing about the server's. The
//! server holds an exclusive `flock` on its data directory while it runs
//! ([`crate::environment::DataDirLock`]); `/proc/locks` names the process holding it, and
//! `/proc/PID/status` and `/proc/PID/limits` (readable by every user) tell how much of its
//! memory is locked and whether it may dump core.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the kernel says about the server process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerProcess {
    pub pid: u32,
    /// `VmLck`: memory locked against swap, in KiB (under `mlockall(MCL_ONFAULT)` the whole
    /// mapped address space counts, touched or not).
    pub locked_kib: u64,
    /// The soft `RLIMIT_CORE` in bytes; None when unlimited.
    pub core_limit: Option<u64>,
}

/// The process that holds `data_dir`'s lock, when one runs on this machine (and in this PID
/// namespace) and its `/proc` entries can be read.
pub fn server_holding(data_dir: &Path) -> Option<ServerProcess> {
    let meta = fs::metadata(data_dir).ok()?;
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let pid = lock_holder(
        &locks,
        dev_major(meta.dev()),
        dev_minor(meta.dev()),
        meta.ino(),
    )?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    Some(ServerProcess {
        pid,
        locked_kib: locked_kib(&status)?,
        core_limit: core_limit(&limits)?,
    })
}

/// Linux's `MAJOR()` and `MINOR()` of a `dev_t` as `stat` reports it (glibc's encoding).
fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// The PID holding an exclusive `FLOCK` on the inode `major:minor:inode` in `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 4242 fe:00:901172 0 EOF`; device numbers in hex).
fn lock_holder(locks: &str, major: u64, minor: u64, inode: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter is listed as `1: -> FLOCK ...`; only the holder counts.
        let [_, "FLOCK", _, "WRITE", pid, file, ..] = fields.as_slice() else {
            return None;
        };
        let mut parts = file.split(':');
        let maj = u64::from_str_radix(parts.next()?, 16).ok()?;
        let min = u64::from_str_radix(parts.next()?, 16).ok()?;
        let ino: u64 = parts.next()?.parse().ok()?;
        (maj == major && min == minor && ino == inode)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

/// `VmLck:     1234 kB` from `/proc/PID/status`.
fn locked_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit of `Max core file size` from `/proc/PID/limits`: Some(None) when unlimited.
fn core_limit(limits: &str) -> Option<Option<u64>> {
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))?
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(None)
    } else {
        soft.parse().ok().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_holder_is_found_by_device_and_inode_and_waiters_are_not() {
        let locks = "1: POSIX  ADVISORY  WRITE 11 fe:00:42 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fe:00:901172 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 5151 fe:00:901173 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 77 fe:00:901174 0 EOF\n";
        assert_eq!(lock_holder(locks, 0xfe, 0, 901_172), Some(4242));
        assert_eq!(lock_holder(locks, 0xfe, 1, 901_172), None, "another device");
        assert_eq!(lock_holder(locks, 0xfe, 0, 42), None, "a POSIX lock");
        assert_eq!(lock_holder(locks, 0xfe, 0, 901_173), None, "a waiter");
        assert_eq!(lock_holder(locks, 0xfe, 0, 901_174), None, "a shared lock");
    }

    #[test]
    fn device_numbers_split_as_the_kernel_prints_them() {
        // `stat -c %D` fe00 is `fe:00` in /proc/locks; 259:3 (an NVMe partition) is 0x10303.
        assert_eq!((dev_major(0xfe00), dev_minor(0xfe00)), (0xfe, 0));
        assert_eq!((dev_major(0x10303), dev_minor(0x10303)), (259, 3));
    }

    #[test]
    fn status_and_limits_lines_are_read() {
        let status = "Name:\tcarevault\nVmPeak:\t  900 kB\nVmLck:\t  123456 kB\nVmPin:\t 0 kB\n";
        assert_eq!(locked_kib(status), Some(123_456));
        assert_eq!(locked_kib("Name:\tx\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max file size             unlimited            unlimited            bytes     \n\
                      Max core file size        0                    unlimited            bytes     \n";
        assert_eq!(core_limit(limits), Some(Some(0)));
        let unlimited = limits.replace(
            "core file size        0   ",
            "core file size        unlimited",
        );
        assert_eq!(core_limit(&unlimited), Some(None));
    }

    #[test]
    fn this_process_is_found_holding_a_lock_on_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _lock = crate::environment::DataDirLock::acquire(dir.path()).unwrap();
        let found = server_holding(dir.path()).expect("the holder is found");
        assert_eq!(found.pid, std::process::id());
        let other = tempfile::tempdir().unwrap();
        assert_eq!(server_holding(other.path()), None, "nobody holds it");
    }
}
