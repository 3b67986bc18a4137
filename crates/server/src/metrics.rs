//! Request metrics in the Prometheus text format. Labels are route templates, methods and
//! status codes: never paths, ids or query values.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(String, String, u16), Counter>>,
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
}
