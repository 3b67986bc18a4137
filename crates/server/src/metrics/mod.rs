//! Metrics in the Prometheus text format (0.0.4), written by hand: requests (a duration
//! histogram by route template, method and status), connections, the process, the store.
//! Identity, the keyring and the audit trail render their own families with [`family`] and
//! [`single`].
//!
//! Labels are route templates, methods from a fixed list, status codes and fixed names: never
//! paths, ids, names, queries or addresses.
//!
//! Why not the `prometheus-client` crate: it writes OpenMetrics only (a counter's `# TYPE` line
//! without `_total`, a closing `# EOF`), which `promtool check metrics` (the classic text
//! parser) flags, so every family here and in the keyring, identity and audit would have had to
//! move to it at once; and its labelled families take a lock and hash a label set per request,
//! where this takes a read lock and bumps atomics (see [`Histogram`]).

mod backup;
mod connections;
mod process;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, RwLock};
use std::time::Instant;

pub use backup::{BackupStats, OFFSITE_TARGETS, OffsiteOutcome};
pub use carevault_store::stats::{Histogram, HistogramSnapshot, LATENCY_BUCKETS, StoreStats};
pub use connections::{Cap, ConnectionMetrics, Timeout};
pub use process::process_text;

/// Per route template: a histogram per (method, status).
type ByRoute = HashMap<(&'static str, u16), Histogram>;

pub struct Metrics {
    started: Instant,
    requests: RwLock<HashMap<String, ByRoute>>,
    /// Shared with the listener, which counts connections without taking a lock.
    pub connections: Arc<ConnectionMetrics>,
    /// Shared with the backup schedule (`carevault_backup_*`).
    pub backup: Arc<BackupStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            requests: RwLock::new(HashMap::new()),
            connections: Arc::default(),
            backup: Arc::default(),
        }
    }
}

/// The methods a label may name; anything else (a client may send any token) is `other`.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// Count a request answered. `route` is a route template or a fixed name (`unmatched`),
    /// never a path.
    pub fn record(&self, route: &str, method: &str, status: u16, latency_us: u64) {
        let method = method_label(method);
        let seconds = latency_us as f64 / 1e6;
        {
            let map = self.requests.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = map.get(route).and_then(|r| r.get(&(method, status))) {
                h.observe(seconds);
                return;
            }
        }
        let mut map = self.requests.write().unwrap_or_else(|p| p.into_inner());
        map.entry(route.to_owned())
            .or_default()
            .entry((method, status))
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut requests: Vec<(String, &'static str, u16, HistogramSnapshot)> = {
            let map = self.requests.read().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .flat_map(|(route, by)| {
                    by.iter().map(move |((method, status), h)| {
                        (route.clone(), *method, *status, h.snapshot())
                    })
                })
                .collect()
        };
        requests.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        let mut out = String::new();
        single(
            &mut out,
            "carevault_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            self.started.elapsed().as_secs(),
        );
        single(
            &mut out,
            "carevault_memory_locked",
            "gauge",
            "1 when the process's memory (unsealed keys included) is locked against swap.",
            u8::from(crate::memory::outcome() == Some(crate::memory::LockOutcome::Locked)),
        );
        family(
            &mut out,
            "carevault_requests_total",
            "counter",
            "Requests answered, by route template, method and status.",
        );
        for (route, method, status, h) in &requests {
            let _ = writeln!(
                out,
                "carevault_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {}",
                escape(route),
                h.count()
            );
        }
        family(
            &mut out,
            "carevault_request_duration_seconds",
            "histogram",
            "Time to answer a request (audit event durable included), by route template, method and status.",
        );
        for (route, method, status, h) in &requests {
            let labels = format!(
                "route=\"{}\",method=\"{method}\",status=\"{status}\"",
                escape(route)
            );
            histogram_samples(&mut out, "carevault_request_duration_seconds", &labels, h);
        }
        self.connections.render(&mut out);
        out
    }
}

/// Prometheus text for what the store reports of itself.
pub fn store_text(stats: &StoreStats) -> String {
    let mut out = String::new();
    let backend = format!("backend=\"{}\"", stats.backend);
    let labelled = |out: &mut String, name: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            family(out, name, "gauge", help);
            let _ = writeln!(out, "{name}{{{backend}}} {v}");
        }
    };
    labelled(
        &mut out,
        "carevault_store_database_size_bytes",
        "Size of the database on disk (SQLite: the file; PostgreSQL: pg_database_size).",
        stats.database_bytes.map(|b| b as f64),
    );
    labelled(
        &mut out,
        "carevault_store_wal_size_bytes",
        "Size of SQLite's write-ahead log file.",
        stats.wal_bytes.map(|b| b as f64),
    );
    labelled(
        &mut out,
        "carevault_store_wal_checkpoint_age_seconds",
        "Seconds since a WAL checkpoint last succeeded (SQLite).",
        stats.wal_checkpoint_age_seconds,
    );
    family(
        &mut out,
        "carevault_store_pool_connections",
        "gauge",
        "Database connections by state (SQLite: scan slots in use and idle reader connections).",
    );
    for (state, n) in [("in_use", stats.pool.in_use), ("idle", stats.pool.idle)] {
        let _ = writeln!(
            out,
            "carevault_store_pool_connections{{{backend},state=\"{state}\"}} {n}"
        );
    }
    labelled(
        &mut out,
        "carevault_store_pool_max_connections",
        "The most connections (SQLite: concurrent scans) the pool allows.",
        Some(stats.pool.max as f64),
    );
    for (name, help, h) in [
        (
            "carevault_store_commit_batch_size",
            "Writes (requests' jobs) per group-commit transaction.",
            &stats.batch_size,
        ),
        (
            "carevault_store_commit_duration_seconds",
            "Time a commit takes: apply, commit and sync (SQLite: per group commit; PostgreSQL: per write, retries included).",
            &stats.commit_seconds,
        ),
    ] {
        if let Some(h) = h {
            family(&mut out, name, "histogram", help);
            histogram_samples(&mut out, name, &backend, h);
        }
    }
    out
}

