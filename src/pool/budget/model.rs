//! Model-based tests of the pool's accounting: proptest generates sequences of events (check-
//! outs, connections opening or failing, returns clean, dirty or broken, closes confirmed or
//! stuck, waiters leaving, reaper ticks, reloads that change budgets, pool sizes, tenants and
//! the upstream's identity), a [`World`] plays the I/O side — it carries out every action the
//! way `upstream.rs` does, keeping its own record of which connections physically exist — and
//! the promises are checked after every step:
//!
//! - connections that exist (opening, idle, in use, recovering, closing until confirmed gone)
//!   never exceed the budget — and when a reload lowers it below what is open, never grow;
//! - no tenant has more connections than its `pool_size` (same rule across a lowered size);
//! - every waiter is answered at most once while it waits, in FIFO order within its tenant,
//!   and every waiter is answered (or has left) once the upstream shuts down;
//! - a connection opened with settings a reload has since changed is never handed out;
//! - the book's counts agree with the world's;
//! - under saturation each tenant's share is within one connection of
//!   budget × pool_size ÷ Σ pool_size (a separate property).
//!
//! `SLUICE_MODEL_CASES` sets the number of sequences (default 2,000; a nightly run uses
//! 100,000 or more).

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

fn cases() -> u32 {
    std::env::var("SLUICE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

#[derive(Debug, Clone)]
enum Ev {
    Checkout(u8),
    ConnectOk(u8),
    ConnectFail(u8),
    ReturnClean(u8),
    ReturnDirty(u8),
    ReturnBroken(u8),
    RecoverOk(u8),
    RecoverFail(u8),
    CloseDone(u8),
    CloseStuck(u8),
    WaiterGone(u8),
    Tick(u16),
    IdleDied(u8),
    Reload {
        budget: u8,
        sizes: Vec<u8>,
        identity: bool,
        connect: u8,
    },
    /// A cluster share change (`crate::cluster`): the budget alone moves, 0 included.
    Share(u8),
    Shutdown,
}

fn event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => any::<u8>().prop_map(Ev::Checkout),
        5 => any::<u8>().prop_map(Ev::ConnectOk),
        1 => any::<u8>().prop_map(Ev::ConnectFail),
        5 => any::<u8>().prop_map(Ev::ReturnClean),
        1 => any::<u8>().prop_map(Ev::ReturnDirty),
        1 => any::<u8>().prop_map(Ev::ReturnBroken),
        2 => any::<u8>().prop_map(Ev::RecoverOk),
        1 => any::<u8>().prop_map(Ev::RecoverFail),
        4 => any::<u8>().prop_map(Ev::CloseDone),
        1 => any::<u8>().prop_map(Ev::CloseStuck),
        2 => any::<u8>().prop_map(Ev::WaiterGone),
        2 => (0u16..5_000).prop_map(Ev::Tick),
        1 => any::<u8>().prop_map(Ev::IdleDied),
        1 => (1u8..7, prop::collection::vec(0u8..5, 1..5), prop::bool::weighted(0.3), 0u8..3)
            .prop_map(|(budget, sizes, identity, connect)| Ev::Reload { budget, sizes, identity, connect }),
        1 => (0u8..7).prop_map(Ev::Share),
        // Rare: most sequences should run long before a shutdown.
        1 => prop::bool::weighted(0.1).prop_map(|s| if s { Ev::Shutdown } else { Ev::Tick(1) }),
    ]
}

/// Where the world (the I/O side) has a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    /// Being opened (physically exists: a socket, a backend forking).
    Connecting,
    /// Replacement for `old`: opens once `old` is gone (does not exist yet).
    AfterClose(ConnId),
    /// In the book's hands (idle): parked.
    Parked,
    /// Held by a request.
    Held,
    Recovering,
    Closing,
}

#[derive(Debug, Clone)]
struct WConn {
    tenant: usize,
    at: Where,
    /// The (tenant connect generation) the connection was opened with.
    generation: u64,
}

#[derive(Debug, Clone)]
struct WWaiter {
    tenant: usize,
    seq: u64,
}

struct World {
    book: Budget,
    now: Instant,
    base: Instant,
    conns: BTreeMap<ConnId, WConn>,
    waiting: BTreeMap<WaiterId, WWaiter>,
    answered: HashMap<WaiterId, &'static str>,
    gone: Vec<WaiterId>,
    seq: u64,
    budget: usize,
    sizes: Vec<usize>,
    /// Per tenant (by index): bumped whenever a reload changes how it connects.
    generation: Vec<u64>,
    ids: Vec<Arc<str>>,
    connect_keys: Vec<String>,
    closed: bool,
    log: Vec<String>,
}

