//! Serving connections: the accept loop, admission (a global cap and a cap per client address),
//! the TLS handshake, and HTTP/1.1 and HTTP/2 under timeouts, until a graceful shutdown.
//!
//! Every step a client controls has a deadline: the handshake (`http.handshake_timeout_secs`),
//! HTTP/1.1 headers (`http.header_timeout_secs`, hyper's own timer), a connection with no request
//! in flight (`http.idle_timeout_secs`, a watchdog per connection), and the request body
//! ([`crate::body::DeadlineBody`]). A connection beyond `http.max_connections_per_ip` is closed
//! on accept, before the handshake. At `http.max_connections` (lowered at start to fit the
//! file-descriptor limit) the oldest idle connection is closed to make room, as it is when
//! `accept` runs out of descriptors; a new connection is refused only when none is idle.
//!
//! The serving path adds no lock or allocation per request: the admission table is locked once
//! when a connection opens and once when it closes; requests only touch two atomics of their
//! connection ([`ConnState`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use carevault_server::config::HttpLimits;
use carevault_server::identity::throttle::client_prefix;
use carevault_server::metrics::{Cap, ConnectionMetrics, Timeout};

use crate::body::ConnService;
use crate::tls::{ClientAddr, ClientCertificate};

/// How long a busy connection asked to close to make room may take to finish its requests.
const SHED_GRACE: Duration = Duration::from_secs(5);
/// How long an idle connection asked to close may take to say goodbye (HTTP/2 waits for the
/// client to acknowledge its GOAWAY).
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// What every connection task shares.
struct Shared {
    tls: Option<TlsAcceptor>,
    router: Router,
    builder: Builder<TokioExecutor>,
    limits: HttpLimits,
    admission: Admission,
    metrics: Arc<ConnectionMetrics>,
}

/// Serve `listener` (TLS when `tls` is set) until `shutdown` completes, then let every open
/// connection finish its requests.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<ConnectionMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let fd_limit = raise_descriptor_limit();
    let max_connections = connection_cap(limits.max_connections, fd_limit);
    tracing::info!(
        event = "connection_limits",
        max_connections,
        max_connections_per_ip = limits.max_connections_per_ip,
        file_descriptor_limit = fd_limit,
    );
    let shared = Arc::new(Shared {
        tls,
        router,
        builder: builder(&limits),
        limits,
        admission: Admission::new(max_connections, limits.max_connections_per_ip),
        metrics,
    });
    // `stop` tells connections to finish; `close_rx` clones are held by connection tasks, so
    // `close_tx.closed()` completes when the last one ends.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                let delay = accept_failed(&shared, &mut backoff, &e);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if let Some((attempts, paused)) = backoff.succeeded() {
            tracing::info!(
                event = "accept_resumed",
                failed_attempts = attempts,
                paused_ms = paused.as_millis() as u64,
            );
        }
        admit(&shared, stream, peer, &stop_rx, &close_rx);
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(close_rx);
    close_tx.closed().await;
    Ok(())
}

/// Admit a new connection (spawning its task) or close it at once.
fn admit(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: &watch::Receiver<bool>,
    close: &watch::Receiver<()>,
) {
    match shared.admission.admit(peer.ip()) {
        Err(cap) => {
            shared.metrics.refused(cap);
            tracing::debug!(event = "connection_refused", cap = ?cap);
            drop(stream);
        }
        Ok((state, victim)) => {
            if let Some(victim) = victim {
                shared.metrics.shed();
                victim.shed.notify_one();
            }
            shared.metrics.opened();
            let _ = stream.set_nodelay(true);
            let slot = Slot {
                shared: shared.clone(),
                state,
            };
            tokio::spawn(connection(slot, stream, peer, stop.clone(), close.clone()));
        }
    }
}

