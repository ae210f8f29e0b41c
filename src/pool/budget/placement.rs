//! Where connections go: a clean connection back in hand is placed — handed to its tenant's
//! first waiter, given over to a needier tenant (closed and replaced), parked idle, or closed
//! (lifetime, budget, reload, shutdown) — and new connections are scheduled for the waiters
//! that connections on the way do not cover, within the budget and [`MAX_CONNECTING`].

use std::time::Instant;

use super::{Action, Budget, CloseReason, ConnId, MAX_CONNECTING, State};
use crate::pool::PoolError;

impl Budget {
    /// Decides where a connection now clean and in hand goes: to this tenant's first waiter,
    /// to another tenant (closed and replaced) when fairness says so, or to the idle list.
    pub(super) fn place(
        &mut self,
        id: ConnId,
        now: Instant,
        fresh: bool,
        actions: &mut Vec<Action>,
    ) {
        let c = &self.conns[&id];
        let tenant = c.tenant;
        let t = &self.tenants[tenant];
        let reason = if self.closed {
            Some(CloseReason::Shutdown)
        } else if c.epoch != t.epoch {
            Some(CloseReason::Reconfigured)
        } else if now.duration_since(c.created_at) >= self.limits.server_lifetime {
            Some(CloseReason::Lifetime)
        } else if self.slots - self.closing > self.limits.budget || t.open > t.spec.pool_size {
            Some(CloseReason::OverBudget)
        } else if t.retired && t.waiters.is_empty() {
            Some(CloseReason::Reconfigured)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.close(id, reason, actions);
            self.schedule(now, actions);
            return;
        }
        if !fresh
            && self.slots >= self.limits.budget
            && let Some(needy) = self.needier_than(tenant)
        {
            self.replace(id, needy, now, actions);
            return;
        }
        if let Some((waiter, _)) = self.tenants[tenant].waiters.pop_front() {
            actions.push(Action::Hand {
                waiter,
                tenant,
                conn: id,
            });
            return;
        }
        self.set_state(id, State::Idle);
        let c = self.conns.get_mut(&id).expect("present");
        c.idle_since = now;
        self.tenants[tenant].idle.push_back(id);
        // An idle connection may be what another tenant's waiter needs.
        self.schedule(now, actions);
    }

    /// Closes `old` and gives its slot to a new connection for `tenant`.
    pub(super) fn replace(
        &mut self,
        old: ConnId,
        tenant: usize,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.count(old, false);
        {
            let c = self.conns.get_mut(&old).expect("present");
            c.slot = false;
            c.state = State::Closing { stuck: false };
        }
        self.count(old, true);
        let conn = self.add(tenant, State::Connecting { after: Some(old) }, now);
        actions.push(Action::Replace {
            old,
            conn,
            tenant,
            read_limit: self.read_limit(),
        });
    }

    /// Starts connections for tenants whose waiters are not covered by connections on the
    /// way, neediest first (fewest connections relative to pool size), while the budget allows
    /// — closing idle connections of other tenants when it is full.
    pub(super) fn schedule(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        if self.health.in_backoff(now) {
            self.fail_stranded_waiters(now, actions);
            return;
        }
        while self.connecting < MAX_CONNECTING {
            let Some(tenant) = self.neediest() else {
                break;
            };
            if self.slots < self.limits.budget {
                let conn = self.add(tenant, State::Connecting { after: None }, now);
                actions.push(Action::Connect {
                    conn,
                    tenant,
                    read_limit: self.read_limit(),
                });
            } else if let Some(victim) = self.take_idle_victim(tenant) {
                self.replace(victim, tenant, now, actions);
            } else {
                break;
            }
        }
    }

    /// During a back-off, waiters of tenants with no connection at all (none open, none being
    /// opened) cannot be served: tell them now rather than at their deadline.
    pub(super) fn fail_stranded_waiters(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some((retry_after, reason)) = self.health.unavailable(now) else {
            return;
        };
        for (tenant, t) in self.tenants.iter_mut().enumerate() {
            if t.open == 0 {
                for (waiter, _) in t.waiters.drain(..) {
                    actions.push(Action::Fail {
                        waiter,
                        tenant,
                        error: PoolError::Unavailable {
                            retry_after,
                            reason: reason.clone(),
                        },
                    });
                }
            }
        }
    }
}
