//! TLS on both hops, with certificates generated here (rcgen):
//!
//! - clients → gateway: HTTPS over HTTP/1.1 and HTTP/2 (ALPN), 100 concurrent requests on one
//!   HTTP/2 connection, TLS 1.1 and plain HTTP refused on the TLS port, a stalled handshake
//!   dropped, and a certificate reload that new connections see while old ones keep working;
//! - gateway → Postgres (started with `ssl=on` and `hostssl` only): `verify-full`, `verify-ca`,
//!   `require` and `disable`, with errors that say what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use sluice::dev::{DevCa, TempPostgres};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{name}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A gateway serving HTTPS (and plain HTTP beside it) with a certificate for localhost.
struct TlsGateway {
    https: std::net::SocketAddr,
    http: std::net::SocketAddr,
    key: String,
    ca: DevCa,
    dir: PathBuf,
    reload: mpsc::Sender<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), sluice::server::RunError>>,
}

impl TlsGateway {
    async fn start() -> TlsGateway {
        let db = database("").await;
        let (key, hash) = key("acme");
        let dir = temp_dir("gateway");
        let ca = DevCa::new("test CA").unwrap();
        let cert = ca.issue(&["localhost"], 1).unwrap();
        std::fs::write(dir.join("cert.pem"), &cert.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &cert.key_pem).unwrap();
        let toml = config(&db, &hash, "", "").replace(
            "[server]",
            &format!(
                "[server]\ntls = {{ cert = \"{}\", key = \"{}\", listen = \"127.0.0.1:0\", handshake_timeout_ms = 500 }}",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            ),
        );
        let config = sluice::config::Config::from_toml(&toml, Path::new(".")).unwrap();
        let tls = config.server.tls.clone().unwrap();
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http, https) = (plain.local_addr().unwrap(), secure.local_addr().unwrap());
        let listeners = vec![
            sluice::server::Listener {
                tcp: plain,
                kind: sluice::server::ListenerKind::Http,
            },
            sluice::server::Listener {
                tcp: secure,
                kind: sluice::server::ListenerKind::Https(
                    sluice::server::tls_acceptor(&tls).unwrap(),
                ),
            },
        ];
        let (reload, reloads) = mpsc::channel(4);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = sluice::server::RunOptions {
            reload: Some(reloads),
            config_path: None,
        };
        let task = tokio::spawn(sluice::server::run_with(
            listeners,
            config,
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        let gateway = TlsGateway {
            https,
            http,
            key,
            ca,
            dir,
            reload,
            stop: Some(stop),
            task,
        };
        wait_until("the gateway answers", async || {
            Client::new(&format!("http://{http}"))
                .try_get("/healthz")
                .await
                .is_ok()
        })
        .await;
        gateway
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    async fn connect(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.https).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.client_config(alpn));
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake")
    }

