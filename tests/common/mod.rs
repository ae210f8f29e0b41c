//! Test harness: one ephemeral Postgres per test binary (the same code as `sluice dev`), a
//! database per test, gateways started in-process on free ports, and a plain HTTP client.
//! Nothing here mocks Postgres or HTTP.

#![allow(dead_code)]

mod admin;
mod observe;
mod tx;
mod wait;

// Every test binary compiles this harness but uses only part of it.
#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use observe::*;
#[allow(unused_imports)]
pub use tx::*;
#[allow(unused_imports)]
pub use wait::*;

use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sluice::auth::KeyHash;
use sluice::config::Config;
use sluice::dev::{TempPostgres, TempPostgresOptions};
use sluice::server::{Listener, ListenerKind};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
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

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    /// Reads a whole response.
    pub async fn read(response: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.headers.get("retry-after")?.to_str().ok()?.parse().ok()
    }

    /// The rows of a successful query.
    pub fn rows(&self) -> Vec<Value> {
        assert_eq!(self.status, 200, "{}", self.text);
        self.json()["rows"].as_array().cloned().unwrap_or_default()
    }
}

/// A keep-alive HTTP client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    base: Arc<str>,
}

impl Client {
    pub fn new(base: &str) -> Client {
        let inner = HyperClient::builder(TokioExecutor::new()).build_http();
        Client {
            inner,
            base: base.into(),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_request(method, path, headers, body.into())
            .await
            .expect("HTTP request")
    }

    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = self
            .inner
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        Reply::read(response).await
    }

    pub async fn try_get(&self, path: &str) -> Result<Reply, String> {
        self.try_request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// POST a JSON body with a key.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {key}");
        self.request(
            Method::POST,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// `/v1/query` with `sql` and `params`.
    pub async fn query(&self, key: &str, sql: &str, params: Value) -> Reply {
        self.post("/v1/query", key, &json!({ "sql": sql, "params": params }))
            .await
    }

    /// The status of `select 1` with `key`: whether the key is accepted and a query runs.
    pub async fn select_one_status(&self, key: &str) -> u16 {
        self.query(key, "select 1", json!([])).await.status
    }
}

/// The single value of a one-row, one-column result of `sql`.
pub async fn single_value(c: impl AsRef<Client>, key: &str, sql: &str) -> Value {
    let reply = c.as_ref().query(key, sql, json!([])).await;
    let rows = reply.rows();
    assert_eq!(rows.len(), 1, "{sql}: {}", reply.text);
    rows[0]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone()
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

pub fn assert_status(reply: &Reply, status: StatusCode, kind: &str) {
    assert_eq!(reply.status, status.as_u16(), "{}", reply.text);
    if !kind.is_empty() {
        assert_eq!(reply.kind(), kind, "{}", reply.text);
    }
}

/// Sends a JSON `POST` to `path` on a raw socket of its own and returns the socket unread: the
/// caller decides when the client vanishes (drops it) or reads the answer.
pub async fn send_raw(
    addr: std::net::SocketAddr,
    key: &str,
    path: &str,
    body: &Value,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
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

/// One request on a connection of its own that closes after the answer (`connection: close`):
/// as a cold serverless instance sends it, and a connection the gateway never parks.
pub async fn cold_request(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway")
        .header("connection", "close");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Reply::read(response).await
}
