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

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::PoolError;
use super::budget::{
    Action, Budget, CloseReason, ConnId, Connected, Limits, Reply, Returned, TenantSpec, WaiterId,
};
pub use super::budget::{TenantPoolStatus, UpstreamStatus};
use super::health::{SERVER_LIMIT_SQL, ServerLimit};
use crate::metrics::{ClosedLabels, ConnectLabels, Metrics};
use crate::pg::faults::{self, Fault};
use crate::pg::{ConnectConfig, PgConnection};

/// How long a connection abandoned mid-statement may take to cancel, drain and reset.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to close a session we ended before the connection is
/// reported stuck (it keeps its slot either way).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

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
    metrics: Arc<Metrics>,
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
    parked: HashMap<ConnId, PgConnection>,
    waiters: HashMap<WaiterId, oneshot::Sender<Result<PooledConn, PoolError>>>,
    /// How each tenant (by index) connects.
    connect: Vec<Arc<ConnectConfig>>,
    cluster: Option<crate::cluster::ClusterSettings>,
}

/// A connection in a request's hands. Dropping it gives it back (recovered first if the
/// request left it mid-statement): whatever happens to the request, the connection is
/// either reused or terminated, never forgotten.
pub(crate) struct PooledConn {
    id: ConnId,
    pg: Option<PgConnection>,
    upstream: Weak<Upstream>,
}

impl PooledConn {
    /// The parts, without giving the connection back.
    fn into_parts(mut self) -> (ConnId, PgConnection) {
        let pg = self.pg.take().expect("present until given back");
        (self.id, pg)
    }
}

impl Deref for PooledConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.pg.as_ref().expect("present until given back")
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.pg.as_mut().expect("present until given back")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take()
            && let Some(upstream) = self.upstream.upgrade()
        {
            upstream.give_back(self.id, pg, None, false);
        }
    }
}

