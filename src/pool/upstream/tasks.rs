//! The work an upstream does off its lock: opening a connection (and reading the server's
//! limit on it), recovering one a request left mid-statement, closing one until the server
//! confirms its backend gone. Each task feeds its outcome back to the book as an event.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;

use super::Upstream;
use crate::pg::faults::{self, Fault};
use crate::pg::{ConnectConfig, PgConnection};
use crate::pool::budget::{Action, CloseReason, ConnId, Connected, Returned};
use crate::pool::health::{ServerLimit, read_limit};

/// How long a connection abandoned mid-statement may take to cancel, drain and reset.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to close a session we ended before the connection is
/// reported stuck (it keeps its slot either way).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Work decided under the lock and carried out after it is released.
pub(super) enum Work {
    Connect {
        conn: ConnId,
        read_limit: bool,
        config: Arc<ConnectConfig>,
    },
    Close {
        conn: ConnId,
        pg: Box<PgConnection>,
    },
    Replace {
        old: ConnId,
        pg: Box<PgConnection>,
        conn: ConnId,
        read_limit: bool,
        config: Arc<ConnectConfig>,
    },
    Recover {
        conn: ConnId,
        pg: Box<PgConnection>,
    },
}

impl Upstream {
    /// Starts the work decided under the lock, once it is released.
    pub(super) fn execute(&self, work: Vec<Work>) {
        for work in work {
            let Some(upstream) = self.me.upgrade() else {
                return;
            };
            match work {
                Work::Connect {
                    conn,
                    read_limit,
                    config,
                } => self.spawn(upstream.open(conn, config, read_limit)),
                Work::Close { conn, pg } => self.spawn(async move {
                    upstream.close_connection(conn, pg).await;
                }),
                Work::Replace {
                    old,
                    pg,
                    conn,
                    read_limit,
                    config,
                } => self.spawn(async move {
                    upstream.close_connection(old, pg).await;
                    upstream.open(conn, config, read_limit).await;
                }),
                Work::Recover { conn, mut pg } => self.spawn(async move {
                    let how = if pg.recover(RECOVERY_TIMEOUT).await {
                        Returned::Clean
                    } else {
                        tracing::debug!(upstream = %upstream.name(), "closing a connection that could not be recovered");
                        Returned::Unrecoverable
                    };
                    upstream.feed(Some((conn, pg)), |book, now| {
                        book.returned(conn, how, None, now)
                    });
                }),
            }
        }
    }

    /// Spawns onto the tracker. Outside a runtime (a process tearing down) nothing more is
    /// started: the book is halted so it schedules no more work.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(task);
        } else {
            self.lock().book.halt();
        }
    }

    pub(super) fn count_closed(&self, reason: CloseReason) {
        self.metrics.connection_closed(&self.name, reason.label());
    }

    /// Ends a connection's session and frees its slot once the server has closed the socket;
    /// until then the slot stays taken, and after [`CLOSE_WAIT`] the connection is reported
    /// stuck.
    async fn close_connection(&self, conn: ConnId, pg: Box<PgConnection>) {
        pg.close_until_gone(CLOSE_WAIT, || {
            tracing::warn!(
                upstream = %self.name(),
                "a closed connection's backend has not ended; it keeps its budget slot, and the cancel is re-sent until it does"
            );
            self.lock().book.stuck(conn);
        })
        .await;
        self.feed(None, |book, now| book.closed(conn, now));
    }

    async fn open(self: Arc<Self>, conn: ConnId, config: Arc<ConnectConfig>, read_limit: bool) {
        let attempt = if faults::strikes(&config.target, Fault::ConnectRefused) {
            Err("connection refused (injected fault)".to_owned())
        } else {
            PgConnection::connect(&config)
                .await
                .map_err(|e| e.to_string())
        };
        let outcome = match attempt {
            Ok(mut pg) => match read_limit_on(&mut pg, read_limit).await {
                Ok(limit) => Ok((pg, limit)),
                Err(error) => {
                    pg.close_until_gone(CLOSE_WAIT, || {}).await;
                    Err(error)
                }
            },
            Err(error) => Err(error),
        };
        let (parked, event) = match outcome {
            // Boxed once for its life in the pool: handed between the pool's map, requests
            // and tasks, it moves as a pointer instead of 360 bytes.
            Ok((pg, limit)) => (Some((conn, Box::new(pg))), Connected::Ok { limit }),
            Err(error) => {
                tracing::warn!(upstream = %self.name(), %error, "cannot connect to the upstream");
                let jitter = rand::rng().random_range(0.5..=1.0);
                (None, Connected::Failed { error, jitter })
            }
        };
        let mut outcome = match event {
            Connected::Ok { .. } => "ok",
            Connected::Failed { .. } => "error",
        };
        self.feed(parked, |book, now| {
            let actions = book.connected(conn, event, now);
            if actions
                .iter()
                .any(|a| matches!(a, Action::Misconfigured(_)))
            {
                outcome = "misconfigured";
            }
            actions
        });
        self.metrics.connect_attempt(&self.name, outcome);
    }
}

/// Reads the server's connection limit on a fresh connection, when asked to.
async fn read_limit_on(pg: &mut PgConnection, read: bool) -> Result<Option<ServerLimit>, String> {
    if !read {
        return Ok(None);
    }
    read_limit(pg).await.map(Some)
}
