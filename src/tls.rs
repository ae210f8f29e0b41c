//! HTTPS for the gateway's listeners: rustls with TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`, a certificate that reloads without a restart (SIGHUP, or when its files change),
//! and protection against slow or half-open clients: a handshake timeout and a cap on
//! handshakes in progress.
//!
//! (TLS from the gateway to Postgres is `pg::tls`.)

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;

/// How often the certificate files are checked for changes.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The certificate in use, swapped atomically on reload; handshakes in progress keep the one
/// they started with, established connections are not affected.
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Modification times of the files last loaded.
    loaded: std::sync::Mutex<(Option<SystemTime>, Option<SystemTime>)>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("cert", &self.cert_path)
            .finish()
    }
}

impl ReloadableCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ReloadableCert>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_certified_key(cert_path, key_path, &provider)?;
        Ok(Arc::new(ReloadableCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(key),
            loaded: std::sync::Mutex::new(modified(cert_path, key_path)),
            provider,
        }))
    }

    /// Loads the files again. A certificate that does not load (or does not match its key)
    /// is refused with a log line, and the current one stays.
    pub fn reload(&self) -> bool {
        match load_certified_key(&self.cert_path, &self.key_path, &self.provider) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) =
                    modified(&self.cert_path, &self.key_path);
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                tracing::error!(cert = %self.cert_path.display(), %error, "new TLS certificate refused; keeping the current one");
                false
            }
        }
    }

    /// Reloads if either file changed since it was last loaded.
    pub fn reload_if_changed(&self) {
        let now = modified(&self.cert_path, &self.key_path);
        let changed = *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed && !self.reload() {
            // Do not retry the same broken files every few seconds.
            *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = now;
        }
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modified(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (time(cert), time(key))
}

/// A certificate chain and its key from PEM files (PKCS#8, PKCS#1 RSA or SEC1 EC keys).
fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// Accepts TLS connections: at most `max_handshakes` at once, each within `handshake_timeout`.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    pub cert: Arc<ReloadableCert>,
    handshakes: Arc<Semaphore>,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("cert", &self.cert)
            .finish()
    }
}

/// Why a TLS connection was not established.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("too many TLS handshakes in progress")]
    Busy,
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

impl TlsAcceptor {
    pub fn new(
        cert: Arc<ReloadableCert>,
        max_handshakes: usize,
        handshake_timeout: Duration,
    ) -> Result<TlsAcceptor, String> {
        let mut config = ServerConfig::builder_with_provider(cert.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert,
            handshakes: Arc::new(Semaphore::new(max_handshakes.max(1))),
            handshake_timeout,
        })
    }

    /// The handshake, bounded in time and in how many run at once: waiting for a slot counts
    /// against the same timeout, so a flood of half-open connections costs each of them at
    /// most that long.
    pub async fn accept(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let work = async {
            let _slot = self
                .handshakes
                .acquire()
                .await
                .map_err(|_| HandshakeError::Busy)?;
            self.acceptor
                .accept(tcp)
                .await
                .map_err(HandshakeError::Failed)
        };
        tokio::time::timeout(self.handshake_timeout, work)
            .await
            .unwrap_or(Err(HandshakeError::Timeout))
    }

    /// Checks the certificate files for changes every few seconds until `stop`.
    pub async fn watch_files(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.cert.reload_if_changed(),
            }
        }
    }
}
