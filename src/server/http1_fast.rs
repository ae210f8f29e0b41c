//! The plain HTTP/1.1 requests a serverless client sends nearly always — a `POST` (or `GET`)
//! whose head and `Content-Length` body are already whole in the bytes read, no
//! `Transfer-Encoding`, `Expect`, `Upgrade` or `Connection` other than `keep-alive` — served
//! without hyper: the head parsed with `httparse` (hyper's own parser), the request handed to
//! the same `api::handle` as every other request, and the response written in one send.
//!
//! hyper builds a connection state machine, a body channel (which wakes the connection's own
//! task mid-request) and a buffer of its own per request, about a quarter of a warm request's
//! instructions in user space (issue 17). Everything here is the narrow case: a request that
//! is anything else — incomplete, chunked, expecting `100-continue`, HTTP/1.0, `HEAD`,
//! `OPTIONS`, an absolute URI, more than [`MAX_HEADERS`] headers, a header hyper would refuse —
//! is left untouched in the buffer, and `server::connection` hands the connection to hyper,
//! which answers it (and refuses what must be refused) as before. So hyper stays the only
//! judge of unusual or hostile requests; this file only recognises ordinary ones.
//!
//! While the handler runs, the socket is watched: a client that hangs up cancels its request
//! (its statement is cancelled with it), as hyper's read-ahead does. Bytes of a pipelined
//! next request are kept for after the response.

use std::cell::RefCell;
use std::io::Write as _;
use std::pin::Pin;
use std::task::Poll;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::close::Close;
use crate::api::body::Body;
use crate::api::head::{MAX_RAW_HEADERS, RawHeaders, RequestHead};

/// More headers than this and the request goes to hyper (which allows 100).
const MAX_HEADERS: usize = MAX_RAW_HEADERS;

/// Pipelined bytes kept while a request is handled; past this the socket is not read (and a
/// hang-up is noticed only when the response is written), as hyper stops at its buffer limit.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// Responses up to this size (head and body) are sent as one buffer, in one send.
const GATHER_BYTES: usize = 16 * 1024;

/// What became of the bytes handed to [`serve`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// Every request in the buffer was answered; the buffer is empty.
    All,
    /// The buffer holds bytes this file does not serve (or only part of a request): hyper's.
    Declined,
    /// The connection is over: the client left, a write failed, or the response closes it.
    Closed,
}

/// Serves the requests at the front of `buffer` while each is simple and whole. Each request's
/// handler future is built by `handler` in `slot`: the connection's one allocation for it,
/// reused from request to request (a handler's future is a few KiB, and a fresh allocation
/// of that size takes glibc's slow path every time); the caller drops the slot when the
/// connection parks.
pub(super) async fn serve<F, H>(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    slot: &mut Option<Pin<Box<F>>>,
    handler: H,
    close: &Close,
) -> Served
where
    F: Future<Output = Response<Body>>,
    H: Fn(RequestHead, OneFrame) -> F,
{
    loop {
        if buffer.is_empty() {
            return Served::All;
        }
        // A client pipelining requests that are answered without waiting (refused keys, say)
        // still yields to other connections between them.
        tokio::task::consume_budget().await;
        let Some((head, body)) = take_request(buffer) else {
            return Served::Declined;
        };
        let handled = match slot {
            Some(future) => {
                future.set(handler(head, body));
                future.as_mut()
            }
            None => slot.insert(Box::pin(handler(head, body))).as_mut(),
        };
        let Some(response) = while_connected(stream, buffer, handled).await else {
            return Served::Closed;
        };
        let close = close.is_closing() || closes(&response);
        if write_response(stream, buffer, response, close)
            .await
            .is_err()
        {
            return Served::Closed;
        }
        if close {
            // The response is followed by a FIN, as hyper ends a connection it closes.
            let _ = stream.shutdown().await;
            return Served::Closed;
        }
    }
}

/// The simple, whole request at the front of `buffer`, taken out of it; `None` leaves the
/// buffer as it was. Not async: the parse's layout (a kilobyte of header offsets) stays on the
/// stack, out of the connection's future, which then fits the allocator's per-thread cache.
fn take_request(buffer: &mut BytesMut) -> Option<(RequestHead, OneFrame)> {
    let parsed = parse(buffer)?;
    // The request's bytes leave the buffer (shared, not copied): the head's header values and
    // the body point into them.
    let bytes = buffer.split_to(parsed.len).freeze();
    let request = parsed.build(&bytes);
    if request.is_none() {
        // A target `http` refuses (hyper answers it): the bytes go back in front.
        *buffer = joined(&bytes, buffer);
    }
    request
}

