//! The pool's answers over HTTP: waiting with a deadline (`pool_timeout`), a bounded queue
//! (`queue_full`), an unreachable or dying upstream (`upstream_unavailable`,
//! `connection_lost`), and a budget that does not fit the server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use serde_json::json;
use sluice::dev::{TempPostgres, TempPostgresOptions, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_finds_no_connection_in_time_gets_pool_timeout() {
    let (gateway, key, db) = gateway_for(
        "create table t (n int);",
        "pool_size = 1\nqueue_timeout_ms = 300",
    )
    .await;
    let holder = {
        let client = gateway.client.clone();
        let key = key.clone();
        tokio::spawn(async move {
            client
                .query(&key, "select pg_sleep(2) /* holder */", json!([]))
                .await
        })
    };
    wait_running(&db, "/* holder */", 1).await;
    let started = Instant::now();
    let reply = gateway
        .client
        .query(&key, "insert into t values (1)", json!([]))
        .await;
    assert_status(&reply, StatusCode::SERVICE_UNAVAILABLE, "pool_timeout");
    assert!(reply.retry_after().unwrap() >= 1);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "answered at the queue timeout"
    );
    assert_eq!(holder.await.unwrap().status, 200);
    // The statement never ran.
    let count = gateway
        .client
        .query(&key, "select count(*) from t", json!([]))
        .await;
    assert_eq!(count.rows()[0]["count"], "0");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_queue_full_at_once() {
    let (gateway, key, db, admin) = gateway_with_admin(
        "",
        "pool_size = 1\nmax_waiting = 1\nqueue_timeout_ms = 5000",
    )
    .await;
    let spawn = |sql: &'static str| {
        let client = gateway.client.clone();
        let key = key.clone();
        tokio::spawn(async move { client.query(&key, sql, json!([])).await })
    };
    let holder = spawn("select pg_sleep(2) /* holder */");
    wait_running(&db, "/* holder */", 1).await;
    let waiter = spawn("select 'waited' as w");
    wait_until("one request waiting in the queue", async || {
        gateway.client.admin_tenant(&admin, "acme").await["waiting"] == 1
    })
    .await;
    let started = Instant::now();
    let reply = gateway.client.query(&key, "select 1", json!([])).await;
    assert_status(&reply, StatusCode::SERVICE_UNAVAILABLE, "queue_full");
    assert!(reply.retry_after().unwrap() >= 1);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not after waiting"
    );
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(waiter.await.unwrap().rows()[0]["w"], "waited");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_answers_upstream_unavailable_quickly() {
    let (key, hash) = key("acme");
    let port = free_port().unwrap();
    let toml =
        config("x", &hash, "", "").replace(&format!(":{}/x", pg_port()), &format!(":{port}/x"));
    // The gateway starts although its upstream is down.
    let gateway = Gateway::start(&toml).await;
    for _ in 0..3 {
        let started = Instant::now();
        let reply = gateway.client.query(&key, "select 1", json!([])).await;
        assert_status(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
        );
        assert!(reply.retry_after().unwrap() >= 1);
        assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
        assert!(
            !reply.text.contains(&port.to_string()),
            "no internal address in the answer"
        );
    }
    assert_eq!(gateway.client.get("/readyz").await.status, 503);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_statement_answers_connection_lost() {
    let (gateway, key, db) = gateway_for("", "pool_size = 2").await;
    let running = {
        let client = gateway.client.clone();
        let key = key.clone();
        tokio::spawn(async move {
            client
                .query(&key, "select pg_sleep(20) /* victim */", json!([]))
                .await
        })
    };
    let victim = wait_running(&db, "/* victim */", 1).await;
    direct(&db)
        .await
        .execute("select pg_terminate_backend($1)", &[&victim[0]])
        .await
        .unwrap();
    let reply = running.await.unwrap();
    assert_status(&reply, StatusCode::BAD_GATEWAY, "connection_lost");
    // The next request gets a working connection.
    still_serves(&gateway, &key).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_does_not_fit_the_server_is_refused_at_start() {
    let db = database("").await;
    let (_, hash) = key("acme");
    // The shared cluster allows 60 - 3 reserved = 57 connections.
    let toml = config(&db, &hash, "", "max_connections = 57");
    let error = Gateway::try_start(&toml).await.err().expect("refused");
    assert!(
        error.contains("max_connections = 57") && error.contains("allows 57"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_is_checked_on_first_contact_when_the_upstream_was_down_at_start() {
    let port = free_port().unwrap();
    let password = "first-contact-pw";
    let (key, hash) = key("acme");
    let url = format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres");
    let toml =
        config("postgres", &hash, "", "max_connections = 30").replace(&pg_url("postgres"), &url);
    // Down at start: the gateway starts anyway and answers upstream_unavailable.
    let gateway = Gateway::start(&toml).await;
    assert_eq!(
        gateway
            .client
            .query(&key, "select 1", json!([]))
            .await
            .kind(),
        "upstream_unavailable"
    );
    // The server appears, with room for only 20 - 3 = 17 connections: the first contact reads
    // that and refuses to use a budget of 30.
    let options = TempPostgresOptions {
        max_connections: 20,
        port: Some(port),
        password: Some(password.into()),
        ..Default::default()
    };
    let mut cluster = tokio::task::spawn_blocking(move || TempPostgres::start(options))
        .await
        .unwrap()
        .unwrap();
    let admin = tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(admin.1);
    wait_until("the gateway contacted the server", async || {
        let reply = gateway.client.query(&key, "select 1", json!([])).await;
        assert_status(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
        );
        // It did make contact (one connection, closed after the check) and stays refused.
        let contacted: i64 = admin
            .0
            .query_one(
                "select count(*) from pg_stat_database where datname = 'postgres' and sessions > 1",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        contacted > 0
    })
    .await;
    assert_eq!(gateway.client.get("/readyz").await.status, 503);
    let status = gateway.client.query(&key, "select 1", json!([])).await;
    assert_eq!(status.kind(), "upstream_unavailable");
    gateway.stop().await;
    // Started now, the same config is refused outright, naming both numbers.
    let error = Gateway::try_start(&toml)
        .await
        .err()
        .expect("refused at start");
    assert!(
        error.contains("max_connections = 30") && error.contains("allows 17"),
        "{error}"
    );
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
}

#[test]
fn sluice_check_names_both_numbers_when_the_budget_does_not_fit() {
    let (_, hash) = key("acme");
    let dir = std::env::temp_dir().join(format!("sluice-check-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    let check = |max: usize| {
        std::fs::write(
            &path,
            config("postgres", &hash, "", &format!("max_connections = {max}")),
        )
        .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let too_big = check(57);
    let stdout = String::from_utf8_lossy(&too_big.stdout);
    assert!(!too_big.status.success(), "{stdout}");
    assert!(
        stdout.contains("max_connections = 57") && stdout.contains("allows 57"),
        "{stdout}"
    );
    let fits = check(50);
    let stdout = String::from_utf8_lossy(&fits.stdout);
    assert!(fits.status.success(), "{stdout}");
    assert!(
        stdout.contains("server allows              57") && stdout.contains("OK"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sluice_check_refuses_an_invalid_config_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("sluice-check-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[[upstreams]]\nname = \"main\"\nurl = \"postgres://a@h/d\"\n[[tenants]]\nid = \"t\"\napi_keys = []\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("tenants[0].api_keys"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sluice_key_prints_a_key_and_its_config_line() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("key")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim();
    let hash = sluice::auth::KeyHash::of_key(key).to_string();
    assert!(
        stdout.contains(&format!("api_keys = [\"{hash}\"]")),
        "{stdout}"
    );
}
