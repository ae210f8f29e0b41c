//! The operator's side of a test gateway: admin keys, `/metrics` scrapes (parsed by a
//! Prometheus text-format parser), the `/v1/admin/pools` view, reloads, and config files the
//! tests rewrite between reloads.

use std::path::{Path, PathBuf};

use http::Method;
use serde_json::Value;

use super::{Client, Gateway, Reply, key};

/// `toml` with an admin key added to `[server]`; returns it and the key.
pub fn with_admin(toml: &str) -> (String, String) {
    let (admin, hash) = key("admin");
    (
        toml.replace("[server]", &format!("[server]\nadmin_keys = [\"{hash}\"]")),
        admin,
    )
}

impl Client {
    /// A request with `key` as bearer token, or with no `authorization` at all.
    pub async fn request_as(&self, method: Method, path: &str, key: Option<&str>) -> Reply {
        let auth = key.map(|key| format!("Bearer {key}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.request(method, path, &headers, bytes::Bytes::new())
            .await
    }

    /// `GET path` with `key`, or with no key.
    pub async fn get_as(&self, path: &str, key: Option<&str>) -> Reply {
        self.request_as(Method::GET, path, key).await
    }

    /// The whole `/v1/admin/pools` view.
    pub async fn admin_pools(&self, admin: &str) -> Value {
        let reply = self.get_as("/v1/admin/pools", Some(admin)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()
    }

    /// One tenant's entry of the admin view (first upstream that has it).
    pub async fn admin_tenant(&self, admin: &str, tenant: &str) -> Value {
        let view = self.admin_pools(admin).await;
        view["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|u| u["tenants"].as_array().unwrap().clone())
            .find(|t| t["id"] == tenant)
            .unwrap_or_else(|| panic!("no tenant {tenant} in {view}"))
    }

    /// `POST /v1/admin/reload` with an admin key.
    pub async fn admin_reload(&self, admin: &str) -> Reply {
        self.request_as(Method::POST, "/v1/admin/reload", Some(admin))
            .await
    }

    /// A scrape of `/metrics` (with an admin key on the public listener).
    pub async fn scrape(&self, admin: Option<&str>) -> Scrape {
        Scrape::take(self, admin).await
    }
}

/// A scrape of `/metrics`, parsed by a Prometheus text-format parser.
pub struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    /// On the public listener `admin` is an admin key; on `metrics_listen` none is needed.
    pub async fn take(client: &Client, admin: Option<&str>) -> Scrape {
        Scrape::parse(&client.get_as("/metrics", admin).await)
    }

    /// A scrape on a connection of its own, closed after (so never parked, never reused).
    pub async fn take_cold(addr: std::net::SocketAddr, admin: &str) -> Scrape {
        let auth = format!("Bearer {admin}");
        let reply = super::cold_request(
            addr,
            Method::GET,
            "/metrics",
            &[("authorization", &auth)],
            "",
        )
        .await
        .expect("a scrape");
        Scrape::parse(&reply)
    }

    fn parse(reply: &Reply) -> Scrape {
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

    /// The value of `metric` summed over the samples with these labels (0 when absent).
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
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

impl Gateway {
    /// `POST /v1/admin/reload` with an admin key.
    pub async fn admin_reload(&self, admin: &str) -> Reply {
        self.client.admin_reload(admin).await
    }
}

/// A config file the test rewrites between reloads; its folder goes when it is dropped.
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    pub fn new(toml: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!("sluice-reload-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = ConfigFile {
            path: dir.join("sluice.toml"),
        };
        file.write(toml);
        file
    }

    pub fn write(&self, toml: &str) {
        std::fs::write(&self.path, toml).unwrap();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap());
    }
}

/// [`super::gateway_for`] with an admin key as well: gateway, tenant key, database, admin key.
pub async fn gateway_with_admin(
    setup: &str,
    tenant_extra: &str,
) -> (Gateway, String, String, String) {
    let db = super::database(setup).await;
    let (key, hash) = key("acme");
    let (toml, admin) = with_admin(&super::config(&db, &hash, tenant_extra, ""));
    (Gateway::start(&toml).await, key, db, admin)
}
