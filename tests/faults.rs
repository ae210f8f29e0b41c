//! Faults, against a cluster of this binary's own that the tests stop and start: Postgres
//! unreachable (fail fast with Retry-After, back off), Postgres restarted (stale pooled
//! connections are discarded, service resumes within about a second), a connection dying
//! mid-statement (connection_lost, never retried).

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use serde_json::json;
use sluice::dev::TempPostgres;

/// Tests here stop and start the shared cluster: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster() -> &'static Mutex<TempPostgres> {
    postgres()
}

async fn stop_postgres() {
    tokio::task::spawn_blocking(|| cluster().lock().unwrap().stop())
        .await
        .unwrap();
}

async fn start_postgres() {
    tokio::task::spawn_blocking(|| cluster().lock().unwrap().restart().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_then_up_fails_fast_then_resumes() {
    let _serial = SERIAL.lock().await;
    let (gateway, key, db) = gateway_for("create table t (n int);", "pool_size = 4").await;
    let c = &gateway.client;
    // Warm pool: several idle connections that the restart will break.
    let warm: Vec<_> = (0..4)
        .map(|_| c.query(&key, "select pg_sleep(0.1)", json!([])))
        .collect();
    for reply in futures::future::join_all(warm).await {
        assert_eq!(reply.status, 200);
    }

    stop_postgres().await;
    let mut answered = 0;
    for _ in 0..10 {
        let started = Instant::now();
        let reply = c.query(&key, "insert into t values (1)", json!([])).await;
        assert_status(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
        );
        assert!(reply.retry_after().is_some());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "fails fast, took {:?}",
            started.elapsed()
        );
        answered += 1;
    }
    assert_eq!(answered, 10);
    assert_eq!(c.get("/readyz").await.status, 503);

    start_postgres().await;
    let back = Instant::now();
    // Within about a second of Postgres accepting connections, requests succeed — and none
    // of them fails on a stale connection from before the restart.
    let mut first_success = None;
    let mut after_success = Vec::new();
    while back.elapsed() < Duration::from_secs(5) {
        let reply = c.query(&key, "insert into t values (2)", json!([])).await;
        match first_success {
            None if reply.status == 200 => first_success = Some(back.elapsed()),
            None => assert_eq!(reply.kind(), "upstream_unavailable", "{}", reply.text),
            Some(_) => after_success.push(reply.status),
        }
        // A client polling at its own pace through a fixed window: the measurement itself.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_success = first_success.expect("service resumed");
    assert!(
        first_success < Duration::from_millis(1500),
        "resumed after {first_success:?}"
    );
    assert!(after_success.iter().all(|s| *s == 200), "{after_success:?}");
    assert_eq!(c.get("/readyz").await.status, 200);
    // Nothing written while Postgres was down.
    let admin = direct(&db).await;
    let ones: i64 = admin
        .query_one("select count(*) from t where n = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ones, 0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_restart_leaves_no_stale_connection_in_use() {
    let _serial = SERIAL.lock().await;
    let (gateway, key, _) = gateway_for("", "pool_size = 4").await;
    let c = &gateway.client;
    let warm: Vec<_> = (0..4)
        .map(|_| c.query(&key, "select pg_sleep(0.1)", json!([])))
        .collect();
    futures::future::join_all(warm).await;
    // Restart while the four connections sit idle in the pool.
    tokio::task::spawn_blocking(|| cluster().lock().unwrap().restart().unwrap())
        .await
        .unwrap();
    for i in 0..20 {
        let reply = c.query(&key, "select $1::int as i", json!([i])).await;
        assert_eq!(
            reply.status, 200,
            "request {i} after the restart: {}",
            reply.text
        );
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_whose_connection_dies_is_not_retried() {
    let _serial = SERIAL.lock().await;
    let (gateway, key, db) = gateway_for("create table once (n int);", "pool_size = 2").await;
    let running = {
        let (client, key) = (gateway.client.clone(), key.clone());
        tokio::spawn(async move {
            client
                .query(
                    &key,
                    "insert into once select 1 from pg_sleep(1) /* dies */",
                    json!([]),
                )
                .await
        })
    };
    wait_running(&db, "/* dies */", 1).await;
    stop_postgres().await;
    let reply = running.await.unwrap();
    assert_status(&reply, StatusCode::BAD_GATEWAY, "connection_lost");
    start_postgres().await;
    // The answer was given, so no retry can follow it; once the gateway serves again, nothing
    // of the statement is left running either.
    wait_until("the gateway serves again", async || {
        gateway.client.select_one_status(&key).await == 200
    })
    .await;
    wait_not_running(&db, "/* dies */").await;
    let admin = direct(&db).await;
    let rows: i64 = admin
        .query_one("select count(*) from once", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows, 0,
        "the statement ran at most once (here: not at all, the server stopped first)"
    );
    gateway.stop().await;
}
