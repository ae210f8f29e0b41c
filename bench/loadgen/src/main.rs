//! The benchmark's own tools, driven by `bench/run`:
//!
//! - `http`: closed-loop HTTP load on sluice's `/v1/query` (keep-alive or a new connection, and
//!   optionally a new TLS handshake, per request), exact latency percentiles (HdrHistogram, ns)
//!   and errors by kind (`http_<status>_<kind>` from the error body, or the transport error).
//! - `pg`: the same closed loop over the Postgres protocol with tokio-postgres (used for the
//!   burst, where pgbench cannot count refused connections, and for idle connections).
//! - `stream`: reads a large result through sluice (NDJSON or whole JSON) and reports rows/s.
//! - `pgread`: reads the same query straight from Postgres (or PgBouncer) with tokio-postgres,
//!   text format (the simple query protocol), as the reference row rate.
//! - `idle`: opens N HTTP keep-alive connections, sends one query on each, holds them idle and
//!   reports the gateway's memory per connection.
//! - `monitor`: samples a role's backends in `pg_stat_activity` and a gateway's VmRSS every
//!   ~20 ms, and the CPU time of the gateway, of every Postgres process and of the machine.
//! - `wrap`: runs a command (pgbench) and reports its CPU time.
//! - `probe`: one request, for feature detection (status, content type, first bytes).
//!
//! Every loop is bounded by a duration or a count plus a hard deadline, and only ever talks to
//! the addresses it is given (bench/run gives it 127.0.0.1).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Arguments: `--name value` pairs and bare `--flag`s.

struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
    rest: Vec<String>,
}

impl Args {
    fn parse(raw: &[String]) -> Args {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut rest = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let a = &raw[i];
            if a == "--" {
                rest = raw[i + 1..].to_vec();
                break;
            }
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    values.insert(k.to_owned(), v.to_owned());
                } else if i + 1 < raw.len() && !raw[i + 1].starts_with("--") {
                    values.insert(name.to_owned(), raw[i + 1].clone());
                    i += 1;
                } else {
                    flags.push(name.to_owned());
                }
            }
            i += 1;
        }
        Args {
            values,
            flags,
            rest,
        }
    }
    fn str(&self, k: &str) -> String {
        self.values
            .get(k)
            .cloned()
            .unwrap_or_else(|| die(&format!("missing --{k}")))
    }
    fn opt(&self, k: &str) -> Option<String> {
        self.values.get(k).cloned()
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> T {
        match self.values.get(k) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| die(&format!("--{k}: not a number: {v}"))),
            None => default,
        }
    }
    fn flag(&self, k: &str) -> bool {
        self.flags.iter().any(|f| f == k)
    }
}

fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2)
}

fn write_out(args: &Args, value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap();
    match args.opt("out") {
        Some(path) => {
            std::fs::write(&path, text + "\n").unwrap_or_else(|e| die(&format!("{path}: {e}")))
        }
        None => println!("{text}"),
    }
}

fn cpu_self_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A small fast PRNG (xorshift64*), one per client.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 600_000_000_000, 3).unwrap()
}

fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
    json!({
        "count": h.len(),
        "mean": us(h.mean() as u64),
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
    })
}

/// What every load client returns.
struct ClientStats {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
    connects: u64,
}

impl ClientStats {
    fn new() -> ClientStats {
        ClientStats {
            hist: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            last_done: None,
            connects: 0,
        }
    }
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }
}

/// When a client records what it does: a duration-bound run (warm-up, then a measured window)
/// or a count-bound burst (every request, each client doing `requests` of them).
#[derive(Clone, Copy)]
struct Plan {
    start: Instant,
    measure_start: Instant,
    measure_end: Instant,
    /// Nothing runs past this, whatever happens.
    hard_deadline: Instant,
    requests_per_client: Option<u64>,
}

impl Plan {
    fn from_args(args: &Args) -> Plan {
        let start = Instant::now();
        let warmup = Duration::from_secs_f64(args.num("warmup", 0.0));
        let duration = Duration::from_secs_f64(args.num("duration", 10.0));
        let max = Duration::from_secs_f64(args.num("max-seconds", 120.0));
        let requests_per_client = args.opt("requests-per-client").map(|v| v.parse().unwrap());
        let measure_start = start + warmup;
        let measure_end = if requests_per_client.is_some() {
            start + max
        } else {
            measure_start + duration
        };
        Plan {
            start,
            measure_start,
            measure_end,
            hard_deadline: (measure_end + Duration::from_secs(30)).min(start + max),
            requests_per_client,
        }
    }
    fn keep_going(&self, done: u64, now: Instant) -> bool {
        match self.requests_per_client {
            Some(n) => done < n && now < self.hard_deadline,
            None => now < self.measure_end,
        }
    }
    fn counts(&self, began: Instant, ended: Instant) -> bool {
        began >= self.measure_start && ended <= self.measure_end
    }
}

