//! Burst safety (promises 1, 2 and 4) against a Postgres with `max_connections = 30`:
//!
//! - a burst of 2,000 concurrent clients, each request on its own new TCP connection, 10,000
//!   requests in all, over two tenants of `pool_size` 15 sharing a budget of 20: the gateway
//!   never holds more than 20 backends (sampled every few milliseconds), nobody sees 53300,
//!   every answer is 200 or a 429/503 with `Retry-After`, none waits past its deadline, and
//!   both tenants are served;
//! - fairness: two saturated tenants share a full budget in proportion to their pool sizes,
//!   within one connection.
//!
//! The tests run one at a time: each needs the cluster's connections to itself.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sluice::dev::TempPostgresOptions;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster_port() -> u16 {
    postgres_with(TempPostgresOptions {
        max_connections: 30,
        ..Default::default()
    })
    .lock()
    .unwrap()
    .port()
}

/// Lets one process hold thousands of sockets.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// One request on a brand-new TCP connection, as a cold serverless instance sends it.
async fn cold_query(addr: std::net::SocketAddr, key: &str, sql: &str) -> Result<Reply, String> {
    let auth = format!("Bearer {key}");
    let body = serde_json::to_vec(&json!({ "sql": sql })).unwrap();
    cold_request(
        addr,
        http::Method::POST,
        "/v1/query",
        &[("authorization", &auth)],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_two_thousand_clients_never_exceeds_the_budget() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    let port = cluster_port();
    let db = database("").await;
    let (key_a, hash_a) = key("a");
    let (key_b, hash_b) = key("b");
    let limits =
        "pool_size = 15\nrate_per_second = 100000\nburst = 100000\nqueue_timeout_ms = 5000";
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [[upstreams]]
        name = "main"
        url = "postgres://postgres:{password}@127.0.0.1:{port}/{db}"
        max_connections = 20
        [[tenants]]
        id = "a"
        api_keys = ["{hash_a}"]
        {limits}
        [[tenants]]
        id = "b"
        api_keys = ["{hash_b}"]
        {limits}
        "#,
        password = postgres().lock().unwrap().password(),
    );
    let gateway = Gateway::start(&toml).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_backends(db.clone(), stop.clone());

    const CLIENTS: usize = 2_000;
    const PER_CLIENT: usize = 5;
    let deadline = Duration::from_millis(5_000);
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let key = if i % 2 == 0 {
                key_a.clone()
            } else {
                key_b.clone()
            };
            let addr = gateway.addr;
            tokio::spawn(async move {
                let mut outcomes = Vec::with_capacity(PER_CLIENT);
                for _ in 0..PER_CLIENT {
                    let sent = Instant::now();
                    let reply = cold_query(addr, &key, "select pg_sleep(0.005)").await;
                    outcomes.push((i % 2, sent.elapsed(), reply));
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(CLIENTS * PER_CLIENT);
    for client in clients {
        outcomes.extend(client.await.unwrap());
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();

    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut served = [0usize; 2];
    let mut latencies: Vec<Duration> = Vec::new();
    for (tenant, took, reply) in &outcomes {
        let reply = reply
            .as_ref()
            .unwrap_or_else(|e| panic!("transport error: {e}"));
        assert!(
            !reply.text.contains("53300"),
            "53300 reached a client: {}",
            reply.text
        );
        match reply.status {
            200 => served[*tenant] += 1,
            429 | 503 => {
                assert!(
                    reply.retry_after().is_some(),
                    "{} without Retry-After: {}",
                    reply.status,
                    reply.text
                );
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
        let kind = if reply.status == 200 {
            "ok".to_owned()
        } else {
            reply.kind()
        };
        *by_kind.entry(kind).or_default() += 1;
        // The queue deadline plus the statement, with room for a loaded two-core machine.
        assert!(
            *took < deadline + Duration::from_secs(5),
            "a request took {took:?}"
        );
        latencies.push(*took);
    }
    latencies.sort();
    let peak = peak_backends(&samples);
    println!(
        "burst: {} requests in {:.1}s; outcomes {by_kind:?}; served a={} b={}; peak backends {peak} \
         over {} samples; p50 {:?} p99 {:?}",
        outcomes.len(),
        elapsed.as_secs_f64(),
        served[0],
        served[1],
        samples.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
    );
    assert_eq!(outcomes.len(), CLIENTS * PER_CLIENT);
    assert!(
        samples.len() > 50,
        "sampled often enough ({})",
        samples.len()
    );
    assert!(
        peak <= 20,
        "the gateway held {peak} backends with a budget of 20"
    );
    assert!(
        served[0] > 0 && served[1] > 0,
        "both tenants were served: {served:?}"
    );
    gateway.stop().await;
}

/// Keeps `clients` requests of `sql` in flight for `key` until `stop`.
fn saturate(
    gateway: &Gateway,
    key: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (client, key, stop) = (gateway.client.clone(), key.to_owned(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.query(&key, "select pg_sleep(0.05)", json!([])).await;
                    assert!(matches!(reply.status, 200 | 503), "{}", reply.text);
                }
            })
        })
        .collect()
}

async fn fair_shares(budget: usize, size_a: usize, size_b: usize) -> (f64, f64, i64) {
    let port = cluster_port();
    let db = database("").await;
    let (key_a, hash_a) = key("a");
    let (key_b, hash_b) = key("b");
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [[upstreams]]
        name = "main"
        url = "postgres://postgres:{password}@127.0.0.1:{port}/{db}"
        max_connections = {budget}
        [[tenants]]
        id = "a"
        api_keys = ["{hash_a}"]
        pool_size = {size_a}
        rate_per_second = 100000
        burst = 100000
        [[tenants]]
        id = "b"
        api_keys = ["{hash_b}"]
        pool_size = {size_b}
        rate_per_second = 100000
        burst = 100000
        "#,
        password = postgres().lock().unwrap().password(),
    );
    let gateway = Gateway::start(&toml).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Tenant a takes the whole budget first; then b arrives and must get its share.
    let admin = direct(&db).await;
    let mut load = saturate(&gateway, &key_a, 3 * budget, stop.clone());
    wait_until("tenant a holds the whole budget", async || {
        tenant_backends(&admin, "a").await == budget as i64
    })
    .await;
    load.extend(saturate(&gateway, &key_b, 3 * budget, stop.clone()));
    let share_b = (budget * size_b / (size_a + size_b)) as i64;
    wait_until("tenant b reached its share", async || {
        tenant_backends(&admin, "b").await >= share_b
    })
    .await;
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_backends(db.clone(), sampling.clone());
    // The sampling window: the shares are measured over two seconds of steady state.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    sampling.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    gateway.stop().await;
    let mean = |name: &str| {
        samples
            .iter()
            .map(|s| *s.get(name).unwrap_or(&0) as f64)
            .sum::<f64>()
            / samples.len() as f64
    };
    let peak = peak_backends(&samples);
    (mean("sluice/a"), mean("sluice/b"), peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_tenants_share_the_budget_in_proportion_to_pool_size() {
    let _serial = SERIAL.lock().await;
    for (budget, size_a, size_b) in [(12, 12, 4), (10, 10, 10)] {
        let (a, b, peak) = fair_shares(budget, size_a, size_b).await;
        let share_a = budget as f64 * size_a as f64 / (size_a + size_b) as f64;
        let share_b = budget as f64 - share_a;
        println!(
            "fairness: budget {budget}, pool sizes {size_a}/{size_b}: a held {a:.2} (share {share_a}), b held {b:.2} (share {share_b}), peak {peak}"
        );
        assert!(
            (a - share_a).abs() <= 1.0,
            "a held {a:.2}, its share is {share_a}"
        );
        assert!(
            (b - share_b).abs() <= 1.0,
            "b held {b:.2}, its share is {share_b}"
        );
        assert!(
            peak <= budget as i64,
            "{peak} backends over a budget of {budget}"
        );
    }
}
