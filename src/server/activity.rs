//! Whether hyper is between requests on an HTTP/1.1 connection, judged from outside (for
//! parking, see `server::connection`): every request counts until its response body is
//! dropped (hyper drops it once the last byte is encoded) and, if it has a body, until that
//! body's end is seen; then a flush of the socket proves the response left hyper's buffers.
//! A request body dropped unread keeps the connection from parking until its next request
//! (hyper is still draining the body). [`Activity`] keeps the count; [`ResponseBody`],
//! [`WatchedRequestBody`] and the socket wrapper [`Watched`] report to it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Whether hyper is between requests, as seen from the service and the socket.
#[derive(Default)]
pub(super) struct Activity {
    /// Requests whose request body has not ended plus responses not yet dropped.
    busy: AtomicUsize,
    /// Where the connection is between requests: [`SERVING`], [`RESPONDED`], [`FLUSHED`].
    phase: AtomicU8,
    /// A request body was dropped before its end: hyper still owns the rest of it.
    abandoned_body: AtomicBool,
}

/// A request is being served, or none has been since this hyper connection started.
const SERVING: u8 = 0;
/// The last response was dropped by hyper; its bytes may still sit in hyper's buffer.
const RESPONDED: u8 = 1;
/// A socket flush came after the last response: hyper only flushes the socket once its own
/// buffer is written, so the response is out. (hyper also flushes when it has written
/// nothing, which is why a flush counts only after a response.)
const FLUSHED: u8 = 2;

impl Activity {
    /// A fresh hyper connection serves nothing yet; it may be parked only after a response.
    pub(super) fn new_connection(&self) {
        self.phase.store(SERVING, Ordering::Relaxed);
    }

    /// hyper waits for the first request head of this hyper connection (none has arrived
    /// whole yet): the wait the head deadline bounds.
    pub(super) fn awaiting_first_head(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0 && self.phase.load(Ordering::Relaxed) == SERVING
    }

    pub(super) fn request_started(self: &Arc<Self>) -> Arc<Activity> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.phase.store(SERVING, Ordering::Relaxed);
        // hyper parses a request only once the one before it was read to its end.
        self.abandoned_body.store(false, Ordering::Relaxed);
        self.clone()
    }

    fn done(&self) {
        if self.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.phase.store(RESPONDED, Ordering::Relaxed);
        }
    }

    fn flushed(&self) {
        let _ =
            self.phase
                .compare_exchange(RESPONDED, FLUSHED, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
            && self.phase.load(Ordering::Relaxed) == FLUSHED
            && !self.abandoned_body.load(Ordering::Relaxed)
    }
}

/// Counts a request's response until hyper drops it.
pub(super) struct ResponseDone(pub(super) Arc<Activity>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// The response body, with the drop that marks its request done.
pub(super) struct ResponseBody {
    pub(super) inner: crate::api::body::Body,
    pub(super) _done: Option<ResponseDone>,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// hyper's request body, watched for its end.
pub(super) struct WatchedRequestBody {
    inner: Incoming,
    /// Until the end is seen.
    watch: Option<Arc<Activity>>,
}

impl WatchedRequestBody {
    pub(super) fn new(inner: Incoming, watch: Option<Arc<Activity>>) -> WatchedRequestBody {
        let mut body = WatchedRequestBody { inner, watch: None };
        if let Some(activity) = watch
            && !body.inner.is_end_stream()
        {
            activity.busy.fetch_add(1, Ordering::Relaxed);
            body.watch = Some(activity);
        }
        body
    }

    fn ended(&mut self) {
        if let Some(activity) = self.watch.take() {
            activity.done();
        }
    }
}

impl HttpBody for WatchedRequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() || self.inner.is_end_stream() {
            self.ended();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedRequestBody {
    fn drop(&mut self) {
        if let Some(activity) = self.watch.take() {
            activity.abandoned_body.store(true, Ordering::Relaxed);
            activity.done();
        }
    }
}

/// Writes up to this size are gathered into one buffer (see [`Watched::poll_write_vectored`]).
const GATHER_BYTES: usize = 4096;

/// The socket as hyper sees it: bytes left unparsed by the previous hyper connection come
/// first, and a completed flush is reported to [`Activity`].
pub(super) struct Watched {
    pub(super) stream: TcpStream,
    pub(super) unparsed: Bytes,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.unparsed.is_empty() {
            let n = self.unparsed.len().min(buf.remaining());
            buf.put_slice(&self.unparsed[..n]);
            self.unparsed.advance(n);
            if self.unparsed.is_empty() {
                // Free the buffer now, not when the connection is next parked.
                self.unparsed = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper hands a response over as its head and its body. When they are small, they are
        // copied together and sent with send(2): the kernel's writev(2) path costs more than
        // the copy (perf: ~0.3 µs a response). Large bodies keep the vectored write.
        // (Re-entry cannot happen on one thread; if it did, the vectored write stands in.)
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.len() > 1 && total <= GATHER_BYTES {
            thread_local! {
                // Reused, so gathering costs neither an allocation nor zeroing a buffer.
                static GATHERED: std::cell::RefCell<Vec<u8>> =
                    std::cell::RefCell::new(Vec::with_capacity(GATHER_BYTES));
            }
            let stream = &mut self.stream;
            if let Some(written) = GATHERED.with(|gathered| {
                let mut gathered = gathered.try_borrow_mut().ok()?;
                gathered.clear();
                for buf in bufs {
                    gathered.extend_from_slice(buf);
                }
                Some(Pin::new(&mut *stream).poll_write(cx, &gathered))
            }) {
                return written;
            }
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = ready!(Pin::new(&mut self.stream).poll_flush(cx));
        if flushed.is_ok() {
            self.activity.flushed();
        }
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
