//! Connection counters: atomics, so the serving path takes no lock for them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{family, single};

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

    pub(super) fn render(&self, out: &mut String) {
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