/// Log an accept failure once per episode, make room if descriptors ran out, and say how long
/// to wait before the next attempt.
fn accept_failed(shared: &Shared, backoff: &mut Backoff, e: &std::io::Error) -> Duration {
    let exhausted = out_of_descriptors(e);
    let (delay, first) = backoff.failed();
    if first {
        if exhausted {
            shared.metrics.accept_paused();
        }
        tracing::warn!(
            event = "accept_paused",
            error = %e,
            open_connections = shared.metrics.open(),
            "accepting connections failed; retrying with backoff (logged once until it recovers)"
        );
    }
    if exhausted && let Some(victim) = shared.admission.shed_oldest_idle() {
        shared.metrics.shed();
        victim.shed.notify_one();
    }
    delay
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(e)
        .is_some_and(|n| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&n))
}

fn builder(limits: &HttpLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_bytes)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams);
    builder
}

/// One admitted connection: the TLS handshake (if any), then HTTP until it ends.
async fn connection(
    slot: Slot,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    _close: watch::Receiver<()>,
) {
    let shared = &slot.shared;
    let state = &slot.state;
    let Some(acceptor) = &shared.tls else {
        return http(&slot, stream, peer, ClientCertificate::default(), stop).await;
    };
    let handshake = tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(stream));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(event = "tls_handshake_failed", error = %e);
                return;
            }
            Err(_) => {
                shared.metrics.timed_out(Timeout::Handshake);
                tracing::debug!(event = "tls_handshake_timeout");
                return;
            }
        },
        () = state.shed.notified() => return,
        () = stopped(&mut stop) => return,
    };
    let cert = ClientCertificate::of_connection(tls.get_ref().1);
    http(&slot, tls, peer, cert, stop).await;
}

/// Serve HTTP/1.1 or HTTP/2 on `io` until the client leaves, a timeout closes it, or shutdown.
async fn http<I>(
    slot: &Slot,
    io: I,
    peer: SocketAddr,
    cert: ClientCertificate,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (shared, state) = (&slot.shared, &slot.state);
    let service = ConnService::new(
        shared.router.clone(),
        state.clone(),
        ClientAddr(peer),
        cert,
        shared.limits,
    );
    let mut conn = pin!(
        shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
    );
    let mut idle = IdleWatch::new(shared.limits.idle_timeout);
    let mut tick = tokio::time::interval_at(Instant::now() + idle.period, idle.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    // Once a close has been asked for, the time by which the connection is dropped regardless.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    if is_header_timeout(&*e) {
                        shared.metrics.timed_out(Timeout::Header);
                    }
                    tracing::debug!(event = "connection_error", error = %e);
                }
                return;
            }
            () = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = state.shed.notified() => {
                if state.is_idle() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing.get_or_insert_with(|| Instant::now() + SHED_GRACE);
            }
            _ = tick.tick() => {
                if closing.is_some_and(|at| Instant::now() >= at) {
                    return;
                }
                if idle.expired(state) && closing.is_none() {
                    shared.metrics.timed_out(Timeout::Idle);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + IDLE_GRACE);
                }
            }
        }
    }
}

/// hyper's HTTP/1.1 header read timeout (hyper-util boxes hyper's error).
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the server is stopping as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Decides, a quarter of the idle timeout at a time, that a connection has had no request in
/// flight for the whole timeout (so it closes between one and 1.25 timeouts after its last
/// request ended).
struct IdleWatch {
    timeout: Duration,
    period: Duration,
    seen: u64,
    quiet: Duration,
}

impl IdleWatch {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            period: (timeout / 4).max(Duration::from_millis(50)),
            seen: 0,
            quiet: Duration::ZERO,
        }
    }

    /// Called once per period.
    fn expired(&mut self, state: &ConnState) -> bool {
        let activity = state.activity.load(Ordering::Relaxed);
        if activity != self.seen || !state.is_idle() {
            self.seen = activity;
            self.quiet = Duration::ZERO;
            return false;
        }
        self.quiet += self.period;
        self.quiet >= self.timeout
    }
}

/// What requests of a connection share with its task and the admission table.
pub(crate) struct ConnState {
    id: u64,
    /// The client's address as the per-address cap counts it (an IPv6 /64).
    ip: IpAddr,
    in_flight: AtomicU32,
    /// Bumped when a request starts and when it ends (the idle watchdog compares it).
    activity: AtomicU64,
    /// Woken to close this connection when it is idle (to make room).
    shed: Notify,
}

