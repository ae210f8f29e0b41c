//! Test harness: one ephemeral Postgres per test binary (the same code as `sluice dev`), a
//! database per test, gateways started in-process on free ports, and a plain HTTP client.
//! Nothing here mocks Postgres or HTTP. Beside it: the HTTP client and one-off requests
//! (`client`), waiting for observable conditions instead of sleeping (`wait`), what Postgres
//! shows of the gateway (`observe`), the operator's side — admin keys, scrapes, the admin view,
//! reloads (`admin`) — and the interactive-transaction routes (`tx`).

#![allow(dead_code)]

mod admin;
mod client;
mod observe;
mod tx;
mod wait;

// Every test binary compiles this harness but uses only part of it.
#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use observe::*;
#[allow(unused_imports)]
pub use tx::*;
#[allow(unused_imports)]
pub use wait::*;

use std::path::Path;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::auth::KeyHash;
use sluice::config::Config;
use sluice::dev::{TempPostgres, TempPostgresOptions};
use sluice::server::{Listener, ListenerKind};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The cluster shared by the tests of one binary. Its watchdog removes it when the binary exits.
pub fn postgres() -> &'static Mutex<TempPostgres> {
    postgres_with(TempPostgresOptions {
        max_connections: 60,
        ..TempPostgresOptions::default()
    })
}

/// The binary's cluster, started with `options` by the first caller.
pub fn postgres_with(options: TempPostgresOptions) -> &'static Mutex<TempPostgres> {
    static CLUSTER: OnceLock<Mutex<TempPostgres>> = OnceLock::new();
    CLUSTER.get_or_init(|| match TempPostgres::start(options) {
        Ok(cluster) => Mutex::new(cluster),
        Err(error) => panic!("cannot start the test Postgres: {error}"),
    })
}

pub fn pg_port() -> u16 {
    postgres().lock().unwrap().port()
}

pub fn pg_url(database: &str) -> String {
    postgres().lock().unwrap().url(database)
}

/// A direct connection (tokio-postgres), for setting up and for checking what the gateway did.
pub async fn direct(database: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(database), tokio_postgres::NoTls)
        .await
        .expect("direct connection to the test Postgres");
    tokio::spawn(connection);
    client
}

/// A fresh database for one test, with `setup` run in it.
pub async fn database(setup: &str) -> String {
    static COUNTER: LazyLock<Mutex<u32>> = LazyLock::new(|| Mutex::new(0));
    let n = {
        let mut counter = COUNTER.lock().unwrap();
        *counter += 1;
        *counter
    };
    let name = format!("t{}_{n}", std::process::id());
    direct("postgres")
        .await
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    if !setup.is_empty() {
        direct(&name).await.batch_execute(setup).await.unwrap();
    }
    name
}

/// Backends of the gateway (any tenant) in `pg_stat_activity`.
pub async fn gateway_backends(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "select count(*) from pg_stat_activity where application_name like 'sluice/%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A key and its config line.
pub fn key(name: &str) -> (String, String) {
    let key = format!("test-key-{name}-{:016x}", rand::random::<u64>());
    let hash = KeyHash::of_key(&key).to_string();
    (key, hash)
}

/// A gateway running in this test's runtime.
pub struct Gateway {
    pub addr: std::net::SocketAddr,
    pub client: Client,
    /// Sends a reload request, as SIGHUP does (for gateways started from a file).
    pub reload: Option<tokio::sync::mpsc::Sender<()>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), sluice::server::RunError>>>,
}

impl Gateway {
    pub async fn start(toml: &str) -> Gateway {
        Gateway::try_start(toml).await.expect("gateway starts")
    }

    /// Starts a gateway; `Err` if `run` returns an error within a few seconds (config refused).
    pub async fn try_start(toml: &str) -> Result<Gateway, String> {
        let config = Config::from_toml(toml, Path::new(".")).map_err(|e| e.to_string())?;
        Gateway::launch(config, sluice::server::RunOptions::default()).await
    }

    /// A gateway whose config is the file at `path`: it reloads it on request.
    pub async fn start_file(path: &Path) -> Gateway {
        let config = Config::from_file(path).expect("valid config");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let options = sluice::server::RunOptions {
            reload: Some(rx),
            config_path: Some(path.to_owned()),
        };
        let mut gateway = Gateway::launch(config, options)
            .await
            .expect("gateway starts");
        gateway.reload = Some(tx);
        gateway
    }

