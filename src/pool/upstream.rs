//! One upstream Postgres server: the I/O side of its pool.
//!
//! The accounting — the budget, the tenants' counts, queues and fair shares — is the pure
//! state machine in [`super::budget`]. This side holds what cannot be pure: the sockets of the
//! connections at rest (by id), the channels of the requests waiting, the tasks that open,
//! recover and close connections. It feeds each event to the [`Budget`] and carries out the
//! [`Action`]s it returns; it does no counting of its own.
//!
//! All of this sits behind one `std::sync::Mutex` per upstream: every critical section is an
//! event, a few map moves and channel sends, never an `.await`; nothing that could take the
//! lock again (a [`PooledConn`]'s `Drop`) is dropped while it is held.
//!
//! A connection is given up only one way: Terminate, then wait until the server closes the
//! socket, re-sending the cancel while its backend is still busy (a statement that started
//! after the first cancel arrived). Its slot is freed only then; one whose backend will not end
//! keeps its slot and is reported (`sluice_upstream_stuck_connections`, a warning).

mod cluster;
mod guards;
mod tasks;

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::budget::{
    Action, Budget, CloseReason, ConnId, Limits, Reply, Returned, TenantSpec, WaiterId,
};
pub use super::budget::{TenantPoolStatus, UpstreamStatus};
use super::health::ServerLimit;
use super::{PoolError, PoolMetrics};
use crate::pg::{ConnectConfig, PgConnection};
pub(crate) use guards::PooledConn;
use guards::Waiting;
use tasks::Work;

/// The upstream's part of the config; a reload may change all but the name.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamSettings {
    pub name: Arc<str>,
    /// Where and as whom the upstream is reached; a reload that changes it replaces every
    /// connection (within the one budget).
    pub identity: String,
    pub limits: Limits,
    /// Set in cluster mode: `limits.budget` is then this replica's share, moved by the
    /// control loop (`crate::cluster`), and a reload keeps the share in force.
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

/// A tenant's part of the config, as the upstream needs it.
#[derive(Debug, Clone)]
pub(crate) struct TenantSettings {
    pub id: Arc<str>,
    pub pool_size: usize,
    pub max_waiting: usize,
    pub connect: Arc<ConnectConfig>,
}

pub(crate) struct Upstream {
    name: Arc<str>,
    // std Mutex: held for an event at a time, never across an .await.
    state: Mutex<Shared>,
    tasks: TaskTracker,
    metrics: Arc<dyn PoolMetrics>,
    me: Weak<Upstream>,
    /// Cluster mode: the members and their addresses as the control loop last read them.
    peers: Mutex<crate::cluster::Peers>,
    /// Cluster mode: how many members `peers` holds (0 before the first poll, and outside
    /// cluster mode), read per request to divide tenants' rates.
    members: std::sync::atomic::AtomicUsize,
}

struct Shared {
    book: Budget,
    identity: String,
    /// Connections not in a request's hands: idle ones, and for an instant those the book is
    /// deciding about.
    parked: FxHashMap<ConnId, Box<PgConnection>>,
    waiters: FxHashMap<WaiterId, oneshot::Sender<Result<PooledConn, PoolError>>>,
    /// How each tenant (by index) connects.
    connect: Vec<Arc<ConnectConfig>>,
    cluster: Option<crate::cluster::ClusterSettings>,
}

// A ticket lives for one step of a check-out, on the stack; boxing the connection would cost
// an allocation per check-out instead.
#[allow(clippy::large_enum_variant)]
enum Ticket {
    Idle(PooledConn, bool),
    Wait(WaiterId, oneshot::Receiver<Result<PooledConn, PoolError>>),
    Refused(PoolError),
}