fn limits(budget: usize) -> Limits {
    Limits {
        budget,
        server_budget: budget,
        server_lifetime: Duration::from_secs(3_600),
        server_idle_timeout: Duration::from_secs(60),
    }
}

fn spec(id: &Arc<str>, pool_size: usize, key: &str) -> TenantSpec {
    TenantSpec {
        id: id.clone(),
        pool_size,
        max_waiting: 4,
        connect_key: key.to_owned(),
    }
}

impl World {
    fn new(budget: usize, sizes: &[usize]) -> World {
        let ids: Vec<Arc<str>> = (0..sizes.len()).map(|i| format!("t{i}").into()).collect();
        let specs = ids
            .iter()
            .zip(sizes)
            .map(|(id, &s)| spec(id, s, "k0"))
            .collect();
        let base = Instant::now();
        World {
            book: Budget::new("model".into(), limits(budget), specs),
            now: base,
            base,
            conns: BTreeMap::new(),
            waiting: BTreeMap::new(),
            answered: HashMap::new(),
            gone: Vec::new(),
            seq: 0,
            budget,
            sizes: sizes.to_vec(),
            generation: vec![0; sizes.len()],
            ids,
            connect_keys: vec!["k0".into(); sizes.len()],
            closed: false,
            log: Vec::new(),
        }
    }

