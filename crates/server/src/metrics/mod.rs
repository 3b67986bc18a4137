//! Request and connection metrics in the Prometheus text format. Labels are route templates,
//! methods, status codes and fixed names: never paths, ids, addresses or query values.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(String, String, u16), Counter>>,
    /// Shared with the listener, which counts connections without taking a lock.
    pub connections: Arc<ConnectionMetrics>,
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// `http.max_connections` (or the file-descriptor limit), with no idle connection to close.
    Global,
    /// `http.max_connections_per_ip`.
    PerIp,
}

/// What a client was too slow at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Handshake,
    Header,
    Idle,
    Body,
}

const TIMEOUTS: [(Timeout, &str); 4] = [
    (Timeout::Handshake, "handshake"),
    (Timeout::Header, "header"),
    (Timeout::Idle, "idle"),
    (Timeout::Body, "body"),
];

/// Connection counters: atomics, so the serving path takes no lock for them.
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    open: AtomicU64,
    refused: [AtomicU64; 2],
    shed: AtomicU64,
    timeouts: [AtomicU64; 4],
    accept_paused: AtomicU64,
}

impl ConnectionMetrics {
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn refused(&self, cap: Cap) {
        self.refused[cap as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An idle connection closed to make room for a new one.
    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn timed_out(&self, kind: Timeout) {
        self.timeouts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An episode of `accept` failing for want of file descriptors began.
    pub fn accept_paused(&self) {
        self.accept_paused.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        single(
            out,
            "carevault_http_connections_open",
            "gauge",
            "Client connections open (TLS handshakes included).",
            self.open(),
        );
        family(
            out,
            "carevault_http_connections_refused_total",
            "counter",
            "Connections closed on accept, before the TLS handshake, by the cap that refused them.",
        );
        for (cap, name) in [(Cap::Global, "global"), (Cap::PerIp, "per_ip")] {
            let n = self.refused[cap as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "carevault_http_connections_refused_total{{cap=\"{name}\"}} {n}"
            );
        }
        single(
            out,
            "carevault_http_connections_shed_total",
            "counter",
            "Idle connections closed to make room (at the connection cap or out of descriptors).",
            self.shed.load(Ordering::Relaxed),
        );
        family(
            out,
            "carevault_http_timeouts_total",
            "counter",
            "Connections (handshake, header, idle) and request bodies (body) cut for slowness.",
        );
        for (kind, name) in TIMEOUTS {
            let n = self.timeouts[kind as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "carevault_http_timeouts_total{{kind=\"{name}\"}} {n}");
        }
        single(
            out,
            "carevault_http_accept_paused_total",
            "counter",
            "Episodes of accept backing off for want of file descriptors.",
            self.accept_paused.load(Ordering::Relaxed),
        );
    }
}

#[derive(Default, Clone, Copy)]
struct Counter {
    count: u64,
    latency_us: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            requests: Mutex::new(BTreeMap::new()),
            connections: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn record(&self, route: &str, method: &str, status: u16, latency_us: u64) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let c = map
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default();
        c.count += 1;
        c.latency_us = c.latency_us.saturating_add(latency_us);
    }

    pub fn render(&self) -> String {
        let map = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = String::new();
        family(
            &mut out,
            "carevault_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
        );
        let _ = writeln!(
            out,
            "carevault_uptime_seconds {}",
            self.started.elapsed().as_secs()
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
        for ((route, method, status), c) in &map {
            let _ = writeln!(
                out,
                "carevault_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {}",
                escape(route),
                c.count
            );
        }
        family(
            &mut out,
            "carevault_request_duration_seconds_sum",
            "counter",
            "Total time spent answering, by route template and method.",
        );
        let mut by_route: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for ((route, method, _), c) in &map {
            *by_route.entry((route, method)).or_default() += c.latency_us;
        }
        for ((route, method), us) in by_route {
            let _ = writeln!(
                out,
                "carevault_request_duration_seconds_sum{{route=\"{}\",method=\"{method}\"}} {:.6}",
                escape(route),
                us as f64 / 1e6
            );
        }
        self.connections.render(&mut out);
        out
    }
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
    fn renders_counters_by_route() {
        let m = Metrics::default();
        m.record("/fhir/{rtype}/{id}", "GET", 200, 1500);
        m.record("/fhir/{rtype}/{id}", "GET", 200, 500);
        m.record("/fhir/{rtype}/{id}", "GET", 404, 100);
        let text = m.render();
        assert!(text.contains("carevault_requests_total{route=\"/fhir/{rtype}/{id}\",method=\"GET\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("status=\"404\"} 1"));
        assert!(text.contains("carevault_request_duration_seconds_sum{route=\"/fhir/{rtype}/{id}\",method=\"GET\"} 0.002100"));
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
}
