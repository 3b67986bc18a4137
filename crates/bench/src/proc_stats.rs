//! A server process's peak resident memory and CPU time, from /proc (Linux).

use anyhow::{Context, Result};
use serde_json::{Value, json};

pub struct Sample {
    /// VmHWM: the peak resident set size over the process's life.
    pub peak_rss_mib: f64,
    /// User + system CPU time so far.
    pub cpu_seconds: f64,
}

pub fn sample(pid: u32) -> Result<Sample> {
    let peak_kib = status_kib(pid, "VmHWM:")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat, 12 and 13 after the name.
    let cpu_ticks = ticks(11) + ticks(12);
    Ok(Sample {
        peak_rss_mib: peak_kib / 1024.0,
        cpu_seconds: cpu_ticks / clock_ticks_per_second(),
    })
}

/// VmRSS: the resident set size now, in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    Ok(status_kib(pid, "VmRSS:")? / 1024.0)
}

/// One `field:` of /proc/PID/status, in KiB (0 when absent).
fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("cannot read the server's /proc status")?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What the figures were measured on.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    json!({"cpu": model, "cores": cores, "memory_gib": (mem_kib / 1024.0 / 1024.0).round()})
}
