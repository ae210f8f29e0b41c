//! The cluster's decisions as pure functions of what the server shows: each replica's share of
//! the budget, and how far this replica may move its own budget now. No I/O, no clock: the
//! control loop (`control.rs`) reads the server and applies the result.
//!
//! The promise kept here: the backends of all replicas together never exceed the cluster
//! budget. Each replica publishes an upper bound of its footprint (its budget, or its open
//! connections if more, while it shrinks) in its control session's `application_name`.
//! Shrinking needs nobody's agreement. Growing happens only under a cluster-wide advisory lock,
//! only when everyone else's published bound (or their backends as the server counts them, if
//! more), plus replicas that vanished recently, plus the new budget fit the cluster budget, and
//! the new bound is published before the budget is applied. So the published bounds always sum
//! to at most the budget, and each replica stays within its own.

use std::collections::{BTreeMap, BTreeSet};

/// A replica's id: random per process and upstream, in its sessions' `application_name`.
pub(crate) type ReplicaId = u64;

/// What one poll read from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Observation {
    /// Held replica slots: slot number → the replica holding it.
    pub members: BTreeMap<u32, ReplicaId>,
    /// Footprint bounds published by control sessions, by replica.
    pub published: BTreeMap<ReplicaId, usize>,
    /// Data backends per replica, as `pg_stat_activity` counts them.
    pub backends: BTreeMap<ReplicaId, usize>,
    /// Replicas that left recently (their lock vanished less than a grace period ago) with
    /// their last published bound: still reserved, since they may not have noticed yet.
    pub departed: BTreeMap<ReplicaId, usize>,
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// This replica's fair share with the current members (0 if it holds no slot).
    pub share: usize,
    /// The budget to apply now: the share when shrinking; when growing, as much of the share
    /// as fits beside the others' footprints (never less than the current budget).
    pub budget: usize,
    /// Whether `budget` is a growth, which needs the grow lock and publishing first.
    pub grows: bool,
    /// Replicas holding backends without a slot, past their grace period: their sessions are
    /// to be terminated.
    pub orphans: Vec<ReplicaId>,
}

/// Each member's share: the budget divided by the number of members, the remainder going one
/// each to the lowest slots. Independent of the order members were read in.
pub(crate) fn shares(
    budget: usize,
    members: &BTreeMap<u32, ReplicaId>,
) -> BTreeMap<ReplicaId, usize> {
    let n = members.len();
    if n == 0 {
        return BTreeMap::new();
    }
    members
        .values()
        .enumerate()
        .map(|(rank, &id)| (id, budget / n + usize::from(rank < budget % n)))
        .collect()
}

