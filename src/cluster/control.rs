//! The control loop of one upstream in cluster mode: a control session holding this
//! replica's slot, a poll about once a second that reads membership, published bounds and
//! backends from the server, and applies [`plan::decide`]'s answer to the pool.
//!
//! Order matters for the promise: a shrink is applied to the pool first and published after;
//! a growth is published first (under the grow lock) and applied after. A lost control
//! session drops the budget to 0 at once: without its slot this replica has no proof of a
//! share, and the others will take it after the grace period.

use std::collections::{BTreeMap, HashMap};
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::plan::{self, Observation, ReplicaId};
use super::{ClusterSettings, GROW_KEY, Named, Peers, parse_application_name};
use crate::pg::PgConnection;

/// What the control loop needs of the upstream whose budget it governs (the pool's upstream
/// implements it): the loop reads the footprint and moves the budget, nothing else.
pub(crate) trait Governed: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// The settings the loop works with (current after reloads); `None` once the upstream is
    /// not clustered.
    fn cluster(&self) -> Option<ClusterSettings>;
    /// The budget in force, the slots held (connections that may exist on the server: the
    /// larger of the two bounds this replica's footprint) and whether the pool is closed
    /// (draining: no new connection opens).
    fn footprint(&self) -> (usize, usize, bool);
    /// Applies this replica's budget (a share change).
    fn set_budget(&self, budget: usize);
    /// `None` if `replica` is not a member, else its address if one was seen.
    fn peer(&self, replica: ReplicaId) -> Option<Option<String>>;
    /// The members and their addresses as the loop read them just now.
    fn set_peers(&self, peers: Peers);
}

/// Runs until the upstream is gone, or closed (drain) with no connection left: then the
/// control session ends and the slot is free.
pub(crate) async fn run(upstream: Weak<impl Governed>) {
    let mut control = Control::default();
    loop {
        let Some(up) = upstream.upgrade() else {
            return;
        };
        let Some(settings) = up.cluster() else {
            return;
        };
        let (_, slots, closed) = up.footprint();
        if closed && slots == 0 {
            if let Some(conn) = control.conn.take() {
                conn.terminate(Duration::from_secs(1)).await;
            }
            return;
        }
        let timeout = settings.query_timeout();
        match tokio::time::timeout(timeout, control.poll(&*up, &settings)).await {
            Ok(Ok(())) => {
                if control.failing {
                    tracing::info!(upstream = %up.name(), "cluster control session restored");
                    control.failing = false;
                }
            }
            Ok(Err(error)) => control.lost(&*up, &error),
            Err(_) => control.lost(
                &*up,
                &format!("no answer within {} ms", timeout.as_millis()),
            ),
        }
        let wait = settings.poll_interval;
        drop(up);
        tokio::time::sleep(wait).await;
    }
}

#[derive(Default)]
struct Control {
    conn: Option<PgConnection>,
    slot: Option<u32>,
    /// The bound last written into the control session's `application_name`.
    published: Option<usize>,
    /// Members of the previous poll with their last published bound.
    last_members: BTreeMap<ReplicaId, usize>,
    /// Replicas whose slot vanished: their last bound and when.
    departed: HashMap<ReplicaId, (usize, Instant)>,
    /// All slots were taken at the last attempt (logged once).
    no_slot: bool,
    /// Ending a departed replica's sessions was refused (logged once).
    terminate_refused: bool,
    failing: bool,
}

impl Control {
    fn lost(&mut self, up: &impl Governed, error: &str) {
        if !self.failing {
            tracing::warn!(upstream = %up.name(), %error, "cluster control session lost: this replica's share is 0 until it holds a slot again");
            self.failing = true;
        }
        // Dropping the session ends it (and its lock) on the server if it is still there.
        self.conn = None;
        self.slot = None;
        self.published = None;
        up.set_budget(0);
    }