impl ConnState {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

/// An admitted connection's place: released (and the open gauge lowered) when its task ends.
struct Slot {
    shared: Arc<Shared>,
    state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.admission.release(&self.state);
        self.shared.metrics.closed();
    }
}

/// The connections held, oldest first, and how many each client address holds.
struct Admission {
    max: usize,
    per_ip: usize,
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    next_id: u64,
    conns: BTreeMap<u64, Arc<ConnState>>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    fn new(max: usize, per_ip: usize) -> Self {
        Self {
            max,
            per_ip,
            live: Mutex::new(Live::default()),
        }
    }

    /// Admit a connection from `ip`: its state, and the idle connection to close to make room
    /// (at the global cap); the cap that refuses it otherwise.
    fn admit(&self, ip: IpAddr) -> Result<(Arc<ConnState>, Option<Arc<ConnState>>), Cap> {
        let ip = client_prefix(ip);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.per_ip.get(&ip).is_some_and(|n| *n >= self.per_ip) {
            return Err(Cap::PerIp);
        }
        let victim = if live.conns.len() >= self.max {
            Some(live.take_oldest_idle().ok_or(Cap::Global)?)
        } else {
            None
        };
        live.next_id += 1;
        let state = Arc::new(ConnState {
            id: live.next_id,
            ip,
            in_flight: AtomicU32::new(0),
            activity: AtomicU64::new(0),
            shed: Notify::new(),
        });
        live.conns.insert(state.id, state.clone());
        *live.per_ip.entry(ip).or_default() += 1;
        Ok((state, victim))
    }

    /// Take the oldest idle connection out of the count (its task is then told to close).
    fn shed_oldest_idle(&self) -> Option<Arc<ConnState>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.take_oldest_idle()
    }

    fn release(&self, state: &ConnState) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(state.id);
    }
}

impl Live {
    fn take_oldest_idle(&mut self) -> Option<Arc<ConnState>> {
        let id = self.conns.values().find(|c| c.is_idle())?.id;
        self.remove(id)
    }

    fn remove(&mut self, id: u64) -> Option<Arc<ConnState>> {
        let state = self.conns.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&state.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&state.ip);
            }
        }
        Some(state)
    }
}

/// Raise the soft file-descriptor limit to the hard one (as Go and others do at start); the
/// soft limit in force afterwards, or None when it is unlimited or cannot be read.
fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // A generous ceiling when the hard limit is unlimited.
    let target = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|current| current < target) {
        let raised = rustix::process::Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    limit.current
}

/// The global cap: `configured`, lowered so connections leave descriptors for everything else
/// (database files and connections, logs, key files): an eighth of the limit, at least 64 and
/// at most half of it.
fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured;
    };
    let reserve = (limit / 8).max(64).min(limit / 2);
    let room = usize::try_from(limit - reserve).unwrap_or(usize::MAX);
    configured.min(room).max(1)
}

