//! One client connection: HTTP/1.1 (parked while idle) or HTTP/2.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB header buffer and
//! keeps both for the connection's life. A fleet of serverless functions holds thousands of
//! keep-alive connections that are idle nearly all the time, so a plain HTTP/1.1 connection
//! is *parked* between requests: once its last response is flushed and its request body read
//! to the end, the hyper connection is taken apart ([`http1::Connection::into_parts`]) and
//! only the socket waits for the next request; a fresh hyper connection (buffers allocated
//! again, a malloc each) serves it. Parked, a connection costs its socket and a small task —
//! about 2.5 KiB instead of 22 KiB.
//!
//! A connection in steady use is not parked between its requests: one whose last idle spell
//! was shorter than [`PARK_AFTER`] (a function instance sending a query every few
//! milliseconds) keeps its hyper connection until it has been idle that long, since taking it
//! apart and building another for every request cost about 8,000 instructions, a sixth of a
//! warm request's work in user space (measured with callgrind, issue 17). Any other
//! connection — a new one, one back after a long pause — is parked as soon as it is idle, so
//! a burst of one-request connections costs no more memory than before.
//!
//! Whether hyper is between requests is judged from outside, by [`Activity`]: every request
//! counts until its response body is dropped (hyper drops it once the last byte is encoded)
//! and, if it has a body, until that body's end is seen; then a flush of the socket proves the
//! response left hyper's buffers. A connection whose request body was dropped unread is not
//! parked until its next request (hyper is still draining the body), and bytes hyper had read
//! but not yet parsed (a pipelined request) are handed to the next hyper connection first.
//!
//! Each request's bytes are first offered to the fast path (`http1_fast`): an ordinary
//! request, whole in the bytes read, is served there without building a hyper connection at
//! all, and the connection goes straight back to waiting (parked at once, or after
//! [`PARK_AFTER`] if it is in steady use, as above). Anything else — and the bytes after it —
//! is served by hyper as described, and the next request is offered to the fast path again.
//!
//! TLS connections are not parked: the TLS session's state lives in the stream. HTTP/2
//! connections multiplex, and are served by hyper's HTTP/2 connection as they are.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::activity::{Activity, ResponseBody, ResponseDone, Watched, WatchedRequestBody};
use super::close::Close;
use super::http1_fast::{self, Served};
use super::poll_loop::PollLoop;
use crate::api::{self, App, Surface};
use crate::deadline::DeadlineTimer;
use crate::metrics::ProtocolLabel;

/// The hyper settings every connection is served with.
pub(super) struct Protocols {
    http1: http1::Builder,
    /// As `http1`, without hyper's header read timeout: the parking path enforces it itself
    /// (see [`serve_http1_parking`]), since hyper's arms and drops a timer for every request.
    http1_parking: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// How long a connection may sit idle between requests (and take to send its headers).
    idle_timeout: Duration,
}

impl Protocols {
    pub(super) fn new(header_read_timeout: Duration) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .keep_alive(true);
        let mut http1_parking = http1.clone();
        http1_parking.header_read_timeout(None);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Protocols {
            http1,
            http1_parking,
            http2,
            idle_timeout: header_read_timeout,
        }
    }
}

/// What a connection needs from the gateway.
#[derive(Clone)]
pub(super) struct Serving {
    pub app: Arc<App>,
    pub protocols: Arc<Protocols>,
    pub surface: Surface,
    /// Given at shutdown: connections finish their current request and close.
    pub close: Close,
}

/// Serves a plain TCP connection: HTTP/2 with prior knowledge if it opens with the HTTP/2
/// preface, HTTP/1.1 (parked while idle) otherwise.
pub(super) async fn serve_plain(stream: TcpStream, peer: SocketAddr, serving: Serving) {
    let Some(h2) = opens_with_h2_preface(
        &stream,
        serving.protocols.idle_timeout,
        serving.close.token(),
    )
    .await
    else {
        return;
    };
    let _open = ConnectionGauge::open(&serving.app, if h2 { "h2" } else { "http1" });
    if h2 {
        // Boxed: HTTP/2's state is large, and every plain connection's task would otherwise
        // be sized for it.
        Box::pin(serve_h2(stream, peer, &serving)).await;
    } else {
        serve_http1_parking(stream, peer, &serving).await;
    }
}

