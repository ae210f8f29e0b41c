//! What operators read: Prometheus metrics that move by exactly what happened (requests,
//! pools, transactions), the `/v1/admin/pools` view against a known state, and a separate
//! metrics listener.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_what_happened() {
    let (gateway, key, db, admin) = gateway_with_admin(
        "",
        "pool_size = 1\nqueue_timeout_ms = 150\nrate_per_second = 1\nburst = 7",
    )
    .await;
    let c = &gateway.client;
    let before = Scrape::take(c, Some(&admin)).await;
    assert_eq!(
        before.value("sluice_requests_total", &[("tenant", "acme")]),
        0.0
    );
    assert_eq!(before.value("sluice_build_info", &[]), 1.0);

    for _ in 0..3 {
        assert_eq!(c.query(&key, "select 1", json!([])).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            c.query(&key, "select 1/0", json!([])).await.kind(),
            "database"
        );
    }
    let holder = {
        let (client, key) = (c.clone(), key.clone());
        tokio::spawn(async move {
            client
                .query(&key, "select pg_sleep(0.4) /* holder */", json!([]))
                .await
        })
    };
    wait_running(&db, "/* holder */", 1).await;
    assert_eq!(
        c.query(&key, "select 1", json!([])).await.kind(),
        "pool_timeout"
    );
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(
        c.query(&key, "select 1", json!([])).await.kind(),
        "rate_limited"
    );
    assert_eq!(
        c.query("wrong-key", "select 1", json!([])).await.kind(),
        "unauthorized"
    );

    let after = Scrape::take(c, Some(&admin)).await;
    let requests = |outcome| {
        after.value(
            "sluice_requests_total",
            &[("tenant", "acme"), ("route", "query"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("ok"), 4.0);
    assert_eq!(requests("database"), 2.0);
    assert_eq!(requests("pool_timeout"), 1.0);
    assert_eq!(requests("rate_limited"), 1.0);
    assert_eq!(
        after.value(
            "sluice_requests_total",
            &[("tenant", "-"), ("outcome", "unauthorized")]
        ),
        1.0
    );
    assert_eq!(
        after.value("sluice_rate_limited_total", &[("tenant", "acme")]),
        1.0
    );
    assert_eq!(after.value("sluice_auth_failures_total", &[]), 1.0);
    // Exported even at zero, so an alert on it has a series from the start.
    assert_eq!(after.value("sluice_log_lines_dropped_total", &[]), 0.0);
    assert_eq!(
        after.value(
            "sluice_request_duration_seconds",
            &[("tenant", "acme"), ("route", "query")]
        ),
        8.0
    );
    assert_eq!(
        after.value("sluice_queue_wait_seconds", &[("tenant", "acme")]),
        6.0,
        "one per request that got a connection"
    );
    assert_eq!(
        after.value("sluice_upstream_budget", &[("upstream", "main")]),
        10.0
    );
    assert_eq!(
        after.value("sluice_upstream_connections", &[("upstream", "main")]),
        1.0
    );
    assert_eq!(
        after.value(
            "sluice_pool_connections",
            &[("tenant", "acme"), ("state", "idle")]
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "sluice_pool_connections",
            &[("tenant", "acme"), ("state", "in_use")]
        ),
        0.0
    );
    assert_eq!(
        after.value("sluice_queue_waiting", &[("tenant", "acme")]),
        0.0
    );
    assert_eq!(
        after.value(
            "sluice_upstream_connect_total",
            &[("upstream", "main"), ("outcome", "ok")]
        ),
        1.0
    );
    assert!(after.value("sluice_http_connections", &[("protocol", "http1")]) >= 1.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_metrics_count_open_and_expired() {
    let (gateway, key, _, admin) = gateway_with_admin("", "").await;
    let c = &gateway.client;
    let begin = c
        .post("/v1/transactions", &key, &json!({"idleTimeoutMs": 200}))
        .await;
    assert_eq!(begin.status, 201);
    assert_eq!(
        Scrape::take(c, Some(&admin))
            .await
            .value("sluice_transactions_open", &[("tenant", "acme")]),
        1.0
    );
    let scrape = wait_for("the idle transaction expired", async || {
        let scrape = Scrape::take(c, Some(&admin)).await;
        (scrape.value("sluice_transactions_open", &[("tenant", "acme")]) == 0.0).then_some(scrape)
    })
    .await;
    assert_eq!(
        scrape.value("sluice_transactions_open", &[("tenant", "acme")]),
        0.0
    );
    assert_eq!(
        scrape.value("sluice_transactions_expired_total", &[("tenant", "acme")]),
        1.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_matches_a_known_state() {
    let (gateway, key, _, admin) =
        gateway_with_admin("", "pool_size = 3\nqueue_timeout_ms = 10000").await;
    let c = &gateway.client;
    // Tenant keys may not look.
    assert_status(
        &c.request(
            Method::GET,
            "/v1/admin/pools",
            &[("authorization", &format!("Bearer {key}"))],
            "",
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_status(
        &c.get("/v1/admin/pools").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(c.query(&key, "select 1/0", json!([])).await.status, 400);

    // Three statements running, two waiting.
    let running: Vec<_> = (0..5)
        .map(|_| {
            let (client, key) = (c.clone(), key.clone());
            tokio::spawn(async move { client.query(&key, "select pg_sleep(3)", json!([])).await })
        })
        .collect();
    let view = wait_for("3 running and 2 waiting", async || {
        let view = c.admin_pools(&admin).await;
        let tenant = &view["upstreams"][0]["tenants"][0];
        (tenant["inUse"] == 3 && tenant["waiting"] == 2).then_some(view)
    })
    .await;
    let upstream = &view["upstreams"][0];
    assert_eq!(upstream["name"], "main");
    assert_eq!(upstream["budget"], 10);
    assert_eq!(upstream["open"], 3);
    assert_eq!(upstream["available"], true);
    let tenant = &upstream["tenants"][0];
    assert_eq!(tenant["id"], "acme");
    assert_eq!(tenant["poolSize"], 3);
    assert_eq!(tenant["open"], 3);
    assert_eq!(tenant["idle"], 0);
    assert_eq!(tenant["connecting"], 0);
    assert!(tenant["longestWaitMs"].as_u64().unwrap() > 0);
    assert_eq!(tenant["rejected"], json!({"database": 1}));
    assert_eq!(tenant["transactionsOpen"], 0);
    for request in running {
        assert_eq!(request.await.unwrap().status, 200);
    }
    assert_eq!(c.admin_tenant(&admin, "acme").await["served"], 5);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_listener_serves_metrics_apart_from_the_api() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let gateway = ListeningGateway::start(&config(&db, &hash, "", "")).await;
    let (api_client, metrics_client) = (&gateway.api, &gateway.metrics);
    assert_eq!(
        api_client.query(&key, "select 1", json!([])).await.status,
        200
    );
    assert_eq!(
        api_client.get("/metrics").await.status,
        404,
        "not on the public listener"
    );
    let scrape = Scrape::take(metrics_client, None).await;
    assert_eq!(
        scrape.value(
            "sluice_requests_total",
            &[("tenant", "acme"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metrics_client
            .query(&key, "select 1", json!([]))
            .await
            .status,
        404,
        "no API on the metrics listener"
    );
    gateway.stop().await;
}
