//! Events that change the configuration under the accounting: a reload (budget, tenants,
//! the upstream's identity), a cluster share change (the budget alone), the upstream leaving
//! the config, shutdown.

use std::time::Instant;

use super::*;

impl Budget {
    /// Shutdown: no new work, waiters fail, idle connections close; connections in use close
    /// when they come back.
    pub(crate) fn shut_down(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.closed = true;
        for tenant in 0..self.tenants.len() {
            for (waiter, _) in std::mem::take(&mut self.tenants[tenant].waiters) {
                actions.push(Action::Fail {
                    waiter,
                    tenant,
                    error: PoolError::ShuttingDown,
                });
            }
            for id in std::mem::take(&mut self.tenants[tenant].idle) {
                self.conns.get_mut(&id).expect("present").state = State::InUse;
                self.close(id, CloseReason::Shutdown, &mut actions);
            }
        }
        actions
    }

    /// A reload: new limits and the tenants now on this upstream — kept (by id), added, or
    /// retired (gone from the config). `identity_changed` when the upstream now points at
    /// another server or as another user (its connections are replaced as they come back,
    /// and the server's limit is read again; the old connections' slots keep counting
    /// against the one budget until they are gone). Returns each given tenant's index.
    pub(crate) fn reload(
        &mut self,
        limits: Limits,
        specs: Vec<TenantSpec>,
        identity_changed: bool,
        now: Instant,
    ) -> (Vec<usize>, Vec<Action>) {
        self.limits = limits;
        if identity_changed {
            self.health = Health::default();
            self.limit_stale = true;
            self.limit_read_at = None;
            for t in &mut self.tenants {
                t.epoch += 1;
            }
        }
        let kept: Vec<Arc<str>> = specs.iter().map(|t| t.id.clone()).collect();
        let mut indexes = Vec::with_capacity(specs.len());
        for spec in specs {
            match self.tenants.iter().position(|t| t.spec.id == spec.id) {
                Some(index) => {
                    let existing = &mut self.tenants[index];
                    if existing.spec.connect_key != spec.connect_key && !identity_changed {
                        existing.epoch += 1;
                    }
                    existing.spec = spec;
                    existing.retired = false;
                    indexes.push(index);
                }
                None => {
                    self.tenants.push(Tenant::new(spec));
                    indexes.push(self.tenants.len() - 1);
                }
            }
        }
        for t in &mut self.tenants {
            if !kept.contains(&t.spec.id) {
                t.retired = true;
            }
        }
        (indexes, self.reap(now, &[]))
    }

    /// The budget alone changes: this replica's share of a cluster budget moved
    /// (`crate::cluster`). The same as a reload that changes nothing else: lowered, it is
    /// reached by closing idle connections and those that come back; 0 is allowed (a replica
    /// without a share yet holds nothing, and its waiters wait for a share or time out).
    pub(crate) fn resize(&mut self, budget: usize, now: Instant) -> Vec<Action> {
        self.limits.budget = budget;
        self.reap(now, &[])
    }

    /// Shut down: nothing new opens.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// The budget in force.
    pub(crate) fn budget(&self) -> usize {
        self.limits.budget
    }

    /// Retires every tenant: the upstream left the config.
    pub(crate) fn retire_all(&mut self, now: Instant) -> Vec<Action> {
        self.tenants.iter_mut().for_each(|t| t.retired = true);
        self.reap(now, &[])
    }
}
