//! NDJSON streaming: a million rows with the gateway's memory flat, a reader that pauses (the
//! query pauses with it), a reader that disconnects half way (the statement is cancelled), and
//! an error after some rows (the last line says so).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// An NDJSON response read frame by frame, never whole.
struct Stream {
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl Stream {
    async fn open(gateway: &Gateway, key: &str, path: &str, body: Value) -> (u16, Stream) {
        let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = http::Request::post(format!("{}{path}", gateway.url()))
            .header("authorization", format!("Bearer {key}"))
            .header("accept", "application/x-ndjson")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        if status == 200 {
            assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        }
        (
            status,
            Stream {
                body: response.into_body(),
                pending: Vec::new(),
            },
        )
    }

    /// The next complete line, or `None` at the end.
    async fn line(&mut self) -> Option<Value> {
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return Some(
                    serde_json::from_slice(&line[..line.len() - 1]).expect("each line is JSON"),
                );
            }
            let frame = self.body.frame().await?.expect("body frame");
            if let Ok(data) = frame.into_data() {
                self.pending.extend_from_slice(&data);
            }
        }
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

async fn active(db: &str, marker: &str) -> Vec<(String, Option<String>)> {
    direct(db)
        .await
        .query(
            "select state, wait_event from pg_stat_activity where query like $1 and pid <> pg_backend_pid() and state = 'active'",
            &[&format!("%{marker}%")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_stream_with_memory_flat() {
    let (gateway, key, _) = gateway_for("", "statement_timeout_ms = 120000").await;
    let sql =
        "select i, repeat('x', 100) as pad, i * 2 as twice from generate_series(1, 1000000) i";
    let (status, mut stream) = Stream::open(
        &gateway,
        &key,
        "/v1/query",
        json!({ "sql": sql, "rowMode": "array" }),
    )
    .await;
    assert_eq!(status, 200);
    let head = stream.line().await.unwrap();
    assert_eq!(head["fields"][1]["name"], "pad");
    let baseline = resident_bytes();
    let mut peak = baseline;
    let mut rows = 0u64;
    let mut last = None;
    while let Some(line) = stream.line().await {
        if line.is_array() {
            rows += 1;
            if rows.is_multiple_of(50_000) {
                peak = peak.max(resident_bytes());
            }
        } else {
            last = Some(line);
        }
    }
    assert_eq!(rows, 1_000_000);
    assert_eq!(
        last.unwrap(),
        json!({"command": "SELECT", "rowCount": 1000000})
    );
    // About 130 MB went through; the process (gateway and client) stayed within a few MB.
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 32 * 1024 * 1024,
        "memory grew by {growth} bytes while streaming"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pauses_pauses_the_query() {
    let (gateway, key, db) = gateway_for("", "statement_timeout_ms = 120000").await;
    let sql = "select i, repeat('y', 200) as pad from generate_series(1, 2000000) i /* paused */";
    let (_, mut stream) = Stream::open(&gateway, &key, "/v1/query", json!({ "sql": sql })).await;
    assert!(stream.line().await.unwrap().get("fields").is_some());
    for _ in 0..1000 {
        stream.line().await.unwrap();
    }
    let before = resident_bytes();
    // Not reading: Postgres ends up blocked writing to the gateway.
    wait_until("Postgres waits on the gateway (ClientWrite)", async || {
        active(&db, "/* paused */")
            .await
            .iter()
            .any(|(_, wait)| wait.as_deref() == Some("ClientWrite"))
    })
    .await;
    // The reader stays paused a while longer (the scenario): memory must not grow meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused = resident_bytes();
    assert!(
        paused.saturating_sub(before) < 8 * 1024 * 1024,
        "memory grew while the reader paused"
    );
    // Reading again finishes the result.
    let mut rows = 1000;
    while let Some(line) = stream.line().await {
        if line.get("pad").is_some() {
            rows += 1;
        }
    }
    assert_eq!(rows, 2_000_000);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_disconnects_half_way_cancels_the_statement() {
    let (gateway, key, db) = gateway_for("", "pool_size = 1\nstatement_timeout_ms = 120000").await;
    let sql =
        "select i, pg_sleep(0.0001) from generate_series(1, 5000000) i /* abandoned stream */";
    let (_, mut stream) = Stream::open(&gateway, &key, "/v1/query", json!({ "sql": sql })).await;
    for _ in 0..500 {
        stream.line().await.unwrap();
    }
    assert_eq!(active(&db, "/* abandoned stream */").await.len(), 1);
    drop(stream);
    let gone = Instant::now();
    wait_not_running(&db, "/* abandoned stream */").await;
    assert!(
        gone.elapsed() < Duration::from_secs(3),
        "the statement ran on for {:?}",
        gone.elapsed()
    );
    // The connection came back clean: the pool of one serves the next request.
    let reply = gateway
        .client
        .query(&key, "select 'after' as a", json!([]))
        .await;
    assert_eq!(reply.rows(), vec![json!({"a": "after"})]);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_some_rows_is_the_last_line() {
    let (gateway, key, _) = gateway_for("", "statement_timeout_ms = 120000").await;
    let sql = "select i, 1 / (500000 - i) as boom from generate_series(1, 1000000) i";
    let (status, mut stream) = Stream::open(
        &gateway,
        &key,
        "/v1/query",
        json!({ "sql": sql, "rowMode": "array" }),
    )
    .await;
    assert_eq!(status, 200);
    stream.line().await.unwrap();
    let mut rows = 0;
    let mut last = Value::Null;
    while let Some(line) = stream.line().await {
        if line.is_array() {
            rows += 1;
        } else {
            last = line;
        }
    }
    assert_eq!(rows, 499_999);
    assert_eq!(last["error"]["kind"], "database");
    assert_eq!(last["error"]["code"], "22012");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_before_the_first_row_keep_their_status_and_transactions_stream_too() {
    let (gateway, key, _) = gateway_for(
        "create table t (a int); insert into t select generate_series(1, 10);",
        "",
    )
    .await;
    let (status, _) = Stream::open(&gateway, &key, "/v1/query", json!({ "sql": "selec 1" })).await;
    assert_eq!(
        status, 400,
        "a syntax error is found before any row: an ordinary error response"
    );
    let begin = gateway
        .client
        .post("/v1/transactions", &key, &json!({}))
        .await;
    let id = begin.json()["id"].as_str().unwrap().to_owned();
    gateway
        .client
        .post(
            &format!("/v1/transactions/{id}/query"),
            &key,
            &json!({"sql": "delete from t where a > 5"}),
        )
        .await;
    let (status, mut stream) = Stream::open(
        &gateway,
        &key,
        &format!("/v1/transactions/{id}/query"),
        json!({ "sql": "select a from t order by a" }),
    )
    .await;
    assert_eq!(status, 200);
    let mut lines = Vec::new();
    while let Some(line) = stream.line().await {
        lines.push(line);
    }
    assert_eq!(lines.len(), 1 + 5 + 1, "{lines:?}");
    assert_eq!(lines.last().unwrap()["rowCount"], 5);
    let rollback = gateway
        .client
        .post(&format!("/v1/transactions/{id}/rollback"), &key, &json!({}))
        .await;
    assert_eq!(rollback.json()["command"], "ROLLBACK");
    gateway.stop().await;
}

/// A reader that stays connected but stops reading for good: once it has not taken a chunk
/// for `stream_stall_timeout_ms`, the statement is cancelled and the connection goes back to
/// the pool. (Before, the streaming task waited on the reader forever, holding the connection,
/// and a drain waited on it past `shutdown_timeout_ms`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stalls_past_the_stall_timeout_frees_the_connection() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let toml = config(
        &db,
        &hash,
        "pool_size = 1\nstatement_timeout_ms = 120000",
        "",
    )
    .replace(
        "shutdown_timeout_ms = 10000",
        "shutdown_timeout_ms = 10000\nstream_stall_timeout_ms = 300",
    );
    let gateway = Gateway::start(&toml).await;
    let sql = "select i, repeat('y', 200) as pad from generate_series(1, 2000000) i /* stalled */";
    let (status, mut stream) =
        Stream::open(&gateway, &key, "/v1/query", json!({ "sql": sql })).await;
    assert_eq!(status, 200);
    assert!(stream.line().await.unwrap().get("fields").is_some());
    // Not reading any more, but still connected.
    wait_not_running(&db, "/* stalled */").await;
    let reply = gateway
        .client
        .query(&key, "select 'after' as a", json!([]))
        .await;
    assert_eq!(reply.rows(), vec![json!({"a": "after"})]);
    drop(stream);
    gateway.stop().await;
}
