//! `GET /healthz` (the process answers) and `GET /readyz` (this node can serve: the database
//! answers, the audit trail takes events and is signed in time), for load
//! balancers and orchestrators. Unauthenticated, a status word and nothing else, never PHI. A
//! probe is not an audit event (a balancer probing every few seconds would fill the trail with
//! them): probes are counted in `/metrics` instead, and rate-limited per client address. Which
//! check failed is logged, once when readiness changes, never told to the client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use carevault_server::identity::throttle::IpRateLimit;

use crate::AppState;
use crate::tls::ClientAddr;

/// Probes one client address may send a minute: a balancer probes every second or so.
const PROBES_PER_MINUTE: u32 = 600;

/// What readiness knows beyond the services: the last answer, the probe limit.
pub struct Readiness {
    was_ready: AtomicBool,
    per_ip: IpRateLimit,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            was_ready: AtomicBool::new(true),
            per_ip: IpRateLimit::new(PROBES_PER_MINUTE),
        }
    }
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(state.clone(), probe))
        .with_state(state)
}

/// Rate limit, the security headers, and a count in the request metrics (by route, never by client).
async fn probe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = if req.uri().path() == "/readyz" {
        "/readyz"
    } else {
        "/healthz"
    };
    let method = req.method().clone();
    let ip = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(addr))| addr.ip());
    let limited = ip.is_some_and(|ip| {
        state
            .inner
            .readiness
            .per_ip
            .check(ip, state.inner.clock.now_us())
            .is_err()
    });
    let mut resp = if limited {
        (StatusCode::TOO_MANY_REQUESTS, "slow down\n").into_response()
    } else {
        next.run(req).await
    };
    crate::security_headers(&state, resp.headers_mut());
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    state
        .inner
        .metrics
        .record(route, method.as_str(), resp.status().as_u16(), latency_us);
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let failed = failed_check(&state).await;
    let readiness = &state.inner.readiness;
    let was_ready = readiness
        .was_ready
        .swap(failed.is_none(), Ordering::Relaxed);
    match (failed, was_ready) {
        (Some(check), true) => {
            tracing::warn!(
                event = "not_ready",
                check,
                "this node answers /readyz with 503"
            );
        }
        (None, false) => tracing::info!(event = "ready", "this node is ready again"),
        _ => {}
    }
    match failed {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response(),
    }
}

/// The first readiness check that fails, by name. The keys need no check: the keyring unwraps
/// them before the server listens, and keeps them in memory.
async fn failed_check(state: &AppState) -> Option<&'static str> {
    let services = &state.inner;
    if services
        .store
        .audit_head(services.audit.node())
        .await
        .is_err()
    {
        return Some("database");
    }
    if !services.audit.is_writable() {
        return Some("audit_trail");
    }
    let unsigned_for = services.audit.checkpoint_health().oldest_unsigned_age();
    if services
        .config
        .audit_max_unsigned
        .is_some_and(|limit| unsigned_for > limit)
    {
        return Some("audit_signing");
    }
    None
}
