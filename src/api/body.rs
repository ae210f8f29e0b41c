//! The response body: a complete buffer, or a stream of chunks fed by the task that reads rows
//! from Postgres (NDJSON). A bounded channel gives backpressure end to end: when the client
//! reads slowly, the sender waits, so the query pauses instead of piling rows up in memory.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

use super::memory::MemoryLease;

pub enum Body {
    Full(Option<Bytes>),
    /// A first chunk ready now, the rest as the sender produces it.
    Stream {
        head: Option<Bytes>,
        rest: mpsc::Receiver<Bytes>,
    },
    /// A body whose bytes are held against the gateway's memory budget until hyper drops it
    /// (after sending it, or when the client went away).
    Leased {
        inner: Box<Body>,
        _lease: MemoryLease,
    },
    /// [`Body::Leased`] for a complete buffer, the common case, without the box.
    LeasedFull {
        bytes: Option<Bytes>,
        _lease: MemoryLease,
    },
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    /// Bytes buffered in this body, not yet sent (0 for a stream: its channel bounds it).
    pub fn buffered_len(&self) -> usize {
        match self {
            Body::Full(bytes) => bytes.as_ref().map_or(0, Bytes::len),
            Body::Stream { .. } => 0,
            Body::Leased { inner, .. } => inner.buffered_len(),
            Body::LeasedFull { bytes, .. } => bytes.as_ref().map_or(0, Bytes::len),
        }
    }

    /// This body, holding `lease` (resized to the bytes it buffers) until it is dropped.
    pub fn leased(self, mut lease: MemoryLease) -> Body {
        lease.charge_exactly(self.buffered_len());
        match self {
            Body::Full(bytes) => Body::LeasedFull {
                bytes,
                _lease: lease,
            },
            body => Body::Leased {
                inner: Box::new(body),
                _lease: lease,
            },
        }
    }

    /// A response with a JSON body.
    pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
        let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Body::json_bytes(status, bytes)
    }

    /// A response whose JSON body is already encoded.
    pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
        let mut response = Response::new(Body::Full(Some(Bytes::from(bytes))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) | Body::LeasedFull { bytes, .. } => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))))
            }
            Body::Stream { head, rest } => match head.take() {
                Some(head) => Poll::Ready(Some(Ok(Frame::data(head)))),
                None => rest
                    .poll_recv(cx)
                    .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
            },
            Body::Leased { inner, .. } => Pin::new(inner.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Leased { inner, .. } => inner.is_end_stream(),
            body => matches!(
                body,
                Body::Full(None) | Body::LeasedFull { bytes: None, .. }
            ),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(bytes))
            | Body::LeasedFull {
                bytes: Some(bytes), ..
            } => SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) | Body::LeasedFull { bytes: None, .. } => SizeHint::with_exact(0),
            Body::Stream { .. } => SizeHint::default(),
            Body::Leased { inner, .. } => inner.size_hint(),
        }
    }
}
