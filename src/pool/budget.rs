//! The pool's accounting as a pure state machine: one upstream's connection budget, the
//! tenants sharing it, their idle connections, their FIFO queues and their fair shares.
//!
//! [`Budget`] holds plain data. Each event (a check-out asked for, a connection opened, failed,
//! returned clean, dirty or broken, a close confirmed, a waiter gone, a reload, a reaper tick…)
//! is one method call that updates the counts and returns the [`Action`]s the I/O side must
//! carry out (open, close, recover a connection, hand one to a waiter, answer a waiter with an
//! error). Nothing here awaits, touches a socket or reads the clock: time comes in as `now`,
//! connections and waiters are ids. `upstream.rs` keeps the sockets and feeds the outcomes of
//! the actions back in; the model test (`model.rs`) drives this machine through random
//! event sequences and checks the promises after every step.
//!
//! A slot — one unit of the budget — is taken when a connection is about to be opened and given
//! back only when the server has confirmed the session gone ([`Budget::closed`]): connecting +
//! idle + in use + closing never exceeds the budget. A budget lowered by a reload is reached by
//! closing idle connections and those that come back, never by forgetting one still open.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PoolError;
use super::health::{Health, ServerLimit};

/// At most this many connection attempts run at once per upstream: a cold burst fills the
/// pool quickly without a fork storm on the server.
pub(crate) const MAX_CONNECTING: usize = 8;
/// A connection idle longer than this gets a round trip before reuse (a free liveness check
/// runs on every check-out).
pub(crate) const PING_AFTER_IDLE: Duration = Duration::from_secs(30);
/// The server's connection limit is read again this often (and after any connection loss):
/// it only changes with a restart, which the gateway may not otherwise notice.
pub(crate) const LIMIT_REFRESH: Duration = Duration::from_secs(300);

pub(crate) type ConnId = u64;
pub(crate) type WaiterId = u64;

