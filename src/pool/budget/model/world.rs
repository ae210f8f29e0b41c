//! The world the model test plays against the book: the I/O side as `upstream.rs` does it,
//! carrying out every action and keeping its own record of which connections physically
//! exist and which waiters were answered — and the checks of the promises against that
//! record after every step.

use std::collections::{BTreeMap, HashMap};

use super::*;

/// Where the world (the I/O side) has a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Where {
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
pub(super) struct WConn {
    pub(super) tenant: usize,
    pub(super) at: Where,
    /// The (tenant connect generation) the connection was opened with.
    pub(super) generation: u64,
}

#[derive(Debug, Clone)]
pub(super) struct WWaiter {
    pub(super) tenant: usize,
    pub(super) seq: u64,
}

pub(super) struct World {
    pub(super) book: Budget,
    pub(super) now: Instant,
    pub(super) base: Instant,
    pub(super) conns: BTreeMap<ConnId, WConn>,
    pub(super) waiting: BTreeMap<WaiterId, WWaiter>,
    pub(super) answered: HashMap<WaiterId, &'static str>,
    pub(super) gone: Vec<WaiterId>,
    pub(super) seq: u64,
    pub(super) budget: usize,
    pub(super) sizes: Vec<usize>,
    /// Per tenant (by index): bumped whenever a reload changes how it connects.
    pub(super) generation: Vec<u64>,
    pub(super) ids: Vec<Arc<str>>,
    pub(super) connect_keys: Vec<String>,
    pub(super) closed: bool,
    pub(super) log: Vec<String>,
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
    pub(super) fn new(budget: usize, sizes: &[usize]) -> World {
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

    pub(super) fn pick(&self, at: impl Fn(&Where) -> bool, n: u8) -> Option<ConnId> {
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
    pub(super) fn existing(&self) -> (usize, Vec<usize>) {
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
    pub(super) fn run(&mut self, actions: Vec<Action>) -> Result<(), String> {
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

    pub(super) fn answer(
        &mut self,
        waiter: WaiterId,
        tenant: usize,
        how: &'static str,
    ) -> Result<(), String> {
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

    pub(super) fn step(&mut self, ev: &Ev) -> Result<(), String> {
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
    pub(super) fn check(&self, before: &(usize, Vec<usize>)) -> Result<(), String> {
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