/// Serves a connection whose TLS handshake is done; ALPN chose the protocol.
pub(super) async fn serve_tls<I>(io: I, h2: bool, peer: SocketAddr, serving: Serving)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = ConnectionGauge::open(&serving.app, if h2 { "h2" } else { "http1" });
    if h2 {
        serve_h2(io, peer, &serving).await;
        return;
    }
    let service = service(&serving, peer, None);
    let connection = serving
        .protocols
        .http1
        .serve_connection(TokioIo::new(io), service);
    serve_until_closed(
        std::pin::pin!(connection),
        peer,
        serving.close.token(),
        |c| c.graceful_shutdown(),
    )
    .await;
}

/// Plain HTTP/2 starts with its preface ("PRI * HTTP/2.0"); anything else is HTTP/1. Waits
/// for the first bytes no longer than a client may take to send its headers; `None` when
/// none came, the client left, or the gateway is closing connections: a connection that has
/// sent nothing has no request to finish (HTTP clients open spare connections they may never
/// use), and waiting for it held shutdown up to its deadline.
async fn opens_with_h2_preface(
    stream: &TcpStream,
    timeout: Duration,
    close: &CancellationToken,
) -> Option<bool> {
    let mut first = [0u8; 3];
    tokio::select! {
        // Bytes already there win over a close that happens at the same moment.
        biased;
        peeked = tokio::time::timeout(timeout, stream.peek(&mut first)) => match peeked {
            Ok(Ok(n)) if n > 0 => Some(&first[..n] == b"PRI"),
            _ => None,
        },
        _ = close.cancelled() => None,
    }
}

async fn serve_h2<I>(io: I, peer: SocketAddr, serving: &Serving)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service(serving, peer, None);
    let connection = serving
        .protocols
        .http2
        .serve_connection(TokioIo::new(io), service);
    serve_until_closed(
        std::pin::pin!(connection),
        peer,
        serving.close.token(),
        |c| c.graceful_shutdown(),
    )
    .await;
}

