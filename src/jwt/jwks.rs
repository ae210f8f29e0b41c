//! JSON Web Key Sets: parsing one into verification keys, and each tenant's cache of the keys
//! at its `jwks_url` — fetched by the gateway on first use, then every `jwks_refresh_s` by a
//! background task (and by a token that finds the keys older than that), and when a token
//! names a `kid` the cache does not hold (at most once per `jwks_cooldown_ms`), so an identity
//! provider's key rotation needs no restart.
//!
//! Only asymmetric keys (RSA, EC, OKP) are taken from a set: a symmetric (`oct`) key there
//! is ignored, so a public set can never become an HS256 secret.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{JwtConfig, KeySource, TokenError, refuse};

/// The largest JWKS document read (real ones are a few kilobytes).
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The usable keys of one JWKS.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    /// Keys without a `kid`, tried when a token names none.
    unnamed: Vec<Arc<DecodingKey>>,
}

impl KeySet {
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = KeySet::default();
        for jwk in &set.keys {
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = Arc::new(key);
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.unnamed.push(key),
            }
        }
        if keys.by_kid.is_empty() && keys.unnamed.is_empty() {
            return Err("it holds no usable RSA, EC or OKP key".into());
        }
        Ok(keys)
    }

    fn find(&self, kid: Option<&str>) -> Result<Option<Arc<DecodingKey>>, TokenError> {
        match kid {
            Some(kid) => Ok(self.by_kid.get(kid).cloned()),
            None => {
                let mut all = self.unnamed.iter().chain(self.by_kid.values());
                match (all.next(), all.next()) {
                    (Some(key), None) => Ok(Some(key.clone())),
                    (None, _) => Ok(None),
                    (Some(_), Some(_)) => Err(refuse(
                        "the token names no key (kid) and the tenant's key set has several",
                    )),
                }
            }
        }
    }
}

/// A fetched key set and when it was fetched.
struct Fetched {
    keys: KeySet,
    at: Instant,
}

/// One tenant's keys at run time.
#[derive(Default)]
pub struct KeyCache {
    fetched: ArcSwapOption<Fetched>,
    /// When a fetch last started (successful or not): the cooldown is counted from it.
    // std Mutex: held for a comparison, never across an await.
    last_attempt: Mutex<Option<Instant>>,
    /// One fetch at a time; others use the keys they have, or wait for the first fetch.
    fetching: tokio::sync::Mutex<()>,
    /// The background refresh has been started (once per cache: a reload that keeps the
    /// cache keeps its timer).
    refreshing: AtomicBool,
    /// Stops the background refresh: when the cache is dropped (a reload changed or removed
    /// the tenant's `jwt`) or the gateway shuts down.
    stop: CancellationToken,
}

