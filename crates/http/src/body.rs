//! The per-connection service hyper calls for each request: it gives the request its client
//! address and client certificate, puts its body under a deadline, and counts the request as in flight until its
//! response body has been sent (the idle watchdog and shedding look at that count).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use carevault_server::config::HttpLimits;

use crate::serve::ConnState;
use crate::tls::{ClientAddr, ClientCertificate};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that arrived too slowly (see [`BodyRule`]); the handlers answer 408.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body arrived too slowly")
    }
}

impl std::error::Error for BodyTimedOut {}

/// True when `e` (a body read error) or one of its sources is [`BodyTimedOut`].
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// How long a request body may take: `timeout` from the start of the request, plus one second
/// per `min_bytes_per_sec` bytes received (Apache mod_reqtimeout's `body=` rule).
#[derive(Clone, Copy, Debug)]
struct BodyRule {
    timeout: Duration,
    min_bytes_per_sec: u64,
}

impl BodyRule {
    fn deadline(&self, started: Instant, received: u64) -> Instant {
        let earned_ms = received
            .saturating_mul(1000)
            .checked_div(self.min_bytes_per_sec)
            .unwrap_or(0);
        started + self.timeout + Duration::from_millis(earned_ms)
    }
}

/// hyper's service for one connection.
#[derive(Clone)]
pub(crate) struct ConnService {
    router: Router,
    conn: Arc<ConnState>,
    client: ClientAddr,
    cert: ClientCertificate,
    body: BodyRule,
}

impl ConnService {
    pub(crate) fn new(
        router: Router,
        conn: Arc<ConnState>,
        client: ClientAddr,
        cert: ClientCertificate,
        limits: HttpLimits,
    ) -> Self {
        Self {
            router,
            conn,
            client,
            cert,
            body: BodyRule {
                timeout: limits.body_timeout,
                min_bytes_per_sec: limits.body_min_bytes_per_sec,
            },
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Respond;

    fn call(&self, mut req: Request<Incoming>) -> Respond {
        let in_flight = InFlight::start(self.conn.clone());
        req.extensions_mut().insert(ConnectInfo(self.client));
        req.extensions_mut().insert(self.cert.clone());
        crate::trim_trailing_slash(&mut req);
        let rule = self.body;
        // Not drained: a body the client waits for leave to send (`Expect: 100-continue`; reading
        // it would tell hyper to send 100 Continue after all), and one declared larger than the
        // drain would read.
        let drain_unread = !req.headers().contains_key(axum::http::header::EXPECT)
            && req.body().size_hint().lower() <= DRAIN_LIMIT_BYTES as u64;
        let req = req.map(|body| DeadlineBody::new(body, rule, drain_unread));
        let mut router = self.router.clone();
        Respond {
            inner: tower::Service::call(&mut router, req),
            in_flight: Some(in_flight),
        }
    }
}

/// Counts a request in flight on its connection from the moment hyper hands it over until its
/// response body is dropped (sent, or abandoned).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(conn: Arc<ConnState>) -> Self {
        conn.request_started();
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

pin_project! {
    /// The router's response future, handing the in-flight count to the response body.
    pub(crate) struct Respond {
        #[pin]
        inner: RouteFuture<Infallible>,
        in_flight: Option<InFlight>,
    }
}

impl Future for Respond {
    type Output = Result<Response<Tracked>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match ready!(this.inner.poll(cx)) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| Tracked {
            body,
            _in_flight: in_flight,
        })))
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
pub(crate) struct Tracked {
    body: Body,
    _in_flight: Option<InFlight>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A request body under [`BodyRule`]: once its deadline passes, reading it fails with
    /// [`BodyTimedOut`]. A body that is never read costs nothing; an empty one has no timer.
    ///
    /// A body dropped unread (an answer given before the body mattered: 401, 415, 421, 429) is
    /// read to its end in the background, up to [`DRAIN_LIMIT_BYTES`] and within its deadline
    /// (unless the client sent `Expect: 100-continue` or declared a larger body).
    /// Otherwise, once the answer is sent, HTTP/2 resets the stream and HTTP/1.1 closes the
    /// connection, and a client still uploading (curl) reports a stream error or a broken pipe
    /// instead of the answer.
    pub(crate) struct DeadlineBody {
        // `Option` so that the drop can hand it to the drain; `Incoming` is `Unpin`.
        inner: Option<Incoming>,
        #[pin]
        timer: Timer,
        rule: BodyRule,
        started: Instant,
        received: u64,
        // Whether a drop before the end drains the rest; cleared once read to its end.
        drain_unread: bool,
    }

    impl PinnedDrop for DeadlineBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(inner) = this.inner.take() else { return };
            if !*this.drain_unread || inner.is_end_stream() {
                return;
            }
            let deadline = this.rule.deadline(*this.started, *this.received);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(tokio::time::timeout_at(deadline, drain(inner)));
            }
        }
    }
}

/// How much of an unread request body [`DeadlineBody`] reads and discards after an early
/// answer: any ordinary FHIR request fits. A client sending more gets its stream reset, as it
/// would without the drain; its answer has been sent by then.
const DRAIN_LIMIT_BYTES: usize = 1 << 20;

/// Reads `body` to its end or to [`DRAIN_LIMIT_BYTES`], discarding it.
async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, Bytes::len);
        if seen > DRAIN_LIMIT_BYTES {
            return;
        }
    }
}

pin_project! {
    #[project = TimerProj]
    enum Timer {
        Off,
        On { #[pin] sleep: Sleep },
    }
}

impl DeadlineBody {
    fn new(inner: Incoming, rule: BodyRule, drain_unread: bool) -> Self {
        let started = Instant::now();
        let timer = if inner.is_end_stream() {
            Timer::Off
        } else {
            Timer::On {
                sleep: tokio::time::sleep_until(rule.deadline(started, 0)),
            }
        };
        Self {
            inner: Some(inner),
            timer,
            rule,
            started,
            received: 0,
            drain_unread,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let TimerProj::On { mut sleep } = this.timer.as_mut().project() {
            // The timer is set to the deadline as it stood; when it fires, the bytes received
            // since may have moved the deadline on.
            while sleep.as_mut().poll(cx).is_ready() {
                let due = this.rule.deadline(*this.started, *this.received);
                if Instant::now() >= due {
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                sleep.as_mut().reset(due);
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => {
                this.timer.set(Timer::Off);
                // Read to its end: nothing is left to drain.
                *this.drain_unread = false;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_grows_with_the_bytes_received() {
        let rule = BodyRule {
            timeout: Duration::from_secs(20),
            min_bytes_per_sec: 500,
        };
        let t0 = Instant::now();
        assert_eq!(rule.deadline(t0, 0), t0 + Duration::from_secs(20));
        assert_eq!(rule.deadline(t0, 1000), t0 + Duration::from_secs(22));
        assert_eq!(rule.deadline(t0, 250), t0 + Duration::from_millis(20_500));
        let fixed = BodyRule {
            min_bytes_per_sec: 0,
            ..rule
        };
        assert_eq!(fixed.deadline(t0, 1 << 20), t0 + Duration::from_secs(20));
    }

    #[test]
    fn a_timeout_is_found_among_the_sources() {
        let wrapped = axum::Error::new(BodyTimedOut);
        assert!(is_body_timeout(&wrapped));
        assert!(!is_body_timeout(&axum::Error::new(std::io::Error::other(
            "reset"
        ))));
    }
}