impl Upstream {
    pub(crate) fn new(
        settings: UpstreamSettings,
        tenants: Vec<TenantSettings>,
        tasks: TaskTracker,
        metrics: Arc<dyn PoolMetrics>,
    ) -> Arc<Upstream> {
        let specs = tenants.iter().map(tenant_spec).collect();
        Arc::new_cyclic(|me| Upstream {
            state: Mutex::new(Shared {
                book: Budget::new(settings.name.clone(), settings.limits, specs),
                identity: settings.identity,
                parked: FxHashMap::default(),
                waiters: FxHashMap::default(),
                connect: tenants.into_iter().map(|t| t.connect).collect(),
                cluster: settings.cluster,
            }),
            name: settings.name,
            tasks,
            metrics,
            me: me.clone(),
            peers: Mutex::new(crate::cluster::Peers::new()),
            members: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the counts half-updated in a way that
        // matters more than stopping service would; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pooled(&self, id: ConnId, pg: Box<PgConnection>) -> PooledConn {
        PooledConn {
            id,
            pg: Some(pg),
            upstream: self.me.clone(),
        }
    }

    /// A connection for `tenant`: an idle one, a new one, or the next one returned, in FIFO
    /// order with other waiters, within `wait`.
    ///
    /// Cancellation: if the caller drops this future while it waits, its place in the queue
    /// is removed, and a connection handed to it in that instant goes back to the pool.
    pub(crate) async fn checkout(
        &self,
        tenant: usize,
        wait: Duration,
    ) -> Result<PooledConn, PoolError> {
        let (conn, _) = self.checkout_from(tenant, wait, Instant::now()).await?;
        Ok(conn)
    }

    /// [`Upstream::checkout`] for a request that asked at `asked` (a clock read the caller
    /// already made): the connection, and when it was handed over — `asked` itself for an
    /// idle one, so a request that did not wait reads the clock once for both.
    pub(crate) async fn checkout_from(
        &self,
        tenant: usize,
        wait: Duration,
        asked: Instant,
    ) -> Result<(PooledConn, Instant), PoolError> {
        let mut now = asked;
        let deadline = now + wait;
        loop {
            let (ticket, work) = {
                let mut state = self.lock();
                let (reply, actions) = state.book.checkout(tenant, now);
                let ticket = match reply {
                    Reply::Idle { conn, ping } => {
                        let pg = state.parked.remove(&conn).expect("idle connection parked");
                        Ticket::Idle(self.pooled(conn, pg), ping)
                    }
                    Reply::Queued(waiter) => {
                        let (tx, rx) = oneshot::channel();
                        state.waiters.insert(waiter, tx);
                        Ticket::Wait(waiter, rx)
                    }
                    Reply::Refused(error) => Ticket::Refused(error),
                };
                (ticket, self.apply(&mut state, actions, now))
            };
            self.execute(work);
            match ticket {
                Ticket::Refused(error) => return Err(error),
                Ticket::Idle(conn, ping) => {
                    if let Some(conn) = self.revalidate(conn, ping).await {
                        // A round trip to revalidate it is part of the wait.
                        let handed = if ping { Instant::now() } else { now };
                        return Ok((conn, handed));
                    }
                    now = Instant::now();
                }
                Ticket::Wait(id, rx) => {
                    let mut waiting = Waiting {
                        upstream: self,
                        tenant,
                        id,
                        rx: Some(rx),
                    };
                    let conn = waiting.wait(deadline).await?;
                    return Ok((conn, Instant::now()));
                }
            }
        }
    }

    /// An idle connection is checked before use: for free (has the server closed it?) and,
    /// after a long idle spell, with a round trip — boxed, because it is rare and its state
    /// would otherwise be carried by every check-out's future. (If the caller goes away during
    /// the round trip, the connection goes back through `Drop` and is recovered or terminated.)
    async fn revalidate(&self, mut conn: PooledConn, ping: bool) -> Option<PooledConn> {
        let alive = conn.poll_alive() && (!ping || Box::pin(conn.ping()).await.is_ok());
        if alive {
            Some(conn)
        } else {
            let (id, pg) = conn.into_parts();
            self.give_back(id, pg, None, true);
            None
        }
    }

    /// Gives a connection back after a request held it since `since`.
    pub(crate) fn checkin(&self, conn: PooledConn, since: Instant) {
        // One clock read for the time held and the book's event.
        let now = Instant::now();
        let (id, pg) = conn.into_parts();
        let held = now.saturating_duration_since(since);
        self.give_back_at(id, pg, Some(held), false, now);
    }

    fn give_back(&self, id: ConnId, pg: Box<PgConnection>, held: Option<Duration>, broken: bool) {
        self.give_back_at(id, pg, held, broken, Instant::now());
    }

    fn give_back_at(
        &self,
        id: ConnId,
        pg: Box<PgConnection>,
        held: Option<Duration>,
        broken: bool,
        now: Instant,
    ) {
        let how = if broken || pg.is_broken() {
            Returned::Broken
        } else if pg.is_clean() {
            Returned::Clean
        } else {
            Returned::Dirty
        };
        self.feed_at(Some((id, pg)), now, |book, now| {
            book.returned(id, how, held, now)
        });
    }

    /// Parks `conn` (if any), feeds one event to the book and carries out its actions.
    fn feed(
        &self,
        conn: Option<(ConnId, Box<PgConnection>)>,
        event: impl FnOnce(&mut Budget, Instant) -> Vec<Action>,
    ) {
        self.feed_at(conn, Instant::now(), event);
    }

    /// [`Upstream::feed`] at `now`, a clock reading the caller already has.
    fn feed_at(
        &self,
        conn: Option<(ConnId, Box<PgConnection>)>,
        now: Instant,
        event: impl FnOnce(&mut Budget, Instant) -> Vec<Action>,
    ) {
        let work = {
            let mut state = self.lock();
            if let Some((id, pg)) = conn {
                state.parked.insert(id, pg);
            }
            let actions = event(&mut state.book, now);
            self.apply(&mut state, actions, now)
        };
        self.execute(work);
    }

    /// Carries out the actions that need no waiting (answers to waiters) under the lock,
    /// feeding their consequences back; returns the rest as work to start once it is released.
    fn apply(&self, state: &mut Shared, actions: Vec<Action>, now: Instant) -> Vec<Work> {
        let mut queue: VecDeque<Action> = actions.into();
        let mut work = Vec::new();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Connect {
                    conn,
                    tenant,
                    read_limit,
                } => work.push(Work::Connect {
                    conn,
                    read_limit,
                    config: state.connect[tenant].clone(),
                }),
                Action::Close { conn, reason } => {
                    self.count_closed(reason);
                    let pg = state
                        .parked
                        .remove(&conn)
                        .expect("closing connection parked");
                    work.push(Work::Close { conn, pg });
                }
                Action::Replace {
                    old,
                    conn,
                    tenant,
                    read_limit,
                } => {
                    self.count_closed(CloseReason::Rebalanced);
                    let pg = state
                        .parked
                        .remove(&old)
                        .expect("replaced connection parked");
                    work.push(Work::Replace {
                        old,
                        pg,
                        conn,
                        read_limit,
                        config: state.connect[tenant].clone(),
                    });
                }
                Action::Recover { conn } => {
                    let pg = state.parked.remove(&conn).expect("dirty connection parked");
                    work.push(Work::Recover { conn, pg });
                }
                Action::Hand { waiter, conn, .. } => {
                    let pg = state
                        .parked
                        .remove(&conn)
                        .expect("handed connection parked");
                    let back = match state.waiters.remove(&waiter) {
                        Some(tx) => match tx.send(Ok(self.pooled(conn, pg))) {
                            Ok(()) => None,
                            Err(Ok(returned)) => Some(returned.into_parts().1),
                            Err(Err(_)) => unreachable!("sent a connection"),
                        },
                        None => Some(pg),
                    };
                    // The waiter went away in that instant: the connection is placed again.
                    if let Some(pg) = back {
                        state.parked.insert(conn, pg);
                        queue.extend(state.book.returned(conn, Returned::Clean, None, now));
                    }
                }
                Action::Fail { waiter, error, .. } => {
                    if let Some(tx) = state.waiters.remove(&waiter) {
                        let _ = tx.send(Err(error));
                    }
                }
                Action::Misconfigured(problem) => {
                    tracing::error!(upstream = %self.name(), "{problem}");
                }
                Action::LimitOk { budget, limit } => {
                    tracing::info!(
                        upstream = %self.name(),
                        budget,
                        server_allows = limit.allowed(),
                        "connected to the upstream; its budget fits the server"
                    );
                }
            }
        }
        work
    }