/// Exponential backoff for a failing `accept`, in episodes: an episode begins with a failure
/// (the one to log) and ends with the first success that follows [`Backoff::QUIET`] without a
/// failure, so a flood that keeps exhausting descriptors is one episode, not one per retry.
#[derive(Default)]
struct Backoff {
    delay: Duration,
    attempts: u32,
    since: Option<Instant>,
    last_failure: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);
    const QUIET: Duration = Duration::from_secs(5);

    /// The wait before the next attempt, and whether this failure began an episode.
    fn failed(&mut self) -> (Duration, bool) {
        self.failed_at(Instant::now())
    }

    fn failed_at(&mut self, now: Instant) -> (Duration, bool) {
        let first = self.since.is_none();
        if first {
            self.since = Some(now);
        }
        self.delay = if self.delay.is_zero() {
            Self::FIRST
        } else {
            (self.delay * 2).min(Self::MAX)
        };
        self.attempts += 1;
        self.last_failure = Some(now);
        (self.delay, first)
    }

    /// An accept succeeded: the failed attempts and length of the episode it ends, if any.
    fn succeeded(&mut self) -> Option<(u32, Duration)> {
        self.succeeded_at(Instant::now())
    }

    fn succeeded_at(&mut self, now: Instant) -> Option<(u32, Duration)> {
        // Descriptors were free again: the next failure waits briefly again.
        self.delay = Duration::ZERO;
        let last_failure = self.last_failure?;
        if now.duration_since(last_failure) < Self::QUIET {
            return None;
        }
        let since = self.since.take()?;
        self.last_failure = None;
        let attempts = std::mem::take(&mut self.attempts);
        Some((attempts, last_failure.duration_since(since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_reports_one_episode() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.succeeded_at(t0).is_none());
        let (d, first) = b.failed_at(t0);
        assert!(first);
        assert_eq!(d, Backoff::FIRST);
        let delays: Vec<_> = (0..12).map(|_| b.failed_at(t0)).collect();
        assert!(delays.iter().all(|(_, first)| !first));
        assert_eq!(delays[0].0, Backoff::FIRST * 2);
        assert_eq!(delays.last().unwrap().0, Backoff::MAX);
        // A success soon after a failure resets the delay but does not end the episode.
        let soon = t0 + Duration::from_millis(100);
        assert!(b.succeeded_at(soon).is_none());
        assert_eq!(b.failed_at(soon), (Backoff::FIRST, false));
        let later = soon + Backoff::QUIET;
        assert_eq!(
            b.succeeded_at(later),
            Some((14, Duration::from_millis(100)))
        );
        assert!(b.succeeded_at(later).is_none());
        assert!(
            b.failed_at(later).1,
            "a failure after recovery begins a new episode"
        );
    }

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest_of_the_server() {
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(4096, Some(1024)), 896);
        assert_eq!(connection_cap(4096, Some(256)), 192);
        assert_eq!(connection_cap(100, Some(256)), 100);
        assert_eq!(connection_cap(4096, Some(100)), 50);
        assert_eq!(connection_cap(4096, Some(1 << 20)), 4096);
    }

    #[test]
    fn per_address_cap_and_shedding_the_oldest_idle_connection() {
        let a = Admission::new(3, 2);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let (first, _) = a.admit(one).unwrap();
        let (_second, _) = a.admit(one).unwrap();
        assert_eq!(a.admit(one).err(), Some(Cap::PerIp));
        first.request_started();
        let (_third, victim) = a.admit(two).unwrap();
        assert!(victim.is_none());
        // At the cap: the oldest idle connection (not the busy first one) makes room.
        let (_fourth, victim) = a.admit(two).unwrap();
        assert_eq!(victim.map(|v| v.id), Some(2));
        // Address one holds a single connection again.
        let (_fifth, victim) = a.admit(one).unwrap();
        assert_eq!(victim.map(|v| v.id), Some(3));
        first.request_ended();
        assert_eq!(a.shed_oldest_idle().map(|v| v.id), Some(1));
    }

    #[test]
    fn a_full_table_of_busy_connections_refuses() {
        let a = Admission::new(1, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (busy, _) = a.admit(ip).unwrap();
        busy.request_started();
        assert_eq!(a.admit(ip).err(), Some(Cap::Global));
        a.release(&busy);
        assert!(a.admit(ip).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_prefix(a), client_prefix(b));
        assert_ne!(client_prefix(a), client_prefix(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            client_prefix(mapped),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn idle_watch_needs_a_whole_quiet_timeout() {
        let state = ConnState {
            id: 1,
            ip: "10.0.0.1".parse().unwrap(),
            in_flight: AtomicU32::new(0),
            activity: AtomicU64::new(0),
            shed: Notify::new(),
        };
        let mut w = IdleWatch::new(Duration::from_secs(4));
        assert_eq!(w.period, Duration::from_secs(1));
        assert!(!w.expired(&state));
        assert!(!w.expired(&state));
        state.request_started();
        for _ in 0..10 {
            assert!(!w.expired(&state), "a request in flight is never idle");
        }
        state.request_ended();
        assert!(!w.expired(&state));
        assert!(!w.expired(&state));
        assert!(!w.expired(&state));
        assert!(!w.expired(&state));
        assert!(w.expired(&state));
    }
}
