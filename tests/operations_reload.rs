//! Live reload (SIGHUP's path and `POST /v1/admin/reload`): tenants added and removed without
//! dropping a request, an invalid config refused whole, and a budget lowered under load that is
//! never exceeded.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use serde_json::json;

fn second_tenant(hash: &str) -> String {
    format!("\n[[tenants]]\nid = \"beta\"\napi_keys = [\"{hash}\"]\npool_size = 2\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_tenants_without_dropping_a_request() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (beta_key, beta_hash) = common::key("beta");
    let (base, admin) = with_admin(&config(&db, &hash, "", ""));
    let file = ConfigFile::new(&base);
    let gateway = Gateway::start_file(file.path()).await;
    let c = &gateway.client;
    assert_status(
        &c.query(&beta_key, "select 1", json!([])).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    // Added: usable at once.
    file.write(&(base.clone() + &second_tenant(&beta_hash)));
    let reply = gateway.admin_reload(&admin).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["tenants"], json!(["acme", "beta"]));
    assert_eq!(
        c.query(&beta_key, "select 'beta' as t", json!([]))
            .await
            .rows(),
        vec![json!({"t": "beta"})]
    );

    // Removed while its request runs (reload by the SIGHUP path): the request completes,
    // later ones are refused.
    let running = {
        let (client, key) = (c.clone(), beta_key.clone());
        tokio::spawn(async move {
            client
                .query(&key, "select pg_sleep(1) as slept /* beta */", json!([]))
                .await
        })
    };
    wait_running(&db, "/* beta */", 1).await;
    file.write(&base);
    gateway.reload.as_ref().unwrap().send(()).await.unwrap();
    wait_until("the removed tenant's key refused", async || {
        c.query(&beta_key, "select 1", json!([])).await.status == 401
    })
    .await;
    assert_eq!(
        running.await.unwrap().status,
        200,
        "the request in flight completed"
    );
    assert_eq!(
        c.query(&key, "select 1", json!([])).await.status,
        200,
        "the other tenant never noticed"
    );
    // The removed tenant's connection closes.
    let admin_db = direct(&db).await;
    wait_until("the removed tenant's connections closed", async || {
        tenant_backends(&admin_db, "beta").await == 0
    })
    .await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_whole_and_the_old_one_keeps_serving() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (new_key, new_hash) = common::key("rotated");
    let (base, admin) = with_admin(&config(&db, &hash, "", ""));
    let file = ConfigFile::new(&base);
    let gateway = Gateway::start_file(file.path()).await;
    // A valid part (a rotated key) next to an invalid one: nothing applies.
    file.write(&base.replace(
        &format!("api_keys = [\"{hash}\"]"),
        &format!("api_keys = [\"{new_hash}\"]\npool_size = 0"),
    ));
    let refused = gateway.admin_reload(&admin).await;
    assert_status(&refused, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        refused.text.contains("pool_size") && refused.text.contains("current one stays"),
        "{}",
        refused.text
    );
    assert_eq!(gateway.client.select_one_status(&key).await, 200);
    assert_eq!(gateway.client.select_one_status(&new_key).await, 401);
    // Fixed: the key rotates.
    file.write(&base.replace(
        &format!("api_keys = [\"{hash}\"]"),
        &format!("api_keys = [\"{new_hash}\"]"),
    ));
    assert_eq!(gateway.admin_reload(&admin).await.status, 200);
    assert_eq!(gateway.client.select_one_status(&new_key).await, 200);
    assert_eq!(gateway.client.select_one_status(&key).await, 401);
    // A budget the server cannot hold (60 - 3 reserved) is refused too.
    file.write(
        &base
            .replace(
                &format!("api_keys = [\"{hash}\"]"),
                &format!("api_keys = [\"{new_hash}\"]"),
            )
            .replace("max_connections = 10", "max_connections = 57"),
    );
    let refused = gateway.admin_reload(&admin).await;
    assert!(refused.text.contains("allows 57"), "{}", refused.text);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_budget_under_load_never_exceeds_it() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (base, admin) = with_admin(&config(
        &db,
        &hash,
        "pool_size = 8\nrate_per_second = 100000\nburst = 100000\nqueue_timeout_ms = 10000",
        "max_connections = 8",
    ));
    let file = ConfigFile::new(&base);
    let gateway = Gateway::start_file(file.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..16)
        .map(|_| {
            let (client, key, stop) = (gateway.client.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.query(&key, "select pg_sleep(0.05)", json!([])).await;
                    assert_eq!(
                        reply.status, 200,
                        "no request is dropped by the reload: {}",
                        reply.text
                    );
                }
            })
        })
        .collect();
    let admin_db = direct(&db).await;
    let sample = async || backends_in(&admin_db, &db).await;
    let peak = Arc::new(AtomicI64::new(0));
    wait_until("the load uses more than the new budget", async || {
        sample().await > 3
    })
    .await;
    file.write(&base.replace("max_connections = 8", "max_connections = 3"));
    assert_eq!(gateway.admin_reload(&admin).await.status, 200);
    let reloaded = Instant::now();
    let mut settled_at = None;
    while reloaded.elapsed() < Duration::from_secs(3) {
        let now = sample().await;
        peak.fetch_max(now, Ordering::Relaxed);
        if now <= 3 && settled_at.is_none() {
            settled_at = Some(reloaded.elapsed());
        }
        if settled_at.is_some() {
            assert!(
                now <= 3,
                "{now} backends after settling at the new budget of 3"
            );
        }
        // The sampling interval of a fixed observation window.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        peak.load(Ordering::Relaxed) <= 8,
        "never above the old budget"
    );
    let settled_at = settled_at.expect("reached the new budget");
    assert!(
        settled_at < Duration::from_secs(2),
        "took {settled_at:?} to close down to the new budget"
    );
    gateway.stop().await;
}