    fn query_request(&self, sql: &str) -> http::Request<Full<Bytes>> {
        http::Request::post("https://localhost/v1/query")
            .header("authorization", format!("Bearer {}", self.key))
            .body(Full::new(Bytes::from(json!({ "sql": sql }).to_string())))
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The serial number of a DER certificate (SEQUENCE { SEQUENCE { [0] version, INTEGER serial … } }).
fn serial_of(der: &[u8]) -> u64 {
    fn header(der: &[u8], at: usize) -> (usize, usize) {
        let first = der[at + 1] as usize;
        if first < 0x80 {
            (at + 2, first)
        } else {
            let bytes = first & 0x7f;
            let len = der[at + 2..at + 2 + bytes]
                .iter()
                .fold(0usize, |n, b| n << 8 | *b as usize);
            (at + 2 + bytes, len)
        }
    }
    let (tbs, _) = header(der, 0);
    let (mut at, _) = header(der, tbs);
    if der[at] == 0xa0 {
        let (content, len) = header(der, at);
        at = content + len;
    }
    let (content, len) = header(der, at);
    der[content..content + len]
        .iter()
        .fold(0u64, |n, b| n << 8 | *b as u64)
}

fn peer_serial(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> u64 {
    serial_of(stream.get_ref().1.peer_certificates().unwrap()[0].as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_http2_by_alpn() {
    let gateway = TlsGateway::start().await;
    // HTTP/1.1
    let stream = gateway.connect(&[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(gateway.query_request("select 1 as one"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["rows"],
        json!([{"one": 1}])
    );

    // HTTP/2: 100 concurrent requests on one connection.
    let stream = gateway.connect(&[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let requests: Vec<_> = (0..100)
        .map(|i| {
            let mut sender = sender.clone();
            let request = gateway.query_request(&format!("select {i} as n, pg_sleep(0.01)"));
            async move {
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.version(), http::Version::HTTP_2);
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
                )
            }
        })
        .collect();
    for (i, (status, body)) in futures::future::join_all(requests)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rows"][0]["n"], i);
    }
    // The plain listener serves beside it.
    let plain = Client::new(&format!("http://{}", gateway.http))
        .query(&gateway.key, "select 2 as two", json!([]))
        .await;
    assert_eq!(plain.rows(), vec![json!({"two": 2})]);
    gateway.stop().await;
}

/// A TLS 1.1 ClientHello (TLS_RSA_WITH_AES_128_CBC_SHA, no extensions), as an old client sends.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]);
    hello.push(0);
    hello.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]);
    let mut handshake = vec![0x01, 0, (hello.len() >> 8) as u8, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![
        0x16,
        0x03,
        0x01,
        (handshake.len() >> 8) as u8,
        handshake.len() as u8,
    ];
    record.extend_from_slice(&handshake);
    record
}

async fn read_some(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_plain_http_and_stalled_handshakes_are_refused() {
    let gateway = TlsGateway::start().await;
    // TLS 1.1: an alert (record type 21), never a ServerHello (22).
    let mut stream = TcpStream::connect(gateway.https).await.unwrap();
    stream.write_all(&tls11_client_hello()).await.unwrap();
    let answer = read_some(&mut stream).await;
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "TLS 1.1 got {answer:?}"
    );
    // Plain HTTP to the TLS port: no HTTP answer.
    let mut stream = TcpStream::connect(gateway.https).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_some(&mut stream).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "{answer:?}"
    );
    // A client that connects and says nothing is dropped at the handshake timeout (500 ms).
    let mut stalled = TcpStream::connect(gateway.https).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled connection was closed"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_serves_new_connections_while_old_ones_continue() {
    let gateway = TlsGateway::start().await;
    let old = gateway.connect(&[b"http/1.1"]).await;
    assert_eq!(peer_serial(&old), 1);
    let (mut old_sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(old))
            .await
            .unwrap();
    tokio::spawn(connection);
    assert_eq!(
        old_sender
            .send_request(gateway.query_request("select 1"))
            .await
            .unwrap()
            .status(),
        200
    );

    let renewed = gateway.ca.issue(&["localhost"], 2).unwrap();
    std::fs::write(gateway.dir.join("cert.pem"), &renewed.cert_pem).unwrap();
    std::fs::write(gateway.dir.join("key.pem"), &renewed.key_pem).unwrap();
    gateway.reload.send(()).await.unwrap();
    wait_until("the new certificate served", async || {
        peer_serial(&gateway.connect(&[b"http/1.1"]).await) == 2
    })
    .await;
    // The connection opened before the reload still works. (Ready first: the client takes the
    // next request only once it has seen the end of the previous response.)
    old_sender.ready().await.unwrap();
    assert_eq!(
        old_sender
            .send_request(gateway.query_request("select 2"))
            .await
            .unwrap()
            .status(),
        200
    );

    // A broken certificate is refused and the current one kept.
    std::fs::write(gateway.dir.join("cert.pem"), "not a certificate").unwrap();
    gateway.reload.send(()).await.unwrap();
    // A refused reload changes nothing that can be observed (the point of the check), so it
    // is given time to be (wrongly) applied before the certificate is looked at.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(peer_serial(&gateway.connect(&[b"http/1.1"]).await), 2);
    gateway.stop().await;
}

/// A Postgres that accepts only TLS connections (`hostssl`), with a certificate for localhost.
struct TlsPostgres {
    cluster: TempPostgres,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
}

fn tls_postgres() -> &'static std::sync::Mutex<TlsPostgres> {
    static SERVER: std::sync::OnceLock<std::sync::Mutex<TlsPostgres>> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let ca = DevCa::new("postgres CA").unwrap();
        let cert = ca.issue(&["localhost"], 7).unwrap();
        let dir = temp_dir("postgres");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        let other_ca_file = dir.join("other-ca.pem");
        std::fs::write(&other_ca_file, DevCa::new("someone else").unwrap().cert_pem).unwrap();
        let options = tls_postgres_options(
            cert,
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        );
        let cluster = TempPostgres::start(options).unwrap();
        std::sync::Mutex::new(TlsPostgres {
            cluster,
            ca_file,
            other_ca_file,
        })
    })
}

/// A config whose upstream URL is `host` with `query` (sslmode and friends).
fn upstream_config(host: &str, query: &str) -> (String, String) {
    let server = tls_postgres().lock().unwrap();
    let (key, hash) = key("acme");
    let url = format!(
        "postgres://postgres:{}@{host}:{}/postgres?{query}",
        server.cluster.password(),
        server.cluster.port()
    );
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"main\"\nurl = \"{url}\"\nmax_connections = 5\nconnect_timeout_ms = 3000\n[[tenants]]\nid = \"acme\"\napi_keys = [\"{hash}\"]\npool_size = 2\n"
    );
    (toml, key)
}