impl Drop for KeyCache {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl KeyCache {
    /// The key that verifies a token with this `kid` and algorithm.
    pub async fn key_for(
        &self,
        config: &JwtConfig,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<DecodingKey>, TokenError> {
        let unknown = || match kid {
            Some(kid) => refuse(format!("no key with kid \"{kid}\" in the tenant's key set")),
            None => refuse(format!("no key for {alg:?} in the tenant's key set")),
        };
        let url = match &config.keys {
            Some(KeySource::Keys(set)) => return set.find(kid)?.ok_or_else(unknown),
            Some(KeySource::Url(url)) => url,
            None => return Err(unknown()),
        };
        let current = self.fetched.load_full();
        if let Some(fetched) = &current {
            let stale = fetched.at.elapsed() >= config.jwks_refresh;
            if let Some(key) = fetched.keys.find(kid)?
                && !stale
            {
                return Ok(key);
            }
        }
        // Stale, never fetched, or an unknown kid: fetch, within the cooldown. Before the
        // first fetch every request waits for it; later, requests that may not fetch use the
        // keys there are.
        if current.is_none() || self.may_fetch(config.jwks_cooldown) {
            let _one = self.fetching.lock().await;
            // Another request may have fetched while this one waited.
            let after = self.fetched.load_full();
            let fetched_meanwhile = match (&current, &after) {
                (None, Some(_)) => true,
                (Some(before), Some(after)) => !Arc::ptr_eq(before, after),
                _ => false,
            };
            if !fetched_meanwhile && self.may_fetch(config.jwks_cooldown) {
                self.fetch_locked(url).await;
            }
        }
        match self.fetched.load_full() {
            Some(fetched) => fetched.keys.find(kid)?.ok_or_else(unknown),
            None => Err(refuse(
                "the tenant's key set (jwt.jwks_url) could not be fetched; see the gateway's log",
            )),
        }
    }

    /// Fetches the set and keeps it when it parses; the caller holds `fetching`.
    async fn fetch_locked(&self, url: &http::Uri) {
        *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        match fetch(url).await.and_then(|body| KeySet::parse(&body)) {
            Ok(keys) => self.fetched.store(Some(Arc::new(Fetched {
                keys,
                at: Instant::now(),
            }))),
            Err(error) => {
                tracing::warn!(url = %url, %error, "could not fetch the JWKS");
            }
        }
    }

    /// Starts the timer that fetches a `jwks_url` set every `jwks_refresh` in the background,
    /// so a rotation is picked up before the first token signed with the new key arrives.
    /// One fetch per interval at most: the interval counts from the last fetch or attempt,
    /// whoever made it (a token's unknown `kid` included), and a failed fetch waits a whole
    /// interval too. The task holds the cache weakly and ends with it, or with [`stop`].
    ///
    /// [`stop`]: KeyCache::stop_refresh
    pub fn start_refresh(self: &Arc<Self>, config: &JwtConfig, tasks: &TaskTracker) {
        let Some(KeySource::Url(url)) = &config.keys else {
            return;
        };
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (cache, url, every, stop) = (
            Arc::downgrade(self),
            url.clone(),
            config.jwks_refresh,
            self.stop.clone(),
        );
        tasks.spawn(async move {
            let started = Instant::now();
            let due = |cache: &Weak<KeyCache>| {
                cache
                    .upgrade()
                    .map(|cache| cache.last_activity().unwrap_or(started) + every)
            };
            loop {
                let Some(at) = due(&cache) else { return };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(at.into()) => {}
                }
                let Some(strong) = cache.upgrade() else {
                    return;
                };
                let _one = tokio::select! {
                    () = stop.cancelled() => return,
                    one = strong.fetching.lock() => one,
                };
                // A token may have fetched meanwhile: then the next interval counts from it.
                if strong.last_activity().unwrap_or(started) + every <= Instant::now() {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = strong.fetch_locked(&url) => {}
                    }
                }
            }
        });
    }

    /// Ends the background refresh (the gateway is shutting down).
    pub fn stop_refresh(&self) {
        self.stop.cancel();
    }

    /// When the set was last fetched or a fetch last started, whichever is later.
    fn last_activity(&self) -> Option<Instant> {
        let fetched = self.fetched.load().as_ref().map(|f| f.at);
        let attempt = *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
        fetched.max(attempt)
    }

    fn may_fetch(&self, cooldown: Duration) -> bool {
        let last = *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|at| at.elapsed() >= cooldown)
    }
}

/// `https://…`, or `http://` to a loopback address (a sidecar, or a test).
pub fn check_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("\"{url}\": {e}"))?;
    let host = uri.host().ok_or_else(|| format!("\"{url}\" has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(format!(
            "\"{url}\": plain http only to a loopback address; use https"
        )),
        _ => Err(format!("\"{url}\" must be an https:// URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// GETs `url` (HTTP/1.1, one connection), with a timeout and a size limit.
async fn fetch(url: &http::Uri) -> Result<Bytes, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url))
        .await
        .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
}

async fn fetch_inner(url: &http::Uri) -> Result<Bytes, String> {
    let host = url.host().ok_or("no host")?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let authority = url.authority().map_or(host, |a| a.as_str());
    if https {
        let name = rustls::pki_types::ServerName::try_from(bare_host.to_owned())
            .map_err(|e| e.to_string())?;
        let stream = tls_connector()?
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        get(TokioIo::new(stream), authority, path).await
    } else {
        get(TokioIo::new(tcp), authority, path).await
    }
}

async fn get<I>(io: I, authority: &str, path: &str) -> Result<Bytes, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "sluice")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| format!("reading the body: {e}"))
    };
    // The connection is driven here, not in a spawned task: it ends with this function. It
    // may finish (the server closed it) before the body is read out; its failures reach the
    // exchange as errors, so only the exchange decides.
    let drive = async move {
        let _ = connection.await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        result = exchange => result,
        () = drive => unreachable!("pending forever"),
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http() {
        assert!(check_url("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://idp.example/jwks").is_err());
        assert!(check_url("ftp://idp.example/jwks").is_err());
    }

    #[test]
    fn symmetric_keys_in_a_set_are_ignored() {
        let set = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(KeySet::parse(set).is_err());
    }
}
