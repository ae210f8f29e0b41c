//! The vocabulary of the pool's accounting: what goes into [`super::Budget`] (limits, tenant
//! specs, how a connection came back, how an attempt to open one ended) and what comes out
//! (actions for the I/O side, the answer to a check-out, the numbers for the admin view).

use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use super::Budget;
use super::{ConnId, WaiterId};
use crate::pool::PoolError;
use crate::pool::health::ServerLimit;

/// The upstream's numbers a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    pub budget: usize,
    /// The sum of the budgets of every upstream of the gateway on the same server (host and
    /// port), this one's included: what the server's limit must hold.
    pub server_budget: usize,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
}

/// A tenant's numbers, as the accounting needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TenantSpec {
    pub id: Arc<str>,
    pub pool_size: usize,
    pub max_waiting: usize,
    /// How the tenant's connections are made (user, database, settings, where): when a
    /// reload changes it, existing connections close as they come back.
    pub connect_key: String,
}

/// How a connection comes back from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returned {
    /// In sync, idle, in its start-up session state.
    Clean,
    /// Mid-statement, in a transaction or with session state: recover it first.
    Dirty,
    /// The socket failed or the server ended the session.
    Broken,
    /// It was dirty and could not be recovered in time.
    Unrecoverable,
}

/// The outcome of opening a connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Connected {
    /// Open; `limit` is the server's connection limit if the [`Action::Connect`] asked for it.
    Ok { limit: Option<ServerLimit> },
    /// Could not connect (or read the limit): the connection does not exist. `jitter` in
    /// 0.5..=1 spreads the back-off.
    Failed { error: String, jitter: f64 },
}

/// What the I/O side must do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Open connection `conn` for `tenant`; read the server's connection limit on it when
    /// `read_limit`, then report with [`Budget::connected`].
    Connect {
        conn: ConnId,
        tenant: usize,
        read_limit: bool,
    },
    /// Close `conn` (Terminate, then wait until the server closes the socket) and report
    /// [`Budget::closed`]; report [`Budget::stuck`] if that takes too long.
    Close { conn: ConnId, reason: CloseReason },
    /// Close `old` as for [`Action::Close`], then open `conn` for `tenant` on its slot.
    Replace {
        old: ConnId,
        conn: ConnId,
        tenant: usize,
        read_limit: bool,
    },
    /// Bring `conn` back to a clean state, then return it ([`Returned::Clean`] or
    /// [`Returned::Unrecoverable`]).
    Recover { conn: ConnId },
    /// Give `conn` to the waiter (it is now in use). If the waiter has gone in the meantime,
    /// return the connection as [`Returned::Clean`].
    Hand {
        waiter: WaiterId,
        #[cfg_attr(not(test), allow(dead_code))]
        tenant: usize,
        conn: ConnId,
    },
    /// Answer the waiter with an error; it has left the queue.
    Fail {
        waiter: WaiterId,
        #[cfg_attr(not(test), allow(dead_code))]
        tenant: usize,
        error: PoolError,
    },
    /// For the log: the budget does not fit the server.
    Misconfigured(String),
    /// For the log: the server's limit was read and the budget fits it.
    LimitOk { budget: usize, limit: ServerLimit },
}

/// Why a connection was closed (the `reason` label of `sluice_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
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
    /// Opened, but the budget does not fit the server's connection limit.
    Misconfigured,
    Shutdown,
}

impl CloseReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Broken => "broken",
            CloseReason::Unrecoverable => "unrecoverable",
            CloseReason::OverBudget => "over_budget",
            CloseReason::Rebalanced => "rebalanced",
            CloseReason::Reconfigured => "reconfigured",
            CloseReason::Misconfigured => "misconfigured",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// What a check-out gets at once.
#[derive(Debug)]
pub(crate) enum Reply {
    /// This idle connection, now in use; `ping` when it sat idle so long that it deserves a
    /// round trip before use.
    Idle {
        conn: ConnId,
        ping: bool,
    },
    /// A place in the tenant's queue: an [`Action::Hand`] or [`Action::Fail`] for this waiter
    /// will follow, unless it leaves first ([`Budget::waiter_gone`]).
    Queued(WaiterId),
    Refused(PoolError),
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
    /// Connections being closed whose backend has not ended within the close wait: they keep
    /// their slot until the server confirms the session gone.
    pub stuck: usize,
    pub available: bool,
    pub last_error: Option<String>,
    /// Each tenant's pool, by tenant id.
    pub tenants: Vec<(String, TenantPoolStatus)>,
}