/// `first` then `second`, in a buffer of their own.
pub(super) fn joined(first: &[u8], second: &[u8]) -> BytesMut {
    let mut joined = BytesMut::with_capacity(first.len() + second.len());
    joined.extend_from_slice(first);
    joined.extend_from_slice(second);
    joined
}

/// A simple request's layout in the buffer.
#[derive(Debug)]
struct Parsed {
    method: Method,
    path: (usize, usize),
    /// Each header's name and value, as (name at, name length, value at, value length): all
    /// within the head, which is at most `u16::MAX` bytes.
    headers: [[u16; 4]; MAX_HEADERS],
    header_count: usize,
    body: (usize, usize),
    /// Head and body.
    len: usize,
}

/// The request at the front of `buf`, if it is whole and simple (see the module doc).
fn parse(buf: &[u8]) -> Option<Parsed> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut slots);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    // Offsets into the head are kept as u16 (a longer head, which no ordinary client sends,
    // is hyper's).
    if head_len > usize::from(u16::MAX) || head.version != Some(1) {
        return None;
    }
    let method = match head.method? {
        "POST" => Method::POST,
        "GET" => Method::GET,
        _ => return None,
    };
    let path = head.path?;
    if !path.starts_with('/') {
        return None;
    }
    let offset = |part: &[u8]| part.as_ptr() as usize - buf.as_ptr() as usize;
    // Within the head (checked above), so each fits.
    let short = |n: usize| n as u16;
    let mut content_length: Option<usize> = None;
    let mut headers = [[0u16; 4]; MAX_HEADERS];
    for (header, slot) in head.headers.iter().zip(headers.iter_mut()) {
        let name = header.name.as_bytes();
        let is = |expected: &[u8]| name.eq_ignore_ascii_case(expected);
        // By length first: most headers are none of these, and are passed over in one compare.
        match name.len() {
            14 if is(b"content-length") => {
                if content_length.is_some() {
                    return None;
                }
                content_length = Some(digits(header.value)?);
            }
            17 if is(b"transfer-encoding") => return None,
            6 if is(b"expect") => return None,
            7 if is(b"upgrade") => return None,
            14 if is(b"http2-settings") => return None,
            10 if is(b"connection")
                && !header
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"keep-alive") =>
            {
                return None;
            }
            _ => {}
        }
        let value = header.value;
        *slot = [
            short(offset(name)),
            short(name.len()),
            short(offset(value)),
            short(value.len()),
        ];
    }
    let body_len = content_length.unwrap_or(0);
    let len = head_len.checked_add(body_len)?;
    if len > buf.len() {
        return None;
    }
    Some(Parsed {
        method,
        path: (offset(path.as_bytes()), path.len()),
        header_count: head.headers.len(),
        headers,
        body: (head_len, body_len),
        len,
    })
}

/// A `Content-Length` value: decimal digits only (no sign, no space, no list), as hyper
/// requires; anything else is declined and hyper refuses it.
fn digits(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')),
    )
}

impl Parsed {
    /// The request, its parts pointing into `bytes` (what [`parse`] read); `None` if `http`
    /// refuses the target (hyper then answers the request). Headers are not rebuilt as a
    /// `HeaderMap`: the API reads them where they lie ([`RawHeaders`]). `httparse` has already
    /// held their names and values to the rules `http`'s types check (tokens; visible ASCII,
    /// tab or obs-text), which the fuzz target `http1_head` checks.
    fn build(self, bytes: &Bytes) -> Option<(RequestHead, OneFrame)> {
        let slice = |(at, len): (usize, usize)| bytes.slice(at..at + len);
        let body = Some(slice(self.body)).filter(|b| !b.is_empty());
        let head = RequestHead {
            method: self.method,
            uri: Uri::from_maybe_shared(slice(self.path)).ok()?,
            version: Version::HTTP_11,
            headers: RawHeaders::new(bytes.clone(), &self.headers[..self.header_count])?.into(),
        };
        Some((head, OneFrame(body)))
    }
}

