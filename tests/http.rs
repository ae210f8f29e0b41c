//! HTTP/1.1 connection handling on the raw socket: keep-alive connections parked between
//! requests come back for the next one, pipelined and split requests, bodies refused or left
//! unread, and the idle and header timeouts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway whose idle/header timeout is `timeout_ms` and body limit 1 KiB.
async fn gateway(timeout_ms: u64) -> (Gateway, String) {
    let db = database("").await;
    let (key, hash) = key("acme");
    let toml = config(&db, &hash, "", "").replace(
        "shutdown_timeout_ms = 10000",
        &format!(
            "shutdown_timeout_ms = 10000\nheader_read_timeout_ms = {timeout_ms}\nmax_body_bytes = 1024"
        ),
    );
    (Gateway::start(&toml).await, key)
}

fn query_request(key: &str, n: i64) -> Vec<u8> {
    let body = format!(r#"{{"sql": "select $1::int8 * 2 as doubled", "params": [{n}]}}"#);
    format!(
        "POST /v1/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One response off a connection: status and body. `pending` keeps bytes read past it (the
/// next pipelined response).
async fn read_response<R: AsyncRead + Unpin>(
    stream: &mut R,
    pending: &mut Vec<u8>,
) -> (u16, String) {
    let (status, _, body) = read_response_with_head(stream, pending).await;
    (status, body)
}

/// [`read_response`], with the response's head (status line and headers) too.
async fn read_response_with_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    pending: &mut Vec<u8>,
) -> (u16, String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let status: u16 = head[9..12].parse().expect("a status code");
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("responses carry a content-length");
            let total = end + 4 + length;
            if pending.len() >= total {
                let body = String::from_utf8_lossy(&pending[end + 4..total]).to_string();
                pending.drain(..total);
                return (status, head, body);
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .expect("the connection stays readable");
        assert!(
            n > 0,
            "connection closed before a whole response: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buf[..n]);
    }
}

fn doubled(body: &str) -> i64 {
    let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
    value["rows"][0]["doubled"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value["rows"][0]["doubled"].as_i64())
        .unwrap_or_else(|| panic!("no result in {body}"))
}

/// Reads until the gateway closes the connection; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

/// Parked connections now, read on a connection of its own (never parked itself).
async fn parked(gateway: &Gateway, admin: &str) -> f64 {
    Scrape::take_cold(gateway.addr, admin)
        .await
        .value("sluice_http_connections_parked", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_serves_requests_after_idle_pauses() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (toml, admin) = with_admin(&config(&db, &hash, "", ""));
    let gateway = Gateway::start(&toml).await;
    wait_until("no connection parked before the test's own", async || {
        parked(&gateway, &admin).await == 0.0
    })
    .await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut pending = Vec::new();
    for n in 1..=5 {
        stream.write_all(&query_request(&key, n)).await.unwrap();
        let (status, body) = read_response(&mut stream, &mut pending).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(doubled(&body), n * 2);
        // Idle between requests: the connection is parked, then served again.
        wait_until("the idle connection parked", async || {
            parked(&gateway, &admin).await == 1.0
        })
        .await;
    }
    // Gone when the client leaves.
    drop(stream);
    wait_until("the closed connection no longer parked", async || {
        parked(&gateway, &admin).await == 0.0
    })
    .await;
    gateway.stop().await;
}

/// Issue 17: a connection in steady use (back-to-back requests) keeps its hyper connection
/// between requests and is parked only once it has been idle for half a second; rebuilding
/// hyper's connection after every request was a sixth of a warm request's CPU. The lower bound
/// is what is checked: load on the machine can only make parking later. Without the delay the
/// connection parks within milliseconds of its response, in every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_steady_use_is_parked_only_after_half_a_second_idle() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (toml, admin) = with_admin(&config(&db, &hash, "", ""));
    let gateway = Gateway::start(&toml).await;
    let mut delays = Vec::new();
    // A stalled test thread can make the last pause long (then that connection is not in
    // steady use and parks at once): a few attempts, one of which must show the delay.
    for _attempt in 0..3 {
        wait_until("no connection parked", async || {
            parked(&gateway, &admin).await == 0.0
        })
        .await;
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        let mut pending = Vec::new();
        for n in 1..=5 {
            stream.write_all(&query_request(&key, n)).await.unwrap();
            let (status, body) = read_response(&mut stream, &mut pending).await;
            assert_eq!(status, 200, "{body}");
        }
        let answered = Instant::now();
        wait_until("the connection parked", async || {
            parked(&gateway, &admin).await == 1.0
        })
        .await;
        delays.push(answered.elapsed());
        if answered.elapsed() >= Duration::from_millis(400) {
            break;
        }
        drop(stream);
    }
    assert!(
        delays.iter().any(|d| *d >= Duration::from_millis(400)),
        "parked too soon after back-to-back requests: {delays:?}"
    );
    gateway.stop().await;
}

/// `query_request` with extra header lines (each ending in CRLF) after the host.
fn query_request_with(key: &str, n: i64, extra: &str) -> Vec<u8> {
    let request = String::from_utf8(query_request(key, n)).unwrap();
    request
        .replacen("host: x\r\n", &format!("host: x\r\n{extra}"), 1)
        .into_bytes()
}

/// Sends `request` and expects `n` doubled back.
async fn exchange(stream: &mut TcpStream, pending: &mut Vec<u8>, request: Vec<u8>, n: i64) {
    stream.write_all(&request).await.unwrap();
    let (status, body) = read_response(stream, pending).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(doubled(&body), n * 2);
}

/// `query_request` with a chunked body (two chunks) instead of a Content-Length.
fn chunked_query_request(key: &str, n: i64) -> Vec<u8> {
    let body = format!(r#"{{"sql": "select $1::int8 * 2 as doubled", "params": [{n}]}}"#);
    let (first, second) = body.split_at(10);
    format!(
        "POST /v1/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    )
    .into_bytes()
}

/// Issue 17: ordinary requests are served by the gateway's own HTTP/1.1 path
/// (server/http1_fast.rs); every other kind is left to hyper, on the same connection, and the
/// connection goes back to the fast path afterwards. Each kind here is one the fast path must
/// decline: a chunked body, `Expect: 100-continue`, a `Connection` header other than
/// keep-alive, HTTP/1.0 — alone and pipelined between ordinary requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_fast_path_leaves_to_hyper_are_answered_on_the_same_connection() {
    let (gateway, key) = gateway(5_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut pending = Vec::new();
    exchange(&mut stream, &mut pending, query_request(&key, 1), 1).await;
    exchange(&mut stream, &mut pending, chunked_query_request(&key, 2), 2).await;
    exchange(&mut stream, &mut pending, query_request(&key, 3), 3).await;
    exchange(
        &mut stream,
        &mut pending,
        query_request_with(&key, 4, "connection: keep-alive, te\r\n"),
        4,
    )
    .await;
    exchange(&mut stream, &mut pending, query_request(&key, 5), 5).await;

    // Pipelined in one write: ordinary, chunked, ordinary, answered in order.
    let batch = [
        query_request(&key, 6),
        chunked_query_request(&key, 7),
        query_request(&key, 8),
    ]
    .concat();
    stream.write_all(&batch).await.unwrap();
    for n in 6..=8 {
        let (status, body) = read_response(&mut stream, &mut pending).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(doubled(&body), n * 2);
    }

    // Expect: 100-continue: the interim response comes before the body is sent.
    let request = query_request_with(&key, 9, "expect: 100-continue\r\n");
    let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    stream.write_all(&request[..head_end]).await.unwrap();
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte))
            .await
            .expect("an interim response within 10 s")
            .unwrap();
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(&request[head_end..]).await.unwrap();
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(doubled(&body), 18);
    exchange(&mut stream, &mut pending, query_request(&key, 10), 10).await;

    // `Connection: close` is answered, then the connection ends.
    exchange(
        &mut stream,
        &mut pending,
        query_request_with(&key, 11, "connection: close\r\n"),
        11,
    )
    .await;
    closed_within(&mut stream, Duration::from_secs(5)).await;

    // HTTP/1.0 (hyper answers it, and closes: no keep-alive asked for).
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let request = String::from_utf8(query_request(&key, 12))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(doubled(&body), 24);
    closed_within(&mut stream, Duration::from_secs(5)).await;
    gateway.stop().await;
}

/// The fast path reads ahead while a request runs (to notice a hang-up), but only up to its
/// bound (64 KiB): a client that pipelines far more than that behind a slow statement still has
/// every request answered, in order — the bytes past the bound wait in the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_pipelined_behind_a_slow_statement_is_answered_in_order() {
    let (gateway, key) = gateway(5_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let body = r#"{"sql": "select pg_sleep(0.3)::text as slept"}"#;
    let slow = format!(
        "POST /v1/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // 1,500 requests, about 300 KiB: well past the read-ahead bound (64 KiB).
    let flood: Vec<u8> = (1..=1_500).flat_map(|n| query_request(&key, n)).collect();
    assert!(flood.len() > 3 * 64 * 1024);
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(slow.as_bytes()).await.unwrap();
        writer.write_all(&flood).await.unwrap();
    };
    let read = async {
        let mut pending = Vec::new();
        let (status, body) = read_response(&mut reader, &mut pending).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"slept\":"), "{body}");
        let mut refused = 0;
        for n in 1..=1_500 {
            let (status, body) = read_response(&mut reader, &mut pending).await;
            // The tenant's rate limit refuses part of the flood; every request still gets
            // its own answer, in order.
            if status == 429 {
                assert!(body.contains("rate_limited"), "{body}");
                refused += 1;
                continue;
            }
            assert_eq!(status, 200, "{body}");
            assert_eq!(doubled(&body), n * 2);
        }
        assert!(refused < 1_500, "none of the flood was served");
    };
    tokio::join!(write, read);
    gateway.stop().await;
}

/// A malformed request after an ordinary one on the same connection is hyper's to refuse
/// (400), and the fast path's response carries what hyper's did: a date, the length, the
/// request id and the keep-alive hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_paths_responses_are_complete_and_malformed_requests_still_get_400() {
    let (gateway, key) = gateway(5_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(&query_request_with(&key, 1, "x-request-id: fast-1\r\n"))
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") || !response.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    for header in [
        "\r\ndate: ",
        "\r\ncontent-length: ",
        "\r\nx-request-id: fast-1\r\n",
        "\r\nkeep-alive: timeout=",
    ] {
        assert!(text.contains(header), "no {header:?} in {text}");
    }
    for malformed in [
        "POST /v1/query HTTP/1.1\r\nhost: x\r\nbad header: y\r\ncontent-length: 2\r\n\r\n{}",
        "POST /v1/query HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
    ] {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream.write_all(&query_request(&key, 2)).await.unwrap();
        let mut pending = Vec::new();
        assert_eq!(read_response(&mut stream, &mut pending).await.0, 200);
        stream.write_all(malformed.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{malformed:?}: {answer}"
        );
    }
    gateway.stop().await;
}

