//! Listeners, connection handling and graceful shutdown.
//!
//! [`run`] serves until its `shutdown` future completes, then drains: `/readyz` answers 503 at
//! once (load balancers stop sending) while the listeners keep answering, requests in flight
//! and open transactions get until `shutdown_timeout_ms` to finish, then connections are closed
//! gracefully, the pools are closed and every background task is awaited.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, App, Generation};
use crate::config::{Config, ServerTls};
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
        }
    }
}

/// Binds the listeners a config asks for: `listen` (HTTPS when `tls` has no address of its
/// own), and `tls.listen` for HTTPS beside plain HTTP.
pub async fn bind(config: &Config) -> Result<Vec<Listener>, RunError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| RunError::Config(format!("cannot listen on {addr}: {e}")))
    };
    let mut listeners = Vec::new();
    match &config.server.tls {
        None => listeners.push(Listener {
            tcp: bind(config.server.listen).await?,
            kind: ListenerKind::Http,
        }),
        Some(tls) => {
            let acceptor = tls_acceptor(tls)?;
            match tls.listen {
                Some(https) => {
                    listeners.push(Listener {
                        tcp: bind(config.server.listen).await?,
                        kind: ListenerKind::Http,
                    });
                    listeners.push(Listener {
                        tcp: bind(https).await?,
                        kind: ListenerKind::Https(acceptor),
                    });
                }
                None => listeners.push(Listener {
                    tcp: bind(config.server.listen).await?,
                    kind: ListenerKind::Https(acceptor),
                }),
            }
        }
    }
    Ok(listeners)
}

/// The TLS acceptor for `[server] tls`: the certificate is loaded (and checked) now.
pub fn tls_acceptor(tls: &ServerTls) -> Result<TlsAcceptor, RunError> {
    let cert = ReloadableCert::load(&tls.cert, &tls.key).map_err(RunError::Config)?;
    TlsAcceptor::new(cert, tls.max_handshakes, tls.handshake_timeout).map_err(RunError::Config)
}

/// What the process around the gateway controls besides shutdown.
#[derive(Default)]
pub struct RunOptions {
    /// Reload requests (SIGHUP): certificates are read again.
    pub reload: Option<mpsc::Receiver<()>>,
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
    let generation = Generation::new(config, &tasks);
    generation
        .pools
        .probe(Duration::from_secs(5))
        .await
        .map_err(RunError::Config)?;
    let transactions = Transactions::new(tasks.clone());
    let app = App::new(generation, transactions.clone());

    let builder = Arc::new(http_builder(header_read_timeout));
    // Connections are tracked apart from background work so shutdown can wait for them first.
    let connections = TaskTracker::new();
    let stop_accepting = CancellationToken::new();
    let close_connections = CancellationToken::new();
    let mut certificates = Vec::new();
    for listener in listeners {
        tracing::info!(address = %listener.local_addr()?, kind = listener.kind.name(), "listening");
        if let ListenerKind::Https(acceptor) = &listener.kind {
            certificates.push(acceptor.cert.clone());
            tasks.spawn(acceptor.clone().watch_files(stop_accepting.clone()));
        }
        let serving = Serving {
            app: app.clone(),
            builder: builder.clone(),
            close: close_connections.clone(),
            connections: connections.clone(),
        };
        tasks.spawn(accept_loop(listener, serving, stop_accepting.clone()));
    }
    if let Some(mut reload) = options.reload {
        let stop = stop_accepting.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    request = reload.recv() => match request {
                        Some(()) => certificates.iter().for_each(|cert| { cert.reload(); }),
                        None => return,
                    },
                }
            }
        });
    }

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
    close_connections.cancel();
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
    app.generation().pools.close();
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

fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// What every accepted connection needs.
#[derive(Clone)]
struct Serving {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Cancelled at shutdown: connections finish their current request and close.
    close: CancellationToken,
    connections: TaskTracker,
}

async fn accept_loop(listener: Listener, serving: Serving, stop: CancellationToken) {
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
        match &listener.kind {
            ListenerKind::Http => {
                serving
                    .connections
                    .spawn(serve_connection(stream, peer, serving.clone()));
            }
            ListenerKind::Https(acceptor) => {
                // The handshake runs in the connection's own task: a slow client never holds
                // up the accept loop.
                let (acceptor, serving) = (acceptor.clone(), serving.clone());
                serving.connections.clone().spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => serve_connection(tls, peer, serving).await,
                        Err(error) => tracing::debug!(%peer, %error, "TLS connection refused"),
                    }
                });
            }
        }
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, serving: Serving)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = serving.app.clone();
    let service = service_fn(move |request| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(api::handle(app, request, peer.ip()).await) }
    });
    let connection = serving.builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = serving.close.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