    /// One reaper pass: closes idle connections past their idle timeout or lifetime, those the
    /// server closed, and those over a lowered budget; retries connections for waiters once a
    /// back-off has passed.
    pub(crate) fn reap(&self, now: Instant) {
        let work = {
            let mut state = self.lock();
            let dead: Vec<ConnId> = state
                .parked
                .iter_mut()
                .filter_map(|(id, pg)| (!pg.poll_alive()).then_some(*id))
                .collect();
            let actions = state.book.reap(now, &dead);
            self.apply(&mut state, actions, now)
        };
        self.execute(work);
    }

    pub(crate) fn status(&self) -> UpstreamStatus {
        self.lock().book.status(Instant::now())
    }

    pub(crate) fn tenant_status(&self, tenant: usize) -> TenantPoolStatus {
        self.lock().book.tenant_status(tenant, Instant::now())
    }

    pub(crate) fn has_connected(&self) -> bool {
        self.lock().book.has_connected()
    }

    pub(crate) fn misconfigured(&self) -> Option<String> {
        self.lock().book.misconfigured().map(str::to_owned)
    }

    pub(crate) fn identity(&self) -> String {
        self.lock().identity.clone()
    }

    /// Stops new work, fails waiters and closes idle connections; connections in use close
    /// when they come back.
    pub(crate) fn close(&self) {
        self.feed(None, |book, _| book.shut_down());
    }

