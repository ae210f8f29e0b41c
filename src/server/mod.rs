//! Listeners, connection handling and graceful shutdown.
//!
//! [`run`] serves until its `shutdown` future completes, then drains: `/readyz` answers 503 at
//! once (load balancers stop sending) while the listeners keep answering, requests in flight
//! and open transactions get until `shutdown_timeout_ms` to finish, then connections are closed
//! gracefully, the pools are closed and every background task is awaited.

mod activity;
mod close;
mod connection;
pub(crate) mod http1_fast;
mod poll_loop;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{App, Generation, Reloader, Surface};
use crate::config::{Config, ServerTls};
use crate::metrics::Metrics;
use crate::tls::{ReloadableCert, TlsAcceptor};
use crate::transactions::Transactions;

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A bound socket and what it serves.
pub struct Listener {
    pub tcp: TcpListener,
    pub kind: ListenerKind,
}

#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// The API over plain HTTP/1.1 (and HTTP/2 with prior knowledge), for use behind a
    /// TLS-terminating load balancer.
    Http,
    /// The API over HTTPS: HTTP/1.1 or HTTP/2 by ALPN.
    Https(TlsAcceptor),
    /// `GET /metrics` only (`[server] metrics_listen`).
    Metrics,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl ListenerKind {
    fn name(&self) -> &'static str {
        match self {
            ListenerKind::Http => "http",
            ListenerKind::Https(_) => "https",
            ListenerKind::Metrics => "metrics",
        }
    }
}

/// Binds the listeners a config asks for: `listen` (HTTPS when `tls` has no address of its
/// own), and `tls.listen` for HTTPS beside plain HTTP.
pub fn bind(config: &Config) -> Result<Vec<Listener>, RunError> {
    let bind = |addr: SocketAddr| {
        listen(addr).map_err(|e| RunError::Config(format!("cannot listen on {addr}: {e}")))
    };
    let mut listeners = Vec::new();
    match &config.server.tls {
        None => listeners.push(Listener {
            tcp: bind(config.server.listen)?,
            kind: ListenerKind::Http,
        }),
        Some(tls) => {
            let acceptor = tls_acceptor(tls)?;
            match tls.listen {
                Some(https) => {
                    listeners.push(Listener {
                        tcp: bind(config.server.listen)?,
                        kind: ListenerKind::Http,
                    });
                    listeners.push(Listener {
                        tcp: bind(https)?,
                        kind: ListenerKind::Https(acceptor),
                    });
                }
                None => listeners.push(Listener {
                    tcp: bind(config.server.listen)?,
                    kind: ListenerKind::Https(acceptor),
                }),
            }
        }
    }
    if let Some(metrics) = config.server.metrics_listen {
        listeners.push(Listener {
            tcp: bind(metrics)?,
            kind: ListenerKind::Metrics,
        });
    }
    Ok(listeners)
}

/// How many connections may wait to be accepted. The kernel caps it at `net.core.somaxconn`
/// (4096 on current kernels); the usual defaults (std's 128, tokio's 1024) make a burst of cold
/// clients meet dropped SYNs and a one-second retransmit.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The TLS acceptor for `[server] tls`: the certificate is loaded (and checked) now.
pub fn tls_acceptor(tls: &ServerTls) -> Result<TlsAcceptor, RunError> {
    let cert = ReloadableCert::load(&tls.cert, &tls.key).map_err(RunError::Config)?;
    TlsAcceptor::new(cert, tls.max_handshakes, tls.handshake_timeout).map_err(RunError::Config)
}

/// What the process around the gateway controls besides shutdown.
#[derive(Default)]
pub struct RunOptions {
    /// Reload requests (SIGHUP): certificates and the config file are read again.
    pub reload: Option<mpsc::Receiver<()>>,
    /// The config file, for reloads (SIGHUP, `POST /v1/admin/reload`); `None` when the config
    /// came from the environment.
    pub config_path: Option<PathBuf>,
}

/// Runs the gateway on `listeners` until `shutdown` completes, then drains and returns.
pub async fn run(
    listeners: Vec<Listener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with(listeners, config, RunOptions::default(), shutdown).await
}