    async fn poll(&mut self, up: &impl Governed, settings: &ClusterSettings) -> Result<(), String> {
        let id = settings.id;
        let ns = settings.namespace.to_string();
        if self.conn.is_none() {
            let conn = PgConnection::connect(&settings.control)
                .await
                .map_err(|e| e.to_string())?;
            self.conn = Some(conn);
            self.slot = None;
            self.published = None;
        }
        let (budget, slots, closed) = up.footprint();
        let bound = if closed { slots } else { budget.max(slots) };
        self.publish(settings.namespace, id, bound).await?;
        let conn = self.conn.as_mut().expect("connected above");
        if self.slot.is_none() && !closed {
            for slot in 0..settings.max_replicas {
                let slot_text = slot.to_string();
                let sql = "select pg_try_advisory_lock($1::int, $2::int)";
                if try_lock(conn, sql, &ns, &slot_text).await? {
                    tracing::info!(upstream = %up.name(), slot, replica = %format!("{id:016x}"), "joined the cluster");
                    self.slot = Some(slot as u32);
                    self.no_slot = false;
                    break;
                }
            }
            if self.slot.is_none() && !self.no_slot {
                tracing::warn!(upstream = %up.name(), max_replicas = settings.max_replicas, "every replica slot is taken: this replica serves nothing until one is free");
                self.no_slot = true;
            }
        }

        conn.simple_query("begin")
            .await
            .map_err(|e| e.to_string())?;
        let grow_key = GROW_KEY.to_string();
        let sql = "select pg_try_advisory_xact_lock($1::int, $2::int)";
        let have_grow_lock = try_lock(conn, sql, &ns, &grow_key).await?;
        // Backends and bounds first, members after: a replica that joins in between has no
        // backends yet, so none is mistaken for an orphan.
        // pg_stat_activity is a snapshot per transaction: cleared before each read.
        let clear = "select pg_stat_clear_snapshot()::text";
        conn.fetch_text(clear, &[])
            .await
            .map_err(|e| e.to_string())?;
        let (data_like, control_like) = super::like_patterns(settings.namespace);
        let activity = conn
            .fetch_text(
                "select application_name, count(*)::text from pg_stat_activity \
                 where application_name like $1 or application_name like $2 group by 1",
                &[&data_like, &control_like],
            )
            .await
            .map_err(|e| e.to_string())?;
        conn.fetch_text(clear, &[])
            .await
            .map_err(|e| e.to_string())?;
        let locks = conn
            .fetch_text(
                "select l.objid::text, a.application_name \
                 from pg_locks l join pg_stat_activity a on a.pid = l.pid \
                 where l.locktype = 'advisory' and l.granted and l.objsubid = 2 \
                 and l.classid::bigint = $1::bigint and l.objid::bigint < $2::bigint \
                 and l.database = (select oid from pg_database where datname = current_database())",
                &[&ns, &settings.max_replicas.to_string()],
            )
            .await
            .map_err(|e| e.to_string())?;

        // The members' advertised addresses: the last statement of each idle control session.
        let addresses = conn
            .fetch_text(
                "select application_name, query from pg_stat_activity \
                 where application_name like $1 and state = 'idle'",
                &[&control_like],
            )
            .await
            .map_err(|e| e.to_string())?;

        let mut seen = Observation::default();
        for row in &activity {
            let (Some(name), Some(count)) = (cell(row, 0), cell(row, 1)) else {
                continue;
            };
            let count: usize = count.parse().unwrap_or(0);
            match parse_application_name(settings.namespace, name) {
                Some(Named::Data(replica)) => *seen.backends.entry(replica).or_default() += count,
                Some(Named::Control(replica, bound)) => {
                    let entry = seen.published.entry(replica).or_default();
                    *entry = (*entry).max(bound);
                }
                None => {}
            }
        }
        for row in &locks {
            let (Some(slot), Some(name)) = (cell(row, 0), cell(row, 1)) else {
                continue;
            };
            if let (Ok(slot), Some(Named::Control(replica, _))) = (
                slot.parse::<u32>(),
                parse_application_name(settings.namespace, name),
            ) {
                seen.members.insert(slot, replica);
            }
        }
        let mut peers: Peers = seen.members.values().map(|r| (*r, None)).collect();
        for row in &addresses {
            if let (Some(Named::Control(replica, _)), Some(address)) = (
                cell(row, 0).and_then(|n| parse_application_name(settings.namespace, n)),
                cell(row, 1).and_then(super::parse_advertise),
            ) && let Some(entry) = peers.get_mut(&replica)
            {
                *entry = Some(address);
            }
        }
        // Our own session is busy reading; a member caught mid-poll keeps the address read
        // before.
        for (replica, address) in peers.iter_mut() {
            if *replica == id {
                address.clone_from(&settings.advertise);
            } else if address.is_none() {
                *address = up.peer(*replica).flatten();
            }
        }
        up.set_peers(peers);
        // Our own slot as the server shows it: if it is not there, we are not a member.
        if let Some(slot) = self.slot
            && seen.members.get(&slot) != Some(&id)
        {
            return Err(format!("slot {slot} is no longer held by this replica"));
        }
        let now = Instant::now();
        let current: BTreeMap<ReplicaId, usize> = seen
            .members
            .values()
            .map(|r| (*r, seen.published.get(r).copied().unwrap_or(0)))
            .collect();
        for (replica, bound) in &self.last_members {
            if !current.contains_key(replica) && *replica != id {
                self.departed.entry(*replica).or_insert((*bound, now));
            }
        }
        self.last_members = current;
        let grace = settings.grace();
        self.departed.retain(|replica, (_, since)| {
            now.duration_since(*since) < grace && !self.last_members.contains_key(replica)
        });
        seen.departed = self.departed.iter().map(|(r, (b, _))| (*r, *b)).collect();

        let decision = plan::decide(settings.budget, &seen, id, budget);
        if closed {
            // Draining: no growth; the bound is the connections still open.
        } else if decision.budget < budget {
            up.set_budget(decision.budget);
            tracing::info!(upstream = %up.name(), from = budget, to = decision.budget, members = seen.members.len(), "cluster share: shrinking");
        } else if decision.grows && have_grow_lock {
            // Published before applied: nobody can count on room we are about to take.
            self.publish(settings.namespace, id, decision.budget)
                .await?;
            up.set_budget(decision.budget);
            tracing::info!(upstream = %up.name(), from = budget, to = decision.budget, share = decision.share, members = seen.members.len(), "cluster share: growing");
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.simple_query("commit")
            .await
            .map_err(|e| e.to_string())?;
        let (budget, slots, closed) = up.footprint();
        let bound = if closed { slots } else { budget.max(slots) };
        self.publish(settings.namespace, id, bound).await?;

        if !decision.orphans.is_empty() {
            let prefixes: Vec<String> = decision
                .orphans
                .iter()
                .map(|r| super::data_prefix(settings.namespace, *r))
                .collect();
            let conn = self.conn.as_mut().expect("connected above");
            let ended = conn
                .fetch_text(
                    // In the select list: called only for the rows the filter kept.
                    "select count(pg_terminate_backend(pid))::text from pg_stat_activity \
                     where left(application_name, 33) = any(string_to_array($1, ','))",
                    &[&prefixes.join(",")],
                )
                .await;
            let replicas: Vec<String> = decision
                .orphans
                .iter()
                .map(|r| format!("{r:016x}"))
                .collect();
            match ended {
                Ok(rows) => {
                    self.terminate_refused = false;
                    tracing::info!(upstream = %up.name(), ?replicas, terminated = first(&rows).unwrap_or_default(), "ended the sessions of departed replicas");
                }
                // Not allowed to signal them (another role, without pg_signal_backend): they
                // stay counted until they end by themselves. The session is still in sync (an
                // error answer), so membership goes on; a lost connection fails the next poll.
                Err(error) if !self.terminate_refused => {
                    self.terminate_refused = true;
                    tracing::warn!(upstream = %up.name(), ?replicas, %error, "cannot end the sessions of departed replicas (GRANT pg_signal_backend to the upstream's role): their share is taken only once they end");
                }
                Err(_) => {}
            }
        }
        // Last, so the session idles with it as its `query` until the next poll.
        if let Some(advertise) = &settings.advertise {
            let conn = self.conn.as_mut().expect("connected above");
            conn.simple_query(&super::advertise_statement(advertise))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Writes `bound` into the control session's `application_name` (if it changed).
    async fn publish(&mut self, ns: i32, id: ReplicaId, bound: usize) -> Result<(), String> {
        if self.published == Some(bound) {
            return Ok(());
        }
        let conn = self.conn.as_mut().ok_or("not connected")?;
        let name = super::control_application_name(ns, id, bound);
        conn.fetch_text("select set_config('application_name', $1, false)", &[&name])
            .await
            .map_err(|e| e.to_string())?;
        self.published = Some(bound);
        Ok(())
    }
}

/// Whether `sql` (a `pg_try_advisory_*lock` of the key `(ns, key)`) took the lock.
async fn try_lock(conn: &mut PgConnection, sql: &str, ns: &str, key: &str) -> Result<bool, String> {
    let rows = conn
        .fetch_text(sql, &[ns, key])
        .await
        .map_err(|e| e.to_string())?;
    Ok(first(&rows).as_deref() == Some("t"))
}

fn first(rows: &[Vec<Option<String>>]) -> Option<String> {
    rows.first()?.first()?.clone()
}

fn cell(row: &[Option<String>], i: usize) -> Option<&str> {
    row.get(i)?.as_deref()
}
