//! Cluster mode's side of an upstream: the members and addresses its control loop reads, and
//! the handle ([`Governed`]) through which that loop moves the upstream's budget.

use std::sync::atomic::Ordering;

use super::Upstream;
use crate::cluster::control::Governed;
use crate::cluster::plan::ReplicaId;
use crate::cluster::{ClusterSettings, Peers};

impl Upstream {
    /// Cluster mode: the settings the control loop works with (current after reloads); `None`
    /// once the upstream is not clustered.
    pub(crate) fn cluster(&self) -> Option<ClusterSettings> {
        self.lock().cluster.clone()
    }

    /// Cluster mode: the live members at the last poll (0 if none was read yet, or outside
    /// cluster mode).
    pub(crate) fn members(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }

    /// Cluster mode: every member as the control loop read them last.
    pub(crate) fn peers(&self) -> Peers {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Governed for Upstream {
    fn name(&self) -> &str {
        Upstream::name(self)
    }

    fn cluster(&self) -> Option<ClusterSettings> {
        Upstream::cluster(self)
    }

    fn footprint(&self) -> (usize, usize, bool) {
        let state = self.lock();
        (
            state.book.budget(),
            state.book.slots(),
            state.book.is_closed(),
        )
    }

    /// A share change; see [`Budget::resize`](crate::pool::budget::Budget::resize).
    fn set_budget(&self, budget: usize) {
        self.feed(None, |book, now| book.resize(budget, now));
    }

    fn peer(&self, replica: ReplicaId) -> Option<Option<String>> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&replica)
            .cloned()
    }

    fn set_peers(&self, peers: Peers) {
        self.members.store(peers.len(), Ordering::Relaxed);
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers;
    }
}
