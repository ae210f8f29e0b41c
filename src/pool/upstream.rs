//! One upstream Postgres server and the tenant pools on it.
//!
//! The upstream owns the one hard number: its connection budget. A connection exists only while
//! it holds a [`Slot`] — taken before connecting, given back only after the server has closed
//! the session — so connections counting those still connecting and those still closing never
//! exceed the budget. Tenants share the budget at run time: each has its own idle connections,
//! its own FIFO queue of waiting requests and its own `pool_size`; when the budget is full, an
//! idle connection of another tenant is closed to make room, and a tenant holding more than its
//! share (budget × pool_size ÷ Σ pool_size of busy tenants) gives a connection back when it
//! returns one while a needier tenant waits.
//!
//! All of this state sits behind one `std::sync::Mutex` per upstream: every critical section is
//! a few pointer moves, never an `.await`, and nothing that could take the lock again (a
//! connection's `Drop`) is dropped while it is held — such values leave the lock as [`Action`]s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::PoolError;
use super::health::{Health, SERVER_LIMIT_SQL, ServerLimit};
use crate::metrics::{ClosedLabels, ConnectLabels, Metrics};
use crate::pg::{ConnectConfig, PgConnection};

/// At most this many connection attempts run at once per upstream: a cold burst fills the
/// pool quickly without a fork storm on the server.
const MAX_CONNECTING: usize = 8;
/// A connection idle longer than this gets a round trip before reuse (a free liveness check
/// runs on every check-out).
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);
/// How long a connection abandoned mid-statement may take to cancel, drain and reset.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the server to close a session we ended.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The upstream's part of the config; a reload may change all but the name and identity.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamSettings {
    pub name: Arc<str>,
    /// Where and as whom the upstream is reached; a reload that changes it makes a new
    /// upstream instead of changing this one.
    pub identity: String,
    pub budget: usize,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
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
    identity: String,
    // std Mutex: held for a few pointer moves at a time, never across an .await.
    state: Mutex<UpstreamState>,
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    me: Weak<Upstream>,
}

struct UpstreamState {
    budget: usize,
    server_lifetime: Duration,
    server_idle_timeout: Duration,
    /// Slots held: connecting + idle + in use + closing.
    open: usize,
    connecting: usize,
    closing: usize,
    closed: bool,
    tenants: Vec<TenantState>,
    health: Health,
    next_waiter: u64,
}

struct TenantState {
    settings: TenantSettings,
    open: usize,
    connecting: usize,
    closing: usize,
    /// Most recently returned last: reuse pops the back (warm), the reaper ages out the front.
    idle: VecDeque<PooledConn>,
    waiters: VecDeque<Waiter>,
    stats: Arc<TenantStats>,
    /// Removed by a reload: its requests in flight are still served, its idle connections
    /// close, and no new connection opens once no request waits.
    retired: bool,
    /// Bumped when a reload changes how the tenant connects (user, database, settings):
    /// connections of an older epoch close as they come back.
    epoch: u64,
}

struct Waiter {
    id: u64,
    since: Instant,
    tx: oneshot::Sender<Result<PooledConn, PoolError>>,
}

/// Counters updated outside the lock.
#[derive(Debug, Default)]
pub struct TenantStats {
    /// Moving average of how long a request holds a connection, in microseconds.
    hold_micros: AtomicU64,
}

impl TenantStats {
    pub(crate) fn record_hold(&self, held: Duration) {
        let sample = held.as_micros().min(u64::MAX as u128) as u64;
        let old = self.hold_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.hold_micros.store(new, Ordering::Relaxed);
    }

    fn hold(&self) -> Duration {
        Duration::from_micros(self.hold_micros.load(Ordering::Relaxed))
    }
}

/// A connection with its budget slot.
pub(crate) struct PooledConn {
    pub(crate) pg: PgConnection,
    slot: Slot,
    created_at: Instant,
    idle_since: Instant,
    epoch: u64,
}

/// One unit of an upstream's budget. Only the upstream creates one; dropping it gives it back.
#[must_use = "dropping a slot gives it back to the budget"]
pub(crate) struct Slot {
    upstream: Weak<Upstream>,
    tenant: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(upstream) = self.upstream.upgrade() {
            upstream.release_slot(self.tenant);
        }
    }
}