    async fn launch(
        config: Config,
        options: sluice::server::RunOptions,
    ) -> Result<Gateway, String> {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut task = tokio::spawn(sluice::server::run_with(
            vec![Listener {
                tcp,
                kind: ListenerKind::Http,
            }],
            config,
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        let client = Client::new(&format!("http://{addr}"));
        // Serving once /healthz answers; a refused config ends `run` first. Probed with a
        // client of its own, dropped after (closing its connection), so that the test starts
        // with no client connection open.
        let probe = Client::new(&format!("http://{addr}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if task.is_finished() {
                return match (&mut task).await {
                    Ok(Err(error)) => Err(error.to_string()),
                    other => Err(format!("gateway stopped: {other:?}")),
                };
            }
            if let Ok(Ok(reply)) =
                tokio::time::timeout(Duration::from_millis(500), probe.try_get("/healthz")).await
                && reply.status == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "gateway did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Gateway {
            addr,
            client,
            reload: None,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drains and waits for the gateway to stop.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("gateway stops")
                .expect("gateway task")
                .expect("gateway ran");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A single-upstream, single-tenant config for `database`; `tenant_extra` and `upstream_extra`
/// are TOML lines added to those tables.
pub fn config(database: &str, key_hash: &str, tenant_extra: &str, upstream_extra: &str) -> String {
    let pool_size = if tenant_extra.contains("pool_size") {
        ""
    } else {
        "pool_size = 4"
    };
    let max_connections = if upstream_extra.contains("max_connections") {
        ""
    } else {
        "max_connections = 10"
    };
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        shutdown_timeout_ms = 10000

        [[upstreams]]
        name = "main"
        url = "{url}"
        {max_connections}
        {upstream_extra}

        [[tenants]]
        id = "acme"
        api_keys = ["{key_hash}"]
        {pool_size}
        {tenant_extra}
        "#,
        url = pg_url(database),
    )
}

/// A database, a key and a gateway in front of it: the common start of a test.
pub async fn gateway_for(setup: &str, tenant_extra: &str) -> (Gateway, String, String) {
    let db = database(setup).await;
    let (key, hash) = key("acme");
    let gateway = Gateway::start(&config(&db, &hash, tenant_extra, "")).await;
    (gateway, key, db)
}

/// Asserts that `key` still gets a connection that runs a statement.
pub async fn still_serves(c: impl AsRef<Client>, key: &str) {
    assert_eq!(
        single_value(c, key, "select 1 as one").await,
        json!(1),
        "the gateway still serves"
    );
}

/// Options for a throwaway Postgres serving TLS with `cert` (`server.crt`/`server.key` in its
/// data folder), authenticating as `hba` says.
pub fn tls_postgres_options(cert: sluice::dev::DevCert, hba: &str) -> TempPostgresOptions {
    TempPostgresOptions {
        settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), "server.crt".into()),
            ("ssl_key_file".into(), "server.key".into()),
        ],
        hba: Some(hba.into()),
        files: vec![
            ("server.crt".into(), cert.cert_pem.into_bytes()),
            ("server.key".into(), cert.key_pem.into_bytes()),
        ],
        ..Default::default()
    }
}

/// A gateway started with `server::run` on the listeners its config names — the public one and
/// a `metrics_listen` one — rather than on a listener of the harness's.
pub struct ListeningGateway {
    pub api: Client,
    pub metrics: Client,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sluice::server::RunError>>,
}

impl ListeningGateway {
    /// `toml` plus `metrics_listen` on a free port; returns once both listeners answer.
    pub async fn start(toml: &str) -> ListeningGateway {
        let port = sluice::dev::free_port().unwrap();
        let toml = toml.replace(
            "[server]",
            &format!("[server]\nmetrics_listen = \"127.0.0.1:{port}\""),
        );
        let config = Config::from_toml(&toml, Path::new(".")).unwrap();
        let listeners = sluice::server::bind(&config).unwrap();
        let api = listeners[0].local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice::server::run(listeners, config, async move {
            let _ = stopped.await;
        }));
        let api = Client::new(&format!("http://{api}"));
        let metrics = Client::new(&format!("http://127.0.0.1:{port}"));
        wait_until("both listeners answer", async || {
            api.try_get("/healthz").await.is_ok() && metrics.try_get("/healthz").await.is_ok()
        })
        .await;
        ListeningGateway {
            api,
            metrics,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