/// A request body already read: one frame, or none.
pub(super) struct OneFrame(Option<Bytes>);

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Runs `future` while the client is connected: `None` if it hangs up first (the future is
/// dropped, which cancels the request). Bytes that arrive meanwhile (a pipelined request) are
/// appended to `buffer`.
async fn while_connected<F: Future + ?Sized>(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    mut future: Pin<&mut F>,
) -> Option<F::Output> {
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        while watching {
            if buffer.len() >= MAX_READ_AHEAD {
                watching = false;
                break;
            }
            // Readiness first: no buffer is reserved while nothing arrives (nearly always).
            match stream.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {}
            }
            buffer.reserve(4096);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buffer) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Whether the response asks for the connection to be closed after it.
fn closes(response: &Response<Body>) -> bool {
    response
        .headers()
        .get_all(CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// Writes `response`: a body of known length with `content-length` (with its head, in one
/// send, when small), any other as chunks. While a streamed body waits for its next chunk, a
/// hang-up ends it.
async fn write_response(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    response: Response<Body>,
    close: bool,
) -> std::io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let no_body = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if no_body {
        return send(stream, |out| {
            head(out, &parts, close);
            out.extend_from_slice(b"\r\n");
        })
        .await;
    }
    let length = body.size_hint().exact();
    // A complete body is one piece, and ready (nearly every response): small, it goes out
    // with the head.
    let first = match length {
        Some(_) => next_data(&mut body).await,
        None => None,
    };
    if let Some(length) = length
        && body.is_end_stream()
        && first.as_ref().is_none_or(|b| b.len() <= GATHER_BYTES)
    {
        return send(stream, |out| {
            head_with_length(out, &parts, close, length);
            if let Some(first) = &first {
                out.extend_from_slice(first);
            }
        })
        .await;
    }
    // Boxed: the state of a long or streamed body stays out of the future every request's
    // connection allocates.
    Box::pin(write_long(
        stream, buffer, parts, body, length, first, close,
    ))
    .await
}

/// The head with `content-length`, up to the body.
fn head_with_length(out: &mut Vec<u8>, parts: &http::response::Parts, close: bool, length: u64) {
    head(out, parts, close);
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// The rest of [`write_response`]: a body of known length in several pieces or a large one
/// (`first` is its first piece), or a body of unknown length, sent as chunks.
async fn write_long(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    parts: http::response::Parts,
    mut body: Body,
    length: Option<u64>,
    first: Option<Bytes>,
    close: bool,
) -> std::io::Result<()> {
    if let Some(length) = length {
        send(stream, |out| head_with_length(out, &parts, close, length)).await?;
        let mut next = first;
        while let Some(data) = next {
            stream.write_all(&data).await?;
            next = next_data(&mut body).await;
        }
        return Ok(());
    }
    send(stream, |out| {
        head(out, &parts, close);
        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    })
    .await?;
    loop {
        let next = while_connected(stream, buffer, std::pin::pin!(next_data(&mut body))).await;
        let Some(next) = next else {
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        };
        let Some(data) = next else { break };
        if data.len() <= GATHER_BYTES {
            send(stream, |out| {
                let _ = write!(out, "{:x}\r\n", data.len());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            })
            .await?;
        } else {
            // A large chunk (NDJSON sends ~32 KiB) is not copied: its framing goes around it
            // in one vectored write.
            let size = format!("{:x}\r\n", data.len());
            write_all_vectored(stream, &[size.as_bytes(), &data, b"\r\n"]).await?;
        }
    }
    stream.write_all(b"0\r\n\r\n").await
}

/// Writes every byte of `parts`, in as few vectored writes as the socket allows.
async fn write_all_vectored(stream: &mut TcpStream, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = parts
        .iter()
        .map(|part| std::io::IoSlice::new(part))
        .collect();
    let mut slices = &mut slices[..];
    std::io::IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = stream.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Sends what `fill` writes, assembled in a buffer the thread reuses: one `send` and no
/// allocation when the socket takes it all at once (a response nearly always fits in the
/// socket's buffer); what it does not take is copied out and written as the socket drains.
async fn send(stream: &mut TcpStream, fill: impl FnOnce(&mut Vec<u8>)) -> std::io::Result<()> {
    thread_local! {
        static OUT: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(GATHER_BYTES + 1024));
    }
    let rest = OUT.with(|out| {
        let mut owned = Vec::new();
        // Never borrowed twice on one thread (nothing here awaits), but an owned buffer
        // stands in if it were.
        let mut borrowed = out.try_borrow_mut();
        let out = match &mut borrowed {
            Ok(out) => &mut **out,
            Err(_) => &mut owned,
        };
        out.clear();
        fill(out);
        let rest = match stream.try_write(out) {
            Ok(n) => Ok(out[n..].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(out.to_vec()),
            Err(e) => Err(e),
        };
        // A buffer grown by a rare large head is not kept.
        if out.capacity() > 4 * (GATHER_BYTES + 1024) {
            *out = Vec::with_capacity(GATHER_BYTES + 1024);
        }
        rest
    })?;
    if rest.is_empty() {
        return Ok(());
    }
    stream.write_all(&rest).await
}

/// The body's next non-empty data, `None` at its end.
async fn next_data(body: &mut Body) -> Option<Bytes> {
    loop {
        let frame =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await?;
        if let Ok(Ok(data)) = frame.map(http_body::Frame::into_data)
            && !data.is_empty()
        {
            return Some(data);
        }
    }
}

/// The status line, the response's headers and `date` (as hyper writes them), and
/// `connection: close` when the connection ends after this response.
fn head(out: &mut Vec<u8>, parts: &http::response::Parts, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // The framing is this file's to write, as it is hyper's.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close && !parts.headers.contains_key(CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    date(out);
    out.extend_from_slice(b"\r\n");
}

/// Appends the HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (cached_second, mut text) = CACHED.get();
    if cached_second != second || text[0] == 0 {
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == text.len() {
            text.copy_from_slice(formatted.as_bytes());
            CACHED.set((second, text));
        } else {
            out.extend_from_slice(formatted.as_bytes());
            return;
        }
    }
    out.extend_from_slice(&text);
}

/// The fuzz target `http1_head` (`sluice::fuzzing`): any bytes through [`parse`] and
/// [`Parsed::build`], checking that what is taken as simple is what the module doc promises —
/// a whole request within the bytes, POST or GET over HTTP/1.1, framed by one Content-Length
/// (or none) that matches the body handed on, and none of the headers left to hyper — and that
/// every header passed on is one `http` (hyper's types) would accept too.
pub(crate) fn fuzz_check(data: &[u8]) {
    let Some(parsed) = parse(data) else {
        return;
    };
    assert!(
        parsed.len <= data.len(),
        "the request lies within the bytes"
    );
    let (body_at, body_len) = parsed.body;
    assert_eq!(body_at + body_len, parsed.len, "the body ends the request");
    assert!(parsed.header_count <= MAX_HEADERS);
    for &[name, name_len, value, value_len] in &parsed.headers[..parsed.header_count] {
        let part = |at: u16, len: u16| {
            let (at, len) = (usize::from(at), usize::from(len));
            assert!(at + len <= body_at, "headers lie in the head");
            &data[at..at + len]
        };
        assert!(
            http::HeaderName::from_bytes(part(name, name_len)).is_ok(),
            "a header name http refuses was taken"
        );
        assert!(
            http::HeaderValue::from_bytes(part(value, value_len)).is_ok(),
            "a header value http refuses was taken"
        );
    }
    let bytes = Bytes::copy_from_slice(&data[..parsed.len]);
    let method = parsed.method.clone();
    let Some((head, body)) = parsed.build(&bytes) else {
        return;
    };
    assert!(method == Method::POST || method == Method::GET);
    assert_eq!(head.method, method);
    assert_eq!(head.version, Version::HTTP_11);
    assert!(head.uri.path().starts_with('/'), "origin-form targets only");
    let headers = &head.headers;
    for refused in [
        http::header::TRANSFER_ENCODING,
        http::header::EXPECT,
        http::header::UPGRADE,
    ] {
        assert!(!headers.contains(&refused), "{refused} is hyper's to judge");
    }
    for connection in headers.get_all(&CONNECTION) {
        assert!(
            connection.trim_ascii().eq_ignore_ascii_case(b"keep-alive"),
            "only keep-alive connections are served here"
        );
    }
    let lengths: Vec<_> = headers.get_all(&CONTENT_LENGTH).collect();
    assert!(lengths.len() <= 1, "one Content-Length at most");
    let body = body.0.as_ref().map_or(0, Bytes::len);
    assert_eq!(body, body_len, "the body handed on is the framed one");
    if let Some(length) = lengths.first() {
        assert_eq!(
            std::str::from_utf8(length)
                .ok()
                .and_then(|l| l.parse::<usize>().ok()),
            Some(body_len),
            "the Content-Length is the body's length"
        );
    } else {
        assert_eq!(body_len, 0, "no Content-Length, no body");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(request: &str) -> Option<Parsed> {
        parse(request.as_bytes())
    }

    #[test]
    fn an_ordinary_post_with_its_body_is_simple() {
        let request = "POST /v1/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n\
                       content-type: application/json\r\ncontent-length: 13\r\n\r\n{\"sql\":\"x\"}\r\n";
        let parsed = simple(request).expect("simple");
        assert_eq!(parsed.method, Method::POST);
        assert_eq!(parsed.len, request.len());
        let bytes = Bytes::from(request);
        let (head, body) = parsed.build(&bytes).expect("valid");
        assert_eq!(head.uri.path(), "/v1/query");
        let headers = &head.headers;
        assert_eq!(
            headers.get(&http::header::AUTHORIZATION),
            Some(&b"Bearer k"[..])
        );
        assert_eq!(headers.get(&http::header::HOST), Some(&b"x"[..]));
        assert_eq!(headers.get_str(&http::header::CONTENT_LENGTH), Some("13"));
        assert_eq!(
            headers.get_str(&http::header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(body.0.as_deref(), Some(&b"{\"sql\":\"x\"}\r\n"[..]));
    }

    #[test]
    fn a_get_without_a_body_and_a_pipelined_tail_are_handled() {
        let request = "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: Keep-Alive\r\n\r\n";
        let pipelined = format!("{request}POST /v1/query HTTP/1.1\r\n");
        let parsed = simple(&pipelined).expect("simple");
        assert_eq!(parsed.len, request.len());
        assert_eq!(parsed.body.1, 0);
    }

    #[test]
    fn anything_unusual_is_left_to_hyper() {
        let declined = [
            // incomplete head, incomplete body
            "POST /v1/query HTTP/1.1\r\nhost: x\r\n",
            "POST /v1/query HTTP/1.1\r\ncontent-length: 10\r\n\r\n{}",
            // other versions, methods, targets
            "POST /v1/query HTTP/1.0\r\ncontent-length: 0\r\n\r\n",
            "HEAD /healthz HTTP/1.1\r\n\r\n",
            "OPTIONS /v1/query HTTP/1.1\r\n\r\n",
            "PUT /v1/query HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            "GET http://x/healthz HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            // framing hyper must judge
            "POST /q HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /q HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n{}",
            "POST /q HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{}",
            "POST /q HTTP/1.1\r\ncontent-length: +2\r\n\r\n{}",
            "POST /q HTTP/1.1\r\ncontent-length: 2, 2\r\n\r\n{}",
            "POST /q HTTP/1.1\r\ncontent-length: \r\n\r\n",
            "POST /q HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "POST /q HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n{}",
            "GET /q HTTP/1.1\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
            "GET /q HTTP/1.1\r\nconnection: close\r\n\r\n",
            // malformed: hyper answers 400
            "POST /q HTTP/1.1\r\nbad header: x\r\n\r\n",
            "POST /q HTTP/1.1\r\nx: a\r\n b\r\n\r\n",
            "POST /q\x01 HTTP/1.1\r\n\r\n",
            "GET /q HTTP/1.1\r\nx: \x7f\r\n\r\n",
        ];
        for request in declined {
            assert!(simple(request).is_none(), "{request:?} was taken as simple");
        }
        let many_headers: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert!(simple(&format!("GET /q HTTP/1.1\r\n{many_headers}\r\n")).is_none());
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut out = Vec::new();
        date(&mut out);
        date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), 58);
        assert!(httpdate::parse_http_date(&text[..29]).is_ok(), "{text}");
        assert!(text.ends_with(" GMT"));
    }
}