    fn pick(&self, at: impl Fn(&Where) -> bool, n: u8) -> Option<ConnId> {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| at(&c.at))
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then(|| ids[n as usize % ids.len()])
    }

    /// Connections that physically exist (a socket or a backend), and per tenant those
    /// serving it or on their way (not closing).
    fn existing(&self) -> (usize, Vec<usize>) {
        let mut per = vec![0; self.ids.len()];
        let mut all = 0;
        for c in self.conns.values() {
            if !matches!(c.at, Where::AfterClose(_)) {
                all += 1;
            }
            if c.at != Where::Closing {
                per[c.tenant] += 1;
            }
        }
        (all, per)
    }

    /// Carries out actions as upstream.rs does, checking each against the promises.
    fn run(&mut self, actions: Vec<Action>) -> Result<(), String> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            self.log.push(format!("  -> {action:?}"));
            match action {
                Action::Connect { conn, tenant, .. } => {
                    if self.conns.contains_key(&conn) {
                        return Err(format!("connect of a known id {conn}"));
                    }
                    self.conns.insert(
                        conn,
                        WConn {
                            tenant,
                            at: Where::Connecting,
                            generation: self.generation[tenant],
                        },
                    );
                }
                Action::Close { conn, .. } => {
                    let c = self.conns.get_mut(&conn).ok_or("close of unknown conn")?;
                    if c.at != Where::Parked {
                        return Err(format!("close of a connection not parked: {:?}", c.at));
                    }
                    c.at = Where::Closing;
                }
                Action::Replace {
                    old, conn, tenant, ..
                } => {
                    let c = self.conns.get_mut(&old).ok_or("replace of unknown conn")?;
                    if c.at != Where::Parked {
                        return Err(format!("replace of a connection not parked: {:?}", c.at));
                    }
                    c.at = Where::Closing;
                    self.conns.insert(
                        conn,
                        WConn {
                            tenant,
                            at: Where::AfterClose(old),
                            generation: self.generation[tenant],
                        },
                    );
                }
                Action::Recover { conn } => {
                    let c = self.conns.get_mut(&conn).ok_or("recover of unknown conn")?;
                    if c.at != Where::Parked {
                        return Err("recover of a connection not parked".into());
                    }
                    c.at = Where::Recovering;
                }
                Action::Hand {
                    waiter,
                    tenant,
                    conn,
                } => {
                    self.answer(waiter, tenant, "hand")?;
                    let generation = self.generation[tenant];
                    let c = self.conns.get_mut(&conn).ok_or("hand of unknown conn")?;
                    if c.at != Where::Parked || c.tenant != tenant {
                        return Err(format!("hand of {:?} of tenant {}", c.at, c.tenant));
                    }
                    if c.generation != generation {
                        return Err(format!(
                            "handed out a connection opened with superseded settings (generation {} < {generation})",
                            c.generation
                        ));
                    }
                    c.at = Where::Held;
                }
                Action::Fail { waiter, tenant, .. } => self.answer(waiter, tenant, "fail")?,
                Action::Misconfigured(_) | Action::LimitOk { .. } => {}
            }
        }
        Ok(())
    }

    fn answer(&mut self, waiter: WaiterId, tenant: usize, how: &'static str) -> Result<(), String> {
        if let Some(previous) = self.answered.get(&waiter) {
            return Err(format!(
                "waiter {waiter} answered twice ({previous}, {how})"
            ));
        }
        if self.gone.contains(&waiter) {
            return Err(format!("waiter {waiter} answered after it left"));
        }
        let w = self
            .waiting
            .remove(&waiter)
            .ok_or(format!("unknown waiter {waiter}"))?;
        if w.tenant != tenant {
            return Err("waiter answered for another tenant".into());
        }
        if how == "hand"
            && let Some((earlier, _)) = self
                .waiting
                .iter()
                .find(|(_, o)| o.tenant == tenant && o.seq < w.seq)
        {
            return Err(format!(
                "FIFO: waiter {waiter} served before earlier waiter {earlier}"
            ));
        }
        self.answered.insert(waiter, how);
        Ok(())
    }

    fn step(&mut self, ev: &Ev) -> Result<(), String> {
        self.log.push(format!("{ev:?}"));
        let now = self.now;
        match ev {
            Ev::Checkout(n) => {
                let tenant = *n as usize % self.ids.len();
                let (reply, actions) = self.book.checkout(tenant, now);
                match reply {
                    Reply::Idle { conn, .. } => {
                        let generation = self.generation[tenant];
                        let c = self
                            .conns
                            .get_mut(&conn)
                            .ok_or("idle reply of unknown conn")?;
                        if c.at != Where::Parked || c.tenant != tenant {
                            return Err("idle reply of a connection not idle".into());
                        }
                        if c.generation != generation {
                            return Err(
                                "reused a connection opened with superseded settings".into()
                            );
                        }
                        c.at = Where::Held;
                    }
                    Reply::Queued(w) => {
                        self.seq += 1;
                        self.waiting.insert(
                            w,
                            WWaiter {
                                tenant,
                                seq: self.seq,
                            },
                        );
                    }
                    Reply::Refused(_) => {}
                }
                self.run(actions)?;
            }
            Ev::ConnectOk(n) | Ev::ConnectFail(n) => {
                let Some(conn) = self.pick(|w| *w == Where::Connecting, *n) else {
                    return Ok(());
                };
                let outcome = if matches!(ev, Ev::ConnectOk(_)) {
                    self.conns.get_mut(&conn).unwrap().at = Where::Parked;
                    Connected::Ok { limit: None }
                } else {
                    self.conns.remove(&conn);
                    Connected::Failed {
                        error: "refused".into(),
                        jitter: 0.75,
                    }
                };
                let actions = self.book.connected(conn, outcome, now);
                self.run(actions)?;
            }
            Ev::ReturnClean(n) | Ev::ReturnDirty(n) | Ev::ReturnBroken(n) => {
                let Some(conn) = self.pick(|w| *w == Where::Held, *n) else {
                    return Ok(());
                };
                self.conns.get_mut(&conn).unwrap().at = Where::Parked;
                let how = match ev {
                    Ev::ReturnClean(_) => Returned::Clean,
                    Ev::ReturnDirty(_) => Returned::Dirty,
                    _ => Returned::Broken,
                };
                let actions = self
                    .book
                    .returned(conn, how, Some(Duration::from_millis(5)), now);
                self.run(actions)?;
            }
            Ev::RecoverOk(n) | Ev::RecoverFail(n) => {
                let Some(conn) = self.pick(|w| *w == Where::Recovering, *n) else {
                    return Ok(());
                };
                self.conns.get_mut(&conn).unwrap().at = Where::Parked;
                let how = if matches!(ev, Ev::RecoverOk(_)) {
                    Returned::Clean
                } else {
                    Returned::Unrecoverable
                };
                let actions = self.book.returned(conn, how, None, now);
                self.run(actions)?;
            }
            Ev::CloseDone(n) => {
                let Some(conn) = self.pick(|w| *w == Where::Closing, *n) else {
                    return Ok(());
                };
                self.conns.remove(&conn);
                for c in self.conns.values_mut() {
                    if c.at == Where::AfterClose(conn) {
                        c.at = Where::Connecting;
                    }
                }
                let actions = self.book.closed(conn, now);
                self.run(actions)?;
            }
            Ev::CloseStuck(n) => {
                if let Some(conn) = self.pick(|w| *w == Where::Closing, *n) {
                    self.book.stuck(conn);
                }
            }
            Ev::WaiterGone(n) => {
                let ids: Vec<WaiterId> = self.waiting.keys().copied().collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let waiter = ids[*n as usize % ids.len()];
                let w = self.waiting.remove(&waiter).unwrap();
                if !self.book.waiter_gone(w.tenant, waiter) {
                    return Err("a waiting waiter was not in the book's queue".into());
                }
                self.gone.push(waiter);
            }
            Ev::Tick(ms) => {
                self.now += Duration::from_millis(*ms as u64);
                let actions = self.book.reap(self.now, &[]);
                self.run(actions)?;
            }
            Ev::IdleDied(n) => {
                if let Some(conn) = self.pick(|w| *w == Where::Parked, *n) {
                    let actions = self.book.reap(now, &[conn]);
                    self.run(actions)?;
                }
            }
            Ev::Share(budget) => {
                self.budget = *budget as usize;
                let actions = self.book.resize(self.budget, now);
                self.run(actions)?;
            }
            Ev::Reload {
                budget,
                sizes,
                identity,
                connect,
            } => {
                let budget = *budget as usize;
                // Tenants: sizes[i] == 0 retires tenant i (kept out of the config); indexes
                // past the current count add tenants.
                let mut specs = Vec::new();
                let mut kept = Vec::new();
                for (i, &size) in sizes.iter().enumerate() {
                    // A new tenant takes the next index; one past it is left out.
                    if size == 0 || i > self.ids.len() {
                        continue;
                    }
                    if i >= self.ids.len() {
                        self.ids.push(format!("t{i}").into());
                        self.sizes.push(size as usize);
                        self.generation.push(0);
                        self.connect_keys.push("k0".into());
                    }
                    if *connect as usize == i {
                        self.connect_keys[i] = format!("{}x", self.connect_keys[i]);
                        self.generation[i] += 1;
                    }
                    if *identity {
                        self.generation[i] += 1;
                    }
                    self.sizes[i] = size as usize;
                    specs.push(spec(&self.ids[i], size as usize, &self.connect_keys[i]));
                    kept.push(i);
                }
                if *identity {
                    // Retired tenants' connections are of the old identity too.
                    for i in 0..self.ids.len() {
                        if !kept.contains(&i) {
                            self.generation[i] += 1;
                        }
                    }
                }
                self.budget = budget;
                let (indexes, actions) = self.book.reload(limits(budget), specs, *identity, now);
                if indexes != kept {
                    return Err(format!("tenant indexes {indexes:?}, expected {kept:?}"));
                }
                self.run(actions)?;
            }
            Ev::Shutdown => {
                let actions = self.book.shut_down();
                self.closed = true;
                self.run(actions)?;
                if !self.waiting.is_empty() {
                    return Err("waiters left unanswered after shutdown".into());
                }
            }
        }
        Ok(())
    }

    /// The promises that hold after every step; `before` is what existed before it.
    fn check(&self, before: &(usize, Vec<usize>)) -> Result<(), String> {
        let (all, _) = self.existing();
        if all > self.budget && all > before.0 {
            return Err(format!(
                "{all} connections exist on a budget of {} (was {})",
                self.budget, before.0
            ));
        }
        // Per tenant, connections serving it or on their way (a closing one is on its way
        // out, and one closed to make room for another tenant gave its slot away).
        let mut per = vec![0; self.ids.len()];
        for c in self.conns.values() {
            if c.at != Where::Closing {
                per[c.tenant] += 1;
            }
        }
        for (t, &n) in per.iter().enumerate() {
            let was = before.1.get(t).copied().unwrap_or(0);
            if n > self.sizes[t] && n > was {
                return Err(format!(
                    "tenant {t} has {n} connections, pool_size {} (was {was})",
                    self.sizes[t]
                ));
            }
        }
        // Exact slot agreement (a replaced connection hands its slot to its replacement).
        let replaced = self
            .conns
            .values()
            .filter(|c| matches!(c.at, Where::AfterClose(_)))
            .count();
        if self.book.slots() != self.conns.len() - replaced {
            return Err(format!(
                "book counts {} slots, the world holds {} ({} replacements pending)",
                self.book.slots(),
                self.conns.len() - replaced,
                replaced
            ));
        }
        let status: Vec<TenantPoolStatus> = (0..self.ids.len())
            .map(|t| self.book.tenant_status(t, self.now))
            .collect();
        let idle: usize = status.iter().map(|t| t.idle).sum();
        let parked = self
            .conns
            .values()
            .filter(|c| c.at == Where::Parked)
            .count();
        if idle != parked {
            return Err(format!("book has {idle} idle, world {parked} parked"));
        }
        let waiting: usize = status.iter().map(|t| t.waiting).sum();
        if waiting != self.waiting.len() {
            return Err(format!(
                "book has {waiting} waiting, world {}",
                self.waiting.len()
            ));
        }
        Ok(())
    }
}

