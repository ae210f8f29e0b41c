//! Structured request logs from the real binary: one JSON line per request with its fields,
//! and no key, parameter or SQL text at info.

mod common;

use std::collections::HashMap;

use common::*;
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_logs_one_structured_line_without_secrets() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let port = sluice::dev::free_port().unwrap();
    let toml = config(&db, &hash, "", "")
        .replace("[server]", "[server]\nlog_format = \"json\"")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    let file = ConfigFile::new(&toml);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(file.path())
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    wait_until("the gateway answers", async || {
        client.try_get("/healthz").await.is_ok()
    })
    .await;
    let secret = "a-secret-parameter-value";
    let reply = client
        .request(
            Method::POST,
            "/v1/query",
            &[
                ("authorization", &format!("Bearer {key}")),
                ("x-request-id", "log-test-1"),
            ],
            json!({"sql": "select $1::text as v", "params": [secret]}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(secret), "a parameter reached the log");
    assert!(!stderr.contains(&key), "a key reached the log");
    let line = stderr
        .lines()
        .find(|l| l.contains("log-test-1"))
        .unwrap_or_else(|| panic!("no request line in:\n{stderr}"));
    let entry: HashMap<String, serde_json::Value> =
        serde_json::from_str(line).expect("one JSON object per line");
    for field in [
        "request_id",
        "tenant",
        "route",
        "status",
        "outcome",
        "queue_wait_ms",
        "exec_ms",
        "rows",
        "bytes",
        "duration_ms",
    ] {
        assert!(entry.contains_key(field), "{field} missing from {line}");
    }
    assert_eq!(entry["tenant"], "acme");
    assert_eq!(entry["route"], "query");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["rows"], 1);
    assert!(
        !stderr.contains("select $1::text"),
        "SQL only at debug level"
    );
}