/// What replica `me`, whose applied budget is `current`, does after observing `seen`.
pub(crate) fn decide(budget: usize, seen: &Observation, me: ReplicaId, current: usize) -> Decision {
    let share = shares(budget, &seen.members).get(&me).copied().unwrap_or(0);
    let live: BTreeSet<ReplicaId> = seen.members.values().copied().collect();
    let orphans: Vec<ReplicaId> = seen
        .backends
        .iter()
        .filter(|&(id, &n)| {
            n > 0 && *id != me && !live.contains(id) && !seen.departed.contains_key(id)
        })
        .map(|(&id, _)| id)
        .collect();
    if share <= current {
        return Decision {
            share,
            budget: share,
            grows: false,
            orphans,
        };
    }
    // Everyone else's footprint as far as the server shows it: the larger of what they
    // published and what they hold, orphans and recently departed replicas included.
    let others: BTreeSet<ReplicaId> = seen
        .published
        .keys()
        .chain(seen.backends.keys())
        .chain(seen.departed.keys())
        .copied()
        .filter(|&id| id != me)
        .collect();
    let taken: usize = others
        .iter()
        .map(|id| {
            let published = seen.published.get(id).copied().unwrap_or(0);
            let held = seen.backends.get(id).copied().unwrap_or(0);
            let reserved = seen.departed.get(id).copied().unwrap_or(0);
            published.max(held).max(reserved)
        })
        .sum();
    let room = budget.saturating_sub(taken);
    let next = share.min(room).max(current);
    Decision {
        share,
        budget: next,
        grows: next > current,
        orphans,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(ids: &[(u32, ReplicaId)]) -> BTreeMap<u32, ReplicaId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn shares_divide_the_budget_with_the_remainder_to_the_lowest_slots() {
        let m = members(&[(4, 40), (0, 10), (2, 20)]);
        let s = shares(20, &m);
        assert_eq!(s[&10], 7);
        assert_eq!(s[&20], 7);
        assert_eq!(s[&40], 6);
        assert!(shares(20, &BTreeMap::new()).is_empty());
        assert_eq!(shares(1, &m).values().sum::<usize>(), 1);
    }

    #[test]
    fn a_joining_replica_grows_only_once_the_others_have_shrunk() {
        // Two replicas at 10 each; a third (id 3) joins.
        let mut seen = Observation {
            members: members(&[(0, 1), (1, 2), (2, 3)]),
            published: [(1, 10), (2, 10), (3, 0)].into(),
            backends: [(1, 10), (2, 9)].into(),
            departed: BTreeMap::new(),
        };
        let d = decide(20, &seen, 3, 0);
        assert_eq!((d.share, d.budget, d.grows), (6, 0, false));
        // The others shrink first, without anyone's agreement.
        assert_eq!(decide(20, &seen, 1, 10).budget, 7);
        // One has published its smaller bound, but still holds 10 backends.
        seen.published.insert(1, 7);
        assert_eq!(decide(20, &seen, 3, 0).budget, 0);
        seen.backends.insert(1, 7);
        seen.published.insert(2, 7);
        seen.backends.insert(2, 7);
        let d = decide(20, &seen, 3, 0);
        assert_eq!((d.budget, d.grows), (6, true));
    }

    #[test]
    fn a_dead_replicas_backends_are_orphans_after_its_grace_and_block_growth_until_gone() {
        let mut seen = Observation {
            members: members(&[(0, 1)]),
            published: [(1, 10)].into(),
            backends: [(1, 10), (2, 10)].into(),
            departed: [(2, 10)].into(),
        };
        let d = decide(20, &seen, 1, 10);
        assert_eq!(
            (d.budget, d.orphans.len()),
            (10, 0),
            "reserved during the grace period"
        );
        seen.departed.clear();
        let d = decide(20, &seen, 1, 10);
        assert_eq!(
            (d.budget, d.orphans),
            (10, vec![2]),
            "terminated, not yet gone"
        );
        seen.backends.insert(2, 3);
        assert_eq!(
            decide(20, &seen, 1, 10).budget,
            17,
            "partial growth into freed room"
        );
        seen.backends.remove(&2);
        assert_eq!(decide(20, &seen, 1, 10).budget, 20);
    }

    #[test]
    fn a_replica_without_a_slot_has_no_share() {
        let seen = Observation {
            members: members(&[(0, 1)]),
            ..Observation::default()
        };
        let d = decide(20, &seen, 9, 5);
        assert_eq!((d.share, d.budget, d.grows), (0, 0, false));
    }

    fn observation() -> impl Strategy<Value = (Observation, Vec<usize>)> {
        (
            proptest::collection::btree_map(0u32..8, 1u64..6, 0..5),
            proptest::collection::btree_map(1u64..8, 0usize..25, 0..7),
            proptest::collection::btree_map(1u64..8, 0usize..25, 0..7),
            proptest::collection::btree_map(1u64..8, 0usize..25, 0..3),
            proptest::collection::vec(0usize..25, 8),
        )
            .prop_map(|(members, published, backends, departed, current)| {
                // A replica holds one slot at most.
                let members = members
                    .into_iter()
                    .enumerate()
                    .map(|(i, (slot, id))| (slot, (id + i as u64) % 7 + 1))
                    .collect::<BTreeMap<u32, ReplicaId>>();
                let mut ids = BTreeSet::new();
                let members = members
                    .into_iter()
                    .filter(|(_, id)| ids.insert(*id))
                    .collect();
                (
                    Observation {
                        members,
                        published,
                        backends,
                        departed,
                    },
                    current,
                )
            })
    }

    proptest! {
        /// Shares always add up to the budget and differ by at most one; a growth never goes
        /// past the share, never shrinks, and fits beside everyone else's footprint.
        #[test]
        fn decisions_keep_the_cluster_within_its_budget(
            budget in 0usize..40,
            (seen, current) in observation(),
            me in 1u64..8,
        ) {
            let s = shares(budget, &seen.members);
            if !s.is_empty() {
                prop_assert_eq!(s.values().sum::<usize>(), budget);
                let (lo, hi) = (s.values().min().unwrap(), s.values().max().unwrap());
                prop_assert!(hi - lo <= 1);
            }
            let current = current[me as usize];
            let d = decide(budget, &seen, me, current);
            prop_assert!(d.budget <= d.share.max(current));
            if d.grows {
                prop_assert!(d.budget > current && d.budget <= d.share);
                let others: usize = (1u64..8)
                    .filter(|&id| id != me)
                    .map(|id| {
                        [&seen.published, &seen.backends, &seen.departed]
                            .iter()
                            .map(|m| m.get(&id).copied().unwrap_or(0))
                            .max()
                            .unwrap()
                    })
                    .sum();
                prop_assert!(others + d.budget <= budget);
            } else {
                prop_assert!(d.budget == d.share || d.budget == current);
            }
            prop_assert!(!d.orphans.contains(&me));
        }

        /// Replicas that grow one at a time under the grow lock, each publishing before it
        /// applies, never put the sum of budgets over the cluster budget, whatever the join
        /// order; and once everyone has polled twice, each holds its share.
        #[test]
        fn serialized_growth_converges_to_the_shares(
            budget in 1usize..40,
            joins in proptest::collection::vec(0u32..6, 1..6),
            order in proptest::collection::vec(0usize..6, 1..40),
        ) {
            let mut seen = Observation::default();
            let mut applied: BTreeMap<ReplicaId, usize> = BTreeMap::new();
            for (i, slot) in joins.iter().enumerate() {
                let id = i as u64 + 1;
                if seen.members.contains_key(slot) {
                    continue;
                }
                seen.members.insert(*slot, id);
                seen.published.insert(id, 0);
                applied.insert(id, 0);
            }
            let ids: Vec<ReplicaId> = applied.keys().copied().collect();
            let steps = order.iter().map(|&i| ids[i % ids.len()]).chain(ids.iter().copied().cycle().take(ids.len() * 3));
            for id in steps {
                let d = decide(budget, &seen, id, applied[&id]);
                // Publish (growth: before applying; shrink: after; the same here, as a step).
                applied.insert(id, d.budget);
                seen.published.insert(id, d.budget);
                seen.backends.insert(id, d.budget);
                prop_assert!(applied.values().sum::<usize>() <= budget);
            }
            let s = shares(budget, &seen.members);
            prop_assert_eq!(&applied, &s);
        }
    }
}