pub(crate) use vocab::*;
pub use vocab::{TenantPoolStatus, UpstreamStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Being opened; `after` is the connection whose slot it takes over, still closing (the
    /// I/O side opens this one only once that one is gone).
    Connecting {
        after: Option<ConnId>,
    },
    Idle,
    InUse,
    /// Being closed; `stuck` once the close has taken longer than the close wait.
    Closing {
        stuck: bool,
    },
}

#[derive(Debug, Clone)]
struct Conn {
    tenant: usize,
    state: State,
    /// Whether this connection holds a budget slot. A connection closed to make room for
    /// another tenant hands its slot to the replacement at once (the replacement opens only
    /// after it is gone).
    slot: bool,
    created_at: Instant,
    idle_since: Instant,
    epoch: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Tenant {
    spec: TenantSpec,
    /// Slots held: connecting + idle + in use + closing.
    open: usize,
    connecting: usize,
    closing: usize,
    /// Most recently returned last: reuse pops the back (warm), the reaper ages out the front.
    idle: VecDeque<ConnId>,
    waiters: VecDeque<(WaiterId, Instant)>,
    /// Removed by a reload: its requests in flight are still served, its idle connections
    /// close, and no new connection opens once no request waits.
    retired: bool,
    /// Bumped when a reload changes how the tenant connects: connections of an older epoch
    /// close as they come back.
    epoch: u64,
    /// Moving average of how long a request holds a connection, in microseconds.
    hold_micros: u64,
}

/// One upstream's accounting. See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    /// The upstream's name, for messages.
    name: Arc<str>,
    limits: Limits,
    closed: bool,
    tenants: Vec<Tenant>,
    /// Fx-hashed: ids are the budget's own counters, looked up several times a request.
    conns: FxHashMap<ConnId, Conn>,
    /// Slots held, over all tenants.
    slots: usize,
    connecting: usize,
    closing: usize,
    stuck: usize,
    next_id: u64,
    health: Health,
    /// The server's limit must be read again on the next connection (after a connection loss,
    /// an identity change, or [`LIMIT_REFRESH`]).
    limit_stale: bool,
    limit_read_at: Option<Instant>,
}

impl Tenant {
    fn new(spec: TenantSpec) -> Tenant {
        Tenant {
            spec,
            open: 0,
            connecting: 0,
            closing: 0,
            idle: VecDeque::new(),
            waiters: VecDeque::new(),
            retired: false,
            epoch: 0,
            hold_micros: 0,
        }
    }

    /// Waiters not already covered by a connection being opened for this tenant.
    fn unmet_demand(&self) -> usize {
        self.waiters.len().saturating_sub(self.connecting)
    }

    /// (A retired tenant still grows for requests that were already waiting.)
    fn can_grow(&self) -> bool {
        self.open < self.spec.pool_size && self.unmet_demand() > 0
    }

    fn in_use(&self) -> usize {
        self.open - self.connecting - self.closing - self.idle.len()
    }
}

impl Budget {
    pub(crate) fn new(name: Arc<str>, limits: Limits, tenants: Vec<TenantSpec>) -> Budget {
        Budget {
            name,
            limits,
            closed: false,
            tenants: tenants.into_iter().map(Tenant::new).collect(),
            conns: FxHashMap::default(),
            slots: 0,
            connecting: 0,
            closing: 0,
            stuck: 0,
            next_id: 0,
            health: Health::default(),
            limit_stale: true,
            limit_read_at: None,
        }
    }

    // ----- events -----

    /// A request of `tenant` asks for a connection.
    pub(crate) fn checkout(&mut self, tenant: usize, now: Instant) -> (Reply, Vec<Action>) {
        if self.closed {
            return (Reply::Refused(PoolError::ShuttingDown), Vec::new());
        }
        let t = &mut self.tenants[tenant];
        if t.waiters.is_empty()
            && let Some(conn) = t.idle.pop_back()
        {
            let c = self.conns.get_mut(&conn).expect("idle conn");
            c.state = State::InUse;
            let ping = now.duration_since(c.idle_since) >= PING_AFTER_IDLE;
            return (Reply::Idle { conn, ping }, Vec::new());
        }
        if let Some(error) = self.unavailable_for(tenant, now) {
            return (Reply::Refused(error), Vec::new());
        }
        let t = &self.tenants[tenant];
        if t.waiters.len() >= t.spec.max_waiting {
            let retry_after = self.estimate_wait(tenant);
            return (
                Reply::Refused(PoolError::QueueFull { retry_after }),
                Vec::new(),
            );
        }
        self.next_id += 1;
        let waiter = self.next_id;
        self.tenants[tenant].waiters.push_back((waiter, now));
        let mut actions = Vec::new();
        self.schedule(now, &mut actions);
        (Reply::Queued(waiter), actions)
    }

    /// A waiter left the queue (timed out, or its client went away). Returns whether it was
    /// still waiting (if not, it has been answered already).
    pub(crate) fn waiter_gone(&mut self, tenant: usize, waiter: WaiterId) -> bool {
        let waiters = &mut self.tenants[tenant].waiters;
        match waiters.iter().position(|(w, _)| *w == waiter) {
            Some(i) => {
                waiters.remove(i);
                true
            }
            None => false,
        }
    }

    /// A connection in use comes back; `held` is how long the request held it.
    pub(crate) fn returned(
        &mut self,
        conn: ConnId,
        how: Returned,
        held: Option<Duration>,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(c) = self.conns.get(&conn) else {
            return actions;
        };
        debug_assert_eq!(c.state, State::InUse);
        if let Some(held) = held {
            let t = &mut self.tenants[c.tenant];
            let sample = held.as_micros().min(u64::MAX as u128) as u64;
            t.hold_micros = if t.hold_micros == 0 {
                sample
            } else {
                t.hold_micros - t.hold_micros / 8 + sample / 8
            };
        }
        match how {
            Returned::Clean => self.place(conn, now, false, &mut actions),
            Returned::Dirty => actions.push(Action::Recover { conn }),
            Returned::Broken => {
                self.limit_stale = true;
                self.close(conn, CloseReason::Broken, &mut actions);
                self.schedule(now, &mut actions);
            }
            Returned::Unrecoverable => {
                self.close(conn, CloseReason::Unrecoverable, &mut actions);
                self.schedule(now, &mut actions);
            }
        }
        actions
    }

    /// A connection the I/O side was opening is open, or could not be opened.
    pub(crate) fn connected(
        &mut self,
        conn: ConnId,
        outcome: Connected,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(c) = self.conns.get(&conn) else {
            return actions;
        };
        debug_assert!(matches!(c.state, State::Connecting { after: None }));
        match outcome {
            Connected::Ok { limit } => {
                self.health.record_success();
                if let Some(limit) = limit {
                    match limit.check_shared(
                        &self.name,
                        self.limits.budget,
                        self.limits.server_budget,
                    ) {
                        Ok(()) => {
                            self.health.record_limit_ok(limit);
                            self.limit_stale = false;
                            self.limit_read_at = Some(now);
                            actions.push(Action::LimitOk {
                                budget: self.limits.budget,
                                limit,
                            });
                        }
                        Err(problem) => {
                            self.health.record_misconfigured(problem.clone(), now);
                            actions.push(Action::Misconfigured(problem));
                            self.set_state(conn, State::InUse);
                            self.close(conn, CloseReason::Misconfigured, &mut actions);
                            self.fail_stranded_waiters(now, &mut actions);
                            return actions;
                        }
                    }
                }
                // The epoch stays the one the connection was started in: if a reload changed
                // the tenant's settings meanwhile, it was made with the old ones.
                let c = self.conns.get_mut(&conn).expect("present");
                c.created_at = now;
                c.idle_since = now;
                self.set_state(conn, State::InUse);
                self.place(conn, now, true, &mut actions);
            }
            Connected::Failed { error, jitter } => {
                self.health.record_failure(error, now, jitter);
                self.limit_stale = true;
                self.forget(conn);
                self.schedule(now, &mut actions);
            }
        }
        actions
    }

    /// The server has closed the session of a connection being closed: its slot is free.
    pub(crate) fn closed(&mut self, conn: ConnId, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.conns.contains_key(&conn) {
            return actions;
        }
        self.forget(conn);
        // A replacement waiting for this connection to be gone may open now.
        for c in self.conns.values_mut() {
            if c.state == (State::Connecting { after: Some(conn) }) {
                c.state = State::Connecting { after: None };
            }
        }
        self.schedule(now, &mut actions);
        actions
    }

    /// A connection being closed has not ended within the close wait (its backend is still
    /// busy): it keeps its slot, and is counted as stuck until [`Budget::closed`].
    pub(crate) fn stuck(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn)
            && matches!(c.state, State::Closing { stuck: false })
        {
            self.set_state(conn, State::Closing { stuck: true });
        }
    }

    /// One reaper pass: closes idle connections past their idle timeout or lifetime, those
    /// over a lowered budget, those of retired tenants or older epochs; `dead` are idle
    /// connections the I/O side found closed by the server. Retries connections for waiters
    /// once a back-off has passed.
    pub(crate) fn reap(&mut self, now: Instant, dead: &[ConnId]) -> Vec<Action> {
        let mut actions = Vec::new();
        if self
            .limit_read_at
            .is_some_and(|at| now.duration_since(at) >= LIMIT_REFRESH)
        {
            self.limit_stale = true;
        }
        let mut excess = self.slots.saturating_sub(self.closing + self.limits.budget);
        let mut doomed = Vec::new();
        for t in &mut self.tenants {
            let mut kept = VecDeque::with_capacity(t.idle.len());
            while let Some(id) = t.idle.pop_front() {
                let conn = &self.conns[&id];
                let reason = if t.retired || conn.epoch != t.epoch {
                    Some(CloseReason::Reconfigured)
                } else if now.duration_since(conn.idle_since) >= self.limits.server_idle_timeout {
                    Some(CloseReason::IdleTimeout)
                } else if now.duration_since(conn.created_at) >= self.limits.server_lifetime {
                    Some(CloseReason::Lifetime)
                } else if excess > 0 {
                    excess -= 1;
                    Some(CloseReason::OverBudget)
                } else if dead.contains(&id) {
                    Some(CloseReason::Broken)
                } else {
                    None
                };
                match reason {
                    Some(reason) => doomed.push((id, reason)),
                    None => kept.push_back(id),
                }
            }
            t.idle = kept;
        }
        for (id, reason) in doomed {
            if reason == CloseReason::Broken {
                self.limit_stale = true;
            }
            // Out of the idle list already: count it as handed to the closer.
            self.conns.get_mut(&id).expect("present").state = State::InUse;
            self.close(id, reason, &mut actions);
        }
        self.schedule(now, &mut actions);
        actions
    }

    /// Outside a runtime nothing more can be started: behave as shut down.
    pub(crate) fn halt(&mut self) {
        self.closed = true;
    }

    // ----- internals -----

    /// Adds (`sign` = 1) or removes (−1) a connection's share of the counters.
    fn count(&mut self, id: ConnId, add: bool) {
        let c = &self.conns[&id];
        let stuck = matches!(c.state, State::Closing { stuck: true });
        if stuck {
            bump(&mut self.stuck, add);
        }
        if !c.slot {
            return;
        }
        let t = &mut self.tenants[c.tenant];
        bump(&mut self.slots, add);
        bump(&mut t.open, add);
        match c.state {
            State::Connecting { .. } => {
                bump(&mut self.connecting, add);
                bump(&mut t.connecting, add);
            }
            State::Closing { .. } => {
                bump(&mut self.closing, add);
                bump(&mut t.closing, add);
            }
            State::Idle | State::InUse => {}
        }
    }

    fn set_state(&mut self, id: ConnId, state: State) {
        self.count(id, false);
        self.conns.get_mut(&id).expect("present").state = state;
        self.count(id, true);
    }

    fn add(&mut self, tenant: usize, state: State, now: Instant) -> ConnId {
        self.next_id += 1;
        let id = self.next_id;
        self.conns.insert(
            id,
            Conn {
                tenant,
                state,
                slot: true,
                created_at: now,
                idle_since: now,
                epoch: self.tenants[tenant].epoch,
            },
        );
        self.count(id, true);
        id
    }

    fn forget(&mut self, id: ConnId) {
        self.count(id, false);
        self.conns.remove(&id);
    }

    /// Starts closing a connection the caller has taken out of any idle list.
    fn close(&mut self, id: ConnId, reason: CloseReason, actions: &mut Vec<Action>) {
        self.set_state(id, State::Closing { stuck: false });
        actions.push(Action::Close { conn: id, reason });
    }

    fn read_limit(&self) -> bool {
        self.limit_stale || !self.health.limit_checked
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
}

fn bump(counter: &mut usize, add: bool) {
    if add {
        *counter += 1;
    } else {
        *counter -= 1;
    }
}

#[cfg(test)]
mod model;
mod placement;
mod reload;
mod share;
mod status;
mod vocab;
