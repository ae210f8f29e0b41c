//! Cluster mode behind a real load balancer: HAProxy (Debian's package) on loopback in front of
//! `sluice serve` processes sharing one budget of 20 through Postgres (`max_connections = 40`).
//! A sampler counts the replicas' data sessions in `pg_stat_activity` every few milliseconds
//! through every scenario: the sum must never pass 20.
//!
//! Each test prints its figures (served, rejected by kind, peak backends, p50/p99); run with
//! `--nocapture` to see them. Skipped, loudly, where `haproxy` is not installed (`.ci/run`
//! installs it).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sluice::dev::TempPostgresOptions;

const BUDGET: usize = 20;
/// The scenarios share one Postgres of 40 connections and count every replica's sessions:
/// they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}
const POLL_MS: u64 = 200;
/// `rate_per_second` and `burst` of the tenant `metered`, for the whole cluster.
const METERED_RATE: usize = 30;

fn pg() {
    postgres_with(TempPostgresOptions {
        max_connections: 40,
        ..TempPostgresOptions::default()
    });
}

/// A scenario's start: `None` (skipped) without HAProxy; else this scenario's turn (hold the
/// guard) and a cluster of `replicas` (`running` of them started).
async fn scenario(
    replicas: usize,
    running: usize,
) -> Option<(tokio::sync::MutexGuard<'static, ()>, Cluster)> {
    if haproxy_missing() {
        return None;
    }
    let serial = serial().await;
    Some((serial, Cluster::new(replicas, running).await))
}

fn haproxy_missing() -> bool {
    let missing = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err();
    if missing {
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy; .ci/run does)");
    }
    missing
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replicas (by index, each with a fixed port) and HAProxy in front of them.
struct Cluster {
    dir: Dir,
    config: PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    haproxy: Child,
    front: u16,
    key: String,
    /// The key of `metered`, a tenant with a small rate ([`METERED_RATE`]).
    metered_key: String,
    admin: String,
    db: String,
}