/// The `_bucket`, `_sum` and `_count` lines of one histogram series.
pub fn histogram_samples(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (bound, n) in h.bounds.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let count = h.count();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// The `# HELP` and `# TYPE` lines that open a metric family in the Prometheus text format.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric family with one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_duration_histogram_by_route_method_and_status() {
        let m = Metrics::default();
        m.record("/fhir/{rtype}/{id}", "GET", 200, 1500);
        m.record("/fhir/{rtype}/{id}", "GET", 200, 500);
        m.record("/fhir/{rtype}/{id}", "GET", 404, 100);
        let text = m.render();
        let labels = "route=\"/fhir/{rtype}/{id}\",method=\"GET\",status=\"200\"";
        for line in [
            format!("carevault_requests_total{{{labels}}} 2\n"),
            format!("carevault_request_duration_seconds_bucket{{{labels},le=\"0.0005\"}} 1\n"),
            format!("carevault_request_duration_seconds_bucket{{{labels},le=\"0.001\"}} 1\n"),
            format!("carevault_request_duration_seconds_bucket{{{labels},le=\"0.0025\"}} 2\n"),
            format!("carevault_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2\n"),
            format!("carevault_request_duration_seconds_sum{{{labels}}} 0.002\n"),
            format!("carevault_request_duration_seconds_count{{{labels}}} 2\n"),
        ] {
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        assert!(text.contains("status=\"404\"} 1"));
        assert!(text.contains("# TYPE carevault_request_duration_seconds histogram\n"));
    }

    #[test]
    fn a_method_a_client_made_up_is_not_a_label() {
        let m = Metrics::default();
        m.record("unmatched", "CANARYMETHOD", 405, 10);
        let text = m.render();
        assert!(!text.contains("CANARYMETHOD"), "{text}");
        assert!(text.contains("method=\"other\",status=\"405\"} 1"));
    }

    #[test]
    fn renders_connection_counters() {
        let m = Metrics::default();
        m.connections.opened();
        m.connections.opened();
        m.connections.closed();
        m.connections.refused(Cap::PerIp);
        m.connections.timed_out(Timeout::Body);
        m.connections.timed_out(Timeout::Idle);
        m.connections.timed_out(Timeout::Idle);
        let text = m.render();
        assert!(
            text.contains("carevault_http_connections_open 1\n"),
            "{text}"
        );
        assert!(text.contains("carevault_http_connections_refused_total{cap=\"per_ip\"} 1\n"));
        assert!(text.contains("carevault_http_connections_refused_total{cap=\"global\"} 0\n"));
        assert!(text.contains("carevault_http_timeouts_total{kind=\"idle\"} 2\n"));
        assert!(text.contains("carevault_http_timeouts_total{kind=\"body\"} 1\n"));
        assert!(text.contains("carevault_http_timeouts_total{kind=\"header\"} 0\n"));
    }

    #[test]
    fn renders_store_stats() {
        let batch = Histogram::new(carevault_store::stats::BATCH_BUCKETS);
        batch.observe(3.0);
        let text = store_text(&StoreStats {
            backend: "sqlite",
            database_bytes: Some(4096),
            wal_bytes: Some(0),
            pool: carevault_store::stats::PoolUse {
                in_use: 1,
                idle: 3,
                max: 8,
            },
            batch_size: Some(batch.snapshot()),
            commit_seconds: None,
            wal_checkpoint_age_seconds: None,
        });
        for line in [
            "carevault_store_database_size_bytes{backend=\"sqlite\"} 4096\n",
            "carevault_store_wal_size_bytes{backend=\"sqlite\"} 0\n",
            "carevault_store_pool_connections{backend=\"sqlite\",state=\"in_use\"} 1\n",
            "carevault_store_commit_batch_size_bucket{backend=\"sqlite\",le=\"2\"} 0\n",
            "carevault_store_commit_batch_size_bucket{backend=\"sqlite\",le=\"4\"} 1\n",
            "carevault_store_commit_batch_size_count{backend=\"sqlite\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("wal_checkpoint_age"), "{text}");
    }
}