/// [`run`], with reload requests.
pub async fn run_with(
    listeners: Vec<Listener>,
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let tasks = TaskTracker::new();
    let shutdown_timeout = config.server.shutdown_timeout;
    let header_read_timeout = config.server.header_read_timeout;
    let with_metrics = config.server.metrics_listen.is_none();
    let metrics = Metrics::new(crate::logging::lines_dropped());
    let generation = Generation::new(config, &tasks, &metrics);
    generation
        .pools
        .probe(Duration::from_secs(5))
        .await
        .map_err(RunError::Config)?;
    let transactions = Transactions::new(tasks.clone(), metrics.clone());
    let certificates = listeners
        .iter()
        .filter_map(|l| match &l.kind {
            ListenerKind::Https(acceptor) => Some(acceptor.cert.clone()),
            _ => None,
        })
        .collect();
    let reloader = Reloader::new(options.config_path, certificates);
    let app = App::new(
        generation,
        transactions.clone(),
        metrics,
        tasks.clone(),
        reloader,
    );

    let protocols = Arc::new(connection::Protocols::new(header_read_timeout));
    // Connections are tracked apart from background work so shutdown can wait for them first.
    let connections = TaskTracker::new();
    let stop_accepting = CancellationToken::new();
    let close_connections = close::Close::default();
    for listener in listeners {
        tracing::info!(address = %listener.local_addr()?, kind = listener.kind.name(), "listening");
        if let ListenerKind::Https(acceptor) = &listener.kind {
            tasks.spawn(acceptor.clone().watch_files(stop_accepting.clone()));
        }
        let surface = match listener.kind {
            ListenerKind::Metrics => Surface::Metrics,
            ListenerKind::Http | ListenerKind::Https(_) => Surface::Api { with_metrics },
        };
        let serving = connection::Serving {
            app: app.clone(),
            protocols: protocols.clone(),
            surface,
            close: close_connections.clone(),
        };
        tasks.spawn(accept_loop(
            listener,
            serving,
            connections.clone(),
            stop_accepting.clone(),
        ));
    }
    if let Some(mut reload) = options.reload {
        let (stop, app) = (stop_accepting.clone(), app.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    request = reload.recv() => match request {
                        Some(()) => {
                            if let Err(reason) = app.reload().await {
                                tracing::error!(%reason, "config reload refused; the current config stays in force");
                            }
                        }
                        None => return,
                    },
                }
            }
        });
    }

    tasks.spawn(trim_after_bursts(app.clone(), stop_accepting.clone()));

    shutdown.await;
    let deadline = Instant::now() + shutdown_timeout;
    tracing::info!(timeout_ms = shutdown_timeout.as_millis() as u64, "draining");
    app.start_draining();
    // Keep answering (so `/readyz` can say 503) until nothing is in flight and every open
    // transaction has ended (committed, rolled back or timed out).
    while (app.in_flight() > 0 || transactions.open_count() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    transactions.abort_all().await;
    stop_accepting.cancel();
    // Idle keep-alive connections close now; busy ones after their current request.
    close_connections.close();
    connections.close();
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    if tokio::time::timeout(remaining, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the shutdown deadline; closing them");
    }
    // Streams whose clients stopped reading would otherwise hold the exit up past the
    // deadline.
    app.stop_background_work();
    app.generation().pools.close();
    app.generation().stop_jwks_refresh();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running at exit");
    }
    tracing::info!("stopped");
    Ok(())
}

/// After a burst that held much memory for bodies and responses has passed, hands the
/// allocator's free pages back to the system (see `crate::allocator`): otherwise the burst's
/// high-water mark stays resident.
async fn trim_after_bursts(app: Arc<App>, stop: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(2);
    const WORTH_IT: usize = 16 * 1024 * 1024;
    let mut pending = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let (peak, quiet) = app.memory.take_peak();
        pending |= peak >= WORTH_IT;
        if pending && quiet {
            pending = false;
            tokio::task::spawn_blocking(crate::allocator::trim);
        }
    }
}

async fn accept_loop(
    listener: Listener,
    serving: connection::Serving,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let serving = serving.clone();
        match &listener.kind {
            ListenerKind::Http | ListenerKind::Metrics => {
                connections.spawn(connection::serve_plain(stream, peer, serving));
            }
            ListenerKind::Https(acceptor) => {
                // The handshake runs in the connection's own task: a slow client never holds
                // up the accept loop.
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // A handshake still going when connections close has no request to
                    // finish; waiting for it would hold shutdown up to its deadline.
                    let accepted = tokio::select! {
                        accepted = acceptor.accept(stream) => accepted,
                        _ = serving.close.cancelled() => return,
                    };
                    match accepted {
                        Ok(tls) => {
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            connection::serve_tls(tls, h2, peer, serving).await;
                        }
                        Err(error) => tracing::debug!(%peer, %error, "TLS connection refused"),
                    }
                });
            }
        }
    }
}