/// Runs a sequence; `Err` names the broken promise with the trace.
fn play(budget: usize, sizes: &[usize], events: &[Ev]) -> Result<usize, String> {
    let mut world = World::new(budget, sizes);
    let _ = world.base;
    let mut steps = 0;
    for ev in events {
        if world.closed {
            break;
        }
        let before = world.existing();
        let outcome = world.step(ev).and_then(|()| world.check(&before));
        steps += 1;
        if let Err(problem) = outcome {
            let trace = world.log[world.log.len().saturating_sub(40)..].join("\n");
            return Err(format!("{problem}\n--- last events:\n{trace}"));
        }
    }
    // Everyone waiting is answered by a shutdown.
    let actions = world.book.shut_down();
    world.run(actions)?;
    if !world.waiting.is_empty() {
        return Err("waiters left unanswered after shutdown".into());
    }
    Ok(steps)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_budget_keeps_its_promises_under_any_event_sequence(
        budget in 1usize..6,
        sizes in prop::collection::vec(1usize..5, 1..4),
        events in prop::collection::vec(event(), 0..300),
    ) {
        if let Err(problem) = play(budget, &sizes, &events) {
            prop_assert!(false, "{}", problem);
        }
    }

    #[test]
    fn under_saturation_shares_are_within_one_connection_of_proportional(
        budget in 1usize..12,
        sizes in prop::collection::vec(1usize..8, 2..5),
        picks in prop::collection::vec(any::<u8>(), 200..400),
    ) {
        let mut world = World::new(budget, &sizes);
        for (i, pick) in picks.iter().enumerate() {
            // Keep every tenant's queue full.
            for t in 0..sizes.len() {
                while world.book.tenant_status(t, world.now).waiting < 4 {
                    let (reply, actions) = world.book.checkout(t, world.now);
                    match reply {
                        Reply::Queued(w) => {
                            world.seq += 1;
                            world.waiting.insert(w, WWaiter { tenant: t, seq: world.seq });
                        }
                        Reply::Idle { conn, .. } => world.conns.get_mut(&conn).unwrap().at = Where::Held,
                        Reply::Refused(e) => prop_assert!(false, "refused {e}"),
                    }
                    world.run(actions).map_err(TestCaseError::fail)?;
                }
            }
            // Complete whatever is in flight, then return one held connection.
            let before = world.existing();
            let step = match i % 3 {
                0 => Ev::ConnectOk(*pick),
                1 => Ev::CloseDone(*pick),
                _ => Ev::ReturnClean(*pick),
            };
            world.step(&step).map_err(TestCaseError::fail)?;
            world.check(&before).map_err(TestCaseError::fail)?;
        }
        // Settle: finish every open and close, then cycle each held connection a few times.
        for round in 0..(budget * 8 + 50) {
            for t in 0..sizes.len() {
                while world.book.tenant_status(t, world.now).waiting < 4 {
                    let (reply, actions) = world.book.checkout(t, world.now);
                    if let Reply::Queued(w) = reply {
                        world.seq += 1;
                        world.waiting.insert(w, WWaiter { tenant: t, seq: world.seq });
                    }
                    world.run(actions).map_err(TestCaseError::fail)?;
                }
            }
            while world.pick(|w| *w == Where::Connecting || *w == Where::Closing, 0).is_some() {
                world.step(&Ev::ConnectOk(0)).map_err(TestCaseError::fail)?;
                world.step(&Ev::CloseDone(0)).map_err(TestCaseError::fail)?;
            }
            world.step(&Ev::ReturnClean(round as u8)).map_err(TestCaseError::fail)?;
        }
        while world.pick(|w| *w == Where::Connecting || *w == Where::Closing, 0).is_some() {
            world.step(&Ev::ConnectOk(0)).map_err(TestCaseError::fail)?;
            world.step(&Ev::CloseDone(0)).map_err(TestCaseError::fail)?;
        }
        let total: usize = sizes.iter().sum();
        let effective = budget.min(total);
        for (t, &size) in sizes.iter().enumerate() {
            let open = world.book.tenant_status(t, world.now).open as f64;
            let fair = (effective * size) as f64 / total as f64;
            let all: Vec<_> = (0..sizes.len()).map(|t| world.book.tenant_status(t, world.now)).collect();
            prop_assert!(
                (open - fair).abs() < 1.0 + 1e-9 || (open - size as f64).abs() < 1e-9,
                "tenant {t} (pool_size {size}) holds {open}, fair share {fair:.2} of {effective}; sizes {sizes:?}; {all:?}"
            );
        }
    }
}

