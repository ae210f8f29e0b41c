//! Admission over HTTP: a tenant over its rate gets 429 with a `Retry-After` that, honoured,
//! lets the request through; an address with too many failed authentications gets 429 for
//! every key, including a right one.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_a_tenant_gets_429_and_retry_after_works() {
    let (gateway, key, _) = gateway_for(
        "create table hits (n int);",
        "rate_per_second = 1\nburst = 2",
    )
    .await;
    let c = &gateway.client;
    for n in 0..2 {
        assert_eq!(
            c.query(&key, "insert into hits values ($1)", json!([n]))
                .await
                .status,
            200
        );
    }
    let limited = c
        .query(&key, "insert into hits values (99)", json!([]))
        .await;
    assert_status(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after = limited.retry_after().expect("Retry-After");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // The client honours Retry-After: waiting that long is the scenario.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let again = c
        .query(&key, "select count(*) from hits where n = 99", json!([]))
        .await;
    assert_eq!(
        again.status, 200,
        "honouring Retry-After lets the request through: {}",
        again.text
    );
    // The limited statement never ran.
    assert_eq!(again.rows()[0]["count"], "0");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_limit_does_not_touch_another_tenant() {
    let db = database("").await;
    let (slow_key, slow_hash) = key("slow");
    let (fast_key, fast_hash) = key("fast");
    let toml = format!(
        "{}\n[[tenants]]\nid = \"fast\"\napi_keys = [\"{fast_hash}\"]\npool_size = 2\n",
        config(&db, &slow_hash, "rate_per_second = 1\nburst = 1", "")
    );
    let gateway = Gateway::start(&toml).await;
    let c = &gateway.client;
    assert_eq!(c.query(&slow_key, "select 1", json!([])).await.status, 200);
    assert_eq!(c.query(&slow_key, "select 1", json!([])).await.status, 429);
    for _ in 0..20 {
        assert_eq!(c.query(&fast_key, "select 1", json!([])).await.status, 200);
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_failed_authentications_block_the_address_for_every_key() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let toml =
        config(&db, &hash, "", "").replace("[server]", "[server]\nauth_failures_per_minute = 3");
    let gateway = Gateway::start(&toml).await;
    let c = &gateway.client;
    for attempt in 0..3 {
        let reply = c
            .query(&format!("guess-{attempt}"), "select 1", json!([]))
            .await;
        assert_status(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let blocked = c.query("guess-3", "select 1", json!([])).await;
    assert_status(&blocked, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(blocked.retry_after().unwrap() <= 60);
    // A right guess cannot be told from a wrong one now.
    let right = c.query(&key, "select 1", json!([])).await;
    assert_status(&right, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    gateway.stop().await;
}