/// Work decided under the lock and carried out after it is released.
enum Action {
    /// Open a connection for a tenant with a slot already counted for it.
    Connect { tenant: usize, slot: Slot },
    /// Close a connection and reuse its slot for another tenant's new connection.
    Replace { old: PooledConn, tenant: usize },
    /// Close a connection and give its slot back.
    Close(PooledConn, CloseReason),
}

/// Why a connection was closed (the `reason` label of `sluice_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    IdleTimeout,
    Lifetime,
    /// The server closed it, or it failed.
    Broken,
    /// Left mid-statement or dirty and could not be cleaned in time.
    Unrecoverable,
    /// Over a budget a reload lowered, or over the tenant's pool size.
    OverBudget,
    /// Closed to make room for another tenant (the slot goes to it).
    Rebalanced,
    /// Its tenant or upstream was removed or reconfigured by a reload.
    Reconfigured,
    Shutdown,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Broken => "broken",
            CloseReason::Unrecoverable => "unrecoverable",
            CloseReason::OverBudget => "over_budget",
            CloseReason::Rebalanced => "rebalanced",
            CloseReason::Reconfigured => "reconfigured",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Per-tenant numbers for the admin view and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPoolStatus {
    pub open: usize,
    pub connecting: usize,
    pub idle: usize,
    pub in_use: usize,
    pub waiting: usize,
    pub longest_wait: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct UpstreamStatus {
    pub budget: usize,
    pub open: usize,
    pub connecting: usize,
    pub closing: usize,
    pub available: bool,
    pub last_error: Option<String>,
    /// Each tenant's pool, by tenant id.
    pub tenants: Vec<(String, TenantPoolStatus)>,
}

// A ticket lives for one step of a check-out, on the stack; boxing the connection would cost
// an allocation per check-out instead.
#[allow(clippy::large_enum_variant)]
enum Ticket {
    Idle(PooledConn),
    Wait(u64, oneshot::Receiver<Result<PooledConn, PoolError>>),
}

impl Upstream {
    pub(crate) fn new(
        settings: UpstreamSettings,
        tenants: Vec<TenantSettings>,
        tasks: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Arc<Upstream> {
        Arc::new_cyclic(|me| Upstream {
            state: Mutex::new(UpstreamState {
                budget: settings.budget,
                server_lifetime: settings.server_lifetime,
                server_idle_timeout: settings.server_idle_timeout,
                open: 0,
                connecting: 0,
                closing: 0,
                closed: false,
                tenants: tenants.into_iter().map(TenantState::new).collect(),
                health: Health::default(),
                next_waiter: 0,
            }),
            name: settings.name,
            identity: settings.identity,
            tasks,
            metrics,
            me: me.clone(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    fn lock(&self) -> MutexGuard<'_, UpstreamState> {
        // A panic while holding the lock cannot leave the counts half-updated in a way that
        // matters more than stopping service would; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn stats(&self, tenant: usize) -> Arc<TenantStats> {
        self.lock().tenants[tenant].stats.clone()
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
            let (ticket, actions) = {
                let mut state = self.lock();
                if state.closed {
                    return Err(PoolError::ShuttingDown);
                }
                let tenant_state = &mut state.tenants[tenant];
                let idle = if tenant_state.waiters.is_empty() {
                    tenant_state.idle.pop_back()
                } else {
                    None
                };
                match idle {
                    Some(conn) => (Ticket::Idle(conn), Vec::new()),
                    None => {
                        if let Some(error) = state.unavailable_for(tenant, now) {
                            return Err(error);
                        }
                        let tenant_state = &state.tenants[tenant];
                        if tenant_state.waiters.len() >= tenant_state.settings.max_waiting {
                            return Err(PoolError::QueueFull {
                                retry_after: state.estimate_wait(tenant),
                            });
                        }
                        state.next_waiter += 1;
                        let id = state.next_waiter;
                        let (tx, rx) = oneshot::channel();
                        state.tenants[tenant]
                            .waiters
                            .push_back(Waiter { id, since: now, tx });
                        let actions = self.schedule(&mut state, now);
                        (Ticket::Wait(id, rx), actions)
                    }
                }
            };
            self.run(actions);
            match ticket {
                Ticket::Idle(conn) => {
                    if let Some(conn) = self.revalidate(conn, now).await {
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
    /// after a long idle spell, with a round trip.
    async fn revalidate(&self, mut conn: PooledConn, now: Instant) -> Option<PooledConn> {
        let alive = conn.pg.poll_alive()
            && (now.duration_since(conn.idle_since) < PING_AFTER_IDLE
                || conn.pg.ping().await.is_ok());
        if alive {
            Some(conn)
        } else {
            self.run(vec![self.close_action(conn, CloseReason::Broken)]);
            None
        }
    }

    /// Gives a connection back. A connection that is not clean (mid-statement after its client
    /// vanished, in a transaction, or with session state) is recovered in the background first,
    /// or closed.
    pub(crate) fn checkin(&self, mut conn: PooledConn) {
        if conn.pg.is_broken() {
            self.run(vec![self.close_action(conn, CloseReason::Broken)]);
            return;
        }
        if !conn.pg.is_clean() {
            let Some(upstream) = self.me.upgrade() else {
                return;
            };
            self.spawn(async move {
                if conn.pg.recover(RECOVERY_TIMEOUT).await {
                    upstream.checkin(conn);
                } else {
                    tracing::debug!(upstream = %upstream.name(), "closing a connection that could not be recovered");
                    upstream.run(vec![upstream.close_action(conn, CloseReason::Unrecoverable)]);
                }
            });
            return;
        }
        let now = Instant::now();
        let actions = {
            let mut state = self.lock();
            self.place(&mut state, conn, now, false)
        };
        self.run(actions);
    }

    /// Decides where a clean connection goes: to this tenant's first waiter, to another tenant
    /// (closed and replaced) when fairness says so, or to the idle list.
    fn place(
        &self,
        state: &mut UpstreamState,
        mut conn: PooledConn,
        now: Instant,
        fresh: bool,
    ) -> Vec<Action> {
        let tenant = conn.slot.tenant;
        let reason = if state.closed {
            Some(CloseReason::Shutdown)
        } else if conn.epoch != state.tenants[tenant].epoch {
            Some(CloseReason::Reconfigured)
        } else if now.duration_since(conn.created_at) >= state.server_lifetime {
            Some(CloseReason::Lifetime)
        } else if state.open - state.closing > state.budget
            || state.tenants[tenant].open > state.tenants[tenant].settings.pool_size
        {
            Some(CloseReason::OverBudget)
        } else if state.tenants[tenant].retired && state.tenants[tenant].waiters.is_empty() {
            Some(CloseReason::Reconfigured)
        } else {
            None
        };
        if let Some(reason) = reason {
            let mut actions = vec![self.close_action_locked(state, conn, reason)];
            actions.extend(self.schedule(state, now));
            return actions;
        }
        if !fresh
            && state.open >= state.budget
            && let Some(needy) = state.needier_than(tenant)
        {
            state.tenants[tenant].open -= 1;
            state.reserve_connect(needy);
            return vec![Action::Replace {
                old: conn,
                tenant: needy,
            }];
        }
        let tenant_state = &mut state.tenants[tenant];
        while let Some(waiter) = tenant_state.waiters.pop_front() {
            match waiter.tx.send(Ok(conn)) {
                Ok(()) => return Vec::new(),
                Err(Ok(returned)) => conn = returned,
                Err(Err(_)) => return Vec::new(),
            }
        }
        conn.idle_since = now;
        tenant_state.idle.push_back(conn);
        // An idle connection may be what another tenant's waiter needs.
        self.schedule(state, now)
    }

    /// Starts connections for tenants whose waiters are not covered by connections on the
    /// way, neediest first (fewest connections relative to pool size), while the budget allows
    /// — closing idle connections of other tenants when it is full.
    fn schedule(&self, state: &mut UpstreamState, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if state.closed {
            return actions;
        }
        if state.health.in_backoff(now) {
            state.fail_stranded_waiters(now);
            return actions;
        }
        while state.connecting < MAX_CONNECTING {
            let Some(tenant) = state.neediest() else {
                break;
            };
            if state.open < state.budget {
                state.open += 1;
                state.reserve_connect(tenant);
                actions.push(Action::Connect {
                    tenant,
                    slot: Slot {
                        upstream: self.me.clone(),
                        tenant,
                    },
                });
            } else if let Some(victim) = state.take_idle_victim(tenant) {
                state.tenants[victim.slot.tenant].open -= 1;
                state.reserve_connect(tenant);
                actions.push(Action::Replace {
                    old: victim,
                    tenant,
                });
            } else {
                break;
            }
        }
        actions
    }

    fn release_slot(&self, tenant: usize) {
        let now = Instant::now();
        let actions = {
            let mut state = self.lock();
            state.open -= 1;
            state.tenants[tenant].open -= 1;
            self.schedule(&mut state, now)
        };
        self.run(actions);
    }

    fn close_action(&self, conn: PooledConn, reason: CloseReason) -> Action {
        let mut state = self.lock();
        self.close_action_locked(&mut state, conn, reason)
    }

    fn close_action_locked(
        &self,
        state: &mut UpstreamState,
        conn: PooledConn,
        reason: CloseReason,
    ) -> Action {
        state.closing += 1;
        state.tenants[conn.slot.tenant].closing += 1;
        Action::Close(conn, reason)
    }

    fn count_closed(&self, reason: CloseReason) {
        let labels = ClosedLabels {
            upstream: self.name.to_string(),
            reason: reason.label(),
        };
        self.metrics.connections_closed.get_or_create(&labels).inc();
    }

    fn run(&self, actions: Vec<Action>) {
        for action in actions {
            let Some(upstream) = self.me.upgrade() else {
                return;
            };
            match action {
                Action::Connect { tenant, slot } => {
                    self.spawn(upstream.connect(tenant, slot));
                }
                Action::Replace { old, tenant } => {
                    let PooledConn { pg, mut slot, .. } = old;
                    slot.tenant = tenant;
                    self.count_closed(CloseReason::Rebalanced);
                    self.spawn(async move {
                        pg.terminate(CLOSE_WAIT).await;
                        upstream.connect(tenant, slot).await;
                    });
                }
                Action::Close(conn, reason) => {
                    self.count_closed(reason);
                    self.spawn(async move {
                        let PooledConn { pg, slot, .. } = conn;
                        pg.terminate(CLOSE_WAIT).await;
                        {
                            let mut state = upstream.lock();
                            state.closing -= 1;
                            state.tenants[slot.tenant].closing -= 1;
                        }
                        drop(slot);
                    });
                }
            }
        }
    }

    /// Spawns onto the tracker. Outside a runtime (a process tearing down) nothing more is
    /// started: the upstream is marked closed so released slots stop scheduling work.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(task);
        } else {
            self.lock().closed = true;
        }
    }

    async fn connect(self: Arc<Self>, tenant: usize, slot: Slot) {
        let config = self.lock().tenants[tenant].settings.connect.clone();
        let result = match PgConnection::connect(&config).await {
            Ok(mut pg) => match self.check_server_limit(&mut pg).await {
                Ok(()) => Ok(pg),
                Err(problem) => {
                    pg.terminate(CLOSE_WAIT).await;
                    Err(Failure::Misconfigured(problem))
                }
            },
            Err(error) => Err(Failure::Connect(error.to_string())),
        };
        let now = Instant::now();
        let mut failed_slot = None;
        let actions = {
            let mut state = self.lock();
            state.connecting -= 1;
            state.tenants[tenant].connecting -= 1;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(Failure::Connect(_)) => "error",
                Err(Failure::Misconfigured(_)) => "misconfigured",
            };
            let labels = ConnectLabels {
                upstream: self.name.to_string(),
                outcome,
            };
            self.metrics.upstream_connects.get_or_create(&labels).inc();
            match result {
                Ok(pg) => {
                    state.health.record_success();
                    let epoch = state.tenants[tenant].epoch;
                    let conn = PooledConn {
                        pg,
                        slot,
                        created_at: now,
                        idle_since: now,
                        epoch,
                    };
                    self.place(&mut state, conn, now, true)
                }
                Err(failure) => {
                    match failure {
                        Failure::Connect(error) => {
                            tracing::warn!(upstream = %self.name(), tenant = %state.tenants[tenant].settings.id, %error, "cannot connect to the upstream");
                            state.health.record_failure(error, now);
                        }
                        Failure::Misconfigured(problem) => {
                            tracing::error!(upstream = %self.name(), "{problem}");
                            state.health.record_misconfigured(problem, now);
                        }
                    }
                    failed_slot = Some(slot);
                    Vec::new()
                }
            }
        };
        drop(failed_slot);
        self.run(actions);
    }

    /// On first contact, reads the server's connection limit and refuses a budget that cannot
    /// fit it.
    async fn check_server_limit(&self, pg: &mut PgConnection) -> Result<(), String> {
        if self.lock().health.limit_checked {
            return Ok(());
        }
        let rows = pg
            .fetch_text(SERVER_LIMIT_SQL, &[])
            .await
            .map_err(|e| e.to_string())?;
        let limit = rows
            .first()
            .and_then(|row| ServerLimit::from_row(row))
            .ok_or("the server did not report max_connections")?;
        let budget = self.lock().budget;
        limit.check(self.name(), budget)?;
        let mut state = self.lock();
        state.health.record_limit_ok(limit);
        tracing::info!(
            upstream = %self.name(),
            budget,
            server_allows = limit.allowed(),
            server_version = pg.server_version(),
            "connected to the upstream"
        );
        Ok(())
    }

    /// One reaper pass: closes idle connections past their idle timeout or lifetime, those the
    /// server closed, and those over a lowered budget; retries connections for waiters once a
    /// back-off has passed.
    pub(crate) fn reap(&self, now: Instant) {
        let actions = {
            let mut state = self.lock();
            self.reap_locked(&mut state, now)
        };
        self.run(actions);
    }

    fn reap_locked(&self, state: &mut UpstreamState, now: Instant) -> Vec<Action> {
        {
            let mut doomed = Vec::new();
            let mut excess = (state.open - state.closing).saturating_sub(state.budget);
            let (idle_timeout, lifetime) = (state.server_idle_timeout, state.server_lifetime);
            for tenant in &mut state.tenants {
                let mut kept = VecDeque::with_capacity(tenant.idle.len());
                while let Some(mut conn) = tenant.idle.pop_front() {
                    let reason = if tenant.retired || conn.epoch != tenant.epoch {
                        Some(CloseReason::Reconfigured)
                    } else if now.duration_since(conn.idle_since) >= idle_timeout {
                        Some(CloseReason::IdleTimeout)
                    } else if now.duration_since(conn.created_at) >= lifetime {
                        Some(CloseReason::Lifetime)
                    } else if excess > 0 {
                        excess -= 1;
                        Some(CloseReason::OverBudget)
                    } else if !conn.pg.poll_alive() {
                        Some(CloseReason::Broken)
                    } else {
                        None
                    };
                    match reason {
                        Some(reason) => doomed.push((conn, reason)),
                        None => kept.push_back(conn),
                    }
                }
                tenant.idle = kept;
            }
            let mut actions: Vec<Action> = doomed
                .into_iter()
                .map(|(conn, reason)| self.close_action_locked(state, conn, reason))
                .collect();
            actions.extend(self.schedule(state, now));
            actions
        }
    }

    /// Whether the upstream is known to work, or at least not known to be down.
    pub(crate) fn status(&self) -> UpstreamStatus {
        let now = Instant::now();
        let state = self.lock();
        UpstreamStatus {
            budget: state.budget,
            open: state.open,
            connecting: state.connecting,
            closing: state.closing,
            available: state.health.unavailable(now).is_none()
                && state.health.misconfigured().is_none(),
            last_error: state
                .health
                .misconfigured()
                .or(state.health.last_error())
                .map(str::to_owned),
            tenants: (0..state.tenants.len())
                .filter(|&t| !state.tenants[t].retired || state.tenants[t].open > 0)
                .map(|t| {
                    (
                        state.tenants[t].settings.id.to_string(),
                        state.tenant_status(t, now),
                    )
                })
                .collect(),
        }
    }

    pub(crate) fn tenant_status(&self, tenant: usize) -> TenantPoolStatus {
        self.lock().tenant_status(tenant, Instant::now())
    }

    pub(crate) fn has_connected(&self) -> bool {
        let state = self.lock();
        state.health.ever_connected && state.health.limit_checked
    }

    pub(crate) fn misconfigured(&self) -> Option<String> {
        self.lock().health.misconfigured().map(str::to_owned)
    }

    /// Stops new work, fails waiters and closes idle connections; connections in use close
    /// when they come back.
    pub(crate) fn close(&self) {
        let actions = {
            let mut state = self.lock();
            state.closed = true;
            let mut idle = Vec::new();
            for tenant in &mut state.tenants {
                idle.extend(tenant.idle.drain(..));
                for waiter in tenant.waiters.drain(..) {
                    let _ = waiter.tx.send(Err(PoolError::ShuttingDown));
                }
            }
            idle.into_iter()
                .map(|conn| self.close_action_locked(&mut state, conn, CloseReason::Shutdown))
                .collect()
        };
        self.run(actions);
    }

    /// Applies a reload: a new budget and timeouts, and the tenants now on this upstream —
    /// kept (by id, settings updated), added, or retired (gone from the config). Returns each
    /// given tenant's index. Connections are not dropped: a lowered budget closes idle ones
    /// and returned ones until under it, a retired tenant's requests in flight are still
    /// served, a tenant whose connection settings changed gets new connections as its old ones
    /// come back. The budget never goes above the old or the new value during the change.
    pub(crate) fn reconfigure(
        &self,
        settings: &UpstreamSettings,
        tenants: Vec<TenantSettings>,
    ) -> Vec<usize> {
        let now = Instant::now();
        let (indexes, actions) = {
            let mut state = self.lock();
            state.budget = settings.budget;
            state.server_lifetime = settings.server_lifetime;
            state.server_idle_timeout = settings.server_idle_timeout;
            let kept: Vec<Arc<str>> = tenants.iter().map(|t| t.id.clone()).collect();
            let mut indexes = Vec::with_capacity(tenants.len());
            for tenant in tenants {
                match state
                    .tenants
                    .iter()
                    .position(|t| t.settings.id == tenant.id)
                {
                    Some(index) => {
                        let existing = &mut state.tenants[index];
                        if !same_connection(&existing.settings.connect, &tenant.connect) {
                            existing.epoch += 1;
                        }
                        existing.settings = tenant;
                        existing.retired = false;
                        indexes.push(index);
                    }
                    None => {
                        state.tenants.push(TenantState::new(tenant));
                        indexes.push(state.tenants.len() - 1);
                    }
                }
            }
            for tenant in &mut state.tenants {
                if !kept.contains(&tenant.settings.id) {
                    tenant.retired = true;
                }
            }
            (indexes, self.reap_locked(&mut state, now))
        };
        self.run(actions);
        indexes
    }

    /// Retires every tenant: the upstream left the config (or changed where it points).
    pub(crate) fn retire_all(&self) {
        let actions = {
            let mut state = self.lock();
            state.tenants.iter_mut().for_each(|t| t.retired = true);
            self.reap_locked(&mut state, Instant::now())
        };
        self.run(actions);
    }

    /// Whether a budget fits the server, as far as the gateway knows its limit.
    pub(crate) fn check_budget(&self, budget: usize) -> Result<(), String> {
        match self.lock().health.server_limit() {
            Some(limit) => limit.check(&self.name, budget),
            None => Ok(()),
        }
    }
}

/// Whether two tenant connection settings reach the same sessions (the statement cache size
/// does not matter).
fn same_connection(a: &ConnectConfig, b: &ConnectConfig) -> bool {
    a.target == b.target
        && a.user == b.user
        && a.password == b.password
        && a.database == b.database
        && a.tls.describe() == b.tls.describe()
        && a.settings == b.settings
        && a.statement_timeout_ms == b.statement_timeout_ms
}

enum Failure {
    Connect(String),
    Misconfigured(String),
}

impl TenantState {
    fn new(settings: TenantSettings) -> TenantState {
        TenantState {
            settings,
            open: 0,
            connecting: 0,
            closing: 0,
            idle: VecDeque::new(),
            waiters: VecDeque::new(),
            stats: Arc::new(TenantStats::default()),
            retired: false,
            epoch: 0,
        }
    }

    /// Waiters not already covered by a connection being opened for this tenant.
    fn unmet_demand(&self) -> usize {
        self.waiters.len().saturating_sub(self.connecting)
    }

    /// (A retired tenant still grows for requests that were already waiting.)
    fn can_grow(&self) -> bool {
        self.open < self.settings.pool_size && self.unmet_demand() > 0
    }
}

impl UpstreamState {
    fn reserve_connect(&mut self, tenant: usize) {
        self.connecting += 1;
        self.tenants[tenant].open += 1;
        self.tenants[tenant].connecting += 1;
    }

    /// The tenant that most deserves the next connection: it has unmet demand, room under its
    /// pool size, and the fewest connections relative to its pool size.
    fn neediest(&self) -> Option<usize> {
        self.tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| t.can_grow())
            // open_a / size_a < open_b / size_b  ⇔  open_a · size_b < open_b · size_a
            .min_by(|(_, a), (_, b)| {
                (a.open * b.settings.pool_size).cmp(&(b.open * a.settings.pool_size))
            })
            .map(|(i, _)| i)
    }

    /// A tenant that should get `donor`'s connection: moving it leaves the taker still below
    /// the donor's share — (open_taker + 1) / size_taker < open_donor / size_donor — so shares
    /// converge to within one connection of proportional, and never oscillate.
    fn needier_than(&self, donor: usize) -> Option<usize> {
        let taker = self.neediest().filter(|&t| t != donor)?;
        let (d, t) = (&self.tenants[donor], &self.tenants[taker]);
        ((t.open + 1) * d.settings.pool_size < d.open * t.settings.pool_size).then_some(taker)
    }

    /// The oldest idle connection of the tenant furthest above its share, other than `taker`.
    fn take_idle_victim(&mut self, taker: usize) -> Option<PooledConn> {
        let victim = self
            .tenants
            .iter()
            .enumerate()
            .filter(|(i, t)| *i != taker && !t.idle.is_empty())
            .max_by(|(_, a), (_, b)| {
                (a.open * b.settings.pool_size).cmp(&(b.open * a.settings.pool_size))
            })
            .map(|(i, _)| i)?;
        self.tenants[victim].idle.pop_front()
    }

    /// During a back-off, waiters of tenants with no connection at all (none open, none being
    /// opened) cannot be served: tell them now rather than at their deadline.
    fn fail_stranded_waiters(&mut self, now: Instant) {
        let Some((retry_after, reason)) = self.health.unavailable(now) else {
            return;
        };
        for tenant in &mut self.tenants {
            if tenant.open == 0 {
                for waiter in tenant.waiters.drain(..) {
                    let error = PoolError::Unavailable {
                        retry_after,
                        reason: reason.clone(),
                    };
                    let _ = waiter.tx.send(Err(error));
                }
            }
        }
    }

    fn unavailable_for(&self, tenant: usize, now: Instant) -> Option<PoolError> {
        if let Some(problem) = self.health.misconfigured() {
            let retry_after = self
                .health
                .unavailable(now)
                .map_or(Duration::from_secs(30), |(r, _)| r);
            return Some(PoolError::Unavailable {
                retry_after,
                reason: problem.to_owned(),
            });
        }
        let (retry_after, reason) = self.health.unavailable(now)?;
        (self.tenants[tenant].open == 0).then_some(PoolError::Unavailable {
            retry_after,
            reason,
        })
    }

    /// When a request joining the queue now can expect a connection: the queue ahead of it,
    /// drained by the tenant's connections at the rate they have been returned.
    fn estimate_wait(&self, tenant: usize) -> Duration {
        let t = &self.tenants[tenant];
        let serving = (t.open - t.connecting).max(1) as u32;
        let hold = t.stats.hold().max(Duration::from_millis(1));
        hold.saturating_mul(t.waiters.len() as u32 + 1) / serving
    }

    fn tenant_status(&self, tenant: usize, now: Instant) -> TenantPoolStatus {
        let t = &self.tenants[tenant];
        TenantPoolStatus {
            open: t.open,
            connecting: t.connecting,
            idle: t.idle.len(),
            in_use: t.open - t.connecting - t.closing - t.idle.len(),
            waiting: t.waiters.len(),
            longest_wait: t
                .waiters
                .front()
                .map_or(Duration::ZERO, |w| now.duration_since(w.since)),
        }
    }
}

/// A request's place in its tenant's queue. Dropping it (timeout, or the client vanished)
/// removes the place and returns a connection handed over in that instant.
struct Waiting<'u> {
    upstream: &'u Upstream,
    tenant: usize,
    id: u64,
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
                let retry_after = self.upstream.lock().estimate_wait(self.tenant);
                Err(PoolError::Timeout { retry_after })
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        {
            let mut state = self.upstream.lock();
            state.tenants[self.tenant]
                .waiters
                .retain(|w| w.id != self.id);
        }
        rx.close();
        if let Ok(Ok(conn)) = rx.try_recv() {
            self.upstream.checkin(conn);
        }
    }
}