/// Found by the model: a connection still being opened when a reload changed how its tenant
/// connects (or the upstream's address) was stamped with the new settings when it opened, and
/// handed out — a session made with the old password or host served as a new one.
#[test]
fn a_connection_opening_across_a_reload_that_changed_settings_is_not_handed_out() {
    let events = [
        Ev::Checkout(0),
        Ev::Reload {
            budget: 1,
            sizes: vec![0],
            identity: true,
            connect: 0,
        },
        Ev::ConnectOk(0),
    ];
    play(1, &[1], &events).unwrap();
}

/// Found by the model: with pool sizes 4, 1, 4 on a budget of 2, the first tenant kept both
/// connections: only the neediest tenant overall was considered as a taker, and that was the
/// size-1 tenant, which does not qualify; the third tenant got nothing.
#[test]
fn a_returned_connection_goes_to_any_tenant_below_its_share() {
    let mut world = World::new(2, &[4, 1, 4]);
    for _ in 0..2 {
        world.step(&Ev::Checkout(0)).unwrap();
        world.step(&Ev::ConnectOk(0)).unwrap();
    }
    assert_eq!(world.book.tenant_status(0, world.now).in_use, 2);
    world.step(&Ev::Checkout(1)).unwrap();
    world.step(&Ev::Checkout(2)).unwrap();
    // Both queues wait; tenant 0 returns one connection: it must go to tenant 2.
    let held = world.pick(|w| *w == Where::Held, 0).unwrap();
    world.conns.get_mut(&held).unwrap().at = Where::Parked;
    let actions = world.book.returned(held, Returned::Clean, None, world.now);
    assert!(
        matches!(actions.as_slice(), [Action::Replace { tenant: 2, .. }]),
        "{actions:?}"
    );
}

