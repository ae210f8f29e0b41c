//! The events the model test draws: everything that can happen to one upstream's
//! accounting, weighted so that sequences run long and reach the interesting states.

use proptest::prelude::*;

#[derive(Debug, Clone)]
pub(super) enum Ev {
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

pub(super) fn event() -> impl Strategy<Value = Ev> {
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
