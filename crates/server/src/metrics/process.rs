//! The process's CPU time, memory and file descriptors from `/proc/self` (Linux), under the
//! standard `process_*` names every Prometheus client uses, so stock dashboards and alerts
//! work. Elsewhere the families are left out.

use super::single;

/// Clock ticks per second of `/proc/*/stat`'s times: `USER_HZ`, 100 on every Linux architecture
/// Prometheus's own procfs reader supports (it assumes the same).
const USER_HZ: f64 = 100.0;

/// Prometheus text for the process, or nothing where `/proc/self` cannot be read.
pub fn process_text() -> String {
    let mut out = String::new();
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return out;
    };
    // The fields after the command name (which may hold spaces and parentheses).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // stat(5) numbers fields from 1; `fields[0]` is field 3 (state).
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    single(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        (field(14) + field(15)) / USER_HZ,
    );
    single(
        &mut out,
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        field(23),
    );
    if let Some(rss) = resident_bytes() {
        single(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
    }
    if let Some(boot) = boot_time() {
        single(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            boot + field(22) / USER_HZ,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        single(
            &mut out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            fds.count(),
        );
    }
    if let Some(max) = max_fds() {
        single(
            &mut out,
            "process_max_fds",
            "gauge",
            "The soft limit on open file descriptors.",
            max,
        );
    }
    single(
        &mut out,
        "process_threads",
        "gauge",
        "Threads of the process.",
        field(20),
    );
    out
}

/// VmRSS from `/proc/self/status`, in bytes (the kernel reports KiB).
fn resident_bytes() -> Option<f64> {
    let kib: f64 = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn max_fds() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let text = super::process_text();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_start_time_seconds") > 1_600_000_000.0);
        assert!(value("process_threads") >= 1.0);
    }
}