impl Cluster {
    /// `slots` replica ports are configured in HAProxy; the first `start` are started.
    async fn new(slots: usize, start: usize) -> Cluster {
        pg();
        let db = database("").await;
        let (key, hash) = key("acme");
        let (metered_key, metered_hash) = common::key("metered");
        let (admin, admin_hash) = common::key("admin");
        let dir =
            std::env::temp_dir().join(format!("sluice-cluster-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pg_port, password) = {
            let pg = postgres().lock().unwrap();
            (pg.port(), pg.password().to_owned())
        };
        std::fs::write(dir.join("pg-password"), &password).unwrap();
        let config = dir.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"
                [server]
                listen = "127.0.0.1:${{REPLICA_PORT}}"
                shutdown_timeout_ms = 10000
                admin_keys = ["{admin_hash}"]

                [cluster]
                name = "test"
                advertise = "127.0.0.1:${{REPLICA_PORT}}"
                max_replicas = 6
                poll_interval_ms = {POLL_MS}

                [[upstreams]]
                name = "main"
                url = "postgres://postgres@127.0.0.1:{pg_port}/{db}?sslmode=disable"
                password_file = "pg-password"
                max_connections = {BUDGET}

                [[tenants]]
                id = "acme"
                api_keys = ["{hash}"]
                pool_size = {BUDGET}
                max_transaction_connections = 4
                rate_per_second = 100000
                burst = 100000
                max_waiting = 2000
                queue_timeout_ms = 8000

                [[tenants]]
                id = "metered"
                api_keys = ["{metered_hash}"]
                pool_size = 2
                rate_per_second = {METERED_RATE}
                burst = {METERED_RATE}
                "#
            ),
        )
        .unwrap();
        let ports: Vec<u16> = (0..slots)
            .map(|_| sluice::dev::free_port().unwrap())
            .collect();
        let front = sluice::dev::free_port().unwrap();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server r{i} 127.0.0.1:{p} check\n"))
            .collect();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 8000\n\
                 defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    \
                 retries 3\n    option redispatch\n    retry-on conn-failure empty-response\n\
                 frontend front\n    bind 127.0.0.1:{front}\n    default_backend replicas\n\
                 backend replicas\n    balance roundrobin\n    option httpchk GET /readyz\n    \
                 http-check expect status 200\n    timeout check 2s\n    default-server inter 200ms fall 3 rise 1\n{servers}"
            ),
        )
        .unwrap();
        let haproxy = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let mut cluster = Cluster {
            dir: Dir(dir),
            config,
            children: (0..slots).map(|_| None).collect(),
            ports,
            haproxy,
            front,
            key,
            metered_key,
            admin,
            db,
        };
        for i in 0..start {
            cluster.start(i);
        }
        for i in 0..start {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.0.join(format!("replica{i}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("REPLICA_PORT", self.ports[i].to_string())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    fn signal(&self, i: usize, signal: i32) {
        let child = self.children[i].as_ref().expect("running");
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    async fn kill(&mut self, i: usize) {
        self.signal(i, libc::SIGKILL);
        let mut child = self.children[i].take().unwrap();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
    }

    /// SIGTERM, then waits for the drain to finish.
    async fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGTERM);
        let mut child = self.children[i].take().unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            status.success(),
            "replica {i} drained and exited 0: {status}"
        );
    }

    fn client(&self, i: usize) -> Client {
        Client::new(&format!("http://127.0.0.1:{}", self.ports[i]))
    }

    /// Ready (it holds a share) within a generous deadline.
    async fn wait_ready(&self, i: usize) {
        let client = self.client(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.try_get("/readyz").await.map(|r| r.status) != Ok(200) {
            assert!(
                Instant::now() < deadline,
                "replica {i} did not get ready:\n{}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("replica{i}.log"))).unwrap_or_default()
    }

    /// The budget in force at replica `i` (admin view), if it answers.
    async fn budget(&self, i: usize) -> Option<u64> {
        self.children[i].as_ref()?;
        let auth = format!("Bearer {}", self.admin);
        let reply = tokio::time::timeout(
            Duration::from_secs(1),
            self.client(i).request(
                http::Method::GET,
                "/v1/admin/pools",
                &[("authorization", &auth)],
                Bytes::new(),
            ),
        )
        .await
        .ok()?;
        reply.json()["upstreams"][0]["budget"].as_u64()
    }

    /// Waits until replica `i` sees `members` members, each with its advertised address
    /// (admin view), within a generous deadline.
    async fn wait_members(&self, i: usize, members: usize) {
        let auth = format!("Bearer {}", self.admin);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let view = self
                .client(i)
                .request(
                    http::Method::GET,
                    "/v1/admin/pools",
                    &[("authorization", &auth)],
                    Bytes::new(),
                )
                .await
                .json();
            let seen = view["upstreams"][0]["cluster"]["members"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if seen.len() == members && seen.iter().all(|m| m["advertise"].is_string()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} did not see {members} members: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until HAProxy sends to all `running` replicas (its health checks may hold one out
    /// for a moment after a start): `running` begins in a row land on as many owners.
    /// Every one of the `running` replicas sees them all, and the front spreads requests
    /// over them.
    async fn wait_formed(&self, running: usize) {
        for i in 0..running {
            self.wait_members(i, running).await;
        }
        self.wait_balanced(running).await;
    }

    async fn wait_balanced(&self, running: usize) {
        let front = format!("http://127.0.0.1:{}", self.front);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ids = Vec::new();
            for _ in 0..running {
                let client = Client::new(&front);
                let begun = client.post("/v1/transactions", &self.key, &json!({})).await;
                assert_eq!(begun.status, 201, "{}", begun.text);
                ids.push(begun.json()["id"].as_str().unwrap().to_owned());
            }
            let owners: std::collections::BTreeSet<&str> = ids
                .iter()
                .map(|id| id.rsplit_once('.').unwrap().1)
                .collect();
            for id in &ids {
                let path = format!("/v1/transactions/{id}/rollback");
                let ended = Client::new(&front).post(&path, &self.key, &json!({})).await;
                assert_eq!(ended.status, 200, "{}", ended.text);
            }
            if owners.len() == running {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not reach {running} replicas"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A counter summed over the running replicas' `/metrics`.
    async fn metric_sum(&self, name: &str) -> f64 {
        let auth = format!("Bearer {}", self.admin);
        let mut sum = 0.0;
        for i in 0..self.ports.len() {
            if self.children[i].is_none() {
                continue;
            }
            let text = self
                .client(i)
                .request(
                    http::Method::GET,
                    "/metrics",
                    &[("authorization", &auth)],
                    Bytes::new(),
                )
                .await
                .text;
            sum += text
                .lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    }

    /// Sum of the budgets in force at the running replicas.
    async fn budgets(&self) -> Vec<Option<u64>> {
        let mut out = Vec::new();
        for i in 0..self.ports.len() {
            out.push(self.budget(i).await);
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
        unsafe { libc::kill(self.haproxy.id() as i32, libc::SIGKILL) };
        let _ = self.haproxy.wait();
    }
}

/// Counts the replicas' data sessions every few milliseconds until stopped.
struct Sampler {
    peak: Arc<AtomicI64>,
    samples: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    async fn start(db: &str) -> Sampler {
        let db = db.to_owned();
        let peak = Arc::new(AtomicI64::new(0));
        let samples = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, st) = (peak.clone(), samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let sql =
                "select count(*) from pg_stat_activity where application_name like 'sluice/%'";
            // Reconnects when the server restarts under it.
            let mut client: Option<tokio_postgres::Client> = None;
            while !st.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client =
                        match tokio_postgres::connect(&pg_url(&db), tokio_postgres::NoTls).await {
                            Ok((c, connection)) => {
                                tokio::spawn(connection);
                                Some(c)
                            }
                            Err(_) => None,
                        };
                }
                if let Some(c) = &client
                    && let Ok(row) = c.query_one(sql, &[]).await
                {
                    let n: i64 = row.get(0);
                    p.fetch_max(n, Ordering::Relaxed);
                    s.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Sampler {
            peak,
            samples,
            stop,
            task,
        }
    }

    async fn finish(self) -> (i64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.peak.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: usize,
    /// Rejections by status and kind (`502 proxy` for HAProxy's own, `transport` for a
    /// connection that failed).
    rejected: BTreeMap<String, usize>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, outcome: Result<(u16, String), String>, took: Duration) {
        match outcome {
            Ok((200, _)) => {
                self.ok += 1;
                self.latencies.push(took);
            }
            Ok((status, kind)) => {
                *self.rejected.entry(format!("{status} {kind}")).or_default() += 1
            }
            Err(_) => *self.rejected.entry("transport".into()).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
        self.latencies.extend(other.latencies);
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    /// Stops `sampler`, prints the scenario's figures, and checks that the data backends never
    /// passed the budget; the number of samples.
    async fn report(&mut self, scenario: &str, sampler: Sampler) -> i64 {
        let (peak, samples) = sampler.finish().await;
        let (p50, p99) = (self.percentile(0.5), self.percentile(0.99));
        println!(
            "cluster figures [{scenario}]: served {}, rejected {:?}, peak data backends {peak} (budget {BUDGET}, {samples} samples), p50 {:.1} ms, p99 {:.1} ms",
            self.ok,
            self.rejected,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        );
        assert!(
            peak <= BUDGET as i64,
            "peak {peak} data backends over the budget {BUDGET}"
        );
        samples
    }

    /// Every rejection is one a client retries: 429/503 from sluice (nothing ran).
    fn only_retryable(&self) -> bool {
        self.rejected
            .keys()
            .all(|k| k.starts_with("503 ") || k.starts_with("429 "))
    }
}

type Http = HyperClient<HttpConnector, Full<Bytes>>;

fn http() -> Http {
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

async fn query(http: &Http, front: u16, key: &str, sql: &str) -> Result<(u16, String), String> {
    let request = Request::post(format!("http://127.0.0.1:{front}/v1/query"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({ "sql": sql }).to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), http.request(request))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let kind = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["kind"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            if status == 200 {
                String::new()
            } else {
                "proxy".into()
            }
        });
    Ok((status, kind))
}

/// `clients` tasks, each sending queries one after another until `until`.
fn load(
    front: u16,
    key: &str,
    clients: usize,
    sql: &'static str,
    until: Instant,
) -> tokio::task::JoinHandle<Tally> {
    let key = key.to_owned();
    tokio::spawn(async move {
        let http = http();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (http, key) = (http.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let start = Instant::now();
                    let outcome = query(&http, front, &key, sql).await;
                    tally.add(outcome, start.elapsed());
                    if Instant::now() >= until {
                        return tally;
                    }
                }
            }));
        }
        let mut all = Tally::default();
        for task in tasks {
            all.merge(task.await.unwrap());
        }
        all
    })
}

/// A sampler of the data backends, and `clients` clients sending `select pg_sleep(0.01)`
/// through the front for `secs` seconds.
async fn sampled_load(
    cluster: &Cluster,
    clients: usize,
    secs: u64,
) -> (Sampler, tokio::task::JoinHandle<Tally>) {
    let sampler = Sampler::start(&cluster.db).await;
    let until = Instant::now() + Duration::from_secs(secs);
    let burst = load(
        cluster.front,
        &cluster.key,
        clients,
        "select pg_sleep(0.01)",
        until,
    );
    (sampler, burst)
}

/// Waits until the running replicas' budgets add up to the cluster budget, each holding its
/// share; returns how long that took.
async fn until_settled(cluster: &Cluster, running: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let budgets = cluster.budgets().await;
        let live: Vec<u64> = budgets.iter().flatten().copied().collect();
        let sum: u64 = live.iter().sum();
        if live.len() == running
            && sum == BUDGET as u64
            && live.iter().all(|&b| b >= (BUDGET / running) as u64)
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "budgets did not settle: {budgets:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_through_haproxy_never_exceeds_the_cluster_budget_across_kill_restart_and_join() {
    let Some((_serial, mut cluster)) = scenario(4, 3).await else {
        return;
    };
    until_settled(&cluster, 3, Duration::from_secs(20)).await;
    let (sampler, burst) = sampled_load(&cluster, 2_000, 8).await;

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.kill(1).await;
    let killed = Instant::now();
    let grown = until_settled(&cluster, 2, Duration::from_secs(20)).await;
    println!(
        "cluster figures [kill -9]: survivors hold the whole budget {:.0} ms after the kill",
        killed.elapsed().as_secs_f64() * 1e3
    );
    let _ = grown;
    cluster.start(3);
    cluster.start(1);
    cluster.wait_ready(3).await;
    cluster.wait_ready(1).await;
    let mut tally = burst.await.unwrap();
    until_settled(&cluster, 4, Duration::from_secs(20)).await;
    let samples = tally.report("burst, kill -9, restart, join", sampler).await;
    assert!(samples > 100, "the sampler ran ({samples} samples)");
    assert!(
        tally.ok > 1_000,
        "most of the burst was served ({})",
        tally.ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_fails_nothing_but_retryable_rejections() {
    let Some((_serial, mut cluster)) = scenario(3, 3).await else {
        return;
    };
    until_settled(&cluster, 3, Duration::from_secs(20)).await;
    let sampler = Sampler::start(&cluster.db).await;
    let until = Instant::now() + Duration::from_secs(600);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let front = cluster.front;
    let key = cluster.key.clone();
    // Successes so far, so the load can run on past the restarts until enough was served: on a
    // quiet machine the three restarts can be over in about a second.
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let (key, mut done, served) = (key.clone(), done_rx.clone(), served.clone());
            tokio::spawn(async move {
                let http = http();
                let mut tally = Tally::default();
                while !*done.borrow_and_update() && Instant::now() < until {
                    let start = Instant::now();
                    let outcome = query(&http, front, &key, "select pg_sleep(0.005)").await;
                    if matches!(outcome, Ok((200, _))) {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tally.add(outcome, start.elapsed());
                }
                tally
            })
        })
        .collect();
    for i in 0..3 {
        cluster.stop(i).await;
        cluster.start(i);
        cluster.wait_ready(i).await;
    }
    until_settled(&cluster, 3, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while served.load(std::sync::atomic::Ordering::Relaxed) < 600 {
        assert!(
            Instant::now() < deadline,
            "the cluster stopped answering after the restarts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done_tx.send(true).unwrap();
    let mut tally = Tally::default();
    for client in clients {
        tally.merge(client.await.unwrap());
    }
    tally.report("rolling restart", sampler).await;
    assert!(
        tally.only_retryable(),
        "non-retryable failures: {:?}",
        tally.rejected
    );
    assert!(tally.ok > 500, "served {}", tally.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_replica_keeps_its_share_reserved_while_its_lock_is_held() {
    let Some((_serial, cluster)) = scenario(3, 3).await else {
        return;
    };
    until_settled(&cluster, 3, Duration::from_secs(20)).await;
    let before = cluster.budgets().await;
    let (sampler, burst) = sampled_load(&cluster, 200, 12).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.signal(2, libc::SIGSTOP);
    let stopped = Instant::now();
    let mut max_others = 0;
    while stopped.elapsed() < Duration::from_secs(10) {
        let others: u64 = [cluster.budget(0).await, cluster.budget(1).await]
            .iter()
            .flatten()
            .sum();
        max_others = max_others.max(others);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.signal(2, libc::SIGCONT);
    let mut tally = burst.await.unwrap();
    tally.report("SIGSTOP 10 s", sampler).await;
    let reserved = before[2].unwrap();
    assert!(
        max_others + reserved <= BUDGET as u64,
        "the survivors took the stopped replica's share: {max_others} + {reserved}"
    );
    until_settled(&cluster, 3, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_under_load_keeps_the_cap_and_the_replicas_rejoin() {
    let Some((_serial, cluster)) = scenario(3, 3).await else {
        return;
    };
    until_settled(&cluster, 3, Duration::from_secs(20)).await;
    let (sampler, burst) = sampled_load(&cluster, 200, 6).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    tokio::task::spawn_blocking(|| postgres().lock().unwrap().restart())
        .await
        .unwrap()
        .expect("Postgres restarts");
    let restarted = Instant::now();
    until_settled(&cluster, 3, Duration::from_secs(30)).await;
    println!(
        "cluster figures [Postgres restart]: every replica holds its share again {:.0} ms after the restart",
        restarted.elapsed().as_secs_f64() * 1e3
    );
    let mut tally = burst.await.unwrap();
    tally.report("Postgres restart", sampler).await;
    assert!(tally.ok > 100, "served {}", tally.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_calls_landing_on_another_replica_reach_the_owner_or_name_it_gone() {
    let Some((_serial, mut cluster)) = scenario(3, 3).await else {
        return;
    };
    cluster.wait_formed(3).await;
    let key = cluster.key.clone();
    // A connection per request: HAProxy keeps a client's keep-alive connection on one server.
    let front_url = format!("http://127.0.0.1:{}", cluster.front);
    let front = || Client::new(&front_url);
    let created = front()
        .query(&key, "create table moves (tx int, step int)", json!([]))
        .await;
    assert_eq!(created.status, 200, "{}", created.text);

    // Round-robin spreads the begins over the replicas (five requests per transaction, so
    // the begins rotate) and each later call over the others.
    let forwarded_before = cluster
        .metric_sum("sluice_transaction_calls_forwarded_total")
        .await;
    let started = Instant::now();
    let mut owners = std::collections::BTreeSet::new();
    const TRANSACTIONS: i64 = 12;
    for t in 0..TRANSACTIONS {
        let begun = front().post("/v1/transactions", &key, &json!({})).await;
        assert_eq!(begun.status, 201, "{}", begun.text);
        let id = begun.json()["id"].as_str().unwrap().to_owned();
        owners.insert(
            id.rsplit_once('.')
                .expect("the id names its owner")
                .1
                .to_owned(),
        );
        let call = |action: &str| format!("/v1/transactions/{id}/{action}");
        for step in 0..2 {
            let inserted = front()
                .post(
                    &call("query"),
                    &key,
                    &json!({ "sql": "insert into moves values ($1, $2)", "params": [t, step] }),
                )
                .await;
            assert_eq!(inserted.status, 200, "{}", inserted.text);
        }
        let batch = front()
            .post(
                &call("batch"),
                &key,
                &json!({ "statements": [
                    { "sql": "select count(*)::int as n from moves where tx = $1", "params": [t] }
                ] }),
            )
            .await;
        assert_eq!(batch.status, 200, "{}", batch.text);
        assert!(batch.text.contains("\"n\":2"), "{}", batch.text);
        let (end, command) = if t % 2 == 0 {
            ("commit", "COMMIT")
        } else {
            ("rollback", "ROLLBACK")
        };
        let ended = front().post(&call(end), &key, &json!({})).await;
        assert_eq!(ended.status, 200, "{}", ended.text);
        assert_eq!(ended.json()["command"], command, "{}", ended.text);
    }
    let took = started.elapsed();
    let rows = front()
        .query(
            &key,
            "select tx, count(*)::int as n from moves group by tx order by tx",
            json!([]),
        )
        .await
        .rows();
    let expected: Vec<Value> = (0..TRANSACTIONS)
        .filter(|t| t % 2 == 0)
        .map(|t| json!({ "tx": t, "n": 2 }))
        .collect();
    assert_eq!(
        rows, expected,
        "committed transactions' rows, and only theirs"
    );
    let forwarded = cluster
        .metric_sum("sluice_transaction_calls_forwarded_total")
        .await
        - forwarded_before;
    let calls = (TRANSACTIONS * 4) as f64;
    println!(
        "cluster figures [transactions across replicas]: {TRANSACTIONS} transactions, {calls} calls \
         through HAProxy, {forwarded} forwarded to their owner, {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(owners.len(), 3, "begins reached every replica: {owners:?}");
    assert!(
        forwarded >= calls / 3.0,
        "most calls land away from their owner: {forwarded} of {calls} forwarded"
    );

    // The owner dies: the transaction is gone, and a call through another replica says why.
    let direct = cluster.client(0);
    let begun = direct.post("/v1/transactions", &key, &json!({})).await;
    assert_eq!(begun.status, 201, "{}", begun.text);
    let id = begun.json()["id"].as_str().unwrap().to_owned();
    let owner = id.rsplit_once('.').unwrap().1.to_owned();
    let insert = json!({ "sql": "insert into moves values (-1, 0)" });
    let path = format!("/v1/transactions/{id}/query");
    let through_other = cluster.client(1).post(&path, &key, &insert).await;
    assert_eq!(through_other.status, 200, "{}", through_other.text);
    // A call already forwarded is never forwarded again: no loops, whatever the views say.
    let auth = format!("Bearer {key}");
    let marked = cluster
        .client(1)
        .request(
            http::Method::POST,
            &path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("sluice-forwarded-by", "0123456789abcdef"),
            ],
            insert.to_string(),
        )
        .await;
    assert_eq!(marked.status, 404, "{}", marked.text);
    assert_eq!(marked.kind(), "transaction_not_found", "{}", marked.text);
    cluster.kill(0).await;
    let killed = Instant::now();
    let mut reasons = Vec::new();
    loop {
        let reply = cluster.client(1).post(&path, &key, &insert).await;
        assert_eq!(reply.status, 404, "{}", reply.text);
        assert_eq!(reply.kind(), "transaction_not_found", "{}", reply.text);
        let error = &reply.json()["error"];
        assert!(
            error["message"].as_str().unwrap().contains(&owner),
            "the message names the owner: {}",
            reply.text
        );
        let reason = error["reason"].as_str().unwrap().to_owned();
        assert!(
            reason == "owner_gone" || reason == "owner_unreachable",
            "{}",
            reply.text
        );
        if reasons.last() != Some(&reason) {
            reasons.push(reason.clone());
        }
        if reason == "owner_gone" {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the dead owner never left replica 1's view: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "cluster figures [owner killed]: answers {reasons:?}; owner_gone after {:.0} ms",
        killed.elapsed().as_secs_f64() * 1e3
    );
    let lost = front()
        .query(
            &key,
            "select count(*)::int as n from moves where tx = -1",
            json!([]),
        )
        .await
        .rows();
    assert_eq!(
        lost,
        vec![json!({ "n": 0 })],
        "the dead owner's work is rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_rate_holds_for_the_whole_cluster_not_per_replica() {
    let Some((_serial, mut cluster)) = scenario(3, 3).await else {
        return;
    };
    cluster.wait_formed(3).await;
    // Three times the burst, spread over the replicas by round-robin (a connection each):
    // each replica lets its third of the burst through, plus what refills meanwhile.
    let front = format!("http://127.0.0.1:{}", cluster.front);
    let metered_key = cluster.metered_key.clone();
    let burst = |n: usize| {
        let (front, key) = (front.clone(), metered_key.clone());
        async move {
            let started = Instant::now();
            let mut tally: BTreeMap<u16, usize> = BTreeMap::new();
            for _ in 0..n {
                let status = Client::new(&front).select_one_status(&key).await;
                *tally.entry(status).or_default() += 1;
            }
            (tally, started.elapsed())
        }
    };
    let (tally, took) = burst(3 * METERED_RATE).await;
    let ok = tally.get(&200).copied().unwrap_or(0);
    // The rate refills while the burst runs: at most METERED_RATE per second cluster-wide.
    let refill = (took.as_secs_f64() * METERED_RATE as f64).ceil() as usize;
    println!(
        "cluster figures [rate {METERED_RATE}/s, burst {METERED_RATE}, 3 replicas]: {tally:?} of {} in {:.0} ms",
        3 * METERED_RATE,
        took.as_secs_f64() * 1e3
    );
    assert!(
        ok >= METERED_RATE / 2 && ok <= METERED_RATE + refill + 3,
        "the cluster let {ok} through (burst {METERED_RATE}, refill {refill}): {tally:?}"
    );
    assert_eq!(
        tally.keys().copied().collect::<Vec<_>>(),
        vec![200, 429],
        "{tally:?}"
    );

    // One replica leaves: the two others re-divide the rate between them.
    cluster.kill(2).await;
    for i in 0..2 {
        cluster.wait_members(i, 2).await;
    }
    cluster.wait_balanced(2).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (tally, took) = burst(2 * METERED_RATE).await;
    let ok = tally.get(&200).copied().unwrap_or(0);
    let refill = (took.as_secs_f64() * METERED_RATE as f64).ceil() as usize;
    println!(
        "cluster figures [rate {METERED_RATE}/s after a replica left, 2 replicas]: {tally:?} in {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(
        ok >= METERED_RATE / 2 && ok <= METERED_RATE + refill + 3,
        "two replicas let {ok} through (burst {METERED_RATE}, refill {refill}): {tally:?}"
    );
}