fn summarize(mode: &str, args: &Args, plan: &Plan, clients: u64, stats: Vec<ClientStats>) -> Value {
    let mut hist = new_histogram();
    let mut ok = 0;
    let mut connects = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = plan.measure_start;
    for s in stats {
        hist.add(&s.hist).unwrap();
        ok += s.ok;
        connects += s.connects;
        for (k, v) in s.errors {
            *errors.entry(k).or_default() += v;
        }
        if let Some(t) = s.last_done {
            last = last.max(t);
        }
    }
    let window = if plan.requests_per_client.is_some() {
        last.saturating_duration_since(plan.measure_start)
            .as_secs_f64()
    } else {
        plan.measure_end
            .saturating_duration_since(plan.measure_start)
            .as_secs_f64()
    };
    let failed: u64 = errors.values().sum();
    json!({
        "mode": mode,
        "target": args.opt("url"),
        "clients": clients,
        "requests_per_client": plan.requests_per_client,
        "window_s": window,
        "ok": ok,
        "failed": failed,
        "errors": errors,
        "connects": connects,
        "throughput_rps": if window > 0.0 { ok as f64 / window } else { 0.0 },
        "latency_us": latency_json(&hist),
        "cpu_s": cpu_self_seconds(),
        "wall_s": plan.start.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Clone)]
struct HttpTarget {
    addr: String,
    host: String,
    path: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl HttpTarget {
    fn from_args(args: &Args) -> HttpTarget {
        let url = args.str("url");
        let (scheme, rest) = url
            .split_once("://")
            .unwrap_or_else(|| die("--url: no scheme"));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let tls = match scheme {
            "http" => None,
            "https" => {
                let ca = args.str("ca");
                let host = authority
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or(authority);
                let name = ServerName::try_from(host.to_owned())
                    .unwrap_or_else(|e| die(&format!("{host}: {e}")));
                Some((tls_connector(&ca), name))
            }
            other => die(&format!("--url: unknown scheme {other}")),
        };
        HttpTarget {
            addr: authority.to_owned(),
            host: authority.to_owned(),
            path: path.to_owned(),
            tls,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect_{:?}", e.kind()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("tls_handshake_{:?}", e.kind()))?;
                handshake(stream).await
            }
        }
    }
}

fn tls_connector(ca: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| die(&format!("{ca}: {e}"))) {
        roots
            .add(cert.unwrap_or_else(|e| die(&format!("{ca}: {e}"))))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A cold serverless instance has no session to resume: every handshake is a full one.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http_handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

struct QueryBody {
    sql: String,
    aid_max: u64,
    row_mode: Option<String>,
}

impl QueryBody {
    fn from_args(args: &Args) -> QueryBody {
        QueryBody {
            sql: args
                .opt("sql")
                .unwrap_or_else(|| "select abalance from pgbench_accounts where aid = $1".into()),
            aid_max: args.num("aid-max", 1_000_000),
            row_mode: args.opt("row-mode"),
        }
    }
    fn render(&self, rng: &mut Rng) -> Bytes {
        let mut body = json!({ "sql": self.sql });
        if self.sql.contains("$1") {
            body["params"] = json!([rng.below(self.aid_max) + 1]);
        }
        if let Some(mode) = &self.row_mode {
            body["rowMode"] = json!(mode);
        }
        Bytes::from(serde_json::to_vec(&body).unwrap())
    }
}

fn error_kind_of(status: u16, body: &[u8]) -> String {
    let kind = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["kind"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    format!("http_{status}_{kind}")
}

#[allow(clippy::too_many_arguments)]
async fn http_client(
    id: u64,
    target: Arc<HttpTarget>,
    body: Arc<QueryBody>,
    auth: Arc<String>,
    cold: bool,
    get: bool,
    plan: Plan,
    go: Arc<tokio::sync::Barrier>,
) -> ClientStats {
    let mut stats = ClientStats::new();
    let mut rng = Rng::new(id + 1);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut done = 0;
    go.wait().await;
    while plan.keep_going(done, Instant::now()) {
        let began = Instant::now();
        let outcome = tokio::time::timeout_at(plan.hard_deadline.into(), async {
            if sender.is_none() {
                stats.connects += 1;
                sender = Some(target.connect().await?);
            }
            let s = sender.as_mut().unwrap();
            s.ready().await.map_err(|e| format!("io: {e}"))?;
            // --get: a bodiless GET (e.g. /healthz), the HTTP floor without any database work.
            let request = if get {
                hyper::Request::get(target.path.as_str()).header("host", target.host.as_str())
            } else {
                hyper::Request::post(target.path.as_str())
                    .header("host", target.host.as_str())
                    .header("authorization", auth.as_str())
                    .header("content-type", "application/json")
            };
            let request = if cold {
                request.header("connection", "close")
            } else {
                request
            };
            let payload = if get {
                Bytes::new()
            } else {
                body.render(&mut rng)
            };
            let request = request.body(Full::new(payload)).unwrap();
            let response = s
                .send_request(request)
                .await
                .map_err(|e| format!("io: {e}"))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("io_body: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        let ended = Instant::now();
        done += 1;
        let in_window = plan.counts(began, ended);
        match outcome {
            Ok((200, _)) => {
                if in_window {
                    stats.ok += 1;
                    stats
                        .hist
                        .record((ended - began).as_nanos() as u64)
                        .unwrap();
                    stats.last_done = Some(ended);
                }
            }
            Ok((status, bytes)) => {
                if in_window {
                    stats.error(error_kind_of(status, &bytes));
                }
            }
            Err(kind) => {
                sender = None;
                if in_window || plan.requests_per_client.is_some() {
                    stats.error(kind);
                }
                if ended < plan.hard_deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        if cold {
            sender = None;
        }
    }
    stats
}

async fn run_http(args: Args) {
    let plan0 = Plan::from_args(&args);
    let clients: u64 = args.num("clients", 1);
    let cold = args.flag("cold");
    let get = args.flag("get");
    let target = Arc::new(HttpTarget::from_args(&args));
    let body = Arc::new(QueryBody::from_args(&args));
    let auth = Arc::new(format!("Bearer {}", args.str("key")));
    let go = Arc::new(tokio::sync::Barrier::new(clients as usize + 1));
    let mut handles = Vec::new();
    for id in 0..clients {
        let (target, body, auth, go) = (target.clone(), body.clone(), auth.clone(), go.clone());
        handles.push(tokio::spawn(http_client(
            id, target, body, auth, cold, get, plan0, go,
        )));
    }
    // Every client is spawned and waiting at the barrier: release them at once.
    let plan = plan0;
    go.wait().await;
    let mut stats = Vec::new();
    for h in handles {
        stats.push(h.await.unwrap());
    }
    let mut out = summarize(
        if cold { "http_cold" } else { "http" },
        &args,
        &plan,
        clients,
        stats,
    );
    out["tls"] = json!(target.tls.is_some());
    write_out(&args, &out);
}

// ---------------------------------------------------------------------------------------------
// Postgres protocol (tokio-postgres)

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    pg_connect_tls(url, None).await
}

/// Connects with TLS when `tls` is given (the URL then says `sslmode=require`).
async fn pg_connect_tls(
    url: &str,
    tls: Option<&PgTls>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match tls {
        None => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Some(tls) => {
            let (client, connection) = tokio_postgres::connect(url, tls.clone()).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
    }
}

/// rustls for tokio-postgres (full handshakes: resumption is off in `tls_connector`). No channel
/// binding, so SCRAM-SHA-256 (not -PLUS) is used, as PgBouncer 1.18 offers.
#[derive(Clone)]
struct PgTls(tokio_rustls::TlsConnector);

struct PgTlsConnect(tokio_rustls::TlsConnector, ServerName<'static>);

struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = std::io::Error;
    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, std::io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(PgTlsConnect(self.0.clone(), name))
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<PgTlsStream<S>>> + Send>,
    >;
    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { Ok(PgTlsStream(self.0.connect(self.1, stream).await?)) })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

fn pg_error_kind(prefix: &str, e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{prefix}_{}", db.code().code()),
        None if e.is_closed() => format!("{prefix}_closed"),
        None => {
            let text = e.to_string();
            let short: String = text.chars().take(40).collect();
            format!("{prefix}_{}", short.replace(' ', "_"))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn pg_client(
    id: u64,
    url: Arc<String>,
    tls: Option<PgTls>,
    sql: Arc<String>,
    aid_max: u64,
    cold: bool,
    plan: Plan,
    go: Arc<tokio::sync::Barrier>,
) -> ClientStats {
    use tokio_postgres::types::{ToSql, Type};
    let mut stats = ClientStats::new();
    let mut rng = Rng::new(id + 1);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut done = 0;
    let with_param = sql.contains("$1");
    go.wait().await;
    while plan.keep_going(done, Instant::now()) {
        let began = Instant::now();
        let outcome = tokio::time::timeout_at(plan.hard_deadline.into(), async {
            if client.is_none() {
                stats.connects += 1;
                client = Some(
                    pg_connect_tls(&url, tls.as_ref())
                        .await
                        .map_err(|e| (true, pg_error_kind("connect", &e)))?,
                );
            }
            let c = client.as_ref().unwrap();
            let aid = (rng.below(aid_max) + 1) as i32;
            let params: Vec<(&(dyn ToSql + Sync), Type)> = if with_param {
                vec![(&aid, Type::INT4)]
            } else {
                vec![]
            };
            c.query_typed(&sql, &params)
                .await
                .map_err(|e| (false, pg_error_kind("query", &e)))?;
            Ok::<_, (bool, String)>(())
        })
        .await
        .unwrap_or_else(|_| Err((false, "timeout".into())));
        let ended = Instant::now();
        done += 1;
        match outcome {
            Ok(()) => {
                if plan.counts(began, ended) {
                    stats.ok += 1;
                    stats
                        .hist
                        .record((ended - began).as_nanos() as u64)
                        .unwrap();
                    stats.last_done = Some(ended);
                }
            }
            Err((connect_failed, kind)) => {
                client = None;
                stats.error(kind);
                if let (true, Some(requests)) = (connect_failed, plan.requests_per_client) {
                    // A refused client in a burst is gone: its remaining requests are never served.
                    let unserved = requests - done;
                    if unserved > 0 {
                        *stats
                            .errors
                            .entry("unserved_after_refusal".into())
                            .or_default() += unserved;
                    }
                    break;
                }
                if ended < plan.hard_deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        if cold {
            client = None;
        }
    }
    stats
}

async fn run_pg(args: Args) {
    let plan = Plan::from_args(&args);
    let clients: u64 = args.num("clients", 1);
    let cold = args.flag("cold");
    let url = Arc::new(args.str("url"));
    let sql = Arc::new(
        args.opt("sql")
            .unwrap_or_else(|| "select abalance from pgbench_accounts where aid = $1".into()),
    );
    let aid_max = args.num("aid-max", 1_000_000);
    let tls = args.opt("ca").map(|ca| PgTls(tls_connector(&ca)));
    let go = Arc::new(tokio::sync::Barrier::new(clients as usize + 1));
    let mut handles = Vec::new();
    for id in 0..clients {
        let (url, tls, sql, go) = (url.clone(), tls.clone(), sql.clone(), go.clone());
        handles.push(tokio::spawn(pg_client(
            id, url, tls, sql, aid_max, cold, plan, go,
        )));
    }
    go.wait().await;
    let mut stats = Vec::new();
    for h in handles {
        stats.push(h.await.unwrap());
    }
    let mut out = summarize(
        if cold { "pg_cold" } else { "pg" },
        &args,
        &plan,
        clients,
        stats,
    );
    out["target"] = json!(redact(&url));
    out["tls"] = json!(tls.is_some());
    write_out(&args, &out);
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Large results

async fn run_stream(args: Args) {
    let target = HttpTarget::from_args(&args);
    let auth = format!("Bearer {}", args.str("key"));
    let ndjson = args.flag("ndjson");
    let repeat: usize = args.num("repeat", 3);
    let deadline = Instant::now() + Duration::from_secs_f64(args.num("max-seconds", 120.0));
    let body = QueryBody::from_args(&args).render(&mut Rng::new(1));
    let mut runs = Vec::new();
    let mut sender = None;
    for _ in 0..repeat {
        if Instant::now() >= deadline {
            break;
        }
        if sender.is_none() {
            sender = Some(target.connect().await.unwrap_or_else(|e| die(&e)));
        }
        let s: &mut SendRequest<Full<Bytes>> = sender.as_mut().unwrap();
        let began = Instant::now();
        let run = tokio::time::timeout_at(deadline.into(), async {
            s.ready().await.map_err(|e| e.to_string())?;
            let mut request = hyper::Request::post(target.path.as_str())
                .header("host", target.host.as_str())
                .header("authorization", auth.as_str())
                .header("content-type", "application/json");
            if ndjson {
                request = request.header("accept", "application/x-ndjson");
            }
            let response = s
                .send_request(request.body(Full::new(body.clone())).unwrap())
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let mut body = response.into_body();
            let mut bytes = 0u64;
            let mut newlines = 0u64;
            let mut first_byte = None;
            // The last line (NDJSON trailer) or the end of the JSON document (rowCount).
            let mut tail: Vec<u8> = Vec::new();
            let mut head: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                if let Ok(data) = frame.into_data() {
                    if first_byte.is_none() {
                        first_byte = Some(began.elapsed());
                    }
                    bytes += data.len() as u64;
                    newlines += data.iter().filter(|&&b| b == b'\n').count() as u64;
                    if head.len() < 512 {
                        head.extend_from_slice(&data[..data.len().min(512 - head.len())]);
                    }
                    tail.extend_from_slice(&data);
                    if tail.len() > 4096 {
                        tail.drain(..tail.len() - 4096);
                    }
                }
            }
            Ok::<_, String>((
                status,
                content_type,
                bytes,
                newlines,
                first_byte,
                head,
                tail,
            ))
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        let elapsed = began.elapsed().as_secs_f64();
        match run {
            Ok((status, content_type, bytes, newlines, first_byte, head, tail)) => {
                let tail_text = String::from_utf8_lossy(&tail).to_string();
                let (rows, complete, error) = if status != 200 {
                    (0, false, Some(error_kind_of(status, &tail)))
                } else if ndjson {
                    let last = tail_text
                        .trim_end()
                        .rsplit('\n')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let v: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
                    let rows = newlines.saturating_sub(2);
                    (
                        rows,
                        v.get("command").is_some(),
                        v.get("error").map(|e| e.to_string()),
                    )
                } else {
                    let rows = tail_text
                        .rsplit_once("\"rowCount\":")
                        .and_then(|(_, r)| {
                            r.split(|c: char| !c.is_ascii_digit())
                                .next()
                                .map(str::to_owned)
                        })
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                    (rows, rows > 0, None)
                };
                runs.push(json!({
                    "status": status,
                    "content_type": content_type,
                    "bytes": bytes,
                    "rows": rows,
                    "complete": complete,
                    "error": error,
                    "seconds": elapsed,
                    "first_byte_ms": first_byte.map(|d| d.as_secs_f64() * 1000.0),
                    "rows_per_s": if elapsed > 0.0 { rows as f64 / elapsed } else { 0.0 },
                    "head": String::from_utf8_lossy(&head).chars().take(200).collect::<String>(),
                }));
                if status != 200 {
                    break;
                }
            }
            Err(e) => {
                runs.push(json!({ "error": e, "seconds": elapsed }));
                break;
            }
        }
    }
    write_out(
        &args,
        &json!({ "mode": if ndjson { "ndjson" } else { "json" }, "runs": runs, "cpu_s": cpu_self_seconds() }),
    );
}

async fn run_pgread(args: Args) {
    use futures_util::StreamExt;
    use tokio_postgres::SimpleQueryMessage;
    let url = args.str("url");
    let sql = args.str("sql");
    let repeat: usize = args.num("repeat", 3);
    let deadline = Instant::now() + Duration::from_secs_f64(args.num("max-seconds", 120.0));
    let client = pg_connect(&url)
        .await
        .unwrap_or_else(|e| die(&format!("connect: {e}")));
    let mut runs = Vec::new();
    for _ in 0..repeat {
        if Instant::now() >= deadline {
            break;
        }
        let began = Instant::now();
        let run = tokio::time::timeout_at(deadline.into(), async {
            let stream = client.simple_query_raw(&sql).await?;
            futures_util::pin_mut!(stream);
            let (mut rows, mut bytes) = (0u64, 0u64);
            while let Some(message) = stream.next().await {
                if let SimpleQueryMessage::Row(row) = message? {
                    rows += 1;
                    for i in 0..row.len() {
                        bytes += row.get(i).map_or(0, |v| v.len() as u64);
                    }
                }
            }
            Ok::<_, tokio_postgres::Error>((rows, bytes))
        })
        .await;
        let elapsed = began.elapsed().as_secs_f64();
        match run {
            Ok(Ok((rows, bytes))) => runs.push(json!({
                "rows": rows, "value_bytes": bytes, "seconds": elapsed, "complete": true,
                "rows_per_s": rows as f64 / elapsed,
            })),
            Ok(Err(e)) => {
                runs.push(json!({ "error": e.to_string(), "seconds": elapsed }));
                break;
            }
            Err(_) => {
                runs.push(json!({ "error": "timeout", "seconds": elapsed }));
                break;
            }
        }
    }
    write_out(
        &args,
        &json!({ "mode": "pgread", "format": "text (simple query protocol)", "runs": runs, "cpu_s": cpu_self_seconds() }),
    );
}

// ---------------------------------------------------------------------------------------------
// Idle connections

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) from a raw stream; returns the status.
async fn read_response(stream: &mut TcpStream) -> Result<u16, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let body_start = end + 4;
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                while buf.len() < body_start + len {
                    let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("closed".into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            } else {
                while !buf.ends_with(b"0\r\n\r\n") {
                    let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("closed".into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            return Ok(status);
        }
    }
}

async fn run_idle(args: Args) {
    let target = HttpTarget::from_args(&args);
    let connections: usize = args.num("connections", 10_000);
    let concurrency: usize = args.num("concurrency", 200);
    let hold = Duration::from_secs_f64(args.num("hold", 5.0));
    let gateway: u32 = args.num("gateway-pid", 0);
    let deadline = Instant::now() + Duration::from_secs_f64(args.num("max-seconds", 120.0));
    let body = QueryBody::from_args(&args).render(&mut Rng::new(7));
    // --no-request: connect only, so the memory of a connection that never sent a request can be
    // told apart from that of one that has served a request and is now idle (keep-alive).
    let no_request = args.flag("no-request");
    let request = Arc::new(
        [
            format!(
                "POST {} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                target.path,
                target.host,
                args.str("key"),
                body.len()
            )
            .into_bytes(),
            body.to_vec(),
        ]
        .concat(),
    );
    let started = Instant::now();
    let rss_before = proc_status_kb(gateway, "VmRSS:");
    let fds_before = fd_count(gateway);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (addr, request, semaphore) = (target.addr.clone(), request.clone(), semaphore.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await.unwrap();
            tokio::time::timeout_at(deadline.into(), async {
                let mut stream = TcpStream::connect(&addr)
                    .await
                    .map_err(|e| format!("connect_{:?}", e.kind()))?;
                if no_request {
                    return Ok(stream);
                }
                stream
                    .write_all(&request)
                    .await
                    .map_err(|e| e.to_string())?;
                match read_response(&mut stream).await? {
                    200 => Ok(stream),
                    status => Err(format!("http_{status}")),
                }
            })
            .await
            .unwrap_or_else(|_| Err("timeout".into()))
        }));
    }
    let mut open = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(stream) => open.push(stream),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let opened_in = started.elapsed().as_secs_f64();
    // Let the gateway settle (per-request buffers freed, tasks parked).
    tokio::time::sleep(Duration::from_secs(1).min(hold)).await;
    let rss_open = proc_status_kb(gateway, "VmRSS:");
    let fds_open = fd_count(gateway);
    let hold_until = (Instant::now() + hold).min(deadline);
    let mut rss_peak = rss_open.unwrap_or(0);
    while Instant::now() < hold_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_peak = rss_peak.max(proc_status_kb(gateway, "VmRSS:").unwrap_or(0));
    }
    let rss_end = proc_status_kb(gateway, "VmRSS:");
    let mut still_open = 0;
    let mut probe = [0u8; 64];
    for s in &open {
        match s.try_read(&mut probe) {
            Ok(0) => {}
            Ok(_) => still_open += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still_open += 1,
            Err(_) => {}
        }
    }
    let established = open.len();
    drop(open);
    let per_conn = match (rss_before, rss_open) {
        (Some(b), Some(a)) if established > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / established as f64)
        }
        _ => None,
    };
    write_out(
        &args,
        &json!({
            "mode": "idle",
            "sent_a_request": !no_request,
            "connections_requested": connections,
            "established": established,
            "errors": errors,
            "opened_in_s": opened_in,
            "hold_s": hold.as_secs_f64(),
            "still_open_after_hold": still_open,
            "gateway_rss_kb_before": rss_before,
            "gateway_rss_kb_open": rss_open,
            "gateway_rss_kb_peak_during_hold": rss_peak,
            "gateway_rss_kb_end": rss_end,
            "gateway_fds_before": fds_before,
            "gateway_fds_open": fds_open,
            "bytes_per_connection": per_conn,
            "cpu_s": cpu_self_seconds(),
        }),
    );
}

async fn run_pgidle(args: Args) {
    let url = args.str("url");
    let connections: usize = args.num("connections", 1000);
    let concurrency: usize = args.num("concurrency", 50);
    let hold = Duration::from_secs_f64(args.num("hold", 3.0));
    let gateway: u32 = args.num("gateway-pid", 0);
    let deadline = Instant::now() + Duration::from_secs_f64(args.num("max-seconds", 120.0));
    let started = Instant::now();
    let rss_before = proc_status_kb(gateway, "VmRSS:");
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (url, semaphore) = (url.clone(), semaphore.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await.unwrap();
            tokio::time::timeout_at(deadline.into(), async {
                let client = pg_connect(&url)
                    .await
                    .map_err(|e| pg_error_kind("connect", &e))?;
                let aid = (i % 1_000_000 + 1) as i32;
                client
                    .query_typed(
                        "select abalance from pgbench_accounts where aid = $1",
                        &[(&aid, tokio_postgres::types::Type::INT4)],
                    )
                    .await
                    .map_err(|e| pg_error_kind("query", &e))?;
                Ok::<_, String>(client)
            })
            .await
            .unwrap_or_else(|_| Err("timeout".into()))
        }));
    }
    let mut open = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => open.push(c),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let opened_in = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1).min(hold)).await;
    let rss_open = proc_status_kb(gateway, "VmRSS:");
    tokio::time::sleep_until((Instant::now() + hold).min(deadline).into()).await;
    let still_open = open.iter().filter(|c| !c.is_closed()).count();
    let established = open.len();
    drop(open);
    let per_conn = match (rss_before, rss_open) {
        (Some(b), Some(a)) if established > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / established as f64)
        }
        _ => None,
    };
    write_out(
        &args,
        &json!({
            "mode": "pgidle",
            "connections_requested": connections,
            "established": established,
            "errors": errors,
            "opened_in_s": opened_in,
            "still_open_after_hold": still_open,
            "gateway_rss_kb_before": rss_before,
            "gateway_rss_kb_open": rss_open,
            "bytes_per_connection": per_conn,
            "cpu_s": cpu_self_seconds(),
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Monitor: backends, gateway memory, CPU split

fn clock_ticks() -> f64 {
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// (ppid, utime + stime, cutime + cstime) in ticks.
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((f.get(1)?.parse().ok()?, n(11) + n(12), n(13) + n(14)))
}

/// CPU ticks of a postmaster and all its children, living or reaped.
fn postgres_ticks(postmaster: u32) -> u64 {
    let Some((_, own, reaped)) = proc_stat(postmaster) else {
        return 0;
    };
    let mut total = own + reaped;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            {
                if let Some((ppid, ticks, _)) = proc_stat(pid) {
                    if ppid == postmaster {
                        total += ticks;
                    }
                }
            }
        }
    }
    total
}

/// (busy, total) ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// A counter from /proc/net/netstat, e.g. ("TcpExt", "ListenOverflows"): machine-wide.
fn netstat_counter(group: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        if let [header, values] = pair {
            if header.starts_with(&format!("{group}:")) {
                let names = header.split_whitespace().skip(1);
                let nums = values.split_whitespace().skip(1);
                for (n, v) in names.zip(nums) {
                    if n == name {
                        return v.parse().unwrap_or(0);
                    }
                }
            }
        }
    }
    0
}

async fn run_monitor(args: Args) {
    let url = args.str("pg-url");
    let role = args.opt("role");
    let gateway: u32 = args.num("gateway-pid", 0);
    let postmaster: u32 = args.num("postmaster-pid", 0);
    let interval = Duration::from_millis(args.num("interval-ms", 20));
    let stop_file = args.str("stop-file");
    let ready_file = args.opt("ready-file");
    let deadline = Instant::now() + Duration::from_secs_f64(args.num("max-seconds", 300.0));
    let client = pg_connect(&url)
        .await
        .unwrap_or_else(|e| die(&format!("monitor connect: {e}")));
    let count = client
        .prepare(
            "select count(*) from pg_stat_activity where backend_type = 'client backend' \
             and pid <> pg_backend_pid() and ($1::text is null or usename = $1)",
        )
        .await
        .unwrap();
    let ticks = clock_ticks();
    let started = Instant::now();
    let gw0 = proc_stat(gateway).map_or(0, |s| s.1);
    let pg0 = postgres_ticks(postmaster);
    let m0 = machine_ticks();
    let rss_start = proc_status_kb(gateway, "VmRSS:");
    let overflows0 = netstat_counter("TcpExt", "ListenOverflows");
    if let Some(f) = &ready_file {
        let _ = std::fs::write(f, "ready\n");
    }
    let (mut peak_backends, mut samples, mut sum_backends) = (0i64, 0u64, 0i64);
    let mut peak_rss = rss_start.unwrap_or(0);
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < deadline && !std::path::Path::new(&stop_file).exists() {
        timer.tick().await;
        if let Ok(row) = client.query_one(&count, &[&role]).await {
            let n: i64 = row.get(0);
            peak_backends = peak_backends.max(n);
            sum_backends += n;
            samples += 1;
        }
        if let Some(rss) = proc_status_kb(gateway, "VmRSS:") {
            peak_rss = peak_rss.max(rss);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let gw1 = proc_stat(gateway).map_or(0, |s| s.1);
    let pg1 = postgres_ticks(postmaster);
    let m1 = machine_ticks();
    let machine_busy = (m1.0 - m0.0) as f64 / ticks;
    let machine_total = (m1.1 - m0.1) as f64 / ticks;
    write_out(
        &args,
        &json!({
            "wall_s": wall,
            "samples": samples,
            "role": role,
            "peak_backends": peak_backends,
            "mean_backends": if samples > 0 { sum_backends as f64 / samples as f64 } else { 0.0 },
            "gateway_rss_kb_start": rss_start,
            "gateway_rss_kb_peak": if gateway > 0 { Some(peak_rss) } else { None },
            "gateway_rss_kb_end": proc_status_kb(gateway, "VmRSS:"),
            "gateway_hwm_kb": proc_status_kb(gateway, "VmHWM:"),
            // Connections dropped because a listener's accept queue was full (the client then
            // waits for a SYN-ACK retransmit, 1 s later): machine-wide, during this phase.
            "listen_overflows": netstat_counter("TcpExt", "ListenOverflows") - overflows0,
            "cpu_s": {
                "gateway": if gateway > 0 { Some((gw1 - gw0) as f64 / ticks) } else { None },
                "postgres": (pg1 - pg0) as f64 / ticks,
                "machine_busy": machine_busy,
                "machine_capacity": machine_total,
            },
        }),
    );
}

// ---------------------------------------------------------------------------------------------

fn run_wrap(args: Args) {
    if args.rest.is_empty() {
        die("wrap: nothing to run (wrap --out f -- command args)");
    }
    let started = Instant::now();
    let status = std::process::Command::new(&args.rest[0])
        .args(&args.rest[1..])
        .status()
        .unwrap_or_else(|e| die(&format!("{}: {e}", args.rest[0])));
    let out = json!({
        "command": args.rest[0],
        "exit_code": status.code(),
        "cpu_s": rusage_seconds(libc::RUSAGE_CHILDREN),
        "wall_s": started.elapsed().as_secs_f64(),
    });
    write_out(&args, &out);
    std::process::exit(status.code().unwrap_or(1));
}

async fn run_probe(args: Args) {
    let target = HttpTarget::from_args(&args);
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = target.connect().await?;
        let mut request = hyper::Request::builder()
            .method(if args.opt("body").is_some() {
                "POST"
            } else {
                "GET"
            })
            .uri(target.path.as_str())
            .header("host", target.host.as_str());
        if let Some(key) = args.opt("key") {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        if let Some(accept) = args.opt("accept") {
            request = request.header("accept", accept);
        }
        let body = Bytes::from(args.opt("body").unwrap_or_default());
        let response = s
            .send_request(
                request
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let ct = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>(json!({
            "ok": true, "status": status, "content_type": ct,
            "body": String::from_utf8_lossy(&bytes[..bytes.len().min(2000)]),
        }))
    })
    .await
    .unwrap_or_else(|_| Err("timeout".into()));
    let out = result.unwrap_or_else(|e| json!({ "ok": false, "error": e }));
    write_out(&args, &out);
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = raw.first().cloned() else {
        die("usage: loadgen http|pg|stream|pgread|idle|pgidle|monitor|wrap|probe [--options]")
    };
    let args = Args::parse(&raw[1..]);
    if mode == "wrap" {
        return run_wrap(args);
    }
    let threads: usize = args.num("threads", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        match mode.as_str() {
            "http" => run_http(args).await,
            "pg" => run_pg(args).await,
            "stream" => run_stream(args).await,
            "pgread" => run_pgread(args).await,
            "idle" => run_idle(args).await,
            "pgidle" => run_pgidle(args).await,
            "monitor" => run_monitor(args).await,
            "probe" => run_probe(args).await,
            other => die(&format!("unknown mode {other}")),
        }
    });
}
