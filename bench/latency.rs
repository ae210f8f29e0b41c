//! Single-client latency, sequential requests:
//! - `select 1` through the gateway (HTTP/1.1 keep-alive, warm pool) next to a direct
//!   tokio-postgres query (prepared, same machine);
//! - three inserts as an interactive transaction (begin, 3 queries, commit: five HTTP round
//!   trips) next to the same work as one `/v1/batch`.
//!
//! `cargo bench --bench latency` (optionally `-- 20000` for the number of requests). Starts its
//! own throwaway Postgres and an in-process gateway on separate threads.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice::dev::{TempPostgres, TempPostgresOptions};

fn main() {
    let requests: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let postgres = TempPostgres::start(TempPostgresOptions::default()).expect("throwaway Postgres");
    let url = postgres.url("postgres");
    let key = sluice::auth::generate_key();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"main\"\nurl = \"{url}\"\nmax_connections = 4\n\
         [[tenants]]\nid = \"bench\"\napi_keys = [\"{}\"]\npool_size = 2\nrate_per_second = 1000000\nburst = 1000000\n",
        sluice::auth::KeyHash::of_key(&key)
    );
    let config = sluice::config::Config::from_toml(&toml, std::path::Path::new(".")).unwrap();

    // The gateway gets its own runtime (two worker threads), as in production.
    // GATEWAY_THREADS: the gateway runtime's worker threads (default 2, one per core here).
    let threads = std::env::var("GATEWAY_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let gateway_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let listener = gateway_runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let listeners = vec![sluice::server::Listener {
        tcp: listener,
        kind: sluice::server::ListenerKind::Http,
    }];
    gateway_runtime.spawn(sluice::server::run(
        listeners,
        config,
        std::future::pending(),
    ));

    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_runtime.block_on(async {
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let body = Bytes::from_static(br#"{"sql":"select 1"}"#);
        let gateway = measure(requests, || {
            let request = http::Request::post(format!("http://{addr}/v1/query"))
                .header("authorization", format!("Bearer {key}"))
                .body(Full::new(body.clone()))
                .unwrap();
            let http = http.clone();
            async move {
                let response = http.request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap();
            }
        })
        .await;

        let post = |path: String, body: serde_json::Value| {
            let request = http::Request::post(format!("http://{addr}{path}"))
                .header("authorization", format!("Bearer {key}"))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let http = http.clone();
            async move {
                let response = http.request(request).await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()
            }
        };
        post(
            "/v1/query".into(),
            serde_json::json!({"sql": "create table if not exists bench_t (a int, b text)"}),
        )
        .await;
        let insert = "insert into bench_t values ($1, $2)";
        let transactions = requests / 10;
        let interactive = measure(transactions, || async {
            let begun = post("/v1/transactions".into(), serde_json::json!({})).await;
            let id = begun["id"].as_str().unwrap().to_owned();
            for i in 0..3 {
                post(
                    format!("/v1/transactions/{id}/query"),
                    serde_json::json!({"sql": insert, "params": [i, "x"]}),
                )
                .await;
            }
            post(
                format!("/v1/transactions/{id}/commit"),
                serde_json::json!({}),
            )
            .await;
        })
        .await;
        let batch = measure(transactions, || async {
            let statements: Vec<_> = (0..3)
                .map(|i| serde_json::json!({"sql": insert, "params": [i, "x"]}))
                .collect();
            post(
                "/v1/batch".into(),
                serde_json::json!({ "statements": statements }),
            )
            .await;
        })
        .await;

        // The HTTP hop alone: the same client and server, no database.
        let health = measure(requests, || {
            let request = http::Request::get(format!("http://{addr}/healthz"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let http = http.clone();
            async move {
                let response = http.request(request).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
        })
        .await;

        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let statement = client.prepare("select 1").await.unwrap();
        let direct = measure(requests, || {
            let (client, statement) = (&client, &statement);
            async move {
                client.query(statement, &[]).await.unwrap();
            }
        })
        .await;

        println!("select 1, {requests} sequential requests after warm-up");
        println!("  path                         p50        p99");
        println!(
            "  direct tokio-postgres   {:>9.1} µs {:>9.1} µs",
            micros(direct.0),
            micros(direct.1)
        );
        println!(
            "  sluice (HTTP keep-alive){:>9.1} µs {:>9.1} µs",
            micros(gateway.0),
            micros(gateway.1)
        );
        println!(
            "  gateway adds            {:>9.1} µs at the median ({:.2}x direct)",
            micros(gateway.0) - micros(direct.0),
            micros(gateway.0) / micros(direct.0)
        );
        println!(
            "  HTTP hop alone (/healthz) {:>9.1} µs {:>9.1} µs",
            micros(health.0),
            micros(health.1)
        );
        println!("three inserts in a transaction, {transactions} sequential transactions");
        println!(
            "  interactive (begin, 3 x query, commit) {:>9.1} µs {:>9.1} µs",
            micros(interactive.0),
            micros(interactive.1)
        );
        println!(
            "  one /v1/batch                          {:>9.1} µs {:>9.1} µs",
            micros(batch.0),
            micros(batch.1)
        );
        println!(
            "  interactive / batch at the median: {:.2}x",
            micros(interactive.0) / micros(batch.0)
        );
    });
    drop(postgres);
}

/// (p50, p99) of `n` sequential runs after `n / 10` warm-up runs.
async fn measure<F, Fut>(n: usize, mut run: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        run().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        run().await;
        samples.push(started.elapsed());
    }
    samples.sort();
    (samples[n / 2], samples[n * 99 / 100])
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
