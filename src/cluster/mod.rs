//! Cluster mode: several gateway replicas share each upstream's connection budget through the
//! one thing they all reach, the Postgres server itself. No extra service.
//!
//! - **Membership.** Each replica keeps one control session per upstream holding a session
//!   advisory lock on a free replica slot (`pg_try_advisory_lock(namespace, slot)`, the
//!   namespace derived from the cluster and upstream names). The live replicas are the held
//!   slots, read from `pg_locks` about once a second ([`control`]). A replica whose process
//!   dies, or whose session the server ends, loses its slot with it.
//! - **Shares.** The budget divided among the live replicas, the remainder to the lowest slots
//!   ([`plan::shares`]).
//! - **Shrink before grow.** Every replica publishes an upper bound of its footprint in its
//!   control session's `application_name`; its data sessions carry its id in theirs. A replica
//!   grows only under a cluster-wide advisory lock and only into room the server shows free
//!   ([`plan::decide`]); a departed replica's sessions are terminated (`pg_terminate_backend`)
//!   once a grace period has passed, and count until they are gone.
//!
//! - **Transactions across replicas.** An interactive transaction's id ends in its owner's
//!   replica id (`tx_<random>.<replica>`); each replica publishes its `advertise` address as
//!   the last statement text of its control session (`pg_stat_activity.query`, readable by
//!   the upstream's role, no table needed), and reads the others' in its poll into the
//!   upstream's peer directory ([`Peers`]). A call that lands elsewhere is forwarded there
//!   (by the API's `forward` module).
//!
//! The budget is applied through the pool's own accounting (its budget state machine, as a
//! share change; the pool's upstream is the [`control::Governed`] the loop drives), so every
//! promise of a single gateway holds per replica too. The pool depends on this module, not
//! the other way round.

pub(crate) mod control;
pub(crate) mod plan;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClusterConfig, UpstreamConfig};
use crate::pg::ConnectConfig;
use plan::ReplicaId;

/// The advisory-lock key (second half) of the grow lock; slots are 0..max_replicas.
pub(crate) const GROW_KEY: i32 = i32::MAX;

/// What the control loop of one upstream works with. Rebuilt on reload; the id stays.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    pub id: ReplicaId,
    pub namespace: i32,
    /// The cluster-wide budget: the upstream's `max_connections`.
    pub budget: usize,
    pub max_replicas: usize,
    pub poll_interval: Duration,
    /// The control session's connection (the upstream's own credentials and database).
    pub control: Arc<ConnectConfig>,
    /// This replica's `cluster.advertise`, published for forwarded transaction calls.
    pub advertise: Option<String>,
}

impl ClusterSettings {
    pub(crate) fn new(
        cluster: &ClusterConfig,
        upstream: &UpstreamConfig,
        control: ConnectConfig,
        id: ReplicaId,
    ) -> ClusterSettings {
        ClusterSettings {
            id,
            namespace: namespace(&cluster.name, &upstream.name),
            budget: upstream.max_connections,
            max_replicas: cluster.max_replicas,
            poll_interval: cluster.poll_interval,
            control: Arc::new(control),
            advertise: cluster.advertise.clone(),
        }
    }

    /// How long a control query may take before the session counts as lost. The grace
    /// period of a departed replica covers it: a replica that lost its session notices within
    /// a poll plus this, and drops its budget to 0.
    pub(crate) fn query_timeout(&self) -> Duration {
        (self.poll_interval * 2).max(Duration::from_secs(2))
    }

    /// How long a departed replica's last bound stays reserved before its sessions are
    /// terminated and its share taken.
    pub(crate) fn grace(&self) -> Duration {
        self.poll_interval * 2 + self.query_timeout()
    }
}

/// A fresh random replica id (per process and upstream; a restart is a new replica).
pub(crate) fn new_replica_id() -> ReplicaId {
    // Never 0, so it always prints as 16 digits of something.
    rand::random::<u64>() | 1
}

/// The advisory-lock namespace (first key) of a cluster's upstream: FNV-1a of the names, 31
/// bits so it reads back the same from `pg_locks.classid` (an unsigned oid).
pub(crate) fn namespace(cluster: &str, upstream: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in cluster.bytes().chain([b'/']).chain(upstream.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x7fff_ffff) as i32
}

const DATA_PREFIX: &str = "sluice/@";
const CONTROL_PREFIX: &str = "sluice-control/@";

/// The `application_name` of a data session of replica `id` for `tenant`: the namespace
/// (another cluster's sessions on the same server are none of this one's business) and the id
/// first, as Postgres cuts names at 63 bytes. Still starts with `sluice/`, as outside cluster
/// mode.
pub(crate) fn data_application_name(ns: i32, id: ReplicaId, tenant: &str) -> String {
    format!("{DATA_PREFIX}{ns:08x}{id:016x}/{tenant}")
}

/// The prefix every data session of replica `id` has (for terminating): 33 bytes.
pub(crate) fn data_prefix(ns: i32, id: ReplicaId) -> String {
    format!("{DATA_PREFIX}{ns:08x}{id:016x}/")
}

/// `LIKE` patterns matching the data and control sessions of the namespace `ns`.
pub(crate) fn like_patterns(ns: i32) -> (String, String) {
    (
        format!("{DATA_PREFIX}{ns:08x}%"),
        format!("{CONTROL_PREFIX}{ns:08x}%"),
    )
}