    /// Applies a reload: new limits, where the upstream points, and the tenants now on it —
    /// kept (by id, settings updated), added, or retired (gone from the config). Returns each
    /// given tenant's index. See [`Budget::reload`].
    pub(crate) fn reconfigure(
        &self,
        settings: &UpstreamSettings,
        tenants: Vec<TenantSettings>,
    ) -> Vec<usize> {
        let now = Instant::now();
        let (indexes, work) = {
            let mut state = self.lock();
            let identity_changed = state.identity != settings.identity;
            if identity_changed {
                tracing::info!(upstream = %self.name(), "the upstream's address or credentials changed; its connections are replaced within the same budget");
            }
            state.identity = settings.identity.clone();
            let specs = tenants.iter().map(tenant_spec).collect();
            let mut limits = settings.limits.clone();
            if settings.cluster.is_some() && state.cluster.is_some() {
                // The share in force stays until the control loop moves it.
                limits.budget = state.book.budget();
            }
            state.cluster = settings.cluster.clone();
            let (indexes, actions) = state.book.reload(limits, specs, identity_changed, now);
            let count = state.book.tenant_count();
            if let Some(first) = tenants.first() {
                state.connect.resize(count, first.connect.clone());
            }
            for (&index, tenant) in indexes.iter().zip(tenants) {
                state.connect[index] = tenant.connect;
            }
            (indexes, self.apply(&mut state, actions, now))
        };
        self.execute(work);
        indexes
    }

    /// Retires every tenant: the upstream left the config.
    pub(crate) fn retire_all(&self) {
        self.feed(None, |book, now| book.retire_all(now));
    }

    /// Whether new limits fit the server, as far as the gateway knows its limit.
    pub(crate) fn check_budget(&self, limits: &Limits) -> Result<(), String> {
        self.lock().book.check_budget(limits)
    }

    /// The server's connection limit as last read.
    pub(crate) fn server_limit(&self) -> Option<ServerLimit> {
        self.lock().book.server_limit()
    }
}

fn tenant_spec(tenant: &TenantSettings) -> TenantSpec {
    TenantSpec {
        id: tenant.id.clone(),
        pool_size: tenant.pool_size,
        max_waiting: tenant.max_waiting,
        connect_key: connect_key(&tenant.connect),
    }
}

/// What makes two tenant connection settings reach the same sessions (the statement cache
/// size does not matter).
fn connect_key(c: &ConnectConfig) -> String {
    format!(
        "{:?}|{}|{:?}|{}|{}|{:?}|{}",
        c.target,
        c.user,
        c.password,
        c.database,
        c.tls.describe(),
        c.settings,
        c.statement_timeout_ms
    )
}

#[cfg(test)]
mod fault_tests;