/// Drives a hyper connection to its end. Once the gateway closes connections (shutdown), the
/// connection is asked to finish gracefully — the request in flight completes — and awaited.
async fn serve_until_closed<C>(
    mut connection: Pin<&mut C>,
    peer: SocketAddr,
    close: &CancellationToken,
    graceful_shutdown: fn(Pin<&mut C>),
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let polling = PollLoop::new();
    let result = tokio::select! {
        result = std::future::poll_fn(|cx| polling.poll(cx, |cx| connection.as_mut().poll(cx))) => result,
        _ = close.cancelled() => {
            graceful_shutdown(connection.as_mut());
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Serves HTTP/1.1 on a plain socket, parking it whenever it is idle (see the module doc).
async fn serve_http1_parking(mut stream: TcpStream, peer: SocketAddr, serving: &Serving) {
    let activity = Arc::new(Activity::default());
    // Bytes read but not yet served: a request the fast path declined, or what hyper had read
    // but not parsed when the connection was parked.
    let mut unparsed = BytesMut::new();
    // Every request is first offered to the fast path, the first one included (its bytes are
    // there: the preface check saw them).
    let mut wait_for_bytes = true;
    let mut first_wait = true;
    // When the connection last fell idle; whether its last idle spell was short (it is in
    // steady use, and parking waits); the timer that parks it then, or closes a connection
    // whose request head is late or that stays idle too long (armed once, moved on only when
    // it fires: a request in between costs no timer work).
    let mut idle_since: Option<Instant> = None;
    let mut hot = false;
    // When the next idle spell counts as parked: at once (`None`), or after `PARK_AFTER` for
    // a connection in steady use that the fast path served (hyper applied that delay itself
    // before it was taken apart).
    let mut park_at: Option<Instant> = None;
    let mut timer = DeadlineTimer::default();
    // Registered once for the connection's life (see `closing`).
    let mut closed = std::pin::pin!(serving.close.cancelled());
    let mut close_registered = false;
    // The fast path's handler future, allocated once and reused while the connection is in
    // use; dropped when it parks.
    let mut handler_slot = None;
    let handler = |head, body| api::handle(&serving.app, head, body, peer.ip(), serving.surface);
    loop {
        if wait_for_bytes {
            // The idle timeout counts from when the connection fell idle, not from parking.
            let since = *idle_since.get_or_insert_with(Instant::now);
            let waited = next_request_bytes(
                &mut stream,
                &mut unparsed,
                since,
                park_at,
                &mut timer,
                serving,
                |cx| closing(cx, closed.as_mut(), &mut close_registered, &serving.close),
                || handler_slot = None,
            );
            if !waited.await {
                return; // idle too long, closed by the client, failed, or closing
            }
            // Read from `idle_since`, not a copy: a copy would be kept across the wait above,
            // in every parked connection's task. A new connection's first wait (its first
            // request's bytes, there already) is no idle spell: a one-off request's connection
            // parks as soon as it is answered.
            hot = !std::mem::take(&mut first_wait)
                && idle_since.is_some_and(|since| since.elapsed() < park_after(serving));
        }
        idle_since = None;
        // Boxed (800 B in a release build, from the allocator's per-thread cache, which takes
        // blocks up to 1,032 B; a larger block costs ~450 instructions more per request in
        // glibc): the fast path's state exists only while bytes are served, not in every
        // parked connection's task.
        let fast = Box::pin(http1_fast::serve(
            &mut stream,
            &mut unparsed,
            &mut handler_slot,
            handler,
            &serving.close,
        ));
        match fast.await {
            Served::All => {
                let now = Instant::now();
                idle_since = Some(now);
                park_at = hot.then(|| now + park_after(serving));
                wait_for_bytes = true;
                continue;
            }
            Served::Closed => return,
            Served::Declined => handler_slot = None,
        }
        activity.new_connection();
        let io = Watched {
            stream,
            unparsed: unparsed.split().freeze(),
            activity: activity.clone(),
        };
        let service = service(serving, peer, Some(&activity));
        // Boxed, so a parked connection's task does not keep room for hyper's state.
        let mut connection = Box::new(
            serving
                .protocols
                .http1_parking
                .serve_connection(TokioIo::new(io), service),
        );
        // The header read timeout, hyper's own switched off here: it counts from the start of
        // this hyper connection, and only while its first request head is awaited — later
        // heads arrive on an idle connection, which is parked within `PARK_AFTER` and served
        // by a new hyper connection, so every head wait is bounded. (Usually the head is
        // already there, the bytes that woke the connection, and no timer is touched.)
        let mut head_by: Option<Instant> = None;
        let polling = PollLoop::new();
        let served = std::future::poll_fn(|cx| {
            match polling.poll(cx, |cx| Pin::new(&mut *connection).poll(cx)) {
                Poll::Ready(result) => Poll::Ready(Some(result)),
                Poll::Pending if activity.idle() => {
                    let now = Instant::now();
                    let park_at = *idle_since.get_or_insert(now) + park_after(serving);
                    if !hot || now >= park_at {
                        return Poll::Ready(None);
                    }
                    match timer.poll_expired(park_at, cx) {
                        Poll::Ready(()) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    }
                }
                Poll::Pending if activity.awaiting_first_head() => {
                    idle_since = None;
                    let deadline = *head_by
                        .get_or_insert_with(|| Instant::now() + serving.protocols.idle_timeout);
                    match timer.poll_expired(deadline, cx) {
                        // The head is late: the connection is closed, as hyper's timeout does.
                        Poll::Ready(()) => Poll::Ready(Some(Ok(()))),
                        Poll::Pending => Poll::Pending,
                    }
                }
                Poll::Pending => {
                    idle_since = None;
                    Poll::Pending
                }
            }
        });
        let served = tokio::select! {
            served = served => served,
            _ = serving.close.cancelled() => {
                Pin::new(&mut *connection).graceful_shutdown();
                Some((&mut *connection).await)
            }
        };
        match served {
            Some(Ok(())) => return,
            Some(Err(error)) => {
                tracing::debug!(%peer, %error, "connection ended with an error");
                return;
            }
            None => {
                let parts = (*connection).into_parts();
                let io = parts.io.into_inner();
                stream = io.stream;
                // In a buffer of their own: hyper's read buffer (8 KiB, even when empty) must
                // not outlive the hyper connection.
                unparsed = http1_fast::joined(&parts.read_buf, &io.unparsed);
                // Unparsed bytes are a request begun: serve it now, without waiting.
                wait_for_bytes = unparsed.is_empty();
                // hyper waited out `PARK_AFTER` itself: the connection is parked at once.
                park_at = None;
            }
        }
    }
}

/// How long an HTTP/1 connection sits idle before it is parked (never longer than the idle
/// timeout). Long enough that a connection in steady use is never parked; short enough that a
/// fleet's thousands of idle keep-alive connections shed hyper's buffers within a second.
const PARK_AFTER: Duration = Duration::from_millis(500);

/// [`PARK_AFTER`], never longer than the idle timeout.
fn park_after(serving: &Serving) -> Duration {
    PARK_AFTER.min(serving.protocols.idle_timeout)
}

/// How much of a parked connection's next request is read at once; a typical request (headers
/// and a small JSON body) fits, and the rest is read by whoever serves it.
const FIRST_READ_BYTES: usize = 4096;

/// Waits for the next request and reads its first bytes into `buffer`; `false` when the client
/// left, stayed idle past the idle timeout (counted from `idle_since`), or `closing` says the
/// gateway is closing connections. While it waits, the connection counts as parked — at once,
/// or from `park_at` — and once parked it holds no buffer (`buffer` is emptied, and `park`
/// drops what else the caller keeps for a connection in use); the buffer is allocated again
/// only once bytes are there.
///
/// Everything here is per request for a connection in steady use, so it is kept cheap: the
/// readiness check and the read are one `poll_read_ready` and one `read` into the buffer the
/// last request left (reclaimed, not allocated), the timer is the connection's own (not a
/// `tokio::time::timeout` per wait), and the close signal is the connection's standing
/// registration.
#[allow(clippy::too_many_arguments)]
async fn next_request_bytes(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    idle_since: Instant,
    park_at: Option<Instant>,
    timer: &mut DeadlineTimer,
    serving: &Serving,
    mut closing: impl FnMut(&mut std::task::Context<'_>) -> bool,
    mut park: impl FnMut(),
) -> bool {
    let idle_deadline = idle_since + serving.protocols.idle_timeout;
    let mut parked: Option<ConnectionGauge> = None;
    std::future::poll_fn(|cx| {
        if closing(cx) {
            return Poll::Ready(false);
        }
        // Readiness first, so a parked connection has no buffer until bytes are there. The
        // read is tokio's `poll_read`, which clears readiness after a short read: the next
        // wait starts with no stale readiness, and costs no failed read (a `try_read` would
        // leave it set, one EAGAIN `recvfrom` per request).
        match stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {
                buffer.reserve(FIRST_READ_BYTES);
                match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buffer) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(false),
                    Poll::Ready(Ok(_)) => return Poll::Ready(true),
                    // Readiness was stale; the read registered the wake-up.
                    Poll::Pending => {}
                }
            }
            Poll::Ready(Err(_)) => return Poll::Ready(false),
            Poll::Pending => {}
        }
        if parked.is_none() {
            if let Some(at) = park_at
                && timer.poll_expired(at, cx).is_pending()
            {
                return Poll::Pending;
            }
            parked = Some(ConnectionGauge::parked(&serving.app));
            *buffer = BytesMut::new();
            park();
        }
        timer.poll_expired(idle_deadline, cx).map(|()| false)
    })
    .await
}

/// Whether the gateway is closing connections. The close token's future is polled only until
/// it has registered the connection's task for the wake-up: polled again while it waits, it
/// would take the token's lock (tokio's `Notified` updates its waker under its list's lock,
/// and every connection shares that list), and a task's waker does not change. After that,
/// the flag answers.
fn closing(
    cx: &mut std::task::Context<'_>,
    closed: Pin<&mut WaitForCancellationFuture<'_>>,
    registered: &mut bool,
    close: &Close,
) -> bool {
    if !*registered {
        if closed.poll(cx).is_ready() {
            return true;
        }
        *registered = true;
    }
    close.is_closing()
}

/// The service hyper calls for each request; with `activity`, each request is counted until
/// its request body has ended and its response body has been dropped.
fn service(
    serving: &Serving,
    peer: SocketAddr,
    activity: Option<&Arc<Activity>>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<ResponseBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Send
+ 'static {
    let (app, surface, activity) = (serving.app.clone(), serving.surface, activity.cloned());
    service_fn(move |request: hyper::Request<Incoming>| {
        let app = app.clone();
        // Counted now, as hyper hands the request over, not when the future first runs.
        let watch = activity.as_ref().map(|activity| activity.request_started());
        let (head, body) = request.into_parts();
        let body = WatchedRequestBody::new(body, watch.clone());
        async move {
            let response = api::handle(&app, head.into(), body, peer.ip(), surface).await;
            Ok::<_, Infallible>(response.map(|body| ResponseBody {
                inner: body,
                _done: watch.map(ResponseDone),
            }))
        }
    })
}

/// The open-connections gauge, by protocol, for as long as a connection is served; or the
/// parked-connections gauge, for as long as a connection is parked.
struct ConnectionGauge(prometheus_client::metrics::gauge::Gauge);

impl ConnectionGauge {
    fn open(app: &App, protocol: &'static str) -> ConnectionGauge {
        let gauge = app
            .metrics
            .http_connections
            .get_or_create_owned(&ProtocolLabel { protocol });
        gauge.inc();
        ConnectionGauge(gauge)
    }

    /// Counts a connection parked until this is dropped.
    fn parked(app: &App) -> ConnectionGauge {
        let gauge = app.metrics.http_connections_parked.clone();
        gauge.inc();
        ConnectionGauge(gauge)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