/// The `application_name` of a control session: the replica and its published footprint
/// bound.
pub(crate) fn control_application_name(ns: i32, id: ReplicaId, bound: usize) -> String {
    format!("{CONTROL_PREFIX}{ns:08x}{id:016x}/{bound}")
}

/// What an `application_name` says, if it is one of the cluster's.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Named {
    Data(ReplicaId),
    Control(ReplicaId, usize),
}

/// What `name` says, if it is a session of the namespace `ns`.
pub(crate) fn parse_application_name(ns: i32, name: &str) -> Option<Named> {
    let ns = format!("{ns:08x}");
    if let Some(rest) = name.strip_prefix(DATA_PREFIX) {
        let (id, _tenant) = rest.strip_prefix(ns.as_str())?.split_once('/')?;
        return parse_id(id).map(Named::Data);
    }
    let rest = name
        .strip_prefix(CONTROL_PREFIX)?
        .strip_prefix(ns.as_str())?;
    let (id, bound) = rest.split_once('/')?;
    Some(Named::Control(parse_id(id)?, bound.parse().ok()?))
}

fn parse_id(hex: &str) -> Option<ReplicaId> {
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The live members of a cluster as this replica last saw them, with their published
/// `advertise` address (if any was seen). Kept by the upstream, written by its control loop.
pub(crate) type Peers = std::collections::HashMap<ReplicaId, Option<String>>;

const ADVERTISE_PREFIX: &str = "select 'sluice-advertise:";

/// The statement a control session runs last in each poll: its text (visible to the others
/// in `pg_stat_activity.query` while the session idles) carries the address, hex-encoded so no
/// character of it needs quoting.
pub(crate) fn advertise_statement(advertise: &str) -> String {
    let hex: String = advertise.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{ADVERTISE_PREFIX}{hex}'")
}

/// The address an [`advertise_statement`] carries.
pub(crate) fn parse_advertise(query: &str) -> Option<String> {
    let hex = query.strip_prefix(ADVERTISE_PREFIX)?.strip_suffix('\'')?;
    if hex.len() % 2 != 0 || hex.len() > 512 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The transaction id `random` owned by `replica`: `tx_<random>.<16 hex digits>` (base64url,
/// which never contains a dot, then the owner).
pub(crate) fn owned_transaction_id(random: &str, replica: ReplicaId) -> String {
    format!("{random}.{replica:016x}")
}

/// The owner a transaction id names, if it names one.
pub(crate) fn transaction_owner(id: &str) -> Option<ReplicaId> {
    let (_, owner) = id.rsplit_once('.')?;
    parse_id(owner)
}

/// What the server must hold for one upstream in cluster mode: the cluster budget plus one
/// control session per possible replica (`sluice check` shows it).
pub fn footprint(upstream: &UpstreamConfig, cluster: &ClusterConfig) -> usize {
    upstream.max_connections + cluster.max_replicas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_names_round_trip_and_fit_postgres() {
        let id = 0x0123_4567_89ab_cdef;
        let ns = namespace("prod", "main");
        let tenant = "t".repeat(64);
        let data = data_application_name(ns, id, &tenant);
        assert!(data.starts_with("sluice/"));
        // Postgres keeps 63 bytes: the id survives the cut.
        assert_eq!(
            parse_application_name(ns, &data[..63]),
            Some(Named::Data(id))
        );
        assert!(data.starts_with(&data_prefix(ns, id)));
        assert_eq!(data_prefix(ns, id).len(), 33);
        assert_eq!(
            parse_application_name(ns, &control_application_name(ns, id, 17)),
            Some(Named::Control(id, 17))
        );
        assert!(control_application_name(i32::MAX, u64::MAX, usize::MAX).len() <= 63);
        // Another cluster's sessions are not this one's.
        let other_ns = namespace("staging", "main");
        assert_eq!(parse_application_name(other_ns, &data), None);
        let control = control_application_name(ns, id, 3);
        assert_eq!(parse_application_name(other_ns, &control), None);
        for other in [
            "sluice/acme",
            "sluice/@xyz/t",
            "sluice-control/@0123456789abcdef/x",
            "",
        ] {
            assert_eq!(parse_application_name(ns, other), None, "{other}");
        }
    }

    #[test]
    fn advertised_addresses_and_owners_round_trip() {
        for address in [
            "127.0.0.1:8080",
            "sluice-0.sluice.ns.svc:8080",
            "[::1]:1'; --",
        ] {
            let statement = advertise_statement(address);
            // Only the literal's own quotes: nothing of the address needs escaping.
            assert_eq!(statement.matches('\'').count(), 2, "{statement}");
            assert_eq!(parse_advertise(&statement).as_deref(), Some(address));
        }
        assert_eq!(parse_advertise("select 1"), None);
        assert_eq!(parse_advertise("select 'sluice-advertise:6'"), None);
        let id = owned_transaction_id("tx_abc-_Z", 0x0123_4567_89ab_cdef);
        assert_eq!(transaction_owner(&id), Some(0x0123_4567_89ab_cdef));
        assert_eq!(transaction_owner("tx_abc-_Z"), None);
        assert_eq!(transaction_owner("tx_abc.xyz"), None);
    }

    #[test]
    fn namespaces_are_stable_positive_and_differ_by_name() {
        assert_eq!(namespace("prod", "main"), namespace("prod", "main"));
        assert_ne!(namespace("prod", "main"), namespace("staging", "main"));
        assert_ne!(namespace("prod", "main"), namespace("prod", "replica"));
        assert!(namespace("x", "y") >= 0);
    }
}
