//! Issue 11, item 10 (auth): who may read `/metrics`, and how the gateway authenticates to
//! Postgres — no password in the clear or as MD5 to a peer it has not verified, no
//! `AuthenticationOk` before the server has proved it knows the SCRAM secret, and SCRAM channel
//! binding when asked.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use http::Method;

async fn get_metrics(client: &Client, key: Option<&str>) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    client
        .request(Method::GET, "/metrics", &headers, bytes::Bytes::new())
        .await
}

/// Bug: `/metrics` on the public listener answered anyone, and its labels list every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_need_an_admin_key_and_the_metrics_listener_needs_none() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (admin, admin_hash) = common::key("admin");
    let toml = config(&db, &hash, "", "").replace(
        "[server]",
        &format!("[server]\nadmin_keys = [\"{admin_hash}\"]"),
    );
    let gateway = Gateway::start(&toml).await;
    let c = &gateway.client;
    let anonymous = get_metrics(c, None).await;
    assert_status(&anonymous, http::StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(!anonymous.text.contains("acme"), "{}", anonymous.text);
    let tenant = get_metrics(c, Some(&key)).await;
    assert_status(&tenant, http::StatusCode::FORBIDDEN, "forbidden");
    let with_admin = get_metrics(c, Some(&admin)).await;
    assert_eq!(with_admin.status, 200, "{}", with_admin.text);
    assert!(with_admin.text.contains("sluice_build_info"));
    gateway.stop().await;

    // On its own listener, metrics need no key (keep that port private).
    let port = sluice::dev::free_port().unwrap();
    let toml = config(&db, &hash, "", "").replace(
        "[server]",
        &format!("[server]\nmetrics_listen = \"127.0.0.1:{port}\""),
    );
    let config = sluice::config::Config::from_toml(&toml, Path::new(".")).unwrap();
    let listeners = sluice::server::bind(&config).unwrap();
    let api = listeners[0].local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sluice::server::run(listeners, config, async move {
        let _ = stopped.await;
    }));
    let api_client = Client::new(&format!("http://{api}"));
    let metrics_client = Client::new(&format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics_client.try_get("/healthz").await.is_err() {
        assert!(Instant::now() < deadline, "metrics listener did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scrape = get_metrics(&metrics_client, None).await;
    assert_eq!(scrape.status, 200, "{}", scrape.text);
    assert_eq!(get_metrics(&api_client, None).await.status, 404);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