/// A response larger than the fast path sends with its head in one piece (16 KiB) goes out as a
/// head and then its body: every byte arrives, framed by its content-length, and the next
/// pipelined response follows intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_is_whole_and_the_next_one_follows_it() {
    let (gateway, key) = gateway(5_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let body = r#"{"sql": "select repeat('y', 100000) as big"}"#;
    let large = format!(
        "POST /v1/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut pipelined = large.into_bytes();
    pipelined.extend(query_request(&key, 8));
    stream.write_all(&pipelined).await.unwrap();
    let mut pending = Vec::new();
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).expect("the whole JSON body");
    assert_eq!(value["rows"][0]["big"], "y".repeat(100_000));
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(doubled(&body), 16);
    gateway.stop().await;
}

/// The query for `n`, rewritten by `rewrite`, as the fast path serves it (a Content-Length
/// body) and as hyper does (chunked), each named by its path.
fn on_both_paths(
    key: &str,
    n: i64,
    rewrite: impl Fn(&str) -> String,
) -> [(&'static str, Vec<u8>); 2] {
    let text = |request: Vec<u8>| rewrite(&String::from_utf8(request).unwrap()).into_bytes();
    [
        ("fast", text(query_request(key, n))),
        ("hyper", text(chunked_query_request(key, n))),
    ]
}

/// The fast path reads headers where they lie in the request (no header map): names match
/// whatever their case, as hyper's do, and a request the fast path serves reads its headers as
/// the same request through hyper (chunked, so hyper serves it) does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_match_in_any_case_on_both_paths() {
    let (gateway, key) = gateway(5_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut pending = Vec::new();
    let shouted = |request: &str| {
        request
            .replacen("authorization:", "AUTHORIZATION:", 1)
            .replacen("content-type:", "Content-Type:", 1)
            .replacen("content-length:", "CONTENT-LENGTH:", 1)
            .replacen("host: x\r\n", "host: x\r\nX-Request-ID: trace-7\r\n", 1)
    };
    for (path, request) in on_both_paths(&key, 21, shouted) {
        stream.write_all(&request).await.unwrap();
        let (status, head, body) = read_response_with_head(&mut stream, &mut pending).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(doubled(&body), 42, "{path}");
        assert!(
            head.lines()
                .any(|line| line.eq_ignore_ascii_case("x-request-id: trace-7")),
            "{path}: the client's request id is echoed: {head}"
        );
    }
    // Case does not smuggle a second key past the first: a wrong key in lowercase followed by
    // the right one in capitals is the first one, on both paths (hyper reads the first too).
    let wrong_first = |request: &str| {
        request.replacen(
            "authorization:",
            "authorization: Bearer sluice_sk_wrong\r\nAUTHORIZATION:",
            1,
        )
    };
    for (path, request) in on_both_paths(&key, 1, wrong_first) {
        stream.write_all(&request).await.unwrap();
        let (status, body) = read_response(&mut stream, &mut pending).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (gateway, key) = gateway(5_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut pending = Vec::new();
    for round in 0..3 {
        let batch: Vec<u8> = (1..=4)
            .flat_map(|n| query_request(&key, round * 10 + n))
            .collect();
        stream.write_all(&batch).await.unwrap();
        for n in 1..=4 {
            let (status, body) = read_response(&mut stream, &mut pending).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(doubled(&body), (round * 10 + n) * 2);
        }
        // An idle pause between rounds (the scenario).
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_split_across_writes_are_reassembled() {
    let (gateway, key) = gateway(5_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut pending = Vec::new();
    stream.write_all(&query_request(&key, 1)).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).await.0, 200);
    // After an idle pause, a request arrives in pieces: mid-head, then mid-body.
    let request = query_request(&key, 21);
    let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    for piece in [
        &request[..10],
        &request[10..head_end],
        &request[head_end..head_end + 10],
        &request[head_end + 10..],
    ] {
        // The client pauses between pieces (the scenario).
        tokio::time::sleep(Duration::from_millis(80)).await;
        stream.write_all(piece).await.unwrap();
    }
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(doubled(&body), 42);
    // A complete request followed by the start of the next in one write.
    let (first, second) = (query_request(&key, 3), query_request(&key, 4));
    let mut joined = first.clone();
    joined.extend_from_slice(&second[..15]);
    stream.write_all(&joined).await.unwrap();
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!((status, doubled(&body)), (200, 6));
    // The rest of the next request comes after a pause (the scenario).
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&second[15..]).await.unwrap();
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!((status, doubled(&body)), (200, 8));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_unread_bodies_leave_the_connection_usable() {
    let (gateway, key) = gateway(5_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut pending = Vec::new();
    // Over the 1 KiB limit: refused, the body drained.
    let big = format!(
        r#"{{"sql": "select 1", "params": ["{}"]}}"#,
        "x".repeat(2000)
    );
    let request = format!(
        "POST /v1/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\n\r\n{big}",
        big.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!(status, 413, "{body}");
    stream.write_all(&query_request(&key, 5)).await.unwrap();
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!((status, doubled(&body)), (200, 10));
    // A wrong key: refused before the body is read, so the body is left to hyper.
    let body = r#"{"sql": "select 1"}"#;
    let request = format!(
        "POST /v1/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut stream, &mut pending).await;
    assert_eq!(status, 401);
    for n in 6..=8 {
        // An idle pause between requests (the scenario).
        tokio::time::sleep(Duration::from_millis(30)).await;
        stream.write_all(&query_request(&key, n)).await.unwrap();
        let (status, body) = read_response(&mut stream, &mut pending).await;
        assert_eq!((status, doubled(&body)), (200, n * 2));
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_the_idle_timeout() {
    let (gateway, key) = gateway(400).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut pending = Vec::new();
    stream.write_all(&query_request(&key, 1)).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).await.0, 200);
    let waited = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(300),
        "closed after {waited:?}"
    );

    // A client that starts a request and stalls is closed at the header timeout, however
    // the head's bytes are spread out.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(&query_request(&key, 2)).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).await.0, 200);
    let started = Instant::now();
    for piece in [
        &b"POST /v1/query HTTP/1.1\r\n"[..],
        b"host: x\r\n",
        b"x-a: 1\r\n",
    ] {
        if stream.write_all(piece).await.is_err() {
            break;
        }
        // A client that stalls mid-head (the scenario).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    closed_within(&mut stream, Duration::from_secs(5)).await;
    let lived = started.elapsed();
    assert!(
        lived < Duration::from_millis(2_000),
        "a stalled head kept the connection for {lived:?}"
    );

    // Connections that never sent anything close at the timeout too.
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(5)).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_at_shutdown() {
    let (gateway, key) = gateway(30_000).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut pending = Vec::new();
    stream.write_all(&query_request(&key, 1)).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).await.0, 200);
    let stopping = tokio::spawn(gateway.stop());
    let waited = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    stopping.await.unwrap();
}