/// What `sluice check` says about a config.
fn check(toml: &str) -> (bool, String) {
    let dir = temp_dir("check");
    let path = dir.join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_with_the_right_ca_and_host_and_uses_tls() {
    let ca = tls_postgres().lock().unwrap().ca_file.display().to_string();
    let (toml, key) = upstream_config(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let gateway = Gateway::start(&toml).await;
    let reply = gateway
        .client
        .query(
            &key,
            "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()",
            json!([]),
        )
        .await;
    let row = &reply.rows()[0];
    assert_eq!(row["ssl"], true);
    assert!(
        row["version"].as_str().unwrap().starts_with("TLSv1."),
        "{row}"
    );
    // Cancel requests travel over TLS too: an abandoned statement is cancelled.
    let body = json!({"sql": "select pg_sleep(30) /* tls cancel */"});
    let stream = send_raw(gateway.addr, &key, "/v1/query", &body).await;
    // This Postgres takes only TLS, so it is watched through the gateway.
    let running = async || {
        gateway
            .client
            .query(&key, "select count(*) from pg_stat_activity where query like '%/* tls cancel */%' and state = 'active' and pid <> pg_backend_pid()", json!([]))
            .await
            .rows()[0]["count"]
            .clone()
    };
    wait_until("the statement runs", async || running().await == "1").await;
    drop(stream);
    wait_until("the statement cancelled over TLS", async || {
        running().await == "0"
    })
    .await;
    gateway.stop().await;
    let (ok, output) = check(&toml);
    assert!(ok, "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_certificate_does_not_list_fails_clearly() {
    let ca = tls_postgres().lock().unwrap().ca_file.display().to_string();
    let (toml, key) = upstream_config(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let (ok, output) = check(&toml);
    assert!(!ok);
    assert!(
        output.contains("does not match host name \"127.0.0.1\""),
        "{output}"
    );
    assert!(
        output.contains("verify-ca"),
        "says what to change: {output}"
    );
    let gateway = Gateway::start(&toml).await;
    assert_status(
        &gateway.client.query(&key, "select 1", json!([])).await,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "upstream_unavailable",
    );
    gateway.stop().await;
    // verify-ca checks the chain only: the same host works.
    let (toml, key) = upstream_config("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    let gateway = Gateway::start(&toml).await;
    still_serves(&gateway, &key).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_fails_clearly() {
    let other = tls_postgres()
        .lock()
        .unwrap()
        .other_ca_file
        .display()
        .to_string();
    let (toml, _) = upstream_config(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    );
    let (ok, output) = check(&toml);
    assert!(!ok);
    assert!(
        output.contains("not signed by a trusted CA") && output.contains("sslrootcert"),
        "{output}"
    );
    // Without sslrootcert, the public roots do not know this CA either.
    let (toml, _) = upstream_config("localhost", "sslmode=verify-full");
    let (ok, output) = check(&toml);
    assert!(
        !ok && output.contains("not signed by a trusted CA"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_and_disable_is_refused_by_a_tls_only_server() {
    let (toml, key) = upstream_config("127.0.0.1", "sslmode=require");
    let gateway = Gateway::start(&toml).await;
    let reply = gateway
        .client
        .query(
            &key,
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            json!([]),
        )
        .await;
    assert_eq!(reply.rows()[0]["ssl"], true);
    gateway.stop().await;

    let (toml, key) = upstream_config("127.0.0.1", "sslmode=disable");
    let (ok, output) = check(&toml);
    assert!(!ok);
    assert!(
        output.contains("accepts only TLS connections") && output.contains("sslmode=require"),
        "{output}"
    );
    let gateway = Gateway::start(&toml).await;
    assert_status(
        &gateway.client.query(&key, "select 1", json!([])).await,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "upstream_unavailable",
    );
    gateway.stop().await;
}