/// Work decided under the lock and carried out after it is released.
enum Work {
    Connect {
        conn: ConnId,
        read_limit: bool,
        config: Arc<ConnectConfig>,
    },
    Close {
        conn: ConnId,
        pg: PgConnection,
    },
    Replace {
        old: ConnId,
        pg: PgConnection,
        conn: ConnId,
        read_limit: bool,
        config: Arc<ConnectConfig>,
    },
    Recover {
        conn: ConnId,
        pg: PgConnection,
    },
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
        metrics: Arc<Metrics>,
    ) -> Arc<Upstream> {
        let specs = tenants.iter().map(tenant_spec).collect();
        Arc::new_cyclic(|me| Upstream {
            state: Mutex::new(Shared {
                book: Budget::new(settings.name.clone(), settings.limits, specs),
                identity: settings.identity,
                parked: HashMap::new(),
                waiters: HashMap::new(),
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

    fn pooled(&self, id: ConnId, pg: PgConnection) -> PooledConn {
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
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
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
                        return Ok(conn);
                    }
                }
                Ticket::Wait(id, rx) => {
                    let mut waiting = Waiting {
                        upstream: self,
                        tenant,
                        id,
                        rx: Some(rx),
                    };
                    return waiting.wait(deadline).await;
                }
            }
        }
    }

    /// An idle connection is checked before use: for free (has the server closed it?) and,
    /// after a long idle spell, with a round trip. (If the caller goes away during the round
    /// trip, the connection goes back through `Drop` and is recovered or terminated.)
    async fn revalidate(&self, mut conn: PooledConn, ping: bool) -> Option<PooledConn> {
        let alive = conn.poll_alive() && (!ping || conn.ping().await.is_ok());
        if alive {
            Some(conn)
        } else {
            let (id, pg) = conn.into_parts();
            self.give_back(id, pg, None, true);
            None
        }
    }

    /// Gives a connection back after a request held it for `held`.
    pub(crate) fn checkin(&self, conn: PooledConn, held: Duration) {
        let (id, pg) = conn.into_parts();
        self.give_back(id, pg, Some(held), false);
    }

    fn give_back(&self, id: ConnId, pg: PgConnection, held: Option<Duration>, broken: bool) {
        let how = if broken || pg.is_broken() {
            Returned::Broken
        } else if pg.is_clean() {
            Returned::Clean
        } else {
            Returned::Dirty
        };
        self.feed(Some((id, pg)), |book, now| {
            book.returned(id, how, held, now)
        });
    }

    /// Parks `conn` (if any), feeds one event to the book and carries out its actions.
    fn feed(
        &self,
        conn: Option<(ConnId, PgConnection)>,
        event: impl FnOnce(&mut Budget, Instant) -> Vec<Action>,
    ) {
        let now = Instant::now();
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

    fn execute(&self, work: Vec<Work>) {
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

    fn count_closed(&self, reason: CloseReason) {
        let labels = ClosedLabels {
            upstream: self.name.to_string(),
            reason: reason.label(),
        };
        self.metrics.connections_closed.get_or_create(&labels).inc();
    }

    /// Ends a connection's session and frees its slot once the server has closed the socket;
    /// until then the slot stays taken, and after [`CLOSE_WAIT`] the connection is reported
    /// stuck.
    async fn close_connection(&self, conn: ConnId, pg: PgConnection) {
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
            Ok((pg, limit)) => (Some((conn, pg)), Connected::Ok { limit }),
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
        let labels = ConnectLabels {
            upstream: self.name.to_string(),
            outcome,
        };
        self.metrics.upstream_connects.get_or_create(&labels).inc();
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

    /// Cluster mode: the settings the control loop works with (current after reloads); `None`
    /// once the upstream is not clustered.
    pub(crate) fn cluster(&self) -> Option<crate::cluster::ClusterSettings> {
        self.lock().cluster.clone()
    }

    /// Cluster mode: the members as the control loop read them last.
    pub(crate) fn set_peers(&self, peers: crate::cluster::Peers) {
        self.members
            .store(peers.len(), std::sync::atomic::Ordering::Relaxed);
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    /// Cluster mode: the live members at the last poll (0 if none was read yet, or outside
    /// cluster mode).
    pub(crate) fn members(&self) -> usize {
        self.members.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cluster mode: every member as the control loop read them last.
    pub(crate) fn peers(&self) -> crate::cluster::Peers {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Cluster mode: `None` if `replica` is not a member, else its address if one was seen.
    pub(crate) fn peer(&self, replica: crate::cluster::plan::ReplicaId) -> Option<Option<String>> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&replica)
            .cloned()
    }

    /// Cluster mode: applies this replica's budget (a share change; see
    /// [`Budget::resize`]).
    pub(crate) fn set_budget(&self, budget: usize) {
        self.feed(None, |book, now| book.resize(budget, now));
    }

    /// The budget in force, the slots held (connections that may exist on the server: the
    /// larger of the two bounds this replica's footprint) and whether the pool is closed
    /// (draining: no new connection opens).
    pub(crate) fn footprint(&self) -> (usize, usize, bool) {
        let state = self.lock();
        (
            state.book.budget(),
            state.book.slots(),
            state.book.is_closed(),
        )
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

/// Reads the server's connection limit on a fresh connection, when asked to.
async fn read_limit_on(pg: &mut PgConnection, read: bool) -> Result<Option<ServerLimit>, String> {
    if !read {
        return Ok(None);
    }
    let rows = pg
        .fetch_text(SERVER_LIMIT_SQL, &[])
        .await
        .map_err(|e| e.to_string())?;
    rows.first()
        .and_then(|row| ServerLimit::from_row(row))
        .map(Some)
        .ok_or_else(|| "the server did not report max_connections".into())
}

/// A request's place in its tenant's queue. Dropping it (timeout, or the client vanished)
/// removes the place and returns a connection handed over in that instant.
struct Waiting<'u> {
    upstream: &'u Upstream,
    tenant: usize,
    id: WaiterId,
    rx: Option<oneshot::Receiver<Result<PooledConn, PoolError>>>,
}

impl Waiting<'_> {
    async fn wait(&mut self, deadline: Instant) -> Result<PooledConn, PoolError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(PoolError::ShuttingDown);
        };
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => {
                self.rx = None;
                result
            }
            Ok(Err(_)) => {
                self.rx = None;
                Err(PoolError::ShuttingDown)
            }
            Err(_) => {
                let retry_after = self.upstream.lock().book.estimate_wait(self.tenant);
                Err(PoolError::Timeout { retry_after })
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let sender = {
            let mut state = self.upstream.lock();
            state.book.waiter_gone(self.tenant, self.id);
            state.waiters.remove(&self.id)
        };
        drop(sender);
        rx.close();
        // A connection handed over in that instant goes back (through its `Drop`).
        if let Ok(Ok(conn)) = rx.try_recv() {
            drop(conn);
        }
    }
}

/// Faults injected into the real I/O path (src/pg/faults.rs) against a real Postgres: the
/// events the model test feeds the book, produced by real connections.
#[cfg(test)]
mod fault_tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::dev::{TempPostgres, TempPostgresOptions};
    use crate::pg::faults::{arm, disarm};

    /// One cluster for these tests (its watchdog removes it when the binary exits); each test
    /// has its own upstream, and tests that arm faults (keyed by port) take turns.
    struct Cluster {
        port: u16,
        url: String,
        _postgres: std::sync::Mutex<TempPostgres>,
    }

    fn cluster() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let pg = TempPostgres::start(TempPostgresOptions::default()).expect("test Postgres");
            Cluster {
                port: pg.port(),
                url: pg.url("postgres"),
                _postgres: std::sync::Mutex::new(pg),
            }
        })
    }

    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn upstream(budget: usize) -> (Arc<Upstream>, u16) {
        let cluster = cluster();
        let url = crate::config::PostgresUrl::parse(&cluster.url).unwrap();
        let connect = ConnectConfig {
            target: url.target,
            user: url.user,
            password: url.password,
            database: url.database,
            tls: crate::pg::TlsConnector::disabled(),
            connect_timeout: Duration::from_secs(5),
            settings: vec![("application_name".into(), "sluice/fault".into())],
            statement_timeout_ms: 0,
            statement_cache_size: 8,
            auth: Default::default(),
        };
        let upstream = Upstream::new(
            UpstreamSettings {
                name: "faulty".into(),
                identity: "faulty".into(),
                limits: Limits {
                    budget,
                    server_budget: budget,
                    server_lifetime: Duration::from_secs(3600),
                    server_idle_timeout: Duration::from_secs(600),
                },
                cluster: None,
            },
            vec![TenantSettings {
                id: "t".into(),
                pool_size: budget,
                max_waiting: 8,
                connect: Arc::new(connect),
            }],
            TaskTracker::new(),
            Metrics::new(),
        );
        (upstream, cluster.port)
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_fails_the_waiter_and_frees_its_slot() {
        let _turn = TURN.lock().await;
        let (upstream, port) = upstream(2);
        arm(port, Fault::ConnectRefused, Some(1));
        let error = upstream.checkout(0, Duration::from_secs(5)).await.err();
        assert!(
            matches!(error, Some(PoolError::Unavailable { .. })),
            "{error:?}"
        );
        assert_eq!(upstream.status().open, 0);
        // After the back-off, the next attempt reaches the server.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
        drop(conn);
        assert_eq!(upstream.status().open, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_cancel_is_sent_again_and_the_connection_recovers() {
        let _turn = TURN.lock().await;
        let (upstream, port) = upstream(1);
        let mut conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
        // The client goes away mid-statement; the first cancel is lost.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(300),
            conn.fetch_text("select pg_sleep(30)", &[]),
        )
        .await;
        assert!(abandoned.is_err());
        arm(port, Fault::CancelLost, Some(1));
        let returned = Instant::now();
        drop(conn);
        // Recovered (well before the 5 s recovery timeout) and reused: still one connection.
        until("the connection to be recovered", || {
            upstream.tenant_status(0).idle == 1
        })
        .await;
        assert!(returned.elapsed() < Duration::from_secs(3));
        let mut conn = upstream.checkout(0, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            conn.fetch_text("select 1", &[]).await.unwrap()[0][0].as_deref(),
            Some("1")
        );
        drop(conn);
        assert_eq!(upstream.status().open, 1);
        disarm(port, Fault::CancelLost);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_that_never_completes_keeps_its_slot_and_is_reported_stuck() {
        let _turn = TURN.lock().await;
        let (upstream, port) = upstream(1);
        let conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
        drop(conn);
        arm(port, Fault::CloseHangs, None);
        // Shutdown closes the idle connection; its backend "never ends".
        upstream.close();
        until("the close to be reported stuck", || {
            upstream.status().stuck == 1
        })
        .await;
        assert_eq!(upstream.status().open, 1, "the slot stays taken");
        disarm(port, Fault::CloseHangs);
        until("the slot to come back", || upstream.status().open == 0).await;
        assert_eq!(upstream.status().stuck, 0);
    }

    /// Issue 11 item 10: a check-out cancelled during the revalidation ping of a long-idle
    /// connection dropped the connection with its slot — the slot came back without a
    /// Terminate, while the backend was still there. Now the connection goes back through its
    /// `Drop`, is recovered (the ping's answer read) and reused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_out_cancelled_during_its_revalidation_ping_keeps_the_connection() {
        let _turn = TURN.lock().await;
        let (upstream, _) = upstream(1);
        // Polled once: the ping is sent, then the caller goes away before its answer. On a
        // loaded machine the answer can occasionally beat the first poll (then the ping simply
        // succeeded): try again until the cancellation lands mid-ping.
        let mut pid = None;
        for _ in 0..50 {
            let conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
            let this = conn.cancel_token().process_id();
            match futures::FutureExt::now_or_never(upstream.revalidate(conn, true)) {
                None => {
                    pid = Some(this);
                    break;
                }
                Some(Some(conn)) => drop(conn),
                Some(None) => panic!("a live connection failed its ping"),
            }
            until("the connection to be back", || {
                upstream.tenant_status(0).idle == 1
            })
            .await;
        }
        let pid = pid.expect("the check-out was never cancelled mid-ping");
        until("the connection to be back", || {
            upstream.tenant_status(0).idle == 1
        })
        .await;
        assert_eq!(upstream.status().open, 1);
        let conn = upstream.checkout(0, Duration::from_secs(1)).await.unwrap();
        assert_eq!(conn.cancel_token().process_id(), pid, "the same session");
    }

    /// Whether the server still has a backend with this process id.
    async fn backend_alive(pid: i32) -> bool {
        let (client, connection) = tokio_postgres::connect(&cluster().url, tokio_postgres::NoTls)
            .await
            .expect("observer connection");
        tokio::spawn(connection);
        client
            .query_one(
                "select count(*) from pg_stat_activity where pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
            == 1
    }

    /// Issue 12: the socket closes in the middle of a message, in either direction. The
    /// statement fails as a lost connection, the connection is never reused, its slot comes
    /// back only once the server has ended the backend, and the next check-out gets a fresh,
    /// working session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_closed_mid_message_frees_its_slot_and_backend() {
        let _turn = TURN.lock().await;
        for fault in [Fault::WriteCut, Fault::ReadCut] {
            let (upstream, port) = upstream(1);
            let mut conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
            let first = conn.cancel_token().process_id();
            arm(port, fault, Some(1));
            // A long row: the cut read holds part of a DataRow.
            let result = conn
                .fetch_text("select repeat('x', 200000), $1::int", &["7"])
                .await;
            disarm(port, fault);
            assert!(result.is_err(), "{fault:?}: the statement must fail");
            assert!(
                conn.is_broken(),
                "{fault:?}: the connection is known broken"
            );
            drop(conn);
            until("the slot to come back", || upstream.status().open == 0).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            while backend_alive(first).await {
                assert!(
                    Instant::now() < deadline,
                    "{fault:?}: the backend never ended"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
            assert_ne!(
                conn.cancel_token().process_id(),
                first,
                "{fault:?}: a new session"
            );
            assert_eq!(
                conn.fetch_text("select 1", &[]).await.unwrap()[0][0].as_deref(),
                Some("1")
            );
            drop(conn);
            upstream.close();
            until("the upstream to close", || upstream.status().open == 0).await;
        }
    }
}
