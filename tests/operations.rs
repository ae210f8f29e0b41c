//! Operations: Prometheus metrics that move by exactly what happened, the admin pools view,
//! live reload (tenants added and removed, budgets lowered under load, invalid configs
//! refused), a separate metrics listener, and structured request logs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

/// A scrape of `/metrics`, parsed by a Prometheus text-format parser.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    /// On the public listener `admin` is an admin key; on `metrics_listen` none is needed.
    async fn take(client: &Client, admin: Option<&str>) -> Scrape {
        let auth = admin.map(|key| format!("Bearer {key}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let reply = client
            .request(Method::GET, "/metrics", &headers, bytes::Bytes::new())
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let lines = reply.text.lines().map(|l| Ok(l.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format"))
    }

    /// The value of `metric` with exactly these labels (0 when absent).
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }
}

fn with_admin(toml: &str) -> (String, String) {
    let (admin, hash) = key("admin");
    (
        toml.replace("[server]", &format!("[server]\nadmin_keys = [\"{hash}\"]")),
        admin,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_what_happened() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (toml, admin) = with_admin(&config(
        &db,
        &hash,
        "pool_size = 1\nqueue_timeout_ms = 150\nrate_per_second = 1\nburst = 7",
        "",
    ));
    let gateway = Gateway::start(&toml).await;
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
        tokio::spawn(async move { client.query(&key, "select pg_sleep(0.4)", json!([])).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
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
    let db = database("").await;
    let (key, hash) = key("acme");
    let (toml, admin) = with_admin(&config(&db, &hash, "", ""));
    let gateway = Gateway::start(&toml).await;
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
    tokio::time::sleep(Duration::from_millis(700)).await;
    let scrape = Scrape::take(c, Some(&admin)).await;
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
    let db = database("").await;
    let (key, hash) = key("acme");
    let (toml, admin) = with_admin(&config(
        &db,
        &hash,
        "pool_size = 3\nqueue_timeout_ms = 10000",
        "",
    ));
    let gateway = Gateway::start(&toml).await;
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
            tokio::spawn(async move { client.query(&key, "select pg_sleep(1.5)", json!([])).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let view = loop {
        let reply = c
            .request(
                Method::GET,
                "/v1/admin/pools",
                &[("authorization", &format!("Bearer {admin}"))],
                "",
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let tenant = reply.json()["upstreams"][0]["tenants"][0].clone();
        if tenant["inUse"] == 3 && tenant["waiting"] == 2 {
            break reply.json();
        }
        assert!(
            Instant::now() < deadline,
            "never saw 3 running and 2 waiting: {tenant}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let reply = c
        .request(
            Method::GET,
            "/v1/admin/pools",
            &[("authorization", &format!("Bearer {admin}"))],
            "",
        )
        .await;
    assert_eq!(reply.json()["upstreams"][0]["tenants"][0]["served"], 5);
    gateway.stop().await;
}

/// A config file the test rewrites between reloads.
struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    fn new(toml: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!("sluice-reload-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = ConfigFile {
            path: dir.join("sluice.toml"),
        };
        file.write(toml);
        file
    }

    fn write(&self, toml: &str) {
        std::fs::write(&self.path, toml).unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap());
    }
}

async fn admin_reload(gateway: &Gateway, admin: &str) -> Reply {
    gateway
        .client
        .request(
            Method::POST,
            "/v1/admin/reload",
            &[("authorization", &format!("Bearer {admin}"))],
            "",
        )
        .await
}

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
    let reply = admin_reload(&gateway, &admin).await;
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
                .query(&key, "select pg_sleep(1) as slept", json!([]))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    file.write(&base);
    gateway.reload.as_ref().unwrap().send(()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.query(&beta_key, "select 1", json!([])).await.status != 401 {
        assert!(
            Instant::now() < deadline,
            "the removed tenant's key still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: i64 = admin_db
            .query_one(
                "select count(*) from pg_stat_activity where application_name = 'sluice/beta'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removed tenant's connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let refused = admin_reload(&gateway, &admin).await;
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
    assert_eq!(admin_reload(&gateway, &admin).await.status, 200);
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
    let refused = admin_reload(&gateway, &admin).await;
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
    let admin_db = Arc::new(direct(&db).await);
    let sample = || {
        let admin_db = admin_db.clone();
        let db = db.clone();
        async move {
            admin_db
                .query_one("select count(*) from pg_stat_activity where datname = $1 and application_name like 'sluice/%'", &[&db])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let peak = Arc::new(AtomicI64::new(0));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = sample().await;
    assert!(
        before > 3,
        "the load used more than the new budget: {before}"
    );
    file.write(&base.replace("max_connections = 8", "max_connections = 3"));
    assert_eq!(admin_reload(&gateway, &admin).await.status, 200);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_listener_serves_metrics_apart_from_the_api() {
    let db = database("").await;
    let (key, hash) = key("acme");
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
    while api_client.try_get("/healthz").await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        api_client.query(&key, "select 1", json!([])).await.status,
        200
    );
    assert_eq!(
        api_client.get("/metrics").await.status,
        404,
        "not on the public listener"
    );
    let scrape = Scrape::take(&metrics_client, None).await;
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
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

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
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.try_get("/healthz").await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