/// Found by the model: sizes 2, 7, 2, 2 on a budget of 9 settled at 1, 6, 1, 1 — the size-7
/// tenant 1.15 connections above its share of 4.85 — because moves were judged by ratios:
/// (1 + 1) ÷ 2 is not below 6 ÷ 7, so the large tenant kept its sixth connection.
#[test]
fn shares_settle_within_one_connection_with_unequal_pool_sizes() {
    let mut world = World::new(9, &[2, 7, 2, 2]);
    // One connection each for the small tenants, six for the large one: the budget is full.
    for t in [0, 2, 3, 1, 1, 1, 1, 1, 1] {
        world.step(&Ev::Checkout(t)).unwrap();
        world.step(&Ev::ConnectOk(0)).unwrap();
    }
    let open: Vec<usize> = (0..4)
        .map(|t| world.book.tenant_status(t, world.now).open)
        .collect();
    assert_eq!(open, [1, 6, 1, 1]);
    // Everyone waits; the large tenant returns a connection: it goes to a small tenant.
    for t in 0..4 {
        world.step(&Ev::Checkout(t)).unwrap();
    }
    let held = *world
        .conns
        .iter()
        .find(|(_, c)| c.tenant == 1 && c.at == Where::Held)
        .unwrap()
        .0;
    world.conns.get_mut(&held).unwrap().at = Where::Parked;
    let actions = world.book.returned(held, Returned::Clean, None, world.now);
    assert!(
        matches!(
            actions.as_slice(),
            [Action::Replace {
                tenant: 0 | 2 | 3,
                ..
            }]
        ),
        "{actions:?}"
    );
}
