//! The tests' HTTP side: a keep-alive client, one-off requests on connections of their own
//! (cold, or raw sockets the test abandons), and what came back.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
        self.post_with(path, key, &[], body).await
    }

    /// POST a JSON body with a key and more headers (`accept`, Neon's, …).
    pub async fn post_with(
        &self,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Reply {
        let auth = format!("Bearer {key}");
        let mut all = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        all.extend_from_slice(headers);
        self.request(Method::POST, path, &all, serde_json::to_vec(body).unwrap())
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
