//! Graceful shutdown and drain: requests in flight finish, `/readyz` turns 503 at once, the
//! pools close (no backend left behind), the process exits 0 — and a second SIGTERM exits at
//! once.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_in_the_middle_of_a_request_lets_it_finish_and_closes_the_pool() {
    let (gateway, key, db) = gateway_for("", "").await;
    let client = gateway.client.clone();
    let running = {
        let (client, key) = (client.clone(), key.clone());
        tokio::spawn(async move {
            client
                .query(&key, "select pg_sleep(1) as slept /* running */", json!([]))
                .await
        })
    };
    wait_running(&db, "/* running */", 1).await;
    let stopping = tokio::spawn(gateway.stop());
    // Draining: not ready, but still answering.
    wait_until("/readyz turns 503", async || {
        client.get("/readyz").await.status == 503
    })
    .await;
    let reply = running.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("stops after the request")
        .unwrap();
    // Every pooled connection was closed.
    let admin = direct(&db).await;
    let remaining: i64 = admin
        .query_one("select count(*) from pg_stat_activity where datname = $1 and application_name like 'sluice/%'", &[&db])
        .await
        .unwrap()
        .get(0);
    assert_eq!(remaining, 0);
}

/// The real binary, as an orchestrator runs it.
struct Process {
    child: Child,
    url: String,
}

impl Process {
    fn start(config: &str) -> Process {
        let dir = std::env::temp_dir().join(format!("sluice-drain-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = sluice::dev::free_port().unwrap();
        let config = config.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        let path = dir.join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the "listening" line.
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        for line in lines.by_ref() {
            if line.unwrap().contains("listening") {
                break;
            }
            assert!(Instant::now() < deadline, "gateway did not start");
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Process {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            // Polls the child's exit (no async wait on a std child).
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_running_query_then_exits_zero() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let mut process = Process::start(&config(&db, &hash, "", ""));
    let client = Client::new(&process.url);
    assert_eq!(client.get("/readyz").await.status, 200);
    let running = {
        let (client, key) = (client.clone(), key.clone());
        tokio::spawn(async move {
            client
                .query(&key, "select pg_sleep(2) as slept /* drained */", json!([]))
                .await
        })
    };
    wait_running(&db, "/* drained */", 1).await;
    process.signal(libc::SIGTERM);
    wait_until("/readyz turns 503 after SIGTERM", async || {
        client.get("/readyz").await.status == 503
    })
    .await;
    // Once draining, every readiness probe answers at once.
    let started = Instant::now();
    let ready = client.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.json()["status"], "draining");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "503 at once"
    );
    let reply = running.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    let status = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(status.expect("exits after the drain").code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let config = config(&db, &hash, "", "")
        .replace("shutdown_timeout_ms = 10000", "shutdown_timeout_ms = 30000");
    let mut process = Process::start(&config);
    let client = Client::new(&process.url);
    let running = {
        let (client, key) = (client.clone(), key.clone());
        tokio::spawn(async move {
            client
                .query(&key, "select pg_sleep(20) /* endless */", json!([]))
                .await
        })
    };
    wait_running(&db, "/* endless */", 1).await;
    process.signal(libc::SIGTERM);
    // The first SIGTERM was taken (draining), and the process waits for the query.
    wait_until("/readyz turns 503 after SIGTERM", async || {
        client.get("/readyz").await.status == 503
    })
    .await;
    assert!(
        process.child.try_wait().unwrap().is_none(),
        "still draining after the first SIGTERM"
    );
    process.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "exits at once, not after the 20 s query"
    );
    running.abort();
}

/// Issue 18 (found while replacing sleeps): HTTP clients open spare connections they may never
/// use. One that had sent nothing held shutdown up to its deadline (10 s here): the gateway
/// waited for its first bytes, not for the close. Now such a connection is closed with the
/// others, and a client that idles on a keep-alive connection does not hold the exit either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sent_a_byte_does_not_hold_shutdown_up() {
    let (gateway, key, _db) = gateway_for("", "").await;
    let reply = gateway.client.query(&key, "select 1", json!([])).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let silent = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), gateway.stop())
        .await
        .expect("stops");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for a connection with nothing to finish (deadline 10 s)",
        started.elapsed()
    );
    drop(silent);
}
