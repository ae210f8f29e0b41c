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

mod events;
mod world;

use proptest::prelude::*;

use super::*;
use events::{Ev, event};
use world::{WWaiter, Where, World};

fn cases() -> u32 {
    std::env::var("SLUICE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
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
